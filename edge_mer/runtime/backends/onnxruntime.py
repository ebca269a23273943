"""ONNX Runtime on the CPU (any machine, a Raspberry Pi, CI).

``precision="auto"``: when the artefact's sidecar names a companion file of the
other precision (an INT8 Q/DQ file and its FP32 source), both are timed once on
this machine (batch 1, the configured threads) and the faster one is used; the
result is cached per machine, ONNX Runtime version, thread count and file pair
in ``$XDG_CACHE_HOME/edge-mer/precision.json``, so INT8 never makes a CPU slower
by default. The two are timed in turns, so load that comes and goes falls on
both alike; a choice timed while other work kept the machine busy (load average
per core, less this process, at or above ``BUSY``) is kept as provisional and
timed again at the first start that finds the machine idle, so an unattended
device does not keep for good a verdict of one busy minute (a choice kept
before the load was recorded counts as provisional). ``"file"`` runs the given file as it is; ``"fp32"``/``"int8"`` pick
that file of the pair. An INT8 file whose sidecar records a failed quality gate
(``"usable": false``) is never picked: ``auto`` keeps to its FP32 file, and
``int8`` asking for it is refused with the gate's reason.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.errors import UserError
from edge_mer.runtime.artifact import INPUTS, OUTPUT, Artifact, load_artifact
from edge_mer.runtime.backends.base import Backend, sample_inputs
from edge_mer.runtime.choices import keep, recall
from edge_mer.runtime.timing import call_times_ms, interleaved_times_ms, other_load

PRECISIONS = ("auto", "file", "fp32", "int8")
PRECISION_CACHE = "precision.json"  # in the cache folder: the faster precision per model pair and CPU
BUSY = 0.5  # other runnable tasks per core from which a timing is provisional (timed again when idle)
TURN = 10  # calls of each file per turn when the pair is timed (entries timed otherwise are timed again)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("ONNX Runtime is not installed: pip install onnxruntime "
                        "(or 'edge-mer[desktop]' / 'edge-mer[pi]')") from None
    return onnxruntime


def make_session(path: Path, threads: int | None = None, size: int | None = None) -> Any:
    """An ONNX Runtime CPU session with all graph optimisations on; ``size``: the crop size the sidecar
    promises, held against the file's own input shapes now rather than at the first spot of a run."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad files
        raise UserError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0][:200]}") from None
    names = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    if sorted(names) != sorted(INPUTS) or OUTPUT not in outs:
        raise UserError(f"{path} has inputs {names} and outputs {outs}; an edge-mer model has inputs "
                        f"{list(INPUTS)} and output '{OUTPUT}'")
    if size is not None:
        for i in sess.get_inputs():
            want = [3 if i.name == "motion" else 1, size, size]
            got = list(i.shape[1:])
            if len(got) != 3 or any(isinstance(g, int) and g != w for g, w in zip(got, want)):
                raise UserError(f"{path} takes {i.name} of shape {i.shape}, but its sidecar says "
                                f"[batch, {want[0]}, {size}, {size}]: the sidecar belongs to another export")
    return sess


def _one_sample(sess: Any, size: int) -> Callable[[], object]:
    """A call that runs ``sess`` on one sample of ``size``."""
    motion, texture = sample_inputs(1, size)
    feed = {"motion": motion, "texture": texture}
    return lambda: sess.run(None, feed)


def time_session(sess: Any, size: int, runs: int = 30) -> float:
    """Median latency in ms of one sample."""
    return float(np.median(call_times_ms(_one_sample(sess, size), runs)))


def _failure(art: Artifact) -> str:
    q = art.meta.get("quality") or {}
    return "; ".join(q.get("failed") or []) or "recorded in its sidecar"


