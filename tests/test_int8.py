"""INT8 through the CLI: calibration sets, QAT, export with Q/DQ, PTQ, backends, evaluation of any artefact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import run_cli

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

TINY = ("--model", "mmt_test", "--epochs", "3", "--batch-size", "8", "--threads", "1", "--quiet")


def _json(*args: str) -> dict:
    return json.loads(run_cli(*args, "--json", check=True).stdout)


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """DIS features (S = 112) of a synthetic composite whose split leaves enough training samples (38) for a
    calibration set of the minimum size."""
    from edge_mer.data.synthetic import DatasetConfig, write_dataset

    d = tmp_path_factory.mktemp("int8-data")
    write_dataset(DatasetConfig(layout="megc2019", subjects=10, clips_per_subject=5, size=(160, 120), fps=40,
                                seed=11, missing_apex_rate=0.2), d / "data", progress=False)
    run_cli("data", "prepare", "--dataset", "megc2019", "--root", str(d / "data"), "--out", str(d / "features"),
            "--flow", "dis", "--quiet", check=True)
    return d / "features"


@pytest.fixture(scope="module")
def chain(features, tmp_path_factory) -> dict[str, Path]:
    """FP32 split model -> calibration set -> FP32 ONNX -> PTQ INT8; QAT -> Q/DQ ONNX, all by the CLI."""
    d = tmp_path_factory.mktemp("int8")
    f = str(features)
    run_cli("train", "--features", f, "--protocol", "split", "--out", str(d / "run"), *TINY, check=True)
    ck = d / "run" / "checkpoint.pt"
    run_cli("calibrate", "build-set", "--features", f, "--n", "32", "--checkpoint", str(ck), "--out",
            str(d / "calib.npz"), check=True)
    run_cli("export", "--checkpoint", str(ck), "--out", str(d / "model.onnx"), check=True)
    run_cli("calibrate", "--onnx", str(d / "model.onnx"), "--set", str(d / "calib.npz"), "--out",
            str(d / "model.int8.onnx"), check=True)
    run_cli("train", "--features", f, "--qat", str(ck), "--calibration", str(d / "calib.npz"), "--epochs", "2",
            "--out", str(d / "qat"), "--threads", "1", "--quiet", check=True)
    run_cli("export", "--checkpoint", str(d / "qat" / "checkpoint.pt"), "--out", str(d / "model.qat.onnx"),
            check=True)
    return {"dir": d, "features": features, "checkpoint": ck, "fp32": d / "model.onnx",
            "ptq": d / "model.int8.onnx", "qat_checkpoint": d / "qat" / "checkpoint.pt",
            "qat": d / "model.qat.onnx", "calib": d / "calib.npz"}


def _int8_but_the_motion_embeddings(checkpoint: Path, path: Path) -> tuple[int, int, dict[str, Any]]:
    """Checks that the INT8 file ``path`` of ``checkpoint``'s model runs every weighted product in INT8 but the
    motion's patch embeddings (one per patch size), which read the flow itself, and keeps in FP32 those and the
    attention products (two activations, two per block per branch) only. Returns the INT8 layers, the FP
    embeddings and ``count_qdq``'s facts.
    Linear and Conv2d layers are what the exported graph runs (the contrastive projections are training-only)."""
    from edge_mer.model.checkpoint import load_checkpoint
    from edge_mer.quant.export import count_qdq

    model, _ = load_checkpoint(checkpoint)
    embeddings = sorted(f"/motion_{p}/embed/Conv" for p in model.cfg.patch_sizes)
    layers = sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for n, m in model.named_modules()
                 if not n.startswith("project")) - len(embeddings)
    q = count_qdq(path)
    assert len(q["int8_products"]) == layers
    attention = [n for n in q["fp32_products"] if "/attn/MatMul" in n]
    assert attention and sorted(set(q["fp32_products"]) - set(attention)) == embeddings
    return layers, len(embeddings), q


def _ops(path: Path) -> dict[str, int]:
    g = onnx.load(str(path)).graph
    out: dict[str, int] = {}
    for n in g.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def test_fp32_export_matches_torch(chain, tmp_path):
    report = _json("export", "--checkpoint", str(chain["checkpoint"]), "--out", str(tmp_path / "m.onnx"))
    assert report["precision"] == "fp32" and report["max_abs_diff"] <= 1e-4
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["motion", "texture"]
    assert [o.name for o in model.graph.output] == ["logits"]
    # opset 13 by default: TensorRT 8.5 and the ONNX Runtime 1.10 of JetPack 5.1's numpy read it
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
    assert "QuantizeLinear" not in _ops(tmp_path / "m.onnx")
    side = json.loads((tmp_path / "m.onnx.json").read_text())
    import hashlib

    assert side["sha256"] == hashlib.sha256((tmp_path / "m.onnx").read_bytes()).hexdigest()
    assert side["class_names"] == ["negative", "positive", "surprise"]
    assert side["inputs"]["motion"]["shape"] == ["batch", 3, 112, 112]
    assert side["normalisation"]["flow_unit_px_at_112"] == 2.0
    assert side["config"]["size"] == 112 and side["trained_on"]


@pytest.mark.parametrize("name, changes, first", [
    ("mmt_test", {}, "branches.motion_16.embed"),
    ("mmt_test", {"stem": "conv", "patch_sizes": [16, 28]}, "branches.motion_16.stem.0"),
    ("mmt_test", {"ensemble_with": "ststnet_regions"}, "lead.branches.motion_16.embed"),
    ("ststnet_regions", {"asymmetry": True, "mirror_average": True}, "model.streams.0"),
    ("htnet_56", {}, "embed.1"),
])
def test_qat_and_ptq_leave_the_same_layers_fp_those_that_read_the_motion(name, changes, first, tmp_path):
    """QAT finds the layers that read the motion in the torch model, PTQ in the exported graph: the same layers
    for every architecture (a conv stem's first convolution, not the patch embedding after it; HTNet's patch
    embedding), and after QAT's calibration those layers have no quantizer on while the rest have theirs."""
    from edge_mer.model.build import build_model
    from edge_mer.model.config import model_config
    from edge_mer.quant import ptq, qat
    from edge_mer.quant.export import write_onnx

    cfg = model_config(name, size=112, changes=changes)
    model = build_model(cfg).train()
    readers = qat.motion_readers(model)
    assert model.training and readers[0] == first
    write_onnx(model.eval(), 112, tmp_path / "m.onnx")
    graph = ptq.motion_readers(onnx.load(str(tmp_path / "m.onnx")))
    layers = dict(model.named_modules())
    assert [type(layers[n]).__name__ for n in readers] == ["Conv2d" if g.op_type == "Conv" else "Linear"
                                                            for g in graph]
    assert all(n.split(".")[-1] in g.name for n, g in zip(readers, graph))
    pytest.importorskip("modelopt")
    rng = np.random.default_rng(0)
    motion, texture = (rng.normal(size=(4, c, 112, 112)).astype(np.float32) for c in (3, 1))
    fake = qat.quantize(build_model(cfg), motion, texture)
    on = {n.rsplit(".", 1)[0] for n, m in fake.named_modules()
          if type(m).__name__ == "TensorQuantizer" and m.is_enabled}
    assert not on & set(readers)
    weighted = {n for n, m in fake.named_modules() if type(m).__name__ in ("QuantConv2d", "QuantLinear")}
    assert weighted - set(readers) - {n for n in weighted if "project" in n} <= on


