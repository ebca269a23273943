"""Recognition datasets written in the real datasets' folder layouts and annotation files.

What each layout reproduces (the real datasets are licence-restricted; only their
public structure is mirrored here):

* ``casme2``: ``CASME2_RAW_selected/subXX/EPxx_yy[f]/imgN.jpg`` (frames numbered
  from the clip's onset in the original recording) and ``CASME2-coding-20190701.xlsx``
  with the columns Subject, Filename, a blank-header column, OnsetFrame, ApexFrame,
  OffsetFrame, a second blank-header column, Action Units, Estimated Emotion;
  integer subjects; a few apex cells written as ``/``. 200 fps, 640x480, colour.
* ``samm``: ``SAMM/006/006_1_2/006_05562.jpg`` and ``SAMM_Micro_FACS_Codes_v2.xlsx``
  whose header row (first cell ``Subject``) comes after 13 rows of notes; integer
  subjects in the sheet, zero-padded folders. 200 fps, 960x650, grey.
* ``smic``: ``SMIC_all_raw/HS/sN/micro/{negative,positive,surprise}/sN_ne_01/image059976.bmp``;
  no annotation file and no apex, as distributed. 100 fps, 640x480, colour.
* ``casme3``: CAS(ME)^3 part A, ``part_A/data/part_A/spNO.1/a/color/123.jpg`` (frames
  numbered by their index in the recording) and
  ``part_A/annotation/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx`` (sheet ``label``:
  Subject, Filename, Onset, Apex, Offset, AU, Objective class, emotion). 30 fps,
  1280x720, colour; only the ME frames are written and no depth maps.
* ``megc2019``: the three above in ``CASME2/``, ``SAMM/`` and ``SMIC/`` plus the
  composite ground truth ``MEGC2019_composite_3class_gt.csv`` (``db,subject,filename,label``,
  no header, 0 negative / 1 positive / 2 surprise; SMIC subjects written ``s01`` /
  ``s01_ne_01`` as opposed to the ``s1`` folders). CASME II "others" and SAMM
  "Other" samples are on disk and in the sheets but not in the composite file.

Every dataset root also gets ``SYNTHETIC_MANIFEST.json``: the generator's config and
the truth of every clip, for checking loaders against what was written.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edge_mer.atomic import write_text
from edge_mer.data.labels import COMPOSITE_LABELS, composite_class
from edge_mer.errors import UserError
from edge_mer.outputs import staged_folder
from edge_mer.synth.aus import EMOTION_PATTERNS, AUCode, format_aus, parse_aus
from edge_mer.synth.diversity import Diversity, SubjectStyle, draw_style, vary_sample
from edge_mer.synth.faces import make_subject, photo_names
from edge_mer.synth.images import write_image
from edge_mer.synth.render import FaceRenderer, Nuisances
from edge_mer.synth.sheets import Cell, write_csv, write_xlsx
from edge_mer.synth.timeline import (
    MICRO_MAX_S,
    MICRO_MIN_S,
    PlannedExpression,
    Ranges,
    blink_event,
    micro_event,
    render_sequence,
)

LAYOUTS = ("casme2", "samm", "smic", "casme3", "megc2019")
COMPOSITE_CSV = "MEGC2019_composite_3class_gt.csv"
MANIFEST = "SYNTHETIC_MANIFEST.json"


@dataclass(frozen=True)
class LayoutSpec:
    fps: float
    size: tuple[int, int]
    gray: bool
    ext: str
    identity_offset: int  # subjects of different datasets are different identities


SPECS = {
    "casme2": LayoutSpec(200.0, (640, 480), False, ".jpg", 0),
    "samm": LayoutSpec(200.0, (960, 650), True, ".jpg", 1000),
    "smic": LayoutSpec(100.0, (640, 480), False, ".bmp", 2000),
    "casme3": LayoutSpec(30.0, (1280, 720), False, ".jpg", 3000),
}
CASME3_SHEET = "part_A/annotation/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx"

# Real composite: 24 CASME II, 28 SAMM and 16 SMIC subjects (68) with 145, 133 and 164 samples (442).
COMPOSITE_SHARE = {"casme2": 24, "samm": 28, "smic": 16}
COMPOSITE_SAMPLES = {"casme2": 145, "samm": 133, "smic": 164}
EXCLUDED_SHARE = 0.12  # composite mode: CASME II / SAMM clips drawn with a label MEGC2019 leaves out


@dataclass(frozen=True)
class DatasetConfig:
    layout: str = "casme2"
    subjects: int = 10
    clips_per_subject: int = 5
    seed: int = 0
    size: tuple[int, int] | None = None  # frame size; None: the layout's own
    fps: float | None = None  # None: the layout's own
    face_scale: float = 1.0  # face size relative to the layout's usual framing
    quirks: bool = True
    missing_apex_rate: float = 0.05  # CASME II rows whose apex reads '/' (with quirks)
    blink_probability: float = 0.1
    nuisances: Nuisances = Nuisances.lab()
    ranges: Ranges = Ranges(micro_seconds=(0.15, 0.5))
    diversity: Diversity | None = None  # subjects that differ (amplitude, asymmetry, tempo, AUs, coding)
    like_composite: bool = False  # megc2019: uneven clips per subject summing to the real composite's sizes


@dataclass
class Clip:
    dataset: str
    subject: str  # folder name
    clip: str
    onset: int  # native frame numbers
    apex: int
    offset: int
    emotion: str
    composite: str  # "" when MEGC2019 excludes the label
    aus: str
    frames_dir: str  # relative to the dataset root
    amplitude: float
    apex_written: str = ""  # what the sheet says for the apex ("/" when hidden)
    shown: str = ""  # with diversity: the emotion whose AUs were rendered (``emotion`` is what the sheet says)
    note: str = ""  # with diversity: "ambiguous" or "mislabelled"


@dataclass
class Summary:
    layout: str
    root: str
    samples: int = 0
    subjects: int = 0
    frames: int = 0
    classes: dict[str, int] = field(default_factory=dict)
    composite: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _composite_emotion(rng: np.random.Generator, dataset: str, excluded_p: float,
                       shares: tuple[float, ...] | None = None) -> str:
    natives = sorted(EMOTION_PATTERNS[dataset])
    spare = [e for e in natives if not composite_class(dataset, e)]
    if spare and rng.random() < excluded_p:
        return str(rng.choice(spare))
    if shares:
        by_number = sorted(COMPOSITE_LABELS, key=COMPOSITE_LABELS.__getitem__)  # negative, positive, surprise
        cls = str(rng.choice(by_number, p=np.asarray(shares) / sum(shares)))
    else:
        cls = str(rng.choice(sorted(COMPOSITE_LABELS)))
    return str(rng.choice([e for e in natives if composite_class(dataset, e) == cls]))


def _emotion(rng: np.random.Generator, dataset: str, composite_mode: bool,
             shares: tuple[float, ...] | None = None) -> str:
    if composite_mode:
        return _composite_emotion(rng, dataset, EXCLUDED_SHARE, shares)
    return str(rng.choice(sorted(EMOTION_PATTERNS[dataset])))


def _another_class(rng: np.random.Generator, dataset: str, emotion: str) -> str:
    """A native emotion of ``dataset`` outside ``emotion``'s composite class (another emotion where the class is
    not in the composite)."""
    own = composite_class(dataset, emotion)
    natives = sorted(EMOTION_PATTERNS[dataset])
    others = [e for e in natives if composite_class(dataset, e) and composite_class(dataset, e) != own] if own else []
    return str(rng.choice(others or [e for e in natives if e != emotion]))


def composite_counts(seed: int) -> dict[str, list[int]]:
    """Clips per subject like the real composite: uneven (a few subjects give many samples, most give few),
    summing per dataset to its composite size (plus the clips it leaves out for their labels)."""
    rng = np.random.default_rng([seed, 4409])
    counts = {}
    for dataset, subjects in COMPOSITE_SHARE.items():
        excluded = EXCLUDED_SHARE if any(not composite_class(dataset, e) for e in EMOTION_PATTERNS[dataset]) else 0
        total = int(round(COMPOSITE_SAMPLES[dataset] / (1 - excluded)))
        weights = rng.gamma(1.2, size=subjects)
        counts[dataset] = [1 + int(c) for c in rng.multinomial(total - subjects, weights / weights.sum())]
    return counts


class _Writer:
    """Renders and writes the clips of one dataset."""

    def __init__(self, cfg: DatasetConfig, dataset: str, root: Path, composite_mode: bool) -> None:
        self.cfg, self.dataset, self.root, self.composite_mode = cfg, dataset, root, composite_mode
        spec = SPECS[dataset]
        self.spec = spec
        self.size = cfg.size or spec.size
        self.fps = cfg.fps or spec.fps
        self.clips: list[Clip] = []
        self.styles: dict[str, dict[str, Any]] = {}  # subject folder -> its SubjectStyle, with diversity

    def names(self, n: int, k: int, emotion: str, rng: np.random.Generator) -> tuple[str, str, str]:
        """(subject folder, clip name, frames dir relative to root) of clip ``k`` of subject ``n``."""
        if self.dataset == "casme2":
            suffix = "f" if rng.random() < 0.6 else ""
            clip = f"EP{int(rng.integers(1, 20)):02d}_{k + 1:02d}{suffix}"
            return f"sub{n:02d}", clip, f"CASME2_RAW_selected/sub{n:02d}/{clip}"
        if self.dataset == "samm":
            sid = f"{n + 5:03d}"
            clip = f"{sid}_{int(rng.integers(1, 8))}_{k + 1}"
            return sid, clip, f"SAMM/{sid}/{clip}"
        if self.dataset == "casme3":
            sid, clip = f"spNO.{n}", "abcdefghijklmnopqrstuvwxyz"[k % 26] * (1 + k // 26)
            return sid, clip, f"part_A/data/part_A/{sid}/{clip}/color"
        short = {"negative": "ne", "positive": "po", "surprise": "sur"}[emotion]
        clip = f"s{n}_{short}_{k + 1:02d}"
        return f"s{n}", clip, f"SMIC_all_raw/HS/s{n}/micro/{emotion}/{clip}"

    def frame_name(self, subject: str, number: int) -> str:
        if self.dataset == "casme2":
            return f"img{number}.jpg"
        if self.dataset == "samm":
            return f"{subject}_{number:05d}.jpg"
        if self.dataset == "casme3":
            return f"{number}.jpg"
        return f"image{number:06d}.bmp"

    def first_frame(self, rng: np.random.Generator) -> int:
        lo, hi = {"casme2": (1, 250), "samm": (1000, 9000), "smic": (1000, 90000),
                  "casme3": (100, 3000)}[self.dataset]
        return int(rng.integers(lo, hi))

    def write_subject(self, n: int, clips: int, progress: Any) -> None:
        cfg, div = self.cfg, self.cfg.diversity
        rng = np.random.default_rng([cfg.seed, self.spec.identity_offset, n])
        spread = div.identity_spread if div else 1.0
        subject = make_subject(self.spec.identity_offset + n, cfg.seed, spread)
        style = draw_style(div, np.random.default_rng([cfg.seed, self.spec.identity_offset, n, 4241])) if div \
            else None
        h = self.size[1]
        iod = 0.25 * h * cfg.face_scale * {"smic": 0.8, "casme3": 0.6}.get(self.dataset, 1.0)
        renderer = FaceRenderer(subject, self.size, iod, gray=self.spec.gray)
        for k in range(clips):
            emotion = _emotion(rng, self.dataset, self.composite_mode, div.class_shares if div else None)
            aus = parse_aus(str(rng.choice(EMOTION_PATTERNS[self.dataset][emotion])))
            coded, coded_aus, shown, note = emotion, aus, "", ""
            if div is not None and style is not None:
                ev, coded, coded_aus, note = self._vary(div, style, emotion, aus, [n, k])
                shown = emotion
            else:
                ev = micro_event(rng, self.fps, 0, aus, emotion, cfg.ranges)
            events: list[PlannedExpression] = [ev]
            # the blink is drawn whether or not blinks are on, so that switching them off changes nothing else
            if rng.random() < cfg.blink_probability:
                blink = blink_event(rng, self.fps, int(rng.integers(0, ev.offset)), cfg.ranges)
                if cfg.nuisances.blinks:
                    events.append(blink)
            subject_dir, clip, rel = self.names(n, k, emotion, rng)
            first = self.first_frame(rng)
            out = self.root / rel
            out.mkdir(parents=True, exist_ok=True)
            count = ev.offset + 1
            for i, frame in enumerate(render_sequence(renderer, events, count, self.fps, cfg.nuisances, rng)):
                write_image(out / self.frame_name(subject_dir, first + i), frame)
            hide = cfg.quirks and self.dataset == "casme2" and rng.random() < cfg.missing_apex_rate
            apex_written = "/" if hide else ""
            self.clips.append(Clip(
                self.dataset, subject_dir, clip, first, first + ev.apex, first + ev.offset, coded,
                composite_class(self.dataset, coded), format_aus(list(coded_aus)), rel,
                round(ev.amplitude, 4), apex_written, shown, note))
            progress.update(1)
        if style is not None:
            self.styles[subject_dir] = asdict(style)

    def _vary(self, div: Diversity, style: SubjectStyle, emotion: str, aus: list[AUCode],
              key: list[int]) -> tuple[PlannedExpression, str, list[AUCode], str]:
        """The event this subject shows for a sample coded ``emotion`` / ``aus``, the label and AUs its
        annotation gives, and its note; drawn from a stream of its own per sample."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, self.spec.identity_offset, *key, 4243])
        other = _another_class(rng, self.dataset, emotion)
        other_aus = parse_aus(str(rng.choice(EMOTION_PATTERNS[self.dataset][other])))
        varied = vary_sample(div, style, aus, other_aus, rng)
        lo, hi = cfg.ranges.micro_seconds
        ranges = replace(cfg.ranges, micro_seconds=(max(MICRO_MIN_S, lo * style.tempo),
                                                    min(MICRO_MAX_S, hi * style.tempo)))
        ev = micro_event(rng, self.fps, 0, list(varied.aus), emotion, ranges, style.rise)
        ev = replace(ev, amplitude=ev.amplitude * style.gain, gains=varied.gains)
        coded = _another_class(rng, self.dataset, emotion) if varied.note == "mislabelled" else emotion
        return ev, coded, list(varied.coded_aus), varied.note

    def write_annotations(self) -> None:
        if self.dataset == "casme2":
            header: list[Cell] = ["Subject", "Filename", None, "OnsetFrame", "ApexFrame", "OffsetFrame", None,
                      "Action Units", "Estimated Emotion"]
            rows: list[list[Cell]] = [header]
            for c in self.clips:
                apex: str | int = c.apex_written or c.apex
                rows.append([int(c.subject[3:]), c.clip, None, c.onset, apex, c.offset, None, c.aus, c.emotion])
            write_xlsx(self.root / "CASME2-coding-20190701.xlsx", rows, "Sheet1")
        elif self.dataset == "samm":
            rows = [["SAMM Micro-Movement FACS Codes (synthetic data written by edge-mer synth)"]]
            notes = ["Columns follow the SAMM release; frame numbers are those of the frame files.",
                     "Onset/Apex/Offset: frame numbers; Duration: frames.",
                     "Type: micro-movement length class.",
                     "Action Units: FACS codes, R/L for one side.",
                     "Estimated Emotion: the coder's estimate."]
            rows += [[n] for n in notes]
            rows += [[] for _ in range(13 - len(rows))]
            rows.append(["Subject", "Filename", "Inducement Code", "Onset Frame", "Apex Frame",
                         "Offset Frame", "Duration", "Type", "Action Units", "Notes", "Estimated Emotion"])
            for c in self.clips:
                rows.append([int(c.subject), c.clip, int(c.clip.split("_")[1]), c.onset, c.apex, c.offset,
                             c.offset - c.onset + 1, "Micro - 1/2", c.aus, None, c.emotion])
            write_xlsx(self.root / "SAMM_Micro_FACS_Codes_v2.xlsx", rows, "FACS_Codes")
        elif self.dataset == "casme3":
            rows = [["Subject", "Filename", "Onset", "Apex", "Offset", "AU", "Objective class", "emotion"]]
            for c in self.clips:
                rows.append([c.subject, c.clip, c.onset, c.apex, c.offset, c.aus, None, c.emotion])
            write_xlsx(self.root / CASME3_SHEET, rows, "label")


