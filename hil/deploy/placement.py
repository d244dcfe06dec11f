"""Placement: a trained network mapped to device target conductances and tiled onto the array.

Mapping (models.mapping.AnalogMapping, per-layer scale): weight W[o, i] -> a device pair
G+ = g_min + max(W, 0) / s * (g_max - g_min), G- likewise for -W. On the crossbar the inputs run
along rows and the outputs along columns, so layer l becomes a device matrix D of shape
(fan_in, 2 * out) with D[i, 2o] = G+[o, i] and D[i, 2o + 1] = G-[o, i]. D is cut into tiles of at most
rows x cols devices; each tile is programmed onto the array, measured, and the next tile reprograms the
same cells. Without a defect map a tile sits at (0, 0); with one, `hil.deploy.layout.lay_out` chooses the
rows and columns each tile uses so that defective cells carry the least weight, and retargets the partners
of stuck devices to cancel them. Verification marks come from SWIM (or a baseline) at weight level and
apply to both devices of a pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from hil.deploy.defects import DefectMap
from hil.deploy.layout import lay_out
from hil.deploy.plan import TILE_DTYPE, LayerPlan, Plan, PlanError, file_sha256
from models.mapping import AnalogMapping, AnalogState
from models.noise.apply import clean_weights

if TYPE_CHECKING:
    from models.swim.planning import Reverify


def device_matrix(g: Tensor) -> np.ndarray:
    """(2, out, *in) conductance pair -> (fan_in, 2*out) crossbar device matrix."""
    out = g.shape[1]
    pos = g[0].reshape(out, -1).T  # (fan_in, out)
    neg = g[1].reshape(out, -1).T
    d = torch.stack([pos, neg], dim=-1).reshape(pos.shape[0], 2 * out)
    return d.cpu().numpy().astype(np.float64)


def pair_from_matrix(d: np.ndarray, shape: tuple[int, ...]) -> Tensor:
    """Inverse of device_matrix: (fan_in, 2*out) -> (2, out, *in)."""
    out = shape[0]
    t = torch.as_tensor(d, dtype=torch.float32).reshape(d.shape[0], out, 2)
    return torch.stack([t[:, :, 0].T.reshape(shape), t[:, :, 1].T.reshape(shape)])


def build_plan(
    model: nn.Module,
    g_min: float,
    g_max: float,
    verify_mask: dict[str, Tensor],
    rows: int,
    cols: int,
    meta: dict | None = None,
    defects: DefectMap | None = None,
    defect_aware: bool = True,
) -> Plan:
    """Map every Conv/Linear weight to device targets, mark the verified pairs, cut into array tiles.

    With the chip's `defects` (rows x cols) the plan holds the map, and the tiles are laid out around the
    defects unless `defect_aware` is False (then the map only feeds the report and the no-pulse list).
    """
    mapping = AnalogMapping(g_min, g_max, "layer")
    layers, tiles = [], []
    for li, (name, w) in enumerate(clean_weights(model).items()):
        st = mapping.to_conductances(w.detach().cpu().float())
        targets = device_matrix(st.g)
        vm = verify_mask.get(name, torch.zeros_like(w, dtype=torch.bool)).detach().cpu()
        verify = device_matrix(torch.stack([vm, vm]).float()) > 0.5
        layers.append(LayerPlan(name, tuple(w.shape), float(st.scale), targets, verify))
        for r0 in range(0, targets.shape[0], rows):
            for c0 in range(0, targets.shape[1], cols):
                tiles.append((li, r0, c0, min(rows, targets.shape[0] - r0), min(cols, targets.shape[1] - c0)))
    plan = Plan(layers, np.array(tiles, dtype=TILE_DTYPE), rows, cols, g_min, g_max, dict(meta or {}))
    if defects is not None:
        if defects.shape != (rows, cols):
            raise PlanError(
                f"the defect map is of a {defects.shape[0]}x{defects.shape[1]} chip, not this {rows}x{cols} one"
            )
        lay_out(plan, defects, defect_aware)
    return plan


def weights_from_conductances(plan: Plan, matrices: list[np.ndarray]) -> dict[str, Tensor]:
    """Rebuild every layer's weights from (measured) device matrices through the plan's mapping."""
    mapping = AnalogMapping(plan.g_min, plan.g_max, "layer")
    out = {}
    for lp, d in zip(plan.layers, matrices):
        g = pair_from_matrix(d, lp.shape)
        out[lp.name] = mapping.from_conductances(AnalogState(g, torch.tensor(lp.scale), len(lp.shape)))
    return out


def plan_deployment(
    model_file: Path,
    profile_file: Path,
    fraction: float,
    method: str,
    granularity: str,
    rows: int,
    cols: int,
    read_delay: float,
    sens_samples: int = 2000,
    seed: int = 0,
    quiet: bool = False,
    factory: str | None = None,
    defect_runs: Sequence[Path] = (),
    defect_aware: bool = True,
    reverify: Reverify | None = None,
) -> Plan:
    """SWIM (or baseline) verify marks for `fraction` of the weights, mapped and tiled for a rows x cols array.

    ``defect_runs``: form and deployment runs of this chip; their defect map (`hil.deploy.defects`) goes
    into the plan and, if ``defect_aware``, the layout avoids it. ``reverify``: the deployment's touch-up rounds
    (default: models.swim.planning.Reverify's, which are `rram program`'s), priced in the planner's cycles.

    The array holds one analog conductance pair per weight, so a model trained bit-sliced is refused
    (PlanError naming the retraining); a model not trained on a profile is mapped as analog pairs.
    The stages go to a progress bar on a terminal, or one plain line each elsewhere (unless quiet).
    """
    from calibration.profile import load_profile
    from firmware_protocol.progress import Progress
    from models.checkpoint import load_model, model_mapping
    from models.data.datasets import load_dataset
    from models.swim.planning import MissingPulses, Reverify, SwimPlanner

    model, ckpt = load_model(model_file, factory=factory)  # factory: the file's own pkg.mod:factory, if it names one
    recorded = model_mapping(ckpt)
    if recorded is not None and recorded.name != "analog":
        raise PlanError(
            f"{model_file} was trained with {recorded.describe()}, but `rram program` writes one analog conductance "
            f"pair per weight: retrain it with --mapping analog"
        )
    ds = load_dataset(ckpt["data"]["name"], ckpt["data"].get("root"))
    profile = load_profile(profile_file)
    with Progress(None, "planning", "stages", enabled=not quiet, final_line=False) as stages:
        try:
            planner = SwimPlanner(
                model,
                profile,
                ds.x_test,
                ds.y_test,
                t_s=read_delay,
                granularity=granularity,
                seed=seed,
                reverify=reverify if reverify is not None else Reverify(),
            )
        except MissingPulses as exc:
            raise PlanError(f"{profile_file}: {exc}") from None
        if method in ("swim", "gradient"):
            stages.stage(f"sensitivity of {planner.n_weights} weights over {sens_samples} training samples")
            planner.sensitivity([(ds.x_train, ds.y_train)], max_samples=sens_samples)
        stages.stage(f"{method}: marking {fraction:.1%} of the weights for write-verify")
        mask = planner.mask(method, fraction)
        cycles, norm = planner.cycles(mask)
    meta = {
        "model_file": str(model_file.resolve()),
        "model_sha256": file_sha256(model_file),
        "profile_file": str(profile_file.resolve()),
        "method": method,
        "fraction": fraction,
        "granularity": granularity,
        "planned_cycles": cycles,
        "planned_cycles_norm": norm,
    }
    gate_map = profile.open_loop.gate_map if profile.open_loop is not None else None
    if gate_map is not None:  # the programming run takes its one-shot gates from it (DeployParams.plan_gates)
        meta["gate_map"] = {"gate_v": gate_map.gate_v.tolist(), "g_s": gate_map.g_s.tolist()}
    defects = None
    if defect_runs:
        from hil.deploy.defects import defect_map_from_runs

        defects = defect_map_from_runs(defect_runs, rows, cols, float(profile.g_min), float(profile.g_max))
    return build_plan(model, float(profile.g_min), float(profile.g_max), mask, rows, cols, meta, defects, defect_aware)
