"""``edge-mer deploy``: one device or a fleet, through the Ansible playbook in ``ansible/``.

1. the bundle is built here once: the wheel of this source tree, the model ONNX and its sidecar,
   ``config.json``, ``setup.sh`` and a manifest with the sha256 of every input (hatchling's wheels are
   reproducible, so the same tree gives the same bytes and a second deploy copies nothing);
2. the inventory is Ansible's own (``--inventory FILE``, INI or YAML) or one host made from ``--host``;
3. ``ansible-playbook ansible/site.yml`` runs over the hosts in parallel, or ``--serial N`` at a time
   (each batch a run of its own, so a batch that fails does not stop the next; the service is restarted
   host by host); the play probes each device, copies the bundle, installs it (setup.sh on a Jetson, a venv
   on a Pi or any other box), builds the engine on a Jetson, renders and starts the systemd unit and runs
   the device's own ``edge-mer doctor --json``;
4. the report (``ansible/callback_plugins/edge_mer_report.py``) says per host whether anything changed
   and, for a host that failed, at which step and why.

``--dry-run`` builds the bundle and lists the hosts and the play's tasks; it contacts no device.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edge_mer import __version__
from edge_mer.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
PLAYBOOK = ROOT / "ansible" / "site.yml"
ANSIBLE_HINT = "pip install 'edge-mer[deploy]' (ansible-core), or apt install ansible"


@dataclass
class Host:
    """One device given on the command line (``--host user@host``)."""

    host: str
    port: int = 22
    identity: Path | None = None
    prefix: str | None = None
    python: str | None = None

    def inventory(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The device as an Ansible YAML/JSON inventory: one host named after ``host`` without the user."""
        user, _, address = self.host.rpartition("@")
        hostvars: dict[str, Any] = {"ansible_host": address, "ansible_port": self.port}
        if user:
            hostvars["ansible_user"] = user
        if self.identity:
            hostvars["ansible_ssh_private_key_file"] = str(self.identity)
        if self.prefix:
            hostvars["edge_mer_prefix"] = self.prefix
        if self.python:
            hostvars["ansible_python_interpreter"] = self.python
            hostvars["edge_mer_python"] = self.python
        hostvars.update(settings)
        return {"all": {"hosts": {address: hostvars}}}


