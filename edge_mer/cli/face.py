"""``edge-mer face``: the faces, landmarks and aligned crop the kit finds on an image or a video (the work:
``edge_mer.face.show``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_mer.cli.output import print_json
from edge_mer.cli.types import FACE_HELP, at_least, face_choice, positive
from edge_mer.errors import UserError
from edge_mer.outputs import check_file


def cmd_face(args: argparse.Namespace) -> int:
    from edge_mer.face.align import DETECTORS, FaceAligner
    from edge_mer.face.show import IMAGE_SUFFIXES, VIDEO_SUFFIXES, show_image, show_video

    source = Path(args.image or args.video)
    out = Path(args.out) if args.out else None
    if out is not None:
        allowed = IMAGE_SUFFIXES if args.image else VIDEO_SUFFIXES
        if out.suffix.lower() not in allowed:
            raise UserError(f"--out {out}: an overlay of {'an image' if args.image else 'a video'} is one of "
                            f"{', '.join(allowed)}")
        check_file(out, inputs=[source], force=args.force)
    assert args.detector in DETECTORS
    aligner = FaceAligner(args.size, detector=args.detector, engine=args.engine, min_face=args.min_face,
                          face=args.face)
    if args.image:
        report = show_image(source, aligner, out)
        if args.json:
            print_json(report)
        else:
            a = report["alignment"]
            print(f"{source}: {len(report['faces']) or 1} face(s); followed: box {a['box']}, {a['method']} "
                  f"alignment ({report['detector']}), eyes "
                  f"{', '.join(f'({x:.1f}, {y:.1f})' for x, y in a['eyes'] or [])}; {1000 * report['seconds']:.1f} ms")
    else:
        result = show_video(source, aligner, out, args.max_frames, args.fps)
        if args.json:
            print_json(result.to_dict())
        else:
            print(f"{source}: face on {result.with_face} of {result.frames} frames ({result.detector}); detector "
                  f"ran on {result.detections}, face lost {result.lost} time(s); "
                  f"{1000 * result.seconds / max(result.frames, 1):.1f} ms per frame")
    if out is not None and not args.json:
        print(f"overlay: {out}")
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``face`` to the ``edge-mer`` subcommands."""
    p = subparsers.add_parser(
        "face", help="show the faces, landmarks and aligned crop found on an image or a video",
        description="Find the faces (BlazeFace), fit their 468 landmarks (FaceMesh) and the alignment to the "
                    "crop the spotter and the model see, on an image or a video; on a video the face is followed "
                    "as the spotter follows it. Example: edge-mer face --video clip.mp4 --out overlay.mp4")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="an image file")
    what.add_argument("--video", help="a video file or a folder of numbered frames")
    p.add_argument("--out", help="write the overlay: an image (.png, .jpg) or a video (.mp4, .avi)")
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--detector", choices=("auto", "mesh", "haar"), default="auto",
                   help="BlazeFace + FaceMesh (mesh; the default wherever OpenCV DNN or ONNX Runtime runs) or "
                        "OpenCV's Haar cascades")
    p.add_argument("--engine", choices=("auto", "opencv", "onnxruntime"), default="auto",
                   help="what runs the face networks (default: ONNX Runtime, else OpenCV DNN)")
    p.add_argument("--face", type=face_choice, default="largest", help=FACE_HELP)
    p.add_argument("--min-face", type=at_least(16), default=40, help="smallest face searched for, px (default 40)")
    p.add_argument("--size", type=at_least(32), default=128, help="aligned crop size in pixels (default 128)")
    p.add_argument("--max-frames", type=at_least(1), help="stop a video after this many frames")
    p.add_argument("--fps", type=positive, help="frame rate of a frame folder (default 30)")
    p.set_defaults(func=cmd_face)
