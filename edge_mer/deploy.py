"""``edge-mer deploy``: a wheel and a bundle over SSH to a device, set up there, checked by its own doctor.

Steps (each printed; ``--dry-run`` prints them and runs nothing):

1. build the wheel of this source tree and a bundle: wheel, model ONNX + sidecar,
   ``config.json`` (how the service runs), ``setup.sh`` and a manifest with the
   sha256 of every input;
2. read the device's manifest: when it equals ours the device is up to date
   and nothing is copied or installed (a second deploy changes nothing);
3. copy the bundle (one tar stream through ssh: the remote folder is quoted by the
   device's shell like every other remote argument, which scp's SFTP mode would not
   do) into ``PREFIX/bundle`` through a temporary folder that is renamed into place
   only when complete, so a failed copy leaves the last good bundle as it was;
4. install: on a Jetson, ``setup.sh`` builds the venv beside JetPack's TensorRT,
   OpenCV and numpy, and the engine is built on the device into ``PREFIX/engines``
   (once per deploy: an up-to-date engine is reused); elsewhere (a test machine)
   the wheel goes into ``PREFIX/lib`` for the given remote Python and the Jetson
   steps are shown as a dry run;
5. ``--service``: a systemd unit running ``edge-mer run --camera 0`` on that
   engine, as the SSH user, with absolute paths (``~`` in ``--prefix`` is the
   device user's home) and JetPack's CUDA on its PATH, enabled and started
   (Jetson only; shown as a dry run elsewhere);
6. ``edge-mer doctor --json`` on the device must answer.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import io
import json
import shlex
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_mer import __version__
from edge_mer.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
# JetPack's CUDA toolkit (nvcc for the flow kernels), which no login shell, venv or unit puts on PATH
CUDA_BIN = "/usr/local/cuda/bin"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def service_unit(prefix: str, user: str, model: str) -> str:
    """The systemd unit that runs the camera loop on ``model`` (absolute paths: systemd expands no ``~``)."""
    for name, path in (("prefix", prefix), ("model", model)):
        if not path.startswith("/"):
            raise UserError(f"the service needs an absolute {name}, got {path!r}")
    exe, events = f"{prefix}/venv/bin/edge-mer", f"{prefix}/events.jsonl"
    return f"""[Unit]
