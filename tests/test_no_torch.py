"""Devices run without torch: the CLI, doctor, face, features, metrics and the synthetic source import and
work with it blocked."""

from __future__ import annotations

import subprocess
import sys

BLOCK_TORCH = """
import sys
sys.modules["torch"] = None  # any "import torch" now raises ImportError
import edge_mer.cli, edge_mer.doctor
import edge_mer.face, edge_mer.features.prepare, edge_mer.features.cache, edge_mer.eval.metrics, edge_mer.data.loaders
from edge_mer.synth.video import VideoConfig, plan_events
from edge_mer.synth.faces import make_subject
from edge_mer.synth.render import FaceRenderer
from edge_mer.synth.timeline import activations
events = plan_events(VideoConfig(seconds=5))
r = FaceRenderer(make_subject(0, 0), (64, 64), 23.0)
frame = r.render(*activations(events, events[0].apex))
rep = edge_mer.doctor.collect()
assert rep.engines["torch"] is False, rep.engines
print("ok", frame.shape)
"""


def test_device_side_runs_with_torch_blocked():
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok (64, 64, 3)")
