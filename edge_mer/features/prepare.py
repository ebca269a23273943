"""Build a feature cache from a dataset: one ``.npz`` per sample, resumable, in parallel.

Layout of ``FEATURES/``::

    config.json          the FeatureConfig, the dataset, its root and the normalisation constants
    samples/<dataset>/<subject>/<clip>.npz   motion (3,S,S), texture (1,S,S), alignment, frames used, key
    index.jsonl          one line per annotated sample: its record, status, key and file
    problems.json        what the loader and the feature stage reported

Each sample's ``.npz`` records a key: the sha256 of its annotation record, the
path, size and modification time of the frame files it reads, and the
FeatureConfig. A rerun reuses a file only when it reads back whole and its key
is the one computed afresh; anything else (an apex corrected in the sheet, a
frame replaced, a truncated file) is recomputed. Files are written to a
temporary name and renamed, so a killed run leaves only finished samples, and
``index.jsonl`` marks what it had not done yet as ``pending``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_mer import __version__
from edge_mer.atomic import replacing, write_text
from edge_mer.data.loaders import load
from edge_mer.data.records import DatasetIndex, Sample
from edge_mer.errors import UserError
from edge_mer.face import FaceAligner
from edge_mer.features.cache import SampleFile, SampleFileError, read_sample
from edge_mer.flow.base import HEAD_CHOICES, MotionOptions
from edge_mer.flow.normalise import CONSTANTS, difference_tensor, texture_tensor
from edge_mer.flow.opencv import make_flow
from edge_mer.runtime.frames import list_frames
from edge_mer.spot.signal import apex_index

if TYPE_CHECKING:
    from edge_mer.synth.diversity import Diversity
    from edge_mer.synth.render import Nuisances

# 2: each sample's file and index row carry the key of what it was made from (version 1 files are recomputed)
CACHE_VERSION = 2
PENDING = "not computed yet: the run stopped before it; rerun edge-mer data prepare with the same arguments"
_PATH_FIELDS = ("frames_dir", "onset_path", "apex_path", "offset_path")


@dataclass(frozen=True)
class FeatureConfig:
    size: int = 112
    flow: str = "tvl1"
    apex_policy: str = "middle"
    landmarks: str | None = None
    detector: str = "mesh"  # the face detector of the onset frame's alignment: "mesh" or "haar"
    version: int = CACHE_VERSION
    texture: str = "apex"  # the texture input: the apex frame, or "difference" (apex minus onset)
    oversample: int = 1  # k > 1: the flow of crops k times finer, averaged back to S (normalise.motion_tensor)
    head: str = "kept"  # "removed": the head's fitted affine motion subtracted from the flow (flow.head)
    # k > 1 (odd): the onset and the apex each the mean of k frames centred on it (as many as the clip has),
    # so the camera's noise, independent from frame to frame, weighs less in the flow
    frames: int = 1
    # a > 1: the apex replaced by onset + a x (apex - onset) before the flow (linear Eulerian magnification of
    # the two frames: a motion small against the image's structure then reads about a times as large)
    magnify: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        """The fields; ``texture``, ``oversample``, ``head``, ``frames`` and ``magnify`` only when they are not
        the default, so caches from before they existed stay valid."""
        d = asdict(self)
        for name, default in (("texture", "apex"), ("oversample", 1), ("head", "kept"), ("frames", 1),
                              ("magnify", 1.0)):
            if d[name] == default:
                del d[name]
        return d


@dataclass
class PrepareSummary:
    out: str
    samples: int
    written: int
    reused: int
    stale: int  # of those written: their file was there but unreadable or made from other inputs
    failed: int
    skipped: int  # incomplete frames or excluded from the composite classes
    seconds: float
    samples_per_second: float


def sample_file(out: Path, s: Sample) -> Path:
    safe = s.clip.replace("/", "_")
    return out / "samples" / s.dataset / s.subject / f"{safe}.npz"


def _identity(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except OSError:
        return [os.path.abspath(path), None, None]
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def sample_key(s: Sample, cfg: FeatureConfig) -> str:
    """sha256 of what a sample's features are made from: its record, the frame files it reads, the config."""
    # the sheet row number is left out: a row moved in the sheet changes nothing in the features
    record = {k: v for k, v in s.to_dict().items() if k not in ("row", "id")}
    for k in _PATH_FIELDS:  # one folder spelled relative or absolute is the same input
        if record[k]:
            record[k] = os.path.abspath(record[k])
    half = cfg.frames // 2  # the frames beside the onset and the apex that their means read
    if s.apex_path == "":  # apex by motion: any frame from onset to offset may become the apex
        files = [str(p) for n, p in list_frames(Path(s.frames_dir)).items()
                 if s.onset - half <= n <= s.offset + half]
    elif half:
        files = [str(p) for p in _window_paths(s, s.onset, cfg.frames) + _window_paths(s, s.apex or 0, cfg.frames)]
    else:
        files = [p for p in (s.onset_path, s.apex_path) if p]
    if cfg.landmarks:
        files.append(cfg.landmarks)
    payload = {"version": CACHE_VERSION, "config": cfg.to_dict(), "sample": record,
               "files": [_identity(f) for f in files]}
    if s.apex_path == "":
        payload["apex_by_motion"] = APEX_BY_MOTION  # a sample whose apex it chose is made again when it changes
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _reusable(path: Path, key: str, size: int) -> tuple[SampleFile | None, str]:
    """The sample's file when it can be reused, else None and why not ("missing" when there is none)."""
    try:
        stored = read_sample(path, size)
    except SampleFileError as exc:
        return None, str(exc)
    if stored.key is None:
        return None, "made by an older edge-mer (no key)"
    if stored.key != key:
        return None, "made from other inputs (the annotation, the frame files or the config changed)"
    return stored, ""


