"""Checkpoints: a directory with ``config.json``, ``tokenizer.json`` and ``model.safetensors``; no pickle anywhere.

A checkpoint is written to a temporary sibling directory and renamed into place, so a crash never leaves a broken
one: readers see the previous checkpoint or the new one. Training runs add ``trainer_state.safetensors`` and
``trainer_state.json`` (optimizer moments, step, random generator states) so an interrupted run can resume.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from agents.model import LSTMLM, LMConfig, RewardModel
from textgym.corpus import BUILTIN
from textgym.tokenizer import TextTokenizer

FORMAT = "textgym-lstm-lm"
FORMAT_VERSION = 1
REQUIRED = ("config.json", "tokenizer.json", "model.safetensors")

CorpusRecord = dict[str, Any]
"""Where a model's pretraining text came from: ``{"source": path or None (built-in), "separator", "encoding"}``."""


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_checkpoint(
    path: str | os.PathLike[str],
    model: LSTMLM,
    tokenizer: TextTokenizer,
    meta: dict[str, Any] | None = None,
    trainer_state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temporary directory, then rename).

    Args:
        path: the checkpoint directory; an existing one is replaced only once the new one is complete.
        model: the model; its config and weights are saved.
        tokenizer: the tokenizer the model was trained with (its fingerprint goes in config.json).
        meta: extra JSON-serialisable information (training stage, step, metrics).
        trainer_state: ``(tensors, json_data)`` for resuming training.
    """
    path = Path(path)
    if model.config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"model vocab_size {model.config.vocab_size} != tokenizer vocab_size {tokenizer.vocab_size}: "
            "a checkpoint's model and tokenizer must match"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        config = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": model.kind,  # a language model or a reward model: never confused when loaded
            "model": model.config.to_dict(),
            "tokenizer_fingerprint": tokenizer.fingerprint(),
            "meta": meta or {},
        }
        _write_json(tmp / "config.json", config)
        tokenizer.save(tmp / "tokenizer.json")
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(weights, str(tmp / "model.safetensors"))
        if trainer_state is not None:
            tensors, data = trainer_state
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "trainer_state.safetensors")
            )
            _write_json(tmp / "trainer_state.json", data)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _recover(path: Path) -> None:
    """If a crash fell between the two renames of a save, put the previous checkpoint back."""
    if not path.exists():
        olds = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.exists() else []
        if olds:
            os.rename(olds[-1], path)


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json``."""
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(
            f"checkpoint {str(path)!r} is missing {', '.join(missing)}; a checkpoint holds {', '.join(REQUIRED)}"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path / 'config.json'} is not valid JSON: {exc.msg}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path / 'config.json'} is not a textgym checkpoint config (format should be {FORMAT!r})")
    for key, typ in (("model", dict), ("tokenizer_fingerprint", str)):
        if not isinstance(config.get(key), typ):
            raise ValueError(
                f"{path / 'config.json'} has no {key!r} {typ.__name__} (it has {sorted(config)}): the checkpoint is "
                "damaged or was not written by textgym; save it again"
            )
    return config


KINDS = {"language-model": LSTMLM, "reward-model": RewardModel}


