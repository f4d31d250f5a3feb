"""REINFORCE with a baseline and a KL penalty to a frozen reference: the in-house alignment agent.

    θ ← θ + α ∇θ Σ_t log π(a_t|s_t) (R − b),    R = r − β Σ_t [log π(a_t|s_t) − log π_ref(a_t|s_t)]

r is the feedback on the finished completion, the β term is the sampled KL to the reference (the pretrained or
fine-tuned checkpoint, frozen), and b is a baseline: a moving average of R, leave-one-out over the k completions of
the same prompt (RLOO, Ahmadian et al. 2024), or a learned value head. The gradient is that of the KL-regularised
objective E[r] − β KL(π‖π_ref) stated in DESIGN.md. β can follow the adaptive controller of Ziegler et al. (2019).

Rollouts go through the registered vector env (``gym.make_vec(..., vectorization_mode="vector_entry_point")``): the
policy carries its LSTM state across steps (one LSTM step per token) and starts it from each new prompt.

Metric names follow TRL: ``objective/scores`` (mean feedback), ``objective/kl`` (mean Σ_t log π − log π_ref per
completion), ``objective/entropy`` (mean Σ_t −log π per completion), ``objective/rlhf_reward`` (scores − β·kl).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

import textgym  # noqa: F401  (registers the env ids)
from agents.checkpoint import load_checkpoint, save_checkpoint
from agents.logger import RunLogger
from agents.model import LSTMLM, complete, sample_logits
from agents.training import Checkpointer, check_positive, make_optimizer
from textgym.prompts import PromptSet, load_prompts
from textgym.tokenizer import DEFAULT_VOCAB_SIZE, TextTokenizer, get_tokenizer

BASELINES = ("moving_average", "rloo", "value")


@dataclass
class ReinforceConfig:
    """Options of a REINFORCE alignment run (``textgym train --help`` shows the same)."""

    reward: str = "sentiment"
    """Feedback spec: a registered name, a name with arguments, or a weighted mix such as 'sentiment+0.5*repetition'."""
    init: str = "runs/pretrain/model"
    """Checkpoint of the initial policy."""
    ref: str = ""
    """Checkpoint of the frozen KL reference (empty: the same as --init). Not loaded when β = 0."""
    corpus: str = ""
    """Corpus of the env's tokenizer and prompts (empty: the built-in one); must be the policy's."""
    vocab_size: int = DEFAULT_VOCAB_SIZE
    """Vocabulary size of the env's tokenizer; must be the policy's."""
    prompts: str = ""
    """JSONL prompt file (empty: the first words of held-out corpus documents)."""
    num_envs: int = 64
    """Completions per update (sub-envs of the vector env)."""
    max_new_tokens: int = 20
    """Longest completion in tokens."""
    updates: int = 1000
    """Policy updates (each on num_envs fresh completions; about 2 minutes on 2 cores with the CPU preset's model)."""
    max_minutes: float = 0.0
    """Stop after this many minutes of training (0 = no limit; runs stopped by time are not reproducible)."""
    lr: float = 3e-4
    """Adam learning rate α."""
    baseline: str = "rloo"
    """Baseline b: 'moving_average', 'rloo' (leave-one-out over rloo_k completions of a prompt) or 'value'."""
    rloo_k: int = 4
    """Completions per prompt for the leave-one-out baseline (>= 2; num_envs must be a multiple)."""
    ema_decay: float = 0.9
    """Decay of the moving-average baseline."""
    normalize_advantages: bool = False
    """Scale advantages to zero mean and unit variance in each batch."""
    entropy_coef: float = 0.0
    """Entropy bonus on the policy's per-token entropy."""
    kl_coef: float = 0.1
    """β, the KL penalty coefficient (initial value when target_kl > 0)."""
    target_kl: float = 0.0
    """Adaptive KL controller's target, in nats per completion (0 = fixed β)."""
    kl_horizon: int = 10000
    """Adaptive KL controller's horizon, in completions."""
    vf_coef: float = 0.5
    """Weight of the value loss (value baseline only)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    temperature: float = 1.0
    """Sampling temperature of rollouts."""
    eval_prompts: int = 32
    """Held-out evaluation prompts (the last ones of the prompt set; never trained on)."""
    eval_samples: int = 4
    """Completions per evaluation prompt."""
    eval_interval: int = 50
    """Updates between evaluations."""
    checkpoint_interval: int = 100
    """Updates between checkpoints (resume points)."""
    seed: int = 0
    """Seed of the NumPy generator (env seeds) and the torch generator (sampling)."""
    out: str = "runs/reinforce"
    """Output folder: checkpoint/ (resume point), model/ (final), progress.csv, samples.md, learning_curve.png."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_positive(
            num_envs=self.num_envs,
            max_new_tokens=self.max_new_tokens,
            updates=self.updates,
            lr=self.lr,
            grad_clip=self.grad_clip,
            eval_interval=self.eval_interval,
            kl_horizon=self.kl_horizon,
            checkpoint_interval=self.checkpoint_interval,
            eval_prompts=self.eval_prompts,
            eval_samples=self.eval_samples,
        )
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline {self.baseline!r} is not one of {', '.join(BASELINES)}")
        if self.baseline == "rloo":
            if self.rloo_k < 2:
                raise ValueError(f"rloo_k must be >= 2 for the leave-one-out baseline, got {self.rloo_k!r}")
            if self.num_envs % self.rloo_k:
                raise ValueError(f"num_envs ({self.num_envs}) must be a multiple of rloo_k ({self.rloo_k})")
        for name in ("kl_coef", "target_kl", "entropy_coef", "vf_coef", "max_minutes", "temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")

    @property
    def needs_reference(self) -> bool:
        return self.kl_coef > 0 or self.target_kl > 0


