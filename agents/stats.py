"""Aggregate statistics for few-seed RL results, after Agarwal et al. (2021), "Deep Reinforcement Learning at the Edge
of the Statistical Precipice" (the ``rliable`` library), computed with NumPy and SciPy.

Scores come as ``{task: array of per-seed scores}`` for one algorithm (normalised so tasks compare: here, the
fraction of the KL-regularised optimum's gain). The point estimates are the mean and the interquartile mean (IQM: the
mean of the middle 50% of all runs, ``scipy.stats.trim_mean(x, 0.25)``, as rliable computes it); their 95%
confidence intervals come from the *stratified* percentile bootstrap: each replicate resamples the seeds within each
task with replacement, so every task keeps its weight. Why not rliable itself: its last release (1.2.0) pulls
``arch`` 7, which fails to import under pandas 3; the statistics are a few lines each.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import trim_mean

Scores = dict[str, np.ndarray]
"""Per task, the scores of one algorithm's seeds."""


def iqm(x: np.ndarray) -> float:
    """Interquartile mean of all the values in ``x``."""
    return float(trim_mean(np.ravel(x), 0.25))


def mean(x: np.ndarray) -> float:
    return float(np.mean(x))


def _resample(scores: Scores, rng: np.random.Generator) -> Scores:
    """One stratified bootstrap replicate: each task's seeds drawn with replacement."""
    return {t: s[rng.integers(0, len(s), len(s))] for t, s in scores.items()}


def _pooled(scores: Scores) -> np.ndarray:
    return np.concatenate([np.ravel(s) for s in scores.values()])


def interval(
    scores: Scores, statistic=iqm, reps: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(point estimate, low, high): ``statistic`` of the runs of all tasks pooled, with a stratified percentile
    bootstrap ``level`` interval."""
    rng = np.random.default_rng(seed)
    point = statistic(_pooled(scores))
    reps_values = np.array([statistic(_pooled(_resample(scores, rng))) for _ in range(reps)])
    lo, hi = np.quantile(reps_values, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def _prob_greater(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) for one draw from each, ties counting one half (the Mann-Whitney U statistic over n·m)."""
    diff = np.subtract.outer(np.ravel(x), np.ravel(y))
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def probability_of_improvement(
    x: Scores, y: Scores, reps: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """P(X > Y) averaged over the tasks both have (rliable's average probability of improvement), with a stratified
    bootstrap interval (seeds of both resampled within each task)."""
    tasks = [t for t in x if t in y]
    if not tasks:
        raise ValueError("the two algorithms share no task to compare on")
    rng = np.random.default_rng(seed)

    def stat(a: Scores, b: Scores) -> float:
        return float(np.mean([_prob_greater(a[t], b[t]) for t in tasks]))

    point = stat(x, y)
    values = np.array([stat(_resample(x, rng), _resample(y, rng)) for _ in range(reps)])
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return point, float(lo), float(hi)


def performance_profile(
    scores: Scores, taus: np.ndarray, reps: int = 500, seed: int = 0, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fraction of runs (all tasks and seeds) whose score exceeds each τ, with stratified bootstrap bands:
    (profile, low, high), each of ``taus``' shape."""

    def profile(s: Scores) -> np.ndarray:
        pooled = _pooled(s)
        return (pooled[None, :] > taus[:, None]).mean(axis=1)

    rng = np.random.default_rng(seed)
    values = np.stack([profile(_resample(scores, rng)) for _ in range(reps)])
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return profile(scores), lo, hi
