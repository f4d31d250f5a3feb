"""Pretraining, supervised fine-tuning, resume after interruption, and the command line end to end."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agents.pretrain import preset, pretrain
from agents.sft import SFTConfig, collate, load_pairs, sft


class Crash(Exception):
    pass


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _rows(path: Path) -> list[dict[str, str]]:
    with (path / "progress.csv").open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def pretrained(
    tmp_path_factory,
) -> Path:
    from textgym.corpus import read_documents

    root = tmp_path_factory.mktemp("pre")
    corpus = root / "small.txt"
    corpus.write_text("\n\n".join(read_documents()[1][:400]))
    out = root / "run"
    pretrain(preset("tiny", corpus=str(corpus), vocab_size=400, out=str(out), progress=False, samples=0))
    return out


def test_loss_falls_on_a_small_corpus(pretrained):
    evals = [float(r["eval/loss"]) for r in _rows(pretrained) if r.get("eval/loss")]
    trains = [float(r["losses/train_loss"]) for r in _rows(pretrained) if r.get("losses/train_loss")]
    assert len(evals) == 2 and evals[1] < evals[0]
    assert trains[-1] < trains[0] - 0.5
    metrics = json.loads((pretrained / "metrics.json").read_text())
    assert metrics["nats_per_char"] > 0 and metrics["perplexity"] > 1


def test_resume_after_interruption_continues_the_same_run(tmp_path, small_corpus):
    common = dict(corpus=str(small_corpus), vocab_size=400, progress=False, samples=0)
    pretrain(preset("tiny", out=str(tmp_path / "straight"), **common))

    def crash_at_20(step: int) -> None:
        if step == 20:  # after the checkpoint at step 15, before the one at 30
            raise Crash()

    with pytest.raises(Crash):
        pretrain(preset("tiny", out=str(tmp_path / "resumed"), **common), on_step=crash_at_20)
    assert json.loads((tmp_path / "resumed/checkpoint/config.json").read_text())["meta"]["step"] == 15
    pretrain(preset("tiny", out=str(tmp_path / "resumed"), **common))

    a, b = _weights(tmp_path / "straight/model"), _weights(tmp_path / "resumed/model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "charts/SPS"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "straight")) == strip(_rows(tmp_path / "resumed"))


def _pairs(path: Path, n: int = 40) -> Path:
    from textgym.corpus import load_corpus

    docs = [d for d in load_corpus().train if len(d.split()) > 8][:n]
    path.write_text(
        "\n".join(
            json.dumps({"prompt": " ".join(d.split()[:4]), "completion": " " + " ".join(d.split()[4:16])}) for d in docs
        )
    )
    return path


def test_sft_masks_prompt_and_learns_and_calls_align_hook(pretrained, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl")
    from agents.checkpoint import load_checkpoint

    _, tok, _ = load_checkpoint(pretrained / "model")
    examples = load_pairs(data, tok, max_len=96)
    whole = [e for e in examples if len(e[0]) < 96]  # not cut at max_len, so it ends with <eos>
    tokens, mask = collate(whole[:2], tok.pad_id)
    ids, start = whole[0]
    assert mask[0].sum() == len(ids) - start and not mask[0, : start - 1].any()
    assert tokens[0, start - 1] != tok.pad_id and ids[-1] == tok.eos_id

    calls = []

    def align(model, epoch):
        calls.append(epoch)
        return {"objective/scores": 0.0}

    cfg = SFTConfig(
        data=str(data),
        init=str(pretrained / "model"),
        epochs=4,
        batch_size=8,
        lr=3e-3,
        align_interval=2,
        out=str(tmp_path / "sft"),
        progress=False,
    )
    sft(cfg, align_fn=align)
    rows = _rows(tmp_path / "sft")
    losses = [float(r["losses/sft_loss"]) for r in rows]
    assert calls == [2, 4] and losses[-1] < losses[0]
    assert (tmp_path / "sft/model/model.safetensors").is_file()


def test_sft_interleaved_with_real_reinforce_passes(pretrained, tmp_path):
    """The seed's schedule: supervised epochs with a REINFORCE alignment pass after every second one."""
    from agents.reinforce import make_align_fn

    data = _pairs(tmp_path / "pairs.jsonl", n=24)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(json.dumps({"prompt": p}) for p in ["The cat", "A day", "My friend", "We all", "It is"])
    )
    align = make_align_fn(
        "length(target=3)",
        steps=2,
        seed=0,
        init=str(pretrained / "model"),
        prompts=str(prompts),
        num_envs=8,
        max_new_tokens=5,
        eval_prompts=1,
    )
    cfg = SFTConfig(
        data=str(data),
        init=str(pretrained / "model"),
        epochs=2,
        batch_size=8,
        align_interval=2,
        out=str(tmp_path / "sft"),
        progress=False,
    )
    sft(cfg, align_fn=align)
    rows = _rows(tmp_path / "sft")
    # align/kl is a sampled estimate (the mean of log pi - log pi_ref over 8 completions), so it may be below 0
    assert rows[0]["align/scores"] == "" and math.isfinite(float(rows[1]["align/kl"])) and rows[1]["align/scores"] != ""