def test_qat_graph_has_qdq_around_every_weighted_product_but_those_that_read_the_motion(chain):
    """Every weighted product runs in INT8 except the motion's patch embeddings (one per patch size), which read
    the flow itself: an INT8 step at its range is as large as a weak mover's motion, so they carry no Q/DQ."""
    layers, _, q = _int8_but_the_motion_embeddings(chain["qat_checkpoint"], chain["qat"])
    ops = _ops(chain["qat"])
    # one activation Q/DQ pair per INT8 layer, and the weight as an INT8 constant behind its own DQ
    assert ops["QuantizeLinear"] == layers
    assert ops["DequantizeLinear"] == 2 * layers
    assert any("texture" in n and "embed" in n for n in q["int8_products"])  # the texture's embedding is INT8
    g = onnx.load(str(chain["qat"])).graph
    int8_weights = [i for i in g.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) == layers
    side = json.loads(chain["qat"].with_name("model.qat.onnx.json").read_text())
    assert side["precision"] == "int8" and side["quantization"]["method"] == "qat"


def _ort_probabilities(path: Path, motion: np.ndarray, texture: np.ndarray, integer_kernels: bool) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not integer_kernels:  # keep the Q/DQ pairs as float arithmetic instead of fusing them into integer kernels
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    logits = session.run(None, {"motion": motion, "texture": texture})[0]
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_qat_onnx_runs_like_the_fake_quantized_torch_model(chain):
    from edge_mer.features.cache import FeatureSet
    from edge_mer.runtime.backends import open_backend

    fs = FeatureSet.load(chain["features"])
    torch_p = open_backend("torch", chain["qat_checkpoint"]).infer(fs.motion, fs.texture)
    # the Q/DQ graph computed as written is the fake-quantized model: only float rounding differs
    float_diff = np.abs(_ort_probabilities(chain["qat"], fs.motion, fs.texture, False) - torch_p)
    assert np.median(float_diff) < 1e-5 and float_diff.max() < 1e-2, (np.median(float_diff), float_diff.max())
    # ONNX Runtime's own INT8 kernels round differently (on x86 without VNNI its u8s8 products saturate 16-bit
    # pair sums): values move, but no decision changes beyond a near-tie
    ort_p = open_backend("onnxruntime", chain["qat"], precision="file").infer(fs.motion, fs.texture)
    diff = np.abs(ort_p - torch_p)
    assert diff.max() < 0.1, diff.max()
    flipped = ort_p.argmax(1) != torch_p.argmax(1)
    top2 = np.sort(torch_p, 1)[:, -2:]
    assert (top2[flipped, 1] - top2[flipped, 0] < 2 * diff.max()).all(), "a decision changed beyond a near-tie"


