"""Hypothesis strategies that build any protocol message from its struct layout."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import strategies as st

from firmware_protocol.messages import Message

_INT_RANGES = {
    "B": (0, 2**8 - 1),
    "b": (-(2**7), 2**7 - 1),
    "H": (0, 2**16 - 1),
    "h": (-(2**15), 2**15 - 1),
    "I": (0, 2**32 - 1),
    "i": (-(2**31), 2**31 - 1),
    "Q": (0, 2**64 - 1),
    "q": (-(2**63), 2**63 - 1),
}


def _codes(fmt: str) -> list[str]:
    """Expand a struct format ('<HH16sf') into one code per field ('H', 'H', '16s', 'f')."""
    out, num = [], ""
    for ch in fmt.lstrip("<"):
        if ch.isdigit():
            num += ch
        elif ch == "s":
            out.append(num + "s")
            num = ""
        else:
            out.extend([ch] * int(num or 1))
            num = ""
    return out


def _field_strategy(code: str) -> st.SearchStrategy:
    if code.endswith("s"):
        alphabet = st.characters(min_codepoint=33, max_codepoint=126)
        return st.text(alphabet, max_size=int(code[:-1]))
    if code == "f":
        return st.floats(width=32, allow_nan=False, allow_infinity=False)
    lo, hi = _INT_RANGES[code]
    return st.integers(lo, hi)


def _array_of(dtype: np.dtype, n: int) -> st.SearchStrategy:
    return st.binary(min_size=n * dtype.itemsize, max_size=n * dtype.itemsize).map(
        lambda b: np.frombuffer(b, dtype=dtype).copy()
    )


@st.composite
def messages(draw: st.DrawFn, cls: type[Message]) -> Message:
    names = cls._fixed_fields()
    codes = _codes(cls.FORMAT)
    assert len(names) == len(codes), cls
    values = {n: draw(_field_strategy(c)) for n, c in zip(names, codes)}
    arrays = {f: m for f, m in ((f.name, f.metadata.get("array")) for f in cls.__dataclass_fields__.values()) if m}
    if arrays:
        # Keep the variable part small enough to fit a frame.
        if cls.__name__ == "ReadBlockResult":
            values["nrows"] = draw(st.integers(0, 30))
            values["ncols"] = draw(st.integers(0, 30))
            count = values["nrows"] * values["ncols"]
        else:
            assert "n" in values, cls  # every other message with arrays counts its items in field 'n'
            count = draw(st.integers(0, 300))
            values["n"] = count
        for name, kind in arrays.items():
            dtype = np.dtype(kind)
            values[name] = draw(_array_of(dtype, count))
    return cls(**values)


def struct_size(cls: type[Message]) -> int:
    return struct.calcsize(cls.FORMAT)
