"""What a single env and the batched vector env share: prompts, tokenizer, feedback, and how a completion is scored.

Keeping this in one place is what makes :class:`~textgym.env.TextGenEnv` and
:class:`~textgym.vector_env.TextGenVectorEnv` give identical results under the same seeds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from textgym.corpus import Corpus, load_corpus
from textgym.feedback import Feedback, make_feedback
from textgym.prompts import PromptSet, load_prompts
from textgym.tokenizer import DEFAULT_VOCAB_SIZE, TextTokenizer, get_tokenizer

FINISH_EOS, FINISH_LENGTH = "eos", "length"


def check_render_mode(render_mode: str | None, modes: list[str]) -> None:
    """Raise a ValueError naming an unsupported render mode and the supported ones."""
    if render_mode is not None and render_mode not in modes:
        raise ValueError(f"render_mode {render_mode!r} is not supported; use one of {modes} or None")


@dataclass
class Scored:
    """A batch of finished episodes, column by column: what the feedback said and what goes in ``info``."""

    rewards: np.ndarray
    prompts: list[str]
    completions: list[str]
    feedback: dict[str, np.ndarray]
    finish_reasons: list[str]
    lengths: list[int]

    def info(self, j: int) -> dict[str, Any]:
        """Episode ``j``'s final ``info`` dict, as a single env returns it."""
        return {
            "prompt": self.prompts[j],
            "completion": self.completions[j],
            "feedback": {name: float(v[j]) for name, v in self.feedback.items()},
            "finish_reason": self.finish_reasons[j],
            "completion_tokens": self.lengths[j],
        }


