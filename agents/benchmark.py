"""``textgym benchmark``: every algorithm on every task of the suite, at each β and seed, under one env-token budget.

A *cell* is one (algorithm, task, β, seed). :func:`run_cell` is a pure function from a cell to its row of
``results.csv``: same cell, same row (all but the wall-clock columns), whichever process or machine runs it. Each
cell trains in its own folder through the algorithm's usual ``train`` (so each has the run loop's checkpoints,
progress.csv, samples and learning curve), with one torch thread, and a cell already finished is not run again.
Cells run in local worker processes (``--workers N``) or as Ray tasks (``--backend ray``: the cluster at
``RAY_ADDRESS``, or a local instance), and :mod:`agents.reporting` turns the rows into ``summary.md`` and plots.

Every score is also put on one scale, the fraction of the *KL-regularised optimum's gain* over the reference:

    optimum(β) = mean over held-out prompts x of  β · log E_{y ~ π_ref(x)} [exp(r(x, y) / β)]

is the objective E[r] − β·KL(π‖π_ref) of π* ∝ π_ref·exp(r/β), the best any policy can do; a run's objective
(score − β·KL) is reported as (objective − reference score) / (optimum − reference score): 0 is the reference, 1 is
the optimum. The optimum is estimated once per (task, reference) from ``optimum_samples`` reference completions of
the held-out prompts, with a bootstrap interval, and cached.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import textgym
from textgym.tasks import SUITE, get_task
from textgym.tokenizer import atomic_write_text

# A benchmark's algorithm names: each is a `textgym train --algo` algorithm with some options fixed. REINFORCE runs
# with each of its baselines, so the table shows what the baseline is worth, and with the short runs' options (64
# completions per update, 4 per prompt, constant Adam 3e-4, no gated tilt: agents.reinforce.SHORT_RUN, spelled out
# so that this module does not import torch): the default suite's 80k env tokens buy 60 updates of 64, not 16 of 256.
_SHORT_RUN = {"num_envs": 64, "lr": 3e-4, "lr_schedule": "constant", "gated_tilt": False}
BENCH_ALGORITHMS: dict[str, tuple[str, dict[str, Any]]] = {
    "reinforce-rloo": ("reinforce", {"baseline": "rloo", **_SHORT_RUN, "rloo_k": 4}),
    "reinforce-moving-average": ("reinforce", {"baseline": "moving_average", **_SHORT_RUN}),
    "reinforce-value": ("reinforce", {"baseline": "value", **_SHORT_RUN}),
    "ppo": ("ppo", {}),
    "a2c": ("a2c", {}),
    "recurrent-ppo": ("recurrent-ppo", {}),
    "maskable-ppo": ("maskable-ppo", {}),
}

# Options the benchmark sets for every cell (a per-algorithm option may not change them: they define the cell).
CONTROLLED = (
    "reward",
    "init",
    "ref",
    "prompts",
    "corpus",
    "max_new_tokens",
    "total_env_tokens",
    "max_minutes",
    "kl_coef",
    "target_kl",
    "eval_prompts",
    "eval_samples",
    "eval_interval",
    "checkpoint_interval",
    "updates",
    "seed",
    "out",
    "progress",
    "torch_threads",
    "device",
)

RESULT_COLUMNS = (
    "algorithm",
    "task",
    "beta",
    "seed",
    "budget",
    "env_tokens",
    "final_score",
    "best_score",
    "kl",
    "distinct_2",
    "ref_perplexity",
    "objective",
    "ref_score",
    "optimum",
    "optimum_gain_fraction",
    "wall_seconds",
    "env_tokens_per_s",
    "status",
    "config_hash",
    "code_version",
)
"""The columns of results.csv, one row per cell."""

TIMING_COLUMNS = ("wall_seconds", "env_tokens_per_s")
"""The columns that depend on the machine and its load; every other column is a function of the cell."""


@dataclass
class BenchmarkConfig:
    """A benchmark: which cells to run, and how (a TOML file's top-level keys have these names)."""

    algorithms: list[str] = field(default_factory=lambda: list(BENCH_ALGORITHMS))
    """Algorithms (reinforce-rloo, reinforce-moving-average, reinforce-value, ppo, a2c, recurrent-ppo,
    maskable-ppo)."""
    tasks: list[str] = field(default_factory=lambda: list(SUITE))
    """Task ids of the suite."""
    betas: list[float] = field(default_factory=lambda: [0.1])
    """KL coefficients β (fixed during each run)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Seeds: each cell is run once per seed."""
    total_env_tokens: int = 80_000
    """The env-token budget of every run (generated tokens, the same for all algorithms)."""
    init: str = ""
    """Pretrained checkpoint: every run's initial policy and its reference (empty: pretrain one with
    --pretrain-preset into <out>/pretrain first)."""
    pretrain_preset: str = "cpu"
    """Preset of the pretraining when --init is empty."""
    eval_prompts: int = 32
    """Held-out prompts of each task (its last ones) that runs are evaluated on."""
    eval_samples: int = 4
    """Completions per evaluation prompt."""
    evals: int = 8
    """Evaluations per run (the points of the learning curves)."""
    optimum_samples: int = 10_240
    """Reference completions (over the evaluation prompts) that estimate the KL-regularised optimum."""
    workers: int = 2
    """Cells run at once (worker processes of one torch thread each; Ray: tasks in flight)."""
    backend: str = "local"
    """'local' (worker processes on this machine) or 'ray' (Ray tasks; RAY_ADDRESS or a local instance)."""
    out: str = "runs/benchmark"
    """Output folder: cells/, optimum/, results.csv, summary.md, samples.md and the plots."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per algorithm, options of its `textgym train` config (a TOML table [options.ppo] with lr = 2e-4, ...)."""

    def __post_init__(self) -> None:
        for name in ("algorithms", "tasks", "betas", "seeds"):
            if not isinstance(getattr(self, name), (list, tuple)) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty list, got {getattr(self, name)!r}")
        for a in self.algorithms:
            if a not in BENCH_ALGORITHMS:
                raise ValueError(f"unknown algorithm {a!r}; known: {', '.join(BENCH_ALGORITHMS)}")
        for t in self.tasks:
            get_task(t)
        for b in self.betas:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not b > 0:
                raise ValueError(f"β {b!r} is not valid: the optimum needs β > 0 (give numbers such as 0.1)")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise ValueError(f"seed {s!r} is not valid: give integers >= 0")
        for name in ("total_env_tokens", "eval_prompts", "eval_samples", "evals", "optimum_samples", "workers"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend {self.backend!r} is not one of 'local', 'ray'")
        if self.backend == "ray" and importlib.util.find_spec("ray") is None:  # (said now, not after the sampling)
            raise ValueError("backend 'ray' needs Ray: pip install 'textgym[ray]' (or pip install ray)")
        from agents.pretrain import PRESETS

        if not self.init and self.pretrain_preset not in PRESETS:
            raise ValueError(f"unknown pretrain_preset {self.pretrain_preset!r}; presets: {', '.join(PRESETS)}")
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a table of tables ([options.ppo] ...), got {self.options!r}")
        for algo, opts in self.options.items():
            if algo not in BENCH_ALGORITHMS:
                raise ValueError(f"options for unknown algorithm {algo!r}; known: {', '.join(BENCH_ALGORITHMS)}")
            if not isinstance(opts, dict):
                raise ValueError(f"options.{algo} must be a table of option = value, got {opts!r}")
            cls = algorithm_config_class(algo)
            names = {f.name for f in dataclasses.fields(cls)}
            for key in opts:
                if key in CONTROLLED:
                    raise ValueError(
                        f"option {algo}.{key} is set by the benchmark for every cell (its own keys: algorithms, "
                        "tasks, betas, seeds, total_env_tokens, init, eval_prompts, eval_samples); remove it"
                    )
                if key not in names:
                    valid = sorted(names - set(CONTROLLED))
                    raise ValueError(f"unknown option {algo}.{key}; {algo}'s options: {', '.join(valid)}")
            try:  # the config checks its values (the cells' other fields are the benchmark's, checked above)
                cls(**{**BENCH_ALGORITHMS[algo][1], **opts})
            except (TypeError, ValueError) as e:
                raise ValueError(f"options.{algo}: {e}") from None


QUICK = dict(
    algorithms=list(BENCH_ALGORITHMS),
    tasks=["textgym/Sentiment-v0"],
    seeds=[0, 1],
    total_env_tokens=4000,
    eval_prompts=16,
    evals=2,
    pretrain_preset="tiny",
)
"""``--quick``: a smoke run of every algorithm on one task, two seeds, a tiny budget (a few minutes on 2 cores; it
pretrains the tiny preset unless --init is given)."""


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A benchmark TOML file's keys, or a ValueError naming an unknown key and the valid ones."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"benchmark config {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"benchmark config {str(path)!r} is not valid TOML: {e}") from None
    valid = [f.name for f in dataclasses.fields(BenchmarkConfig)]
    for key in data:
        if key not in valid:
            raise ValueError(f"unknown key {key!r} in {str(path)!r}; valid keys: {', '.join(valid)}")
    return data


def algorithm_config_class(algo: str) -> type:
    from agents.baselines import algorithms

    return algorithms()[BENCH_ALGORITHMS[algo][0]][0]


# -- cells ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One run of the benchmark: everything its row depends on."""

    algorithm: str
    task: str
    beta: float
    seed: int
    config: dict[str, Any]
    """The algorithm's full config (the keyword arguments of its config class)."""
    ref_score: float
    optimum: float

    @property
    def key(self) -> tuple[str, str, float, int]:
        return (self.algorithm, self.task, self.beta, self.seed)

    @property
    def folder(self) -> str:
        return self.config["out"]

    @property
    def config_hash(self) -> str:
        """What the cell computes, hashed: the algorithm, the task and the whole config (its folder left out)."""
        # (the prompt file's path is left out too: it lies in the benchmark's folder, and the task fixes its text)
        cfg = {k: v for k, v in self.config.items() if k not in ("out", "progress", "prompts")}
        text = json.dumps([self.algorithm, self.task, self.beta, self.seed, cfg], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def code_version() -> str:
    """textgym's version and, in a git checkout, its commit (with '+' when the tree has changes)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty=+", "--abbrev=10"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{textgym.__version__}+{commit}" if commit else textgym.__version__


def _eval_points(rows: list[dict[str, str]]) -> list[tuple[float, float, float]]:
    """(env tokens, score, wall seconds) at each evaluation logged in progress.csv."""
    points = []
    for r in rows:
        if r.get("eval/scores") not in (None, "") and r.get("charts/env_tokens") not in (None, ""):
            tokens = float(r["charts/env_tokens"])
            sps = float(r["charts/SPS"]) if r.get("charts/SPS") not in (None, "") else math.nan
            wall = tokens / sps if tokens and sps > 0 else 0.0
            points.append((tokens, float(r["eval/scores"]), wall))
    return points


def read_curve(folder: str | Path) -> list[tuple[float, float, float]]:
    """A cell's learning curve: (env tokens, held-out score, wall seconds) at each evaluation."""
    import csv

    path = Path(folder) / "progress.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return _eval_points(list(csv.DictReader(fh)))


def _failed_row(cell: Cell, status: str, wall: float) -> dict[str, Any]:
    row = {c: math.nan for c in RESULT_COLUMNS}
    row.update(
        algorithm=cell.algorithm,
        task=cell.task,
        beta=cell.beta,
        seed=cell.seed,
        budget=cell.config["total_env_tokens"],
        ref_score=cell.ref_score,
        optimum=cell.optimum,
        wall_seconds=wall,
        status=status,
        config_hash=cell.config_hash,
        code_version=code_version(),
    )
    return row


def run_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell in its folder (resuming its own checkpoint) and return its row; writes ``row.json`` there.

    Pure in the sense that matters: the row depends only on the cell (and the code), not on the process, the order
    or the other cells; only ``wall_seconds`` and ``env_tokens_per_s`` depend on the machine. The training log goes
    to ``<folder>/log.txt``.
    """
    import torch

    from agents.baselines import algorithms

    torch.set_num_threads(1)  # one core per cell: cells are the parallelism
    folder = Path(cell.folder)
    marker = folder / "cell.json"
    if folder.exists() and (not marker.is_file() or json.loads(marker.read_text())["config_hash"] != cell.config_hash):
        shutil.rmtree(folder)  # another cell's (or a changed config's) leftovers: never resume from them
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, json.dumps({"config_hash": cell.config_hash, **asdict(cell)}, indent=2) + "\n")
    cls, train = algorithms()[BENCH_ALGORITHMS[cell.algorithm][0]]
    start = time.perf_counter()
    with (folder / "log.txt").open("a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            final = train(cls(**cell.config))
        except Exception as e:  # a failed cell is a row with its status, not the end of the benchmark
            traceback.print_exc(file=log)
            return _failed_row(cell, f"failed: {type(e).__name__}: {e}", time.perf_counter() - start)
    wall = time.perf_counter() - start
    summary = json.loads((folder / "metrics.json").read_text())
    curve = read_curve(folder)
    score, kl = final["eval/scores"], final["eval/kl"]
    objective = score - cell.beta * kl
    possible = cell.optimum - cell.ref_score
    row = {
        "algorithm": cell.algorithm,
        "task": cell.task,
        "beta": cell.beta,
        "seed": cell.seed,
        "budget": cell.config["total_env_tokens"],
        "env_tokens": summary["env_tokens"],
        "final_score": score,
        "best_score": max(s for _, s, _ in curve[1:]) if len(curve) > 1 else score,
        "kl": kl,
        "distinct_2": final["eval/distinct_2"],
        "ref_perplexity": final["eval/ref_perplexity"],
        "objective": objective,
        "ref_score": cell.ref_score,
        "optimum": cell.optimum,
        "optimum_gain_fraction": (objective - cell.ref_score) / possible if possible > 0 else math.nan,
        "wall_seconds": wall,
        "env_tokens_per_s": curve[-1][0] / curve[-1][2] if curve and curve[-1][2] > 0 else math.nan,
        "status": "ok",
        "config_hash": cell.config_hash,
        "code_version": code_version(),
    }
    atomic_write_text(folder / "row.json", json.dumps(row, indent=2) + "\n")
    return row


def finished_row(cell: Cell) -> dict[str, Any] | None:
    """The cell's saved row when it finished with this very config, else None (so it runs, or runs again)."""
    path = Path(cell.folder) / "row.json"
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    return row if row.get("status") == "ok" and row.get("config_hash") == cell.config_hash else None


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def run_local(cells: Sequence[Cell], workers: int, done: Callable[[Cell, dict[str, Any]], None]) -> None:
    """Run ``cells`` in ``workers`` fresh processes (spawned: no state shared with this one); ``done`` is called as
    each finishes."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        futures = {pool.submit(run_cell, c): c for c in cells}
        for fut in as_completed(futures):
            done(futures[fut], fut.result())


def run_ray(cells: Sequence[Cell], workers: int, done: Callable[[Cell, dict[str, Any]], None]) -> None:
    """Run ``cells`` as Ray tasks of one CPU each, at most ``workers`` in flight: on the cluster at ``RAY_ADDRESS``,
    the instance this process already joined, or a new local one. On a cluster of several machines, ``--out`` must
    be a folder they share (each cell writes its folder where it runs)."""
    try:
        import ray
    except ModuleNotFoundError:
        raise ValueError("backend 'ray' needs Ray: pip install 'textgym[ray]' (or pip install ray)") from None
    started = False
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address or None, num_cpus=None if address else workers, log_to_driver=False)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(run_cell)
        pending: dict[Any, Cell] = {}
        queue = list(cells)
        while queue or pending:
            while queue and len(pending) < workers:
                c = queue.pop(0)
                pending[remote.remote(c)] = c
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


# -- the KL-regularised optimum ------------------------------------------------------------------------------------
def log_mean_exp(z: np.ndarray) -> np.ndarray:
    """log mean exp(z) over the last axis, computed without overflow."""
    m = z.max(axis=-1, keepdims=True)
    return m[..., 0] + np.log(np.exp(z - m).mean(axis=-1))


def optimum_stats(scores: np.ndarray, beta: float, reps: int = 1000, seed: int = 0) -> dict[str, float]:
    """From reference scores of shape (prompts, samples): the optimum β·log E_ref[exp(r/β)] averaged over prompts,
    its 95% bootstrap interval (samples resampled within each prompt), and π*'s own E[r] and KL(π*‖π_ref), by
    self-normalised importance weights w ∝ exp(r/β) on the same samples.

    The interval is the basic (reverse-percentile) bootstrap, [2θ̂ − q97.5, 2θ̂ − q2.5]. The plug-in estimate is
    biased low (log of a mean: Jensen), most at small β where a few high-scoring samples carry the mean, and the
    resamples repeat that bias, so the plain percentile interval sits below θ̂ and misses the true value; the basic
    interval reflects the bias to the other side (tests/test_benchmark.py: coverage of a rare coin's optimum)."""
    z = scores / beta
    lme = log_mean_exp(z)
    w = np.exp(z - z.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    opt_score = (w * scores).sum(axis=1)
    rng = np.random.default_rng(seed)
    n, m = scores.shape
    boot = np.array(
        [beta * log_mean_exp(np.take_along_axis(z, rng.integers(0, m, (n, m)), axis=1)).mean() for _ in range(reps)]
    )
    estimate = float(beta * lme.mean())
    q_low, q_high = np.quantile(boot, [0.025, 0.975])
    return {
        "optimum": estimate,
        "optimum_low": float(2 * estimate - q_high),
        "optimum_high": float(2 * estimate - q_low),
        "optimum_score": float(opt_score.mean()),
        "optimum_kl": float((opt_score / beta - lme).mean()),
        "ref_score": float(scores.mean()),
    }


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def sample_reference_scores(
    ref: Any, tokenizer: Any, prompts: Any, reward: str, per_prompt: int, max_new_tokens: int, seed: int
) -> np.ndarray:
    """Scores of ``per_prompt`` completions of each of ``prompts`` by the reference LM, shape (prompts, per_prompt),
    sampled and scored through the env by the shared evaluation: the samples the optimum is estimated from."""
    from agents.evaluation import Evaluator

    rows = Evaluator(prompts, reward, tokenizer, per_prompt, max_new_tokens, seed=seed)(ref, ref).rows
    return np.array([r["score"] for r in rows]).reshape(len(prompts), per_prompt)


def reference_scores(cfg: BenchmarkConfig, task_id: str, prompts_file: Path, cache: Path) -> np.ndarray:
    """Scores of ``optimum_samples`` reference completions of the task's evaluation prompts, shape (prompts,
    samples per prompt): sampled once per (task, reference checkpoint, sampling settings) and cached in ``cache``."""
    import torch

    from agents.checkpoint import load_checkpoint
    from agents.evaluation import split_held_out
    from textgym.prompts import load_prompts

    task = get_task(task_id)
    per_prompt = math.ceil(cfg.optimum_samples / cfg.eval_prompts)
    ref_hash = _file_hash(Path(cfg.init) / "model.safetensors")
    key = f"{task_id.split('/')[-1]}-ref{ref_hash}-p{cfg.eval_prompts}x{per_prompt}-t{task.max_new_tokens}"
    path = cache / f"{key}.json"
    if path.is_file():
        return np.array(json.loads(path.read_text())["scores"])
    print(f"sampling {cfg.eval_prompts} x {per_prompt} reference completions of {task_id} for the optimum")
    torch.set_num_threads(max(1, min(cfg.workers, os.cpu_count() or 1)))
    ref, tokenizer, _ = load_checkpoint(cfg.init)
    held_out = split_held_out(load_prompts(prompts_file), cfg.eval_prompts)[1]
    scores = sample_reference_scores(ref, tokenizer, held_out, task.reward, per_prompt, task.max_new_tokens, 12345)
    atomic_write_text(path, json.dumps({"task": task_id, "reference": cfg.init, "scores": scores.tolist()}) + "\n")
    return scores


# -- the benchmark ---------------------------------------------------------------------------------------------------
def task_slug(task_id: str) -> str:
    return task_id.split("/")[-1]


def make_cells(cfg: BenchmarkConfig, optima: dict[tuple[str, float], dict[str, float]], prompts: dict[str, Path]):
    """Every (algorithm, task, β, seed) cell of the benchmark, with its full config, built (and so checked) now."""
    cells = []
    out = Path(cfg.out)
    for task_id in cfg.tasks:
        task = get_task(task_id)
        for algo in cfg.algorithms:
            name, fixed = BENCH_ALGORITHMS[algo]
            cls = algorithm_config_class(algo)
            base = {**fixed, **cfg.options.get(algo, {})}
            for beta in cfg.betas:
                for seed in cfg.seeds:
                    folder = out / "cells" / task_slug(task_id) / algo / f"beta{beta:g}-seed{seed}"
                    config = cls(
                        **base,
                        reward=task.reward,
                        init=cfg.init,
                        prompts=str(prompts[task_id]),
                        max_new_tokens=task.max_new_tokens,
                        total_env_tokens=cfg.total_env_tokens,
                        kl_coef=beta,
                        eval_prompts=cfg.eval_prompts,
                        eval_samples=cfg.eval_samples,
                        seed=seed,
                        out=str(folder),
                        progress=False,
                    )
                    config = dataclasses.replace(config, **_intervals(config, cfg))
                    opt = optima[(task_id, beta)]
                    cells.append(Cell(algo, task_id, beta, seed, asdict(config), opt["ref_score"], opt["optimum"]))
    return cells


def _intervals(config: Any, cfg: BenchmarkConfig) -> dict[str, int]:
    """Evaluation and checkpoint intervals, in the algorithm's updates, for about ``cfg.evals`` evaluations."""
    if hasattr(config, "n_steps"):  # SB3: num_envs x n_steps env tokens per update
        per_update = config.num_envs * config.n_steps
    else:  # REINFORCE: num_envs completions, at most max_new_tokens each (about 0.8 of that on the suite)
        per_update = config.num_envs * config.max_new_tokens * 0.8
    interval = max(1, round(cfg.total_env_tokens / per_update / cfg.evals))
    extra = {"torch_threads": 1} if hasattr(config, "torch_threads") else {}
    return {"eval_interval": interval, "checkpoint_interval": interval, **extra}


def run_benchmark(cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    """Run (or resume) the benchmark; write results.csv, summary.md, samples.md and the plots; return the rows."""
    from tqdm import tqdm

    from agents.reporting import write_benchmark_report

    out = Path(cfg.out)
    if cfg.init and not (Path(cfg.init) / "model.safetensors").is_file():
        raise ValueError(f"--init {cfg.init!r} is not a checkpoint folder (it has no model.safetensors)")
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.init:
        from agents.pretrain import preset, pretrain

        print(f"== pretraining the reference LM (preset {cfg.pretrain_preset!r}) -> {out}/pretrain")
        pretrain(preset(cfg.pretrain_preset, out=str(out / "pretrain")))
        cfg = dataclasses.replace(cfg, init=str(out / "pretrain" / "model"))

    prompts = {t: get_task(t).write_prompts(out / "tasks" / f"{task_slug(t)}.jsonl") for t in cfg.tasks}
    optima = {}
    for task_id in cfg.tasks:
        scores = reference_scores(cfg, task_id, prompts[task_id], out / "optimum")
        for beta in cfg.betas:
            optima[(task_id, beta)] = optimum_stats(scores, beta)
    atomic_write_text(
        out / "optimum.json",
        json.dumps([{"task": t, "beta": b, **v} for (t, b), v in optima.items()], indent=2) + "\n",
    )
    cells = make_cells(cfg, optima, prompts)
    rows: dict[tuple, dict[str, Any]] = {c.key: r for c in cells if (r := finished_row(c)) is not None}
    todo = [c for c in cells if c.key not in rows]
    # The slowest cells first, so that the last minutes are not one long cell on one worker.
    cost = {"reinforce": 1, "a2c": 2, "recurrent-ppo": 3, "ppo": 4, "maskable-ppo": 5}
    todo.sort(key=lambda c: -cost[BENCH_ALGORITHMS[c.algorithm][0]])
    print(f"{len(cells)} cells: {len(rows)} finished before, {len(todo)} to run ({cfg.backend}, {cfg.workers} workers)")
    bar = tqdm(total=len(cells), initial=len(rows), unit="cell", desc="benchmark", file=sys.stdout)

    def done(cell: Cell, row: dict[str, Any]) -> None:
        rows[cell.key] = row
        bar.update(1)
        what = f"{cell.algorithm} {task_slug(cell.task)} β={cell.beta:g} seed {cell.seed}"
        if row["status"] == "ok":
            bar.write(
                f"{what}: score {row['final_score']:+.3f}, KL {row['kl']:.2f}, "
                f"{row['optimum_gain_fraction']:.0%} of the optimum's gain, {row['wall_seconds']:.0f} s"
            )
        else:
            bar.write(f"{what}: {row['status']} (see {cell.folder}/log.txt)")
        sys.stdout.flush()
        write_results(out / "results.csv", [rows[c.key] for c in cells if c.key in rows])

    try:
        if todo:
            (run_ray if cfg.backend == "ray" else run_local)(todo, cfg.workers, done)
    finally:
        bar.close()
    ordered = [rows[c.key] for c in cells]
    write_results(out / "results.csv", ordered)
    write_benchmark_report(out, cfg, cells, ordered, optima)
    return ordered


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """results.csv, tidy (one row per run, the columns of RESULT_COLUMNS), written atomically."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RESULT_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
