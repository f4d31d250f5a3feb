"""The teaching stage (agents.teach, ``textgym teach``) on a tiny LM: the state learns the score so far, the new
units leave the language model exactly as it was, a killed run resumes onto the same weights, and bad input is
refused by name."""

from __future__ import annotations

import csv

import pytest
import torch

from agents.checkpoint import load_checkpoint
from agents.cli import main
from agents.teach import TeachConfig, teach

# The score so far of 'keywords(words=the)' is whether the completion has said "the" yet: a step, as VADER's is
# whether it has said something positive yet. (A tiny LM and 300 batches of 16: seconds.) In float32, so that the
# thresholds hold on every machine: this task's R² after 300 steps was 0.48 in float32 and 0.15 in bfloat16 on a CPU
# with AVX512-BF16, where 'auto' now takes float32 (agents.runner.resolve_precision).
TASK = ["--reward", "keywords(words=the)", "--batch", "16", "--lr", "1e-2", "--eval-prompts", "4", "--no-progress",
        "--precision", "float32"]  # fmt: skip


def test_teach_in_new_units_keeps_the_language_model_exactly(tiny_lm, tmp_path, capsys):
    """``textgym teach`` end to end: the new units' state tells the score so far, the widths are as asked, and the
    taught model computes the reference's next-token distribution."""
    _, init = tiny_lm
    out = tmp_path / "taught"
    assert main(["teach", "--init", str(init), "--out", str(out), "--steps", "300", "--new-units", "16", *TASK]) == 0
    printed = capsys.readouterr().out
    before = float(printed.split("the reference's state tells the score so far with R² ")[1].split()[0])
    after = float(printed.split("its state tells the score so far with R² ")[1].split()[0])
    assert after > before + 0.2, printed
    ref, taught = load_checkpoint(init)[0], load_checkpoint(out / "model")[0]
    assert taught.config.hidden_dim == ref.config.hidden_dim + 16
    assert taught.config.embed_dim == ref.config.embed_dim + 16
    assert taught.value is None and not taught.config.value_head
    tokens = torch.randint(0, ref.config.vocab_size, (4, 30), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(ref(tokens)[0], taught(tokens)[0], atol=1e-4)  # (a wider matmul rounds differently)
    with open(out / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["eval/state_r2"]) == pytest.approx(after, abs=0.005)


def test_teach_the_whole_copy_stays_close_to_the_reference(tiny_lm, tmp_path):
    """``new_units=0``: the whole copy learns the feature (R² above 0.5, 0.4 above the reference's), distilled
    toward the reference (under half a nat per completion from it)."""
    _, init = tiny_lm
    cfg = TeachConfig(init=str(init), out=str(tmp_path / "t"), new_units=0, steps=300, batch=16, lr=1e-2,
                      reward="keywords(words=the)", eval_prompts=4, progress=False, precision="float32")  # fmt: skip
    metrics = teach(cfg)
    assert metrics["state_r2"] > 0.5 and metrics["state_r2"] > metrics["state_r2_before"] + 0.4, metrics
    with open(tmp_path / "t/progress.csv") as f:
        last = list(csv.DictReader(f))[-1]
    assert 0 <= float(last["teach/kl_per_completion"]) < 0.5, last


def test_a_killed_teaching_run_resumes_onto_the_same_weights(tiny_lm, tmp_path):
    """Stopped after its checkpoint at step 10 and run again to 20, teaching ends where an uninterrupted run of
    20 steps does: the sampling generators, the head and Adam's state come back with the weights."""
    _, init = tiny_lm
    common = dict(init=str(init), batch=8, lr=1e-2, reward="keywords(words=the)", eval_prompts=4, progress=False,
                  new_units=8, eval_interval=10, checkpoint_interval=10)  # fmt: skip
    teach(TeachConfig(out=str(tmp_path / "straight"), steps=20, **common))
    teach(TeachConfig(out=str(tmp_path / "resumed"), steps=10, **common))
    teach(TeachConfig(out=str(tmp_path / "resumed"), steps=20, **common))
    a = load_checkpoint(tmp_path / "straight/model")[0].state_dict()
    b = load_checkpoint(tmp_path / "resumed/model")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with open(tmp_path / "resumed/progress.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r["eval/state_r2"]] == [10, 20]


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"steps": 0}, "steps must be > 0, got 0"),
        ({"new_units": -1}, "new_units must be >= 0, got -1"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"precision": "half"}, "precision 'half' is not one of auto, float32, bfloat16"),
    ],
)
def test_teach_refuses_bad_options_by_name(option, message):
    with pytest.raises(ValueError, match=message):
        TeachConfig(**option)
