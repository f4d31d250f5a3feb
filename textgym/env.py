"""``TextGenEnv``: text generation as a Gymnasium environment, one token per action, one completion per episode."""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import numpy as np

from textgym.corpus import Corpus
from textgym.prompts import PromptSet
from textgym.task import TextTask, check_render_mode
from textgym.tokenizer import DEFAULT_VOCAB_SIZE, TextTokenizer


class TextGenEnv(gym.Env[np.ndarray, np.int64]):
    """Complete a prompt one token at a time; the feedback function scores the finished completion.

    ## Description
    Each episode samples a prompt (with the env's ``np_random``) and asks the agent to continue it. An action
    appends one token. When the completion ends, the prompt and the decoded completion go to a *feedback
    function* (rule-based, a reference metric, a learned reward model, or a human) whose score is the reward.

    ## Action Space
    ``Discrete(vocab_size)``: the id of the next token. The ``<eos>`` id ends the completion.

    ## Observation Space
    ``Box(0, vocab_size - 1, (context_len,), int64)``: the last ``context_len`` token ids of
    ``<bos> + prompt + completion``, left-padded with the ``<pad>`` id. Text never goes in the observation; the
    decoded prompt and completion are in ``info``.

    ## Rewards
    0 on every step but the last. On the last step: the feedback on (prompt, completion); for a weighted mix, the
    weighted sum, with each component's value in ``info["feedback"]``.

    ## Starting State
    ``<bos>`` followed by a prompt drawn uniformly from the prompt set, or the prompt that
    ``reset(options={"prompt_index": j})`` names (evaluation uses it to complete each held-out prompt in turn).
    A prompt longer than the window shows only its last ids; ``env.task.prompt_ids[j]`` holds it whole, and
    ``env.task.longest_prompt`` says how many tokens the longest one has.

    ## Episode End
    The episode terminates when the agent emits ``<eos>`` or the completion reaches ``max_new_tokens``
    (``info["finish_reason"]`` says which). Both are true ends of the task: the completion is scored then and there
    is nothing after it to bootstrap from, so ``terminated`` is set for both and ``truncated`` is never set.

    ## Info
    After ``reset``: ``prompt`` and ``prompt_index``. On the last step: ``prompt``, ``completion``, ``feedback``
    (component name -> value), ``finish_reason`` (``"eos"`` or ``"length"``) and ``completion_tokens``.

    ## Arguments
    ```python
    gym.make("textgym/TextGen-v0", reward="sentiment", corpus=None, prompts=None, tokenizer=None,
             vocab_size=2000, context_len=32, max_new_tokens=20, prompt_words=4, render_mode=None)
    ```
    * ``reward``: feedback spec: a name (``"sentiment"``, ``"length"``, ``"keywords(words=love|joy)"``,
      ``"repetition"``, or any registered one), a weighted mix (``{"sentiment": 1.0, "repetition": 0.5}`` or
      ``"sentiment + 0.5*repetition"``), or a callable.
    * ``corpus``: ``None`` for the built-in English corpus (FreeBSD fortunes), a ``.txt`` file, a folder of ``.txt``
      files, or a ``.jsonl`` file with a ``"text"`` field. Used for the default tokenizer and prompts.
    * ``prompts``: a JSONL file with a ``"prompt"`` field (optional ``"reference"``), or ``None`` for the first
      ``prompt_words`` words of held-out corpus documents.
    * ``tokenizer``: a ``TextTokenizer`` or a ``tokenizer.json`` path; ``None`` trains a byte-level BPE of
      ``vocab_size`` on the corpus once and caches it.
    * ``context_len``: observation length in tokens. ``max_new_tokens``: longest completion.
    * ``render_mode``: ``"ansi"`` returns the prompt and completion as text; ``"human"`` prints them.

    ## Version History
    * v0: initial version.
    """

    metadata = {"render_modes": ["ansi", "human"], "render_fps": 4}

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
        render_mode: str | None = None,
    ) -> None:
        check_render_mode(render_mode, self.metadata["render_modes"])
        self.render_mode = render_mode
        self.task = TextTask(reward, corpus, prompts, tokenizer, vocab_size, context_len, max_new_tokens, prompt_words)
        self.tokenizer = self.task.tokenizer
        self.observation_space = self.task.observation_space()
        self.action_space = self.task.action_space()

        self._obs: np.ndarray | None = None
        self._prompt_idx = -1
        self._generated: list[int] = []
        self._done = False
        self._last_reward: float | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode: a prompt drawn from ``self.np_random``, or the one ``options["prompt_index"]`` names."""
        super().reset(seed=seed)
        options = options or {}
        if set(options) - {"prompt_index"}:
            raise ValueError(f"unknown reset options {sorted(set(options) - {'prompt_index'})}; known: 'prompt_index'")
        if options.get("prompt_index") is not None:
            self._prompt_idx = self.task.check_prompt_index(options["prompt_index"])
        else:
            self._prompt_idx = self.task.draw_prompt(self.np_random)
        self._obs = self.task.prompt_obs[self._prompt_idx].copy()
        self._generated = []
        self._done = False
        self._last_reward = None
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), {"prompt": self.prompt, "prompt_index": self._prompt_idx}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._obs is None:
            raise RuntimeError("TextGenEnv.step() was called before reset(): call env.reset() first")
        if self._done:
            raise RuntimeError("the episode has ended (terminated=True): call env.reset() before stepping again")
        token = self.task.check_action(action)
        self._obs[:-1] = self._obs[1:]
        self._obs[-1] = token
        self._generated.append(token)

        terminated = token == self.tokenizer.eos_id or len(self._generated) >= self.task.max_new_tokens
        reward, info = 0.0, {}
        if terminated:
            self._done = True  # also if the feedback raises: the episode cannot go on past its last token
            scored = self.task.score([self._prompt_idx], [self._generated])
            reward, info = float(scored.rewards[0]), scored.info(0)
            self._last_reward = reward
        if self.render_mode == "human":
            self.render()
        return self._obs.copy(), reward, terminated, False, info

    @property
    def prompt(self) -> str:
        """The current episode's prompt text."""
        if self._prompt_idx < 0:
            raise RuntimeError("no prompt yet: call env.reset() first")
        return self.task.prompts.prompts[self._prompt_idx]

    @property
    def completion(self) -> str:
        """The completion generated so far, decoded."""
        return self.tokenizer.decode(self._generated)

    def render(self) -> str | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'human' to gym.make")
            return None
        if self._prompt_idx < 0:
            text = "(no episode yet: call reset())\n"
        else:
            text = self.task.render_text(self.prompt, self.completion, self._last_reward)
        if self.render_mode == "ansi":
            return text
        print(text, end="")
        return None
