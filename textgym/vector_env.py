"""``TextGenVectorEnv``: many ``TextGenEnv`` episodes stepped together in NumPy, feedback called once per batch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textgym.corpus import Corpus
from textgym.prompts import PromptSet
from textgym.task import Scored, TextTask, check_render_mode
from textgym.tokenizer import DEFAULT_VOCAB_SIZE, TextTokenizer

_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)


class TextGenVectorEnv(VectorEnv):
    """A natively batched :class:`~textgym.env.TextGenEnv`: ``num_envs`` completions advanced by one token per step.

    All sequences live in NumPy arrays and advance with array operations, and the feedback function is called once
    per step on the batch of episodes that just finished, instead of once per episode. Sub-env ``i`` draws its
    prompts from its own generator, seeded ``seed + i`` as ``SyncVectorEnv`` seeds its sub-envs, so under the same
    seeds this env yields the same prompts, observations, rewards, episode ends and infos as
    ``SyncVectorEnv([lambda: TextGenEnv(...)] * num_envs)``.

    ## Autoreset
    ``autoreset_mode="next_step"`` (Gymnasium's default): the step after an episode ends resets that sub-env; its
    action is ignored and it returns reward 0, ``terminated=False`` and the new prompt's observation and info.
    ``autoreset_mode="same_step"``: an episode that ends is reset in the same step; the returned observation is the
    new prompt's, the last observation and info of the finished episode are in ``info["final_obs"]`` and
    ``info["final_info"]``. Same-step wastes no step on resets, which suits rollouts of fixed-length completions.

    Arguments are those of ``TextGenEnv`` plus ``num_envs`` and ``autoreset_mode``. Create it with
    ``gym.make_vec("textgym/TextGen-v0", num_envs=64, vectorization_mode="vector_entry_point")``.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

    def __init__(
        self,
        num_envs: int = 1,
        reward: Any = "sentiment",
        corpus: str | os.PathLike[str] | Corpus | None = None,
        prompts: str | os.PathLike[str] | PromptSet | None = None,
        tokenizer: TextTokenizer | str | os.PathLike[str] | None = None,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        context_len: int = 32,
        max_new_tokens: int = 20,
        prompt_words: int = 4,
        render_mode: str | None = None,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
    ) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        # Accept the enum, its value ("SameStep") or its snake_case name ("same_step").
        key = str(getattr(autoreset_mode, "value", autoreset_mode)).replace("_", "").lower()
        mode = next((m for m in _MODES if m.value.lower() == key), None)
        if mode is None:
            raise ValueError(
                f"autoreset_mode {autoreset_mode!r} is not supported; use one of {[m.value for m in _MODES]} "
                "(or 'next_step', 'same_step')"
            )
        check_render_mode(render_mode, self.metadata["render_modes"])

        self.task = TextTask(reward, corpus, prompts, tokenizer, vocab_size, context_len, max_new_tokens, prompt_words)
        self.tokenizer = self.task.tokenizer
        self.num_envs = int(num_envs)
        self.autoreset_mode = mode
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.render_mode = render_mode
        self.single_observation_space = self.task.observation_space()
        self.single_action_space = self.task.action_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        n = self.num_envs
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._obs = np.zeros((n, self.task.context_len), dtype=np.int64)
        self._generated = np.zeros((n, self.task.max_new_tokens), dtype=np.int64)
        self._lengths = np.zeros(n, dtype=np.int64)
        self._prompt_idx = np.zeros(n, dtype=np.int64)
        self._autoreset = np.zeros(n, dtype=bool)
        self._last_rewards: list[float | None] = [None] * n
        self._started = False
        self._all_envs = np.arange(n)
        self._no_envs = np.zeros(n, dtype=bool)

    # -- helpers -----------------------------------------------------------------------------------------------
    def _put(self, infos: dict[str, Any], key: str, envs: np.ndarray, values: Any, dtype: Any) -> None:
        """Set ``infos[key][envs] = values`` and its ``_key`` mask: the layout of ``VectorEnv._add_info``, built
        with one array assignment per key instead of one Python call per sub-env."""
        if key not in infos:
            infos[key] = (
                np.full(self.num_envs, None, dtype=object) if dtype is object else np.zeros(self.num_envs, dtype)
            )
            infos[f"_{key}"] = np.zeros(self.num_envs, dtype=bool)
        if dtype is object:  # element by element, so strings or arrays are stored as objects, not broadcast
            for i, v in zip(envs, values):
                infos[key][i] = v
        else:
            infos[key][envs] = values
        infos[f"_{key}"][envs] = True

    def _put_final(self, infos: dict[str, Any], envs: np.ndarray, scored: Scored) -> None:
        """Add finished episodes' final infos (the keys of :meth:`Scored.info`) for sub-envs ``envs``."""
        self._put(infos, "prompt", envs, scored.prompts, object)
        self._put(infos, "completion", envs, scored.completions, object)
        feedback = infos.setdefault("feedback", {})
        for name, values in scored.feedback.items():
            self._put(feedback, name, envs, values, np.float64)
        infos.setdefault("_feedback", np.zeros(self.num_envs, dtype=bool))[envs] = True
        self._put(infos, "finish_reason", envs, scored.finish_reasons, object)
        self._put(infos, "completion_tokens", envs, scored.lengths, np.int64)

    def _reset_envs(self, envs: np.ndarray, infos: dict[str, Any]) -> None:
        """Draw a new prompt for each sub-env in ``envs`` (from its own generator) and add its reset info."""
        if not envs.size:
            return
        for i in envs:
            rng = self._rngs[i]
            if rng is None:
                rng, _ = seeding.np_random()
                self._rngs[i] = rng
            self._prompt_idx[i] = rng.integers(len(self.task.prompts))
            self._last_rewards[i] = None
        idx = self._prompt_idx[envs]
        self._obs[envs] = self.task.prompt_obs[idx]
        self._lengths[envs] = 0
        self._put(infos, "prompt", envs, [self.task.prompts.prompts[j] for j in idx], object)
        self._put(infos, "prompt_index", envs, idx, np.int64)

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},), one token id per sub-env; got shape {a.shape}"
            )
        if not np.issubdtype(a.dtype, np.integer):
            if not (np.issubdtype(a.dtype, np.floating) and np.all(np.mod(a, 1) == 0)):
                raise ValueError(
                    f"actions must be integer token ids in [0, {self.task.vocab_size - 1}], got dtype {a.dtype}: {a!r}"
                )
        a = a.astype(np.int64, copy=False)
        bad = np.flatnonzero((a < 0) | (a >= self.task.vocab_size))
        if bad.size:
            i = int(bad[0])
            self.task.check_action(int(a[i]), where=f" for sub-env {i}")
        return a

    # -- the VectorEnv API -------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        n = self.num_envs
        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"seed list has {len(seeds)} entries but num_envs={n}: give one seed per sub-env")
        for i, s in enumerate(seeds):
            if s is not None:
                self._rngs[i], _ = seeding.np_random(s)
        self._autoreset[:] = False
        self._started = True
        infos: dict[str, Any] = {}
        self._reset_envs(np.arange(n), infos)
        return self._obs.copy(), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if not self._started:
            raise RuntimeError("TextGenVectorEnv.step() was called before reset(): call envs.reset() first")
        actions = self._check_actions(actions)
        n, task, eos = self.num_envs, self.task, self.tokenizer.eos_id
        infos: dict[str, Any] = {}

        # In next-step mode, sub-envs that ended last step are reset now and ignore their action.
        resetting = self._autoreset if self.autoreset_mode is AutoresetMode.NEXT_STEP else self._no_envs
        if resetting.any():
            act = np.flatnonzero(~resetting)
            self._obs[act, :-1] = self._obs[act, 1:]
            self._obs[act, -1] = actions[act]
            self._generated[act, self._lengths[act]] = actions[act]
            self._lengths[act] += 1
            ended = ~resetting & ((actions == eos) | (self._lengths >= task.max_new_tokens))
        else:  # the common case: every sub-env takes its action, with whole-array operations
            self._obs[:, :-1] = self._obs[:, 1:]
            self._obs[:, -1] = actions
            self._generated[self._all_envs, self._lengths] = actions
            self._lengths += 1
            ended = (actions == eos) | (self._lengths >= task.max_new_tokens)

        rewards = np.zeros(n, dtype=np.float64)
        finished = np.flatnonzero(ended)
        if finished.size:  # one feedback call for every episode that ended at this step
            scored = task.score(
                self._prompt_idx[finished].tolist(), [self._generated[i, : self._lengths[i]] for i in finished]
            )
            rewards[finished] = scored.rewards
            for i, r in zip(finished, scored.rewards):
                self._last_rewards[i] = float(r)
            if self.autoreset_mode is AutoresetMode.NEXT_STEP:
                self._put_final(infos, finished, scored)
            else:  # same-step: report the finished episodes under final_obs/final_info, then start new ones
                self._put(infos, "final_obs", finished, [self._obs[i].copy() for i in finished], object)
                self._put_final(infos.setdefault("final_info", {}), finished, scored)
                infos.setdefault("_final_info", np.zeros(n, dtype=bool))[finished] = True
                self._reset_envs(finished, infos)

        if self.autoreset_mode is AutoresetMode.NEXT_STEP:
            self._reset_envs(np.flatnonzero(resetting), infos)
            self._autoreset = ended
        return self._obs.copy(), rewards, ended, np.zeros(n, dtype=bool), infos

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode is None:
            return None
        texts = tuple(
            self.task.render_text(
                self.task.prompts.prompts[self._prompt_idx[i]],
                self.tokenizer.decode(self._generated[i, : self._lengths[i]]),
                self._last_rewards[i],
            )
            for i in range(self.num_envs)
        )
        if self.render_mode == "ansi":
            return texts
        print("".join(f"[{i}] {t}" for i, t in enumerate(texts)), end="")
        return None
