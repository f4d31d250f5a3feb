"""REINFORCE: advantages, the update's sign, KL, determinism, resume and interruption, the shared evaluation, learning
(slow), bad options."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import agents.runner
from agents.checkpoint import load_checkpoint, save_checkpoint
from agents.evaluation import distinct_n, expected_distinct_n, resampled_distinct_n
from agents.model import LSTMLM, LMConfig, completion_logprobs, pack_completions
from agents.pretrain import preset, pretrain
from agents.reinforce import TAUGHT_STAGE, AdaptiveKL, Reinforce, ReinforceConfig, advantages, gae, train
from agents.runner import RunInterrupted, native_bfloat16, resolve_precision
from agents.training import decayed_lr
from textgym.feedback import register_feedback


class Crash(Exception):
    pass


@pytest.fixture
def setup(tiny_lm) -> tuple[Path, Path]:
    """The session's tiny LM (conftest): (corpus path, checkpoint path)."""
    return tiny_lm


def _cfg(setup, tmp_path: Path, **kw) -> ReinforceConfig:
    """A small run; the tokenizer and the prompts' corpus come from the checkpoint, as on the command line."""
    _, ckpt = setup
    base = dict(
        reward="sentiment",
        init=str(ckpt),
        num_envs=8,
        rloo_k=4,
        max_new_tokens=6,
        updates=4,
        eval_prompts=4,
        eval_samples=2,
        eval_interval=2,
        checkpoint_interval=2,
        out=str(tmp_path / "rl"),
        progress=False,
    )
    base.update(kw)
    return ReinforceConfig(**base)


def _rows(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_advantages_against_hand_computed_values():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 8.0])
    # RLOO, k = 4: each return minus the mean of the other three of its prompt.
    rloo = advantages(returns, "rloo", rloo_k=4).view(-1).tolist()
    assert rloo == pytest.approx(
        [1 - 11 / 3, 2 - 10 / 3, 3 - 9 / 3, 6 - 6 / 3, 0 - 12 / 3, 0 - 12 / 3, 4 - 8 / 3, 8 - 4 / 3]
    )
    # k = 2: the difference with the other completion.
    assert advantages(torch.tensor([1.0, 3.0]), "rloo", rloo_k=2).view(-1).tolist() == [-2.0, 2.0]
    # Moving average: minus the EMA; before there is one, minus the batch mean.
    assert advantages(returns, "moving_average", ema=1.5).view(-1).tolist() == pytest.approx((returns - 1.5).tolist())
    assert advantages(returns, "moving_average").view(-1).tolist() == pytest.approx((returns - 3.0).tolist())
    # Value: per token, R minus V(s_t), with no gradient into the value head through the advantage.
    values = torch.tensor([[0.5, 1.0], [2.0, 0.0]], requires_grad=True)
    adv = advantages(torch.tensor([1.0, 3.0]), "value", values=values)
    assert adv.tolist() == [[0.5, 0.0], [1.0, 3.0]] and not adv.requires_grad
    with pytest.raises(ValueError, match="baseline 'critic' is not one of"):
        advantages(returns, "critic")


@pytest.mark.parametrize(
    "options",
    [
        {"baseline": "rloo"},
        {"baseline": "moving_average"},
        {"baseline": "value"},
        {"baseline": "rloo", "entropy_coef": 0.01, "normalize_advantages": True, "target_kl": 2.0},
        {"baseline": "value", "credit": "token", "gae_lambda": 0.9},
        {"baseline": "rloo", "update_epochs": 2},
    ],
)
def test_one_update_changes_parameters(setup, tmp_path, options):
    # length feedback varies between completions (sentiment is 0 for a tiny model's gibberish: no signal)
    agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", **options))
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    metrics = agent.step()
    after = agent.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert agent.policy.embed.weight.grad is not None
    for key in ("objective/scores", "objective/kl", "objective/entropy", "objective/rlhf_reward"):
        assert key in metrics
    assert "objective/feedback/length" not in metrics  # one component: its mean is objective/scores
    assert metrics["charts/env_tokens"] == agent.tokens > 0


def test_each_component_of_a_mix_is_logged(setup, tmp_path):
    agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3) + 0.5*repetition"))
    m = agent.step()
    assert set(m) >= {"objective/feedback/length", "objective/feedback/repetition"}
    assert m["objective/scores"] == pytest.approx(
        m["objective/feedback/length"] + 0.5 * m["objective/feedback/repetition"]
    )
    e = agent.evaluate()
    assert e["eval/scores"] == pytest.approx(e["eval/feedback/length"] + 0.5 * e["eval/feedback/repetition"])


def test_kl_is_zero_at_the_first_update(setup, tmp_path):
    """The policy starts as the reference: the sampled log-ratio is 0 at every token (up to float rounding: the
    policy's forward pass keeps its graph and the reference's does not, and on some CPUs the two take kernels that
    round differently, by up to about 2e-6 per token), not just on average."""
    agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", kl_coef=0.5))
    metrics = agent.step()
    assert abs(metrics["objective/kl"]) < 1e-5
    assert metrics["objective/rlhf_reward"] == pytest.approx(metrics["objective/scores"], abs=1e-5)
    assert agent.step()["objective/kl"] != 0.0  # and not after the policy moved


def test_an_update_raises_the_probability_of_the_rewarded_token(setup, tmp_path):
    """A feedback that pays for one first token: one step must make that token more likely (a sign error fails)."""
    target: dict[str, str] = {}

    @register_feedback("test-first-token")
    def make_first_token():
        def first_token(prompts, completions, **kwargs):
            return np.array([float(c.startswith(target["text"])) for c in completions])

        return first_token

    agent = Reinforce(_cfg(setup, tmp_path, reward="test-first-token", num_envs=64, max_new_tokens=2, lr=3e-2,
                           kl_coef=0.0))  # fmt: skip
    contexts = [agent.envs.task.prompt_ids[j] for j in range(len(agent.train_prompts))]

    def first_token_probs() -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(agent.policy.prefill(contexts)[0], -1)

    probs = first_token_probs()
    favoured = int(probs.mean(0)[3:].argmax()) + 3  # a likely ordinary token, so that samples hit it
    target["text"] = agent.tokenizer.decode([favoured])
    scores = agent.step()["objective/scores"]
    assert 0 < scores < 1  # some completions hit it, some did not: there is a signal
    assert first_token_probs()[:, favoured].mean() > probs[:, favoured].mean() * 1.2


