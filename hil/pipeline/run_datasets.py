"""From run files to fitted noise profiles: turn each procedure's tables into calibration datasets.

`calibration` fits plain arrays and knows nothing of run files; this module is the bridge, so the
dependency stays one-way (hil -> calibration). Cells that write-verify could not program (never
formed, stuck) are left out of the programming, relaxation and spatial fits: they are counted by the
stuck fractions instead, and including them would turn a defect rate into a noise sigma.

Relaxation needs each cell's programming time. Open-loop cells of a levels run all get a full RESET
and SET, so their clock starts at the recorded time; write-verify leaves some cells untouched (already
within tolerance) or only nudged, and those keep relaxing on an older clock. Levels runs therefore
give relaxation from their open-loop reads, and retention runs (write-verify only) from the cells
that received pulses. Several runs of one kind are pooled where their shapes allow it.

The same holds for the write-verify law of a levels run: its write-verify starts from the open-loop
state of the same target, after its timed reads, so a sixth to a fifth of the cells are already in
tolerance and get no pulse; at the first read after write-verify they show the open-loop error, relaxed
on that older clock (0.9 uS sd against 1.9 uS for the cells it wrote, 998 cells, issue 16). They count
in the pulses per device but not in the error law (`ProgrammingDataset.written`). The open-loop law
keeps the gate calibration it was measured with (`GateMap`): its mean error is that calibration's error.

A levels run's write-verify is program-settle-verify (params `reverify`, `settle`, `tol`, as `rram program`
deploys): the verified dataset carries those settings and each cell's touch-ups, so the profile records
how its verified law was measured and what the touch-ups cost. A run file from before then has neither:
its law is that of write-verify once (0 rounds). Runs measured with different settings do not pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from calibration.datasets import (
    EnduranceDataset,
    ErrorMapDataset,
    ProgrammingDataset,
    ReadNoiseDataset,
    RelaxationDataset,
)
from calibration.fit import FitOptions, fit_profile
from calibration.noise_terms import GateMap, Provenance
from calibration.profile import NoiseProfile
from hil.characterize.runfile import RunData, read_run

_CONVERGED = 0
_IMMEDIATE_READ_S = 1e-3  # the board reads a cell about a millisecond after its last pulse
# Endurance reads below this fraction of the array's typical LRS read are taken as "no window" when
# judging failure: an open or unformed cell reads only noise around 0 S, and the ratio of two noise
# reads is meaningless (it would make such cells "fail" at a random late cycle).
_NOISE_FLOOR_FRAC = 0.05
_MAX_DELAY_RATIO = 1.5  # programming datasets pooled from runs must share their read delay within this


@dataclass
class Datasets:
    """Everything the runs give the fitters, before fitting."""

    open_loop: ProgrammingDataset | None = None
    verified: ProgrammingDataset | None = None
    relaxation: RelaxationDataset | None = None
    read_noise: ReadNoiseDataset | None = None
    endurance: EnduranceDataset | None = None
    error_map: ErrorMapDataset | None = None
    defects: tuple[float, float] | None = None  # (stuck high, stuck low) fractions seen forming or programming
    defect_g: tuple[float, float] | None = None  # median read conductance (S) of stuck-high / stuck-low cells
    used: dict[str, list[str]] = field(default_factory=dict)  # dataset -> run files it came from

    def note(self, dataset: str, run: RunData) -> None:
        self.used.setdefault(dataset, []).append(str(run.path))


@dataclass
class _Programming:
    """One run's programming rows, before pooling."""

    target: np.ndarray
    g: np.ndarray
    pulses: np.ndarray
    t_read_s: float
    written: np.ndarray  # rows the programming wrote (write-verify: the cells it pulsed)
    gate_map: GateMap | None = None  # open loop: the gate calibration its gates came from
    reverify: _Reverify | None = None  # write-verify: the run's program-settle-verify (None: open loop)


