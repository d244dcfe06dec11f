"""From run files to fitted noise profiles: turn each procedure's tables into calibration datasets.

`calibration` fits plain arrays and knows nothing of run files; this module is the bridge, so the
dependency stays one-way (hil -> calibration). Cells that write-verify could not program (never
formed, stuck) are left out of the programming, relaxation and spatial fits: they are counted by the
endurance model's stuck fractions instead, and including them would turn a defect rate into a
noise sigma.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.datasets import EnduranceDataset, ErrorMapDataset, ProgrammingDataset, ReadNoiseDataset, RelaxationDataset
from calibration.fit import FitOptions, fit_profile
from calibration.models import Provenance
from calibration.profile import NoiseProfile
from hil.runfile import RunData, read_run

_G_FLOOR = 1e-9  # S: reads at or below the noise floor become this (the fitters need G > 0)
_CONVERGED = 0
_IMMEDIATE_READ_S = 1e-3  # the board reads a cell about a millisecond after its last pulse


@dataclass
class Datasets:
    """Everything the runs give the fitters, before fitting."""

    open_loop: ProgrammingDataset | None = None
    verified: ProgrammingDataset | None = None
    relaxation: RelaxationDataset | None = None
    read_noise: ReadNoiseDataset | None = None
    endurance: EnduranceDataset | None = None
    error_map: ErrorMapDataset | None = None
    defects: tuple[float, float] | None = None  # (stuck high, stuck low) fractions seen while programming
    defect_g: tuple[float, float] | None = None  # median read conductance of stuck-high / stuck-low cells
    form_defects: tuple[tuple[float, float], tuple[float, float]] | None = None  # same, seen while forming
    used: dict[str, list[str]] = field(default_factory=dict)  # dataset -> run files it came from

    def note(self, dataset: str, run: RunData) -> None:
        self.used.setdefault(dataset, []).append(str(run.path))


def _relaxation_rows(prog: np.ndarray, reads: np.ndarray, healthy: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flatten timed block reads into (target, t since that cell's programming, g) rows."""
    if not len(reads) or not healthy.any():
        return np.zeros(0), np.zeros(0), np.zeros(0)
    t_since = reads["t"][:, None] - prog["t"][None, :]  # (reads, cells)
    target = np.broadcast_to(prog["target"][None, :], t_since.shape)
    g = reads["g"]
    keep = np.broadcast_to(healthy[None, :], t_since.shape) & (t_since > 0)
    return target[keep], t_since[keep], g[keep]


def _error_map(table: np.ndarray, healthy: np.ndarray) -> np.ndarray | None:
    """Programming errors laid out on the programmed rectangle (unhealthy cells at 0 error)."""
    cells = table["cell"]
    r0, c0 = cells.min(axis=0)
    r1, c1 = cells.max(axis=0) + 1
    if r1 - r0 < 2 or c1 - c0 < 2 or len(cells) != (r1 - r0) * (c1 - c0):
        return None
    err = np.zeros((r1 - r0, c1 - c0))
    e = np.where(healthy, table["g"] - table["target"], 0.0)
    err[cells[:, 0] - r0, cells[:, 1] - c0] = e
    return err


def collect_datasets(runs: Sequence[RunData]) -> Datasets:
    """Build the calibration datasets from whatever runs are given (any order, any subset)."""
    ds = Datasets()
    rel_parts: list[tuple[np.ndarray, ...]] = []
    for run in runs:
        d = run.data
        if run.procedure == "levels" and len(d["verified"]):
            healthy = d["verified"]["status"] == _CONVERGED
            n = min(len(d["open_loop"]), len(d["verified"]))
            ds.defects, ds.defect_g = _defects(d["verified"])
            ol = d["open_loop"][:n][healthy[:n]]
            if len(ol) >= 2:
                g, t_read = _first_read(d["open_loop"][:n], d["open_loop_reads"])
                ds.open_loop = ProgrammingDataset(ol["target"], g[healthy[:n]], ol["pulses"].astype(float), verified=False,
                                                  t_read_s=t_read)  # fmt: skip
                ds.note("open_loop", run)
                em = _error_map(d["open_loop"][:n], healthy[:n])
                if em is not None:
                    ds.error_map = ErrorMapDataset(em)
                    ds.note("error_map", run)
            wv = d["verified"][healthy]
            if len(wv) >= 2:
                g, t_read = _first_read(d["verified"], d["verified_reads"])
                ds.verified = ProgrammingDataset(wv["target"], g[healthy], wv["pulses"].astype(float), verified=True,
                                                 t_read_s=t_read)  # fmt: skip
                ds.note("verified", run)
            rel_parts.append(_relaxation_rows(d["verified"], d["verified_reads"], healthy))
            ds.note("relaxation", run)
        elif run.procedure == "form" and len(d["form"]):
            ds.form_defects = _form_defects(d["form"])
            ds.note("defects", run)
        elif run.procedure == "retention" and len(d["program"]):
            healthy = d["program"]["status"] == _CONVERGED
            rel_parts.append(_relaxation_rows(d["program"], d["reads"], healthy))
            ds.note("relaxation", run)
        elif run.procedure == "read-noise" and len(d["reads"]) >= 3:
            g = d["reads"]["g"].T  # (cells, reads)
            target = None
            if len(d["program"]) == g.shape[0]:
                ok = d["program"]["status"] == _CONVERGED
                g, target = g[ok], d["program"]["target"][ok]
            ds.read_noise = ReadNoiseDataset(g, target)
            ds.note("read_noise", run)
        elif run.procedure == "endurance" and len(d["endurance"]):
            e = d["endurance"]
            ds.endurance = EnduranceDataset(e["cycle"].astype(float), np.maximum(e["lrs"].T, _G_FLOOR),
                                            np.maximum(e["hrs"].T, _G_FLOOR))  # fmt: skip
            ds.note("endurance", run)
    parts = [p for p in rel_parts if p[0].size]
    if parts:
        target, t, g = (np.concatenate(x) for x in zip(*parts))
        if np.unique(t).size >= 2:
            ds.relaxation = RelaxationDataset(target, t, g)
    return ds


