#!/usr/bin/env python3
"""Extract the Python API surface of each supported TensorRT version from NVIDIA's pybind11 sources.

The `tensorrt` Python module is not installable on a CI runner without a GPU driver, and each JetPack pins a
different TensorRT. To check which names the backend may use on which device, this script reads NVIDIA's
published binding sources (github.com/NVIDIA/TensorRT, ``python/``) at the git ref of each version, and writes
one JSON per version: the module-level names and, for every Python class, its member names with the members
of its Python base classes flattened in.

What it reads, at each ref (``git show``, no checkout):

- ``python/src/**/*.cpp``: the pybind11 registrations. ``py::class_<T, Opts...>(scope, "Name")``,
  ``py::enum_<T>(scope, "Name")`` and ``py::bind_vector<V>(m, "Name")``, used as a temporary or as a named
  variable, with their ``.def*("name")`` / ``.value("NAME")`` / ``.export_values()`` chains and later
  ``var.def(...)`` statements; ``m.def``, ``m.attr("x") =`` and ``m.add_object`` on the module. A template
  option of ``class_`` that is itself a registered C++ type is a base (the others are holders and
  trampolines). An enum or class registered on a class scope is nested: ``"Outer.Inner"``, and ``Inner``
  is a member of ``Outer``; ``export_values()`` copies the values into the enclosing scope
  (``trt.ILogger.WARNING``, and so ``trt.Logger.WARNING`` through inheritance).
- The conditional compilation of the full ``tensorrt`` module on Linux: ``EXPORT_ALL_BINDINGS`` is on
  (it is off only for the lean and dispatch runtimes); ``ENABLE_INETWORK_SERIALIZE`` is off (nothing in
  the public build defines it); ``_WIN32`` and ``_MSC_VER`` are off.
- The package ``__init__.py`` of the bindings wheel (``python/packaging/bindings_wheel/tensorrt`` from 8.6,
  ``python/packaging/tensorrt`` before): its public top-level functions and assignments (``__version__``,
  ``volume``, ``nptype``, ...) and the attributes it sets on classes (``DataType.itemsize``,
  ``Builder.__enter__``, ``Logger.Severity``). Its ``if`` blocks are taken as they evaluate on Linux with the
  ``tensorrt`` module name. Imported modules (``os``, ``sys``, ...), loop variables and underscore names are
  left out: they are attributes of the package, not API.

Implicit members pybind11 gives every enum are added to each enum: ``name``, ``value``, ``__members__``,
``__init__``, ``__int__``, ``__index__``; and to ``bind_vector`` classes the list methods (``append``,
``extend``, ``insert``, ``pop``, ``clear``) and ``__init__``, ``__len__``, ``__getitem__``, ``__setitem__``,
``__delitem__``, ``__iter__``, ``__bool__``. A class has ``__init__`` only where a constructor is bound
(``py::init``), so ``"__init__" in members`` tells whether Python code can construct it. Other dunders that
pybind11 adds to every class or enum (``__eq__``, ``__hash__``, ``__repr__``, ...) are not listed.

Not described: ``tensorrt.plugin`` (a pure-Python experimental subpackage from 10.6, imported on its own
and filled at import time by decorators); no pybind11 submodule (``def_submodule``) exists at any ref.

Validation (``--check-stubs``): the published ``tensorrt-stubs==10.13.0.35.1`` (``tensorrt_bindings/
tensorrt.pyi`` and ``tensorrt/__init__.pyi``, written by pybind11-stubgen from the real 10.13.0.35 module
after its ``__init__.py`` ran) is compared with the extraction of release/10.13 (10.13.0.35, the build of
the stubs; its binding sources differ from v10.13.3 only in docstrings, and both extract the same), members
flattened through base classes on both sides. Classes agree exactly (201 and 201), module names agree but
for three, and every member of the stubs is extracted except pybind11's implicit dunders. The differences,
all explained:

- module names only in the stubs: ``attr`` and ``value`` (the loop variables of ``for attr, value in
  ILogger.Severity.__members__.items()`` in ``__init__.py``, left set) and ``tensorrt`` (the compiled
  submodule ``tensorrt.tensorrt`` that ``from .tensorrt import *`` binds): no API;
- members only in the extraction: the 6 write-only properties, bound as ``def_property("x", nullptr,
  setter)`` (``Builder.gpu_allocator``, ``Runtime.gpu_allocator``, ``IExecutionContext.device_memory``,
  ``ISymExpr.type``/``dtype``/``expr``); they are real (``builder.gpu_allocator = a`` works) but
  pybind11-stubgen leaves out a property without a getter;
- members only in the stubs: 508 dunders in 13 names that pybind11 adds by itself and that are not listed,
  by choice, above: ``__eq__``, ``__ne__``, ``__hash__``, ``__repr__``, ``__str__``, ``__getstate__``,
  ``__setstate__`` on enums, the ordering operators on ``py::arithmetic()`` enums, ``__eq__``/``__ne__``/
  ``__repr__`` of the comparable ``bind_vector`` lists, ``__hash__ = None`` that Python sets on a class
  defining ``__eq__`` (``Dims``), ``__buffer__`` and ``__release_buffer__`` of the buffer protocol
  (``IHostMemory``).

The check exits non-zero on any other difference: ``python scripts/tensorrt_api/surface.py --repo REPO
--check-stubs /tmp/trtstubs`` after ``pip install --no-deps --target /tmp/trtstubs tensorrt-stubs==10.13.0.35.1``.

Usage::

    python scripts/tensorrt_api/surface.py --repo /path/to/TensorRT.git --out tests/data/tensorrt_api
    python scripts/tensorrt_api/surface.py --repo ... --out ... --only 8.6
    python scripts/tensorrt_api/surface.py --repo ... --check-stubs /tmp/trtstubs

Standard library only; runs on Python 3.8+.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

GENERATED_BY = "scripts/tensorrt_api/surface.py"

# Supported versions and the refs that hold their sources, the preferred (a release tag) first.
# The OSS repo has no 8.6.2 (JetPack 6.0's TensorRT); 8.6.1 is the last 8.6 with published sources.
VERSIONS: dict[str, tuple[str, ...]] = {
    "8.5": ("8.5.2", "release/8.5"),
    "8.6": ("v8.6.1", "release/8.6"),
    "10.3": ("v10.3.0", "release/10.3"),
    "10.13": ("v10.13.3", "release/10.13.3"),
    "11.1": ("v11.1", "release/11.1"),
}

# The ref whose extraction is compared with tensorrt-stubs 10.13.0.35.1 (the same TensorRT build).
STUBS_REF = "release/10.13"
# Module names of the stubs that are no API: the loop variables of `for attr, value in ...` in
# __init__.py, and the compiled submodule `tensorrt.tensorrt` that `from .tensorrt import *` binds.
STUB_ONLY_MODULE = {"attr", "value", "tensorrt"}

# Preprocessor symbols defined when the full `tensorrt` module is built on Linux; any other symbol
# (ENABLE_INETWORK_SERIALIZE, _WIN32, _MSC_VER, ...) is taken as undefined.
DEFINED = {"EXPORT_ALL_BINDINGS", "tensorrt_EXPORTS", "__GLIBC__"}

ENUM_IMPLICIT = ("name", "value", "__members__", "__init__", "__int__", "__index__")
VECTOR_IMPLICIT = (
    "append", "extend", "insert", "pop", "clear",
    "__init__", "__len__", "__getitem__", "__setitem__", "__delitem__", "__iter__", "__bool__",
)  # fmt: skip
# bind_vector adds these only when the element type has operator==; the TensorRT structs bound as vector
# elements have none (size_t and the ONNX parser's std::pair subgraph entries do).
VECTOR_COMPARABLE = ("count", "remove", "__contains__")
NOT_COMPARABLE = {"PluginField"}

TOKEN_RE = re.compile(
    r"""(?P<skip>//[^\n]*|/\*.*?\*/|\s+)
      |(?P<str>"(?:\\.|[^"\\\n])*")
      |(?P<chr>'(?:\\.|[^'\\\n])*')
      |(?P<id>[A-Za-z_]\w*)
      |(?P<num>\d[\w.]*)
      |(?P<op>::|.)""",
    re.S | re.X,
)
OPEN_CLOSE = {"(": ")", "{": "}", "[": "]"}


class Tok(NamedTuple):
    kind: str  # "str", "id", "num", "op"
    text: str


class PyClass:
    """One Python class (or enum) as registered, before base members are flattened in."""

    def __init__(self, key: str, cpp: str, options: list[str], kind: str) -> None:
        self.key = key  # "Name", or "Outer.Name" for a class registered on a class scope
        self.cpp = cpp
        self.options = options  # the other template arguments: bases, holders, trampolines
        self.kind = kind  # "class", "enum" or "vector"
        self.members: set[str] = set()
        self.values: list[str] = []  # enum values, for export_values()
        self.write_only: set[str] = set()  # properties bound with a setter only (stubgen leaves them out)


class Surface:
    """What one ref's sources register: module names, classes, and class aliases."""

    def __init__(self) -> None:
        self.module: set[str] = set()
        self.classes: dict[str, PyClass] = {}
        self.aliases: dict[str, str] = {}  # alias key -> class key (trt.ResizeMode is trt.InterpolationMode)
        self.warnings: list[str] = []


