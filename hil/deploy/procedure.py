"""Deploy a network: program a plan's tiles onto the array (one-shot or on-board write-verify), read back.

Per tile: devices not marked for verification get one RESET and one SET at the gate voltage that the
gate calibration maps to their target; marked devices get the board's WRITE_VERIFY. With `reverify`
rounds (program-settle-verify), the tile then settles for `settle` seconds and is read, and each verified
device whose write-verify converged but that relaxed out of tolerance gets WRITE_VERIFY again (a
touch-up; its pulses add to the device's count), until a round finds none or the rounds are done; the
one-shot devices are then programmed last, so that they too are read back `read_delay` after their own
write. Then, after the read delay (ADVANCE_CLOCK on a simulator), the tile is read back: that read is the
measurement. Each tile lies on the array rows and columns the plan maps it to (`Plan.tile_cells`); records
hold every cell at its place on the array. Cells of the used area that are still pristine are formed first. Cells the plan's defect map names defective
(unformable, stuck-on, stuck-off) get no pulse at all: not formed, not calibrated on, not programmed, only
read. Everything is recorded per tile, so an interrupted deployment resumes at the first tile not yet
recorded (a partly programmed tile is programmed again).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware_protocol.constants import CellResult
from firmware_protocol.progress import Progress
from hil.characterize.multilevel import (
    SET_WIDTH_NS,
    calibrate_gate,
    gate_for,
    gate_param,
    gate_points_param,
    gate_table,
    max_pulses_param,
    one_shot,
    reverify_param,
    settle_param,
    tol_param,
)
from hil.characterize.procedure import PROCEDURES, Procedure, ProcedureParams, param
from hil.characterize.runfile import RunWriter, Table
from hil.deploy.defects import from_tiles
from hil.deploy.plan import Plan, load_plan
from hil.hardware.board import PulseRamp

# The settle (s) and rounds of program-settle-verify (defaults SETTLE_S, REVERIFY) are declared once, in
# hil.characterize.multilevel, for `levels` too: the profile's verified law is measured as the deployment writes.


@dataclass
class DeployParams(ProcedureParams):
    cells: str = param(":,:", help="not used to place weights: the plan decides which cells each tile uses")
    plan: str = param("", help="plan file (.h5) written by `rram program` (hil.deploy.plan)")
    tol: float = tol_param()
    max_pulses: int = max_pulses_param()
    read_delay: float = param(1.0, unit="s", help="wait between programming a tile and reading it back", min=0)
    settle: float = settle_param()
    reverify: int = reverify_param()
    plan_gates: bool = param(
        True,
        help="one-shot SET gates from the gate map the profile's open-loop law was measured with (the plan carries "
        "it), so the devices are programmed as the law was measured; off, or a plan without one: calibrate anew on "
        "cal_cells cells",
    )
    gate_lo: float = gate_param(0.7, "lowest")
    gate_hi: float = gate_param(1.4, "highest")
    gate_points: int = gate_points_param()
    cal_cells: int = param(8, help="cells of the used area the gate calibration is measured on", min=1)
    form: bool = param(True, help="form the still pristine cells of the used area first")
    ages: str = param(
        "",
        help="read each tile again at these ages after its programming, before the next tile reuses the cells "
        "(comma-separated, s or with a unit: 1h,1d,1y; a simulator's clock jumps, a real board waits)",
    )
    reads: int = param(1, help="reads of a tile at each age (one per batch of inferences)", min=1)


@PROCEDURES.register("program")
class DeployRun(Procedure[DeployParams]):
    name = "program"
    Params = DeployParams
    characterization = False
    summary_units = {
        "write_cycles": "cycles",
        "pulses_verified_mean": "pulses",
        "readback_sigma_s": "S",
        "readback_sigma_verified_s": "S",
        "touchup_pulses": "pulses",
        "settle_s": "s",
    }

    def validate(self) -> None:
        p = self.p
        if not p.plan:
            raise ValueError("program needs a plan file (--plan)")
        self.plan: Plan = load_plan(p.plan)
        if self.plan.rows > self.board.rows or self.plan.cols > self.board.cols:
            raise ValueError(
                f"plan tiles are {self.plan.rows}x{self.plan.cols}, larger than the {self.board.rows}x{self.board.cols} array"
            )
        from hil.deploy.reread import parse_age

        try:
            self.ages = sorted({parse_age(a) for a in p.ages.split(",") if a.strip()})
        except ValueError as exc:
            raise ValueError(f"program --ages: {exc}") from None
        if isinstance(p.reverify, bool) or int(p.reverify) != p.reverify:
            raise ValueError(f"program needs a whole number of re-verify rounds (--reverify), got {p.reverify!r}")
        self.board.limits.check_width(SET_WIDTH_NS)  # the one-shot SET pulse
        plan = self.plan
        cells = [plan.tile_cells(i) for i in range(len(plan.tiles))]
        rows = np.unique(np.concatenate([r for r, _ in cells]))
        cols = np.unique(np.concatenate([c for _, c in cells]))
        self.skip = plan.defects.defective if plan.defects is not None else np.zeros((plan.rows, plan.cols), bool)
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        keep = ~self.skip[rr, cc]
        self.used = (rr[keep], cc[keep])  # cells of the used area that may be pulsed, row-major
        self.gate_map = plan_gate_map(plan.meta, p.plan) if p.plan_gates else None

    def tables(self) -> dict[str, Table]:
        n = self.plan.rows * self.plan.cols
        return {
            "form": Table(
                {"cell": ("i4", (2,)), "formed": ("u1", ()), "g": ("f8", ()), "pulses": ("i4", ())},
                "cells formed before programming (FORM ramp pulses each got)",
            ),
            "gate_cal": gate_table(
                self.gate_map[1].shape[1] if self.gate_map is not None else min(self.p.cal_cells, self.used[0].size)
            ),
            "tiles": Table(
                {
                    "tile": ("i4", ()),
                    "target": ("f4", (n,)),
                    "verify": ("u1", (n,)),
                    "g_prog": ("f4", (n,)),
                    "pulses": ("i2", (n,)),
                    "status": ("u1", (n,)),
                    "g_read": ("f4", (n,)),
                    "t_prog": ("f8", ()),
                    "t_read": ("f8", ()),
                    "touchups": ("u1", (n,)),
                    "pulses_touchup": ("i2", (n,)),
                    "t_settle": ("f8", ()),
                },
                "one record per tile, cells row-major over the plan's rows x cols (NaN where unused)",
            ),
            "aged": Table(
                {"tile": ("i4", ()), "age": ("f8", ()), "read": ("i4", ()), "t": ("f8", ()), "g": ("f4", (n,))},
                "a tile read again `age` s after its programming (param ages), before the next tile; cells as in "
                "`tiles` (NaN where the tile does not use a cell)",
            ),
        }

    def total_units(self) -> int:
        return len(self.plan.tiles) + (len(self.gate_map[0]) if self.gate_map is not None else self.p.gate_points)

    def _form(self, w: RunWriter) -> None:
        """FORM every cell of the used area (a formed cell answers at once; pristine ones get the ramp)."""
        if not self.p.form or w.count("tiles"):
            return
        done = w.count("form")
        for r, c in zip(self.used[0][done:], self.used[1][done:]):
            o = self.board.form(int(r), int(c), v_read=self.p.v_read)
            w.append("form", cell=[r, c], formed=o.formed, g=o.conductance_s, pulses=o.pulses)

    def _tile_devices(self, ti: int) -> tuple[int, int]:
        """(open-loop, write-verified) devices of tile `ti` that get pulses (its defective cells get none)."""
        t = self.plan.tiles[ti]
        lp = self.plan.layers[int(t["layer"])]
        ver = lp.verify[t["r0"] : t["r0"] + int(t["nr"]), t["c0"] : t["c0"] + int(t["nc"])].astype(bool)
        skip = self.skip[np.ix_(*self.plan.tile_cells(ti))]
        return int((~ver & ~skip).sum()), int((ver & ~skip).sum())

    def run(self, w: RunWriter, bar: Progress) -> None:
        p, plan = self.p, self.plan
        bar.set(w.count("gate_cal") + w.count("tiles"))
        if p.form and not w.count("tiles") and w.count("form") < self.used[0].size:  # one line per stage
            bar.stage(f"forming {self.used[0].size - w.count('form')} cells of the used area")
        self._form(w)
        if self.gate_map is not None:  # the profile's own calibration, recorded as this run's: no pulses
            for gate, g in zip(*self.gate_map):
                if w.count("gate_cal") < len(self.gate_map[0]):
                    w.append("gate_cal", gate=gate, g=g)
                    bar.advance()
        else:
            k = min(p.cal_cells, self.used[0].size)
            cal_r, cal_c = self.used[0][:k], self.used[1][:k]
            gates = np.linspace(p.gate_lo, p.gate_hi, p.gate_points)
            if w.count("gate_cal") < len(gates):
                bar.stage(f"gate calibration: {len(gates)} gate voltages on {k} cells")
            calibrate_gate(self.board, w, cal_r, cal_c, gates, p.v_read, bar)
        cal = w.read("gate_cal")
        for ti in range(w.count("tiles"), len(plan.tiles)):
            n_open, n_ver = self._tile_devices(ti)
            touch = f", up to {p.reverify} re-verify round(s) {p.settle:g} s apart" if p.reverify and n_ver else ""
            bar.stage(f"tile {ti + 1}/{len(plan.tiles)}: {n_open} one-shot and {n_ver} write-verified devices{touch}")
            rec = self._program_tile(ti, cal)
            for aged in self._aged_reads(ti, rec[0]):  # before the tile's record: a resume reprograms and rereads
                w.append("aged", aged)
            w.append("tiles", rec)
            bar.advance()

    def _aged_reads(self, ti: int, rec: np.void) -> list[np.ndarray]:
        """The tile read `reads` times at each of `ages` after its programming (the board's clock waits there)."""
        plan, out = self.plan, []
        rows, cols = plan.tile_cells(ti)
        r0, c0 = int(rows.min()), int(cols.min())
        used = ~np.isnan(rec["target"])
        dtype = self.tables()["aged"].dtype
        for age in self.ages:
            now = self.board.heartbeat().timestamp_us / 1e6
            if now < rec["t_prog"] + age:
                self.board.wait(float(rec["t_prog"] + age - now))
            for k in range(self.p.reads):
                block = self.board.read_block(r0, c0, int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1, self.p.v_read)
                g = np.full((plan.rows, plan.cols), np.nan)
                g[np.ix_(rows, cols)] = block.conductance_s[np.ix_(rows - r0, cols - c0)]
                a = np.zeros(1, dtype)
                a["tile"], a["age"], a["read"], a["t"] = ti, age, k, block.timestamp_s
                a["g"] = np.where(used, g.ravel(), np.nan)
                out.append(a)
        return out

    def _program_tile(self, ti: int, cal: np.ndarray) -> np.ndarray:
        p, plan = self.p, self.plan
        t = plan.tiles[ti]
        lp = plan.layers[int(t["layer"])]
        nr, nc = int(t["nr"]), int(t["nc"])
        tgt = lp.targets[t["r0"] : t["r0"] + nr, t["c0"] : t["c0"] + nc]
        ver = lp.verify[t["r0"] : t["r0"] + nr, t["c0"] : t["c0"] + nc]
        rows, cols = plan.tile_cells(ti)  # physical row / column of each of the tile's rows / columns
        skip = self.skip[np.ix_(rows, cols)]
        rec = np.zeros(1, dtype=self.tables()["tiles"].dtype)[0]
        rec["tile"] = ti

        def full(a: np.ndarray, fill: float) -> np.ndarray:
            """A tile-shaped array placed at its cells of the plan's rows x cols array, `fill` elsewhere."""
            out = np.full((plan.rows, plan.cols), fill, dtype=float)
            out[np.ix_(rows, cols)] = a
            return out.ravel()

        rec["target"], rec["verify"] = full(tgt, np.nan), full(ver, 0)
        g_prog = np.full((nr, nc), np.nan)
        pulses = np.zeros((nr, nc), dtype=np.int64)
        status = np.zeros((nr, nc), dtype=np.uint8)
        gates = gate_for(tgt.ravel(), cal["gate"], cal["g"]).reshape(nr, nc)
        t_end = 0.0

        def open_loop() -> None:
            """One RESET + SET each for the devices not write-verified."""
            nonlocal t_end
            for r, c in np.argwhere(~ver & ~skip):
                m = one_shot(self.board, int(rows[r]), int(cols[c]), float(gates[r, c]), p.v_read)
                g_prog[r, c], pulses[r, c], t_end = m.conductance_s, 2, m.timestamp_s

        # With re-verify rounds the open-loop devices come last, so that every device is read back read_delay
        # after its own last write (as the prediction assumes), not after the rounds' settle time as well.
        if not p.reverify:
            open_loop()
        vr, vc = np.nonzero(ver & ~skip)
        touch = np.zeros((nr, nc), dtype=np.uint8)
        touch_pulses = np.zeros((nr, nc), dtype=np.int64)
        t_prog = t_settle = 0.0
        if vr.size:
            o = self.board.write_verify(rows[vr], cols[vc], tgt[vr, vc], p.tol, p.max_pulses, PulseRamp(), p.v_read)
            g_prog[vr, vc], pulses[vr, vc], status[vr, vc] = o.final_s, o.pulses, o.status
            t_prog = o.timestamp_s
        for _ in range(p.reverify if vr.size else 0):
            if p.settle > 0:
                self.board.wait(p.settle)
                t_settle += p.settle
            g_now = self._read_tile(rows, cols)[0]
            # a device whose write-verify did not converge (stuck, out of pulses) is not retried every round
            out = (status[vr, vc] == CellResult.CONVERGED) & (np.abs(g_now[vr, vc] - tgt[vr, vc]) > p.tol)
            if not out.any():
                break
            tr, tc = vr[out], vc[out]
            o = self.board.write_verify(rows[tr], cols[tc], tgt[tr, tc], p.tol, p.max_pulses, PulseRamp(), p.v_read)
            g_prog[tr, tc], status[tr, tc] = o.final_s, o.status
            pulses[tr, tc] += o.pulses
            touch_pulses[tr, tc] += o.pulses
            touch[tr, tc] += 1
            t_prog = o.timestamp_s
        if p.reverify:
            open_loop()
            t_prog = max(t_prog, t_end)
        if p.read_delay > 0:
            self.board.wait(p.read_delay)
        m_g, t_read = self._read_tile(rows, cols)
        rec["g_prog"], rec["pulses"], rec["status"] = full(g_prog, np.nan), full(pulses, 0), full(status, 0)
        rec["g_read"], rec["t_prog"], rec["t_read"] = full(m_g, np.nan), t_prog or t_read, t_read
        rec["touchups"], rec["pulses_touchup"], rec["t_settle"] = full(touch, 0), full(touch_pulses, 0), t_settle
        return np.array([rec])

    def _read_tile(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, float]:
        """(conductance of each of the tile's cells, board time): one READ_BLOCK over the rectangle they span."""
        r0, c0 = int(rows.min()), int(cols.min())
        block = self.board.read_block(r0, c0, int(rows.max()) - r0 + 1, int(cols.max()) - c0 + 1, self.p.v_read)
        return block.conductance_s[np.ix_(rows - r0, cols - c0)], block.timestamp_s

    def summary(self, data: dict) -> dict:
        t = data["tiles"]
        used = ~np.isnan(t["target"])
        ver = (t["verify"] > 0) & used
        err = (t["g_read"] - t["target"])[used]
        pulses = t["pulses"][used].astype(float)
        return {
            "tiles": int(len(t)),
            "devices": int(used.sum()),
            "verified_devices": int(ver.sum()),
            "form_failed": int(np.sum(data["form"]["formed"] == 0)),
            "write_cycles": float(pulses.sum()),
            "pulses_verified_mean": float(t["pulses"][ver].mean()) if ver.any() else 0.0,
            "readback_sigma_s": float(np.std(err)),
            "readback_sigma_verified_s": float(np.std((t["g_read"] - t["target"])[ver])) if ver.any() else None,
            **self._gate_summary(),
            **self._touchup_summary(data),
            **self._defect_summary(data),
        }

    def _gate_summary(self) -> dict:
        return {"gate_source": "profile" if self.gate_map is not None else "measured"}

    def _touchup_summary(self, data: dict) -> dict:
        """The re-verify rounds' share: devices touched up, touch-ups, their pulses (in write_cycles too), settle time."""
        t = data["tiles"]
        if "touchups" not in (t.dtype.names or ()):  # a run file written before re-verify existed
            return {}
        used = ~np.isnan(t["target"])
        n = t["touchups"][used].astype(int)
        return {
            "touched_up_devices": int(np.sum(n > 0)),
            "touchups": int(n.sum()),
            "touchup_pulses": int(t["pulses_touchup"][used].astype(int).sum()),
            "settle_s": float(t["t_settle"].sum()),
        }

    def _defect_summary(self, data: dict) -> dict:
        """Defective cells of the plan's map the run left unpulsed, and defects this run saw that the map lacks."""
        plan = self.plan
        seen = from_tiles(data["tiles"], plan.rows, plan.cols, plan.g_min, plan.g_max).defective
        return {
            "defects_known": int(self.skip.sum()),
            "defects_new": int(np.sum(seen & ~self.skip)),
        }


def plan_gate_map(meta: dict, where: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(gate_v, g_s) of the gate map a plan carries (None if it has none); ValueError naming a damaged one."""
    entry = meta.get("gate_map")
    if entry is None:
        return None
    try:
        gate_v = np.asarray(entry["gate_v"], dtype=float)
        g_s = np.asarray(entry["g_s"], dtype=float)
        ok = gate_v.ndim == 1 and gate_v.size >= 2 and g_s.ndim == 2 and g_s.shape[0] == gate_v.size
        ok = ok and g_s.shape[1] >= 1 and bool(np.all(np.isfinite(gate_v)) and np.all(np.diff(gate_v) > 0))
        ok = ok and bool(np.all(np.isfinite(g_s)))  # a read near 0 S may be a little negative (read noise)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"{where}: the plan's gate map is damaged (needs >= 2 increasing gates and finite conductances): "
            "plan again, or program with --no-plan-gates"
        )
    return gate_v, g_s
