"""The ``textgym`` command line: one tool, one subcommand per job.

Options of ``pretrain``, ``sft`` and ``train`` come from their config dataclasses, and each option's help is the field's
docstring, so ``--help`` and the Python API say the same thing.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
from collections.abc import Sequence
from typing import Any, get_type_hints


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal under each field), inherited ones included."""
    docs = {}
    for klass in reversed(cls.__mro__):  # a subclass's docstring for a field it redefines wins
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())  # type: ignore[union-attr]
    return docs


def add_dataclass_args(
    parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = (), shown: Any = None, label: str = "default"
) -> None:
    """Add ``--field-name`` options for a dataclass's fields, typed from the annotations, defaults from the class.

    ``shown`` (an instance) and ``label`` change the defaults that ``--help`` displays, e.g. a preset's values.
    """
    hints, docs = get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.default is dataclasses.MISSING:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{docs.get(f.name, '')} ({label}: {getattr(shown, f.name) if shown is not None else f.default})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        hint = hints[f.name]
        if hint in (bool, bool | None):  # (None: the option's own "unset" default, which its help explains)
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            typ = {int: int, float: float}.get(hint, str)
            parser.add_argument(flag, type=typ, default=f.default, help=help_text, metavar=f.name.upper())


def config_from_args(cls: type, args: argparse.Namespace, base: Any = None) -> Any:
    """A config from parsed options; options left unset (None) keep ``base``'s values (or the class defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


# -- subcommands -------------------------------------------------------------------------------------------------
def cmd_pretrain(args: argparse.Namespace) -> None:
    from agents.pretrain import PretrainConfig, preset, pretrain

    # Options given on the command line override the preset; the others keep the preset's values.
    cfg = config_from_args(PretrainConfig, args, base=preset(args.preset))
    print(f"pretrain preset {args.preset!r}: {json.dumps(dataclasses.asdict(cfg))}")
    metrics = pretrain(cfg)
    print(
        f"final validation: loss {metrics['loss']:.4f}, perplexity {metrics['perplexity']:.1f}, "
        f"{metrics['nats_per_char']:.4f} nats/char; model in {cfg.out}/model"
    )


def cmd_sft(args: argparse.Namespace) -> None:
    from agents.sft import SFTConfig, sft

    cfg = config_from_args(SFTConfig, args)
    metrics = sft(cfg)
    print(f"done: {metrics}; model in {cfg.out}/model")


def cmd_sample(args: argparse.Namespace) -> None:
    import torch

    from agents.checkpoint import load_checkpoint
    from agents.model import complete
    from agents.training import check_positive
    from textgym.prompts import load_prompts

    check_positive(num_samples=args.num_samples, max_new_tokens=args.max_new_tokens)
    model, tokenizer, _ = load_checkpoint(args.checkpoint)
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += list(load_prompts(args.prompts).prompts)
    if not prompts:
        raise SystemExit("textgym sample: give --prompt TEXT (repeatable) or --prompts FILE.jsonl")
    gen = torch.Generator().manual_seed(args.seed)
    batch = [p for p in prompts for _ in range(args.num_samples)]
    texts = complete(model, tokenizer, batch, args.max_new_tokens, gen, args.temperature, args.top_k, args.top_p)[2]
    for p, completion in zip(batch, texts):
        if args.jsonl:
            print(json.dumps({"prompt": p, "completion": completion}))
        else:
            print(f"{p} | {completion.strip()}")


def algorithms() -> dict[str, tuple[type, Any]]:
    """``textgym train --algo NAME``: each algorithm's config dataclass and its train function."""
    from agents.baselines import algorithms as all_algorithms  # (imports SB3: only when asked)

    return all_algorithms()


def _train_algo(argv: Sequence[str]) -> str:
    """The ``--algo`` of a ``train`` command line (its options depend on it), or reinforce."""
    if not argv or argv[0] != "train":
        return "reinforce"
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--algo", default="reinforce")
    algo = pre.parse_known_args(argv[1:])[0].algo
    return algo if algo in algorithms() else "reinforce"  # (argparse then rejects a bad one, listing the choices)


