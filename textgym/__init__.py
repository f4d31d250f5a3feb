"""textgym: reinforcement learning on text generation, as Gymnasium environments.

Importing textgym registers its environment ids with Gymnasium::

    import gymnasium as gym
    import textgym

    env = gym.make("textgym/TextGen-v0", reward="sentiment")
    envs = gym.make_vec("textgym/TextGen-v0", num_envs=64, vectorization_mode="vector_entry_point")
"""

from __future__ import annotations

import functools

from gymnasium.envs.registration import register, registry

from textgym import human as _human  # noqa: F401  (registers the human feedback)
from textgym.corpus import Corpus, load_corpus
from textgym.env import TextGenEnv
from textgym.feedback import Feedback, available_feedback, make_feedback, register_feedback
from textgym.prompts import PromptSet, load_prompts
from textgym.tasks import SUITE, get_task, suite_vector_env
from textgym.tokenizer import TextTokenizer, get_tokenizer
from textgym.vector_env import TextGenVectorEnv

__version__ = "0.1.0"

# One central list of the ids this package registers (tests run the env checkers on each of them).
ENV_IDS = ("textgym/TextGen-v0", "textgym/HumanFeedback-v0", *SUITE)

if "textgym/TextGen-v0" not in registry:
    register(
        id="textgym/TextGen-v0",
        entry_point="textgym.env:TextGenEnv",
        vector_entry_point="textgym.vector_env:TextGenVectorEnv",
    )
if "textgym/HumanFeedback-v0" not in registry:
    # A person at the terminal rates each completion (the "human" feedback): not a function of the text, so
    # nondeterministic, as Gymnasium asks.
    register(
        id="textgym/HumanFeedback-v0",
        entry_point="textgym.env:TextGenEnv",
        vector_entry_point="textgym.vector_env:TextGenVectorEnv",
        kwargs={"reward": "human"},
        nondeterministic=True,
    )
for _task in SUITE.values():
    # The task suite (textgym/tasks.py): each id fixes a prompt set, a feedback spec and the completion length.
    if _task.id not in registry:
        register(
            id=_task.id,
            entry_point=_task.entry_point,
            vector_entry_point=functools.partial(suite_vector_env, _task.id),
            reward_threshold=_task.reward_threshold,
        )

__all__ = [
    "ENV_IDS",
    "Corpus",
    "Feedback",
    "PromptSet",
    "TextGenEnv",
    "TextGenVectorEnv",
    "TextTokenizer",
    "available_feedback",
    "get_task",
    "get_tokenizer",
    "load_corpus",
    "load_prompts",
    "make_feedback",
    "register_feedback",
]