# ---------------------------------------------------------------------------------------------- git


def git(repo: str, *args: str) -> str:
    out = subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True)
    return out.stdout.decode("utf-8", "replace")


def resolve_ref(repo: str, candidates: tuple[str, ...]) -> tuple[str, str]:
    """The first candidate ref that exists, with its commit."""
    for ref in candidates:
        try:
            return ref, git(repo, "rev-parse", "--verify", "--quiet", ref + "^{commit}").strip()
        except subprocess.CalledProcessError:
            continue
    raise SystemExit(f"none of the refs {candidates} exists in {repo}")


def list_files(repo: str, commit: str, prefix: str) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", commit, "--", prefix).split()


def full_version(repo: str, commit: str) -> str:
    """MAJOR.MINOR.PATCH from NvInferVersion.h (10.x spells them through TRT_*_ENTERPRISE macros)."""
    text = git(repo, "show", commit + ":include/NvInferVersion.h")
    parts = []
    for part in ("MAJOR", "MINOR", "PATCH"):
        found = re.search(rf"#define\s+(?:NV_TENSORRT|TRT)_{part}(?:_ENTERPRISE)?\s+(\d+)", text)
        if not found:
            raise SystemExit(f"no TensorRT {part} version in include/NvInferVersion.h at {commit}")
        parts.append(found.group(1))
    return ".".join(parts)


