"""Prompt sets: a JSONL file of ``{"prompt": ..., "reference": ...}`` rows, or prompts cut from held-out corpus text."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from textgym.corpus import Corpus, load_corpus, read_jsonl


@dataclass(frozen=True)
class PromptSet:
    """Prompts, with optional reference completions for reference-based feedback.

    Attributes:
        prompts: the prompt texts.
        references: one reference text per prompt, or ``None`` when the set has none.
    """

    prompts: tuple[str, ...]
    references: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("a prompt set needs at least one prompt")
        if self.references is not None and len(self.references) != len(self.prompts):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.references)} references: they must match")

    def __len__(self) -> int:
        return len(self.prompts)


def prompts_from_corpus(corpus: Corpus, words: int = 4, min_words: int = 8) -> PromptSet:
    """Use the first ``words`` words of each held-out document as a prompt, the rest as its reference.

    Only documents of at least ``min_words`` words are used, so each prompt has a real continuation. Duplicate
    prompts are dropped; the order is the corpus's, so the set is deterministic.
    """
    if words < 1:
        raise ValueError(f"prompt words must be >= 1, got {words!r}")
    seen: set[str] = set()
    prompts: list[str] = []
    references: list[str] = []
    for doc in corpus.validation:
        split = doc.split()
        if len(split) < max(min_words, words + 1):
            continue
        prompt = " ".join(split[:words])
        if prompt in seen:
            continue
        seen.add(prompt)
        prompts.append(prompt)
        references.append(" " + " ".join(split[words:]))
    if not prompts:
        raise ValueError(
            f"corpus {corpus.name!r} has no held-out document of at least {max(min_words, words + 1)} words "
            "to cut prompts from; give a prompt file instead"
        )
    return PromptSet(tuple(prompts), tuple(references))


def load_prompts(
    source: str | os.PathLike[str] | PromptSet | None = None,
    corpus: str | os.PathLike[str] | Corpus | None = None,
    words: int = 4,
) -> PromptSet:
    """Load a prompt set.

    Args:
        source: a JSONL file with a ``"prompt"`` field (and optionally ``"reference"``), a :class:`PromptSet`, or
            ``None`` to cut prompts from the corpus's held-out documents.
        corpus: the corpus used when ``source`` is ``None``.
        words: prompt length in words when cutting prompts from the corpus.
    """
    if isinstance(source, PromptSet):
        return source
    if source is None:
        return prompts_from_corpus(corpus if isinstance(corpus, Corpus) else load_corpus(corpus), words=words)
    rows = read_jsonl(Path(source), required=("prompt",))
    prompts = tuple(str(r["prompt"]) for r in rows)
    has_ref = ["reference" in r for r in rows]
    if any(has_ref) and not all(has_ref):
        line = has_ref.index(False) + 1
        raise ValueError(f"{source}: row {line} has no 'reference' although other rows do: give all or none")
    references = tuple(str(r["reference"]) for r in rows) if all(has_ref) else None
    return PromptSet(prompts, references)