def test_ptq_graph_and_agreement_with_fp32(chain):
    """PTQ quantizes what QAT does: every weighted product but the motion's patch embeddings, which read the flow
    itself, and the sidecar counts both."""
    from edge_mer.runtime.artifact import sidecar_path

    layers, readers, _ = _int8_but_the_motion_embeddings(chain["checkpoint"], chain["ptq"])
    quant = json.loads(sidecar_path(chain["ptq"]).read_text())["quantization"]
    assert (quant["quantized_nodes"], quant["fp32_motion_readers"]) == (layers, readers)
    g = onnx.load(str(chain["ptq"])).graph
    ln_inputs = {i for n in g.node if n.op_type in ("ReduceMean", "Softmax") for i in n.input}
    producers = {o: n.op_type for n in g.node for o in n.output}
    assert not any(producers.get(i) == "DequantizeLinear" for i in ln_inputs), "Q/DQ in front of LayerNorm/softmax"
    zero_points = [n.input[2] for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    inits = {i.name: i for i in g.initializer}
    from onnx import numpy_helper

    assert all(not numpy_helper.to_array(inits[z]).any() for z in zero_points if z in inits), "TensorRT needs zp 0"
    fp32 = _json("eval", "--checkpoint", str(chain["fp32"]), "--features", str(chain["features"]))
    int8 = _json("eval", "--checkpoint", str(chain["ptq"]), "--features", str(chain["features"]),
                 "--backend", "onnxruntime")
    assert int8["precision"] == "int8" and fp32["precision"] == "fp32"
    assert abs(int8["uf1"] - fp32["uf1"]) <= 0.1
    assert int8["samples"] == fp32["samples"]


def test_eval_scores_every_kind_of_artefact_on_unseen_subjects(chain):
    results = {}
    for name in ("checkpoint", "fp32", "ptq", "qat", "qat_checkpoint"):
        results[name] = _json("eval", "--checkpoint", str(chain[name]), "--features", str(chain["features"]),
                              "--unseen")
    held_out = {r["samples"] for r in results.values()}
    assert len(held_out) == 1 and all(r["seen_in_training"] == 0 for r in results.values())
    assert results["checkpoint"]["backend"].startswith("torch")
    assert results["fp32"]["backend"].startswith("onnxruntime")
    # the FP32 ONNX file is the torch model: the same predictions, so the same scores
    assert results["fp32"]["confusion"] == results["checkpoint"]["confusion"]
    # ONNX Runtime's INT8 kernels round unlike torch's fake quantization: a near-tie may move (checked per
    # sample in test_qat_onnx_runs_like_the_fake_quantized_torch_model), no more than one here
    moved = np.abs(np.array(results["qat"]["confusion"]) - np.array(results["qat_checkpoint"]["confusion"]))
    assert moved.sum() <= 2, (results["qat"]["confusion"], results["qat_checkpoint"]["confusion"])


def test_calibration_set_is_stratified_and_held_out(chain):
    from edge_mer.features.cache import FeatureSet
    from edge_mer.model.checkpoint import load_checkpoint
    from edge_mer.quant.calibset import load_set

    cs = load_set(chain["calib"], size=112)
    _, ck = load_checkpoint(chain["checkpoint"])
    assert len(cs) == 32 and set(cs.ids) <= set(ck["trained_on"])
    fs = FeatureSet.load(chain["features"])
    pool = [i for i, s in enumerate(fs.ids) if s in set(ck["trained_on"])]
    assert set(cs.meta["counts"]["class"]) == {["negative", "positive", "surprise"][fs.labels[i]] for i in pool}
    assert set(cs.meta["counts"]["dataset"]) == {fs.datasets[i] for i in pool}
    by_id = {s: i for i, s in enumerate(fs.ids)}
    assert np.array_equal(cs.motion[0], fs.motion[by_id[cs.ids[0]]])


def test_cpu_auto_precision_measures_once_and_caches(chain, tmp_path, monkeypatch):
    from edge_mer.runtime.backends import onnxruntime as ortb

    OnnxRuntimeBackend = ortb.OnnxRuntimeBackend
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    # an idle machine: a choice timed busy would be timed again once the load falls (the next test)
    monkeypatch.setattr(ortb, "other_load", lambda: 0.0)
    be = OnnxRuntimeBackend(chain["ptq"], threads=1, precision="auto")
    cache = json.loads((tmp_path / "edge-mer" / "precision.json").read_text())
    (entry,) = cache.values()
    assert be.precision == entry["choice"] and set(entry["ms"]) == {"fp32", "int8"}
    assert min(entry["ms"], key=entry["ms"].get) == entry["choice"]
    # from the FP32 file the same pair is found, and the cached choice is used
    again = OnnxRuntimeBackend(chain["fp32"], threads=1, precision="auto")
    assert again.precision == entry["choice"]
    assert len(json.loads((tmp_path / "edge-mer" / "precision.json").read_text())) == 1
    assert OnnxRuntimeBackend(chain["ptq"], precision="fp32").artifact.path == chain["fp32"]


def test_timing_in_turns_does_not_charge_one_call_for_the_handover(monkeypatch):
    """The precision choice times two sessions in turns. A call right after the other session's is slower (that
    session's threads still spin, its weights fill the caches); a session running alone never pays that, so it
    is not timed. Here "fp32" costs 1 ms, and 3 ms more when it follows "int8"; "int8" costs 2 ms: the FP32 file
    is the faster one alone, and timing in turns must say so rather than charge it for following the other."""
    from edge_mer.runtime import timing

    now = [0.0]
    last = [""]

    def call(name: str, ms: float, after: dict[str, float]) -> Callable[[], None]:
        def run() -> None:
            now[0] += (ms + after.get(last[0], 0.0)) / 1e3
            last[0] = name
        return run

    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    for block in (1, 5):
        ms = timing.interleaved_times_ms({"int8": call("int8", 2.0, {}), "fp32": call("fp32", 1.0, {"int8": 3.0})},
                                         runs=30, block=block)
        assert all(len(v) == 30 for v in ms.values())
        assert np.median(ms["fp32"]) == pytest.approx(1.0) and np.median(ms["int8"]) == pytest.approx(2.0)
    alone = timing.call_times_ms(call("fp32", 1.0, {"int8": 3.0}), runs=10)
    assert np.allclose(alone, 1.0)


def test_cpu_auto_precision_timed_while_busy_is_timed_again_when_idle(chain, tmp_path, monkeypatch):
    from edge_mer.runtime.backends import onnxruntime as ortb

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "edge-mer" / "precision.json"
    monkeypatch.setattr(ortb, "other_load", lambda: 1.5)  # other work: 1.5 runnable tasks per core
    busy = ortb.OnnxRuntimeBackend(chain["ptq"], threads=1, precision="auto")
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["busy"] is True and entry["other_load"] == 1.5
    assert "timed with the machine busy" in busy.describe()
    # still busy at the next start: the provisional choice is used as it is, not timed again
    entry["ms"] = {"fp32": 9.0, "int8": 1.0}
    entry["choice"] = "int8"
    cache.write_text(json.dumps({k: entry for k in json.loads(cache.read_text())}))
    assert ortb.OnnxRuntimeBackend(chain["fp32"], threads=1, precision="auto").choice["ms"]["fp32"] == 9.0
    # the first idle start times the pair again and keeps that for good
    monkeypatch.setattr(ortb, "other_load", lambda: 0.1)
    idle = ortb.OnnxRuntimeBackend(chain["fp32"], threads=1, precision="auto")
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["busy"] is False and entry["ms"]["fp32"] != 9.0
    assert idle.precision == entry["choice"] == min(entry["ms"], key=entry["ms"].get)
    assert "busy" not in idle.describe()
    # a choice kept before the load was recorded is provisional too
    del entry["busy"]
    entry["ms"]["fp32"] = 9.0
    cache.write_text(json.dumps({k: entry for k in json.loads(cache.read_text())}))
    monkeypatch.setattr(ortb, "other_load", lambda: 1.5)  # busy: used as it is, and said to be provisional
    assert "timed under a load not recorded" in ortb.OnnxRuntimeBackend(chain["fp32"], threads=1).describe()
    monkeypatch.setattr(ortb, "other_load", lambda: 0.1)
    ortb.OnnxRuntimeBackend(chain["fp32"], threads=1, precision="auto")
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["busy"] is False and entry["ms"]["fp32"] != 9.0
    # so is one timed idle in turns of one call (before "turn" was recorded), which charged the second file
    del entry["turn"]
    entry["ms"]["fp32"] = 9.0
    cache.write_text(json.dumps({k: entry for k in json.loads(cache.read_text())}))
    monkeypatch.setattr(ortb, "other_load", lambda: 1.5)
    assert "timed in turns of 1 call, to be timed again" in ortb.OnnxRuntimeBackend(chain["fp32"], threads=1).describe()
    monkeypatch.setattr(ortb, "other_load", lambda: 0.1)
    ortb.OnnxRuntimeBackend(chain["fp32"], threads=1, precision="auto")
    (entry,) = json.loads(cache.read_text()).values()
    assert entry["turn"] == ortb.TURN and entry["ms"]["fp32"] != 9.0


def test_bad_inputs_give_one_line(chain, tmp_path):
    from onnx import TensorProto, helper

    # an ONNX file that is not an edge-mer model
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])),
              str(foreign))
    side = json.loads(chain["fp32"].with_name("model.onnx.json").read_text())
    from edge_mer.runtime.artifact import write_sidecar

    write_sidecar(foreign, {k: v for k, v in side.items() if k not in ("format", "file", "sha256", "bytes")})
    proc = run_cli("eval", "--checkpoint", str(foreign), "--features", str(chain["features"]))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "has inputs ['x']" in proc.stderr and "'motion', 'texture'" in proc.stderr
    # a calibration set of another crop size
    from edge_mer.quant.calibset import load_set, save_set

    cs = load_set(chain["calib"])
    cs.motion, cs.texture = cs.motion[:, :, :64, :64].copy(), cs.texture[:, :, :64, :64].copy()
    save_set(cs, tmp_path / "small.npz")
    out = tmp_path / "x.int8.onnx"
    proc = run_cli("calibrate", "--onnx", str(chain["fp32"]), "--set", str(tmp_path / "small.npz"), "--out", str(out))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "holds 64x64 samples; the model takes 112x112" in proc.stderr and not out.exists()
    # a changed ONNX file no longer matches its sidecar
    changed = tmp_path / "changed.onnx"
    changed.write_bytes(chain["fp32"].read_bytes() + b"\0")
    changed.with_name("changed.onnx.json").write_text(chain["fp32"].with_name("model.onnx.json").read_text())
    proc = run_cli("eval", "--checkpoint", str(changed), "--features", str(chain["features"]))
    assert proc.returncode == 2 and "does not match its sidecar" in proc.stderr
    # no TensorRT on this machine: one line saying so
    proc = run_cli("build-engine", "--onnx", str(chain["ptq"]), "--out", str(tmp_path / "engines"))
    if proc.returncode == 2:
        assert "TensorRT" in proc.stderr and proc.stderr.count("\n") == 1
    # a QAT checkpoint cannot be fine-tuned again
    proc = run_cli("train", "--features", str(chain["features"]), "--qat", str(chain["qat_checkpoint"]), "--out",
                   str(tmp_path / "q2"), "--quiet")
    assert proc.returncode == 2 and "already a QAT checkpoint" in proc.stderr


