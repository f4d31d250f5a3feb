"""Teach a reference's LSTM state the score of the completion so far, then align from it (issue 14's experiment).

π*'s tilt of a word depends on what the completion has said already (VADER's sum saturates), and the CPU preset's
reference does not carry that in its state: a ridge regression from the state to the feedback's score of the
completion so far has a held-out R² of about 0 (``bench_reinforce.py``'s state probe). This script makes a reference
that does, so alignment can be measured from a state that has the feature:

* sample ``--steps`` batches of ``--batch`` completions of training prompts from the original reference;
* train a copy of it on two losses at once: the exact KL(π_ref(·|s_t) ‖ π(·|s_t)) over the vocabulary at every
  completion token (distillation, so it stays the same language model) and ``--aux-weight`` x the squared error of
  a linear head on the LSTM state predicting the feedback's score of the completion so far;
* report the state probe before and after and the KL per completion to the original, and save the copy (without
  the head) as a checkpoint that ``bench_reinforce.py --init`` takes as a reference of its own.

    python scripts/teach_score.py --init runs/demo/pretrain/model --out runs/taught --steps 500 --aux-weight 50
    python scripts/bench_reinforce.py --init runs/taught --total-env-tokens 1500000 --betas 0.2 --seeds 0
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_reinforce import state_probe  # (a sibling script: python puts scripts/ on the path)

from agents.checkpoint import load_checkpoint, save_checkpoint
from agents.model import LSTMLM, completion_dists, pack_sequences
from agents.reinforce import Reinforce, ReinforceConfig
from agents.rollout import sample_completions


def teach(agent: Reinforce, student: LSTMLM, steps: int, batch: int, aux_weight: float, lr: float, seed: int) -> float:
    """Train ``student`` (a copy of ``agent.ref`` with a value head) to keep the reference's next-token distribution
    and to predict the score so far from its state; returns the KL per completion token on the last batch."""
    opt = torch.optim.Adam(student.parameters(), lr=lr)
    gen = torch.Generator(agent.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    started, kl = time.perf_counter(), torch.zeros(())
    for step in range(1, steps + 1):
        index = rng.integers(len(agent.train_prompts), size=batch)
        r = sample_completions(agent.envs, agent.ref, gen, prompt_index=index)
        seqs, mask = pack_sequences(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
        target = agent.prefix_scores(r, mask)[mask.bool()]
        with torch.no_grad():
            ref_logp, _ = completion_dists(agent.ref, seqs, mask)
        logp, h = completion_dists(student, seqs, mask)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
        mse = (student.value(h).squeeze(-1) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        (kl + aux_weight * mse).backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps:
            print(
                f"step {step}/{steps}: KL to the reference {kl.item():.4f} per token; score-so-far error "
                f"{mse.item():.4f} (its variance {target.var().item():.4f}); {time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return float(kl.detach())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/pretrain/model", help="the reference to copy and teach")
    p.add_argument("--out", required=True, help="where the taught checkpoint goes")
    p.add_argument("--reward", default="sentiment", help="feedback spec whose score so far is taught")
    p.add_argument("--steps", type=int, default=500, help="batches of reference completions")
    p.add_argument("--batch", type=int, default=256, help="completions per batch")
    p.add_argument("--aux-weight", type=float, default=50.0, help="weight of the score-so-far loss against the KL")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts (not trained on)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.aux_weight < 0:
        raise SystemExit(f"--aux-weight must be >= 0, got {args.aux_weight}")

    torch.manual_seed(args.seed)  # (the new value head's initialisation)
    cfg = ReinforceConfig(
        init=args.init,
        reward=args.reward,
        num_envs=args.batch,
        baseline="moving_average",  # (no groups of a prompt: any --batch)
        eval_prompts=args.eval_prompts,
    )
    agent = Reinforce(cfg)
    student = load_checkpoint(args.init, expect_tokenizer=agent.tokenizer, value_head=True, device=agent.device)[0]
    before = state_probe(agent.ref, agent, seed=args.seed + 1)
    print(f"the reference's state tells the score so far with R² {before:.2f}")
    kl = teach(agent, student, args.steps, args.batch, args.aux_weight, args.lr, args.seed)
    probe = state_probe(student, agent, seed=args.seed + 1)
    student.value = None  # (the feature stays in the state; the head that read it is not part of the LM)
    student.config = type(student.config)(**{**vars(student.config), "value_head": False})
    save_checkpoint(args.out, student, agent.tokenizer, meta={"stage": "taught score so far", "from": args.init})
    print(
        f"taught: its state tells the score so far with R² {probe:.2f}; KL to the reference "
        f"{kl * cfg.max_new_tokens:.2f} nats per {cfg.max_new_tokens}-token completion; saved {args.out}"
    )


if __name__ == "__main__":
    main()
