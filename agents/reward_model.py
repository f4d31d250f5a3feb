"""A reward model learned from pairwise preferences (Bradley-Terry), and the ``reward-model`` feedback that uses it.

    P(chosen ≻ rejected) = σ(r(x, y_chosen) − r(x, y_rejected)),    loss = −log σ(r_chosen − r_rejected)

The model (:class:`agents.model.RewardModel`) starts from a language-model checkpoint's embedding and LSTM, adds a
scalar head on the last state and a per-token lexicon summed over the completion, and is trained in the shared run
loop (progress, logs, checkpoints, resume, Ctrl-C). It is saved as a checkpoint directory whose ``config.json`` says
``"kind": "reward-model"``, so that a reward model and a language model are never confused. The feedback
``reward-model(path=...)`` scores completions with it; it reaches the env through the ``textgym.rewards`` entry
point, like a third party's feedback.

Held-out metrics: pairwise accuracy (r_chosen > r_rejected; a tie counts as wrong) and the mean margin
r_chosen − r_rejected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from agents.checkpoint import corpus_record, load_checkpoint
from agents.model import RewardModel, lexicon_ids
from agents.runner import Schedule, resolve_device, run
from agents.training import check_positive, load_optimizer_state, optimizer_state
from textgym.preferences import Preferences, read_preferences
from textgym.tokenizer import TextTokenizer


@dataclass
class RewardModelConfig:
    """Options of ``textgym reward-model train``."""

    data: str = "runs/prefs.jsonl"
    """Preference JSONL (plain or .gz): {"prompt"?, "chosen", "rejected"} per line (TRL's or HH-RLHF's format);
    rows marked "tie": true are left out."""
    init: str = "runs/pretrain/model"
    """Language-model checkpoint whose embedding and LSTM start the reward model (its tokenizer is the model's)."""
    eval_pairs: int = 1000
    """Pairs held out for evaluation (the last ones of a seeded shuffle of --data), unless --eval-data is given."""
    eval_data: str = ""
    """A separate held-out preference file to evaluate on (then all of --data is trained on)."""
    epochs: int = 4
    """Passes over the training pairs."""
    batch_size: int = 64
    """Pairs per step."""
    lr: float = 2e-2
    """Adam learning rate of the word lexicon (it starts at zero and needs large steps)."""
    trunk_lr: float = 3e-4
    """Adam learning rate of the LSTM trunk and its head (pretrained: small steps; 0 freezes them)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices."""
    lexicon_l1: float = 1e-4
    """L1 penalty on the lexicon's word scores: most words carry no preference, and without it the lexicon learns
    the noise of the words that happen to stand beside the ones that matter (it fits the training pairs and not the
    held-out ones)."""
    max_prompt_tokens: int = 64
    """Prompt tokens kept (the last ones: a long dialogue's end is what the answer follows)."""
    max_completion_tokens: int = 64
    """Completion tokens kept (the first ones)."""
    eval_interval: int = 200
    """Steps between evaluations."""
    checkpoint_interval: int = 200
    """Steps between checkpoints (resume points)."""
    max_minutes: float = 0.0
    """Stop after this many minutes (0 = no limit)."""
    seed: int = 0
    """Seed of the split and the minibatch order."""
    device: str = "auto"
    """'auto', 'cpu' or 'cuda'."""
    out: str = "runs/reward_model"
    """Output folder: checkpoint/ (resume point), model/ (the reward model), progress.csv."""
    progress: bool = True
    """Show a progress bar (without it, a line per evaluation)."""

    def __post_init__(self) -> None:
        check_positive(
            eval_pairs=self.eval_pairs,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            max_prompt_tokens=self.max_prompt_tokens,
            max_completion_tokens=self.max_completion_tokens,
            eval_interval=self.eval_interval,
            checkpoint_interval=self.checkpoint_interval,
        )
        for name in ("trunk_lr", "weight_decay", "lexicon_l1", "max_minutes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


class Encoded:
    """(prompt, completion) pairs ready to batch: token ids ``<bos> + prompt`` (its last tokens) + completion, and the
    completion's lexicon rows (:func:`agents.model.lexicon_ids`)."""

    def __init__(
        self,
        tokenizer: TextTokenizer,
        prompts: Sequence[str],
        completions: Sequence[str],
        max_prompt: int,
        max_new: int,
    ) -> None:
        prompt_ids = tokenizer.encode_batch(list(prompts))
        completion_ids = tokenizer.encode_batch(list(completions))
        self.rows = [
            ([tokenizer.bos_id] + p[-max_prompt:] if max_prompt else [tokenizer.bos_id], c[:max_new])
            for p, c in zip(prompt_ids, completion_ids)
        ]
        self.words = [lexicon_ids(c) for c in completions]
        self.pad_id = tokenizer.pad_id

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, index: Sequence[int]) -> Encoded:
        sub = Encoded.__new__(Encoded)
        sub.rows, sub.words, sub.pad_id = [self.rows[i] for i in index], [self.words[i] for i in index], self.pad_id
        return sub

    def batch(self, index: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(token rows right-padded, their lengths, lexicon rows padded with 0) of rows ``index``."""
        rows = [self.rows[i] for i in index]
        lengths = [len(p) + len(c) for p, c in rows]
        seqs = torch.full((len(rows), max(lengths)), self.pad_id, dtype=torch.long)
        for i, (p, c) in enumerate(rows):
            seqs[i, : lengths[i]] = torch.tensor(p + c)
        words = [self.words[i] for i in index]
        lexicon = torch.zeros(len(rows), max(1, max(map(len, words))), dtype=torch.long)
        for i, w in enumerate(words):
            lexicon[i, : len(w)] = torch.tensor(w, dtype=torch.long)
        return seqs.to(device), torch.tensor(lengths), lexicon.to(device)


@torch.no_grad()
def score(model: RewardModel, encoded: Encoded, batch: int = 256) -> np.ndarray:
    """Rewards of every encoded row, in batches of rows of similar length (less padding; 256 rows ran fastest on 2
    cores, 5-40% faster than 512-4096)."""
    was_training = model.training
    model.eval()
    device = model.score.weight.device
    order = np.argsort([len(p) + len(c) for p, c in encoded.rows], kind="stable")
    out = np.zeros(len(encoded))
    for s in range(0, len(order), batch):
        index = order[s : s + batch]
        out[index] = model(*encoded.batch(index.tolist(), device)).double().cpu().numpy()
    model.train(was_training)
    return out


def pairwise_metrics(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, float]:
    """Accuracy (a tie counts as wrong), mean margin and mean loss of rewards of chosen and rejected completions."""
    margin = chosen - rejected
    return {
        "accuracy": float((margin > 0).mean()),
        "margin": float(margin.mean()),
        "loss": float(np.mean(np.logaddexp(0.0, -margin))),
    }


class RewardModelTraining:
    """Bradley-Terry training as a run-loop Trainable: one step is one minibatch of pairs."""

    def __init__(self, cfg: RewardModelConfig) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        lm, self.tokenizer, init_config = load_checkpoint(cfg.init)
        self.corpus = corpus_record(init_config)
        self.model = RewardModel(lm.config).to(self.device)
        self.model.embed.load_state_dict(lm.embed.state_dict())
        self.model.lstm.load_state_dict(lm.lstm.state_dict())

        prefs = read_preferences(cfg.data)
        if cfg.eval_data:  # the held-out pairs follow the training ones
            held_out = read_preferences(cfg.eval_data)
            n = len(prefs)
            prefs = Preferences(prefs.prompts + held_out.prompts, prefs.chosen + held_out.chosen,
                                prefs.rejected + held_out.rejected, prefs.ties)  # fmt: skip
            self.train_index, self.eval_index = np.arange(n), np.arange(n, len(prefs))
        elif len(prefs) <= cfg.eval_pairs:
            raise ValueError(
                f"{cfg.data} holds {len(prefs)} pairs (ties left out: {prefs.ties}), too few to hold out "
                f"eval_pairs={cfg.eval_pairs} and train on the rest: give more pairs or a smaller --eval-pairs"
            )
        else:
            order = np.random.default_rng(cfg.seed).permutation(len(prefs))
            self.train_index, self.eval_index = order[: -cfg.eval_pairs], order[-cfg.eval_pairs :]
        self.ties = prefs.ties
        self.chosen, self.rejected = self._encode(prefs, prefs.chosen), self._encode(prefs, prefs.rejected)
        trunk = [p for n, p in self.model.named_parameters() if not n.startswith("lexicon.")]
        if cfg.trunk_lr == 0:
            for p in trunk:
                p.requires_grad_(False)
        groups = [{"params": list(self.model.lexicon.parameters()), "lr": cfg.lr, "weight_decay": 0.0}]
        if cfg.trunk_lr > 0:
            groups.append({"params": trunk, "lr": cfg.trunk_lr, "weight_decay": cfg.weight_decay})
        self.opt = torch.optim.AdamW(groups, betas=(0.9, 0.99))
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.epoch_order = self.rng.permutation(self.train_index)
        self.position = 0
        self.tokens = 0

    def _encode(self, prefs: Preferences, completions: list[str]) -> Encoded:
        cfg = self.cfg
        return Encoded(self.tokenizer, prefs.prompts, completions, cfg.max_prompt_tokens, cfg.max_completion_tokens)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train_index) // self.cfg.batch_size)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        if self.position >= len(self.epoch_order):
            self.epoch_order, self.position = self.rng.permutation(self.train_index), 0
        index = self.epoch_order[self.position : self.position + cfg.batch_size].tolist()
        self.position += cfg.batch_size
        self.model.train()
        r_chosen = self.model(*self.chosen.batch(index, self.device))
        r_rejected = self.model(*self.rejected.batch(index, self.device))
        margin = r_chosen - r_rejected
        loss = -F.logsigmoid(margin).mean()
        if cfg.lexicon_l1:
            loss = loss + cfg.lexicon_l1 * self.model.lexicon.weight.abs().sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.opt.step()
        self.tokens += sum(len(p) + len(c) for i in index for p, c in (self.chosen.rows[i], self.rejected.rows[i]))
        return {
            "losses/loss": float(loss.detach()),
            "train/accuracy": float((margin > 0).float().mean()),
            "train/margin": float(margin.detach().mean()),
            "losses/grad_norm": float(grad_norm),
        }

    def evaluate(self) -> dict[str, float]:
        index = self.eval_index.tolist()
        chosen = score(self.model, self.chosen.subset(index))
        rejected = score(self.model, self.rejected.subset(index))
        return {f"eval/{k}": v for k, v in pairwise_metrics(chosen, rejected).items()}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, data = optimizer_state(self.opt)
        tensors["epoch_order"] = torch.from_numpy(self.epoch_order.astype(np.int64))
        data.update(np_rng=self.rng.bit_generator.state, position=self.position, tokens=self.tokens)
        return tensors, data

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        load_optimizer_state(self.opt, None, tensors, data)
        self.epoch_order = tensors["epoch_order"].numpy()
        self.rng.bit_generator.state = data["np_rng"]
        self.position, self.tokens = data["position"], data["tokens"]


def train(cfg: RewardModelConfig, on_step: Any = None) -> dict[str, float]:
    """Train a reward model on ``cfg.data``; resume from ``cfg.out/checkpoint`` if present. Returns eval metrics."""
    trainer = RewardModelTraining(cfg)
    before = trainer.evaluate()
    print(
        f"reward model: {len(trainer.train_index)} training pairs, {len(trainer.eval_index)} held out, "
        f"{trainer.ties} ties left out; before training: accuracy {before['eval/accuracy']:.3f}"
    )
    meta = {
        "stage": "reward-model",
        "init": cfg.init,
        "data": cfg.data,
        "corpus": trainer.corpus,
        "config": asdict(cfg),
    }
    steps = cfg.epochs * trainer.steps_per_epoch
    schedule = Schedule(steps, cfg.eval_interval, cfg.checkpoint_interval, max_minutes=cfg.max_minutes)
    result = run(trainer, schedule, cfg.out, meta, desc="reward-model", progress=cfg.progress, start_metrics=before,
                 on_step=on_step)  # fmt: skip
    final = result.eval or trainer.evaluate()
    print(
        f"held-out pairwise accuracy {final['eval/accuracy']:.3f} (ties count as wrong), mean margin "
        f"{final['eval/margin']:.3f}; reward model in {Path(cfg.out) / 'model'}"
    )
    return final


def load_scorer(path: str, batch: int = 256) -> Any:
    """A saved reward model as ``scorer(prompts, completions) -> rewards``, encoding as its training did."""
    model, tokenizer, config = load_checkpoint(path, kind="reward-model")
    limits = config.get("meta", {}).get("config", {})
    max_prompt, max_new = limits.get("max_prompt_tokens", 64), limits.get("max_completion_tokens", 64)

    def scorer(prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return score(model, Encoded(tokenizer, prompts, completions, max_prompt, max_new), batch)

    return scorer


def evaluate_file(model_path: str, data: str, batch: int = 256) -> dict[str, float]:
    """Pairwise accuracy, margin and loss of a saved reward model on a preference file (ties left out, counted)."""
    scorer = load_scorer(model_path, batch)
    prefs = read_preferences(data)
    chosen, rejected = scorer(prefs.prompts, prefs.chosen), scorer(prefs.prompts, prefs.rejected)
    return {**pairwise_metrics(chosen, rejected), "pairs": float(len(prefs)), "ties": float(prefs.ties)}


def make_reward_model_feedback(path: str = "", batch: int = 256) -> Any:
    """The ``reward-model(path=...)`` feedback: a saved reward model's score of each (prompt, completion)."""
    if not path:
        raise ValueError("feedback 'reward-model' needs the path of a reward model: reward-model(path=runs/rm/model)")
    scorer = load_scorer(path, batch)

    def reward_model(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        return scorer(prompts, completions)

    return reward_model
