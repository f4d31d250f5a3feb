"""Torch-based feedback that reaches the env through the ``textgym.rewards`` entry points, as a third party's would:
``fluency`` here, ``reward-model`` in :mod:`agents.reward_model`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from agents.checkpoint import load_checkpoint
from agents.model import completion_logprobs, pack_completions


def make_fluency(path: str = "", batch: int = 256) -> Any:
    """``fluency(path=...)``: the mean log-likelihood per token of the completion under a language model, given
    ``<bos> + prompt`` (higher is more fluent; 0 is the maximum). An empty completion scores the log-probability of
    ending at once (``<eos>`` right after the prompt)."""
    if not path:
        raise ValueError("feedback 'fluency' needs the path of a language model: fluency(path=runs/pretrain/model)")
    model, tokenizer, _ = load_checkpoint(path)
    model.eval()

    @torch.no_grad()
    def fluency(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> np.ndarray:
        prompt_ids = [[tokenizer.bos_id] + ids for ids in tokenizer.encode_batch(list(prompts))]
        completion_ids = [ids or [tokenizer.eos_id] for ids in tokenizer.encode_batch(list(completions))]
        out = np.zeros(len(completions))
        for s in range(0, len(completions), batch):
            packed = pack_completions(prompt_ids[s : s + batch], completion_ids[s : s + batch], tokenizer.pad_id, None)
            logp, _, _ = completion_logprobs(model, packed)
            out[s : s + batch] = (logp.sum(1) / packed.mask.sum(1)).double().numpy()
        return out

    return fluency
