"""What pretraining and fine-tuning share: option checks, the optimizer, the learning-rate schedule, token streams and
their evaluation. (The run loop and checkpoints are in :mod:`agents.runner`.)"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from agents.checkpoint import optimizer_from_state, optimizer_to_state
from agents.model import LSTMLM
from textgym.tokenizer import TextTokenizer


def check_positive(**values: Any) -> None:
    """Raise a ValueError naming the first option that is not > 0."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def make_optimizer(model: LSTMLM, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, as in nanoGPT); frozen parameters are left out."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))


LR_SCHEDULES = ("constant", "linear", "cosine")


def decayed_lr(progress: float, lr: float, schedule: str, min_ratio: float) -> float:
    """The learning rate at ``progress`` (0 at the start, 1 at the end of the run): ``lr`` throughout ("constant"),
    or decayed to ``min_ratio * lr`` along a straight line ("linear") or a half cosine ("cosine")."""
    p = min(1.0, max(0.0, progress))
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return lr * (1 - (1 - min_ratio) * p)
    if schedule == "cosine":
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p)))
    raise ValueError(f"lr schedule {schedule!r} is not one of {', '.join(LR_SCHEDULES)}")


def cosine_lr(step: int, total: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up for ``warmup`` steps, then cosine decay to ``min_ratio * lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return decayed_lr((step - warmup) / max(1, total - warmup), lr, "cosine", min_ratio)


def optimizer_state(
    opt: torch.optim.Optimizer, gen: torch.Generator | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state and a torch generator's, as (tensors, JSON data) for a checkpoint's trainer state."""
    tensors, data = optimizer_to_state(opt)
    if gen is not None:
        tensors["rng.torch"] = gen.get_state()
    return tensors, {"optimizer": data}


def load_optimizer_state(
    opt: torch.optim.Optimizer, gen: torch.Generator | None, tensors: dict[str, torch.Tensor], data: dict[str, Any]
) -> None:
    """The inverse of :func:`optimizer_state` (other entries in ``tensors`` and ``data`` are left alone)."""
    optimizer_from_state(opt, tensors, data["optimizer"])
    if gen is not None:
        gen.set_state(tensors["rng.torch"])


def encode_stream(tokenizer: TextTokenizer, documents: Sequence[str]) -> torch.Tensor:
    """All documents as one token stream: ``<bos> doc <eos> <bos> doc <eos> ...``."""
    ids: list[int] = []
    for doc in tokenizer.encode_batch(list(documents)):
        ids.append(tokenizer.bos_id)
        ids.extend(doc)
        ids.append(tokenizer.eos_id)
    return torch.tensor(ids, dtype=torch.long)


def document_chars(documents: Sequence[str]) -> int:
    """Characters to normalise a loss by: each document's length plus one for its end (the <eos> it predicts)."""
    return sum(len(d) + 1 for d in documents)


@torch.no_grad()
def evaluate_stream(
    model: LSTMLM, stream: torch.Tensor, chars: int, window: int = 256, lanes: int = 16
) -> dict[str, float]:
    """Loss on a token stream: per-token NLL, perplexity and nats per character.

    The stream is cut into ``lanes`` contiguous parts read side by side in windows of ``window`` tokens, carrying
    the LSTM state across windows, so every token is predicted from its whole document.
    """
    was_training = model.training
    model.eval()
    n = (len(stream) - 1) // lanes * lanes
    inputs = stream[:n].view(lanes, -1)
    targets = stream[1 : n + 1].view(lanes, -1)
    total, state = 0.0, None
    for s in range(0, inputs.shape[1], window):
        logits, state = model(inputs[:, s : s + window], state)
        total += F.cross_entropy(
            logits.flatten(0, 1).float(), targets[:, s : s + window].flatten(), reduction="sum"
        ).item()
    model.train(was_training)
    nll = total / n
    # Scale chars to the share of the stream that was scored (the last < lanes tokens are dropped).
    scored_chars = chars * n / (len(stream) - 1)
    return {"loss": nll, "perplexity": math.exp(nll), "nats_per_char": total / scored_chars}
