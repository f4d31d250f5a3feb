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
from agents.sft import AlignmentPass, SFTConfig, collate, load_pairs, sft


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


def test_sft_masks_prompt_and_learns(pretrained, tmp_path):
    data = _pairs(tmp_path / "pairs.jsonl")
    from agents.checkpoint import load_checkpoint

    _, tok, _ = load_checkpoint(pretrained / "model")
    examples = load_pairs(data, tok, max_len=96)
    whole = [e for e in examples if len(e[0]) < 96]  # not cut at max_len, so it ends with <eos>
    tokens, mask = collate(whole[:2], tok.pad_id)
    ids, start = whole[0]
    assert mask[0].sum() == len(ids) - start and not mask[0, : start - 1].any()
    assert tokens[0, start - 1] != tok.pad_id and ids[-1] == tok.eos_id

    cfg = SFTConfig(data=str(data), init=str(pretrained / "model"), epochs=4, batch_size=8, lr=3e-3,
                    out=str(tmp_path / "sft"), progress=False)  # fmt: skip
    metrics = sft(cfg)
    rows = _rows(tmp_path / "sft")
    losses = [float(r["losses/sft_loss"]) for r in rows]
    assert len(rows) == 4 and [r["step"] for r in rows] == ["5", "10", "15", "20"]  # 40 pairs in batches of 8
    assert losses[-1] < losses[0] and metrics["losses/sft_loss"] == losses[-1]
    assert (tmp_path / "sft/model/model.safetensors").is_file()


def _prompts(path: Path) -> Path:
    path.write_text("\n".join(json.dumps({"prompt": p}) for p in ["The cat", "A day", "My friend", "We all", "It is"]))
    return path


def _align(pretrained: Path, tmp_path: Path, reference: str = "snapshot") -> AlignmentPass:
    return AlignmentPass("length(target=3)", steps=2, seed=0, init=str(pretrained / "model"), reference=reference,
                         prompts=str(_prompts(tmp_path / "prompts.jsonl")), num_envs=8, max_new_tokens=5,
                         eval_prompts=1)  # fmt: skip


def test_sft_interleaved_with_real_reinforce_passes(pretrained, tmp_path):
    """The seed's schedule: supervised epochs with a REINFORCE alignment pass after every second one."""
    data = _pairs(tmp_path / "pairs.jsonl", n=24)
    cfg = SFTConfig(data=str(data), init=str(pretrained / "model"), epochs=2, batch_size=8, align_interval=2,
                    out=str(tmp_path / "sft"), progress=False)  # fmt: skip
    sft(cfg, align=_align(pretrained, tmp_path))
    rows = _rows(tmp_path / "sft")
    # align/kl is a sampled estimate (the mean of log pi - log pi_ref over 8 completions), so it may be below 0
    assert rows[0]["align/scores"] == "" and math.isfinite(float(rows[1]["align/kl"])) and rows[1]["align/scores"] != ""
    config = json.loads((tmp_path / "sft/model/config.json").read_text())
    assert config["meta"]["align_reference"] == "snapshot"


def test_alignment_pass_reference_is_a_snapshot_of_the_model_before_each_pass(pretrained, tmp_path):
    """Fine-tuning moved the model away from --init. A snapshot reference starts each pass at KL 0 (the pass stays
    near the fine-tuned model); the fixed --init reference starts it far away, pulling back against fine-tuning."""
    from agents.checkpoint import load_checkpoint

    kls = {}
    for reference in ("snapshot", "init"):
        model = load_checkpoint(pretrained / "model")[0]
        with torch.no_grad():  # stand-in for fine-tuning: the model is no longer the --init checkpoint
            model.head.bias += torch.linspace(-2, 2, model.config.vocab_size)
        align = _align(pretrained, tmp_path, reference)
        align.steps = 1
        align.bind(model, torch.device("cpu"))
        kls[reference] = align(model)["align/kl"]
    assert kls["snapshot"] == 0.0 and kls["init"] > 0.5


