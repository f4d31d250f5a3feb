"""``TextGenVectorEnv``: many ``TextGenEnv`` episodes stepped together, feedback called once per batch.

The per-step work lives in a *core* with three calls: ``reset(generators)``, ``advance(actions)`` (append the
tokens, return the episodes that ended, decoded) and ``finish(total, parts)`` (rewards, info columns, resets,
observations); the env calls the feedback in between. :class:`_NumpyCore` below is the reference implementation.
``textgym._vecstep.Core`` does the same work in C, about 3.7x faster at 64 sub-envs, and is used when the package was
built with it (it is optional: without a C compiler the install falls back to NumPy). The tests check that both
cores yield what a ``SyncVectorEnv`` of single envs yields.
"""

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

try:
    from textgym._vecstep import Core as _CCore
except ImportError:  # built without a C compiler: the NumPy core does the same work, slower
    _CCore = None

_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
_SLACK = 64  # steps between compactions of the token buffer

Batch = tuple[list[str], list[str], "list[str] | None"]  # the episodes that ended: prompts, completions, references


class _NumpyCore:
    """The state and per-step work of :class:`TextGenVectorEnv` in NumPy; the reference for the C core.

    One token buffer per sub-env holds the prompt's context followed by the generated tokens. The observation is the
    buffer's last ``context_len`` columns and a completion its last ``length`` columns, so a step writes one column.
    Columns up to ``self.end`` are in use; when the buffer is full, the last ``keep`` columns (all that any
    observation or completion can need) move to the front, once every ``_SLACK`` steps.
    """

    def __init__(self, num_envs: int, task: TextTask, same_step: bool) -> None:
        n, ctx, h = num_envs, task.context_len, task.max_new_tokens
        self.n, self.task, self.same_step = n, task, same_step
        self.keep = max(ctx, h)
        self.buf = np.zeros((n, self.keep + _SLACK), dtype=np.int64)
        self.end = self.keep
        self.t = 0  # steps since reset()
        self.start = np.zeros(n, dtype=np.int64)  # the step each sub-env's episode started: its length is t - start
        self.prompt_idx = np.zeros(n, dtype=np.int64)
        self.rewards: list[float | None] = [None] * n  # for render(): each sub-env's last episode's reward
        self.rngs: list[np.random.Generator] = []
        self.resetting: np.ndarray | None = None  # next-step mode: sub-envs that ended and reset at the next step
        self.pending: tuple[np.ndarray, np.ndarray, list[str], list[str]] | None = None  # between advance/finish

    def _mask(self, envs: np.ndarray) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        mask[envs] = True
        return mask

    def _observations(self, envs: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self.buf[envs, self.end - self.task.context_len : self.end].copy()

    def _ids(self, envs: np.ndarray) -> list[list[int]]:
        """The token ids generated so far in sub-envs ``envs``."""
        h, end = self.task.max_new_tokens, self.end
        lengths = (self.t - self.start[envs]).tolist()
        rows = self.buf[envs, end - h : end].tolist()
        return [row[h - length :] if length else [] for row, length in zip(rows, lengths)]

    def _reset_envs(self, envs: np.ndarray, infos: dict[str, Any]) -> None:
        """Start new episodes in sub-envs ``envs``: a prompt each, drawn from the sub-env's own generator as
        ``TextGenEnv`` draws it, its context in the buffer, and the reset info (``prompt``, ``prompt_index``)."""
        n, task, buf = self.n, self.task, self.buf
        mask = self._mask(envs)
        if "prompt" in infos:  # next-step mode: the episodes that ended at this step already fill this column
            prompt_col, infos["_prompt"] = infos["prompt"], infos["_prompt"] | mask
        else:
            prompt_col, infos["_prompt"] = np.empty(n, dtype=object), mask
        index_col = np.zeros(n, dtype=np.int64)
        lo, hi = self.end - task.context_len, self.end
        for i in envs.tolist():  # a loop: a few sub-envs reset at a time, and each has its own generator
            j = task.draw_prompt(self.rngs[i])
            buf[i, lo:hi] = task.prompt_obs[j]
            prompt_col[i], index_col[i] = task.prompts.prompts[j], j
            self.rewards[i] = None
        self.prompt_idx[envs] = index_col[envs]
        self.start[envs] = self.t
        infos["prompt"], infos["prompt_index"], infos["_prompt_index"] = prompt_col, index_col, mask.copy()

    def _put_final(self, infos: dict[str, Any], parts: dict[str, np.ndarray], mask: np.ndarray) -> None:
        """Add the finished episodes' final infos (the keys of :meth:`Scored.info`) in the layout of
        ``VectorEnv._add_info`` (``infos[key][i]`` and a ``infos["_" + key]`` mask), column by column."""
        assert self.pending is not None
        n, eos = self.n, self.task.tokenizer.eos_id
        envs, _, prompts, completions = self.pending
        prompt, completion, reason = np.empty(n, object), np.empty(n, object), np.empty(n, object)
        tokens = np.zeros(n, dtype=np.int64)
        lengths = (self.t - self.start[envs]).tolist()
        last = self.buf[envs, self.end - 1].tolist()
        for k, i in enumerate(envs.tolist()):
            prompt[i], completion[i], tokens[i] = prompts[k], completions[k], lengths[k]
            reason[i] = FINISH_EOS if lengths[k] and last[k] == eos else FINISH_LENGTH
        feedback: dict[str, Any] = {}
        for name, values in parts.items():
            feedback[name] = column = np.zeros(n, dtype=np.float64)
            column[envs] = values
            feedback[f"_{name}"] = mask.copy()
        infos.update(
            {
                "prompt": prompt,
                "completion": completion,
                "finish_reason": reason,
                "completion_tokens": tokens,
                "feedback": feedback,
                "_feedback": mask.copy(),
                "_prompt": mask.copy(),
                "_completion": mask.copy(),
                "_finish_reason": mask.copy(),
                "_completion_tokens": mask.copy(),
            }
        )

    # -- the core protocol (the same as textgym._vecstep.Core's) ---------------------------------------------------
    def reset(self, generators: list[np.random.Generator]) -> tuple[np.ndarray, dict[str, Any]]:
        self.rngs = list(generators)
        self.resetting, self.pending = None, None
        self.t, self.end = 0, self.keep
        infos: dict[str, Any] = {}
        self._reset_envs(np.arange(self.n), infos)
        return self._observations(), infos

    def advance(self, actions: Any) -> Batch | None:
        """Append one token per sub-env and return the episodes that ended; ``None``, with nothing changed, when
        ``actions`` is not a ``(num_envs,)`` int64 array of ids in the vocabulary."""
        a, task = actions, self.task
        # int64 ids seen as unsigned are < vocab_size iff they are in range: two cheap calls.
        if not (type(a) is np.ndarray and a.dtype == np.int64 and a.shape == (self.n,)):
            return None
        if np.count_nonzero(a.view(np.uint64) >= task.vocab_size):
            return None
        # Every sub-env appends its action; in next-step mode the sub-envs that ended last step are then reset,
        # which overwrites their context (their action is ignored, as SyncVectorEnv ignores it).
        if self.end == self.buf.shape[1]:
            self.buf[:, : self.keep] = self.buf[:, -self.keep :]
            self.end = self.keep
        self.buf[:, self.end] = a
        self.end += 1
        self.t += 1
        ended = a == task.tokenizer.eos_id
        ended |= self.start == self.t - task.max_new_tokens
        if self.resetting is not None:
            ended[self.resetting] = False
        finished = ended.nonzero()[0]
        idx = self.prompt_idx[finished].tolist()
        prompts = [task.prompts.prompts[j] for j in idx]
        completions = task.tokenizer.decode_batch(self._ids(finished))
        refs = task.prompts.references
        self.pending = (finished, ended, prompts, completions)
        # (copies for the feedback, which may change its lists; the info columns keep the originals)
        return list(prompts), list(completions), None if refs is None else [refs[j] for j in idx]

    def finish(self, total: np.ndarray | None, parts: dict[str, np.ndarray] | None) -> tuple[Any, ...]:
        """Complete the step that :meth:`advance` began, given the finished episodes' reward and components."""
        if self.pending is None:
            raise RuntimeError("finish() without advance()")
        n, (finished, ended, _, _) = self.n, self.pending
        rewards = np.zeros(n, dtype=np.float64)
        infos: dict[str, Any] = {}
        if finished.size:
            assert total is not None and parts is not None
            rewards[finished] = total
            for i, r in zip(finished.tolist(), np.asarray(total, np.float64).tolist()):
                self.rewards[i] = r
            mask = self._mask(finished)
            if not self.same_step:
                self._put_final(infos, parts, mask)
            else:  # the finished episodes under final_obs/final_info, then new ones in the same step
                final_obs = np.empty(n, dtype=object)
                for i, o in zip(finished.tolist(), self._observations(finished)):
                    final_obs[i] = o
                infos["final_obs"], infos["_final_obs"] = final_obs, mask.copy()
                infos["final_info"], infos["_final_info"] = {}, mask.copy()
                self._put_final(infos["final_info"], parts, mask)
                self._reset_envs(finished, infos)
        if self.resetting is not None:  # after the final infos, so that the new prompts join their "prompt" column
            self._reset_envs(self.resetting, infos)
        self.resetting = finished if finished.size and not self.same_step else None
        self.pending = None
        return self._observations(), rewards, ended, np.zeros(n, dtype=bool), infos

    def completion_ids(self) -> list[list[int]]:
        return self._ids(np.arange(self.n))

    def prompt_indices(self) -> list[int]:
        return self.prompt_idx.tolist()

    def last_rewards(self) -> list[float | None]:
        return list(self.rewards)


def _make_core(num_envs: int, task: TextTask, same_step: bool, compiled: bool | None) -> Any:
    if compiled is None:
        compiled = _CCore is not None
    if not compiled:
        return _NumpyCore(num_envs, task, same_step)
    if _CCore is None:
        raise ValueError("compiled=True but textgym._vecstep was not built (no C compiler at install time?)")
    tok = task.tokenizer
    return _CCore(
        num_envs=num_envs,
        context_len=task.context_len,
        max_new_tokens=task.max_new_tokens,
        eos_id=tok.eos_id,
        vocab_size=tok.vocab_size,
        prompt_obs=task.prompt_obs,
        prompts=task.prompts.prompts,
        references=task.prompts.references,
        token_bytes=tok.token_bytes,
        same_step=same_step,
    )


class TextGenVectorEnv(VectorEnv):
    """A natively batched :class:`~textgym.env.TextGenEnv`: ``num_envs`` completions advanced by one token per step.

    All sequences advance together in one token buffer, and the feedback function is called once per step on the
    batch of episodes that just finished, instead of once per episode. Sub-env ``i`` draws its
    prompts from its own generator, seeded ``seed + i`` as ``SyncVectorEnv`` seeds its sub-envs, so under the same
    seeds this env yields the same prompts, observations, rewards, episode ends and infos as
    ``SyncVectorEnv([lambda: TextGenEnv(...)] * num_envs)``.

    ## Autoreset
    ``autoreset_mode="next_step"`` (Gymnasium's default): the step after an episode ends resets that sub-env; its
    action is ignored and it returns reward 0, ``terminated=False`` and the new prompt's observation and info.
    ``autoreset_mode="same_step"``: an episode that ends is reset in the same step; the returned observation is the
    new prompt's, the last observation and info of the finished episode are in ``info["final_obs"]`` and
    ``info["final_info"]``. Same-step wastes no step on resets, which suits rollouts of fixed-length completions.

    ## Speed
    The step's work runs in C (``textgym._vecstep``) when the package was built with it, and in NumPy otherwise;
    both give the same results. ``compiled=False`` asks for NumPy, ``compiled=True`` for C (an error if not built).

    Arguments are those of ``TextGenEnv`` plus ``num_envs``, ``autoreset_mode`` and ``compiled``. Create it with
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
        compiled: bool | None = None,
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

        if compiled is not None and not isinstance(compiled, bool):
            raise ValueError(f"compiled must be None (C if built), True or False, got {compiled!r}")
        self._core = _make_core(self.num_envs, self.task, mode is AutoresetMode.SAME_STEP, compiled)
        self.compiled = not isinstance(self._core, _NumpyCore)
        self._rngs: list[np.random.Generator | None] = [None] * self.num_envs
        self._needs_reset: str | None = "step() was called before reset()"  # why step() must wait for a reset

    def _check_actions(self, actions: Any) -> np.ndarray:
        """``actions`` as an int64 array of ids in the vocabulary, or a ValueError that names the bad one."""
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
        a = np.ascontiguousarray(a, dtype=np.int64)
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
        for i, rng in enumerate(self._rngs):
            if rng is None:  # never seeded: fresh entropy, as a single env's first reset(seed=None)
                self._rngs[i] = seeding.np_random()[0]
        self._needs_reset = "reset() failed"
        obs, infos = self._core.reset(self._rngs)
        self._needs_reset = None
        return obs, infos

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError(f"TextGenVectorEnv.{self._needs_reset}: call envs.reset() first")
        core = self._core
        batch = core.advance(actions)
        if batch is None:  # not an int64 array of ids in range: convert it, or raise an error naming the bad id
            batch = core.advance(self._check_actions(actions))
        prompts, completions, references = batch
        total = parts = None
        try:
            if completions:  # one feedback call for every episode that ended at this step
                kwargs = {} if references is None else {"references": references}
                total, parts = self.task.feedback.evaluate(prompts, completions, **kwargs)
            return core.finish(total, parts)
        except Exception:  # the step is half done (tokens appended, episodes not scored): only a reset is safe
            self._needs_reset = "step() came after a step whose feedback raised an error"
            raise

    def render(self) -> tuple[str, ...] | None:
        if self.render_mode is None:
            return None
        core = self._core
        completions = self.tokenizer.decode_batch(core.completion_ids())
        texts = tuple(
            self.task.render_text(self.task.prompts.prompts[j], c, r)
            for j, c, r in zip(core.prompt_indices(), completions, core.last_rewards())
        )
        if self.render_mode == "ansi":
            return texts
        print("".join(f"[{i}] {t}" for i, t in enumerate(texts)), end="")
        return None
