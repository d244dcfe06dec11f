"""The plan file: device target conductances and verify marks of a network, cut into array tiles.

Torch-free, so the board-side programming run can read a plan without importing PyTorch; how a
network becomes a plan is in `hil.deploy.placement`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from firmware_protocol.fileformat import FileFormat, atomic_write, utc_now

PLAN_FILE = FileFormat("rram-hil-plan", "1.0", "an rram-hil programming plan")
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
    return p


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; one-line PlanError for anything wrong."""
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
            layers = []
            for key in sorted(f["layers"]):
                d = f["layers"][key]
                lp = LayerPlan(
                    str(d.attrs["name"]),
                    tuple(json.loads(d.attrs["shape"])),
                    float(d.attrs["scale"]),
                    d["targets"][...].astype(np.float64),
                    d["verify"][...].astype(bool),
                )
                fan_in = int(np.prod(lp.shape[1:]))
                if lp.targets.shape != (fan_in, 2 * lp.shape[0]) or lp.verify.shape != lp.targets.shape:
                    raise PlanError(f"{p} is corrupt: layer {lp.name} arrays do not match its shape {lp.shape}")
                layers.append(lp)
            tiles = f["tiles"][...]
            plan = Plan(
                layers,
                tiles.astype(TILE_DTYPE),
                int(f.attrs["rows"]),
                int(f.attrs["cols"]),
                float(f.attrs["g_min"]),
                float(f.attrs["g_max"]),
                json.loads(f.attrs.get("meta_json", "{}")),
            )
    except PlanError:
        raise
    except (KeyError, ValueError, TypeError, OSError, RuntimeError) as exc:
        raise PlanError(f"{p} is corrupt: {str(exc).splitlines()[0]}") from None
    for t in plan.tiles:
        if (
            not (0 <= t["layer"] < len(plan.layers))
            or t["nr"] < 1
            or t["nc"] < 1
            or t["nr"] > plan.rows
            or t["nc"] > plan.cols
        ):
            raise PlanError(f"{p} is corrupt: tile {t} does not fit the {plan.rows}x{plan.cols} array")
    return plan