def load_checkpoint(
    path: str | os.PathLike[str],
    expect_tokenizer: TextTokenizer | None = None,
    value_head: bool | None = None,
    device: torch.device | str | None = None,
    kind: str = "language-model",
) -> tuple[Any, TextTokenizer, dict[str, Any]]:
    """Load a checkpoint: ``(model, tokenizer, config)``. Weights are read with safetensors (no pickle).

    Args:
        path: the checkpoint directory.
        expect_tokenizer: if given, the checkpoint's tokenizer must be identical to it (e.g. the env's).
        value_head: add (True) or drop (False) a value head; a new head starts at zero. ``None`` keeps the saved one.
        device: where the model goes (default: the CPU).
        kind: the kind of model expected: ``"language-model"`` (an :class:`LSTMLM`) or ``"reward-model"`` (a
            :class:`RewardModel`); a checkpoint of the other kind is an error.

    Raises:
        FileNotFoundError: the directory or one of its files is missing.
        ValueError: a file is malformed, the checkpoint holds another kind of model, or the tokenizer, config and
            weights do not match each other.
    """
    path = Path(path)
    config = read_config(path)
    saved_kind = config.get("kind", "language-model")  # (checkpoints from before reward models: language models)
    if saved_kind != kind:
        raise ValueError(
            f"checkpoint {str(path)!r} holds a {saved_kind.replace('-', ' ')}, not a {kind.replace('-', ' ')}: "
            + (
                "give a reward model trained with `textgym reward-model train`"
                if kind == "reward-model"
                else "give a language model (from `textgym pretrain`, `sft` or `train`)"
            )
        )
    tokenizer = TextTokenizer.from_file(path / "tokenizer.json")
    if config["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise ValueError(
            f"{path / 'tokenizer.json'} does not match the tokenizer the model was trained with "
            f"(fingerprint {tokenizer.fingerprint()} != {config.get('tokenizer_fingerprint')} in config.json)"
        )
    if expect_tokenizer is not None and expect_tokenizer != tokenizer:
        raise ValueError(
            f"checkpoint {str(path)!r} was trained with a different tokenizer (vocab {tokenizer.vocab_size}, "
            f"fingerprint {tokenizer.fingerprint()}) than the environment's (vocab {expect_tokenizer.vocab_size}, "
            f"fingerprint {expect_tokenizer.fingerprint()}): use the same corpus and vocab_size, or pass the "
            "checkpoint's tokenizer to the env"
        )
    lm_config = LMConfig.from_dict(config["model"])
    if lm_config.vocab_size != tokenizer.vocab_size:
        raise ValueError(
            f"config.json says vocab_size {lm_config.vocab_size} but tokenizer.json has {tokenizer.vocab_size} tokens"
        )
    saved_value_head = lm_config.value_head
    if value_head is not None:
        lm_config.value_head = value_head
    model = KINDS[kind](lm_config)
    try:
        weights = load_file(str(path / "model.safetensors"))
    except Exception as exc:  # safetensors raises its own error type for a corrupt file
        raise ValueError(f"{path / 'model.safetensors'} cannot be read: {exc}") from None
    if saved_value_head and not lm_config.value_head:
        weights = {k: v for k, v in weights.items() if not k.startswith("value.")}
    try:
        model.load_state_dict(weights, strict=not (lm_config.value_head and not saved_value_head))
    except RuntimeError as exc:
        raise ValueError(f"{path / 'model.safetensors'} does not fit config.json's model: {exc}") from None
    model.eval()
    return model.to(device), tokenizer, config


def corpus_record(config: dict[str, Any]) -> CorpusRecord:
    """The corpus a checkpoint's model was pretrained on, as its ``config.json`` records it (every stage passes the
    record on). The built-in corpus for a checkpoint without a record."""
    record = config.get("meta", {}).get("corpus")
    if isinstance(record, str):  # the record of checkpoints written before the separator and encoding were options
        record = {"source": None if record == BUILTIN else record}
    if not isinstance(record, dict):
        record = {}
    return {
        "source": record.get("source"),
        "separator": record.get("separator", "auto"),
        "encoding": record.get("encoding", "utf-8"),
    }


def load_trainer_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The resume state saved with a checkpoint, or None if it has none."""
    path = Path(path)
    if not (path / "trainer_state.json").is_file() or not (path / "trainer_state.safetensors").is_file():
        return None
    data = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    return load_file(str(path / "trainer_state.safetensors")), data


def optimizer_to_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into tensors (for safetensors) and JSON data."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, st in data.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(st)
    opt.load_state_dict({"state": state, "param_groups": data["param_groups"]})
