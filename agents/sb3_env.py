"""The batched text env as Stable-Baselines3 sees it, and the reference LM carried beside it.

SB3 2.x steps its own ``VecEnv`` type, not a ``gymnasium.vector.VectorEnv``, and a ``DummyVecEnv`` of single envs
would call the feedback once per finished episode instead of once per batch. :class:`SB3VecEnv` adapts
:class:`~textgym.vector_env.TextGenVectorEnv` (in ``SameStep`` autoreset mode, which is what SB3's contract is) to
SB3's ``VecEnv`` contract: a finished sub-env is reset in the same step, its last observation is in its info under
``terminal_observation``, infos are a list of one dict per sub-env, and seeds given by ``seed()`` are used at the next
``reset()``. Under the same seeds it returns what ``DummyVecEnv([TextGenEnv] * n)`` returns (tested).

:class:`RLHFVecEnv` (learning side) wraps it with the frozen reference LM, whose LSTM state it carries per sub-env
(one LSTM step per token): each step's info gets ``ref_logprob`` = log π_ref(a_t|s_t) of the action taken, which the
KL-penalty callback subtracts from the reward, and ``action_masks()`` gives NLPO's top-p mask of the reference for
MaskablePPO.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from agents.model import LSTMLM, State
from textgym.task import TextTask
from textgym.vector_env import TextGenVectorEnv

_FINAL_KEYS = ("prompt", "completion", "feedback", "finish_reason", "completion_tokens")


class SB3VecEnv(VecEnv):
    """SB3's ``VecEnv`` over one :class:`TextGenVectorEnv` (which must use ``SameStep`` autoreset).

    ``get_attr``, ``set_attr`` and ``env_method`` reach the one batched env: its attributes are shared by every
    sub-env, so ``get_attr(name)`` returns the same value once per (selected) sub-env, ``env_method`` calls the
    batched env's method once and returns its result for each selected sub-env.
    """

    def __init__(self, venv: TextGenVectorEnv) -> None:
        if venv.autoreset_mode is not AutoresetMode.SAME_STEP:
            raise ValueError(
                f"SB3VecEnv needs a vector env in SameStep autoreset mode (SB3 resets a finished env in the same "
                f"step), got {venv.autoreset_mode.value}"
            )
        self.venv = venv
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)
        self.actions: np.ndarray | None = None

    @property
    def task(self) -> TextTask:
        return self.venv.task

    def reset(self) -> np.ndarray:
        seeds = self._seeds
        if all(s is None for s in seeds):
            seed: int | list[int | None] | None = None
        else:
            seed = list(seeds)
        # The batched env takes one options dict for all sub-envs (a per-sub-env prompt_index goes in as an array).
        if any(o != self._options[0] for o in self._options):
            raise ValueError(
                f"SB3VecEnv resets all sub-envs with the same options; set_options gave different ones: {self._options}"
            )
        obs, info = self.venv.reset(seed=seed, options=self._options[0] or None)
        self.reset_infos = [
            {"prompt": info["prompt"][i], "prompt_index": int(info["prompt_index"][i])} for i in range(self.num_envs)
        ]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self.actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self.venv.step(self.actions)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{"TimeLimit.truncated": False} for _ in range(self.num_envs)]
        if dones.any():
            final = info["final_info"]
            for i in np.flatnonzero(dones).tolist():
                entry = infos[i]
                entry.update(
                    prompt=final["prompt"][i],
                    completion=final["completion"][i],
                    feedback={name: float(v[i]) for name, v in final["feedback"].items() if not name.startswith("_")},
                    finish_reason=final["finish_reason"][i],
                    completion_tokens=int(final["completion_tokens"][i]),
                )
                entry["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                entry["terminal_observation"] = info["final_obs"][i]
                self.reset_infos[i] = {"prompt": info["prompt"][i], "prompt_index": int(info["prompt_index"][i])}
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self.venv, attr_name)  # AttributeError when there is none, as has_attr expects
        return [value] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False] * self._count(indices)  # one unwrapped batched env


class CarriedLM:
    """A frozen LM's LSTM state carried per sub-env: ``logprobs`` is each sub-env's next-token distribution."""

    def __init__(self, model: LSTMLM) -> None:
        self.model = model
        self.state: State | None = None
        self.logprobs: torch.Tensor | None = None

    @torch.no_grad()
    def start(self, prompts: Sequence[Sequence[int]], rows: np.ndarray | None = None) -> None:
        """Prefill ``prompts`` (whole ``<bos> + prompt`` ids) into all rows, or into ``rows`` only."""
        logits, state, _ = self.model.prefill(prompts)
        logprobs = torch.log_softmax(logits.float(), -1)
        if rows is None or self.state is None:
            self.state, self.logprobs = state, logprobs
            return
        assert self.logprobs is not None
        index = torch.as_tensor(rows, device=logits.device)
        self.state[0][:, index], self.state[1][:, index] = state
        self.logprobs[index] = logprobs

    @torch.no_grad()
    def advance(self, tokens: np.ndarray) -> None:
        """One token per row: one LSTM step each."""
        assert self.state is not None
        t = torch.as_tensor(tokens, dtype=torch.long, device=self.model.head.weight.device)
        logits, self.state = self.model.step(t, self.state)
        self.logprobs = torch.log_softmax(logits.float(), -1)


def nucleus_mask(logprobs: torch.Tensor, top_p: float) -> np.ndarray:
    """The smallest set of most likely tokens whose mass reaches ``top_p`` (the top token always), per row."""
    probs = logprobs.exp()
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    keep_sorted = (torch.cumsum(sorted_probs, -1) - sorted_probs) < top_p
    mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return mask.cpu().numpy()


class RLHFVecEnv(VecEnvWrapper):
    """An :class:`SB3VecEnv` with the frozen reference LM carried beside each sub-env.

    Each step's info holds ``ref_logprob``, log π_ref(a_t|s_t) of the action just taken (the array of them is also in
    ``last_ref_logprob``). ``action_masks()`` returns, per sub-env, the reference's top-``top_p`` nucleus at the
    current state (NLPO's mask; all True with ``top_p=1``), which is how MaskablePPO finds masks.
    """

    def __init__(self, venv: SB3VecEnv, ref: LSTMLM, top_p: float = 1.0) -> None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        super().__init__(venv)
        self.sb3_env = venv
        self.ref = CarriedLM(ref)
        self.top_p = top_p
        self.last_ref_logprob = np.zeros(venv.num_envs)

    def _prompt_ids(self, rows: Sequence[int]) -> list[list[int]]:
        task = self.sb3_env.task
        return [task.prompt_ids[self.sb3_env.reset_infos[i]["prompt_index"]] for i in rows]

    def reset(self) -> np.ndarray:
        obs = self.venv.reset()
        self.ref.start(self._prompt_ids(range(self.num_envs)))
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        self.venv.step_async(actions)

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        assert self.ref.logprobs is not None
        index = torch.as_tensor(self._actions, device=self.ref.logprobs.device)
        ref_lp = self.ref.logprobs.gather(1, index[:, None]).squeeze(1).double().cpu().numpy()
        self.last_ref_logprob = ref_lp
        for info, lp in zip(infos, ref_lp.tolist()):
            info["ref_logprob"] = lp
        self.ref.advance(self._actions)  # finished rows are overwritten by their new prompt's state just below
        ended = np.flatnonzero(dones)
        if ended.size:
            self.ref.start(self._prompt_ids(ended.tolist()), rows=ended)
        return obs, rewards, dones, infos

    def action_masks(self) -> np.ndarray:
        """NLPO's mask: (num_envs, vocab) booleans, True for the tokens in the reference's top-p nucleus."""
        assert self.ref.logprobs is not None, "reset() first"
        if self.top_p >= 1.0:
            return np.ones(tuple(self.ref.logprobs.shape), dtype=bool)
        return nucleus_mask(self.ref.logprobs, self.top_p)

    def has_attr(self, attr_name: str) -> bool:
        return attr_name == "action_masks" or self.venv.has_attr(attr_name)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        if attr_name == "action_masks":
            return [self.action_masks] * len(list(self._get_indices(indices)))
        return self.venv.get_attr(attr_name, indices)

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None, **method_kwargs) -> list[Any]:
        if method_name == "action_masks":  # MaskablePPO: np.stack(env.env_method("action_masks"))
            masks = self.action_masks()
            return [masks[i] for i in self._get_indices(indices)]
        return self.venv.env_method(method_name, *method_args, indices=indices, **method_kwargs)
