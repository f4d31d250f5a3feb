"""The task suite: registered ids that each fix a prompt set, a feedback spec and a completion length.

After RL4LMs' GRUE, built from what ships offline (the built-in corpus and pip-installed scorers). Each task's
prompts come from the *held-out* documents of the built-in corpus, cut by a fixed rule, so every machine builds the
same prompt set; the last ``eval_prompts`` of them are what a benchmark evaluates on.

================================  =========================================  ===============================  =========
id                                prompt                                     feedback                         threshold
================================  =========================================  ===============================  =========
``textgym/Sentiment-v0``          first 4 words of a held-out document       ``sentiment``                    0.5
``textgym/Keywords-v0``           three concepts: ``"money, time, love:"``   ``coverage+0.5*bigram_fluency``  0.4
``textgym/Continuation-v0``       first 8 words of a held-out document       ``5*chrf`` against the next 12   0.75
================================  =========================================  ===============================  =========

Each class below only documents its task; the task's fixed arguments are the registered ``kwargs`` (any of them may
be overridden in ``gym.make``, e.g. ``tokenizer=`` to match a pretrained model's).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textgym.corpus import load_corpus
from textgym.env import TextGenEnv
from textgym.feedback import STOPWORDS, _words
from textgym.prompts import PromptSet, prompts_from_corpus
from textgym.tokenizer import atomic_write_text


@functools.lru_cache(maxsize=1)
def sentiment_prompts() -> PromptSet:
    """The first 4 words of each held-out document of the built-in corpus (references: the rest of it)."""
    return prompts_from_corpus(load_corpus(), words=4)


@functools.lru_cache(maxsize=1)
def continuation_prompts(words: int = 8, reference_words: int = 12) -> PromptSet:
    """The first ``words`` words of each held-out document with at least ``words + reference_words`` words; the
    reference is the next ``reference_words`` words (about as long as a 20-token completion)."""
    prompts, refs, seen = [], [], set()
    for doc in load_corpus().validation:
        w = doc.split()
        if len(w) < words + reference_words or (p := " ".join(w[:words])) in seen:
            continue
        seen.add(p)
        prompts.append(p)
        refs.append(" " + " ".join(w[words : words + reference_words]))
    return PromptSet(tuple(prompts), tuple(refs))


@functools.lru_cache(maxsize=1)
def keyword_prompts(concepts: int = 3, vocabulary: int = 400) -> PromptSet:
    """CommonGen-style concept sets: for each held-out document that uses at least ``concepts`` of the corpus's
    ``vocabulary`` most frequent content words, its first ``concepts`` of them, as ``"money, time, love:"``; the
    reference is the document (a sentence people wrote with them). Frequent words keep the task learnable by a
    small LM."""
    corpus = load_corpus()
    counts = Counter(w for d in corpus.train for w in _words(d) if w.isalpha() and len(w) > 2 and w not in STOPWORDS)
    frequent = {w for w, _ in counts.most_common(vocabulary)}
    prompts, refs, seen = [], [], set()
    for doc in corpus.validation:
        picked = list(dict.fromkeys(w for w in _words(doc) if w in frequent))[:concepts]
        if len(picked) < concepts or (p := ", ".join(picked) + ":") in seen:
            continue
        seen.add(p)
        prompts.append(p)
        refs.append(" " + " ".join(doc.split()))
    return PromptSet(tuple(prompts), tuple(refs))


@dataclass(frozen=True)
class SuiteTask:
    """One task of the suite: what its id fixes."""

    id: str
    reward: str
    max_new_tokens: int
    reward_threshold: float
    prompts: Any
    """A function returning the task's :class:`PromptSet`."""
    entry_point: str

    def kwargs(self) -> dict[str, Any]:
        """The env arguments the id fixes."""
        return {"reward": self.reward, "prompts": self.prompts(), "max_new_tokens": self.max_new_tokens}

    def write_prompts(self, path: str | Path) -> Path:
        """Write the prompt set as a JSONL prompt file (``prompt`` and ``reference`` fields), atomically."""
        ps = self.prompts()
        rows = (json.dumps({"prompt": p, "reference": r}) for p, r in zip(ps.prompts, ps.references))
        atomic_write_text(Path(path), "\n".join(rows) + "\n")
        return Path(path)


class _SuiteEnv(TextGenEnv):
    task_id = ""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{**SUITE[self.task_id].kwargs(), **kwargs})


