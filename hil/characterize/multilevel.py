"""Shared steps of the multi-level procedures: level targets, write-verify programming, timed block reads."""

from __future__ import annotations

import numpy as np

from firmware_protocol import CellResult
from firmware_protocol.progress import Progress
from hil.characterize.formed import FormedCheck
from hil.characterize.procedure import param
from hil.characterize.region import Region
from hil.characterize.runfile import RunWriter, Table
from hil.hardware.board import Board, PulseRamp


# Parameters several multi-level procedures declare alike (one definition, so help and ranges agree).
def tol_param(help: str = "write-verify tolerance") -> float:
    """`tol`: the write-verify tolerance (S) of a procedure that programs levels."""
    return param(0.8e-6, unit="S", help=help, min=0, min_open=True)


def max_pulses_param() -> int:
    """`max_pulses`: the write-verify pulse budget per cell."""
    return param(100, help="write-verify pulse budget per cell", min=1, max=0xFFFF)


def gate_param(default: float, which: str) -> float:
    """`gate_lo` / `gate_hi`: an end of the SET gate voltages the gate calibration sweeps."""
    return param(
        default,
        unit="V",
        help=f"{which} SET gate voltage of the gate calibration",
        min=0,
        limit="gate_v",
        label="gate voltage",
    )


def gate_points_param() -> int:
    """`gate_points`: how many gate voltages the gate calibration measures."""
    return param(15, help="gate voltages in the gate calibration", min=2)


PROGRAM_FIELDS = {
    "cell": ("i4", (2,)),
    "level": ("i2", ()),
    "target": ("f8", ()),
    "g": ("f8", ()),
    "pulses": ("i4", ()),
    "status": ("u1", ()),
    "t": ("f8", ()),
}
DEFAULT_RAMP = PulseRamp()  # the default write-verify pulse ramp (frozen: one shared instance is safe)


def program_table(doc: str) -> Table:
    return Table(dict(PROGRAM_FIELDS), doc)


def reads_table(n_cells: int, doc: str) -> Table:
    return Table({"t": ("f8", ()), "g": ("f8", (n_cells,))}, doc)


def level_targets(n_levels: int, g_lo: float, g_hi: float) -> np.ndarray:
    """Evenly spaced target conductances (S) from g_lo to g_hi."""
    if n_levels < 1 or not 0 < g_lo <= g_hi:
        raise ValueError(f"levels need n_levels >= 1 and 0 < g_lo <= g_hi (got {n_levels}, {g_lo}, {g_hi})")
    return np.linspace(g_lo, g_hi, n_levels) if n_levels > 1 else np.array([g_lo])


def assign_levels(n_cells: int, n_levels: int, seed: int) -> np.ndarray:
    """Balanced, shuffled level index per cell (same for a given seed, so resumes agree)."""
    return np.random.default_rng(seed).permutation(np.arange(n_cells) % n_levels)


def board_time(board: Board) -> float:
    return board.heartbeat().timestamp_us / 1e6


def program_verified(
    board: Board,
    w: RunWriter,
    table: str,
    region: Region,
    levels: np.ndarray,
    targets: np.ndarray,
    tol: float,
    max_pulses: int,
    v_read: float,
    bar: Progress,
    batch: int = 256,
    ramp: PulseRamp = DEFAULT_RAMP,
    check: FormedCheck | None = None,
) -> None:
    """Write-verify every cell of the region to its target, in batches, resuming after the cells recorded.

    Cells the formed `check` left out get no pulse: their record (kept, so the table stays one record per
    cell, row-major) has status NOT_FORMED, 0 pulses, and the check's mean read as `g`.
    """
    rows, cols = region.cells()
    use = np.ones(rows.size, dtype=bool) if check is None else check.formed
    done = w.count(table)
    for i in range(done, rows.size, batch):
        sl = slice(i, min(i + batch, rows.size))
        rec = np.zeros(sl.stop - sl.start, dtype=program_table("").dtype)
        rec["cell"] = np.stack([rows[sl], cols[sl]], axis=1)
        rec["level"], rec["target"] = levels[sl], targets[levels[sl]]
        on = use[sl]
        if check is not None:
            rec["g"][~on], rec["status"][~on], rec["t"] = check.g[sl][~on], CellResult.NOT_FORMED, check.t
        if on.any():
            r, c = rows[sl][on], cols[sl][on]
            o = board.write_verify(r, c, targets[levels[sl][on]], tol, max_pulses, ramp, v_read)
            rec["g"][on], rec["pulses"][on], rec["status"][on], rec["t"] = o.final_s, o.pulses, o.status, o.timestamp_s
        w.append(table, rec)
        bar.advance(sl.stop - sl.start)


