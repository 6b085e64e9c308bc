"""torch.export (``.pt2``) programs: what an archive may contain when code is not trusted.

``torch.export.load`` itself runs Python while it loads: every symbolic size in the
program (``expr_str``) goes through ``sympy.sympify``, i.e. ``eval``; guards and input
names are pasted into generated Python source that runs at every call; members under
``data/aotinductor/`` are AOTInductor native libraries it loads. So without trust
:func:`check_export_archive` reads the program JSON with torch's own archive reader
before ``torch.export.load`` sees it (call targets, symbolic sizes, guards, names,
pytree specs, AOTInductor code, pickled custom objects, the legacy format), and
:func:`check_exported_program` walks the loaded graph again before
``ExportedProgram.module()`` is called. Both raise
:class:`~armetrics.errors.UnsafeCodeError` (a damaged archive: ``LoadError``).
Used by :mod:`armetrics.loading`; see docs/loading.md, "torch.export programs".
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import math
import operator
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ArmetricsError, LoadError, UnsafeCodeError, first_line, one_line
from .safeio import read_error

TRUST_FIX = "if you trust its source pass --trust-code (trust_code=True), or save a state_dict or .safetensors and pass --arch"

_SAFE_TEXT = re.compile(r"[A-Za-z0-9_.@:+\-]*\Z")  # names, keys, types: never quotes, spaces, newlines
_SYMBOL = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")

#: Python builtins torch.export's serializer writes as call targets (its ``_SYM_OPS``,
#: symbolic integer/float/bool arithmetic) and ``operator.getitem``.
_SAFE_BUILTINS = frozenset(f for f in (
    operator.getitem, operator.eq, operator.ne, operator.le, operator.ge, operator.lt, operator.gt,
    operator.neg, operator.pos, operator.mul, operator.add, operator.sub, operator.floordiv, operator.mod,
    operator.pow, operator.truediv, operator.and_, operator.or_, operator.xor, operator.lshift, operator.rshift,
    operator.not_, operator.abs, math.trunc, math.ceil, math.floor, math.sqrt,
    *(getattr(torch, n) for n in ("sym_not", "sym_int", "sym_float", "sym_ite", "sym_max", "sym_min", "sym_sqrt",
                                  "sym_sum") if hasattr(torch, n)),
))
_SAFE_BUILTIN_NAMES = frozenset(f"{f.__module__}.{f.__name__}" for f in _SAFE_BUILTINS)
#: Higher-order operators that only structure the graph (their subgraphs are checked too).
_SAFE_HOPS = frozenset({"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled", "wrap_with_autocast"})
#: aten operators that touch files or have side effects outside the tensors.
_DENIED_ATEN = frozenset({"from_file", "save", "load", "_print", "print", "warn"})
_FILE_ARGS = frozenset({"filename", "file", "file_name", "filepath", "path", "fname", "f", "dir", "directory"})
#: The sympy names torch.export's deserializer writes in symbolic sizes.
_SYMPY_CALLS = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor", "ceiling",
    "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality", "StrictLessThan", "StrictGreaterThan",
    "LessThan", "GreaterThan", "And", "Or", "Not", "Xor", "Piecewise", "ExprCondPair", "ITE", "Tuple",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift",
    "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "OpaqueUnaryFn_acos",
    "OpaqueUnaryFn_asin", "OpaqueUnaryFn_asinh", "OpaqueUnaryFn_atan", "OpaqueUnaryFn_cos", "OpaqueUnaryFn_cosh",
    "OpaqueUnaryFn_exp", "OpaqueUnaryFn_log", "OpaqueUnaryFn_log2", "OpaqueUnaryFn_sin", "OpaqueUnaryFn_sinh",
    "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_tan", "OpaqueUnaryFn_tanh", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
})
_PY_BUILTINS = frozenset(dir(builtins))
_GUARD_NAMES = frozenset({"L", "math", "torch", "inf", "IsNonOverlappingAndDenseIndicator",
                          "cast_symbool_to_symint_guardless"})
_TENSOR_METHODS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
_EXPR_NODES = (ast.Expression, ast.Load, ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Tuple, ast.List,
               ast.operator, ast.unaryop, ast.cmpop, ast.boolop, ast.keyword)


def _op_problem(op: Any) -> str | None:
    """Why an ``OpOverload`` is not allowed without trust, or None."""
    ns = getattr(op, "namespace", None)
    if ns != "aten":
        return f"an operator of the {ns!r} namespace (custom operators run code the archive does not show)"
    base = op._schema.name.split("::", 1)[-1]
    if base in _DENIED_ATEN or base.rstrip("_") in _DENIED_ATEN:
        return "an operator that reads or writes files or has side effects"
    for a in op._schema.arguments:
        kind = str(a.type)
        if "Storage" in kind:
            return f"an operator taking a raw Storage ({a.name})"
        if "str" in kind and a.name.lower() in _FILE_ARGS:
            return f"an operator taking a file name ({a.name})"
    return None


def _target_problem(target: str) -> str | None:
    """Why a serialized call target (``torch.ops.aten.relu.default``, ``_operator.getitem``)
    is not allowed without trust, or None. Resolves nothing outside ``torch.ops.aten``."""
    if not isinstance(target, str):
        return "a call target that is not a name"
    if target in _SAFE_BUILTIN_NAMES:
        return None
    parts = target.split(".")
    if target.startswith("torch.ops.higher_order."):
        return None if len(parts) == 4 and parts[3] in _SAFE_HOPS else "a higher-order operator that runs other code"
    if target.startswith("torch.ops.aten.") and len(parts) == 5 and all(re.fullmatch(r"\w+", p) for p in parts[3:]):
        try:
            op = getattr(getattr(torch.ops.aten, parts[3]), parts[4])
        except (AttributeError, RuntimeError):
            return "an unknown aten operator"
        if not isinstance(op, torch._ops.OpOverload):
            return "not an aten operator overload"
        return _op_problem(op)
    return "a call target outside torch's aten operators and symbolic arithmetic"


def _object_problem(target: Any) -> str | None:
    """:func:`_target_problem` for a loaded graph's call target (an object)."""
    if isinstance(target, torch._ops.OpOverload):
        return _op_problem(target)
    if isinstance(target, torch._ops.HigherOrderOperator):
        return None if target.name() in _SAFE_HOPS else "a higher-order operator that runs other code"
    try:
        if target in _SAFE_BUILTINS:
            return None
    except TypeError:  # unhashable
        pass
    return "a call target outside torch's aten operators and symbolic arithmetic"


