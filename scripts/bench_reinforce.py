"""REINFORCE against the best possible: the KL-regularised optimum, the reward-KL frontier, where the gap goes.

For each β (and each baseline asked for) and each seed, trains from the same pretrained checkpoint on the default
task (held-out corpus prompts, ``sentiment`` feedback, 20 new tokens) for ``--minutes`` of wall time or
``--total-env-tokens`` (reproducible), then on the held-out evaluation prompts reports: score and gain over the
reference, KL to the reference per completion, distinct-2 relative to the reference's, perplexity under the
reference, and how close the run came to the best possible objective:

    optimum(β) = mean over prompts x of  β · log E_{y ~ π_ref(x)} [exp(r(x, y) / β)]

the value of π* ∝ π_ref · exp(r/β), estimated from ``--optimum-samples`` reference completions with a bootstrap
interval, together with π*'s own score and KL (self-normalised importance weights on the same samples;
:func:`agents.benchmark.optimum_stats`). 51,200 by default (about 3 minutes on one core): the estimate is a log of a
mean, biased low, most at small β, where a few high-scoring completions carry the mean; at β = 0.05 five disjoint
draws of 10,240 read +0.577 to +0.590 and the 51,200 together +0.594, which the diverse trained policies' own
estimates agree with (docs/benchmarks.md, issue 14). A run's gain fraction is (objective − reference score) / (optimum −
reference score), objective = score − β·KL. Per β, the mean, spread and minimum over seeds are printed against the
goal (>= 90% of the optimum's gain, distinct-2 >= 90% of the reference's).

Diagnostics (where the missing gain goes):
* ``--diagnose N``: the policy gradient's signal-to-noise ratio at N points of each run, from 8 independent batches
  at the same parameters: ||E g||² / E||g − E g||² per batch (the generators are restored, so the run is unchanged).
* per-prompt gaps: the final policy's objective on each evaluation prompt (``--eval-samples`` completions)
  against that prompt's own optimum; the share of prompts at >= 90% of their own gain, and the prompts furthest
  from their optimum, are listed.
* where the gap sits, within each prompt: how closely the policy's β·log-ratio tracks the score (π* makes
  r − β·log π/π_ref constant); the first quartile and median of the score against π*'s (a policy that is as good
  on average but uneven shows a low first quartile); and the state probe: how well the LSTM state tells the score of
  the completion so far (held-out R² of a ridge regression), which π*'s tilt depends on.
* what the seeds share: the gap is exactly β·KL(π‖π*) per completion (objective = β·log Z − β·KL(π‖π*)). With two
  or more seeds, the mean KL between two seeds' final policies is printed beside it: to second order, half of it is
  each seed's own noise, and the rest of KL(π‖π*) is what every seed misses alike.
* ``--frontier PNG``: score against KL for each run, with π*'s (KL, score) point and the goal's line (90% of the
  optimum's gain) for each β; ``--replot OUT/frontier.json --frontier PNG`` draws it again from a finished run.

Throughput: env tokens/s of whole updates (rollout through the env + feedback + reference + update) and the useful
FLOP/s of that work (5 forward-equivalents per token: sampling 1, reference 1, update 3) against a float32
2048x2048 matrix product measured in the same run; where the runs' precision is bfloat16 (the default on hardware
with it), the same updates in float32 too, and the ratio; and the env's share of the update's wall time (its ``step``
calls, feedback included), with the task's feedback and with ``length`` (goal: <= 5%); and whole updates with the
plain output layer and with the gated tilt (``ReinforceConfig.gated_tilt``), in alternating rounds, and the ratio.

    python scripts/bench_reinforce.py --init runs/pretrain/model [--minutes 5] [--betas 0.05 0.1 0.2] [--seeds 0 1 2]
        [--set lr_schedule=cosine ...] [--diagnose 10] [--frontier docs/img/reinforce_frontier.png]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from agents.benchmark import log_mean_exp, optimum_stats, sample_reference_scores
from agents.checkpoint import load_checkpoint
from agents.evaluation import Evaluation, Evaluator, distinct_n, expected_distinct_n, resampled_distinct_n
from agents.reinforce import Reinforce, ReinforceConfig, train
from agents.runner import bfloat16_speedup, native_bfloat16
from agents.teach import state_probe


def matmul_flops(seconds: float = 2.0) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return 2 * 2048**3 * n / (time.perf_counter() - start)


def reference_scores(agent: Reinforce, samples: int, seed: int) -> np.ndarray:
    """Scores of ``samples`` reference completions of the eval prompts, shape (prompts, samples per prompt)."""
    held_out, cfg = agent.evaluator.prompts, agent.cfg
    per_prompt = max(1, samples // len(held_out))
    return sample_reference_scores(
        agent.ref, agent.tokenizer, held_out, cfg.reward, per_prompt, cfg.max_new_tokens, seed
    )


def gradient_snr(agent: Reinforce, batches: int = 8) -> float:
    """||E g||² / E||g − E g||² for the update's gradient g on one batch, from ``batches`` fresh batches at the current
    parameters; the agent's generators and counters are put back, so training continues as if nothing happened."""
    saved = (agent.rng.bit_generator.state, agent.gen.get_state(), agent.tokens, agent.env_seconds)
    params = [p for p in agent.policy.parameters() if p.requires_grad]
    grads = []
    for _ in range(batches):
        loss, _ = agent.loss(agent.rollout())
        g = torch.autograd.grad(loss, params, allow_unused=True)
        grads.append(torch.cat([x.flatten() for x in g if x is not None]))
    agent.rng.bit_generator.state, _, agent.tokens, agent.env_seconds = saved
    agent.gen.set_state(saved[1])
    G = torch.stack(grads).double()
    mean = G.mean(0)
    noise = float(((G - mean) ** 2).sum(1).sum() / (batches - 1))  # E||g − E g||², unbiased
    signal = float(mean.pow(2).sum()) - noise / batches  # ||E g||², unbiased
    return signal / noise


