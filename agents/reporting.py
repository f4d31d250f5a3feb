"""What every alignment run reports at its end: ``metrics.json``, ``samples.md`` (completions of the same held-out
prompts before and after, with their scores), ``learning_curve.png`` and a printed summary.

Plots are PNG files drawn with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from agents.evaluation import Evaluation
from textgym.tokenizer import atomic_write_text


def _md(text: str) -> str:
    """Text for one Markdown table cell: stripped, pipes escaped, on one line."""
    return text.strip().replace("|", "\\|").replace("\n", " ")


def sample_table(before: list[dict[str, Any]], after: list[dict[str, Any]], rows: int = 8, step: int = 1) -> str:
    """A Markdown table of completions of the same prompts before and after alignment, with their scores; every
    ``step``-th row of the evaluation (one per prompt when ``step`` is the samples per prompt)."""
    lines = ["| prompt | before | score | after | score |", "|---|---|---|---|---|"]
    for b, a in list(zip(before, after))[::step][:rows]:
        lines.append(
            f"| {_md(b['prompt'])} | {_md(b['completion'])} | {b['score']:+.2f} | "
            f"{_md(a['completion'])} | {a['score']:+.2f} |"
        )
    return "\n".join(lines)


def report(
    out: str | Path,
    title: str,
    before: Evaluation,
    after: Evaluation,
    samples_per_prompt: int,
    summary: dict[str, Any],
) -> None:
    """Write ``metrics.json``, ``samples.md`` and ``learning_curve.png`` into ``out`` and print the summary.

    Args:
        out: the run folder (it holds ``progress.csv``).
        title: what was trained toward what, e.g. ``"REINFORCE, sentiment"``.
        before, after: the shared evaluation of the initial and the final policy.
        samples_per_prompt: completions per held-out prompt in the evaluations (the table shows one per prompt).
        summary: further JSON-serialisable results for ``metrics.json`` (updates, env tokens, ...).
    """
    out = Path(out)
    b, a = before.metrics, after.metrics
    finite = lambda m: {k: (v if math.isfinite(v) else None) for k, v in m.items()}  # noqa: E731  (strict JSON)
    data = {"before": finite(b), "after": finite(a), **summary}
    atomic_write_text(out / "metrics.json", json.dumps(data, indent=2, allow_nan=False) + "\n")
    table = sample_table(before.rows, after.rows, step=samples_per_prompt)
    line = (
        f"before: mean score {b['eval/scores']:+.3f}   after: {a['eval/scores']:+.3f} "
        f"(KL to reference {a['eval/kl']:.2f} nats/completion; distinct-2 {a['eval/distinct_2']:.3f} vs "
        f"{b['eval/distinct_2']:.3f}; perplexity under the reference {a['eval/ref_perplexity']:.1f} vs "
        f"{b['eval/ref_perplexity']:.1f})"
    )
    atomic_write_text(out / "samples.md", f"# Before and after alignment: {title}\n\n{line}\n\n{table}\n")
    # The final policy's completions, one per held-out prompt, for tables across runs (the benchmark's samples.md)
    atomic_write_text(out / "samples.json", json.dumps(after.rows[::samples_per_prompt], indent=1) + "\n")
    plot_learning_curve(out / "progress.csv", out / "learning_curve.png", title=title)
    print(f"\n{line}\n\n{table}\n\nsaved {out}/model, {out}/samples.md, {out}/learning_curve.png")


def _column(rows: list[dict[str, str]], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(float(r[x]), float(r[y])) for r in rows if r.get(x) not in (None, "") and r.get(y) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_learning_curve(csv_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Score, KL to the reference and perplexity under the reference against env tokens, from a run's
    progress.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(csv_path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = (
        ("objective/scores", "eval/scores", "mean feedback score", "score"),
        ("objective/kl", "eval/kl", "KL(π‖π_ref), nats per completion", "KL to the reference"),
        (None, "eval/ref_perplexity", "perplexity under π_ref", "fluency: perplexity under the reference"),
    )
    for ax, (train_key, eval_key, ylabel, panel_title) in zip(axes, panels):
        for key, label, style, color in (
            (train_key, "training batch", "-", "C0"),
            (eval_key, "held-out prompts", "o-", "C1"),
        ):
            if key is None:
                continue
            xs, ys = _column(rows, "charts/env_tokens", key)
            if xs:
                ax.plot(xs, ys, style, color=color, label=label, alpha=0.85)
        ax.set(xlabel="env tokens", ylabel=ylabel, title=panel_title)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, png_path)


def save_figure(fig: Any, png_path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as a PNG atomically (readers never see half a picture) and close it."""
    import matplotlib.pyplot as plt

    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    tmp.replace(png_path)
    return png_path


