"""SB3 baselines: the VecEnv adapter against DummyVecEnv, the LM as every algorithm's initial policy, the KL-penalised
rewards, learning steps, export, resume, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv

import textgym  # noqa: F401
from agents.baselines import ALGORITHMS, SB3Agent, train
from agents.checkpoint import load_checkpoint
from agents.sb3_env import SB3VecEnv, nucleus_mask
from agents.sb3_policies import encode_windows
from tests.conftest import deep_equal

ALGOS = list(ALGORITHMS)


class Crash(Exception):
    pass


@pytest.fixture
def setup(tiny_lm) -> tuple[Path, Path]:
    """The session's tiny LM (conftest): (corpus path, checkpoint path)."""
    return tiny_lm


def _cfg(setup, tmp_path: Path, algo: str = "ppo", **kw):
    _, ckpt = setup
    base = dict(
        init=str(ckpt),
        num_envs=4,
        n_steps=16,
        max_new_tokens=6,
        updates=3,
        eval_prompts=4,
        eval_samples=2,
        eval_interval=2,
        checkpoint_interval=2,
        out=str(tmp_path / algo),
        progress=False,
    )
    if algo != "a2c":
        base["batch_size"] = 32
    base.update(kw)
    return ALGORITHMS[algo][0](**base)


def _content(window: np.ndarray, pad_id: int) -> list[int]:
    """The non-pad part of a left-padded window."""
    start = int(np.argmax(window != pad_id))
    return window[start:].tolist()


@torch.no_grad()
def _lm_logprobs(lm, contexts: list[list[int]]) -> torch.Tensor:
    """The LM's next-token log-probabilities after each context, each run alone (the independent reference)."""
    return torch.stack([torch.log_softmax(lm(torch.tensor([c]))[0][0, -1], -1) for c in contexts])


def _rollout(agent: SB3Agent, extra: BaseCallback | None = None):
    """One SB3 rollout into the algorithm's buffer, without an update."""
    sb3 = agent.sb3
    callbacks = [agent.callback] if extra is None else [extra, agent.callback]
    total, callback = sb3._setup_learn(sb3.n_steps * sb3.n_envs, CallbackList(callbacks), reset_num_timesteps=False)
    callback.on_training_start(locals(), globals())
    assert sb3.collect_rollouts(sb3.env, callback, sb3.rollout_buffer, sb3.n_steps)
    return sb3.rollout_buffer


# -- the VecEnv adapter ------------------------------------------------------------------------------------------
def test_adapter_matches_dummy_vec_env_of_single_envs(setup):
    _, ckpt = setup
    _, tokenizer, _ = load_checkpoint(ckpt)
    kw = dict(reward="sentiment+0.5*length(target=4)", tokenizer=tokenizer, max_new_tokens=5, context_len=12)
    n = 6
    ours = SB3VecEnv(gym.make_vec("textgym/TextGen-v0", n, "vector_entry_point", autoreset_mode="SameStep", **kw))
    theirs = DummyVecEnv([lambda: gym.make("textgym/TextGen-v0", **kw)] * n)
    ours.seed(7)
    theirs.seed(7)
    assert deep_equal(ours.reset(), theirs.reset()) and ours.reset_infos == theirs.reset_infos
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(60):
        actions = rng.integers(tokenizer.vocab_size, size=n)
        actions[rng.random(n) < 0.2] = tokenizer.eos_id
        a, b = ours.step(actions), theirs.step(actions)
        assert deep_equal(a[0], b[0]) and deep_equal(a[1], b[1]) and deep_equal(a[2], b[2])
        for x, y in zip(a[3], b[3]):
            assert deep_equal(x, y), (x, y)
        assert ours.reset_infos == theirs.reset_infos
        ended += int(a[2].sum())
    assert ended > 30 and any("terminal_observation" in i for i in a[3] + b[3]) or ended
    assert ours.get_attr("render_mode") == [None] * n and ours.get_attr("task", indices=[1, 2])[0] is ours.task
    assert ours.env_is_wrapped(gym.Wrapper) == [False] * n
    assert ours.env_method("render") == [None] * n  # (no render mode: the batched env's render returns None)
    with pytest.raises(AttributeError):
        ours.get_attr("no_such_attribute")
    with pytest.raises(ValueError, match="SameStep"):
        SB3VecEnv(gym.make_vec("textgym/TextGen-v0", 2, "vector_entry_point", **kw))


