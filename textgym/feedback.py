"""Feedback functions (rewards): a registry of factories, specs that combine them, and the built-ins.

The contract (TRL's, for reward functions): a feedback is batched, text in, floats out, and tolerates extra keyword
arguments::

    feedback(prompts: Sequence[str], completions: Sequence[str], **kwargs) -> np.ndarray  # shape (n,)

A callable is treated as batched when its first two parameters are named ``prompts`` and ``completions`` (or it has
an attribute ``batched = True``); any other callable is a per-sample ``f(prompt, completion) -> float`` and is
wrapped. Keyword arguments (such as ``references``) reach a batched callable that takes ``**kwargs`` or a parameter
of that name (``f(prompts, completions, references)``); the others are not passed to it.

A *spec* names the feedback; :func:`make_feedback` turns it into a :class:`Feedback`:

* a registered name: ``"sentiment"``;
* a name with arguments: ``"length(target=12)"``, ``"keywords(words=love|joy)"`` (``|`` separates list items), or
  ``("keywords", {"words": ["love", "joy"]})``; a quoted value is a string as written, so a path may hold ``+``,
  ``,``, ``|`` or parentheses: ``'reward-model(path="runs/rm (v2)")'``;
* a weighted mix: ``"sentiment + 0.5*repetition"`` or ``{"sentiment": 1.0, "repetition": 0.5}``, or with arguments
  ``{"length": {"weight": 0.5, "target": 12}}``;
* a callable or an object with ``__call__``;
* a :class:`Feedback` (returned as is).

The registry holds *factories*: ``factory(**kwargs) -> feedback callable``. Third-party packages add their own
without touching textgym, through the entry-point group ``textgym.rewards``::

    [project.entry-points."textgym.rewards"]
    toxicity = "mypackage.rewards:make_toxicity"
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np

ENTRY_POINT_GROUP = "textgym.rewards"

FeedbackFactory = Callable[..., Callable[..., Any]]
_REGISTRY: dict[str, FeedbackFactory] = {}


def register_feedback(name: str, factory: FeedbackFactory | None = None):
    """Register a feedback factory under ``name``; usable as a decorator.

    Example::

        @register_feedback("shouting")
        def make_shouting(threshold: float = 0.5):
            def shouting(prompts, completions, **kwargs):
                return np.array([float(sum(c.isupper() for c in s) > threshold * len(s)) for s in completions])
            return shouting
    """
    if not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
        raise ValueError(f"feedback name {name!r} is not valid: use letters, digits, '_', '-' or '.'")

    def add(f: FeedbackFactory) -> FeedbackFactory:
        if not callable(f):
            raise TypeError(f"feedback factory for {name!r} must be callable, got {type(f).__name__}")
        _REGISTRY[name] = f
        return f

    return add if factory is None else add(factory)


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_feedback() -> list[str]:
    """Names of all known feedback: built-in, registered in this process, and from installed entry points."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get_factory(name: str) -> FeedbackFactory:
    """Look up a factory by name, loading it from an entry point if a package provides it."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        return register_feedback(name, eps[name].load())
    raise KeyError(f"unknown feedback {name!r}; known feedback: {', '.join(available_feedback())}")


# -- adapting callables to the batched contract ------------------------------------------------------------------
def _is_batched(fn: Callable[..., Any]) -> bool:
    if getattr(fn, "batched", None) is not None:
        return bool(fn.batched)
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return params[:2] == ["prompts", "completions"]


def _keyword_names(fn: Callable[..., Any]) -> frozenset[str] | None:
    """The keyword arguments ``fn`` takes after ``prompts, completions``: None for all (``**kwargs``)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in params[2:] if p.kind in keyword)


def _callable_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def _all_finite(values: np.ndarray) -> bool:
    # The few values of one env step are checked in a Python pass over a list: 8x faster than np.isfinite().all().
    if values.size <= 64:
        return all(map(math.isfinite, values.tolist()))
    return bool(np.isfinite(values).all())