@torch.no_grad()
def final_evaluation(policy, agent: Reinforce, samples: int, seed: int, against=None) -> Evaluation:
    """``samples`` completions of each evaluation prompt from ``policy``, scored, with their KL to ``against`` (the
    reference unless given).

    The run's own last evaluation has ``eval_samples`` (4) per prompt: with 128 completions the objective's standard
    error is about 0.04, a tenth of the optimum's gain. This one, 256 per prompt by default, is the headline figure:
    with 64 per prompt, two scorings of one policy differed by up to 4 points of the gain fraction at β = 0.2."""
    held_out, cfg = agent.evaluator.prompts, agent.cfg
    ev = Evaluator(held_out, cfg.reward, agent.tokenizer, samples, cfg.max_new_tokens, seed=seed + 7)
    return ev(policy, agent.ref if against is None else against)


def seed_distance(policies: list, agent: Reinforce, samples: int, seed: int) -> float:
    """Mean KL(π_i ‖ π_(i+1) mod n) per completion between the seeds' final policies (cyclic pairs, so 2 seeds give
    both directions), each sampled from π_i on the evaluation prompts, ``samples`` per prompt."""
    n = len(policies)
    kls = [final_evaluation(policies[i], agent, samples, seed, against=policies[(i + 1) % n]) for i in range(n)]
    return float(np.mean([ev.metrics["eval/kl"] for ev in kls]))


def per_prompt_gaps(ev: Evaluation, agent: Reinforce, ref_scores: np.ndarray, beta: float) -> list[dict]:
    """Per evaluation prompt: the policy's objective (mean score − β·mean KL over its completions in ``ev``), the
    reference's score and the prompt's own optimum, and the fraction of the prompt's possible gain reached."""
    prompts = agent.evaluator.prompts.prompts
    score = np.array([r["score"] for r in ev.rows]).reshape(len(prompts), -1).mean(1)
    kl = np.array([r["kl"] for r in ev.rows]).reshape(len(prompts), -1).mean(1)
    opt = beta * log_mean_exp(ref_scores / beta)
    ref = ref_scores.mean(1)
    frac = (score - beta * kl - ref) / np.maximum(opt - ref, 1e-9)
    return [
        dict(
            prompt=p,
            fraction=float(f),
            gap=float(o - s + beta * k),
            score=float(s),
            kl=float(k),
            ref=float(r),
            optimum=float(o),
        )
        for p, f, s, k, r, o in zip(prompts, frac, score, kl, ref, opt)
    ]


def return_spread(ev: Evaluation, n_prompts: int, beta: float) -> dict[str, float]:
    """Where the gap to the optimum sits, from the policy's own completions.

    With R = r − β·log π/π_ref per completion, the optimum is β·log E_π[exp(R/β)] under any policy π (an importance
    weight turns E_π into E_ref), and π* makes R the same for every completion of a prompt. So a policy's gap is
    β·log E_π[exp((R − E_π R)/β)], about Var(R)/2β: how far its log-ratio is from tracking its score, (r − c)/β,
    completion by completion. Within each prompt: the spread of r and of β·log-ratio, their correlation (1 at π*),
    the spread of R, Var(R)/2β, and the optimum estimated from these samples (a check on the reference's)."""
    score = np.array([r["score"] for r in ev.rows]).reshape(n_prompts, -1)
    ratio = beta * np.array([r["kl"] for r in ev.rows]).reshape(n_prompts, -1)
    rs, ls = score - score.mean(1, keepdims=True), ratio - ratio.mean(1, keepdims=True)
    returns = score - ratio
    return dict(
        std_score=float(np.sqrt((rs**2).mean())),
        std_beta_logratio=float(np.sqrt((ls**2).mean())),
        corr=float((rs * ls).mean() / max(np.sqrt((rs**2).mean() * (ls**2).mean()), 1e-12)),
        std_return=float(np.sqrt(((rs - ls) ** 2).mean())),
        var_return_over_2beta=float(((rs - ls) ** 2).mean() / (2 * beta)),
        optimum_from_policy=float((beta * log_mean_exp(returns / beta)).mean()),
    )