class TextTask:
    """The fixed parts of a text-generation task.

    Args:
        reward: a feedback spec (see :func:`textgym.feedback.make_feedback`).
        corpus: corpus for the default tokenizer and prompts: ``None`` for the built-in one, a path, or a Corpus.
        prompts: a JSONL prompt file, a :class:`PromptSet`, or ``None`` for prompts cut from held-out corpus text.
        tokenizer: a :class:`TextTokenizer`, a path to a ``tokenizer.json``, or ``None`` to train (once, cached)
            a byte-level BPE of ``vocab_size`` on the corpus.
        vocab_size: vocabulary size when the tokenizer is trained here.
        context_len: number of token ids in an observation.
        max_new_tokens: longest completion, in tokens.
        prompt_words: prompt length in words when prompts are cut from the corpus.
    """

    def __init__(
        self,
        reward: Any = "sentiment",
        corpus: str | os.PathLike[str] | Corpus | None = None,
        prompts: str | os.PathLike[str] | PromptSet | None = None,
        tokenizer: TextTokenizer | str | os.PathLike[str] | None = None,
        vocab_size: int = DEFAULT_VOCAB_SIZE,
        context_len: int = 32,
        max_new_tokens: int = 20,
        prompt_words: int = 4,
    ) -> None:
        for name, value in (("context_len", context_len), ("max_new_tokens", max_new_tokens)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.context_len = int(context_len)
        self.max_new_tokens = int(max_new_tokens)
        self.feedback: Feedback = make_feedback(reward)

        needs_corpus = tokenizer is None or prompts is None
        corpus_obj = load_corpus(corpus) if needs_corpus else None
        if isinstance(tokenizer, TextTokenizer):
            self.tokenizer = tokenizer
        elif tokenizer is not None:
            self.tokenizer = TextTokenizer.from_file(tokenizer)
        else:
            self.tokenizer = get_tokenizer(corpus_obj, vocab_size)
        self.prompts: PromptSet = load_prompts(prompts, corpus=corpus_obj, words=prompt_words)
        if self.prompts.references is None and self.feedback.needs_references:
            given = isinstance(prompts, (str, os.PathLike))
            where = f"the prompt file {str(prompts)!r} has" if given else "the prompts have"
            raise ValueError(
                f"feedback {', '.join(map(repr, self.feedback.needs_references))} compares each completion with its "
                f'prompt\'s reference, but {where} none: give each row a "reference" field, or use the '
                "corpus's own prompts (whose references are their documents' continuations)"
            )

        # Each prompt's context, <bos> + prompt ids, encoded once: whole (for a policy that carries its state from
        # the prompt) and cut to the observation window (the observation shows only its last context_len ids).
        tok = self.tokenizer
        self.prompt_ids: list[list[int]] = [[tok.bos_id] + ids for ids in tok.encode_batch(self.prompts.prompts)]
        self.prompt_obs = np.full((len(self.prompts), self.context_len), tok.pad_id, dtype=np.int64)
        for i, ids in enumerate(self.prompt_ids):
            ctx = ids[-self.context_len :]
            self.prompt_obs[i, self.context_len - len(ctx) :] = ctx
        self.longest_prompt = max(map(len, self.prompt_ids))
        """Tokens in the longest ``<bos> + prompt``: a window policy needs ``context_len >= longest_prompt +
        max_new_tokens - 1`` to see every prompt whole until the end of its completion."""

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def observation_space(self) -> spaces.Box:
        return spaces.Box(0, self.vocab_size - 1, shape=(self.context_len,), dtype=np.int64)

    def action_space(self) -> spaces.Discrete:
        return spaces.Discrete(self.vocab_size)

    def draw_prompt(self, rng: np.random.Generator) -> int:
        """A uniformly drawn prompt index. ``floor(u * n)`` for one ``rng.random()`` draw: a third of the cost of
        ``rng.integers(n)``, which matters when a batched env resets a few sub-envs at every step, and uniform to
        within ``n / 2**53``."""
        n = len(self.prompts)
        return min(int(rng.random() * n), n - 1)

    def check_prompt_index(self, value: Any, where: str = "") -> int:
        """Return a ``prompt_index`` reset option as an int, or raise a ValueError naming it and the valid range."""
        n = len(self.prompts)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < n:
            raise ValueError(f"prompt_index{where} {value!r} is not valid: give an integer in [0, {n - 1}]")
        return int(value)

    def score(self, prompt_idx: Sequence[int], completion_ids: Sequence[Sequence[int]]) -> Scored:
        """Decode finished completions and call the feedback once on the whole batch."""
        prompts = [self.prompts.prompts[i] for i in prompt_idx]
        completions = self.tokenizer.decode_batch(completion_ids)
        kwargs: dict[str, Any] = {}
        if self.prompts.references is not None:
            kwargs["references"] = [self.prompts.references[i] for i in prompt_idx]
        # (copies: the feedback may change its lists, and the info keeps the texts)
        rewards, parts = self.feedback.evaluate(list(prompts), list(completions), **kwargs)
        eos = self.tokenizer.eos_id
        lengths = [len(ids) for ids in completion_ids]
        reasons = [FINISH_EOS if n and ids[-1] == eos else FINISH_LENGTH for n, ids in zip(lengths, completion_ids)]
        return Scored(rewards, prompts, completions, parts, reasons, lengths)

    def check_action(self, action: Any, where: str = "") -> int:
        """Return ``action`` as an int, or raise a ValueError that names it and the valid range."""
        value = action
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(()).item()
        integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        whole_float = isinstance(value, (float, np.floating)) and float(value).is_integer()
        if not (integer or whole_float):
            raise ValueError(
                f"action{where} {action!r} is not a token id: give an integer in [0, {self.vocab_size - 1}]"
            )
        value = int(value)
        if not 0 <= value < self.vocab_size:
            raise ValueError(
                f"action{where} {value} is outside the vocabulary: valid token ids are 0 to {self.vocab_size - 1}"
            )
        return value

    def render_text(self, prompt: str, completion: str, reward: float | None) -> str:
        lines = [f"prompt:     {prompt}", f"completion: {completion.strip()}"]
        if reward is not None:
            lines.append(f"reward:     {reward:.4f}")
        return "\n".join(lines) + "\n"
