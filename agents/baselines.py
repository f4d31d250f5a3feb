"""Stable-Baselines3 baselines (PPO, A2C, sb3-contrib's RecurrentPPO and MaskablePPO) on the same env, from the same
pretrained LM, toward the same KL-regularised objective as REINFORCE, in the same run loop and evaluation.

* **The same env**: the registered vector env, adapted to SB3's ``VecEnv`` (:mod:`agents.sb3_env`), one feedback
  call per batch of finished episodes.
* **The same start**: the policy's actor is the ``--init`` LM itself (:mod:`agents.sb3_policies`), so the first
  action distribution is the LM's next-token distribution.
* **The same objective**, E[r] − β·KL(π‖π_ref), with the KL penalty in the per-token reward as RL4LMs and TRL put
  it: :class:`KLPenalty`, an SB3 callback, subtracts β·(log π(a_t|s_t) − log π_ref(a_t|s_t)) from each step's reward
  before it enters the rollout buffer (the reference's state is carried per sub-env by the env wrapper). β is fixed or
  follows the same adaptive controller as REINFORCE (``--kl-coef`` / ``--target-kl``). SB3's own ``target_kl``, early
  stopping of an update whose policy moved too far, is ``--stop-kl`` here, to keep the two apart.
* **The same measurements**: ``objective/scores``, ``objective/kl``, ``objective/entropy``, ``objective/rlhf_reward``
  with REINFORCE's estimators (per finished completion: the feedback, Σ_t log π − log π_ref, Σ_t −log π), SB3's losses
  as ``losses/...``, and the shared held-out evaluation; all in the run folder's ``progress.csv`` and TensorBoard
  events, through the one run logger (SB3's own logger writes nowhere: no ``SB3-<timestamp>`` folders).

One run-loop step is one SB3 iteration: a rollout of ``n_steps`` tokens in each of ``num_envs`` sub-envs, then the
algorithm's update. Checkpoints are normal LM checkpoint directories (the actor), with the policy's other weights
(critic), the optimizer and the counters in the trainer state; SB3's pickled ``.zip`` files are never written or read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import MaskablePPO, RecurrentPPO
from stable_baselines3 import A2C, PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from agents.checkpoint import load_checkpoint
from agents.evaluation import Evaluation, Evaluator, split_held_out, task_prompts
from agents.model import LSTMLM
from agents.reinforce import AdaptiveKL, AlignmentConfig, ReinforceConfig
from agents.reinforce import train as train_reinforce
from agents.reporting import report
from agents.runner import Schedule, resolve_device, run
from agents.sb3_env import RLHFVecEnv, SB3VecEnv
from agents.sb3_policies import LMWindowPolicy, MaskableLMWindowPolicy, RecurrentLMPolicy
from agents.training import check_positive, load_optimizer_state, optimizer_state
from textgym.vector_env import TextGenVectorEnv


@dataclass
class SB3Config(AlignmentConfig):
    """Options every SB3 baseline shares (``textgym train --algo NAME --help`` shows them with NAME's defaults)."""

    num_envs: int = 16
    """Sub-envs stepped together (SB3's n_envs); SB3's per-step overhead is shared by all of them."""
    context_len: int = 0
    """Observation window in tokens (0: just enough, the longest <bos> + prompt + max_new_tokens - 1); a window
    policy must see every prompt whole, so a shorter one is an error."""
    n_steps: int = 64
    """Env steps per sub-env in a rollout (num_envs x n_steps env tokens per update): about 3 completions each."""
    updates: int = 100
    """SB3 iterations (rollout, then update) in the run, unless --total-env-tokens is given."""
    lr: float = 5e-5
    """Adam learning rate: small, as when fine-tuning any pretrained LM (larger steps forget language)."""
    gamma: float = 1.0
    """Discount: 1, since the return of a completion is its score and the KL penalties, undiscounted (as in RLHF)."""
    gae_lambda: float = 0.95
    """GAE λ: trades the critic's bias for variance (RL4LMs' and TRL's value)."""
    ent_coef: float = 0.0
    """SB3's entropy bonus; 0, since the KL penalty to the reference already keeps the policy from collapsing."""
    vf_coef: float = 0.5
    """Weight of the value loss (the critic reads detached LM features: it never moves the LM)."""
    max_grad_norm: float = 1.0
    """Gradient norm clip (the same as REINFORCE's)."""
    critic_hidden: int = 64
    """Hidden units of the critic's MLP on the LM's features."""
    torch_threads: int = 0
    """Torch threads (0: torch's default, one per core; measured on 2 cores, 2 threads ran PPO 1.7x and RecurrentPPO
    1.5x faster than 1, since the LM's updates dominate here, not SB3's per-step overhead)."""
    eval_interval: int = 10
    """Updates between evaluations."""
    checkpoint_interval: int = 10
    """Updates between checkpoints (resume points)."""
    seed: int = 0
    """Seed of SB3 (its sampling and minibatches), the env's prompt draws and the evaluation (seed + 1)."""
    device: str = "cpu"
    """Where to train: 'cpu', 'cuda' or 'auto' (SB3's small batches are usually faster on the CPU)."""
    out: str = "runs/ppo"
    """Output folder: checkpoint/ (resume point), model/ (the actor, a normal checkpoint), progress.csv, samples.md."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(
            num_envs=self.num_envs,
            n_steps=self.n_steps,
            updates=self.updates,
            lr=self.lr,
            max_grad_norm=self.max_grad_norm,
            critic_hidden=self.critic_hidden,
            eval_interval=self.eval_interval,
            checkpoint_interval=self.checkpoint_interval,
        )
        for name in ("ent_coef", "vf_coef", "context_len", "torch_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")

    def algo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the SB3 algorithm's constructor."""
        return dict(
            learning_rate=self.lr,
            n_steps=self.n_steps,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            ent_coef=self.ent_coef,
            vf_coef=self.vf_coef,
            max_grad_norm=self.max_grad_norm,
        )


@dataclass
class PPOConfig(SB3Config):
    """PPO (Schulman et al., 2017) with the LM as a window policy."""

    lr: float = 1e-4
    """Adam learning rate, small as when fine-tuning any pretrained LM (measured at 100k tokens, β = 0.1, one seed:
    objective +0.095 at 5e-5, +0.158 at 1e-4, +0.112 at 2e-4, where the KL grows faster than the score)."""
    batch_size: int = 256
    """Minibatch size in env tokens (4 minibatches per rollout)."""
    n_epochs: int = 4
    """Passes over each rollout: more learning per env token, each pass re-encoding every window."""
    clip_range: float = 0.2
    """PPO's probability-ratio clip."""
    stop_kl: float = 0.0
    """SB3's target_kl: stop an update's epochs once the approximate KL between old and new policy passes 1.5x this
    (0 = off). Not the KL to the reference."""
    normalize_advantage: bool = True
    """Whiten advantages in each minibatch (SB3's PPO default)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(batch_size=self.batch_size, n_epochs=self.n_epochs, clip_range=self.clip_range)
        if self.stop_kl < 0:
            raise ValueError(f"stop_kl must be >= 0 (0 = off), got {self.stop_kl!r}")

    def algo_kwargs(self) -> dict[str, Any]:
        return dict(
            super().algo_kwargs(),
            batch_size=self.batch_size,
            n_epochs=self.n_epochs,
            clip_range=self.clip_range,
            target_kl=self.stop_kl or None,
            normalize_advantage=self.normalize_advantage,
        )


@dataclass
class A2CConfig(SB3Config):
    """A2C (Mnih et al., 2016): one gradient step per short rollout, no epochs, no clipping."""

    n_steps: int = 32
    """Env steps per sub-env in a rollout: one gradient step per num_envs x n_steps tokens (measured: 8 and 16 learned
    less per env token at 100k tokens)."""
    gae_lambda: float = 1.0
    """GAE λ = 1 (SB3's A2C default): Monte-Carlo returns within the rollout, since the reward comes at a
    completion's end and a young critic's bootstrap misleads A2C's single step (λ = 0.95 did not learn in 100k
    tokens)."""
    lr: float = 3e-4
    """Adam learning rate: one gradient step per rollout, so larger steps than PPO's 16 per rollout (REINFORCE's)."""
    normalize_advantage: bool = False
    """Whiten advantages in each rollout (off, as in SB3's A2C)."""
    out: str = "runs/a2c"
    """Output folder: checkpoint/ (resume point), model/ (the actor, a normal checkpoint), progress.csv, samples.md."""

    def algo_kwargs(self) -> dict[str, Any]:
        # Adam rather than A2C's default RMSprop, like every other algorithm here (and its lr means the same).
        return dict(super().algo_kwargs(), normalize_advantage=self.normalize_advantage, use_rms_prop=False)


@dataclass
class RecurrentPPOConfig(PPOConfig):
    """RecurrentPPO (sb3-contrib): the LM's LSTM state carried token by token, O(1) per token in training too."""

    lr: float = 5e-5
    """Adam learning rate (measured at 100k tokens, β = 0.1, one seed: objective +0.132 at 5e-5, +0.114 at 1e-4)."""
    out: str = "runs/recurrent-ppo"
    """Output folder: checkpoint/ (resume point), model/ (the actor, a normal checkpoint), progress.csv, samples.md."""


@dataclass
class MaskablePPOConfig(PPOConfig):
    """MaskablePPO (sb3-contrib) with NLPO's action mask (Ramamurthy et al., 2023): at each step only the tokens in
    the reference LM's top-p nucleus may be sampled."""

    top_p: float = 0.9
    """Nucleus mass of the reference LM that the mask allows, in (0, 1] (NLPO's default 0.9; 1 = no mask)."""
    out: str = "runs/maskable-ppo"
    """Output folder: checkpoint/ (resume point), model/ (the actor, a normal checkpoint), progress.csv, samples.md."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (the nucleus mass the mask keeps), got {self.top_p!r}")


# algorithm name -> (config class, SB3 class, policy class)
ALGORITHMS: dict[str, tuple[type[SB3Config], type, type]] = {
    "ppo": (PPOConfig, PPO, LMWindowPolicy),
    "a2c": (A2CConfig, A2C, LMWindowPolicy),
    "recurrent-ppo": (RecurrentPPOConfig, RecurrentPPO, RecurrentLMPolicy),
    "maskable-ppo": (MaskablePPOConfig, MaskablePPO, MaskableLMWindowPolicy),
}


def algorithms() -> dict[str, tuple[type, Any]]:
    """``textgym train --algo NAME``: each algorithm's config dataclass and its train function."""
    sb3 = {name: (config, train) for name, (config, _, _) in ALGORITHMS.items()}
    return {"reinforce": (ReinforceConfig, train_reinforce), **sb3}


def algorithm_of(cfg: SB3Config) -> str:
    return next(name for name, (cls, _, _) in ALGORITHMS.items() if type(cfg) is cls)


class KLPenalty(BaseCallback):
    """Puts −β·(log π(a_t|s_t) − log π_ref(a_t|s_t)) into each step's reward before SB3 stores it, and measures the
    objective per finished completion with REINFORCE's estimators."""

    def __init__(self, controller: AdaptiveKL, num_envs: int) -> None:
        super().__init__()
        self.controller = controller
        self.kl = np.zeros(num_envs)  # Σ_t log π − log π_ref of each sub-env's episode so far
        self.neg_logp = np.zeros(num_envs)  # Σ_t −log π
        self.finished: list[tuple[float, float, float, int]] = []  # (score, kl, entropy, length) per completion
        self.feedback: dict[str, list[float]] = {}
        self.length = np.zeros(num_envs, dtype=np.int64)

    def _on_rollout_start(self) -> None:
        self.finished, self.feedback = [], {}

    def _on_step(self) -> bool:
        rewards: np.ndarray = self.locals["rewards"]  # edited in place: SB3 adds this array to its buffer next
        logp = self.locals["log_probs"].detach().double().cpu().numpy().reshape(-1)
        log_ratio = logp - self.training_env.last_ref_logprob
        scores = rewards.astype(np.float64)  # the feedback: non-zero only on an episode's last step
        rewards -= (self.controller.beta * log_ratio).astype(rewards.dtype)
        self.kl += log_ratio
        self.neg_logp -= logp
        self.length += 1
        for i in np.flatnonzero(self.locals["dones"]).tolist():
            self.finished.append((scores[i], self.kl[i], self.neg_logp[i], int(self.length[i])))
            for name, value in self.locals["infos"][i].get("feedback", {}).items():
                self.feedback.setdefault(name, []).append(value)
            self.kl[i] = self.neg_logp[i] = self.length[i] = 0
        return True

    def metrics(self) -> dict[str, float]:
        """The rollout's objective metrics (over the completions that finished in it), then the β update."""
        beta = self.controller.beta
        out = {"objective/kl_coef": beta}
        if self.finished:
            scores, kls, entropies, lengths = map(np.asarray, zip(*self.finished))
            out.update(
                {
                    "objective/scores": float(scores.mean()),
                    "objective/kl": float(kls.mean()),
                    "objective/entropy": float(entropies.mean()),
                    "objective/rlhf_reward": float(scores.mean() - beta * kls.mean()),
                    "charts/episode_length": float(lengths.mean()),
                }
            )
            if len(self.feedback) > 1:
                out.update({f"objective/feedback/{k}": float(np.mean(v)) for k, v in self.feedback.items()})
            self.controller.update(float(kls.mean()), len(kls))
        return out


_LOSS_NAMES = {"policy_gradient_loss": "policy_loss", "clip_fraction": "clipfrac"}


class SB3Agent:
    """An SB3 algorithm as a run-loop Trainable: the env, the LM policy, the KL callback and the evaluation."""

    def __init__(self, cfg: SB3Config) -> None:
        self.cfg = cfg
        self.name = algorithm_of(cfg)
        _, algo_cls, policy_cls = ALGORITHMS[self.name]
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self.device = resolve_device(cfg.device)
        lm, self.tokenizer, init_config = load_checkpoint(cfg.init, device=self.device)
        self.ref = load_checkpoint(cfg.ref or cfg.init, expect_tokenizer=self.tokenizer, device=self.device)[0]
        self.ref.requires_grad_(False).eval()

        prompts, self.corpus = task_prompts(cfg.prompts, cfg.corpus, init_config)
        self.train_prompts, eval_prompts = split_held_out(prompts, cfg.eval_prompts)
        venv = self._make_vector_env()
        top_p = getattr(cfg, "top_p", 1.0)
        self.env = RLHFVecEnv(SB3VecEnv(venv), self.ref, top_p=top_p)
        self.sb3 = algo_cls(
            policy_cls,
            self.env,
            policy_kwargs={"lm": lm, "pad_id": self.tokenizer.pad_id, "critic_hidden": cfg.critic_hidden},
            seed=cfg.seed,
            device=self.device,
            **cfg.algo_kwargs(),
        )
        self.sb3.set_logger(Logger(folder=None, output_formats=[]))  # values are read back into the run's logger
        # SB3 samples actions and shuffles minibatches with torch's and NumPy's global generators, which it seeded
        # just now: the agent keeps their states as its own and swaps them in for its steps only, so that two agents
        # in one process (or anything else drawing from the globals between steps) do not disturb each other.
        self.rng_states = (torch.get_rng_state(), np.random.get_state())
        self.callback = KLPenalty(AdaptiveKL(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon), cfg.num_envs)
        self.evaluator = Evaluator(
            eval_prompts, cfg.reward, self.tokenizer, cfg.eval_samples, cfg.max_new_tokens, seed=cfg.seed + 1
        )
        self.last_evaluation: Evaluation | None = None

    def _make_vector_env(self) -> TextGenVectorEnv:
        """The registered vector env in SB3's autoreset mode, with a window that holds every prompt whole."""
        cfg = self.cfg
        probe = gym.make_vec(
            "textgym/TextGen-v0",
            num_envs=1,
            vectorization_mode="vector_entry_point",
            reward=cfg.reward,
            tokenizer=self.tokenizer,
            prompts=self.train_prompts,
            max_new_tokens=cfg.max_new_tokens,
        ).unwrapped
        needed = probe.task.longest_prompt + cfg.max_new_tokens - 1
        if cfg.context_len and cfg.context_len < needed:
            raise ValueError(
                f"context_len {cfg.context_len} is too short: the longest prompt is {probe.task.longest_prompt} tokens "
                f"with <bos>, and a window policy must see it whole until the last of max_new_tokens="
                f"{cfg.max_new_tokens} tokens, so context_len must be >= {needed} (or 0 for just that)"
            )
        return gym.make_vec(
            "textgym/TextGen-v0",
            num_envs=cfg.num_envs,
            vectorization_mode="vector_entry_point",
            reward=cfg.reward,
            tokenizer=self.tokenizer,
            prompts=self.train_prompts,
            max_new_tokens=cfg.max_new_tokens,
            context_len=cfg.context_len or needed,
            autoreset_mode="SameStep",
        ).unwrapped

    # -- the run-loop protocol ---------------------------------------------------------------------------------
    @property
    def model(self) -> LSTMLM:
        """The actor: the LM inside the SB3 policy (its modules are the policy's)."""
        return self.sb3.policy.lm

    @property
    def tokens(self) -> int:
        return int(self.sb3.num_timesteps)

    def step(self) -> dict[str, float]:
        cfg = self.cfg
        outside = (torch.get_rng_state(), np.random.get_state())
        torch.set_rng_state(self.rng_states[0])
        np.random.set_state(self.rng_states[1])
        try:
            self.sb3.learn(
                cfg.n_steps * cfg.num_envs, callback=self.callback, reset_num_timesteps=False, log_interval=None
            )
            self.rng_states = (torch.get_rng_state(), np.random.get_state())
        finally:
            torch.set_rng_state(outside[0])
            np.random.set_state(outside[1])
        metrics = self.callback.metrics()
        for key, value in self.sb3.logger.name_to_value.items():
            group, _, name = key.partition("/")
            if group == "train" and name not in ("n_updates", "clip_range", "learning_rate"):
                metrics[f"losses/{_LOSS_NAMES.get(name, name)}"] = float(value)
        self.sb3.logger.dump()  # (clears the recorded values; SB3's logger has no outputs)
        metrics["charts/env_tokens"] = float(self.tokens)
        return metrics

    def evaluate(self) -> dict[str, float]:
        self.last_evaluation = self.evaluator(self.model, self.ref)
        return self.last_evaluation.metrics

    def _critic_state(self) -> dict[str, torch.Tensor]:
        """The policy's weights that are not the LM's (the critic): the checkpoint holds the LM's already."""
        lm = {p.data_ptr() for p in self.model.state_dict().values()}
        return {k: v for k, v in self.sb3.policy.state_dict().items() if v.data_ptr() not in lm}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, data = optimizer_state(self.sb3.policy.optimizer)
        tensors.update({f"policy.{k}": v for k, v in self._critic_state().items()})
        tensors["torch_rng"], np_state = self.rng_states
        tensors["numpy_rng_keys"] = torch.from_numpy(np_state[1].astype(np.int64))
        data.update(
            numpy_rng=[np_state[0], *np_state[2:]],
            num_timesteps=self.tokens,
            n_updates=int(self.sb3._n_updates),
            beta=self.callback.controller.beta,
        )
        return tensors, data

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
        policy = self.sb3.policy
        own = {k[len("policy.") :]: v for k, v in tensors.items() if k.startswith("policy.")}
        if set(own) != set(self._critic_state()):
            raise ValueError(f"the checkpoint's policy weights {sorted(own)} are not this policy's: use another --out")
        policy.load_state_dict({**policy.state_dict(), **own})  # (the LM's weights were loaded with the checkpoint)
        load_optimizer_state(policy.optimizer, None, tensors, data)
        name, *rest = data["numpy_rng"]
        self.rng_states = (tensors["torch_rng"], (name, tensors["numpy_rng_keys"].numpy().astype(np.uint32), *rest))
        self.sb3.num_timesteps, self.sb3._n_updates = data["num_timesteps"], data["n_updates"]
        self.callback.controller.beta = data["beta"]
        # The episodes in flight at the save are not in the checkpoint: the resumed run starts new ones, seeded
        # from the run's seed and its position, so a resume is itself reproducible.
        self.env.seed(self.cfg.seed + self.tokens)
        self.sb3._last_obs = None


def train(cfg: SB3Config, on_update: Any = None) -> dict[str, float]:
    """Align ``cfg.init`` with the SB3 algorithm of ``cfg``'s type; resume from ``cfg.out/checkpoint`` if present."""
    agent = SB3Agent(cfg)
    before = agent.evaluator(agent.model, agent.ref)
    meta = {"stage": agent.name, "init": cfg.init, "corpus": agent.corpus, "config": asdict(cfg)}
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
        desc=agent.name,
        progress=cfg.progress,
        start_metrics={**before.metrics, "charts/env_tokens": 0.0},
        on_step=on_update,
    )
    after = agent.last_evaluation if result.eval and agent.last_evaluation else agent.evaluator(agent.model, agent.ref)
    report(
        cfg.out,
        f"{agent.name}, {cfg.reward}",
        before,
        after,
        cfg.eval_samples,
        {"updates": result.steps, "env_tokens": agent.tokens},
    )
    return after.metrics