@dataclass
class _Component:
    name: str
    weight: float
    fn: Callable[..., Any]
    batched: bool = field(init=False)
    keywords: frozenset[str] | None = field(init=False)  # the keyword arguments fn takes (None: all)

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"feedback {self.name!r} is not callable (got {type(self.fn).__name__})")
        self.batched = _is_batched(self.fn)
        self.keywords = _keyword_names(self.fn)

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        n = len(completions)  # before the call, which might change the list
        if not self.batched:
            out = [self.fn(p, c) for p, c in zip(prompts, completions)]
        else:
            if self.keywords is not None and kwargs:
                kwargs = {k: v for k, v in kwargs.items() if k in self.keywords}
            out = self.fn(prompts, completions, **kwargs)
        try:
            values = out if type(out) is np.ndarray and out.dtype == np.float64 else np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(
                f"feedback {self.name!r} must return numbers, got {type(out).__name__}: {str(out)[:80]}"
            ) from None
        if values.ndim != 1:
            values = values.reshape(-1)
        if values.shape != (n,):
            raise ValueError(
                f"feedback {self.name!r} returned {values.size} values for {n} completions "
                f"(it must return one float per completion)"
            )
        if not _all_finite(values):
            bad = int(np.flatnonzero(~np.isfinite(values))[0])
            text = completions[bad] if bad < len(completions) else None
            raise ValueError(
                f"feedback {self.name!r} returned {values[bad]} for completion {bad} ({text!r}); "
                "feedback must be finite"
            )
        return values


class Feedback:
    """A weighted sum of feedback components, batched, with each component's value available.

    Call it like any feedback (``feedback(prompts, completions) -> np.ndarray``), or use :meth:`evaluate` for the
    total and the per-component values.
    """

    batched = True

    def __init__(self, components: Sequence[_Component]) -> None:
        if not components:
            raise ValueError("a feedback needs at least one component")
        names = [c.name for c in components]
        for i, c in enumerate(components):  # keep component names unique in info dicts
            if names.count(c.name) > 1:
                c.name = f"{c.name}.{names[: i + 1].count(names[i]) - 1}"
        self.components = list(components)

    @property
    def needs_references(self) -> list[str]:
        """The components that compare a completion with its prompt's reference (``bleu``, ``chrf``, ``rouge``)."""
        return [c.name for c in self.components if getattr(c.fn, "needs_references", False)]

    @property
    def names(self) -> list[str]:
        """The components' names, as they appear in ``info["feedback"]`` (unique)."""
        return [c.name for c in self.components]

    def evaluate(
        self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Return ``(total, {component: values})``; total is the weighted sum of the components."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions: they must match")
        parts: dict[str, np.ndarray] = {}
        total = None
        for c in self.components:
            values = parts[c.name] = c(prompts, completions, **kwargs)
            # (a copy, not the component's own array, so that the total can be changed without changing the part)
            term = values.copy() if c.weight == 1.0 else c.weight * values
            total = term if total is None else total + term
        return total, parts

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        return self.evaluate(prompts, completions, **kwargs)[0]

    def __repr__(self) -> str:
        return "Feedback(" + " + ".join(f"{c.weight:g}*{c.name}" for c in self.components) + ")"


# -- specs -------------------------------------------------------------------------------------------------------
_TERM = re.compile(
    r"^\s*(?:(?P<w>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*\*\s*)?(?P<name>[A-Za-z_][\w.-]*)\s*(?:\((?P<args>.*)\))?\s*$"
)


