"""Preferences, the simulated annotator, the reward model, its feedback and commands, and RLHF end to end."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.checkpoint import load_checkpoint, read_config
from agents.labeling import LabelConfig, label
from agents.reward_model import RewardModelConfig, RewardModelTraining, evaluate_file, train
from textgym.feedback import make_feedback
from textgym.preferences import SimulatedAnnotator, extract_prompt, read_preferences, write_preferences

TASK = "keywords(words=the)"  # a hidden score the tiny LM's completions often differ on


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tiny_lm, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The session's tiny LM (conftest), and 600 pairs of its completions labelled on TASK."""
    corpus, ckpt = tiny_lm
    prefs = tmp_path_factory.mktemp("rm") / "prefs.jsonl.gz"
    label(LabelConfig(simulate=TASK, checkpoint=str(ckpt), pairs=600, max_new_tokens=12,
                      eval_prompts=4, out=str(prefs), progress=False))  # fmt: skip
    return corpus, ckpt, prefs


def _rm_cfg(setup, tmp_path: Path, **kw) -> RewardModelConfig:
    _, ckpt, prefs = setup
    base = dict(data=str(prefs), init=str(ckpt), eval_pairs=100, epochs=3, batch_size=32, eval_interval=20,
                checkpoint_interval=20, out=str(tmp_path / "rm"), progress=False)  # fmt: skip
    base.update(kw)
    return RewardModelConfig(**base)


# -- the preference format ---------------------------------------------------------------------------------------
def test_extract_prompt_splits_hh_rlhf_dialogues_at_the_last_assistant_turn():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any tips?\n\nAssistant: Drink water."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any tips?\n\nAssistant: Do not."
    prompt, c, r = extract_prompt(chosen, rejected)
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Any tips?\n\nAssistant:"
    assert (c, r) == (" Drink water.", " Do not.")
    assert extract_prompt("abcX", "abcY") == ("abc", "X", "Y")  # no marker: the common prefix (TRL's rule)


def test_read_preferences_formats_ties_and_gzip(tmp_path):
    rows = [
        {"prompt": "P", "chosen": " good", "rejected": " bad"},
        {"chosen": "\n\nHuman: Q\n\nAssistant: yes", "rejected": "\n\nHuman: Q\n\nAssistant: no"},
        {"prompt": "P", "chosen": " same", "rejected": " same", "tie": True},
    ]
    for name in ("p.jsonl", "p.jsonl.gz"):
        path = write_preferences(tmp_path / name, rows)
        prefs = read_preferences(path)
        assert prefs.prompts == ["P", "\n\nHuman: Q\n\nAssistant:"] and prefs.chosen == [" good", " yes"]
        assert prefs.rejected == [" bad", " no"] and prefs.ties == 1
    assert gzip.decompress((tmp_path / "p.jsonl.gz").read_bytes()).startswith(b'{"prompt": "P"')


def test_bad_preference_files(tmp_path):
    def write(name: str, text: str) -> Path:
        (tmp_path / name).write_text(text)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'rejected'"):
        read_preferences(write("bad.jsonl", '{"chosen": "a", "rejected": "b"}\n{"chosen": "a"}\n'))
    with pytest.raises(ValueError, match=r"num.jsonl:1: field 'chosen' must be a string, got int"):
        read_preferences(write("num.jsonl", '{"chosen": 3, "rejected": "b"}\n'))
    with pytest.raises(ValueError, match="is empty"):
        read_preferences(write("empty.jsonl", "\n"))
    with pytest.raises(ValueError, match=r"holds only ties \(1\)"):
        read_preferences(write("ties.jsonl", '{"chosen": "a", "rejected": "a", "tie": true}\n'))
    with pytest.raises(ValueError, match="is not a gzip file"):
        read_preferences(write("plain.jsonl.gz", '{"chosen": "a", "rejected": "b"}\n'))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_preferences(tmp_path / "nope.jsonl")


# -- the simulated annotator -------------------------------------------------------------------------------------
def test_annotator_at_zero_temperature_prefers_the_better_and_ties_equal_scores():
    annotator = SimulatedAnnotator("length(target=2)", temperature=0)
    choice = annotator.label(["p"] * 3, ["a b", "a", "x y"], ["a b c d", "a b", "u v"])
    assert choice.tolist() == [1, -1, 0]
    rows = annotator.rows(["p"] * 3, ["a b", "a", "x y"], ["a b c d", "a b", "u v"])
    assert rows[1] == {"prompt": "p", "chosen": "a b", "rejected": "a"} and rows[2]["tie"] is True


def test_annotator_is_boltzmann_rational_and_seeded():
    a, b = ["a b"] * 4000, ["a b c"] * 4000  # length(target=2): 1.0 against 0.5, a difference of 0.5
    choice = SimulatedAnnotator("length(target=2)", temperature=0.5, seed=3).label(["p"] * 4000, a, b)
    assert (choice == 1).mean() == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.03)  # σ(0.5 / 0.5)
    again = SimulatedAnnotator("length(target=2)", temperature=0.5, seed=3).label(["p"] * 4000, a, b)
    assert np.array_equal(choice, again)
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        SimulatedAnnotator("sentiment", temperature=-1)


