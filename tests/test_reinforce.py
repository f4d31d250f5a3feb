"""REINFORCE: parameters change, β = 0 needs no reference, determinism, resume, learning (slow), bad options."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from agents.pretrain import preset, pretrain
from agents.reinforce import AdaptiveKL, Reinforce, ReinforceConfig, distinct_n, train


class Crash(Exception):
    pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model pretrained on a small real corpus (vocab 400): (corpus path, checkpoint path)."""
    from textgym.corpus import read_documents

    root = tmp_path_factory.mktemp("rl")
    corpus = root / "small.txt"
    corpus.write_text("\n\n".join(read_documents()[1][:400]))
    pretrain(preset("tiny", corpus=str(corpus), vocab_size=400, out=str(root / "pre"), progress=False, samples=0))
    return corpus, root / "pre/model"


def _cfg(setup, tmp_path: Path, **kw) -> ReinforceConfig:
    corpus, ckpt = setup
    base = dict(
        reward="sentiment",
        init=str(ckpt),
        corpus=str(corpus),
        vocab_size=400,
        num_envs=8,
        rloo_k=4,
        max_new_tokens=6,
        updates=4,
        eval_prompts=4,
        eval_samples=2,
        eval_interval=2,
        checkpoint_interval=2,
        out=str(tmp_path / "rl"),
        progress=False,
    )
    base.update(kw)
    return ReinforceConfig(**base)


@pytest.mark.parametrize(
    "options",
    [
        {"baseline": "rloo"},
        {"baseline": "moving_average"},
        {"baseline": "value"},
        {"baseline": "rloo", "entropy_coef": 0.01, "normalize_advantages": True, "target_kl": 2.0},
    ],
)
def test_one_update_changes_parameters(setup, tmp_path, options):
    # length feedback varies between completions (sentiment is 0 for a tiny model's gibberish: no signal)
    agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", **options))
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    metrics = agent.update()
    after = agent.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert agent.policy.embed.weight.grad is not None
    for key in ("objective/scores", "objective/kl", "objective/entropy", "objective/rlhf_reward", "charts/SPS"):
        assert key in metrics
    assert metrics["charts/env_tokens"] == agent.env_tokens > 0


def test_rollout_goes_through_the_env_and_groups_prompts(setup, tmp_path):
    agent = Reinforce(_cfg(setup, tmp_path))
    prompts, completions, scores = agent.rollout()
    assert prompts[0] == prompts[3] and prompts[4] == prompts[7]  # k = 4 completions of each prompt
    texts = agent.tokenizer.decode_batch(completions)
    plain = [agent.tokenizer.decode(p) for p in prompts]
    assert torch.allclose(torch.tensor(scores), torch.tensor(agent.feedback(plain, texts)), atol=1e-12)


def test_beta_zero_needs_no_reference(setup, tmp_path):
    agent = Reinforce(_cfg(setup, tmp_path, kl_coef=0.0, ref=str(tmp_path / "does-not-exist")))
    assert agent.ref is None
    assert agent.update()["objective/kl"] == 0.0
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        Reinforce(_cfg(setup, tmp_path, kl_coef=0.1, ref=str(tmp_path / "does-not-exist")))


def test_same_seed_same_trajectory(setup, tmp_path):
    def run(seed):
        agent = Reinforce(_cfg(setup, tmp_path, seed=seed))
        ms = [agent.update() for _ in range(3)]
        return [{k: v for k, v in m.items() if k != "charts/SPS"} for m in ms], agent.policy.state_dict()

    (a, wa), (b, wb), (c, _) = run(1), run(1), run(2)
    assert a == b and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a != c


def test_resume_after_interruption(setup, tmp_path):
    straight = train(_cfg(setup, tmp_path, out=str(tmp_path / "a")))

    def crash(update):
        if update == 3:
            raise Crash()

    with pytest.raises(Crash):
        train(_cfg(setup, tmp_path, out=str(tmp_path / "b")), on_update=crash)
    resumed = train(_cfg(setup, tmp_path, out=str(tmp_path / "b")))
    assert straight == resumed
    for d in ("a", "b"):
        assert (tmp_path / d / "learning_curve.png").stat().st_size > 10_000
        assert "| prompt | before | score | after | score |" in (tmp_path / d / "samples.md").read_text()


def test_adaptive_kl_controller_moves_beta_toward_target():
    ctl = AdaptiveKL(0.1, target=6.0, horizon=1000)
    ctl.update(12.0, n=100)  # KL above target: β grows by the clipped error (0.2) x n / horizon
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(0.0, n=100)
    assert ctl.beta < 0.1 * 1.02


def test_distinct_2():
    assert distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)
    assert distinct_n(["x"]) == 0.0


def test_bad_options(setup, tmp_path):
    with pytest.raises(ValueError, match="kl_coef must be >= 0, got -0.1"):
        _cfg(setup, tmp_path, kl_coef=-0.1)
    with pytest.raises(ValueError, match="rloo_k must be >= 2 for the leave-one-out baseline, got 1"):
        _cfg(setup, tmp_path, rloo_k=1)
    with pytest.raises(ValueError, match=r"num_envs \(8\) must be a multiple of rloo_k \(3\)"):
        _cfg(setup, tmp_path, rloo_k=3)
    with pytest.raises(ValueError, match="baseline 'critic' is not one of"):
        _cfg(setup, tmp_path, baseline="critic")
    # The checkpoint was trained with a 400-token tokenizer of the small corpus; the default env uses another.
    cfg = replace(_cfg(setup, tmp_path), corpus="", vocab_size=2000)
    with pytest.raises(ValueError, match="trained with a different tokenizer"):
        Reinforce(cfg)


def test_cli_train_end_to_end(setup, tmp_path):
    corpus, ckpt = setup
    args = [
        "train",
        "--algo",
        "reinforce",
        "--reward",
        "sentiment",
        "--init",
        str(ckpt),
        "--corpus",
        str(corpus),
        "--vocab-size",
        "400",
        "--num-envs",
        "8",
        "--updates",
        "2",
        "--eval-prompts",
        "4",
        "--eval-samples",
        "2",
        "--max-new-tokens",
        "5",
        "--out",
        "rl",
        "--no-progress",
    ]
    r = subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "before: mean score" in r.stdout and "| prompt | before |" in r.stdout
    summary = json.loads((tmp_path / "rl/metrics.json").read_text())
    assert summary["updates"] == 2 and (tmp_path / "rl/learning_curve.png").is_file()


@pytest.mark.slow
def test_learns_to_use_a_word(setup, tmp_path):
    """A tiny task: reward for using the word 'the'. The score must rise well above the start."""
    cfg = _cfg(
        setup,
        tmp_path,
        reward="keywords(words=the)",
        num_envs=32,
        max_new_tokens=10,
        updates=150,
        lr=3e-3,
        kl_coef=0.0,
        eval_prompts=8,
        eval_samples=8,
        eval_interval=150,
    )
    metrics = train(cfg)
    start = json.loads((tmp_path / "rl/metrics.json").read_text())["before"]["eval/scores"]
    assert metrics["eval/scores"] >= 0.9 and metrics["eval/scores"] > start + 0.2