class AdaptiveKL:
    """Ziegler et al. (2019): β ← β (1 + clip(KL/target − 1, ±0.2) · n / horizon)."""

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            error = float(np.clip(kl / self.target - 1, -0.2, 0.2))
            self.beta *= 1 + error * n / self.horizon


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams / all word n-grams, over all texts."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def completion_logprobs(
    model: LSTMLM, seqs: torch.Tensor, mask: torch.Tensor, with_values: bool = False, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log π(a_t|s_t) (B, T-1), zero outside ``mask``; entropy H(π(·|s_t)) and values if asked.

    The LSTM runs over every position (prompt tokens shape the state), but the output layer and the softmax run
    only where ``mask`` marks a completion token: the prompt and padding need no distribution.
    """
    hidden, _ = model.hidden(seqs[:, :-1])
    sel = mask.bool()
    h = hidden[sel]  # (tokens, hidden_dim), row-major order, as masked_scatter fills
    logp_all = F.log_softmax(model.head(h).float(), dim=-1)
    picked = logp_all.gather(-1, seqs[:, 1:][sel][:, None]).squeeze(-1)
    logp = torch.zeros_like(mask).masked_scatter(sel, picked)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(mask).masked_scatter(sel, -(logp_all.exp() * logp_all).sum(-1))
    values = None
    if with_values:
        if model.value is None:
            raise ValueError("the value baseline needs a model with a value head")
        values = torch.zeros_like(mask).masked_scatter(sel, model.value(h).squeeze(-1))
    return logp, entropy, values


def pack_sequences(
    prompts: list[list[int]], completions: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``prompt + completion`` rows and the mask of positions that predict a completion token."""
    width = max(len(p) + len(c) for p, c in zip(prompts, completions))
    seqs = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width - 1)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        seqs[i, : len(p) + len(c)] = torch.tensor(p + c)
        mask[i, len(p) - 1 : len(p) + len(c) - 1] = 1.0
    return seqs, mask


