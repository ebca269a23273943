"""What a loader returns: samples, the problems met while reading, and a summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Sample:
    """One micro-expression clip. Frame numbers are those of the frame files."""

    dataset: str
    subject: str  # as the folders name it: sub01, 006, s1, spNO.1
    clip: str  # unique within the subject
    onset: int
    apex: int | None  # None until an apex policy chose one
    offset: int
    frames_dir: str
    onset_path: str | None
    apex_path: str | None
    offset_path: str | None
    native: str  # the dataset's own label
    composite: str  # negative / positive / surprise, or "" when MEGC excludes it
    aus: str = ""
    row: int | None = None  # annotation row, 1-based as a spreadsheet shows it
    apex_source: str = "annotation"  # or the apex policy that chose it

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.subject}/{self.clip}"

    @property
    def subject_key(self) -> str:
        """Subjects of different datasets are different people."""
        return f"{self.dataset}/{self.subject}"

    @property
    def complete(self) -> bool:
        return bool(self.onset_path and self.apex_path and self.offset_path)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "id": self.id}


@dataclass
class Problem:
    kind: str  # missing-frames, unparseable-row, missing-apex, unknown-label, not-in-dataset, label-mismatch
    message: str
    row: int | None = None
    file: str | None = None
    sample: str | None = None

    def __str__(self) -> str:
        where = f"{self.file or ''}{':' if self.file and self.row else ''}{f'row {self.row}' if self.row else ''}"
        return f"{where + ': ' if where else ''}{self.message}"


@dataclass
class DatasetIndex:
    dataset: str
    root: str
    annotations: str | None
    samples: list[Sample] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> list[Sample]:
        """Samples with all three frames on disk and a composite class."""
        return [s for s in self.samples if s.complete and s.composite]

    def summary(self) -> dict[str, Any]:
        classes = Counter(s.native for s in self.samples)
        composite = Counter(s.composite or "excluded" for s in self.samples)
        subjects = Counter(s.subject_key if self.dataset == "megc2019" else s.subject for s in self.samples)
        return {
            "dataset": self.dataset,
            "root": self.root,
            "annotations": self.annotations,
            "samples": len(self.samples),
            "complete": sum(s.complete for s in self.samples),
            "subjects": len(subjects),
            "classes": dict(sorted(classes.items())),
            "composite": dict(sorted(composite.items())),
            "per_subject": dict(sorted(subjects.items())),
            "per_dataset": dict(sorted(Counter(s.dataset for s in self.samples).items())),
            "problems": [asdict(p) for p in self.problems],
            "notes": self.notes,
        }
