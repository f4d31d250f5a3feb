"""Fit π* ∝ π_ref·exp(r/β) from the reference's own completions, without policy gradients (issue 14's experiment).

Samples ``--samples`` reference completions of each training prompt through the env (scored there), then fits the
policy to π* one of three ways, and scores it with the same evaluation as ``bench_reinforce.py`` (``--eval-samples``
completions of each held-out prompt; objective = score − β·KL, as a fraction of the optimum's gain over the
reference, the optimum from 10,240 reference completions):

* ``--method mle`` (distillation, the forward KL(π*‖π)): resample ``--resample`` completions per prompt with
  probabilities softmax(r/β) over that prompt's samples (self-normalised importance weights of π* against π_ref),
  and maximise their likelihood for ``--epochs`` epochs (``--train-only head`` fits the output layer alone).
* ``--method soft-q``: fit the soft Q-function of the KL-regularised problem, Q(s, a) = β log E_ref[exp(r/β) | s, a],
  as a linear head on the reference's frozen LSTM states, by fitted soft-Q iteration on the reference's transitions
  (target V(s') = β log Σ_a π_ref(a|s') exp(Q(s', a)/β), or r after the last token); the policy is then the
  reference with Q/β added to its logits, π(a|s) ∝ π_ref(a|s) exp(Q(s, a)/β), an LSTMLM with a new output layer.
* ``--method log-variance`` (path consistency; VarGrad's log-variance loss, trajectory balance with log Z set to the
  group's mean): at π*, R = r/β − log π(τ)/π_ref(τ) is log Z for every completion of a prompt, whoever sampled it, so
  minimise R's variance within groups of ``--group`` completions of a prompt, over the reference's samples reused
  for ``--epochs`` epochs. On a policy's own fresh samples its gradient is REINFORCE's with a leave-one-out-like
  baseline; on stored samples it is off-policy, with no importance weights.

    python scripts/fit_optimum.py --init runs/demo/pretrain/model --beta 0.2 [--method mle] [--samples 256]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from bench_reinforce import final_evaluation, reference_scores  # (a sibling script: python puts scripts/ on the path)

from agents.benchmark import optimum_stats
from agents.model import LSTMLM, completion_dists, completion_logprobs, pack_completions
from agents.reinforce import Reinforce, ReinforceConfig
from agents.rollout import Rollout, make_env, sample_completions


def sample_reference(agent: Reinforce, per_prompt: int, seed: int, batch: int = 1024) -> list[Rollout]:
    """``per_prompt`` reference completions of every training prompt, in batches of ``batch`` sub-envs."""
    envs = make_env(batch, agent.cfg.reward, agent.tokenizer, agent.train_prompts, agent.cfg.max_new_tokens)
    gen = torch.Generator(agent.device).manual_seed(seed)
    index = np.repeat(np.arange(len(agent.train_prompts)), per_prompt)
    index = np.resize(index, -(-len(index) // batch) * batch)  # whole batches (the first prompts again)
    return [
        sample_completions(envs, agent.ref, gen, prompt_index=index[i : i + batch]) for i in range(0, len(index), batch)
    ]


@dataclass
class Samples:
    """Scored completions, flattened out of their rollouts (row j: prompt j, completion j, its score and prompt)."""

    prompts: list[list[int]]
    completions: list[list[int]]
    scores: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, rollouts: list[Rollout]) -> Samples:
        return cls(
            [p for r in rollouts for p in r.prompt_ids],
            [c for r in rollouts for c in r.completion_ids],
            np.concatenate([r.scores for r in rollouts]),
            np.concatenate([r.prompt_index for r in rollouts]),
        )

    def logprobs(self, model: LSTMLM, rows: Sequence[int], agent: Reinforce) -> torch.Tensor:
        """log model(completion | prompt) of each of ``rows``, summed over its tokens; gradients flow."""
        batch = pack_completions(
            [self.prompts[j] for j in rows], [self.completions[j] for j in rows], agent.tokenizer.pad_id, agent.device
        )
        return completion_logprobs(model, batch)[0].sum(1)


def adam_step(opt: torch.optim.Optimizer, loss: torch.Tensor, policy: LSTMLM) -> None:
    """One step of the fit's optimizer on ``loss``, the gradient norm clipped at 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
    opt.step()


