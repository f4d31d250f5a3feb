"""``human``: a person at the terminal rates each finished completion, as the env's feedback.

Registered as a feedback (``reward="human"``) and, because a person's answers are not a function of the text, on its
own env id ``textgym/HumanFeedback-v0`` with ``nondeterministic=True``. Every rating (or skip) is also written to a
preference store (:mod:`textgym.store`) when ``store=`` is given, one transaction each.

A rating is a number on the stated scale (``scale="1-5"`` by default), mapped linearly to a reward in [-1, 1];
Enter skips (reward 0, stored as a skip); ``q`` skips the rest of this batch.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from textgym.feedback import register_feedback


def _parse_scale(scale: str) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in str(scale).split("-", 1))
    except ValueError:
        raise ValueError(f"human scale {scale!r} must be 'LOW-HIGH', e.g. '1-5'") from None
    if not lo < hi:
        raise ValueError(f"human scale {scale!r}: LOW must be below HIGH")
    return lo, hi


@register_feedback("human")
def make_human(
    scale: str = "1-5",
    store: str = "",
    annotator: str = "",
    read: Callable[[str], str] | None = None,
    write: Callable[[str], None] | None = None,
) -> Callable[..., np.ndarray]:
    """A person's rating of each completion on ``scale``, as a reward in [-1, 1] (``read``/``write`` replace the
    terminal's ``input``/``print``)."""
    lo, hi = _parse_scale(scale)
    read = read or input
    write = write or print
    who = annotator or getpass.getuser()
    db = None
    if store:
        from textgym.store import PreferenceStore

        db = PreferenceStore(store)

    def human(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        out = np.zeros(len(completions))
        rest_skipped = False
        for i, (p, c) in enumerate(zip(prompts, completions)):
            rating = None
            shown = time.time()
            if not rest_skipped:
                write(f"\n[{i + 1}/{len(completions)}] {' '.join(p.split())} >>> {' '.join(c.split()) or '(empty)'}")
                while True:
                    try:
                        answer = read(f"rate {scale} (Enter: skip, q: skip the rest of this batch) > ").strip()
                    except EOFError:
                        raise KeyboardInterrupt("end of input while asking for a rating") from None
                    if answer.lower() == "q":
                        rest_skipped = True
                        break
                    if not answer:
                        break
                    try:
                        value = float(answer)
                    except ValueError:
                        value = float("nan")
                    if lo <= value <= hi:
                        rating = value
                        break
                    write(f"{answer!r} is not a rating: type a number from {lo:g} to {hi:g}, or Enter to skip")
            if rating is not None:
                out[i] = 2 * (rating - lo) / (hi - lo) - 1
            if db is not None:
                db.rate(p, c, who, rating, scale, shown)
        return out

    return human