def _composite_rows(clips: list[Clip], quirks: bool) -> list[list[Cell]]:
    rows: list[list[Cell]] = []
    for c in clips:
        if not c.composite:
            continue
        subject, clip = c.subject, c.clip
        if c.dataset == "smic" and quirks:
            num = int(subject[1:])
            subject, clip = f"s{num:02d}", f"s{num:02d}" + clip[len(c.subject):]
        rows.append([c.dataset, subject, clip, COMPOSITE_LABELS[c.composite]])
    return rows


def _split_subjects(total: int) -> dict[str, int]:
    if total < 3:
        raise UserError("the megc2019 layout needs at least 3 subjects (one per dataset)")
    share = {k: max(1, int(round(total * v / 68))) for k, v in COMPOSITE_SHARE.items()}
    share["samm"] += total - sum(share.values())
    return share


def write_dataset(cfg: DatasetConfig, out: Path, progress: bool = True) -> Summary:
    """Generate a dataset in ``cfg.layout``'s real layout under ``out``: built beside it and swapped in whole, so
    an interrupted run leaves ``out`` as it was (a dataset already there is replaced only by a complete one)."""
    if cfg.layout not in LAYOUTS:
        raise UserError(f"unknown layout {cfg.layout!r}; choose from {', '.join(LAYOUTS)}")
    if cfg.like_composite and (cfg.layout != "megc2019" or cfg.subjects != sum(COMPOSITE_SHARE.values())):
        raise UserError("clips per subject like the real composite need the megc2019 layout and its "
                        f"{sum(COMPOSITE_SHARE.values())} subjects")
    if cfg.subjects < 1 or cfg.clips_per_subject < 1:
        raise UserError("--subjects and --clips-per-subject must be at least 1")
    start = time.perf_counter()
    with staged_folder(out) as staging:
        summary = _write_dataset(cfg, staging, progress)
    summary.root = str(out)
    summary.seconds = round(time.perf_counter() - start, 3)
    return summary