def fit_mle(agent: Reinforce, rollouts: list[Rollout], args: argparse.Namespace) -> None:
    """Maximum likelihood on completions resampled by softmax(r/β) within each prompt (distillation of π*)."""
    data = Samples.of(rollouts)
    scores, index = data.scores, data.index
    rng = np.random.default_rng(args.seed)
    picked, ess = [], []
    for prompt in np.unique(index):
        rows = np.flatnonzero(index == prompt)
        w = np.exp((scores[rows] - scores[rows].max()) / args.beta)
        w /= w.sum()
        ess.append(1 / (w**2).sum())
        picked += rng.choice(rows, size=args.resample, p=w).tolist()
    print(f"effective samples of π* per prompt: median {np.median(ess):.0f} of {args.samples}")
    policy = agent.policy  # (frozen but for --train-only's parameters, by the agent)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=args.lr)
    picked = np.array(picked)
    for epoch in range(args.epochs):
        rng.shuffle(picked)
        total = 0.0
        for i in range(0, len(picked), args.batch_size):
            rows = picked[i : i + args.batch_size]
            nll = -data.logprobs(policy, rows, agent).sum() / len(rows)
            adam_step(opt, nll, policy)
            total += float(nll.detach()) * len(rows)
        print(f"epoch {epoch + 1}: negative log-likelihood {total / len(picked):.2f} nats per completion")


