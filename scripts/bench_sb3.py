"""SB3 baselines against REINFORCE: env tokens/s and training FLOPs per env token, and learning at equal env tokens.

Speed (always): each algorithm with its documented defaults on the default task (held-out corpus prompts,
``sentiment``, 20 new tokens, β = 0.1) from the same checkpoint; whole iterations (rollout through the env with its
feedback and the carried reference, then the update) after a warm-up one, timed side by side with REINFORCE's
updates in the same run (REINFORCE before and after the SB3 algorithms, averaged, because this machine drifts).
FLOPs per env token are forward-equivalents of the LM (its LSTM and output layer) counted from what each algorithm
runs: sampling 1 and reference 1 per token for all; REINFORCE's update 3; a window policy's training 3 per LSTM step
it re-encodes (counted) plus 3 for the output layer per window, per epoch; the recurrent policy's 3 per epoch.
Goal: PPO >= 1/25 of REINFORCE's env tokens/s.

Learning (``--learning``): every algorithm, REINFORCE included, trains on the same budget of env tokens (default
100k) at β = 0.1; on the held-out evaluation prompts it reports the score before and after, the KL to the reference,
the objective (score − β·KL) and its gain over the reference as a fraction of the possible gain, i.e. of the
KL-regularised optimum β·log E_ref[exp(r/β)] (estimated from ``--optimum-samples`` reference completions), and the
wall time each took.

    python scripts/bench_sb3.py --init runs/pretrain/model [--learning] [--budget 100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from agents.baselines import ALGORITHMS, SB3Agent, train
from agents.benchmark import optimum_stats
from agents.reinforce import SHORT_RUN, Reinforce, ReinforceConfig
from agents.reinforce import train as train_reinforce

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_reinforce import reference_scores  # noqa: E402


def lm_flops(config) -> tuple[int, int]:  # noqa: ANN001
    """(LSTM, output layer) forward FLOPs per token of the LM."""
    head = 2 * config.hidden_dim * config.vocab_size
    return config.flops_per_token() - head, head


def reinforce_speed(init: str, seconds: float) -> float:
    agent = Reinforce(ReinforceConfig(init=init, kl_coef=0.1, progress=False, **SHORT_RUN))
    agent.step()
    t0, tokens0 = time.perf_counter(), agent.tokens
    while time.perf_counter() - t0 < seconds:
        agent.step()
    return (agent.tokens - tokens0) / (time.perf_counter() - t0)


def sb3_speed(algo: str, init: str, seconds: float) -> tuple[float, float]:
    """(env tokens/s, training FLOPs per env token) of ``algo``'s whole iterations."""
    agent = SB3Agent(ALGORITHMS[algo][0](init=init, kl_coef=0.1, progress=False, out=f"/tmp/bench_sb3_{algo}"))
    agent.step()
    policy = agent.sb3.policy
    counts = getattr(policy.features_extractor, "counts", {})
    counts.clear()
    t0, tokens0 = time.perf_counter(), agent.tokens
    while time.perf_counter() - t0 < seconds:
        agent.step()
    elapsed, tokens = time.perf_counter() - t0, agent.tokens - tokens0
    lstm, head = lm_flops(agent.model.config)
    rollout = 2 * (lstm + head)  # the policy's step and the reference's, per token
    if algo == "recurrent-ppo":
        train_flops = 3 * (lstm + head) * agent.cfg.n_epochs * tokens
    else:
        train_flops = 3 * (lstm * counts["lstm_steps"] + head * counts["windows"])
    return tokens / elapsed, rollout + train_flops / tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/pretrain/model", help="pretrained checkpoint (policy start and reference)")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per algorithm (default 20)")
    p.add_argument("--algos", nargs="+", default=list(ALGORITHMS), help="SB3 algorithms to measure")
    p.add_argument("--learning", action="store_true", help="also train every algorithm on --budget env tokens")
    p.add_argument("--budget", type=int, default=100_000, help="env tokens per algorithm (default 100k)")
    p.add_argument("--beta", type=float, default=0.1, help="KL coefficient of the learning comparison")
    p.add_argument("--optimum-samples", type=int, default=10240, help="reference completions for the optimum")
    p.add_argument("--out", default="runs/bench_sb3", help="output folder of the learning runs")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    speeds = {}
    r_before = reinforce_speed(args.init, args.seconds)
    for algo in args.algos:
        speeds[algo] = sb3_speed(algo, args.init, args.seconds)
    r_after = reinforce_speed(args.init, args.seconds)
    reinforce_tps = (r_before + r_after) / 2
    config = Reinforce(ReinforceConfig(init=args.init, progress=False)).policy.config
    reinforce_flops = 5 * config.flops_per_token()
    print(
        f"\n{'algorithm':>14} {'env tokens/s':>13} {'of REINFORCE':>13} {'train FLOPs/token':>18} {'x REINFORCE':>12}"
    )
    print(
        f"{'reinforce':>14} {reinforce_tps:>13,.0f} {'1':>13} {reinforce_flops / 1e6:>17.1f}M {'1':>12}"
        f"   (before {r_before:,.0f}, after {r_after:,.0f})"
    )
    for algo, (tps, flops) in speeds.items():
        print(
            f"{algo:>14} {tps:>13,.0f} {'1/' + format(reinforce_tps / tps, '.1f'):>13} {flops / 1e6:>17.1f}M "
            f"{flops / reinforce_flops:>11.1f}x"
        )
    if "ppo" in speeds:
        ratio = speeds["ppo"][0] / reinforce_tps
        print(
            f"goal: PPO >= 1/25 of REINFORCE's env tokens/s: 1/{1 / ratio:.1f} "
            f"{'met' if ratio >= 1 / 25 else 'NOT met'}"
        )
    if not args.learning:
        return

    out = Path(args.out)
    probe = Reinforce(ReinforceConfig(init=args.init, kl_coef=args.beta, progress=False))
    opt = {args.beta: optimum_stats(reference_scores(probe, args.optimum_samples, args.seed), args.beta)["optimum"]}
    ref_metrics = probe.evaluator(probe.ref, probe.ref).metrics
    ref_score = ref_metrics["eval/scores"]
    common = dict(init=args.init, kl_coef=args.beta, total_env_tokens=args.budget, seed=args.seed, progress=False)
    rows = []
    for algo in ["reinforce", *args.algos]:
        folder = out / algo
        shutil.rmtree(folder, ignore_errors=True)  # a fresh run each time (a folder with a checkpoint would resume)
        t0 = time.perf_counter()
        if algo == "reinforce":
            final = train_reinforce(
                ReinforceConfig(
                    **common,
                    **SHORT_RUN,
                    updates=100_000,
                    eval_interval=100_000,
                    checkpoint_interval=100_000,
                    out=str(folder),
                )
            )
        else:
            cfg = ALGORITHMS[algo][0](
                **common, updates=100_000, eval_interval=100_000, checkpoint_interval=100_000, out=str(folder)
            )
            final = train(cfg)
        wall = time.perf_counter() - t0
        summary = json.loads((folder / "metrics.json").read_text())
        objective = final["eval/scores"] - args.beta * final["eval/kl"]
        rows.append(
            dict(
                algo=algo,
                env_tokens=summary["env_tokens"],
                wall_s=wall,
                before=ref_score,
                after=final["eval/scores"],
                kl=final["eval/kl"],
                objective=objective,
                gain_fraction=(objective - ref_score) / (opt[args.beta] - ref_score),
                distinct2=final["eval/distinct_2"],
                ref_perplexity=final["eval/ref_perplexity"],
            )
        )
        print(json.dumps(rows[-1]))
    print(
        f"\nβ = {args.beta}, {args.budget:,} env tokens each; reference: score {ref_score:+.3f}, distinct-2 "
        f"{ref_metrics['eval/distinct_2']:.3f}; optimum β·log E_ref[exp(r/β)] = {opt[args.beta]:+.3f}"
    )
    print(
        f"{'algorithm':>14} {'tokens':>8} {'wall s':>7} {'before':>7} {'after':>7} {'KL':>6} {'objective':>10} "
        f"{'of gain':>8} {'dist-2':>7} {'ref ppl':>8}"
    )
    for r in rows:
        print(
            f"{r['algo']:>14} {r['env_tokens']:>8,} {r['wall_s']:>7.0f} {r['before']:>+7.3f} {r['after']:>+7.3f} "
            f"{r['kl']:>6.2f} {r['objective']:>+10.3f} {r['gain_fraction']:>8.0%} {r['distinct2']:>7.3f} "
            f"{r['ref_perplexity']:>8.1f}"
        )
    print("bar: each SB3 algorithm raises the objective over the reference (of gain > 0)")
    (out / "results.json").write_text(
        json.dumps({"speeds": speeds, "reinforce_tps": reinforce_tps, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