def _first_read(prog: np.ndarray, reads: np.ndarray) -> tuple[np.ndarray, float]:
    """Each cell's conductance at the first timed read after programming, and that delay (s).

    Programming noise is taken at the first scheduled read (1 s by default), as in the IBM ReRAM fit:
    the relaxation model is referenced to that time, so "programming sigma at t0 plus relaxation from
    t0" is consistent. Without timed reads, the read taken right after programming is used.
    """
    if len(reads) == 0:
        return prog["g"], _IMMEDIATE_READ_S
    g = reads["g"][0][: len(prog)]
    delay = float(np.median(reads["t"][0] - prog["t"]))
    return g, max(delay, _IMMEDIATE_READ_S)


def _form_defects(form: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shorted cells (conducting before any forming pulse) and cells that never formed, from a form run.

    ((high fraction, low fraction), (median g of shorted cells, median g of unformed cells)).
    """
    n = max(len(form), 1)
    high = (form["formed"] > 0) & (form["pulses"] == 0)
    low = form["formed"] == 0
    g_high = float(np.median(form["g_after"][high])) if high.any() else float("nan")
    g_low = float(np.median(np.maximum(form["g_after"][low], 0.0))) if low.any() else float("nan")
    return (float(high.sum() / n), float(low.sum() / n)), (g_high, g_low)


def _defects(verified: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """Cells write-verify could not program (never formed, stuck): fractions and read conductances.

    A cell left below its target behaves as stuck at the bottom, one left above as stuck at the top:
    ((high fraction, low fraction), (median g of high cells, median g of low cells)). These are the
    defects a deployment meets, independent of wear-out; NaN conductance where there is no such cell.
    """
    bad = verified["status"] != _CONVERGED
    n = max(len(verified), 1)
    high = bad & (verified["g"] > verified["target"])
    low = bad & ~high
    g_high = float(np.median(verified["g"][high])) if high.any() else float("nan")
    g_low = float(np.median(np.maximum(verified["g"][low], 0.0))) if low.any() else float("nan")
    return (float(high.sum() / n), float(low.sum() / n)), (g_high, g_low)


def fit_runs(paths: Sequence[str | Path], *, g_min: float | None = None, g_max: float | None = None,
             n_levels: int | None = None, bits_per_device: int | None = None,
             options: FitOptions | None = None) -> tuple[NoiseProfile, Datasets]:  # fmt: skip
    """Read the run files, build the datasets and fit one profile (with provenance)."""
    runs = [read_run(p) for p in paths]
    ds = collect_datasets(runs)
    if not ds.used:
        kinds = ", ".join(sorted({r.procedure for r in runs}))
        raise ValueError(f"nothing to fit in these runs ({kinds}): give levels, retention, read-noise or endurance runs with data")
    boards = sorted({r.board.get("board_id", "") for r in runs})
    prov = Provenance(
        run_files=[str(Path(p).resolve()) for p in paths],
        board_id=",".join(b for b in boards if b),
        measured_dates=[str(r.attrs.get("created_utc", "")) for r in runs],
        notes="; ".join(f"{k}: {', '.join(Path(v).name for v in vs)}" for k, vs in ds.used.items()),
    )
    prof = fit_profile(open_loop=ds.open_loop, verified=ds.verified, relaxation=ds.relaxation, read_noise=ds.read_noise,
                       endurance=ds.endurance, error_map=ds.error_map, provenance=prov, g_min=g_min, g_max=g_max,
                       n_levels=n_levels, bits_per_device=bits_per_device, options=options)  # fmt: skip
    found = ds.form_defects or ((ds.defects, ds.defect_g) if ds.defects is not None else None)
    if found is not None:
        # Defects met while forming (or, without a form run, while programming) are what a deployment
        # sees; cycling wear-out (the endurance model's own stuck fractions, in prof.endurance) adds over life.
        (high, low), (g_high, g_low) = found
        prof.stuck_fractions = (high, low)
        prof.stuck_g = (g_high if np.isfinite(g_high) else prof.g_max, g_low if np.isfinite(g_low) else prof.g_min)
        prof.validate()
    return prof, ds
