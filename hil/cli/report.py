"""Text people read: summaries as aligned `name  value unit` lines, in the units of the field.

Summaries are dicts of SI values (what `--json` prints, at full precision); a unit map says what each key
is, by key name (the same map serves nested groups): "S" a conductance (shown in µS), "V", "A" (µA, nA or
mA), "s" a time (s, ms, µs or ns, by size), "ns", "%" a fraction (shown in percent), "x" a ratio,
"cycles", "pulses", "of cells" a count out of the summary's `cells` ("14 of 16"), "cells" a list of
[row, col]. A key not in the map is shown as a plain number; None is shown as "none"; nested dicts are
groups, indented. Nothing is ever shown as a Python repr, and a non-finite number is "none".

`json_text` is the one writer of every `--json` output: strict JSON (RFC 8259), with NaN and infinities as
`null`, since the `NaN` that Python's json module writes by default is not JSON and breaks other readers.

Standard library only: every command (and the demo, through the CLI) uses it without a heavy import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

# Unit -> the key suffix it replaces in a label ("g_after_median_s" shows as "g after median").
_SUFFIX = {"S": "_s", "s": "_s", "V": "_v", "A": "_a", "ns": "_ns"}
_TIME = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns"))
_CURRENT = ((1e-3, "mA"), (1e-6, "µA"), (1e-9, "nA"))
MAX_CELLS_SHOWN = 8


def number(x: float, digits: int = 3) -> str:
    """`digits` significant digits, without an exponent from 1e-4 to 1e6 and without trailing zeros."""
    if not math.isfinite(x):
        return "none"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if not -4 <= mag < 6:
        return f"{x:.{digits - 1}e}"
    text = f"{x:.{max(0, digits - 1 - mag)}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(values: Sequence[float], scales: Sequence[tuple[float, str]]) -> tuple[float, str]:
    """The largest scale not above the largest |value| (the smallest scale for tiny values)."""
    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    for scale, symbol in scales:
        if top >= scale:
            return scale, symbol
    return scales[-1]


def quantity(value: Any, unit: str = "") -> tuple[str, str]:
    """(value text, unit text) of one summary value."""
    if value is None or isinstance(value, float) and not math.isfinite(value):
        return "none", ""
    if isinstance(value, bool):
        return ("yes" if value else "no"), ""
    if isinstance(value, str):
        return value, ""
    if unit == "cells":
        return _cells(value), ""
    if isinstance(value, (list, tuple)):
        return _list(value, unit)
    if not isinstance(value, (int, float)):
        return str(value), unit
    x = float(value)
    if unit == "S":
        return number(x * 1e6), "µS"
    if unit == "s":
        scale, symbol = _scaled([x], _TIME)
        return number(x / scale), symbol
    if unit == "A":
        scale, symbol = _scaled([x], _CURRENT)
        return number(x / scale), symbol
    if unit == "%":
        return f"{100 * x:.1f}", "%"
    if isinstance(value, int):
        return str(value), unit
    return number(x, 3 if unit else 4), unit


def _list(values: Sequence[Any], unit: str) -> tuple[str, str]:
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(nums) != len(values):  # mixed or text: each on its own
        return ", ".join(quantity(v)[0] for v in values) or "none", ""
    if not nums:
        return "none", ""
    if unit in ("s", "A", "S"):
        scale, symbol = (1e-6, "µS") if unit == "S" else _scaled(nums, _TIME if unit == "s" else _CURRENT)
        return ", ".join(number(v / scale) for v in nums), symbol
    return ", ".join(quantity(v, unit)[0] for v in values), quantity(values[0], unit)[1]


def _cells(cells: Any) -> str:
    cells = list(cells or [])
    shown = " ".join(f"({int(c[0])},{int(c[1])})" for c in cells[:MAX_CELLS_SHOWN])
    more = f" and {len(cells) - MAX_CELLS_SHOWN} more" if len(cells) > MAX_CELLS_SHOWN else ""
    return (shown + more) or "none"


def label(key: str, unit: str = "") -> str:
    """A key as people read it: without the unit suffix the unit column shows, words apart."""
    suffix = _SUFFIX.get(unit)
    if suffix and key.endswith(suffix) and len(key) > len(suffix):
        key = key[: -len(suffix)]
    return key.replace("_", " ")


Row = tuple[int, str, str, str]  # (depth, label, value, unit); a group header has value and unit ""


def _rows(summary: Mapping[str, Any], units: Mapping[str, str], cells: Any, depth: int) -> list[Row]:
    rows: list[Row] = []
    for key, value in summary.items():
        unit = units.get(key, "")
        if isinstance(value, Mapping):
            rows.append((depth, label(key), "", ""))
            rows += _rows(value, units, cells, depth + 1)
            continue
        if unit == "of cells" and isinstance(value, int) and isinstance(cells, int):
            text, shown = f"{value} of {cells}", ""
        else:
            text, shown = quantity(value, "" if unit == "of cells" else unit)
        rows.append((depth, label(key, unit), text, shown))
    return rows


def aligned(rows: Sequence[Row], indent: int = 2, right: bool = True) -> list[str]:
    """Lines with the names in one column, the values in the next (numbers right-aligned unless not
    `right`), units after them."""
    if not rows:
        return []
    name_w = max(2 * d + len(name) for d, name, value, _ in rows if value) if any(r[2] for r in rows) else 0
    numeric = [v for _, _, v, _ in rows if v and right and _is_number(v)]
    value_w = max((len(v) for v in numeric), default=0)
    lines = []
    for depth, name, value, unit in rows:
        head = " " * (indent + 2 * depth) + name
        if not value:
            lines.append(head)
            continue
        head = head.ljust(indent + name_w)
        shown = value.rjust(value_w) if right and _is_number(value) else value
        lines.append(f"{head}  {shown} {unit}".rstrip())
    return lines


def _is_number(text: str) -> bool:
    """A number ('1.5', '14 of 16', 'none' in its place): right-aligned with the other numbers."""
    if text == "none":
        return True
    first = text.split(" ", 1)[0].split(",", 1)[0]
    try:
        float(first)
    except ValueError:
        return False
    return " " not in text or text.split(" ")[1] == "of"


def summary_lines(summary: Mapping[str, Any], units: Mapping[str, str] | None = None, indent: int = 2) -> list[str]:
    """The aligned lines of a summary (SI values) with the units of `units` (see the module docstring)."""
    return aligned(_rows(summary, units or {}, summary.get("cells"), 0), indent)


def headline(values: Sequence[tuple[str, Any, str]]) -> str:
    """One line of `name value unit` items: 'formed 249 of 256, V_form 3.05 V' (the demo's stage lines)."""
    parts = []
    for name, value, unit in values:
        text, shown = quantity(value, unit)
        parts.append(" ".join(p for p in (name, text, shown) if p))
    return ", ".join(parts)


def quantity_text(value: Any, unit: str = "") -> str:
    """'19.3 µS', '3.05 V', '1.2 ms', 'none': one value with its unit."""
    text, shown = quantity(value, unit)
    return f"{text} {shown}".rstrip()