@dataclass
class Plan:
    inventory: Path
    model: Path
    service: bool | None = None
    serial: int | None = None
    limit: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # extra vars for every host (--inventory)
    ssh_options: list[str] = field(default_factory=list)


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
    """Wheel + model + sidecar + config + setup.sh + manifest.json into ``out``; returns the manifest."""
    from edge_mer.runtime.artifact import load_artifact, sidecar_path

    load_artifact(model)  # one clear error for a missing model, sidecar or a changed file
    if not (ROOT / "pyproject.toml").is_file() or not PLAYBOOK.is_file():
        raise UserError("deploy builds the wheel from the source tree and runs its ansible/ playbook, which this "
                        "installation lacks: run it from a clone (pip install -e .)")
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    wheels = sorted(out.glob("edge_mer-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise UserError(f"building the wheel failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    for src in (model, sidecar_path(model), ROOT / "scripts" / "jetson" / "setup.sh"):
        (out / src.name).write_bytes(src.read_bytes())
    config = {"model": model.name, "sidecar": sidecar_path(model).name}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    files = sorted([wheels[-1].name, model.name, sidecar_path(model).name, "setup.sh", "config.json"])
    manifest = {"edge_mer": __version__, "source_sha256": tree_hash(ROOT), "wheel": wheels[-1].name,
                "model": model.name, "model_sha256": _file_hash(model),
                "sidecar_sha256": _file_hash(sidecar_path(model)), "config_sha256": _file_hash(out / "config.json"),
                "files": [*files, "manifest.json"]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def ansible_tool(name: str) -> str:
    """``ansible-playbook`` (or another Ansible command): beside this Python first, then on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise UserError(f"edge-mer deploy runs Ansible, which is not installed ({name} not found): {ANSIBLE_HINT}")
    return found


def _environment(work: Path, report: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("ANSIBLE_CONFIG", str(PLAYBOOK.parent / "ansible.cfg"))
    env.update({
        "ANSIBLE_CALLBACK_PLUGINS": str(PLAYBOOK.parent / "callback_plugins"),
        "ANSIBLE_CALLBACKS_ENABLED": "edge_mer_report",
        "ANSIBLE_ROLES_PATH": str(PLAYBOOK.parent / "roles"),
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "EDGE_MER_REPORT": str(report),
    })
    # ssh's control sockets need a short path (108 bytes at most): the work folder is under /tmp
    env.setdefault("ANSIBLE_SSH_CONTROL_PATH_DIR", str(work / "cp"))
    return env


def list_hosts(plan: Plan, env: dict[str, str]) -> list[str]:
    """The hosts the play runs on, in the inventory's order (what ``--serial`` batches follow)."""
    argv = [ansible_tool("ansible"), "all", "-i", str(plan.inventory), "--list-hosts"]
    argv += ["--limit", plan.limit] if plan.limit else []
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    lines = proc.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("hosts (")), None)
    hosts = [line.strip() for line in lines[start + 1:] if line.strip()] if start is not None else []
    if proc.returncode != 0 or not hosts:
        problems = [line for line in proc.stderr.splitlines() if "ERROR" in line or "WARNING" in line]
        why = (problems or [""])[0].split(":", 1)[-1].strip()
        raise UserError(f"no hosts in {plan.inventory}" + (f" match --limit {plan.limit}" if plan.limit else "")
                        + (f" (Ansible: {why})" if why else ""))
    return hosts


def explain(reason: str) -> str:
    """Ansible's words for the usual SSH failures, said as the user would look for them."""
    if "Permission denied" in reason:
        return f"ssh refused the key: {reason}"
    if any(s in reason for s in ("Connection refused", "Could not resolve", "timed out", "No route")):
        return f"cannot reach the device: {reason}"
    return reason


def run_playbook(plan: Plan, bundle: Path, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The play over every host (``serial``: that many at a time, one run per batch); the merged report."""
    report = work / "report.json"
    env = _environment(work, report)
    (work / "tmp").mkdir(exist_ok=True)
    hosts = list_hosts(plan, env)
    extra: dict[str, Any] = {"edge_mer_bundle": str(bundle), **plan.settings}
    if plan.service is not None:
        extra["edge_mer_service"] = plan.service
    (work / "extra.json").write_text(json.dumps(extra))
    size = plan.serial or len(hosts)
    batches = [hosts[i:i + size] for i in range(0, len(hosts), size)]
    merged: dict[str, Any] = {}
    for k, batch in enumerate(batches, 1):
        (work / "limit").write_text("\n".join(batch) + "\n")
        argv = [ansible_tool("ansible-playbook"), "-i", str(plan.inventory), str(PLAYBOOK),
                "-e", f"@{work / 'extra.json'}", "--limit", f"@{work / 'limit'}", "--forks", str(min(len(batch), 50))]
        if plan.ssh_options:
            argv += ["--ssh-extra-args", " ".join(f"-o {shlex.quote(o)}" for o in plan.ssh_options)]
        if len(batches) > 1:
            log(f"batch {k}/{len(batches)}: {', '.join(batch)}")
        log("$ " + " ".join(shlex.quote(a) for a in argv))
        report.unlink(missing_ok=True)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip():
                log("  " + line.rstrip())
        proc.wait()
        found = json.loads(report.read_text())["hosts"] if report.is_file() else {}
        for name in batch:
            entry = found.get(name) or {"status": "failed", "changed": False, "changed_tasks": [],
                                        "failed_task": "", "reason": f"ansible-playbook exited {proc.returncode} "
                                        "before this host ran", "report": {}}
            entry["batch"] = k
            if entry["status"] != "ok":
                entry["reason"] = explain(entry["reason"])
            merged[name] = entry
    return {"hosts": merged, "batches": batches}


def summary_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for name, h in result["hosts"].items():
        if h["status"] == "ok":
            r = h["report"]
            what = f"changed ({len(h['changed_tasks'])} steps)" if h["changed"] else "no change"
            lines.append(f"{name}: ok, {what}; {r.get('kind', '?')} {r.get('release') or ''}".rstrip()
                         + f", {r.get('prefix', '?')}, Python {r.get('python', '?')}, service {r.get('service', '?')}")
        else:
            lines.append(f"{name}: {h['status'].upper()} at '{h['failed_task']}': {h['reason']}")
    failed = [n for n, h in result["hosts"].items() if h["status"] != "ok"]
    lines.append(f"{len(result['hosts']) - len(failed)} of {len(result['hosts'])} hosts deployed"
                 + (f"; failed: {', '.join(failed)}" if failed else ""))
    return lines


def deploy(model: Path, *, host: Host | None = None, inventory: Path | None = None, service: bool | None = None,
           serial: int | None = None, limit: str | None = None, settings: dict[str, Any] | None = None,
           ssh_options: list[str] | None = None, dry_run: bool = False,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    if (host is None) == (inventory is None):
        raise UserError("deploy needs --host USER@HOST or --inventory FILE (one of them)")
    if host is not None and host.host.startswith("-"):
        raise UserError(f"--host {host.host!r} starts with '-', which ssh would take as an option")
    if inventory is not None and not inventory.is_file():
        raise UserError(f"inventory not found: {inventory}")
    ansible_tool("ansible-playbook")
    short = "/tmp" if os.path.isdir("/tmp") else None
    with tempfile.TemporaryDirectory(prefix="edge-mer-deploy-", dir=short) as tmp:
        work = Path(tmp)
        log("bundle")
        manifest = build_bundle(model, work / "bundle")
        log(f"  {manifest['wheel']}, {model.name}, config.json, setup.sh (source {manifest['source_sha256'][:12]})")
        if host is not None:
            inventory = work / "inventory.yml"
            inventory.write_text(json.dumps(host.inventory(settings or {}), indent=2))
            settings = {}
        assert inventory is not None
        plan = Plan(inventory, model, service, serial, limit, settings or {}, ssh_options or [])
        if dry_run:
            env = _environment(work, work / "report.json")
            hosts = list_hosts(plan, env)
            tasks = subprocess.run([ansible_tool("ansible-playbook"), "-i", str(inventory), str(PLAYBOOK),
                                    "--list-tasks", "-e", f"edge_mer_bundle={work / 'bundle'}"],
                                   capture_output=True, text=True, env=env, timeout=300)
            log(f"dry run: nothing is contacted; the play would run on {len(hosts)} host(s)"
                + (f", {serial} at a time" if serial else ", all at once") + ": " + ", ".join(hosts))
            for line in tasks.stdout.splitlines():
                if line.strip():
                    log("  " + line.rstrip())
            return {"dry_run": True, "hosts": hosts, "manifest": manifest, "changed": False, "failed": []}
        result = run_playbook(plan, work / "bundle", work, log)
    result.update({"dry_run": False, "manifest": manifest,
                   "changed": any(h["changed"] for h in result["hosts"].values()),
                   "failed": [n for n, h in result["hosts"].items() if h["status"] != "ok"]})
    for line in summary_lines(result):
        log(line)
    return result