# -- the reward model ---------------------------------------------------------------------------------------------
def test_reward_model_learns_the_hidden_preference_and_is_saved_as_a_reward_model(setup, tmp_path):
    _, ckpt, prefs = setup
    untrained = RewardModelTraining(_rm_cfg(setup, tmp_path)).evaluate()
    assert untrained["eval/accuracy"] == 0.0  # every score 0: all ties, which count as wrong
    metrics = train(_rm_cfg(setup, tmp_path))
    assert metrics["eval/accuracy"] >= 0.9 and metrics["eval/margin"] > 0.3
    model_dir = tmp_path / "rm/model"
    assert read_config(model_dir)["kind"] == "reward-model"
    with pytest.raises(ValueError, match="holds a reward model, not a language model"):
        load_checkpoint(model_dir)
    with pytest.raises(ValueError, match="holds a language model, not a reward model"):
        load_checkpoint(ckpt, kind="reward-model")
    with pytest.raises(ValueError, match="holds a language model, not a reward model"):
        make_feedback(f'reward-model(path="{ckpt}")')
    assert evaluate_file(str(model_dir), str(prefs))["accuracy"] >= 0.8
    f = make_feedback(f'reward-model(path="{model_dir}")')
    scores = f(["Once"] * 2, [" the the the", " xq"])
    assert scores[0] > scores[1]


def test_reward_model_resumes_on_the_same_curve(setup, tmp_path):
    straight = train(_rm_cfg(setup, tmp_path, epochs=1, out=str(tmp_path / "a")))

    def crash(step):
        if step == 10:
            raise Crash()

    with pytest.raises(Crash):
        train(_rm_cfg(setup, tmp_path, epochs=1, out=str(tmp_path / "b"), checkpoint_interval=5), on_step=crash)
    resumed = train(_rm_cfg(setup, tmp_path, epochs=1, out=str(tmp_path / "b"), checkpoint_interval=5))
    assert resumed == pytest.approx(straight)


def test_bad_reward_model_options(setup, tmp_path):
    with pytest.raises(ValueError, match="too few to hold out eval_pairs=5000"):
        train(_rm_cfg(setup, tmp_path, eval_pairs=5000))
    with pytest.raises(ValueError, match="lexicon_l1 must be >= 0"):
        _rm_cfg(setup, tmp_path, lexicon_l1=-1.0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        LabelConfig(temperature=-0.5)


# -- the commands, and RLHF end to end -----------------------------------------------------------------------------
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_cli_label_train_eval_and_align_on_the_reward_model(setup, tmp_path):
    _, ckpt, _ = setup
    r = _cli("label", "--simulate", TASK, "--temperature", "0.1", "--checkpoint", str(ckpt), "--pairs", "300",
             "--max-new-tokens", "10", "--eval-prompts", "4", "--out", "p.jsonl", "--no-progress",
             cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "wrote p.jsonl: 300 labelled pairs" in r.stdout
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 300  # (no ties at T > 0)
    r = _cli("reward-model", "train", "--data", "p.jsonl", "--init", str(ckpt), "--eval-pairs", "50", "--epochs", "1",
             "--out", "rm dir", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "held-out pairwise accuracy" in r.stdout and (tmp_path / "rm dir/model/model.safetensors").is_file()
    r = _cli("reward-model", "eval", "--model", "rm dir/model", "--data", "p.jsonl", cwd=tmp_path)
    assert r.returncode == 0 and "300 pairs (0 ties left out): pairwise accuracy" in r.stdout, r.stderr
    r = _cli("train", "--reward", 'reward-model(path="rm dir/model")', "--init", str(ckpt), "--num-envs", "8",
             "--rloo-k", "4", "--updates", "2", "--max-new-tokens", "5", "--eval-prompts", "4", "--eval-samples", "2",
             "--eval-also", TASK, "--out", "rl", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "eval/also_scores" in (tmp_path / "rl/progress.csv").read_text().splitlines()[0]
    bad = _cli("reward-model", "eval", "--model", str(ckpt), "--data", "p.jsonl", cwd=tmp_path)
    assert bad.returncode == 2 and "holds a language model, not a reward model" in bad.stderr
    bad = _cli("label", "--simulate", TASK, "--temperature", "-1", "--checkpoint", str(ckpt), cwd=tmp_path)
    assert bad.returncode == 2 and "temperature must be >= 0" in bad.stderr


def test_rlhf_end_to_end(setup, tmp_path):
    from agents.rlhf import RLHFConfig, rlhf

    _, ckpt, _ = setup
    cfg = RLHFConfig(init=str(ckpt), hidden=TASK, pairs=200, updates=4, eval_interval=2, eval_prompts=4,
                     max_new_tokens=10, out=str(tmp_path / "rlhf"), progress=False)  # fmt: skip
    summary = rlhf(cfg)
    out = tmp_path / "rlhf"
    assert (out / "overoptimisation.png").stat().st_size > 10_000
    saved = json.loads((out / "rlhf.json").read_text())
    assert saved["reward_model_accuracy"] == summary["reward_model_accuracy"] > 0.5
    for run in ("on_reward_model", "on_true_score"):
        assert "eval/also_scores" in (out / run / "progress.csv").read_text().splitlines()[0]