class Reinforce:
    """The agent: a policy, its frozen reference, the vector env, and the update rule."""

    def __init__(
        self, cfg: ReinforceConfig, policy: LSTMLM | None = None, tokenizer: TextTokenizer | None = None
    ) -> None:
        """Build the agent from ``cfg``; ``policy`` and ``tokenizer`` replace the ones cfg names (for the alignment
        pass inside fine-tuning, which trains the fine-tuned model in place)."""
        self.cfg = cfg
        corpus = cfg.corpus or None
        self.tokenizer: TextTokenizer = tokenizer or get_tokenizer(corpus, cfg.vocab_size)
        prompts = load_prompts(cfg.prompts or None, corpus=corpus)
        if len(prompts) <= cfg.eval_prompts:
            raise ValueError(f"{len(prompts)} prompts is too few to hold out eval_prompts={cfg.eval_prompts}")
        self.eval_prompts = list(prompts.prompts[-cfg.eval_prompts :])
        train_prompts = PromptSet(
            prompts.prompts[: -cfg.eval_prompts],
            prompts.references[: -cfg.eval_prompts] if prompts.references else None,
        )

        # 1. The policy, and the frozen reference (skipped when β = 0: it would never be used).
        if policy is None:
            policy, _, _ = load_checkpoint(
                cfg.init, expect_tokenizer=self.tokenizer, value_head=cfg.baseline == "value"
            )
        self.policy = policy
        self.ref: LSTMLM | None = None
        if cfg.needs_reference:
            self.ref, _, _ = load_checkpoint(cfg.ref or cfg.init, expect_tokenizer=self.tokenizer)
            self.ref.requires_grad_(False).eval()

        # 2. The registered vector env; same-step autoreset, so every reset is ours to make.
        self.envs = gym.make_vec(
            "textgym/TextGen-v0",
            num_envs=cfg.num_envs,
            vectorization_mode="vector_entry_point",
            reward=cfg.reward,
            tokenizer=self.tokenizer,
            prompts=train_prompts,
            max_new_tokens=cfg.max_new_tokens,
            context_len=32,
            autoreset_mode="SameStep",
        )
        self.feedback = self.envs.unwrapped.task.feedback
        self.opt = make_optimizer(self.policy, cfg.lr, weight_decay=0.0)
        self.kl = AdaptiveKL(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.ema: float | None = None
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.env_tokens = 0

    # -- rollout -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def rollout(self) -> tuple[list[list[int]], list[list[int]], np.ndarray]:
        """One completion per sub-env, sampled through the env; returns (prompt ids, completion ids, scores)."""
        cfg, pad = self.cfg, self.tokenizer.pad_id
        groups = cfg.num_envs // cfg.rloo_k if cfg.baseline == "rloo" else cfg.num_envs
        # Sub-envs reset with the same seed draw the same prompt: k completions per prompt for leave-one-out.
        seeds = self.rng.integers(2**31 - 1, size=groups).repeat(cfg.num_envs // groups)
        obs, _ = self.envs.reset(seed=seeds.tolist())
        prompts = [row[row != pad].tolist() for row in obs]  # <bos> + prompt, as the policy observes it
        self.policy.eval()
        logits, state, _ = self.policy.prefill(prompts)
        actions = np.zeros((cfg.num_envs, cfg.max_new_tokens), dtype=np.int64)
        lengths = np.zeros(cfg.num_envs, dtype=np.int64)
        scores = np.zeros(cfg.num_envs)
        active = np.ones(cfg.num_envs, dtype=bool)
        for t in range(cfg.max_new_tokens):
            tokens = sample_logits(logits, self.gen, cfg.temperature)
            _, reward, term, trunc, _ = self.envs.step(tokens.numpy())
            actions[active, t] = tokens.numpy()[active]
            ended = (term | trunc) & active
            scores[ended], lengths[ended] = reward[ended], t + 1
            active &= ~ended
            if not active.any():
                break
            logits, state = self.policy.step(tokens, state)  # one LSTM step per token
        self.policy.train()
        self.env_tokens += int(lengths.sum())
        return prompts, [actions[i, : lengths[i]].tolist() for i in range(cfg.num_envs)], scores

    # -- update ------------------------------------------------------------------------------------------------
    def update(self) -> dict[str, float]:
        """Roll out num_envs completions and take one policy-gradient step."""
        cfg = self.cfg
        t0 = time.perf_counter()
        prompts, completions, scores = self.rollout()
        seqs, mask = pack_sequences(prompts, completions, self.tokenizer.pad_id)
        # The entropy term costs a softmax-sized backward pass: build it only when it is in the loss.
        logp, entropy, values = completion_logprobs(
            self.policy, seqs, mask, with_values=cfg.baseline == "value", with_entropy=cfg.entropy_coef > 0
        )

        # R = r − β Σ_t (log π − log π_ref): the sampled KL penalty, per completion.
        kl_seq = torch.zeros(len(prompts))
        if self.ref is not None:
            with torch.no_grad():
                ref_logp, _, _ = completion_logprobs(self.ref, seqs, mask)
            kl_seq = (logp.detach() - ref_logp).sum(1)
        score_t = torch.as_tensor(scores, dtype=torch.float32)
        returns = score_t - self.kl.beta * kl_seq

        # Baseline b and advantage R − b, per completion (value head: per token).
        value_loss = torch.zeros(())
        if cfg.baseline == "rloo":
            grouped = returns.view(-1, cfg.rloo_k)
            adv = (grouped - (grouped.sum(1, keepdim=True) - grouped) / (cfg.rloo_k - 1)).view(-1)[:, None]
        elif cfg.baseline == "moving_average":
            adv = (returns - (self.ema if self.ema is not None else returns.mean())).view(-1, 1)
            batch_mean = float(returns.mean())
            self.ema = batch_mean if self.ema is None else cfg.ema_decay * self.ema + (1 - cfg.ema_decay) * batch_mean
        else:
            assert values is not None
            adv = returns[:, None] - values.detach()
            value_loss = (((values - returns[:, None]) ** 2) * mask).sum() / mask.sum()
        adv = adv.expand_as(mask)
        if cfg.normalize_advantages:
            m = mask.bool()
            adv = (adv - adv[m].mean()) / (adv[m].std() + 1e-8)

        # θ ← θ + α ∇ Σ_t log π(a_t|s_t) (R − b): sum over tokens, mean over completions.
        n = len(prompts)
        pg_loss = -(adv * logp).sum() / n
        loss = pg_loss + cfg.vf_coef * value_loss
        if entropy is not None:
            loss = loss - cfg.entropy_coef * entropy.sum() / n
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
        self.opt.step()

        mean_kl = float(kl_seq.mean())
        beta = self.kl.beta
        self.kl.update(mean_kl, n)
        tokens = int(mask.sum())
        return {
            "objective/scores": float(score_t.mean()),
            "objective/kl": mean_kl,
            "objective/entropy": float(-logp.detach().sum(1).mean()),
            "objective/rlhf_reward": float(score_t.mean()) - beta * mean_kl,
            "objective/kl_coef": beta,
            "losses/policy_loss": float(pg_loss.detach()),
            "losses/value_loss": float(value_loss.detach()),
            "losses/grad_norm": float(grad_norm),
            "charts/episode_length": tokens / n,
            "charts/SPS": tokens / (time.perf_counter() - t0),
            "charts/env_tokens": float(self.env_tokens),
        }

    # -- evaluation --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, model: LSTMLM | None = None, seed: int | None = None
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Sample eval_samples completions of each held-out prompt; score, KL to the reference, distinct-2."""
        cfg, tok = self.cfg, self.tokenizer
        model = model or self.policy
        gen = torch.Generator().manual_seed(cfg.seed + 1 if seed is None else seed)
        prompts = [p for p in self.eval_prompts for _ in range(cfg.eval_samples)]
        ids, outs, texts = complete(model, tok, prompts, cfg.max_new_tokens, gen, cfg.temperature)
        scores = self.feedback(prompts, texts)
        kl = float("nan")
        if self.ref is not None:
            seqs, mask = pack_sequences(ids, outs, tok.pad_id)
            lp, _, _ = completion_logprobs(model, seqs, mask)
            ref_lp, _, _ = completion_logprobs(self.ref, seqs, mask)
            kl = float((lp - ref_lp).sum(1).mean())
        metrics = {"eval/scores": float(np.mean(scores)), "eval/kl": kl, "eval/distinct_2": distinct_n(texts)}
        rows = [{"prompt": p, "completion": c, "score": float(s)} for p, c, s in zip(prompts, texts, scores)]
        return metrics, rows


def sample_table(before: list[dict[str, Any]], after: list[dict[str, Any]], rows: int = 8, step: int = 1) -> str:
    """A Markdown table of completions of the same prompts before and after alignment, with their scores."""
    lines = ["| prompt | before | score | after | score |", "|---|---|---|---|---|"]
    for b, a in list(zip(before, after))[::step][:rows]:
        clean = lambda s: s.strip().replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(
            f"| {clean(b['prompt'])} | {clean(b['completion'])} | {b['score']:+.2f} | "
            f"{clean(a['completion'])} | {a['score']:+.2f} |"
        )
    return "\n".join(lines)


def train(cfg: ReinforceConfig, on_update: Callable[[int], None] | None = None) -> dict[str, float]:
    """Align ``cfg.init`` with REINFORCE; resume from ``cfg.out/checkpoint`` if present. Returns final eval metrics."""
    out = Path(cfg.out)
    agent = Reinforce(cfg)
    ckpt = Checkpointer(out, agent.tokenizer)
    start = ckpt.restore(agent.policy, agent.opt, agent.gen) or 0
    if start:
        extra = ckpt.extra
        agent.rng.bit_generator.state = extra["np_rng"]
        agent.kl.beta, agent.ema, agent.env_tokens = extra["beta"], extra["ema"], extra["env_tokens"]
        print(f"resuming {out} from update {start}")
    logger = RunLogger(out, resume_step=start if start else None)
    meta = {"stage": "reinforce", "init": cfg.init, "config": asdict(cfg)}

    # Before: the initial policy on the held-out prompts (same sampling seed as the final evaluation).
    init_model = agent.ref if agent.ref is not None else load_checkpoint(cfg.init)[0]
    before_metrics, before_rows = agent.evaluate(init_model)
    if not start:
        logger.log(0, {**before_metrics, "charts/env_tokens": 0.0})

    deadline = time.monotonic() + cfg.max_minutes * 60 if cfg.max_minutes else None
    bar = tqdm(
        range(start, cfg.updates),
        initial=start,
        total=cfg.updates,
        desc="reinforce",
        disable=not cfg.progress,
        mininterval=1.0,
    )
    done = start
    for update in bar:
        metrics = agent.update()
        done = update + 1
        if done % cfg.eval_interval == 0 or done == cfg.updates:
            metrics.update(agent.evaluate()[0])
        logger.log(done, metrics)
        bar.set_postfix(score=f"{metrics['objective/scores']:+.3f}", kl=f"{metrics['objective/kl']:.2f}", refresh=False)
        if done % cfg.checkpoint_interval == 0 or done == cfg.updates:
            extra = {
                "np_rng": agent.rng.bit_generator.state,
                "beta": agent.kl.beta,
                "ema": agent.ema,
                "env_tokens": agent.env_tokens,
            }
            ckpt.save(agent.policy, agent.opt, agent.gen, done, meta, extra)
        if on_update is not None:
            on_update(done)
        if deadline is not None and time.monotonic() > deadline:
            bar.write(f"stopping after {cfg.max_minutes} minutes at update {done}")
            break
    bar.close()
    logger.close()

    after_metrics, after_rows = agent.evaluate()
    save_checkpoint(out / "model", agent.policy, agent.tokenizer, meta={**meta, "updates": done, "eval": after_metrics})
    table = sample_table(before_rows, after_rows, step=cfg.eval_samples)
    finite = lambda m: {k: (v if math.isfinite(v) else None) for k, v in m.items()}  # noqa: E731  (KL is NaN at β = 0)
    summary = {
        "before": finite(before_metrics),
        "after": finite(after_metrics),
        "updates": done,
        "env_tokens": agent.env_tokens,
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    (out / "samples.md").write_text(
        f"# Before and after alignment ({cfg.reward})\n\n"
        f"before: score {before_metrics['eval/scores']:+.3f}, distinct-2 {before_metrics['eval/distinct_2']:.3f}; "
        f"after: score {after_metrics['eval/scores']:+.3f}, KL {after_metrics['eval/kl']:.2f} nats, "
        f"distinct-2 {after_metrics['eval/distinct_2']:.3f}\n\n{table}\n"
    )
    from agents.plots import plot_learning_curve

    plot_learning_curve(out / "progress.csv", out / "learning_curve.png", title=f"REINFORCE, {cfg.reward}")
    print(
        f"\nbefore: mean score {before_metrics['eval/scores']:+.3f}   after: {after_metrics['eval/scores']:+.3f} "
        f"(KL to reference {after_metrics['eval/kl']:.2f} nats/completion, distinct-2 "
        f"{after_metrics['eval/distinct_2']:.3f} vs {before_metrics['eval/distinct_2']:.3f})\n"
    )
    print(table)
    print(f"\nsaved {out}/model, {out}/samples.md, {out}/learning_curve.png")
    return after_metrics


def make_align_fn(
    reward: str, steps: int, seed: int, init: str, **options: Any
) -> Callable[[LSTMLM, int], dict[str, float]]:
    """An alignment pass for supervised fine-tuning's interleaved schedule: ``steps`` REINFORCE updates in place.

    The reference is the checkpoint that fine-tuning started from (its tokenizer is the env's); the optimizer
    persists across passes. ``options`` are further :class:`ReinforceConfig` fields.
    """
    check_positive(align_steps=steps)
    _, tokenizer, _ = load_checkpoint(init)
    cfg = ReinforceConfig(reward=reward, init=init, seed=seed, progress=False, **options)
    state: dict[str, Reinforce] = {}

    def align(model: LSTMLM, epoch: int) -> dict[str, float]:
        if "agent" not in state:
            state["agent"] = Reinforce(cfg, policy=model, tokenizer=tokenizer)
        agent = state["agent"]
        metrics: dict[str, float] = {}
        for _ in range(steps):
            metrics = agent.update()
        return {f"align/{k.split('/')[-1]}": v for k, v in metrics.items()}

    return align
