"""Fit π* ∝ π_ref·exp(r/β) from the reference's own completions, without policy gradients (issue 14's experiment).

Samples ``--samples`` reference completions of each training prompt through the env (scored there), then fits the
policy to π* one of two ways, and scores it with the same evaluation as ``bench_reinforce.py`` (``--eval-samples``
completions of each held-out prompt; objective = score − β·KL, as a fraction of the optimum's gain over the
reference, the optimum from 10,240 reference completions):

* ``--method mle`` (distillation, the forward KL(π*‖π)): resample ``--resample`` completions per prompt with
  probabilities softmax(r/β) over that prompt's samples (self-normalised importance weights of π* against π_ref),
  and maximise their likelihood for ``--epochs`` epochs (``--train-only head`` fits the output layer alone).
* ``--method soft-q``: fit the soft Q-function of the KL-regularised problem, Q(s, a) = β log E_ref[exp(r/β) | s, a],
  as a linear head on the reference's frozen LSTM states, by fitted soft-Q iteration on the reference's transitions
  (target V(s') = β log Σ_a π_ref(a|s') exp(Q(s', a)/β), or r after the last token); the policy is then the
  reference with Q/β added to its logits, π(a|s) ∝ π_ref(a|s) exp(Q(s, a)/β), an LSTMLM with a new output layer.

    python scripts/fit_optimum.py --init runs/demo/pretrain/model --beta 0.2 [--method mle] [--samples 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from bench_reinforce import final_evaluation, reference_scores  # (a sibling script: python puts scripts/ on the path)

from agents.benchmark import optimum_stats
from agents.model import completion_dists, completion_logprobs, pack_sequences
from agents.reinforce import Reinforce, ReinforceConfig, freeze_except
from agents.rollout import Rollout, make_env, sample_completions


def sample_reference(agent: Reinforce, per_prompt: int, seed: int, batch: int = 1024) -> list[Rollout]:
    """``per_prompt`` reference completions of every training prompt, in batches of ``batch`` sub-envs."""
    envs = make_env(batch, agent.cfg.reward, agent.tokenizer, agent.train_prompts, agent.cfg.max_new_tokens)
    gen = torch.Generator(agent.device).manual_seed(seed)
    index = np.repeat(np.arange(len(agent.train_prompts)), per_prompt)
    index = np.concatenate([index, index[: -len(index) % batch]])  # whole batches (the first prompts again)
    return [
        sample_completions(envs, agent.ref, gen, prompt_index=index[i : i + batch]) for i in range(0, len(index), batch)
    ]


def fit_mle(agent: Reinforce, rollouts: list[Rollout], args: argparse.Namespace) -> None:
    """Maximum likelihood on completions resampled by softmax(r/β) within each prompt (distillation of π*)."""
    prompts = [p for r in rollouts for p in r.prompt_ids]
    completions = [c for r in rollouts for c in r.completion_ids]
    scores = np.concatenate([r.scores for r in rollouts])
    index = np.concatenate([r.prompt_index for r in rollouts])
    rng = np.random.default_rng(args.seed)
    picked, ess = [], []
    for prompt in np.unique(index):
        rows = np.flatnonzero(index == prompt)
        w = np.exp((scores[rows] - scores[rows].max()) / args.beta)
        w /= w.sum()
        ess.append(1 / (w**2).sum())
        picked += rng.choice(rows, size=args.resample, p=w).tolist()
    print(f"effective samples of π* per prompt: median {np.median(ess):.0f} of {args.samples}")
    policy = agent.policy
    if args.train_only:
        freeze_except(policy, args.train_only)
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=args.lr)
    picked = np.array(picked)
    for epoch in range(args.epochs):
        rng.shuffle(picked)
        total = 0.0
        for i in range(0, len(picked), args.batch_size):
            rows = picked[i : i + args.batch_size]
            seqs, mask = pack_sequences(
                [prompts[j] for j in rows], [completions[j] for j in rows], agent.tokenizer.pad_id, agent.device
            )
            nll = -completion_logprobs(policy, seqs, mask)[0].sum() / len(rows)
            opt.zero_grad(set_to_none=True)
            nll.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            total += float(nll.detach()) * len(rows)
        print(f"epoch {epoch + 1}: negative log-likelihood {total / len(picked):.2f} nats per completion")


def fit_soft_q(agent: Reinforce, rollouts: list[Rollout], args: argparse.Namespace) -> None:
    """Fitted soft-Q iteration of a linear head on the reference's frozen states; the policy's output layer becomes
    the reference's plus Q/β."""
    states, actions, returns, last = [], [], [], []
    for r in rollouts:
        seqs, mask = pack_sequences(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
        with torch.no_grad():
            states.append(completion_dists(agent.ref, seqs, mask)[1])
        actions.append(seqs[:, 1:][mask.bool()])
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/pretrain/model", help="pretrained checkpoint (policy start and reference)")
    p.add_argument("--beta", type=float, default=0.2, help="KL coefficient β of the optimum π* ∝ π_ref·exp(r/β)")
    p.add_argument("--method", choices=("mle", "soft-q"), default="mle")
    p.add_argument("--samples", type=int, default=256, help="reference completions per training prompt")
    p.add_argument("--resample", type=int, default=128, help="mle: completions drawn from π*'s weights per prompt")
    p.add_argument("--epochs", type=int, default=2, help="mle: epochs; soft-q: fitted iterations")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-only", default="", help="mle: parameters to fit (as ReinforceConfig.train_only)")
    p.add_argument("--eval-samples", type=int, default=64, help="completions per evaluation prompt")
    p.add_argument("--optimum-samples", type=int, default=10240, help="reference completions for the optimum")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    agent = Reinforce(ReinforceConfig(init=args.init, kl_coef=args.beta, num_envs=16, progress=False, seed=args.seed))
    ref_scores = reference_scores(agent, args.optimum_samples, args.seed)
    optimum, ref_score = optimum_stats(ref_scores, args.beta)["optimum"], float(ref_scores.mean())
    start = time.perf_counter()
    rollouts = sample_reference(agent, args.samples, args.seed + 1)
    tokens = sum(r.tokens for r in rollouts)
    print(f"{sum(len(r.scores) for r in rollouts):,} reference completions, {tokens:,} tokens")
    (fit_mle if args.method == "mle" else fit_soft_q)(agent, rollouts, args)
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
