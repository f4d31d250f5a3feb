"""Env throughput: one env, a SyncVectorEnv of N single envs, and the native TextGenVectorEnv (random actions).

Prints steps per second for each and the ratio native / sync, all measured in this one run (regression bar: >= 6x at
64 sub-envs). Then where the native env's time goes: its median step time for steps where no episode ends, where some
end, and where some reset.

    python scripts/bench_env.py [--num-envs 64] [--seconds 3] [--reward length] [--autoreset-mode NextStep]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np

import textgym  # noqa: F401  (registers the ids)

ENV_ID = "textgym/TextGen-v0"


def steps_per_second(step, n_per_call: int, seconds: float) -> float:
    """Call ``step`` repeatedly for about ``seconds`` and return env steps per second."""
    step()  # warm-up
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            step()
        calls += 50
    return calls * n_per_call / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=64, help="sub-envs in the vector envs (default 64)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per measurement (default 3)")
    p.add_argument("--reward", default="length", help="feedback spec (default 'length')")
    p.add_argument("--autoreset-mode", default="NextStep", help="NextStep (default, as SyncVectorEnv) or SameStep")
    args = p.parse_args()
    n, rng = args.num_envs, np.random.default_rng(0)

    single = gym.make(ENV_ID, reward=args.reward)
    single.reset(seed=0)
    vocab = single.action_space.n
    # Actions are drawn up front, so the timings hold env work only, the same for all three.
    pool = rng.integers(vocab, size=(4096, n))
    ints = [int(x) for x in pool[:, 0]]
    k = iter(range(1 << 62))

    def single_step() -> None:
        _, _, term, trunc, _ = single.step(ints[next(k) % len(ints)])
        if term or trunc:
            single.reset()

    mode = {"autoreset_mode": args.autoreset_mode}
    sync = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="sync", vector_kwargs=mode, reward=args.reward)
    native = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", reward=args.reward, **mode)
    for envs in (sync, native):
        envs.reset(seed=0)

    a = steps_per_second(single_step, 1, args.seconds)
    b = steps_per_second(lambda: sync.step(pool[next(k) % len(pool)]), n, args.seconds)
    c = steps_per_second(lambda: native.step(pool[next(k) % len(pool)]), n, args.seconds)
    print(f"reward={args.reward!r}  num_envs={n}  autoreset_mode={args.autoreset_mode}  random actions")
    print(f"(a)  gym.make single env               {a:12,.0f} steps/s")
    print(f"(b)  SyncVectorEnv x{n:<3}                 {b:12,.0f} steps/s")
    print(f"(c)  TextGenVectorEnv x{n:<3}              {c:12,.0f} steps/s")
    print(f"ratio (c)/(b) = {c / b:.1f}x   (regression bar at 64 sub-envs: >= 6x)")
    breakdown(native, pool, args.seconds)


def breakdown(native, pool: np.ndarray, seconds: float) -> None:
    """Median time of the native env's steps, grouped by whether episodes ended or sub-envs reset at that step."""
    groups: dict[tuple[bool, bool], list[int]] = {}
    ended_before = np.zeros(pool.shape[1], dtype=bool)
    next_step = native.unwrapped.autoreset_mode.value == "NextStep"
    start, k = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter_ns()
        _, _, term, _, _ = native.step(pool[k % len(pool)])
        dt = time.perf_counter_ns() - t0
        resets = bool(ended_before.any()) if next_step else bool(term.any())
        groups.setdefault((bool(term.any()), resets), []).append(dt)
        ended_before, k = term, k + 1
    print(f"native step time by kind ({k:,} steps):")
    for (ends, resets), times in sorted(groups.items()):
        what = f"{'episodes end' if ends else 'no episode ends'}, {'sub-envs reset' if resets else 'no reset'}"
        print(f"  {what:<38} {len(times) / k:6.1%} of steps   median {np.median(times) / 1000:6.1f} us")


if __name__ == "__main__":
    main()