def test_prompts_come_from_the_corpus_the_checkpoint_was_pretrained_on(setup, tmp_path):
    """No --corpus: the prompts are cut from the corpus that --init's config records, and the record is passed on."""
    from textgym.corpus import load_corpus
    from textgym.prompts import load_prompts

    corpus, _ = setup
    cfg = _cfg(setup, tmp_path, updates=1)
    agent = Reinforce(cfg)
    expected = load_prompts(None, corpus=load_corpus(corpus)).prompts
    assert agent.train_prompts.prompts + agent.evaluator.prompts.prompts == expected
    assert expected != load_prompts(None).prompts  # (not the built-in corpus's)
    train(cfg)
    record = json.loads((tmp_path / "rl/model/config.json").read_text())["meta"]["corpus"]
    assert record == {"source": str(corpus.resolve()), "separator": "auto", "encoding": "utf-8"}


def test_rollout_goes_through_the_env_and_groups_prompts(setup, tmp_path):
    agent = Reinforce(_cfg(setup, tmp_path))
    r = agent.rollout()
    assert r.prompt_ids[0] == r.prompt_ids[3] and r.prompt_ids[4] == r.prompt_ids[7]  # k = 4 completions of each
    assert r.completions == agent.tokenizer.decode_batch(r.completion_ids)
    prompts = [agent.tokenizer.decode(p) for p in r.prompt_ids]
    assert np.allclose(r.scores, agent.envs.task.feedback(prompts, r.completions), atol=1e-12)
    eos = agent.tokenizer.eos_id
    for ids in r.completion_ids:  # each completion ends at its first <eos> or at max_new_tokens
        assert 1 <= len(ids) <= 6 and (eos not in ids[:-1])


def test_prompts_longer_than_the_window_reach_the_policy_whole(setup, tmp_path):
    """The env shows only the last 32 ids of a long prompt; the policy starts from the whole of it."""
    long_prompt = " ".join(["word"] * 60)
    rows = [{"prompt": long_prompt + f" {i}"} for i in range(12)]
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    agent = Reinforce(_cfg(setup, tmp_path, prompts=str(path)))
    r = agent.rollout()
    assert all(len(p) > 32 for p in r.prompt_ids)
    assert agent.tokenizer.decode(r.prompt_ids[0]) == rows[int(r.prompt_index[0])]["prompt"]


def test_references_reach_the_feedback_in_training_and_in_evaluation(setup, tmp_path):
    seen: list[tuple[list[str], list[str]]] = []

    @register_feedback("test-references")
    def make_spy():
        def spy(prompts, completions, references):
            seen.append((list(prompts), list(references)))
            return np.zeros(len(completions))

        return spy

    rows = [{"prompt": f"Prompt number {i}", "reference": f"reference {i}"} for i in range(12)]
    path = tmp_path / "refs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    agent = Reinforce(_cfg(setup, tmp_path, reward="test-references", prompts=str(path)))
    agent.step()
    assert seen and all(r == f"reference {p.split()[-1]}" for ps, rs in seen for p, r in zip(ps, rs))
    trained = {p for ps, _ in seen for p in ps}
    seen.clear()
    agent.evaluate()
    held_out = {p for ps, _ in seen for p in ps}
    assert held_out == {f"Prompt number {i}" for i in range(8, 12)} and not held_out & trained
    assert all(r == f"reference {p.split()[-1]}" for ps, rs in seen for p, r in zip(ps, rs))


def test_beta_zero_skips_the_reference_in_updates(setup, tmp_path):
    agent = Reinforce(_cfg(setup, tmp_path, kl_coef=0.0, reward="length(target=3)"))
    calls = []
    hidden = agent.ref.hidden
    agent.ref.hidden = lambda *a, **k: calls.append(1) or hidden(*a, **k)
    metrics = agent.step()
    assert not calls and "objective/kl" not in metrics
    assert np.isfinite(agent.evaluate()["eval/kl"]) and calls  # evaluation still measures the KL


def test_before_evaluates_the_initial_policy_not_the_reference(setup, tmp_path):
    """With --ref another model, "before" is the initial policy's evaluation (its KL to that reference is > 0)."""
    _, ckpt = setup
    model, tok, _ = load_checkpoint(ckpt)
    torch.manual_seed(5)
    other = LSTMLM(LMConfig(**{**model.config.to_dict()}))
    save_checkpoint(tmp_path / "other", other, tok)
    cfg = _cfg(setup, tmp_path, ref=str(tmp_path / "other"), updates=2)
    train(cfg)
    before = json.loads((tmp_path / "rl/metrics.json").read_text())["before"]
    agent = Reinforce(cfg)
    expected = agent.evaluator(load_checkpoint(ckpt)[0], agent.ref).metrics
    assert before == pytest.approx(expected) and before["eval/kl"] > 1.0


def test_same_seed_same_trajectory(setup, tmp_path):
    def run(seed):
        agent = Reinforce(_cfg(setup, tmp_path, seed=seed))
        ms = [agent.step() for _ in range(3)]
        return ms, agent.policy.state_dict()

    (a, wa), (b, wb), (c, _) = run(1), run(1), run(2)
    assert a == b and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a != c


def _curve(path: Path) -> str:
    return "\n".join(
        ",".join(cell for i, cell in enumerate(line.split(",")) if i != line_index)
        for text in [(path / "progress.csv").read_text()]
        for line_index in [text.splitlines()[0].split(",").index("charts/SPS")]
        for line in text.splitlines()
    )


