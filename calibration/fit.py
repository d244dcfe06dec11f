"""fit_profile: turn measured datasets into one NoiseProfile (the entry point behind `rram fit`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calibration.datasets import (
    EnduranceDataset,
    ErrorMapDataset,
    ProgrammingDataset,
    ReadNoiseDataset,
    RelaxationDataset,
    SpatialDataset,
)
from calibration.families import fit_families
from calibration.fit_endurance import fit_endurance
from calibration.fit_programming import fit_programming
from calibration.fit_read import fit_read_noise
from calibration.fit_relaxation import fit_relaxation
from calibration.fit_spatial import fit_spatial
from calibration.fit_spatial_map import fit_spatial_map, spatial_p_value
from calibration.noise_terms import Provenance
from calibration.profile import NoiseProfile, software_version, utc_now
from calibration.stats import group_levels


@dataclass
class FitOptions:
    """Knobs of the fitters (defaults follow the IBM B.2 4th-order form)."""

    poly_degree: int = 4
    relaxation_poly_degree: int = 2
    read_poly_degree: int = 2
    read_groups: int = 16
    rtn_separation: float = 3.0
    rtn_min_state_fraction: float = 0.05
    rtn_false_alarm: float = 1e-3
    spatial_k: int = 10
    spatial_max_lag: int = 3
    full_cov_max_cells: int = 1024
    # A one-map spatial model is kept only when its map's errors depend on position at this level
    # (calibration.fit_spatial_map.spatial_p_value, 99 shuffles: 0.01 is "above every shuffle"); 1: always kept.
    spatial_alpha: float = 0.01


def fit_profile(
    *,
    open_loop: ProgrammingDataset | None = None,
    verified: ProgrammingDataset | None = None,
    relaxation: RelaxationDataset | None = None,
    read_noise: ReadNoiseDataset | None = None,
    endurance: EnduranceDataset | None = None,
    spatial: SpatialDataset | None = None,
    error_map: ErrorMapDataset | None = None,
    provenance: Provenance | None = None,
    g_min: float | None = None,
    g_max: float | None = None,
    n_levels: int | None = None,
    bits_per_device: int | None = None,
    options: FitOptions | None = None,
) -> NoiseProfile:
    """Fit every model for which a dataset is given; mapping facts default to the programmed levels.

    g_min/g_max default to the lowest/highest target level of the programming data (open-loop first),
    n_levels to the number of distinct targets, bits_per_device to floor(log2(n_levels)). The paper
    families are fitted to the open-loop data (the verified data when there is no open-loop run).
    The spatial model comes from repeated programming (spatial) or, assuming stationarity, from a
    single error map (error_map).
    """
    opt = options or FitOptions()
    prog = open_loop if open_loop is not None else verified
    if open_loop is not None and open_loop.verified:
        raise ValueError("open_loop dataset is marked verified=True")
    if verified is not None and not verified.verified:
        raise ValueError("verified dataset is marked verified=False")
    levels = group_levels(prog.target_g).levels if prog is not None else np.zeros(0)
    if g_min is None or g_max is None:
        if levels.size < 2:
            raise ValueError("give g_min and g_max (no programming dataset with >= 2 levels to take them from)")
        g_min = float(levels[0]) if g_min is None else g_min
        g_max = float(levels[-1]) if g_max is None else g_max
    if n_levels is None:
        n_levels = int(levels.size) if levels.size >= 2 else 2
    if bits_per_device is None:
        bits_per_device = max(1, int(math.floor(math.log2(n_levels))))
    prov = provenance or Provenance()
    if not prov.created_utc:
        prov.created_utc = utc_now()
    if not prov.software_version:
        prov.software_version = software_version()
    prof = NoiseProfile(
        g_min=float(g_min),
        g_max=float(g_max),
        n_levels=int(n_levels),
        bits_per_device=int(bits_per_device),
        levels_g=levels if levels.size == n_levels else np.zeros(0),
        provenance=prov,
    )
    if open_loop is not None:
        prof.open_loop = fit_programming(open_loop, prof.g_max, opt.poly_degree)
    if verified is not None:
        prof.verified = fit_programming(verified, prof.g_max, opt.poly_degree)
    if prog is not None:
        prof.families = fit_families(prog, prof.g_max)
    if relaxation is not None:
        prof.relaxation_model = fit_relaxation(relaxation, prof.g_max, opt.relaxation_poly_degree)
    if read_noise is not None:
        prof.read_noise = fit_read_noise(
            read_noise,
            prof.g_max,
            opt.read_poly_degree,
            opt.read_groups,
            opt.rtn_separation,
            opt.rtn_min_state_fraction,
            opt.rtn_false_alarm,
        )
    if endurance is not None:
        prof.endurance = fit_endurance(endurance)
        prof.stuck_fractions = (prof.endurance.stuck_lrs_fraction, prof.endurance.stuck_hrs_fraction)
    if spatial is not None and error_map is not None:
        raise ValueError("give spatial (repeated programming) or error_map (one map), not both")
    if spatial is not None:
        prof.spatial = fit_spatial(spatial, opt.spatial_k, opt.full_cov_max_cells)
    if error_map is not None:
        p = spatial_p_value(error_map.errors, opt.spatial_max_lag) if opt.spatial_alpha < 1 else 0.0
        if p <= opt.spatial_alpha:
            prof.spatial = fit_spatial_map(error_map, opt.spatial_k, opt.spatial_max_lag, opt.full_cov_max_cells)
        else:  # white errors: a spatial model would add correlation the chip does not have
            note = (
                f"spatial: none (the error map's lag correlations are not significant: permutation p = {p:.2f} "
                f"> {opt.spatial_alpha:g})"
            )
            prov.notes = f"{prov.notes}; {note}" if prov.notes else note
    prof.validate()
    return prof