def plot_overoptimisation(proxy_csv: str | Path, true_csv: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Gao et al. (2022)'s picture: against KL to the reference, the hidden true score and the reward model's
    (proxy) score of the run aligned on the reward model, beside the true score of the run aligned on the truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(path: str | Path) -> list[dict[str, str]]:
        with Path(path).open(newline="") as fh:
            return list(csv.DictReader(fh))

    proxy, truth = rows(proxy_csv), rows(true_csv)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(*_column(proxy, "eval/kl", "eval/also_scores"), "o-", color="C3", label="aligned on the reward model")
    left.plot(*_column(truth, "eval/kl", "eval/scores"), "s-", color="C2", label="aligned on the true score")
    left.set(xlabel="KL(π‖π_ref), nats per completion", ylabel="hidden true score", title="the truth")
    right.plot(*_column(proxy, "eval/kl", "eval/scores"), "o-", color="C0", label="aligned on the reward model")
    right.plot(*_column(truth, "eval/kl", "eval/also_scores"), "s-", color="C2", label="aligned on the true score")
    right.set(xlabel="KL(π‖π_ref), nats per completion", ylabel="reward model's score", title="the proxy")
    for ax in (left, right):
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return Path(png_path)


# -- the benchmark's report ------------------------------------------------------------------------------------------
def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] == "ok"]


def _by_algorithm(rows: list[dict[str, Any]], beta: float, column: str) -> dict[str, dict[str, Any]]:
    """{algorithm: {task: array of the seeds' ``column``}} at one β."""
    import numpy as np

    out: dict[str, dict[str, list[float]]] = {}
    for r in _ok(rows):
        if r["beta"] == beta:
            out.setdefault(r["algorithm"], {}).setdefault(r["task"], []).append(float(r[column]))
    return {a: {t: np.array(v) for t, v in tasks.items()} for a, tasks in out.items()}


