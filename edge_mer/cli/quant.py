"""The INT8 and artefact commands: export, calibrate (and build-set), build-engine.

Only argparse here; torch, onnx and TensorRT are imported by the command that
needs them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edge_mer.cli.output import print_json
from edge_mer.cli.types import at_least
from edge_mer.errors import UserError

# The exit status of export and calibrate when the INT8 file they wrote failed its quality gate: not 0, so a
# script stops before it ships the file; not 2 (a bad command line or input: nothing was written) nor 1 (a
# fault): the file and its figures are there to inspect, marked unusable.
GATE_FAILED = 3


def _gate(quality: dict[str, Any] | None, out: str, fp32: str, line: bool = True) -> int:
    """The gate's line on stdout (``line``), a warning line on stderr when the file failed, and the exit
    status."""
    from edge_mer.quant.ptq import summary

    if quality is None:
        return 0
    if line:
        print(f"  {summary(quality)}")
    if quality["usable"]:
        return 0
    print(f"edge-mer: warning: {out} failed the INT8 quality gate; it is written, marked \"usable\": false in "
          f"its sidecar and not made {fp32}'s companion, so --precision auto keeps to FP32", file=sys.stderr)
    return GATE_FAILED


def cmd_export(args: argparse.Namespace) -> int:
    from edge_mer.quant.export import export

    report = export(Path(args.checkpoint), Path(args.out), force=args.force,
                    **({} if args.opset is None else {"opset": args.opset}))
    if args.json:
        print_json(report)
        return _gate(report.get("quality"), report["onnx"], Path(report.get("companion", "")).name, line=False)
    print(f"wrote {report['onnx']} ({report['precision']}, {report['bytes'] / 1e6:.2f} MB) and its sidecar")
    if "qdq" in report:
        q = report["qdq"]
        print(f"  Q/DQ: {q['QuantizeLinear']} QuantizeLinear, {q['DequantizeLinear']} DequantizeLinear; "
              f"{q['int8_products']} INT8 matrix products/convolutions, {q['fp32_products']} in FP32; "
              f"{report['folded_weights']} weights stored as INT8")
    print(f"  ONNX Runtime vs torch: largest logit difference {report['max_abs_diff']:.2e}")
    if "companion" in report:
        print(f"  FP32 companion {report['companion']} (largest difference "
              f"{report['companion_max_abs_diff']:.2e})")
    return _gate(report.get("quality"), report["onnx"], Path(report.get("companion", "")).name)


def cmd_build_set(args: argparse.Namespace) -> int:
    from edge_mer.features.cache import FeatureSet
    from edge_mer.outputs import check_file
    from edge_mer.quant.calibset import MIN_CALIBRATION_SAMPLES, build_set, save_set, too_few

    out = Path(args.out)
    if args.n < MIN_CALIBRATION_SAMPLES:
        raise too_few(f"--n {args.n} asks for {args.n} samples")
    check_file(out, inputs=[args.features, args.checkpoint], force=args.force)
    fs = FeatureSet.load(Path(args.features))
    only, person = None, 0.0
    if args.checkpoint:
        only, person = _trained_on(Path(args.checkpoint))
    cs = build_set(fs, args.n, args.seed, only, person)
    if len(cs) < MIN_CALIBRATION_SAMPLES:
        among = f" that {Path(args.checkpoint).name} was trained on" if args.checkpoint else ""
        raise too_few(f"only {len(cs)} samples{among} are in {args.features}, so no set was written")
    save_set(cs, out)
    if args.json:
        print_json({"out": str(out), **cs.meta})
    else:
        c = cs.meta["counts"]
        print(f"wrote {out}: {len(cs)} samples ({cs.size}x{cs.size}) from {c['subjects']} subjects; "
              f"classes {c['class']}; datasets {c['dataset']}")
        if len(cs) < args.n:
            print(f"  only {len(cs)} samples were available (asked for {args.n})")
    return 0


def _trained_on(path: Path) -> tuple[set[str], float]:
    """The sample ids a checkpoint or ONNX file was trained on, and its person level (``person_rms``)."""
    from edge_mer.flow.person import person_rms

    if path.suffix == ".onnx":
        from edge_mer.runtime.artifact import load_artifact

        meta = load_artifact(path).meta
    else:
        from edge_mer.model.checkpoint import load_checkpoint

        meta = load_checkpoint(path)[1]
    return set(meta.get("trained_on", [])), person_rms(meta)


def cmd_calibrate(args: argparse.Namespace) -> int:
    if not args.onnx or not args.set or not args.out:
        raise UserError("calibrate needs --onnx, --set and --out (or: edge-mer calibrate build-set ...)")
    from edge_mer.quant.export import count_qdq
    from edge_mer.quant.ptq import calibrate

    doc = calibrate(Path(args.onnx), Path(args.set), Path(args.out), method=args.method, force=args.force)
    q = count_qdq(Path(args.out))
    if args.json:
        print_json({"out": args.out, "sidecar": doc, "quality": doc["quality"],
                    "qdq": {k: v if isinstance(v, int) else len(v) for k, v in q.items()}})
        return _gate(doc["quality"], args.out, Path(args.onnx).name, line=False)
    print(f"wrote {args.out} (INT8 Q/DQ, {doc['bytes'] / 1e6:.2f} MB) from {args.onnx} calibrated on "
          f"{doc['quantization']['samples']} samples ({args.method}); {len(q['int8_products'])} INT8 matrix "
          f"products/convolutions, {len(q['fp32_products'])} in FP32 ({doc['quantization']['fp32_motion_readers']} "
          f"reading the motion, the rest attention)")
    return _gate(doc["quality"], args.out, Path(args.onnx).name)


def cmd_build_engine(args: argparse.Namespace) -> int:
    from edge_mer.runtime.engine import build_engine, read_engine_info

    before = set(Path(args.out).glob("*.engine")) if Path(args.out).is_dir() else set()
    path = build_engine(Path(args.onnx), Path(args.out), fp16=args.fp16, max_batch=args.max_batch)
    info = read_engine_info(path)
    if args.json:  # "reused": the engine was there and current (a deploy's step changed nothing)
        print_json({"engine": str(path), **info.meta, "reused": path in before})
    else:
        print(f"engine {path} (TensorRT {info.meta['tensorrt']}, {info.meta['gpu']}, {info.meta['precision']}, "
              f"built in {info.meta['build_seconds']} s)")
    return 0


def add_parsers(sub: Any) -> None:
    e = sub.add_parser("export", help="export a checkpoint to ONNX (QAT checkpoints give Q/DQ INT8) with a sidecar",
                       description="Write MODEL.onnx (inputs motion and texture, output logits, dynamic batch) "
                                   "and MODEL.onnx.json (config, class names, normalisation, input spec, sha256), "
                                   "then run the file in ONNX Runtime and print its largest difference from "
                                   "torch. A QAT checkpoint's INT8 file is also run beside its FP32 companion "
                                   "(the INT8 quality gate); one that fails is written, marked unusable, and "
                                   "the command exits 3. Example: edge-mer export --checkpoint "
                                   "run/checkpoint.pt --out model.onnx")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", required=True, help="ONNX file to write")
    e.add_argument("--opset", type=int, help="ONNX opset (default 13: TensorRT 8.5 and ONNX Runtime 1.10 read it; "
                                             "17 writes LayerNormalization, TensorRT >= 8.6)")
    e.add_argument("--force", action="store_true", help="replace an existing OUT")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_export, host_only=True)

    c = sub.add_parser("calibrate", help="INT8 post-training quantization of an FP32 ONNX file; build-set makes "
                                         "the calibration set",
                       description="Quantize an FP32 ONNX export to a Q/DQ INT8 file with ranges from a "
                                   "calibration set (runs in ONNX Runtime and TensorRT), then run it beside the "
                                   "FP32 file on the calibration samples (the INT8 quality gate: top-1 agreement, "
                                   "logit difference, logits that still vary); one that fails is written, marked "
                                   "unusable, not made the FP32 file's companion, and the command exits 3. "
                                   "Example: edge-mer calibrate --onnx model.onnx --set calibration/synthetic.npz "
                                   "--out model.int8.onnx")
    c.add_argument("--onnx", help="FP32 ONNX file from edge-mer export")
    c.add_argument("--set", help="calibration set (.npz) from edge-mer calibrate build-set")
    c.add_argument("--out", help="INT8 ONNX file to write")
    c.add_argument("--method", choices=("max", "percentile"), default="max",
                   help="activation range: the largest magnitude seen (default, like modelopt's max calibration) "
                        "or its 99.99th percentile")
    c.add_argument("--force", action="store_true", help="replace an existing OUT")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_calibrate, host_only=True)
    cs = c.add_subparsers(dest="calibrate_command", metavar="{build-set}")
    b = cs.add_parser("build-set", help="draw a calibration set from a feature cache, stratified by class, "
                                        "subject and dataset",
                      description="Example: edge-mer calibrate build-set --features features/megc2019 --n 512 "
                                  "--out calibration/megc2019.npz")
    b.add_argument("--features", required=True)
    b.add_argument("--n", type=at_least(1), default=512, help="samples (default 512, at least 32)")
    b.add_argument("--out", required=True, help=".npz to write")
    b.add_argument("--checkpoint", help="draw only from the samples this checkpoint (or ONNX export) was trained "
                                        "on, so no held-out subject shapes the INT8 ranges")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--force", action="store_true", help="replace an existing OUT")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_build_set, host_only=True)

    g = sub.add_parser("build-engine", help="compile an ONNX file to a TensorRT engine on this device",
                       description="Explicit quantization from the Q/DQ nodes (strongly typed where the "
                                   "TensorRT version has it). The engine's file name carries its cache key "
                                   "(ONNX sha256, TensorRT version, GPU, precision); a JSON sidecar records "
                                   "them. Example: edge-mer build-engine --onnx model.int8.onnx --out engines/")
    g.add_argument("--onnx", required=True)
    g.add_argument("--out", required=True, help="folder for the engine and its sidecar")
    g.add_argument("--fp16", action="store_true", help="let the layers outside Q/DQ run in FP16")
    g.add_argument("--max-batch", type=at_least(1), default=32)
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_build_engine)
