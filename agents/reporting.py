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


def sample_table(before: list[dict[str, Any]], after: list[dict[str, Any]], rows: int = 8, step: int = 1) -> str:
    """A Markdown table of completions of the same prompts before and after alignment, with their scores; every
    ``step``-th row of the evaluation (one per prompt when ``step`` is the samples per prompt)."""
    lines = ["| prompt | before | score | after | score |", "|---|---|---|---|---|"]
    for b, a in list(zip(before, after))[::step][:rows]:
        clean = lambda s: s.strip().replace("|", "\\|").replace("\n", " ")  # noqa: E731
        lines.append(
            f"| {clean(b['prompt'])} | {clean(b['completion'])} | {b['score']:+.2f} | "
            f"{clean(a['completion'])} | {a['score']:+.2f} |"
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
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    tmp.replace(png_path)  # readers never see half a picture
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