def _read_gray(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise UserError(f"cannot read image {path} (corrupt or not an image)")
    return img


_STATE: dict[str, Any] = {}


def _init_worker(cfg: FeatureConfig, parent: int | None = None) -> None:
    if parent is not None:
        _die_with_parent(parent)
    cv2.setNumThreads(1)
    _STATE["aligner"] = FaceAligner(cfg.size, cfg.landmarks, detector=cfg.detector)
    _STATE["flow"] = make_flow(cfg.flow)
    _STATE["cfg"] = cfg


def _exit_now(*_: Any) -> None:
    """End this worker at once, leaving no temporary file of a sample half written."""
    writing = _STATE.get("writing")
    if writing is not None:
        with suppress(OSError):
            os.unlink(writing)
    os._exit(128 + signal.SIGTERM)


def _die_with_parent(parent: int) -> None:
    """A worker ends when the run that started it ends, however it ends: else it computes on for nobody."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    signal.signal(signal.SIGTERM, _exit_now)
    if sys.platform.startswith("linux"):
        try:
            libc: ctypes.CDLL | None = ctypes.CDLL(None)
        except OSError:
            libc = None
        if libc is not None and hasattr(libc, "prctl"):
            libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG: the kernel signals us when it dies
    if os.getppid() != parent:  # it died before prctl took effect
        _exit_now()

    # the portable way, and a backstop: PR_SET_PDEATHSIG fires when the parent's *thread* that started us ends
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        _exit_now()
    threading.Thread(target=watch, name="edge-mer-parent-watch", daemon=True).start()


#: The version of ``apex_by_motion``'s method, in the key of every sample whose apex it chose.
APEX_BY_MOTION = 2


def apex_by_motion(s: Sample, onset_crop: np.ndarray, align: Any) -> tuple[int, str]:
    """The frame between onset and offset whose face moved most from the onset's (``spot.signal.apex_index``:
    the spotter's facial parts, head motion removed, eyes left out, averaged over a short window)."""
    frames = [(n, str(p)) for n, p in sorted(list_frames(Path(s.frames_dir)).items()) if s.onset < n <= s.offset]
    if not frames:
        return s.onset, s.onset_path or ""
    best = apex_index(onset_crop, (align.crop(_read_gray(p)) for _, p in frames), align.crop_points())
    return frames[best]


def _window_paths(s: Sample, centre: int, frames: int) -> list[Path]:
    """The files of the ``frames`` frames of ``s`` centred on frame ``centre`` that its folder holds."""
    listed = list_frames(Path(s.frames_dir))
    half = frames // 2
    return [listed[n] for n in range(centre - half, centre + half + 1) if n in listed]


def _window_mean(s: Sample, centre: int, path: str, frames: int) -> np.ndarray:
    """Frame ``centre`` of ``s`` (the file ``path``), or with ``frames`` > 1 the mean of the frames around it."""
    if frames <= 1:
        return _read_gray(path)
    paths = _window_paths(s, centre, frames) or [Path(path)]
    mean = np.mean([_read_gray(str(p)).astype(np.float32) for p in paths], axis=0)
    return np.rint(mean).astype(np.uint8)  # what the flow methods read


def _magnified(onset: np.ndarray, apex: np.ndarray, factor: float) -> np.ndarray:
    """``apex`` (factor 1), or onset + factor x (apex - onset) as 8-bit grey (the flow methods' input): linear
    Eulerian magnification of the two frames, so a motion small against the image's structure reads about
    ``factor`` times as large."""
    if factor == 1:
        return apex
    moved = onset.astype(np.float32) + factor * (apex.astype(np.float32) - onset.astype(np.float32))
    return np.clip(np.rint(moved), 0, 255).astype(np.uint8)


def compute(record: dict[str, Any], out_path: str, key: str = "") -> dict[str, Any]:
    """Features of one sample, written to ``out_path`` with ``key``; returns what the index records."""
    aligner: FaceAligner = _STATE["aligner"]
    flow = _STATE["flow"]
    s = Sample(**{k: v for k, v in record.items() if k != "id"})
    try:
        frames = _STATE["cfg"].frames
        onset = _read_gray(s.onset_path or "")
        align = aligner.align(onset, f"onset frame {s.onset_path}")
        if frames > 1:
            onset = _window_mean(s, s.onset, s.onset_path or "", frames)
        onset_crop = align.crop(onset)
        apex_n, apex_path = s.apex, s.apex_path or ""
        if apex_n is None:
            apex_n, apex_path = apex_by_motion(s, onset_crop, align)
        apex_frame = _window_mean(s, apex_n, apex_path, frames)
        apex_crop = align.crop(apex_frame)
        moved = _magnified(onset, apex_frame, _STATE["cfg"].magnify)  # the frame the flow runs to
        options = MotionOptions(_STATE["cfg"].oversample, _STATE["cfg"].head)  # what a device's flow stage does
        if options.oversample > 1:
            fine = align.finer(options.oversample)
            motion = options.motion(flow(fine.crop(onset), fine.crop(moved)))
        else:
            motion = options.motion(flow(onset_crop, apex_crop if _STATE["cfg"].magnify == 1 else align.crop(moved)))
        if _STATE["cfg"].texture == "difference":
            texture = difference_tensor(onset_crop, apex_crop)
        else:
            texture = texture_tensor(apex_crop)
    except UserError as exc:
        return {"status": "failed", "message": str(exc)}
    try:
        with replacing(Path(out_path), ".npz") as tmp:
            _STATE["writing"] = str(tmp)  # for _exit_now: a worker told to end removes it
            np.savez(tmp, motion=motion, texture=texture, alignment=json.dumps(align.to_dict()),
                     apex=np.int64(apex_n), apex_path=apex_path, key=key)
    finally:
        _STATE.pop("writing", None)
    return {"status": "ok", "apex": apex_n, "alignment": align.method}


def _comparable(config: dict[str, Any]) -> tuple[Any, ...]:
    feature = dict(config.get("feature") or {})
    feature.pop("version", None)  # an older cache version is recomputed sample by sample, not refused
    return feature, config.get("dataset"), config.get("root"), config.get("annotations")


def _check_config(out: Path, config: dict[str, Any]) -> None:
    path = out / "config.json"
    try:
        old = json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        old = None  # torn by an edge-mer that wrote it in place: the samples' keys still decide what is reused
    if isinstance(old, dict) and _comparable(old) != _comparable(config):
        raise UserError(f"{out} holds features made with another config ({path}); "
                        "use another --out, or delete it to start again")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def prepare(dataset: str, root: Path, out: Path, cfg: FeatureConfig, annotations: Path | None = None,
            workers: int = 1, progress: bool = True) -> PrepareSummary:
    from tqdm import tqdm

    start = time.perf_counter()
    if cfg.texture not in ("apex", "difference"):
        raise UserError(f"texture {cfg.texture!r}: choose apex or difference")
    if cfg.head not in HEAD_CHOICES:
        raise UserError(f"head {cfg.head!r}: choose {' or '.join(HEAD_CHOICES)}")
    if cfg.frames < 1 or cfg.frames % 2 == 0:
        raise UserError(f"frames {cfg.frames}: an odd number from 1 (the frame itself)")
    if not 1 <= cfg.magnify <= 16:
        raise UserError(f"magnify {cfg.magnify:g}: a factor from 1 (the apex as filmed) to 16")
    make_flow(cfg.flow)  # fail early when the method is unavailable
    FaceAligner(cfg.size, cfg.landmarks, detector=cfg.detector)
    index = load(dataset, root, annotations, cfg.apex_policy)
    config = {"feature": cfg.to_dict(), "dataset": dataset, "root": str(root.resolve()),
              "annotations": index.annotations, "normalisation": CONSTANTS, "edge_mer": __version__}
    _check_config(out, config)
    rows: dict[str, dict[str, Any]] = {}
    todo: list[tuple[Sample, Path, str]] = []
    skipped = reused = stale = 0
    for s in index.samples:
        path = sample_file(out, s)
        row = {**s.to_dict(), "file": str(path.relative_to(out))}
        rows[s.id] = row
        if not s.complete and s.apex_path != "":
            row.update(status="skipped", message="frames missing on disk")
            skipped += 1
            continue
        if not s.composite and dataset == "megc2019":
            row.update(status="skipped", message="not in the composite classes")
            skipped += 1
            continue
        key = row["key"] = sample_key(s, cfg)
        stored, why = _reusable(path, key, cfg.size)
        if stored is not None:
            row.update(status="ok", reused=True, apex=stored.apex, alignment=stored.alignment)
            reused += 1
            continue
        if why != "missing":
            row["recomputed"] = why
            stale += 1
        row.update(status="pending", message=PENDING)
        todo.append((s, path, key))
    failed = 0
    if todo:  # a run killed from here on leaves an index that says which samples it had not done
        _write_index(out, index, rows)
    try:
        with tqdm(total=len(todo), desc=f"features {dataset}", unit="sample", disable=not progress) as bar, \
                _sigterm_interrupts(), _computing(todo, cfg, workers) as results:
            for i, res in results:
                row = rows[todo[i][0].id]
                row.pop("message", None)
                row.update(res)
                failed += res["status"] == "failed"
                bar.update(1)
    finally:
        _write_index(out, index, rows)
    elapsed = time.perf_counter() - start
    written = len(todo) - failed
    return PrepareSummary(str(out), len(index.samples), written, reused, stale, failed, skipped,
                          round(elapsed, 2), round(written / elapsed, 2) if elapsed > 0 else 0.0)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the run stops, ends its workers and writes what it has done."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread can take signals
        return

    def stop(*_: Any) -> None:
        raise Terminated()
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@contextmanager
def _computing(todo: list[tuple[Sample, Path, str]], cfg: FeatureConfig,
               workers: int) -> Iterator[Iterator[tuple[int, dict[str, Any]]]]:
    """(position in ``todo``, result) as each sample finishes; on an error or an interrupt the workers end at
    once, and what they were computing is not written."""
    jobs = [(s.to_dict(), str(p), key) for s, p, key in todo]
    if workers <= 1 or len(jobs) <= 1:
        _init_worker(cfg)
        yield ((i, compute(*job)) for i, job in enumerate(jobs))
        return
    # "spawn": a forked child can inherit OpenCV's thread pool mid-use from the parent and hang
    pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(cfg, os.getpid()))
    futures: dict[Future[dict[str, Any]], int] = {}
    try:
        futures.update((pool.submit(compute, *job), i) for i, job in enumerate(jobs))
        yield ((futures[f], f.result()) for f in as_completed(futures))
    except BaseException:
        # the executor has no public way to end busy workers (3.14's terminate_workers aside); it then fails
        # the futures left with BrokenProcessPool (cancelling them first makes 3.11's manager thread raise)
        for process in list(getattr(pool, "_processes", {}).values()):
            with suppress(Exception):
                process.terminate()
        pool.shutdown(wait=False)
        raise
    pool.shutdown(wait=True)


