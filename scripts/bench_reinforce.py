"""REINFORCE goals: the reward-KL frontier after a fixed training time, the KL-regularised optimum, and throughput.

For each β (and each baseline asked for), trains from the same pretrained checkpoint for ``--minutes`` on the
default task (held-out corpus prompts, ``sentiment`` feedback, 20 new tokens), then on the held-out evaluation
prompts reports: mean VADER score and its gain over the reference, KL to the reference per completion, distinct-2
relative to the reference's, and how close the run came to the best possible objective:

    optimum(β) = mean over prompts x of  β · log E_{y ~ π_ref(x)} [exp(r(x, y) / β)]

(the value of π* ∝ π_ref · exp(r/β)), estimated from ``--optimum-samples`` reference completions. The achieved
objective is mean score − β·KL; the script prints it as a fraction of the optimum, and the gain over the
reference as a fraction of the possible gain.

Throughput: env tokens/s of whole updates (rollout through the env + feedback + reference + update) and the useful
FLOP/s of that work (5 forward-equivalents per token: sampling 1, reference 1, update 3) against a float32
2048x2048 matrix product measured in the same run; and the env's share of the update's wall time (its ``step``
calls, feedback included), with the task's feedback and with ``length`` (goal: <= 5%).

    python scripts/bench_reinforce.py --init runs/pretrain/model [--minutes 5] [--betas 0.05 0.1 0.2]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from agents.evaluation import Evaluator
from agents.reinforce import Reinforce, ReinforceConfig, train


def matmul_flops(seconds: float = 2.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - start)


@torch.no_grad()
def optimum(agent: Reinforce, betas: list[float], samples: int, seed: int) -> tuple[dict[float, float], float]:
    """β · log E_ref[exp(r/β)] averaged over the eval prompts, from ``samples`` reference completions in all
    (sampled and scored through the env by the shared evaluation)."""
    held_out = agent.evaluator.prompts
    per_prompt = max(1, samples // len(held_out))
    cfg = agent.cfg
    sampler = Evaluator(held_out, cfg.reward, agent.tokenizer, per_prompt, cfg.max_new_tokens, seed=seed)
    rows = sampler(agent.ref, agent.ref).rows
    scores = np.array([r["score"] for r in rows]).reshape(len(held_out), per_prompt)
    result = {}
    for beta in betas:
        z = scores / beta
        m = z.max(axis=1, keepdims=True)
        log_mean_exp = m[:, 0] + np.log(np.exp(z - m).mean(axis=1))
        result[beta] = float(np.mean(beta * log_mean_exp))
    return result, float(scores.mean())


def throughput(init: str, reward: str, seed: int, updates: int = 20) -> tuple[float, float, Reinforce]:
    """Env tokens/s of whole updates, and the share of their wall time spent in the env's step calls."""
    probe = Reinforce(ReinforceConfig(init=init, reward=reward, kl_coef=0.1, seed=seed, progress=False))
    for _ in range(3):
        probe.step()
    t0, tokens0, env0 = time.perf_counter(), probe.tokens, probe.env_seconds
    for _ in range(updates):
        probe.step()
    elapsed = time.perf_counter() - t0
    return (probe.tokens - tokens0) / elapsed, (probe.env_seconds - env0) / elapsed, probe


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/pretrain/model", help="pretrained checkpoint (policy start and reference)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time per run (default 5)")
    p.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="KL coefficients")
    p.add_argument("--baselines", nargs="+", default=["rloo"], help="baselines to run at every β")
    p.add_argument(
        "--extra-baselines",
        nargs="*",
        default=["moving_average", "value"],
        help="baselines run at the middle β only (default: moving_average value)",
    )
    p.add_argument("--optimum-samples", type=int, default=10240, help="reference completions for the optimum")
    p.add_argument("--out", default="runs/bench_reinforce", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--throughput-only", action="store_true", help="measure throughput and the env's share, then stop")
    args = p.parse_args()
    out = Path(args.out)

    peak = matmul_flops()
    # Throughput of whole updates, side by side with the ceiling; the env's share of them.
    tps, env_share, probe = throughput(args.init, "sentiment", args.seed)
    _, length_share, _ = throughput(args.init, "length", args.seed)
    flops = 5 * probe.policy.config.flops_per_token() * tps
    print(
        f"throughput: {tps:,.0f} env tokens/s end to end; {flops / 1e9:.1f} GFLOP/s useful = {flops / peak:.0%} "
        f"of the matmul ceiling (goal >= 50%)\nenv share of the update's wall time (step calls, feedback included): "
        f"{length_share:.1%} with length feedback (goal <= 5%), {env_share:.1%} with sentiment (VADER)"
    )

    if args.throughput_only:
        return
    opt, ref_score = optimum(probe, args.betas, args.optimum_samples, args.seed)
    ref_metrics = probe.evaluator(probe.ref, probe.ref).metrics
    print(
        f"matmul ceiling {peak / 1e9:.1f} GFLOP/s; reference on eval prompts: score {ref_metrics['eval/scores']:+.3f}, "
        f"distinct-2 {ref_metrics['eval/distinct_2']:.3f}, perplexity under itself "
        f"{ref_metrics['eval/ref_perplexity']:.1f}; reference mean over {args.optimum_samples} samples {ref_score:+.3f}"
    )

    runs = [(b, base) for b in args.betas for base in args.baselines]
    mid = args.betas[len(args.betas) // 2]
    runs += [(mid, base) for base in args.extra_baselines if base not in args.baselines]
    rows = []
    for beta, baseline in runs:
        cfg = ReinforceConfig(
            init=args.init,
            kl_coef=beta,
            baseline=baseline,
            updates=100_000,
            max_minutes=args.minutes,
            eval_interval=100,
            checkpoint_interval=100_000,
            out=str(out / f"beta{beta}_{baseline}"),
            seed=args.seed,
            progress=False,
        )
        final = train(cfg)
        summary = json.loads((out / f"beta{beta}_{baseline}" / "metrics.json").read_text())
        gain = final["eval/scores"] - ref_metrics["eval/scores"]
        achieved = final["eval/scores"] - beta * final["eval/kl"]
        row = dict(
            beta=beta,
            baseline=baseline,
            updates=summary["updates"],
            score=final["eval/scores"],
            gain=gain,
            kl=final["eval/kl"],
            distinct2_ratio=final["eval/distinct_2"] / ref_metrics["eval/distinct_2"],
            ref_perplexity=final["eval/ref_perplexity"],
            achieved=achieved,
            optimum=opt[beta],
            fraction=achieved / opt[beta],
            gain_fraction=(achieved - ref_metrics["eval/scores"]) / (opt[beta] - ref_metrics["eval/scores"]),
        )
        rows.append(row)
        print(json.dumps(row))

    print(
        f"\n{'β':>5} {'baseline':>15} {'updates':>8} {'score':>7} {'gain':>6} {'KL':>6} {'dist-2':>7} {'ref ppl':>8} "
        f"{'objective':>10} {'optimum':>8} {'fraction':>9} {'of gain':>8}"
    )
    for r in rows:
        print(
            f"{r['beta']:>5} {r['baseline']:>15} {r['updates']:>8} {r['score']:>+7.3f} {r['gain']:>+6.3f} "
            f"{r['kl']:>6.2f} {r['distinct2_ratio']:>6.0%} {r['ref_perplexity']:>8.1f} {r['achieved']:>+10.3f} "
            f"{r['optimum']:>+8.3f} {r['fraction']:>8.0%} {r['gain_fraction']:>8.0%}"
        )
    print("goals: gain >= +0.5 at KL <= 3 and >= +0.7 at KL <= 6, distinct-2 >= 85% of the reference's")
    (out / "frontier.json").write_text(
        json.dumps(
            {
                "throughput_tokens_per_s": tps,
                "flop_fraction": flops / peak,
                "env_share_length": length_share,
                "env_share_sentiment": env_share,
                "reference": ref_metrics,
                "rows": rows,
            },
            indent=2,
        )
    )
    assert math.isfinite(tps)


if __name__ == "__main__":
    main()