def test_resume_after_interruption(setup, tmp_path):
    straight = train(_cfg(setup, tmp_path, out=str(tmp_path / "a")))

    def crash(update):
        if update == 3:
            raise Crash()

    with pytest.raises(Crash):
        train(_cfg(setup, tmp_path, out=str(tmp_path / "b")), on_update=crash)
    resumed = train(_cfg(setup, tmp_path, out=str(tmp_path / "b")))
    assert straight == resumed and _curve(tmp_path / "a") == _curve(tmp_path / "b")
    for d in ("a", "b"):
        assert (tmp_path / d / "learning_curve.png").stat().st_size > 10_000
        assert "| prompt | before | score | after | score |" in (tmp_path / d / "samples.md").read_text()


def test_ctrl_c_saves_and_resumes_on_the_same_curve(setup, tmp_path):
    """SIGINT after update 3 (between checkpoints at 2 and 4): the run saves at 3; resuming gives the straight run."""
    cfg = _cfg(setup, tmp_path, updates=5, out=str(tmp_path / "a"))
    straight = train(cfg)

    def interrupt(update):
        if update == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted, match="interrupted at step 3; run the same command to resume"):
        train(replace(cfg, out=str(tmp_path / "b")), on_update=interrupt)
    assert json.loads((tmp_path / "b/checkpoint/config.json").read_text())["meta"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run's handler is gone again
    resumed = train(replace(cfg, out=str(tmp_path / "b")))
    assert straight == resumed and _curve(tmp_path / "a") == _curve(tmp_path / "b")


def test_total_env_tokens_budget(setup, tmp_path):
    train(_cfg(setup, tmp_path, total_env_tokens=100, updates=1000))
    summary = json.loads((tmp_path / "rl/metrics.json").read_text())
    assert 100 <= summary["env_tokens"] < 100 + 8 * 6 and summary["updates"] == 3  # 8 completions of <= 6 tokens


def test_a_run_stopped_by_time_reports_its_final_policy(setup, tmp_path, monkeypatch):
    """--max-minutes ends the run between evaluations (here after update 3, with evaluations at updates 2, 4, ...):
    the last step is evaluated and saved all the same, and the report shows the final policy, not update 2's."""
    import time

    import agents.runner

    # The run loop's clock stands still until update 2, then jumps past the budget, so a loaded machine (slow
    # updates) cannot end the run sooner.
    elapsed = {"s": 0.0}
    start = time.monotonic()

    class Clock:
        def __getattr__(self, name):
            return getattr(time, name)

        def monotonic(self):
            return start + elapsed["s"]

    monkeypatch.setattr(agents.runner, "time", Clock())
    cfg = _cfg(setup, tmp_path, updates=1000, max_minutes=0.02, eval_interval=2, checkpoint_interval=100)

    def out_of_time_after(update):
        if update == 2:
            elapsed["s"] = 2.0  # past the 1.2-second budget: update 3 is the last one

    after = train(cfg, on_update=out_of_time_after)
    summary = json.loads((tmp_path / "rl/metrics.json").read_text())
    assert summary["updates"] == 3 and summary["after"] == pytest.approx(after)
    agent = Reinforce(cfg)
    final = load_checkpoint(tmp_path / "rl/model")[0]
    assert after == pytest.approx(agent.evaluator(final, agent.ref).metrics)
    assert json.loads((tmp_path / "rl/checkpoint/config.json").read_text())["meta"]["step"] == 3


def test_adaptive_kl_controller_moves_beta_toward_target():
    ctl = AdaptiveKL(0.1, target=6.0, horizon=1000)
    ctl.update(12.0, n=100)  # KL above target: β grows by the clipped error (0.2) x n / horizon
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.2 * 0.1))
    ctl.update(0.0, n=100)
    assert ctl.beta < 0.1 * 1.02


def test_distinct_2():
    assert distinct_n(["a b c", "a b d"]) == pytest.approx(3 / 4)
    assert distinct_n(["x"]) == 0.0


def _population() -> tuple[list[list[str]], list[np.ndarray]]:
    """Two prompts' completions and a target distribution over them that favours some (shared bigrams across
    prompts, so the product over prompts matters)."""
    texts = [["a b c", "a b d", "x y", "c d e f"], ["a b", "p q r", "x y z", "a b c"]]
    probs = [np.array([0.5, 0.3, 0.15, 0.05]), np.array([0.1, 0.2, 0.6, 0.1])]
    return texts, probs


def test_expected_distinct_2_matches_counting_sampled_sets():
    # The target's completions drawn k at a time per prompt, distinct-2 counted: the mean counts match the estimate.
    texts, probs = _population()
    k, rng = 3, np.random.default_rng(0)
    unique, total = 0.0, 0.0
    for _ in range(20_000):
        drawn = [t for ts, p in zip(texts, probs) for t in rng.choice(ts, size=k, p=p)]
        grams = [tuple(w[i : i + 2]) for t in drawn for w in [t.split()] for i in range(len(w) - 1)]
        unique, total = unique + len(set(grams)), total + len(grams)
    estimate, ess = expected_distinct_n(texts, [np.log(p) for p in probs], per_prompt=k)
    assert estimate == pytest.approx(unique / total, abs=0.005)
    assert ess == pytest.approx([1 / (p**2).sum() for p in probs])
    # and the same from a uniform proposal's samples, weighted by target / proposal
    drawn = [list(rng.choice(ts, size=4000)) for ts in texts]
    lw = [np.log(p[[ts.index(t) for t in d]]) for ts, p, d in zip(texts, probs, drawn)]
    assert expected_distinct_n(drawn, lw, per_prompt=k)[0] == pytest.approx(estimate, abs=0.01)
    # a uniform target differs: the check can fail
    assert abs(expected_distinct_n(texts, [np.zeros(4)] * 2, per_prompt=k)[0] - estimate) > 0.02


