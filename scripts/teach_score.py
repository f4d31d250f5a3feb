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

With ``--new-units N`` the feature goes into N new LSTM units with N embedding dimensions of their own instead, and
only they train: the output layer reads them with weight 0, so the taught model is exactly the reference's language
model (the KL term is 0), with a wider state, and aligning from it solves the same problem as from the reference.

    python scripts/teach_score.py --init runs/demo/pretrain/model --out runs/taught --steps 500 --aux-weight 50
    python scripts/bench_reinforce.py --init runs/taught --total-env-tokens 1500000 --betas 0.2 --seeds 0
    python scripts/teach_score.py --init runs/demo/pretrain/model --out runs/taught_units --new-units 32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_reinforce import state_probe  # (a sibling script: python puts scripts/ on the path)

from agents.checkpoint import load_checkpoint, save_checkpoint
from agents.model import LSTMLM, LMConfig, completion_dists, pack_sequences, widened
from agents.reinforce import Reinforce, ReinforceConfig
from agents.rollout import sample_completions


def teach(
    agent: Reinforce, student: LSTMLM, steps: int, batch: int, aux_weight: float, lr: float, seed: int, distill: bool
) -> float:
    """Train ``student`` (a copy of ``agent.ref``) to keep the reference's next-token distribution and, through a
    linear head on its state that is thrown away afterwards, to predict the score so far; returns the KL per
    completion token on the last batch. Without ``distill`` (new units that the output layer does not read) the KL
    is 0 by construction, so neither model's output layer runs: only the student's state is needed."""
    head = torch.nn.Linear(student.config.hidden_dim, 1, device=agent.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    trained = [p for p in student.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.Adam(trained, lr=lr)
    gen = torch.Generator(agent.device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    started, kl = time.perf_counter(), torch.zeros(())
    for step in range(1, steps + 1):
        index = rng.integers(len(agent.train_prompts), size=batch)
        r = sample_completions(agent.envs, agent.ref, gen, prompt_index=index)
        seqs, mask = pack_sequences(r.prompt_ids, r.completion_ids, agent.tokenizer.pad_id, agent.device)
        target = agent.prefix_scores(r, mask)[mask.bool()]
        if distill:
            with torch.no_grad():
                ref_logp, _ = completion_dists(agent.ref, seqs, mask)
            logp, h = completion_dists(student, seqs, mask)
            kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1).mean()
        else:
            h = student.hidden(seqs[:, :-1])[0][mask.bool()]
        mse = (head(h).squeeze(-1) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        (kl + aux_weight * mse).backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        if step % 25 == 0 or step == steps:
            print(
                f"step {step}/{steps}: KL to the reference {kl.item():.4f} per token; score-so-far error "
                f"{mse.item():.4f} (its variance {target.var().item():.4f}); {time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return float(kl.detach())


def add_feature_units(model: LSTMLM, units: int, seed: int) -> LSTMLM:
    """``model`` with ``units`` new LSTM units and ``units`` new embedding dimensions, which only the new units read.
    Only they (the new units' weights and the new embedding columns) and the score-so-far head train; the output
    layer reads the new units with weight 0, so the language model stays exactly the reference's while the new part
    of its state learns the feature. (The new units need inputs of their own: the reference's embedding does not tell
    a positive word from the rest linearly, and with it frozen the new units do not learn the score so far.)"""
    c = model.config
    h, e, H = c.hidden_dim, c.embed_dim, c.hidden_dim + units
    gen = torch.Generator(model.head.weight.device).manual_seed(seed)
    wide = widened(model, H, gen)  # (the new units, with the old embedding)
    out = LSTMLM(LMConfig(**{**wide.config.to_dict(), "embed_dim": e + units})).to(model.head.weight.device)
    with torch.no_grad():
        out.load_state_dict(
            {k: v for k, v in wide.state_dict().items() if k not in ("embed.weight", "lstm.weight_ih_l0")}, strict=False
        )
        old_embed, old_ih = wide.embed.weight, wide.lstm.weight_ih_l0
        out.embed.weight[:, :e] = old_embed
        out.embed.weight[:, e:] = torch.randn(c.vocab_size, units, generator=gen, device=gen.device) * old_embed.std()
        out.lstm.weight_ih_l0.zero_()
        out.lstm.weight_ih_l0[:, :e] = old_ih
        for gate in range(4):  # the new units read the new dimensions; the old units do not
            rows = slice(gate * H + h, (gate + 1) * H)
            drawn = torch.randn(units, units, generator=gen, device=gen.device) * old_ih.std()
            out.lstm.weight_ih_l0[rows, e:] = drawn
    out.head.requires_grad_(False)
    new_rows = torch.zeros(4 * H, 1, device=out.head.weight.device)
    for gate in range(4):  # the rows of the new units in each gate's block (see widened)
        new_rows[gate * H + h : (gate + 1) * H] = 1.0
    for param in out.lstm.parameters():
        param.register_hook(lambda grad, rows=new_rows: grad * rows.view(-1, *([1] * (grad.dim() - 1))))
    new_cols = torch.zeros(1, e + units, device=out.head.weight.device)
    new_cols[:, e:] = 1.0
    out.embed.weight.register_hook(lambda grad: grad * new_cols)
    return out.train(model.training)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="runs/pretrain/model", help="the reference to copy and teach")
    p.add_argument("--out", required=True, help="where the taught checkpoint goes")
    p.add_argument("--reward", default="sentiment", help="feedback spec whose score so far is taught")
    p.add_argument("--steps", type=int, default=500, help="batches of reference completions")
    p.add_argument("--batch", type=int, default=256, help="completions per batch")
    p.add_argument(
        "--aux-weight",
        type=float,
        default=50.0,
        help="weight of the score-so-far loss against the KL (no effect with --new-units, where the KL is 0)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--eval-prompts", type=int, default=32, help="held-out prompts (not trained on)")
    p.add_argument(
        "--new-units",
        type=int,
        default=0,
        help="teach the feature in this many new LSTM units only (the LM stays exactly the reference's); 0: teach "
        "the whole model, distilled toward the reference",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for name in ("steps", "batch"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.new_units < 0:
        raise SystemExit(f"--new-units must be >= 0, got {args.new_units}")
    if args.aux_weight < 0:
        raise SystemExit(f"--aux-weight must be >= 0, got {args.aux_weight}")

    torch.manual_seed(args.seed)  # (the generators below have their own seeds; this covers torch's global one)
    cfg = ReinforceConfig(
        init=args.init,
        reward=args.reward,
        num_envs=args.batch,
        baseline="moving_average",  # (no groups of a prompt: any --batch)
        eval_prompts=args.eval_prompts,
    )
    agent = Reinforce(cfg)
    student = load_checkpoint(args.init, expect_tokenizer=agent.tokenizer, value_head=False, device=agent.device)[0]
    if args.new_units:
        student = add_feature_units(student, args.new_units, args.seed)
    before = state_probe(agent.ref, agent, seed=args.seed + 1)
    print(f"the reference's state tells the score so far with R² {before:.2f}")
    kl = teach(agent, student, args.steps, args.batch, args.aux_weight, args.lr, args.seed, distill=not args.new_units)
    probe = state_probe(student, agent, seed=args.seed + 1)
    save_checkpoint(args.out, student, agent.tokenizer, meta={"stage": "taught score so far", "from": args.init})
    print(
        f"taught: its state tells the score so far with R² {probe:.2f}; KL to the reference "
        f"{kl * cfg.max_new_tokens:.2f} nats per {cfg.max_new_tokens}-token completion; saved {args.out}"
    )


if __name__ == "__main__":
    main()
