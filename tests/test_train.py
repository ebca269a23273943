"""Training and evaluation through the CLI, as a user runs them: LOSO, outputs, checkpoints, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

pytest.importorskip("torch")

TINY = ("--model", "mmt_test", "--epochs", "3", "--batch-size", "8", "--threads", "1", "--quiet")


@pytest.fixture(scope="module")
def loso_run(composite_features, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "loso"
    proc = run_cli("train", "--features", str(composite_features), "--protocol", "megc2019", "--out", str(out),
                   "--json", *TINY, check=True)
    return out, json.loads(proc.stdout)


def test_loso_outputs(loso_run, composite_features):
    out, result = loso_run
    rows = [json.loads(x) for x in (composite_features / "index.jsonl").read_text().splitlines()]
    usable = [r for r in rows if r["status"] == "ok" and r["composite"]]
    assert result["samples"] == len(usable)
    assert result["folds"] == len({(r["dataset"], r["subject"]) for r in usable})
    for key in ("uf1", "uar", "accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert set(result["per_dataset"]) == {"casme2", "samm", "smic"}
    assert json.loads((out / "metrics.json").read_text()) == result
    preds = (out / "predictions.csv").read_text().splitlines()
    assert len(preds) == len(usable) + 1
    log = (out / "megc_log.txt").read_text().splitlines()
    assert sum(1 for line in log if line.split()[0] in ("casme2", "samm", "smic") and len(line.split()) == 2) \
        == result["folds"]
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "checkpoint.pt").is_file()


def test_same_seed_same_metrics(loso_run, composite_features, tmp_path):
    _, first = loso_run
    proc = run_cli("train", "--features", str(composite_features), "--protocol", "megc2019", "--out",
                   str(tmp_path / "again"), "--json", "--no-final-model", *TINY, check=True)
    again = json.loads(proc.stdout)
    assert again["confusion"] == first["confusion"]


def test_eval_says_when_samples_were_seen(loso_run, composite_features):
    out, _ = loso_run
    proc = run_cli("eval", "--checkpoint", str(out / "checkpoint.pt"), "--features", str(composite_features),
                   check=True)
    assert "UF1" in proc.stdout and "were in the checkpoint's training set" in proc.stdout
    result = json.loads(run_cli("eval", "--checkpoint", str(out / "checkpoint.pt"), "--features",
                                str(composite_features), "--json", check=True).stdout)
    assert result["seen_in_training"] == result["samples"]


def _torchrun(port: int, features: Path, protocol: str, out: Path, *extra: str) -> dict:
    """Two CPU processes under torchrun (gloo), as a user would start them."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "edge_mer", "train", "--features", str(features), "--protocol", protocol, "--out", str(out),
           "--no-final-model", *extra, *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return json.loads((out / "metrics.json").read_text())


def test_torchrun_two_processes_match_one(loso_run, composite_features, tmp_path):
    _, single = loso_run
    dist = _torchrun(29533, composite_features, "megc2019", tmp_path / "dist")
    # the folds are spread over the processes with the same per-fold seeds: the same predictions
    assert dist["confusion"] == single["confusion"]
    assert abs(dist["uf1"] - single["uf1"]) < 1e-9


def test_ddp_mode_trains(composite_features, tmp_path):
    result = _torchrun(29534, composite_features, "split", tmp_path / "ddp", "--ddp")
    assert result["folds"] == 1 and result["samples"] > 0


