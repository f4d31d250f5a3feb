"""A durable preference store: pairs of completions and people's answers, in SQLite (standard library).

Every answer is its own transaction in a WAL-journalled database, so a process killed between answers (SIGKILL,
Ctrl-C, end of input) loses nothing already answered, and a new session continues with the pairs that annotator has
not answered yet.

Tables:

* ``pairs``: prompt, completion ``a``, completion ``b``, where each came from (checkpoint and seed), when added;
* ``answers``: pair, annotator, choice (``a``, ``b``, ``tie`` or ``skip``), which completion was shown on the left,
  when it was shown and when answered; one answer per pair and annotator;
* ``ratings``: a person's rating of a single completion during training (the ``human`` feedback), or a skip.

:meth:`PreferenceStore.export` writes the preference JSONL that ``textgym reward-model train`` reads (ties and skips
left out, and counted); :meth:`PreferenceStore.stats` gives counts per annotator, position bias (the share of
choices that went to the left completion) and, between annotators who answered the same pairs, Cohen's κ.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgym.preferences import write_preferences

CHOICES = ("a", "b", "tie", "skip")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    source_a TEXT NOT NULL DEFAULT '',
    source_b TEXT NOT NULL DEFAULT '',
    added_at REAL NOT NULL,
    UNIQUE (prompt, a, b)
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER NOT NULL REFERENCES pairs (id),
    annotator TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'skip')),
    shown_left TEXT NOT NULL CHECK (shown_left IN ('a', 'b')),
    shown_at REAL NOT NULL,
    answered_at REAL NOT NULL,
    UNIQUE (pair_id, annotator)
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY,
    prompt TEXT NOT NULL,
    completion TEXT NOT NULL,
    annotator TEXT NOT NULL,
    rating REAL,
    scale TEXT NOT NULL,
    shown_at REAL NOT NULL,
    answered_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Pair:
    id: int
    prompt: str
    a: str
    b: str
    source_a: str = ""
    source_b: str = ""


class PreferenceStore:
    """Pairs and answers in one SQLite file (created on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_file():
            raise ValueError(f"preference store {str(self.path)!r} is not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # autocommit off by hand: each write below is one explicit transaction
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # a committed answer is on disk before answer() returns
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{str(self.path)!r} is not a textgym preference store (SQLite): {exc}") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> PreferenceStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------------------------
    def add_pairs(self, pairs: Iterable[tuple[str, str, str] | tuple[str, str, str, str, str]]) -> int:
        """Add (prompt, a, b[, source_a, source_b]) pairs in one transaction; a pair already stored is kept once.
        Returns how many were new."""
        now = time.time()
        rows = [(*p, "", "")[:5] + (now,) for p in pairs]
        for row in rows:
            if not all(isinstance(x, str) for x in row[:5]):
                raise ValueError(f"a pair's prompt, completions and sources must be strings, got {row[:5]!r}")
        with self._transaction():
            before = self.db.total_changes
            self.db.executemany(
                "INSERT OR IGNORE INTO pairs (prompt, a, b, source_a, source_b, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            return self.db.total_changes - before

    def answer(self, pair_id: int, annotator: str, choice: str, shown_left: str = "a", shown_at: float = 0.0) -> None:
        """Record one answer (its own transaction). ``choice``: 'a', 'b', 'tie' or 'skip'; ``shown_left``: which
        completion was shown on the left."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
        if shown_left not in ("a", "b"):
            raise ValueError(f"shown_left {shown_left!r} must be 'a' or 'b'")
        if not annotator or not isinstance(annotator, str):
            raise ValueError(f"annotator must be a non-empty name, got {annotator!r}")
        now = time.time()
        with self._transaction():
            if self.db.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
                raise ValueError(f"no pair {pair_id!r} in {self.path}")
            try:
                self.db.execute(
                    "INSERT INTO answers (pair_id, annotator, choice, shown_left, shown_at, answered_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (pair_id, annotator, choice, shown_left, shown_at or now, now),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"{annotator!r} has already answered pair {pair_id}") from None

    def rate(
        self, prompt: str, completion: str, annotator: str, rating: float | None, scale: str, shown_at: float
    ) -> None:
        """Record one rating of a single completion (``None``: skipped), its own transaction (the ``human``
        feedback's)."""
        with self._transaction():
            self.db.execute(
                "INSERT INTO ratings (prompt, completion, annotator, rating, scale, shown_at, answered_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (prompt, completion, annotator, rating, scale, shown_at, time.time()),
            )

    def ratings(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT prompt, completion, annotator, rating, scale FROM ratings ORDER BY id"
        ).fetchall()
        return [dict(zip(("prompt", "completion", "annotator", "rating", "scale"), r)) for r in rows]

    def undo(self, annotator: str) -> Pair | None:
        """Delete the annotator's last answer; return its pair (to be asked again), or None if there is none."""
        with self._transaction():
            row = self.db.execute(
                "SELECT id, pair_id FROM answers WHERE annotator = ? ORDER BY answered_at DESC, id DESC LIMIT 1",
                (annotator,),
            ).fetchone()
            if row is None:
                return None
            self.db.execute("DELETE FROM answers WHERE id = ?", (row[0],))
        return self.pair(row[1])

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # -- reading -----------------------------------------------------------------------------------------------
    def pair(self, pair_id: int) -> Pair:
        row = self.db.execute(
            "SELECT id, prompt, a, b, source_a, source_b FROM pairs WHERE id = ?", (pair_id,)
        ).fetchone()
        if row is None:
            raise ValueError(f"no pair {pair_id!r} in {self.path}")
        return Pair(*row)

    def pending(self, annotator: str) -> list[Pair]:
        """The pairs ``annotator`` has not answered, oldest first."""
        rows = self.db.execute(
            "SELECT id, prompt, a, b, source_a, source_b FROM pairs WHERE id NOT IN "
            "(SELECT pair_id FROM answers WHERE annotator = ?) ORDER BY id",
            (annotator,),
        ).fetchall()
        return [Pair(*r) for r in rows]

    def answered(self, annotator: str) -> int:
        """How many pairs ``annotator`` has answered."""
        return self.db.execute("SELECT COUNT(*) FROM answers WHERE annotator = ?", (annotator,)).fetchone()[0]

    def counts(self) -> tuple[int, int]:
        """(pairs, answers) in the store."""
        pairs = self.db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
        answers = self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        return pairs, answers

    def answers(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT p.id, p.prompt, p.a, p.b, s.annotator, s.choice, s.shown_left FROM answers s "
            "JOIN pairs p ON p.id = s.pair_id ORDER BY s.id"
        ).fetchall()
        keys = ("pair_id", "prompt", "a", "b", "annotator", "choice", "shown_left")
        return [dict(zip(keys, r)) for r in rows]

    # -- export, import, statistics ----------------------------------------------------------------------------
    def export(self, path: str | os.PathLike[str]) -> dict[str, int]:
        """Write every A/B answer as a preference row (``{"prompt", "chosen", "rejected", "annotator"}``); ties and
        skips are left out and counted."""
        rows, left_out = [], {"tie": 0, "skip": 0}
        for ans in self.answers():
            if ans["choice"] in left_out:
                left_out[ans["choice"]] += 1
                continue
            chosen, rejected = (ans["a"], ans["b"]) if ans["choice"] == "a" else (ans["b"], ans["a"])
            rows.append(
                {"prompt": ans["prompt"], "chosen": chosen, "rejected": rejected, "annotator": ans["annotator"]}
            )
        if not rows:
            raise ValueError(f"{self.path} holds no A/B answer to export (ties: {left_out['tie']}, skips: "
                             f"{left_out['skip']})")  # fmt: skip
        write_preferences(path, rows)
        return {"pairs": len(rows), **{f"{k}s": v for k, v in left_out.items()}}

    def import_file(self, path: str | os.PathLike[str], annotator: str = "import") -> dict[str, int]:
        """Load rows made elsewhere: ``{"prompt", "a", "b"}`` (pairs to label), or preference rows
        ``{"prompt", "chosen", "rejected"[, "tie"][, "annotator"]}`` (pairs with their answers)."""
        from textgym.corpus import parse_jsonl, read_text

        rows = parse_jsonl(read_text(Path(path)), path, required=("prompt",))
        added = answered = 0
        for lineno, row in enumerate(rows, start=1):
            if {"a", "b"} <= set(row):
                added += self.add_pairs([(row["prompt"], row["a"], row["b"])])
                continue
            if not {"chosen", "rejected"} <= set(row):
                raise ValueError(f"{path}: row {lineno} needs 'a' and 'b' (a pair) or 'chosen' and 'rejected'")
            added += self.add_pairs([(row["prompt"], row["chosen"], row["rejected"])])
            pair_id = self.db.execute(
                "SELECT id FROM pairs WHERE prompt = ? AND a = ? AND b = ?",
                (row["prompt"], row["chosen"], row["rejected"]),
            ).fetchone()[0]
            who = str(row.get("annotator", annotator))
            if self.db.execute("SELECT 1 FROM answers WHERE pair_id = ? AND annotator = ?", (pair_id, who)).fetchone():
                continue
            self.answer(pair_id, who, "tie" if row.get("tie") else "a")
            answered += 1
        return {"pairs_added": added, "answers_added": answered}

    def stats(self) -> dict[str, Any]:
        """Counts per annotator, position bias, and Cohen's κ between annotators on the pairs both answered."""
        per: dict[str, dict[str, Any]] = {}
        by_pair: dict[str, dict[int, str]] = {}
        for ans in self.answers():
            who = per.setdefault(ans["annotator"], {c: 0 for c in CHOICES} | {"left": 0})
            who[ans["choice"]] += 1
            if ans["choice"] in ("a", "b"):
                who["left"] += ans["choice"] == ans["shown_left"]
            if ans["choice"] != "skip":
                by_pair.setdefault(ans["annotator"], {})[ans["pair_id"]] = ans["choice"]
        for who in per.values():
            decided = who["a"] + who["b"]
            who["position_bias"] = who.pop("left") / decided if decided else float("nan")
        names = sorted(by_pair)
        kappa = {}
        for i, x in enumerate(names):
            for y in names[i + 1 :]:
                shared = sorted(set(by_pair[x]) & set(by_pair[y]))
                if shared:
                    kappa[f"{x} vs {y}"] = (cohens_kappa([by_pair[x][p] for p in shared],
                                                         [by_pair[y][p] for p in shared]), len(shared))  # fmt: skip
        return {"annotators": per, "kappa": kappa}


def cohens_kappa(x: list[str], y: list[str]) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) of two raters' labels of the same items (1 when p_e = 1 and they agree)."""
    n = len(x)
    labels = sorted(set(x) | set(y))
    observed = sum(a == b for a, b in zip(x, y)) / n
    expected = sum((x.count(c) / n) * (y.count(c) / n) for c in labels)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an error): one write, whole or not at all."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
