"""REINFORCE with a baseline and a KL penalty to a frozen reference: the in-house alignment agent.

    θ ← θ + α ∇θ Σ_t log π(a_t|s_t) (R − b),    R = r − β Σ_t [log π(a_t|s_t) − log π_ref(a_t|s_t)]

r is the feedback on the finished completion, the β term is the sampled KL to the reference (the pretrained or
fine-tuned checkpoint, frozen), and b is a baseline: a moving average of R, leave-one-out over the k completions of
the same prompt (RLOO, Ahmadian et al. 2024), or a learned value head. The gradient is that of the KL-regularised
objective E[r] − β KL(π‖π_ref) stated in DESIGN.md. β can follow the adaptive controller of Ziegler et al. (2019).

Each update samples ``num_envs`` completions through the registered vector env (:mod:`agents.rollout`), scores them
there, and takes one gradient step. The run loop, the shared evaluation and the report are in :mod:`agents.runner`,
:mod:`agents.evaluation` and :mod:`agents.reporting`.

Metric names follow TRL: ``objective/scores`` (mean feedback), ``objective/kl`` (mean Σ_t log π − log π_ref per
completion), ``objective/entropy`` (mean Σ_t −log π per completion), ``objective/rlhf_reward`` (scores − β·kl),
``objective/feedback/<name>`` (for a weighted mix, each component's mean).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from agents.checkpoint import load_checkpoint
from agents.evaluation import Evaluation, Evaluator, split_held_out, task_prompts
from agents.model import (
    LSTMLM,
    Packed,
    completion_dists,
    completion_logprobs,
    pack_completions,
    widened,
    with_gated_tilt,
)
from agents.reporting import report
from agents.rollout import Rollout, make_env, sample_completions
from agents.runner import Schedule, check_precision, precision_context, resolve_device, resolve_precision, run
from agents.training import (
    LR_SCHEDULES,
    check_positive,
    decayed_lr,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
)

BASELINES = ("moving_average", "rloo", "value")
KL_ESTIMATORS = ("sampled", "exact", "k3")
WEIGHTINGS = ("linear", "exponential")
CREDITS = ("sequence", "token")
TAUGHT_STAGE = "taught score so far"
"""The ``stage`` that `textgym teach` writes into its checkpoints' meta: the gated tilt's default reads it."""

SHORT_RUN: dict[str, Any] = {
    "num_envs": 64,
    "rloo_k": 4,
    "lr": 3e-4,
    "lr_schedule": "constant",
    "gated_tilt": False,
}
"""The options of short runs, a few hundred thousand env tokens or fewer: 64 completions per update, 4 per prompt, at
a constant Adam 3e-4, with the plain output layer. Before about a million tokens that batch learns faster than the
default 256 / 16 (docs/benchmarks.md); the constant step and the plain layer are what the RLHF pipeline's, SFT's
alignment passes' and the SB3 comparison's documented figures were measured with (an alignment pass has no end to
decay toward)."""


@dataclass
class AlignmentConfig:
    """The options every alignment algorithm shares (REINFORCE's and the SB3 baselines' configs extend it)."""

    reward: str = "sentiment"
    """Feedback spec: a registered name, a name with arguments, or a weighted mix such as 'sentiment+0.5*repetition'."""
    init: str = "runs/pretrain/model"
    """Checkpoint of the initial policy; its tokenizer is the env's."""
    ref: str = ""
    """Checkpoint of the frozen KL reference (empty: the same as --init); it must share --init's tokenizer."""
    prompts: str = ""
    """JSONL prompt file with a "prompt" field and an optional "reference" (empty: the first words of held-out corpus
    documents)."""
    corpus: str = ""
    """Corpus to cut prompts from when --prompts is not given (empty: the one --init was pretrained on)."""
    max_new_tokens: int = 20
    """Longest completion in tokens."""
    total_env_tokens: int = 0
    """Budget in env tokens (generated tokens); when > 0 the run stops there instead of after --updates."""
    max_minutes: float = 0.0
    """Stop after this many minutes of training (0 = no limit; runs stopped by time are not reproducible)."""
    kl_coef: float = 0.1
    """β, the KL penalty coefficient (initial value when target_kl > 0)."""
    target_kl: float = 0.0
    """Adaptive KL controller's target, in nats per completion (0 = fixed β); not SB3's own target_kl, which is
    early stopping of an update (--stop-kl)."""
    kl_horizon: int = 10000
    """Adaptive KL controller's horizon, in completions."""
    eval_prompts: int = 32
    """Held-out evaluation prompts (the last ones of the prompt set; never trained on)."""
    eval_samples: int = 4
    """Completions per evaluation prompt."""
    progress: bool = True
    """Show a progress bar (without it, a line per evaluation)."""

    def __post_init__(self) -> None:
        check_positive(
            max_new_tokens=self.max_new_tokens,
            kl_horizon=self.kl_horizon,
            eval_prompts=self.eval_prompts,
            eval_samples=self.eval_samples,
        )
        for name in ("kl_coef", "target_kl", "max_minutes", "total_env_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


@dataclass
class ReinforceConfig(AlignmentConfig):
    """Options of a REINFORCE alignment run (``textgym train --help`` shows the same)."""

    num_envs: int = 256
    """Completions per update (sub-envs of the vector env). 256, 16 per prompt (rloo_k), because the gradient of a
    batch is almost all noise (signal-to-noise ratio 0.00-0.04 for 64 completions) and Adam moves as far on noise as
    on signal: a random walk that costs KL and buys no score. A quarter as many updates, each on 4x the completions,
    reaches a higher objective after about a million env tokens (+0.025 at β = 0.2, +0.010 at β = 0.1, the same
    within noise at β = 0.05; docs/benchmarks.md, issue 14). Before that, 64 per update (with rloo_k 4) learns
    faster, which is what the benchmark's short runs use."""
    hidden_dim: int = 0
    """Widen the policy's LSTM to this many units before training (0: --init's own width). The policy starts as the
    same distribution (:func:`agents.model.widened`); the new units are room for the change toward the reward."""
    gated_tilt: bool | None = None
    """Give the policy's output layer a word tilt scaled by a learned gate on the LSTM state
    (:class:`agents.model.GatedTiltHead`; the policy starts as the same distribution), when --init's has none. Unset
    (the default): on when --init was made by `textgym teach`, off otherwise. From the state `textgym teach` leaves,
    5 minutes on 2 cores, it reaches 91.6% / 82.1% / 72.9% of the optimum's gain at β = 0.05 / 0.1 / 0.2 (3 seeds,
    each above every seed without it; without: 89.6% / 80.2% / 70.4%). From an untaught state, which does not tell
    the score so far, it ends level (docs/benchmarks.md, issue 14) and costs 5-18% of the loop's env tokens/s
    (scripts/bench_reinforce.py --throughput-only), so there it stays off. The short runs (SHORT_RUN) keep the
    plain output layer."""
    train_only: str = ""
    """Train only the policy's parameters whose names start with this, comma-separated (e.g. 'head' for the output
    layer, 'head.bias' for one logit offset per token: a fixed tilt of the reference's next-token distribution); the
    rest stay frozen. Empty: all. A diagnostic of what the update learns (docs/benchmarks.md, issue 14)."""
    updates: int = 400
    """Policy updates (each on num_envs fresh completions, about 2M env tokens: about 2 minutes on 2 cores with the
    CPU preset's model and bfloat16 products; the main job's alignment)."""
    lr: float = 6e-4
    """Adam learning rate α (at the start, when lr_schedule decays it). 6e-4 decayed linearly to 0 (lr_schedule)
    rather than a constant 3e-4: the larger early steps learn faster while the gradient still carries signal, and the
    late steps, when the gradient is almost all noise, shrink instead of random-walking the policy away (wasted KL).
    From the taught state, 5 minutes on 2 cores, seed 0: +0.005 / +0.008 / +0.006 of training objective at β =
    0.2 / 0.1 / 0.05, 70% / 80% / 90% of the optimum's gain against 67% / 79% / 89%; either change alone did not
    help (docs/benchmarks.md, issue 14)."""
    lr_schedule: str = "linear"
    """'constant', or 'linear' / 'cosine' decay to lr x lr_min_ratio over the run (its progress: env tokens of
    --total-env-tokens, else updates of --updates, or the time of --max-minutes if that ends it sooner). 'linear'
    by default (see lr)."""
    lr_min_ratio: float = 0.0
    """The decayed learning rate's end value, as a fraction of lr."""
    baseline: str = "rloo"
    """Baseline b: 'moving_average', 'rloo' (leave-one-out over rloo_k completions of a prompt) or 'value'."""
    rloo_k: int = 16
    """Completions per prompt for the leave-one-out baseline (>= 2; num_envs must be a multiple); more per prompt,
    a baseline closer to the prompt's own mean return."""
    ema_decay: float = 0.9
    """Decay of the moving-average baseline."""
    kl_estimator: str = "sampled"
    """How the KL term's gradient is estimated: 'sampled' (the sampled log-ratio Σ_t log π/π_ref in each completion's
    return), 'exact' (Rao-Blackwellised: the exact KL of each step's next-token distribution, over the whole
    vocabulary, as a loss term, plus the KL of the steps after t in step t's return; the same gradient in
    expectation, with the per-token sampling noise of the log-ratio integrated out) or 'k3' (GRPO's: not in the
    return but a loss term, β·Σ_t k3_t with k3 = π_ref/π − log(π_ref/π) − 1 at each sampled token, an estimate
    of the KL that is never negative. Its gradient, (1 − π_ref/π)·∇log π per token, is in expectation that of the
    reverse KL(π_ref‖π) at the visited states: the same as the exact per-step KL's to second order near π_ref,
    without the later steps' KL in the return). 'sampled' stays the default: the exact KL learned slower, and k3
    let the KL run to 3-6 nats, objective below the reference's at β = 0.2 (docs/benchmarks.md, issue 14)."""
    weighting: str = "linear"
    """How returns R become advantages: 'linear', R − b (REINFORCE), or 'exponential': fit π* ∝ π_ref·exp(r/β)
    directly, as reward-weighted regression (AWR, RAFT) does. Within each prompt's group of rloo_k completions the
    advantage is k·softmax(R/β) − 1: the self-normalised importance weight π*/π of each completion (R/β = r/β −
    log π/π_ref), less its mean. Needs the rloo baseline's groups, β > 0 and the sampled KL."""
    credit: str = "sequence"
    """Which return each token's log-probability is weighed by: 'sequence', the whole completion's R for every token
    (the textbook estimator), or 'token', only what is still to come at that token's state: the score's change after
    it, r − r(completion so far), and the KL of it and the later tokens (reward-to-go). Both subtractions are
    functions of the state s_t, so the gradient keeps its expectation and loses the noise of the tokens before t;
    the feedback is called once more per update on every prefix of every completion."""
    update_epochs: int = 1
    """Gradient steps on each batch (SB3's n_epochs, GRPO's μ). 1 is REINFORCE; beyond the first step the
    completions are off-policy, so each token's log π(a|s) is replaced by PPO's clipped importance ratio
    min(ρ(R − b), clip(ρ, 1 ± clip_range)(R − b)), ρ = π(a|s)/π_old(a|s), with R − b kept from the rollout
    (RLOO / GRPO / REINFORCE++ with several steps per batch)."""
    clip_range: float = 0.2
    """PPO's ε: how far a step beyond the first may move each token's probability ratio before its gradient stops."""
    gae_lambda: float = 1.0
    """λ of GAE (Schulman et al., 2016) for the per-token critic (baseline 'value' with credit 'token'): 1 weighs
    each token by its return-to-go less V(s_t); below 1, by TD errors δ_t = reward_t + V(s_t+1) − V(s_t) discounted
    by λ, so a token's advantage leans on the critic's estimate of what comes later instead of the sampled future
    (less noise, some bias while the critic is wrong)."""
    normalize_advantages: bool = False
    """Scale advantages to zero mean and unit variance in each batch."""
    entropy_coef: float = 0.0
    """Entropy bonus c on the policy's per-token entropy. Off by default because it moves the target: with the KL
    penalty, E[r] − β·KL(π‖π_ref) + c·H(π) is the KL-regularised objective at β + c toward π_ref^(β/(β+c)), a
    flattened reference. At β = 0.05 the default's policies repeat themselves more than π* does (distinct-2 87% of
    the reference's against π*'s 89%); c = 0.0025 brings distinct-2 to 89.5-90.3% (3 seeds) at 88.9-89.1% of the
    optimum's gain (the defaults: 89.8-90.3%; the optimum from 51,200 reference completions), at a perplexity under
    the reference of 109 against 95 and about a fifth fewer env tokens per second (the entropy's backward pass)
    (docs/benchmarks.md, issue 14)."""
    vf_coef: float = 0.5
    """Weight of the value loss (value baseline only)."""
    grad_clip: float = 1.0
    """Gradient norm clip."""
    temperature: float = 1.0
    """Sampling temperature of rollouts."""
    eval_also: str = ""
    """A second feedback spec that scores the evaluation's completions too, logged as eval/also_scores (e.g. the
    hidden true score when --reward is a learned reward model); empty for none."""
    eval_interval: int = 50
    """Updates between evaluations."""
    checkpoint_interval: int = 100
    """Updates between checkpoints (resume points)."""
    seed: int = 0
    """Seed of the NumPy generator (prompt draws) and the torch generator (sampling); evaluation samples with seed+1."""
    device: str = "auto"
    """Where to train: 'auto' (a CUDA GPU where torch sees one, else the CPU), 'cpu' or 'cuda'."""
    precision: str = "auto"
    """Arithmetic of the rollouts' and the update's matrix products: 'float32', 'bfloat16' (torch.autocast; the
    weights, Adam and the LSTM's cell state stay float32), or 'auto': bfloat16 where the hardware has it and it pays
    (a recent GPU; a CPU whose bfloat16 products run at least 1.2x as fast as float32's, timed once per process:
    agents.runner.resolve_precision), else float32. On the development machine bfloat16 runs the whole loop 1.3-1.5x
    as fast, and learns the same per env token; on a CPU with AVX512-BF16 and no AMX it ran 0.7x as fast
    (docs/benchmarks.md). The evaluation is always float32."""
    out: str = "runs/reinforce"
    """Output folder: checkpoint/ (resume point), model/ (final), progress.csv, samples.md, learning_curve.png."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(
            num_envs=self.num_envs,
            updates=self.updates,
            lr=self.lr,
            grad_clip=self.grad_clip,
            eval_interval=self.eval_interval,
            checkpoint_interval=self.checkpoint_interval,
            update_epochs=self.update_epochs,
            clip_range=self.clip_range,
        )
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline {self.baseline!r} is not one of {', '.join(BASELINES)}")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {self.kl_estimator!r} is not one of {', '.join(KL_ESTIMATORS)}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting {self.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if self.weighting == "exponential" and (
            self.baseline != "rloo" or self.kl_coef <= 0 or self.target_kl > 0 or self.kl_estimator != "sampled"
        ):
            raise ValueError(
                "weighting 'exponential' weighs the completions of a prompt by exp(R/β): it needs baseline 'rloo', "
                f"a fixed kl_coef > 0 and kl_estimator 'sampled' (got baseline {self.baseline!r}, kl_coef "
                f"{self.kl_coef!r}, target_kl {self.target_kl!r}, kl_estimator {self.kl_estimator!r})"
            )
        if self.hidden_dim < 0:
            raise ValueError(f"hidden_dim must be >= 0 (0: --init's own width), got {self.hidden_dim!r}")
        if self.credit not in CREDITS:
            raise ValueError(f"credit {self.credit!r} is not one of {', '.join(CREDITS)}")
        if self.credit == "token" and self.weighting == "exponential":
            raise ValueError("weighting 'exponential' weighs whole completions: it needs credit 'sequence'")
        if not 0 <= self.gae_lambda <= 1:
            raise ValueError(f"gae_lambda must be in [0, 1], got {self.gae_lambda!r}")
        if self.gae_lambda < 1 and (self.baseline != "value" or self.credit != "token"):
            raise ValueError(
                "gae_lambda < 1 needs the per-token critic: baseline 'value' and credit 'token' "
                f"(got baseline {self.baseline!r}, credit {self.credit!r})"
            )
        check_precision(self.precision)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
        if not 0 <= self.lr_min_ratio <= 1:
            raise ValueError(f"lr_min_ratio must be in [0, 1], got {self.lr_min_ratio!r}")
        if self.baseline == "rloo":
            if self.rloo_k < 2:
                raise ValueError(f"rloo_k must be >= 2 for the leave-one-out baseline, got {self.rloo_k!r}")
            if self.num_envs % self.rloo_k:
                raise ValueError(f"num_envs ({self.num_envs}) must be a multiple of rloo_k ({self.rloo_k})")
        for name in ("entropy_coef", "vf_coef", "temperature"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay!r}")


class AdaptiveKL:
    """Ziegler et al. (2019): β ← β (1 + clip(KL/target − 1, ±0.2) · n / horizon)."""

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target > 0:
            error = float(np.clip(kl / self.target - 1, -0.2, 0.2))
            self.beta *= 1 + error * n / self.horizon


def advantages(
    returns: torch.Tensor,
    baseline: str,
    rloo_k: int = 2,
    ema: float | None = None,
    values: torch.Tensor | None = None,
) -> torch.Tensor:
    """R − b for each completion's return R: (n,) returns give (n, 1), or (n, T) per token with a value baseline;
    per-token returns (n, T) (the return of each step) give (n, T).

    * ``"rloo"``: b_i is the mean return of the other k − 1 completions of the same prompt (completions
      ``i·k .. i·k + k − 1`` share one), position by position for per-token returns (their completions start at the
      same position: the rows are right-padded and the prompt is shared); unbiased, since b_i does not depend on
      completion i.
    * ``"moving_average"``: b is ``ema``, or the batch mean before there is one.
    * ``"value"``: b_t = V(s_t), the value head at each completion token (``values`` (n, T), detached here).
    """
    per_token = returns.dim() == 2
    if baseline == "rloo":
        grouped = returns.view(-1, rloo_k, *returns.shape[1:])
        adv = grouped - (grouped.sum(1, keepdim=True) - grouped) / (rloo_k - 1)
        return adv.view(returns.shape) if per_token else adv.view(-1, 1)
    if baseline == "moving_average":
        adv = returns - (ema if ema is not None else returns.mean())
        return adv if per_token else adv.view(-1, 1)
    if baseline == "value":
        if values is None:
            raise ValueError("the value baseline needs the value head's values")
        return (returns if per_token else returns[:, None]) - values.detach()
    raise ValueError(f"baseline {baseline!r} is not one of {', '.join(BASELINES)}")


def gae(returns: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """GAE(λ) advantages (Schulman et al., 2016) from per-token returns-to-go (n, T) and values V(s_t), laid out as
    ``mask`` (each row's completion tokens contiguous). Each token's reward is its return less the next token's (the
    score's change it made, less its β·KL), δ_t = reward_t + V(s_t+1) − V(s_t) (0 after the last token), and
    A_t = Σ_k λ^k δ_t+k: λ = 1 gives return − V(s_t); smaller λ leans on the critic for what comes later."""
    following = torch.zeros_like(mask)
    following[:, :-1] = mask[:, 1:]  # 1 where the next position is a completion token of the same row
    shifted = torch.zeros_like(returns)
    shifted[:, :-1] = returns[:, 1:]
    next_values = torch.zeros_like(values)
    next_values[:, :-1] = values[:, 1:]
    delta = (returns - shifted * following + next_values * following - values) * mask
    adv = torch.zeros_like(delta)
    running = torch.zeros_like(delta[:, 0])
    for t in reversed(range(delta.shape[1])):
        running = delta[:, t] + lam * following[:, t] * running
        adv[:, t] = running
    return adv * mask


def freeze_except(model: LSTMLM, prefixes: str) -> None:
    """Freeze every parameter of ``model`` whose name starts with none of the comma-separated ``prefixes``."""
    wanted = [p.strip() for p in prefixes.split(",") if p.strip()]
    names = [name for name, _ in model.named_parameters()]
    for prefix in wanted:
        if not any(name.startswith(prefix) for name in names):
            raise ValueError(
                f"train_only {prefix!r} names no parameter of the policy; its parameters: {', '.join(names)}"
            )
    for name, param in model.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for prefix in wanted))


class Reinforce:
    """The agent: a policy, its frozen reference, the vector env, and the update rule (a run-loop Trainable)."""

    def __init__(
        self,
        cfg: ReinforceConfig,
        policy: LSTMLM | None = None,
        ref: LSTMLM | None = None,
        device: torch.device | None = None,
    ) -> None:
        """Build the agent from ``cfg``. ``policy`` and ``ref`` replace the checkpoints cfg names (fine-tuning's
        alignment pass trains the fine-tuned model in place); the tokenizer is always ``cfg.init``'s."""
        self.cfg = cfg
        self.device = device if device is not None else resolve_device(cfg.device)
        self.precision = resolve_precision(cfg.precision, self.device)
        # 1. The policy and the frozen reference; the tokenizer comes with the --init checkpoint.
        loaded, self.tokenizer, init_config = load_checkpoint(
            cfg.init, value_head=cfg.baseline == "value", device=self.device
        )
        self.policy = policy if policy is not None else loaded
        if cfg.hidden_dim and cfg.hidden_dim != self.policy.config.hidden_dim:
            self.policy = widened(self.policy, cfg.hidden_dim, torch.Generator().manual_seed(cfg.seed))
        taught = init_config.get("meta", {}).get("stage") == TAUGHT_STAGE
        if cfg.gated_tilt if cfg.gated_tilt is not None else taught:
            self.policy = with_gated_tilt(self.policy)
        if cfg.train_only:
            if policy is not None:
                raise ValueError("train_only freezes part of the --init policy; it cannot be used on a given policy")
            freeze_except(self.policy, cfg.train_only)
        if ref is None:
            ref = loaded if not cfg.ref and policy is not None else None
        if ref is None:
            ref = load_checkpoint(cfg.ref or cfg.init, expect_tokenizer=self.tokenizer, device=self.device)[0]
        self.ref = ref.requires_grad_(False).eval()

        # 2. Prompts: training ones for the rollouts, held-out ones (with references) for the shared evaluation.
        prompts, self.corpus = task_prompts(cfg.prompts, cfg.corpus, init_config)
        self.train_prompts, eval_prompts = split_held_out(prompts, cfg.eval_prompts)
        self.envs = make_env(cfg.num_envs, cfg.reward, self.tokenizer, self.train_prompts, cfg.max_new_tokens)
        self.evaluator = Evaluator(
            eval_prompts,
            cfg.reward,
            self.tokenizer,
            cfg.eval_samples,
            cfg.max_new_tokens,
            cfg.temperature,
            cfg.seed + 1,
            also=cfg.eval_also,
        )
        self.last_evaluation: Evaluation | None = None

        # 3. The update's state: optimizer, β, baseline, generators, counters.
        self.opt = make_optimizer(self.policy, cfg.lr, weight_decay=0.0)
        self.kl = AdaptiveKL(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.ema: float | None = None
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.tokens = 0  # env tokens (generated tokens) so far
        self.updates = 0
        self.started = time.monotonic()  # (for a learning-rate schedule over --max-minutes alone)
        self.env_seconds = 0.0  # wall time in envs.step, feedback included

    # -- rollout -----------------------------------------------------------------------------------------------
    def rollout(self) -> Rollout:
        """One completion per sub-env, sampled and scored through the env; k per prompt for leave-one-out."""
        cfg = self.cfg
        k = cfg.rloo_k if cfg.baseline == "rloo" else 1
        index = self.rng.integers(len(self.train_prompts), size=cfg.num_envs // k).repeat(k)
        with precision_context(self.precision, self.device):
            r = sample_completions(self.envs, self.policy, self.gen, prompt_index=index, temperature=cfg.temperature)
        self.tokens += r.tokens
        self.env_seconds += r.env_seconds
        return r

    # -- update ------------------------------------------------------------------------------------------------
    def loss(
        self, r: Rollout, old: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one rollout, whose gradient is the update's, and its parts; no state changes here (the
        diagnostics of scripts/bench_reinforce.py take gradients of it without stepping).

        ``old`` is the first step's parts (detached) on a step beyond the first (``update_epochs`` > 1): the returns
        and advantages stay the rollout's, and each token's log π becomes the clipped ratio to the rollout's π."""
        cfg = self.cfg
        n = cfg.num_envs
        batch = pack_completions(r.prompt_ids, r.completion_ids, self.tokenizer.pad_id, self.device)
        mask = batch.mask
        self.policy.train()
        exact = cfg.kl_estimator == "exact"
        with precision_context(self.precision, self.device):  # (the forward passes; backward follows autocast's)
            dists = completion_dists(self.policy, batch) if exact else None
            # The entropy term costs a softmax-sized backward pass: build it only when it is in the loss.
            logp, entropy, values = completion_logprobs(
                self.policy, batch, with_values=cfg.baseline == "value", with_entropy=cfg.entropy_coef > 0, dists=dists
            )
            if old is None:
                returns, adv, kl_seq, kl_loss = self.returns(r, batch, logp, dists, values)
            else:  # (a KL loss term, exact or k3, is the policy's own: computed again at the current parameters)
                returns, adv, kl_seq = old["returns"], old["adv"], old["kl_seq"]
                kl_in_loss = self.kl.beta > 0 or cfg.target_kl > 0
                kl_loss = 0.0
                if kl_in_loss and exact:
                    kl_loss = self.kl.beta * self.exact_kl(batch, dists).sum() / n
                elif kl_in_loss and cfg.kl_estimator == "k3":
                    kl_loss = self.k3_kl(batch, logp)[0]
        value_loss = torch.zeros((), device=self.device)
        if values is not None:
            target = returns if returns.dim() == 2 else returns[:, None]
            value_loss = (((values - target) ** 2) * mask).sum() / mask.sum()

        # θ ← θ + α ∇ Σ_t log π(a_t|s_t) (R − b): sum over tokens, mean over completions.
        if old is None:
            pg_loss = -(adv * logp).sum() / n
        else:  # PPO's clipped surrogate: ρ(R − b) has the same gradient as log π · (R − b) at ρ = 1
            ratio = torch.exp(logp - old["logp"])
            clipped = ratio.clamp(1 - cfg.clip_range, 1 + cfg.clip_range)
            pg_loss = -(torch.min(ratio * adv, clipped * adv) * mask).sum() / n
        loss = pg_loss + kl_loss + cfg.vf_coef * value_loss
        if entropy is not None:
            loss = loss - cfg.entropy_coef * entropy.sum() / n
        parts = {
            "pg_loss": pg_loss,
            "value_loss": value_loss,
            "logp": logp,
            "kl_seq": kl_seq,
            "returns": returns,
            "adv": adv,
            "mask": mask,
        }
        return loss, parts

    def returns(
        self,
        r: Rollout,
        batch: Packed,
        logp: torch.Tensor,
        dists: tuple[torch.Tensor, torch.Tensor] | None,
        values: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each completion's (credit 'token': each token's) return R, the advantage R − b laid out as ``mask``, the
        KL per completion, and the KL's loss term (exact or k3; 0 with the sampled KL)."""
        cfg = self.cfg
        n = cfg.num_envs
        mask = batch.mask
        # R = r − β Σ_t (log π − log π_ref): the sampled KL penalty, per completion. At a fixed β = 0 the reference
        # is not run (TRL's fast path): the KL is then not measured during training, only in evaluation.
        beta = self.kl.beta
        kl_seq = torch.zeros(n, device=self.device)
        kl_loss = torch.zeros((), device=self.device)
        scores = torch.as_tensor(r.scores, dtype=torch.float32, device=self.device)
        per_token = cfg.credit == "token"
        # credit 'token': what is still to come at s_t, the score's change after the prefix before token t
        score_returns = scores[:, None] - self.prefix_scores(r, mask) if per_token else scores
        returns = score_returns
        if (beta > 0 or cfg.target_kl > 0) and cfg.kl_estimator == "k3":
            kl_loss, kl_seq = self.k3_kl(batch, logp)  # (the return is the score alone)
        elif (beta > 0 or cfg.target_kl > 0) and dists is None:
            with torch.no_grad():
                ref_logp, _, _ = completion_logprobs(self.ref, batch)
            kl_tok = (logp.detach() - ref_logp) * mask
            kl_seq = kl_tok.sum(1)
            kl_return = kl_tok.flip(1).cumsum(1).flip(1) if per_token else kl_seq  # (Σ_{t'≥t}: reward-to-go)
            returns = score_returns - beta * kl_return
        elif beta > 0 or cfg.target_kl > 0:
            # Exact per-step KL_t = Σ_a π(a|s_t) log π(a|s_t)/π_ref(a|s_t). ∇ KL(π‖π_ref) = E[Σ_t ∇KL_t(s_t)] +
            # E[Σ_t ∇log π(a_t|s_t) Σ_{t'>t} KL_t'(s_t')]: a loss term, and each step's return carries the KL of
            # the steps after it (the steps before it do not depend on a_t).
            kl_tok = self.exact_kl(batch, dists)
            kl_loss = beta * kl_tok.sum() / n
            kl_tok = kl_tok.detach()
            kl_seq = kl_tok.sum(1)
            after = kl_tok.flip(1).cumsum(1).flip(1) - kl_tok  # Σ_{t'>t} KL_t'
            returns = (score_returns if per_token else scores[:, None]) - beta * after

        # Baseline b and advantage R − b, per completion (value head: per token).
        if cfg.weighting == "exponential":  # fit π*: k·softmax(R/β) − 1 within each prompt's group
            w = torch.softmax(returns.view(-1, cfg.rloo_k) / beta, dim=1)
            adv = (cfg.rloo_k * w - 1).view(-1, 1).expand_as(mask)
        elif cfg.gae_lambda < 1:  # GAE(λ) on the per-token critic; the value head learns the λ-returns
            adv = gae(returns, values.detach() * mask, mask, cfg.gae_lambda)
            returns = adv + values.detach() * mask
        else:
            adv = advantages(returns, cfg.baseline, cfg.rloo_k, self.ema, values).expand_as(mask)
        if cfg.normalize_advantages:
            m = mask.bool()
            adv = (adv - adv[m].mean()) / (adv[m].std() + 1e-8)
        return returns, adv, kl_seq, kl_loss

    def k3_kl(self, batch: Packed, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """GRPO's KL loss term β·Σ_t k3_t / n (gradients through ``logp``), and the sampled KL Σ_t log π/π_ref per
        completion (what the training objective reports, as with the other estimators)."""
        with torch.no_grad():
            ref_logp, _, _ = completion_logprobs(self.ref, batch)
        log_ratio = (ref_logp - logp) * batch.mask  # log π_ref/π at each sampled token
        k3 = (torch.exp(log_ratio) - log_ratio - 1) * batch.mask
        return self.kl.beta * k3.sum() / self.cfg.num_envs, -log_ratio.detach().sum(1)

    def exact_kl(self, batch: Packed, dists: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """KL(π(·|s_t) ‖ π_ref(·|s_t)) over the whole vocabulary at each completion token, laid out as ``mask``;
        gradients flow through the policy's ``dists``."""
        with torch.no_grad():
            ref_all, _ = completion_dists(self.ref, batch)
        logp_all = dists[0]
        kl = (logp_all.exp() * (logp_all - ref_all)).sum(-1)
        return torch.zeros_like(batch.mask).masked_scatter(batch.mask.bool(), kl)

    def prefix_scores(self, r: Rollout, mask: torch.Tensor) -> torch.Tensor:
        """The feedback on the completion so far before each completion token, laid out as ``mask`` (the first t
        tokens at the completion's t-th position); elsewhere the whole completion's score, as nothing is left to
        change there. One feedback call on every prefix of the batch."""
        index, prefixes = [], []
        for i, ids in zip(r.prompt_index.tolist(), r.completion_ids):
            index += [i] * len(ids)
            prefixes += [ids[:t] for t in range(len(ids))]
        values = torch.as_tensor(self.envs.task.score(index, prefixes).rewards, dtype=torch.float32)
        scores = torch.as_tensor(r.scores, dtype=torch.float32, device=self.device)
        return scores[:, None].expand_as(mask).masked_scatter(mask.bool(), values.to(self.device))

    def step(self) -> dict[str, float]:
        """Roll out num_envs completions and take one policy-gradient step on them (update_epochs steps: the later
        ones on the clipped ratio to the rollout's policy)."""
        cfg = self.cfg
        n = cfg.num_envs
        r = self.rollout()
        beta = self.kl.beta
        loss, parts = self.loss(r)
        pg_loss, value_loss, logp, kl_seq = parts["pg_loss"], parts["value_loss"], parts["logp"], parts["kl_seq"]
        if cfg.baseline == "moving_average":  # (of whole-completion returns: r − β·KL)
            batch_mean = float((torch.as_tensor(r.scores, dtype=torch.float32) - beta * kl_seq.cpu()).mean())
            self.ema = batch_mean if self.ema is None else cfg.ema_decay * self.ema + (1 - cfg.ema_decay) * batch_mean
        lr = decayed_lr(self.progress(), cfg.lr, cfg.lr_schedule, cfg.lr_min_ratio)
        for group in self.opt.param_groups:
            group["lr"] = lr
        grad_norm = self.optimize(loss)
        first = {k: v.detach() for k, v in parts.items()}
        clipped = []
        for _ in range(1, cfg.update_epochs):  # further steps on the same completions, ratio-clipped
            later, later_parts = self.loss(r, old=first)
            self.optimize(later)
            ratio = torch.exp(later_parts["logp"].detach() - first["logp"])
            clipped.append(float(((ratio - 1).abs() > cfg.clip_range)[first["mask"].bool()].float().mean()))
        self.updates += 1

        mean_kl = float(kl_seq.mean())
        self.kl.update(mean_kl, n)
        score = float(r.scores.mean())
        metrics = {
            "objective/scores": score,
            "objective/entropy": float(-logp.detach().sum(1).mean()),
            "objective/kl_coef": beta,
            "losses/policy_loss": float(pg_loss.detach()),
            "losses/value_loss": float(value_loss.detach()),
            "losses/grad_norm": float(grad_norm),
            "charts/learning_rate": lr,
            "charts/episode_length": r.tokens / n,
            "charts/env_tokens": float(self.tokens),
        }
        if beta > 0 or cfg.target_kl > 0:  # (the KL is measured)
            metrics.update({"objective/kl": mean_kl, "objective/rlhf_reward": score - beta * mean_kl})
        if clipped:  # (PPO's clip_fraction: the share of tokens whose ratio left the clip range, over later steps)
            metrics["losses/clip_fraction"] = float(np.mean(clipped))
        if len(r.feedback) > 1:  # a weighted mix: which term moved
            metrics.update({f"objective/feedback/{name}": float(v.mean()) for name, v in r.feedback.items()})
        return metrics

    def optimize(self, loss: torch.Tensor) -> torch.Tensor:
        """One Adam step on ``loss``, its gradient norm clipped; returns the norm before clipping."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return grad_norm

    def progress(self) -> float:
        """How far through the run this update is, from 0 to 1 (what a learning-rate schedule follows)."""
        cfg = self.cfg
        done = self.tokens / cfg.total_env_tokens if cfg.total_env_tokens else self.updates / cfg.updates
        if cfg.max_minutes:  # the run ends at its budget or its time, whichever comes first
            done = max(done, (time.monotonic() - self.started) / (60 * cfg.max_minutes))
        return done

    # -- the rest of the run-loop protocol ---------------------------------------------------------------------
    @property
    def model(self) -> LSTMLM:
        """The run loop's name for the policy (what checkpoints save)."""
        return self.policy

    def evaluate(self) -> dict[str, float]:
        self.last_evaluation = self.evaluator(self.policy, self.ref)
        return self.last_evaluation.metrics

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, data = optimizer_state(self.opt, self.gen)
        data.update(
            np_rng=self.rng.bit_generator.state,
            beta=self.kl.beta,
            ema=self.ema,
            tokens=self.tokens,
            updates=self.updates,
        )
        return tensors, data

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        load_optimizer_state(self.opt, self.gen, tensors, data)
        self.rng.bit_generator.state = data["np_rng"]
        self.kl.beta, self.ema, self.tokens = data["beta"], data["ema"], data["tokens"]
        self.updates = data.get("updates", 0)  # (checkpoints from before the learning-rate schedule lack it)


def train(
    cfg: ReinforceConfig, on_update: Callable[[int], None] | None = None, agent: Reinforce | None = None
) -> dict[str, float]:
    """Align ``cfg.init`` with REINFORCE; resume from ``cfg.out/checkpoint`` if present. Returns final eval metrics.

    ``agent`` is a ``Reinforce(cfg)`` made by the caller, who can then look into it from ``on_update`` (the
    benchmark script measures the gradient's signal-to-noise ratio there)."""
    agent = agent if agent is not None else Reinforce(cfg)
    # Before: the initial policy (not the reference, which --ref may make another model), on the held-out prompts;
    # the policy is still --init's here, also when the run resumes (run() restores the checkpoint).
    before = agent.evaluator(agent.policy, agent.ref)
    meta = {"stage": "reinforce", "init": cfg.init, "corpus": agent.corpus, "config": asdict(cfg)}
    schedule = Schedule(
        cfg.updates,
        cfg.eval_interval,
        cfg.checkpoint_interval,
        total_tokens=cfg.total_env_tokens,
        max_minutes=cfg.max_minutes,
    )
    result = run(
        agent,
        schedule,
        cfg.out,
        meta,
        desc="reinforce",
        progress=cfg.progress,
        start_metrics={**before.metrics, "charts/env_tokens": 0.0},
        on_step=on_update,
    )
    after = agent.last_evaluation if result.eval and agent.last_evaluation else agent.evaluator(agent.policy, agent.ref)
    summary = {"updates": result.steps, "env_tokens": agent.tokens}
    report(cfg.out, f"REINFORCE, {cfg.reward}", before, after, cfg.eval_samples, summary)
    return after.metrics
