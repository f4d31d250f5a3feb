"""Pretraining: self-supervised next-token prediction on a corpus (the first stage of the pipeline).

Reads top to bottom: build the tokenizer and token streams, the model and AdamW; then for each step sample random
windows, take a gradient step with clipping under a warm-up + cosine schedule, and every so often evaluate,
log and checkpoint. Killed mid-run, the same command resumes from the last checkpoint and follows the same curve.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from agents.checkpoint import save_checkpoint
from agents.logger import RunLogger
from agents.model import LMConfig, LSTMLM, complete
from agents.training import (
    Checkpointer,
    Throughput,
    check_positive,
    cosine_lr,
    document_chars,
    encode_stream,
    evaluate_stream,
    make_optimizer,
)
from textgym.corpus import load_corpus
from textgym.tokenizer import DEFAULT_VOCAB_SIZE, TextTokenizer, get_tokenizer


@dataclass
class PretrainConfig:
    """Options of a pretraining run (``textgym pretrain --help`` shows the same)."""

    corpus: str | None = None
    """Corpus: None for the built-in one, a .txt file, a folder of .txt files, or a .jsonl with a "text" field."""
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
    out: str = "runs/pretrain"
    """Output folder: checkpoint/ (resume point), model/ (final), progress.csv, TensorBoard events."""
    samples: int = 4
    """Samples printed at the end (from held-out prompts)."""
    progress: bool = True
    """Show a progress bar."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored with the checkpoint."""

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


def pretrain(cfg: PretrainConfig, on_step: Callable[[int], None] | None = None) -> dict[str, float]:
    """Run (or resume) pretraining; return the final validation metrics.

    Args:
        cfg: the options.
        on_step: called after every optimizer step with the step number (tests use it to simulate a crash).
    """
    out = Path(cfg.out)
    corpus = load_corpus(cfg.corpus)
    tokenizer = TextTokenizer.from_file(cfg.tokenizer) if cfg.tokenizer else get_tokenizer(corpus, cfg.vocab_size)
    train = encode_stream(tokenizer, corpus.train)
    val_docs = corpus.validation or corpus.train[: max(1, len(corpus.train) // 20)]
    val = encode_stream(tokenizer, val_docs)
    val_chars = document_chars(val_docs)
    if len(train) <= cfg.seq_len + 1:
        raise ValueError(f"corpus {corpus.name!r} has {len(train)} tokens, too few for seq_len={cfg.seq_len}")

    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # nn.Module initialisers draw from the global generator
    model = LSTMLM(cfg.model_config(tokenizer.vocab_size))
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    ckpt = Checkpointer(out, tokenizer)
    start = ckpt.restore(model, opt, gen) or 0
    logger = RunLogger(out, resume_step=start if start else None)
    meta = {"stage": "pretrain", "corpus": corpus.name, "config": asdict(cfg)}
    if start:
        print(f"resuming {out} from step {start}")

    offsets = torch.arange(cfg.seq_len + 1)
    speed = Throughput()
    metrics: dict[str, float] = {}
    model.train()
    bar = tqdm(
        range(start, cfg.steps),
        initial=start,
        total=cfg.steps,
        desc="pretrain",
        disable=not cfg.progress,
        mininterval=1.0,
    )
    for step in bar:
        lr = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(train) - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        batch = train[starts[:, None] + offsets]
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        speed.add(batch[:, 1:].numel())
        done = step + 1

        if done % cfg.log_interval == 0:
            logger.log(
                done,
                {
                    "losses/train_loss": loss.item(),
                    "losses/grad_norm": grad_norm.item(),
                    "charts/learning_rate": lr,
                    "charts/SPS": speed.rate(),
                },
            )
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if done % cfg.eval_interval == 0 or done == cfg.steps:
            metrics = evaluate_stream(model, val, val_chars)
            logger.log(done, {f"eval/{k}": v for k, v in metrics.items()})
            bar.write(
                f"step {done}: val loss {metrics['loss']:.3f}, ppl {metrics['perplexity']:.1f}, "
                f"{metrics['nats_per_char']:.3f} nats/char"
            )
        if done % cfg.checkpoint_interval == 0 or done == cfg.steps:
            ckpt.save(model, opt, gen, done, {**meta, "eval": metrics})
        if on_step is not None:
            on_step(done)
    bar.close()
    logger.close()

    if not metrics:
        metrics = evaluate_stream(model, val, val_chars)
    save_checkpoint(out / "model", model, tokenizer, meta={**meta, "step": cfg.steps, "eval": metrics})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if cfg.samples:
        print_samples(model, tokenizer, [" ".join(d.split()[:4]) for d in val_docs[: cfg.samples]], seed=cfg.seed)
    return metrics


def print_samples(
    model: LSTMLM, tokenizer: TextTokenizer, prompts: list[str], seed: int, max_new_tokens: int = 24
) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p, c in zip(prompts, complete(model, tokenizer, prompts, max_new_tokens, gen)[2]):
        print(f"  {p} | {c.strip()}")
