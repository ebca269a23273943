"""Flow stage speed and accuracy: per-pair latency and endpoint error at S in {64, 112, 128, 224}.

For OpenCV's TV-L1 (contrib), OpenCV's DIS, the numpy TV-L1 reference and the
CUDA kernels with each layout of the fused solve (``edge_mer.flow.cuda.SOLVERS``),
``cuda-block`` (one block per pair), ``cuda-bands`` (row bands, one grid barrier per
iteration) and ``cuda-cluster`` (the pyramid and its levels in one launch of a thread block
cluster, 16 blocks where the GPU allows them, the state in shared memory; compute capability
9.0 and newer), ``cuda-cluster8`` (the portable 8 blocks) and ``cuda`` (the layout the stage
picks when it starts: timed the first time on this GPU, then kept), each replaying a CUDA
graph per shape, and ``cuda-bands-direct`` (launched kernel by kernel, to show what the graph
saves); ``-t128`` / ``-t256`` rows run the multi-block layouts with smaller blocks; a row
saying why when they cannot run
here, on the synthetic-warp
pairs of ``edge_mer.flow.pairs`` (the same pairs the tests use): latency is the
median over ``--repeats`` passes of the time of one pair's flow (crops already
made; the stage's crop and normalisation are not included), EPE the mean
endpoint error against the known flow over the interior (6-pixel border left
out), per pair family. Writes ``benchmarks/results/flow.md`` and ``flow.json``.

    python benchmarks/flow.py [--repeats 5] [--sizes 64 112 128 224] [--out DIR] [--methods cuda ...]

``--cuda-emulator`` runs the cuda rows on the tests' CPU emulator (``tests/cuda_emulator``)
to check this script's GPU path on a machine without a GPU: its times are not GPU times.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mer.errors import UserError, script_main
from edge_mer.flow.base import FlowStage
from edge_mer.flow.pairs import FlowPair, endpoint_error, in_frames, micro_pairs, shift_pairs
from edge_mer.flow.stage import make_stage
from edge_mer.runtime.backends.onnxruntime import cpu_name
from edge_mer.runtime.gpu import cuda_unavailable

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("opencv-tvl1", "opencv-dis", "reference", "cuda", "cuda-block", "cuda-bands", "cuda-cluster",
           "cuda-cluster8", "cuda-bands-t128", "cuda-bands-t256", "cuda-cluster-t256", "cuda-bands-direct")


def gpu_name() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none"
    proc = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30)
    return proc.stdout.strip().replace("\n", ", ") or "none"


def make(name: str, size: int, emulator: bool) -> FlowStage:
    if name.startswith("cuda"):
        from edge_mer.flow.cuda import SOLVE_THREADS, CudaStage

        runtime = None
        if emulator:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' tooling
            import cuda_emulator as runtime
        if name == "cuda":  # the stage as the device loop makes it: the layout picked at start (timed or kept)
            return CudaStage(size, runtime=runtime)
        solver, *options = name.removeprefix("cuda-").split("-")  # options: tN (threads), direct (no graph)
        threads = [int(o[1:]) for o in options if o.startswith("t")]
        blocks = 8 if solver == "cluster8" else None
        return CudaStage(size, solver=solver.rstrip("8"), runtime=runtime, graphs="direct" not in options,
                         cluster_blocks=blocks,
                         solve_threads=threads[0] if threads else SOLVE_THREADS)
    return make_stage(name, size)


def measure(name: str, pairs: list[FlowPair], repeats: int, emulator: bool = False) -> dict[str, Any]:
    """Median per-pair latency and mean EPE per family, or why the method cannot run."""
    try:
        stage = make(name, pairs[0].first.shape[0], emulator)
    except UserError as exc:
        return {"available": False, "reason": str(exc)}
    fn = stage.flow
    fn(pairs[0].first, pairs[0].second)  # warm-up: allocations, OpenCV's thread pool, kernel loading
    times: list[float] = []
    gpu: list[float] = []
    errors: dict[str, list[float]] = {}
    for r in range(repeats):
        for p in pairs:
            start = time.perf_counter()
            flow = fn(p.first, p.second)
            times.append(time.perf_counter() - start)
            if hasattr(stage, "last_ms"):
                gpu.append(stage.last_ms)
            if r == 0:
                errors.setdefault(p.family, []).append(endpoint_error(flow, p.flow))
    out: dict[str, Any] = {"available": True, "latency_ms": round(1000 * float(np.median(times)), 3),
                           "epe": {k: round(float(np.mean(v)), 4) for k, v in errors.items()}}
    if gpu:
        out["graphs"] = stage.graph_note or ("one graph launch per pair (the flow rows: pyramid and solve; "
                                             "the whole stage: crop to epilogue)")
        if stage.layout_ms:
            out["auto"] = {"picked": f"{stage.solver}/{stage.solve_threads}", "layout_ms": stage.layout_ms,
                           "from": stage.layout_from,
                           "left_out": stage.layout_notes}
        out["gpu_ms"] = round(float(np.median(gpu)), 3)
        out["stage_gpu_ms"], out["stage_wall_ms"] = fused_stage_ms(stage, pairs, repeats)
    return out


def fused_stage_ms(stage: Any, pairs: list[FlowPair], repeats: int) -> tuple[float, float]:
    """Median milliseconds of the whole CUDA stage writing float32 model inputs to device buffers: GPU time
    (CUDA events), and wall-clock time of the call (the host's staging and launches included)."""
    drv = stage.drv
    size = stage.size
    framed = [in_frames(p) for p in pairs]
    stage.ctx.push()
    try:
        motion, texture = drv.mem_alloc(3 * size * size * 4), drv.mem_alloc(size * size * 4)
    finally:
        stage.ctx.pop()
    times, walls = [], []
    for r in range(repeats + 1):
        for onset, apex, matrix in framed:
            start = time.perf_counter()
            ms = stage.write(onset, apex, matrix, int(motion), int(texture))
            if r > 0:  # the first pass warms up
                times.append(ms)
                walls.append(1000 * (time.perf_counter() - start))
    return round(float(np.median(times)), 3), round(float(np.median(walls)), 3)


def table(rows: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    lines = ["| S | method | latency per pair (ms, median) | EPE micro (px) | EPE shift (px) |",
             "|---:|---|---:|---:|---:|"]
    for size, methods in rows.items():
        said: set[str] = set()
        for name, r in methods.items():
            if not r["available"]:
                family = name.split("-")[0]  # one row for all the cuda variants when there is no GPU
                if family == "cuda" and methods.get("cuda", {}).get("available"):  # one layout this GPU lacks
                    lines.append(f"| {size} | {name} | not available: {r['reason']} | | |")
                elif family not in said:
                    lines.append(f"| {size} | {family if family == 'cuda' else name} | not available on this "
                                 "machine | | |")
                    said.add(family)
                continue
            lines.append(f"| {size} | {name} | {r['latency_ms']:.3g} | {r['epe']['micro']:.4f} | "
                         f"{r['epe']['shift']:.4f} |")
            if "gpu_ms" in r:
                tvl1 = methods.get("opencv-tvl1", {}).get("latency_ms")
                speed = f"; {tvl1 / r['stage_gpu_ms']:.0f}x OpenCV TV-L1 above" if tvl1 else ""
                lines.append(f"| {size} | {name}, GPU time of the flow (CUDA events) | {r['gpu_ms']:.3f} | | |")
                lines.append(f"| {size} | {name}, whole stage: 640x480 BGR frames to model inputs on the device "
                             f"(CUDA events{speed}) | {r['stage_gpu_ms']:.3f} | | |")
                if "stage_wall_ms" in r:
                    lines.append(f"| {size} | {name}, whole stage, wall clock of the call (host staging and "
                                 f"launches included) | {r['stage_wall_ms']:.3f} | | |")
    return lines


def graph_notes(rows: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    notes = sorted({f"{name}: {r['graphs']}" for methods in rows.values() for name, r in methods.items()
                    if "graphs" in r})
    picks = [f"S = {size}: {r['auto']['picked']} of {r['auto']['layout_ms']} (GPU ms per pair at start-up)"
             + "".join(f"; {name} left out: {why}" for name, why in r["auto"]["left_out"].items())
             for size, methods in rows.items() for r in methods.values() if "auto" in r]
    return ((["", "CUDA graphs: " + "; ".join(notes) + "."] if notes else []) +
            (["", "The cuda row's layout/threads, as the stage picked it: " + "; ".join(picks) + "."] if picks else []))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 112, 128, 224])
    ap.add_argument("--cv-threads", type=int, default=2, help="OpenCV threads (2: a 2-core CPU)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for flow.md and flow.json")
    ap.add_argument("--cuda-emulator", action="store_true",
                    help="cuda rows on the CPU emulator: checks this script without a GPU; not GPU times")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), metavar="METHOD",
                    help=f"the rows to measure (default: all of {', '.join(METHODS)})")
    args = ap.parse_args()
    cv2.setNumThreads(args.cv_threads)
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    lines: list[str] = []
    for size in args.sizes:
        pairs = micro_pairs(size) + shift_pairs(size)
        rows[size] = {}
        for name in args.methods:
            rows[size][name] = measure(name, pairs, args.repeats, args.cuda_emulator)
            print(f"S = {size}: {name} {rows[size][name].get('latency_ms', 'n/a')} ms", flush=True)
        lines = write_results(args, rows)  # after every size: a run cut short keeps what it measured
    print("\n".join(lines))


