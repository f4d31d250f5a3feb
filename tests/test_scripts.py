"""The benchmark scripts in scripts/ start: each one's --help runs (a renamed helper that a script still imports
breaks it, and no other test runs the scripts)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