def test_bad_sft_inputs(pretrained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "only a prompt"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'completion'"):
        sft(SFTConfig(data=str(bad), init=str(pretrained / "model"), out=str(tmp_path / "o"), progress=False))
    bad.write_text('{"completion": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field 'prompt'"):
        sft(SFTConfig(data=str(bad), init=str(pretrained / "model"), out=str(tmp_path / "o"), progress=False))
    with pytest.raises(ValueError, match="epochs must be > 0, got 0"):
        SFTConfig(data=str(bad), epochs=0)
    with pytest.raises(ValueError, match="needs an alignment pass"):
        sft(
            SFTConfig(
                data=str(_pairs(tmp_path / "p.jsonl")),
                init=str(pretrained / "model"),
                align_interval=1,
                out=str(tmp_path / "o2"),
                progress=False,
            )
        )


def test_bad_pretrain_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus path .*nope.txt' does not exist"):
        pretrain(preset("tiny", corpus=str(tmp_path / "nope.txt"), out=str(tmp_path / "o"), progress=False))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        pretrain(preset("tiny", corpus=str(tmp_path / "empty.txt"), out=str(tmp_path / "o"), progress=False))
    for name, value in [("hidden_dim", 0), ("batch_size", -2), ("steps", 0), ("lr", 0.0)]:
        with pytest.raises(ValueError, match=f"{name} must be > 0, got {value}"):
            preset("tiny", **{name: value})


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_end_to_end(tmp_path, small_corpus):
    r = _cli(
        "pretrain",
        "--preset",
        "tiny",
        "--corpus",
        str(small_corpus),
        "--vocab-size",
        "400",
        "--out",
        "pre",
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "nats/char" in r.stdout and (tmp_path / "pre/model/config.json").is_file()
    data = _pairs(tmp_path / "pairs.jsonl", n=16)
    r = _cli(
        "sft",
        "--data",
        str(data),
        "--init",
        "pre/model",
        "--epochs",
        "1",
        "--out",
        "sft",
        "--no-progress",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    sample = (
        "sample",
        "--checkpoint",
        "sft/model",
        "--prompt",
        "The meaning of life",
        "--prompt",
        "I think",
        "--num-samples",
        "2",
        "--seed",
        "5",
        "--jsonl",
    )
    a, b = _cli(*sample, cwd=tmp_path), _cli(*sample, cwd=tmp_path)
    assert a.returncode == 0, a.stderr
    rows = [json.loads(line) for line in a.stdout.splitlines()]
    assert len(rows) == 4 and rows[0]["prompt"] == "The meaning of life" and a.stdout == b.stdout
    for cmd in ("pretrain", "sft", "sample"):
        h = _cli(cmd, "--help", cwd=tmp_path)
        assert h.returncode == 0 and "--seed" in h.stdout
    bad = _cli("sample", "--checkpoint", "nowhere", "--prompt", "x", cwd=tmp_path)
    assert bad.returncode == 2 and "checkpoint directory 'nowhere' does not exist" in bad.stderr


def test_main_job_end_to_end_with_a_tiny_budget(tmp_path):
    """`textgym demo`: pretrain, align, before/after table and plot, with the tiny preset and 3 updates."""
    r = _cli("demo", "--preset", "tiny", "--updates", "3", "--out", "demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "before: mean score" in r.stdout and "| prompt | before | score | after | score |" in r.stdout
    for path in ("pretrain/model/model.safetensors", "reinforce/model/config.json", "reinforce/learning_curve.png"):
        assert (tmp_path / "demo" / path).is_file()
