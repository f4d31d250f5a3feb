"""How fast could a pure-Python vector env step at all? The experiment that led to TextGenVectorEnv's C core.

Not part of textgym. ``floor_step`` below does only the work that a step of ``TextGenVectorEnv`` must do under
Gymnasium's vector API, inlined, with every check and layer that the real env has taken out: no feedback registry
(the ``length`` score is computed in the loop), no output validation, one shared mask array for all info keys, no
render bookkeeping. It keeps what the API asks for: the range check of the actions, the observation window, episode
ends, decoded completions, the reward, the info columns with their masks (prompt, completion, feedback, finish
reason, token count; prompt and prompt index on reset), and each sub-env's prompt drawn from its own generator.
It is timed side by side with a ``SyncVectorEnv`` of 64 ``gym.make`` envs and with the real ``TextGenVectorEnv`` on
its NumPy core and on its C core, on the same random actions as ``bench_env.py``. The floor lands at about 10x the
``SyncVectorEnv``, half the 20x goal, so no Python step reaches the goal; the C core does.

    python scripts/bench_env_floor.py [--seconds 3]
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
from bench_env import ENV_ID, steps_per_second

import textgym.vector_env
from textgym.task import TextTask


class FloorEnv:
    """The stripped-down step, for ``num_envs`` sub-envs, 20-token completions and a 32-token window."""

    def __init__(self, num_envs: int, seed: int = 0, target: int = 10) -> None:
        self.task = TextTask("length")
        self.n, self.ctx, self.h, self.target = num_envs, 32, 20, target
        self.table = self.task.tokenizer.token_bytes  # the byte-table decode the real env uses
        self.eos, self.vocab = self.task.tokenizer.eos_id, self.task.vocab_size
        self.buf = np.zeros((num_envs, self.ctx + 64), dtype=np.int64)
        self.end, self.t = self.ctx, 0
        self.start = np.zeros(num_envs, dtype=np.int64)
        self.prompt_idx = np.zeros(num_envs, dtype=np.int64)
        self.rngs = [np.random.default_rng(seed + i) for i in range(num_envs)]
        self.resetting: np.ndarray | None = None
        self._reset(np.arange(num_envs), {})

    def _reset(self, envs: np.ndarray, infos: dict) -> None:
        n, prompts, rows = self.n, self.task.prompts.prompts, self.task.prompt_obs
        prompt_col = infos.get("prompt")
        if prompt_col is None:
            prompt_col = infos["prompt"] = np.empty(n, dtype=object)
        index_col = np.zeros(n, dtype=np.int64)
        for i in envs.tolist():
            j = int(self.rngs[i].random() * len(prompts))
            self.buf[i, self.end - self.ctx : self.end] = rows[j]
            self.prompt_idx[i], prompt_col[i], index_col[i] = j, prompts[j], j
        self.start[envs] = self.t
        mask = np.zeros(n, dtype=bool)
        mask[envs] = True
        infos["_prompt"] = infos["_prompt"] | mask if "_prompt" in infos else mask
        infos["prompt_index"], infos["_prompt_index"] = index_col, mask

    def step(self, actions: np.ndarray) -> tuple:
        n, h, buf = self.n, self.h, self.buf
        if np.count_nonzero(actions.view(np.uint64) >= self.vocab):
            raise ValueError("action outside the vocabulary")
        if self.end == buf.shape[1]:
            buf[:, : self.ctx] = buf[:, -self.ctx :]
            self.end = self.ctx
        buf[:, self.end] = actions
        self.end += 1
        self.t += 1
        ended = actions == self.eos
        ended |= self.start == self.t - h
        resetting, self.resetting = self.resetting, None
        if resetting is not None:
            ended[resetting] = False
        rewards = np.zeros(n)
        infos: dict = {}
        finished = ended.nonzero()[0]
        if finished.size:
            prompt, completion, reason = np.empty(n, object), np.empty(n, object), np.empty(n, object)
            tokens, score = np.zeros(n, dtype=np.int64), np.zeros(n)
            lengths = (self.t - self.start[finished]).tolist()
            rows = buf[finished, self.end - h : self.end].tolist()
            for i, row, length in zip(finished.tolist(), rows, lengths):
                ids = row[h - length :]
                text = b"".join([self.table[x] for x in ids]).decode("utf-8", "replace")
                prompt[i], completion[i] = self.task.prompts.prompts[self.prompt_idx[i]], text
                reason[i], tokens[i] = ("eos" if ids[-1] == self.eos else "length"), length
                score[i] = max(0.0, 1.0 - abs(len(text.split()) - self.target) / self.target)
            rewards[finished] = score[finished]
            mask = np.zeros(n, dtype=bool)
            mask[finished] = True
            infos = {
                "prompt": prompt,
                "_prompt": mask,
                "completion": completion,
                "_completion": mask,
                "feedback": {"length": score, "_length": mask},
                "_feedback": mask,
                "finish_reason": reason,
                "_finish_reason": mask,
                "completion_tokens": tokens,
                "_completion_tokens": mask,
            }
            self.resetting = finished
        if resetting is not None:
            self._reset(resetting, infos)
        obs = buf[:, self.end - self.ctx : self.end].copy()
        return obs, rewards, ended, np.zeros(n, dtype=bool), infos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    args = p.parse_args()
    n = 64
    pool = np.random.default_rng(0).integers(2000, size=(4096, n))
    k = iter(range(1 << 62))
    sync = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="sync", reward="length")
    kwargs = dict(num_envs=n, vectorization_mode="vector_entry_point", reward="length")
    numpy_core = gym.make_vec(ENV_ID, compiled=False, **kwargs)
    c_core = gym.make_vec(ENV_ID, **kwargs) if textgym.vector_env._CCore is not None else None
    floor = FloorEnv(n)
    sync.reset(seed=0)
    envs = [e for e in (numpy_core, c_core, floor) if e is not None]
    for e in envs[:-1]:
        e.reset(seed=0)
    for _ in range(2000):  # reach the steady state, where the sub-envs' episodes no longer end together
        for e in envs:
            e.step(pool[next(k) % len(pool)])
    b = steps_per_second(lambda: sync.step(pool[next(k) % len(pool)]), n, args.seconds)
    rows = [("TextGenVectorEnv, NumPy core", numpy_core), ("stripped-down Python floor step", floor)]
    if c_core is not None:
        rows.append(("TextGenVectorEnv, C core", c_core))
    print(f"num_envs={n}  random actions  length feedback")
    print(f"(b) SyncVectorEnv x{n}                  {b:12,.0f} steps/s")
    for name, env in rows:
        x = steps_per_second(lambda env=env: env.step(pool[next(k) % len(pool)]), n, args.seconds)
        print(f"    {name:<34} {x:12,.0f} steps/s   {x / b:5.1f}x (b)   {n / x * 1e6:5.1f} us/step")
    print(f"20x (b) needs {n / (20 * b) * 1e6:.1f} us/step")


if __name__ == "__main__":
    main()
