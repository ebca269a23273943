"""Ansible callback: one JSON report of an edge-mer deployment, per host.

Written to the file named by ``EDGE_MER_REPORT`` when the playbook ends (nothing without it):
``{"hosts": {NAME: {"status": "ok" | "failed" | "unreachable", "changed": bool, "changed_tasks": [...],
"failed_task": str, "reason": str, "started": float, "finished": float, "report": {...}}}, "stats": {...}}``
where ``report`` is what the play's last task collected (kind, prefix, engine, unit, service, doctor).
``edge-mer deploy`` reads it for its summary and ``--json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
    name: edge_mer_report
    type: aggregate
    short_description: per-host JSON report of an edge-mer deployment
    description:
      - Writes what happened on each host (changed tasks, the failure and its reason, the device's report)
        to the file named by the EDGE_MER_REPORT environment variable when the playbook ends.
    requirements:
      - enable in callbacks_enabled (ansible/ansible.cfg does)
"""


def _reason(result: dict[str, Any]) -> str:
    """One line saying why a task failed: for a command, the last line it wrote (and its exit status), else the
    module's message."""
    if "rc" in result:
        for key in ("stderr", "stdout", "module_stderr"):
            lines = [line.strip() for line in str(result.get(key) or "").splitlines() if line.strip()]
            if lines:
                return f"{lines[-1]} (exit {result['rc']})"
    text = " ".join(str(result.get("msg") or "").split())
    if text:
        return text
    for key in ("module_stderr", "module_stdout", "stderr", "stdout"):
        lines = [line.strip() for line in str(result.get(key) or "").splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "failed (no message)"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "edge_mer_report"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.hosts: dict[str, dict[str, Any]] = {}

    def _host(self, name: str) -> dict[str, Any]:
        now = time.time()
        entry = self.hosts.setdefault(name, {"status": "ok", "changed": False, "changed_tasks": [], "failed_task": "",
                                             "reason": "", "started": now, "finished": now, "report": {}})
        entry["finished"] = now
        return entry

    def v2_runner_on_ok(self, result: Any) -> None:
        entry = self._host(result._host.get_name())
        res = result._result
        if res.get("changed") and result._task.action not in ("set_fact", "ansible.builtin.set_fact"):
            entry["changed"] = True
            if result._task.get_name() not in entry["changed_tasks"]:
                entry["changed_tasks"].append(result._task.get_name())
        report = (res.get("ansible_facts") or {}).get("edge_mer_report")
        if isinstance(report, dict):
            entry["report"] = report

    def v2_runner_item_on_ok(self, result: Any) -> None:
        self.v2_runner_on_ok(result)

    def v2_runner_on_failed(self, result: Any, ignore_errors: bool = False) -> None:
        if ignore_errors:
            return
        entry = self._host(result._host.get_name())
        entry["status"] = "failed"
        entry["failed_task"] = result._task.get_name()
        entry["reason"] = _reason(result._result)

    def v2_runner_on_unreachable(self, result: Any) -> None:
        entry = self._host(result._host.get_name())
        entry["status"] = "unreachable"
        entry["failed_task"] = result._task.get_name()
        entry["reason"] = _reason(result._result)

    def v2_runner_on_skipped(self, result: Any) -> None:
        self._host(result._host.get_name())

    def v2_playbook_on_stats(self, stats: Any) -> None:
        path = os.environ.get("EDGE_MER_REPORT")
        if not path:
            return
        summary = {name: stats.summarize(name) for name in sorted(stats.processed)}
        doc = {"hosts": self.hosts, "stats": summary}
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".report.", dir=folder)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
