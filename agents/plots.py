"""Learning-curve plots (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import csv
from pathlib import Path


def _column(rows: list[dict[str, str]], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(float(r[x]), float(r[y])) for r in rows if r.get(x) not in (None, "") and r.get(y) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_learning_curve(csv_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Score and KL to the reference against env tokens, from a run's progress.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with Path(csv_path).open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    panels = (
        ("objective/scores", "eval/scores", "mean feedback score", "score"),
        ("objective/kl", "eval/kl", "KL(π‖π_ref), nats per completion", "KL to the reference"),
    )
    for ax, (train_key, eval_key, ylabel, panel_title) in zip(axes, panels):
        for key, label, style in ((train_key, "training batch", "-"), (eval_key, "held-out prompts", "o-")):
            xs, ys = _column(rows, "charts/env_tokens", key)
            if xs:
                ax.plot(xs, ys, style, label=label, alpha=0.85)
        ax.set(xlabel="env tokens", ylabel=ylabel, title=panel_title)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
