"""edge-mer deploy for real: Ansible over SSH to OpenSSH servers started on 127.0.0.1 by the tests (same user),
each a "device" with a port, a host key and an install folder of its own."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if Path("/usr/sbin/sshd").exists() else None)
ANSIBLE = (Path(sys.executable).parent / "ansible-playbook").is_file() or shutil.which("ansible-playbook")
SSH_MISSING = SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None
needs_ssh = pytest.mark.skipif(SSH_MISSING, reason="OpenSSH server/client not installed (.ci/run installs "
                                                   "openssh-server)")
needs_ansible = pytest.mark.skipif(not ANSIBLE, reason="ansible-core not installed (pip install -e '.[deploy]')")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
USER = getpass.getuser()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_sshd(d: Path, authorized: str) -> tuple[subprocess.Popen[str], int]:
    d.mkdir(parents=True)
    os.chmod(d, 0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")], check=True)
    (d / "authorized_keys").write_text(authorized)
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
MaxStartups 50
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory Debian's sshd expects
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, port
        if proc.poll() is not None:
            pytest.skip(f"sshd did not start: {proc.stderr.read()[-300:] if proc.stderr else ''}")
        time.sleep(0.1)
    pytest.skip("sshd did not listen within 20 s")


@pytest.fixture(scope="module")
def devices(tmp_path_factory):
    """Two OpenSSH servers (devices a and b) that take the key 'client'; the key 'stranger' is known to none."""
    d = tmp_path_factory.mktemp("fleet")
    for name in ("client", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    servers = {name: _start_sshd(d / f"sshd-{name}", (d / "client.pub").read_text()) for name in ("a", "b")}
    yield {"dir": d, "ports": {name: port for name, (_, port) in servers.items()}}
    for proc, _ in servers.values():
        proc.terminate()
        proc.wait(timeout=10)


def _host_line(devices, name: str, port_of: str, prefix: Path, key: str = "client") -> str:
    return (f"{name} ansible_host=127.0.0.1 ansible_port={devices['ports'][port_of]} ansible_user={USER} "
            f"ansible_ssh_private_key_file={devices['dir'] / key} edge_mer_prefix='{prefix}' "
            f"ansible_python_interpreter={sys.executable} edge_mer_python={sys.executable}")


# the base requirements only, so that the tests install no OpenCV or ONNX Runtime; in [all:vars], where an INI
# inventory gives it as the string "[]"
NO_EXTRAS = "[all:vars]\nedge_mer_extras=[]\n"


def _ssh_options(devices) -> list[str]:
    return ["--ssh-option", f"UserKnownHostsFile={devices['dir'] / 'known_hosts'}",
            "--ssh-option", "StrictHostKeyChecking=accept-new"]


def _deploy(devices, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = run_cli("deploy", *args, *_ssh_options(devices), "--json")
    try:
        return proc, json.loads(proc.stdout)
    except ValueError:
        raise AssertionError(f"no JSON from deploy (exit {proc.returncode}):\n{proc.stderr[-3000:]}") from None


def _files(prefix: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in prefix.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def _verify_unit(unit: Path, tmp_path: Path) -> None:
    if SYSTEMD_ANALYZE is None:
        return
    copy = tmp_path / "edge-mer.service"  # verify wants the unit's own name
    copy.write_text(unit.read_text())
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@needs_ssh
@needs_ansible
def test_a_fleet_deploys_in_parallel_a_wrong_key_fails_alone_and_a_second_run_changes_nothing(devices, tmp_path):
    a, b = tmp_path / "device a", tmp_path / "device-b"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[jetsons]\n" + _host_line(devices, "dev-a", "a", a) + "\n"
                         + "[pis]\n" + _host_line(devices, "dev-b", "b", b) + "\n"
                         + _host_line(devices, "dev-c", "a", tmp_path / "device-c", key="stranger") + "\n"
                         + NO_EXTRAS)
    proc, first = _deploy(devices, "--inventory", str(inventory))
    assert proc.returncode == 1, proc.stderr[-3000:]
    hosts = first["hosts"]
    assert hosts["dev-a"]["status"] == hosts["dev-b"]["status"] == "ok"
    assert hosts["dev-a"]["changed"] and hosts["dev-b"]["changed"]
    # the host with the wrong key fails alone, with its reason; the others were installed all the same
    assert hosts["dev-c"]["status"] == "unreachable" and "ssh refused the key" in hosts["dev-c"]["reason"]
    assert first["failed"] == ["dev-c"] and "dev-c: UNREACHABLE" in proc.stderr
    assert "2 of 3 hosts deployed; failed: dev-c" in proc.stderr
    assert not (tmp_path / "device-c").exists()
    # in parallel: both devices were being worked on at the same time
    ha, hb = hosts["dev-a"], hosts["dev-b"]
    assert ha["started"] < hb["finished"] and hb["started"] < ha["finished"]
    for prefix, name in ((a, "dev-a"), (b, "dev-b")):
        report = hosts[name]["report"]
        assert report["kind"] == "generic" and report["prefix"] == str(prefix)
        assert report["python"] == ".".join(map(str, sys.version_info[:3]))  # the device's own doctor answered
        assert (prefix / "bundle" / "manifest.json").is_file() and (prefix / "bundle" / "demo.int8.onnx").is_file()
        # the device runs its own install: the venv's edge-mer answers there
        out = subprocess.run([str(prefix / "venv" / "bin" / "edge-mer"), "--version"], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip()
        unit = prefix / "edge-mer.service"
        assert report["unit"] == str(unit) and "systemd is not running" in report["service"]
        text = unit.read_text()
        lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
        argv = shlex.split(lines["ExecStart"])  # systemd's quoting of a word is the shell's
        assert argv[:6] == [f"{prefix}/venv/bin/python", "-m", "edge_mer", "run", "--source", "${EDGE_MER_SOURCE}"]
        # the source (an RTSP URL may hold a password) is in the environment file, which only the service reads
        assert 'EDGE_MER_SOURCE="v4l2:///dev/video0"' in (prefix / "edge-mer.env").read_text()
        assert argv[argv.index("--model") + 1] == f"{prefix}/bundle/demo.int8.onnx"
        assert "Restart=on-failure" in text and "User=edge-mer" in text  # its own user (the prefix is not in home)
        _verify_unit(unit, tmp_path)
    before = {p: _files(p) for p in (a, b)}
    proc, second = _deploy(devices, "--inventory", str(inventory), "--limit", "all:!dev-c")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(second["hosts"]) == ["dev-a", "dev-b"] and not second["changed"]
    assert all(h["status"] == "ok" and not h["changed"] and h["changed_tasks"] == [] for h in second["hosts"].values())
    assert "dev-a: ok, no change" in proc.stderr and "changed=0" in proc.stderr
    assert {p: _files(p) for p in (a, b)} == before  # nothing on either device was touched


@needs_ssh
@needs_ansible
def test_serial_updates_one_host_after_another_with_its_settings(devices, tmp_path):
    """--serial 1: device b's update starts only when device a's has finished (unit restarted, doctor answered).
    A new model and live-view settings reach both; the token stays out of the world-readable unit."""
    from edge_mer.runtime.artifact import DEMO_MODEL, sidecar_path

    a, b = tmp_path / "a", tmp_path / "b"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(_host_line(devices, "dev-a", "a", a) + "\n" + _host_line(devices, "dev-b", "b", b) + "\n"
                         + NO_EXTRAS)
    proc, _ = _deploy(devices, "--inventory", str(inventory))
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = tmp_path / "model (2).onnx"
    shutil.copy(DEMO_MODEL, model)
    shutil.copy(sidecar_path(DEMO_MODEL), sidecar_path(model))
    proc, update = _deploy(devices, "--inventory", str(inventory), "--serial", "1", "--model", str(model),
                           "--set", "edge_mer_serve=0.0.0.0:8080", "--set", "edge_mer_serve_token=s3cret",
                           "--set", 'edge_mer_events=["mqtt://broker.local/mer"]')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert update["batches"] == [["dev-a"], ["dev-b"]] and "batch 2/2: dev-b" in proc.stderr
    ha, hb = update["hosts"]["dev-a"], update["hosts"]["dev-b"]
    assert ha["changed"] and hb["changed"] and ha["finished"] <= hb["started"]
    for prefix in (a, b):
        assert (prefix / "bundle" / "model (2).onnx").is_file()
        assert not (prefix / "bundle" / "demo.int8.onnx").exists()  # the earlier bundle's files are gone
        unit = (prefix / "edge-mer.service").read_text()
        assert "model (2).onnx'" in unit and "s3cret" not in unit
        env = prefix / "edge-mer.env"
        assert (env.stat().st_mode & 0o777) == 0o600
        assert "EDGE_MER_ARGS=--events mqtt://broker.local/mer --serve 0.0.0.0:8080" in env.read_text()
        assert "EDGE_MER_SERVE_TOKEN=s3cret" in env.read_text()
        installed = json.loads((prefix / "installed.json").read_text())
        assert installed["extras"] == ["mqtt"]  # an MQTT sink brings paho-mqtt into the device's venv
        _verify_unit(prefix / "edge-mer.service", tmp_path)
    # b's new model arrived after a's last file was written
    assert max(_files(a).values()) < (b / "bundle" / "model (2).onnx").stat().st_mtime_ns


@needs_ssh
@needs_ansible
def test_one_host_from_the_command_line_with_a_hostile_prefix(devices, tmp_path):
    """--host is the same playbook for one device. Every remote argument is quoted: a prefix holding $(...) is
    installed as it is named and nothing in it runs; a wrong key is one line naming the reason."""
    canary = tmp_path / "ran"
    prefix = tmp_path / f"dev $(touch {canary}) `touch {canary}`"
    common = ["--host", f"{USER}@127.0.0.1", "--port", str(devices["ports"]["b"]), "--prefix", str(prefix),
              "--remote-python", sys.executable, "--set", "edge_mer_extras=[]"]
    proc, result = _deploy(devices, *common, "--identity", str(devices["dir"] / "client"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["hosts"]["127.0.0.1"]["changed"] and not canary.exists()
    assert (prefix / "bundle" / "demo.int8.onnx").is_file() and (prefix / "venv" / "bin" / "python").is_file()
    proc = run_cli("deploy", *common, "--identity", str(devices["dir"] / "stranger"), *_ssh_options(devices))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    last = proc.stderr.strip()
    assert last.startswith("edge-mer: error: 127.0.0.1: UNREACHABLE") and "ssh refused the key" in last


@needs_ansible
def test_a_dry_run_contacts_nothing(tmp_path):
    """No server listens on the port: a dry run still lists the host and every step of the play."""
    proc = run_cli("deploy", "--host", "nvidia@127.0.0.1", "--port", str(_free_port()), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "dry run: nothing is contacted; the play would run on 1 host(s), all at once: 127.0.0.1" in out
    for step in ("copy the bundle", "install with setup.sh", "build the TensorRT engine", "the unit",
                 "enable and start the service", "check the device with its own doctor"):
        assert step in out


def test_a_host_that_looks_like_an_option_is_refused(tmp_path):
    proc = run_cli("deploy", "--host", "-oProxyCommand=touch x", "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "starts with '-'" in proc.stderr or "expected one argument" in proc.stderr


@pytest.mark.parametrize("args, says", [
    (("--inventory", "missing.ini"), "inventory not found: missing.ini"),
    (("--inventory", "hosts.ini", "--prefix", "/opt/x"), "with --inventory set"),
    (("--host", "u@h", "--model", "missing.onnx"), "model not found"),
    (("--host", "u@h", "--identity", "missing-key"), "identity file not found"),
    (("--host", "u@h", "--set", "no-equals"), "must be KEY=VALUE"),
    (("--host", "u@h", "--inventory", "hosts.ini"), "not allowed with argument"),
    (("--model", "missing.onnx", "--bundle-only", "b"), "model not found"),
    (("--dry-run",), "deploy needs --host USER@HOST or --inventory FILE"),
])
def test_bad_deploy_command_lines_are_one_line(tmp_path, args, says):
    (tmp_path / "hosts.ini").write_text("dev ansible_host=127.0.0.1\n")
    proc = subprocess.run([sys.executable, "-m", "edge_mer", "deploy", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert says in proc.stderr


@needs_ssh
@needs_ansible
def test_a_bundle_made_apart_is_what_ansible_playbook_installs(devices, tmp_path):
    """Running Ansible yourself is the same play: deploy --bundle-only, then ansible-playbook with its settings."""
    from edge_mer.deploy import PLAYBOOK

    bundle = tmp_path / "bundle"
    proc = run_cli("deploy", "--bundle-only", str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads(proc.stdout)
    assert sorted(p.name for p in bundle.iterdir()) == sorted(manifest["files"])
    prefix = tmp_path / "device"
    inventory = tmp_path / "hosts.ini"
    inventory.write_text(_host_line(devices, "dev-a", "a", prefix) + "\n" + NO_EXTRAS)
    env = {**os.environ, "ANSIBLE_CONFIG": str(PLAYBOOK.parent / "ansible.cfg"),
           "EDGE_MER_REPORT": str(tmp_path / "r.json"),
           "ANSIBLE_SSH_ARGS": f"-o UserKnownHostsFile={devices['dir'] / 'known_hosts'} "
                               "-o StrictHostKeyChecking=accept-new"}
    playbook = Path(sys.executable).parent / "ansible-playbook"
    run = subprocess.run([str(playbook if playbook.is_file() else "ansible-playbook"), "-i", str(inventory),
                          str(PLAYBOOK), "-e", f"edge_mer_bundle={bundle}"], capture_output=True, text=True, env=env,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())["hosts"]["dev-a"]
    assert report["status"] == "ok" and report["changed"] and report["report"]["prefix"] == str(prefix)
    assert json.loads((prefix / "installed.json").read_text())["manifest"] == manifest


@needs_ansible
def test_an_inventory_ansible_cannot_read_is_one_line(tmp_path):
    bad = tmp_path / "hosts.yml"
    bad.write_text("all:\n  hosts: [this is: not, an inventory\n")
    proc = run_cli("deploy", "--inventory", str(bad), "--dry-run")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no hosts in" in proc.stderr or "cannot read the inventory" in proc.stderr
