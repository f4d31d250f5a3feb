"""The benchmark scripts in scripts/ start: each one's --help runs (a renamed helper that a script still imports
breaks it, and no other test runs the scripts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agents.runner import native_bfloat16

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@pytest.mark.parametrize("script", sorted(p.name for p in SCRIPTS.glob("*.py")))
def test_each_script_starts(script):
    r = subprocess.run([sys.executable, str(SCRIPTS / script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_fit_optimum_by_path_consistency_runs_and_fits(tiny_lm):
    """--method log-variance end to end on a tiny LM: R = r/β − log π/π_ref spreads less within each prompt's
    group on the stored samples epoch after epoch, and the fitted policy is scored against the optimum."""
    _, init = tiny_lm
    args = ["--init", str(init), "--reward", "length(target=3)", "--method", "log-variance", "--samples", "8"]
    args += ["--group", "4", "--epochs", "3", "--lr", "3e-3", "--optimum-samples", "64", "--eval-samples", "2"]
    args += ["--eval-prompts", "4"]
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "fit_optimum.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    spread = [float(line.split()[-1]) for line in r.stdout.splitlines() if "within-prompt variance of R" in line]
    assert len(spread) == 3 and spread[-1] < spread[0], r.stdout
    assert "of its gain" in r.stdout.splitlines()[-1]


def test_bench_reinforce_runs_two_seeds_and_measures_what_they_share(tiny_lm, tmp_path):
    """bench_reinforce.py end to end on a tiny LM, two seeds at one β and a tiny budget: the per-run table, the goal
    lines, and the seeds' table, whose KL between the seeds' policies is measured and positive (two seeds of a
    run are different policies) and whose KL to π* is the gap divided by β."""
    import json

    _, init = tiny_lm
    args = ["--init", str(init), "--total-env-tokens", "600", "--betas", "0.1", "--seeds", "0", "1"]
    args += ["--optimum-samples", "64", "--eval-samples", "4", "--distinct-k", "4", "--eval-prompts", "4"]
    args += ["--out", str(tmp_path / "b"), "--frontier", str(tmp_path / "frontier.png")]
    args += ["--set", "num_envs=16", "--set", "rloo_k=4", "--set", "lr=3e-3", "--optimum-distinct", "8"]
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_reinforce.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "what the seeds share" in r.stdout and "β=0.1 rloo: gain fraction mean" in r.stdout, r.stdout
    assert "π*'s own distinct-2, estimated from the trained policies" in r.stdout, r.stdout
    assert "drawn from disjoint groups" in r.stdout and "π* resampled" in r.stdout, r.stdout
    # where the hardware has bfloat16, the other precision's whole updates, measured beside auto's choice
    assert ("(auto's choice" in r.stdout) == native_bfloat16(torch.device("cpu")), r.stdout
    saved = json.loads((tmp_path / "b/frontier.json").read_text())
    (shared,) = saved["seeds"]
    assert shared["kl_between_seeds"] > 0
    rows, beta = saved["rows"], 0.1
    for row in rows:  # π*'s distinct-2 from 8 samples of each prompt (effective samples 1-8), at k = 4 per prompt
        (d2,) = row["distinct2_estimates"]
        assert d2["k"] == 4 and 0 < d2["optimum"] <= 1 and 1 <= d2["optimum_ess_median"] <= 8
        assert 0 < d2["optimum_half"] <= 1  # (from the first half of each prompt's samples: a convergence check)
        # one draw from each of k = 4 disjoint groups of 2 samples (and of 1: the policy's own draws)
        assert 0 < d2["optimum_resampled"] <= 1 and 0 < d2["optimum_resampled_half"] <= 1
        assert (
            d2["reference_counted"] == saved["reference"]["distinct_2_counted"] == saved["reference"]["eval/distinct_2"]
        )
    gap = sum(row["optimum"] - row["achieved"] for row in rows) / len(rows)
    assert abs(shared["kl_to_optimum"] - gap / beta) < 1e-9
    gain = rows[0]["optimum"] - saved["reference"]["score_all_samples"]
    assert abs(shared["goal_allows"] - 0.1 * gain / beta) < 1e-9  # the goal leaves 10% of the gain
    # the frontier plot, and the same plot drawn again from the saved frontier.json without training
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_reinforce.py"), "--replot", str(tmp_path / "b/frontier.json")]
        + ["--frontier", str(tmp_path / "again.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "(2 runs from" in r.stdout, r.stderr
    drawn, again = (tmp_path / "frontier.png").read_bytes(), (tmp_path / "again.png").read_bytes()
    assert drawn[:8] == b"\x89PNG\r\n\x1a\n" and again == drawn  # (the saved figures are the run's, to the bit)


def test_bench_reinforce_optimum_distinct_with_fewer_samples_than_draws(tiny_lm, tmp_path):
    """--optimum-distinct N below the k completions counted: the disjoint groups cannot give each draw its own
    sample, so that estimate reads n/a (and None in frontier.json) while the pooled one is still printed."""
    import json

    _, init = tiny_lm
    args = ["--init", str(init), "--total-env-tokens", "300", "--betas", "0.1", "--seeds", "0"]
    args += ["--optimum-samples", "64", "--eval-samples", "4", "--distinct-k", "4", "--eval-prompts", "4"]
    args += ["--out", str(tmp_path / "b"), "--set", "num_envs=16", "--set", "rloo_k=4", "--optimum-distinct", "2"]
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_reinforce.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert "π*'s own distinct-2, estimated from the trained policies" in r.stdout, r.stdout
    assert "drawn from disjoint groups" not in r.stdout and " n/a " in r.stdout, r.stdout
    (row,) = json.loads((tmp_path / "b/frontier.json").read_text())["rows"]
    (d2,) = row["distinct2_estimates"]
    assert d2["optimum_resampled"] is None and d2["optimum_resampled_half"] is None and 0 < d2["optimum"] <= 1


def test_bench_reinforce_rejects_bad_sample_counts():
    """--optimum-distinct 1 cannot be halved for the estimate's convergence check, and distinct-2 cannot count more
    completions per prompt than the evaluation draws: clear errors before any work."""
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_reinforce.py"), "--optimum-distinct", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--optimum-distinct 1: give 0 (off) or at least 2" in r.stderr, r.stderr
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_reinforce.py"), "--eval-samples", "16", "--distinct-k", "64"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--distinct-k 64: give 1 to --eval-samples (16)" in r.stderr, r.stderr


def test_bench_reinforce_replot_rejects_what_it_cannot_draw(tmp_path):
    """--replot needs a PNG to draw and a frontier.json to draw it from: each missing one gets an error naming it."""
    script = [sys.executable, str(SCRIPTS / "bench_reinforce.py")]
    r = subprocess.run([*script, "--replot", "runs/x/frontier.json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--replot needs --frontier PNG" in r.stderr, r.stderr
    (tmp_path / "other.json").write_text('{"rows": []}')
    for path in (tmp_path / "none.json", tmp_path / "other.json"):
        args = ["--replot", str(path), "--frontier", str(tmp_path / "f.png")]
        r = subprocess.run([*script, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1 and f"--replot {str(path)!r}: not a frontier.json" in r.stderr, r.stderr
        assert not (tmp_path / "f.png").exists()


def test_decompose_gap_soft_value_matches_the_exact_one_at_the_last_token(tiny_lm, tmp_path):
    """V*(s) = β log E_ref[exp(r/β) | s], estimated from reference continuations, against the exact value where one
    token is left: β log Σ_a π_ref(a|s)·exp(r(s·a)/β) over the whole vocabulary. The reward (whether "the" was
    said) makes that value stand apart from the plain mean E_ref[r | s], so a mean in place of the soft value fails."""
    sys.path.insert(0, str(SCRIPTS))
    import decompose_gap

    from agents.reinforce import Reinforce, ReinforceConfig

    _, init = tiny_lm
    cfg = ReinforceConfig(
        init=str(init),
        reward="keywords(words=the)",
        eval_prompts=4,
        progress=False,
        precision="float32",
        out=str(tmp_path / "r"),
    )
    agent = Reinforce(cfg)
    task, beta = agent.envs.task, 0.5
    prefix = [t for t in range(5, 5 + cfg.max_new_tokens) if t != agent.tokenizer.eos_id][: cfg.max_new_tokens - 1]
    gen = torch.Generator().manual_seed(0)
    (estimate,) = decompose_gap.soft_values(agent, task, [0], [prefix], beta, 4096, gen, rows=4096)
    with torch.no_grad():
        logits, _, _ = agent.ref.prefill([task.prompt_ids[0] + prefix])
    logp = torch.log_softmax(logits.float(), -1)[0].double()
    vocab = len(logp)
    r = torch.as_tensor(task.score([0] * vocab, [prefix + [a] for a in range(vocab)]).rewards, dtype=torch.float64)
    exact = float(beta * torch.logsumexp(logp + r / beta, 0))
    assert abs(exact - float((logp.exp() * r).sum())) > 0.04  # (the soft value is not the mean here)
    assert abs(estimate - exact) < 0.02, (estimate, exact)


def test_decompose_gap_splits_the_whole_distance(tiny_lm):
    """The script end to end, the reference as its own policy: its KL to the reference is 0, and the position bands
    (and, apart, the kinds of token) add up to the whole KL(π‖π*); β <= 0 is refused with a clear error."""
    _, init = tiny_lm
    args = ["--policy", str(init), "--ref", str(init), "--beta", "0.5", "--reward", "length(target=8)"]
    args += ["--completions", "8", "--continuations", "8", "--eval-prompts", "4"]
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "decompose_gap.py"), *args], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    total = float(lines[0].split("per completion: ")[1].split()[0])
    assert "KL(π‖π_ref): 0.000" in lines[0] or "KL(π‖π_ref): -0.000" in lines[0], lines[0]
    table = [line for line in lines[3:] if line.startswith("| ")]
    parts = {line.split(" | ")[0].strip("| "): float(line.split(" | ")[2]) for line in table}
    assert any(line.startswith("largest shares, leaves it:") for line in lines), r.stdout
    bands = sum(v for k, v in parts.items() if k.startswith("positions"))
    kinds = sum(v for k, v in parts.items() if not k.startswith("positions"))
    assert abs(bands - total) < 0.01 and abs(kinds - total) < 0.01, r.stdout
    r = subprocess.run(
        [sys.executable, str(SCRIPTS / "decompose_gap.py"), "--policy", "p", "--ref", "p", "--beta", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "--beta 0.0: give β > 0" in r.stderr, r.stderr
