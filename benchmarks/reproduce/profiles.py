"""Hand-written noise profiles a protocol declares (a paper family, optionally with a synthetic spatial covariance).

A protocol's ``[profiles.NAME]`` table is turned into a ``calibration.profile.NoiseProfile`` and written once
to ``<out>/profiles/NAME-<hash>.h5``; a noise spec refers to it with ``path = "@NAME"``. The file name carries
a hash of the declaration, so an edited declaration never reuses an old file.

Spatial covariance (DAT's correlated device noise, read as a stationary field over the array cells): the
cells of a ``rows x cols`` grid covary as ``v * exp(-d / length)`` (``d`` the Euclidean distance in cells,
``v = fraction * sigma_g^2`` with ``sigma_g`` the family's programming std in S); the top ``rank``
eigenpairs are stored, as a measured profile stores them. ``ProfileNoise`` keeps every device's total
variance (the independent part is what the correlated part leaves), so ``fraction`` moves that share of each
device's variance into the correlated field instead of adding noise.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

PAPER_KEYS = {"sigma", "eta", "s", "t", "time", "g_min", "g_max", "n_levels", "read_noise"}
SPATIAL_KEYS = {"shape", "length", "fraction", "rank"}


def declaration_hash(decl: dict[str, Any]) -> str:
    """12 hex digits of the SHA-256 of the canonical JSON of a declaration (names its file)."""
    return hashlib.sha256(json.dumps(decl, sort_keys=True).encode()).hexdigest()[:12]


def check_declaration(name: str, decl: dict[str, Any]) -> None:
    """One-line ValueError for a declaration this module cannot build (unknown keys, bad spatial block)."""
    if "family" not in decl:
        raise ValueError(f"profile {name!r} needs 'family' (gaussian, additive, lognormal, state_dependent, ibm_reram)")
    unknown = sorted(set(decl) - PAPER_KEYS - {"family", "spatial"})
    if unknown:
        raise ValueError(
            f"profile {name!r}: unknown key(s) {', '.join(unknown)} (known: family, spatial, "
            f"{', '.join(sorted(PAPER_KEYS))})"
        )
    sp = decl.get("spatial")
    if sp is None:
        return
    if decl["family"] not in ("gaussian", "additive"):
        raise ValueError(f"profile {name!r}: a spatial block needs a constant-sigma family (gaussian or additive)")
    missing = sorted(SPATIAL_KEYS - set(sp))
    extra = sorted(set(sp) - SPATIAL_KEYS)
    if missing or extra:
        raise ValueError(
            f"profile {name!r}: spatial takes exactly {', '.join(sorted(SPATIAL_KEYS))} "
            f"(missing: {', '.join(missing) or '-'}; unknown: {', '.join(extra) or '-'})"
        )
    rows, cols = (int(v) for v in sp["shape"])
    if rows < 1 or cols < 1 or not 1 <= int(sp["rank"]) <= rows * cols:
        raise ValueError(f"profile {name!r}: spatial shape must be >= 1x1 and rank in 1..rows*cols")
    if not 0.0 < float(sp["fraction"]) <= 1.0 or not float(sp["length"]) > 0:
        raise ValueError(f"profile {name!r}: spatial fraction must be in (0, 1] and length > 0 cells")


def spatial_model(rows: int, cols: int, length: float, variance_s2: float, rank: int) -> Any:
    """The top-``rank`` eigenpairs of the exponential covariance ``variance * exp(-d / length)`` over the cells."""
    from calibration.profile import SpatialModel

    r, c = np.divmod(np.arange(rows * cols), cols)
    d = np.hypot(r[:, None] - r[None, :], c[:, None] - c[None, :])
    cov = variance_s2 * np.exp(-d / float(length))
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:rank]
    return SpatialModel(
        shape=(rows, cols),
        eigvals=np.clip(vals[order], 0.0, None),
        eigvecs=vecs[:, order],
        n_repeats=1,
        total_variance=float(np.trace(cov)),
    )


def build_profile(name: str, decl: dict[str, Any]) -> Any:
    """The NoiseProfile a declaration describes (``NoiseProfile.from_paper`` plus the spatial block)."""
    from calibration.profile import NoiseProfile

    check_declaration(name, decl)
    kwargs = {k: v for k, v in decl.items() if k not in ("family", "spatial")}
    prof = NoiseProfile.from_paper(str(decl["family"]), **kwargs)
    sp = decl.get("spatial")
    if sp is not None:
        key = "sigma" if decl["family"] == "gaussian" else "eta"
        sigma_s = float(prof.family_params[key]) * prof.g_max
        rows, cols = (int(v) for v in sp["shape"])
        prof.spatial = spatial_model(
            rows, cols, float(sp["length"]), float(sp["fraction"]) * sigma_s**2, int(sp["rank"])
        )
        prof.validate()
    return prof


def materialise(profiles: dict[str, dict[str, Any]], folder: Path) -> dict[str, Path]:
    """Write every declared profile under ``folder`` (once: an existing file of the same hash is kept)."""
    from calibration.profile import save_profile

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, decl in profiles.items():
        path = folder / f"{name}-{declaration_hash(decl)}.h5"
        if not path.is_file():
            save_profile(build_profile(name, decl), path, overwrite=True)
        out[name] = path
    return out


def resolve_spec(spec: dict[str, Any] | None, paths: dict[str, Path]) -> dict[str, Any] | None:
    """A noise spec with ``path = "@NAME"`` replaced by the written profile's path (nested "base" specs too)."""
    if spec is None:
        return None
    out = dict(spec)
    p = out.get("path")
    if isinstance(p, str) and p.startswith("@"):
        if p[1:] not in paths:
            raise ValueError(f"noise spec refers to profile {p!r}, which the protocol does not declare")
        out["path"] = str(paths[p[1:]])
    if isinstance(out.get("base"), dict):
        out["base"] = resolve_spec(out["base"], paths)
    return out


def referenced(spec: dict[str, Any] | None) -> list[str]:
    """Names of the declared profiles a noise spec refers to ("@NAME" paths, nested too)."""
    if not spec:
        return []
    names = []
    p = spec.get("path")
    if isinstance(p, str) and p.startswith("@"):
        names.append(p[1:])
    if isinstance(spec.get("base"), dict):
        names += referenced(spec["base"])
    return names
