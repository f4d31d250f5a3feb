"""Supervised fine-tuning on labelled prompt/completion pairs (the second stage of the pipeline).

Data: JSONL, one ``{"prompt": ..., "completion": ...}`` object per line. Each example is
``<bos> prompt completion <eos>`` and the loss counts only the completion's tokens (and its ``<eos>``), so the model
learns to answer, not to write prompts. Starts from a pretrained checkpoint, whose tokenizer it keeps.

The seed's interleaving: with ``align_interval = k``, an alignment pass (:class:`AlignmentPass`, REINFORCE updates on
the model being fine-tuned) runs after every k-th epoch, so supervised and reinforcement updates alternate.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from agents.checkpoint import corpus_record, load_checkpoint
from agents.model import LSTMLM
from agents.reinforce import SHORT_RUN, Reinforce, ReinforceConfig
from agents.runner import Schedule, resolve_device, run
from agents.training import check_positive, load_optimizer_state, make_optimizer, optimizer_state
from textgym.corpus import read_jsonl
from textgym.tokenizer import TextTokenizer, atomic_write_text

ALIGN_REFERENCES = ("snapshot", "init")


@dataclass
class SFTConfig:
    """Options of a supervised fine-tuning run (``textgym sft --help`` shows the same)."""

    data: str = ""
    """JSONL file of {"prompt", "completion"} pairs."""
    init: str = "runs/pretrain/model"
    """Checkpoint to start from; its tokenizer is kept."""
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
    """Run a REINFORCE alignment pass after every this many epochs (0 = never)."""
    align_reward: str = "sentiment"
    """Feedback spec of the alignment passes."""
    align_steps: int = 20
    """REINFORCE updates per alignment pass."""
    align_ref: str = "snapshot"
    """KL reference of the alignment passes: 'snapshot' (the model as it stands before each pass, frozen: the pass
    stays near what fine-tuning made, as InstructGPT's reference is the fine-tuned model) or 'init' (the --init
    checkpoint, which pulls every pass back toward it, against the fine-tuning)."""
    seed: int = 0
    """Seed of the data order (a NumPy generator per epoch) and of the alignment passes."""
    device: str = "auto"
    """Where to train: 'auto' (a CUDA GPU where torch sees one, else the CPU), 'cpu' or 'cuda'."""
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
        if self.align_interval:
            check_positive(align_steps=self.align_steps)
        if self.align_ref not in ALIGN_REFERENCES:
            raise ValueError(f"align_ref {self.align_ref!r} is not one of {', '.join(ALIGN_REFERENCES)}")


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


class AlignmentPass:
    """REINFORCE updates on the model being fine-tuned, run after every ``align_interval``-th epoch.

    Its optimizer, generators and β persist across passes and are saved with fine-tuning's checkpoints, so a resumed
    run follows the same curve. The KL reference is a frozen snapshot of the model before each pass
    (``reference="snapshot"``) or the ``init`` checkpoint (``"init"``). ``options`` are further
    :class:`~agents.reinforce.ReinforceConfig` fields (``num_envs``, ``max_new_tokens``, ``prompts``, ...).
    """

    def __init__(
        self, reward: str, steps: int, seed: int, init: str, reference: str = "snapshot", **options: Any
    ) -> None:
        check_positive(align_steps=steps)
        if reference not in ALIGN_REFERENCES:
            raise ValueError(f"alignment reference {reference!r} is not one of {', '.join(ALIGN_REFERENCES)}")
        options = {**SHORT_RUN, **options}  # (a pass is a few updates between epochs)
        self.cfg = ReinforceConfig(reward=reward, init=init, seed=seed, progress=False, **options)
        self.steps, self.reference = steps, reference
        self.agent: Reinforce | None = None

    def bind(self, model: LSTMLM, device: torch.device) -> None:
        """Build the agent around ``model`` (the model being fine-tuned, trained in place)."""
        ref = copy.deepcopy(model) if self.reference == "snapshot" else None  # None: the init checkpoint
        self.agent = Reinforce(self.cfg, policy=model, ref=ref, device=device)

    def __call__(self, model: LSTMLM) -> dict[str, float]:
        assert self.agent is not None and self.agent.policy is model, "bind() the pass to the model first"
        if self.reference == "snapshot":  # the model as fine-tuning left it, frozen for this pass
            self.agent.ref = copy.deepcopy(model).requires_grad_(False).eval()
        metrics: dict[str, float] = {}
        for _ in range(self.steps):
            metrics = self.agent.step()
        return {"align/" + k.split("/", 1)[-1]: v for k, v in metrics.items()}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        assert self.agent is not None
        tensors, data = self.agent.state()
        return {f"align.{k}": v for k, v in tensors.items()}, {"align": data}

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        assert self.agent is not None
        self.agent.load_state({k[6:]: v for k, v in tensors.items() if k.startswith("align.")}, data["align"])


class FineTuning:
    """Supervised fine-tuning, one batch per step, with the interleaved alignment passes (a run-loop Trainable)."""

    def __init__(self, cfg: SFTConfig, align: AlignmentPass | None = None) -> None:
        if not cfg.data:
            raise ValueError('sft needs data: a JSONL file of {"prompt", "completion"} pairs')
        if cfg.align_interval and align is None:
            align = AlignmentPass(cfg.align_reward, cfg.align_steps, cfg.seed, cfg.init, cfg.align_ref)
        self.cfg, self.align = cfg, align
        self.device = resolve_device(cfg.device)
        self.model, self.tokenizer, self.init_config = load_checkpoint(cfg.init, device=self.device)
        self.examples = load_pairs(cfg.data, self.tokenizer, cfg.max_len)
        self.batches_per_epoch = math.ceil(len(self.examples) / cfg.batch_size)
        self.opt = make_optimizer(self.model, cfg.lr, cfg.weight_decay)
        if cfg.align_interval:
            assert align is not None
            align.bind(self.model, self.device)
        self.steps_done, self.tokens = 0, 0
        self._order: tuple[int, list[int]] = (-1, [])  # (epoch, its order of the examples)
        self.epoch_loss = [0.0, 0]  # this epoch's summed completion loss and completion tokens
        self.last_metrics: dict[str, float] = {}  # the last epoch's

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        epoch, b = divmod(self.steps_done, self.batches_per_epoch)
        # Each epoch's order from its own generator: a run resumed mid-epoch reads the same batches.
        if self._order[0] != epoch:
            self._order = (epoch, np.random.default_rng([cfg.seed, epoch]).permutation(len(self.examples)).tolist())
        chosen = self._order[1][b * cfg.batch_size : (b + 1) * cfg.batch_size]
        tokens, mask = collate([self.examples[i] for i in chosen], self.tokenizer.pad_id)
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        self.model.train()
        loss = completion_loss(self.model, tokens, mask)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.steps_done += 1
        self.tokens += int((tokens != self.tokenizer.pad_id).sum())
        count = int(mask.sum())
        self.epoch_loss = [self.epoch_loss[0] + loss.item() * count, self.epoch_loss[1] + count]
        if b + 1 < self.batches_per_epoch:
            return {}
        # The epoch's end: its mean loss, then the alignment pass where one is due.
        epoch_loss = self.epoch_loss[0] / self.epoch_loss[1]
        self.epoch_loss = [0.0, 0]
        metrics = {"losses/sft_loss": epoch_loss, "train/epoch": float(epoch + 1)}
        tqdm.write(f"epoch {epoch + 1}: completion loss {epoch_loss:.3f}")
        if cfg.align_interval and (epoch + 1) % cfg.align_interval == 0:
            assert self.align is not None
            metrics.update(self.align(self.model))
        self.last_metrics = metrics
        return dict(metrics)

    def evaluate(self) -> dict[str, float]:
        return {}  # no held-out pairs: the epoch's training loss is logged instead

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, data = optimizer_state(self.opt)
        data.update(
            steps_done=self.steps_done, tokens=self.tokens, epoch_loss=self.epoch_loss, last_metrics=self.last_metrics
        )
        if self.cfg.align_interval:
            assert self.align is not None
            align_tensors, align_data = self.align.state()
            tensors.update(align_tensors)
            data.update(align_data)
        return tensors, data

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        load_optimizer_state(self.opt, None, tensors, data)
        self.steps_done, self.tokens, self.epoch_loss = data["steps_done"], data["tokens"], data["epoch_loss"]
        self.last_metrics = data["last_metrics"]
        if self.cfg.align_interval:
            assert self.align is not None
            self.align.load_state(tensors, data)


def sft(
    cfg: SFTConfig, align: AlignmentPass | None = None, on_step: Callable[[int], None] | None = None
) -> dict[str, float]:
    """Fine-tune ``cfg.init`` on ``cfg.data``; return the last epoch's metrics.

    Args:
        cfg: the options.
        align: the alignment pass (built from cfg's ``align_*`` options when ``align_interval`` > 0 and None).
        on_step: called after each step (tests use it to simulate a crash).
    """
    job = FineTuning(cfg, align)
    if cfg.align_interval:
        print(
            f"alignment pass every {cfg.align_interval} epoch(s): {cfg.align_steps} REINFORCE updates toward "
            f"{cfg.align_reward!r}; KL reference: "
            + ("a frozen snapshot of the model before each pass" if cfg.align_ref == "snapshot" else cfg.init)
        )
    meta = {
        "stage": "sft",
        "init": cfg.init,
        "corpus": corpus_record(job.init_config),
        "align_reference": cfg.align_ref if cfg.align_interval else None,
        "config": asdict(cfg),
    }
    per_epoch = job.batches_per_epoch
    schedule = Schedule(cfg.epochs * per_epoch, per_epoch, per_epoch, log_interval=per_epoch)
    run(job, schedule, cfg.out, meta, desc="sft", progress=cfg.progress, on_step=on_step)
    atomic_write_text(Path(cfg.out) / "metrics.json", json.dumps(job.last_metrics, indent=2) + "\n")
    return job.last_metrics
