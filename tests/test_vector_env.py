"""TextGenVectorEnv: same results as a SyncVectorEnv of single envs, batched feedback, make_vec registration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import deep_equal
from gymnasium.vector import AutoresetMode

import textgym
from textgym import TextGenVectorEnv
from textgym.vector_env import _CCore

ENV_ID = "textgym/TextGen-v0"
# Every behaviour test runs on both cores: NumPy (the reference) and C (the default where it was built).
CORES = [
    pytest.param(False, id="numpy"),
    pytest.param(True, id="c", marks=pytest.mark.skipif(_CCore is None, reason="textgym._vecstep not built")),
]


def _rollout(envs, actions, seed):
    out = [envs.reset(seed=seed) + (envs.render(),)]
    for a in actions:
        out.append(envs.step(a) + (envs.render(),))
    return out


@pytest.mark.parametrize("compiled", CORES)
@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
@pytest.mark.parametrize("context_len, max_new", [(8, 5), (3, 7)])
def test_matches_sync_vector_env(mode, context_len, max_new, compiled):
    n, steps = 6, 200  # long enough for the token buffer to wrap around twice
    kwargs = dict(
        reward={"length": {"target": 3}, "repetition": 0.5},
        max_new_tokens=max_new,
        context_len=context_len,
        render_mode="ansi",
    )
    native = gym.make_vec(
        ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", autoreset_mode=mode, compiled=compiled, **kwargs
    )
    sync = gym.make_vec(ENV_ID, num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode}, **kwargs)
    assert isinstance(native.unwrapped, TextGenVectorEnv) and native.unwrapped.compiled == compiled
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
        if t:
            ended += int(x[2].sum())
    assert ended > 10 * n  # the comparison covered many episode ends and resets


@pytest.mark.parametrize("compiled", CORES)
def test_feedback_called_once_per_step_on_finished_batch(compiled):
    calls = []

    def counting(prompts, completions, **kwargs):
        calls.append(len(completions))
        return np.zeros(len(completions))

    n = 8
    envs = TextGenVectorEnv(
        num_envs=n, reward=counting, max_new_tokens=4, autoreset_mode="same_step", compiled=compiled
    )
    envs.reset(seed=0)
    for _ in range(4):
        envs.step(np.full(n, 10))
    assert calls == [n]  # all eight episodes ended on the 4th step: one call with all of them


@pytest.mark.parametrize("compiled", CORES)
def test_same_step_final_info_and_new_prompt(compiled):
    envs = TextGenVectorEnv(
        num_envs=3, reward="length", max_new_tokens=2, autoreset_mode="same_step", compiled=compiled
    )
    obs, info = envs.reset(seed=3)
    envs.step(np.array([5, 6, 7]))
    obs2, rew, term, trunc, info = envs.step(np.array([5, 6, envs.tokenizer.eos_id]))
    assert term.all() and not trunc.any()
    assert info["_final_info"].all()
    assert list(info["final_info"]["finish_reason"]) == ["length", "length", "eos"]
    assert all(info["final_obs"][i][-1] == a for i, a in enumerate([5, 6, envs.tokenizer.eos_id]))
    assert info["_prompt"].all()  # new episodes started in the same step
    assert np.array_equal(obs2[0], envs.task.prompt_obs[info["prompt_index"][0]])


@pytest.mark.parametrize("compiled", CORES)
def test_bad_actions_name_env_and_value(compiled):
    envs = TextGenVectorEnv(num_envs=2, reward="length", compiled=compiled)
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
    with pytest.raises(ValueError, match="autoreset_mode 'Disabled'"):
        TextGenVectorEnv(num_envs=2, autoreset_mode="Disabled")
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1, got 0"):
        TextGenVectorEnv(num_envs=0)


def test_make_vec_default_is_native():
    envs = gym.make_vec(ENV_ID, num_envs=64, vectorization_mode="vector_entry_point", reward="length")
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (64, 32) and obs.dtype == np.int64
    assert envs.observation_space.contains(obs)
    assert textgym.ENV_IDS == (ENV_ID,)


@pytest.mark.parametrize("compiled", CORES)
def test_floor_experiment_does_the_same_work(compiled):
    """scripts/bench_env_floor.py claims a lower bound for a step; it only counts if it yields what the env yields."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from bench_env_floor import FloorEnv

    n = 16
    native = gym.make_vec(
        ENV_ID, num_envs=n, vectorization_mode="vector_entry_point", reward="length", compiled=compiled
    )
    native.reset(seed=0)
    floor = FloorEnv(n, seed=0)
    actions = np.random.default_rng(0).integers(2000, size=(300, n))
    actions[np.random.default_rng(1).random((300, n)) < 0.05] = native.unwrapped.tokenizer.eos_id
    for t, a in enumerate(actions):
        assert deep_equal(native.step(a), floor.step(a)), f"step {t}"