def counted_distinct(ev: Evaluation, n_prompts: int, k: int) -> float:
    """Distinct-2 counted over the first ``k`` completions of each prompt of an evaluation."""
    per = len(ev.rows) // n_prompts
    return distinct_n([r["completion"] for i, r in enumerate(ev.rows) if i % per < k])


def optimum_distinct(
    policy, agent: Reinforce, beta: float, samples: int, ks: list[int], seed: int, own: Evaluation, ref: Evaluation
) -> list[dict]:
    """Distinct-2 of π* ∝ π_ref·exp(r/β) over k completions of each evaluation prompt, for each k in ``ks``, estimated
    from ``samples`` completions of each prompt by the trained policy (:func:`agents.evaluation.expected_distinct_n`).

    π*'s own samples cannot be drawn, and the reference's are a poor proposal (at β = 0.05 the median prompt has 15
    effective samples of π* in 2,048). The trained policy is nearer π*, and its importance weight is exact per
    completion: π*/π ∝ exp(r/β − log π/π_ref). The estimate is biased low once k nears the effective sample size
    (its k draws come from one weighted pool, so a heavy weight is drawn again and counts as a repeat, and a gram the
    proposal never wrote counts as never written), so each k's row carries checks: the policy's own
    distinct-2 estimated from the same samples with equal weights beside the one counted in its final evaluation
    (``own``), and the reference's estimated with weights π_ref/π beside the one counted (``ref``), and π*'s estimated
    again from the first half of each prompt's samples (``optimum_half``): where doubling the samples moves the
    estimate, it has not converged.

    ``optimum_resampled`` reads it the other way (:func:`agents.evaluation.resampled_distinct_n`): each of the k
    completions is drawn ∝ weight from its own group of N/k samples, so no sample is drawn twice; with small groups it
    errs toward the policy's own distinct-2. ``optimum_resampled_half`` is the same from groups of half the size:
    where halving the groups leaves it where it was, it has settled."""
    ev = final_evaluation(policy, agent, samples, seed + 11)
    n = len(agent.evaluator.prompts)
    texts = [[r["completion"] for r in ev.rows[i * samples : (i + 1) * samples]] for i in range(n)]
    score = np.array([r["score"] for r in ev.rows]).reshape(n, samples)
    logratio = np.array([r["kl"] for r in ev.rows]).reshape(n, samples)
    to_optimum = score / beta - logratio  # log π*/π, up to a constant per prompt
    half = samples // 2
    first_half = [t[:half] for t in texts]

    def resampled(k: int, group: int) -> float | None:  # (None where N is too few to give each draw a group)
        return resampled_distinct_n(texts, list(to_optimum), k, group) if group else None

    rows = []
    for k in ks:
        optimum, ess = expected_distinct_n(texts, list(to_optimum), k)
        optimum_half = expected_distinct_n(first_half, list(to_optimum[:, :half]), k)[0]
        reference, ref_ess = expected_distinct_n(texts, list(-logratio), k)
        rows.append(
            dict(
                k=k,
                optimum=optimum,
                optimum_ess_median=float(np.median(ess)),
                optimum_half=optimum_half,
                policy=expected_distinct_n(texts, [np.zeros(samples)] * n, k)[0],
                policy_counted=counted_distinct(own, n, k),
                reference=reference,
                reference_ess_median=float(np.median(ref_ess)),
                reference_counted=counted_distinct(ref, n, k),
                optimum_resampled=resampled(k, samples // k),
                optimum_resampled_half=resampled(k, samples // (2 * k)),
            )
        )
    return rows


def score_quantiles(ev: Evaluation, ref_scores: np.ndarray, beta: float, qs: tuple = (0.25, 0.5)) -> dict:
    """Quantiles of the score over all evaluation completions: the policy's, and π*'s from the reference samples
    weighted by exp(r/β) within each prompt (each prompt counting equally). A policy that scores as well on average
    but more unevenly (some completions high, many at the reference's level) shows a lower first quartile."""
    policy = np.array([r["score"] for r in ev.rows])
    weights = np.exp((ref_scores - ref_scores.max(1, keepdims=True)) / beta)
    weights = (weights / weights.sum(1, keepdims=True)).ravel()
    order = np.argsort(ref_scores.ravel())
    cumulative = np.cumsum(weights[order]) / weights.sum()
    optimum = [float(ref_scores.ravel()[order][min(np.searchsorted(cumulative, q), len(order) - 1)]) for q in qs]
    return {"policy": [float(np.quantile(policy, q)) for q in qs], "optimum": optimum}


def throughput(
    init: str, reward: str, seed: int, eval_prompts: int, updates: int = 20, precision: str = "auto"
) -> tuple[float, float, Reinforce]:
    """Env tokens/s of whole updates, and the share of their wall time spent in the env's step calls."""
    cfg = ReinforceConfig(
        init=init, reward=reward, kl_coef=0.1, seed=seed, eval_prompts=eval_prompts, progress=False, precision=precision
    )
    probe = Reinforce(cfg)
    timed_updates(probe, 3)  # (warm-up)
    tokens, env_seconds, elapsed = timed_updates(probe, updates)
    return tokens / elapsed, env_seconds / elapsed, probe


def timed_updates(agent: Reinforce, updates: int) -> tuple[int, float, float]:
    """Take ``updates`` updates: the env tokens they generated, seconds in the env's step calls, and wall seconds."""
    t0, tokens0, env0 = time.perf_counter(), agent.tokens, agent.env_seconds
    for _ in range(updates):
        agent.step()
    return agent.tokens - tokens0, agent.env_seconds - env0, time.perf_counter() - t0


def gated_tilt_cost(init: str, seed: int, eval_prompts: int, rounds: int = 4, updates: int = 4) -> tuple[float, float]:
    """Env tokens/s of whole updates with the plain output layer and with the gated tilt (the default from a taught
    --init), measured in alternating rounds of ``updates`` updates each, so that both see the same machine (measured
    one after the other, the first one measured read 0.55x: the machine, not the layer)."""
    agents = {
        gated: Reinforce(
            ReinforceConfig(
                init=init, kl_coef=0.1, seed=seed, eval_prompts=eval_prompts, progress=False, gated_tilt=gated
            )
        )
        for gated in (False, True)
    }
    for agent in agents.values():
        timed_updates(agent, 2)  # (warm-up)
    seconds, tokens = {g: 0.0 for g in agents}, {g: 0 for g in agents}
    for _ in range(rounds):
        for gated, agent in agents.items():
            n, _, elapsed = timed_updates(agent, updates)
            tokens[gated] += n
            seconds[gated] += elapsed
    return tokens[False] / seconds[False], tokens[True] / seconds[True]


def parse_sets(items: list[str]) -> dict[str, object]:
    """``--set key=value`` options of ReinforceConfig, typed from its fields."""
    import dataclasses

    types = {f.name: f.type for f in dataclasses.fields(ReinforceConfig)}
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {item!r}: give KEY=VALUE with KEY one of {', '.join(types)}")
        kind = (types[key] if isinstance(types[key], str) else types[key].__name__).removesuffix(" | None")
        out[key] = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true", "yes")}.get(kind, str)(
            value
        )
    return out


def plot_frontier(rows: list[dict], optima: dict[float, dict[str, float]], ref_score: float, path: Path) -> None:
    """Score against KL: every run's final point, π*'s (KL, score) for each β beside it, and each β's goal as a line.

    A run's objective is score − β·KL, so the points of equal objective lie on a line of slope β: the goal's line,
    score = ref + 0.9·(optimum − ref) + β·KL, is where 90% of the optimum's gain is reached, and a run above its
    β's line meets it. (π* lies on the line of the whole gain, above.)"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from agents.reporting import save_figure

    fig, ax = plt.subplots(figsize=(7.5, 5))
    right = 1.2 * max([r["kl"] for r in rows] + [o["optimum_kl"] for o in optima.values()])
    for i, (beta, o) in enumerate(sorted(optima.items())):
        sel = [r for r in rows if r["beta"] == beta]
        mean = np.mean([r["gain_fraction"] for r in sel])
        label = f"β={beta:g}: {len(sel)} run{'s' * (len(sel) != 1)}, {mean:.1%} of the optimum's gain (mean)"
        ax.scatter([r["kl"] for r in sel], [r["score"] for r in sel], color=f"C{i}", s=28, label=label)
        ax.scatter([o["optimum_kl"]], [o["optimum_score"]], color=f"C{i}", marker="*", s=220, edgecolor="k")
        ax.annotate(f" π*, β={beta:g}", (o["optimum_kl"], o["optimum_score"]), fontsize=8)
        # (drawn near this β's points only: the lines of the three β cross far from them)
        kls = [r["kl"] for r in sel] + [o["optimum_kl"]]
        x = np.array([0.6 * min(kls), min(right, 1.25 * max(kls))])
        goal = ref_score + 0.9 * (o["optimum"] - ref_score)
        ax.plot(x, goal + beta * x, color=f"C{i}", linestyle=":", linewidth=1.5)
    ax.plot([], [], color="0.4", linestyle=":", label="goal: 90% of the optimum's gain (score − β·KL); above it, met")
    ax.scatter([0], [ref_score], color="k", marker="s", label="reference")
    ax.set(
        xlim=(0, right),
        xlabel="KL(π‖π_ref), nats per completion",
        ylabel="mean score on held-out prompts",
        title="reward-KL frontier: runs (dots) against the optimum π* ∝ π_ref·exp(r/β) (stars)",
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def replot(saved: Path, png: Path) -> None:
    """Draw the frontier plot again from a run's saved frontier.json (no training)."""
    try:
        data = json.loads(saved.read_text())
        rows, optima, ref_score = data["rows"], data["optima"], data["reference"]["score_all_samples"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--replot {str(saved)!r}: not a frontier.json that this script wrote ({e})") from None
    plot_frontier(rows, {float(b): o for b, o in optima.items()}, ref_score, png)
    print(f"saved {png} ({len(rows)} runs from {saved})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/pretrain/model", help="pretrained checkpoint (policy start and reference)")
    p.add_argument("--minutes", type=float, default=5.0, help="training time per run (default 5)")
    p.add_argument("--total-env-tokens", type=int, default=0, help="budget per run in env tokens (then no time limit)")
    p.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.2], help="KL coefficients")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds: each β is run once per seed")
    p.add_argument("--baselines", nargs="+", default=["rloo"], help="baselines to run at every β")
    p.add_argument(
        "--extra-baselines", nargs="*", default=[], help="baselines run at the middle β only (e.g. moving_average)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a ReinforceConfig option")
    p.add_argument(
        "--optimum-samples",
        type=int,
        default=51200,
        help="reference completions for the optimum (default 51,200: at β = 0.05 10,240 read it about 0.01 low)",
    )
    p.add_argument("--diagnose", type=int, default=0, help="gradient SNR measurements per run (0: none)")
    p.add_argument(
        "--eval-samples",
        type=int,
        default=256,
        help="completions per evaluation prompt for the final figures and gaps (256 x 32 prompts: the gain fraction's "
        "standard error is under 1 point)",
    )
    p.add_argument(
        "--distinct-k",
        type=int,
        default=64,
        help="distinct-2 is counted over the first K completions of each prompt, the policy's and the reference's",
    )
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts the evaluation and optimum use")
    p.add_argument(
        "--optimum-distinct",
        type=int,
        default=0,
        metavar="N",
        help="estimate π*'s distinct-2 from N completions of each evaluation prompt by each trained policy (0: no)",
    )
    p.add_argument("--frontier", default="", help="PNG file for the score-KL frontier plot")
    p.add_argument(
        "--replot",
        default="",
        metavar="JSON",
        help="draw --frontier again from a run's saved frontier.json (its --out folder's), without training",
    )
    p.add_argument("--out", default="runs/bench_reinforce", help="output folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the throughput probe and the optimum's samples")
    p.add_argument("--throughput-only", action="store_true", help="measure throughput and the env's share, then stop")
    args = p.parse_args()
    if not 1 <= args.distinct_k <= args.eval_samples:
        p.error(f"--distinct-k {args.distinct_k}: give 1 to --eval-samples ({args.eval_samples})")
    if 0 < args.optimum_distinct < 2:  # (its convergence check reads half of each prompt's samples)
        p.error(f"--optimum-distinct {args.optimum_distinct}: give 0 (off) or at least 2 samples per prompt")
    if args.replot:
        if not args.frontier:
            p.error("--replot needs --frontier PNG: the file to draw")
        replot(Path(args.replot), Path(args.frontier))
        return
    out = Path(args.out)
    overrides = parse_sets(args.set)
    if "baseline" in overrides:  # --set baseline=... names the runs' baseline (rows and summaries say which)
        args.baselines, args.extra_baselines = [str(overrides.pop("baseline"))], []

    peak = matmul_flops()
    # Throughput of whole updates, side by side with the ceiling; the env's share of them.
    tps, env_share, probe = throughput(args.init, "sentiment", args.seed, args.eval_prompts)
    _, length_share, _ = throughput(args.init, "length", args.seed, args.eval_prompts)
    flops = 5 * probe.policy.config.flops_per_token() * tps
    print(
        f"throughput: {tps:,.0f} env tokens/s end to end ({probe.precision}); {flops / 1e9:.1f} GFLOP/s useful = "
        f"{flops / peak:.0%} of the float32 matmul ceiling (goal >= 50%)\nenv share of the update's wall time (step "
        f"calls, feedback included): {length_share:.1%} with length feedback (goal <= 5%), {env_share:.1%} with "
        "sentiment (VADER)"
    )
    # The same updates in the other precision, where the hardware has both, measured in this run: what auto's choice
    # (from one timed product: agents.runner.bfloat16_speedup) is worth on the whole loop.
    other = "float32" if probe.precision == "bfloat16" else "bfloat16" if native_bfloat16(probe.device) else None
    if other:
        tps_other = throughput(args.init, "sentiment", args.seed, args.eval_prompts, precision=other)[0]
        auto = "auto's choice"
        if probe.device.type == "cpu":
            auto += f"; its bfloat16 product timed {bfloat16_speedup():.2f}x float32's"
        print(f"{other}: {tps_other:,.0f} env tokens/s; {probe.precision} ({auto}) runs {tps / tps_other:.2f}x as fast")
    plain, gated = gated_tilt_cost(args.init, args.seed, args.eval_prompts)
    print(f"the plain output layer: {plain:,.0f} env tokens/s; with the gated tilt {gated:,.0f} ({gated / plain:.2f}x)")
    if args.throughput_only:
        return

    ref_scores = reference_scores(probe, args.optimum_samples, args.seed)
    optima = {beta: optimum_stats(ref_scores, beta) for beta in args.betas}
    # (distinct-2 depends on how many completions it counts: the reference's and each run's over --distinct-k each)
    ref_eval = final_evaluation(probe.ref, probe, args.eval_samples, args.seed)
    ref_metrics = ref_eval.metrics
    ref_distinct = counted_distinct(ref_eval, len(probe.evaluator.prompts), args.distinct_k)
    ref_score = float(ref_scores.mean())  # over all the samples: the gain's zero, with less noise than 128 samples
    ref_probe = state_probe(probe.ref, probe, seed=args.seed)
    print(
        f"matmul ceiling {peak / 1e9:.1f} GFLOP/s; reference on eval prompts: score {ref_score:+.3f} "
        f"({args.optimum_samples} samples), distinct-2 {ref_distinct:.3f} (over {args.distinct_k} per prompt), "
        f"perplexity under itself {ref_metrics['eval/ref_perplexity']:.1f}; its state tells the score so far with "
        f"R² {ref_probe:.2f}"
    )
    for beta, o in optima.items():
        print(
            f"optimum at β={beta:g}: {o['optimum']:+.3f} [{o['optimum_low']:+.3f}, {o['optimum_high']:+.3f}]; "
            f"π*'s score {o['optimum_score']:+.3f} at KL {o['optimum_kl']:.2f}"
        )

    runs = [(b, base) for b in args.betas for base in args.baselines]
    mid = args.betas[len(args.betas) // 2]
    runs += [(mid, base) for base in args.extra_baselines if base not in args.baselines]
    rows = []
    for beta, baseline in runs:
        for seed in args.seeds:
            name = f"beta{beta}_{baseline}_seed{seed}"
            cfg = ReinforceConfig(
                **{
                    "init": args.init,
                    "kl_coef": beta,
                    "baseline": baseline,
                    "updates": 1_000_000,
                    "total_env_tokens": args.total_env_tokens,
                    "max_minutes": 0.0 if args.total_env_tokens else args.minutes,
                    "eval_interval": 1_000_000,
                    "checkpoint_interval": 1_000_000,
                    "out": str(out / name),
                    "seed": seed,
                    "eval_prompts": args.eval_prompts,
                    "progress": False,
                    **overrides,
                }
            )
            shutil.rmtree(out / name, ignore_errors=True)  # never resume a run made with other options
            agent = Reinforce(cfg)
            snr: list[tuple[int, float]] = []
            if args.diagnose:
                budget = args.total_env_tokens or int(tps * 60 * args.minutes)  # (by time: from the throughput)
                marks = [budget * (i + 0.5) / args.diagnose for i in range(args.diagnose)]

                def diagnose(step: int, agent: Reinforce = agent, marks: list[float] = marks, snr: list = snr) -> None:
                    if marks and agent.tokens >= marks[0]:
                        marks.pop(0)
                        snr.append((agent.tokens, gradient_snr(agent)))

            start = time.perf_counter()
            train(cfg, on_update=diagnose if args.diagnose else None, agent=agent)
            wall = time.perf_counter() - start
            summary = json.loads((out / name / "metrics.json").read_text())
            o = optima[beta]
            policy = load_checkpoint(out / name / "model", expect_tokenizer=agent.tokenizer)[0]
            ev = final_evaluation(policy, agent, args.eval_samples, seed)
            final = ev.metrics
            achieved = final["eval/scores"] - beta * final["eval/kl"]
            gaps = per_prompt_gaps(ev, agent, ref_scores, beta)
            row = dict(
                beta=beta,
                baseline=baseline,
                seed=seed,
                model=str(out / name / "model"),
                updates=summary["updates"],
                env_tokens=summary["env_tokens"],
                wall_s=wall,
                score=final["eval/scores"],
                gain=final["eval/scores"] - ref_score,
                kl=final["eval/kl"],
                distinct2_ratio=counted_distinct(ev, len(agent.evaluator.prompts), args.distinct_k) / ref_distinct,
                ref_perplexity=final["eval/ref_perplexity"],
                achieved=achieved,
                optimum=o["optimum"],
                gain_fraction=(achieved - ref_score) / (o["optimum"] - ref_score),
                prompts_at_90=float(np.mean([g["fraction"] >= 0.9 for g in gaps])),
                mean_gap=float(np.mean([g["gap"] for g in gaps])),
                worst_prompts=sorted(gaps, key=lambda g: -g["gap"])[:3],  # the furthest from their own optimum
                spread=return_spread(ev, len(gaps), beta),
                quantiles=score_quantiles(ev, ref_scores, beta),
                state_probe=state_probe(policy, agent, seed=seed),
                snr=snr,
            )
            if args.optimum_distinct:
                ks = sorted({k for k in (4, 16, args.distinct_k) if k <= args.distinct_k})
                row["distinct2_estimates"] = optimum_distinct(
                    policy, agent, beta, args.optimum_distinct, ks, seed, ev, ref_eval
                )
            rows.append(row)
            print(json.dumps(row))

    print(
        f"\n{'β':>5} {'baseline':>15} {'seed':>4} {'updates':>7} {'tokens':>9} {'score':>7} {'KL':>6} {'dist-2':>7} "
        f"{'ref ppl':>8} {'objective':>10} {'optimum':>8} {'of gain':>8} {'prompts>=90%':>13}"
    )
    for r in rows:
        print(
            f"{r['beta']:>5} {r['baseline']:>15} {r['seed']:>4} {r['updates']:>7} {r['env_tokens']:>9,} "
            f"{r['score']:>+7.3f} {r['kl']:>6.2f} {r['distinct2_ratio']:>6.0%} {r['ref_perplexity']:>8.1f} "
            f"{r['achieved']:>+10.3f} {r['optimum']:>+8.3f} {r['gain_fraction']:>8.0%} {r['prompts_at_90']:>12.0%}"
        )
    print(
        f"\nwhere the gap sits (within each prompt, {args.eval_samples} completions): R = r − β·log π/π_ref; "
        "π* makes R constant, so the gap is about Var(R)/2β\n"
        f"{'β':>5} {'seed':>4} {'std r':>6} {'std β·lr':>8} {'corr':>5} {'std R':>6} {'Var R/2β':>8} {'gap':>6} "
        f"{'optimum from π':>14} {'r quartile 1: π, π*':>20} {'median r: π, π*':>16} {'state R²':>8}"
    )
    for r in rows:
        s, q = r["spread"], r["quantiles"]
        print(
            f"{r['beta']:>5} {r['seed']:>4} {s['std_score']:>6.3f} {s['std_beta_logratio']:>8.3f} {s['corr']:>5.2f} "
            f"{s['std_return']:>6.3f} {s['var_return_over_2beta']:>8.3f} {r['optimum'] - r['achieved']:>6.3f} "
            f"{s['optimum_from_policy']:>+14.3f} {q['policy'][0]:>+11.2f}, {q['optimum'][0]:>+6.2f} "
            f"{q['policy'][1]:>+7.2f}, {q['optimum'][1]:>+6.2f} {r['state_probe']:>8.2f}"
        )
    shared = []
    for beta, baseline in runs:
        sel = [r for r in rows if r["beta"] == beta and r["baseline"] == baseline]
        if len(sel) < 2:
            continue
        policies = [load_checkpoint(r["model"], expect_tokenizer=probe.tokenizer)[0] for r in sel]
        to_opt = float(np.mean([r["optimum"] - r["achieved"] for r in sel])) / beta
        between = seed_distance(policies, probe, max(1, args.eval_samples // 2), args.seed)
        allowed = 0.1 * (optima[beta]["optimum"] - ref_score) / beta  # the goal's 10% of the gain, as KL to π*
        shared.append(
            dict(beta=beta, baseline=baseline, kl_to_optimum=to_opt, kl_between_seeds=between, goal_allows=allowed)
        )
    if shared:
        print(
            "\nwhat the seeds share (KL per completion): the gap is β·KL(π‖π*); half the KL between two seeds is, to "
            "second order, each seed's own noise, and the rest is missed by every seed alike\n"
            f"{'β':>5} {'baseline':>15} {'KL(π‖π*)':>9} {'between seeds':>13} {'noise share':>11} {'goal allows':>11}"
        )
        for d in shared:
            # (a short run can land at or above the estimated optimum: no distance to share out)
            share = f"{d['kl_between_seeds'] / 2 / d['kl_to_optimum']:.0%}" if d["kl_to_optimum"] > 0 else "n/a"
            print(
                f"{d['beta']:>5} {d['baseline']:>15} {d['kl_to_optimum']:>9.2f} {d['kl_between_seeds']:>13.2f} "
                f"{share:>11} {d['goal_allows']:>11.2f}"
            )
    if args.optimum_distinct:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731 (N < k or 2k: no group for each draw)
        print(
            f"\ndistinct-2 over k completions of each prompt: counted, and estimated from {args.optimum_distinct} "
            "samples of each prompt by the trained policy (π* by weights exp(r/β − log π/π_ref); effective samples)\n"
            f"{'β':>5} {'seed':>4} {'k':>3} {'ref':>6} {'ref est.':>8} {'ess':>5} {'π':>6} {'π est.':>6} "
            f"{'π* est.':>7} {'N/2':>6} {'ess':>5} {'π*/ref':>6} {'π* resampled':>12} {'groups/2':>8}"
        )
        for r in rows:
            for d in r["distinct2_estimates"]:
                print(
                    f"{r['beta']:>5} {r['seed']:>4} {d['k']:>3} {d['reference_counted']:>6.3f} {d['reference']:>8.3f} "
                    f"{d['reference_ess_median']:>5.0f} {d['policy_counted']:>6.3f} {d['policy']:>6.3f} "
                    f"{d['optimum']:>7.3f} {d['optimum_half']:>6.3f} {d['optimum_ess_median']:>5.0f} "
                    f"{d['optimum'] / d['reference_counted']:>6.0%} {fmt(d['optimum_resampled']):>12} "
                    f"{fmt(d['optimum_resampled_half']):>8}"
                )
    print("\ngoal: >= 90% of the optimum's gain at every β, distinct-2 >= 90% of the reference's, on every seed")
    for beta, baseline in runs:
        sel = [r for r in rows if r["beta"] == beta and r["baseline"] == baseline]
        fr = np.array([r["gain_fraction"] for r in sel])
        d2 = min(r["distinct2_ratio"] for r in sel)
        ok = fr.min() >= 0.9 and d2 >= 0.9
        est = [r["distinct2_estimates"] for r in sel if "distinct2_estimates" in r]
        own = ""
        if est:  # π*'s against the reference's, at the smallest k (sound) and the evaluation's (a lower bound)
            first, last = ([e[i]["optimum"] / e[i]["reference_counted"] for e in est] for i in (0, -1))
            drawn = [e[-1]["optimum_resampled"] for e in est]  # (None where N < k: no group for each draw)
            resampled = ""
            if None not in drawn:
                ratio = np.mean([v / e[-1]["reference_counted"] for v, e in zip(drawn, est)])
                resampled = f"; drawn from disjoint groups, {ratio:.0%}"
            own = (
                f" (π*'s own distinct-2, estimated from the trained policies: {np.mean(first):.0%} at "
                f"{est[0][0]['k']} completions per prompt; {np.mean(last):.0%} at {est[0][-1]['k']}, a lower bound "
                f"where that nears its {np.median([e[-1]['optimum_ess_median'] for e in est]):.0f} effective samples"
                f"{resampled})"
            )
        print(
            f"β={beta:g} {baseline}: gain fraction mean {fr.mean():.0%} ± {fr.std():.0%} (min {fr.min():.0%}, "
            f"{len(sel)} seeds); distinct-2 min {d2:.0%}: {'met' if ok else 'NOT met'}{own}"
        )
    if args.frontier:
        plot_frontier(rows, {b: optima[b] for b in args.betas}, ref_score, Path(args.frontier))
        print(f"saved {args.frontier}")
    (out / "frontier.json").write_text(
        json.dumps(
            {
                "throughput_tokens_per_s": tps,
                "flop_fraction": flops / peak,
                "env_share_length": length_share,
                "env_share_sentiment": env_share,
                "reference": {
                    **ref_metrics,
                    "distinct_2_counted": ref_distinct,
                    "score_all_samples": ref_score,
                    "state_probe": ref_probe,
                },
                "optima": {str(b): o for b, o in optima.items()},
                "options": overrides,
                "rows": rows,
                "seeds": shared,
            },
            indent=2,
        )
    )
    assert math.isfinite(tps)


if __name__ == "__main__":
    main()
