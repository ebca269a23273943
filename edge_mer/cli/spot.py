"""``edge-mer spot``: micro-expression intervals of a video file or a frame folder (the work:
``edge_mer.spot.video``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edge_mer.cli.types import FACE_HELP, at_least, face_choice, positive
from edge_mer.spot.plot import check_plot, plot_spots
from edge_mer.spot.video import format_report, spot_video


def cmd_spot(args: argparse.Namespace) -> int:
    if args.plot:
        check_plot(Path(args.plot))
    report = spot_video(Path(args.video), args.fps, args.size, Path(args.truth) if args.truth else None,
                        progress=False if args.quiet else None, face=args.face)
    if args.plot:
        plot_spots(report.result, Path(args.plot), report.truth, title=Path(args.video).name)
    if args.json:
        out = report.to_dict()
        out["plot"] = args.plot
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(format_report(report))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``spot`` to the ``edge-mer`` subcommands."""
    p = subparsers.add_parser(
        "spot", help="find micro-expressions (onset, apex, offset) in a video or frame folder",
        description="Run the streaming spotter over a video file or a folder of numbered frames: face "
                    "alignment, a per-frame motion signal over facial regions (head motion removed, blinks "
                    "suppressed), an adaptive threshold, a return-to-rest check and micro-expression length "
                    "bounds. With --truth the spots are scored as MEGC does (IoU >= 0.5). Example: edge-mer spot "
                    "--video clip.mp4 --truth clip.csv --plot spots.png")
    p.add_argument("--video", required=True, help="video file, or a folder of numbered frames (needs --fps)")
    p.add_argument("--fps", type=positive, help="frame rate (required for a frame folder; overrides a file's)")
    p.add_argument("--truth", help="truth: the generator's CSV, or a CAS(ME)^2 / SAMM long-video sheet "
                                   "(frames numbered from 1 there)")
    p.add_argument("--size", type=at_least(32), help="face crop size S in pixels (default 128)")
    p.add_argument("--plot", metavar="FILE.png", help="write the signal, threshold, spots and truth as a PNG")
    p.add_argument("--face", type=face_choice, default="largest", help=FACE_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_spot)
