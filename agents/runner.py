"""The one run loop that pretraining, fine-tuning and every alignment algorithm share.

    restore -> log -> progress bar -> step ... (periodic evaluation and checkpoint) -> final save

An algorithm plugs in as a :class:`Trainable`: it knows how to take one step, evaluate, and give and take back its
resumable state; the loop owns everything around that. A run killed mid-way resumes from its last checkpoint when the
same command runs again and follows the same curve. Ctrl-C (SIGINT) or SIGTERM does not lose the work since that
checkpoint: the loop finishes the step in progress, saves, says how to resume, and raises :class:`RunInterrupted`
(the command line exits with status 130).

``charts/SPS`` is defined here once, as CleanRL reports it: tokens (env tokens for RL, training tokens for pretraining
and fine-tuning) per wall-clock second since this process started the run.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from agents.checkpoint import load_checkpoint, load_trainer_state, save_checkpoint
from agents.logger import RunLogger
from agents.model import LSTMLM
from textgym.tokenizer import TextTokenizer

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when torch sees a GPU, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} asked for, but torch sees no CUDA GPU (this torch build: {torch.__version__}); "
                "use --device cpu, or auto to take a GPU only where there is one"
            )
        return torch.device(name)
    raise ValueError(f"device {name!r} is not one of {', '.join(DEVICES)} (or cuda:N)")


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 arithmetic in hardware (a CPU with AVX512-BF16 or AMX: oneDNN's own check)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_precision(name: str) -> None:
    """Refuse a precision name that is not one of :data:`PRECISIONS` (configs check early, before any work)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r} is not one of {', '.join(PRECISIONS)}")


BFLOAT16_MIN_SPEEDUP = 1.2
"""``"auto"`` takes bfloat16 on a CPU only where its products run at least this much faster than float32's: a margin,
so that the choice does not flip from run to run with the machine's load where the two are close."""


@functools.cache
def bfloat16_speedup() -> float:
    """How much faster an output-layer product of the loop's shape (512 states x 272 -> 2,000 logits) runs in
    bfloat16 (autocast, as the runs use it) than in float32 on this machine's CPU: best of 6 each, alternating (the
    first round is the warm-up, which the minimum discards), measured once per process (0.1-0.4 s). A CPU can report
    bfloat16 arithmetic and still run its products slower: this one ran 0.55-0.64x as fast as float32 on a CPU with
    AVX512-BF16 and no AMX, where the whole loop ran 0.75x; on the development machine a 2048x2048 product ran 2.3x
    and the loop 1.46x (docs/benchmarks.md)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(512, 272, generator=gen), torch.randn(2000, 272, generator=gen)
    best = {"float32": math.inf, "bfloat16": math.inf}
    with torch.no_grad():
        for _ in range(6):
            for precision in best:
                with precision_context(precision, torch.device("cpu")):
                    start = time.perf_counter()
                    torch.nn.functional.linear(x, w)
                    best[precision] = min(best[precision], time.perf_counter() - start)
    return best["float32"] / best["bfloat16"]


def resolve_precision(name: str, device: torch.device) -> str:
    """``"auto"``, ``"float32"`` or ``"bfloat16"``. ``"auto"`` is bfloat16 where ``device`` has it in hardware and
    it pays: on a GPU that has it; on a CPU that has it and runs its products at least :data:`BFLOAT16_MIN_SPEEDUP`
    as fast as float32's (:func:`bfloat16_speedup`); else float32. bfloat16 is refused where the hardware lacks it,
    since autocast would then emulate it, slower than float32."""
    check_precision(name)
    if name == "auto":
        pays = native_bfloat16(device) and (device.type != "cpu" or bfloat16_speedup() >= BFLOAT16_MIN_SPEEDUP)
        return "bfloat16" if pays else "float32"
    if name == "bfloat16" and not native_bfloat16(device):
        raise ValueError(
            f"precision 'bfloat16' needs bfloat16 arithmetic in the hardware ({device.type}: none found, CPU "
            f"capability {torch.backends.cpu.get_cpu_capability()}); use precision 'float32' or 'auto'"
        )
    return name


def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Where the model's matrix products run, for a :func:`resolve_precision` result: ``"float32"``, or
    ``"bfloat16"`` under ``torch.autocast``. The weights, the optimizer, the LSTM's cell state and the softmax stay
    float32; only the products of the LSTM and the output layer round their inputs and results to bfloat16."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after saving a checkpoint; running the same command resumes it."""

    def __init__(self, step: int, out: Path) -> None:
        super().__init__(f"interrupted at step {step}; run the same command to resume (checkpoint in {out})")
        self.step = step


class Trainable(Protocol):
    """What the run loop needs from a training algorithm."""

    model: LSTMLM
    """The model that checkpoints save (its weights) and the final ``model/`` directory holds."""
    tokenizer: TextTokenizer
    tokens: int
    """Tokens processed so far (env tokens for RL, training tokens for LM training), saved in the state."""

    def step(self) -> dict[str, float]:
        """One iteration (an optimizer step, an update); returns metrics to log."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics (``eval/...``), or an empty dict where there is nothing to evaluate."""
        ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Everything a resume needs besides the model's weights: optimizer, generators, counters."""
        ...

    def load_state(self, tensors: dict[str, torch.Tensor], data: dict[str, Any]) -> None: ...


@dataclass
class RunResult:
    steps: int
    """Steps done, in all (a resumed run counts those before the resume)."""
    eval: dict[str, float]
    """The last evaluation's metrics in this process (empty when none ran, as when a finished run is run again)."""


