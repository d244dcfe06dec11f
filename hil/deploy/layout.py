"""Defect-aware layout: where each tile's rows and columns go on the array, and targets that work around defects.

A tile of nr x nc devices may use any nr physical rows and nc physical columns, in any order (the inputs are
routed to rows, every column is read on its own), so a layout is a row map and a column map per tile; the
read-back undoes both exactly. A device on a defective cell keeps the conductance g_s the cell holds: its
target becomes g_s (clipped into the window; it gets no pulses) and its differential partner, if healthy,
is retargeted to cancel it, G_partner = clip(g_s - D, g_min, g_max) with D the pair's wanted G_this - G_partner;
what is left, r = g_s - G_partner - D, is the device's residual error. `arrange` chooses the maps that
minimise the sum of (r / (g_max - g_min))^2 (plus a small charge per device on a defect, so spare cells win
ties) over the tile by alternating optimal row and column assignments
(scipy's linear_sum_assignment) from the naive layout (identity at (0, 0)); each step keeps the current maps
when nothing is better, so the result never costs more than the naive layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hil.deploy.defects import DefectMap
from hil.deploy.plan import Plan

_ROUNDS = 8  # alternations; each is a full optimal assignment, and on 32x32 tiles they settle in 2-4
_STAY = 1e-9  # tie-break (in units of the cost) towards the current position: moves only for a real gain
# Every device on a defective cell also costs this much (a 0.1 %-of-window residual, squared): a cancelled
# pair leans on its partner's programming, so a spare cell beats an exact cancellation when there is one.
_ON_DEFECT = 1e-6


@dataclass
class TileMaps:
    rows: np.ndarray  # (nr,) physical row of each logical row of the tile
    cols: np.ndarray  # (nc,) physical column of each logical column


def pair_wanted(targets: np.ndarray) -> np.ndarray:
    """D = G_this - G_partner per device of a (fan_in, 2*out) device matrix (columns 2o, 2o+1 are a pair)."""
    partner = targets.reshape(targets.shape[0], -1, 2)[:, :, ::-1].reshape(targets.shape)
    return targets - partner


def residual(d: np.ndarray, g_s: np.ndarray | float, g_min: float, g_max: float) -> np.ndarray:
    """Error left on a pair whose device holds g_s, its healthy partner retargeted to cancel it (module doc)."""
    return g_s - np.clip(g_s - d, g_min, g_max) - d


def _costs(d: np.ndarray, held: np.ndarray, g_min: float, g_max: float) -> np.ndarray:
    """(n_defects, nr, nc): squared residual (in window units) of each tile device on each defective cell."""
    span = g_max - g_min
    return (residual(d[None], held[:, None, None], g_min, g_max) / span) ** 2 + _ON_DEFECT


def _assign(cost: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Optimal injective map of the cost's rows onto its columns, preferring `current` on ties."""
    from scipy.optimize import linear_sum_assignment  # scipy loads only when a plan has defects to avoid

    m = cost + _STAY * (np.arange(cost.shape[1])[None, :] != current[:, None])
    r, c = linear_sum_assignment(m)
    out = np.empty(cost.shape[0], dtype=np.int64)
    out[r] = c
    return out


def tile_cost(maps: TileMaps, d: np.ndarray, dmap: DefectMap, g_min: float, g_max: float) -> float:
    """Sum of squared residuals (window units) of a tile laid out by `maps`, plus _ON_DEFECT per device on a defect."""
    sub = dmap.defective[np.ix_(maps.rows, maps.cols)]
    held = dmap.held(g_max)[np.ix_(maps.rows, maps.cols)]
    return float(np.sum((residual(d, held, g_min, g_max)[sub] / (g_max - g_min)) ** 2) + _ON_DEFECT * sub.sum())


def arrange(d: np.ndarray, dmap: DefectMap, g_min: float, g_max: float) -> TileMaps:
    """Row and column maps of one tile (wanted differences `d`, nr x nc) on the array of `dmap` (module doc)."""
    nr, nc = d.shape
    n_rows, n_cols = dmap.shape
    maps = TileMaps(np.arange(nr), np.arange(nc))
    dr, dc = np.nonzero(dmap.defective)
    if dr.size == 0:
        return maps
    costs = _costs(d, dmap.held(g_max)[dr, dc], g_min, g_max)
    best = tile_cost(maps, d, dmap, g_min, g_max)
    for _ in range(_ROUNDS):
        inv_c = np.full(n_cols, -1)
        inv_c[maps.cols] = np.arange(nc)
        hit = inv_c[dc] >= 0
        m = np.zeros((nr, n_rows))
        np.add.at(m.T, dr[hit], costs[hit, :, inv_c[dc[hit]]])
        rows = _assign(m, maps.rows)
        inv_r = np.full(n_rows, -1)
        inv_r[rows] = np.arange(nr)
        hit = inv_r[dr] >= 0
        m = np.zeros((nc, n_cols))
        np.add.at(m.T, dc[hit], costs[hit, inv_r[dr[hit]], :])
        cols = _assign(m, maps.cols)
        new = TileMaps(rows, cols)
        cost = tile_cost(new, d, dmap, g_min, g_max)
        if cost >= best - 1e-12:
            if cost <= best:
                maps = new
            break
        maps, best = new, cost
    return maps


