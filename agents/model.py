"""The policy: an LSTM language model, Embedding -> LSTM -> Linear, with O(1)-per-token generation.

It is the policy that every algorithm trains, the frozen reference of the KL penalty, and the trunk of the reward
model. ``forward(tokens, state) -> (logits, state)`` carries the LSTM state, so generating a token costs one LSTM step,
not a pass over the whole context.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from textgym.tokenizer import TextTokenizer

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (num_layers, batch, hidden_dim), as nn.LSTM uses

# Below this batch size a hand-rolled lstm_cell step beats nn.LSTM's fused kernel for one token (measured).
_CELL_STEP_MAX_BATCH = 16


@dataclass
class LMConfig:
    """Sizes of the language model. Every field is a positive integer except ``dropout``, ``value_head`` and
    ``gated_tilt``."""

    vocab_size: int = 2000
    """Number of token ids; must equal the tokenizer's vocabulary size."""
    embed_dim: int = 128
    """Width of the token embedding."""
    hidden_dim: int = 256
    """Width of the LSTM state."""
    num_layers: int = 1
    """Stacked LSTM layers."""
    dropout: float = 0.0
    """Dropout on the embedding and LSTM output (and between layers), in [0, 1). Off at inference."""
    value_head: bool = False
    """Add a linear value head on the LSTM output (for actor-critic algorithms and learned baselines)."""
    gated_tilt: bool = False
    """The output layer adds a word tilt scaled by a gate on the state (:class:`GatedTiltHead`; alignment adds it)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "embed_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            setattr(self, name, int(value))  # e.g. env.action_space.n, a NumPy integer: JSON needs a Python int
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LMConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    def flops_per_token(self) -> int:
        """Forward FLOPs per token (2 per multiply-add): the LSTM's input and recurrent products, the output layer."""
        e, h, v = self.embed_dim, self.hidden_dim, self.vocab_size
        lstm = 2 * 4 * h * (e + h) + 2 * 4 * h * (h + h) * (self.num_layers - 1)
        return lstm + 2 * h * v + (2 * h if self.value_head else 0) + (2 * h + 2 * v if self.gated_tilt else 0)