# ------------------------------------------------------------------------------------- preprocessor


def condition_true(expr: str) -> bool:
    """Evaluate a #if condition for the Linux full-module build; anything unknown (header guards aside) is false."""
    expr = expr.split("//")[0].strip()
    found = re.fullmatch(r"(!?)\s*defined\s*\(?\s*(\w+)\s*\)?", expr)
    if found:
        value = found.group(2) in DEFINED
        return value != bool(found.group(1))
    if re.fullmatch(r"\w+", expr):
        return expr in DEFINED
    # e.g. the PYBIND11_VERSION checks, which only pick between two bodies of the same function
    return False


def preprocess(text: str) -> str:
    """Drop the lines in inactive #if branches and all directives; keep line count for messages."""
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (this branch active, some branch of this #if was taken)
    continued = False  # inside a directive continued with a trailing backslash
    for line in text.split("\n"):
        stripped = line.strip()
        if continued or stripped.startswith("#"):
            if not continued:
                handle_directive(stripped, stack)
            continued = stripped.endswith("\\")
            out.append("")
            continue
        out.append(line if all(s[0] for s in stack) else "")
    return "\n".join(out)


def handle_directive(line: str, stack: list[tuple[bool, bool]]) -> None:
    found = re.match(r"#\s*(\w+)\s*(.*)", line)
    if not found:
        return
    word, rest = found.groups()
    if word in ("if", "ifdef", "ifndef"):
        if word == "ifdef":
            value = rest.split()[0] in DEFINED
        elif word == "ifndef":
            value = rest.split()[0] not in DEFINED
        else:
            value = condition_true(rest)
        stack.append((value, value))
    elif word == "elif" and stack:
        taken = stack[-1][1]
        value = not taken and condition_true(rest)
        stack[-1] = (value, taken or value)
    elif word == "else" and stack:
        stack[-1] = (not stack[-1][1], True)
    elif word == "endif" and stack:
        stack.pop()


def tokenize(text: str) -> list[Tok]:
    tokens = []
    for found in TOKEN_RE.finditer(text):
        kind = found.lastgroup
        if kind and kind != "skip":
            tokens.append(Tok(kind, found.group()))
    return tokens


# ------------------------------------------------------------------------------------ pybind parser


def cpp_key(spelling: str) -> str:
    """A C++ type without its leading namespaces, so `nvinfer1::PluginField` and `PluginField` match."""
    return re.sub(r"^(?:[a-z_][a-z0-9_]*::)+", "", spelling.replace(" ", ""))


class BindingParser:
    """Walks the tokens of one .cpp file and records its registrations into a Surface."""

    def __init__(self, tokens: list[Tok], surface: Surface, filename: str) -> None:
        self.t = tokens
        self.s = surface
        self.file = filename
        self.vars: dict[str, str] = {}  # C++ variable holding a class_ -> class key
        self.module_vars = {"m"}  # every bind*() function takes the module as `m`

    def warn(self, message: str) -> None:
        self.s.warnings.append(f"{self.file}: {message}")

    def text(self, i: int) -> str:
        return self.t[i].text if 0 <= i < len(self.t) else ""

    def kind(self, i: int) -> str:
        return self.t[i].kind if 0 <= i < len(self.t) else ""

    def is_seq(self, i: int, *texts: str) -> bool:
        return all(self.text(i + k) == text for k, text in enumerate(texts))

    def close_of(self, i: int) -> int:
        """Index of the bracket closing the one at i ((, { or [; nested brackets of all three kinds)."""
        depth = 0
        for j in range(i, len(self.t)):
            text = self.t[j].text if self.t[j].kind == "op" else ""
            if text in OPEN_CLOSE:
                depth += 1
            elif text in (")", "}", "]"):
                depth -= 1
                if depth == 0:
                    return j
        raise ValueError(f"{self.file}: unbalanced bracket at token {i}")

    def split_args(self, open_i: int, close_i: int) -> list[list[Tok]]:
        """The top-level comma-separated arguments between two brackets."""
        args: list[list[Tok]] = [[]]
        j = open_i + 1
        while j < close_i:
            tok = self.t[j]
            if tok.kind == "op" and tok.text in OPEN_CLOSE:
                end = self.close_of(j)
                args[-1].extend(self.t[j : end + 1])
                j = end + 1
                continue
            if tok.kind == "op" and tok.text == ",":
                args.append([])
            else:
                args[-1].append(tok)
            j += 1
        return [a for a in args if a]

    def template_args(self, lt: int) -> tuple[list[str], int]:
        """The arguments of the template list opening at `lt` (a `<`), and the index after its `>`."""
        args: list[str] = [""]
        depth = 0
        j = lt
        while j < len(self.t):
            text = self.t[j].text
            if text == "<":
                depth += 1
                if depth == 1:
                    j += 1
                    continue
            elif text == ">":
                depth -= 1
                if depth == 0:
                    return [a for a in args if a], j + 1
            elif text == "," and depth == 1:
                args.append("")
                j += 1
                continue
            args[-1] += text
            j += 1
        raise ValueError(f"{self.file}: unclosed template list at token {lt}")

    def run(self) -> None:
        i = 0
        while i < len(self.t):
            if self.is_seq(i, "py", "::") and self.text(i + 2) in ("class_", "enum_", "bind_vector", "bind_map"):
                i = self.registration(i)
            elif self.kind(i) == "id" and self.text(i + 1) == "." and self.text(i - 1) not in (".", "->", "::"):
                i = self.statement_on(i)
            else:
                i += 1

    def registration(self, i: int) -> int:
        """py::class_<...> [var] (scope, "Name", ...) followed by a chain of .def calls."""
        kind = {"class_": "class", "enum_": "enum", "bind_vector": "vector", "bind_map": "map"}[self.text(i + 2)]
        if self.text(i + 3) != "<":
            return i + 3
        targs, j = self.template_args(i + 3)
        var = None
        if self.kind(j) == "id" and self.text(j + 1) in ("(", "{"):
            var, j = self.text(j), j + 1
        elif self.text(i - 1) == "=" and self.kind(i - 2) == "id":
            var = self.text(i - 2)
        if self.text(j) not in ("(", "{"):
            return j  # a type use (a parameter or a cast), not a registration
        end = self.close_of(j)
        args = self.split_args(j, end)
        if len(args) < 2 or args[1][0].kind != "str":
            self.warn(f"registration of {targs[0]} without a literal name; skipped")
            return end + 1
        scope = self.scope_key(args[0])
        if scope is None:
            return end + 1
        name = args[1][0].text[1:-1]
        key = name if scope == "" else f"{scope}.{name}"
        cls = PyClass(key, cpp_key(targs[0]), [cpp_key(a) for a in targs[1:]], kind)
        self.add_class(cls, scope, name)
        if var:
            self.vars[var] = key
        return self.chain(end + 1, key)

    def add_class(self, cls: PyClass, scope: str, name: str) -> None:
        if cls.key in self.s.classes:
            self.warn(f"class {cls.key} registered twice; the later registration kept")
        if cls.kind == "enum":
            cls.members.update(ENUM_IMPLICIT)
        elif cls.kind == "vector":
            cls.members.update(VECTOR_IMPLICIT)
            element = re.fullmatch(r"vector<(.*)>", cls.cpp.replace("std::", ""))
            if not (element and cpp_key(element.group(1)) in NOT_COMPARABLE):
                cls.members.update(VECTOR_COMPARABLE)
        elif cls.kind == "map":
            self.warn(f"bind_map {cls.key}: map members not modelled")
        self.s.classes[cls.key] = cls
        if scope == "":
            self.s.module.add(name)
        else:
            self.s.classes[scope].members.add(name)

    def scope_key(self, scope: list[Tok]) -> str | None:
        """'' for the module, the class key for a class variable, None (with a warning) otherwise."""
        if len(scope) == 1 and scope[0].text in self.module_vars:
            return ""
        if len(scope) == 1 and scope[0].text in self.vars:
            return self.vars[scope[0].text]
        self.warn(f"registration on unknown scope {' '.join(t.text for t in scope)}; skipped")
        return None

    def statement_on(self, i: int) -> int:
        """`m.def(...)`, `m.attr("x") = ...`, `m.add_object(...)` or `var.def(...)` for a class variable."""
        name = self.text(i)
        if name in self.module_vars:
            return self.module_statement(i)
        if name in self.vars:
            return self.chain(i + 1, self.vars[name])
        return i + 1

    def module_statement(self, i: int) -> int:
        method = self.text(i + 2)
        if self.text(i + 3) != "(":
            return i + 1
        end = self.close_of(i + 3)
        args = self.split_args(i + 3, end)
        if method in ("def", "attr", "add_object") and args and args[0][0].kind == "str":
            attr = args[0][0].text[1:-1]
            self.s.module.add(attr)
            if method == "attr" and self.is_seq(end + 1, "=", self.text(i), ".", "attr", "("):
                self.module_alias(attr, end + 5)
        if method == "def":
            return self.chain(end + 1, None)  # m.def returns the module: chained m.def(...).def(...)
        return end + 1

    def module_alias(self, attr: str, open_i: int) -> None:
        """m.attr("ResizeMode") = m.attr("InterpolationMode"): the same class under a second name."""
        args = self.split_args(open_i, self.close_of(open_i))
        if args and args[0][0].kind == "str":
            self.s.aliases[attr] = args[0][0].text[1:-1]

    def chain(self, i: int, key: str | None) -> int:
        """Consume `.method(args)` calls from i on; record members on class `key` (module if None)."""
        while self.text(i) == "." and self.kind(i + 1) == "id" and self.text(i + 2) == "(":
            method = self.text(i + 1)
            end = self.close_of(i + 2)
            self.chain_call(method, self.split_args(i + 2, end), key)
            i = end + 1
        return i

    def chain_call(self, method: str, args: list[list[Tok]], key: str | None) -> None:
        target = self.s.module if key is None else self.s.classes[key].members
        first = args[0] if args else []
        if method == "export_values" and key is not None:
            self.export_values(key)
        elif method == "value" and key is not None and first and first[0].kind == "str":
            self.s.classes[key].values.append(first[0].text[1:-1])
            target.add(first[0].text[1:-1])
        elif method.startswith("def") and first and first[0].kind == "str":
            target.add(first[0].text[1:-1])
            if key is not None and method == "def_property" and len(args) > 1 and args[1][0].text == "nullptr":
                self.s.classes[key].write_only.add(first[0].text[1:-1])
        elif method == "def" and self.is_init(first):
            target.add("__init__")
        elif method == "def_buffer":
            pass  # the buffer protocol: no member name
        else:
            self.warn(f"unhandled .{method}({' '.join(t.text for t in first[:4])} ...) on {key or 'module'}")

    @staticmethod
    def is_init(arg: list[Tok]) -> bool:
        """py::init<...>(...), py::init(factory) or py::init_alias<...>(): a bound constructor."""
        return len(arg) >= 3 and arg[0].text == "py" and arg[1].text == "::" and arg[2].text in ("init", "init_alias")

    def export_values(self, key: str) -> None:
        """Copy the enum's values into its enclosing scope (the module or the outer class)."""
        cls = self.s.classes[key]
        if "." in key:
            self.s.classes[key.rsplit(".", 1)[0]].members.update(cls.values)
        else:
            self.s.module.update(cls.values)


def parse_bindings(repo: str, commit: str, surface: Surface) -> None:
    sources = sorted(p for p in list_files(repo, commit, "python/src") if p.endswith(".cpp"))
    if not sources:
        raise SystemExit(f"no python/src/*.cpp at {commit}")
    for path in sources:
        text = preprocess(git(repo, "show", f"{commit}:{path}"))
        if "def_submodule" in text:
            surface.warnings.append(f"{path}: def_submodule found; submodules are not modelled")
        BindingParser(tokenize(text), surface, path).run()


# ------------------------------------------------------------------------------- package __init__.py


def init_path(repo: str, commit: str) -> str:
    """The bindings package's __init__.py (moved under bindings_wheel/ in 8.6)."""
    for path in ("python/packaging/bindings_wheel/tensorrt/__init__.py", "python/packaging/tensorrt/__init__.py"):
        if list_files(repo, commit, path):
            return path
    raise SystemExit(f"no tensorrt/__init__.py under python/packaging at {commit}")


def fill_placeholders(text: str, version: str) -> str:
    """Fill the ##NAME## placeholders CMake substitutes, as for the `tensorrt` module."""
    known = {
        "TENSORRT_MODULE": "tensorrt",
        "TENSORRT_NVINFER_NAME": "nvinfer",
        "TENSORRT_PLUGIN_DISABLED": "False",
        "TENSORRT_VERSION": version,
        "TENSORRT_PYTHON_VERSION": version,
    }
    return re.sub(r"##(\w+)##", lambda found: known.get(found.group(1), found.group(1).lower()), text)


def evaluate(node: ast.expr) -> object | None:
    """The value of a top-level `if` test on Linux, or None where it depends on the run."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        value = evaluate(node.operand)
        return None if value is None else not value
    if isinstance(node, ast.BoolOp):
        return evaluate_boolop(node)
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        left, right = evaluate(node.left), evaluate(node.comparators[0])
        if left is None or right is None:
            return None
        if isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
            return (left == right) == isinstance(node.ops[0], ast.Eq)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "strip":
        value = evaluate(node.func.value)
        return value.strip() if isinstance(value, str) else None
    if isinstance(node, ast.Call) and is_platform_check(node.func):
        prefix = evaluate(node.args[0]) if node.args else None
        return "linux".startswith(prefix) if isinstance(prefix, str) else None
    return None


def evaluate_boolop(node: ast.BoolOp) -> bool | None:
    values = [evaluate(v) for v in node.values]
    decisive = isinstance(node.op, ast.Or)  # the value that settles the whole expression
    if any(v is not None and bool(v) == decisive for v in values):
        return decisive
    return None if any(v is None for v in values) else not decisive


def is_platform_check(func: ast.expr) -> bool:
    """sys.platform.startswith"""
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "startswith"
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "platform"
    )


def parse_init(text: str, surface: Surface) -> None:
    walk_statements(ast.parse(text).body, surface)


def walk_statements(body: list[ast.stmt], surface: Surface) -> None:
    for stmt in body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add_module_name(surface, stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                assign_target(target, stmt.value, surface)
        elif isinstance(stmt, ast.Delete):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    surface.module.discard(target.id)
        elif isinstance(stmt, ast.If):
            walk_if(stmt, surface)
        elif isinstance(stmt, ast.Try):
            walk_statements(stmt.body + stmt.orelse + stmt.finalbody, surface)
        # imports, loops and bare expressions bind no API names


def walk_if(stmt: ast.If, surface: Surface) -> None:
    value = evaluate(stmt.test)
    if value is None:
        surface.warnings.append(f"__init__.py line {stmt.lineno}: undecidable `if`; both branches taken")
        walk_statements(stmt.body + stmt.orelse, surface)
    else:
        walk_statements(stmt.body if value else stmt.orelse, surface)


def add_module_name(surface: Surface, name: str) -> None:
    if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
        surface.module.add(name)


def assign_target(target: ast.expr, value: ast.expr | None, surface: Surface) -> None:
    """`name = ...` is a module name; `Class.attr = ...` a class member (or alias of a nested class)."""
    if isinstance(target, ast.Name):
        add_module_name(surface, target.id)
    elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        owner = target.value.id
        if owner not in surface.classes:
            surface.warnings.append(f"__init__.py sets {owner}.{target.attr} on an unknown class")
            return
        surface.classes[owner].members.add(target.attr)
        if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
            source = f"{value.value.id}.{value.attr}"
            if source in surface.classes:
                surface.aliases[f"{owner}.{target.attr}"] = source


# ----------------------------------------------------------------------------------------- flatten


def base_keys(surface: Surface) -> dict[str, list[str]]:
    """Each class's Python bases: the template options of its class_ that are registered C++ types."""
    by_cpp: dict[str, str] = {}
    for key, cls in surface.classes.items():
        if cls.cpp in by_cpp and cls.kind == surface.classes[by_cpp[cls.cpp]].kind == "class":
            surface.warnings.append(f"C++ type {cls.cpp} bound as {by_cpp[cls.cpp]} and {key}; bases use the first")
        by_cpp.setdefault(cls.cpp, key)
    return {
        key: [by_cpp[o] for o in cls.options if o in by_cpp and by_cpp[o] != key]
        for key, cls in surface.classes.items()
    }


def flatten(surface: Surface, own: Callable[[PyClass], set[str]]) -> dict[str, set[str]]:
    """For each class (and alias), `own(class)` merged with the same of all its Python bases."""
    bases = base_keys(surface)
    done: dict[str, set[str]] = {}
    for key in surface.classes:
        collect(key, surface, own, bases, done, [])
    for alias, key in surface.aliases.items():
        if key in done:
            done[alias] = done[key]
        else:
            surface.warnings.append(f"alias {alias} of unknown class {key}")
    return done


def collect(
    key: str,
    surface: Surface,
    own: Callable[[PyClass], set[str]],
    bases: dict[str, list[str]],
    done: dict[str, set[str]],
    path: list[str],
) -> set[str]:
    if key in done:
        return done[key]
    if key in path:
        raise SystemExit(f"base class cycle: {' -> '.join([*path, key])}")
    names = set(own(surface.classes[key]))
    for base in bases[key]:
        names |= collect(base, surface, own, bases, done, [*path, key])
    done[key] = names
    return names


# ------------------------------------------------------------------------------------------ output


class Extraction(NamedTuple):
    version: str  # MAJOR.MINOR.PATCH
    ref: str
    commit: str
    module: list[str]
    classes: dict[str, list[str]]  # flattened members
    surface: Surface  # what was parsed, before flattening


def extract(repo: str, ref: str, commit: str) -> Extraction:
    version = full_version(repo, commit)
    surface = Surface()
    parse_bindings(repo, commit, surface)
    parse_init(fill_placeholders(git(repo, "show", f"{commit}:{init_path(repo, commit)}"), version), surface)
    flat = flatten(surface, lambda cls: cls.members)
    classes = {key: sorted(members) for key, members in sorted(flat.items())}
    module = sorted(surface.module | {alias for alias in surface.aliases if "." not in alias})
    return Extraction(version, ref, commit, module, classes, surface)


def to_json(found: Extraction) -> dict[str, object]:
    return {
        "tensorrt": found.version,
        "source": f"NVIDIA/TensorRT {found.ref} {found.commit} python/",
        "generated_by": GENERATED_BY,
        "module": found.module,
        "classes": found.classes,
    }


def write_json(data: dict[str, object], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def generate(repo: str, out: Path, only: str | None) -> None:
    keys = [only] if only else list(VERSIONS)
    for key in keys:
        if key not in VERSIONS:
            raise SystemExit(f"unknown version {key}; known: {', '.join(VERSIONS)}")
        ref, commit = resolve_ref(repo, VERSIONS[key])
        found = extract(repo, ref, commit)
        for warning in found.surface.warnings:
            print(f"warning: {key}: {warning}", file=sys.stderr)
        write_json(to_json(found), out / f"{key}.json")
        count = sum(len(m) for m in found.classes.values())
        print(
            f"{key}: TensorRT {found.version} from {ref} {commit[:12]}: {len(found.classes)} classes, {count} members"
        )


# ------------------------------------------------------------------------------------- stub checking


def stub_classes(tree: ast.Module) -> dict[str, tuple[set[str], list[str]]]:
    """Class key -> (own member names, base names) for every class in a .pyi, nested ones as Outer.Inner."""
    found: dict[str, tuple[set[str], list[str]]] = {}

    def visit(node: ast.ClassDef, prefix: str) -> None:
        key = prefix + node.name
        members: set[str] = set()
        for stmt in node.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                members.add(stmt.name)
            elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                members.add(stmt.target.id)
            elif isinstance(stmt, ast.Assign):
                members.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
            elif isinstance(stmt, ast.ClassDef):
                members.add(stmt.name)
                visit(stmt, key + ".")
        bases = [
            b.id if isinstance(b, ast.Name) else b.attr for b in node.bases if isinstance(b, (ast.Name, ast.Attribute))
        ]
        found[key] = (members, bases)

    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef):
            visit(stmt, "")
    return found


def stub_surface(stubs: Path) -> tuple[set[str], dict[str, set[str]]]:
    """Module names and flattened classes of tensorrt-stubs (bindings module plus the package __init__)."""
    bindings = parse_stub(stubs / "tensorrt_bindings" / "tensorrt.pyi")
    package = parse_stub(stubs / "tensorrt" / "__init__.pyi")
    own = stub_classes(bindings)
    module = set(own) - {k for k in own if "." in k}
    for tree in (bindings, package):
        for stmt in tree.body:
            if isinstance(stmt, (ast.FunctionDef, ast.AnnAssign, ast.Assign)):
                module.update(stub_names(stmt))
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.module.startswith("tensorrt_bindings"):
                module.update(a.asname or a.name for a in stmt.names)
    flat: dict[str, set[str]] = {}
    for key in own:
        flat[key] = stub_flatten(key, own)
    return module, flat


def parse_stub(path: Path) -> ast.Module:
    """Parse a .pyi with signatures blanked: stubgen writes some that Python rejects (a default before none)."""
    text = path.read_text(encoding="utf-8")
    return ast.parse(re.sub(r"^(\s*def \w+)\(.*\)(?: -> .*)?:$", r"\1(*args):", text, flags=re.M))


def stub_names(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.FunctionDef):
        return [stmt.name]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    if isinstance(stmt, ast.Assign):
        return [t.id for t in stmt.targets if isinstance(t, ast.Name) and t.id != "__all__"]
    return []


def stub_flatten(key: str, own: dict[str, tuple[set[str], list[str]]]) -> set[str]:
    members, bases = own[key]
    result = set(members)
    for base in bases:
        if base in own:
            result |= stub_flatten(base, own)
    return result


def check_stubs(repo: str, stubs: Path) -> int:
    """Compare the extraction of STUBS_REF with tensorrt-stubs; 1 if a difference is left unexplained."""
    ref, commit = resolve_ref(repo, (STUBS_REF,))
    found = extract(repo, ref, commit)
    classes = {key: set(members) for key, members in found.classes.items()}
    module = set(found.module)
    write_only = flatten(found.surface, lambda cls: cls.write_only)
    stub_module, stub_flat = stub_surface(stubs)
    print(f"extraction of TensorRT {found.version} ({ref} {commit[:12]}) vs tensorrt-stubs in {stubs}")
    unexplained = report("module names", module, stub_module, STUB_ONLY_MODULE)
    unexplained += report("classes", set(classes), set(stub_flat), set())
    common = sorted(set(classes) & set(stub_flat))
    extra = [f"{k}.{m}" for k in common for m in sorted(classes[k] - stub_flat[k])]
    missing = [f"{k}.{m}" for k in common for m in sorted(stub_flat[k] - classes[k])]
    members = sum(len(classes[k]) for k in common)
    print(f"members: {members} extracted in the {len(common)} common classes")
    setter_only = [m for m in extra if m.rsplit(".", 1)[1] in write_only.get(m.rsplit(".", 1)[0], set())]
    print_list("write-only properties, only in extraction (stubgen omits them)", setter_only)
    unexplained += print_list("other members only in extraction", [m for m in extra if m not in setter_only])
    implicit = [m for m in missing if is_dunder(m)]
    print_dunders("pybind11 implicit dunders, only in stubs (not listed by choice)", implicit)
    unexplained += print_list("other members only in stubs", [m for m in missing if not is_dunder(m)])
    print("result:", "all differences explained" if not unexplained else f"{unexplained} unexplained")
    return 1 if unexplained else 0


def is_dunder(qualified: str) -> bool:
    name = qualified.rsplit(".", 1)[1]
    return name.startswith("__") and name.endswith("__")


def report(what: str, extracted: set[str], stubs: set[str], explained: set[str]) -> int:
    """Print a set comparison; the number of differences not in `explained`."""
    print(f"{what}: {len(extracted)} extracted, {len(stubs)} in stubs, {len(extracted & stubs)} common")
    unexplained = print_list(f"{what} only in extraction", sorted(extracted - stubs - explained))
    print_list(f"{what} only in stubs, explained", sorted((stubs - extracted) & explained))
    return unexplained + print_list(f"{what} only in stubs", sorted(stubs - extracted - explained))


def print_list(title: str, names: list[str]) -> int:
    print(f"  {title}: {len(names)}")
    for name in names:
        print(f"    {name}")
    return len(names)


def print_dunders(title: str, names: list[str]) -> None:
    """Dunders grouped by name, with the number of classes each is in."""
    counts: dict[str, int] = {}
    for name in names:
        member = name.rsplit(".", 1)[1]
        counts[member] = counts.get(member, 0) + 1
    print(f"  {title}: {sum(counts.values())} in {len(counts)} names")
    for member, count in sorted(counts.items()):
        print(f"    {member}: {count} classes")


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", required=True, help="git clone (bare is fine) of github.com/NVIDIA/TensorRT")
    parser.add_argument("--out", type=Path, help="output folder, e.g. tests/data/tensorrt_api")
    parser.add_argument("--only", help="one version key: " + ", ".join(VERSIONS))
    parser.add_argument("--check-stubs", type=Path, help="folder where tensorrt-stubs 10.13.0.35.1 is installed")
    args = parser.parse_args(argv)
    if args.check_stubs:
        return check_stubs(args.repo, args.check_stubs)
    if not args.out:
        parser.error("--out is required unless --check-stubs is given")
    generate(args.repo, args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
