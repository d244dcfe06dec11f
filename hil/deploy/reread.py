"""Read a deployed chip again later: the used area of a deployment, `at` seconds after its programming ended.

A deployment (`rram program`) reads its tiles back once, `read_delay` after programming; this run reads the
same cells at a later age (1 h, 1 day, 1 year: as long as the chip keeps relaxing), `reads` times in a row
so that an evaluation can give each batch of inferences its own read, as a chip reads its devices at every
inference. On a simulator the board's clock jumps there (ADVANCE_CLOCK); a real board waits, feeding its
watchdog. The age counts on the board's clock, so the reread must run on the chip that was deployed, and
before its clock restarts (a power cycle): both are checked before anything is read.
`rram evaluate --deployed DEPLOY.h5 --reread REREAD.h5` judges the network as read at that age.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from firmware_protocol.progress import Progress
from hil.characterize.identity import RunIdentity
from hil.characterize.procedure import PROCEDURES, Procedure, ProcedureParams, param
from hil.characterize.runfile import RunFileError, RunWriter, Table, read_run
from hil.deploy.plan import Plan, load_plan

AGE_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "y": 365.25 * 86400.0}  # a year of 365.25 days


def parse_age(text: str) -> float:
    """'86400', '90s', '30min', '1h', '1d', '1y' -> seconds; ValueError naming the accepted forms otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|min|h|d|y)?\s*", text)
    if not m:
        raise ValueError(f"{text!r} is not an age: write seconds or a number with s, min, h, d or y (e.g. 1d)")
    return float(m.group(1)) * AGE_UNITS[m.group(2) or "s"]


def age_label(age_s: float, sep: str = "") -> str:
    """An age in the largest unit it holds at least once, 3 significant digits: '1h', '1d', '1.5min' (sep=' ': '1 h')."""
    for unit in ("y", "d", "h", "min"):
        n = age_s / AGE_UNITS[unit]
        if n >= 1:
            return f"{n:.3g}{sep}{unit}"
    return f"{age_s:.3g}{sep}s"


@dataclass
class RereadParams(ProcedureParams):
    cells: str = param(":,:", help="not used: the deployment's plan decides which cells are read")
    deploy: str = param("", help="deployment run file (.h5) written by `rram program`")
    at: float = param(
        86400.0, unit="s", help="age of the read: seconds after the deployment's programming ended", min=0
    )
    reads: int = param(1, help="reads of the whole used area in a row (one per batch of inferences)", min=1)


def deployment_end_s(tiles: np.ndarray) -> float:
    """Board time (s) when the deployment's last tile was programmed (its t_prog, the read-back's if none)."""
    return float(np.max(np.maximum(tiles["t_prog"], 0.0)))


@PROCEDURES.register("reread")
class RereadRun(Procedure[RereadParams]):
    name = "reread"
    Params = RereadParams
    characterization = False
    summary_units = {"age_s": "s", "readback_sigma_s": "S"}

    def validate(self) -> None:
        p = self.p
        if not p.deploy:
            raise ValueError("reread needs the deployment run file (--deploy)")
        run = read_run(p.deploy)
        if run.procedure != "program":
            raise RunFileError(f"{p.deploy} is a {run.procedure!r} run, not a deployment (rram program)")
        self.plan: Plan = load_plan(run.params["plan"])
        tiles = run.data["tiles"]
        if len(tiles) < len(self.plan.tiles):
            raise RunFileError(
                f"{p.deploy} holds {len(tiles)} of {len(self.plan.tiles)} tiles: finish it with --resume"
            )
        use = np.zeros(self.plan.rows * self.plan.cols, int)
        for rec in tiles[: len(self.plan.tiles)]:
            use += ~np.isnan(rec["target"])
        if use.max() > 1:
            raise ValueError(
                f"{p.deploy}'s tiles share cells (the network is larger than the array, so later tiles overwrote "
                "earlier ones): a reread sees only the last tile; take reads at later ages while deploying (rram "
                "program --ages 1h,1d)"
            )
        here = RunIdentity.of(self.board.describe())
        if run.identity.differs(here):
            raise ValueError(f"{p.deploy} was programmed on {run.identity}; this is {here}: reread the deployed chip")
        self.end_s = deployment_end_s(tiles)
        self.targets = tiles["target"][0].copy()
        for rec in tiles[1:]:  # the used cells of every tile (a cell is used by one tile at most)
            self.targets = np.where(np.isnan(self.targets), rec["target"], self.targets)

    def tables(self) -> dict[str, Table]:
        n = self.plan.rows * self.plan.cols
        return {
            "reads": Table(
                {"read": ("i4", ()), "t": ("f8", ()), "g": ("f4", (n,))},
                "one record per read of the plan's rows x cols cells, row-major (NaN where no tile uses a cell)",
            )
        }

    def total_units(self) -> int:
        return self.p.reads

    def run(self, w: RunWriter, bar: Progress) -> None:
        p, plan = self.p, self.plan
        now = self.board.heartbeat().timestamp_us / 1e6
        if now < self.end_s:
            raise ValueError(
                f"the board's clock ({now:.6g} s) is behind the deployment's end ({self.end_s:.6g} s): it restarted, "
                "so the chip's age is not known; reread in the session that programmed it"
            )
        if w.count("reads") == 0 and now < self.end_s + p.at:
            self.board.wait(self.end_s + p.at - now)
        used = ~np.isnan(self.targets)
        bar.set(w.count("reads"))
        for k in range(w.count("reads"), p.reads):
            block = self.board.read_block(0, 0, plan.rows, plan.cols, p.v_read)
            g = np.where(used, block.conductance_s.ravel(), np.nan)
            w.append("reads", read=k, t=block.timestamp_s, g=g)
            bar.advance()

    def summary(self, data: dict) -> dict:
        r = data["reads"]
        used = ~np.isnan(self.targets)
        err = r["g"][:, used] - self.targets[used]
        return {
            "reads": int(len(r)),
            "devices": int(used.sum()),
            "age_s": float(r["t"][0] - self.end_s) if len(r) else None,
            "readback_sigma_s": float(np.std(err)) if len(r) else None,
        }
