"""Preference pairs sampled from a language model and labelled: ``textgym label``.

Each pair is two completions of one training prompt (never one of the evaluation prompts a run holds out), sampled
from the ``--checkpoint`` LM. ``--simulate SPEC`` labels them with a :class:`~textgym.preferences.SimulatedAnnotator`
on a hidden feedback; the rows go to a preference file that ``textgym reward-model train`` reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.checkpoint import load_checkpoint
from agents.evaluation import split_held_out, task_prompts
from agents.model import complete
from agents.training import check_positive
from textgym.preferences import SimulatedAnnotator, write_preferences


@dataclass
class LabelConfig:
    """Options of ``textgym label --simulate``."""

    simulate: str = "sentiment"
    """The simulated annotator's hidden feedback spec."""
    temperature: float = 0.0
    """Annotator temperature T: P(A preferred) = σ((r_A − r_B) / T); 0 = always the better one, equal scores a tie."""
    checkpoint: str = "runs/pretrain/model"
    """Language model that samples both completions of each pair."""
    prompts: str = ""
    """JSONL prompt file (empty: the held-out corpus prompts of --checkpoint's corpus, less the evaluation ones)."""
    eval_prompts: int = 32
    """Prompts held out for the evaluation of alignment runs (the last ones), never used for pairs."""
    pairs: int = 20000
    """Pairs to label that are not ties (ties are written too, marked "tie": true, and counted)."""
    max_new_tokens: int = 20
    """Longest completion in tokens."""
    seed: int = 0
    """Seed of the prompt draws, the sampling and the annotator."""
    out: str = "runs/prefs.jsonl"
    """Preference file to write (.gz for gzip), atomically."""
    progress: bool = True
    """Show a progress bar."""

    def __post_init__(self) -> None:
        check_positive(pairs=self.pairs, max_new_tokens=self.max_new_tokens)
        if not (self.temperature >= 0):
            raise ValueError(f"temperature must be >= 0 (0 = always the better one), got {self.temperature!r}")


def sample_pairs(
    checkpoint: str, prompts: str, eval_prompts: int, max_new_tokens: int, seed: int
) -> Iterator[tuple[list[str], list[str], list[str], dict[str, Any]]]:
    """Endless batches of pairs: (prompts, completions A, completions B, feedback kwargs such as references), two
    samples of ``checkpoint`` for each training prompt drawn (the last ``eval_prompts`` prompts are never drawn)."""
    model, tokenizer, config = load_checkpoint(checkpoint)
    prompt_set, _ = task_prompts(prompts, "", config)
    train_prompts, _ = split_held_out(prompt_set, eval_prompts)
    texts, refs = train_prompts.prompts, train_prompts.references
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    batch = 512
    while True:
        index = rng.integers(len(texts), size=batch)
        chosen = [texts[i] for i in index]
        completions = complete(model, tokenizer, chosen + chosen, max_new_tokens, gen)[2]
        kwargs = {} if refs is None else {"references": [refs[i] for i in index]}
        yield chosen, completions[:batch], completions[batch:], kwargs


def label(cfg: LabelConfig) -> dict[str, int]:
    """Sample and label pairs until ``cfg.pairs`` are not ties; write them all. Returns the counts."""
    annotator = SimulatedAnnotator(cfg.simulate, cfg.temperature, seed=cfg.seed)
    rows, done, ties = [], 0, 0
    bar = tqdm(total=cfg.pairs, desc="label", unit="pair", disable=not cfg.progress)
    for prompts, a, b, kwargs in sample_pairs(
        cfg.checkpoint, cfg.prompts, cfg.eval_prompts, cfg.max_new_tokens, cfg.seed
    ):
        for row in annotator.rows(prompts, a, b, **kwargs):
            if done == cfg.pairs:
                break
            rows.append(row)
            if row.get("tie"):
                ties += 1
            else:
                done += 1
                bar.update(1)
        if done == cfg.pairs:
            break
    bar.close()
    write_preferences(cfg.out, rows)
    print(f'wrote {Path(cfg.out)}: {done} labelled pairs and {ties} ties (marked "tie": true; training skips them)')
    return {"pairs": done, "ties": ties}
