"""Refuse a `torch.export` archive (.pt2) that could make torch run code while loading it.

`torch.export.load` is not pickle-free (torch 2.13): a weight or constant whose config says
`use_pickle` is read with `torch.load(weights_only=False)`; `opaque_obj_*` / `custom_obj_*`
constants are unpickled; non-empty sample inputs are retried with `weights_only=False`; every
`expr_str` in the graph goes through `sympy.sympify` (an `eval`); `guards_code` is `exec`'d on
every call; and a node's target may name any `torch.*` attribute. So before torch sees an archive,
`check_pt2` insists on an allow-list: only the members a plain export writes, raw tensor payloads
(never pickled), no sample inputs, ATen operators only, and symbolic expressions and guards made of
known-harmless tokens. Archives we write always pass (tests/test_model_artifacts.py); anything
outside the list is refused with the reason, even if it might be harmless.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from inferloop.registry.errors import UnsupportedArtifact

_ROOT = "archive/"
_FIXED: dict[str, bytes | None] = {  # member -> its required content (None: checked below)
    _ROOT + "archive_format": b"pt2",
    _ROOT + "archive_version": b"0",
    _ROOT + "byteorder": b"little",
    _ROOT + ".data/version": None,
    _ROOT + ".data/serialization_id": None,
    _ROOT + "models/model.json": None,
    _ROOT + "data/weights/model_weights_config.json": None,
    _ROOT + "data/constants/model_constants_config.json": None,
    _ROOT + "data/sample_inputs/model.pt": b"",  # anything here is unpickled
}
_PAYLOAD = {"weights": re.compile(r"weight_\d+"), "constants": re.compile(r"tensor_\d+")}
# ATen operators, and Python's arithmetic/comparison operators applied to symbolic sizes
_TARGET = re.compile(r"torch\.ops\.aten\.[a-z0-9_]+\.[A-Za-z0-9_]+"
                     r"|_operator\.(?:getitem|add|sub|mul|floordiv|truediv|mod|neg|pow|eq|ne|lt|le|gt|ge)")
_SOURCE = r"L(?:\['[A-Za-z_][A-Za-z0-9_]*'\]|\[\d+\])+(?:\.size\(\)\[\d+\])?"
_GUARD = re.compile(rf"{_SOURCE} (?:==|!=|<=|>=|<|>) (?:{_SOURCE}|-?\d+)")
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<id>[A-Za-z_][A-Za-z0-9_]*)|'[a-z]+\d+'|\d+(?:\.\d+)?|\*\*|//|[-+*/%(),=<>!]=?)")
_EXPR_WORDS = {"Symbol", "positive", "integer", "nonnegative", "True", "False", "Max", "Min", "FloorDiv",
               "CeilDiv", "Mod", "PythonMod", "CleanDiv", "ModularIndexing", "Eq", "Ne", "Le", "Lt", "Ge", "Gt",
               "And", "Or", "Not", "Mul", "Add", "Pow", "Integer", "Rational", "Float", "floor", "ceiling",
               "IntTrueDiv", "FloatTrueDiv", "TruncToInt", "Abs"}
_SYMBOL = re.compile(r"[a-z]+\d+")


def _refuse(why: str) -> UnsupportedArtifact:
    return UnsupportedArtifact(f"torch.export archive refused (it could run code when loaded): {why}")


def _check_expression(text: str) -> None:
    pos = 0
    while pos < len(text):
        m = _EXPR_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _refuse(f"symbolic expression {text[:80]!r}")
        word = m.group("id")
        if word and word not in _EXPR_WORDS and not _SYMBOL.fullmatch(word):
            raise _refuse(f"name {word!r} in symbolic expression {text[:80]!r}")
        pos = m.end()


def _leaves(obj: Any, key: str | None = None) -> Iterator[tuple[str | None, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, str(k))
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v, key)
    else:
        yield key, obj


def check_pt2(data: bytes) -> None:
    """Raise `UnsupportedArtifact` unless loading `data` can only read JSON and raw tensor bytes."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise UnsupportedArtifact(f"not a torch.export archive (not a zip file: {exc})") from None
    names = [info.filename for info in archive.infolist()]
    if len(names) != len(set(names)):
        raise _refuse("duplicate members")
    payloads: dict[str, set[str]] = {"weights": set(), "constants": set()}
    for name in names:
        if name in _FIXED:
            continue
        parts = name.split("/")
        if len(parts) == 4 and parts[:2] == ["archive", "data"] and parts[2] in _PAYLOAD \
                and _PAYLOAD[parts[2]].fullmatch(parts[3]):
            payloads[parts[2]].add(parts[3])
            continue
        raise _refuse(f"member {name!r} is not allowed")
    try:
        for name, required in _FIXED.items():
            if name not in names:
                raise _refuse(f"member {name!r} is missing")
            if required is not None and archive.read(name) != required:
                raise _refuse(f"unexpected content in {name!r}")
        for kind in ("weights", "constants"):
            config = json.loads(archive.read(f"{_ROOT}data/{kind}/model_{kind}_config.json"))
            if not isinstance(config, dict) or set(config) != {"config"} or not isinstance(config["config"], dict):
                raise _refuse(f"{kind} config has an unexpected layout")
            for fqn, meta in config["config"].items():
                if not isinstance(meta, dict) or meta.get("use_pickle") is not False \
                        or not isinstance(meta.get("tensor_meta"), dict):
                    raise _refuse(f"{kind} entry {fqn!r} is pickled")
                if meta.get("path_name") not in payloads[kind]:
                    raise _refuse(f"{kind} entry {fqn!r} points at {meta.get('path_name')!r}")
        model = json.loads(archive.read(_ROOT + "models/model.json"))
    except (KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise _refuse(f"unreadable archive: {exc}") from None
    graph = model.get("graph_module", {}).get("graph", {}) if isinstance(model, dict) else {}
    if not isinstance(graph, dict) or graph.get("custom_obj_values"):
        raise _refuse("custom (torchbind) objects")
    for key, value in _leaves(graph.get("nodes", [])):
        if key == "target" and not (isinstance(value, str) and _TARGET.fullmatch(value)):
            raise _refuse(f"operator {value!r} (only ATen operators are allowed)")
    for key, value in _leaves(model):
        if key == "expr_str":
            _check_expression(str(value))
    for symbol in model.get("range_constraints", {}):
        if not _SYMBOL.fullmatch(str(symbol)):
            raise _refuse(f"symbol name {symbol!r}")
    for guard in model.get("guards_code", []):
        if not (isinstance(guard, str) and _GUARD.fullmatch(guard)):
            raise _refuse(f"guard {str(guard)[:80]!r}")