@dataclass(frozen=True)
class _Reverify:
    """A write-verify run's program-settle-verify settings and each healthy row's touch-ups and their pulses."""

    rounds: int
    settle_s: float
    tol_s: float | None
    touchups: np.ndarray
    touchup_pulses: np.ndarray

    def settings(self) -> tuple[int, float, float | None]:
        """What must agree for runs to pool: rounds, and with rounds > 0 the settle and the tolerance."""
        return (self.rounds, self.settle_s, self.tol_s) if self.rounds else (0, 0.0, None)

    @staticmethod
    def of(run: RunData, prog: np.ndarray, healthy: np.ndarray) -> _Reverify:
        """From a levels run's params and verified table; a run file from before re-verify existed: 0 rounds."""
        names = prog.dtype.names or ()
        touched = "touchups" in names
        tol = run.params.get("tol")
        return _Reverify(
            int(run.params.get("reverify", 0)) if touched else 0,
            float(run.params.get("settle", 0.0)) if touched else 0.0,
            float(tol) if tol is not None else None,
            prog["touchups"][healthy].astype(float) if touched else np.zeros(int(healthy.sum())),
            prog["pulses_touchup"][healthy].astype(float) if touched else np.zeros(int(healthy.sum())),
        )


def _relaxation_rows(prog: np.ndarray, reads: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, ...]:
    """Flatten timed block reads of the cells in `use` into (target, t since programming, g) rows.

    Each block read gets one delay, the median over the cells of (read time - programming time):
    cells are programmed one after the other within milliseconds to a fraction of a second, and the
    relaxation fit groups rows by time.
    """
    n = len(prog)
    if not len(reads) or not use.any():
        return np.zeros(0), np.zeros(0), np.zeros(0)
    t_since = np.median(reads["t"][:, None] - prog["t"][None, use], axis=1)
    keep = t_since > 0
    g = reads["g"][keep][:, :n][:, use]
    target = np.broadcast_to(prog["target"][use][None, :], g.shape)
    t = np.broadcast_to(t_since[keep][:, None], g.shape)
    return target.ravel(), t.ravel(), g.ravel()


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


def _programming_part(
    prog: np.ndarray,
    reads: np.ndarray,
    healthy: np.ndarray,
    gate_map: GateMap | None = None,
    run: RunData | None = None,
) -> _Programming | None:
    """Healthy cells' programming rows of one phase, read at the first timed read.

    A write-verify row the board never pulsed is not written (its error is the state it was left in);
    open-loop rows are all written (a full RESET and a SET each). `run`: the levels run of a write-verify
    phase, whose params say how it re-verified."""
    if healthy.sum() < 2:
        return None
    g, t_read = _first_read(prog, reads)
    pulses = prog["pulses"][healthy].astype(float)
    reverify = _Reverify.of(run, prog, healthy) if run is not None else None
    return _Programming(prog["target"][healthy], g[healthy], pulses, t_read, pulses > 0, gate_map, reverify)


def _gate_map(cal: np.ndarray) -> GateMap | None:
    """A levels run's gate calibration (gate_cal table) as the profile's GateMap; None if it has < 2 gates."""
    if len(cal) < 2 or np.any(np.diff(cal["gate"]) <= 0):
        return None
    return GateMap(cal["gate"].astype(np.float64), cal["g"].astype(np.float64).reshape(len(cal), -1))


def _pool_gate_map(parts: list[_Programming]) -> GateMap | None:
    """The runs' common gate map; None if any run lacks one or two runs used different ones (no one law's map)."""
    maps = [p.gate_map for p in parts]
    first = maps[0]
    if first is None or any(
        m is None or not (np.array_equal(m.gate_v, first.gate_v) and np.array_equal(m.g_s, first.g_s)) for m in maps
    ):
        return None
    return first