def _provisional(choice: dict) -> bool:
    """Whether a kept precision choice is to be timed again at an idle start: it was timed with the machine busy,
    kept before the load was recorded (no ``busy`` key), or timed in turns of another length (turns of one call,
    before ``turn`` was recorded, charged the second file for the handover)."""
    return bool(choice.get("busy", True)) or choice.get("turn") != TURN


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        art = load_artifact(path)
        self.choice: dict[str, Any] = {}
        self._timed: dict[Path, Any] = {}  # sessions opened to time the precisions, reused for the choice
        art = self._pick(art, threads, precision)
        self.artifact = art
        self.size = art.size
        self.class_names = art.class_names
        self.precision = art.precision
        self.threads = threads
        self.session = self._timed.pop(art.path, None) or make_session(art.path, threads, art.size)
        self._timed.clear()

    def _pick(self, art: Artifact, threads: int | None, precision: str) -> Artifact:
        if precision == "file":
            return art
        other = None if precision == art.precision else art.companion()
        if precision in ("fp32", "int8"):
            if precision == art.precision:
                other = art
            elif other is None or other.precision != precision:
                raise UserError(f"{art.path} is {art.precision} and its sidecar names no {precision} companion "
                                "that is present and unchanged")
            if not other.usable:
                raise UserError(f"{other.path} failed its INT8 quality gate ({_failure(other)}); run the FP32 "
                                "file, or calibrate again")
            return other
        usable = [a for a in (art, other) if a is not None and a.usable]
        if not usable:
            raise UserError(f"{art.path} failed its INT8 quality gate ({_failure(art)}) and names no FP32 "
                            "companion to run instead; calibrate again, or run the FP32 model")
        if len(usable) == 1 or other is None:
            if usable[0] is not art:
                self.choice = {"choice": usable[0].precision, "why": f"{art.path.name} failed its INT8 quality gate"}
            return usable[0]
        pair = {art.precision: art, other.precision: other}
        key = ":".join([pair["fp32"].meta["sha256"][:16], pair["int8"].meta["sha256"][:16], cpu_name(),
                        _ort().__version__, str(threads or 0)])
        choice = recall(PRECISION_CACHE, key)
        load = other_load()
        idle = load is None or load < BUSY
        if choice is None or choice.get("choice") not in pair or (_provisional(choice) and idle):
            self._timed = {a.path: make_session(a.path, threads, a.size) for a in pair.values()}
            # turns of TURN calls: a session's first calls after the other one's run slower for a while
            times = interleaved_times_ms({p: _one_sample(self._timed[a.path], a.size) for p, a in pair.items()},
                                         runs=4 * TURN, block=TURN)
            ms = {p: round(float(np.median(v)), 3) for p, v in times.items()}
            choice = {"choice": min(ms, key=lambda p: ms[p]), "ms": ms,
                      "cpu": cpu_name(), "measured": time.strftime("%Y-%m-%dT%H:%M:%S"), "busy": not idle,
                      "turn": TURN}
            if load is not None:
                choice["other_load"] = round(load, 2)
            keep(PRECISION_CACHE, key, choice)
        self.choice = choice
        return pair[choice["choice"]]

    def logits(self, motion: np.ndarray, texture: np.ndarray) -> np.ndarray:
        out = self.session.run([OUTPUT], {"motion": motion, "texture": texture})[0]
        return np.asarray(out, np.float32)

    def describe(self) -> str:
        why = ""
        if "why" in self.choice:
            why = f", {self.choice['why']}"
        elif self.choice:
            ms = ", ".join(f"{p} {v:.2f} ms" for p, v in sorted(self.choice["ms"].items()))
            why = f", the faster here: {ms}"
            if _provisional(self.choice):
                if self.choice.get("busy"):
                    how = "with the machine busy"
                elif "busy" not in self.choice:
                    how = "under a load not recorded"
                else:
                    turn = self.choice.get("turn", 1)
                    how = f"in turns of {turn} call{'' if turn == 1 else 's'}"
                why += f"; timed {how}, to be timed again at an idle start"
        return f"onnxruntime {_ort().__version__} ({self.precision}, {self.artifact.path.name}{why})"