class SentimentEnv(_SuiteEnv):
    """Continue the opening words of a quotation so that the continuation reads positive.

    ## Description
    The prompt is the first 4 words of a held-out document of the built-in corpus (FreeBSD fortunes); the agent
    writes up to 20 tokens. The sentiment task of the IMDB benchmark in RL4LMs, on fortunes instead of reviews.

    ## Rewards
    ``sentiment``: VADER's compound score of the completion, in [-1, 1], on the last step.

    ## Solved
    ``reward_threshold`` 0.5: clearly positive text. The CPU preset's pretrained LM scores about 0.04; the
    KL-regularised optimum at β = 0.1, π* ∝ π_ref·exp(r/β), about 0.69.

    ## Arguments
    Those of ``textgym/TextGen-v0``; ``reward``, ``prompts`` and ``max_new_tokens`` are fixed by the id.

    ## Version History
    * v0: initial version.
    """

    task_id = "textgym/Sentiment-v0"


class KeywordsEnv(_SuiteEnv):
    """Write a line that uses three given concepts, fluently (CommonGen-style).

    ## Description
    The prompt lists three concepts, ``"money, time, love:"``: frequent content words that a held-out document of
    the built-in corpus uses together. The agent writes up to 20 tokens that should use them all and read like
    text people write.

    ## Rewards
    ``coverage + 0.5*bigram_fluency``: the share of the three concepts the completion uses (whole words), plus half
    the share of its word bigrams that occur in the corpus's training documents. In [0, 1.5].

    ## Solved
    ``reward_threshold`` 0.4: for example one concept in three completions out of four, in mostly attested word
    pairs. The CPU preset's pretrained LM scores about 0.21 (it almost never uses a concept); π* at β = 0.1 about
    0.48.

    ## Arguments
    Those of ``textgym/TextGen-v0``; ``reward``, ``prompts`` and ``max_new_tokens`` are fixed by the id.

    ## Version History
    * v0: initial version.
    """

    task_id = "textgym/Keywords-v0"


class ContinuationEnv(_SuiteEnv):
    """Continue a held-out quotation the way it really goes on.

    ## Description
    The prompt is the first 8 words of a held-out document of the built-in corpus with at least 20 words; the agent
    writes up to 20 tokens, scored against the document's next 12 words.

    ## Rewards
    ``5*chrf``: chrF (character n-gram F-score, sacrebleu; in [0, 1]) of the completion against the true
    continuation, times 5, so in [0, 5]. The factor puts the reward on the other tasks' scale: chrF varies little
    between completions of one prompt (a standard deviation of about 0.04), and at ×1 the best policy at β = 0.1
    would gain 0.008 over the reference, so β would weigh almost nothing against it.

    ## Solved
    ``reward_threshold`` 0.75 (chrF 0.15). The CPU preset's pretrained LM scores about 0.59; π* at β = 0.1
    about 0.85 (gaining 0.17 in objective).

    ## Arguments
    Those of ``textgym/TextGen-v0``; ``reward``, ``prompts`` and ``max_new_tokens`` are fixed by the id.

    ## Version History
    * v0: initial version.
    """

    task_id = "textgym/Continuation-v0"


SUITE: dict[str, SuiteTask] = {
    t.id: t
    for t in (
        SuiteTask("textgym/Sentiment-v0", "sentiment", 20, 0.5, sentiment_prompts, "textgym.tasks:SentimentEnv"),
        SuiteTask(
            "textgym/Keywords-v0",
            "coverage + 0.5*bigram_fluency",
            20,
            0.4,
            keyword_prompts,
            "textgym.tasks:KeywordsEnv",
        ),
        SuiteTask("textgym/Continuation-v0", "5*chrf", 20, 0.75, continuation_prompts, "textgym.tasks:ContinuationEnv"),
    )
}
"""The registered task ids and what each fixes."""


def suite_vector_env(task_id: str, **kwargs: Any) -> Any:
    """The batched env of a suite task (its ``vector_entry_point``)."""
    from textgym.vector_env import TextGenVectorEnv

    return TextGenVectorEnv(**{**SUITE[task_id].kwargs(), **kwargs})


def get_task(task_id: str) -> SuiteTask:
    """The suite task ``task_id``, or a ValueError naming it and the valid ids."""
    if task_id not in SUITE:
        raise ValueError(f"unknown task {task_id!r}; the suite's tasks are: {', '.join(SUITE)}")
    return SUITE[task_id]
