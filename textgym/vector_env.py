"""``TextGenVectorEnv``: many ``TextGenEnv`` episodes stepped together in NumPy, the feedback called once per batch."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from textgym.corpus import Corpus
from textgym.prompts import PromptSet
from textgym.task import FINISH_EOS, FINISH_LENGTH, TextTask, check_render_mode
from textgym.tokenizer import DEFAULT_VOCAB_SIZE, TextTokenizer

_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED)
_SLACK = 64  # steps between compactions of the token buffer


class TextGenVectorEnv(VectorEnv):
    """A natively batched :class:`~textgym.env.TextGenEnv`: ``num_envs`` completions advanced by one token per step.

    All sequences advance together in one token buffer, and the feedback function is called once per step on the
    batch of episodes that just finished, instead of once per episode. Sub-env ``i`` draws its prompts from its own
    generator, seeded ``seed + i`` as ``SyncVectorEnv`` seeds its sub-envs, so under the same seeds this env yields the
    same prompts, observations, rewards, episode ends and infos as
    ``SyncVectorEnv([lambda: TextGenEnv(...)] * num_envs)``.

    ## Autoreset
    * ``"NextStep"`` (Gymnasium's default): the step after an episode ends resets that sub-env; its action is ignored
      and it returns reward 0, ``terminated=False`` and the new prompt's observation and info.
    * ``"SameStep"``: an episode that ends is reset in the same step; the returned observation is the new prompt's,
      the last observation and info of the finished episode are in ``info["final_obs"]`` and ``info["final_info"]``.
    * ``"Disabled"``: nothing is reset until the caller says so with ``reset(options={"reset_mask": mask})``. Until
      then a sub-env whose episode ended waits: its action is ignored, it is not scored again, and it returns its
      final observation, reward 0 and no end flags. A batch of completions can so run until its longest one ends
      without the others starting (and being scored) again, which is what a rollout of one completion per sub-env
      wants. (``SyncVectorEnv`` asserts instead when a sub-env is stepped before its reset.)

    ## Reset options
    ``reset_mask``: a boolean array of shape ``(num_envs,)``; only those sub-envs are reset (any autoreset mode, as in
    Gymnasium). ``prompt_index``: an int, or an array of ``num_envs`` ints, naming the prompt(s) to start with instead
    of drawing them.

    ## Layout
    One token buffer per sub-env holds the prompt's context followed by the generated tokens. The observation is the
    buffer's last ``context_len`` columns and a completion its last ``length`` columns, so a step writes one column.
    When the buffer is full, its last ``max(context_len, max_new_tokens)`` columns (all that an observation or a
    completion can need) move to the front, once every ``_SLACK`` steps.

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
                "(or 'next_step', 'same_step', 'disabled')"
            )
        check_render_mode(render_mode, self.metadata["render_modes"])

        self.task = task = TextTask(
            reward, corpus, prompts, tokenizer, vocab_size, context_len, max_new_tokens, prompt_words
        )
        self.tokenizer = task.tokenizer
        self.num_envs = n = int(num_envs)
        self.autoreset_mode = mode
        self._next_step, self._disabled = mode is AutoresetMode.NEXT_STEP, mode is AutoresetMode.DISABLED
        self.metadata = {**self.metadata, "autoreset_mode": mode}
        self.render_mode = render_mode
        self.single_observation_space = task.observation_space()
        self.single_action_space = task.action_space()
        self.observation_space = batch_space(self.single_observation_space, n)
        self.action_space = batch_space(self.single_action_space, n)

        self._keep = max(task.context_len, task.max_new_tokens)
        self._buf = np.zeros((n, self._keep + _SLACK), dtype=np.int64)
        self._end = self._keep  # columns up to here are in use
        self._t = 0  # steps since the last full reset
        self._start = np.zeros(n, dtype=np.int64)  # the step each sub-env's episode started: its length is t - start
        self._prompt_idx = np.zeros(n, dtype=np.int64)
        self._rewards: list[float | None] = [None] * n  # for render(): each sub-env's last episode's reward
        self._rngs: list[np.random.Generator | None] = [None] * n
        self._resetting: np.ndarray | None = None  # next-step mode: sub-envs that ended and reset at the next step
        # Disabled mode: the sub-envs whose episode ended and that wait for a reset, with their final observation and
        # completion (their buffer rows go on receiving the ignored actions).
        self._waiting = np.zeros(n, dtype=bool)
        self._final_obs = np.zeros((n, task.context_len), dtype=np.int64)
        self._final_text = [""] * n
        self._needs_reset: str | None = "step() was called before reset()"  # why step() must wait for a reset

    # -- helpers -------------------------------------------------------------------------------------------------
    def _mask(self, envs: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.num_envs, dtype=bool)
        mask[envs] = True
        return mask

    def _observations(self, envs: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self._buf[envs, self._end - self.task.context_len : self._end].copy()

    def _batch_observations(self) -> np.ndarray:
        obs = self._observations()
        if self._waiting.any():
            obs[self._waiting] = self._final_obs[self._waiting]
        return obs

    def _ids(self, envs: np.ndarray) -> list[list[int]]:
        """The token ids generated so far in sub-envs ``envs``."""
        h, end = self.task.max_new_tokens, self._end
        lengths = (self._t - self._start[envs]).tolist()
        rows = self._buf[envs, end - h : end].tolist()
        return [row[h - length :] if length else [] for row, length in zip(rows, lengths)]

    def _check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as an int64 array of ids in the vocabulary, or a ValueError that names the bad one."""
        a = np.asarray(actions)
        if a.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},), one token id per sub-env; got shape {a.shape}"
            )
        whole_floats = np.issubdtype(a.dtype, np.floating) and np.all(np.mod(a, 1) == 0)
        if not (np.issubdtype(a.dtype, np.integer) or whole_floats):
            raise ValueError(
                f"actions must be integer token ids in [0, {self.task.vocab_size - 1}], got dtype {a.dtype}: {a!r}"
            )
        a = np.ascontiguousarray(a, dtype=np.int64)
        bad = np.flatnonzero((a < 0) | (a >= self.task.vocab_size))
        if bad.size:
            i = int(bad[0])
            self.task.check_action(int(a[i]), where=f" for sub-env {i}")
        return a

    def _prompt_option(self, value: Any) -> np.ndarray | None:
        """The ``prompt_index`` reset option as one index per sub-env (checked), or None to draw the prompts."""
        if value is None:
            return None
        arr = np.asarray(value)
        if arr.ndim == 0:
            return np.full(self.num_envs, self.task.check_prompt_index(value), dtype=np.int64)
        if arr.shape != (self.num_envs,):
            raise ValueError(
                f"options['prompt_index'] must be an int or have shape ({self.num_envs},), got shape {arr.shape}"
            )
        for i, j in enumerate(arr.tolist()):
            self.task.check_prompt_index(j if arr.dtype.kind in "iu" else arr[i], where=f" for sub-env {i}")
        return arr.astype(np.int64)

    def _reset_envs(self, envs: np.ndarray, infos: dict[str, Any], prompt_index: np.ndarray | None = None) -> None:
        """Start new episodes in sub-envs ``envs``: a prompt each, drawn from the sub-env's own generator as
        ``TextGenEnv`` draws it (or the one ``prompt_index`` names), its context in the buffer, and the reset info
        (``prompt``, ``prompt_index``)."""
        n, task, buf = self.num_envs, self.task, self._buf
        mask = self._mask(envs)
        if "prompt" in infos:  # next-step mode: the episodes that ended at this step already fill this column
            prompt_col, infos["_prompt"] = infos["prompt"], infos["_prompt"] | mask
        else:
            prompt_col, infos["_prompt"] = np.empty(n, dtype=object), mask
        index_col = np.zeros(n, dtype=np.int64)
        lo, hi = self._end - task.context_len, self._end
        for i in envs.tolist():  # a loop: a few sub-envs reset at a time, and each has its own generator
            j = int(prompt_index[i]) if prompt_index is not None else task.draw_prompt(self._rngs[i])
            buf[i, lo:hi] = task.prompt_obs[j]
            prompt_col[i], index_col[i] = task.prompts.prompts[j], j
            self._rewards[i] = None
        self._prompt_idx[envs] = index_col[envs]
        self._start[envs] = self._t
        if self._disabled:
            self._waiting[envs] = False
        infos["prompt"], infos["prompt_index"], infos["_prompt_index"] = prompt_col, index_col, mask.copy()

    def _final_infos(
        self, envs: np.ndarray, prompts: list[str], completions: list[str], parts: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """The finished episodes' final infos (the keys of :meth:`Scored.info`) in the layout of
        ``VectorEnv._add_info`` (``infos[key][i]`` and a ``infos["_" + key]`` mask), column by column."""
        n, eos = self.num_envs, self.task.tokenizer.eos_id
        mask = self._mask(envs)
        prompt, completion, reason = np.empty(n, object), np.empty(n, object), np.empty(n, object)
        tokens = np.zeros(n, dtype=np.int64)
        lengths = (self._t - self._start[envs]).tolist()
        last = self._buf[envs, self._end - 1].tolist()
        for k, i in enumerate(envs.tolist()):
            prompt[i], completion[i], tokens[i] = prompts[k], completions[k], lengths[k]
            reason[i] = FINISH_EOS if lengths[k] and last[k] == eos else FINISH_LENGTH
        feedback: dict[str, Any] = {}
        for name, values in parts.items():
            feedback[name] = column = np.zeros(n, dtype=np.float64)
            column[envs] = values
            feedback[f"_{name}"] = mask.copy()
        infos = {"prompt": prompt, "completion": completion, "finish_reason": reason, "completion_tokens": tokens}
        infos.update({f"_{key}": mask.copy() for key in infos})
        infos["feedback"], infos["_feedback"] = feedback, mask.copy()
        return infos

    # -- the VectorEnv API -------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        n = self.num_envs
        options = dict(options or {})
        reset_mask = options.pop("reset_mask", None)
        prompt_index = self._prompt_option(options.pop("prompt_index", None))
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; known: 'reset_mask', 'prompt_index'")
        if reset_mask is None:
            envs = np.arange(n)
        else:
            if not (isinstance(reset_mask, np.ndarray) and reset_mask.dtype == np.bool_ and reset_mask.shape == (n,)):
                raise ValueError(
                    f"options['reset_mask'] must be a NumPy bool array of shape ({n},), got {reset_mask!r}"
                )
            if not reset_mask.any():
                raise ValueError("options['reset_mask'] selects no sub-env: it needs at least one True value")
            if self._needs_reset:
                raise RuntimeError(
                    f"TextGenVectorEnv.{self._needs_reset}: a reset_mask cannot mend that, call envs.reset() first"
                )
            envs = np.flatnonzero(reset_mask)

        if seed is None:
            seeds: list[int | None] = [None] * n
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(n)]
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"seed list has {len(seeds)} entries but num_envs={n}: give one seed per sub-env")
        for i in envs.tolist():
            if seeds[i] is not None:
                self._rngs[i], _ = seeding.np_random(seeds[i])
            elif self._rngs[i] is None:  # never seeded: fresh entropy, as a single env's first reset(seed=None)
                self._rngs[i] = seeding.np_random()[0]

        self._needs_reset = "reset() failed"
        if reset_mask is None:
            self._t, self._end, self._resetting = 0, self._keep, None
        elif self._resetting is not None:  # reset by hand now: not again at the next step
            pending = np.setdiff1d(self._resetting, envs)
            self._resetting = pending if pending.size else None
        infos: dict[str, Any] = {}
        self._reset_envs(envs, infos, prompt_index)
        self._needs_reset = None
        return self._batch_observations(), infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError(f"TextGenVectorEnv.{self._needs_reset}: call envs.reset() first")
        a, n, task = actions, self.num_envs, self.task
        # The fast path: an int64 array of ids in range (int64 ids seen as unsigned are < vocab_size iff in range).
        if not (
            type(a) is np.ndarray
            and a.dtype == np.int64
            and a.shape == (n,)
            and not np.count_nonzero(a.view(np.uint64) >= task.vocab_size)
        ):
            a = self._check_actions(actions)  # converts it, or raises an error that names the bad id

        # Every sub-env appends its action; sub-envs that reset at this step (next-step mode) or wait for a reset
        # (disabled mode) ignore it: a reset overwrites their context.
        if self._end == self._buf.shape[1]:
            self._buf[:, : self._keep] = self._buf[:, -self._keep :]
            self._end = self._keep
        self._buf[:, self._end] = a
        self._end += 1
        self._t += 1
        ended = a == task.tokenizer.eos_id
        ended |= self._start == self._t - task.max_new_tokens
        if self._resetting is not None:
            ended[self._resetting] = False
        waiting = self._disabled and self._waiting.any()
        if waiting:
            ended &= ~self._waiting

        rewards = np.zeros(n, dtype=np.float64)
        infos: dict[str, Any] = {}
        finished = ended.nonzero()[0]
        if finished.size:
            idx = self._prompt_idx[finished].tolist()
            prompts = [task.prompts.prompts[j] for j in idx]
            completions = task.tokenizer.decode_batch(self._ids(finished))
            refs = task.prompts.references
            kwargs = {} if refs is None else {"references": [refs[j] for j in idx]}
            try:  # one feedback call for every episode that ended at this step
                # (copies: the feedback may change its lists, and the info keeps the texts)
                total, parts = task.feedback.evaluate(list(prompts), list(completions), **kwargs)
            except Exception:  # the step is half done (tokens appended, episodes not scored): only a reset is safe
                self._needs_reset = "step() came after a step whose feedback raised an error"
                raise
            rewards[finished] = total
            for i, r in zip(finished.tolist(), np.asarray(total, np.float64).tolist()):
                self._rewards[i] = r
            final = self._final_infos(finished, prompts, completions, parts)
            if not (
                self._next_step or self._disabled
            ):  # same-step mode: the finished episodes under final_*, new ones start
                final_obs = np.empty(n, dtype=object)
                for i, o in zip(finished.tolist(), self._observations(finished)):
                    final_obs[i] = o
                mask = final["_prompt"]
                infos.update(final_obs=final_obs, _final_obs=mask.copy(), final_info=final, _final_info=mask.copy())
                self._reset_envs(finished, infos)
            else:
                infos = final
                if self._disabled:  # they wait, as they ended, for reset(reset_mask)
                    self._final_obs[finished] = self._observations(finished)
                    for i, c in zip(finished.tolist(), completions):
                        self._final_text[i] = c
        if self._resetting is not None:  # after the final infos, so that the new prompts join their "prompt" column
            self._reset_envs(self._resetting, infos)
        if self._next_step:
            self._resetting = finished if finished.size else None
        elif self._disabled and finished.size:
            self._waiting[finished] = True
            waiting = True
        obs = self._batch_observations() if waiting else self._observations()
        return obs, rewards, ended, np.zeros(n, dtype=bool), infos

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode is None:
            return None
        task = self.task
        completions = task.tokenizer.decode_batch(self._ids(np.arange(self.num_envs)))
        for i in np.flatnonzero(self._waiting).tolist():
            completions[i] = self._final_text[i]
        texts = tuple(
            task.render_text(task.prompts.prompts[j], c, r)
            for j, c, r in zip(self._prompt_idx.tolist(), completions, self._rewards)
        )
        if self.render_mode == "ansi":
            return texts
        print("".join(f"[{i}] {t}" for i, t in enumerate(texts)), end="")
        return None