def test_engine_from_another_tensorrt_or_module_is_refused(tmp_path):
    from edge_mer.errors import UserError
    from edge_mer.runtime.engine import GpuIdentity, api_generation, engine_name, mismatch, read_engine_info

    assert [api_generation(v) for v in ("8.5.2.2", "8.6.2", "10.3.0", "10.13.3", "11.4.0")] == \
        ["8", "8", "10", "10", "11"]
    with pytest.raises(UserError, match="too old"):
        api_generation("8.4.1")
    # every Orin module calls itself "Orin": the key tells an Orin Nano 8 GB from an AGX Orin 64 GB
    nano = GpuIdentity("Orin", "8.7", 8, 7)
    agx = GpuIdentity("Orin", "8.7", 16, 61)
    assert nano.key == "orin.sm87.8mp.7gib" and nano.key != agx.key
    name = engine_name("ab" * 32, "10.3.0", nano.key, "int8")
    assert name == "model.abababababab.trt10.3.0.orin.sm87.8mp.7gib.int8.engine"
    engine = tmp_path / name
    engine.write_bytes(b"serialized")
    engine.with_name(name + ".json").write_text(json.dumps({"format": "edge-mer-engine/1", "tensorrt": "8.5.2.2",
                                                            "gpu": nano.key, "onnx": "model.onnx"}))
    info = read_engine_info(engine)
    assert mismatch(info, "8.5.2.2", nano.key) is None
    assert "built with TensorRT 8.5.2.2; this machine has TensorRT 10.3.0" in mismatch(info, "10.3.0", nano.key)
    assert mismatch(info, "8.5.2.2", agx.key) == (f"engine {name} was built for orin.sm87.8mp.7gib; this machine "
                                                  "has orin.sm87.16mp.61gib")


