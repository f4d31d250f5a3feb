"""Pairwise preferences: the JSONL format a reward model learns from, and a simulated annotator that writes it.

One JSON object per line, plain or gzip-compressed (``.gz``), in TRL's format::

    {"prompt": "The weather", "chosen": " is lovely today.", "rejected": " is awful."}

``"prompt"`` is optional. Without it a row is in the public HH-RLHF format, where ``chosen`` and ``rejected`` are
whole dialogues that share everything up to the last assistant turn; the prompt is split off as TRL's
``extract_prompt`` does it: the longest common prefix of the two texts, cut back to the end of its last
``"Assistant:"`` marker (so that both completions start at the answer).

A tie (the annotator saw no difference) is stored as a row with ``"tie": true`` (``chosen`` and ``rejected`` then
in the order shown): nothing is lost, and :func:`read_preferences` leaves ties out of training and counts them.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from textgym.corpus import parse_jsonl, read_text
from textgym.feedback import make_feedback

ASSISTANT = "Assistant:"


def extract_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) of an HH-RLHF-style pair of whole dialogues."""
    n = min(len(chosen), len(rejected))
    end = next((i for i in range(n) if chosen[i] != rejected[i]), n)
    shared = chosen[:end]
    marker = shared.rfind(ASSISTANT)
    if marker >= 0:
        end = marker + len(ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


@dataclass
class Preferences:
    """Pairs to learn from, column by column (ties already left out)."""

    prompts: list[str]
    chosen: list[str]
    rejected: list[str]
    ties: int = 0
    """Rows marked ``"tie": true`` that were left out."""

    def __len__(self) -> int:
        return len(self.chosen)


def read_preferences(path: str | os.PathLike[str]) -> Preferences:
    """Read a preference file (see the module docs); ties are left out and counted.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line that is not a JSON object, lacks ``chosen`` or ``rejected``, or holds a value that is not
            a string (the message names the line); a ``.gz`` file that is not gzip; a file with no pair to learn from.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file {str(path)!r} does not exist")
    text = read_text(path)
    if not text.strip():
        raise ValueError(f"preference file {str(path)!r} is empty: it needs JSONL rows with 'chosen' and 'rejected'")
    prefs = Preferences([], [], [])
    lines = [i for i, line in enumerate(text.split("\n"), start=1) if line.strip()]
    for lineno, row in zip(lines, parse_jsonl(text, path, required=("chosen", "rejected"))):
        for key in ("prompt", "chosen", "rejected"):
            if key in row and not isinstance(row[key], str):
                raise ValueError(
                    f"{path}:{lineno}: field {key!r} must be a string, got {type(row[key]).__name__}: "
                    f"{str(row[key])[:60]!r}"
                )
        if row.get("tie", False):
            prefs.ties += 1
            continue
        if "prompt" in row:
            prompt, chosen, rejected = row["prompt"], row["chosen"], row["rejected"]
        else:
            prompt, chosen, rejected = extract_prompt(row["chosen"], row["rejected"])
        prefs.prompts.append(prompt)
        prefs.chosen.append(chosen)
        prefs.rejected.append(rejected)
    if not prefs.chosen:
        raise ValueError(f"preference file {str(path)!r} holds only ties ({prefs.ties}): no pair to learn from")
    return prefs


def write_preferences(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> Path:
    """Write preference rows as JSONL (gzip for a ``.gz`` path), atomically: a temporary file, then a rename."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)  # (mtime 0: the same rows give the same bytes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class SimulatedAnnotator:
    """A Boltzmann-rational annotator with a hidden feedback: P(A preferred) = σ((r_A − r_B) / T).

    ``temperature=0`` always prefers the better-scored completion and calls equal scores a tie; at T > 0 equal scores
    are a coin flip. The draws come from its own generator (``seed``), so the same pairs get the same labels.
    """

    def __init__(self, feedback: Any, temperature: float = 0.0, seed: int = 0) -> None:
        if not (isinstance(temperature, (int, float)) and temperature >= 0 and np.isfinite(temperature)):
            raise ValueError(f"temperature must be a number >= 0 (0 = always the better one), got {temperature!r}")
        self.feedback = make_feedback(feedback)
        self.temperature = float(temperature)
        self.rng = np.random.default_rng(seed)

    def label(self, prompts: list[str], a: list[str], b: list[str], **kwargs: Any) -> np.ndarray:
        """+1 where A is preferred, −1 where B is, 0 for a tie (only at T = 0)."""
        r_a = self.feedback(prompts, a, **kwargs)
        r_b = self.feedback(prompts, b, **kwargs)
        diff = r_a - r_b
        if self.temperature == 0:
            return np.sign(diff).astype(np.int64)
        p_a = 1.0 / (1.0 + np.exp(-np.clip(diff / self.temperature, -60, 60)))
        return np.where(self.rng.random(len(diff)) < p_a, 1, -1).astype(np.int64)

    def rows(self, prompts: list[str], a: list[str], b: list[str], **kwargs: Any) -> list[dict[str, Any]]:
        """Preference rows for the pairs (ties marked ``"tie": true``)."""
        rows = []
        for p, x, y, choice in zip(prompts, a, b, self.label(prompts, a, b, **kwargs).tolist()):
            if choice == 0:
                rows.append({"prompt": p, "chosen": x, "rejected": y, "tie": True})
            else:
                rows.append({"prompt": p, "chosen": x if choice > 0 else y, "rejected": y if choice > 0 else x})
        return rows
