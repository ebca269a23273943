"""The ARM64 twin: a Debian bookworm arm64 root (Raspberry Pi OS is bookworm arm64), made with debootstrap and run
under qemu-user-static, deployed to as a Raspberry Pi over SSH by ``edge-mer deploy`` (the playbook's Pi role:
apt, a venv that sees the OS's numpy, ONNX Runtime and OpenCV wheels for aarch64 under the OS's numpy), then
``edge-mer run --demo`` inside it. It proves the wheels, the code and the install steps on ARM64; under emulation
it measures nothing about speed.

Run with ``python -m pytest -m twin`` (``.ci/run`` does); it needs root (chroot, binfmt_misc), debootstrap,
qemu-user-static and the package registries, and takes minutes. The root is kept in
``$EDGE_MER_TWIN_ROOT`` (default ``~/.cache/edge-mer/twin/bookworm-arm64``) and reused by later runs.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.twin

QEMU = "/usr/bin/qemu-aarch64-static"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
MIRROR = os.environ.get("EDGE_MER_TWIN_MIRROR", "http://deb.debian.org/debian")
# what a Raspberry Pi OS Lite image has that debootstrap's minimal base lacks: Python with apt's bindings
# (Ansible's apt module), an SSH server and the CA store; python3-venv, numpy and pip come from the Pi role
PACKAGES = "python3,python3-apt,openssh-server,ca-certificates"


def _missing() -> str:
    if platform.machine() == "aarch64":
        return ""
    if os.geteuid() != 0:
        return "the ARM64 twin needs root (chroot, binfmt_misc)"
    for tool in ("debootstrap", "chroot"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} not installed (apt install debootstrap; .ci/run does)"
    if not Path(QEMU).exists():
        return "qemu-user-static not installed (apt install qemu-user-static; .ci/run does)"
    return ""


def _register_binfmt() -> None:
    """aarch64 ELF files run through qemu, inside the chroot too (the F flag opens the interpreter now)."""
    if platform.machine() == "aarch64" or (BINFMT / "qemu-aarch64").exists():
        return
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
    if not (BINFMT / "qemu-aarch64").exists():
        conf = Path("/usr/lib/binfmt.d/qemu-aarch64.conf").read_text().strip()
        (BINFMT / "register").write_text(conf)


def _build_root(root: Path) -> None:
    done = root / ".edge-mer-twin"
    if done.is_file():
        return
    if root.exists():
        _unmount(root)
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={PACKAGES}", "bookworm",
                           str(root), MIRROR], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"debootstrap failed: {proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    done.write_text("debootstrap bookworm arm64 minbase + " + PACKAGES + "\n")


def _trust_local_cas(root: Path) -> None:
    """The build machine's own CAs (a proxy's, an organisation's), as a Pi behind that proxy would have them."""
    local = Path("/usr/local/share/ca-certificates")
    if local.is_dir():
        for cert in local.glob("*.crt"):
            shutil.copy(cert, root / "usr/local/share/ca-certificates" / cert.name)
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    subprocess.run(["chroot", str(root), "update-ca-certificates"], capture_output=True, check=True, timeout=600)


