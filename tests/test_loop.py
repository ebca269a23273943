"""The device loop through the CLI: edge-mer run on the demo and on files, events on disk, Ctrl-C, bench."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from edge_mer.errors import UserError

pytest.importorskip("cv2")
pytest.importorskip("onnxruntime")

EVENT_KEYS = {"onset_ts", "apex_ts", "offset_ts", "onset", "apex", "offset", "label", "probs", "latency_ms"}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[Path, dict, str]:
    d = tmp_path_factory.mktemp("run")
    env_cache = str(d / "cache")
    proc = subprocess.run([sys.executable, "-m", "edge_mer", "run", "--demo", "--demo-seconds", "24",
                           "--no-realtime", "--events", str(d / "events.jsonl"), "--json-summary",
                           str(d / "summary.json")], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, XDG_CACHE_HOME=env_cache))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return d, json.loads((d / "summary.json").read_text()), proc.stdout


def test_demo_run_finds_and_labels_micro_expressions(demo_run):
    d, summary, stdout = demo_run
    lines = (d / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    assert events, "the demo produced no event"
    assert stdout.splitlines() == lines  # the same JSON lines on stdout and on disk
    for e in events:
        assert set(e) >= EVENT_KEYS
        assert e["onset"] <= e["apex"] <= e["offset"]
        assert e["label"] in ("negative", "positive", "surprise")
        assert abs(sum(e["probs"].values()) - 1) < 1e-3
    assert summary["frames"] == 24 * 30
    assert summary["ring"]["dropped"] == 0 and summary["skipped_frames"] == 0
    assert summary["truth"]["tp"] >= 1
    assert summary["truth"]["labelled"] == summary["truth"]["tp"]  # the demo's truth names every class
    assert summary["events"] == len(events)
    assert {"capture", "signal", "flow", "inference", "total"} <= set(summary["timing"]["stages_ms"])


def test_the_demo_summary_says_how_many_found_expressions_carry_the_truths_label():
    from edge_mer.runtime.session import format_summary, match_truth
    from edge_mer.spot.truth import TruthInterval

    truth = [TruthInterval(10, 20, "micro", label="positive"), TruthInterval(40, 50, "micro", label="surprise"),
             TruthInterval(70, 80, "micro", label="negative"), TruthInterval(100, 110, "blink")]
    events = [(10, 20, "positive"), (41, 50, "negative"), (100, 110, "surprise")]  # right, wrong, a blink
    t = match_truth(events, truth, frames=200)
    assert (t["tp"], t["fp"], t["fn"]) == (2, 1, 1)
    assert (t["labelled"], t["labelled_right"]) == (2, 1)
    summary = {"frames": 200, "fps": 30.0, "spots": 3, "events": 3, "skipped_frames": 0, "ring": {},
               "event_latency_ms": None, "timing": {"stages_ms": {}, "peak_rss_mb": 300, "cpu_share": 0.3}, "sinks": [],
               "messages": [], "truth": t}
    assert "TP 2, FP 1, FN 1" in format_summary(summary)
    assert format_summary(summary).endswith("1 of the 2 found labelled as the truth")


def test_the_packaged_demo_model_was_checked_on_subjects_it_never_saw():
    """scripts/make_demo_model.py installs the demo only when its INT8 file keeps the UF1 of its FP32 companion
    within 0.01 on a draw whose subjects it never saw; both sidecars say what it learned from and carry the check,
    and both files are the ones the check scored (their sha256 match the sidecars)."""
    from edge_mer.runtime.artifact import DEMO_MODEL, load_artifact

    for path in (DEMO_MODEL, DEMO_MODEL.with_name("demo.int8.fp32.onnx")):
        meta = load_artifact(path).meta
        check, data = meta["int8_check"], meta["training_data"]
        assert check["uf1_fp32"] - check["uf1_int8"] <= 0.01 and check["samples"] >= 400
        assert data["generator"].endswith("--diverse") and data["samples"] >= 400
        assert f"data seed {data['data_seed']} " not in check["features"]  # scored on another draw


def test_run_on_a_video_file(tmp_path):
    clip = tmp_path / "clip.mp4"
    run_cli("synth", "video", "--seconds", "8", "--size", "320x240", "--out", str(clip), "--quiet", check=True)
    proc = run_cli("run", "--source", str(clip), "--no-realtime", "--quiet", "--json-summary",
                   str(tmp_path / "s.json"), "--record", str(tmp_path / "overlay.mp4"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["frames"] == 240 and s["no_face_frames"] < 30
    import cv2

    rec = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    frames = int(rec.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = rec.read()
    rec.release()
    # every frame with a face is recorded, with the face box drawn in green
    assert ok and frames == 240 - s["no_face_frames"]
    green = (first[..., 1] > 200) & (first[..., 0] < 80) & (first[..., 2] < 80)
    assert green.sum() > 100


def test_a_file_played_as_fast_as_possible_keeps_its_spots_and_a_cut_one_says_so(tmp_path):
    """As fast as possible, capture waits for the loop and leaves it the frames a spot looks back into: every
    spot becomes an event. A cut file ends with a warning and the frames it gave in the summary."""
    clip = tmp_path / "clip.avi"  # 3 micro-expressions
    run_cli("synth", "video", "--seconds", "12", "--out", str(clip), "--quiet", check=True)
    proc = run_cli("run", "--source", str(clip), "--no-realtime", "--quiet", "--json-summary", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["spots"] >= 1 and s["events"] == s["spots"] and s["missed_spots"] == 0, s
    assert s["source"] == {"frames": 360, "announced": 360, "ended_early": None}
    data = clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    proc = run_cli("run", "--source", str(cut), "--no-realtime", "--quiet", "--json-summary", str(tmp_path / "c.json"))
    assert proc.returncode == 0, proc.stderr
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["frames"] == c["source"]["frames"] < 360 and c["source"]["announced"] == 360
    assert f"ended after {c['frames']} frames of the 360" in c["source"]["ended_early"]
    assert "warning: " in proc.stderr and "the results cover the frames read" in proc.stderr


def test_bad_sources_are_one_line(tmp_path):
    for args, needle in ((["--source", str(tmp_path / "missing.mp4")], "missing.mp4"),
                         (["--camera", "7"], "/dev/video7"),
                         (["--demo", "--camera", "0"], "choose one of")):
        proc = run_cli("run", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edge-mer: error:"), proc.stderr
        assert needle in proc.stderr
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    proc = run_cli("run", "--source", str(broken))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_a_sidecar_of_another_export_is_refused_before_the_first_frame(tmp_path):
    """An ONNX file whose sidecar promises another crop size: one line when the model is opened, not a crash at
    the first spot."""
    from edge_mer.runtime.artifact import DEMO_MODEL, sidecar_path

    model = tmp_path / "m.onnx"
    model.write_bytes(DEMO_MODEL.read_bytes())
    meta = json.loads(sidecar_path(DEMO_MODEL).read_text())
    meta["config"]["size"] = 64
    meta.pop("companion", None)
    sidecar_path(model).write_text(json.dumps(meta))
    proc = run_cli("run", "--demo", "--model", str(model), "--events", str(tmp_path / "e.jsonl"))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("edge-mer: error:") and "Traceback" not in proc.stderr
    assert "its sidecar says [batch, 3, 64, 64]" in proc.stderr and not (tmp_path / "e.jsonl").exists()


def test_display_without_a_gui_says_what_to_do_instead(tmp_path):
    """--display with a headless OpenCV or no desktop session: one line pointing to --record, nothing written."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "edge_mer", "run", "--demo", "--display", "--events",
                           str(tmp_path / "events.jsonl")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edge-mer: error: --display needs"), proc.stderr
    assert "--record" in proc.stderr
    assert not (tmp_path / "events.jsonl").exists()


