"""Pretraining: self-supervised next-token prediction on a corpus (the first stage of the pipeline).

Build the tokenizer and token streams, the model and AdamW; each step samples random windows of the training stream
and takes a gradient step with clipping under a warm-up + cosine schedule. The run loop (:mod:`agents.runner`)
evaluates on the held-out documents, logs and checkpoints; killed mid-run, the same command resumes from the last
checkpoint and follows the same curve.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from agents.model import LSTMLM, LMConfig, complete
from agents.runner import Schedule, resolve_device, run
from agents.training import (
    check_positive,
    cosine_lr,
    document_chars,
    encode_stream,
    evaluate_stream,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
)
from textgym.corpus import BUILTIN, check_separator, load_corpus
from textgym.tokenizer import DEFAULT_VOCAB_SIZE, TextTokenizer, atomic_write_text, get_tokenizer


@dataclass
class PretrainConfig:
    """Options of a pretraining run (``textgym pretrain --help`` shows the same)."""

    corpus: str | None = None
    """Corpus: None for the built-in one, a .txt file, a folder of .txt files, or a .jsonl with a "text" field."""
    separator: str = "auto"
    """How a .txt corpus is split into documents: 'blank' (blank lines), '%' (lines holding only %), 'line' (one
    document per line), or 'auto' (% lines where there are any, else blank lines)."""
    encoding: str = "utf-8"
    """Text encoding of a .txt corpus (e.g. latin-1); a byte that does not decode is an error."""
    vocab_size: int = DEFAULT_VOCAB_SIZE
    """Tokenizer vocabulary size (the env's default tokenizer for the same corpus and size is reused)."""
    tokenizer: str | None = None
    """Path to a tokenizer.json to use instead of training one."""
    embed_dim: int = 128
    """Embedding width."""
    hidden_dim: int = 256
    """LSTM state width."""
    num_layers: int = 1
    """Stacked LSTM layers."""
    dropout: float = 0.0
    """Dropout rate in [0, 1)."""
    seq_len: int = 64
    """Tokens per training window (truncated back-propagation length)."""
    batch_size: int = 32
    """Windows per step (32 beat 64 at equal time here: more, smaller updates)."""
    steps: int = 3000
    """Optimizer steps."""
    lr: float = 3e-3
    """Peak learning rate."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    min_lr_ratio: float = 0.05
    """Final learning rate as a fraction of the peak (cosine decay)."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    eval_interval: int = 500
    """Steps between validation evaluations."""
    checkpoint_interval: int = 500
    """Steps between checkpoints (resume points)."""
    log_interval: int = 50
    """Steps between training-loss log rows."""
    seed: int = 0
    """Seed of the torch generator that draws batches and initial weights."""
    device: str = "auto"
    """Where to train: 'auto' (a CUDA GPU where torch sees one, else the CPU), 'cpu' or 'cuda'."""
    out: str = "runs/pretrain"
    """Output folder: checkpoint/ (resume point), model/ (final), progress.csv, TensorBoard events."""
    samples: int = 4
    """Samples printed at the end (from held-out prompts)."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_positive(
            vocab_size=self.vocab_size,
            embed_dim=self.embed_dim,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            seq_len=self.seq_len,
            batch_size=self.batch_size,
            steps=self.steps,
            lr=self.lr,
            eval_interval=self.eval_interval,
            checkpoint_interval=self.checkpoint_interval,
            log_interval=self.log_interval,
            grad_clip=self.grad_clip,
        )
        check_separator(self.separator)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"warmup_steps and weight_decay must be >= 0 and min_lr_ratio in [0, 1]; got {self.warmup_steps!r}, "
                f"{self.weight_decay!r}, {self.min_lr_ratio!r}"
            )

    def model_config(self, vocab_size: int) -> LMConfig:
        return LMConfig(vocab_size, self.embed_dim, self.hidden_dim, self.num_layers, self.dropout)


PRESETS: dict[str, dict[str, Any]] = {
    # About 2.5 minutes on 2 CPU cores (Embedding 128, LSTM 256, 2000-token BPE, 6.1 M training tokens).
    "cpu": {},
    # A larger model for longer runs (Embedding 256, 2 x LSTM 1024: about 1.2 s a step, some 7 hours on 2 cores).
    "large": dict(embed_dim=256, hidden_dim=1024, num_layers=2, dropout=0.1, steps=20000, lr=2e-3, seq_len=128),
    # Seconds: for tests and smoke runs.
    "tiny": dict(
        embed_dim=32,
        hidden_dim=64,
        steps=30,
        warmup_steps=5,
        eval_interval=15,
        checkpoint_interval=15,
        log_interval=5,
        batch_size=16,
        seq_len=32,
        samples=2,
    ),
}


def preset(name: str, **overrides: Any) -> PretrainConfig:
    """A named preset with some options overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return replace(PretrainConfig(**PRESETS[name]), **overrides)


class Pretraining:
    """Next-token prediction on random windows of the training stream (a :class:`~agents.runner.Trainable`)."""

    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        self.corpus = corpus = load_corpus(cfg.corpus, separator=cfg.separator, encoding=cfg.encoding)
        if not corpus.validation:
            few = len(corpus.train) < 100
            raise ValueError(
                f"corpus {corpus.name!r}: none of its {len(corpus.train)} documents is held out for validation (about "
                "5% are, chosen by a hash of their text), so there would be no validation loss to report; "
                + (
                    "it has too few documents: say how they are separated (--separator blank, % or line, one "
                    "document per line) or give more text"
                    if few
                    else "give more documents"
                )
            )
        self.tokenizer = (
            TextTokenizer.from_file(cfg.tokenizer) if cfg.tokenizer else get_tokenizer(corpus, cfg.vocab_size)
        )
        self.train_stream = encode_stream(self.tokenizer, corpus.train).to(self.device)
        self.val_stream = encode_stream(self.tokenizer, corpus.validation).to(self.device)
        self.val_chars = document_chars(corpus.validation)
        if len(self.train_stream) <= cfg.seq_len + 1:
            raise ValueError(
                f"corpus {corpus.name!r} has {len(self.train_stream)} tokens, too few for seq_len={cfg.seq_len}"
            )
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # nn.Module initialisers draw from the global generator (on the CPU)
        self.model = LSTMLM(cfg.model_config(self.tokenizer.vocab_size)).to(self.device)
        self.opt = make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        self.offsets = torch.arange(cfg.seq_len + 1, device=self.device)
        self.steps_done = 0
        self.tokens = 0

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        lr = cosine_lr(self.steps_done, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in self.opt.param_groups:
            group["lr"] = lr
        high = len(self.train_stream) - cfg.seq_len - 1
        starts = torch.randint(0, high, (cfg.batch_size,), generator=self.gen, device=self.device)
        batch = self.train_stream[starts[:, None] + self.offsets]
        self.model.train()
        logits, _ = self.model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.steps_done += 1
        self.tokens += batch[:, 1:].numel()
        return {"losses/train_loss": loss.item(), "losses/grad_norm": grad_norm.item(), "charts/learning_rate": lr}

    def evaluate(self) -> dict[str, float]:
        metrics = evaluate_stream(self.model, self.val_stream, self.val_chars)
        return {f"eval/{k}": v for k, v in metrics.items()}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, data = optimizer_state(self.opt, self.gen)
        return tensors, {**data, "steps_done": self.steps_done, "tokens": self.tokens}

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        load_optimizer_state(self.opt, self.gen, tensors, data)
        self.steps_done, self.tokens = data["steps_done"], data["tokens"]


def pretrain(cfg: PretrainConfig, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Run (or resume) pretraining; return the final validation metrics (``loss``, ``perplexity``,
    ``nats_per_char``).

    Args:
        cfg: the options.
        on_step: called after every optimizer step with the step number (tests use it to simulate a crash).
    """
    job = Pretraining(cfg)
    out = Path(cfg.out)
    source = None if cfg.corpus is None or cfg.corpus == BUILTIN else str(Path(cfg.corpus).resolve())
    meta = {
        "stage": "pretrain",
        "corpus": {"source": source, "separator": cfg.separator, "encoding": cfg.encoding},
        "config": asdict(cfg),
    }
    schedule = Schedule(cfg.steps, cfg.eval_interval, cfg.checkpoint_interval, cfg.log_interval)
    result = run(job, schedule, out, meta, desc="pretrain", progress=cfg.progress, on_step=on_step)
    metrics = {k.removeprefix("eval/"): v for k, v in (result.eval or job.evaluate()).items()}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if cfg.samples:
        prompts = [" ".join(d.split()[:4]) for d in job.corpus.validation[: cfg.samples]]
        print_samples(job.model, job.tokenizer, prompts, seed=cfg.seed)
    return metrics


def print_samples(
    model: LSTMLM, tokenizer: TextTokenizer, prompts: list[str], seed: int, max_new_tokens: int = 24
) -> None:
    device = next(model.parameters()).device
    gen = torch.Generator(device).manual_seed(seed)
    for p, c in zip(prompts, complete(model, tokenizer, prompts, max_new_tokens, gen)[2]):
        print(f"  {p} | {c.strip()}")