def _ci(point: float, lo: float, hi: float, pct: bool = True) -> str:
    if pct:
        return f"{point:.0%} [{lo:.0%}, {hi:.0%}]"
    return f"{point:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def benchmark_summary(cfg: Any, rows: list[dict[str, Any]], optima: dict[tuple[str, float], dict[str, float]]) -> str:
    """summary.md: per β, the optimum of each task, then per algorithm and task the mean and IQM of the fraction of
    the optimum's gain with stratified-bootstrap 95% intervals across seeds, the raw figures, and the probability of
    improvement between algorithms (:mod:`agents.stats`)."""
    import numpy as np

    from agents import stats

    failed = [r for r in rows if r["status"] != "ok"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    algos = list(dict.fromkeys(r["algorithm"] for r in rows))
    lines = [
        "# Benchmark summary",
        "",
        f"{len(rows)} runs ({len(algos)} algorithms × {len(tasks)} tasks × {len(cfg.betas)} β × "
        f"{len(cfg.seeds)} seeds), "
        f"each {cfg.total_env_tokens:,} env tokens from `{cfg.init}`; {len(failed)} failed. "
        f"Code {rows[0]['code_version'] if rows else '?'}. One row per run in `results.csv`; completions in "
        "`samples.md`.",
        "",
        "**Score scale.** A run's objective is its held-out score − β·KL; its *fraction of the optimum's gain* is "
        "(objective − reference score) / (optimum − reference score), where the optimum β·log E_ref[exp(r/β)] is the "
        "objective of π* ∝ π_ref·exp(r/β), the best any policy can reach: 0 is the pretrained reference, 1 the "
        "optimum. "
        "Intervals are 95% stratified percentile bootstrap intervals across seeds (Agarwal et al., 2021); IQM is the "
        "interquartile mean (with fewer than 4 runs it is the mean).",
    ]
    for beta in cfg.betas:
        lines += ["", f"## β = {beta:g}", "", "### The optimum of each task", ""]
        lines += ["| task | reference score | optimum (95% CI) | π*'s score | π*'s KL |", "|---|---|---|---|---|"]
        for t in tasks:
            o = optima[(t, beta)]
            lines.append(
                f"| {t} | {o['ref_score']:+.3f} | {o['optimum']:+.3f} "
                f"[{o['optimum_low']:+.3f}, {o['optimum_high']:+.3f}] "
                f"| {o['optimum_score']:+.3f} | {o['optimum_kl']:.2f} |"
            )
        frac = _by_algorithm(rows, beta, "optimum_gain_fraction")
        if not frac:
            lines += ["", "No finished runs at this β."]
            continue
        cols = [*tasks, "all tasks"]
        table: dict[str, dict[str, tuple[float, float, float]]] = {}
        means: dict[str, dict[str, tuple[float, float, float]]] = {}
        for a in algos:
            if a not in frac:
                continue
            table[a] = {t: stats.interval({t: frac[a][t]}) for t in tasks if t in frac[a]}
            table[a]["all tasks"] = stats.interval(frac[a])
            means[a] = {"all tasks": stats.interval(frac[a], stats.mean)}
        best = {c: max((table[a][c][0] for a in table if c in table[a]), default=None) for c in cols}

        def cell(a: str, c: str, table: dict = table, best: dict = best) -> str:
            if c not in table[a]:
                return "–"
            text = _ci(*table[a][c])
            return f"**{text}**" if table[a][c][0] == best[c] else text

        lines += ["", "### Fraction of the optimum's gain: IQM [95% CI] (best per column in bold)", ""]
        lines += ["| algorithm | " + " | ".join(cols) + " | mean, all tasks |", "|---" * (len(cols) + 2) + "|"]
        lines += [
            f"| {a} | " + " | ".join(cell(a, c) for c in cols) + f" | {_ci(*means[a]['all tasks'])} |" for a in table
        ]
        widths = [hi - lo for a in table for c in tasks if c in table[a] for _, lo, hi in [table[a][c]]]
        n_seeds = len(cfg.seeds)
        lines += [
            "",
            f"With {n_seeds} seed{'s' if n_seeds != 1 else ''} per cell the per-task intervals are wide: on average "
            f"{np.mean(widths):.0%} of the optimum's gain from end to end (the widest {np.max(widths):.0%}), so "
            "differences smaller than that are not resolved; the 'all tasks' column pools the tasks and is tighter. "
            "More seeds narrow them roughly as 1/√seeds.",
        ]
        raw = ["final_score", "kl", "objective", "distinct_2", "ref_perplexity", "env_tokens_per_s", "wall_seconds"]
        lines += ["", "### Raw figures: mean over seeds", ""]
        lines += [
            "| task | algorithm | score | KL | objective | distinct-2 | ref. perplexity | env tokens/s | wall s |"
        ]
        lines += ["|---" * 9 + "|"]
        for t in tasks:
            for a in algos:
                sel = [r for r in _ok(rows) if r["task"] == t and r["algorithm"] == a and r["beta"] == beta]
                if sel:
                    m = {k: float(np.mean([float(r[k]) for r in sel])) for k in raw}
                    lines.append(
                        f"| {t} | {a} | {m['final_score']:+.3f} | {m['kl']:.2f} | {m['objective']:+.3f} | "
                        f"{m['distinct_2']:.3f} | {m['ref_perplexity']:.1f} | {m['env_tokens_per_s']:,.0f} | "
                        f"{m['wall_seconds']:.0f} |"
                    )
        names = list(table)
        if len(names) > 1:
            lines += ["", "### Probability of improvement P(row > column), averaged over tasks [95% CI]", ""]
            lines += ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
            for x in names:
                entries = [
                    "–" if x == y else _ci(*stats.probability_of_improvement(frac[x], frac[y], reps=500)) for y in names
                ]
                lines.append(f"| {x} | " + " | ".join(entries) + " |")
    lines += [
        "",
        "## Plots",
        "",
        "![score against env tokens](curves_tokens.png)",
        "",
        "![score against wall time](curves_wall.png)",
        "",
        "![score against KL](score_kl.png)",
        "",
        "![performance profile](profile.png)",
    ]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['algorithm']} {r['task']} β={r['beta']} seed {r['seed']}: {r['status']}" for r in failed]
    return "\n".join(lines) + "\n"


def _band(curves: list[tuple[Any, Any]], grid: Any) -> tuple[Any, Any, Any]:
    """Mean over runs of curves interpolated onto ``grid``, and a 95% bootstrap band of that mean."""
    import numpy as np

    ys = np.stack([np.interp(grid, x, y) for x, y in curves])
    rng = np.random.default_rng(0)
    boot = ys[rng.integers(0, len(ys), (500, len(ys)))].mean(axis=1)
    return ys.mean(axis=0), np.quantile(boot, 0.025, axis=0), np.quantile(boot, 0.975, axis=0)