def _pool_programming(parts: list[_Programming], verified: bool) -> ProgrammingDataset | None:
    """One programming dataset from several runs' rows; refuses runs read at different delays.

    Write-verify rows count in the error law only where the board pulsed them (`_programming_part`); when
    fewer than 2 were pulsed, every row does (nothing else to fit)."""
    if not parts:
        return None
    rv = [p.reverify for p in parts if p.reverify is not None]
    settings = {r.settings() for r in rv}
    if len(settings) > 1:
        text = "; ".join(
            f"{n} rounds, settle {s:g} s, tol {'?' if t is None else f'{t:g}'} S" if n else "0 rounds"
            for n, s, t in sorted(settings, key=lambda x: x[0])
        )
        raise ValueError(
            f"write-verify programming was measured with different re-verify settings in these runs ({text}): "
            "fit them separately"
        )
    delays = np.array([p.t_read_s for p in parts])
    if delays.max() > _MAX_DELAY_RATIO * delays.min():
        kind = "write-verify" if verified else "open-loop"
        raise ValueError(
            f"{kind} programming was read at different delays in these runs "
            f"({', '.join(f'{d:g} s' for d in delays)}): fit them separately"
        )
    written = np.concatenate([p.written for p in parts]) if verified else None
    rounds, settle, tol = settings.pop() if settings else (0, 0.0, None)
    return ProgrammingDataset(
        np.concatenate([p.target for p in parts]),
        np.concatenate([p.g for p in parts]),
        np.concatenate([p.pulses for p in parts]),
        verified=verified,
        t_read_s=float(np.median(delays)),
        written=written if written is not None and written.sum() >= 2 else None,
        gate_map=None if verified else _pool_gate_map(parts),
        reverify_rounds=rounds,
        settle_s=settle,
        tol_s=tol,
        touchups=np.concatenate([r.touchups for r in rv]) if rounds else None,
        touchup_pulses=np.concatenate([r.touchup_pulses for r in rv]) if rounds else None,
    )


def _pool_read_noise(parts: list[tuple[np.ndarray, np.ndarray | None]]) -> ReadNoiseDataset | None:
    """Cells of several read-noise runs (the first R reads each, R the smallest count)."""
    if not parts:
        return None
    r = min(g.shape[1] for g, _ in parts)
    g = np.concatenate([g[:, :r] for g, _ in parts])
    targets = [t for _, t in parts if t is not None]
    target = np.concatenate(targets) if len(targets) == len(parts) else None  # targets only when every run has them
    return ReadNoiseDataset(g, target)


def _endurance(e: np.ndarray) -> EnduranceDataset:
    """Endurance reads as a dataset, with failures judged on reads floored at the noise floor.

    A cell fails at the first read from which its window stays closed (the calibration rule), except
    that a window closed only at the last read counts as censored. Reads <= 0 S (an open cell's noise)
    have no logarithm and become NaN for the LRS/HRS spreads.
    """
    cycles = e["cycle"].astype(np.float64)
    lrs, hrs = e["lrs"].T.astype(np.float64), e["hrs"].T.astype(np.float64)  # (cells, read points)
    floor = max(_NOISE_FLOOR_FRAC * float(np.quantile(lrs[:, 0], 0.9)), 1e-12)
    judge = EnduranceDataset(cycles, np.maximum(lrs, floor), np.maximum(hrs, floor))
    assert judge.failed is not None and judge.cycles_to_failure is not None  # derived from the reads
    failed = judge.failed.copy()
    if cycles.size >= 2:
        # a window closed only at the very last read is one noisy read, not a failure: censor it there
        failed &= judge.cycles_to_failure < cycles[-1]
    return EnduranceDataset(
        cycles, np.where(lrs > 0, lrs, np.nan), np.where(hrs > 0, hrs, np.nan), judge.cycles_to_failure, failed
    )