class GatedTiltHead(nn.Linear):
    """The output layer plus a word tilt u whose size a gate on the state sets:

        logits = W h + b + (1 + c·(w·h + w0)) · c·u

    u (one logit per token) and the gate (w, w0) start at 0, so the model starts as the same distribution. Why: the
    KL-regularised optimum π* ∝ π_ref·exp(r/β) tilts a word by what the completion has said so far (a first positive
    word by about e³ at β = 0.2, a second by about e¹), and REINFORCE learns that conditional part slowly when each
    word's weights learn it from that word's own rare samples. Here one tilt is shared by the state's gate, which
    every token's gradient trains. c = 10 makes u and the gate step 10x as far under Adam (a gate that steps 1x gave
    nothing; docs/benchmarks.md, issue 14).
    """

    STEP_SCALE = 10.0

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.tilt = nn.Parameter(torch.zeros(out_features))
        self.gate = nn.Linear(in_features, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # One product of width hidden + 1, [h, c·gate(h)] · [W, c·u]ᵀ + (b + c·u): the same logits as adding the
        # tilt to W h + b, without a separate pass over a (tokens x vocabulary) tensor (whole updates at 0.95x the
        # plain layer's speed instead of 0.90x, measured side by side; docs/benchmarks.md).
        c = self.STEP_SCALE
        tilt = c * self.tilt
        x = torch.cat([h, c * self.gate(h)], -1)
        return F.linear(x, torch.cat([self.weight, tilt[:, None]], 1), self.bias + tilt)


def with_gated_tilt(model: LSTMLM) -> LSTMLM:
    """Give ``model`` (in place) a :class:`GatedTiltHead` with its output layer's weights; the same distribution."""
    if model.config.gated_tilt:
        return model
    old = model.head
    head = GatedTiltHead(old.in_features, old.out_features).to(old.weight.device)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.copy_(old.bias)
    head.requires_grad_(old.weight.requires_grad)
    model.head = head
    model.config.gated_tilt = True
    return model


class LSTMLM(nn.Module):
    """Embedding -> LSTM -> Linear next-token model (with an optional value head)."""

    kind = "language-model"

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.drop = nn.Dropout(c.dropout)
        self.lstm = nn.LSTM(
            c.embed_dim, c.hidden_dim, c.num_layers, batch_first=True, dropout=c.dropout if c.num_layers > 1 else 0.0
        )
        self.head = (GatedTiltHead if c.gated_tilt else nn.Linear)(c.hidden_dim, c.vocab_size)
        self.value = nn.Linear(c.hidden_dim, 1) if c.value_head else None
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=0.1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        for name, p in self.lstm.named_parameters():
            if name.startswith("bias"):  # forget-gate bias 1: remember by default (Jozefowicz et al., 2015)
                nn.init.zeros_(p)
                p.data[self.config.hidden_dim : 2 * self.config.hidden_dim] = 1.0
        if self.value is not None:
            nn.init.zeros_(self.value.weight)
            nn.init.zeros_(self.value.bias)

    # -- the core ----------------------------------------------------------------------------------------------
    def hidden(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """LSTM outputs (batch, time, hidden_dim) for ``tokens`` (batch, time), starting from ``state``."""
        x = self.drop(self.embed(tokens))
        out, state = self.lstm(x, state)
        return self.drop(out), state

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Next-token logits (batch, time, vocab) and the LSTM state after the last token."""
        out, state = self.hidden(tokens, state)
        return self.head(out), state

    def step(self, tokens: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token per sequence (batch,) -> logits (batch, vocab): the O(1) generation step."""
        if tokens.shape[0] > _CELL_STEP_MAX_BATCH or self.training:
            logits, state = self.forward(tokens[:, None], state)
            return logits[:, 0], state
        x = self.embed(tokens)
        hs, cs = [], []
        for layer in range(self.config.num_layers):
            h, c = torch.lstm_cell(
                x,
                (state[0][layer], state[1][layer]),
                getattr(self.lstm, f"weight_ih_l{layer}"),
                getattr(self.lstm, f"weight_hh_l{layer}"),
                getattr(self.lstm, f"bias_ih_l{layer}"),
                getattr(self.lstm, f"bias_hh_l{layer}"),
            )
            hs.append(h)
            cs.append(c)
            x = h
        return self.head(x), (torch.stack(hs), torch.stack(cs))

    def prefill(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, State, torch.Tensor]:
        """Run prompts of different lengths; return each one's last logits (batch, vocab), state and last hidden.

        Prompts are packed, so every prompt's state is exactly what it would be alone (no padding runs through
        the LSTM). A prompt that recurs in the batch runs once, and its rows share the result: a leave-one-out
        group's k completions of one prompt, or an evaluation's samples of each prompt.
        """
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token (start it with the <bos> id)")
        device = self.head.weight.device
        first_row: dict[tuple[int, ...], int] = {}
        rows = [first_row.setdefault(tuple(p), len(first_row)) for p in prompts]
        unique = list(first_row)
        lengths = torch.tensor([len(p) for p in unique])
        padded = torch.zeros(len(unique), int(lengths.max()), dtype=torch.long, device=device)
        for i, p in enumerate(unique):
            padded[i, : len(p)] = torch.as_tensor(p, dtype=torch.long)
        x = self.drop(self.embed(padded))
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, c) = self.lstm(packed)
        last_hidden = h[-1]
        logits = self.head(self.drop(last_hidden))
        if len(unique) < len(prompts):
            index = torch.tensor(rows, device=device)
            h, c, last_hidden, logits = h[:, index], c[:, index], last_hidden[index], logits[index]
        return logits, (h, c), last_hidden


@torch.no_grad()
def widened(model: LSTMLM, hidden_dim: int, generator: torch.Generator) -> LSTMLM:
    """A copy of ``model`` with a wider LSTM (``hidden_dim`` >= its own) that computes the same distributions.

    The old units keep their weights and do not read the new ones; the output layer (and value head) read the new
    units with weight 0. The new units' own input and recurrent weights are drawn like the old ones (from
    ``generator``), so they carry a signal from the start and their output weights get a gradient: room to learn a
    change of the distribution (such as the tilt toward a reward) without overwriting what the old units model.
    """
    c = model.config
    if hidden_dim < c.hidden_dim:
        raise ValueError(f"hidden_dim {hidden_dim} is narrower than the model's {c.hidden_dim}: it can only be widened")
    wide = LSTMLM(LMConfig(**{**c.to_dict(), "hidden_dim": hidden_dim})).to(model.head.weight.device)
    h, H = c.hidden_dim, hidden_dim

    def draw(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device=generator.device).to(like) * like.std()

    wide.embed.weight.copy_(model.embed.weight)
    for name, old in model.lstm.named_parameters():
        new = getattr(wide.lstm, name)
        for gate in range(4):  # rows are the gates i, f, g, o, each a block of hidden units
            rows_old, rows_new = slice(gate * h, (gate + 1) * h), slice(gate * H + h, (gate + 1) * H)
            if old.dim() == 1:  # biases: the new units get LSTMLM's own init (0, forget gate 1)
                new[gate * H : gate * H + h] = old[rows_old]
                continue
            cols = old.shape[1]  # the old units' inputs; beyond them, the new units below (for the 2nd layer on)
            new[gate * H : gate * H + h] = 0.0
            new[gate * H : gate * H + h, :cols] = old[rows_old]
            new[rows_new] = draw(new[rows_new].shape, old)
    wide.head.weight.zero_()
    wide.head.weight[:, :h] = model.head.weight
    wide.head.bias.copy_(model.head.bias)
    if c.gated_tilt:  # (the gate reads the new units with weight 0 too)
        wide.head.tilt.copy_(model.head.tilt)
        wide.head.gate.weight.zero_()
        wide.head.gate.weight[:, :h] = model.head.gate.weight
        wide.head.gate.bias.copy_(model.head.gate.bias)
    if model.value is not None and wide.value is not None:
        wide.value.weight[:, :h] = model.value.weight
        wide.value.bias.copy_(model.value.bias)
    return wide.train(model.training)


LEXICON_BUCKETS = 1 << 16
"""Rows of a reward model's word lexicon: words are hashed into them (:func:`lexicon_ids`); row 0 is padding."""
_LEXICON_WORD = re.compile(r"[A-Za-z']+|[!?]")


def lexicon_ids(text: str) -> list[int]:
    """The lexicon rows of a text's words (case kept: "GREAT" is not "great") and of its '!' and '?'."""
    return [1 + zlib.crc32(w.encode()) % (LEXICON_BUCKETS - 1) for w in _LEXICON_WORD.findall(text)]


class RewardModel(nn.Module):
    """A scalar reward r(prompt, completion), learned from pairwise preferences (see :mod:`agents.reward_model`).

    Two terms, added: a linear head on the LSTM's last state over ``<bos> + prompt + completion`` (the trunk, whose
    embedding and LSTM start as a language model's), and a *lexicon*, a learned score per word summed over the
    completion's words (hashed into ``LEXICON_BUCKETS`` rows). The lexicon sees which words a completion uses, which
    is what a word-level judge such as VADER scores; the LSTM term can learn what depends on order and context.
    """

    kind = "reward-model"

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.embed_dim)
        self.lstm = nn.LSTM(c.embed_dim, c.hidden_dim, c.num_layers, batch_first=True)
        self.score = nn.Linear(c.hidden_dim, 1)
        self.lexicon = nn.Embedding(LEXICON_BUCKETS, 1, padding_idx=0)
        for p in (self.score.weight, self.score.bias, self.lexicon.weight):
            nn.init.zeros_(p)  # a new reward model scores everything 0: no preference before it has seen one

    def forward(self, seqs: torch.Tensor, lengths: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Rewards (B,) of right-padded ``<bos> + prompt + completion`` token rows (B, T) of ``lengths`` tokens, and
        the completions' :func:`lexicon_ids` (B, W), padded with 0."""
        # The rows are right-padded, so the output at a row's last token does not depend on the padding after it;
        # a padded batch runs several times faster on the CPU than a packed one (measured: 9x at 512 x 28 tokens).
        out, _ = self.lstm(self.embed(seqs))
        last = out[torch.arange(len(seqs), device=seqs.device), lengths.to(seqs.device) - 1]
        return self.score(last).squeeze(-1) + self.lexicon(words).squeeze(-1).sum(1)


# -- sampling ----------------------------------------------------------------------------------------------------
def sample_logits(
    logits: torch.Tensor,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """Draw one token per row of ``logits`` (batch, vocab).

    Inverse-CDF sampling: softmax, cumulative sum in float32, one uniform draw per row, ``searchsorted``. It draws one
    random number per row, where ``torch.multinomial`` draws one per vocabulary entry (measured several times
    slower at batch 64 x 2000). ``temperature=0`` is greedy decoding.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    index = None
    if top_k and top_k < logits.shape[-1]:
        logits, index = torch.topk(logits, top_k, dim=-1)  # sorted, descending
    if top_p < 1.0:
        if index is None:
            logits, index = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(logits, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.masked_fill(drop, float("-inf"))
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device) * cdf[:, -1:]
    choice = torch.searchsorted(cdf, u).clamp_(max=logits.shape[-1] - 1).squeeze(-1)
    return choice if index is None else index.gather(-1, choice[:, None]).squeeze(-1)


@torch.no_grad()
def generate(
    model: LSTMLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> list[list[int]]:
    """Continue each prompt (token ids, usually starting with <bos>) by up to ``max_new_tokens`` tokens.

    The LSTM state is carried from token to token, so each new token costs one step. A sequence stops after it
    emits ``eos_id`` (the id is kept at its end).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    was_training = model.training
    model.eval()
    logits, state, _ = model.prefill(prompts)
    out = torch.empty(len(prompts), max_new_tokens, dtype=torch.long, device=logits.device)
    for t in range(max_new_tokens):
        tokens = sample_logits(logits, generator, temperature, top_k, top_p)
        out[:, t] = tokens
        if t + 1 < max_new_tokens:
            logits, state = model.step(tokens, state)
    model.train(was_training)
    result = []
    for row in out.tolist():
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        result.append(row)
    return result


@torch.no_grad()
def complete(
    model: LSTMLM,
    tokenizer: TextTokenizer,
    prompts: Sequence[str],
    max_new_tokens: int,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> tuple[list[list[int]], list[list[int]], list[str]]:
    """Complete prompt texts (each started with <bos>): returns (prompt ids, completion ids, decoded completions)."""
    ids = [[tokenizer.bos_id] + tokenizer.encode(p) for p in prompts]
    outs = generate(model, ids, max_new_tokens, tokenizer.eos_id, generator, temperature, top_k, top_p)
    return ids, outs, tokenizer.decode_batch(outs)


# -- log-probabilities of completions ----------------------------------------------------------------------------
@dataclass
class Packed:
    """Prompt + completion pairs laid out for the log-probabilities of the completions' tokens."""

    prompts: list[list[int]]
    """Each row's prompt (token ids, starting with <bos>)."""
    tokens: torch.Tensor
    """(B, T) the completion tokens, left-aligned and right-padded; T is the longest completion."""
    mask: torch.Tensor
    """(B, T) 1.0 at a completion token, 0.0 at padding. Per-token quantities (log-probabilities, returns,
    values) are laid out like it."""


def pack_completions(
    prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int, device: torch.device | None
) -> Packed:
    """Pack completions (each at least one token) of their prompts for :func:`completion_dists`."""
    if any(len(c) == 0 for c in completions):
        raise ValueError("every completion needs at least one token")
    width = max(map(len, completions))
    tokens = torch.full((len(completions), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(completions), width)
    for i, c in enumerate(completions):
        tokens[i, : len(c)] = torch.as_tensor(list(c), dtype=torch.long)
        mask[i, : len(c)] = 1.0
    return Packed([list(p) for p in prompts], tokens.to(device), mask.to(device))


def completion_hidden(model: LSTMLM, batch: Packed) -> torch.Tensor:
    """The LSTM's hidden state before each completion token (tokens, hidden_dim), in the row-major order of
    ``batch.mask`` (as ``masked_scatter`` fills); gradients flow.

    Each distinct prompt runs once (:meth:`LSTMLM.prefill`), and the completions run on from their prompt's state:
    with k completions of a prompt, the prompt's tokens are not run k times, nor the padding of shorter prompts
    (the LSTM's work on a default REINFORCE batch is about halved).
    """
    _, state, last = model.prefill(batch.prompts)
    hidden = model.drop(last)[:, None]  # (the state after the prompt predicts the first completion token)
    if batch.tokens.shape[1] > 1:
        rest, _ = model.hidden(batch.tokens[:, :-1], state)
        hidden = torch.cat([hidden, rest], 1)
    return hidden[batch.mask.bool()]


def completion_dists(model: LSTMLM, batch: Packed) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(·|s_t) over the vocabulary at each completion token, (tokens, V), and the LSTM's hidden state there,
    (tokens, hidden_dim), in :func:`completion_hidden`'s order. The output layer and the softmax run only at
    completion tokens: the prompt and padding need no distribution."""
    h = completion_hidden(model, batch)
    return F.log_softmax(model.head(h).float(), dim=-1), h


def completion_logprobs(
    model: LSTMLM,
    batch: Packed,
    with_values: bool = False,
    with_entropy: bool = False,
    dists: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Per-token log π(a_t|s_t) (B, T), laid out as ``batch.mask`` and zero outside it; entropy H(π(·|s_t)) and
    values if asked.

    ``dists`` is :func:`completion_dists`'s result when the caller has it already. Gradients flow; wrap the call in
    ``torch.no_grad()`` for a frozen model.
    """
    mask = batch.mask
    sel = mask.bool()
    logp_all, h = dists if dists is not None else completion_dists(model, batch)
    picked = logp_all.gather(-1, batch.tokens[sel][:, None]).squeeze(-1)
    logp = torch.zeros_like(mask).masked_scatter(sel, picked)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(mask).masked_scatter(sel, -(logp_all.exp() * logp_all).sum(-1))
    values = None
    if with_values:
        if model.value is None:
            raise ValueError("the value baseline needs a model with a value head")
        values = torch.zeros_like(mask).masked_scatter(sel, model.value(h).squeeze(-1).float())
    return logp, entropy, values