def write_results(args: argparse.Namespace, rows: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    """flow.json and flow.md in ``args.out`` for the sizes measured so far (smallest first); the lines of flow.md."""
    rows = dict(sorted(rows.items()))
    cuda_reason = cuda_unavailable() or f"runs on {gpu_name()}"
    switches = os.environ.get("EDGE_MER_CUDA_DEFINES", "").strip()
    if switches:
        cuda_reason += f", kernels built with the diagnostic switches {switches} (EDGE_MER_CUDA_DEFINES)"
    if args.cuda_emulator:
        cuda_reason = "the cuda rows ran on the CPU emulator (tests/cuda_emulator): their times are not GPU times"
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "gpu": gpu_name(), "opencv": cv2.__version__,
               "opencv_threads": cv2.getNumThreads(), "numpy": np.__version__, "python": platform.python_version()}
    command = "python benchmarks/flow.py " + " ".join(sys.argv[1:])
    date = dt.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flow.json").write_text(json.dumps(
        {"date": date, "machine": machine, "command": command.strip(), "repeats": args.repeats,
         "cuda": cuda_reason, "results": {str(k): v for k, v in rows.items()}}, indent=2) + "\n")
    lines = [f"# Flow stage: latency and accuracy ({date})", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores (OpenCV uses {machine['opencv_threads']} "
             f"threads; the reference runs on one), GPU: {machine['gpu']}. OpenCV {machine['opencv']}, "
             f"numpy {machine['numpy']}, Python {machine['python']}.", "",
             f"Command: `{command.strip()}`", "",
             "Pairs (`edge_mer.flow.pairs`): an aligned S x S face photo moved by 4 smooth random fields "
             "of 0.3, 0.8, 1.4 and 2 px peak (micro) and by 3 rigid sub-pixel shifts (shift); latency is the "
             f"median over {args.repeats} passes of the flow of one pair (grey crops in, flow out); EPE is the "
             "mean endpoint error against the known flow over the interior (6 px border left out).", "",
             *table(rows), "", f"cuda: {cuda_reason}.", *graph_notes(rows)]
    (args.out / "flow.md").write_text("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    script_main(main)