def _one_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """The command failed as a user error: exit 2, one ``edge-mer: error:`` line holding every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edge-mer: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def _copy_model(src: Path, dst: Path) -> Path:
    """An ONNX file and its sidecar copied, so that a test may change the copy's sidecar."""
    import shutil

    shutil.copyfile(src, dst)
    shutil.copyfile(src.with_name(src.name + ".json"), dst.with_name(dst.name + ".json"))
    return dst


def _subset(path: Path, out: Path, n: int, zero: bool = False) -> Path:
    """The first ``n`` samples of a calibration set (their inputs zeroed with ``zero``), written to ``out``."""
    from edge_mer.quant.calibset import CalibrationSet, load_set, save_set

    cs = load_set(path)
    motion, texture = cs.motion[:n].copy(), cs.texture[:n].copy()
    if zero:
        motion[:], texture[:] = 0, 0
    save_set(CalibrationSet(motion, texture, cs.labels[:n], cs.ids[:n], cs.meta), out)
    return out


def test_the_gate_judges_agreement_error_and_variation():
    from edge_mer.quant.ptq import MIN_AGREEMENT, judge

    rng = np.random.default_rng(0)
    fp32 = rng.normal(0, 2, (64, 3))
    good = judge(fp32, fp32 + rng.normal(0, 0.05, fp32.shape))
    assert good["usable"] and not good["failed"] and good["top1_agreement"] >= MIN_AGREEMENT
    # a constant model fails however its one answer compares
    constant = judge(fp32, np.tile(fp32.mean(0), (64, 1)))
    assert not constant["usable"] and any("degenerate" in f for f in constant["failed"])
    # so does a comparison whose FP32 logits are constant: samples all alike show nothing
    alike = judge(np.tile(fp32[0], (64, 1)), np.tile(fp32[0], (64, 1)))
    assert not alike["usable"] and any("all alike" in f for f in alike["failed"])
    # and a model whose decisions and logits moved
    shuffled = judge(fp32, fp32[rng.permutation(64)])
    assert not shuffled["usable"] and any("agreement" in f for f in shuffled["failed"])
    assert any("mean logit difference" in f for f in shuffled["failed"])