def _partner(a: np.ndarray) -> np.ndarray:
    """The value at each device's differential partner (columns 2o and 2o+1 swapped)."""
    return a.reshape(a.shape[0], -1, 2)[:, :, ::-1].reshape(a.shape)


def _where_placed(plan: Plan) -> list[tuple[np.ndarray, np.ndarray]]:
    """Physical (row, col) of every device of every layer under the plan's tile maps."""
    out = [(np.zeros(lp.targets.shape, np.int64), np.zeros(lp.targets.shape, np.int64)) for lp in plan.layers]
    for ti, t in enumerate(plan.tiles):
        rows, cols = plan.tile_cells(ti)
        pr, pc = out[int(t["layer"])]
        sl = np.s_[t["r0"] : t["r0"] + t["nr"], t["c0"] : t["c0"] + t["nc"]]
        pr[sl], pc[sl] = rows[:, None], cols[None, :]
    return out


def _errors(plan: Plan, dmap: DefectMap, compensated: bool) -> dict[str, float | int]:
    """What the plan's layout puts on defective cells: devices, |W| / max|W| of their pairs, residual |error|."""
    span = plan.g_max - plan.g_min
    held = dmap.held(plan.g_max)
    devices, weight, error = 0, 0.0, 0.0
    for lp, (pr, pc) in zip(plan.layers, _where_placed(plan)):
        bad, g = dmap.defective[pr, pc], held[pr, pc]
        d = pair_wanted(lp.targets)
        both = bad & _partner(bad)
        if compensated:
            err = np.where(both, g - _partner(g) - d, residual(d, g, plan.g_min, plan.g_max))
        else:
            err = np.where(both, g - _partner(g) - d, g - lp.targets)
        pairs = bad & ~(both & (np.arange(bad.shape[1]) % 2 == 1))  # a pair with two defects counts once
        devices += int(bad.sum())
        weight += float(np.sum(np.abs(d[pairs])) / span)
        error += float(np.sum(np.abs(err[pairs])) / span)
    return {"devices_on_defects": devices, "weight_on_defects": weight, "residual_error": error}


def lay_out(plan: Plan, dmap: DefectMap, aware: bool = True) -> None:
    """Give `plan` the defect map and, if `aware`, defect-avoiding tile maps and targets; report both layouts in meta.

    The report (meta["placement"]) sets the naive layout (identity at (0, 0), targets as mapped) beside the
    chosen one: devices on defective cells, the weight magnitude they carry (sum of |W| / max|W| of their
    pairs) and the residual weight error left there (same units), so a user sees what the layout avoided.
    """
    plan.defects = dmap
    naive = _errors(plan, dmap, compensated=False)
    if aware:
        rows, cols = [], []
        for t in plan.tiles:
            lp = plan.layers[int(t["layer"])]
            d = pair_wanted(lp.targets)[t["r0"] : t["r0"] + t["nr"], t["c0"] : t["c0"] + t["nc"]]
            maps = arrange(d, dmap, plan.g_min, plan.g_max)
            rows.append(maps.rows)
            cols.append(maps.cols)
        plan.tile_rows, plan.tile_cols = rows, cols
        placed = _errors(plan, dmap, compensated=True)
        held = dmap.held(plan.g_max)
        for lp, (pr, pc) in zip(plan.layers, _where_placed(plan)):
            bad, g = dmap.defective[pr, pc], np.clip(held[pr, pc], plan.g_min, plan.g_max)
            comp = np.clip(held[pr, pc] - pair_wanted(lp.targets), plan.g_min, plan.g_max)
            partner_of_lone = _partner(bad & ~_partner(bad))
            lp.targets = np.where(bad, g, np.where(partner_of_lone, _partner(comp), lp.targets))
    else:
        placed = naive
    plan.meta["placement"] = {
        "defect_aware": aware,
        "defective_cells": dmap.counts(),
        "defect_sources": dmap.sources,
        "naive": naive,
        "placed": placed,
    }