def test_nucleus_mask_keeps_the_smallest_set_reaching_p():
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]]))
    assert nucleus_mask(logp, 0.8).tolist() == [[True, True, False, False], [True, False, False, False]]
    assert nucleus_mask(logp, 0.81).tolist()[0] == [True, True, True, False]


# -- the LM is the policy ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ALGOS)
def test_initial_policy_is_the_lm_at_every_step(setup, tmp_path, algo):
    """KL(policy ‖ LM) < 1e-4 on the contexts of a rollout, at every step of its episodes; the rollout's stored
    log-probabilities (the carried-state path) equal the LM's too."""
    agent = SB3Agent(_cfg(setup, tmp_path, algo, top_p=1.0) if algo == "maskable-ppo" else _cfg(setup, tmp_path, algo))
    buf = _rollout(agent)
    policy, pad = agent.sb3.policy, agent.tokenizer.pad_id
    obs = buf.observations[:, 0]  # sub-env 0: several whole episodes, every step
    starts = buf.episode_starts[:, 0]
    assert starts[1:].sum() >= 2
    lm_logp = _lm_logprobs(agent.ref, [_content(o, pad) for o in obs])
    obs_t = torch.as_tensor(obs, dtype=torch.float32)
    with torch.no_grad():
        if algo == "recurrent-ppo":
            shape = (policy.lstm_actor.num_layers, 1, policy.lstm_actor.hidden_size)
            states, rows = (torch.zeros(shape), torch.zeros(shape)), []
            for t in range(len(obs)):
                dist, states = policy.get_distribution(obs_t[t : t + 1], states, torch.tensor([float(starts[t])]))
                rows.append(dist.distribution.logits[0])
            policy_logp = torch.log_softmax(torch.stack(rows), -1)
        elif algo == "maskable-ppo":
            policy_logp = torch.log_softmax(policy.get_distribution(obs_t).distribution.logits, -1)
        else:
            policy_logp = torch.log_softmax(policy.get_distribution(obs_t).distribution.logits, -1)
    kl = (policy_logp.exp() * (policy_logp - lm_logp)).sum(-1)
    assert kl.max() < 1e-4, kl.max()
    taken = lm_logp.gather(1, torch.as_tensor(buf.actions[:, 0], dtype=torch.long)).squeeze(1)
    assert np.allclose(buf.log_probs[:, 0], taken.numpy(), atol=1e-4)


def test_maskable_ppo_samples_from_the_reference_nucleus(setup, tmp_path):
    agent = SB3Agent(_cfg(setup, tmp_path, "maskable-ppo", top_p=0.9))
    buf = _rollout(agent)
    pad = agent.tokenizer.pad_id
    obs, masks = buf.observations[:, 0], buf.action_masks[:, 0].astype(bool)
    lm_logp = _lm_logprobs(agent.ref, [_content(o, pad) for o in obs])
    assert np.array_equal(masks, nucleus_mask(lm_logp, 0.9)) and not masks.all()
    assert masks[np.arange(len(obs)), buf.actions[:, 0].astype(int)].all()  # every sampled token is in the nucleus
    with torch.no_grad():
        logits = agent.sb3.policy.get_distribution(torch.as_tensor(obs, dtype=torch.float32), masks).distribution.logits
    nucleus = torch.log_softmax(lm_logp.masked_fill(~torch.as_tensor(masks), float("-inf")), -1)
    p = torch.softmax(logits, -1)
    assert (p * (torch.log_softmax(logits, -1) - nucleus).nan_to_num(0.0)).sum(-1).max() < 1e-4