def plot_benchmark(out: Path, cells: list[Any], rows: list[dict[str, Any]], optima: dict, betas: list[float]) -> None:
    """curves_tokens.png and curves_wall.png (held-out score against env tokens and wall time, mean over seeds with a
    95% band), score_kl.png (each run's final score against its KL, with the optimum π*'s point and the line where
    the objective equals the optimum's) and profile.png (performance profile of the fraction of the optimum's gain)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from agents import stats
    from agents.benchmark import read_curve

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    algos = list(dict.fromkeys(r["algorithm"] for r in rows))
    color = {a: f"C{i}" for i, a in enumerate(algos)}
    ok = {(r["algorithm"], r["task"], r["beta"], r["seed"]) for r in _ok(rows)}
    curves = {c.key: read_curve(c.folder) for c in cells if c.key in ok}
    beta = betas[0]  # the curves are drawn at the first β (one figure per β would repeat them)
    for name, axis, label in (("curves_tokens", 0, "env tokens"), ("curves_wall", 2, "wall seconds")):
        fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
        for ax, t in zip(axes[0], tasks):
            for a in algos:
                runs = [np.array(v) for (al, ta, b, _), v in curves.items() if (al, ta, b) == (a, t, beta) and v]
                if not runs:
                    continue
                end = float(np.median([r[-1, axis] for r in runs]))
                grid = np.linspace(0, end, 40)
                mean, lo, hi = _band([(r[:, axis], r[:, 1]) for r in runs], grid)
                ax.plot(grid, mean, color=color[a], label=a)
                ax.fill_between(grid, lo, hi, color=color[a], alpha=0.2)
            ax.axhline(optima[(t, beta)]["optimum_score"], color="k", ls=":", lw=1, label="π*'s score")
            ax.set(xlabel=label, ylabel="held-out score", title=f"{t} (β={beta:g})")
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        save_figure(fig, out / f"{name}.png")

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, t in zip(axes[0], tasks):
        for a in algos:
            pts = [(r["kl"], r["final_score"]) for r in _ok(rows) if r["task"] == t and r["algorithm"] == a]
            if pts:
                ax.scatter(*zip(*pts), color=color[a], label=a, s=22)
        for b in betas:
            o = optima[(t, b)]
            ax.scatter([0], [o["ref_score"]], marker="s", color="k")
            ax.scatter([o["optimum_kl"]], [o["optimum_score"]], marker="*", s=160, color="k")
            kls = np.linspace(0, max(o["optimum_kl"] * 1.5, 1e-3), 20)
            ax.plot(kls, o["optimum"] + b * kls, "k--", lw=0.8)
            ax.annotate(f"π* (β={b:g})", (o["optimum_kl"], o["optimum_score"]), fontsize=8)
        ax.set(xlabel="KL(π‖π_ref), nats per completion", ylabel="held-out score", title=t)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("each run's final point; ■ the reference, ★ π*; dashed: objective = the optimum's", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out / "score_kl.png")

    frac = _by_algorithm(rows, beta, "optimum_gain_fraction")
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    taus = np.linspace(-0.5, 1.0, 61)
    for a in algos:
        if a in frac:
            prof, lo, hi = stats.performance_profile(frac[a], taus)
            ax.plot(taus, prof, color=color[a], label=a)
            ax.fill_between(taus, lo, hi, color=color[a], alpha=0.15)
    ax.set(
        xlabel="τ (fraction of the optimum's gain)",
        ylabel="fraction of runs with score > τ",
        title=f"performance profile (β={beta:g}, all tasks and seeds)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "profile.png")


def benchmark_samples(cells: list[Any], rows: list[dict[str, Any]], per_run: int = 3) -> str:
    """samples.md: for each task and algorithm, completions of the first held-out prompts by its first seed's run."""
    ok = {(r["algorithm"], r["task"], r["beta"], r["seed"]) for r in _ok(rows)}
    lines = ["# Sample completions of held-out prompts, per task and algorithm (first β and seed)", ""]
    seen: set[tuple[str, str]] = set()
    for c in cells:
        path = Path(c.folder) / "samples.json"
        if c.key not in ok or (c.task, c.algorithm) in seen or not path.is_file():
            continue
        seen.add((c.task, c.algorithm))
        lines += [f"## {c.task}, {c.algorithm} (β={c.beta:g}, seed {c.seed})", "", "| prompt | completion | score |"]
        lines += ["|---|---|---|"]
        for s in json.loads(path.read_text())[:per_run]:
            lines.append(f"| {_md(s['prompt'])} | {_md(s['completion'])} | {s['score']:+.2f} |")
        lines.append("")
    return "\n".join(lines)


def write_benchmark_report(out: Path, cfg: Any, cells: list[Any], rows: list[dict[str, Any]], optima: dict) -> None:
    """summary.md, samples.md and the plots of a benchmark (results.csv is written as cells finish)."""
    atomic_write_text(out / "summary.md", benchmark_summary(cfg, rows, optima))
    atomic_write_text(out / "samples.md", benchmark_samples(cells, rows))
    if _ok(rows):
        plot_benchmark(out, cells, rows, optima, list(cfg.betas))
    print(
        f"\nwrote {out}/results.csv, summary.md, samples.md, curves_tokens.png, curves_wall.png, score_kl.png, "
        "profile.png"
    )