def test_the_gate_fails_a_file_that_loses_accuracy_on_labelled_samples_though_it_keeps_most_decisions():
    """Ten of 256 clear decisions turned wrong: agreement and logit error pass, UF1 against the labels drops by
    more than 0.01 and fails the file; the same damage among fewer than 200 labelled samples is recorded only."""
    from edge_mer.quant.ptq import MAX_UF1_DROP, MIN_AGREEMENT, MIN_LABELLED, judge, summary

    rng = np.random.default_rng(1)
    fp32 = rng.normal(0, 2, (256, 3))
    labels = fp32.argmax(1)
    int8 = fp32.copy()
    hit = rng.choice(256, 10, replace=False)
    int8[hit] = int8[hit][:, [1, 2, 0]]  # the top logit moved to another class
    assert judge(fp32, int8)["usable"]  # without labels the gate cannot tell
    q = judge(fp32, int8, labels)
    assert q["top1_agreement"] >= MIN_AGREEMENT and q["labelled"]["uf1_fp32"] == 1.0
    assert q["labelled"]["uf1_drop"] > MAX_UF1_DROP and q["labelled"]["judged"]
    assert not q["usable"] and len(q["failed"]) == 1 and "below FP32's 1.000" in q["failed"][0]
    assert "NOT usable: UF1 against the samples' labels" in summary({**q, "inputs": "calibration samples"})
    few = judge(fp32[:MIN_LABELLED - 1], int8[:MIN_LABELLED - 1], labels[:MIN_LABELLED - 1])
    assert few["usable"] and few["labelled"]["judged"] is False and few["labelled"]["uf1_drop"] > MAX_UF1_DROP
    assert f"not judged: fewer than {MIN_LABELLED} samples" in summary({**few, "inputs": "calibration samples"})
    same = judge(fp32, fp32 + rng.normal(0, 0.01, fp32.shape), labels)
    assert same["usable"] and abs(same["labelled"]["uf1_drop"]) <= MAX_UF1_DROP  # near-ties may flip


