"""The import contract: folders are layers and the arrows point one way.

* ``cli`` may import anything; nothing imports ``cli`` but ``cli`` itself and ``__main__``;
* the device side (``runtime``, ``flow``, ``spot``, ``face``) never imports the host side
  (``data``, ``features``, ``model``, ``train``, ``quant``, ``eval``), nor ``doctor`` or ``deploy``;
  the torch backends alone may import ``model``;
* ``synth`` (the renderer the demo source and the dataset writer share) imports neither side;
* no import cycles between modules.

Every ``import`` counts, at module top or inside a function: an import moved into a function
still couples the two modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "edge_mer"
DEVICE = {"runtime", "flow", "spot", "face"}
HOST = {"data", "features", "model", "train", "quant", "eval"}
TORCH_BACKENDS = {"edge_mer.runtime.backends.torch_backend", "edge_mer.runtime.backends.torch_tensorrt"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the edge_mer modules it imports (a package import counts as its __init__)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _violations(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            src, dst = layer(module), layer(target)
            if dst == "cli" and src not in ("cli", "__main__"):
                found.append(f"{module} -> {target}: only the CLI imports the CLI")
            torch_backend_on_model = module in TORCH_BACKENDS and dst == "model"
            if src in DEVICE and (dst in HOST or dst in ("doctor", "deploy", "cli")) and not torch_backend_on_model:
                found.append(f"{module} -> {target}: the device side imports the host side")
            if src == "synth" and (dst in HOST or dst in DEVICE or dst == "cli"):
                found.append(f"{module} -> {target}: synth is shared by both sides and imports neither")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_layers_import_one_way() -> None:
    graph = import_graph()
    assert len(graph) > 60 and sum(map(len, graph.values())) > 150  # the scan sees the package
    assert _violations(graph) == []


def test_no_import_cycles() -> None:
    assert _cycles(import_graph()) == []


def test_the_checks_catch_what_they_forbid() -> None:
    graph = import_graph()
    graph["edge_mer.runtime.loop"] = graph["edge_mer.runtime.loop"] | {"edge_mer.train.run"}
    graph["edge_mer.synth.video"] = graph["edge_mer.synth.video"] | {"edge_mer.data.labels"}
    graph["edge_mer.flow.base"] = graph["edge_mer.flow.base"] | {"edge_mer.flow.stage"}
    assert _violations(graph) == [
        "edge_mer.runtime.loop -> edge_mer.train.run: the device side imports the host side",
        "edge_mer.synth.video -> edge_mer.data.labels: synth is shared by both sides and imports neither"]
    assert _cycles(graph) == [["edge_mer.flow.base", "edge_mer.flow.cuda", "edge_mer.flow.stage"]]


OPTIONAL = ("cv2", "torch", "onnxruntime", "onnx", "tensorrt", "pycuda", "openpyxl", "matplotlib", "modelopt")
ONLY_NUMPY = f"""
import sys
for name in {OPTIONAL!r}:
    sys.modules[name] = None  # as if not installed
from edge_mer.cli import build_parser, main
parser = build_parser()
commands = sorted(parser._subparsers._group_actions[0].choices)
sys.exit(main(["doctor", "--json", "--no-torch"]) or print(" ".join(commands)))
"""


def test_the_cli_and_doctor_work_with_numpy_alone() -> None:
    """Optional dependencies are imported where a command needs them, so `pip install edge-mer` alone still gets
    every command's help and a doctor that says what to install."""
    import json
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", ONLY_NUMPY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report, commands = proc.stdout.rsplit("}", 1)
    assert json.loads(report + "}")["packages"]["cv2"]["importable"] is False
    assert set(commands.split()) >= {"run", "bench", "spot", "flow", "doctor", "build-engine", "train", "export",
                                     "calibrate", "synth", "data", "eval", "deploy"}
