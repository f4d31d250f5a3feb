"""Run logs: a CSV file (``progress.csv``, one row per logged step) and TensorBoard event files.

Metric names follow TRL and CleanRL (``objective/scores``, ``losses/...``, ``charts/SPS``) so curves compare. On resume
the CSV keeps the rows up to the checkpoint's step, and TensorBoard purges later events, so a resumed run's logs read
as one uninterrupted run.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any


class RunLogger:
    """Write metrics to ``<folder>/progress.csv`` and TensorBoard.

    Args:
        folder: the run's log folder.
        resume_step: when resuming, drop logged rows after this step.
        tensorboard: also write TensorBoard events.
    """

    def __init__(self, folder: str | Path, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.folder / "progress.csv"
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.csv_path.is_file():
            with self.csv_path.open(newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= resume_step]
        self.fields: list[str] = ["step"]
        for r in self.rows:
            self._add_fields(r)
        self._rewrite()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.folder), purge_step=None if resume_step is None else resume_step + 1)

    def _add_fields(self, row: dict[str, Any]) -> bool:
        new = [k for k in row if k not in self.fields]
        self.fields.extend(new)
        return bool(new)

    def _rewrite(self) -> None:
        tmp = self.csv_path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=self.fields, restval="")
            w.writeheader()
            w.writerows(self.rows)
        tmp.replace(self.csv_path)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at ``step`` (a new metric name widens the CSV, as SB3's CSV logger does)."""
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        if self._add_fields(row):
            self._rewrite()
        else:
            with self.csv_path.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=self.fields, restval="").writerow(row)
        if self.writer is not None:
            for k, v in metrics.items():
                if math.isfinite(float(v)):
                    self.writer.add_scalar(k, float(v), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
