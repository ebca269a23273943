"""``edge-mer flow``: the raw dense flow between two images (the work: ``edge_mer.flow.images``)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from edge_mer.flow.images import METHODS, compute_flow


def cmd_flow(args: argparse.Namespace) -> int:
    s = compute_flow(Path(args.first), Path(args.second), args.method, Path(args.out))
    if args.json:
        print(json.dumps({k: v for k, v in asdict(s).items() if v is not None}, indent=2, sort_keys=True))
    else:
        h, w = s.shape[:2]
        gpu = f" ({s.gpu_ms:.3f} ms on the GPU, layout {s.layout})" if s.gpu_ms is not None else ""
        print(f"flow {w}x{h} by {s.method} in {s.seconds:.3f} s{gpu}, mean magnitude {s.mean_magnitude:.4f} px: "
              f"{s.out}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``flow`` to the ``edge-mer`` subcommands."""
    p = subparsers.add_parser(
        "flow", help="dense optical flow between two images, saved as .npy",
        description="Dense optical flow from --first to --second (grey; any size, both the same), "
                    "saved as an (H, W, 2) float32 .npy of u, v in pixels. No face crop.")
    p.add_argument("--first", required=True, help="first image (the flow starts here)")
    p.add_argument("--second", required=True, help="second image")
    p.add_argument("--method", required=True, choices=METHODS,
                   help="reference: the kit's numpy TV-L1; opencv-tvl1: OpenCV contrib's TV-L1; "
                        "opencv-dis: OpenCV's DIS; cuda: the fused CUDA kernels")
    p.add_argument("--out", required=True, help="output .npy (written atomically)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_flow)
