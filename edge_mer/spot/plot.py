"""The spotting signal as a PNG: value, threshold, spots and truth over time (matplotlib, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_mer.atomic import replacing, writable_folder
from edge_mer.errors import UserError

if TYPE_CHECKING:
    from edge_mer.spot.spotter import SpotResult
    from edge_mer.spot.truth import TruthInterval

TRUTH_COLOURS = {"micro": "tab:red", "macro": "tab:green", "blink": "0.6", "other": "tab:purple"}


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install matplotlib") from None
    return plt


def check_plot(out: Path) -> None:
    """Refuse a plot that could not be written before the video is processed, not after."""
    if out.suffix.lower() != ".png":
        raise UserError(f"--plot {out}: the plot is a PNG; name it FILE.png")
    if not writable_folder(out):
        raise UserError(f"--plot {out}: the folder {out.parent} does not exist or is not writable")
    _pyplot()


def plot_spots(result: SpotResult, out: Path, truth: list[TruthInterval] | None = None, title: str = "") -> Path:
    """Write ``out``: the signal's value with the threshold, spots above and truth below the curves."""
    plt = _pyplot()
    t = np.arange(len(result.values)) / result.fps
    seconds = max(float(t[-1]) if len(t) else 0.0, 1.0)
    fig, ax = plt.subplots(figsize=(min(40.0, max(10.0, seconds / 4)) + 2.5, 4.0))
    try:
        ax.plot(t, result.values, lw=0.8, color="tab:blue", label="value (face vs. k frames before)")
        ax.plot(t, result.threshold, lw=0.8, ls="--", color="black", label="threshold (median + c MAD)")
        top = float(np.nanmax(np.concatenate([result.values, [1.0]])))
        for i, s in enumerate(result.spots):
            ax.axvspan(s.onset / result.fps, (s.offset + 1) / result.fps, ymin=0.9, ymax=1.0, color="tab:orange",
                       label="spots" if i == 0 else None)
        seen: set[str] = set()
        for tr in truth or []:
            ax.axvspan(tr.onset / result.fps, (tr.offset + 1) / result.fps, ymin=0.0, ymax=0.08,
                       color=TRUTH_COLOURS.get(tr.kind, "tab:purple"),
                       label=f"truth: {tr.kind}" if tr.kind not in seen else None)
            seen.add(tr.kind)
        ax.set_ylim(0, top * 1.12)
        ax.set_xlim(0, seconds)
        ax.set_xlabel("seconds")
        ax.set_ylabel("motion (times usual)")
        ax.set_title(f"{title}: {len(result.spots)} spots" if title else f"{len(result.spots)} spots")
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=7, borderaxespad=0.0)
        fig.tight_layout()
        try:
            with replacing(out, ".png") as tmp:
                fig.savefig(tmp, dpi=100)
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
