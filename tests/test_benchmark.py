"""The task suite and `textgym benchmark`: tiny suites end to end, resume after a kill, bad configs, Ray."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

import textgym
from agents import stats
from agents.benchmark import RESULT_COLUMNS, TIMING_COLUMNS, BenchmarkConfig, optimum_stats, run_benchmark
from agents.cli import main
from textgym.feedback import make_feedback
from textgym.tasks import SUITE

ROOT = Path(__file__).resolve().parent.parent


# -- the task suite ------------------------------------------------------------------------------------------------
def test_suite_ids_fix_their_task_and_document_it():
    for task_id, task in SUITE.items():
        assert task_id in textgym.ENV_IDS  # (so the env checkers run on it: test_env.py)
        spec = gym.spec(task_id)
        assert spec.reward_threshold == task.reward_threshold
        env = gym.make(task_id)
        parts = lambda f: [(c.name, c.weight) for c in f.components]  # noqa: E731
        assert parts(env.unwrapped.task.feedback) == parts(make_feedback(task.reward))
        assert len(env.unwrapped.task.prompts) >= 200 and env.unwrapped.task.max_new_tokens == task.max_new_tokens
        doc = type(env.unwrapped).__doc__
        assert all(h in doc for h in ("## Description", "## Rewards", "## Solved", "## Version History"))
        # the batched env fixes the same task
        envs = gym.make_vec(task_id, num_envs=2, vectorization_mode="vector_entry_point")
        assert envs.unwrapped.task.prompts == env.unwrapped.task.prompts
        # the fixed arguments can be overridden (the benchmark gives a pretrained model's tokenizer)
        assert gym.make(task_id, max_new_tokens=5).unwrapped.task.max_new_tokens == 5


def test_keyword_prompts_list_concepts_from_a_real_sentence():
    ps = SUITE["textgym/Keywords-v0"].prompts()
    for prompt, reference in list(zip(ps.prompts, ps.references))[:50]:
        concepts = prompt.rstrip(":").split(", ")
        assert len(concepts) == 3
        assert all(c in reference.lower() for c in concepts)


def test_coverage_and_bigram_fluency():
    coverage = make_feedback("coverage")
    prompts = ["money, time, love:", "money, time, love:", "the of:"]
    got = coverage(prompts, [" Time is money, my love.", " Money talks.", " anything"])
    assert got.tolist() == [1.0, pytest.approx(1 / 3), 0.0]  # (a prompt of function words has no concept)
    fluency = make_feedback("bigram_fluency")
    good, bad, empty = fluency(["It is"] * 3, [" a good day to be alive.", " zxq vbn qwp", ""])
    assert good > 0.8 and bad == 0.0 and empty == 0.0
    with pytest.raises(ValueError, match="min_count must be an integer >= 1, got 0"):
        make_feedback("bigram_fluency(min_count=0)")


# -- the optimum and the statistics --------------------------------------------------------------------------------
def test_optimum_of_a_coin_matches_the_closed_form():
    beta = 0.5
    scores = np.tile(np.array([0.0, 1.0] * 500), (3, 1))  # each prompt: r = 0 or 1, equally likely under π_ref
    o = optimum_stats(scores, beta, reps=200)
    z = np.exp(1 / beta)
    assert o["optimum"] == pytest.approx(beta * math.log((1 + z) / 2))
    assert o["optimum_score"] == pytest.approx(z / (1 + z))  # π*(r=1) ∝ π_ref(r=1)·exp(1/β)
    p = z / (1 + z)
    assert o["optimum_kl"] == pytest.approx(p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p)))
    assert o["optimum_low"] <= o["optimum"] <= o["optimum_high"] and o["ref_score"] == 0.5


def test_optimum_interval_covers_a_rare_coins_optimum():
    """r = 1 with probability 0.05 and β = 0.1: a prompt's 64 samples hold about three 1s, so the plug-in
    β·log mean exp(r/β) is biased low (0.67 against 0.70 on average), and a percentile interval covers the true value
    in about a fifth of the data sets. The interval must cover it in most."""
    p, beta = 0.05, 0.1
    truth = beta * math.log(1 - p + p * math.exp(1 / beta))
    covered = 0
    for rep in range(20):
        scores = (np.random.default_rng(rep).random((20, 64)) < p).astype(float)
        o = optimum_stats(scores, beta, reps=200)
        covered += o["optimum_low"] <= truth <= o["optimum_high"]
    assert covered >= 18, covered


def test_iqm_intervals_and_probability_of_improvement():
    assert stats.iqm(np.array([0.0, 1, 2, 3, 4, 5, 6, 100])) == pytest.approx(3.5)  # the outer quarters dropped
    good = {"a": np.array([0.8, 0.9, 1.0]), "b": np.array([0.7, 0.8, 0.9])}
    bad = {"a": np.array([0.1, 0.2, 0.3]), "b": np.array([0.0, 0.1, 0.2])}
    point, lo, hi = stats.interval(good)
    assert lo <= point <= hi and lo >= 0.7 and hi <= 1.0
    assert stats.probability_of_improvement(good, bad) == (1.0, 1.0, 1.0)
    assert stats.probability_of_improvement(good, good)[0] == 0.5
    prof, lo, hi = stats.performance_profile(good, np.array([0.0, 0.85, 2.0]))
    assert prof.tolist() == [1.0, 0.5, 0.0] and (lo <= prof).all() and (prof <= hi).all()


# -- the benchmark ---------------------------------------------------------------------------------------------------
def tiny(out: Path, init: Path, **kw) -> BenchmarkConfig:
    """2 algorithms x 1 task x 2 seeds, a tiny budget."""
    values = dict(
        algorithms=["reinforce-rloo", "a2c"],
        tasks=["textgym/Sentiment-v0"],
        seeds=[0, 1],
        total_env_tokens=400,
        init=str(init),
        eval_prompts=4,
        eval_samples=2,
        evals=2,
        optimum_samples=256,
        workers=2,
        out=str(out),
        options={"a2c": {"num_envs": 4, "n_steps": 25}, "reinforce-rloo": {"num_envs": 8}},
    )
    return BenchmarkConfig(**{**values, **kw})


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in rows]


@pytest.fixture(scope="module")
def tiny_benchmark(tiny_lm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "local"
    run_benchmark(tiny(out, tiny_lm[1]))
    return out


def test_a_tiny_suite_writes_every_output(tiny_benchmark):
    out = tiny_benchmark
    rows = read_rows(out / "results.csv")
    assert list(rows[0]) == list(RESULT_COLUMNS) and len(rows) == 4
    assert {(r["algorithm"], r["seed"]) for r in rows} == {(a, s) for a in ("reinforce-rloo", "a2c") for s in "01"}
    for r in rows:
        assert r["status"] == "ok" and int(r["env_tokens"]) >= 400 and r["budget"] == "400"
        objective = float(r["final_score"]) - float(r["beta"]) * float(r["kl"])
        assert float(r["objective"]) == pytest.approx(objective)
        gain = (objective - float(r["ref_score"])) / (float(r["optimum"]) - float(r["ref_score"]))
        assert float(r["optimum_gain_fraction"]) == pytest.approx(gain)
        assert float(r["best_score"]) >= float(r["final_score"]) - 1e-12
        assert r["code_version"].startswith(textgym.__version__) and len(r["config_hash"]) == 12
    assert len({r["config_hash"] for r in rows}) == 4
    summary = (out / "summary.md").read_text()
    for text in ("IQM", "95%", "Probability of improvement", "reinforce-rloo", "a2c", "**", "With 2 seeds"):
        assert text in summary
    assert "## textgym/Sentiment-v0, a2c" in (out / "samples.md").read_text()
    for png in ("curves_tokens", "curves_wall", "score_kl", "profile"):
        assert (out / f"{png}.png").read_bytes()[:4] == b"\x89PNG"
    optimum = json.loads((out / "optimum.json").read_text())[0]
    assert optimum["optimum_low"] <= optimum["optimum"] <= optimum["optimum_high"]
    assert len(list((out / "optimum").glob("*.json"))) == 1  # the reference's samples, cached


def test_the_ray_backend_gives_the_same_rows(tiny_lm, tiny_benchmark, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run_benchmark(tiny(tmp_path / "ray", tiny_lm[1], backend="ray"))
    finally:
        ray.shutdown()
    local, remote = read_rows(tiny_benchmark / "results.csv"), read_rows(tmp_path / "ray" / "results.csv")
    assert without_timing(remote) == without_timing(local)


def cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from agents.cli import main; sys.exit(main())", "benchmark", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill below reaches its workers too
    )


def test_a_killed_benchmark_resumes_and_skips_finished_cells(tiny_lm, tiny_benchmark, tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        'algorithms = ["reinforce-rloo", "a2c"]\ntasks = ["textgym/Sentiment-v0"]\nseeds = [0, 1]\n'
        f'total_env_tokens = 400\ninit = "{tiny_lm[1]}"\neval_prompts = 4\neval_samples = 2\nevals = 2\n'
        "optimum_samples = 256\n[options.a2c]\nnum_envs = 4\nn_steps = 25\n[options.reinforce-rloo]\nnum_envs = 8\n"
    )
    out = tmp_path / "killed"
    proc = cli("--config", str(toml), "--out", str(out), "--workers", "1")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # kill it once a cell has finished
        if (out / "results.csv").is_file() and len(read_rows(out / "results.csv")) >= 1:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = [p.parent for p in (out / "cells").rglob("row.json")]
    assert 1 <= len(finished) < 4
    stamps = {p: (p / "row.json").stat().st_mtime_ns for p in finished}

    again = cli("--config", str(toml), "--out", str(out), "--workers", "2")
    log = again.communicate(timeout=300)[0]
    assert again.returncode == 0, log
    assert f"{len(finished)} finished before, {4 - len(finished)} to run" in log
    assert all((p / "row.json").stat().st_mtime_ns == stamps[p] for p in finished)  # not run again
    rows = read_rows(out / "results.csv")
    assert without_timing(rows) == without_timing(read_rows(tiny_benchmark / "results.csv"))


def test_bad_configs_are_rejected_before_any_cell_runs(tiny_lm, tmp_path, capsys):
    out = tmp_path / "never"
    cases = [
        (["--algorithms", "reinforce-rloo", "sac"], "unknown algorithm 'sac'; known: reinforce-rloo"),
        (["--tasks", "textgym/Chess-v0"], "unknown task 'textgym/Chess-v0'; the suite's tasks are"),
        (["--betas", "0"], "β 0.0 is not valid: the optimum needs β > 0"),
        (["--backend", "spark"], "backend 'spark' is not one of 'local', 'ray'"),
        (["--init", str(tmp_path)], "is not a checkpoint folder"),
    ]
    for args, message in cases:
        assert main(["benchmark", "--init", str(tiny_lm[1]), "--out", str(out), *args]) == 2
        assert message in capsys.readouterr().err
    for body, message in [
        ("[options.ppo]\nlearning_rate = 1e-4\n", "unknown option ppo.learning_rate; ppo's options: batch_size"),
        ("[options.ppo]\nlr = -1.0\n", "options.ppo: lr must be > 0, got -1.0"),
        ("[options.a2c]\nkl_coef = 0.2\n", "option a2c.kl_coef is set by the benchmark for every cell"),
        ("budget = 10\n", "unknown key 'budget'"),
        ("seeds = [0, 1\n", "is not valid TOML"),
    ]:
        toml = tmp_path / "bad.toml"
        toml.write_text(body)
        assert main(["benchmark", "--config", str(toml), "--init", str(tiny_lm[1]), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()  # nothing ran, nothing was written


def test_the_ray_backend_without_ray_is_refused_up_front(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(ValueError, match=r"backend 'ray' needs Ray: pip install 'textgym\[ray\]'"):
        BenchmarkConfig(backend="ray")