def cmd_train(args: argparse.Namespace) -> None:
    config_cls, train = algorithms()[args.algo]
    train(config_from_args(config_cls, args))


def cmd_label(args: argparse.Namespace) -> None:
    import getpass

    from agents.labeling import LabelConfig, fill_store, label, label_terminal
    from textgym.store import PreferenceStore

    if args.simulate:
        label(config_from_args(LabelConfig, args))
        return
    if not args.store:
        raise ValueError("give --simulate SPEC (a simulated annotator writes --out) or --store DB (a person labels)")
    annotator = args.annotator or getpass.getuser()
    with PreferenceStore(args.store) as store:
        if args.import_file:
            print(f"imported {store.import_file(args.import_file, annotator)} from {args.import_file}")
        if args.export:
            counts = store.export(args.export)
            print(f"wrote {args.export}: {counts['pairs']} preference rows; left out {counts['ties']} ties and "
                  f"{counts['skips']} skips")  # fmt: skip
        if args.stats:
            stats = store.stats()
            pairs, answers = store.counts()
            print(f"{store.path}: {pairs} pairs, {answers} answers")
            for who, c in stats["annotators"].items():
                print(f"  {who}: a {c['a']}, b {c['b']}, tie {c['tie']}, skip {c['skip']}; position bias (share of "
                      f"choices for the left one) {c['position_bias']:.2f}")  # fmt: skip
            for names, (kappa, n) in stats["kappa"].items():
                print(f"  Cohen's kappa {names}: {kappa:.3f} on {n} shared pairs")
        if args.import_file or args.export or args.stats:
            return
        if args.add_pairs:
            added = fill_store(store, args.checkpoint, args.checkpoint_b, args.prompts, args.add_pairs,
                               args.max_new_tokens, args.seed, 0 if args.prompts else args.eval_prompts)  # fmt: skip
            print(f"added {added} pairs to {store.path}")
        if not args.web:
            label_terminal(store, annotator, seed=args.seed)
            return
    from agents.web import serve

    serve(args.store, args.host, args.port, args.seed)


def cmd_teach(args: argparse.Namespace) -> None:
    from agents.teach import TeachConfig, teach

    teach(config_from_args(TeachConfig, args))


def cmd_reward_model_train(args: argparse.Namespace) -> None:
    from agents.reward_model import RewardModelConfig, train

    train(config_from_args(RewardModelConfig, args))


def cmd_reward_model_eval(args: argparse.Namespace) -> None:
    from agents.reward_model import evaluate_file

    m = evaluate_file(args.model, args.data)
    print(
        f"{int(m['pairs'])} pairs ({int(m['ties'])} ties left out): pairwise accuracy {m['accuracy']:.3f} "
        f"(ties count as wrong), mean margin {m['margin']:.3f}, loss {m['loss']:.4f}"
    )


def cmd_rlhf(args: argparse.Namespace) -> None:
    from agents.rlhf import RLHFConfig, rlhf

    rlhf(config_from_args(RLHFConfig, args))


def cmd_demo(args: argparse.Namespace) -> None:
    """The main job: pretrain on the built-in corpus, align toward positive sentiment, show before/after."""
    from agents.pretrain import preset, pretrain
    from agents.reinforce import ReinforceConfig, train

    out = args.out.rstrip("/")
    print(
        f"== 1/2 pretraining the LSTM language model on the built-in corpus (preset {args.preset!r}) -> {out}/pretrain"
    )
    pretrain(preset(args.preset, out=f"{out}/pretrain", seed=args.seed))
    print(f"\n== 2/2 aligning it toward positive sentiment with REINFORCE -> {out}/reinforce")
    train(
        ReinforceConfig(
            reward="sentiment",
            init=f"{out}/pretrain/model",
            updates=args.updates,
            out=f"{out}/reinforce",
            seed=args.seed,
        )
    )