def _write_index(out: Path, index: DatasetIndex, rows: dict[str, dict[str, Any]]) -> None:
    write_text(out / "index.jsonl", "".join(json.dumps(rows[s.id], sort_keys=True) + "\n" for s in index.samples))
    problems = [asdict(p) for p in index.problems]
    problems += [{"kind": "feature-failed", "message": r["message"], "sample": r["id"]}
                 for r in rows.values() if r.get("status") == "failed"]
    write_text(out / "problems.json", json.dumps({"problems": problems, "notes": index.notes}, indent=1) + "\n")


def prepare_synthetic_composite(data: Path, out: Path, subjects: int, clips_per_subject: int, seed: int,
                                size: int = 112, flow: str = "dis", diverse: bool = False,
                                texture: str = "apex", nuisances: Nuisances | None = None,
                                diversity: Diversity | None = None, oversample: int = 1,
                                apex: str = "middle", head: str = "kept", frames: int = 1,
                                magnify: float = 1.0) -> PrepareSummary:
    """Render the synthetic MEGC2019 composite into ``data`` (unless it is there) and prepare its features.

    What the demo model, the ablation, the INT8 and the recognition benchmarks train on: one call, so they
    all see the same data for the same arguments. ``diverse``: subjects that differ, sized like the real
    composite (``subjects`` and ``clips_per_subject`` are then not used). ``texture``: see FeatureConfig.
    ``nuisances`` and ``diversity`` (with ``diverse``) replace the defaults: the same draw with a source of
    difficulty switched off (``benchmarks/headroom.py``). ``apex``: the policy for clips without an annotated
    apex (``data prepare --apex``); ``head``: ``data prepare --head``; ``frames``: FeatureConfig.frames.
    """
    from edge_mer.data.synthetic import COMPOSITE_SHARE, MANIFEST, DatasetConfig, write_dataset
    from edge_mer.eval.truth import rendered_faces
    from edge_mer.synth.diversity import Diversity
    from edge_mer.synth.faces import photo_names

    if (data / MANIFEST).exists():
        # a draw rendered when other photographs shipped holds other subjects than these arguments now give
        rendered = rendered_faces(data)
        if rendered != photo_names():
            raise UserError(f"{data} was rendered from the photographs {', '.join(rendered)}; this edge-mer has "
                            f"{', '.join(photo_names())}: delete it (and its features, {out}) to render it again")
    else:
        if diverse:
            cfg = DatasetConfig(layout="megc2019", subjects=sum(COMPOSITE_SHARE.values()), seed=seed,
                                diversity=diversity or Diversity(), like_composite=True)
        else:
            cfg = DatasetConfig(layout="megc2019", subjects=subjects, clips_per_subject=clips_per_subject,
                                seed=seed)
        if nuisances is not None:
            cfg = replace(cfg, nuisances=nuisances)
        write_dataset(cfg, data)
    features = FeatureConfig(size=size, flow=flow, texture=texture, oversample=oversample, apex_policy=apex,
                             head=head, frames=frames, magnify=magnify)
    return prepare("megc2019", data, out, features, workers=os.cpu_count() or 1)