def _unmount(root: Path) -> None:
    for sub in ("dev/shm", "proc"):
        if os.path.ismount(root / sub):
            subprocess.run(["umount", "-l", str(root / sub)], check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    why = _missing()
    if why:
        pytest.skip(why)
    root = Path(os.environ.get("EDGE_MER_TWIN_ROOT") or Path.home() / ".cache/edge-mer/twin/bookworm-arm64")
    _register_binfmt()
    _build_root(root)
    _trust_local_cas(root)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    # no /sys: the host's (x86) CPU topology there makes ONNX Runtime's cpuinfo crash under qemu; without it,
    # cpuinfo says "failed to parse ... /sys/devices/system/cpu/possible" once and goes on
    subprocess.run(["mount", "-t", "tmpfs", "shm", str(root / "dev/shm")], check=True)
    keys = tmp_path_factory.mktemp("twin-keys")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / "client")], check=True)
    ssh = root / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text((keys / "client.pub").read_text())
    shutil.rmtree(root / "opt/edge-mer", ignore_errors=True)  # an earlier run's install: deploy from nothing
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)
    subprocess.run(["chroot", str(root), "ssh-keygen", "-A"], capture_output=True, check=True, timeout=600)
    port = _free_port()
    sshd = subprocess.Popen(["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-p", str(port),
                             "-o", "ListenAddress=127.0.0.1", "-o", "PermitRootLogin=prohibit-password",
                             "-o", "PasswordAuthentication=no", "-o", "UsePAM=no"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120  # sshd starts slowly under emulation
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if sshd.poll() is not None:
            _unmount(root)
            pytest.fail(f"sshd in the twin did not start: {sshd.stderr.read()[-500:] if sshd.stderr else ''}")
        time.sleep(0.5)
    try:
        yield {"root": root, "port": port, "key": keys / "client", "dir": keys}
    finally:
        sshd.terminate()
        sshd.wait(timeout=30)
        _unmount(root)


def test_the_pi_install_and_the_demo_run_on_arm64(twin, tmp_path):
    root = twin["root"]
    deploy = ("deploy", "--host", "root@127.0.0.1", "--port", str(twin["port"]), "--identity", str(twin["key"]),
              "--remote-python", "/usr/bin/python3", "--set", "edge_mer_kind=pi",
              "--ssh-option", f"UserKnownHostsFile={twin['dir'] / 'known_hosts'}",
              "--ssh-option", "StrictHostKeyChecking=accept-new", "--json")
    proc = run_cli(*deploy)
    assert proc.returncode == 0, proc.stderr[-4000:]
    host = json.loads(proc.stdout)["hosts"]["127.0.0.1"]
    report = host["report"]
    assert report["kind"] == "pi" and report["machine"] == "aarch64" and report["prefix"] == "/opt/edge-mer"
    venv = root / "opt/edge-mer/venv"
    # the OS's numpy, seen through --system-site-packages and pinned; ONNX Runtime and OpenCV from aarch64 wheels
    probe = subprocess.run(["chroot", str(root), "/opt/edge-mer/venv/bin/python", "-c",
                            "import numpy, cv2, onnxruntime, platform; print(platform.machine(), numpy.__file__, "
                            "numpy.__version__, cv2.__version__, onnxruntime.__version__)"],
                           capture_output=True, text=True, timeout=600)
    assert probe.returncode == 0, probe.stderr[-2000:]
    machine, numpy_file, numpy_version = probe.stdout.split()[:3]
    assert machine == "aarch64" and numpy_file.startswith("/usr/lib/python3/dist-packages/")
    assert (root / "opt/edge-mer/constraints.txt").read_text().strip() == f"numpy=={numpy_version}"
    assert not list((venv / "lib").glob("python3*/site-packages/numpy"))  # no second numpy in the venv
    # a second deploy (apt, venv, pin, install) changes nothing
    again = run_cli(*deploy)
    assert again.returncode == 0, again.stderr[-4000:]
    assert json.loads(again.stdout)["hosts"]["127.0.0.1"]["changed_tasks"] == []
    env = (root / "opt/edge-mer/edge-mer.env").read_text()
    assert 'EDGE_MER_SOURCE="picam://0"' in env  # a Pi's camera by default
    # the demo, as the device runs it: frames processed and events written
    events = root / "root/events.jsonl"
    events.unlink(missing_ok=True)
    run = subprocess.run(["chroot", str(root), "/opt/edge-mer/venv/bin/python", "-m", "edge_mer", "run", "--demo",
                          "--no-realtime", "--max-frames", "240", "--events", "/root/events.jsonl",
                          "--json-summary", "/root/summary.json", "--quiet"],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((root / "root/summary.json").read_text())
    assert summary["frames"] >= 60 and summary["skipped_frames"] == 0, summary
    lines = events.read_text().splitlines()
    assert len(lines) >= 1 and all(json.loads(line)["label"] for line in lines)
    said = [line for line in (run.stdout + run.stderr).splitlines() if "frames at" in line]
    print(f"\nARM64 twin: {summary['frames']} frames, {len(lines)} events; {said[:1]}", file=sys.stderr)