def benchmark_config(args: argparse.Namespace) -> Any:
    """The benchmark's config: the defaults, then --quick's, then the TOML file's, then the flags given."""
    from agents.benchmark import QUICK, BenchmarkConfig, load_toml

    values: dict[str, Any] = dict(QUICK) if args.quick else {}
    if args.config:
        values.update(load_toml(args.config))
    for f in dataclasses.fields(BenchmarkConfig):
        if getattr(args, f.name, None) is not None:
            values[f.name] = getattr(args, f.name)
    return BenchmarkConfig(**values)


def cmd_benchmark(args: argparse.Namespace) -> None:
    from agents.benchmark import run_benchmark

    run_benchmark(benchmark_config(args))


def cmd_rollout(args: argparse.Namespace) -> None:
    """Print a few random-policy episodes with their rewards (a look at the env, no learning)."""
    import gymnasium as gym
    import numpy as np

    import textgym  # noqa: F401

    envs = gym.make_vec(
        "textgym/TextGen-v0",
        num_envs=args.episodes,
        vectorization_mode="vector_entry_point",
        reward=args.reward,
        max_new_tokens=args.max_new_tokens,
        autoreset_mode="same_step",
    )
    rng = np.random.default_rng(args.seed)
    envs.reset(seed=args.seed)
    done = np.zeros(args.episodes, dtype=bool)
    while not done.all():
        _, reward, term, trunc, info = envs.step(rng.integers(envs.single_action_space.n, size=args.episodes))
        for i in np.flatnonzero((term | trunc) & ~done):
            fi = info["final_info"]
            print(f"[{i}] reward {reward[i]:+.3f}  {fi['prompt'][i]!r} -> {fi['completion'][i].strip()!r}")
            done[i] = True


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command line; ``argv`` picks the options of ``train`` (those of its ``--algo``)."""
    from agents.pretrain import PRESETS, PretrainConfig
    from agents.reinforce import ReinforceConfig
    from agents.sft import SFTConfig

    p = argparse.ArgumentParser(prog="textgym", description="Reinforcement learning on text generation.")
    sub = p.add_subparsers(dest="command", required=True)

    pre = sub.add_parser(
        "pretrain",
        help="self-supervised next-token pretraining on a corpus",
        description="Pretrain the LSTM language model. Killed mid-run, the same command resumes "
        "from the last checkpoint in --out.",
    )
    pre.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="cpu",
        help="starting values of the options: 'cpu' (<= 3 minutes on 2 cores), 'large' (longer runs), "
        "'tiny' (seconds; smoke tests). Options given here override the preset. (default: cpu)",
    )
    add_dataclass_args(pre, PretrainConfig, shown=PretrainConfig(), label="cpu preset")
    pre.set_defaults(func=cmd_pretrain, **{f.name: None for f in dataclasses.fields(PretrainConfig)})

    s = sub.add_parser(
        "sft",
        help="supervised fine-tuning on prompt/completion pairs",
        description='Fine-tune a checkpoint on JSONL {"prompt", "completion"} pairs, with the loss '
        "on completion tokens only.",
    )
    add_dataclass_args(s, SFTConfig)
    s.set_defaults(func=cmd_sft)

    sa = sub.add_parser(
        "sample",
        help="complete prompts with a checkpoint",
        description="Generate completions: prompts in, completions out.",
    )
    sa.add_argument("--checkpoint", required=True, help="checkpoint directory (e.g. runs/pretrain/model)")
    sa.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    sa.add_argument("--prompts", help="JSONL file with a 'prompt' field")
    sa.add_argument("--num-samples", type=int, default=1, help="completions per prompt (default: 1)")
    sa.add_argument("--max-new-tokens", type=int, default=24, help="longest completion in tokens (default: 24)")
    sa.add_argument("--temperature", type=float, default=1.0, help="sampling temperature; 0 = greedy (default: 1)")
    sa.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens; 0 = off (default: 0)")
    sa.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass in (0, 1] (default: 1)")
    sa.add_argument("--seed", type=int, default=0, help="seed of the sampling generator (default: 0)")
    sa.add_argument("--jsonl", action="store_true", help="print JSONL {prompt, completion} rows")
    sa.set_defaults(func=cmd_sample)

    t = sub.add_parser(
        "train",
        help="align a checkpoint with reinforcement learning",
        description="Align a language model toward a feedback function. Killed mid-run, the same "
        "command resumes from the last checkpoint in --out.",
    )
    algos = algorithms()
    algo = _train_algo(argv)
    t.add_argument(
        "--algo",
        choices=list(algos),
        default="reinforce",
        help="algorithm; the options below are --algo's (see `textgym train --algo ppo --help`) (default: reinforce)",
    )
    add_dataclass_args(t, algos[algo][0])
    t.set_defaults(func=cmd_train)

    from agents.teach import TeachConfig

    te = sub.add_parser(
        "teach",
        help="teach new LSTM units the feedback's score of the completion so far, before alignment",
        description="Widen a checkpoint's LSTM by --new-units units that learn, on its own completions, the "
        "feedback's score of the completion so far; the language model stays exactly the same. Align from "
        "<out>/model (textgym train --init). Killed mid-run, the same command resumes.",
    )
    add_dataclass_args(te, TeachConfig)
    te.set_defaults(func=cmd_teach)

    from agents.labeling import LabelConfig
    from agents.reward_model import RewardModelConfig

    lb = sub.add_parser(
        "label",
        help="label preference pairs: a simulated annotator (--simulate) or a person at the terminal (--store)",
        description="Sample two completions of training prompts from --checkpoint and label which is better. "
        "With --simulate SPEC a Boltzmann-rational annotator labels them on the hidden feedback SPEC at "
        "--temperature T and writes the preference JSONL that `textgym reward-model train` reads. With --store DB "
        "a person answers at the terminal, each answer saved at once; --export writes the same JSONL.",
    )
    add_dataclass_args(lb, LabelConfig, skip=("simulate",))
    lb.add_argument("--simulate", default="", metavar="SPEC", help=field_docs(LabelConfig)["simulate"])
    people = lb.add_argument_group("a person labelling (with --store)")
    people.add_argument("--store", default="", help="SQLite preference store (created on first use)")
    people.add_argument("--annotator", default="", help="the annotator's name (default: the login name)")
    people.add_argument("--add-pairs", type=int, default=0, help="sample this many new pairs into the store first")
    people.add_argument("--checkpoint-b", default="", help="second checkpoint: pairs are one sample of each")
    people.add_argument("--export", default="", help="write the store's answers as preference JSONL, then stop")
    people.add_argument("--import", dest="import_file", default="", help="load pairs or answers from JSONL, then stop")
    people.add_argument("--stats", action="store_true", help="print counts, position bias and Cohen's kappa, then stop")
    people.add_argument("--web", action="store_true", help="label in the browser: serve a local page (URL printed)")
    people.add_argument("--host", default="127.0.0.1", help="address the page listens on (default: 127.0.0.1)")
    people.add_argument("--port", type=int, default=8765, help="port of the page (default: 8765)")
    lb.set_defaults(func=cmd_label)

    rm = sub.add_parser("reward-model", help="train or evaluate a reward model on preference pairs")
    rm_sub = rm.add_subparsers(dest="action", required=True)
    rmt = rm_sub.add_parser(
        "train",
        help="Bradley-Terry training on preference pairs",
        description="Train a reward model on pairwise preferences (loss -log sigma(r_chosen - r_rejected)), its "
        "trunk started from --init. Killed mid-run, the same command resumes from the last checkpoint in --out.",
    )
    add_dataclass_args(rmt, RewardModelConfig)
    rmt.set_defaults(func=cmd_reward_model_train)
    rme = rm_sub.add_parser("eval", help="pairwise accuracy of a reward model on a preference file")
    rme.add_argument("--model", required=True, help="reward-model checkpoint directory (e.g. runs/rm/model)")
    rme.add_argument("--data", required=True, help="preference JSONL (plain or .gz)")
    rme.set_defaults(func=cmd_reward_model_eval)

    from agents.rlhf import RLHFConfig

    rl = sub.add_parser(
        "rlhf",
        help="RLHF end to end: label pairs (simulated annotator), train a reward model, align on it",
        description="Sample pairs from --init, label them with a simulated annotator on the hidden feedback, train "
        "a reward model, align with REINFORCE on it and on the hidden feedback itself, and plot the true and the "
        "proxy score against KL (over-optimisation). Each stage is skipped or resumed when its output is there.",
    )
    add_dataclass_args(rl, RLHFConfig)
    rl.set_defaults(func=cmd_rlhf)

    from agents.benchmark import BenchmarkConfig

    bm = sub.add_parser(
        "benchmark",
        help="every algorithm × task × β × seed under one env-token budget: results.csv, summary.md, plots",
        description="Run each cell (algorithm, task, β, seed) in its own folder, in worker processes or on Ray; a "
        "finished cell is not run again. Writes results.csv (one row per run), summary.md (IQM and bootstrap "
        "intervals of the fraction of the KL-regularised optimum's gain), samples.md and PNG plots. Options come "
        "from the defaults, then --quick, then --config FILE (TOML, the same keys, plus [options.ALGO] tables), "
        "then the flags.",
    )
    bm.add_argument("--config", help="TOML file with the benchmark's keys (flags given here override it)")
    bm.add_argument(
        "--quick",
        action="store_true",
        help="a few-minute smoke suite: every algorithm, Sentiment-v0, "
        "2 seeds, 4000 env tokens (pretrains the tiny preset unless --init is given)",
    )
    docs = field_docs(BenchmarkConfig)
    for name, typ in (("algorithms", str), ("tasks", str), ("betas", float), ("seeds", int)):
        bm.add_argument("--" + name, nargs="+", type=typ, default=None, help=docs[name])
    add_dataclass_args(bm, BenchmarkConfig, skip=("algorithms", "tasks", "betas", "seeds", "options"))
    # Flags left unset stay None, so that they do not override --quick's or the TOML file's values.
    bm.set_defaults(func=cmd_benchmark, **{f.name: None for f in dataclasses.fields(BenchmarkConfig)})

    r = sub.add_parser("rollout", help="print random-policy episodes and their rewards")
    r.add_argument("--reward", default="sentiment", help="feedback spec, e.g. 'sentiment' or 'length(target=8)'")
    r.add_argument("--episodes", type=int, default=4, help="number of episodes to print (default: 4)")
    r.add_argument("--max-new-tokens", type=int, default=12, help="longest completion in tokens (default: 12)")
    r.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    r.set_defaults(func=cmd_rollout)

    d = sub.add_parser(
        "demo",
        help="the main job: pretrain, align toward positive sentiment, before/after samples",
        description="Pretrain on the built-in corpus (CPU preset), align toward positive sentiment "
        "with REINFORCE, print a before/after table and save a learning-curve plot.",
    )
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument(
        "--updates", type=int, default=ReinforceConfig.updates, help="REINFORCE updates (default: %(default)s)"
    )
    d.add_argument("--preset", choices=list(PRESETS), default="cpu", help="pretraining preset (default: cpu)")
    d.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from agents.runner import RunInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    try:
        args.func(args)
    except RunInterrupted as exc:  # the run saved a checkpoint first
        print(f"\ntextgym {args.command}: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C, or a command without a run loop
        print(f"\ntextgym {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc  # (str(KeyError) adds quotes)
        print(f"textgym {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
