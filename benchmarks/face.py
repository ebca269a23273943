"""Face detection and eye positions on real photographs: the shipped BlazeFace + FaceMesh against Haar cascades.

The two public-domain portraits that ship with the kit with hand-annotated points
(``edge_mer/assets/faces``: Eileen Collins from scikit-image, Grace Hopper from matplotlib; eyes
and 14 more points in ``faces.json``; the other photographs' points come from the mesh) are
placed in 640 x 480 frames on a blurred random background at several face sizes (width about 2.3
eye distances), in-plane rotations and brightness levels, bare, behind dark glasses or with a
hand over the mouth (``synth.faces.place_photo``), at a random place each. Both detectors align
the frame as the kit does (``FaceAligner``), and the eyes are where that alignment puts them
(the crop's canonical eye places mapped back to the frame; for Haar's box-only alignment the box
implies them): a face counts as found when both lie within half an eye distance of the annotated
eyes; the eye error is the mean distance of the two, in eye distances, over the faces found.

Times per 640 x 480 frame on this machine's cores (OpenCV with 2 threads): finding a face
(BlazeFace over the frame, then FaceMesh), following it (FaceMesh alone, on the square its
last landmarks set), and Haar (face cascade and eye cascades).

    python benchmarks/face.py [--repeats 1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mer.errors import script_main
from edge_mer.face.align import CANONICAL_EYE_Y, CANONICAL_IOD, FaceAligner, NoFaceError
from edge_mer.runtime.backends.onnxruntime import cpu_name
from edge_mer.synth.faces import OCCLUSIONS, load_photo, photo_names, place_photo

RESULTS = Path(__file__).resolve().parent / "results"
SIZE = (640, 480)
FACE_PX = (40, 60, 90, 150, 240)
ANGLES = (-30.0, -15.0, 0.0, 15.0, 30.0)
BRIGHTNESS = (1.0, 0.5, 0.25)
DETECTORS = ("mesh", "haar")


def one_case(aligner: FaceAligner, frame: np.ndarray, truth: dict[str, np.ndarray]) -> float | None:
    """The eye error in eye distances, or None when no face (or a wrong one) was found."""
    try:
        a = aligner.align(frame)
    except NoFaceError:
        return None
    # where the alignment puts the eyes: the crop's canonical eye places mapped back to the frame (for Haar's
    # box-only alignment too, whose eyes are implied by the box)
    half = CANONICAL_IOD * a.size / 2
    canonical = np.array([[a.size / 2 - half, CANONICAL_EYE_Y * a.size], [a.size / 2 + half, CANONICAL_EYE_Y * a.size]])
    inv = cv2.invertAffineTransform(a.matrix)
    eyes = canonical @ inv[:, :2].T + inv[:, 2]
    iod = float(np.linalg.norm(truth["eye_l"] - truth["eye_r"]))
    errors = [float(np.linalg.norm(e - truth[k])) / iod for e, k in zip(eyes, ("eye_r", "eye_l"))]
    return float(np.mean(errors)) if max(errors) < 0.5 else None


def measure(repeats: int) -> list[dict[str, Any]]:
    aligners = {d: FaceAligner(128, detector=d) for d in DETECTORS}
    rng = np.random.default_rng(0)
    rows = []
    # the photographs whose points a person annotated: the mesh's own points would grade the mesh against itself
    hand = [name for name in photo_names() if load_photo(name).points_from == "hand"]
    cases = list(itertools.product(hand, FACE_PX, ANGLES, BRIGHTNESS, OCCLUSIONS, range(repeats)))
    for n, (name, face_px, angle, brightness, occlusion, _) in enumerate(cases):
        margin = 0.8 * face_px
        at = (float(rng.uniform(margin, SIZE[0] - margin)), float(rng.uniform(margin, SIZE[1] - margin)))
        frame, truth = place_photo(load_photo(name), SIZE, face_px, angle, at, brightness, occlusion, seed=n)
        row: dict[str, Any] = {"photo": name, "face_px": face_px, "angle": angle, "brightness": brightness,
                               "occlusion": occlusion}
        for d, aligner in aligners.items():
            row[d] = one_case(aligner, frame, truth)
        rows.append(row)
        if (n + 1) % 100 == 0:
            print(f"{n + 1}/{len(cases)} frames", flush=True)
    return rows


def timings(repeats: int = 30) -> dict[str, float]:
    """Median milliseconds per 640 x 480 frame of each step."""
    photo = load_photo("hopper")
    frame, _ = place_photo(photo, SIZE, 120, 0.0, (320, 240))
    mesh = FaceAligner(128, detector="mesh")
    haar = FaceAligner(128, detector="haar")
    first = mesh.align(frame)
    steps = {
        "find (BlazeFace + FaceMesh)": lambda: mesh.align(frame),
        "BlazeFace alone": lambda: mesh.models.detect(frame) if mesh.models else None,
        "follow (FaceMesh alone)": lambda: mesh.follow(frame, first),
        "Haar (face and eye cascades)": lambda: haar.align(frame),
    }
    out = {}
    for name, step in steps.items():
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        out[name] = round(1000 * float(np.median(times)), 2)
    return out


def _summary(rows: list[dict[str, Any]], key: str | None) -> list[dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[key] if key else "all", []).append(r)
    out = []
    for value, members in groups.items():
        entry: dict[str, Any] = {"value": value, "frames": len(members)}
        for d in DETECTORS:
            errs = [r[d] for r in members if r[d] is not None]
            entry[d] = {"found": round(len(errs) / len(members), 3),
                        "eye_error_median": round(float(np.median(errs)), 3) if errs else None,
                        "eye_error_p95": round(float(np.percentile(errs, 95)), 3) if errs else None}
        out.append(entry)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=1, help="placements of each case (default 1)")
    args = ap.parse_args()
    cv2.setNumThreads(2)
    rows = measure(args.repeats)
    times = timings()
    tables = {key or "all": _summary(rows, key) for key in (None, "face_px", "angle", "brightness", "occlusion")}
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "opencv": cv2.__version__, "opencv_threads": 2,
               "numpy": np.__version__, "python": platform.python_version()}
    command = " ".join(["python benchmarks/face.py", *sys.argv[1:]])
    date = dt.date.today().isoformat()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "face.json").write_text(json.dumps({"date": date, "command": command, "machine": machine,
                                                    "tables": tables, "ms_per_frame": times, "frames": rows},
                                                   indent=2) + "\n")
    heads = {"all": "all frames", "face_px": "face width (px)", "angle": "rotation (degrees)",
             "brightness": "brightness", "occlusion": "occlusion"}
    lines = [f"# Face detection and eye positions on real photographs ({date})", "",
             f"Machine: {machine['cpu']}, {machine['cores']} cores, OpenCV {machine['opencv']} with 2 threads, "
             f"numpy {machine['numpy']}, Python {machine['python']}.", "", f"Command: `{command}`", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             "Found: share of frames whose face was found with both eyes within 0.5 eye distances; eye error: "
             "median and 95th percentile over those, in eye distances.", ""]
    for key, table in tables.items():
        lines += [f"| {heads[key]} | frames | mesh found | mesh eye error (p50 / p95) | Haar found | "
                  "Haar eye error (p50 / p95) |", "|---|---:|---:|---:|---:|---:|"]
        for e in table:
            cells = []
            for d in DETECTORS:
                s = e[d]
                err = f"{s['eye_error_median']:.3f} / {s['eye_error_p95']:.3f}" if s["eye_error_median"] is not None \
                    else "-"
                cells += [f"{s['found']:.3f}", err]
            lines.append(f"| {e['value']} | {e['frames']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Time per 640 x 480 frame (median of 30):", "", "| step | ms |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in times.items()]
    (RESULTS / "face.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    script_main(main)
