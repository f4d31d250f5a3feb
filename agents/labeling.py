"""Preference pairs sampled from a language model and labelled: ``textgym label``.

Each pair is two completions of one training prompt (never one of the evaluation prompts a run holds out), sampled
from the ``--checkpoint`` LM. ``--simulate SPEC`` labels them with a :class:`~textgym.preferences.SimulatedAnnotator`
on a hidden feedback; the rows go to a preference file that ``textgym reward-model train`` reads.
"""

from __future__ import annotations

import time
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
from textgym.store import PreferenceStore


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
    train_prompts = split_held_out(prompt_set, eval_prompts)[0] if eval_prompts else prompt_set
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


# -- people: pairs in a store, labelled at the terminal -------------------------------------------------------------
def fill_store(
    store: PreferenceStore,
    checkpoint: str,
    checkpoint_b: str,
    prompts: str,
    pairs: int,
    max_new_tokens: int,
    seed: int,
    eval_prompts: int = 32,
) -> int:
    """Sample ``pairs`` pairs into ``store``: two samples of ``checkpoint`` per prompt, or one of each checkpoint.
    Without a prompt file the prompts are the corpus's, less the last ``eval_prompts`` (the evaluation's)."""
    sources = [checkpoint, checkpoint_b or checkpoint]
    # The same seed for both: they draw the same prompts (each model samples its own completions of them).
    streams = [sample_pairs(src, prompts, eval_prompts, max_new_tokens, seed) for src in sources]
    rows: list[tuple[str, str, str, str, str]] = []
    while len(rows) < pairs:
        p, a, a2, _ = next(streams[0])
        b = next(streams[1])[1] if checkpoint_b else a2
        rows += [(pi, x, y, f"{sources[0]}@seed{seed}", f"{sources[1]}@seed{seed}") for pi, x, y in zip(p, a, b)]
    return store.add_pairs(rows[:pairs])


def label_terminal(
    store: PreferenceStore, annotator: str, read: Any = input, write: Any = print, seed: int = 0
) -> dict[str, int]:
    """Ask ``annotator`` about every pair they have not answered, shown side by side, one key per answer: a or 1
    (the left one is better), b or 2 (the right one), t (tie), s (skip), u (undo the last answer), q (quit).

    Each answer is saved at once; end of input and Ctrl-C stop with a message, losing nothing answered.
    """
    rng = np.random.default_rng(seed)
    queue = store.pending(annotator)
    total = len(queue) + store.answered(annotator)
    done = total - len(queue)
    answered = 0
    saved = lambda: f"{answered} answer{'' if answered == 1 else 's'} saved in {store.path}"  # noqa: E731
    while queue:
        pair = queue[0]
        left = "a" if rng.random() < 0.5 else "b"  # the order shown is random, and stored (position bias)
        right = "b" if left == "a" else "a"
        shown = time.time()
        write(_side_by_side(pair.prompt, getattr(pair, left), getattr(pair, right), done + 1, total))
        try:
            key = read("[a] left better  [b] right better  [t]ie  [s]kip  [u]ndo  [q]uit > ").strip().lower()
        except EOFError:
            write(f"\nend of input: {saved()}; run the same command to continue")
            break
        except KeyboardInterrupt:
            write(f"\ninterrupted: {saved()}; run the same command to continue")
            raise
        if key == "q":
            write(f"{saved()}; run the same command to continue")
            break
        if key == "u":
            previous = store.undo(annotator)
            if previous is None:
                write("nothing to undo")
            else:
                queue.insert(0, previous)
                done, answered = done - 1, answered - 1
            continue
        choice = {"a": left, "1": left, "b": right, "2": right, "t": "tie", "s": "skip"}.get(key)
        if choice is None:
            write(f"{key!r} is not an answer: type a, b, t, s, u or q")
            continue
        store.answer(pair.id, annotator, choice, shown_left=left, shown_at=shown)
        queue.pop(0)
        done, answered = done + 1, answered + 1
    else:
        write(f"all {total} pairs answered by {annotator!r}; {answered} in this session")
    return {"answered": answered, "left": len(queue)}


def _side_by_side(prompt: str, left: str, right: str, number: int, total: int, width: int = 38) -> str:
    import textwrap

    cols = [textwrap.wrap(" ".join(t.split()), width) or ["(empty)"] for t in (left, right)]
    lines = [f"\n--- pair {number} of {total} ---", f"prompt: {' '.join(prompt.split())}", ""]
    lines.append(f"{'[a] left':<{width}}   [b] right")
    for i in range(max(map(len, cols))):
        a = cols[0][i] if i < len(cols[0]) else ""
        b = cols[1][i] if i < len(cols[1]) else ""
        lines.append(f"{a:<{width}} | {b}")
    return "\n".join(lines)