def test_resampled_distinct_2_tends_to_the_target_from_another_distributions_samples():
    # Target probs over a small space, samples from a uniform proposal: one draw ∝ weight from each of k groups.
    texts, probs = _population()
    k, rng = 3, np.random.default_rng(1)
    target = expected_distinct_n(texts, [np.log(p) for p in probs], per_prompt=k)[0]
    proposal = expected_distinct_n(texts, [np.zeros(4)] * 2, per_prompt=k)[0]
    assert abs(target - proposal) > 0.02  # (so that the checks below can fail)

    def estimate(group: int) -> float:
        drawn = [list(rng.choice(ts, size=k * group)) for ts in texts]
        lw = [np.log(p[[ts.index(t) for t in d]]) for ts, p, d in zip(texts, probs, drawn)]
        return resampled_distinct_n(drawn, lw, per_prompt=k, group=group)

    assert estimate(2000) == pytest.approx(target, abs=0.005)
    # a group of one is the proposal's own draw (a ratio of means over many pools, as expected_distinct_n's is)
    assert np.mean([estimate(1) for _ in range(4000)]) == pytest.approx(proposal, abs=0.02)


def test_resampled_distinct_2_does_not_count_heavy_weights_as_repeats():
    # Every completion is new (its own bigram), so any k of them are all distinct, whatever the weights. One weighted
    # pool shared by the k draws counts the heavy ones as repeated; one draw from each of k groups does not.
    rng = np.random.default_rng(0)
    texts = [[f"w{p}_{i} v{p}_{i}" for i in range(4096)] for p in range(2)]
    lw = [rng.normal(0, 3, 4096) for _ in texts]
    assert expected_distinct_n(texts, lw, per_prompt=64)[0] < 0.8
    assert resampled_distinct_n(texts, lw, per_prompt=64, group=64) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="per_prompt x group = 8192 samples"):
        resampled_distinct_n(texts, lw, per_prompt=64, group=128)


def test_expected_distinct_2_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="one entry per prompt, got 2 and 1"):
        expected_distinct_n([["a b"], ["c d"]], [np.zeros(1)], per_prompt=2)
    with pytest.raises(ValueError, match="one log weight per sample and a sample, got 2 and 3"):
        expected_distinct_n([["a b", "c d"]], [np.zeros(3)], per_prompt=2)


def test_decayed_learning_rate():
    assert [decayed_lr(p, 1.0, "constant", 0.0) for p in (0, 0.5, 1)] == [1.0, 1.0, 1.0]
    assert [decayed_lr(p, 1.0, "linear", 0.1) for p in (0, 0.5, 1, 2)] == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert [decayed_lr(p, 2.0, "cosine", 0.0) for p in (0, 0.5, 1)] == pytest.approx([2.0, 1.0, 0.0])


def test_a_learning_rate_schedule_follows_the_env_token_budget_and_resumes(setup, tmp_path):
    cfg = _cfg(setup, tmp_path, lr=1e-3, lr_schedule="linear", lr_min_ratio=0.1, total_env_tokens=200, updates=1000)
    train(cfg)
    rows = [r for r in _rows(tmp_path / "rl/progress.csv") if r.get("charts/learning_rate")]
    lrs = [float(r["charts/learning_rate"]) for r in rows]
    tokens = [float(r["charts/env_tokens"]) for r in rows]
    assert lrs == sorted(lrs, reverse=True) and len(lrs) >= 3
    # each update's rate is the schedule's at the env tokens consumed so far (its own rollout's included)
    assert lrs == pytest.approx([1e-3 * (1 - 0.9 * min(t, 200) / 200) for t in tokens])
    # a resumed run continues the schedule where it stopped: the same curve as the run without a break
    crashed = replace(cfg, out=str(tmp_path / "crashed"))

    def crash(step: int) -> None:
        if step == 2:
            raise Crash

    with pytest.raises(Crash):
        train(crashed, on_update=crash)
    train(replace(cfg, out=str(tmp_path / "crashed"), checkpoint_interval=2))
    resumed = [
        float(r["charts/learning_rate"])
        for r in _rows(tmp_path / "crashed/progress.csv")
        if r.get("charts/learning_rate")
    ]
    assert resumed == pytest.approx(lrs)


def test_the_exact_kl_estimator_gives_the_same_first_gradient(setup, tmp_path):
    # π = π_ref at the first update: both KL terms are zero, so both estimators give the policy gradient alone
    grads = []
    for estimator in ("sampled", "exact"):
        # (float32: the two gradients are equal to float32 rounding, not bfloat16's)
        cfg = _cfg(setup, tmp_path, reward="length(target=3)", kl_coef=0.5, kl_estimator=estimator, precision="float32")
        agent = Reinforce(replace(cfg, out=str(tmp_path / estimator)))
        params = list(agent.policy.parameters())
        g = torch.autograd.grad(agent.loss(agent.rollout())[0], params, allow_unused=True)
        grads.append(torch.cat([x.flatten() for x in g if x is not None]))
    assert grads[0].abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_train_only_updates_the_named_parameters_alone(setup, tmp_path):
    agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", train_only="head.bias"))
    before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
    agent.step()
    after = agent.policy.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.bias"}
    with pytest.raises(
        ValueError, match="train_only 'decoder' names no parameter of the policy; its parameters: embed"
    ):
        Reinforce(_cfg(setup, tmp_path, train_only="head,decoder"))


def test_gae_against_hand_computed_values():
    # One completion of 3 tokens after a prompt position: returns-to-go 0.5, 0.3, 0.2 (token rewards 0.2, 0.1, 0.2),
    # values 0.1, 0.4, 0.3; δ = 0.2 + 0.4 − 0.1, 0.1 + 0.3 − 0.4, 0.2 + 0 − 0.3 = 0.5, 0, −0.1.
    mask = torch.tensor([[0.0, 1, 1, 1, 0]])
    returns = torch.tensor([[0.0, 0.5, 0.3, 0.2, 0]])
    values = torch.tensor([[0.0, 0.1, 0.4, 0.3, 0]])
    expected = {0.0: [0.5, 0.0, -0.1], 0.5: [0.5 + 0.5 * (0.0 - 0.05), -0.05, -0.1], 1.0: [0.4, -0.1, -0.1]}
    for lam, adv in expected.items():
        assert torch.allclose(gae(returns, values, mask, lam), torch.tensor([[0.0, *adv, 0]]), atol=1e-6)


