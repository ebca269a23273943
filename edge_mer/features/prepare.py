"""Build a feature cache from a dataset: one ``.npz`` per sample, resumable, in parallel.

Layout of ``FEATURES/``::

    config.json          the FeatureConfig, the dataset, its root and the normalisation constants
    samples/<dataset>/<subject>/<clip>.npz   motion (3,S,S), texture (1,S,S), alignment, frames used
    index.jsonl          one line per annotated sample: its record, status and file
    problems.json        what the loader and the feature stage reported

A sample's ``.npz`` is written to a temporary name and renamed, so an
interrupted run leaves only finished samples; the next run with the same
config skips them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge_mer import __version__
from edge_mer.atomic import replacing, write_text
from edge_mer.data.loaders import load
from edge_mer.data.records import Sample
from edge_mer.errors import UserError
from edge_mer.face import FaceAligner
from edge_mer.flow.normalise import CONSTANTS, motion_tensor, texture_tensor
from edge_mer.flow.opencv import make_flow

CACHE_VERSION = 1


@dataclass(frozen=True)
class FeatureConfig:
    size: int = 112
    flow: str = "tvl1"
    apex_policy: str = "middle"
    landmarks: str | None = None
    version: int = CACHE_VERSION


@dataclass
class PrepareSummary:
    out: str
    samples: int
    written: int
    reused: int
    failed: int
    skipped: int  # incomplete frames or excluded from the composite classes
    seconds: float
    samples_per_second: float


def sample_file(out: Path, s: Sample) -> Path:
    safe = s.clip.replace("/", "_")
    return out / "samples" / s.dataset / s.subject / f"{safe}.npz"


def _read_gray(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise UserError(f"cannot read image {path} (corrupt or not an image)")
    return img


_STATE: dict[str, Any] = {}


def _init_worker(cfg: FeatureConfig) -> None:
    cv2.setNumThreads(1)
    _STATE["aligner"] = FaceAligner(cfg.size, cfg.landmarks)
    _STATE["flow"] = make_flow(cfg.flow)
    _STATE["dis"] = make_flow("dis")
    _STATE["cfg"] = cfg


def _apex_by_motion(s: Sample, onset_crop: np.ndarray, align: Any) -> tuple[int, str]:
    """The frame between onset and offset that moved most from the onset (DIS, cheap).

    The median flow (the head's drift) is removed first; the score is the 95th
    percentile of what remains, so the local facial movement decides, not the
    head or the sensor noise.
    """
    from edge_mer.runtime.frames import list_frames

    frames = list_frames(Path(s.frames_dir))
    dis = _STATE["dis"]
    best, best_path, best_mag = s.onset, s.onset_path or "", -1.0
    for n, path in frames.items():
        if s.onset < n <= s.offset:
            f = dis(onset_crop, align.crop(_read_gray(str(path))))
            mag = float(np.percentile(np.linalg.norm(f - np.median(f.reshape(-1, 2), 0), axis=-1), 95))
            if mag > best_mag:
                best, best_path, best_mag = n, str(path), mag
    return best, best_path


def compute(record: dict[str, Any], out_path: str) -> dict[str, Any]:
    """Features of one sample, written to ``out_path``; returns what the index records."""
    aligner: FaceAligner = _STATE["aligner"]
    flow = _STATE["flow"]
    s = Sample(**{k: v for k, v in record.items() if k != "id"})
    try:
        onset = _read_gray(s.onset_path or "")
        align = aligner.align(onset, f"onset frame {s.onset_path}")
        onset_crop = align.crop(onset)
        apex_n, apex_path = s.apex, s.apex_path or ""
        if apex_n is None:
            apex_n, apex_path = _apex_by_motion(s, onset_crop, align)
        apex_crop = align.crop(_read_gray(apex_path))
        motion = motion_tensor(flow(onset_crop, apex_crop))
        texture = texture_tensor(apex_crop)
    except UserError as exc:
        return {"status": "failed", "message": str(exc)}
    with replacing(Path(out_path), ".npz") as tmp:
        np.savez(tmp, motion=motion, texture=texture, alignment=json.dumps(align.to_dict()),
                 apex=np.int64(apex_n), apex_path=apex_path)
    return {"status": "ok", "apex": apex_n, "alignment": align.method}


def _check_config(out: Path, config: dict[str, Any]) -> None:
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text())
        keys = ("feature", "dataset", "root", "annotations")
        if any(old.get(k) != config.get(k) for k in keys):
            raise UserError(f"{out} holds features made with another config ({path}); "
                            "use another --out, or delete it to start again")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def prepare(dataset: str, root: Path, out: Path, cfg: FeatureConfig, annotations: Path | None = None,
            workers: int = 1, progress: bool = True) -> PrepareSummary:
    from tqdm import tqdm

    start = time.perf_counter()
    make_flow(cfg.flow)  # fail early when the method is unavailable
    FaceAligner(cfg.size, cfg.landmarks)
    index = load(dataset, root, annotations, cfg.apex_policy)
    config = {"feature": asdict(cfg), "dataset": dataset, "root": str(root.resolve()),
              "annotations": index.annotations, "normalisation": CONSTANTS, "edge_mer": __version__}
    _check_config(out, config)
    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Sample, Path]] = []
    skipped = reused = 0
    for s in index.samples:
        path = sample_file(out, s)
        row = {**s.to_dict(), "file": str(path.relative_to(out))}
        if not s.complete and s.apex_path != "":
            row.update(status="skipped", message="frames missing on disk")
            skipped += 1
        elif not s.composite and dataset == "megc2019":
            row.update(status="skipped", message="not in the composite classes")
            skipped += 1
        elif path.exists():
            row.update(status="ok", reused=True)
            reused += 1
        else:
            todo.append((s, path))
        rows[s.id] = row
    failed = 0
    with tqdm(total=len(todo), desc=f"features {dataset}", unit="sample", disable=not progress) as bar:
        results = _run(todo, cfg, workers)
        for (s, _path), res in zip(todo, results):
            rows[s.id].update(res)
            failed += res["status"] == "failed"
            bar.update(1)
    _write_lines(out / "index.jsonl", [rows[s.id] for s in index.samples])
    problems = [asdict(p) for p in index.problems]
    problems += [{"kind": "feature-failed", "message": r["message"], "sample": r["id"]}
                 for r in rows.values() if r.get("status") == "failed"]
    (out / "problems.json").write_text(json.dumps({"problems": problems, "notes": index.notes}, indent=1) + "\n")
    elapsed = time.perf_counter() - start
    written = len(todo) - failed
    return PrepareSummary(str(out), len(index.samples), written, reused, failed, skipped, round(elapsed, 2),
                          round(written / elapsed, 2) if elapsed > 0 else 0.0)


def _run(todo: list[tuple[Sample, Path]], cfg: FeatureConfig, workers: int) -> Any:
    jobs = [(s.to_dict(), str(p)) for s, p in todo]
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(cfg)
        return (compute(*j) for j in jobs)
    # "spawn": a forked child can inherit OpenCV's thread pool mid-use from the parent and hang
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(cfg,))

    def results() -> Any:
        with pool:
            yield from pool.map(compute, *zip(*jobs), chunksize=1)
    return results()


def _write_lines(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def prepare_synthetic_composite(data: Path, out: Path, subjects: int, clips_per_subject: int, seed: int,
                                size: int = 112, flow: str = "dis") -> PrepareSummary:
    """Render the synthetic MEGC2019 composite into ``data`` (unless it is there) and prepare its features.

    What the demo model, the ablation and the INT8 benchmarks train on: one call, so they
    all see the same data for the same arguments.
    """
    from edge_mer.data.synthetic import MANIFEST, DatasetConfig, write_dataset

    if not (data / MANIFEST).exists():
        write_dataset(DatasetConfig(layout="megc2019", subjects=subjects, clips_per_subject=clips_per_subject,
                                    seed=seed), data)
    return prepare("megc2019", data, out, FeatureConfig(size=size, flow=flow), workers=os.cpu_count() or 1)