def _target_name(target: Any) -> str:
    if isinstance(target, str):
        return one_line(target[:120])
    return one_line(str(getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or target)[:120])


def _parse_expr(text: Any) -> ast.AST | None:
    if not isinstance(text, str) or len(text) > 100_000:
        return None
    try:
        return ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def _sympy_problem(text: Any) -> str | None:
    """Why a symbolic size (``expr_str``, which torch hands to ``sympy.sympify``, i.e.
    ``eval``) is not a plain sympy expression of allowed functions, or None."""
    tree = _parse_expr(text)
    if tree is None:
        return "a symbolic size that is not an expression"
    for node in ast.walk(tree):
        if isinstance(node, _EXPR_NODES):
            continue
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS:
                continue
            return f"a symbolic size calling {one_line(ast.unparse(node.func)[:60])}"
        if isinstance(node, ast.Name):  # bare symbols (s0, u1, oo); never a Python builtin
            if node.id in _SYMPY_CALLS or (_SYMBOL.match(node.id) and node.id not in _PY_BUILTINS):
                continue
            return f"a symbolic size naming {one_line(node.id[:60])}"
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, str) and not _SYMBOL.match(v):
                return "a symbolic size with an odd string"
            if v is None or isinstance(v, (bool, int, float, str)):
                continue
        return f"a symbolic size containing Python {type(node).__name__}"
    return None


