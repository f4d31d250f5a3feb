"""Shared fixtures: a per-session cache folder, and a small real corpus for fast tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TEXTGYM_CACHE", str(Path(__file__).resolve().parent.parent / ".cache-test"))


def deep_equal(a, b) -> bool:
    """Equality for nested dicts / tuples of NumPy arrays (object arrays compared element by element)."""
    import numpy as np

    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.dtype == object:
            return all(deep_equal(x, y) for x, y in zip(a, b))
        return bool(np.array_equal(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return False
    return a == b


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    """A small plain-text corpus of real English (fortune entries), blank-line separated."""
    from textgym.corpus import read_documents

    docs = read_documents()[1][:400]
    path = tmp_path / "small.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny LM pretrained on a small real corpus (vocab 400), for every test module that needs one: (corpus path,
    checkpoint path). Shared by the session, so tests must not write into it."""
    from agents.pretrain import preset, pretrain
    from textgym.corpus import read_documents

    root = tmp_path_factory.mktemp("tiny_lm")
    corpus = root / "small.txt"
    corpus.write_text("\n\n".join(read_documents()[1][:400]))
    pretrain(preset("tiny", corpus=str(corpus), vocab_size=400, out=str(root / "pre"), progress=False, samples=0))
    return corpus, root / "pre/model"
