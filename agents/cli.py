"""The ``textgym`` command line: one tool, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def cmd_rollout(args: argparse.Namespace) -> None:
    """Print a few random-policy episodes with their rewards (a look at the env, no learning)."""
    import gymnasium as gym
    import numpy as np

    import textgym  # noqa: F401

    envs = gym.make_vec(
        "textgym/TextGen-v0", num_envs=args.episodes, vectorization_mode="vector_entry_point",
        reward=args.reward, max_new_tokens=args.max_new_tokens, autoreset_mode="same_step",
    )
    rng = np.random.default_rng(args.seed)
    envs.reset(seed=args.seed)
    done = np.zeros(args.episodes, dtype=bool)
    while not done.all():
        _, reward, term, trunc, info = envs.step(rng.integers(envs.single_action_space.n, size=args.episodes))
        for i in np.flatnonzero((term | trunc) & ~done):
            fi = info["final_info"]
            print(f"[{i}] reward {reward[i]:+.3f}  {fi['prompt'][i]!r} -> {fi['completion'][i].strip()!r}")
            done[i] = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="textgym", description="Reinforcement learning on text generation.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rollout", help="print random-policy episodes and their rewards")
    r.add_argument("--reward", default="sentiment", help="feedback spec, e.g. 'sentiment' or 'length(target=8)'")
    r.add_argument("--episodes", type=int, default=4, help="number of episodes to print (default 4)")
    r.add_argument("--max-new-tokens", type=int, default=12, help="longest completion in tokens (default 12)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    r.set_defaults(func=cmd_rollout)
    d = sub.add_parser("demo", help="the main job (for now: a rollout demo)")
    d.set_defaults(func=cmd_rollout, reward="sentiment", episodes=4, max_new_tokens=12, seed=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
