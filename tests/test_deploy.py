"""edge-mer deploy for real over SSH: an OpenSSH server started on 127.0.0.1 for the test, same user."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
pytestmark = pytest.mark.skipif(SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                                reason="OpenSSH server/client not installed (.ci/run installs openssh-server)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    for name in ("host", "client", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host'}
AuthorizedKeysFile {d / 'authorized_keys'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PidFile {d / 'sshd.pid'}
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory Debian's sshd expects
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read()[-300:] if proc.stderr else ''}")
        time.sleep(0.1)
    yield {"port": port, "dir": d, "host": f"{getpass.getuser()}@127.0.0.1"}
    proc.terminate()
    proc.wait(timeout=10)


def _deploy(sshd, prefix: Path, *extra: str, key: str = "client") -> subprocess.CompletedProcess[str]:
    d = sshd["dir"]
    return run_cli("deploy", "--host", sshd["host"], "--port", str(sshd["port"]), "--identity", str(d / key),
                   "--prefix", str(prefix), "--remote-python", sys.executable,
                   "--ssh-option", f"UserKnownHostsFile={d / 'known_hosts'}",
                   "--ssh-option", "StrictHostKeyChecking=accept-new", *extra)


def test_deploy_installs_checks_and_is_idempotent(sshd, tmp_path):
    prefix = tmp_path / "device"
    proc = _deploy(sshd, prefix, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = json.loads(proc.stdout)
    assert first["changed"] and not first["jetson"]
    assert first["doctor"]["python"]  # the device's own doctor answered
    bundle = prefix / "bundle"
    assert (bundle / "manifest.json").is_file() and (bundle / first["manifest"]["model"]).is_file()
    assert list(bundle.glob("edge_mer-*.whl")) and (prefix / "lib" / "edge_mer" / "cli" / "__init__.py").is_file()
    assert "setup.sh and the engine build are skipped" in proc.stderr
    before = {p: p.stat().st_mtime_ns for p in prefix.rglob("*") if p.is_file()}
    proc = _deploy(sshd, prefix, "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    second = json.loads(proc.stdout)
    assert not second["changed"] and "up to date: nothing to copy or install" in proc.stderr
    after = {p: p.stat().st_mtime_ns for p in prefix.rglob("*") if p.is_file()}
    assert before == after  # nothing on the device was touched


def test_a_hostile_prefix_and_an_awkward_model_name_stay_names(sshd, tmp_path):
    """Every remote argument is quoted: a prefix holding $(...) and a model named 'model (1).onnx' are installed
    as they are named, and nothing in them runs on the device."""
    from edge_mer.runtime.artifact import DEMO_MODEL, sidecar_path

    model = tmp_path / "model (1).onnx"
    shutil.copy(DEMO_MODEL, model)
    shutil.copy(sidecar_path(DEMO_MODEL), sidecar_path(model))
    canary = tmp_path / "ran"
    prefix = tmp_path / f"dev $(touch {canary}) `touch {canary}`"
    proc = _deploy(sshd, prefix, "--model", str(model), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not canary.exists()
    assert (prefix / "bundle" / "model (1).onnx").is_file() and (prefix / "lib" / "edge_mer").is_dir()


def test_service_and_jetson_steps_are_shown_as_dry_run(sshd, tmp_path):
    proc = _deploy(sshd, tmp_path / "device", "--service", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "5. service edge-mer.service (dry run)" in proc.stdout
    assert "systemctl enable edge-mer.service" in proc.stdout
    assert "run --camera 0" in proc.stdout
    # absolute paths, the SSH user, JetPack's CUDA on PATH
    assert f"ExecStart={tmp_path / 'device'}/venv/bin/edge-mer run --camera 0" in proc.stdout
    assert f"User={getpass.getuser()}" in proc.stdout and "/usr/local/cuda/bin:" in proc.stdout
    assert not (tmp_path / "device").exists()  # a dry run writes nothing on the device


def test_a_dry_run_contacts_nothing(tmp_path):
    """No server listens on the port: a dry run still prints the whole plan, with what it assumed."""
    proc = run_cli("deploy", "--host", "nvidia@127.0.0.1", "--port", str(_free_port()), "--prefix",
                   "~/.local/share/edge-mer", "--service", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "is not contacted" in out and "home /home/nvidia (assumed)" in out
    assert "bash /home/nvidia/.local/share/edge-mer/bundle/setup.sh" in out
    assert "User=nvidia" in out and "--model /home/nvidia/.local/share/edge-mer/engines/" in out


def test_a_host_that_looks_like_an_option_is_refused(tmp_path):
    proc = run_cli("deploy", "--host", "-oProxyCommand=touch x", "--prefix", str(tmp_path / "d"), "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "starts with '-'" in proc.stderr


def test_bad_inputs_are_one_line_and_leave_nothing(sshd, tmp_path):
    prefix = tmp_path / "device"
    proc = _deploy(sshd, prefix, key="stranger")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "refused the key" in proc.stderr
    proc = run_cli("deploy", "--host", "nobody@127.0.0.1", "--port", str(_free_port()), "--prefix", str(prefix),
                   "--ssh-option", "StrictHostKeyChecking=no")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot reach" in proc.stderr
    proc = _deploy(sshd, prefix, "--model", str(tmp_path / "missing.onnx"))
    assert proc.returncode == 2 and "model not found" in proc.stderr
    assert not prefix.exists()


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (.ci/run installs systemd)")
def test_service_unit_passes_systemd_analyze_verify(tmp_path):
    from edge_mer.deploy import service_unit

    prefix = tmp_path / "edge mer"  # a space, too: systemd must still see one executable and its arguments
    exe = prefix / "venv" / "bin" / "edge-mer"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    engine = f"{prefix}/engines/demo.int8.0123456789ab.trt10.3.0.orin.sm87.8mp.7gib.int8.engine"
    unit_text = service_unit(str(prefix), getpass.getuser(), engine)
    unit = tmp_path / "edge-mer.service"
    unit.write_text(unit_text)
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in unit_text.splitlines() if "=" in line)
    assert lines["User"] == getpass.getuser()  # not root by default
    assert "/usr/local/cuda/bin" in lines["Environment"].split("PATH=", 1)[1].split(":")  # nvcc for the flow kernels
    assert f"--model '{engine}'" in lines["ExecStart"]  # the engine deploy built, not the ONNX file
    # the unit the earlier deploy wrote (~ in ExecStart) is what systemd refuses
    unit.write_text(unit_text.replace(f"ExecStart='{exe}'", "ExecStart=~/.local/share/edge-mer/venv/bin/edge-mer"))
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "absolute path" in proc.stderr


def test_service_unit_and_prefix_are_absolute():
    from edge_mer.deploy import absolute_prefix, service_unit
    from edge_mer.errors import UserError

    assert absolute_prefix("~/.local/share/edge-mer", "/home/nvidia") == "/home/nvidia/.local/share/edge-mer"
    assert absolute_prefix("/opt/edge-mer", "/home/nvidia") == "/opt/edge-mer"
    with pytest.raises(UserError, match="absolute"):
        absolute_prefix("edge-mer", "/home/nvidia")
    with pytest.raises(UserError, match="absolute"):
        service_unit("~/.local/share/edge-mer", "nvidia", "/x.engine")
