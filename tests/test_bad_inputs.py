"""Every mistake a user can make on the command line, in one table: each ends in one ``edge-mer: error:`` line and
a non-zero exit, never a traceback, and leaves nothing half written.

The count is printed (``-s``): N bad inputs, 0 tracebacks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")


def _files(d: Path) -> dict[str, Path]:
    """The bad and good files the table refers to, made once."""
    import cv2

    from edge_mer.runtime.artifact import DEMO_MODEL, sidecar_path

    f: dict[str, Path] = {}
    f["text"] = d / "notes.txt"
    f["text"].write_text("not a model\n")
    f["png"] = d / "face.png"
    cv2.imwrite(str(f["png"]), np.full((32, 32, 3), 128, np.uint8))
    f["corrupt_video"] = d / "corrupt.mp4"
    f["corrupt_video"].write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    f["wall"] = d / "wall.avi"  # a video without a face
    w = cv2.VideoWriter(str(f["wall"]), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (160, 120))
    for _ in range(12):
        w.write(np.full((120, 160, 3), 90, np.uint8))
    w.release()
    f["empty_npz"] = d / "empty.npz"
    f["empty_npz"].write_bytes(b"")
    np.savez(d / "whole.npz", motion=np.zeros((40, 3, 112, 112), np.float32))
    f["cut_npz"] = d / "cut.npz"
    f["cut_npz"].write_bytes((d / "whole.npz").read_bytes()[:5000])
    f["cut_ck"] = d / "checkpoint.pt"
    f["cut_ck"].write_bytes(b"PK\x03\x04 a checkpoint cut short")
    f["bad_onnx"] = d / "bad.onnx"
    f["bad_onnx"].write_bytes(b"not protobuf at all")
    shutil.copy(sidecar_path(DEMO_MODEL), sidecar_path(f["bad_onnx"]))
    f["fp32"] = d / "fp32.onnx"  # the demo model's FP32 file, without its companion
    f["fp32"].write_bytes(DEMO_MODEL.with_name("demo.int8.fp32.onnx").read_bytes())
    meta = json.loads(sidecar_path(DEMO_MODEL.with_name("demo.int8.fp32.onnx")).read_text())
    meta.pop("companion", None)
    sidecar_path(f["fp32"]).write_text(json.dumps(meta))
    f["model"] = d / "m.onnx"  # the demo model, with a sidecar that promises another crop size
    f["model"].write_bytes(DEMO_MODEL.read_bytes())
    meta = json.loads(sidecar_path(DEMO_MODEL).read_text())
    meta["config"]["size"] = 64
    meta.pop("companion", None)
    sidecar_path(f["model"]).write_text(json.dumps(meta))
    f["sheet"] = d / "CASME2-coding-20190701.xlsx"
    f["sheet"].write_bytes(b"PK\x03\x04 not a workbook")
    f["casme2"] = d / "casme2"
    (f["casme2"] / "CASME2_RAW_selected" / "sub01" / "EP02_01f").mkdir(parents=True)
    cv2.imwrite(str(f["casme2"] / "CASME2_RAW_selected" / "sub01" / "EP02_01f" / "img1.jpg"),
                np.full((32, 32, 3), 128, np.uint8))
    shutil.copy(f["sheet"], f["casme2"] / f["sheet"].name)
    f["cache"] = d / "features"  # a feature cache whose one sample file is cut short
    (f["cache"] / "samples").mkdir(parents=True)
    (f["cache"] / "samples" / "a.npz").write_bytes(b"PK\x03\x04")
    (f["cache"] / "config.json").write_text("{}\n")
    (f["cache"] / "index.jsonl").write_text(json.dumps(
        {"id": "casme2/sub01/EP01", "status": "ok", "composite": "negative", "dataset": "casme2",
         "subject": "sub01", "file": "samples/a.npz"}) + "\n")
    f["run"] = d / "run"
    f["run"].mkdir()
    (f["run"] / "checkpoint.pt").write_bytes(b"an FP32 checkpoint")
    f["dataset_out"] = d / "dataset"
    f["dataset_out"].mkdir()
    (f["dataset_out"] / "old.txt").write_text("an earlier dataset")
    f["fake_engine"] = d / "m.engine"
    f["fake_engine"].write_bytes(b"not an engine")
    return f


# (what the user did, argv from the files, words the one line must hold)
CASES: list[tuple[str, Callable[[dict[str, Path], Path], list[str]], tuple[str, ...]]] = [
    ("prepare --size 0", lambda f, d: ["data", "prepare", "--dataset", "casme2", "--root", "r", "--out", "o",
                                       "--size", "0"], ("--size",)),
    ("prepare --size 8", lambda f, d: ["data", "prepare", "--dataset", "casme2", "--root", "r", "--out", "o",
                                       "--size", "8"], ("--size",)),
    ("prepare --size -5", lambda f, d: ["data", "prepare", "--dataset", "casme2", "--root", "r", "--out", "o",
                                        "--size=-5"], ("--size",)),
    ("prepare --landmarks a text file", lambda f, d: ["data", "prepare", "--dataset", "casme2", "--root",
                                                      str(f["casme2"]), "--out", str(d / "o1"), "--landmarks",
                                                      str(f["text"])], ("not a landmark model",)),
    ("prepare --landmarks a PNG", lambda f, d: ["data", "prepare", "--dataset", "casme2", "--root", str(f["casme2"]),
                                                "--out", str(d / "o2"), "--landmarks", str(f["png"])],
     ("not a landmark model",)),
    ("prepare --out onto the dataset", lambda f, d: ["data", "prepare", "--dataset", "casme2", "--root",
                                                     str(f["casme2"]), "--out", str(f["casme2"])],
     ("holds this command's input",)),
    ("data index on a corrupt sheet", lambda f, d: ["data", "index", "--dataset", "casme2", "--root",
                                                    str(f["casme2"])], (f"{'CASME2-coding'}",)),
    ("data index on a missing folder", lambda f, d: ["data", "index", "--dataset", "casme2", "--root",
                                                     str(d / "nowhere")], ("nowhere",)),
    ("calibrate --set empty", lambda f, d: ["calibrate", "--onnx", str(f["fp32"]), "--set", str(f["empty_npz"]),
                                            "--out", str(d / "c1.onnx")], ("empty.npz",)),
    ("calibrate --set cut short", lambda f, d: ["calibrate", "--onnx", str(f["fp32"]), "--set", str(f["cut_npz"]),
                                                "--out", str(d / "c2.onnx")], ("cut.npz",)),
    ("calibrate --out onto --onnx", lambda f, d: ["calibrate", "--onnx", str(f["fp32"]), "--set",
                                                  str(f["cut_npz"]), "--out", str(f["fp32"]), "--force"],
     ("input",)),
    ("calibrate --onnx missing", lambda f, d: ["calibrate", "--onnx", str(d / "none.onnx"), "--set",
                                               str(f["cut_npz"]), "--out", str(d / "c3.onnx")], ("none.onnx",)),
    ("build-set from a cut cache", lambda f, d: ["calibrate", "build-set", "--features", str(f["cache"]), "--out",
                                                 str(d / "set.npz")], ("a.npz",)),
    ("build-set --n 0", lambda f, d: ["calibrate", "build-set", "--features", "f", "--n", "0", "--out", "s.npz"],
     ("--n",)),
    ("export --out onto its checkpoint", lambda f, d: ["export", "--checkpoint", str(f["cut_ck"]), "--out",
                                                       str(f["cut_ck"]), "--force"], ("input",)),
    ("export a cut checkpoint", lambda f, d: ["export", "--checkpoint", str(f["cut_ck"]), "--out",
                                              str(d / "e.onnx")], ("checkpoint.pt",)),
    ("train --batch-size 0", lambda f, d: ["train", "--features", "f", "--out", "r", "--batch-size", "0"],
     ("--batch-size",)),
    ("train --epochs 0", lambda f, d: ["train", "--features", "f", "--out", "r", "--epochs", "0"], ("--epochs",)),
    ("train --epochs -1", lambda f, d: ["train", "--features", "f", "--out", "r", "--epochs=-1"], ("--epochs",)),
    ("train on a cut cache", lambda f, d: ["train", "--features", str(f["cache"]), "--out", str(d / "r1")],
     ("a.npz",)),
    ("train --out onto an earlier run", lambda f, d: ["train", "--features", str(f["cache"]), "--out",
                                                      str(f["run"])], ("not empty",)),
    ("train --qat CK --out the CK's folder", lambda f, d: ["train", "--features", str(f["cache"]), "--qat",
                                                          str(f["run"] / "checkpoint.pt"), "--out", str(f["run"]),
                                                          "--force"], ("input",)),
    ("synth dataset onto a non-empty folder", lambda f, d: ["synth", "dataset", "--out", str(f["dataset_out"])],
     ("not empty",)),
    ("eval a missing checkpoint", lambda f, d: ["eval", "--checkpoint", str(d / "none.pt"), "--features",
                                                str(f["cache"])], ("none.pt",)),
    ("bench --model-only --runs 0", lambda f, d: ["bench", "--model-only", "--runs", "0"], ("--runs",)),
    ("spot --plot x.txt", lambda f, d: ["spot", "--video", str(f["wall"]), "--plot", str(d / "x.txt")], ("PNG",)),
    ("spot a corrupt video", lambda f, d: ["spot", "--video", str(f["corrupt_video"])], ("corrupt.mp4",)),
    ("spot a video without a face", lambda f, d: ["spot", "--video", str(f["wall"])], ("no face",)),
    ("spot a missing video", lambda f, d: ["spot", "--video", str(d / "none.mp4")], ("none.mp4",)),
    ("face on an image without a face", lambda f, d: ["face", "--image", str(f["png"])],
     ("no face found", "BlazeFace", "faces from 40 px")),
    ("face on a text file", lambda f, d: ["face", "--image", str(f["text"])], ("not an image", "notes.txt")),
    ("face on a missing image", lambda f, d: ["face", "--image", str(d / "none.png")], ("none.png",)),
    ("face on a video without a face", lambda f, d: ["face", "--video", str(f["wall"])],
     ("no face found in any of the",)),
    ("face on a corrupt video", lambda f, d: ["face", "--video", str(f["corrupt_video"])], ("corrupt.mp4",)),
    ("face --out onto its image", lambda f, d: ["face", "--image", str(f["png"]), "--out", str(f["png"]),
                                                "--force"], ("input",)),
    ("face --out of the wrong kind", lambda f, d: ["face", "--video", str(f["wall"]), "--out", str(d / "o.png")],
     (".mp4",)),
    ("face --detector with no such detector", lambda f, d: ["face", "--image", str(f["png"]), "--detector", "yolo"],
     ("--detector",)),
    ("run a missing video", lambda f, d: ["run", "--source", str(d / "none.mp4")], ("none.mp4",)),
    ("run a corrupt video", lambda f, d: ["run", "--source", str(f["corrupt_video"])], ("corrupt.mp4",)),
    ("run with no camera", lambda f, d: ["run", "--camera", "7"], ("/dev/video7",)),
    ("run a model whose sidecar is another export's", lambda f, d: ["run", "--demo", "--model", str(f["model"])],
     ("its sidecar says",)),
    ("run a file that is not ONNX", lambda f, d: ["run", "--demo", "--model", str(f["bad_onnx"])], ("bad.onnx",)),
    ("run an engine without TensorRT, or of another version", lambda f, d: ["run", "--demo", "--model",
                                                                           str(f["fake_engine"])], ("TensorRT",)),
    ("run --record to an unwritable folder", lambda f, d: ["run", "--demo", "--record",
                                                           str(d / "none" / "x.mp4")], ("--record",)),
    ("run --record to an unknown kind", lambda f, d: ["run", "--demo", "--record", str(d / "x.gif")],
     ("--record",)),
    ("flow between missing images", lambda f, d: ["flow", "--first", str(d / "a.png"), "--second", str(d / "b.png"),
                                                  "--method", "reference", "--out", str(d / "f.npy")], ("a.png",)),
    ("build-engine on a missing file", lambda f, d: ["build-engine", "--onnx", str(d / "none.onnx"), "--out",
                                                     str(d / "engines")], ("none.onnx",)),
]


# commands that need the host-side extras first: without them, their one line names the extra to install
NEEDS = {"train": ("torch",), "export": ("torch", "onnx"), "calibrate": ("onnx",)}


def _missing(argv: list[str]) -> list[str]:
    import importlib.util

    return [m for m in NEEDS.get(argv[0], ()) if importlib.util.find_spec(m) is None]


def test_every_bad_input_is_one_line(tmp_path):
    files = _files(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    tracebacks, failures, extras = 0, [], 0
    for what, argv, words in CASES:
        args = argv(files, tmp_path)
        proc = subprocess.run([sys.executable, "-m", "edge_mer", *args], capture_output=True, text=True, timeout=300)
        lines = proc.stderr.strip().splitlines()
        tracebacks += "Traceback" in proc.stderr
        errors = [x for x in lines if x.startswith("edge-mer: error:")]
        ok = proc.returncode != 0 and len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in proc.stderr
        said = ok and all(w in errors[0] for w in words)
        if ok and not said and _missing(args) and "pip install" in errors[0]:
            said = True  # this machine lacks the extra the command needs first, and the line names it
            extras += 1
        if not said:
            failures.append(f"{what}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    print(f"{len(CASES)} bad inputs, {tracebacks} tracebacks, {len(failures)} without their one line"
          + (f" ({extras} answered with the extra they need first)" if extras else ""))
    assert not failures, "\n".join(failures)
    assert tracebacks == 0
    written = {p for p in tmp_path.rglob("*")} - before
    assert not written, sorted(map(str, written))  # nothing half written by a refused command
