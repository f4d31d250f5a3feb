"""Teaching the LSTM state the feedback's score of the completion so far: a stage between pretraining and alignment.

π* ∝ π_ref·exp(r/β) tilts a word by what the completion has said already (VADER's sum saturates, so a first positive
word is worth about three times a second one), and a pretrained LSTM's state does not carry that: a ridge regression
from its state to the score so far explains none of it (:func:`state_probe`). A policy without the feature can only
tilt each word the same way everywhere, and REINFORCE does not teach it to the state within minutes of alignment.
This stage does, before alignment, on the reference's own completions (no β, no seed of the alignment: one taught
model serves every run of a task, as the pretrained one does):

* ``new_units`` new LSTM units, with as many embedding dimensions that only they read, learn the feature through a
  linear head (thrown away afterwards) that predicts the feedback on every prefix of each completion. Only they
  train, and the output layer reads them with weight 0, so the taught model is exactly the reference's language model
  with a wider state: aligning from it solves the same problem, toward the same optimum.
* ``new_units=0`` teaches the whole copy instead, distilled toward the reference by the exact per-token KL so that it
  stays about the same language model (about a nat per completion away at ``aux_weight`` 50).

The one run loop (:mod:`agents.runner`) drives it: progress, ``eval/state_r2`` at each evaluation, checkpoints, and a
killed run resumes. ``<out>/model`` is the taught checkpoint, for ``textgym train --init``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from agents.model import LSTMLM, LMConfig, Packed, completion_dists, completion_hidden, pack_completions, widened
from agents.reinforce import TAUGHT_STAGE, Reinforce, ReinforceConfig
from agents.rollout import sample_completions
from agents.runner import Schedule, check_precision, precision_context, run
from agents.training import check_positive, load_optimizer_state, optimizer_state


@dataclass
class TeachConfig:
    """Options of a teaching run (``textgym teach --help`` shows the same)."""

    init: str = "runs/pretrain/model"
    """The reference to copy and teach (its tokenizer is the env's)."""
    reward: str = "sentiment"
    """Feedback spec whose score of the completion so far is taught (the one the alignment will use)."""
    prompts: str = ""
    """JSONL prompt file, as for alignment (empty: the first words of held-out corpus documents)."""
    corpus: str = ""
    """Corpus to cut prompts from when --prompts is not given (empty: the one --init was pretrained on)."""
    max_new_tokens: int = 20
    """Longest completion in tokens (the alignment's)."""
    new_units: int = 16
    """New LSTM units that learn the feature, with as many embedding dimensions of their own; the language model stays
    exactly --init's. 16 learn it as well as 32 (held-out R² 0.60 and 0.61 after 1,000 steps) and cost 5% of the
    alignment's speed instead of 13%. 0: teach the whole copy, distilled toward --init."""
    steps: int = 1000
    """Batches of reference completions (at the defaults, about 4 minutes on 2 cores in bfloat16, 5 in float32;
    scripts/bench_teach.py)."""
    batch: int = 256
    """Completions per batch."""
    lr: float = 3e-3
    """Adam learning rate. 3e-3 reaches R² 0.61 in 1,000 steps where 1e-3 stopped at 0.36 after 500, and 1e-2 does not
    learn (docs/benchmarks.md, issue 14)."""
    aux_weight: float = 50.0
    """Weight of the score-so-far loss against the KL (new_units=0 only; with new units the KL is 0)."""
    eval_interval: int = 250
    """Steps between state probes (eval/state_r2)."""
    checkpoint_interval: int = 250
    """Steps between checkpoints (resume points)."""
    eval_prompts: int = 32
    """Held-out prompts (the last ones of the prompt set; never taught on)."""
    out: str = "runs/teach"
    """Output folder: <out>/model is the taught checkpoint."""
    seed: int = 0
    """Seed of the sampling and of the new units' initial weights."""
    device: str = "auto"
    """'auto' (a CUDA GPU when there is one), 'cpu' or 'cuda'."""
    precision: str = "auto"
    """Arithmetic of the sampling's and the regression's matrix products, as alignment's --precision: 'auto'
    (bfloat16 where the hardware has it and it pays), 'float32' or 'bfloat16'. The weights, Adam and the state
    probe stay float32."""
    progress: bool = True
    """Show a progress bar (without it, a line per evaluation)."""

    def __post_init__(self) -> None:
        check_positive(
            max_new_tokens=self.max_new_tokens,
            steps=self.steps,
            batch=self.batch,
            lr=self.lr,
            eval_interval=self.eval_interval,
            checkpoint_interval=self.checkpoint_interval,
            eval_prompts=self.eval_prompts,
        )
        for name in ("new_units", "aux_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        check_precision(self.precision)


def scored_batch(
    agent: Reinforce, model: LSTMLM, gen: torch.Generator, rng: np.random.Generator, size: int
) -> tuple[Packed, torch.Tensor]:
    """``size`` completions that ``model`` samples for random training prompts, packed, and the feedback's score of
    the completion so far before each completion token (the regression's target)."""
    index = rng.integers(len(agent.train_prompts), size=size)
    r = sample_completions(agent.envs, model, gen, prompt_index=index)
    batch = pack_completions(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
    return batch, agent.prefix_scores(r, batch.mask)[batch.mask.bool()]


def state_probe(model: LSTMLM, agent: Reinforce, batches: int = 8, seed: int = 0) -> float:
    """How well the LSTM state before each completion token tells the feedback's score of the completion so far:
    the held-out R² of a ridge regression from the state to that score, over ``batches`` x num_envs completions that
    ``model`` samples for training prompts (the last fifth held out). π*'s tilt of a token depends on it (VADER's
    sum saturates, so a second positive word is worth less than the first); a policy whose state does not carry it
    can only tilt each word the same way everywhere."""
    gen = torch.Generator(agent.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    states, targets = [], []
    with torch.no_grad():
        for _ in range(batches):
            batch, target = scored_batch(agent, model, gen, rng, agent.cfg.num_envs)
            states.append(completion_hidden(model, batch).double())
            targets.append(target.double())
    x, y = torch.cat(states), torch.cat(targets)
    x = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    train = torch.arange(len(y)) < int(0.8 * len(y))
    w = torch.linalg.solve(x[train].T @ x[train] + 1e-2 * torch.eye(x.shape[1], dtype=x.dtype), x[train].T @ y[train])
    residual = x[~train] @ w - y[~train]
    return float(1 - residual.pow(2).mean() / y[~train].var())


def add_feature_units(model: LSTMLM, units: int, seed: int) -> LSTMLM:
    """``model`` with ``units`` new LSTM units and ``units`` new embedding dimensions, which only the new units read.
    Only they (the new units' weights and the new embedding columns) get gradients; the output layer reads the new
    units with weight 0, so the language model stays exactly the reference's while the new part of its state learns
    the feature. (The new units need inputs of their own: the reference's embedding does not tell a positive word from
    the rest linearly, and with it frozen the new units do not learn the score so far.)"""
    c = model.config
    h, e, H = c.hidden_dim, c.embed_dim, c.hidden_dim + units
    device = model.head.weight.device
    gen = torch.Generator(device).manual_seed(seed)
    wide = widened(model, H, gen)  # (the new units, with the old embedding)
    out = LSTMLM(LMConfig(**{**wide.config.to_dict(), "embed_dim": e + units})).to(device)
    with torch.no_grad():
        out.load_state_dict(
            {k: v for k, v in wide.state_dict().items() if k not in ("embed.weight", "lstm.weight_ih_l0")}, strict=False
        )
        old_embed, old_ih = wide.embed.weight, wide.lstm.weight_ih_l0
        out.embed.weight[:, :e] = old_embed
        out.embed.weight[:, e:] = torch.randn(c.vocab_size, units, generator=gen, device=device) * old_embed.std()
        out.lstm.weight_ih_l0.zero_()
        out.lstm.weight_ih_l0[:, :e] = old_ih
        for gate in range(4):  # the new units read the new dimensions; the old units do not
            rows = slice(gate * H + h, (gate + 1) * H)
            out.lstm.weight_ih_l0[rows, e:] = torch.randn(units, units, generator=gen, device=device) * old_ih.std()
    freeze_all_but_new_units(out, units)
    return out.train(model.training)


def freeze_all_but_new_units(model: LSTMLM, units: int) -> None:
    """Mask the gradients of everything in ``model`` but its last ``units`` LSTM units and embedding dimensions (the
    rows of those units in each gate's block, see :func:`agents.model.widened`); the output layer does not train."""
    H, E = model.config.hidden_dim, model.config.embed_dim
    device = model.head.weight.device
    model.head.requires_grad_(False)
    rows = torch.zeros(4 * H, 1, device=device)
    for gate in range(4):
        rows[(gate + 1) * H - units : (gate + 1) * H] = 1.0
    for param in model.lstm.parameters():
        param.register_hook(lambda grad: grad * rows.view(-1, *([1] * (grad.dim() - 1))))
    cols = torch.zeros(1, E, device=device)
    cols[:, E - units :] = 1.0
    model.embed.weight.register_hook(lambda grad: grad * cols)


class Teacher:
    """Teaching as a :class:`agents.runner.Trainable`: each step samples a batch of the reference's completions and
    takes an Adam step on the score-so-far regression (plus the distillation KL when the whole copy trains)."""

    def __init__(self, cfg: TeachConfig) -> None:
        self.cfg = cfg
        # The reference, the env and the feedback on prefixes are the alignment's own (a REINFORCE agent that never
        # steps): the moving-average baseline allows any batch size. Its policy, --init loaded without a value head,
        # is the copy that is taught.
        self.agent = Reinforce(
            ReinforceConfig(
                init=cfg.init,
                reward=cfg.reward,
                prompts=cfg.prompts,
                corpus=cfg.corpus,
                max_new_tokens=cfg.max_new_tokens,
                num_envs=cfg.batch,
                baseline="moving_average",
                gated_tilt=False,  # (the taught copy keeps the reference's output layer)
                eval_prompts=cfg.eval_prompts,
                seed=cfg.seed,
                device=cfg.device,
                precision=cfg.precision,
            )
        )
        self.tokenizer, device, model = self.agent.tokenizer, self.agent.device, self.agent.policy
        self.model = add_feature_units(model, cfg.new_units, cfg.seed) if cfg.new_units else model.train()
        self.head = torch.nn.Linear(self.model.config.hidden_dim, 1, device=device)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self.trained = [p for p in self.model.parameters() if p.requires_grad] + list(self.head.parameters())
        self.opt = torch.optim.Adam(self.trained, lr=cfg.lr)
        self.gen = torch.Generator(device).manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.tokens = 0

    def step(self) -> dict[str, float]:
        agent, cfg = self.agent, self.cfg
        with precision_context(agent.precision, agent.device):  # (the forward passes; backward follows autocast's)
            batch, target = scored_batch(agent, agent.ref, self.gen, self.rng, cfg.batch)
            if cfg.new_units:  # (the KL is 0 by construction: neither output layer needs to run)
                h, kl = completion_hidden(self.model, batch), torch.zeros((), device=agent.device)
            else:
                with torch.no_grad():
                    ref_logp, _ = completion_dists(agent.ref, batch)
                logp, h = completion_dists(self.model, batch)
                kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
            prediction = self.head(h).squeeze(-1).float()
        mse = (prediction - target).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        (kl + cfg.aux_weight * mse).backward()
        torch.nn.utils.clip_grad_norm_(self.trained, 1.0)
        self.opt.step()
        self.tokens += int(batch.mask.sum())
        return {
            "teach/score_error": mse.item(),
            "teach/batch_r2": 1 - mse.item() / max(target.var().item(), 1e-12),
            "teach/kl_per_completion": kl.item() * cfg.max_new_tokens,
            "charts/env_tokens": float(self.tokens),
        }

    def evaluate(self) -> dict[str, float]:
        return {"eval/state_r2": state_probe(self.model, self.agent, seed=self.cfg.seed + 1)}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, data = optimizer_state(self.opt, self.gen)
        tensors.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        data.update(np_rng=self.rng.bit_generator.state, tokens=self.tokens)
        return tensors, data

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        load_optimizer_state(self.opt, self.gen, tensors, data)
        self.head.load_state_dict({k: tensors[f"head.{k}"] for k in ("weight", "bias")})
        self.rng.bit_generator.state = data["np_rng"]
        self.tokens = data["tokens"]


def teach(cfg: TeachConfig) -> dict[str, float]:
    """Teach ``cfg.init``'s state the score so far; resume from ``cfg.out/checkpoint`` if present. Returns the state
    probe's R² before and after, and writes ``cfg.out/model``."""
    teacher = Teacher(cfg)
    before = state_probe(teacher.agent.ref, teacher.agent, seed=cfg.seed + 1)
    print(f"teach: the reference's state tells the score so far with R² {before:.2f}")
    meta = {"stage": TAUGHT_STAGE, "init": cfg.init, "config": asdict(cfg)}
    schedule = Schedule(cfg.steps, cfg.eval_interval, cfg.checkpoint_interval, log_interval=25)
    result = run(teacher, schedule, cfg.out, meta, desc="teach", progress=cfg.progress)
    # (a finished run, run again, evaluates nothing: the restored model is probed instead)
    after = result.eval["eval/state_r2"] if result.eval else teacher.evaluate()["eval/state_r2"]
    print(f"teach: its state tells the score so far with R² {after:.2f} (the reference's: {before:.2f}); "
          f"model in {cfg.out}/model")  # fmt: skip
    return {"state_r2_before": before, "state_r2": after}
