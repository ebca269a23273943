"""The ``edge-mer`` command: parse, build a config, make one library call."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from edge_mer import __version__
from edge_mer.atomic import write_bytes
from edge_mer.cli.face import add_parser as add_face_parser
from edge_mer.cli.flow import add_parser as add_flow_parser
from edge_mer.cli.output import print_json
from edge_mer.cli.quant import add_parsers as add_quant_parsers
from edge_mer.cli.run import add_parsers as add_run_parsers
from edge_mer.cli.spot import add_parser as add_spot_parser
from edge_mer.cli.types import Parser, at_least, frame_size, positive, setting
from edge_mer.errors import UserError
from edge_mer.outputs import check_file, check_folder

# training, QAT, export and calibration (torch, onnx, modelopt) need this Python; the device runtime runs on 3.8
HOST_PYTHON = (3, 10)
# optional dependencies: what to install when a command finds one missing
EXTRAS = {
    "cv2": "OpenCV: pip install 'edge-mer[desktop]' (on a Jetson JetPack's python3-opencv, on a Raspberry Pi "
           "'edge-mer[pi]')",
    "onnxruntime": "ONNX Runtime: pip install 'edge-mer[desktop]' (on a Jetson scripts/jetson/setup.sh "
                   "--with-onnxruntime)",
    "openpyxl": "openpyxl, to read and write the datasets' spreadsheets: pip install 'edge-mer[desktop]'",
    "torch": "PyTorch: pip install 'edge-mer[train]' (its CPU build first on a machine without CUDA)",
    "onnx": "onnx: pip install 'edge-mer[train]'",
    "modelopt": "NVIDIA's TensorRT Model Optimizer: pip install 'edge-mer[train]'",
    "matplotlib": "matplotlib, for the plots: pip install 'edge-mer[desktop]' (or pip install matplotlib)",
}


def cmd_doctor(args: argparse.Namespace) -> int:
    from edge_mer.doctor import collect, format_report

    if args.selftest:
        from edge_mer.runtime.selftest import selftest, selftest_lines

        result = selftest(Path(args.model) if args.model else None)
        if args.json:
            print_json(result)
        else:
            print(f"self-test {result['status'].upper() if not result['ok'] else 'passed'}")
            for line in selftest_lines(result):
                print(f"  {line}")
        return 0 if result["ok"] else 1
    report = collect(import_heavy=not args.no_torch)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    return 0


def _nuisances(args: argparse.Namespace, base: Any) -> Any:
    n = base
    if args.no_head_motion:
        n = replace(n, head_drift=0.0, head_jitter=0.0, head_rotation=0.0)
    if args.no_noise:
        n = replace(n, noise=0.0)
    if args.no_flicker:
        n = replace(n, flicker=0.0)
    if args.no_blinks:
        n = replace(n, blinks=False)
    if args.jpeg_quality is not None:
        n = replace(n, jpeg_quality=args.jpeg_quality)
    if getattr(args, "no_macro", False):
        n = replace(n, macro=False)
    return n


def cmd_synth_dataset(args: argparse.Namespace) -> int:
    from edge_mer.data.synthetic import COMPOSITE_SHARE, DatasetConfig, write_dataset
    from edge_mer.synth.diversity import Diversity
    from edge_mer.synth.render import Nuisances

    composite_subjects = sum(COMPOSITE_SHARE.values())
    # sized like the real composite unless the sizes were given (another number of subjects: even clips)
    like_composite = (args.diverse and args.layout == "megc2019" and args.clips_per_subject is None
                      and args.subjects in (None, composite_subjects))
    subjects = composite_subjects if like_composite else (args.subjects or 10)
    cfg = DatasetConfig(layout=args.layout, subjects=subjects,
                        clips_per_subject=args.clips_per_subject if args.clips_per_subject is not None else 5,
                        seed=args.seed, size=args.size, fps=args.fps, quirks=not args.no_quirks,
                        nuisances=_nuisances(args, Nuisances.lab()),
                        diversity=Diversity() if args.diverse else None, like_composite=like_composite)
    check_folder(Path(args.out), force=args.force)
    summary = write_dataset(cfg, Path(args.out), progress=not args.quiet)
    if args.json:
        print_json(asdict(summary))
    else:
        print(f"wrote {summary.samples} clips of {summary.subjects} subjects ({summary.frames} frames) "
              f"in the {summary.layout} layout to {summary.root} in {summary.seconds:.1f} s")
        print("classes: " + ", ".join(f"{k} {v}" for k, v in sorted(summary.classes.items())))
        if summary.composite:
            print(f"composite ({sum(summary.composite.values())} samples): "
                  + ", ".join(f"{k} {v}" for k, v in sorted(summary.composite.items())))
    return 0


def cmd_synth_video(args: argparse.Namespace) -> int:
    from edge_mer.synth.render import Nuisances
    from edge_mer.synth.video import VideoConfig, write_video

    out = Path(args.out)
    truth = Path(args.truth) if args.truth else out.with_suffix(".csv") if out.suffix else out / "truth.csv"
    cfg = VideoConfig(seconds=args.seconds, fps=args.fps, size=args.size, subject=args.subject, seed=args.seed,
                      micro_per_minute=args.micro_per_minute, macro_per_minute=args.macro_per_minute,
                      blinks_per_minute=args.blinks_per_minute, gray=args.gray,
                      nuisances=_nuisances(args, Nuisances()))
    sheet = Path(args.truth_sheet) if args.truth_sheet else None
    for path, flag in ((out, "--out"), (truth, "--truth"), (sheet, "--truth-sheet")):
        if path is not None and path.suffix:  # a video, the truth and its sheet are replaced: same seed, same bytes
            check_file(path, force=True, flag=flag)
    summary = write_video(cfg, out, truth, sheet, args.truth_style, progress=not args.quiet)
    if args.json:
        print_json(asdict(summary))
    else:
        events = ", ".join(f"{v} {k}" for k, v in sorted(summary.events.items())) or "no events"
        print(f"wrote {summary.frames} frames ({summary.size[0]}x{summary.size[1]} at {summary.fps:g} fps) "
              f"to {summary.path}: {events}; truth in {summary.truth}; "
              f"{summary.render_fps:.0f} frames/s")
    return 0


def cmd_synth_faces(args: argparse.Namespace) -> int:
    from edge_mer.synth.faces import contact_sheet, load_photo, make_subject, photo_names
    from edge_mer.synth.images import encode_image

    subjects = [make_subject(i, args.seed) for i in range(args.subjects)]
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise UserError(f"--out {out}: the contact sheet is a .png or .jpg")
    check_file(out, force=True)
    write_bytes(out, encode_image(contact_sheet(subjects), out.suffix))
    photos = [load_photo(n) for n in photo_names()]
    if args.json:
        print_json({"sheet": str(out), "subjects": len(subjects),
                     "photos": [{"name": p.name, "who": p.who, "source": p.source, "licence": p.licence}
                                for p in photos]})
    else:
        print(f"wrote {len(subjects)} subjects to {out}; photos used:")
        for p in photos:
            print(f"  {p.name}: {p.who}; {p.source}; {p.licence}")
    return 0


def cmd_data_index(args: argparse.Namespace) -> int:
    from edge_mer.data.loaders import load

    index = load(args.dataset, Path(args.root), Path(args.annotations) if args.annotations else None, args.apex)
    summary = index.summary()
    if args.json:
        print_json(summary)
        return 0
    print(f"{index.dataset}: {summary['samples']} samples ({summary['complete']} with all frames on disk) "
          f"of {summary['subjects']} subjects in {index.root}")
    if index.annotations:
        print(f"annotations: {index.annotations}")

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "none"
    print(f"classes: {counts(summary['classes'])}")
    print(f"composite: {counts(summary['composite'])}")
    if len(summary["per_dataset"]) > 1:
        print(f"per dataset: {counts(summary['per_dataset'])}")
    print(f"per subject: {counts(summary['per_subject'])}")
    for note in index.notes:
        print(f"note: {note}")
    print(f"problems: {len(index.problems) or 'none'}")
    for p in index.problems:
        print(f"  [{p.kind}] {p}")
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from edge_mer.features.prepare import FeatureConfig, prepare

    cfg = FeatureConfig(size=args.size, flow=args.flow, apex_policy=args.apex, landmarks=args.landmarks,
                        detector=args.detector, texture=args.texture, oversample=args.oversample,
                        head=args.head)
    workers = args.workers or os.cpu_count() or 1
    # a cache is resumed in place (no --force), but never written over the dataset it is made from
    check_folder(Path(args.out), inputs=[args.root, args.annotations], force=True)
    summary = prepare(args.dataset, Path(args.root), Path(args.out), cfg,
                      Path(args.annotations) if args.annotations else None, workers, progress=not args.quiet)
    if args.json:
        print_json(asdict(summary))
    else:
        stale = f" ({summary.stale} recomputed: their file was outdated or unreadable)" if summary.stale else ""
        print(f"features of {summary.samples} samples in {summary.out}: {summary.written} written{stale}, "
              f"{summary.reused} already there, {summary.failed} failed, {summary.skipped} skipped "
              f"({summary.seconds:.1f} s, {summary.samples_per_second:.2f} samples/s)")
        if summary.failed or summary.skipped or summary.stale:
            print(f"see {Path(summary.out) / 'index.jsonl'} and problems.json for why")
    return 0


def _data_parser(sub: Any) -> None:
    data = sub.add_parser("data", help="read micro-expression datasets and cache their features",
                          description="Read CASME II, SAMM, SMIC-HS, CAS(ME)^3 part A or the MEGC2019 composite "
                                      "from their folders as distributed (index), and cache onset->apex "
                                      "features for training (prepare).")
    ds = data.add_subparsers(dest="data_command", required=True, metavar="{index,prepare}")
    datasets = ("casme2", "samm", "smic", "casme3", "megc2019")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", required=True, choices=datasets)
        p.add_argument("--root", required=True, help="the dataset's folder as distributed (for megc2019: the "
                                                     "folder holding CASME II, SAMM, SMIC-HS and the CSV)")
        p.add_argument("--annotations", help="annotation file (default: found under --root by its real name)")
        p.add_argument("--apex", choices=("middle", "motion"), default="middle",
                       help="apex when none is annotated (SMIC-HS, '/' cells): middle frame, or the frame "
                            "that moved most from the onset (default middle)")
        p.add_argument("--json", action="store_true", help="print one JSON object")

    i = ds.add_parser("index", help="count samples per class and subject and list every problem",
                      description="Read a dataset and print its samples per class and per subject, and every "
                                  "problem found (missing frames, unparseable rows) with its row.")
    common(i)
    i.set_defaults(func=cmd_data_index)

    p = ds.add_parser("prepare", help="write the onset->apex feature cache",
                      description="Align each clip's face on its onset frame, compute onset->apex optical flow, "
                                  "optical strain and the apex texture at SxS, and write a resumable feature "
                                  "cache. Example: edge-mer data prepare --dataset casme2 --root CASME2 "
                                  "--out features/casme2")
    common(p)
    p.add_argument("--out", required=True, help="feature cache folder (rerun to resume)")
    p.add_argument("--size", type=at_least(32), default=112, help="crop size S (default 112)")
    p.add_argument("--flow", choices=("tvl1", "dis"), default="tvl1", help="optical flow (default tvl1)")
    p.add_argument("--workers", type=at_least(1), help="processes (default: all cores)")
    p.add_argument("--landmarks", help="68-point landmark model (.yaml OpenCV LBF or .dat dlib) for alignment")
    p.add_argument("--detector", choices=("mesh", "haar"), default="mesh",
                   help="face detector of the onset frame: the shipped BlazeFace + FaceMesh (default) or OpenCV's "
                        "Haar cascades")
    p.add_argument("--texture", choices=("apex", "difference"), default="apex",
                   help="texture input: the apex frame (default; what the device runtime computes) or the apex "
                        "minus the onset (for training experiments)")
    p.add_argument("--oversample", type=at_least(1), default=1, metavar="K",
                   help="compute the flow on crops K times finer (K S x K S) and average it back to S x S: motion "
                        "of a pixel or less spans K times the pixels there (default 1; a model trained so asks the "
                        "device for the same, at about K x K times the flow's cost per spotted event)")
    p.add_argument("--head", choices=("kept", "removed"), default="kept",
                   help="the head's own motion between onset and apex: kept in the flow (default) or removed (an "
                        "affine motion fitted robustly inside the face and subtracted)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_prepare)


def _require_torch() -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise UserError("training needs torch: pip install 'edge-mer[train]' (devices never need it)")


def _print_scores(result: dict[str, Any], what: str) -> None:
    print(f"{what}: UF1 {result['uf1']:.4f}  UAR {result['uar']:.4f}  accuracy {result['accuracy']:.4f}  "
          f"({result['samples']} samples)")
    for name, ds in result.get("per_dataset", {}).items():
        print(f"  {name}: UF1 {ds['uf1']:.4f}  UAR {ds['uar']:.4f}  ({ds['samples']} samples)")
    if result.get("absent_classes"):
        print(f"  classes with no sample (left out of UF1/UAR): {', '.join(result['absent_classes'])}")


def cmd_train(args: argparse.Namespace) -> int:
    _require_torch()
    import torch

    # the run folder may hold neither the features nor the checkpoint QAT starts from: it is replaced whole
    check_folder(Path(args.out), inputs=[args.features, args.qat, args.calibration], force=args.force)
    if args.qat:
        if args.set:
            raise UserError("--set is for training from scratch; --qat fine-tunes with the checkpoint's settings")
        return _cmd_qat(args)
    if args.calibration:
        raise UserError("--calibration goes with --qat CHECKPOINT")

    from edge_mer.train.loop import TrainConfig
    from edge_mer.train.run import RunConfig, apply_settings, run

    if args.threads:
        torch.set_num_threads(args.threads)
    tcfg, changes = apply_settings(
        TrainConfig(epochs=args.epochs or 60, batch_size=args.batch_size, lr=args.lr or 1e-3, seed=args.seed),
        args.set)
    cfg = RunConfig(features=args.features, protocol=args.protocol, model=args.model, ablation=args.ablation,
                    train=tcfg, ddp=args.ddp, final_model=not args.no_final_model, device=args.device,
                    changes=changes)
    result = run(cfg, Path(args.out), progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    if args.json:
        print_json(result)
    else:
        _print_scores(result, f"{args.model} ({args.ablation}) {args.protocol}, {result['folds']} folds")
        print(f"wrote {args.out}/metrics.json, predictions.csv, megc_log.txt, confusion.png"
              + ("" if args.no_final_model else ", checkpoint.pt"))
    return 0


def _cmd_qat(args: argparse.Namespace) -> int:
    from edge_mer.quant.qat import finetune

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report = finetune(Path(args.qat), Path(args.features), Path(args.out), calibration=args.calibration,
                      epochs=args.epochs or 10, lr=args.lr or 1e-5, seed=args.seed, progress=not args.quiet)
    if args.json:
        print_json(report)
    else:
        q = report["quantizers"]
        print(f"QAT: {q['weight']} weight and {q['input']} input quantizers calibrated on "
              f"{report['calibration']['samples']} samples, fine-tuned {report['epochs']} epochs on "
              f"{report['samples']} samples ({report['seconds']:.0f} s); wrote {report['checkpoint']} "
              "(export it with edge-mer export)")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from edge_mer.eval.score import evaluate

    result = evaluate(Path(args.checkpoint), Path(args.features), backend=args.backend, threads=args.threads,
                      precision=args.precision, unseen=args.unseen)
    if args.json:
        print_json(result)
    else:
        _print_scores(result, f"{args.checkpoint} on {args.features} [{result['backend']}]")
        if result["seen_in_training"]:
            print(f"warning: {result['seen_in_training']} of these samples were in the checkpoint's training set; "
                  "these scores are not held out")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from edge_mer.deploy import PLAYBOOK, Host, build_bundle, deploy, summary_lines
    from edge_mer.runtime.artifact import default_model

    if args.identity and not Path(args.identity).is_file():
        raise UserError(f"identity file not found: {args.identity}")
    if args.inventory and (args.identity or args.prefix or args.remote_python or args.port != 22):
        raise UserError("--identity, --port, --prefix and --remote-python describe one --host; with --inventory set "
                        "ansible_ssh_private_key_file, ansible_port, edge_mer_prefix and ansible_python_interpreter "
                        "as host variables there")
    model = Path(args.model) if args.model else default_model()
    if args.bundle_only:
        out = Path(args.bundle_only)
        if out.exists() and any(out.iterdir()):
            raise UserError(f"--bundle-only {out} is not an empty folder")
        manifest = build_bundle(model, out)
        if args.json:
            print_json(manifest)
        else:
            print(f"bundle in {out}: {', '.join(manifest['files'])}; ansible-playbook -i INVENTORY {PLAYBOOK} "
                  f"-e edge_mer_bundle={out.resolve()}")
        return 0
    if not args.host and not args.inventory:
        raise UserError("deploy needs --host USER@HOST or --inventory FILE (or --bundle-only DIR)")
    host = (Host(args.host, args.port, Path(args.identity) if args.identity else None, args.prefix,
                 args.remote_python) if args.host else None)
    result = deploy(model, host=host, inventory=Path(args.inventory) if args.inventory else None,
                    service=args.service, serial=args.serial, limit=args.limit, settings=dict(args.set),
                    ssh_options=args.ssh_option, dry_run=args.dry_run,
                    log=(lambda m: print(m, file=sys.stderr)) if args.json else print)
    if args.json:
        print_json(result)
    failed = result["failed"]
    if failed and host is not None:
        raise UserError(summary_lines(result)[0])
    return 1 if failed else 0


def _train_parsers(sub: Any) -> None:
    from edge_mer.model.config import ABLATIONS, MODELS

    t = sub.add_parser("train", help="train the MMT under LOSO, the MEGC2019 protocol, k folds or a split",
                       description="Train a fresh model per fold for a fixed number of epochs (never the best "
                                   "epoch on the test subject), pool the predictions and report UF1/UAR/accuracy "
                                   "overall and per dataset. Writes RUN/metrics.json, predictions.csv, "
                                   "megc_log.txt, confusion.png and checkpoint.pt (a model trained on all "
                                   "samples). Under torchrun the folds are spread over the processes.")
    t.add_argument("--features", required=True, help="feature cache from edge-mer data prepare")
    t.add_argument("--protocol", choices=("loso", "megc2019", "kfold", "split"), default="loso",
                   help="loso: one fold per subject; megc2019: LOSO over the composite; kfold: five "
                        "subject-disjoint folds (a quicker estimate); split: one 80/20 subject split")
    t.add_argument("--out", required=True, help="run folder (written whole at the end)")
    t.add_argument("--force", action="store_true", help="replace an existing run folder --out")
    t.add_argument("--model", choices=sorted(MODELS), default="mmt_small")
    t.add_argument("--ablation", choices=sorted(ABLATIONS), default="full")
    t.add_argument("--epochs", type=at_least(1), help="epochs (default 60; 10 with --qat)")
    t.add_argument("--batch-size", type=at_least(1), default=32)
    t.add_argument("--lr", type=float, help="peak learning rate (default 1e-3; 1e-5 with --qat)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=at_least(1), help="torch CPU threads")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the models train (default: a CUDA GPU when torch sees one, else the CPU; under "
                        "torchrun process i takes GPU i mod GPUs)")
    t.add_argument("--ddp", action="store_true", help="under torchrun: DistributedDataParallel per model "
                                                      "instead of spreading the folds")
    t.add_argument("--no-final-model", action="store_true", help="skip the model trained on all samples")
    t.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a training or model setting, the value as JSON (repeatable), e.g. gain=[0.5,2], "
                        "class_weighting=false, weight_decay=0.2, dropout=0.3, person_rms=0.075, "
                        "'modalities=[\"motion\"]' (a wrong key lists the settings)")
    q = t.add_argument_group("quantization-aware training")
    q.add_argument("--qat", metavar="CHECKPOINT", help="fine-tune this FP32 checkpoint with INT8 fake "
                                                       "quantizers (modelopt) on the samples it was trained on, "
                                                       "instead of training folds; writes RUN/checkpoint.pt")
    q.add_argument("--calibration", help="calibration set (.npz) for the quantizer ranges (default: 256 samples "
                                         "drawn from the checkpoint's training samples)")
    t.add_argument("--json", action="store_true")
    t.add_argument("--quiet", action="store_true", help="no per-epoch progress")
    t.set_defaults(func=cmd_train, host_only=True)

    from edge_mer.runtime.backends import BACKENDS

    e = sub.add_parser("eval", help="score a checkpoint, ONNX file or engine on a feature cache",
                       description="Run the model through a backend and score it with the same metrics as "
                                   "training (UF1, UAR, accuracy, per dataset). Example: edge-mer eval "
                                   "--checkpoint model.int8.onnx --features F --backend onnxruntime --unseen")
    e.add_argument("--checkpoint", required=True, help="torch checkpoint (.pt), ONNX file or TensorRT engine")
    e.add_argument("--features", required=True)
    e.add_argument("--backend", choices=BACKENDS, default="auto")
    e.add_argument("--precision", choices=("auto", "file", "fp32", "int8"), default="file",
                   help="ONNX Runtime: run the file as given (default), its companion of that precision, or "
                        "whichever is faster here (auto)")
    e.add_argument("--threads", type=at_least(1), help="CPU threads of the backend")
    e.add_argument("--unseen", action="store_true", help="score only samples the model was not trained on")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)


def _add_nuisance_flags(p: argparse.ArgumentParser, macro: bool) -> None:
    g = p.add_argument_group("nuisances (all on by default)")
    g.add_argument("--no-head-motion", action="store_true", help="no head drift, jitter or rotation")
    g.add_argument("--no-noise", action="store_true", help="no sensor noise")
    g.add_argument("--no-flicker", action="store_true", help="no illumination flicker")
    g.add_argument("--no-blinks", action="store_true", help="no blinks")
    if macro:
        g.add_argument("--no-macro", action="store_true", help="no macro-expressions")
    g.add_argument("--jpeg-quality", type=int, metavar="Q", help="compress every frame as JPEG of quality Q")


def _synth_parser(sub: Any) -> None:
    synth = sub.add_parser("synth", help="generate synthetic micro-expression data",
                           description="Render FACS action units of micro-expression size on real face "
                                       "photographs and write them as the real datasets are laid out "
                                       "(dataset), as long videos for spotting (video), or show the "
                                       "synthetic subjects (faces).")
    ss = synth.add_subparsers(dest="synth_command", required=True, metavar="{dataset,video,faces}")

    d = ss.add_parser("dataset", help="a recognition dataset in a real dataset's layout",
                      description="Write clips (onset..offset frames) and annotation files exactly as "
                                  "CASME II, SAMM, SMIC-HS, CAS(ME)^3 part A or the MEGC2019 composite are "
                                  "distributed. "
                                  "Example: edge-mer synth dataset --layout casme2 --subjects 10 --out DIR")
    d.add_argument("--layout", choices=("casme2", "samm", "smic", "casme3", "megc2019"), default="casme2")
    d.add_argument("--out", required=True, help="dataset root folder to create")
    d.add_argument("--force", action="store_true", help="replace a non-empty --out")
    d.add_argument("--subjects", type=at_least(1),
                   help="number of subjects (default 10; 68 for megc2019 --diverse)")
    d.add_argument("--clips-per-subject", type=at_least(1),
                   help="clips per subject (default 5; megc2019 --diverse: uneven, summing to the real "
                        "composite's 145 / 133 / 164 samples)")
    d.add_argument("--diverse", action="store_true",
                   help="subjects that differ: expression strength x0.5-x2, asymmetry, tempo, AU combinations, "
                        "wider identity warps, MEGC2019's class shares, a few ambiguous and mislabelled samples")
    d.add_argument("--size", type=frame_size, help="frame size WxH (default: the dataset's own, e.g. 640x480)")
    d.add_argument("--fps", type=positive, help="frame rate (default: the dataset's own, 200 or 100)")
    d.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    d.add_argument("--no-quirks", action="store_true", help="no '/' apex cells, no s1/s01 mix")
    _add_nuisance_flags(d, macro=False)
    d.add_argument("--json", action="store_true", help="print a JSON summary")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_synth_dataset)

    v = ss.add_parser("video", help="a long video with micro-, macro-expressions and blinks",
                      description="Render a long video with events at known frames and write the truth. "
                                  "Example: edge-mer synth video --seconds 60 --fps 30 --out clip.mp4 "
                                  "--truth truth.csv")
    v.add_argument("--out", default="edge-mer-demo/synthetic.mp4",
                   help=".mp4, .avi, or a folder for JPEG frames (default edge-mer-demo/synthetic.mp4)")
    v.add_argument("--truth", help="truth CSV (default: next to --out, .csv)")
    v.add_argument("--truth-sheet", help="also write the truth as an annotation sheet (.xlsx)")
    v.add_argument("--truth-style", choices=("casme2lv", "sammlv"), default="casme2lv",
                   help="style of --truth-sheet: CAS(ME)^2 or SAMM long videos")
    v.add_argument("--seconds", type=positive, default=60.0)
    v.add_argument("--fps", type=positive, default=30.0)
    v.add_argument("--size", type=frame_size, default=(640, 480), help="frame size WxH (default 640x480)")
    v.add_argument("--subject", type=int, default=0, help="synthetic subject index (default 0)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--micro-per-minute", type=float, default=8.0)
    v.add_argument("--macro-per-minute", type=float, default=2.0)
    v.add_argument("--blinks-per-minute", type=float, default=12.0)
    v.add_argument("--gray", action="store_true", help="grey frames (like SAMM)")
    _add_nuisance_flags(v, macro=True)
    v.add_argument("--json", action="store_true", help="print a JSON summary")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=cmd_synth_video)

    f = ss.add_parser("faces", help="a contact sheet of the synthetic subjects and the photos' licences")
    f.add_argument("--out", default="edge-mer-demo/subjects.png")
    f.add_argument("--subjects", type=at_least(1), default=24)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_synth_faces)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="edge-mer",
        description="On-device facial micro-expression recognition: synthetic data, datasets, training, "
                    "INT8 export and a camera loop for Jetson, Raspberry Pi and any CPU.")
    parser.add_argument("--version", action="version", version=f"edge-mer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doc = sub.add_parser("doctor", help="what this machine can run, and what to install",
                         description="Report Python and package versions, the OpenCV build (contrib, "
                                     "GStreamer, face cascades), inference engines, CUDA devices and "
                                     "cameras, with a hint for each missing part.")
    doc.add_argument("--json", action="store_true", help="print one JSON object")
    doc.add_argument("--no-torch", action="store_true", help="do not import torch (faster)")
    doc.add_argument("--selftest", action="store_true", help="on a CUDA device: build the engine of the packaged "
                                                             "model (or --model) and compare it with ONNX Runtime; "
                                                             "time the CUDA flow stage's layouts and compare it "
                                                             "with the numpy reference")
    doc.add_argument("--model", help="ONNX model for --selftest")
    doc.set_defaults(func=cmd_doctor)
    _data_parser(sub)
    _synth_parser(sub)
    _train_parsers(sub)
    add_quant_parsers(sub)
    add_flow_parser(sub)
    add_spot_parser(sub)
    add_face_parser(sub)
    add_run_parsers(sub)
    dep = sub.add_parser("deploy", help="deploy to one device (--host) or a fleet (--inventory) through Ansible",
                         description="Build a wheel and a bundle (model ONNX, sidecar, config) and run the Ansible "
                                     "playbook ansible/site.yml over the hosts in parallel: copy the bundle, install "
                                     "it (setup.sh on a Jetson, a venv on a Raspberry Pi or any other box), build the "
                                     "TensorRT engine on a Jetson, render, enable and start the systemd service, and "
                                     "check each device with its own edge-mer doctor. A second deploy with the same "
                                     "inputs changes nothing; a host that fails does not stop the others. Examples: "
                                     "edge-mer deploy --host nvidia@orin.local; edge-mer deploy --inventory hosts.ini "
                                     "--serial 1")
    target = dep.add_mutually_exclusive_group()
    target.add_argument("--host", help="one device: user@host")
    target.add_argument("--inventory", metavar="FILE", help="an Ansible inventory (INI or YAML); host variables as in "
                                                            "ansible/roles/edge_mer_device/defaults/main.yml")
    dep.add_argument("--port", type=at_least(1, 65535), default=22, help="--host: SSH port")
    dep.add_argument("--identity", help="--host: SSH private key")
    dep.add_argument("--prefix", help="--host: install folder on the device (default /opt/edge-mer; ~/... is the "
                                      "SSH user's home)")
    dep.add_argument("--remote-python", help="--host: the device's Python (default: python3)")
    dep.add_argument("--model", help="ONNX model (default: the packaged demo model)")
    dep.add_argument("--serial", type=at_least(1), metavar="N",
                     help="rolling update: N hosts at a time, each batch finished (service restarted, doctor "
                          "answered) before the next starts")
    dep.add_argument("--limit", metavar="PATTERN", help="only the inventory's hosts matching this Ansible pattern")
    dep.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                     help="a host variable for every host, e.g. edge_mer_serve=0.0.0.0:8080 or "
                          "'edge_mer_events=[\"mqtt://broker/mer\"]' (repeatable)")
    dep.add_argument("--ssh-option", action="append", default=[], metavar="OPT",
                     help="extra ssh -o option, e.g. UserKnownHostsFile=... (repeatable)")
    service = dep.add_mutually_exclusive_group()
    service.add_argument("--service", dest="service", action="store_true", default=None,
                         help="install, enable and start the systemd service (the default)")
    service.add_argument("--no-service", dest="service", action="store_false",
                         help="render the unit into the prefix only")
    dep.add_argument("--dry-run", action="store_true", help="build the bundle, list hosts and steps; contact nothing")
    dep.add_argument("--bundle-only", metavar="DIR", help="build the bundle into this new folder and stop (for "
                                                          "ansible-playbook ... -e edge_mer_bundle=DIR)")
    dep.add_argument("--json", action="store_true", help="per host: status, changed, the failed step and why")
    dep.set_defaults(func=cmd_deploy)
    return parser


# a full disk or quota, a read-only file system, no permission: what the machine, not the code, refuses
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "host_only", False) and sys.version_info < HOST_PYTHON:
            raise UserError(f"{parser.prog} {args.command} needs Python {'.'.join(map(str, HOST_PYTHON))} or newer "
                            f"(this is {sys.version.split()[0]}): run it on the training host; the device runtime "
                            "(run, spot, bench, flow, doctor, build-engine) runs on this Python")
        return int(args.func(args))
    except UserError as exc:
        print(f"edge-mer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-mer: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edge-mer doctor | head -1`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and Python's final flush finds no pipe
        return 0
    except OSError as exc:
        if exc.errno not in DISK_ERRORS:
            raise  # not the machine's disk: a fault of the code, which stays loud
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
        print(f"edge-mer: error: {exc.filename or 'a file'}: {exc.strerror}" +
              ("; results are written whole or not at all, so nothing half written was left" if full else ""),
              file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in EXTRAS:
            raise  # not an optional dependency: a fault of the code, which stays loud
        print(f"edge-mer: error: {parser.prog} {args.command} needs {EXTRAS[missing]}", file=sys.stderr)
        return 2
