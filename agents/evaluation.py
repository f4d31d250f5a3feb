"""The one held-out evaluation that every algorithm reports, and the prompt sets it runs on.

Given a policy LM, the frozen reference and held-out prompts (with their references, so that reference-based
feedback works), :class:`Evaluator` samples ``samples`` completions of each prompt through the vector env and returns

* ``eval/scores``: mean feedback; for a weighted mix, ``eval/feedback/<name>``: each component's mean;
* ``eval/kl``: mean over completions of Σ_t log π(a_t|s_t) − log π_ref(a_t|s_t), the estimator training uses;
* ``eval/distinct_2``: distinct word bigrams over all completions (Li et al., 2016);
* ``eval/ref_perplexity``: perplexity of the completions under the reference, exp(−mean token log π_ref): a fluency
  check that a reward hack cannot hide from;

and the rows (prompt, completion, score) of the before/after table. The sampling seed is the same at every call, so
the policy before and after training is judged on the same draws of randomness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from agents.checkpoint import CorpusRecord, corpus_record
from agents.model import LSTMLM, completion_logprobs, pack_completions
from agents.rollout import make_env, sample_completions
from textgym.corpus import load_corpus
from textgym.feedback import make_feedback
from textgym.prompts import PromptSet, load_prompts
from textgym.tokenizer import TextTokenizer


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct-n (Li et al., 2016): unique word n-grams / all word n-grams, over all texts."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def expected_distinct_n(
    texts: list[list[str]], log_weights: list[np.ndarray], per_prompt: int, n: int = 2
) -> tuple[float, np.ndarray]:
    """Distinct-n that ``per_prompt`` completions of each prompt from a target distribution would have, estimated from
    another distribution's samples: ``texts[p]`` are prompt p's samples, ``log_weights[p]`` their log importance
    weights target/proposal, up to a constant per prompt (zeros: the samples' own distribution).

    Distinct-n counts n-grams over a set of completions, so it is not an average over completions and importance
    weights cannot be put on it directly. Its expected numerator and denominator are: a gram g is counted once if any
    of the ``per_prompt`` independent completions of any prompt holds it, E[unique] = Σ_g 1 − Π_p (1 − q_pg)^k, with
    q_pg = P(a completion of prompt p holds g); and E[all] = k·Σ_p E[grams per completion of p]. Both q_pg and the
    grams per completion are self-normalised importance-weighted means. Returns E[unique]/E[all] (the ratio of the
    expectations, which the expected ratio approaches as the counts grow) and the effective sample size 1/Σw² of
    each prompt. Grams no sample holds count as never written, so the estimate is biased low
    where the proposal misses part of the target."""
    if len(texts) != len(log_weights):
        raise ValueError(
            f"texts and log_weights must have one entry per prompt, got {len(texts)} and {len(log_weights)}"
        )
    log_miss: dict[tuple[str, ...], float] = {}  # Σ_p k·log(1 − q_pg) per gram
    total, ess = 0.0, []
    for samples, lw in zip(texts, log_weights):
        lw = np.asarray(lw, dtype=np.float64)
        if len(samples) != len(lw) or not len(samples):
            raise ValueError(
                f"each prompt needs one log weight per sample and a sample, got {len(samples)} and {len(lw)}"
            )
        w = np.exp(lw - lw.max())
        w /= w.sum()
        ess.append(1.0 / float((w**2).sum()))
        q: dict[tuple[str, ...], float] = {}
        for text, wi in zip(samples, w.tolist()):
            words = text.split()
            grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
            total += wi * max(0, len(words) - n + 1)
            for g in grams:
                q[g] = q.get(g, 0.0) + wi
        for g, qg in q.items():
            log_miss[g] = log_miss.get(g, 0.0) + per_prompt * math.log1p(-min(qg, 1.0 - 1e-12))
    unique = sum(-math.expm1(v) for v in log_miss.values())
    # (a ratio of at most 1; where every gram is distinct, rounding in the sums can read it 1 + 2e-16)
    return (min(1.0, unique / (per_prompt * total)) if total else 0.0), np.array(ess)


def resampled_distinct_n(
    texts: list[list[str]], log_weights: list[np.ndarray], per_prompt: int, group: int, n: int = 2
) -> float:
    """Distinct-n of ``per_prompt`` completions of each prompt from a target distribution, each drawn from its own
    group of ``group`` samples of another distribution, with probability ∝ the importance weight
    (sampling-importance-resampling, one draw per group), in expectation over the draws. ``texts[p]`` and
    ``log_weights[p]`` are as for :func:`expected_distinct_n`; the first ``per_prompt · group`` samples of each prompt
    are cut into ``per_prompt`` disjoint groups.

    Where the target is far from the proposal, :func:`expected_distinct_n` draws all ``per_prompt`` completions from
    one weighted pool, and a few heavy weights are drawn again and again: the same completion counted as a repeat of
    its bigrams, which the target (whose completions rarely repeat) would not write. Here no two draws can be the same
    sample. A draw from a group of 1 is the proposal's own; as the group grows its law tends to the target's, so the
    estimate moves from the proposal's distinct-n to the target's, and reading it at growing groups shows whether it
    has settled."""
    if group < 1 or per_prompt < 1:
        raise ValueError(f"per_prompt and group must be at least 1, got {per_prompt} and {group}")
    groups, weights = [], []
    for samples, lw in zip(texts, log_weights, strict=True):
        if len(samples) < per_prompt * group or len(lw) != len(samples):
            raise ValueError(
                f"each prompt needs per_prompt x group = {per_prompt * group} samples and one log weight each, got "
                f"{len(samples)} samples and {len(lw)} log weights"
            )
        for j in range(per_prompt):
            groups.append(samples[j * group : (j + 1) * group])
            weights.append(np.asarray(lw[j * group : (j + 1) * group]))
    return expected_distinct_n(groups, weights, per_prompt=1, n=n)[0]


def task_prompts(prompts: str, corpus: str, init_config: dict[str, Any]) -> tuple[PromptSet, CorpusRecord]:
    """The prompts of an alignment run: the ``prompts`` JSONL file, or else the first words of the held-out documents
    of ``corpus``, or else of the corpus that the ``--init`` checkpoint was pretrained on (its config records it).

    Returns the prompt set and the ``--init`` checkpoint's corpus record, which the run's checkpoints pass on (so
    that a later run from them finds the same corpus without being told again).
    """
    record = corpus_record(init_config)
    if prompts:
        return load_prompts(prompts), record
    if corpus:
        text = load_corpus(corpus)
    else:
        text = load_corpus(record["source"], separator=record["separator"], encoding=record["encoding"])
    return load_prompts(None, corpus=text), record


def split_held_out(prompts: PromptSet, count: int) -> tuple[PromptSet, PromptSet]:
    """(training prompts, the last ``count`` prompts held out for evaluation), references split alike."""
    if len(prompts) <= count:
        raise ValueError(
            f"{len(prompts)} prompts is too few to hold out eval_prompts={count} and train on the rest: give more "
            "prompts or a smaller --eval-prompts"
        )
    refs = prompts.references

    def part(s: slice) -> PromptSet:
        return PromptSet(prompts.prompts[s], refs[s] if refs is not None else None)

    return part(slice(None, -count)), part(slice(-count, None))


@dataclass
class Evaluation:
    metrics: dict[str, float]
    rows: list[dict[str, Any]]
    """One per completion (prompt, completion, score, its KL to the reference), the ``samples`` completions of each
    prompt together."""


class Evaluator:
    """Held-out evaluation through the env, the same for every algorithm.

    Args:
        prompts: the held-out prompts (with references where the feedback needs them).
        reward: the feedback spec.
        tokenizer: the policy's tokenizer.
        samples: completions per prompt.
        max_new_tokens: longest completion.
        temperature: sampling temperature.
        seed: the sampling seed, the same at every call.
        batch: most completions sampled at once (sub-envs of the evaluation env).
        also: a second feedback spec that scores the same completions, reported as ``eval/also_scores`` (say, the
            hidden true score of a run that trains on a learned reward model); empty for none.
    """

    def __init__(
        self,
        prompts: PromptSet,
        reward: Any,
        tokenizer: TextTokenizer,
        samples: int = 4,
        max_new_tokens: int = 20,
        temperature: float = 1.0,
        seed: int = 1,
        batch: int = 256,
        also: Any = "",
    ) -> None:
        self.prompts, self.samples, self.temperature, self.seed = prompts, samples, temperature, seed
        self.also = make_feedback(also) if also else None
        self.order = np.repeat(np.arange(len(prompts)), samples)
        self.envs = make_env(min(len(self.order), batch), reward, tokenizer, prompts, max_new_tokens)
        self.pad_id = tokenizer.pad_id

    @torch.no_grad()
    def __call__(self, policy: LSTMLM, ref: LSTMLM) -> Evaluation:
        device = policy.head.weight.device
        gen = torch.Generator(device).manual_seed(self.seed)
        was_training = policy.training
        policy.eval()  # no dropout in the log-probabilities either
        n_envs = self.envs.num_envs
        scores, completions, kl, ref_logp, tokens = [], [], [], 0.0, 0
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(self.order), n_envs):
            chunk = self.order[start : start + n_envs]
            index = np.resize(chunk, n_envs)  # the last batch repeats some prompts to fill the env; dropped below
            r = sample_completions(self.envs, policy, gen, prompt_index=index, temperature=self.temperature)
            m = len(chunk)
            batch = pack_completions(r.prompt_ids[:m], r.completion_ids[:m], self.pad_id, device)
            lp = completion_logprobs(policy, batch)[0]
            ref_lp = completion_logprobs(ref, batch)[0]
            kl.append((lp - ref_lp).sum(1).cpu().numpy())
            ref_logp += float(ref_lp.sum())
            tokens += int(batch.mask.sum())
            scores.append(r.scores[:m])
            completions += r.completions[:m]
            for name, values in r.feedback.items():
                parts.setdefault(name, []).append(values[:m])
        policy.train(was_training)
        all_scores = np.concatenate(scores)
        metrics = {
            "eval/scores": float(all_scores.mean()),
            "eval/kl": float(np.concatenate(kl).mean()),
            "eval/distinct_2": distinct_n(completions),
            "eval/ref_perplexity": math.exp(-ref_logp / tokens),
        }
        if len(parts) > 1:  # a weighted mix: each term's mean too
            metrics.update({f"eval/feedback/{name}": float(np.concatenate(v).mean()) for name, v in parts.items()})
        if self.also is not None:
            prompts = [self.prompts.prompts[j] for j in self.order.tolist()]
            refs = self.prompts.references
            kwargs = {} if refs is None else {"references": [refs[j] for j in self.order.tolist()]}
            metrics["eval/also_scores"] = float(np.mean(self.also(prompts, completions, **kwargs)))
        rows = [
            {"prompt": self.prompts.prompts[j], "completion": c, "score": float(s), "kl": float(k)}
            for j, c, s, k in zip(self.order.tolist(), completions, all_scores.tolist(), np.concatenate(kl).tolist())
        ]
        return Evaluation(metrics, rows)