def _guard_problem(text: Any) -> str | None:
    """Why a guard (Python source torch.export pastes into a generated function) is not
    a plain comparison of input sizes, or None."""
    tree = _parse_expr(text)
    if tree is None:
        return "a guard that is not an expression"
    for node in ast.walk(tree):
        if isinstance(node, _EXPR_NODES + (ast.Subscript, ast.Slice, ast.IfExp)):
            continue
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id == "math" and not node.attr.startswith("_") and hasattr(math, node.attr):
                continue
            if isinstance(base, ast.Name) and base.id == "torch" and node.attr.startswith("sym_") and hasattr(torch, node.attr):
                continue
            if not isinstance(base, ast.Name) and node.attr in _TENSOR_METHODS:
                continue
            return f"a guard using .{one_line(node.attr[:40])}"
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute) or (isinstance(node.func, ast.Name) and node.func.id in _GUARD_NAMES):
                continue
            return "a guard calling something other than size arithmetic"
        if isinstance(node, ast.Name):
            if node.id in _GUARD_NAMES:
                continue
            return f"a guard naming {one_line(node.id[:40])}"
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, str) and not _SAFE_TEXT.match(v):
                return "a guard with an odd string"
            if v is None or isinstance(v, (bool, int, float, str)):
                continue
        return f"a guard containing Python {type(node).__name__}"
    return None


def _treespec_problem(text: Any) -> str | None:
    """Why a serialized pytree spec (its keys become Python source in the module's
    ``forward``) holds anything but plain names, or None."""
    try:
        doc = json.loads(text) if isinstance(text, str) else None
    except (ValueError, RecursionError):
        doc = None
    if doc is None:
        return "an input/output spec that is not JSON"
    stack = [doc]
    while stack:
        obj = stack.pop()
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "context" and isinstance(v, str):
                    try:
                        stack.append(json.loads(v))
                    except (ValueError, RecursionError):
                        return "an input/output spec with a malformed context"
                else:
                    stack.extend((k, v))
        elif isinstance(obj, list):
            stack.extend(obj)
        elif isinstance(obj, str) and not _SAFE_TEXT.match(obj):
            return f"an input/output spec with the key {one_line(obj[:60])!r}"
    return None


def _program_json_problem(doc: Any) -> str | None:
    """Why a torch.export program (the ``models/*.json`` of a .pt2) cannot be loaded
    without trust, or None: every call target (nested subgraphs too) must pass
    :func:`_target_problem`, every symbolic size :func:`_sympy_problem`, every guard
    :func:`_guard_problem`, the pytree specs :func:`_treespec_problem`, and every other
    string and key must be a plain name (node metadata and string arguments, which
    torch only stores or quotes, are skipped)."""
    seen: dict[tuple[str, str], str | None] = {}

    def cached(kind, value, check):
        key = (kind, value if isinstance(value, str) else repr(value))
        if key not in seen:
            seen[key] = check(value)
        return seen[key]

    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        obj, at = stack.pop()
        if isinstance(obj, dict):
            for k, v in obj.items():
                if at == "/range_constraints":  # keys are symbolic expressions, looked up only
                    if cached("expr", k, _sympy_problem):
                        return f"the range constraint {one_line(str(k)[:60])!r}"
                elif not isinstance(k, str) or not _SAFE_TEXT.match(k):
                    return f"the key {one_line(str(k)[:60])!r} at {at or '/'}"
                here = f"{at}/{k}"
                if k == "metadata" or k in ("as_string", "as_strings", "stack_trace"):
                    continue
                if k in ("target", "as_operator"):  # only graph nodes have a "target" in the schema
                    problem = cached("target", v, _target_problem)
                    if problem:
                        return f"{problem}: {_target_name(v)}"
                elif k == "expr_str":
                    problem = cached("expr", v, _sympy_problem)
                    if problem:
                        return f"{problem}: {one_line(str(v)[:80])}"
                elif k == "guards_code":
                    for g in v if isinstance(v, list) else [v]:
                        problem = cached("guard", g, _guard_problem)
                        if problem:
                            return f"{problem}: {one_line(str(g)[:80])}"
                elif k in ("in_spec", "out_spec"):
                    problem = cached("spec", v, _treespec_problem)
                    if problem:
                        return problem
                else:
                    stack.append((v, here))
        elif isinstance(obj, list):
            stack.extend((v, at) for v in obj)
        elif isinstance(obj, str) and not _SAFE_TEXT.match(obj):
            return f"the name {one_line(obj[:60])!r} at {at}"
    return None


