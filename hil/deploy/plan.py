"""The plan file: device target conductances and verify marks of a network, cut into array tiles.

Torch-free, so the board-side programming run can read a plan without importing PyTorch; how a
network becomes a plan is in `hil.deploy.placement`.

Layout (format "rram-hil-plan" 1.1, HDF5, uncompressed): root attributes `rows`, `cols` (the array the
tiles fit, 1..65535 each), `g_min` < `g_max` (S, finite), `meta_json` (a JSON object), `created_utc`;
group `layers/NNN` per layer with attributes `name` (unique), `shape` (JSON list of the weight's sizes,
(out, in, ...), each >= 1), `scale` (finite > 0) and datasets `targets` (float32, (fan_in, 2*out), S,
finite, inside [g_min, g_max] up to float32 rounding) and `verify` (uint8 0/1, same shape); dataset
`tiles` of (layer, r0, c0, nr, nc) int32 records, each inside the array and inside its layer, together
covering every device of every layer exactly once. Since 1.1 (1.0 plans load as below): datasets
`tile_rows` and `tile_cols` (int32), the physical array row of each of a tile's nr rows and the physical
column of each of its nc columns, tile after tile (sum of nr and of nc entries; distinct within a tile,
inside the array); without them a tile sits at (0, 0) in order. Optional group `defects` (the chip's defect
map, `hil.deploy.defects`): datasets `state` (uint8 rows x cols, 0 healthy, 1 unformable, 2 stuck-on,
3 stuck-off) and `g` (float32, the latest read of each defective cell, S, NaN if none, never infinite), attribute
`sources_json` (a JSON list of the runs it came from); the programming run gives its cells no pulses.
`meta_json` key "placement" reports what the layout avoided (`hil.deploy.layout.lay_out`). `load_plan`
checks all of it (`validate_plan`) before returning, so a damaged plan is refused in one line before the
board is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from calibration.h5io import check_stored_sizes
from firmware_protocol.fileformat import FileFormat, atomic_write, utc_now
from hil.deploy.defects import STATE_NAMES, DefectMap

PLAN_FILE = FileFormat("rram-hil-plan", "1.1", "an rram-hil programming plan")
FORMAT = PLAN_FILE.name
VERSION = PLAN_FILE.version


class PlanError(ValueError):
    """A plan file is missing, not a plan, corrupt or from a newer format."""


@dataclass
class LayerPlan:
    name: str
    shape: tuple[int, ...]
    scale: float
    targets: np.ndarray  # (fan_in, 2*out) S
    verify: np.ndarray  # (fan_in, 2*out) bool


@dataclass
class Plan:
    """Everything `rram program` needs, and what `rram evaluate --deployed` needs to rebuild the network."""

    layers: list[LayerPlan]
    tiles: np.ndarray  # structured: layer, r0, c0, nr, nc
    rows: int
    cols: int
    g_min: float
    g_max: float
    meta: dict = field(default_factory=dict)
    tile_rows: list[np.ndarray] | None = None  # per tile: physical row of each of its rows (None: 0..nr-1)
    tile_cols: list[np.ndarray] | None = None  # per tile: physical column of each of its columns
    defects: DefectMap | None = None  # the chip's defect map the layout was made for

    def tile_cells(self, ti: int) -> tuple[np.ndarray, np.ndarray]:
        """Physical rows and columns of tile `ti` (its logical row i lies on array row rows[i], likewise columns)."""
        t = self.tiles[ti]
        if self.tile_rows is None or self.tile_cols is None:
            return np.arange(int(t["nr"])), np.arange(int(t["nc"]))
        return self.tile_rows[ti], self.tile_cols[ti]

    @property
    def n_devices(self) -> int:
        return int(sum(lp.targets.size for lp in self.layers))

    @property
    def n_verified(self) -> int:
        return int(sum(lp.verify.sum() for lp in self.layers))


TILE_DTYPE = np.dtype([("layer", "i4"), ("r0", "i4"), ("c0", "i4"), ("nr", "i4"), ("nc", "i4")])


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_plan(plan: Plan, path: str | Path, force: bool = False) -> Path:
    """Write `plan` atomically; an existing file is refused unless `force`."""
    p = Path(path)
    with atomic_write(p, force=force) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                **PLAN_FILE.stamp(),
                "rows": plan.rows,
                "cols": plan.cols,
                "g_min": plan.g_min,
                "g_max": plan.g_max,
                "meta_json": json.dumps(plan.meta, default=str),
                "created_utc": utc_now(),
            }
        )
        g = f.create_group("layers")
        for i, lp in enumerate(plan.layers):
            d = g.create_group(f"{i:03d}")
            d.attrs.update({"name": lp.name, "shape": json.dumps(list(lp.shape)), "scale": lp.scale})
            d.create_dataset("targets", data=lp.targets.astype(np.float32))
            d.create_dataset("verify", data=lp.verify.astype(np.uint8))
        f.create_dataset("tiles", data=plan.tiles)
        cells = [plan.tile_cells(i) for i in range(len(plan.tiles))]
        f.create_dataset("tile_rows", data=np.concatenate([r for r, _ in cells]).astype(np.int32))
        f.create_dataset("tile_cols", data=np.concatenate([c for _, c in cells]).astype(np.int32))
        if plan.defects is not None:
            dg = f.create_group("defects")
            dg.attrs["sources_json"] = json.dumps(plan.defects.sources)
            dg.create_dataset("state", data=plan.defects.state.astype(np.uint8))
            dg.create_dataset("g", data=plan.defects.g.astype(np.float32))
    return p


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file (`validate_plan`); one-line PlanError for anything wrong, before any use."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"plan file {p} does not exist")
    try:
        f = h5py.File(p, "r")
    except (OSError, RuntimeError) as exc:
        raise PlanError(f"{p} is not a readable HDF5 plan file ({str(exc).splitlines()[0]})") from None
    try:
        with f:
            PLAN_FILE.check(f.attrs, str(p), PlanError)
            check_stored_sizes(f, str(p), PlanError)  # nothing read below can exceed the file's own size
            plan = _read(f, p)
    except PlanError:
        raise
    except (KeyError, ValueError, TypeError, OSError, RuntimeError, ArithmeticError) as exc:
        raise PlanError(f"{p} is corrupt: {str(exc).splitlines()[0]}") from None
    validate_plan(plan, str(p))
    return plan


def _read(f: h5py.File, p: Path) -> Plan:
    """The plan's fields as stored, with their dtypes and shapes checked; values are `validate_plan`'s."""
    layers = []
    for key in sorted(f["layers"]):
        d = f["layers"][key]
        shape = json.loads(d.attrs["shape"])
        if not (isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)):
            raise PlanError(f"{p} is corrupt: layer {key} has shape {shape!r}, not a list of whole numbers")
        targets, verify = d["targets"], d["verify"]
        if targets.dtype.kind != "f" or verify.dtype.kind not in "ub":
            raise PlanError(
                f"{p} is corrupt: layer {key} holds targets of dtype {targets.dtype} and verify marks of dtype "
                f"{verify.dtype} (expected float32 and uint8)"
            )
        marks = verify[...]
        if marks.dtype.kind == "u" and np.any(marks > 1):  # e.g. a 2 would silently read as "verify"
            raise PlanError(f"{p} is corrupt: layer {key} has verify marks other than 0 and 1")
        layers.append(
            LayerPlan(
                str(d.attrs["name"]),
                tuple(shape),
                float(d.attrs["scale"]),
                targets[...].astype(np.float64),
                marks.astype(bool),
            )
        )
    tiles = f["tiles"]
    if tiles.dtype.names is None or set(TILE_DTYPE.names or ()) - set(tiles.dtype.names) or tiles.ndim != 1:
        raise PlanError(f"{p} is corrupt: its tiles table is not a list of (layer, r0, c0, nr, nc) records")
    if any(tiles.dtype[n].kind not in "iu" for n in TILE_DTYPE.names or ()):
        raise PlanError(f"{p} is corrupt: its tiles table holds non-integer fields")
    meta = json.loads(f.attrs.get("meta_json", "{}"))
    if not isinstance(meta, dict):
        raise PlanError(f"{p} is corrupt: its meta_json is not a JSON object")
    tile_table = tiles[...].astype(TILE_DTYPE)
    plan = Plan(
        layers,
        tile_table,
        _whole(f.attrs["rows"], "rows", p),
        _whole(f.attrs["cols"], "cols", p),
        float(f.attrs["g_min"]),
        float(f.attrs["g_max"]),
        meta,
    )
    if ("tile_rows" in f) != ("tile_cols" in f):
        raise PlanError(f"{p} is corrupt: it has only one of tile_rows and tile_cols")
    if "tile_rows" in f:
        validate_plan(plan, str(p))  # the tiles themselves first: a map can only match tiles that are sound
        plan.tile_rows = _split(f["tile_rows"], tile_table["nr"], "tile_rows", p)
        plan.tile_cols = _split(f["tile_cols"], tile_table["nc"], "tile_cols", p)
    if "defects" in f:
        dg = f["defects"]
        state, g = dg["state"], dg["g"]
        if state.dtype.kind != "u" or g.dtype.kind != "f":
            raise PlanError(f"{p} is corrupt: its defect map holds {state.dtype} states and {g.dtype} reads")
        sources = json.loads(dg.attrs.get("sources_json", "[]"))
        if not (isinstance(sources, list) and all(isinstance(x, str) for x in sources)):
            raise PlanError(f"{p} is corrupt: its defect map's sources_json is not a list of paths")
        plan.defects = DefectMap(state[...].astype(np.uint8), g[...].astype(np.float64), sources)
    return plan


def _split(ds: h5py.Dataset, sizes: np.ndarray, name: str, p: Path) -> list[np.ndarray]:
    """A tile map dataset cut into one array per tile (sizes: the tiles' nr or nc)."""
    if ds.ndim != 1 or ds.dtype.kind not in "iu" or ds.shape[0] != int(np.sum(sizes.astype(np.int64))):
        raise PlanError(f"{p} is corrupt: {name} is not {int(np.sum(sizes))} whole numbers, one per tile row/column")
    flat = ds[...].astype(np.int64)
    return np.split(flat, np.cumsum(sizes.astype(np.int64))[:-1])


def _whole(value: object, name: str, p: Path) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise PlanError(f"{p} is corrupt: {name} is {value!r}, not a whole number")
    return int(value)


# Array sides are 16-bit fields on the wire (PROTOCOL.md), so no plan tile can be larger.
MAX_SIDE = 0xFFFF
# Targets are stored as float32: rounding moves a conductance by at most 2^-24 of itself, so a target may sit
# that far outside [g_min, g_max]; twice that margin is allowed.
_F32_MARGIN = 2.0**-23


def validate_plan(plan: Plan, source: str) -> None:
    """Check a plan against its spec (module docstring of `hil.deploy.placement`); PlanError (one line) otherwise.

    Sizes, the conductance window, every layer's shapes, finite targets inside the window, 0/1 verify marks,
    and tiles that fit the array and cover every device of their layer exactly once: a plan that passes
    programs exactly its devices, so nothing fails after the first pulse because of the file.
    """

    def bad(why: str) -> PlanError:
        return PlanError(f"{source} is corrupt: {why}; write it again (rram program --force)")

    if not (1 <= plan.rows <= MAX_SIDE and 1 <= plan.cols <= MAX_SIDE):
        raise bad(f"its array is {plan.rows}x{plan.cols}, outside 1..{MAX_SIDE} per side")
    if not (np.isfinite(plan.g_min) and np.isfinite(plan.g_max) and 0 <= plan.g_min < plan.g_max):
        raise bad(f"its window needs 0 <= g_min < g_max, got g_min={plan.g_min}, g_max={plan.g_max}")
    if not plan.layers or len(plan.tiles) == 0:
        raise bad("it holds no layers or no tiles")
    names = [lp.name for lp in plan.layers]
    if len(set(names)) != len(names):
        raise bad("two layers share a name")
    margin = _F32_MARGIN * plan.g_max
    for lp in plan.layers:
        if len(lp.shape) < 2 or any(n < 1 for n in lp.shape):
            raise bad(f"layer {lp.name} has weight shape {lp.shape}, not (out, in, ...) of sizes >= 1")
        expected = (math.prod(lp.shape[1:]), 2 * lp.shape[0])
        if lp.targets.shape != expected or lp.verify.shape != expected:
            raise bad(f"layer {lp.name} arrays are {lp.targets.shape}, not {expected} for its shape {lp.shape}")
        if not (math.isfinite(lp.scale) and lp.scale > 0):
            raise bad(f"layer {lp.name} has weight scale {lp.scale}, not a finite number > 0")
        if not np.all(np.isfinite(lp.targets)):
            raise bad(f"layer {lp.name} has {int(np.sum(~np.isfinite(lp.targets)))} NaN or infinite targets")
        lo, hi = float(lp.targets.min()), float(lp.targets.max())
        if lo < plan.g_min - margin or hi > plan.g_max + margin:
            raise bad(
                f"layer {lp.name} has targets from {lo:.4g} to {hi:.4g} S, outside [{plan.g_min}, {plan.g_max}] S"
            )
        if lp.verify.dtype != np.bool_:
            raise bad(f"layer {lp.name} has verify marks of dtype {lp.verify.dtype}, not bool")
    _check_tiles(plan, bad)


def _check_tiles(plan: Plan, bad: Callable[[str], PlanError]) -> None:
    """Every tile inside the array and inside its layer; every device of every layer in exactly one tile."""
    cover = [np.zeros(lp.targets.shape, dtype=np.uint8) for lp in plan.layers]
    for i, t in enumerate(plan.tiles):
        li, r0, c0, nr, nc = (int(t[k]) for k in ("layer", "r0", "c0", "nr", "nc"))
        where = f"tile {i} (layer {li}, rows {r0}+{nr}, cols {c0}+{nc})"
        if not 0 <= li < len(plan.layers):
            raise bad(f"{where} names a layer the plan does not have ({len(plan.layers)} layers)")
        if not (1 <= nr <= plan.rows and 1 <= nc <= plan.cols):
            raise bad(f"{where} does not fit the {plan.rows}x{plan.cols} array")
        n_rows, n_cols = plan.layers[li].targets.shape
        if not (0 <= r0 and 0 <= c0 and r0 + nr <= n_rows and c0 + nc <= n_cols):
            raise bad(f"{where} lies outside layer {plan.layers[li].name}'s {n_rows}x{n_cols} devices")
        block = cover[li][r0 : r0 + nr, c0 : c0 + nc]
        if block.any():
            raise bad(f"{where} overlaps an earlier tile")
        block[...] = 1
        rows, cols = plan.tile_cells(i)
        for what, cells, n, side in (("rows", rows, nr, plan.rows), ("columns", cols, nc, plan.cols)):
            if cells.shape != (n,) or np.unique(cells).size != n or cells.min() < 0 or cells.max() >= side:
                raise bad(f"{where} is mapped onto {what} that are not {n} distinct array {what} in 0..{side - 1}")
    for lp, c in zip(plan.layers, cover):
        if not c.all():
            raise bad(f"{int(c.size - c.sum())} devices of layer {lp.name} are in no tile")
    _check_defects(plan, bad)


def _check_defects(plan: Plan, bad: Callable[[str], PlanError]) -> None:
    """A defect map, when present, covers the plan's array with known states."""
    d = plan.defects
    if d is None:
        return
    if d.state.shape != (plan.rows, plan.cols) or d.g.shape != (plan.rows, plan.cols):
        raise bad(f"its defect map is {d.state.shape}, not the {plan.rows}x{plan.cols} array")
    if np.any(d.state > max(STATE_NAMES)):
        raise bad(f"its defect map holds states other than {sorted(STATE_NAMES)}")
    if np.any(np.isinf(d.g)):  # a read may be NaN (none) or slightly negative (read noise on an open cell)
        raise bad("its defect map holds infinite conductances")
