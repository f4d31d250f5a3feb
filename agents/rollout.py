"""Completions sampled from a language model through the registered vector env: what training and evaluation share.

The env is the source of truth: it draws (or is told) the prompts, appends each sampled token, decides when an
episode ends, and scores the finished completions with its feedback, references included. The policy carries its
LSTM state from token to token (one LSTM step per token), starting from the whole ``<bos> + prompt``, which the env's
task holds uncut (the observation window may show only its end). The env runs in ``Disabled`` autoreset mode: a
sub-env whose completion ended waits for the next rollout's reset, so it is neither stepped into a new episode nor
scored twice while the others finish.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

import textgym  # noqa: F401  (registers the env ids)
from agents.model import LSTMLM, sample_logits
from textgym.prompts import PromptSet
from textgym.tokenizer import TextTokenizer
from textgym.vector_env import TextGenVectorEnv

ENV_ID = "textgym/TextGen-v0"
_WINDOW = 32  # observation length; the LM carries its state and does not read the window


def make_env(
    num_envs: int, reward: Any, tokenizer: TextTokenizer, prompts: PromptSet, max_new_tokens: int
) -> TextGenVectorEnv:
    """The registered vector env, made for sampling one completion per sub-env (``Disabled`` autoreset)."""
    envs = gym.make_vec(
        ENV_ID,
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        reward=reward,
        tokenizer=tokenizer,
        prompts=prompts,
        max_new_tokens=max_new_tokens,
        context_len=_WINDOW,
        autoreset_mode="Disabled",
    )
    return envs.unwrapped


@dataclass
class Rollout:
    """One completion per sub-env, column by column."""

    prompt_index: np.ndarray
    prompt_ids: list[list[int]]
    """``<bos> + prompt`` ids, whole."""
    completion_ids: list[list[int]]
    """The sampled ids; the last is ``<eos>`` where the completion ended with it."""
    completions: list[str]
    scores: np.ndarray
    """The feedback on each completion (the reward of its last step)."""
    feedback: dict[str, np.ndarray]
    """Each feedback component's value (``info["feedback"]``)."""
    env_seconds: float
    """Wall time spent in ``envs.step`` (feedback included)."""

    @property
    def tokens(self) -> int:
        return sum(map(len, self.completion_ids))


@torch.no_grad()
def sample_completions(
    envs: TextGenVectorEnv,
    policy: LSTMLM,
    generator: torch.Generator,
    prompt_index: np.ndarray | None = None,
    seed: int | None = None,
    temperature: float = 1.0,
) -> Rollout:
    """Sample one completion per sub-env of ``envs`` from ``policy``, through ``envs.step``.

    Args:
        envs: a :func:`make_env` env (``Disabled`` autoreset).
        policy: the language model that acts; it is put in eval mode for sampling and back as it was.
        generator: the torch generator of the sampling (on the policy's device).
        prompt_index: the prompt of each sub-env; None lets each sub-env draw its own (seeded by ``seed``).
        temperature: sampling temperature.
    """
    n, task = envs.num_envs, envs.task
    options = None if prompt_index is None else {"prompt_index": prompt_index}
    _, info = envs.reset(seed=seed, options=options)
    index = info["prompt_index"].copy()
    prompt_ids = [task.prompt_ids[j] for j in index.tolist()]
    was_training = policy.training
    policy.eval()
    logits, state, _ = policy.prefill(prompt_ids)
    actions = torch.zeros(n, task.max_new_tokens, dtype=torch.long, device=logits.device)
    lengths = np.zeros(n, dtype=np.int64)
    scores = np.zeros(n)
    feedback = {name: np.zeros(n) for name in task.feedback.names}
    completions = [""] * n
    active = np.ones(n, dtype=bool)
    env_seconds = 0.0
    for t in range(task.max_new_tokens):
        tokens = sample_logits(logits, generator, temperature)
        actions[:, t] = tokens
        t0 = time.perf_counter()
        _, reward, terminated, truncated, info = envs.step(tokens.cpu().numpy())
        env_seconds += time.perf_counter() - t0
        ended = terminated | truncated  # a waiting sub-env does not end again
        if ended.any():
            scores[ended], lengths[ended] = reward[ended], t + 1
            for name in feedback:
                feedback[name][ended] = info["feedback"][name][ended]
            for i in np.flatnonzero(ended).tolist():
                completions[i] = info["completion"][i]
            active &= ~ended
        if not active.any():
            break
        logits, state = policy.step(tokens, state)  # one LSTM step per token
    policy.train(was_training)
    rows = actions.cpu().tolist()
    completion_ids = [row[:length] for row, length in zip(rows, lengths.tolist())]
    return Rollout(index, prompt_ids, completion_ids, completions, scores, feedback, env_seconds)
