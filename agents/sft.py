"""Supervised fine-tuning on labelled prompt/completion pairs (the second stage of the pipeline).

Data: JSONL, one ``{"prompt": ..., "completion": ...}`` object per line. Each example is
``<bos> prompt completion <eos>`` and the loss counts only the completion's tokens (and its ``<eos>``), so the model
learns to answer, not to write prompts. Starts from a pretrained checkpoint.

The seed's interleaving: with ``align_interval = k``, an alignment pass (``align_fn``, e.g. REINFORCE) runs after
every k-th epoch, so supervised and reinforcement updates alternate.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from agents.checkpoint import load_checkpoint, save_checkpoint
from agents.logger import RunLogger
from agents.model import LSTMLM
from agents.training import Checkpointer, Throughput, check_positive, make_optimizer
from textgym.corpus import read_jsonl
from textgym.tokenizer import TextTokenizer

AlignFn = Callable[[LSTMLM, int], dict[str, float]]
"""An alignment pass: ``align_fn(model, epoch) -> metrics``; it updates ``model`` in place."""


@dataclass
class SFTConfig:
    """Options of a supervised fine-tuning run (``textgym sft --help`` shows the same)."""

    data: str = ""
    """JSONL file of {"prompt", "completion"} pairs."""
    init: str = "runs/pretrain/model"
    """Checkpoint to start from."""
    epochs: int = 3
    """Passes over the data."""
    batch_size: int = 32
    """Examples per step."""
    lr: float = 1e-3
    """Learning rate (constant)."""
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    max_len: int = 96
    """Longest example in tokens (longer ones are cut at the end)."""
    align_interval: int = 0
    """Run the alignment pass after every this many epochs (0 = never)."""
    seed: int = 0
    """Seed of the generator that shuffles the data."""
    out: str = "runs/sft"
    """Output folder: checkpoint/ (resume point, per epoch), model/ (final), progress.csv."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_positive(
            epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, max_len=self.max_len, grad_clip=self.grad_clip
        )
        if self.align_interval < 0:
            raise ValueError(f"align_interval must be >= 0 (0 = no alignment), got {self.align_interval!r}")


def load_pairs(path: str | Path, tokenizer: TextTokenizer, max_len: int) -> list[tuple[list[int], int]]:
    """Encode each pair as (token ids, index of the first completion token)."""
    rows = read_jsonl(path, required=("prompt", "completion"))
    examples = []
    for row in rows:
        prompt = [tokenizer.bos_id] + tokenizer.encode(str(row["prompt"]))
        completion = tokenizer.encode(str(row["completion"])) + [tokenizer.eos_id]
        ids = (prompt + completion)[:max_len]
        if len(prompt) < len(ids):  # at least one completion token survives the cut
            examples.append((ids, len(prompt)))
    if not examples:
        raise ValueError(f"{path}: no example has a completion within max_len={max_len} tokens")
    return examples


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to a batch; the mask marks target positions that belong to a completion."""
    width = max(len(ids) for ids, _ in examples)
    tokens = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(examples), width - 1, dtype=torch.bool)
    for i, (ids, start) in enumerate(examples):
        tokens[i, : len(ids)] = torch.tensor(ids)
        mask[i, start - 1 : len(ids) - 1] = True  # target t+1 is predicted at position t
    return tokens, mask


def completion_loss(model: LSTMLM, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    logits, _ = model(tokens[:, :-1])
    nll = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view_as(mask)
    return (nll * mask).sum() / mask.sum()


def sft(
    cfg: SFTConfig, align_fn: AlignFn | None = None, on_epoch: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Fine-tune ``cfg.init`` on ``cfg.data``; return the last epoch's mean completion loss.

    Args:
        cfg: the options.
        align_fn: the alignment pass run every ``cfg.align_interval`` epochs (required when that is > 0).
        on_epoch: called after each epoch (tests use it to simulate a crash).
    """
    if not cfg.data:
        raise ValueError('sft needs data: a JSONL file of {"prompt", "completion"} pairs')
    if cfg.align_interval and align_fn is None:
        raise ValueError(f"align_interval={cfg.align_interval} needs an alignment pass (align_fn)")
    out = Path(cfg.out)
    model, tokenizer, _ = load_checkpoint(cfg.init)
    examples = load_pairs(cfg.data, tokenizer, cfg.max_len)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    ckpt = Checkpointer(out, tokenizer)
    start = ckpt.restore(model, opt, gen) or 0
    logger = RunLogger(out, resume_step=start if start else None)
    meta = {"stage": "sft", "init": cfg.init, "config": asdict(cfg)}
    if start:
        print(f"resuming {out} from epoch {start}")

    metrics: dict[str, float] = {}
    speed = Throughput()
    model.train()
    for epoch in range(start + 1, cfg.epochs + 1):
        order = torch.randperm(len(examples), generator=gen).tolist()
        total, count = 0.0, 0
        batches = range(0, len(order), cfg.batch_size)
        for b in tqdm(
            batches, desc=f"sft epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False, mininterval=1.0
        ):
            tokens, mask = collate([examples[i] for i in order[b : b + cfg.batch_size]], tokenizer.pad_id)
            loss = completion_loss(model, tokens, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * int(mask.sum())
            count += int(mask.sum())
            speed.add(tokens.numel())
        metrics = {"losses/sft_loss": total / count, "charts/SPS": speed.rate()}
        if cfg.align_interval and epoch % cfg.align_interval == 0:
            assert align_fn is not None
            metrics.update(align_fn(model, epoch))
            model.train()
        logger.log(epoch, metrics)
        print(f"epoch {epoch}: completion loss {metrics['losses/sft_loss']:.3f}")
        ckpt.save(model, opt, gen, epoch, meta)
        if on_epoch is not None:
            on_epoch(epoch)
    logger.close()
    save_checkpoint(out / "model", model, tokenizer, meta={**meta, "epochs": cfg.epochs, "metrics": metrics})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