def check_export_archive(path: str | Path, f: Any) -> None:
    """Refuse (UnsafeCodeError) a ``.pt2`` archive, open as ``f``, that would run code when
    loaded or called: AOTInductor native libraries, pickled custom objects, the legacy
    format torch falls back to, or a program failing :func:`_program_json_problem`. The
    archive is read with torch's own reader, so what is checked is what torch loads."""
    from torch.export.pt2_archive._package import PT2ArchiveReader

    where = one_line(str(path))

    def refuse(what: str) -> UnsafeCodeError:
        return UnsafeCodeError(f"{where} is a torch.export program with {what}, which can run code when it is "
                               f"loaded or called: {TRUST_FIX}")

    try:
        f.seek(0)
        with zipfile.ZipFile(f) as z:
            legacy = [n for n in z.namelist() if n.split("/")[-1] == "serialized_exported_program.json"]
        if legacy:
            raise refuse(f"a member in the pre-2.8 format ({one_line(legacy[0])}) that torch loads unchecked")
        f.seek(0)
        with PT2ArchiveReader(f) as reader:
            names = reader.get_file_names()
            for n in names:
                base = n.rsplit("/", 1)[-1]
                if n.startswith("data/aotinductor/"):
                    raise refuse(f"AOTInductor-compiled native code ({one_line(n)})")
                if base.startswith(("custom_obj_", "opaque_obj_")):
                    raise refuse(f"pickled custom objects ({one_line(n)})")
            for n in names:
                if n.startswith("data/") and n.endswith("_config.json"):
                    config = json.loads(reader.read_bytes(n))
                    text = json.dumps(config)
                    if "custom_obj_" in text or "opaque_obj_" in text:
                        raise refuse(f"pickled custom objects (named in {one_line(n)})")
            models = [n for n in names if n.startswith("models/") and n.endswith(".json")]
            for n in models:
                problem = _program_json_problem(json.loads(reader.read_bytes(n)))
                if problem:
                    raise refuse(problem)
    except ArmetricsError:
        raise
    except PermissionError as exc:
        raise read_error(where, exc, "checkpoint", LoadError) from None
    except (ValueError, RecursionError, RuntimeError, OSError, AssertionError, zipfile.BadZipFile, UnicodeDecodeError,
            MemoryError, struct.error) as exc:
        raise LoadError(f"{where} is a damaged torch.export archive ({one_line(first_line(exc))}): export it again") from None
    finally:
        with contextlib.suppress(Exception):
            f.seek(0)


def check_exported_program(path: str | Path, program: Any) -> None:
    """Walk every node of a loaded ExportedProgram's graph and of all its nested graphs
    (higher-order operator bodies): only allowed call targets, plain attribute and input
    names, tensor constants and plain guards. Raises UnsafeCodeError."""
    where = one_line(str(path))

    def refuse(what: str) -> UnsafeCodeError:
        return UnsafeCodeError(f"{where} is a torch.export program whose graph calls {what}, which armetrics "
                               f"does not run without trust: {TRUST_FIX}")

    for mod in program.graph_module.modules():
        if not isinstance(mod, torch.fx.GraphModule):
            if type(mod) is not nn.Module:
                raise refuse(f"a {type(mod).__name__} submodule")
            continue
        for node in mod.graph.nodes:
            if node.op == "call_function":
                problem = _object_problem(node.target)
                if problem:
                    raise refuse(f"{problem}: {_target_name(node.target)}")
            elif node.op in ("placeholder", "get_attr"):
                if not (isinstance(node.target, str) and _SAFE_TEXT.match(node.target)):
                    raise refuse(f"an odd {node.op} name {_target_name(node.target)!r}")
            elif node.op != "output":
                raise refuse(f"a {node.op} node ({_target_name(node.target)})")
    for name, value in dict(getattr(program, "constants", {}) or {}).items():
        if not isinstance(value, torch.Tensor):
            raise refuse(f"a {type(value).__name__} constant ({one_line(str(name)[:60])})")
    for g in getattr(program, "_guards_code", None) or []:
        problem = _guard_problem(g)
        if problem:
            raise refuse(f"{problem}: {one_line(str(g)[:80])}")
