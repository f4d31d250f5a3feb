"""Language-model speed: generation with the LSTM state carried vs. re-encoding the context, and useful FLOP/s.

Prints, all measured in one run:
* a float32 2048x2048 matrix product's FLOP/s (the ceiling);
* generation tokens/s at batch 1, 64 and 256 (sampling at temperature 1), carrying the state (O(1) per token)
  and re-encoding the whole context at every token (O(length) per token), and their ratio;
* useful FLOP/s (model FLOPs per token x tokens/s) as a fraction of the ceiling, for generation and for a
  training step (forward + backward + AdamW step).

    python scripts/bench_lm.py [--new-tokens 64] [--seconds 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from agents.model import LSTMLM, LMConfig, generate, sample_logits
from agents.training import make_optimizer


def timed(fn, seconds: float) -> float:
    """Seconds per call of ``fn``, after one warm-up call, over about ``seconds`` of calls."""
    fn()
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 2:
        fn()
        n += 1
    return elapsed / n


def matmul_flops(seconds: float) -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    return 2 * 2048**3 / timed(lambda: a @ b, seconds)


@torch.no_grad()
def reencode_generate(model: LSTMLM, prompts: torch.Tensor, new_tokens: int, gen: torch.Generator) -> torch.Tensor:
    """The naive way: run the model over the whole sequence for every new token."""
    seq = prompts
    for _ in range(new_tokens):
        logits, _ = model(seq)
        seq = torch.cat([seq, sample_logits(logits[:, -1], gen)[:, None]], dim=1)
    return seq


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence (default 64)")
    p.add_argument("--prompt-tokens", type=int, default=8, help="prompt length in tokens (default 8)")
    p.add_argument("--seconds", type=float, default=2.0, help="time per measurement (default 2)")
    p.add_argument("--train-batch", type=int, default=64, help="training batch (default 64)")
    p.add_argument("--train-seq", type=int, default=32, help="training sequence length (default 32)")
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = LMConfig()  # the CPU preset's model: Embedding 128, LSTM 256, vocabulary 2000
    model = LSTMLM(cfg).eval()
    fpt = cfg.flops_per_token()
    peak = matmul_flops(args.seconds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; model {cfg}")
    print(f"float32 2048x2048 matmul: {peak / 1e9:.1f} GFLOP/s (ceiling); model forward FLOPs/token: {fpt / 1e6:.2f} M")
    print(f"\ngeneration, {args.prompt_tokens}-token prompts, {args.new_tokens} new tokens, temperature 1")
    print(
        f"{'batch':>6} {'carried tok/s':>14} {'re-encode tok/s':>16} {'ratio':>7} {'useful FLOP/s':>14} {'of peak':>8}"
    )
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 64, 256):
        prompts = torch.randint(3, cfg.vocab_size, (batch, args.prompt_tokens))
        ids = prompts.tolist()
        t_carry = timed(lambda ids=ids: generate(model, ids, args.new_tokens, generator=gen), args.seconds)
        t_naive = timed(lambda p=prompts: reencode_generate(model, p, args.new_tokens, gen), args.seconds)
        carry, naive = batch * args.new_tokens / t_carry, batch * args.new_tokens / t_naive
        useful = carry * fpt
        print(
            f"{batch:>6} {carry:>14,.0f} {naive:>16,.0f} {carry / naive:>6.1f}x "
            f"{useful / 1e9:>11.1f} G {useful / peak:>7.0%}"
        )

    model.train()
    opt = make_optimizer(model, 1e-3, 0.01)
    data = torch.randint(3, cfg.vocab_size, (args.train_batch, args.train_seq + 1))

    def train_step() -> None:
        logits, _ = model(data[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    t = timed(train_step, args.seconds)
    tokens = args.train_batch * args.train_seq / t
    useful = tokens * 3 * fpt  # forward + backward (about 2x forward)
    print(
        f"\ntraining step, batch {args.train_batch} x {args.train_seq} tokens: {tokens:,.0f} tok/s, "
        f"{useful / 1e9:.1f} GFLOP/s useful = {useful / peak:.0%} of peak (goal >= 60%)"
    )
    print("goal: generation at batch 256 >= 50% of peak")


if __name__ == "__main__":
    main()
