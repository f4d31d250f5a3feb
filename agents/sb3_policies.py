"""SB3 policies whose actor *is* the LSTM language model, so every algorithm starts from the LM's distribution.

Each policy owns an :class:`~agents.model.LSTMLM` (``policy.lm``) and uses its modules directly, not copies: the
action net is ``lm.head``, the trunk is ``lm.embed`` and ``lm.lstm``. What SB3 trains is therefore the LM itself, and
exporting the actor is saving ``policy.lm`` as a normal checkpoint.

* :class:`LMWindowPolicy` (PPO, A2C) and :class:`MaskableLMWindowPolicy` (MaskablePPO): the features of an observation
  are the LM's last LSTM output over the non-pad part of the window (left-padded; SB3 hands it over as floats). While
  SB3 collects a rollout (no gradient), the features extractor carries each sub-env's LSTM state and advances it by
  the one new token, so a rollout costs one LSTM step per token; it re-encodes a row only when its window is not the
  previous one plus a token (a new episode). In training every window is re-encoded, with gradients.
* :class:`RecurrentLMPolicy` (RecurrentPPO): the LSTM is the LM's, fed the embedding of the window's last token, and
  at an episode start its state is the LM's state after ``<bos> + prompt`` without its last token, encoded from the
  window (SB3's default zeroes the state there, which would lose the prompt).

The critic is a small MLP (``critic_hidden`` units) on the *detached* LM features: the value loss never moves the LM,
so the LM is changed by the policy gradient alone (the same objective as REINFORCE), and no second LM trunk is run.
SB3's orthogonal initialisation is off: it would re-initialise the LM's layers.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import torch
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from agents.model import LSTMLM, State


def no_dropout(lm: LSTMLM) -> LSTMLM:
    """Turn the LM's dropout off in place: PPO's probability ratio must be 1 before the first update."""
    for module in lm.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    lm.lstm.dropout = 0.0
    return lm


def encode_windows(
    lm: LSTMLM, tokens: torch.Tensor, pad_id: int, drop_last: bool = False
) -> tuple[torch.Tensor, State]:
    """The LM's last LSTM output (B, hidden) and state over each left-padded window's non-pad part.

    The content starts at the first non-pad id (it starts with ``<bos>``); a pad id after it is a sampled token and
    kept. With ``drop_last`` the window's last token is left out (the recurrent policy feeds it as its next input).
    A row with nothing to encode gets the zero state (the LM's state before ``<bos>``).
    """
    batch, width = tokens.shape
    start = (tokens != pad_id).int().argmax(1)
    lengths = width - start - int(drop_last)
    empty = lengths <= 0
    lengths = lengths.clamp(min=1)
    # Left-align the content, so that a packed sequence (which needs it there) runs only over real tokens.
    index = (start[:, None] + torch.arange(width, device=tokens.device)).clamp(max=width - 1)
    aligned = tokens.gather(1, index)
    packed = pack_padded_sequence(lm.embed(aligned), lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, (h, c) = lm.lstm(packed)
    if empty.any():
        keep = (~empty).to(h.dtype)[None, :, None]
        h, c = h * keep, c * keep
    return h[-1], (h, c)


def encode_windows_shared(
    lm: LSTMLM, tokens: torch.Tensor, pad_id: int, counts: dict[str, int] | None = None
) -> torch.Tensor:
    """:func:`encode_windows`'s features, with one LSTM pass per episode instead of one per window.

    A rollout's windows of one episode are prefixes of each other (the window only grows: the env's window holds
    every prompt whole until its last token), so in a minibatch the features of a window are the LSTM outputs at its
    length along a longer window of the same episode. The LSTM runs over the windows that are no other's prefix and
    each window's features are gathered from there: the same values and gradients as encoding each window alone,
    for a fraction of the work (about 4x less with PPO's defaults). ``counts`` (if given) adds up the windows and the
    LSTM steps run, for the benchmark's FLOP count.
    """
    batch, width = tokens.shape
    start = (tokens != pad_id).int().argmax(1)
    lengths = (width - start).clamp(min=1)
    positions = torch.arange(width, device=tokens.device)
    aligned = tokens.gather(1, (start[:, None] + positions).clamp(max=width - 1))
    inside = positions[None, :] < lengths[:, None]  # (B, W): the content of each row
    # covers[a, b]: row a's content is a prefix of row b's (b at least as long and equal on a's content)
    same = (aligned[:, None, :] == aligned[None, :, :]) | ~inside[:, None, :]
    covers = same.all(-1) & (lengths[None, :] >= lengths[:, None])
    # Each row's representative: the longest row that it is a prefix of (the first such, on ties).
    rows = torch.arange(batch, device=tokens.device)
    score = torch.where(covers, lengths[None, :] * (batch + 1) - rows[None, :], -1)
    rep = score.argmax(1)
    reps, slot = torch.unique(rep, return_inverse=True)
    # The content is left-aligned, so a row's outputs before its length do not depend on what follows it: one padded
    # batch, which runs several times faster on the CPU than a packed one (measured 9x at 512 x 28 tokens).
    longest = int(lengths[reps].max())
    out, _ = lm.lstm(lm.embed(aligned[reps, :longest]))  # (reps, longest, hidden)
    if counts is not None:
        counts["windows"] = counts.get("windows", 0) + batch
        counts["lstm_steps"] = counts.get("lstm_steps", 0) + len(reps) * longest
    return out[slot, lengths - 1]


class WindowEncoder(BaseFeaturesExtractor):
    """Features of an observation window: the LM's last LSTM output over its non-pad part (see module docs)."""

    def __init__(self, observation_space: gym.spaces.Box, lm: LSTMLM, pad_id: int) -> None:
        super().__init__(observation_space, lm.config.hidden_dim)
        self.lm = lm
        self.pad_id = pad_id
        self.cache_enabled = True
        self.counts: dict[str, int] = {}  # windows encoded with gradients, and the LSTM steps that took
        self._cache: tuple[torch.Tensor, State, torch.Tensor] | None = None  # (windows, state, features)

    def reset_cache(self) -> None:
        self._cache = None

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        tokens = observations.long()
        if torch.is_grad_enabled():
            return encode_windows_shared(self.lm, tokens, self.pad_id, self.counts)
        if not self.cache_enabled:
            return encode_windows(self.lm, tokens, self.pad_id)[0]
        return self._carried(tokens)

    def _carried(self, tokens: torch.Tensor) -> torch.Tensor:
        """Rollout path: reuse or advance each row's carried state; re-encode the rest."""
        cache = self._cache
        if cache is None or cache[0].shape != tokens.shape:
            features, state = encode_windows(self.lm, tokens, self.pad_id)
            if cache is None or cache[0].shape[0] == tokens.shape[0]:  # (a lone terminal window leaves it alone)
                self._cache = (tokens, state, features)
            return features
        old, (h, c), features = cache
        h, c, features = h.clone(), c.clone(), features.clone()
        same = (tokens == old).all(1)
        # One more token and nothing fell off the window's left edge: one LSTM step from the carried state.
        grown = (tokens[:, :-1] == old[:, 1:]).all(1) & (old[:, 0] == self.pad_id) & ~same
        fresh = ~(same | grown)
        if grown.any():
            rows = grown.nonzero().squeeze(1)
            out, (h_new, c_new) = self.lm.lstm(self.lm.embed(tokens[rows, -1:]), (h[:, rows], c[:, rows]))
            h[:, rows], c[:, rows], features[rows] = h_new, c_new, out[:, -1]
        if fresh.any():
            rows = fresh.nonzero().squeeze(1)
            f_new, (h_new, c_new) = encode_windows(self.lm, tokens[rows], self.pad_id)
            h[:, rows], c[:, rows], features[rows] = h_new, c_new, f_new
        self._cache = (tokens, (h, c), features)
        return features


class DetachedCriticExtractor(MlpExtractor):
    """SB3's MLP extractor with the actor's latent = the features and the critic reading them detached."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_critic(self, features: torch.Tensor) -> torch.Tensor:
        return self.value_net(features.detach())


class _WindowPolicyMixin:
    """What PPO's and MaskablePPO's LM policies share (see :class:`LMWindowPolicy`)."""

    def _lm_kwargs(self, lm: LSTMLM, pad_id: int, critic_hidden: int, kwargs: dict[str, Any]) -> dict[str, Any]:
        return {
            **kwargs,
            "net_arch": {"pi": [], "vf": [critic_hidden]},
            "ortho_init": False,  # it would re-initialise the LM's layers
            "features_extractor_class": WindowEncoder,
            "features_extractor_kwargs": {"lm": no_dropout(lm), "pad_id": pad_id},
            "share_features_extractor": True,
        }

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = DetachedCriticExtractor(
            self.features_dim, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device
        )

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        self.lm = self.features_extractor.lm
        self.action_net = self.lm.head  # the LM's output layer is the action net (the same module)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def set_training_mode(self, mode: bool) -> None:
        # SB3 switches modes between collecting and training: the carried states belong to the weights they were
        # computed with, so a new rollout starts without them.
        self.features_extractor.reset_cache()
        super().set_training_mode(mode)  # type: ignore[misc]


class LMWindowPolicy(_WindowPolicyMixin, ActorCriticPolicy):
    """Actor-critic policy for PPO and A2C whose actor is the LM over the observation window."""

    def __init__(self, *args: Any, lm: LSTMLM, pad_id: int, critic_hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **self._lm_kwargs(lm, pad_id, critic_hidden, kwargs))


class MaskableLMWindowPolicy(_WindowPolicyMixin, MaskableActorCriticPolicy):
    """The same for MaskablePPO (the mask arrives with each call)."""

    def __init__(self, *args: Any, lm: LSTMLM, pad_id: int, critic_hidden: int = 64, **kwargs: Any) -> None:
        super().__init__(*args, **self._lm_kwargs(lm, pad_id, critic_hidden, kwargs))


class RecurrentLMPolicy(RecurrentActorCriticPolicy):
    """RecurrentPPO's policy: the LM's LSTM carried token by token, the prompt prefilled at each episode start."""

    def __init__(self, *args: Any, lm: LSTMLM, pad_id: int, critic_hidden: int = 64, **kwargs: Any) -> None:
        lm = no_dropout(lm)
        kwargs.update(
            lstm_hidden_size=lm.config.hidden_dim,
            n_lstm_layers=lm.config.num_layers,
            shared_lstm=True,  # the critic reads the actor's LSTM output, detached (sb3-contrib does the detach)
            enable_critic_lstm=False,
            net_arch={"pi": [], "vf": [critic_hidden]},
            ortho_init=False,
        )
        super().__init__(*args, **kwargs)
        self.lm = lm
        self.pad_id = pad_id
        self.lstm_actor = lm.lstm  # batch-first; _process_sequence below is written for it
        self.action_net = lm.head
        self.optimizer = self.optimizer_class(self.parameters(), lr=self._initial_lr, **self.optimizer_kwargs)

    def _build(self, lr_schedule: Any) -> None:
        self._initial_lr = lr_schedule(1)
        super()._build(lr_schedule)

    def _process_sequence(  # type: ignore[override]
        self, features: torch.Tensor, lstm_states: State, episode_starts: torch.Tensor, lstm: nn.LSTM
    ) -> tuple[torch.Tensor, State]:
        """Run the LM's LSTM over (n_seq, steps) windows, one token per step (the window's last)."""
        n_seq = lstm_states[0].shape[1]
        windows = features.reshape(n_seq, -1, features.shape[-1]).long()
        starts = episode_starts.reshape(n_seq, -1).bool()
        x = self.lm.embed(windows[..., -1])  # (n_seq, steps, embed)
        h, c = lstm_states
        if starts.any():
            seq, step = starts.nonzero(as_tuple=True)
            _, (h0, c0) = encode_windows(self.lm, windows[seq, step], self.pad_id, drop_last=True)
        if not starts[:, 1:].any():  # starts only at the first step (always so in training: SB3 cuts sequences there)
            if starts.any():
                h, c = h.clone(), c.clone()
                h[:, seq], c[:, seq] = h0, c0
            out, (h, c) = lstm(x, (h, c))
            return out.flatten(0, 1), (h, c)
        outputs = []
        for t in range(windows.shape[1]):
            now = step == t
            if now.any():
                h, c = h.clone(), c.clone()
                h[:, seq[now]], c[:, seq[now]] = h0[:, now], c0[:, now]
            out, (h, c) = lstm(x[:, t : t + 1], (h, c))
            outputs.append(out)
        return torch.cat(outputs, 1).flatten(0, 1), (h, c)