def test_later_epochs_start_from_the_same_gradient_and_report_the_clip_fraction(setup, tmp_path):
    # At the rollout's parameters the ratio is 1 and ∇ρ = ∇log π: the clipped surrogate's gradient is REINFORCE's.
    for options in ({}, {"kl_estimator": "exact", "credit": "token"}, {"kl_estimator": "k3"}):
        agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", kl_coef=0.5, **options))
        params = list(agent.policy.parameters())
        r = agent.rollout()
        loss, parts = agent.loss(r)
        first = torch.autograd.grad(loss, params, allow_unused=True)
        later = torch.autograd.grad(
            agent.loss(r, old={k: v.detach() for k, v in parts.items()})[0], params, allow_unused=True
        )
        flat = [torch.cat([x.flatten() for x in g if x is not None]) for g in (first, later)]
        assert flat[0].abs().max() > 1e-3
        assert torch.allclose(flat[0], flat[1], atol=1e-6)

    # Each update takes update_epochs Adam steps on its completions and reports the share of clipped tokens.
    agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", update_epochs=3, lr=1e-2))
    metrics = [agent.step() for _ in range(2)]
    assert agent.opt.state[agent.policy.head.weight]["step"] == 6
    assert all(0 <= m["losses/clip_fraction"] <= 1 for m in metrics)
    assert max(m["losses/clip_fraction"] for m in metrics) > 0  # a large step moves some ratios past the clip
    assert "losses/clip_fraction" not in Reinforce(_cfg(setup, tmp_path)).step()

    def run(seed):
        agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", update_epochs=2, seed=seed))
        return [agent.step() for _ in range(2)], agent.policy.state_dict()

    (a, wa), (b, wb) = run(1), run(1)
    assert a == b and all(torch.equal(wa[k], wb[k]) for k in wa)


def _gradient_moments(agent: Reinforce, batches: int = 40, zero_scores: bool = False) -> tuple[torch.Tensor, float]:
    """The update's gradient averaged over ``batches`` fresh rollouts, and its noise E||g − E g||² per batch
    (``zero_scores``: the feedback set to 0, leaving the KL term alone)."""
    params = [p for p in agent.policy.parameters() if p.requires_grad]
    grads = []
    for _ in range(batches):
        r = agent.rollout()
        if zero_scores:
            r.scores[:] = 0.0
        g = torch.autograd.grad(agent.loss(r)[0], params, allow_unused=True)
        grads.append(torch.cat([x.flatten() for x in g if x is not None]))
    G = torch.stack(grads)
    mean = G.mean(0)
    return mean, float(G.sub(mean).pow(2).sum(1).mean())


def test_the_exact_kl_estimator_is_the_kl_gradient_in_expectation(setup, tmp_path):
    """With a zero reward the update's gradient is β ∇KL(π‖π_ref): the two estimators agree on average, and the exact
    one is much less noisy."""
    torch.manual_seed(0)
    mean: dict[str, torch.Tensor] = {}
    noise: dict[str, float] = {}
    for estimator in ("sampled", "exact"):
        agent = Reinforce(_cfg(setup, tmp_path, kl_coef=1.0, kl_estimator=estimator, num_envs=64))
        with torch.no_grad():  # move the policy away from the reference, the same way for both
            gen = torch.Generator().manual_seed(1)
            for p in agent.policy.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen) * p.std().nan_to_num(0.1))
        mean[estimator], noise[estimator] = _gradient_moments(agent, zero_scores=True)  # only the KL term
    cosine = float(torch.nn.functional.cosine_similarity(mean["sampled"], mean["exact"], dim=0))
    assert cosine > 0.9, cosine
    assert float(mean["exact"].norm() / mean["sampled"].norm()) == pytest.approx(1.0, abs=0.2)
    assert noise["exact"] < 0.5 * noise["sampled"], noise