@pytest.mark.parametrize("compiled", CORES)
def test_feedback_error_needs_a_reset(compiled):
    """A feedback that raises leaves a step half done; the env says so instead of stepping on with broken episodes."""
    calls = []

    def flaky(prompts, completions, **kwargs):
        calls.append(len(completions))
        if len(calls) == 1:
            raise ConnectionError("rater offline")
        return np.ones(len(completions))

    envs = TextGenVectorEnv(num_envs=2, reward=flaky, max_new_tokens=2, compiled=compiled)
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


@pytest.mark.parametrize("compiled", CORES)
def test_feedback_that_changes_its_lists_does_not_change_the_info(compiled):
    def greedy(prompts, completions, **kwargs):
        n = len(completions)
        prompts.clear(), completions.clear()  # a misbehaving feedback; the env must neither crash nor lose the text
        return np.ones(n)

    envs = TextGenVectorEnv(num_envs=3, reward=greedy, max_new_tokens=2, compiled=compiled)
    single = textgym.TextGenEnv(reward=greedy, max_new_tokens=2)
    envs.reset(seed=0)
    single.reset(seed=0)
    envs.step(np.array([40, 41, 42]))
    single.step(40)
    *_, info = envs.step(np.array([43, 44, 45]))
    *_, single_info = single.step(43)
    assert info["_completion"].all() and info["completion"][0] == single_info["completion"] != ""
    assert info["prompt"][0] == single_info["prompt"] != ""


def test_compiled_core_is_built_where_a_compiler_is():
    """The C core is optional for users without a compiler, but where one exists (as on CI) it must have been built:
    otherwise the default env silently runs the slow path and the C tests above are skipped."""
    import shutil
    import sysconfig
    from pathlib import Path

    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which(compiler) is None or not headers.is_file():
        pytest.skip(f"no C compiler ({compiler}) or no Python headers here: the NumPy core is the one in use")
    assert _CCore is not None, "textgym._vecstep was not built: reinstall with `pip install -e .`"
    assert TextGenVectorEnv(num_envs=2, reward="length").compiled
    with pytest.raises(ValueError, match="compiled must be None.*got 'yes'"):
        TextGenVectorEnv(num_envs=2, reward="length", compiled="yes")


@pytest.mark.skipif(_CCore is None, reason="textgym._vecstep not built")
def test_c_core_refuses_calls_out_of_order():
    envs = TextGenVectorEnv(num_envs=2, reward="length", compiled=True)
    core = envs._core
    with pytest.raises(RuntimeError, match=r"advance\(\) before reset\(\)"):
        core.advance(np.array([1, 2]))
    envs.reset(seed=0)
    assert core.advance(np.array([5, 6])) == ((), (), None)  # nothing ended
    with pytest.raises(RuntimeError, match=r"advance\(\) before finish\(\)"):
        core.advance(np.array([5, 6]))
    core.finish(None, None)
    with pytest.raises(RuntimeError, match=r"finish\(\) without advance\(\)"):
        core.finish(None, None)