@dataclass
class Schedule:
    """When a run stops, evaluates, checkpoints and logs, in steps (iterations of :meth:`Trainable.step`)."""

    steps: int
    """Steps in the whole run (unless ``total_tokens`` is set)."""
    eval_interval: int
    checkpoint_interval: int
    log_interval: int = 1
    total_tokens: int = 0
    """When > 0, the run stops once the algorithm's ``tokens`` reach it, instead of after ``steps``."""
    max_minutes: float = 0.0
    """When > 0, the run also stops after this much wall time (such a run is not reproducible)."""


class Checkpointer:
    """Saves a run's resume point (``<out>/checkpoint``: weights, tokenizer and the algorithm's state)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / "checkpoint"

    def save(self, algo: Trainable, step: int, meta: dict[str, Any]) -> None:
        tensors, data = algo.state()
        data = {**data, "step": step}
        save_checkpoint(self.path, algo.model, algo.tokenizer, {**meta, "step": step}, trainer_state=(tensors, data))

    def restore(self, algo: Trainable) -> int | None:
        """Load the saved state into ``algo``; return its step, or None when there is no checkpoint yet."""
        if not self.path.exists() and not any(self.path.parent.glob(f".{self.path.name}.old-*")):
            return None
        model = algo.model
        saved, _, _ = load_checkpoint(
            self.path, expect_tokenizer=algo.tokenizer, value_head=model.config.value_head, kind=model.kind
        )
        state = load_trainer_state(self.path)
        if state is None:
            raise ValueError(
                f"cannot resume from {self.path}: it holds no trainer state (trainer_state.json and "
                "trainer_state.safetensors), so the run cannot continue where it stopped; move it away to start "
                "afresh, or use another --out folder"
            )
        if saved.config != model.config:
            raise ValueError(
                f"cannot resume from {self.path}: its model {saved.config} differs from this run's {model.config}; "
                "use another --out folder or the same settings"
            )
        model.load_state_dict(saved.state_dict())
        tensors, data = state
        algo.load_state(tensors, data)
        return int(data["step"])


class _StopSignals:
    """While active, SIGINT and SIGTERM set a flag instead of raising mid-step; a second signal raises at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # asked twice: stop now, without a save
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _format(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if math.isfinite(v))


def run(
    algo: Trainable,
    schedule: Schedule,
    out: str | Path,
    meta: dict[str, Any],
    desc: str,
    progress: bool = True,
    start_metrics: dict[str, float] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> RunResult:
    """Run (or resume) ``algo`` to the end of ``schedule``.

    Writes ``<out>/checkpoint`` (resume point), ``<out>/model`` (the final model), ``progress.csv`` and TensorBoard
    events. ``start_metrics`` (e.g. the initial policy's evaluation) are logged at step 0 of a new run. ``on_step`` is
    called after every step (tests use it to simulate a crash or an interruption).
    """
    out = Path(out)
    ckpt = Checkpointer(out)
    start = ckpt.restore(algo) or 0
    if start:
        print(f"resuming {out} from step {start}")
    logger = RunLogger(out, resume_step=start if start else None)
    if start == 0 and start_metrics:
        logger.log(0, start_metrics)

    s = schedule
    by_tokens = s.total_tokens > 0
    bar = tqdm(
        total=s.total_tokens if by_tokens else s.steps,
        initial=min(algo.tokens, s.total_tokens) if by_tokens else start,
        unit="tok" if by_tokens else "it",
        unit_scale=by_tokens,
        desc=desc,
        disable=not progress,
        mininterval=1.0,
    )
    deadline = time.monotonic() + s.max_minutes * 60 if s.max_minutes else None
    t0, tokens0 = time.perf_counter(), algo.tokens
    step, last_eval = start, {}
    finished = lambda: algo.tokens >= s.total_tokens if by_tokens else step >= s.steps  # noqa: E731
    try:
        with _StopSignals() as signals:
            while not finished():
                before = algo.tokens
                metrics = algo.step()
                step += 1
                bar.update(algo.tokens - before if by_tokens else 1)
                out_of_time = deadline is not None and time.monotonic() > deadline
                last = finished() or out_of_time  # the last step is evaluated and saved, however the run ends
                evaluate = step % s.eval_interval == 0 or last
                if evaluate or step % s.log_interval == 0:
                    metrics["charts/SPS"] = (algo.tokens - tokens0) / max(time.perf_counter() - t0, 1e-9)
                    if evaluate and (eval_metrics := algo.evaluate()):
                        metrics.update(eval_metrics)
                        last_eval = eval_metrics
                        bar.write(f"{desc} step {step}: {_format(eval_metrics)}")
                        sys.stdout.flush()  # a line per evaluation, also through a pipe (| tee, a log file)
                    logger.log(step, metrics)
                saved = step % s.checkpoint_interval == 0 or last
                if saved:
                    ckpt.save(algo, step, meta)
                if on_step is not None:
                    on_step(step)
                if signals.received is not None:
                    if not saved:
                        ckpt.save(algo, step, meta)
                    raise RunInterrupted(step, ckpt.path)
                if out_of_time:
                    bar.write(f"{desc}: stopping after {s.max_minutes} minutes at step {step}")
                    break
    finally:
        bar.close()
        logger.close()
    if step > start or not (out / "model").is_dir():  # (a finished run, run again, has nothing new to save)
        save_checkpoint(out / "model", algo.model, algo.tokenizer, meta={**meta, "step": step, "eval": last_eval})
    return RunResult(step, last_eval)