def test_the_k3_estimator_is_a_kl_loss_term_outside_the_return(setup, tmp_path):
    """GRPO's KL: the return is the score alone, the loss adds β·Σ_t k3_t / n with k3 = π_ref/π − log(π_ref/π) − 1 at
    the sampled tokens, and the KL reported is the sampled one. At the first update (π = π_ref) every k3 is 0 and so
    is its gradient: the update is the policy gradient alone, as with the sampled estimator."""
    beta = 0.5
    grads = []
    for estimator in ("sampled", "k3"):
        options = dict(reward="length(target=3)", kl_coef=beta, kl_estimator=estimator, precision="float32")
        agent = Reinforce(_cfg(setup, tmp_path / estimator, **options))
        params = list(agent.policy.parameters())
        g = torch.autograd.grad(agent.loss(agent.rollout())[0], params, allow_unused=True)
        grads.append(torch.cat([x.flatten() for x in g if x is not None]))
    assert grads[0].abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], atol=1e-7)

    with torch.no_grad():  # move the policy away from the reference
        gen = torch.Generator().manual_seed(1)
        for p in agent.policy.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen) * p.std().nan_to_num(0.1))
    r = agent.rollout()
    loss, parts = agent.loss(r)
    batch = pack_completions(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
    with torch.no_grad():
        ref_logp = completion_logprobs(agent.ref, batch)[0]
    log_ratio = (ref_logp - parts["logp"].detach()) * batch.mask
    k3 = ((log_ratio.exp() - log_ratio - 1) * batch.mask).sum() / 8
    assert float(k3) > 0
    assert torch.allclose(loss, parts["pg_loss"] + beta * k3, atol=1e-6)
    assert torch.allclose(parts["returns"], torch.as_tensor(r.scores, dtype=torch.float32))
    assert torch.allclose(parts["kl_seq"], -log_ratio.sum(1), atol=1e-6)


def test_exponential_weighting_fits_the_optimum_of_a_group(setup, tmp_path):
    """k·softmax(R/β) − 1 per prompt group: the self-normalised weights π*/π of the group's completions, centred."""
    agent = Reinforce(_cfg(setup, tmp_path, reward="length(target=3)", kl_coef=0.5, weighting="exponential"))
    r = agent.rollout()
    loss, parts = agent.loss(r)
    returns = torch.as_tensor(r.scores, dtype=torch.float32) - 0.5 * parts["kl_seq"]
    w = torch.exp(returns.view(-1, 4) / 0.5)
    adv = (4 * w / w.sum(1, keepdim=True) - 1).view(-1, 1)
    logp = parts["logp"]
    assert torch.allclose(parts["pg_loss"], -(adv * logp).sum() / 8, atol=1e-6)
    # the update moves the parameters
    params = list(agent.policy.parameters())
    before = torch.cat([p.detach().clone().flatten() for p in params])
    agent.opt.zero_grad()
    loss.backward()
    agent.opt.step()
    assert not torch.equal(before, torch.cat([p.detach().flatten() for p in params]))


@register_feedback("test-letter-e")
def make_letter_e():
    """The number of 'e's in the completion: a score that each token adds to, so the prefix's share is known."""

    def letter_e(prompts, completions, **kwargs):
        return np.array([float(c.count("e")) for c in completions])

    return letter_e


def test_token_credit_weighs_each_token_by_what_is_still_to_come(setup, tmp_path):
    beta = 0.5
    # (float32: the by-hand log-ratios below are float32's)
    agent = Reinforce(_cfg(setup, tmp_path, reward="test-letter-e", kl_coef=beta, credit="token", precision="float32"))
    r = agent.rollout()
    _, parts = agent.loss(r)
    batch = pack_completions(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
    mask = batch.mask
    with torch.no_grad():
        ref_logp = completion_logprobs(agent.ref, batch)[0]
    kl_to_go = ((parts["logp"].detach() - ref_logp) * mask).flip(1).cumsum(1).flip(1)
    # by hand: at the completion's t-th token, the 'e's of tokens t.. and the log-ratios of tokens t..
    for i, ids in enumerate(r.completion_ids):
        texts = agent.tokenizer.decode_batch([ids[:t] for t in range(len(ids))])
        cols = torch.nonzero(mask[i]).view(-1)
        expected = torch.tensor([r.scores[i] - text.count("e") for text in texts]) - beta * kl_to_go[i, cols]
        assert torch.allclose(parts["returns"][i, cols], expected.float(), atol=1e-5)
    # (a test that can tell the positions apart: some completion's return changes along it)
    assert any(len(set(parts["returns"][i, mask[i].bool()].tolist())) > 1 for i in range(len(mask)))
    # RLOO position by position (rows of a group share their prompt, so their completions start at one column)
    adv = advantages(parts["returns"], "rloo", rloo_k=4)
    assert torch.allclose(parts["pg_loss"], -(adv * parts["logp"]).sum() / 8, atol=1e-5)


def test_token_credit_keeps_the_gradient_and_cuts_its_noise(setup, tmp_path):
    """Subtracting functions of the state (the prefix's score, the earlier tokens' KL) leaves the expected gradient
    as it is and takes out the noise of the tokens before t."""
    torch.manual_seed(0)
    mean: dict[str, torch.Tensor] = {}
    noise: dict[str, float] = {}
    for credit in ("sequence", "token"):
        agent = Reinforce(_cfg(setup, tmp_path, reward="test-letter-e", kl_coef=0.1, credit=credit, num_envs=64,
                               max_new_tokens=8))  # fmt: skip
        mean[credit], noise[credit] = _gradient_moments(agent)
    cosine = float(torch.nn.functional.cosine_similarity(mean["sequence"], mean["token"], dim=0))
    assert cosine > 0.9, cosine
    assert float(mean["token"].norm() / mean["sequence"].norm()) == pytest.approx(1.0, abs=0.2)
    assert noise["token"] < 0.75 * noise["sequence"], noise


def test_a_widened_policy_starts_as_the_reference_and_trains(setup, tmp_path):
    cfg = _cfg(setup, tmp_path, hidden_dim=80, kl_coef=0.1)
    agent = Reinforce(cfg)
    assert agent.policy.config.hidden_dim == 80 and agent.ref.config.hidden_dim == 64
    assert agent.evaluate()["eval/kl"] == pytest.approx(0.0, abs=1e-4)  # the same distribution as the reference
    train(cfg, agent=agent)
    model, _, _ = load_checkpoint(tmp_path / "rl/model")
    assert model.config.hidden_dim == 80
    assert model.head.weight[:, agent.ref.config.hidden_dim :].abs().max() > 0  # the new units are used


def test_the_gated_tilt_is_added_to_a_taught_init_by_default_and_trains(setup, tmp_path):
    # unset, it follows --init: off from a pretrained checkpoint, on from one `textgym teach` made (its meta says so)
    model, tokenizer, config = load_checkpoint(setup[1])
    taught = save_checkpoint(tmp_path / "taught", model, tokenizer, meta={**config["meta"], "stage": TAUGHT_STAGE})
    cfg = _cfg(setup, tmp_path, init=str(taught), reward="length(target=3)", kl_coef=0.1)
    assert cfg.gated_tilt is None
    plain = Reinforce(_cfg(setup, tmp_path))
    assert not plain.policy.config.gated_tilt and type(plain.policy.head) is torch.nn.Linear
    agent = Reinforce(cfg)
    assert agent.policy.config.gated_tilt and not agent.ref.config.gated_tilt
    assert agent.evaluate()["eval/kl"] == pytest.approx(0.0, abs=1e-4)  # the same distribution as the reference
    agent.step()
    assert agent.policy.head.tilt.abs().max() > 0
    agent.step()  # (the gate's gradient is 0 until the tilt has moved)
    assert agent.policy.head.gate.weight.abs().max() > 0
    # set, it is what it says, whatever --init is
    assert type(Reinforce(replace(cfg, gated_tilt=False)).policy.head) is torch.nn.Linear
    assert Reinforce(_cfg(setup, tmp_path, gated_tilt=True)).policy.config.gated_tilt


def test_bad_options(setup, tmp_path):
    with pytest.raises(ValueError, match="weighting 'exponential' weighs the completions .* needs baseline 'rloo'"):
        _cfg(setup, tmp_path, weighting="exponential", baseline="value")
    with pytest.raises(ValueError, match="weighting 'softmax' is not one of linear, exponential"):
        _cfg(setup, tmp_path, weighting="softmax")
    with pytest.raises(ValueError, match=r"hidden_dim must be >= 0 \(0: --init's own width\), got -1"):
        _cfg(setup, tmp_path, hidden_dim=-1)
    with pytest.raises(ValueError, match="credit 'step' is not one of sequence, token"):
        _cfg(setup, tmp_path, credit="step")
    with pytest.raises(ValueError, match="weighting 'exponential' weighs whole completions: it needs credit"):
        _cfg(setup, tmp_path, weighting="exponential", credit="token", kl_coef=0.1)
    with pytest.raises(ValueError, match="kl_estimator 'k2' is not one of sampled, exact, k3"):
        _cfg(setup, tmp_path, kl_estimator="k2")
    with pytest.raises(ValueError, match="lr_schedule 'step' is not one of constant, linear, cosine"):
        _cfg(setup, tmp_path, lr_schedule="step")
    with pytest.raises(ValueError, match=r"lr_min_ratio must be in \[0, 1\], got 2"):
        _cfg(setup, tmp_path, lr_min_ratio=2)
    with pytest.raises(ValueError, match=r"gae_lambda must be in \[0, 1\], got 1.5"):
        _cfg(setup, tmp_path, gae_lambda=1.5)
    with pytest.raises(ValueError, match=r"gae_lambda < 1 needs the per-token critic: .* \(got baseline 'rloo'"):
        _cfg(setup, tmp_path, gae_lambda=0.9)
    with pytest.raises(ValueError, match="update_epochs must be > 0, got 0"):
        _cfg(setup, tmp_path, update_epochs=0)
    with pytest.raises(ValueError, match="clip_range must be > 0, got 0"):
        _cfg(setup, tmp_path, clip_range=0.0)
    with pytest.raises(ValueError, match="kl_coef must be >= 0, got -0.1"):
        _cfg(setup, tmp_path, kl_coef=-0.1)
    with pytest.raises(ValueError, match="rloo_k must be >= 2 for the leave-one-out baseline, got 1"):
        _cfg(setup, tmp_path, rloo_k=1)
    with pytest.raises(ValueError, match=r"num_envs \(8\) must be a multiple of rloo_k \(3\)"):
        _cfg(setup, tmp_path, rloo_k=3)
    with pytest.raises(ValueError, match="baseline 'critic' is not one of"):
        _cfg(setup, tmp_path, baseline="critic")
    with pytest.raises(ValueError, match=r"too few to hold out eval_prompts=5000"):
        Reinforce(_cfg(setup, tmp_path, eval_prompts=5000))
    with pytest.raises(ValueError, match="precision 'float16' is not one of auto, float32, bfloat16"):
        _cfg(setup, tmp_path, precision="float16")
    with pytest.raises(ValueError, match="device 'tpu' is not one of auto, cpu, cuda"):
        Reinforce(_cfg(setup, tmp_path, device="tpu"))
    # A reference with another tokenizer than the policy's.
    from textgym.tokenizer import TextTokenizer

    other = TextTokenizer.train(["some other text entirely"] * 5, vocab_size=300)
    save_checkpoint(tmp_path / "other", LSTMLM(LMConfig(other.vocab_size, embed_dim=8, hidden_dim=8)), other)
    with pytest.raises(ValueError, match="trained with a different tokenizer"):
        Reinforce(_cfg(setup, tmp_path, ref=str(tmp_path / "other")))


@pytest.mark.skipif(not native_bfloat16(torch.device("cpu")), reason="this CPU has no bfloat16 arithmetic")
def test_bfloat16_rounds_the_products_and_nothing_else(setup, tmp_path):
    """The first update's log-probabilities match float32's to bfloat16 rounding; policy and reference round alike
    (the KL is exactly 0 at the start); the weights stay float32 and move; the same seed gives the same run."""
    opts = dict(reward="length(target=3)", kl_coef=0.5)
    pair = {p: Reinforce(_cfg(setup, tmp_path, precision=p, **opts)) for p in ("float32", "bfloat16")}
    r = pair["float32"].rollout()
    parts = {p: agent.loss(r)[1] for p, agent in pair.items()}
    m = parts["float32"]["mask"].bool()
    logp16, logp32 = parts["bfloat16"]["logp"][m], parts["float32"]["logp"][m]
    assert logp16.dtype == torch.float32 and not torch.equal(logp16, logp32)
    assert torch.allclose(logp16, logp32, atol=0.05)

    def run() -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
        agent = Reinforce(_cfg(setup, tmp_path, precision="bfloat16", **opts))
        before = {k: v.clone() for k, v in agent.policy.state_dict().items()}
        metrics = [agent.step() for _ in range(2)]
        after = agent.policy.state_dict()
        assert all(v.dtype == torch.float32 for v in after.values())
        assert any(not torch.equal(before[k], after[k]) for k in before)
        return metrics, after

    (ma, wa), (mb, wb) = run(), run()
    assert ma[0]["objective/kl"] == 0.0 and ma[1]["objective/kl"] != 0.0
    assert ma == mb and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_auto_precision_takes_bfloat16_only_where_the_hardware_has_it_and_it_pays(monkeypatch):
    cpu = torch.device("cpu")
    if native_bfloat16(cpu):  # the real measurement: once per process, the same figure after
        assert 0 < agents.runner.bfloat16_speedup() == agents.runner.bfloat16_speedup()
    monkeypatch.setattr(agents.runner, "native_bfloat16", lambda device: True)
    monkeypatch.setattr(agents.runner, "bfloat16_speedup", lambda: 2.3)  # (a CPU where bfloat16 pays)
    assert resolve_precision("auto", cpu) == "bfloat16"
    monkeypatch.setattr(agents.runner, "bfloat16_speedup", lambda: 0.6)  # AVX512-BF16, slower than float32
    assert resolve_precision("auto", cpu) == "float32" and resolve_precision("bfloat16", cpu) == "bfloat16"
    monkeypatch.setattr(agents.runner, "bfloat16_speedup", lambda: 1.1)  # within the margin: float32
    assert resolve_precision("auto", cpu) == "float32"


def test_bfloat16_is_refused_without_hardware_for_it(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(agents.runner, "native_bfloat16", lambda device: False)
    with pytest.raises(ValueError, match="precision 'bfloat16' needs bfloat16 arithmetic in the hardware .* use"):
        Reinforce(_cfg(setup, tmp_path, precision="bfloat16"))
    assert Reinforce(_cfg(setup, tmp_path)).precision == "float32"  # auto: float32 there


def test_a_checkpoint_without_trainer_state_is_not_silently_restarted(setup, tmp_path):
    cfg = _cfg(setup, tmp_path, updates=2)
    train(cfg)
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (tmp_path / "rl/checkpoint" / name).unlink()
    with pytest.raises(ValueError, match=r"cannot resume from .*rl/checkpoint: it holds no trainer state"):
        train(cfg)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_train_end_to_end(setup, tmp_path):
    """The tokenizer and the prompts' corpus come from --init: no --corpus or --vocab-size needed."""
    _, ckpt = setup
    common = ("--init", str(ckpt), "--num-envs", "8", "--rloo-k", "4", "--eval-prompts", "4", "--eval-samples", "2")
    r = _cli("train", "--algo", "reinforce", *common, "--updates", "2", "--max-new-tokens", "5", "--out", "rl",
             "--no-progress", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "before: mean score" in r.stdout and "| prompt | before |" in r.stdout
    assert "reinforce step 2: eval/scores" in r.stdout  # a line per evaluation without a progress bar
    summary = json.loads((tmp_path / "rl/metrics.json").read_text())
    assert summary["updates"] == 2 and (tmp_path / "rl/learning_curve.png").is_file()
    bad = _cli("train", "--algo", "ppo-x", *common, cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice: 'ppo-x' (choose from 'reinforce', 'ppo'," in bad.stderr
    bad = _cli("train", *common, "--reward", "length(tgt=5)", cwd=tmp_path)
    assert bad.returncode == 2 and "no argument 'tgt'; its arguments: target" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_ctrl_c_saves_and_exits_130(setup, tmp_path):
    _, ckpt = setup
    args = [sys.executable, "-m", "agents.cli", "train", "--init", str(ckpt), "--num-envs", "8", "--rloo-k", "4",
            "--eval-prompts", "4", "--eval-samples", "2", "--updates", "100000", "--eval-interval", "5",
            "--checkpoint-interval", "100000", "--out", "rl", "--no-progress"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a pipe is block-buffered then
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)  # never hang the suite, whatever happens
    watchdog.start()
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the run is in its loop (the line is flushed at once, even into a pipe)
        if line.startswith("reinforce step 5:"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    watchdog.cancel()
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "run the same command to resume" in err and "Traceback" not in err
    step = json.loads((tmp_path / "rl/checkpoint/config.json").read_text())["meta"]["step"]
    assert step >= 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: torch.cuda.is_available() is False")
def test_pretrain_and_reinforce_on_cuda(setup, tmp_path):
    corpus, _ = setup
    pretrain(preset("tiny", corpus=str(corpus), vocab_size=400, out=str(tmp_path / "pre"), progress=False,
                    samples=1, device="cuda"))  # fmt: skip
    cfg = _cfg(setup, tmp_path, init=str(tmp_path / "pre/model"), device="cuda", updates=2)
    agent = Reinforce(cfg)
    assert agent.policy.head.weight.is_cuda and agent.ref.head.weight.is_cuda
    metrics = train(cfg)
    assert np.isfinite(metrics["eval/kl"])


@pytest.mark.slow
def test_learns_to_use_a_word(setup, tmp_path):
    """A tiny task: reward for using the word 'the'. The score must rise well above the start."""
    cfg = _cfg(
        setup,
        tmp_path,
        reward="keywords(words=the)",
        num_envs=32,
        max_new_tokens=10,
        updates=150,
        lr=3e-3,
        kl_coef=0.0,
        eval_prompts=8,
        eval_samples=8,
        eval_interval=150,
    )
    metrics = train(cfg)
    start = json.loads((tmp_path / "rl/metrics.json").read_text())["before"]["eval/scores"]
    assert metrics["eval/scores"] >= 0.9 and metrics["eval/scores"] > start + 0.2


@pytest.mark.slow
def test_a_higher_beta_ends_closer_to_the_reference(setup, tmp_path):
    """The same task at β = 0.02 and β = 1: the larger penalty must end at a smaller KL to the reference."""
    kls = {}
    for beta in (0.02, 1.0):
        cfg = _cfg(setup, tmp_path, reward="keywords(words=the)", num_envs=32, max_new_tokens=10, updates=150,
                   lr=3e-3, kl_coef=beta, eval_prompts=8, eval_samples=8, eval_interval=150,
                   out=str(tmp_path / f"beta{beta}"))  # fmt: skip
        kls[beta] = train(cfg)["eval/kl"]
    assert kls[1.0] < 0.5 * kls[0.02]