def test_small_or_broken_calibration_sets_are_refused(chain, composite_features, tmp_path):
    from edge_mer.errors import UserError
    from edge_mer.quant.calibset import MIN_CALIBRATION_SAMPLES, load_set

    fp32 = _copy_model(chain["fp32"], tmp_path / "m.onnx")
    side = fp32.with_name("m.onnx.json").read_bytes()
    for n in (0, MIN_CALIBRATION_SAMPLES - 1):
        small = _subset(chain["calib"], tmp_path / f"n{n}.npz", n)
        out = tmp_path / f"n{n}.int8.onnx"
        proc = run_cli("calibrate", "--onnx", str(fp32), "--set", str(small), "--out", str(out))
        _one_error(proc, f"{small} holds {n} samples", f"at least {MIN_CALIBRATION_SAMPLES}")
        assert not out.exists() and not out.with_name(out.name + ".json").exists()
        assert fp32.with_name("m.onnx.json").read_bytes() == side
    # QAT refuses the empty set before any training
    proc = run_cli("train", "--features", str(chain["features"]), "--qat", str(chain["checkpoint"]), "--calibration",
                   str(tmp_path / "n0.npz"), "--out", str(tmp_path / "qat"), "--quiet")
    _one_error(proc, "holds 0 samples")
    assert not (tmp_path / "qat" / "checkpoint.pt").exists()
    # an empty, truncated, foreign or incomplete file: one line naming it
    good = chain["calib"].read_bytes()
    bad = {"empty.npz": b"", "truncated.npz": good[: len(good) // 2], "text.npz": b"not a calibration set\n" * 9}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    np.savez(tmp_path / "keys.npz", motion=np.zeros((40, 3, 112, 112), np.float32))
    proc = run_cli("calibrate", "--onnx", str(fp32), "--set", str(tmp_path / "truncated.npz"), "--out",
                   str(tmp_path / "t.int8.onnx"))
    _one_error(proc, str(tmp_path / "truncated.npz"), "damaged or truncated")
    assert not (tmp_path / "t.int8.onnx").exists()
    for name in (*bad, "keys.npz"):
        with pytest.raises(UserError, match=name) as err:
            load_set(tmp_path / name)
        assert "\n" not in str(err.value)
    # build-set: below the minimum asked for, or available
    out = tmp_path / "set.npz"
    _one_error(run_cli("calibrate", "build-set", "--features", str(chain["features"]), "--n", "12", "--out",
                       str(out)), "--n 12 asks for 12 samples", "at least 32")
    _one_error(run_cli("calibrate", "build-set", "--features", str(composite_features), "--out", str(out)),
               "only 17 samples are in", "no set was written")
    assert not out.exists()


def test_a_degenerate_int8_model_fails_the_gate_and_is_never_picked(chain, tmp_path, monkeypatch):
    from edge_mer.errors import UserError
    from edge_mer.features.cache import FeatureSet
    from edge_mer.quant.ptq import MIN_AGREEMENT, quality_gate
    from edge_mer.runtime.backends.onnxruntime import OnnxRuntimeBackend

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    fp32 = _copy_model(chain["fp32"], tmp_path / "m.onnx")
    out = tmp_path / "m.int8.onnx"
    # a good calibration: figures recorded, made the FP32 file's companion
    doc = json.loads(run_cli("calibrate", "--onnx", str(fp32), "--set", str(chain["calib"]), "--out", str(out),
                             "--json", check=True).stdout)
    q = doc["quality"]
    assert q["usable"] and q["samples"] == 32 and q["top1_agreement"] >= MIN_AGREEMENT and "calib.npz" in q["inputs"]
    assert doc["sidecar"]["quality"] == q and q["thresholds"]["min_top1_agreement"] == MIN_AGREEMENT
    # the set's labels: UF1 of both recorded, not judged from 32 samples
    assert q["labelled"]["samples"] == 32 and q["labelled"]["judged"] is False
    assert 0 < q["labelled"]["uf1_int8"] <= 1 and 0 < q["labelled"]["uf1_fp32"] <= 1
    assert json.loads(fp32.with_name("m.onnx.json").read_text())["companion"]["file"] == out.name
    # calibration samples all zero: every activation range collapses, the INT8 file answers the same to anything
    zeros = _subset(chain["calib"], tmp_path / "zeros.npz", 32, zero=True)
    _one_error(run_cli("calibrate", "--onnx", str(fp32), "--set", str(zeros), "--out", str(out)),
               f"--out {out} exists; pass --force")
    proc = run_cli("calibrate", "--onnx", str(fp32), "--set", str(zeros), "--out", str(out), "--force")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("edge-mer: warning: ") and "Traceback" not in \
        proc.stderr
    assert "NOT usable" in proc.stdout and "top-1 agreement" in proc.stdout
    q = json.loads(out.with_name("m.int8.onnx.json").read_text())["quality"]
    assert q["usable"] is False and any("degenerate" in f for f in q["failed"])
    # the earlier, good file's link is gone: the FP32 file names no companion
    assert "companion" not in json.loads(fp32.with_name("m.onnx.json").read_text())
    # on real samples (FP32's logits vary) the collapse shows too: the motion's embeddings stay FP, as in QAT, so
    # a trace of the input passes the collapsed ranges, but the logits vary a fraction of FP32's and FP32's clear
    # decisions are lost
    fs = FeatureSet.load(chain["features"])
    real = quality_gate(fp32, out, fs.motion, fs.texture, "features")
    assert not real["usable"] and real["spread_ratio"] < 0.5
    assert any("top-1 agreement" in f for f in real["failed"])
    # never picked: auto from either file runs FP32, int8 is refused, file runs what it is given
    be = OnnxRuntimeBackend(out, threads=1, precision="auto")
    assert be.artifact.path == fp32 and "failed its INT8 quality gate" in be.describe()
    assert OnnxRuntimeBackend(fp32, threads=1, precision="auto").artifact.path == fp32
    with pytest.raises(UserError, match="failed its INT8 quality gate"):
        OnnxRuntimeBackend(out, precision="int8")
    assert OnnxRuntimeBackend(out, precision="file").precision == "int8"
    _one_error(run_cli("eval", "--checkpoint", str(out), "--features", str(chain["features"]), "--precision",
                       "int8"), "failed its INT8 quality gate", "degenerate")
    # nor compiled: build-engine refuses it before it looks for TensorRT
    _one_error(run_cli("build-engine", "--onnx", str(out), "--out", str(tmp_path / "engines")),
               "failed its INT8 quality gate", "FP32 export")


def test_qat_export_records_its_gate(chain):
    from edge_mer.quant.ptq import PROBE_SAMPLES

    q = json.loads(chain["qat"].with_name("model.qat.onnx.json").read_text())["quality"]
    assert q["usable"] and q["samples"] == PROBE_SAMPLES and q["inputs"].startswith("random inputs")
    assert q["compared_with"] == "model.qat.fp32.onnx (fp32)"
    companion = json.loads(chain["dir"].joinpath("model.qat.fp32.onnx.json").read_text())
    assert companion["companion"]["file"] == "model.qat.onnx"


def test_outputs_are_checked_before_the_work(chain, tmp_path):
    from edge_mer.errors import UserError
    from edge_mer.quant.export import export

    fp32 = _copy_model(chain["fp32"], tmp_path / "m.onnx")
    calib = tmp_path / "calib.npz"
    calib.write_bytes(chain["calib"].read_bytes())
    before = {p: p.read_bytes() for p in (fp32, calib)}
    for target in (fp32, calib):
        _one_error(run_cli("calibrate", "--onnx", str(fp32), "--set", str(calib), "--out", str(target), "--force"),
                   "is also this command's input")
    ck = tmp_path / "ck.pt"
    ck.write_bytes(chain["checkpoint"].read_bytes())
    _one_error(run_cli("export", "--checkpoint", str(ck), "--out", str(ck), "--force"),
               "is also this command's input")
    assert all(p.read_bytes() == data for p, data in before.items())
    assert ck.read_bytes() == chain["checkpoint"].read_bytes()
    # an earlier result: refused, then replaced with --force
    out = tmp_path / "e.onnx"
    out.write_text("earlier")
    _one_error(run_cli("export", "--checkpoint", str(ck), "--out", str(out)), "exists; pass --force")
    assert out.read_text() == "earlier"
    run_cli("export", "--checkpoint", str(ck), "--out", str(out), "--force", check=True)
    assert onnx.load(str(out)).graph.output[0].name == "logits"
    # a QAT export also writes the FP32 companion and the sidecars: any of them already there is refused
    (tmp_path / "q.fp32.onnx").write_text("earlier")
    with pytest.raises(UserError, match=r"the FP32 companion .*q\.fp32\.onnx exists"):
        export(chain["qat_checkpoint"], tmp_path / "q.onnx")
    (tmp_path / "s.onnx.json").write_text("{}")
    with pytest.raises(UserError, match=r"--out's sidecar .*s\.onnx\.json exists"):
        export(chain["checkpoint"], tmp_path / "s.onnx")
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "s.onnx").exists()
    s = tmp_path / "set.npz"
    s.write_text("earlier")
    args = ("calibrate", "build-set", "--features", str(chain["features"]), "--n", "32", "--out", str(s))
    _one_error(run_cli(*args), "exists; pass --force")
    run_cli(*args, "--force", check=True)
    from edge_mer.quant.calibset import load_set

    assert len(load_set(s)) == 32


def test_a_person_level_model_is_calibrated_on_motion_scaled_as_it_reads_and_a_mismatch_is_one_line(features,
                                                                                                tmp_path):
    """A model that reads each person's motion at one strength (``--set person_rms``) gets a calibration set so
    built from its checkpoint; a set of the motion as it comes is refused in one line by PTQ and by QAT, and
    nothing is written."""
    f = str(features)
    run_cli("train", "--features", f, "--protocol", "split", "--out", str(tmp_path / "run"), "--set",
            "person_rms=0.05", *TINY, check=True)
    ck = tmp_path / "run" / "checkpoint.pt"
    built = _json("calibrate", "build-set", "--features", f, "--n", "32", "--checkpoint", str(ck), "--out",
                  str(tmp_path / "person.npz"))
    assert built["person_rms"] == 0.05
    run_cli("calibrate", "build-set", "--features", f, "--n", "32", "--out", str(tmp_path / "plain.npz"), check=True)
    run_cli("export", "--checkpoint", str(ck), "--out", str(tmp_path / "person.onnx"), check=True)
    int8 = tmp_path / "person.int8.onnx"
    for proc in (run_cli("calibrate", "--onnx", str(tmp_path / "person.onnx"), "--set", str(tmp_path / "plain.npz"),
                         "--out", str(int8)),
                 run_cli("train", "--features", f, "--qat", str(ck), "--calibration", str(tmp_path / "plain.npz"),
                         "--epochs", "1", "--out", str(tmp_path / "qat"), "--threads", "1", "--quiet")):
        assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "reads each person's motion brought to RMS 0.05" in proc.stderr
    assert not int8.exists() and not (tmp_path / "qat").exists()
    done = run_cli("calibrate", "--onnx", str(tmp_path / "person.onnx"), "--set", str(tmp_path / "person.npz"),
                   "--out", str(int8))
    assert done.returncode in (0, 3) and int8.is_file(), done.stderr  # 3: the gate's verdict on a 3-epoch model


BLOCK_TORCH = """
import sys
sys.modules["torch"] = None
from pathlib import Path
from edge_mer.eval.score import evaluate
from edge_mer.quant.ptq import calibrate
r = evaluate(Path(sys.argv[1]), Path(sys.argv[2]), backend="auto")
calibrate(Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
print("ok", r["backend"].split()[0], r["samples"])
"""


def test_device_side_needs_no_torch(chain, tmp_path):
    args = [str(chain["ptq"]), str(chain["features"]), str(chain["fp32"]), str(chain["calib"]),
            str(tmp_path / "again.int8.onnx")]
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok onnxruntime")


@pytest.mark.tensorrt
def test_tensorrt_matches_onnxruntime(chain, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from edge_mer.runtime.selftest import selftest

    report = selftest(chain["qat"])
    assert report["ok"], report