def _parse_value(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":  # quoted: a string, taken as written
        return text[1:-1]
    if "|" in text:
        return [_parse_value(t) for t in text.split("|") if t.strip()]
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text.strip("'\"")


def _split_top_level(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside parentheses and quotes (so a quoted path may hold '+', ',' or parentheses)."""
    parts, depth, cur, quote = [], 0, [], ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
            cur.append(ch)
            continue
        if ch in "'\"":
            quote = ch
        depth += (ch == "(") - (ch == ")")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if quote:
        raise ValueError(f"unclosed quote {quote} in feedback spec {text!r}")
    parts.append("".join(cur))
    return parts


def parse_spec(spec: str) -> list[tuple[str, float, dict[str, Any]]]:
    """Parse ``"sentiment + 0.5*length(target=12)"`` into ``[(name, weight, kwargs), ...]``."""
    terms = []
    for term in _split_top_level(spec, "+"):
        m = _TERM.match(term)
        if not m:
            raise ValueError(
                f"cannot parse feedback spec {spec!r} at {term.strip()!r}; expected terms like "
                "'sentiment', '0.5*repetition' or 'length(target=12)' joined by '+'"
            )
        kwargs: dict[str, Any] = {}
        if m["args"] and m["args"].strip():
            for arg in _split_top_level(m["args"], ","):
                if "=" not in arg:
                    raise ValueError(f"feedback argument {arg.strip()!r} in {spec!r} must be key=value")
                key, value = arg.split("=", 1)
                kwargs[key.strip()] = _parse_value(value)
        terms.append((m["name"], float(m["w"]) if m["w"] else 1.0, kwargs))
    return terms


def _build(name: str, weight: float, kwargs: Mapping[str, Any]) -> _Component:
    factory = get_factory(name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind(**kwargs)
        except TypeError:
            names = [p.name for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
            unknown = sorted(set(kwargs) - set(names))
            raise ValueError(
                f"bad arguments {dict(kwargs)} for feedback {name!r}"
                + (f": no argument {unknown[0]!r}" if unknown else "")
                + f"; its arguments: {', '.join(names) or 'none'}"
            ) from None
    fn = factory(**kwargs)
    if not math.isfinite(weight):
        raise ValueError(f"weight of feedback {name!r} must be finite, got {weight!r}")
    return _Component(name, float(weight), fn)


def make_feedback(spec: Any) -> Feedback:
    """Turn a spec (see the module docstring) into a :class:`Feedback`."""
    if isinstance(spec, Feedback):
        return spec
    if isinstance(spec, str):
        return Feedback([_build(n, w, kw) for n, w, kw in parse_spec(spec)])
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return Feedback([_build(spec[0], 1.0, spec[1])])
    if isinstance(spec, Mapping):
        comps = []
        for name, value in spec.items():
            if isinstance(value, Mapping):
                kwargs = dict(value)
                weight = float(kwargs.pop("weight", 1.0))
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                weight, kwargs = float(value), {}
            else:
                raise TypeError(f"weight for feedback {name!r} must be a number or a dict of arguments, got {value!r}")
            comps.append(_build(str(name), weight, kwargs))
        return Feedback(comps)
    if callable(spec):
        return Feedback([_Component(_callable_name(spec), 1.0, spec)])
    raise TypeError(
        f"cannot make feedback from {type(spec).__name__} {spec!r}: give a name "
        f"({', '.join(available_feedback())}), a weighted dict, or a callable"
    )


# -- built-in feedback -------------------------------------------------------------------------------------------
_WORD = re.compile(r"[A-Za-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _distinct(text: str, n: int) -> float | None:
    """Unique word n-grams of ``text`` over all its word n-grams (None when it has none)."""
    w = _words(text)
    grams = [tuple(w[j : j + n]) for j in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


@register_feedback("sentiment")
def make_sentiment(on: str = "completion") -> Callable[..., np.ndarray]:
    """VADER sentiment (compound score in [-1, 1]) of the completion, or of prompt + completion with ``on="text"``.

    VADER (Hutto & Gilbert, 2014) ships its lexicon inside the ``vaderSentiment`` package: offline, fast, real.
    """
    if on not in ("completion", "text"):
        raise ValueError(f"sentiment 'on' must be 'completion' or 'text', got {on!r}")
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()

    def sentiment(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        texts = completions if on == "completion" else [p + c for p, c in zip(prompts, completions)]
        return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)

    return sentiment


@register_feedback("length")
def make_length(target: int = 10) -> Callable[..., np.ndarray]:
    """Closeness of the completion's word count to ``target``: 1 at the target, falling linearly to 0 at 0 or 2x."""
    if not isinstance(target, int) or target < 1:
        raise ValueError(f"length target must be an integer >= 1, got {target!r}")

    def length(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        # Per completion in plain Python: it needs a str.split each anyway, and it is 3x faster than array ops
        # on the few completions that end at one env step.
        return np.array([max(0.0, 1.0 - abs(len(c.split()) - target) / target) for c in completions], np.float64)

    return length


@register_feedback("keywords")
def make_keywords(words: Sequence[str] | str | None = None) -> Callable[..., np.ndarray]:
    """Fraction of the listed ``words`` that the completion uses (case-insensitive, whole words)."""
    if isinstance(words, str):
        words = [words]
    if not words:
        raise ValueError("feedback 'keywords' needs words, e.g. 'keywords(words=love|joy)' or words=['love', 'joy']")
    wanted = {w.lower() for w in words}

    def keywords(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        return np.array([len(wanted & set(_words(c))) / len(wanted) for c in completions], dtype=np.float64)

    return keywords


@register_feedback("repetition")
def make_repetition(n: int = 2) -> Callable[..., np.ndarray]:
    """Penalty for repeated word n-grams in the completion: minus the share of n-grams that repeat an earlier one.

    0 for a completion without repeats, approaching -1 for one phrase said over and over.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"repetition n must be an integer >= 1, got {n!r}")

    def repetition(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        return np.array([0.0 if (d := _distinct(c, n)) is None else d - 1.0 for c in completions], dtype=np.float64)

    return repetition


# -- reference metrics -------------------------------------------------------------------------------------------
def _references(name: str, completions: Sequence[str], kwargs: Mapping[str, Any]) -> Sequence[str]:
    references = kwargs.get("references")
    if references is None:
        raise ValueError(
            f"feedback {name!r} compares each completion with its prompt's reference, but no references were given: "
            'use a JSONL prompt file with a "reference" field (or the corpus\'s own prompts, whose references are '
            "their documents' continuations)"
        )
    if len(references) != len(completions):
        raise ValueError(f"feedback {name!r}: {len(references)} references for {len(completions)} completions")
    return references


def _reference_metric(name: str, score: Callable[[str, str], float]) -> Callable[..., np.ndarray]:
    def metric(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        references = _references(name, completions, kwargs)
        return np.array([score(c, r) for c, r in zip(completions, references)], dtype=np.float64)

    metric.__name__ = name
    metric.needs_references = True  # type: ignore[attr-defined]  (the task checks its prompts have them)
    return metric


@register_feedback("bleu")
def make_bleu() -> Callable[..., np.ndarray]:
    """Sentence BLEU of the completion against its prompt's reference, in [0, 1] (sacrebleu, with effective order,
    so that a short completion is not zero for lack of 4-grams)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(effective_order=True)
    return _reference_metric("bleu", lambda c, r: bleu.sentence_score(c.strip(), [r.strip()]).score / 100)


@register_feedback("chrf")
def make_chrf() -> Callable[..., np.ndarray]:
    """chrF (character n-gram F-score, Popović 2015) of the completion against its prompt's reference, in [0, 1]
    (sacrebleu)."""
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    return _reference_metric("chrf", lambda c, r: chrf.sentence_score(c.strip(), [r.strip()]).score / 100)


@register_feedback("rouge")
def make_rouge() -> Callable[..., np.ndarray]:
    """ROUGE-L F1 (longest common subsequence of words) of the completion against its prompt's reference, in [0, 1]
    (Google's rouge-score)."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"])
    return _reference_metric("rouge", lambda c, r: scorer.score(r, c)["rougeL"].fmeasure)


@register_feedback("distinct")
def make_distinct(n: int = 2) -> Callable[..., np.ndarray]:
    """Distinct-n of the completion (Li et al., 2016): unique word n-grams over all its word n-grams, in [0, 1]
    (0 for a completion shorter than n words)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"distinct n must be an integer >= 1, got {n!r}")

    def distinct(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        return np.array([_distinct(c, n) or 0.0 for c in completions], dtype=np.float64)

    return distinct


# -- task-suite rules (textgym/Keywords-v0) ----------------------------------------------------------------------
_FUNCTION_WORDS = """a about above after again against all am an and any are as at be because been before being below
    between
    both but by can could did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself no nor not
    now of off on once only or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with within without would you your yours yourself yourselves
    also upon yet may might must shall"""
STOPWORDS = frozenset(_FUNCTION_WORDS.split())
"""English function words: never concepts for ``coverage``."""


def content_words(text: str) -> list[str]:
    """The alphabetic words of ``text`` that are not function words, lower-cased, first occurrences in order."""
    seen: dict[str, None] = {}
    for w in _words(text):
        if w.isalpha() and w not in STOPWORDS:
            seen.setdefault(w, None)
    return list(seen)


@register_feedback("coverage")
def make_coverage() -> Callable[..., np.ndarray]:
    """Share of the prompt's content words (its concepts, as in CommonGen: "dog, frisbee, catch:") that the
    completion uses, in [0, 1]; whole words, case-insensitive. A prompt without content words scores 0."""

    def coverage(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        out = np.zeros(len(completions), dtype=np.float64)
        for j, (p, c) in enumerate(zip(prompts, completions)):
            if concepts := content_words(p):
                out[j] = len(set(concepts) & set(_words(c))) / len(concepts)
        return out

    return coverage


@register_feedback("bigram_fluency")
def make_bigram_fluency(corpus: str = "fortunes", min_count: int = 1) -> Callable[..., np.ndarray]:
    """Share of the completion's word bigrams (the one joining it to the prompt's last word included) that occur at
    least ``min_count`` times in the training documents of ``corpus``, in [0, 1]: a torch-free fluency judge that
    rewards word sequences people write. An empty completion scores 0. Pair it with a task term: alone it is
    maximised by a safe, common phrase."""
    from collections import Counter

    from textgym.corpus import load_corpus

    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"bigram_fluency min_count must be an integer >= 1, got {min_count!r}")
    counts: Counter[tuple[str, str]] = Counter()
    for doc in load_corpus(corpus).train:
        w = _words(doc)
        counts.update(zip(w, w[1:]))
    known = frozenset(g for g, n in counts.items() if n >= min_count)

    def bigram_fluency(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        out = np.zeros(len(completions), dtype=np.float64)
        for j, (p, c) in enumerate(zip(prompts, completions)):
            w = _words(c)
            if not w:
                continue
            w = _words(p)[-1:] + w
            grams = list(zip(w, w[1:]))
            out[j] = sum(g in known for g in grams) / len(grams) if grams else 0.0
        return out

    return bigram_fluency
