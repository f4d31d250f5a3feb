"""Where a policy's distance to π* sits: KL(π‖π*) per completion, split by position and by the kind of token (issue 14).

A policy's gap to the KL-regularised optimum is β·KL(π‖π*) per completion. π* ∝ π_ref·exp(r/β) acts token by token
through the soft value of the reference, V*(s) = β log E_ref[exp(r/β) | s] (Z's share still to come from state s),
as π*(a|s) = π_ref(a|s)·exp((V*(s·a) − V*(s))/β). So along one of the policy's completions, each token adds

    δ_t = log π(a_t|s_t)/π_ref(a_t|s_t) − (V*(s_t+1) − V*(s_t))/β,

and E_π[Σ_t δ_t] is KL(π‖π*) (the sum telescopes to log π/π_ref − (r − V*(s_0))/β, V* being r once the completion
ends). This script samples ``--completions`` of the policy's completions of the held-out prompts, estimates V* at every
prefix from ``--continuations`` reference continuations of it, and sums δ_t by position in the completion and by
what the token did to the feedback's score of the completion so far (raised it, lowered it, ended the completion, or
neither), split by that score before the token. Beside each part: the policy's mean log-ratio on those tokens
against π*'s tilt there, (V*(s·a) − V*(s))/β. The sum over all parts is the whole KL(π‖π*).

The estimate of V* is a log of a mean, biased low by about Var/(2·N·mean²) of exp(r/β): at s_0 that lowers the total
by the bias over β, and a part's figure carries the V* noise of its tokens (the script prints the total's standard
error over completions).

    python scripts/decompose_gap.py --policy runs/X/beta0.2_rloo_seed0/model --ref runs/tu16_lr3e-3/model --beta 0.2
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch

from agents.benchmark import log_mean_exp
from agents.model import completion_logprobs, generate, pack_completions
from agents.reinforce import Reinforce, ReinforceConfig
from agents.rollout import make_env, sample_completions

BANDS = ((0, 5), (5, 10), (10, 15), (15, None))
KINDS = ("raises the score", "lowers it", "ends the completion", "leaves it")


@dataclass
class Token:
    """One completion token: where it is, what it did, and its share of KL(π‖π*)."""

    completion: int
    position: int
    token: int
    kind: str
    score_before: float
    log_ratio: float  # log π(a_t|s_t) / π_ref(a_t|s_t)
    tilt: float  # π*'s: (V*(s_t+1) − V*(s_t)) / β
    delta: float  # log_ratio − tilt


def soft_values(
    agent: Reinforce, task, prompt_index: list[int], prefixes: list[list[int]], beta: float, n: int, gen, rows: int
) -> np.ndarray:
    """V*(s) = β log mean exp(r/β) over ``n`` reference continuations of each prefix (each a completion so far, not
    ended), the continuations run ``rows`` at a time, grouped by the budget they have left."""
    out = np.zeros(len(prefixes))
    longest = agent.cfg.max_new_tokens
    by_left: dict[int, list[int]] = {}
    for j, pre in enumerate(prefixes):
        by_left.setdefault(longest - len(pre), []).append(j)
    per_call = max(1, rows // n)
    for left, js in by_left.items():
        for start in range(0, len(js), per_call):
            chunk = js[start : start + per_call]
            contexts = [task.prompt_ids[prompt_index[j]] + prefixes[j] for j in chunk for _ in range(n)]
            with torch.no_grad():
                conts = generate(agent.ref, contexts, left, agent.tokenizer.eos_id, gen)
            index = [prompt_index[j] for j in chunk for _ in range(n)]
            full = [prefixes[j] + c for k, j in enumerate(chunk) for c in conts[k * n : (k + 1) * n]]
            r = np.asarray(task.score(index, full).rewards).reshape(len(chunk), n)
            out[chunk] = beta * log_mean_exp(r / beta)
    return out


def decompose(agent: Reinforce, beta: float, completions: int, continuations: int, seed: int, rows: int) -> list[Token]:
    """Sample the policy's completions of the held-out prompts and split each one's Σ_t δ_t over its tokens."""
    prompts = agent.evaluator.prompts
    envs = make_env(completions, agent.cfg.reward, agent.tokenizer, prompts, agent.cfg.max_new_tokens)
    gen = torch.Generator(agent.device).manual_seed(seed)
    index = np.resize(np.arange(len(prompts)), completions)
    r = sample_completions(envs, agent.policy, gen, prompt_index=index)
    batch = pack_completions(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
    with torch.no_grad():
        log_ratio = (completion_logprobs(agent.policy, batch)[0] - completion_logprobs(agent.ref, batch)[0]).cpu()
    task, eos = envs.task, agent.tokenizer.eos_id
    # every prefix of every completion: its score so far, and (while the completion goes on) its soft value
    owner = [(i, t) for i, ids in enumerate(r.completion_ids) for t in range(len(ids))]
    prefix_index = [int(r.prompt_index[i]) for i, _ in owner]
    prefixes = [r.completion_ids[i][:t] for i, t in owner]
    so_far = np.asarray(task.score(prefix_index, prefixes).rewards)
    values = soft_values(agent, task, prefix_index, prefixes, beta, continuations, gen, rows)
    first = {key: j for j, key in enumerate(owner)}
    tokens = []
    for i, ids in enumerate(r.completion_ids):
        for t, a in enumerate(ids):
            j = first[(i, t)]
            last = t + 1 == len(ids)
            after_value = float(r.scores[i]) if last else values[first[(i, t + 1)]]
            after_score = float(r.scores[i]) if last else so_far[first[(i, t + 1)]]
            change = after_score - so_far[j]
            kind = KINDS[2] if a == eos else KINDS[0] if change > 0.05 else KINDS[1] if change < -0.05 else KINDS[3]
            tilt = (after_value - values[j]) / beta
            lr = float(log_ratio[i, t])
            tokens.append(Token(i, t, a, kind, float(so_far[j]), lr, tilt, lr - tilt))
    return tokens


def report(tokens: list[Token], completions: int, decode, top: int = 5) -> list[str]:
    """The table's lines: the total, then each position band and each kind of token, per completion; then, for each
    kind, the ``top`` tokens with the largest share (``decode`` turns a token id into its text)."""
    delta = np.array([x.delta for x in tokens])
    per_completion = np.bincount([x.completion for x in tokens], weights=delta, minlength=completions)
    se = per_completion.std(ddof=1) / np.sqrt(completions)
    lines = [
        f"KL(π‖π*) per completion: {per_completion.mean():.3f} ± {se:.3f} (standard error over {completions} "
        f"completions); KL(π‖π_ref): {sum(x.log_ratio for x in tokens) / completions:.3f}",
        "| part | tokens per completion | share of KL(π‖π*) per completion | mean log π/π_ref | π*'s mean tilt |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, sel: list[Token]) -> None:
        if sel:
            lines.append(
                f"| {name} | {len(sel) / completions:.2f} | {sum(x.delta for x in sel) / completions:+.3f} | "
                f"{np.mean([x.log_ratio for x in sel]):+.2f} | {np.mean([x.tilt for x in sel]):+.2f} |"
            )

    for lo, hi in BANDS:
        row(f"positions {lo}-{'' if hi is None else hi - 1}", [x for x in tokens if lo <= x.position < (hi or 1 << 30)])
    for kind in KINDS:
        for name, low in (("score so far < 0.3", True), ("score so far >= 0.3", False)):
            row(f"{kind}, {name}", [x for x in tokens if x.kind == kind and (x.score_before < 0.3) == low])
    for kind in KINDS:
        share: dict[int, list[float]] = {}
        for x in tokens:
            if x.kind == kind:
                share.setdefault(x.token, []).append(x.delta)
        largest = sorted(share.items(), key=lambda item: -sum(item[1]))[:top]
        words = ", ".join(f"{decode(a)!r} {sum(d) / completions:+.3f} ({len(d)}x)" for a, d in largest)
        lines.append(f"largest shares, {kind}: {words}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="the aligned policy's checkpoint")
    p.add_argument("--ref", required=True, help="the reference it was aligned against (the one its KL is to)")
    p.add_argument("--beta", type=float, required=True, help="β of π* ∝ π_ref·exp(r/β)")
    p.add_argument("--reward", default="sentiment", help="feedback spec (the alignment's)")
    p.add_argument("--completions", type=int, default=192, help="the policy's completions, over the held-out prompts")
    p.add_argument("--continuations", type=int, default=128, help="reference continuations per prefix for V*")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts (the alignment's)")
    p.add_argument("--rows", type=int, default=8192, help="continuations sampled at a time (memory)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("completions", "continuations", "rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name} {getattr(args, name)}: give a positive count")
    if args.beta <= 0:
        p.error(f"--beta {args.beta}: give β > 0 (π* ∝ π_ref·exp(r/β))")
    cfg = ReinforceConfig(
        init=args.policy,
        ref=args.ref,
        reward=args.reward,
        eval_prompts=args.eval_prompts,
        progress=False,
        precision="float32",
        gated_tilt=False,  # (the policy as saved: a gated tilt is in its checkpoint when it was trained with one)
    )
    agent = Reinforce(cfg)  # (nothing is trained or written: it loads the two models, the prompts and the feedback)
    agent.policy.eval()
    agent.ref.eval()
    tokens = decompose(agent, args.beta, args.completions, args.continuations, args.seed, args.rows)
    print("\n".join(report(tokens, args.completions, lambda a: agent.tokenizer.decode([a]))))


if __name__ == "__main__":
    main()
