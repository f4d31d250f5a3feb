"""RLHF end to end, offline on a CPU: ``textgym rlhf``.

1. Sample pairs of completions of training prompts from the pretrained LM and label them with a simulated annotator
   whose feedback (``--hidden``, by default ``sentiment``) the rest of the pipeline never sees.
2. Train a reward model on the labels (Bradley-Terry).
3. Align the LM with REINFORCE on the reward model, evaluating on the reward model's score *and* the hidden true
   score; and, for comparison, align it on the true score directly at the same β and budget.
4. Plot both against KL to the reference (``overoptimisation.png``): the over-optimisation curve of Gao et al.
   (2022), where the proxy keeps rising while the true score stops following it.

Each stage writes its own folder under ``--out`` and is skipped when its output is already there, so a killed
pipeline continues where it stopped (the training stages resume from their checkpoints).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agents.labeling import LabelConfig, label
from agents.reinforce import SHORT_RUN, ReinforceConfig
from agents.reinforce import train as train_reinforce
from agents.reporting import _column, plot_overoptimisation
from agents.reward_model import RewardModelConfig
from agents.reward_model import train as train_reward_model
from agents.training import check_positive


@dataclass
class RLHFConfig:
    """Options of ``textgym rlhf``."""

    init: str = "runs/pretrain/model"
    """Pretrained LM: it samples the pairs, starts the reward model's trunk and the aligned policy, and is the
    KL reference."""
    hidden: str = "sentiment"
    """The simulated annotator's hidden feedback: the true score, which only the annotator and the evaluation see."""
    temperature: float = 0.0
    """Annotator temperature (0: always the better one, equal scores a tie)."""
    pairs: int = 20000
    """Labelled pairs (not ties) to train the reward model on."""
    kl_coef: float = 0.02
    """β of both alignment runs (small, so that the policy goes far enough from the reference to over-optimise)."""
    updates: int = 600
    """REINFORCE updates of each alignment run."""
    eval_interval: int = 25
    """Updates between evaluations: the points of the curves."""
    eval_prompts: int = 32
    """Held-out prompts of the evaluation (the last ones; no pair is sampled on them)."""
    max_new_tokens: int = 20
    """Longest completion in tokens, in the pairs and in the alignment runs."""
    seed: int = 0
    """Seed of every stage."""
    out: str = "runs/rlhf"
    """Output folder: prefs.jsonl.gz, reward_model/, on_reward_model/, on_true_score/, overoptimisation.png."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        check_positive(
            pairs=self.pairs,
            updates=self.updates,
            eval_interval=self.eval_interval,
            eval_prompts=self.eval_prompts,
            max_new_tokens=self.max_new_tokens,
        )
        for name in ("temperature", "kl_coef"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")


def _gain(csv_path: Path, key: str) -> tuple[float, float]:
    """(the best value of ``key`` along a run's evaluations, its value at the start)."""
    import csv

    with csv_path.open(newline="") as fh:
        _, ys = _column(list(csv.DictReader(fh)), "charts/env_tokens", key)
    return max(ys), ys[0]


def rlhf(cfg: RLHFConfig) -> dict[str, float]:
    out = Path(cfg.out)
    prefs = out / "prefs.jsonl.gz"
    print(f"== 1/4 sampling pairs from {cfg.init} and labelling them on the hidden {cfg.hidden!r} -> {prefs}")
    if prefs.is_file():
        print("   (already there: kept)")
    else:
        label(LabelConfig(simulate=cfg.hidden, temperature=cfg.temperature, checkpoint=cfg.init, pairs=cfg.pairs,
                          eval_prompts=cfg.eval_prompts, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                          out=str(prefs), progress=cfg.progress))  # fmt: skip
    rm = out / "reward_model"
    print(f"\n== 2/4 training the reward model -> {rm}/model")
    rm_metrics = train_reward_model(
        RewardModelConfig(
            data=str(prefs),
            init=cfg.init,
            eval_pairs=min(1000, max(1, cfg.pairs // 10)),
            seed=cfg.seed,
            out=str(rm),
            progress=cfg.progress,
        )  # fmt: skip
    )
    proxy_spec = f'reward-model(path="{rm / "model"}")'
    common = dict(init=cfg.init, kl_coef=cfg.kl_coef, updates=cfg.updates, **SHORT_RUN,
                  eval_interval=cfg.eval_interval, eval_prompts=cfg.eval_prompts, max_new_tokens=cfg.max_new_tokens,
                  seed=cfg.seed, progress=cfg.progress)  # fmt: skip
    print(f"\n== 3/4 aligning on the reward model (the true {cfg.hidden!r} is only measured) -> {out}/on_reward_model")
    train_reinforce(
        ReinforceConfig(reward=proxy_spec, eval_also=cfg.hidden, out=str(out / "on_reward_model"), **common)
    )
    print(f"\n== 4/4 aligning on the true {cfg.hidden!r} itself, for comparison -> {out}/on_true_score")
    train_reinforce(ReinforceConfig(reward=cfg.hidden, eval_also=proxy_spec, out=str(out / "on_true_score"), **common))

    best_proxy_run, start = _gain(out / "on_reward_model/progress.csv", "eval/also_scores")
    best_true_run, _ = _gain(out / "on_true_score/progress.csv", "eval/scores")
    ratio = (best_proxy_run - start) / (best_true_run - start) if best_true_run > start else float("nan")
    png = plot_overoptimisation(
        out / "on_reward_model/progress.csv",
        out / "on_true_score/progress.csv",
        out / "overoptimisation.png",
        f"RLHF on a learned reward model: hidden {cfg.hidden!r}, β = {cfg.kl_coef}",
    )
    summary = {
        "reward_model_accuracy": rm_metrics["eval/accuracy"],
        "true_score_start": start,
        "best_true_score_aligned_on_reward_model": best_proxy_run,
        "best_true_score_aligned_on_true_score": best_true_run,
        "share_of_true_gain": ratio,
        "config": asdict(cfg),
    }
    (out / "rlhf.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"\nreward model: held-out accuracy {rm_metrics['eval/accuracy']:.3f}\nbest hidden {cfg.hidden!r} along the "
        f"run: {best_proxy_run:+.3f} aligned on the reward model, {best_true_run:+.3f} aligned on the truth (start "
        f"{start:+.3f}): {ratio:.0%} of the true gain (goal >= 70%)\nplot: {png}"
    )
    return {k: v for k, v in summary.items() if isinstance(v, float) and np.isfinite(v)}