def test_rollout_cache_gives_the_features_of_re_encoding(setup, tmp_path):
    agent = SB3Agent(_cfg(setup, tmp_path))
    buf = _rollout(agent)
    encoder, pad = agent.sb3.policy.features_extractor, agent.tokenizer.pad_id
    encoder.reset_cache()
    with torch.no_grad():
        for t in range(buf.observations.shape[0]):
            window = torch.as_tensor(buf.observations[t], dtype=torch.float32)
            carried = encoder(window)
            assert torch.allclose(carried, encode_windows(agent.model, window.long(), pad)[0], atol=1e-5)


# -- the objective ------------------------------------------------------------------------------------------------
class _RecordRewards(BaseCallback):
    """Keeps each step's env rewards before the KL penalty edits them (it runs first)."""

    def __init__(self) -> None:
        super().__init__()
        self.rewards: list[np.ndarray] = []

    def _on_step(self) -> bool:
        self.rewards.append(self.locals["rewards"].copy())
        return True


@pytest.mark.parametrize("algo", ["ppo", "recurrent-ppo"])
def test_stored_rewards_are_feedback_minus_beta_times_the_log_ratio(setup, tmp_path, algo):
    agent = SB3Agent(_cfg(setup, tmp_path, algo, kl_coef=0.3, reward="length(target=3)"))
    agent.sb3.learn(64, callback=agent.callback, reset_num_timesteps=False)  # move the policy off the reference
    recorder = _RecordRewards()
    buf = _rollout(agent, recorder)
    feedback = np.stack(recorder.rewards)
    assert np.count_nonzero(feedback) > 4
    pad = agent.tokenizer.pad_id
    for env in range(buf.observations.shape[1]):
        obs = buf.observations[:, env]
        ref = _lm_logprobs(agent.ref, [_content(o, pad) for o in obs])
        ref_taken = ref.gather(1, torch.as_tensor(buf.actions[:, env], dtype=torch.long)).squeeze(1).numpy()
        log_ratio = buf.log_probs[:, env] - ref_taken
        assert np.abs(log_ratio).max() > 1e-3  # the policy has moved: the test can tell the terms apart
        assert np.allclose(buf.rewards[:, env], feedback[:, env] - 0.3 * log_ratio, atol=1e-4)
    m = agent.callback.metrics()
    assert m["objective/rlhf_reward"] == pytest.approx(m["objective/scores"] - 0.3 * m["objective/kl"])


# -- learning steps -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ALGOS)
def test_one_learn_changes_the_lm_and_is_reproducible(setup, tmp_path, algo):
    a, b = SB3Agent(_cfg(setup, tmp_path, algo)), SB3Agent(_cfg(setup, tmp_path, algo))
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    ma, mb = a.step(), b.step()
    after = a.model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in ("embed.weight", "lstm.weight_hh_l0", "head.weight"))
    assert ma == mb and all(torch.equal(after[k], b.model.state_dict()[k]) for k in after)
    assert {"objective/scores", "objective/kl", "objective/entropy", "losses/policy_loss"} <= set(ma)


