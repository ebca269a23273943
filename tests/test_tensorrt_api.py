"""The TensorRT code against the real Python API of every TensorRT version edge-mer claims.

TensorRT cannot run here, so each version's API surface (module names; classes with their
members and enum values, inherited ones included) was taken from NVIDIA's pybind11 binding
sources of that release and committed as tests/data/tensorrt_api/<version>.json by
scripts/tensorrt_api/surface.py. This test reads engine.py and backends/tensorrt.py as
source and resolves every name they take from TensorRT:

* ``trt.X`` is a module name, ``trt.X.Y`` a member of class X;
* ``v.m`` is a member of v's class, where v was made by a ``trt.X(...)`` constructor or
  annotated ``v: trt.X`` (parameters, locals and ``self.v`` attributes alike);
* any other object that comes out of a TensorRT call and is used further must be annotated,
  or the test fails: an unannotated object would escape the check.

A function whose name ends in ``_v8``, ``_v10`` or ``_v11`` serves the versions that
``api_generation`` maps to that generation; every other function serves them all. So a
build path that uses a name its versions lack fails here, without TensorRT.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from edge_mer.runtime.engine import api_generation

REPO = Path(__file__).resolve().parent.parent
SURFACES = REPO / "tests" / "data" / "tensorrt_api"
SOURCES = (REPO / "edge_mer" / "runtime" / "engine.py", REPO / "edge_mer" / "runtime" / "backends" / "tensorrt.py")
MODULE = "trt"  # every file imports TensorRT under this name
GENERATION_SUFFIX = re.compile(r"_v(\d+)$")


def _surface(path: Path) -> dict:
    return json.loads(path.read_text())


VERSIONS = {p.stem: _surface(p) for p in sorted(SURFACES.glob("*.json"))}


@dataclass
class Use:
    owner: str  # "" for a module name, else the class
    member: str
    where: str  # file:line in function


@dataclass
class Findings:
    uses: list[Use] = field(default_factory=list)
    untyped: list[str] = field(default_factory=list)  # TensorRT objects used without a known class


def _annotated_class(node: ast.AST | None) -> str | None:
    """'X' for the annotation ``trt.X`` (also written as a string)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        node = ast.parse(node.value, mode="eval").body
    return _trt_class(node)


def _trt_class(node: ast.AST | None) -> str | None:
    """'X' or 'X.Y' for the expression ``trt.X`` / ``trt.X.Y``."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == MODULE and parts:
        return ".".join(reversed(parts))
    return None


def _from_tensorrt(node: ast.AST) -> bool:
    """Whether an expression calls into TensorRT (its value is then a TensorRT object)."""
    return any(isinstance(n, ast.Name) and n.id == MODULE for n in ast.walk(node))


class _FunctionScan(ast.NodeVisitor):
    """The TensorRT names one function uses, with the classes of its variables."""

    def __init__(self, where: str, attributes: dict[str, str], typed_objects: dict[str, str]) -> None:
        self.where = where
        self.types: dict[str, str] = dict(typed_objects)  # variable -> class
        self.attributes = attributes  # self.<name> -> class
        self.opaque: set[str] = set()  # variables holding an unannotated TensorRT result
        self.found = Findings()

    def scan(self, fn: ast.FunctionDef) -> Findings:
        for arg in fn.args.args + fn.args.kwonlyargs:
            cls = _annotated_class(arg.annotation)
            if cls:
                self.types[arg.arg] = cls
        for stmt in fn.body:
            self.visit(stmt)
        return self.found

    def _bind(self, target: ast.AST, value: ast.AST | None, annotation: ast.AST | None = None) -> None:
        if not isinstance(target, ast.Name):
            return
        cls = _annotated_class(annotation)
        if cls is None and isinstance(value, ast.Call) and _trt_class(value.func) is not None:
            cls = _trt_class(value.func)  # made by a constructor, trt.X(...)
        if cls is not None:
            self.types[target.id] = cls
            self.opaque.discard(target.id)
        elif value is not None and isinstance(value, ast.Call) and self._is_tensorrt_call(value):
            self.opaque.add(target.id)

    def _is_tensorrt_call(self, call: ast.Call) -> bool:
        func = call.func
        while isinstance(func, ast.Attribute):
            func = func.value
        if isinstance(func, ast.Name):
            return func.id == MODULE or func.id in self.types
        return False

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self._bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self._bind(node.target, node.value, node.annotation)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        where = f"{self.where}:{node.lineno}"
        owner = _trt_class(node.value)
        value = node.value
        if owner is not None:
            self.found.uses.append(Use(owner, node.attr, where))
        elif isinstance(value, ast.Name) and value.id == MODULE:
            self.found.uses.append(Use("", node.attr, where))
        elif isinstance(value, ast.Name) and value.id in self.types:
            self.found.uses.append(Use(self.types[value.id], node.attr, where))
        elif isinstance(value, ast.Name) and value.id in self.opaque:
            self.found.untyped.append(f"{where}: {value.id}.{node.attr} ({value.id} needs a trt.* annotation)")
        elif (isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name) and value.value.id == "self"
              and value.attr in self.attributes):
            self.found.uses.append(Use(self.attributes[value.attr], node.attr, where))
        elif isinstance(value, ast.Call) and _trt_class(value.func) is not None:
            self.found.uses.append(Use(str(_trt_class(value.func)), node.attr, where))  # trt.X(...).m
        elif isinstance(value, ast.Call) and self._is_tensorrt_call(value):
            self.found.untyped.append(f"{where}: .{node.attr} on a TensorRT call's result (annotate it first)")
        if owner is None:
            self.generic_visit(node)


def _self_attributes(cls: ast.ClassDef) -> dict[str, str]:
    """``self.name: trt.X = ...`` and ``self.name = trt.X(...)`` anywhere in a class."""
    found = {}
    for node in ast.walk(cls):
        if isinstance(node, ast.AnnAssign):
            targets, cls_name = [node.target], _annotated_class(node.annotation)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            targets, cls_name = node.targets, _trt_class(node.value.func)
        else:
            continue
        for target in targets:
            if (cls_name and isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == "self"):
                found[target.attr] = cls_name
    return found


def scan_source(text: str, name: str) -> dict[str, Findings]:
    """function name -> what it takes from TensorRT."""
    tree = ast.parse(text)
    out: dict[str, Findings] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            out[node.name] = _FunctionScan(f"{name}:{node.name}", {}, {}).scan(node)
        elif isinstance(node, ast.ClassDef):
            attributes = _self_attributes(node)
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    out[f"{node.name}.{item.name}"] = _FunctionScan(f"{name}:{node.name}.{item.name}", attributes,
                                                                    {}).scan(item)
    return out


def serves(function: str, version: str) -> bool:
    """Whether ``function`` runs on TensorRT ``version`` (generation suffixes select their versions)."""
    m = GENERATION_SUFFIX.search(function)
    return m is None or m.group(1) == api_generation(version).replace(".", "")


def missing_names(findings: dict[str, Findings], surface: dict) -> list[str]:
    """Every use of a name that ``surface``'s TensorRT lacks, by the functions that serve it."""
    module, classes = set(surface["module"]), surface["classes"]
    problems = []
    for function, found in findings.items():
        if not serves(function, surface["tensorrt"]):
            continue
        for use in found.uses:
            if use.owner == "":
                if use.member not in module:
                    problems.append(f"{use.where}: trt.{use.member}")
            elif use.owner not in classes:
                problems.append(f"{use.where}: trt.{use.owner} (no such class)")
            elif use.member not in classes[use.owner]:
                problems.append(f"{use.where}: trt.{use.owner}.{use.member}")
    return problems


