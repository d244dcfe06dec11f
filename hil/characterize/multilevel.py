"""Shared steps of the multi-level procedures: level targets, write-verify programming, timed block reads."""

from __future__ import annotations

from dataclasses import dataclass

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


# Program-settle-verify, shared by `rram program` (hil.deploy.procedure) and `levels`, so that the verified law a
# profile holds is measured as the deployment writes. Default settle before a re-check (s): the relaxation runs in
# log time, L = log10(1 + t / t0) with t0 from ~1.5 ms (6 uS) to ~0.6 s (40 uS) (the simulator's IBM-anchored
# tables, sim_backend/device_params.py): by 1 s every cell is past its fast start (t > t0), and each later second
# adds only log10(1 + 1 / t) decades.
SETTLE_S = 1.0
REVERIFY = 2  # default rounds: on the demo chain the second cut the verified read-back sigma by a tenth more
# (1.46 -> 1.30 uS, seed 1) for 5-10 % more pulses, a third by less (issue 16, item 2)


def settle_param() -> float:
    """`settle`: the wait (s) after write-verify before each re-check of program-settle-verify."""
    return param(
        SETTLE_S,
        unit="s",
        help="wait after write-verify before each re-check (relaxation runs in log time and is past its fast "
        "start, t > t0 <= 0.6 s, by 1 s)",
        min=0,
    )


def reverify_param() -> int:
    """`reverify`: the settle-and-re-check rounds of program-settle-verify (0: write-verify once)."""
    return param(
        REVERIFY,
        help="settle-and-re-check rounds after write-verify: verified devices that relaxed out of tolerance are "
        "write-verified again (0: none)",
        min=0,
        max=255,
    )


def check_rounds(procedure: str, rounds: object) -> None:
    """Refuse a re-verify round count that is not a whole number (a float or bool given in code)."""
    if isinstance(rounds, bool) or not isinstance(rounds, (int, float)) or int(rounds) != rounds:
        raise ValueError(f"{procedure} needs a whole number of re-verify rounds (--reverify), got {rounds!r}")


@dataclass(frozen=True)
class SettleVerify:
    """Program-settle-verify after each write-verify batch: `rounds` checks, each `settle_s` after the last write."""

    rounds: int = REVERIFY
    settle_s: float = SETTLE_S


PROGRAM_FIELDS = {
    "cell": ("i4", (2,)),
    "level": ("i2", ()),
    "target": ("f8", ()),
    "g": ("f8", ()),
    "pulses": ("i4", ()),
    "status": ("u1", ()),
    "t": ("f8", ()),
}
# The program table of program-settle-verify: `pulses` counts every pulse the cell got (touch-ups too), `t` is the
# cell's last write.
REVERIFY_FIELDS = {**PROGRAM_FIELDS, "touchups": ("u1", ()), "pulses_touchup": ("i4", ())}
DEFAULT_RAMP = PulseRamp()  # the default write-verify pulse ramp (frozen: one shared instance is safe)


def program_table(doc: str) -> Table:
    return Table(dict(PROGRAM_FIELDS), doc)


def reverify_table(doc: str) -> Table:
    """The program table with each cell's touch-ups (re-verify write-verifies) and their pulses."""
    return Table(dict(REVERIFY_FIELDS), doc)


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
    settle_verify: SettleVerify | None = None,
) -> None:
    """Write-verify every cell of the region to its target, in batches, resuming after the cells recorded.

    Cells the formed `check` left out get no pulse: their record (kept, so the table stays one record per
    cell, row-major) has status NOT_FORMED, 0 pulses, and the check's mean read as `g`.
    With `settle_verify` (the table is a `reverify_table`) each batch is then checked as `rram program` checks
    a tile (`touch_up`); None: write-verify once, into a `program_table`.
    """
    rows, cols = region.cells()
    use = np.ones(rows.size, dtype=bool) if check is None else check.formed
    dtype = (program_table if settle_verify is None else reverify_table)("").dtype
    done = w.count(table)
    for i in range(done, rows.size, batch):
        sl = slice(i, min(i + batch, rows.size))
        rec = np.zeros(sl.stop - sl.start, dtype=dtype)
        rec["cell"] = np.stack([rows[sl], cols[sl]], axis=1)
        rec["level"], rec["target"] = levels[sl], targets[levels[sl]]
        on = use[sl]
        if check is not None:
            rec["g"][~on], rec["status"][~on], rec["t"] = check.g[sl][~on], CellResult.NOT_FORMED, check.t
        if on.any():
            r, c = rows[sl][on], cols[sl][on]
            o = board.write_verify(r, c, targets[levels[sl][on]], tol, max_pulses, ramp, v_read)
            rec["g"][on], rec["pulses"][on], rec["status"][on], rec["t"] = o.final_s, o.pulses, o.status, o.timestamp_s
            if settle_verify is not None:
                sub = rec[on]  # a copy: written back below
                touch_up(board, sub, tol, max_pulses, ramp, v_read, settle_verify)
                rec[on] = sub
        w.append(table, rec)
        bar.advance(sl.stop - sl.start)


def touch_up(
    board: Board,
    rec: np.ndarray,
    tol: float,
    max_pulses: int,
    ramp: PulseRamp,
    v_read: float,
    sv: SettleVerify,
) -> None:
    """Program-settle-verify of write-verified cells, in place on their reverify-table records.

    Up to `sv.rounds` times: wait `sv.settle_s` (board clock), read the cells (one READ_BLOCK over the rectangle
    they span), and write-verify again the cells whose write-verify converged but that now read more than `tol`
    from target; stop at the first round that finds none. As in `rram program` (hil.deploy.procedure): a cell's
    status and `g` become those of its last write-verify, its touch-up pulses add to `pulses`, `t` becomes the
    time of its last write, and a cell whose write-verify did not converge is not retried.
    """
    r, c = rec["cell"][:, 0], rec["cell"][:, 1]
    r0, c0 = int(r.min()), int(c.min())
    for _ in range(sv.rounds):
        if sv.settle_s > 0:
            board.wait(sv.settle_s)
        block = board.read_block(r0, c0, int(r.max()) - r0 + 1, int(c.max()) - c0 + 1, v_read)
        g_now = block.conductance_s[r - r0, c - c0]
        out = (rec["status"] == CellResult.CONVERGED) & (np.abs(g_now - rec["target"]) > tol)
        if not out.any():
            break
        o = board.write_verify(r[out], c[out], rec["target"][out], tol, max_pulses, ramp, v_read)
        idx = np.flatnonzero(out)
        rec["g"][idx], rec["status"][idx], rec["t"][idx] = o.final_s, o.status, o.timestamp_s
        rec["pulses"][idx] += o.pulses
        rec["pulses_touchup"][idx] += o.pulses
        rec["touchups"][idx] += 1


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
