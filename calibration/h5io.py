"""Generic dataclass <-> HDF5 mapping used by the profile file: groups for dataclasses, attrs for scalars.

Rules (documented in PROFILE.md): a dataclass is a group; float/int/bool/str fields are attributes;
numpy arrays are float64 datasets; tuples are small attribute arrays; list[str] is a JSON attribute;
dict[str, dataclass] is a group of groups; dict[str, Any] is a group whose scalars are attributes and
whose arrays are datasets; an Optional field that is None is simply absent. Reading walks the type
hints and raises ProfileError naming the exact path of anything missing or of the wrong kind.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from typing import Any

import h5py
import numpy as np

from calibration.errors import ProfileError


def check_stored_sizes(f: h5py.File, source: str, error_cls: type[Exception]) -> None:
    """Refuse (``error_cls``, one line) a file whose datasets claim more bytes than the file holds, or live elsewhere.

    rram-hil writes its HDF5 datasets uncompressed and in the file itself, so a dataset whose shape claims
    more bytes than the whole file (a damaged or forged shape, e.g. 2^40 entries) is refused before anything
    reads it: a reader then never allocates more than the file's own size. Virtual datasets and external
    storage (data in other files) are refused too.
    """
    size = os.path.getsize(f.filename)
    claimed = 0
    seen: set[int] = set()
    groups: list[h5py.Group] = [f]
    while groups:
        group = groups.pop()
        for key in group:
            if not isinstance(group.get(key, getlink=True), h5py.HardLink):
                raise error_cls(f"{source} is corrupt: {group.name.rstrip('/')}/{key} links to elsewhere")
            obj = group[key]
            address = h5py.h5o.get_info(obj.id).addr
            if address in seen:
                continue
            seen.add(address)
            if isinstance(obj, h5py.Group):
                groups.append(obj)
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual or obj.external:
                    raise error_cls(f"{source} is corrupt: dataset {obj.name} keeps its data in another file")
                claimed += int(obj.size) * int(obj.dtype.itemsize)
    if claimed > size:
        raise error_cls(f"{source} is corrupt: its datasets claim {claimed} bytes, more than the file's {size}")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def write_dataclass(group: h5py.Group, obj: Any) -> None:
    """Write every field of dataclass ``obj`` under ``group``."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        _write_value(group, f.name, hints[f.name], getattr(obj, f.name))


def _write_value(group: h5py.Group, name: str, tp: Any, value: Any) -> None:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if not optional:
            raise ProfileError(f"{group.name}/{name} is None but is required")
        return
    origin = typing.get_origin(inner)
    if dataclasses.is_dataclass(inner):
        write_dataclass(group.create_group(name), value)
    elif inner is np.ndarray:
        group.create_dataset(name, data=np.asarray(value, dtype=np.float64))
    elif inner in (float, int, bool, str):
        group.attrs[name] = inner(value)
    elif origin is tuple:
        group.attrs[name] = np.asarray(value)
    elif origin is list:
        group.attrs[name] = json.dumps([str(v) for v in value])
    elif origin is dict:
        sub = group.create_group(name)
        val_tp = typing.get_args(inner)[1]
        for key, item in value.items():
            if dataclasses.is_dataclass(val_tp):
                write_dataclass(sub.create_group(key), item)
            elif isinstance(item, np.ndarray):
                sub.create_dataset(key, data=np.asarray(item, dtype=np.float64))
            elif isinstance(item, (bool, np.bool_)):
                sub.attrs[key] = bool(item)
            elif isinstance(item, (int, float, np.integer, np.floating)):
                sub.attrs[key] = float(item)
            elif isinstance(item, str):
                sub.attrs[key] = item
            else:
                raise ProfileError(f"{sub.name}/{key}: cannot store a value of type {type(item).__name__}")
    else:
        raise ProfileError(f"{group.name}/{name}: unsupported field type {inner!r}")