def _scan_all() -> dict[str, Findings]:
    found: dict[str, Findings] = {}
    for path in SOURCES:
        found.update(scan_source(path.read_text(), path.name))
    return found


def test_every_claimed_tensorrt_version_has_its_surface() -> None:
    # JetPack 5.1 (8.5), 6.0 (8.6), 6.1/6.2 (10.3), 7 (10.13), x86 (11)
    assert {v["tensorrt"].rsplit(".", 1)[0] for v in VERSIONS.values()} >= {"8.5", "8.6", "10.3", "10.13", "11.1"}
    for surface in VERSIONS.values():
        assert "NVIDIA/TensorRT" in surface["source"] and len(surface["classes"]) > 100


@pytest.mark.parametrize("key", sorted(VERSIONS))
def test_tensorrt_code_uses_only_names_its_versions_have(key: str) -> None:
    found = _scan_all()
    surface = VERSIONS[key]
    used = [u for f in found.values() for u in f.uses]
    assert len(used) > 30, "the scan found almost no TensorRT use: has the code moved?"
    untyped = [u for f in found.values() for u in f.untyped]
    assert not untyped, "TensorRT objects the check cannot follow:\n" + "\n".join(untyped)
    problems = missing_names(found, surface)
    assert not problems, (f"TensorRT {surface['tensorrt']} has no:\n" + "\n".join(problems))


def test_each_generation_method_is_checked_against_some_version() -> None:
    found = _scan_all()
    generations = {m.group(1) for f in found if (m := GENERATION_SUFFIX.search(f))}
    covered = {api_generation(v["tensorrt"]).replace(".", "") for v in VERSIONS.values()}
    assert generations and generations <= covered
    # 8.5 and 8.6 make an implicit-batch network from flags 0, which their ONNX parser refuses
    assert ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH") in {(u.owner, u.member) for u in found["_build_v8"].uses}


MADE_UP = '''
import tensorrt as trt

def _build_v8(flags):
    network: trt.INetworkDefinition = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_network(
        1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    return network.num_layers

def _build_v10(x):
    return trt.BuilderFlag.FP16

def shared(engine: trt.ICudaEngine):
    context = engine.create_execution_context()
    return context.execute_async_v2([], 0)
'''


def test_the_check_catches_a_name_a_version_lacks() -> None:
    found = scan_source(MADE_UP, "made_up.py")
    # strong typing first came in 9.0: the 8.x path may not use it
    assert missing_names(found, VERSIONS["8.6"]) == ["made_up.py:_build_v8:6: trt.NetworkDefinitionCreationFlag."
                                                     "STRONGLY_TYPED"]
    assert missing_names(found, VERSIONS["8.5"]) == missing_names(found, VERSIONS["8.6"]) != []
    # 11 removed the precision flags: the _v10 function is not its path, so it is not blamed there
    assert missing_names(found, VERSIONS["11.1"]) == []
    assert missing_names(found, VERSIONS["10.13"]) == []
    # an object out of a TensorRT call, used without an annotation, is reported, not skipped
    assert found["shared"].untyped == ["made_up.py:shared:14: context.execute_async_v2 (context needs a trt.* "
                                       "annotation)"]


def test_the_check_follows_annotations_and_constructors() -> None:
    found = scan_source(MADE_UP.replace("context = engine", "context: trt.IExecutionContext = engine"), "m.py")
    assert not found["shared"].untyped
    # execute_async_v2 (the binding API) went in 10.0
    assert missing_names(found, VERSIONS["10.3"]) == ["m.py:shared:14: trt.IExecutionContext.execute_async_v2"]
    assert missing_names(found, VERSIONS["8.5"]) == ["m.py:_build_v8:6: trt.NetworkDefinitionCreationFlag."
                                                     "STRONGLY_TYPED"]