def test_train_exports_the_actor_and_resumes(setup, tmp_path):
    def crash(update):
        if update == 3:
            raise Crash()

    cfg = _cfg(setup, tmp_path, updates=4, out=str(tmp_path / "b"))
    with pytest.raises(Crash):
        train(cfg, on_update=crash)
    assert json.loads((tmp_path / "b/checkpoint/config.json").read_text())["meta"]["step"] == 2
    first = train(cfg)  # resumes from step 2
    rows = (tmp_path / "b/progress.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = [int(float(r.split(",")[header.index("step")])) for r in rows[1:]]
    assert steps == [0, 1, 2, 3, 4], steps  # the rows after the checkpoint were replaced, not duplicated
    summary = json.loads((tmp_path / "b/metrics.json").read_text())
    assert summary["updates"] == 4 and summary["env_tokens"] == 4 * 4 * 16
    # A resume is itself reproducible: the same checkpoint, the same result.
    again = tmp_path / "c"
    with pytest.raises(Crash):
        train(replace(cfg, out=str(again)), on_update=crash)
    assert train(replace(cfg, out=str(again))) == first
    model, _, config = load_checkpoint(tmp_path / "b/model")
    assert config["meta"]["stage"] == "ppo" and config["meta"]["step"] == 4


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_cli_train_ppo_then_sample_the_export(setup, tmp_path):
    _, ckpt = setup
    before = set(Path(tempfile.gettempdir()).glob("SB3-*"))
    r = _cli("train", "--algo", "recurrent-ppo", "--init", str(ckpt), "--num-envs", "4", "--n-steps", "8",
             "--batch-size", "16", "--total-env-tokens", "64", "--max-new-tokens", "5", "--eval-prompts", "4",
             "--eval-samples", "2", "--out", "rp", "--no-progress", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "recurrent-ppo step 2: eval/scores" in r.stdout and "| prompt | before |" in r.stdout
    header = (tmp_path / "rp/progress.csv").read_text().splitlines()[0].split(",")
    assert {"objective/kl", "objective/rlhf_reward", "losses/value_loss", "eval/kl", "charts/SPS"} <= set(header)
    assert list((tmp_path / "rp").glob("events.out.tfevents.*"))
    assert set(Path(tempfile.gettempdir()).glob("SB3-*")) == before  # SB3 left no folder of its own
    s = _cli("sample", "--checkpoint", "rp/model", "--prompt", "The cat", "--num-samples", "2", cwd=tmp_path)
    assert s.returncode == 0, s.stderr
    assert len(s.stdout.strip().splitlines()) == 2 and s.stdout.startswith("The cat | ")
    h = _cli("train", "--algo", "maskable-ppo", "--help", cwd=tmp_path)
    assert "--top-p TOP_P" in h.stdout and "NLPO" in h.stdout and "--stop-kl" in h.stdout


# -- bad input ----------------------------------------------------------------------------------------------------
def test_bad_options(setup, tmp_path):
    with pytest.raises(ValueError, match=r"context_len 4 is too short: the longest prompt is \d+ tokens"):
        SB3Agent(_cfg(setup, tmp_path, context_len=4))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
            _cfg(setup, tmp_path, "maskable-ppo", top_p=bad)
    with pytest.raises(ValueError, match="gamma must be in"):
        _cfg(setup, tmp_path, gamma=1.5)
    with pytest.raises(ValueError, match="n_epochs must be > 0"):
        _cfg(setup, tmp_path, n_epochs=0)
    _, ckpt = setup
    r = _cli("train", "--algo", "dqn", "--init", str(ckpt), cwd=tmp_path)
    assert r.returncode == 2
    assert "invalid choice: 'dqn' (choose from 'reinforce', 'ppo', 'a2c', 'recurrent-ppo', 'maskable-ppo')" in r.stderr
    r = _cli("train", "--algo", "maskable-ppo", "--init", str(ckpt), "--top-p", "0", cwd=tmp_path)
    assert r.returncode == 2 and "top_p must be in (0, 1]" in r.stderr and "Traceback" not in r.stderr


# -- learning (slow) ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algo", ALGOS)
def test_learns_to_use_a_word(setup, tmp_path, algo):
    """The tiny task of REINFORCE's learning test, reward for using the word 'the': the score must rise well above
    the start within a small budget."""
    cfg = _cfg(setup, tmp_path, algo, reward="keywords(words=the)", num_envs=16, max_new_tokens=10, lr=1e-3,
               kl_coef=0.0, total_env_tokens=20_000, updates=10_000, eval_prompts=8, eval_samples=8,
               eval_interval=10_000, checkpoint_interval=10_000)  # fmt: skip
    metrics = train(cfg)
    start = json.loads((tmp_path / algo / "metrics.json").read_text())["before"]["eval/scores"]
    assert metrics["eval/scores"] > start + 0.2, (start, metrics["eval/scores"])