def test_sft_with_alignment_resumes_on_the_same_curve(pretrained, tmp_path):
    """The alignment pass's optimizer, generators and β are saved with fine-tuning's checkpoints."""
    data = _pairs(tmp_path / "pairs.jsonl", n=24)

    def cfg(out: str) -> SFTConfig:
        return SFTConfig(data=str(data), init=str(pretrained / "model"), epochs=4, batch_size=8, align_interval=1,
                         out=str(tmp_path / out), progress=False)  # fmt: skip

    sft(cfg("straight"), align=_align(pretrained, tmp_path))

    def crash(step: int) -> None:
        if step == 7:  # mid-epoch 3 (3 batches per epoch), after two alignment passes
            raise Crash()

    with pytest.raises(Crash):
        sft(cfg("resumed"), align=_align(pretrained, tmp_path), on_step=crash)
    sft(cfg("resumed"), align=_align(pretrained, tmp_path))
    a, b = _weights(tmp_path / "straight/model"), _weights(tmp_path / "resumed/model")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "charts/SPS"} for r in rows]  # noqa: E731
    assert strip(_rows(tmp_path / "straight")) == strip(_rows(tmp_path / "resumed"))


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
    with pytest.raises(ValueError, match="align_ref 'frozen' is not one of snapshot, init"):
        SFTConfig(data=str(bad), align_ref="frozen")


def test_bad_pretrain_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus path .*nope.txt' does not exist"):
        pretrain(preset("tiny", corpus=str(tmp_path / "nope.txt"), out=str(tmp_path / "o"), progress=False))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        pretrain(preset("tiny", corpus=str(tmp_path / "empty.txt"), out=str(tmp_path / "o"), progress=False))
    for name, value in [("hidden_dim", 0), ("batch_size", -2), ("steps", 0), ("lr", 0.0)]:
        with pytest.raises(ValueError, match=f"{name} must be > 0, got {value}"):
            preset("tiny", **{name: value})
    # One sentence per line, no blank lines: one document, nothing held out. Never a validation loss on training text.
    from textgym.corpus import load_corpus

    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(" ".join(d.split()[:12]) for d in load_corpus().train[:3000]))
    with pytest.raises(
        ValueError,
        match=r"none of its 1 documents is held out for validation .*--separator blank, % "
        "or line",
    ):
        pretrain(preset("tiny", corpus=str(lines), out=str(tmp_path / "o"), progress=False))
    metrics = pretrain(preset("tiny", corpus=str(lines), separator="line", vocab_size=300, steps=2,
                              out=str(tmp_path / "o"), progress=False, samples=0))  # fmt: skip
    assert metrics["nats_per_char"] > 0
    with pytest.raises(ValueError, match="document separator 'tab' is not one of"):
        preset("tiny", separator="tab")


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
    for cmd in ("pretrain", "sft", "sample", "train"):
        h = _cli(cmd, "--help", cwd=tmp_path)
        assert h.returncode == 0 and "--seed" in h.stdout
    bad = _cli("sample", "--checkpoint", "nowhere", "--prompt", "x", cwd=tmp_path)
    assert bad.returncode == 2 and "checkpoint directory 'nowhere' does not exist" in bad.stderr
    bad = _cli("sample", "--checkpoint", "sft/model", "--prompt", "x", "--num-samples", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "num_samples must be > 0, got 0" in bad.stderr and "Traceback" not in bad.stderr
    binary = tmp_path / "program.txt"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)))
    bad = _cli("pretrain", "--preset", "tiny", "--corpus", str(binary), "--out", "x", cwd=tmp_path)
    assert bad.returncode == 2 and "holds a NUL byte at byte offset 7" in bad.stderr
    config = json.loads((tmp_path / "sft/model/config.json").read_text())
    del config["model"]
    (tmp_path / "sft/model/config.json").write_text(json.dumps(config))
    bad = _cli("sample", "--checkpoint", "sft/model", "--prompt", "x", cwd=tmp_path)
    assert bad.returncode == 2 and "config.json has no 'model' dict" in bad.stderr


def test_main_job_end_to_end_with_a_tiny_budget(tmp_path):
    """`textgym demo`: pretrain, align, before/after table and plot, with the tiny preset and 3 updates."""
    r = _cli("demo", "--preset", "tiny", "--updates", "3", "--out", "demo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "before: mean score" in r.stdout and "| prompt | before | score | after | score |" in r.stdout
    for path in ("pretrain/model/model.safetensors", "reinforce/model/config.json", "reinforce/learning_curve.png"):
        assert (tmp_path / "demo" / path).is_file()
