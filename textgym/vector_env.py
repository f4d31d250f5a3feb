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
_SLACK = 64  # steps between compactions of the token buffer


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

        # One token buffer per sub-env, the prompt's context followed by the generated tokens. The observation is
        # the buffer's last ``context_len`` columns and a completion its last ``length`` columns, so a step writes
        # one column. Columns up to ``self._end`` are in use; when the buffer is full, the last ``keep`` columns
        # (all that any observation or completion can need) move to the front, once every ``_SLACK`` steps.
        n, ctx, h = self.num_envs, self.task.context_len, self.task.max_new_tokens
        self._keep = max(ctx, h)
        self._buf = np.zeros((n, self._keep + _SLACK), dtype=np.int64)
        self._end = self._keep
        self._t = 0  # steps since reset()
        self._start = np.zeros(n, dtype=np.int64)  # the step each sub-env's episode started: its length is t - start
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._prompt_idx = np.zeros(n, dtype=np.int64)
        self._resetting: np.ndarray | None = None  # next-step mode: sub-envs that ended and reset at the next step
        self._last_rewards: list[float | None] = [None] * n
        self._needs_reset: str | None = "step() was called before reset()"  # why step() must wait for a reset

    # -- helpers -----------------------------------------------------------------------------------------------
    def _mask(self, envs: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[envs] = True
        return mask

    def _put_final(self, infos: dict[str, Any], envs: list[int], scored: Scored, mask: np.ndarray) -> None:
        """Add finished episodes' final infos (the keys of :meth:`Scored.info`) for sub-envs ``envs``, in the layout
        of ``VectorEnv._add_info`` (``infos[key][i]`` and a ``infos["_" + key]`` mask), built column by column
        instead of one ``_add_info`` call per sub-env and key."""
        n = self.num_envs
        prompt, completion, reason = np.empty(n, object), np.empty(n, object), np.empty(n, object)
        for k, i in enumerate(envs):
            prompt[i], completion[i], reason[i] = scored.prompts[k], scored.completions[k], scored.finish_reasons[k]
        tokens = np.zeros(n, dtype=np.int64)
        tokens[envs] = scored.lengths
        feedback: dict[str, Any] = {}
        for name, values in scored.feedback.items():
            feedback[name] = column = np.zeros(n, dtype=np.float64)
            column[envs] = values
            feedback[f"_{name}"] = mask.copy()
        infos.update(
            {
                "prompt": prompt,
                "_prompt": mask.copy(),
                "completion": completion,
                "_completion": mask.copy(),
                "feedback": feedback,
                "_feedback": mask.copy(),
                "finish_reason": reason,
                "_finish_reason": mask.copy(),
                "completion_tokens": tokens,
                "_completion_tokens": mask.copy(),
            }
        )

    def _reset_envs(self, envs: np.ndarray, infos: dict[str, Any]) -> None:
        """Start new episodes in sub-envs ``envs``: a prompt each, drawn from the sub-env's own generator as
        ``TextGenEnv`` draws it, its context in the buffer, and the reset info (``prompt``, ``prompt_index``)."""
        n, task, buf, rngs = self.num_envs, self.task, self._buf, self._rngs
        mask = self._mask(envs)
        if "prompt" in infos:  # next-step mode: the episodes that ended at this step already fill this column
            prompt_col, infos["_prompt"] = infos["prompt"], infos["_prompt"] | mask
        else:
            prompt_col, infos["_prompt"] = np.empty(n, dtype=object), mask
        index_col = np.zeros(n, dtype=np.int64)
        lo, hi = self._end - task.context_len, self._end
        for i in envs.tolist():  # a loop: a few sub-envs reset at a time, and each has its own generator
            rng = rngs[i]
            if rng is None:
                rng = rngs[i] = seeding.np_random()[0]
            j = task.draw_prompt(rng)
            buf[i, lo:hi] = task.prompt_obs[j]
            prompt_col[i], index_col[i] = task.prompts.prompts[j], j
            self._last_rewards[i] = None
        self._prompt_idx[envs] = index_col[envs]
        self._start[envs] = self._t
        infos["prompt"], infos["prompt_index"], infos["_prompt_index"] = prompt_col, index_col, mask.copy()

    def _observations(self, envs: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self._buf[envs, self._end - self.task.context_len : self._end].copy()

    def _completion_ids(self, envs: np.ndarray) -> list[list[int]]:
        """The token ids generated so far in sub-envs ``envs``."""
        h, end = self.task.max_new_tokens, self._end
        lengths = (self._t - self._start[envs]).tolist()
        rows = self._buf[envs, end - h : end].tolist()
        return [row[h - length :] if length else [] for row, length in zip(rows, lengths)]

    def _check_actions(self, actions: Any) -> np.ndarray:
        a = actions
        # The common case in two cheap calls: int64 ids seen as unsigned are < vocab_size iff they are in range.
        if type(a) is np.ndarray and a.dtype == np.int64 and a.shape == (self.num_envs,):
            if not np.count_nonzero(a.view(np.uint64) >= self.task.vocab_size):
                return a
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
        self._resetting = None
        self._needs_reset = None
        self._t, self._end = 0, self._keep
        infos: dict[str, Any] = {}
        self._reset_envs(np.arange(n), infos)
        return self._observations(), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError(f"TextGenVectorEnv.{self._needs_reset}: call envs.reset() first")
        actions = self._check_actions(actions)
        n, task = self.num_envs, self.task
        infos: dict[str, Any] = {}

        # Every sub-env appends its action; in next-step mode the sub-envs that ended last step are then reset,
        # which overwrites their context (their action is ignored, as SyncVectorEnv ignores it).
        if self._end == self._buf.shape[1]:
            self._buf[:, : self._keep] = self._buf[:, -self._keep :]
            self._end = self._keep
        self._buf[:, self._end] = actions
        self._end += 1
        self._t += 1
        ended = actions == self.tokenizer.eos_id
        ended |= self._start == self._t - task.max_new_tokens
        resetting, self._resetting = self._resetting, None
        if resetting is not None:
            ended[resetting] = False

        rewards = np.zeros(n, dtype=np.float64)
        finished = ended.nonzero()[0]
        if finished.size:  # one feedback call for every episode that ended at this step
            env_list = finished.tolist()
            try:
                scored = task.score(self._prompt_idx[finished].tolist(), self._completion_ids(finished))
            except Exception:  # the step is half done (tokens appended, episodes not scored): only a reset is safe
                self._needs_reset = "step() came after a step whose feedback raised an error"
                raise
            rewards[finished] = scored.rewards
            for i, r in zip(env_list, scored.rewards.tolist()):
                self._last_rewards[i] = r
            mask = self._mask(finished)
            if self.autoreset_mode is AutoresetMode.NEXT_STEP:
                self._put_final(infos, env_list, scored, mask)
                self._resetting = finished
            else:  # same-step: report the finished episodes under final_obs/final_info, then start new ones
                final_obs = np.empty(n, dtype=object)
                for i, o in zip(env_list, self._observations(finished)):
                    final_obs[i] = o
                infos["final_obs"], infos["_final_obs"] = final_obs, mask.copy()
                final_info: dict[str, Any] = {}
                self._put_final(final_info, env_list, scored, mask)
                infos["final_info"], infos["_final_info"] = final_info, mask.copy()
                self._reset_envs(finished, infos)

        if resetting is not None:  # after the final infos, so that the new prompts join their "prompt" column
            self._reset_envs(resetting, infos)
        return self._observations(), rewards, ended, np.zeros(n, dtype=bool), infos

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode is None:
            return None
        completions = self.tokenizer.decode_batch(self._completion_ids(np.arange(self.num_envs)))
        texts = tuple(
            self.task.render_text(self.task.prompts.prompts[j], c, r)
            for j, c, r in zip(self._prompt_idx.tolist(), completions, self._last_rewards)
        )
        if self.render_mode == "ansi":
            return texts
        print("".join(f"[{i}] {t}" for i, t in enumerate(texts)), end="")
        return None
