"""The systemd twin: a Debian bookworm root of this machine's architecture, booted with systemd as its PID 1 in
systemd-nspawn (sharing this machine's network), with an SSH server and a user `deploy` who has passwordless sudo,
as on a Raspberry Pi or a Jetson. ``edge-mer deploy`` installs it: the prefix in /opt made through sudo, the
service's own user, the unit installed, enabled and started by systemd, restarted when its settings change and left
alone when nothing did. The service runs the demo clip as its camera and writes events into its state folder.

Run with ``python -m pytest -m twin`` (``.ci/run`` does); it needs root, debootstrap and systemd-nspawn
(systemd-container) and the package registries, and takes minutes. The pristine root is kept in
``$EDGE_MER_TWIN_ROOT_SYSTEMD`` (default ``~/.cache/edge-mer/twin/bookworm-systemd``); each run boots a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.twin

MIRROR = os.environ.get("EDGE_MER_TWIN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,python3-numpy,python3-apt,sudo,"
            "ca-certificates")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _missing() -> str:
    if os.geteuid() != 0:
        return "the systemd twin needs root (debootstrap, systemd-nspawn)"
    for tool in ("debootstrap", "systemd-nspawn"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed (apt install debootstrap systemd-container; .ci/run does)"
    return ""


def _pristine(keys: Path) -> Path:
    root = Path(os.environ.get("EDGE_MER_TWIN_ROOT_SYSTEMD") or Path.home() / ".cache/edge-mer/twin/bookworm-systemd")
    if (root / ".edge-mer-twin").is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["debootstrap", "--variant=minbase", f"--include={PACKAGES}", "bookworm", str(root), MIRROR],
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"debootstrap failed: {proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    (root / ".edge-mer-twin").write_text("debootstrap bookworm minbase + " + PACKAGES + "\n")
    return root


def _chroot(root: Path, *argv: str) -> None:
    subprocess.run(["chroot", str(root), *argv], check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    why = _missing()
    if why:
        pytest.skip(why)
    keys = tmp_path_factory.mktemp("twin-keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client")], check=True)
    root = tmp_path_factory.mktemp("systemd-twin") / "root"
    subprocess.run(["cp", "-a", str(_pristine(keys)), str(root)], check=True, timeout=600)
    # the device as shipped: a user with passwordless sudo who logs in with a key, the build machine's CAs
    _chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "deploy")
    (root / "etc/sudoers.d/deploy").write_text("deploy ALL=(ALL) NOPASSWD: ALL\n")
    os.chmod(root / "etc/sudoers.d/deploy", 0o440)
    ssh = root / "home/deploy/.ssh"
    ssh.mkdir(mode=0o700)
    (ssh / "authorized_keys").write_text((keys / "client.pub").read_text())
    _chroot(root, "chown", "-R", "deploy:deploy", "/home/deploy/.ssh")
    for cert in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        shutil.copy(cert, root / "usr/local/share/ca-certificates" / cert.name)
    _chroot(root, "update-ca-certificates")
    port = _free_port()
    (root / "etc/ssh/sshd_config.d/twin.conf").write_text(f"Port {port}\nListenAddress 127.0.0.1\n")
    (root / "etc/hostname").write_text("twin\n")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    boot = subprocess.Popen(["systemd-nspawn", "-D", str(root), "--boot", "--register=no", "--keep-unit", "--quiet"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    box = {"root": root, "port": port, "key": keys / "client", "dir": keys}
    try:
        deadline = time.monotonic() + 180
        while True:
            if boot.poll() is not None:
                said = boot.stdout.read() if boot.stdout else ""
                pytest.skip(f"systemd-nspawn could not boot the twin here: {said[-400:]}")
            proc = _ssh(box, "systemctl is-system-running --wait", check=False)
            if proc.returncode == 0 or "degraded" in proc.stdout:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the twin did not come up: {proc.stdout} {proc.stderr}")
            time.sleep(1)
        yield box
    finally:
        boot.terminate()  # systemd-nspawn asks the container's systemd to power off
        try:
            boot.wait(timeout=60)
        except subprocess.TimeoutExpired:
            boot.kill()
            boot.wait(timeout=30)


def _ssh(box, command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ssh", "-p", str(box["port"]), "-i", str(box["key"]), "-o", "BatchMode=yes",
                           "-o", "StrictHostKeyChecking=accept-new", "-o", f"UserKnownHostsFile={box['dir'] / 'kh'}",
                           "-o", "ConnectTimeout=5", "deploy@127.0.0.1", command],
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{command}: {proc.stdout}{proc.stderr}")
    return proc


def _deploy(box, *settings: str) -> dict:
    args = ["deploy", "--host", "deploy@127.0.0.1", "--port", str(box["port"]), "--identity", str(box["key"]),
            "--remote-python", "/usr/bin/python3", "--set", "edge_mer_source=demo://?seconds=3600",
            "--ssh-option", f"UserKnownHostsFile={box['dir'] / 'kh'}",
            "--ssh-option", "StrictHostKeyChecking=accept-new", "--json"]
    for s in settings:
        args += ["--set", s]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)["hosts"]["127.0.0.1"]


def _service(box) -> dict[str, str]:
    out = _ssh(box, "systemctl show edge-mer.service -p ActiveState -p UnitFileState -p MainPID -p User "
                    "-p NRestarts").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def test_the_service_is_installed_started_restarted_on_change_and_left_alone_otherwise(box):
    first = _deploy(box)
    assert first["changed"] and first["report"]["service"] == "enabled and started"
    assert first["report"]["prefix"] == "/opt/edge-mer"
    assert first["report"]["unit"] == "/etc/systemd/system/edge-mer.service"
    # /opt made through sudo and owned by the SSH user; the service's own user; systemd's state folder
    assert _ssh(box, "stat -c %U /opt/edge-mer").stdout.strip() == "deploy"
    state = _service(box)
    assert state["ActiveState"] == "active" and state["UnitFileState"] == "enabled" and state["User"] == "edge-mer"
    assert _ssh(box, f"ps -o user= -p {state['MainPID']}").stdout.strip() == "edge-mer"
    assert "video" in _ssh(box, "id -nG edge-mer").stdout.split()
    # the service runs: the demo clip as its camera, events in its state folder
    deadline = time.monotonic() + 180
    while _ssh(box, "test -s /var/lib/edge-mer/events.jsonl", check=False).returncode != 0:
        assert time.monotonic() < deadline, _ssh(box, "sudo journalctl -u edge-mer --no-pager -n 20").stdout
        time.sleep(2)
    event = json.loads(_ssh(box, "head -n 1 /var/lib/edge-mer/events.jsonl").stdout)
    assert event["label"]
    assert _ssh(box, "stat -c %U /var/lib/edge-mer").stdout.strip() == "edge-mer"
    # nothing changed: nothing restarted
    second = _deploy(box)
    assert not second["changed"], second["changed_tasks"]
    assert _service(box)["MainPID"] == state["MainPID"]
    # a setting changed (the live view): the environment file changes and the service restarts with it
    port = _free_port()
    third = _deploy(box, f"edge_mer_serve=127.0.0.1:{port}", "edge_mer_serve_token=tw1n")
    assert third["changed_tasks"] == ["edge_mer_service : the environment file (secrets, read by the service user and "
                                      "root only)", "edge_mer_service : restart edge-mer"]
    after = _service(box)
    assert after["ActiveState"] == "active" and after["MainPID"] != state["MainPID"] and after["NRestarts"] == "0"
    assert _ssh(box, "stat -c '%U %a' /opt/edge-mer/edge-mer.env").stdout.split() == ["edge-mer", "600"]
    deadline = time.monotonic() + 120
    while True:  # the twin shares this machine's network: its live view answers here
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?token=tw1n", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, _ssh(box, "sudo journalctl -u edge-mer --no-pager -n 20").stdout
        time.sleep(2)
    unit = _ssh(box, "cat /etc/systemd/system/edge-mer.service").stdout
    assert "tw1n" not in unit and _ssh(box, "systemd-analyze verify edge-mer.service", check=False).returncode == 0