def read_dataclass(group: h5py.Group, cls: type) -> Any:
    """Read dataclass ``cls`` from ``group``, refusing missing or mistyped fields with the exact path."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        value = _read_value(group, f.name, hints[f.name], f)
        if value is not _ABSENT:
            kwargs[f.name] = value
    return cls(**kwargs)


_ABSENT = object()


def _read_value(group: h5py.Group, name: str, tp: Any, f: dataclasses.Field) -> Any:
    inner, optional = _unwrap_optional(tp)
    path = f"{group.name.rstrip('/')}/{name}"
    origin = typing.get_origin(inner)
    present = name in group or name in group.attrs
    if not present:
        if optional:
            return None
        raise ProfileError(f"missing field {path}")
    if isinstance(inner, type) and dataclasses.is_dataclass(inner):
        node = group.get(name)
        if not isinstance(node, h5py.Group):
            raise ProfileError(f"{path} must be a group")
        return read_dataclass(node, inner)
    if inner is np.ndarray:
        node = group.get(name)
        if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "iuf":
            raise ProfileError(f"{path} must be a numeric dataset (integers or floats), got {_kind(node)}")
        return np.asarray(node[()], dtype=np.float64)
    if inner in (float, int, bool, str):
        if name not in group.attrs:
            raise ProfileError(f"{path} must be an attribute")
        return _scalar(path, group.attrs[name], inner)
    if origin is tuple:
        raw = np.asarray(group.attrs.get(name))
        args = typing.get_args(inner)
        if raw.ndim != 1 or raw.size != len(args):
            raise ProfileError(f"{path} must hold {len(args)} values")
        return tuple(_scalar(path, v, a) for v, a in zip(raw, args))
    if origin is list:
        try:
            items = json.loads(_scalar(path, group.attrs.get(name), str))
        except json.JSONDecodeError:
            raise ProfileError(f"{path} is not a JSON list") from None
        if not isinstance(items, list):
            raise ProfileError(f"{path} is not a JSON list")
        return [str(v) for v in items]
    if origin is dict:
        node = group.get(name)
        if not isinstance(node, h5py.Group):
            raise ProfileError(f"{path} must be a group")
        val_tp = typing.get_args(inner)[1]
        out: dict[str, Any] = {}
        if isinstance(val_tp, type) and dataclasses.is_dataclass(val_tp):
            for key in node:
                item = node.get(key)
                if not isinstance(item, h5py.Group):
                    raise ProfileError(f"{path}/{key} must be a group, got {_kind(item)}")
                out[key] = read_dataclass(item, val_tp)
            return out
        for key, v in node.attrs.items():
            kind = str if isinstance(v, (str, bytes)) else bool if isinstance(v, (bool, np.bool_)) else float
            out[key] = _scalar(f"{path}/{key}", v, kind)
        for key in node:
            item = node.get(key)
            if not isinstance(item, h5py.Dataset) or item.dtype.kind not in "iuf":
                raise ProfileError(f"{path}/{key} must be a numeric dataset (integers or floats), got {_kind(item)}")
            out[key] = np.asarray(item[()], dtype=np.float64)
        return out
    raise ProfileError(f"{path}: unsupported field type {inner!r}")


def _scalar(path: str, raw: Any, tp: type) -> Any:
    """Convert an HDF5 attribute to float/int/bool/str, or raise naming the path."""
    if isinstance(raw, np.ndarray) and raw.shape == ():
        raw = raw[()]
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if tp is str:
        if not isinstance(raw, str):
            raise ProfileError(f"{path} must be a string")
        return raw
    if tp is bool:
        if not isinstance(raw, (bool, np.bool_)):
            raise ProfileError(f"{path} must be a boolean")
        return bool(raw)
    if isinstance(raw, (str, bool, np.bool_)) or not isinstance(raw, (int, float, np.integer, np.floating)):
        raise ProfileError(f"{path} must be a number")
    if tp is int:
        if not math.isfinite(float(raw)) or float(raw) != int(raw):
            raise ProfileError(f"{path} must be an integer, got {raw}")
        return int(raw)
    return float(raw)


def _kind(node: Any) -> str:
    """What an HDF5 node is, for messages: 'a group', 'a dataset of dtype |S5'."""
    if isinstance(node, h5py.Dataset):
        return f"a dataset of dtype {node.dtype}"
    return "a group" if isinstance(node, h5py.Group) else "nothing"