def fit_soft_q(agent: Reinforce, rollouts: list[Rollout], args: argparse.Namespace) -> None:
    """Fitted soft-Q iteration of a linear head on the reference's frozen states; the policy's output layer becomes
    the reference's plus Q/β."""
    states, actions, returns, last = [], [], [], []
    for r in rollouts:
        batch = pack_completions(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
        with torch.no_grad():
            states.append(completion_dists(agent.ref, batch)[1])
        actions.append(batch.tokens[batch.mask.bool()])
        lengths = [len(c) for c in r.completion_ids]
        returns.append(torch.as_tensor(np.repeat(r.scores, lengths), dtype=torch.float32, device=agent.device))
        ends = torch.zeros(sum(lengths), dtype=torch.bool, device=agent.device)
        ends[np.cumsum(lengths) - 1] = True
        last.append(ends)
    h, a, r_, end = torch.cat(states), torch.cat(actions), torch.cat(returns), torch.cat(last)
    following = torch.arange(1, len(a) + 1, device=agent.device)
    following[end] = 0  # (unused where the completion ended: the target there is its score)
    w_ref, b_ref = agent.ref.head.weight.detach(), agent.ref.head.bias.detach()
    w_q = torch.zeros_like(w_ref, requires_grad=True)
    b_q = torch.zeros_like(b_ref, requires_grad=True)
    opt = torch.optim.Adam([w_q, b_q], lr=args.lr)
    for it in range(args.epochs):
        with torch.no_grad():  # targets from the current Q, held fixed for the iteration
            values = torch.cat(
                [
                    args.beta
                    * torch.logsumexp(F.log_softmax(x @ w_ref.T + b_ref, -1) + (x @ w_q.T + b_q) / args.beta, dim=-1)
                    for x in h.split(args.batch_size)
                ]
            )
            target = torch.where(end, r_, values[following])
        total = 0.0
        for rows in torch.randperm(len(a), device=agent.device).split(args.batch_size):
            q = (h[rows] * w_q[a[rows]]).sum(1) + b_q[a[rows]]
            loss = ((q - target[rows]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        print(f"iteration {it + 1}: soft Bellman error {total / len(a):.4f}; mean V(s) {float(values.mean()):+.3f}")
    with torch.no_grad():
        agent.policy.head.weight.copy_(w_ref + w_q / args.beta)
        agent.policy.head.bias.copy_(b_ref + b_q / args.beta)


def fit_log_variance(agent: Reinforce, rollouts: list[Rollout], args: argparse.Namespace) -> None:
    """Path consistency on the reference's samples: at π*, R = r/β − log π(τ)/π_ref(τ) is the same for every
    completion of a prompt (log Z), so minimise R's variance within each prompt's group (the log-variance loss of
    VarGrad / trajectory balance), on any samples: here the reference's, reused for ``--epochs`` epochs."""
    data = Samples.of(rollouts)
    scores = torch.as_tensor(data.scores, dtype=torch.float32, device=agent.device)
    index = data.index
    with torch.no_grad():  # the reference's log-probabilities, once, 1,024 completions at a time
        ref_logp = torch.cat(
            [data.logprobs(agent.ref, range(i, min(i + 1024, len(index))), agent) for i in range(0, len(index), 1024)]
        )
    # whole groups of each prompt's samples (the extra samples of the first prompts, from whole batches, unused)
    per_prompt = args.samples // args.group * args.group
    rng = np.random.default_rng(args.seed)
    policy = agent.policy  # (frozen but for --train-only's parameters, by the agent)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=args.lr)
    per_batch = max(1, args.batch_size // args.group)
    for epoch in range(args.epochs):
        # each epoch: every prompt's samples in new random groups
        pool = np.stack([rng.permutation(np.flatnonzero(index == q)[:per_prompt]) for q in np.unique(index)])
        pool = pool.reshape(-1, args.group)
        rng.shuffle(pool)
        total = 0.0
        for i in range(0, len(pool), per_batch):
            rows = pool[i : i + per_batch].ravel()
            logp = data.logprobs(policy, rows, agent)
            R = (scores[rows] / args.beta - (logp - ref_logp[rows])).view(-1, args.group)
            loss = ((R - R.mean(1, keepdim=True)) ** 2).mean()
            adam_step(opt, loss, policy)
            total += float(loss.detach()) * len(rows)
        print(f"epoch {epoch + 1}: within-prompt variance of R {total / pool.size:.3f}", flush=True)
        if args.eval_every and (epoch + 1) % args.eval_every == 0:
            m = final_evaluation(policy, agent, 16, args.seed).metrics
            print(
                f"  eval: score {m['eval/scores']:+.3f} KL {m['eval/kl']:.2f} objective "
                f"{m['eval/scores'] - args.beta * m['eval/kl']:+.3f}",
                flush=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/pretrain/model", help="pretrained checkpoint (policy start and reference)")
    p.add_argument("--reward", default="sentiment", help="feedback spec (the default task's: sentiment)")
    p.add_argument("--beta", type=float, default=0.2, help="KL coefficient β of the optimum π* ∝ π_ref·exp(r/β)")
    p.add_argument("--method", choices=("mle", "soft-q", "log-variance"), default="mle")
    p.add_argument("--samples", type=int, default=256, help="reference completions per training prompt")
    p.add_argument("--resample", type=int, default=128, help="mle: completions drawn from π*'s weights per prompt")
    p.add_argument("--epochs", type=int, default=2, help="mle, log-variance: epochs; soft-q: fitted iterations")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument(
        "--train-only", default="", help="mle, log-variance: parameters to fit (as ReinforceConfig.train_only)"
    )
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts the evaluation and optimum use")
    p.add_argument("--eval-samples", type=int, default=64, help="completions per evaluation prompt")
    p.add_argument("--optimum-samples", type=int, default=10240, help="reference completions for the optimum")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--group", type=int, default=16, help="log-variance: completions of one prompt per group")
    p.add_argument("--eval-every", type=int, default=0, help="log-variance: a quick evaluation every N epochs")
    args = p.parse_args()
    if args.method == "log-variance" and not 2 <= args.group <= args.samples:
        p.error(f"--group must be between 2 and --samples ({args.samples}), got {args.group}")
    torch.manual_seed(args.seed)

    agent = Reinforce(
        ReinforceConfig(
            init=args.init,
            reward=args.reward,
            kl_coef=args.beta,
            eval_prompts=args.eval_prompts,
            train_only=args.train_only,
            num_envs=16,
            progress=False,
            seed=args.seed,
        )
    )
    ref_scores = reference_scores(agent, args.optimum_samples, args.seed)
    optimum, ref_score = optimum_stats(ref_scores, args.beta)["optimum"], float(ref_scores.mean())
    start = time.perf_counter()
    rollouts = sample_reference(agent, args.samples, args.seed + 1)
    tokens = sum(r.tokens for r in rollouts)
    print(f"{sum(len(r.scores) for r in rollouts):,} reference completions, {tokens:,} tokens")
    {"mle": fit_mle, "soft-q": fit_soft_q, "log-variance": fit_log_variance}[args.method](agent, rollouts, args)
    wall = time.perf_counter() - start
    m = final_evaluation(agent.policy, agent, args.eval_samples, args.seed).metrics
    achieved = m["eval/scores"] - args.beta * m["eval/kl"]
    print(
        f"{args.method} at β={args.beta:g} ({wall:.0f} s): score {m['eval/scores']:+.3f}, KL {m['eval/kl']:.2f}, "
        f"objective {achieved:+.3f} against the optimum's {optimum:+.3f}: "
        f"{(achieved - ref_score) / (optimum - ref_score):.0%} of its gain; distinct-2 {m['eval/distinct_2']:.3f}, "
        f"perplexity under the reference {m['eval/ref_perplexity']:.1f}"
    )


if __name__ == "__main__":
    main()
