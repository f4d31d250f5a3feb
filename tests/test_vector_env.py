"""TextGenVectorEnv: same results as a SyncVectorEnv of single envs, batched feedback, make_vec registration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import deep_equal
from gymnasium.vector import AutoresetMode

import textgym
from textgym import TextGenVectorEnv

ENV_ID = "textgym/TextGen-v0"


def _rollout(envs, actions, seed):
    """Step through ``actions``; in disabled mode, reset the sub-envs that ended by hand (some with new seeds)."""
    out = [envs.reset(seed=seed) + (envs.render(),)]
    disabled = envs.metadata["autoreset_mode"] == AutoresetMode.DISABLED
    for t, a in enumerate(actions):
        out.append(step := envs.step(a) + (envs.render(),))
        if disabled and (step[2] | step[3]).any():
            seeds = [100 * t + i for i in range(envs.num_envs)] if t % 3 == 0 else None
            out.append(envs.reset(seed=seeds, options={"reset_mask": step[2] | step[3]}) + (envs.render(),))
    return out


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED])
@pytest.mark.parametrize("context_len, max_new", [(8, 5), (3, 7)])
def test_matches_sync_vector_env(mode, context_len, max_new):
    n, steps = 6, 200  # long enough for the token buffer to wrap around twice
    kwargs = dict(
        reward={"length": {"target": 3}, "repetition": 0.5},
        max_new_tokens=max_new,
        context_len=context_len,
        render_mode="ansi",
    )
    native = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", autoreset_mode=mode, **kwargs)
    sync = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, **kwargs)
    assert isinstance(native.unwrapped, TextGenVectorEnv)
    assert native.metadata["autoreset_mode"] == mode
    eos = native.unwrapped.tokenizer.eos_id
    rng = np.random.default_rng(1)
    actions = rng.integers(3, native.single_action_space.n, size=(steps, n))
    actions[rng.random((steps, n)) < 0.15] = eos  # episodes of varied length, so resets interleave
    a, b = _rollout(native, actions, seed=7), _rollout(sync, actions, seed=7)
    ended = 0
    for t, (x, y) in enumerate(zip(a, b)):
        assert len(x) == len(y)
        for u, v in zip(x, y):  # observations, rewards, ends, infos and the rendered text
            assert deep_equal(u, v), f"step {t}: {u!r} != {v!r}"
        if len(x) == 6 and t:  # a step (not a reset)
            ended += int(x[2].sum())
    assert ended > 10 * n  # the comparison covered many episode ends and resets


def test_feedback_called_once_per_step_on_finished_batch():
    calls = []

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return np.zeros(len(completions))

    n = 8
    envs = TextGenVectorEnv(num_envs=n, reward=counting, max_new_tokens=4, autoreset_mode="same_step")
    envs.reset(seed=0)
    for _ in range(4):
        envs.step(np.full(n, 10))
    assert calls == [n]  # all eight episodes ended on the 4th step: one call with all of them


def test_same_step_final_info_and_new_prompt():
    envs = TextGenVectorEnv(num_envs=3, reward="length", max_new_tokens=2, autoreset_mode="same_step")
    obs, info = envs.reset(seed=3)
    envs.step(np.array([5, 6, 7]))
    obs2, rew, term, trunc, info = envs.step(np.array([5, 6, envs.tokenizer.eos_id]))
    assert term.all() and not trunc.any()
    assert info["_final_info"].all()
    assert list(info["final_info"]["finish_reason"]) == ["length", "length", "eos"]
    assert all(info["final_obs"][i][-1] == a for i, a in enumerate([5, 6, envs.tokenizer.eos_id]))
    assert info["_prompt"].all()  # new episodes started in the same step
    assert np.array_equal(obs2[0], envs.task.prompt_obs[info["prompt_index"][0]])


def test_bad_actions_name_env_and_value():
    envs = TextGenVectorEnv(num_envs=2, reward="length")
    with pytest.raises(RuntimeError, match="before reset"):
        envs.step(np.array([1, 2]))
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"sub-env 1.*99999.*0 to 1999"):
        envs.step(np.array([3, 99999]))
    with pytest.raises(ValueError, match=r"sub-env 0 -5 is outside the vocabulary"):
        envs.step(np.array([-5, 3]))  # int64 ids are range-checked as unsigned: a negative one must not slip by
    with pytest.raises(ValueError, match=r"integer token ids.*float64"):
        envs.step(np.array([1.5, 3.0]))
    obs, *_ = envs.step(np.array([7.0, 3.0]))  # whole floats are token ids, as in the single env
    assert list(obs[:, -1]) == [7, 3]
    obs, *_ = envs.step(np.array([[4, 0], [9, 0]])[:, 0])  # strided, int32 and big-endian arrays take the slow path
    obs, *_ = envs.step(np.array([5, 8], dtype=np.int32))
    obs, *_ = envs.step(np.array([6, 2], dtype=">i8"))
    assert list(obs[:, -1]) == [6, 2] and list(obs[:, -3]) == [4, 9]
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        envs.step(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match="autoreset_mode 'Manual' is not supported.*Disabled"):
        TextGenVectorEnv(num_envs=2, autoreset_mode="Manual")
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1, got 0"):
        TextGenVectorEnv(num_envs=0)


def test_make_vec_default_is_native():
    envs = gym.make_vec(ENV_ID, num_envs=64, vectorization_mode="vector_entry_point", reward="length")
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (64, 32) and obs.dtype == np.int64
    assert envs.observation_space.contains(obs)
    assert textgym.ENV_IDS[:2] == (ENV_ID, "textgym/HumanFeedback-v0")
    assert set(textgym.ENV_IDS[2:]) == {"textgym/Sentiment-v0", "textgym/Keywords-v0", "textgym/Continuation-v0"}


def test_feedback_error_needs_a_reset():
    """A feedback that raises leaves a step half done; the env says so instead of stepping on with broken episodes."""
    calls = []

    def flaky(prompts, completions, **kwargs):
        calls.append(len(completions))
        if len(calls) == 1:
            raise ConnectionError("rater offline")
        return np.ones(len(completions))

    envs = TextGenVectorEnv(num_envs=2, reward=flaky, max_new_tokens=2)
    single = textgym.TextGenEnv(reward=flaky, max_new_tokens=1)
    for env, action in ((envs, np.array([5, 6])), (single, 5)):
        calls.clear()
        env.reset(seed=0)
        if env is envs:
            env.step(action)
        with pytest.raises(ConnectionError, match="rater offline"):
            env.step(action)
        with pytest.raises(RuntimeError, match=r"reset\(\)"):
            env.step(action)
        env.reset(seed=0)
        for _ in range(1 if env is single else 2):
            out = env.step(action)
        assert np.all(out[1] == 1.0) and np.all(out[2])  # scored normally after the reset


def test_feedback_that_changes_its_lists_does_not_change_the_info():
    def greedy(prompts, completions, **kwargs):
        n = len(completions)
        prompts.clear(), completions.clear()  # a misbehaving feedback; the env must neither crash nor lose the text
        return np.ones(n)

    envs = TextGenVectorEnv(num_envs=3, reward=greedy, max_new_tokens=2)
    single = textgym.TextGenEnv(reward=greedy, max_new_tokens=2)
    envs.reset(seed=0)
    single.reset(seed=0)
    envs.step(np.array([40, 41, 42]))
    single.step(40)
    *_, info = envs.step(np.array([43, 44, 45]))
    *_, single_info = single.step(43)
    assert info["_completion"].all() and info["completion"][0] == single_info["completion"] != ""
    assert info["prompt"][0] == single_info["prompt"] != ""


def test_disabled_mode_waits_for_reset_and_scores_each_episode_once():
    """A rollout of one completion per sub-env: the ended ones wait, unscored, while the others finish."""
    calls = []

    def counting(prompts, completions, **kwargs):
        calls.append(list(completions))
        return np.arange(1.0, len(completions) + 1)

    envs = TextGenVectorEnv(
        num_envs=3, reward=counting, max_new_tokens=4, autoreset_mode="disabled", render_mode="ansi"
    )
    eos = envs.tokenizer.eos_id
    obs0, _ = envs.reset(seed=0)
    obs1, rew, term, trunc, info = envs.step(np.array([eos, 7, 8]))  # sub-env 0 ends at once
    assert term.tolist() == [True, False, False] and rew[0] == 1.0 and info["_completion"].tolist() == [1, 0, 0]
    final_obs = obs1[0].copy()
    for t in range(3):
        obs, rew, term, trunc, info = envs.step(np.array([9, 10 + t, 20 + t]))
        assert np.array_equal(obs[0], final_obs) and rew[0] == 0.0 and not term[0]  # waiting: untouched
    assert term.tolist() == [False, True, True] and info["_completion"].tolist() == [False, True, True]
    assert [len(c) for c in calls] == [1, 2]  # each episode scored once, sub-env 0 never again
    assert envs.render()[0].startswith("prompt:") and "reward:     1.0000" in envs.render()[0]
    obs, rew, term, trunc, info = envs.step(np.array([5, 5, 5]))  # all wait: nothing happens
    assert not term.any() and not rew.any() and info == {} and len(calls) == 2
    obs, info = envs.reset(options={"reset_mask": np.array([True, False, True]), "prompt_index": 2})
    assert info["_prompt"].tolist() == [True, False, True] and info["prompt_index"][[0, 2]].tolist() == [2, 2]
    assert np.array_equal(obs[0], envs.task.prompt_obs[2]) and np.array_equal(obs[2], envs.task.prompt_obs[2])
    obs, rew, term, trunc, info = envs.step(np.array([eos, 5, eos]))
    assert term.tolist() == [True, False, True] and [len(c) for c in calls] == [1, 2, 2]


def test_prompt_index_option_and_whole_prompt_ids():
    single = textgym.TextGenEnv(reward="length", context_len=3)
    envs = TextGenVectorEnv(num_envs=4, reward="length", context_len=3)
    _, info = single.reset(seed=0, options={"prompt_index": 5})
    assert info["prompt_index"] == 5
    obs, info = envs.reset(seed=0, options={"prompt_index": np.array([0, 1, 2, 3])})
    assert info["prompt_index"].tolist() == [0, 1, 2, 3]
    task, tok = envs.task, envs.tokenizer
    assert task.prompt_ids[1] == [tok.bos_id] + tok.encode(task.prompts.prompts[1])  # whole, not cut to the window
    assert task.longest_prompt == max(map(len, task.prompt_ids)) > 3 and obs[1].tolist() == task.prompt_ids[1][-3:]
    n = len(task.prompts)
    with pytest.raises(
        ValueError, match=rf"prompt_index for sub-env 2 {n} is not valid: give an integer in \[0, {n - 1}\]"
    ):
        envs.reset(options={"prompt_index": np.array([0, 1, n, 3])})
    with pytest.raises(ValueError, match=r"prompt_index -1 is not valid"):
        single.reset(options={"prompt_index": -1})
    with pytest.raises(ValueError, match=r"must be an int or have shape \(4,\)"):
        envs.reset(options={"prompt_index": [1, 2]})
    with pytest.raises(ValueError, match=r"unknown reset options \['promt_index'\]"):
        envs.reset(options={"promt_index": 1})
    with pytest.raises(ValueError, match=r"unknown reset options \['promt_index'\]"):
        single.reset(options={"promt_index": 1})


@pytest.mark.parametrize("mode", ["NextStep", "SameStep"])
def test_reset_mask_in_autoreset_modes_matches_sync(mode):
    kwargs = dict(reward="length", max_new_tokens=3, context_len=6)
    native = gym.make_vec(ENV_ID, num_envs=3, vectorization_mode="vector_entry_point", autoreset_mode=mode, **kwargs)
    sync = gym.make_vec(ENV_ID, num_envs=3, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, **kwargs)
    outs = []
    for envs in (native, sync):
        out = [envs.reset(seed=1)]
        for t, a in enumerate(np.random.default_rng(0).integers(3, 2000, size=(12, 3))):
            out.append(envs.step(a))
            if t % 4 == 1 or (t > 6 and out[-1][2][1]):  # a hand reset of sub-env 1, also right after its
                # episode ended (next-step mode: its reset was pending, and now is not)
                out.append(
                    envs.reset(seed=[None, 50 + t, None], options={"reset_mask": np.array([False, True, False])})
                )
        outs.append(out)
    for t, (x, y) in enumerate(zip(*outs)):
        assert deep_equal(x, y), f"call {t}: {x!r} != {y!r}"
    with pytest.raises(ValueError, match="selects no sub-env"):
        native.reset(options={"reset_mask": np.zeros(3, dtype=bool)})
    with pytest.raises(ValueError, match=r"bool array of shape \(3,\)"):
        native.reset(options={"reset_mask": [True, False, True]})