def timed_reads(
    board: Board,
    w: RunWriter,
    table: str,
    region: Region,
    t_ref: float,
    times_s: np.ndarray,
    v_read: float,
    bar: Progress,
) -> None:
    """Read the whole region at t_ref + each time (board clock), skipping the reads already recorded."""
    done = w.count(table)
    for k in range(done, times_s.size):
        now = board_time(board)
        if now < t_ref:
            # The board clock restarted (reset or power cycle): continue the schedule from the last
            # completed read, since the chip itself kept relaxing while the clock was lost.
            t_ref = now - (float(times_s[k - 1]) if k else 0.0)
        wait = t_ref + float(times_s[k]) - now
        if wait > 0:
            w.flush()  # nothing waits unflushed through a long retention bake
            board.wait(wait)
        m = board.read_block(region.row0, region.col0, region.nrows, region.ncols, v_read)
        w.append(table, t=m.timestamp_s, g=m.conductance_s.ravel())
        bar.advance()


def log_times(t_first: float, t_last: float, n: int) -> np.ndarray:
    if not 0 < t_first <= t_last or n < 1:
        raise ValueError(f"read schedule needs 0 < t_first <= t_last and n >= 1 (got {t_first}, {t_last}, {n})")
    return np.geomspace(t_first, t_last, n)


# One-shot (open-loop) programming: a full RESET to HRS, then one SET whose NMOS gate voltage sets the
# compliance current and hence the conductance reached (G_LRS ~ I_cc).
RESET_V, RESET_WIDTH_NS, RESET_GATE = -1.5, 200, 3.0
SET_V, SET_WIDTH_NS = 1.5, 200


def one_shot(board: Board, row: int, col: int, gate: float, v_read: float):
    """RESET, SET at `gate`, read: returns the read Measurement."""
    board.reset_pulse(row, col, RESET_V, RESET_WIDTH_NS, RESET_GATE)
    board.set_pulse(row, col, SET_V, SET_WIDTH_NS, gate)
    return board.read(row, col, v_read)


def gate_table(k: int) -> Table:
    return Table({"gate": ("f8", ()), "g": ("f8", (k,))}, "SET gate (V) vs conductance (S) after a full RESET")


def calibrate_gate(
    board: Board,
    w: RunWriter,
    rows: np.ndarray,
    cols: np.ndarray,
    gates: np.ndarray,
    v_read: float,
    bar: Progress,
    table: str = "gate_cal",
) -> None:
    """Conductance reached by one SET at each gate voltage on a few cells (resumes after recorded gates)."""
    for gate in gates[w.count(table) :]:
        g = np.array([one_shot(board, int(r), int(c), float(gate), v_read).conductance_s for r, c in zip(rows, cols)])
        w.append(table, gate=gate, g=g)
        bar.advance()


def gate_for(targets: np.ndarray, gates: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Gate voltage per target conductance from a calibration (median over cells, made monotone)."""
    med = np.maximum.accumulate(np.maximum(np.median(np.atleast_2d(g), axis=1), 1e-9))
    keep = np.concatenate([[True], np.diff(med) > 0])
    return np.interp(np.log(np.maximum(targets, 1e-9)), np.log(med[keep]), gates[keep])