def test_a_baseline_trains_exports_and_runs_like_the_mmt(composite_features, tmp_path):
    """STSTNet under the same protocol: the same run folder and metrics, and an ONNX file a backend takes."""
    out = tmp_path / "ststnet"
    result = json.loads(run_cli("train", "--features", str(composite_features), "--protocol", "megc2019", "--out",
                                str(out), "--json", "--model", "ststnet", "--epochs", "3", "--batch-size", "8",
                                "--threads", "1", "--quiet", check=True).stdout)
    assert result["model"] == "ststnet" and result["params"] == 1651 and result["folds"] >= 3
    assert (out / "confusion.png").is_file() and (out / "megc_log.txt").is_file()
    report = json.loads(run_cli("export", "--checkpoint", str(out / "checkpoint.pt"), "--out",
                                str(tmp_path / "ststnet.onnx"), "--json", check=True).stdout)
    assert report["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "ststnet.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["motion", "texture"]  # every edge-mer model takes both


def test_htnet_trains_exports_and_runs_like_the_mmt(composite_features, tmp_path):
    """The HTNet rebuild (narrowed to width 16 so that the test is quick) trains under a protocol, keeps its
    configuration in the checkpoint and exports to an ONNX file that ONNX Runtime runs as torch does."""
    from edge_mer.quant.export import export
    from edge_mer.train.loop import TrainConfig
    from edge_mer.train.run import RunConfig, run

    cfg = RunConfig(features=str(composite_features), protocol="split", model="htnet_56", device="cpu",
                    train=TrainConfig(epochs=1, batch_size=8), changes=(("dim", 16), ("heads", 2)))
    result = run(cfg, tmp_path / "htnet", progress=False)
    assert result["model"] == "htnet_56" and result["samples"] > 0
    report = export(tmp_path / "htnet" / "checkpoint.pt", tmp_path / "htnet.onnx")
    assert report["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "htnet.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["motion", "texture"]


def test_bad_inputs_are_one_line(generated, composite_features, loso_run, tmp_path):
    casme2 = tmp_path / "casme2_64"
    run_cli("data", "prepare", "--dataset", "casme2", "--root", str(generated["casme2"]), "--out", str(casme2),
            "--flow", "dis", "--size", "64", "--quiet", check=True)
    out, _ = loso_run
    proc = run_cli("eval", "--checkpoint", str(out / "checkpoint.pt"), "--features", str(casme2))
    assert proc.returncode == 2
    assert proc.stderr.strip() == "edge-mer: error: features are 64x64 but the model expects 112x112"
    proc = run_cli("train", "--features", str(casme2), "--protocol", "megc2019", "--out", str(tmp_path / "x"),
                   *TINY)
    assert proc.returncode == 2 and "needs features of the composite" in proc.stderr
    proc = run_cli("train", "--features", str(tmp_path / "nothing"), "--out", str(tmp_path / "y"), *TINY)
    assert proc.returncode == 2 and "not a feature cache" in proc.stderr
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    proc = run_cli("eval", "--checkpoint", str(tmp_path / "bad.pt"), "--features", str(casme2))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_kfold_holds_out_whole_subjects_once_and_changes_reach_the_model(composite_features, tmp_path):
    """Five subject-disjoint folds: every sample is tested once, no subject is on both sides of a fold, the
    MEGC log has one block per subject; a recipe's model change is what gets trained and saved."""
    from edge_mer.features.cache import FeatureSet
    from edge_mer.train.run import KFOLDS, make_folds

    fs = FeatureSet.load(composite_features)
    folds = make_folds(fs, "kfold", seed=3)
    subjects = sorted(set(fs.subjects))
    assert len(folds) == min(KFOLDS, len(subjects))
    tested = sorted(i for f in folds for i in f.test.tolist())
    assert tested == list(range(len(fs)))
    for f in folds:
        assert not {fs.subjects[i] for i in f.train} & {fs.subjects[i] for i in f.test}
    assert [f.subject for f in make_folds(fs, "kfold", seed=3)] == [f.subject for f in folds]
    assert [f.subject for f in make_folds(fs, "kfold", seed=4)] != [f.subject for f in folds]

    out = tmp_path / "kfold"
    result = json.loads(run_cli("train", "--features", str(composite_features), "--protocol", "kfold", "--out",
                                str(out), "--json", *TINY, check=True).stdout)
    assert result["folds"] == len(folds) and result["samples"] == len(fs)
    heads = [line for line in (out / "megc_log.txt").read_text().splitlines() if len(line.split()) == 2]
    assert len(heads) == len(subjects)

    import torch

    # a recipe through the command line: model settings reach the checkpoint, training settings the run
    run_cli("train", "--features", str(composite_features), "--protocol", "split", "--out", str(tmp_path / "changed"),
            *TINY, "--epochs", "1", "--set", "dim=48", "--set", "heads=3", "--set", "motion_rms=0.2",
            "--set", "gain=[0.5, 2]", "--set", "class_weighting=false", "--set", "rotate=8",
            "--set", "zoom=[0.9, 1.1]", "--set", "mixup=0.2", "--set", "label_smoothing=0.1", check=True)
    saved = torch.load(tmp_path / "changed" / "checkpoint.pt", weights_only=False)
    assert (saved["config"]["dim"], saved["config"]["heads"], saved["config"]["motion_rms"]) == (48, 3, 0.2)
    written = json.loads((tmp_path / "changed" / "run.json").read_text())
    assert written["model"]["dim"] == 48
    assert written["run"]["train"]["gain"] == [0.5, 2] and written["run"]["train"]["class_weighting"] is False
    assert (written["run"]["train"]["rotate"], written["run"]["train"]["zoom"], written["run"]["train"]["mixup"]) == (
        8, [0.9, 1.1], 0.2)
    assert written["run"]["train"]["label_smoothing"] == 0.1
    for setting, says in (("width=1", "--set width: no such setting; training: class_power, class_weighting, flip"),
                          ("gain=2", "--set gain=2: expected a value like [0.8, 1.25]"),
                          ("epochs=3", "--set epochs: use --epochs"),
                          ("zoom=[1.2, 0.9]", "expected [low, high] with 0.5 <= low <= high <= 2"),
                          ("heads=5", "width 48 is not divisible by 5 heads"),
                          ("label_smoothing=1", "label_smoothing=1: expected a share from 0 (off) to below 1")):
        proc = run_cli("train", "--features", str(composite_features), "--out", str(tmp_path / "bad"), *TINY,
                       "--set", "dim=48", "--set", setting)
        assert proc.returncode == 2 and says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


@pytest.mark.gpu
def test_training_on_a_gpu_gives_a_cpu_checkpoint_and_the_cpus_predictions(composite_features, tmp_path):
    import torch

    from edge_mer.train.loop import TrainConfig
    from edge_mer.train.run import RunConfig, run

    results = {}
    for device in ("cuda", "cpu"):
        cfg = RunConfig(features=str(composite_features), protocol="split", model="mmt_test", device=device,
                        train=TrainConfig(epochs=3, batch_size=8))
        results[device] = run(cfg, tmp_path / device, progress=False)
    assert results["cuda"]["device"] == "cuda" and results["cpu"]["device"] == "cpu"
    saved = torch.load(tmp_path / "cuda" / "checkpoint.pt", weights_only=False)  # no map_location needed
    assert all(t.device.type == "cpu" for t in saved["state_dict"].values())
    rows = {d: (tmp_path / d / "predictions.csv").read_text().splitlines()[1:] for d in results}
    same = sum(a.split(",")[3] == b.split(",")[3] for a, b in zip(rows["cuda"], rows["cpu"]))
    assert same >= 0.8 * len(rows["cpu"])  # the same draws; only floating-point order differs


def test_asking_for_a_gpu_that_is_not_there_is_one_line(composite_features, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    proc = run_cli("train", "--features", str(composite_features), "--out", str(tmp_path / "x"), "--device", "cuda",
                   *TINY)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("edge-mer: error: --device cuda: this torch sees no CUDA GPU (a CPU build, or "
                                   "no driver); use --device cpu")


def test_a_killed_run_resumes_from_its_finished_folds(loso_run, composite_features, tmp_path):
    """SIGKILL in the middle of the folds, then the same command: only the unfinished folds are trained again,
    the result is the uninterrupted run's, and nothing of the kept folds is left behind."""
    import signal
    import time

    _, whole = loso_run
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "edge_mer", "train", "--features", str(composite_features), "--protocol",
            "megc2019", "--out", str(out), "--json", "--no-final-model", *TINY]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".run.folds-*/fold-*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = list(tmp_path.glob(".run.folds-*/fold-*.npz"))
    assert kept and not out.exists(), "the run was not caught between its first fold and its end"
    kept_seconds = 0.0
    for path in kept:
        with np.load(path) as fold:
            kept_seconds += float(fold["seconds"])
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = [line for line in again.stderr.splitlines() if line.startswith("resuming:")]
    assert resumed and resumed[0].startswith(f"resuming: {len(kept)} of {whole['folds']} folds")
    result = json.loads(again.stdout)
    assert result["confusion"] == whole["confusion"]
    # the training time reported is the whole run's: the kept folds' time counts too
    assert kept_seconds > 0 and result["seconds"] >= kept_seconds and "seconds_unknown_folds" not in result
    assert not list(tmp_path.glob(".run.folds-*"))


def test_kept_folds_belong_to_the_model_config_not_only_its_name(composite_features, tmp_path):
    """A model name whose settings changed between two runs must not resume from the other's folds: the store is
    named by the whole model config, not only by the name and options of the command. Settings at their defaults
    do not name it, so a setting added later keeps the folds kept before it."""
    from dataclasses import replace

    from edge_mer.features.cache import FeatureSet
    from edge_mer.model.config import model_config
    from edge_mer.train.run import RunConfig, _fold_store

    fs = FeatureSet.load(composite_features)
    cfg = RunConfig(features=str(composite_features), model="mmt_test")
    mcfg = model_config("mmt_test")
    out = tmp_path / "run"
    assert _fold_store(out, cfg, fs, mcfg) == _fold_store(out, cfg, fs, model_config("mmt_test"))
    assert _fold_store(out, cfg, fs, mcfg) != _fold_store(out, cfg, fs, replace(mcfg, dropout=0.3))
    # a setting given at its default (as a setting added to edge-mer later is, for the runs before it) keeps them
    assert _fold_store(out, cfg, fs, mcfg) == _fold_store(out, cfg, fs, replace(mcfg, stem="patch"))
    assert _fold_store(out, cfg, fs, mcfg) != _fold_store(out, cfg, fs, replace(mcfg, stem="conv"))
    with_default = replace(cfg, train=replace(cfg.train, label_smoothing=0.0), changes=(("stem", "patch"),))
    assert _fold_store(out, cfg, fs, mcfg) == _fold_store(out, with_default, fs, mcfg) != _fold_store(
        out, replace(cfg, train=replace(cfg.train, label_smoothing=0.1)), fs, mcfg)


def test_the_recognition_benchmark_fans_a_run_out_with_its_own_settings(composite_features, tmp_path):
    """benchmarks/recognition.py --fan-out trains a run under torchrun through the CLI. The run it writes has the
    settings the benchmark gives a run in one process, its learning rate included, so the two ways keep and resume
    the same folds and (with one thread a process, test_torchrun_two_processes_match_one) predict the same."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recognition

    folder = tmp_path / "runs" / "mmt_test" / "0"
    own = recognition.Settings(lr=3e-3, person_rms=0.075).run_config("mmt_test", "full", 0, str(composite_features),
                                                                       2, "cpu")
    assert own.train.lr == 3e-3 and own.changes == (("person_rms", 0.075),)
    metrics = recognition.fanned_out(own, folder, 1, 2)
    assert metrics["folds"] >= 3 and 0 <= metrics["uf1"] <= 1
    assert (folder / "checkpoint.pt").is_file() and (folder / "predictions.csv").is_file()
    written = json.loads((folder / "run.json").read_text())["run"]
    assert written == json.loads(json.dumps(asdict(own)))
    # an ensemble's partner at a rate of its own reaches the CLI as a training setting off its default
    partnered = recognition.Settings(partner_lr=0.01).run_config("mmt_test", "full", 0, "F", 60, "cpu")
    args = recognition.train_arguments(partnered)
    assert args[args.index("--set") + 1] == "partner_lr=0.01" and args.count("--set") == 1


def test_the_recognition_benchmark_times_its_models_again_together(tmp_path):
    """benchmarks/recognition.py --retime exports each model of the table and times them all in turns, and the
    table's latency column and its text then come from that timing, not from runs timed on different days."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recognition

    latency = recognition.retime(["ststnet", "mmt_test+motion-only"], tmp_path, runs=20)
    assert set(latency["ms"]) == {"ststnet", "mmt_test+motion-only"}
    for ms in latency["ms"].values():
        assert 0 < ms["p50"] <= ms["p95"]
    assert (tmp_path / "ststnet-architecture.onnx").is_file()
    # the transformer is slower than the 1,651-weight CNN however loaded the machine is: they were timed in turns
    assert latency["ms"]["mmt_test+motion-only"]["p50"] > latency["ms"]["ststnet"]["p50"]
    text = recognition._latency_text({"latency": latency})
    assert "timed together in turns of 20 calls (20 calls each" in text


def test_the_recognition_benchmark_times_models_without_a_row(tmp_path, monkeypatch, capsys):
    """--time-only times the named models as --retime does (a model without a row, say) and prints the figures;
    it trains nothing, renders no data and leaves the results alone."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recognition

    monkeypatch.setattr(recognition, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["recognition.py", "--models", "ststnet", "--time-only", "--work",
                                      str(tmp_path / "work")])
    recognition.main()
    printed = json.loads(capsys.readouterr().out)
    assert 0 < printed["ms"]["ststnet"]["p50"] <= printed["ms"]["ststnet"]["p95"] and printed["runs"] == 300
    assert not (tmp_path / "results").exists() and not (tmp_path / "work" / "data").exists()


def test_the_recognition_benchmark_keeps_runs_on_flow_less_the_head_apart(tmp_path, monkeypatch):
    """A model trained with --head removed is a row of its own beside the same model and seed on the plain flow,
    in its own folder, and so is one trained at another learning rate (--lr), reading each person's motion at one
    strength (--person-rms) or with its partner at a learning rate of its own (--partner-lr); all rows take the
    model's latency from the common timing."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recognition

    model = "mmt_small_ens+motion-only"
    key, settings = recognition.run_key, recognition.Settings
    no_head = settings(head="removed")
    assert key(model, 0) == f"{model}/0" != key(model, 0, no_head)
    assert key(model, 0, settings("removed", 0.01)) == f"{model}/head-removed/lr-0.01/0"
    assert key(model, 0, settings("removed", recognition.RECIPE_LR)) == key(model, 0, no_head)
    assert key(model, 0, settings("removed", person_rms=0.075)) == f"{model}/head-removed/person-rms-0.075/0"
    setting = settings(person_rms=0.075).run_config(model, "full", 0, "F", 60, "cpu").changes
    assert setting == (("person_rms", 0.075),)
    assert key(model, 0, settings("removed", partner_lr=0.01)) == f"{model}/head-removed/partner-lr-0.01/0"
    partnered = settings(partner_lr=0.01).run_config(model, "full", 0, "F", 60, "cpu")
    assert partnered.train.partner_lr == 0.01 and partnered.changes == () and partnered.train.lr == 1e-3

    def result(head: str, uf1: float) -> dict:
        return {"model": model, "seed": 0, "head": head, "uf1": uf1, "uar": uf1, "params": 10, "gflops": 0.1,
                "seconds": 100, "device": "cpu", "per_dataset": {d: {"uf1": uf1} for d in recognition.DATASETS}}

    plain, removed = result("kept", 0.8363), result("removed", 0.8512)
    del plain["head"]  # runs from before --head existed carry no such field
    faster = {**result("removed", 0.8795), "lr": 0.01}
    person = {**result("removed", 0.9012), "person_rms": 0.075}
    partner = {**result("removed", 0.8851), "partner_lr": 0.01}
    # what a run misreads, kept where its answers were: the table lists the best such row's
    misread = {"patterns": [["samm", "12", "positive", "clean", 22, 4, 4, 0, 0]],
               "subjects": [["samm/029", 18, 5, 0.547, 0.237], ["smic/s01", 20, 0, 1.2, 0.1]]}
    faster["misread"] = partner["misread"] = misread
    runs = [plain, removed, faster, person, partner]
    doc = {"runs": {recognition.key_of(r): r for r in runs},
           "latency": {"date": "2026-12-06", "runs": 20, "block": 20, "threads": 2, "load_average_before": 0.1,
                       "ms": {model: {"p50": 1.3, "p95": 1.5}}}}
    monkeypatch.setattr(recognition, "RESULTS", tmp_path)
    recognition._table(doc, "t")
    rows = [line for line in (tmp_path / "t.md").read_text().splitlines() if line.startswith(f"| {model}")]
    assert len(doc["runs"]) == len(rows) == 5
    assert rows[0].startswith(f"| {model} | 1 | 0.8363 |") and " 1.300 |" in rows[0]
    assert rows[1].startswith(f"| {model} (head motion removed) | 1 | 0.8512 |") and " 1.300 |" in rows[1]
    assert rows[2].startswith(f"| {model} (head motion removed, learning rate 0.01) | 1 | 0.8795 |")
    assert rows[3].startswith(f"| {model} (head motion removed, each person's motion to RMS 0.075) | 1 | 0.9012 |")
    assert "(`--head removed`)" in (tmp_path / "t.md").read_text()
    assert rows[4].startswith(f"| {model} (head motion removed, the partner at learning rate 0.01) | 1 | 0.8851 |")
    assert "(`--person-rms R`" in (tmp_path / "t.md").read_text()
    assert "(`--partner-lr L`" in (tmp_path / "t.md").read_text()
    text = (tmp_path / "t.md").read_text()
    assert text.count("misreads most") == 1  # the best row whose runs kept it, not the best row (person)
    assert f"### What {model} (head motion removed, the partner at learning rate 0.01) misreads most" in text
    assert "| samm | 12 | positive | clean | 4 | 22 | negative 4 |" in text
    assert "| samm/029 | 5 | 18 | 0.55 | 0.24 |" in text and "smic/s01" not in text


def test_the_recognition_benchmark_averages_a_rows_seeds_where_their_answers_were_kept(tmp_path, monkeypatch):
    """A row of two or more seeds whose run folders kept their predictions gets the scores of the seeds' class
    probabilities averaged (an ensemble of the seeds) and the share of answers they give alike, in the JSON and
    the table; a row of one seed gets none, and a row whose folders are gone keeps what was computed before."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import recognition

    def run(model: str, seed: int, probs: dict[str, list[float]]) -> dict:
        folder = tmp_path / "runs" / recognition.run_key(model, seed)
        folder.mkdir(parents=True)
        truth = {"a": 0, "b": 1, "c": 2, "d": 1}
        (folder / "predictions.csv").write_text(
            "id,subject,truth,prediction,p_negative,p_positive,p_surprise\n"
            + "".join(f"{i},s{i},{truth[i]},{max(range(3), key=p.__getitem__)},{p[0]},{p[1]},{p[2]}\n"
                      for i, p in probs.items()))
        return {"model": model, "seed": seed, "uf1": 0.5, "uar": 0.5, "params": 10, "gflops": 0.1, "seconds": 1,
                "device": "cpu", "per_dataset": {d: {"uf1": 0.5} for d in recognition.DATASETS}}

    # the same samples in another order in the second seed's file: matched by id
    runs = [run("mmt_test", 0, {"a": [0.6, 0.4, 0], "b": [0.2, 0.7, 0.1], "c": [0.1, 0.1, 0.8],
                                "d": [0.5, 0.3, 0.2]}),
            run("mmt_test", 1, {"d": [0, 0.9, 0.1], "c": [0, 0.2, 0.8], "b": [0.3, 0.6, 0.1], "a": [0.1, 0.9, 0]}),
            run("ststnet", 0, {"a": [1, 0, 0], "b": [0, 1, 0], "c": [0, 0, 1], "d": [0, 1, 0]})]
    doc = {"runs": {recognition.key_of(r): r for r in runs}}
    recognition.seeds_averaged(doc, tmp_path)
    assert set(doc["averaged"]) == {"mmt_test"}
    mean = doc["averaged"]["mmt_test"]
    # averaged: a -> positive (wrong), b, c, d right: F1 negative 0, positive 2*2/(4+1) = 0.8, surprise 1
    assert mean["seeds"] == [0, 1] and mean["uf1"] == pytest.approx(1.8 / 3) and mean["shared"] == 0.5
    shutil.rmtree(tmp_path / "runs")
    recognition.seeds_averaged(doc, tmp_path)
    assert doc["averaged"]["mmt_test"] == mean
    monkeypatch.setattr(recognition, "RESULTS", tmp_path)
    recognition._table(doc, "t")
    assert "| mmt_test | 0, 1 | 0.6000 | 0.6667 | 0.500 |" in (tmp_path / "t.md").read_text()


def test_the_cross_draw_check_scores_each_draw_with_a_model_trained_on_the_other(composite_features, generated,
                                                                                 tmp_path, monkeypatch):
    """benchmarks/crossdraw.py trains a recipe variant on all of one draw and scores the other, both ways, and
    scores the model on its own training samples too. Given one draw twice, each direction is scored on the very
    samples it trained on, so its held-out UF1 is its fit. The table's change is paired by seed, per direction."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import crossdraw

    from edge_mer.features.cache import FeatureSet

    samples = len(FeatureSet.load(composite_features))
    work = tmp_path / "work"
    r = crossdraw.run_variant("ststnet-regions+head-removed", 0, {1: str(composite_features),
                                                                  2: str(composite_features)}, 2, str(work))
    for way in ("1->2", "2->1"):
        assert r[way]["trained_on"] == r[way]["scored_on"] == samples
        assert 0 < r[way]["uf1"] == r[way]["fit_uf1"] <= 1
    assert r["uf1"] == r["1->2"]["uf1"] == r["2->1"]["uf1"]  # the same data, seed and order both ways
    kept = np.load(work / "predictions" / "ststnet-regions+head-removed" / "0-1to2.npz")
    assert kept["probs"].shape == (samples, 3) and len(kept["ids"]) == len(kept["labels"]) == samples

    def run(name: str, seed: int, there: float, back: float) -> dict:
        ways = {w: {"uf1": u, "uar": u, "fit_uf1": 0.9, "seconds": 10.0} for w, u in (("1->2", there),
                                                                                      ("2->1", back))}
        return {"variant": name, "seed": seed, "uf1": (there + back) / 2, **ways}

    base, wide = "ststnet-regions+head-removed", "ststnet-regions+head-removed+filters-x2"
    pair = "motion-only+ststnet+head-removed+regions+partner-lr-1e-2"  # extends no variant run here
    runs = [run(pair, 0, 0.87, 0.88), run(base, 0, 0.88, 0.84), run(base, 1, 0.86, 0.86), run(wide, 0, 0.89, 0.86),
            run(wide, 1, 0.85, 0.87), run(wide, 2, 0.99, 0.99)]  # seed 2 has no base run to pair with
    monkeypatch.setattr(crossdraw, "RESULTS", tmp_path)
    crossdraw._table({"runs": {f"{x['variant']}/{x['seed']}": x for x in runs}, "machine": "x", "date": "d"}, work)
    assert "Where the errors are" not in (tmp_path / "crossdraw.md").read_text()  # no draw's data in work
    row = next(line for line in (tmp_path / "crossdraw.md").read_text().splitlines() if line.startswith(f"| {wide}"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "3" and cells[3] == "+0.0075"  # seed 0: 0.875 - 0.86, seed 1: 0.86 - 0.86; halved
    assert (cells[5], cells[7]) == ("+0.0000", "+0.0150")  # 1 -> 2: +0.01 and -0.01; 2 -> 1: +0.02 and +0.01
    # the recipe's model is listed first, and a variant whose parent was not run is compared with it
    rows = [line for line in (tmp_path / "crossdraw.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows[:3]] == [base, pair, wide]
    assert [c.strip() for c in rows[1].strip("|").split("|")][3] == "+0.0150"  # 0.875 - 0.86

    # the run above kept its predictions: with its draws' data (here one dataset as both draws) the table says
    # where its errors are and which coded action units it misreads
    (tmp_path / "draw").mkdir()
    (tmp_path / "draw" / "data").symlink_to(generated["megc2019"])
    monkeypatch.setattr(crossdraw, "_draw_folder", lambda _work, _draw: tmp_path / "draw")
    doc = {"runs": {f"{base}/0": r}, "machine": "x", "date": "d"}
    crossdraw._table(doc, work)
    lines = (tmp_path / "crossdraw.md").read_text().splitlines()
    assert any("draw 1's annotation allows UF1" in line and "draw 2's" in line for line in lines)
    averaged = [line for line in lines if line.startswith(f"| {base} | {r['1->2']['uf1']:.4f} | ")]
    assert len(averaged) == 1 and averaged[0].endswith("| 1.000 |")  # one seed: its own answers, all shared
    clean = [line for line in lines if line.startswith(f"| {base} | ") and line not in averaged]
    assert 0 < float(clean[-1].split("|")[2]) <= 1  # accuracy on the clean samples
    assert f"### The patterns `{base}` misreads most" in lines
    # the figures made from the predictions stay in the results when the predictions are gone (another machine)
    shutil.rmtree(work / "predictions")
    crossdraw._table(json.loads(json.dumps(doc)), work)
    assert (tmp_path / "crossdraw.md").read_text().splitlines() == lines


def test_the_cross_draw_check_trains_a_runs_two_directions_side_by_side(composite_features, tmp_path, monkeypatch):
    """With --jobs 2 the two directions of one run train at once (a large model's run takes half the time); the
    run is recorded once both are in, with the directions' figures and their mean, and each kept its answers."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import crossdraw

    base = "ststnet-regions+head-removed"
    monkeypatch.setattr(crossdraw, "RESULTS", tmp_path)
    monkeypatch.setattr(crossdraw, "_features", lambda _work, _draw, _name: composite_features)
    monkeypatch.setattr(sys, "argv", ["crossdraw.py", "--variants", base, "--seeds", "3", "--epochs", "2",
                                      "--jobs", "2", "--work", str(tmp_path / "work")])
    crossdraw.main()
    doc = json.loads((tmp_path / "crossdraw.json").read_text())
    r = doc["runs"][f"{base}/3"]
    assert (r["variant"], r["seed"], r["epochs"]) == (base, 3, 2)
    assert r["uf1"] == pytest.approx((r["1->2"]["uf1"] + r["2->1"]["uf1"]) / 2)
    assert r["1->2"]["uf1"] == r["2->1"]["uf1"]  # one draw both ways: the same training, each in its own process
    for way in ("1to2", "2to1"):
        assert (tmp_path / "work" / "predictions" / base / f"3-{way}.npz").is_file()
    assert f"| {base} | 1 |" in (tmp_path / "crossdraw.md").read_text()