Description=edge-mer micro-expression recognition
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
User={user}
SupplementaryGroups=video
WorkingDirectory={prefix}
Environment=PATH={prefix}/venv/bin:{CUDA_BIN}:{SYSTEM_PATH}
ExecStart={shlex.quote(exe)} run --camera 0 --model {shlex.quote(model)} --events {shlex.quote(events)} --quiet
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
"""


@dataclass
class Target:
    host: str
    port: int = 22
    identity: Path | None = None
    prefix: str = "~/.local/share/edge-mer"
    python: str = "python3"
    extra: list[str] = field(default_factory=list)

    def ssh_args(self) -> list[str]:
        args = ["-p", str(self.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *self.extra]
        return args + (["-i", str(self.identity)] if self.identity else [])


class Deployer:
    def __init__(self, target: Target, dry_run: bool = False, log: Any = print) -> None:
        self.t = target
        self.dry_run = dry_run
        self.log = log

    def ssh(self, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ssh", *self.t.ssh_args(), "--", self.t.host, command]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        if check and proc.returncode != 0:
            raise UserError(_ssh_error(self.t, proc.stderr, command))
        return proc

    def run(self, what: str, command: str) -> subprocess.CompletedProcess[str] | None:
        self.log(f"  {what}: ssh {self.t.host} {command}")
        return None if self.dry_run else self.ssh(command)

    def send(self, files: list[Path], folder: str) -> None:
        """``files`` into a new ``folder`` on the device, as one tar stream into ssh."""
        q = shlex.quote
        command = f"rm -rf {q(folder)} && mkdir -p {q(folder)} && tar -xf - -C {q(folder)}"
        self.log(f"  copy {len(files)} files: tar | ssh {self.t.host} {command}")
        if self.dry_run:
            return
        stream = io.BytesIO()
        with tarfile.open(fileobj=stream, mode="w") as tar:
            for f in files:
                tar.add(str(f), arcname=f.name)
        argv = ["ssh", *self.t.ssh_args(), "--", self.t.host, command]
        proc = subprocess.run(argv, input=stream.getvalue(), capture_output=True, timeout=600)
        if proc.returncode != 0:
            self.ssh(f"rm -rf {q(folder)}", check=False)
            raise UserError(_ssh_error(self.t, proc.stderr.decode(errors="replace"), "copy"))


def _ssh_error(t: Target, stderr: str, command: str) -> str:
    last = (stderr.strip().splitlines() or ["no output"])[-1]
    if "Permission denied" in stderr:
        return f"ssh to {t.host}:{t.port} refused the key{f' {t.identity}' if t.identity else ''}: {last}"
    if "Could not resolve" in stderr or "Connection refused" in stderr or "timed out" in stderr:
        return f"cannot reach {t.host}:{t.port}: {last}"
    return f"on {t.host}: '{command.split()[0]}' failed: {last}"


def tree_hash(root: Path) -> str:
    """sha256 over the package's source files and pyproject (what the wheel is made of)."""
    h = hashlib.sha256()
    files = sorted(p for p in (root / "edge_mer").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for p in [root / "pyproject.toml", *files]:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_bundle(model: Path, out: Path) -> dict[str, Any]:
    """Wheel + model + sidecar + config + setup.sh into ``out``; returns the manifest."""
    from edge_mer.runtime.artifact import load_artifact, sidecar_path

    if not (ROOT / "pyproject.toml").is_file():
        raise UserError("deploy builds the wheel from the source tree, which this installation lacks: run it from "
                        "a clone (pip install -e .)")
    load_artifact(model)  # one clear error for a missing model, sidecar or a changed file
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    wheels = sorted(out.glob("edge_mer-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise UserError(f"building the wheel failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    for src in (model, sidecar_path(model), ROOT / "scripts" / "jetson" / "setup.sh"):
        (out / src.name).write_bytes(src.read_bytes())
    config = {"model": model.name, "events": "events.jsonl", "run": ["run", "--camera", "0"]}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    manifest = {"edge_mer": __version__, "source_sha256": tree_hash(ROOT), "wheel": wheels[-1].name,
                "model": model.name, "model_sha256": _file_hash(model),
                "sidecar_sha256": _file_hash(sidecar_path(model)), "config_sha256": _file_hash(out / "config.json")}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _device_state(d: Deployer, prefix: str) -> dict[str, Any]:
    """The device's user, home, installed manifest and L4T release line (one ssh call)."""
    where = f'"$HOME"{shlex.quote(prefix[1:])}' if _in_home(prefix) else shlex.quote(prefix)
    remote = d.ssh(f"printf 'user=%s\\nhome=%s\\n' \"$(id -un)\" \"$HOME\"; "
                   f"cat {where}/bundle/manifest.json 2>/dev/null; echo; "
                   "head -1 /etc/nv_tegra_release 2>/dev/null", check=False)
    if remote.returncode == 255:
        raise UserError(_ssh_error(d.t, remote.stderr, "ssh"))
    lines = remote.stdout.splitlines()
    state: dict[str, Any] = {"user": "", "home": "", "manifest": {}, "release": ""}
    body = []
    for line in lines:
        key, _, value = line.partition("=")
        if key in ("user", "home") and not state[key]:
            state[key] = value
        elif line.startswith("# R"):
            state["release"] = line[1:].split(",")[0].strip()
        else:
            body.append(line)
    text = "\n".join(body).strip()
    if text.startswith("{"):
        with contextlib.suppress(ValueError):  # a half-written manifest: the device needs the update
            state["manifest"] = json.loads(text)
    return state


def _assumed_state(target: Target) -> dict[str, Any]:
    """What a dry run, which contacts nothing, plans for: a Jetson that needs the update, as the --host user."""
    user = target.host.split("@", 1)[0] if "@" in target.host else getpass.getuser()
    return {"user": user, "home": "/root" if user == "root" else f"/home/{user}", "manifest": {},
            "release": "R? (assumed)"}


def _in_home(prefix: str) -> bool:
    """``~`` or ``~/…``: a folder in the device user's home, which only the device's shell can place."""
    return prefix == "~" or prefix.startswith("~/")


def absolute_prefix(prefix: str, home: str) -> str:
    """``prefix`` with a leading ``~`` made the device user's home (systemd and quoting expand none)."""
    if _in_home(prefix):
        if not home.startswith("/"):
            raise UserError(f"cannot tell the device user's home folder to place {prefix}: pass an absolute --prefix")
        return home.rstrip("/") + prefix[1:]
    if not prefix.startswith("/"):
        raise UserError(f"--prefix must be absolute or start with ~/, got {prefix!r}")
    return prefix


def deploy(target: Target, model: Path, service: bool = False, dry_run: bool = False,
           log: Any = print) -> dict[str, Any]:
    if target.host.startswith("-"):
        raise UserError(f"--host {target.host!r} starts with '-', which ssh would take as an option")
    d = Deployer(target, dry_run, log)
    q = shlex.quote
    with tempfile.TemporaryDirectory() as tmp:
        log("1. bundle")
        manifest = build_bundle(model, Path(tmp) / "bundle")
        log(f"  {manifest['wheel']}, {model.name}, config.json, setup.sh")
        log("2. device state")
        state = _assumed_state(target) if dry_run else _device_state(d, target.prefix)
        prefix = absolute_prefix(target.prefix, state["home"])
        jetson = bool(state["release"])
        changed = state["manifest"] != manifest
        if dry_run:
            log(f"  dry run: {target.host} is not contacted; the plan for a Jetson that needs the update, "
                f"user {state['user']}, home {state['home']} (assumed)")
        else:
            log(f"  {'Jetson ' + state['release'] if jetson else 'not a Jetson'}; user {state['user'] or '?'}; "
                f"{prefix}; {'update needed' if changed else 'up to date: nothing to copy or install'}")
        bundle, venv = f"{prefix}/bundle", f"{prefix}/venv"
        onnx = f"{bundle}/{model.name}"
        if changed:
            log("3. copy")
            stage = f"{prefix}/.bundle.new"
            d.send(sorted((Path(tmp) / "bundle").iterdir()), stage)
            log("4. install")
            wheel = f"{bundle}/{manifest['wheel']}"
            install = (f"rm -rf {q(prefix + '/bundle.old')} && (test ! -d {q(bundle)} || mv {q(bundle)} "
                       f"{q(prefix + '/bundle.old')}) && mv {q(stage)} {q(bundle)} && ")
            if jetson:
                d.run("setup", install + f"bash {q(bundle + '/setup.sh')} --from {q(wheel)} --prefix {q(venv)}")
            else:
                d.run("install", install + f"{q(target.python)} -m pip install -q --no-deps --no-index --upgrade "
                                 f"--target {q(prefix + '/lib')} {q(wheel)}")
                log(f"  (not a Jetson: setup.sh and the engine build are skipped; on a Jetson they would run: "
                    f"bash {bundle}/setup.sh --from {wheel} --prefix {venv}; "
                    f"edge-mer build-engine --onnx {onnx} --out {prefix}/engines)")
        engine = _engine(d, venv, onnx, f"{prefix}/engines") if jetson else None
        if service:
            # a dry run builds no engine: its name (cache key and all) is the device's to tell
            planned = f"{prefix}/engines/{Path(model.name).stem}.KEY.engine" if dry_run and jetson else onnx
            unit = service_unit(prefix, state["user"] or target.host.split("@")[0], engine or planned)
            log("5. service edge-mer.service" + ("" if jetson and not dry_run else " (dry run)"))
            cmd = (f"printf %s {q(unit)} | sudo tee /etc/systemd/system/edge-mer.service >/dev/null && "
                   "sudo systemctl daemon-reload && sudo systemctl enable edge-mer.service && "
                   "sudo systemctl restart edge-mer.service")
            if jetson and not dry_run:
                d.run("systemd", cmd)
            else:
                log(f"  ssh {target.host} {cmd}")
        log("6. check")
        doctor: dict[str, Any] = {}
        if not dry_run:
            env = "" if jetson else f"PYTHONPATH={q(prefix + '/lib')} "
            exe = q(f"{venv}/bin/python") if jetson else q(target.python)
            proc = d.ssh(f"{env}{exe} -m edge_mer doctor --json --no-torch")
            try:
                doctor = json.loads(proc.stdout)
            except ValueError:
                raise UserError(f"the device's edge-mer doctor did not answer with JSON: {proc.stdout[:200]}") from None
            log(f"  doctor: Python {doctor.get('python', '?')} on {doctor.get('machine', '?')}, engines "
                f"{sorted(k for k, v in doctor.get('engines', {}).items() if v)}")
    return {"changed": changed, "jetson": jetson, "manifest": manifest, "doctor": doctor, "dry_run": dry_run,
            "prefix": prefix, "engine": engine}


def _engine(d: Deployer, venv: str, onnx: str, engines: str) -> str | None:
    """Build the model's engine on the Jetson (reused when already built for this TensorRT and module): the
    file the service runs. None on a dry run."""
    q = shlex.quote
    proc = d.run("engine", f"{q(venv + '/bin/edge-mer')} build-engine --onnx {q(onnx)} --out {q(engines)} --json")
    if proc is None:
        return None
    try:
        return str(json.loads(proc.stdout)["engine"])
    except (ValueError, KeyError):
        raise UserError(f"the device's build-engine did not name its engine: {proc.stdout[:200]}") from None
