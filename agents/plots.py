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
    x = "charts/env_tokens"
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, style in (("objective/scores", "training batch", "-"), ("eval/scores", "held-out prompts", "o-")):
        xs, ys = _column(rows, x, key)
        if xs:
            ax1.plot(xs, ys, style, label=label, alpha=0.85)
    ax1.set(xlabel="env tokens", ylabel="mean feedback score", title="score")
    ax1.legend()
    for key, label, style in (("objective/kl", "training batch", "-"), ("eval/kl", "held-out prompts", "o-")):
        xs, ys = _column(rows, x, key)
        if xs:
            ax2.plot(xs, ys, style, label=label, alpha=0.85)
    ax2.set(xlabel="env tokens", ylabel="KL(π‖π_ref), nats per completion", title="KL to the reference")
    ax2.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