def _write_dataset(cfg: DatasetConfig, out: Path, progress: bool) -> Summary:
    from tqdm import tqdm

    composite = cfg.layout == "megc2019"
    plan = _split_subjects(cfg.subjects) if composite else {cfg.layout: cfg.subjects}
    folders = {"casme2": "CASME2", "samm": "SAMM", "smic": "SMIC"}
    if cfg.like_composite:  # write_dataset checked: megc2019 with its 68 subjects
        per_subject = composite_counts(cfg.seed)
    else:
        per_subject = {dataset: [cfg.clips_per_subject] * count for dataset, count in plan.items()}
    total = sum(sum(v) for v in per_subject.values())
    writers = []
    with tqdm(total=total, desc=f"synth {cfg.layout}", unit="clip", disable=not progress) as bar:
        for dataset, count in plan.items():
            root = out / folders[dataset] if composite else out
            w = _Writer(cfg, dataset, root, composite)
            for n in range(1, count + 1):
                w.write_subject(n, per_subject[dataset][n - 1], bar)
            w.write_annotations()
            writers.append(w)
    clips = [c for w in writers for c in w.clips]
    if composite:
        for c in clips:
            c.frames_dir = f"{folders[c.dataset]}/{c.frames_dir}"
    if composite:
        write_csv(out / COMPOSITE_CSV, _composite_rows(clips, cfg.quirks))
    summary = Summary(cfg.layout, str(out), samples=len(clips), subjects=sum(plan.values()))
    summary.frames = sum(c.offset - c.onset + 1 for c in clips)
    for c in clips:
        summary.classes[c.emotion] = summary.classes.get(c.emotion, 0) + 1
        if c.composite:
            summary.composite[c.composite] = summary.composite.get(c.composite, 0) + 1
    styles = {f"{w.dataset}/{k}": v for w in writers for k, v in w.styles.items()}
    _write_manifest(out, cfg, clips, styles)
    return summary


def _write_manifest(out: Path, cfg: DatasetConfig, clips: list[Clip], styles: dict[str, Any]) -> None:
    config = asdict(cfg)
    doc: dict[str, Any] = {"generator": "edge-mer synth dataset", "synthetic": True, "config": config,
                           "faces": photo_names(), "clips": [asdict(c) for c in clips]}
    if styles:
        doc["subject_styles"] = styles
    write_text(out / MANIFEST, json.dumps(doc, indent=1, sort_keys=True) + "\n")
