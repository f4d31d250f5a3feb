"""A byte-level BPE tokenizer trained on the corpus with Hugging Face ``tokenizers``.

Byte-level means every input string can be encoded (no unknown token is ever needed). Three special tokens come
first in the vocabulary: ``<pad>`` (0), ``<bos>`` (1), ``<eos>`` (2). Trained tokenizers are cached on disk, keyed by a
hash of the training text and the vocabulary size, so ``gym.make`` does not retrain one each time.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from textgym.corpus import Corpus, load_corpus

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
DEFAULT_VOCAB_SIZE = 2000
_MIN_VOCAB = len(SPECIAL_TOKENS) + 256  # the byte alphabet plus the special tokens
_FORMAT = "v1"  # bump when training settings change, so old cache entries are not reused


def cache_dir() -> Path:
    """Where textgym caches derived files: ``$TEXTGYM_CACHE``, else ``$XDG_CACHE_HOME/textgym``, else ``~/.cache``."""
    if os.environ.get("TEXTGYM_CACHE"):
        return Path(os.environ["TEXTGYM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "textgym"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temporary file and a rename, so readers never see half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TextTokenizer:
    """A thin, typed wrapper around a ``tokenizers.Tokenizer`` with textgym's special tokens.

    Attributes:
        vocab_size: number of token ids (``Discrete(vocab_size)`` is the env's action space).
        pad_id, bos_id, eos_id: ids of the special tokens.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if any(i is None for i in ids):
            missing = [t for t, i in zip(SPECIAL_TOKENS, ids) if i is None]
            raise ValueError(f"tokenizer lacks the special tokens {missing}; textgym needs {list(SPECIAL_TOKENS)}")
        self._tok = tokenizer
        self.pad_id, self.bos_id, self.eos_id = (int(i) for i in ids)
        self.vocab_size = int(tokenizer.get_vocab_size())
        self._token_bytes = _byte_table(tokenizer)

    # -- training, saving, loading -----------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> TextTokenizer:
        """Train a byte-level BPE tokenizer. Deterministic: the same texts give the same tokenizer."""
        if not isinstance(vocab_size, int) or vocab_size < _MIN_VOCAB:
            raise ValueError(
                f"vocab_size must be an integer >= {_MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} special tokens), "
                f"got {vocab_size!r}"
            )
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TextTokenizer:
        """Load a ``tokenizer.json``."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            if isinstance(exc, ValueError):
                raise
            raise ValueError(f"{str(path)!r} is not a valid tokenizer.json: {exc}") from None

    def to_str(self) -> str:
        """The tokenizer as ``tokenizer.json`` text."""
        return self._tok.to_str()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save as ``tokenizer.json`` (atomically)."""
        atomic_write_text(Path(path), self.to_str())

    def fingerprint(self) -> str:
        """A short hash of the whole tokenizer, to check that a model and an env share one."""
        return hashlib.sha256(self.to_str().encode("utf-8")).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TextTokenizer) and self.to_str() == other.to_str()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    # -- encoding ----------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    @property
    def token_bytes(self) -> list[bytes]:
        """Each token id's bytes (empty for the special tokens): what :meth:`decode` joins."""
        return self._token_bytes

    def decode(self, ids: Sequence[int]) -> str:
        """Decode ids to text, dropping special tokens.

        Byte-level BPE tokens are byte strings, so decoding is a table look-up and a UTF-8 decode (invalid bytes
        become U+FFFD, as in ``tokenizers``). This gives the same text as ``tokenizers``' own decoder, without its
        per-call overhead, which dominates when episodes end a few at a time.
        """
        table = self._token_bytes
        return b"".join([table[i] for i in ids]).decode("utf-8", errors="replace")

    def decode_batch(self, batch: Sequence[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size})"


def _bytes_to_unicode() -> dict[str, int]:
    """The byte <-> printable-character map of byte-level BPE (GPT-2's), as character -> byte."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _byte_table(tokenizer: Tokenizer) -> list[bytes]:
    """Each token id's bytes (empty for special tokens), for fast decoding."""
    to_byte = _bytes_to_unicode()
    table = [b""] * tokenizer.get_vocab_size()
    for token, idx in tokenizer.get_vocab().items():
        if token in SPECIAL_TOKENS:
            continue
        if any(ch not in to_byte for ch in token):
            raise ValueError(f"token {token!r} is not byte-level: textgym needs a byte-level BPE tokenizer")
        table[idx] = bytes(to_byte[ch] for ch in token)
    return table


_memory_cache: dict[tuple[str, int], TextTokenizer] = {}


def corpus_digest(corpus: Corpus) -> str:
    h = hashlib.sha256()
    for doc in corpus.train:
        h.update(doc.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def get_tokenizer(
    corpus: Corpus | str | os.PathLike[str] | None = None, vocab_size: int = DEFAULT_VOCAB_SIZE
) -> TextTokenizer:
    """The tokenizer for a corpus: trained on its training documents once, then read from the cache.

    Args:
        corpus: a :class:`Corpus`, a corpus path, or ``None`` for the built-in corpus.
        vocab_size: vocabulary size, including the 3 special tokens.
    """
    corpus = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    key = (f"{_FORMAT}-{corpus_digest(corpus)}", int(vocab_size))
    if key in _memory_cache:
        return _memory_cache[key]
    path = cache_dir() / f"tokenizer-{key[0]}-{vocab_size}.json"
    tokenizer: TextTokenizer | None = None
    if path.is_file():
        try:
            tokenizer = TextTokenizer.from_file(path)
        except ValueError:
            tokenizer = None  # a damaged cache entry is rebuilt, not trusted
    if tokenizer is None:
        tokenizer = TextTokenizer.train(corpus.train, vocab_size=vocab_size)
        tokenizer.save(path)
    _memory_cache[key] = tokenizer
    return tokenizer
