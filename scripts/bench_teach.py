"""Teaching speed (`textgym teach`): seconds per step in float32 and in bfloat16 products, side by side in one run.

Each step samples a batch of the reference's completions, scores every prefix with the feedback, and takes an Adam
step on the score-so-far regression (agents.teach.Teacher.step). The two teachers are built from the same checkpoint
and their steps alternate in rounds, so the machine's noise falls on both alike. Prints each round's seconds per
step, the minutes that --steps would take, and the ratio.

    python scripts/bench_teach.py --init runs/demo/pretrain/model [--rounds 3] [--steps-per-round 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from agents.teach import TeachConfig, Teacher

COMPARED = ("float32", "bfloat16")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/demo/pretrain/model", help="the reference to teach (a checkpoint folder)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--steps-per-round", type=int, default=8, help="steps per precision per round (default 8)")
    args = p.parse_args()
    defaults = TeachConfig()
    # (on hardware without bfloat16 arithmetic, the bfloat16 teacher refuses by name: agents.runner.resolve_precision)
    teachers = {name: Teacher(TeachConfig(init=args.init, precision=name, progress=False)) for name in COMPARED}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {defaults.batch} completions per step")
    for teacher in teachers.values():
        teacher.step()  # (warm-up)
    seconds: dict[str, list[float]] = {name: [] for name in teachers}
    for _ in range(args.rounds):
        for name, teacher in teachers.items():
            start = time.perf_counter()
            for _ in range(args.steps_per_round):
                teacher.step()
            seconds[name].append((time.perf_counter() - start) / args.steps_per_round)
    for name, times in seconds.items():
        mean = sum(times) / len(times)
        rounds = ", ".join(f"{t:.3f}" for t in times)
        minutes = defaults.steps * mean / 60
        print(f"{name:>9}: {mean:.3f} s/step (rounds: {rounds}); {defaults.steps} steps: {minutes:.1f} min")
    ratio = sum(seconds["float32"]) / sum(seconds["bfloat16"])
    print(f"bfloat16 teaches {ratio:.2f}x as fast as float32")


if __name__ == "__main__":
    main()