def _pool_endurance(parts: list[tuple[EnduranceDataset, str]]) -> EnduranceDataset | None:
    """Cells of several endurance runs read at the same cycles; refuses different schedules."""
    if not parts:
        return None
    first = parts[0][0]
    for ds, path in parts[1:]:
        if not np.array_equal(ds.cycles, first.cycles):
            raise ValueError(f"endurance runs read at different cycles ({parts[0][1]}, {path}): fit them separately")
    cat = lambda k: np.concatenate([getattr(ds, k) for ds, _ in parts])
    return EnduranceDataset(first.cycles, cat("g_lrs"), cat("g_hrs"), cat("cycles_to_failure"), cat("failed"))


def _levels_defects(verified: np.ndarray, reads: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(reads of stuck-high cells, reads of stuck-low cells, cells) among those write-verify tried to program.

    A cell left below its target behaves as stuck at the bottom of the window, one left above as stuck
    at the top: these are the fractions a deployment meets, independent of wear-out. Where it sits is
    taken from the first block read after write-verify, which reads every cell (the write-verify
    record holds no reading for a cell it never pulsed, such as a shorted, never-formed one).
    """
    bad = verified["status"] != _CONVERGED
    g = reads["g"][0][: len(verified)] if len(reads) else verified["g"]
    high = bad & (g > verified["target"])
    return g[high], g[bad & ~high], int(len(verified))


def _form_defects(form: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(reads of shorted cells, reads of cells that never formed, cells) of a form run.

    A cell that conducts before any forming pulse is shorted (stuck high); one the whole ramp cannot
    form stays open (stuck low). Forming usually covers the whole chip, so this is the best defect map.
    """
    high = (form["formed"] > 0) & (form["pulses"] == 0)
    low = form["formed"] == 0
    return form["g_after"][high], form["g_after"][low], int(len(form))


def _defect_model(parts: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Pooled stuck fractions and the median read conductance of each kind (NaN where none was seen)."""
    high = np.concatenate([p[0] for p in parts])
    low = np.maximum(np.concatenate([p[1] for p in parts]), 0.0)
    n = sum(p[2] for p in parts)
    g_high = float(np.median(high)) if high.size else float("nan")
    g_low = float(np.median(low)) if low.size else float("nan")
    return (high.size / n, low.size / n), (g_high, g_low)


def collect_datasets(runs: Sequence[RunData]) -> Datasets:
    """Build the calibration datasets from whatever runs are given (any order, any subset)."""
    ds = Datasets()
    rel_parts: list[tuple[np.ndarray, ...]] = []
    ol_parts: list[_Programming] = []
    wv_parts: list[_Programming] = []
    rn_parts: list[tuple[np.ndarray, np.ndarray | None]] = []
    en_parts: list[tuple[EnduranceDataset, str]] = []
    level_defects: list[tuple[np.ndarray, np.ndarray, int]] = []
    form_defects: list[tuple[np.ndarray, np.ndarray, int]] = []
    for run in runs:
        d = run.data
        if run.procedure == "levels" and len(d["verified"]):
            healthy = d["verified"]["status"] == _CONVERGED
            level_defects.append(_levels_defects(d["verified"], d["verified_reads"]))
            n = min(len(d["open_loop"]), len(d["verified"]))
            ol, ok = d["open_loop"][:n], healthy[:n]
            part = _programming_part(ol, d["open_loop_reads"], ok, _gate_map(d["gate_cal"])) if n else None
            if part is not None:
                ol_parts.append(part)
                ds.note("open_loop", run)
                rows = _relaxation_rows(ol, d["open_loop_reads"], ok)
                if rows[0].size:
                    rel_parts.append(rows)
                    ds.note("relaxation", run)
                em = _error_map(ol, ok)
                if em is not None and ds.error_map is None:  # one map: maps of different runs do not pool
                    ds.error_map = ErrorMapDataset(em)
                    ds.note("error_map", run)
            part = _programming_part(d["verified"], d["verified_reads"], healthy, run=run)
            if part is not None:
                wv_parts.append(part)
                ds.note("verified", run)
        elif run.procedure == "form" and len(d["form"]):
            form_defects.append(_form_defects(d["form"]))
            ds.note("defects", run)
        elif run.procedure == "retention" and len(d["program"]):
            prog = d["program"]
            programmed = (prog["status"] == _CONVERGED) & (prog["pulses"] > 0)  # untouched cells keep an older clock
            rows = _relaxation_rows(prog, d["reads"], programmed)
            if rows[0].size:
                rel_parts.append(rows)
                ds.note("relaxation", run)
        elif run.procedure == "read-noise" and len(d["reads"]) >= 3:
            g = d["reads"]["g"].T  # (cells, reads)
            target = None
            if len(d["program"]) == g.shape[0]:
                ok = d["program"]["status"] == _CONVERGED
                g, target = g[ok], d["program"]["target"][ok]
            rn_parts.append((g, target))
            ds.note("read_noise", run)
        elif run.procedure == "endurance" and len(d["endurance"]):
            en_parts.append((_endurance(d["endurance"]), str(run.path)))
            ds.note("endurance", run)
    ds.open_loop = _pool_programming(ol_parts, verified=False)
    ds.verified = _pool_programming(wv_parts, verified=True)
    ds.read_noise = _pool_read_noise(rn_parts)
    ds.endurance = _pool_endurance(en_parts)
    if form_defects or level_defects:  # the form run maps the whole chip; otherwise what programming met
        ds.defects, ds.defect_g = _defect_model(form_defects or level_defects)
    if rel_parts:
        target, t, g = (np.concatenate(x) for x in zip(*rel_parts))
        if np.unique(t).size >= 2:
            ds.relaxation = RelaxationDataset(target, t, g)
        else:
            ds.used.pop("relaxation", None)
    return ds


def fit_runs(
    paths: Sequence[str | Path],
    *,
    g_min: float | None = None,
    g_max: float | None = None,
    n_levels: int | None = None,
    bits_per_device: int | None = None,
    options: FitOptions | None = None,
) -> tuple[NoiseProfile, Datasets]:
    """Read the run files, build the datasets and fit one profile (with provenance)."""
    runs = [read_run(p) for p in paths]
    ds = collect_datasets(runs)
    if not set(ds.used) - {"defects"}:  # a form run alone has defects but no conductance window to fit
        kinds = ", ".join(sorted({r.procedure for r in runs}))
        raise ValueError(
            f"nothing to fit in these runs ({kinds}): give levels, retention, read-noise or endurance runs with data"
        )
    boards = sorted({r.board.get("board_id", "") for r in runs})
    prov = Provenance(
        run_files=[str(Path(p).resolve()) for p in paths],
        board_id=",".join(b for b in boards if b),
        measured_dates=[str(r.attrs.get("created_utc", "")) for r in runs],
        notes="; ".join(f"{k}: {', '.join(Path(v).name for v in vs)}" for k, vs in ds.used.items()),
    )
    prof = fit_profile(
        open_loop=ds.open_loop,
        verified=ds.verified,
        relaxation=ds.relaxation,
        read_noise=ds.read_noise,
        endurance=ds.endurance,
        error_map=ds.error_map,
        provenance=prov,
        g_min=g_min,
        g_max=g_max,
        n_levels=n_levels,
        bits_per_device=bits_per_device,
        options=options,
    )
    if ds.defects is not None:
        # Defects met while forming or programming the array are what a deployment sees; cycling wear-out
        # (the endurance model's own stuck fractions, kept in prof.endurance) only adds to them over life.
        prof.stuck_fractions = ds.defects
        g_high, g_low = ds.defect_g or (float("nan"), float("nan"))
        prof.stuck_g = (g_high if np.isfinite(g_high) else prof.g_max, g_low if np.isfinite(g_low) else prof.g_min)
        prof.validate()
    return prof, ds