def _start_demo(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "edge_mer", "run", "--demo", "--demo-seconds", "60", "--events",
                             str(events), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if events.exists() and events.read_text().count("\n") >= 1:
            return proc, events
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("no event within 120 s")


def test_killed_process_loses_no_reported_event(tmp_path):
    proc, events = _start_demo(tmp_path)
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    lines = events.read_text().splitlines()
    assert lines and all(set(json.loads(x)) >= EVENT_KEYS for x in lines)  # complete lines only
    printed = [x for x in out.splitlines() if x.startswith("{")]
    assert set(printed) <= set(lines)


@pytest.mark.parametrize(("signum", "said"), [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM"),
                                             (signal.SIGHUP, "SIGHUP")])
def test_a_stop_signal_ends_the_run_cleanly_with_a_summary(tmp_path, signum, said):
    """Ctrl-C at a terminal, SIGTERM from systemd stopping the service, SIGHUP from a closed terminal."""
    summary = tmp_path / "summary.json"
    proc, events = _start_demo(tmp_path, "--json-summary", str(summary))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert f"stopped by {said}: " in err and "frames at" in err
    done = json.loads(summary.read_text())
    assert done["stopped_by"] == said and done["events"] == len(events.read_text().splitlines()) >= 1


def test_a_full_disk_loses_no_event_already_written(tmp_path, full_disk):
    """--events on a disk that fills up mid-run: the earlier lines stay byte for byte, the file holds only whole
    events, every event still reaches stdout, and the summary counts the ones the file missed."""
    events = full_disk / "events.jsonl"
    earlier = json.dumps({"apex": 35, "label": "positive", "note": "an earlier run"}) + "\n"
    events.write_text(earlier * ((4096 - 300) // len(earlier)))  # one page, nearly full
    before = events.read_bytes()
    (full_disk / "filler").write_bytes(bytes(4096))  # the other page
    proc = subprocess.run([sys.executable, "-m", "edge_mer", "run", "--demo", "--demo-seconds", "24", "--no-realtime",
                           "--events", str(events), "--json-summary", str(tmp_path / "s.json")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "s.json").read_text())
    printed = proc.stdout.splitlines()
    data = events.read_bytes()
    assert data.startswith(before) and data.endswith(b"\n")
    added = [json.loads(x) for x in data[len(before):].decode().splitlines()]
    assert len(printed) == s["events"] >= 2  # stdout got every event
    assert [json.loads(x) for x in printed[: len(added)]] == added  # the file got the first ones, whole
    f = s["sinks"][0]
    assert f["lost"] >= 1 and f["delivered"] == len(added) and f["delivered"] + f["lost"] == s["events"]
    assert "No space left on device" in f["failure"] and "did not reach" in proc.stderr


def test_events_after_a_cut_line_start_a_line_of_their_own(tmp_path):
    """A line cut by a kill or a full disk in an earlier run is dropped when the file is opened again; the whole
    lines before it stay."""
    from edge_mer.runtime.events import Event, EventWriter

    path = tmp_path / "events.jsonl"
    whole = '{"label": "positive", "onset": 3}\n'
    path.write_text(whole + '{"label": "nega')
    writer = EventWriter(path, stdout=False)
    writer.write(Event(1.0, 1.1, 1.2, 30, 33, 36, "surprise", {"surprise": 1.0}, 5.0))
    writer.close()
    lines = path.read_text().splitlines()
    assert lines[0] == whole.strip() and [json.loads(x)["label"] for x in lines] == ["positive", "surprise"]


def test_events_never_cut_a_file_that_is_not_theirs(tmp_path):
    """--events onto the video being read, or onto any file that does not end in events: one line, the file
    untouched."""
    clip = tmp_path / "clip.avi"
    clip.write_bytes(bytes(range(256)) * 40)
    notes = tmp_path / "notes.txt"
    notes.write_text("a first line\nand a last line without its end")
    before = clip.read_bytes(), notes.read_bytes()
    proc = run_cli("run", "--source", str(clip), "--events", str(clip))
    assert proc.returncode == 2 and "also this command's input" in proc.stderr and proc.stderr.count("\n") == 1
    proc = run_cli("run", "--demo", "--max-frames", "5", "--events", str(notes))
    assert proc.returncode == 2 and "does not end in events" in proc.stderr, proc.stderr
    assert (clip.read_bytes(), notes.read_bytes()) == before


def test_bench_model_only_and_loop(tmp_path):
    out = tmp_path / "models.json"
    proc = run_cli("bench", "--model-only", "--runs", "20", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["precision"] for r in rows} == {"int8", "fp32"}  # the packaged file and its companion
    assert all(r["p50"] > 0 and r["p50"] <= r["p95"] <= r["p99"] for r in rows)
    assert "| backend |" in proc.stdout
    out = tmp_path / "loop.json"
    proc = run_cli("bench", "--frames", "150", "--backend", "onnxruntime", "--flow", "opencv-dis", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    (row,) = [r for r in json.loads(out.read_text())["rows"] if r["precision"] == "int8"]
    assert row["frames"] == 150 and row["fps"] > 0
    assert {"capture", "signal", "total"} <= set(row["stages_ms"])


BLOCK_TORCH = """
import sys
sys.modules["torch"] = None
from edge_mer.cli import main
sys.exit(main(["run", "--demo", "--demo-seconds", "6", "--no-realtime", "--quiet"]))
"""


def test_run_needs_no_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "180 frames" in proc.stderr


def test_auto_flow_follows_the_model_and_falls_back_from_cuda(capsys):
    from edge_mer.flow.opencv import has_tvl1
    from edge_mer.runtime.gpu import cuda_unavailable
    from edge_mer.runtime.session import open_stage, pick_flow

    dis_model = {"features": {"feature": {"flow": "dis"}}}
    tvl1_model = {"features": {"feature": {"flow": "tvl1"}}}
    assert pick_flow("auto", dis_model) == "opencv-dis"  # never TV-L1 inputs for a model trained on DIS
    assert pick_flow("opencv-tvl1", dis_model) == "opencv-tvl1"  # an explicit choice stands
    cpu_tvl1 = "opencv-tvl1" if has_tvl1() else "opencv-dis"
    assert pick_flow("auto", tvl1_model) == ("cuda" if cuda_unavailable() is None else cpu_tvl1)
    for option in ({"oversample": 2}, {"head": "removed"}):  # the CUDA stage computes these too
        other = {"features": {"feature": {"flow": "tvl1", **option}}}
        assert pick_flow("auto", other) == pick_flow("auto", tvl1_model)
    if cuda_unavailable() is not None:
        name, stage = open_stage("auto", "cuda", 112)  # as if the CUDA stage had looked usable
        assert name == cpu_tvl1 and stage.name == cpu_tvl1 and stage.size == 112
        assert "note: the cuda flow stage is not available" in capsys.readouterr().err
        with pytest.raises(UserError, match="cuda flow stage"):
            open_stage("cuda", "cuda", 112)  # asked for by name: an error, not a fallback


def test_a_model_trained_on_difference_textures_is_refused(tmp_path):
    """The device stages compute the apex texture: a model trained on another texture input would get inputs it
    never saw and still print spots, so it is refused with one line before anything runs."""
    from edge_mer.runtime.artifact import default_model, sidecar_path

    model = tmp_path / "difference.onnx"
    shutil.copy(default_model(), model)
    meta = json.loads(sidecar_path(default_model()).read_text())
    meta["features"]["feature"]["texture"] = "difference"  # as training on data prepare --texture difference
    sidecar_path(model).write_text(json.dumps(meta))
    proc = run_cli("run", "--demo", "--model", str(model), "--max-frames", "30", "--quiet")
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("note: ")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert errors[0].startswith("edge-mer: error: the model was trained on difference textures")


@pytest.mark.parametrize(("option", "value", "says"), [("oversample", 2, "flow 2x finer"),
                                                       ("head", "removed", "head motion removed")])
def test_a_model_trained_on_other_flow_gets_that_flow(tmp_path, option, value, says):
    """A model trained on features of ``data prepare --oversample 2`` is given flow computed on crops twice as fine
    and averaged back, one of ``--head removed`` flow without the head's motion, as it was trained; the run says
    so on its first line."""
    from edge_mer.runtime.artifact import default_model, sidecar_path

    model = tmp_path / "other.onnx"
    shutil.copy(default_model(), model)
    meta = json.loads(sidecar_path(default_model()).read_text())
    meta["features"]["feature"] |= {"oversample": 1, "head": "kept"}  # the plain flow, then the one option
    meta["features"]["feature"][option] = value
    sidecar_path(model).write_text(json.dumps(meta))
    proc = run_cli("run", "--demo", "--model", str(model), "--max-frames", "300", "--quiet",
                   "--json-summary", str(tmp_path / "s.json"))
    assert proc.returncode == 0, proc.stderr
    assert f"-> opencv-dis ({says}) ->" in proc.stderr
    assert json.loads((tmp_path / "s.json").read_text())["frames"] == 300


@pytest.mark.parametrize(("record", "says"), [("overlay.txt", "cannot record to a .txt file"),
                                              ("missing/overlay.mp4", "does not exist or is not writable")])
def test_a_recording_that_cannot_be_written_is_refused_before_the_run(tmp_path, record, says):
    proc = run_cli("run", "--demo", "--max-frames", "30", "--record", str(tmp_path / record), "--quiet")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("edge-mer: error: --record ")
    assert says in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / record).exists()
