"""TextGenEnv: env checkers on every registered id, seeding, episode logic, rendering and bad input."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import textgym
from textgym import TextGenEnv


@pytest.mark.parametrize("env_id", textgym.ENV_IDS)
def test_env_checkers_on_every_registered_id(env_id, monkeypatch):
    monkeypatch.setattr("builtins.input", lambda prompt="": "4")  # the person of textgym/HumanFeedback-v0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any checker warning fails the test
        env = gym.make(env_id)
        gym_check_env(env.unwrapped, skip_render_check=False)
        sb3_check_env(gym.make(env_id), warn=True)


def test_quickstart_from_the_issue():
    env = gym.make("textgym/TextGen-v0", reward="length", render_mode="ansi")
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    text = env.render()
    assert text.startswith("prompt:") and info == {} and reward == 0.0


def test_observation_layout_and_episode_end():
    env = TextGenEnv(reward="length", context_len=8, max_new_tokens=3)
    tok = env.tokenizer
    obs, info = env.reset(seed=1)
    prompt_ids = [tok.bos_id] + tok.encode(info["prompt"])
    expected = ([tok.pad_id] * 8 + prompt_ids)[-8:]
    assert obs.tolist() == expected and obs.dtype == np.int64
    ids = tok.encode(" hello world")[:2]
    for t in ids:
        obs, r, term, trunc, info = env.step(t)
        assert not term and r == 0.0 and obs[-1] == t
    obs, r, term, trunc, info = env.step(ids[0])
    assert term and not trunc and info["finish_reason"] == "length" and info["completion_tokens"] == 3
    assert info["completion"] == tok.decode(ids + ids[:1]) and r == info["feedback"]["length"]
    with pytest.raises(RuntimeError, match="episode has ended"):
        env.step(5)


def test_eos_ends_episode_and_feedback_components_in_info():
    env = TextGenEnv(reward={"sentiment": 1.0, "repetition": 0.5})
    env.reset(seed=0)
    _, r, term, _, info = env.step(env.tokenizer.eos_id)
    assert term and info["finish_reason"] == "eos" and info["completion"] == ""
    assert set(info["feedback"]) == {"sentiment", "repetition"}
    assert r == pytest.approx(info["feedback"]["sentiment"] + 0.5 * info["feedback"]["repetition"])


def test_same_seed_same_episode():
    def run(seed):
        env = TextGenEnv(reward="sentiment", max_new_tokens=6)
        env.action_space.seed(seed)
        obs, info = env.reset(seed=seed)
        out = [obs.tolist(), info["prompt"]]
        for _ in range(6):
            obs, r, term, trunc, info = env.step(env.action_space.sample())
            out.append((obs.tolist(), r))
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_prompts_are_drawn_uniformly():
    """Prompt indices come from one rng.random() each (cheaper than rng.integers); every prompt is equally likely."""
    env = TextGenEnv(reward="length", max_new_tokens=1)
    n = len(env.task.prompts)
    rng = np.random.default_rng(0)
    draws = np.array([env.task.draw_prompt(rng) for _ in range(50 * n)])
    assert draws.min() >= 0 and draws.max() < n
    counts = np.bincount(draws, minlength=n)
    chi2 = ((counts - 50) ** 2 / 50).sum()  # chi-square with n - 1 degrees of freedom: mean n - 1, sd sqrt(2(n - 1))
    assert abs(chi2 - (n - 1)) < 6 * np.sqrt(2 * (n - 1))
    # The edge of the unit interval maps to the last prompt, never past it.
    edge = type("Edge", (), {"random": lambda self: np.nextafter(1.0, 0.0)})()
    assert env.task.draw_prompt(edge) == n - 1


def test_render_modes(capsys):
    env = TextGenEnv(reward="length", render_mode="human", max_new_tokens=2)
    env.reset(seed=0)
    env.step(10)
    env.step(11)
    out = capsys.readouterr().out
    assert "prompt:" in out and "reward:" in out
    with pytest.raises(ValueError, match="render_mode 'rgb_array' is not supported"):
        TextGenEnv(render_mode="rgb_array")


def test_bad_actions_and_order():
    env = TextGenEnv(reward="length")
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(0)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 2000 is outside the vocabulary: valid token ids are 0 to 1999"):
        env.step(2000)
    with pytest.raises(ValueError, match=r"action -1 is outside"):
        env.step(-1)
    with pytest.raises(ValueError, match=r"action 'a' is not a token id"):
        env.step("a")
    with pytest.raises(ValueError, match=r"action 1.5 is not a token id"):
        env.step(1.5)
    with pytest.raises(gym.error.ResetNeeded):  # through gym.make, OrderEnforcing says it first
        gym.make("textgym/TextGen-v0").step(0)


@pytest.mark.parametrize("name", ["max_new_tokens", "context_len"])
@pytest.mark.parametrize("value", [0, -3])
def test_bad_sizes(name, value):
    with pytest.raises(ValueError, match=rf"{name} must be an integer >= 1, got {value}"):
        TextGenEnv(**{name: value})


def test_prompt_file_with_references(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        "\n".join(json.dumps({"prompt": p, "reference": r}) for p, r in [("The cat", " sat."), ("A dog", " ran.")])
    )
    seen = {}

    def ref_feedback(prompts, completions, references=None, **kwargs):
        seen["references"] = references
        return np.ones(len(completions))

    env = TextGenEnv(reward=ref_feedback, prompts=path, max_new_tokens=1)
    _, info = env.reset(seed=0)
    _, r, *_ = env.step(5)
    assert info["prompt"] in ("The cat", "A dog") and r == 1.0
    assert seen["references"] == [{"The cat": " sat.", "A dog": " ran."}[info["prompt"]]]


def test_bad_prompt_files(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        TextGenEnv(prompts=missing)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        TextGenEnv(prompts=empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": "no prompt here"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing field 'prompt'"):
        TextGenEnv(prompts=bad)


def test_user_corpus_trains_its_own_tokenizer(small_corpus):
    env = TextGenEnv(reward="length", corpus=small_corpus, vocab_size=400)
    assert env.action_space.n == 400
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs) and info["prompt"]
