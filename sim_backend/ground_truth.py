"""Ground truth of a simulated chip as a dict and an HDF5 file, so calibration fits can be scored against it.

HDF5 layout (all per-cell datasets have shape (rows, cols)):
  /                attrs: format, rows, cols, seed, time_s
  /params          attrs: every DeviceParams field
  /laws            attrs: one formula string per law, in the parameter names of /params
  /derived         attrs: closed-form statistics implied by the parameters (e.g. total ln-sigmas)
  /cells/<name>    datasets: device-to-device draws and current state flags
  /read_chain/<range>  attrs: true and nominal gain/offset of each ADC range (when a ReadChain is given)

Versions (in the format name): 2 (issue 16) has the relaxation law as per-conductance tables
(relax_g_nodes_us, relax_t0_nodes_s, relax_sigma_nodes_us instead of relax_t0_s, relax_sigma_coeffs_us),
the spatial-gain parameters (spatial_sigma, spatial_length_cells), the "spatial" law and
/cells/spatial_ln_gain. Version 1 files still load: their relaxation law as the same law sampled at
the nodes (`DeviceParams.from_dict`), no spatial field (spatial_ln_gain all zeros, as their chips had).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from firmware_protocol.fileformat import FileFormat, atomic_write
from sim_backend.device_params import DeviceParams

if TYPE_CHECKING:
    from sim_backend.device_model import RRAMArray
    from sim_backend.read_chain import ReadChain

GROUND_TRUTH_FILE = FileFormat("rram-hil-sim-ground-truth", "2", "a simulator ground-truth file", version_key=None)
FORMAT = str(GROUND_TRUTH_FILE.stamp()["format"])  # "rram-hil-sim-ground-truth/2": the version is in the name


class GroundTruthError(ValueError):
    """A ground-truth file is not one, or is of a newer format than this software reads."""


LAWS: dict[str, str] = {
    "i_cc": "I_cc = min(nmos_k * max(V_gate - nmos_vth, 0)**2, i_cc_max)",
    "lrs_full_set": "ln G = ln(I_cc / lrs_v_c) + lrs_d2d[cell] + lrs_sigma_c2c * z + wear_lrs(n)",
    "hrs_full_reset": "ln G = ln(g_hrs_ref) - (|V| - v_hrs_ref) / v_hrs_scale + hrs_d2d[cell] + hrs_sigma_c2c * z + wear_hrs(n)",
    "kinetics": "f = 1 - exp(-xi * width_ns / (tau0_ns * exp(-(|V| - v_th[cell]) / v_kin))), ln xi ~ N(0, step_sigma**2); "
    "ln G += f * max(ln_target - ln G, 0) for SET, f * min(ln_target - ln G, 0) for RESET",
    "forming": "forms (to the LRS law) when V >= v_form[cell] - v_form_per_decade * log10(width_ns / v_form_width_ref_ns) "
    "and can_form[cell]",
    "wear": "wear_lrs(n) = -wear_a_lrs * log10(1 + n / wear_n0); wear_hrs(n) = +wear_a_hrs * log10(1 + n / wear_n0); "
    "n counts full cycles (each pulse adds f / 2)",
    "endurance": "cycles_to_failure ~ weibull_scale * Weibull(weibull_shape); at failure the cell sticks at LRS "
    "with probability fail_lrs_frac, else at HRS",
    "relaxation": "G(t) = g0 + mu(g0) * L + sigma_r(g0) * B(L), L = log10(1 + (t - t_prog) / t0(g0)), B standard "
    "Brownian motion; t0 = exp(interp(ln g0_uS, ln relax_g_nodes_us, ln relax_t0_nodes_s)), sigma_r = 1e-6 * "
    "interp(ln g0_uS, ln relax_g_nodes_us, relax_sigma_nodes_us) * min(1, g0/g_min) (interp clamps at the end "
    "nodes), mu = 1e-6 * poly(relax_mu_coeffs_us, clip(g0/g_max, 0, 1)) * min(1, g0/g_min)",
    "read": "I = G_eff * V * S(V) / S(v_read_ref), S(V) = sinh(V/v_nl) / (V/v_nl), G_eff = G * (1 - rtn_amp[cell] * occupied), "
    "plus N(0, (read_noise_frac * g_max * |V|)**2)",
    "rtn": "two-state trap, mean dwell rtn_tau_empty[cell] (empty) and rtn_tau_full[cell] (occupied), exact Markov "
    "transitions between reads",
    "spatial": "ln target += spatial_ln_gain[cell] in lrs_full_set, hrs_full_reset and forming; spatial_ln_gain is a "
    "stationary Gaussian field, Cov = spatial_sigma**2 * exp(-(|dr| + |dc|) / spatial_length_cells) (0 when "
    "spatial_sigma = 0)",
}

_CELL_FIELDS = (
    "stuck_start_lrs",
    "stuck_start_hrs",
    "can_form",
    "v_form",
    "g_pristine",
    "lrs_d2d",
    "hrs_d2d",
    "v_set_th",
    "v_reset_th",
    "cycles_to_failure",
    "fail_mode_lrs",
    "rtn_present",
    "rtn_amp",
    "rtn_tau_empty",
    "rtn_tau_full",
    "formed",
    "stuck_lrs",
    "stuck_hrs",
    "cycles_used",
    "spatial_ln_gain",
)


def derived_statistics(params: DeviceParams) -> dict[str, float]:
    """Closed-form population statistics implied by the parameters (what a fit should recover)."""
    p = params
    return {
        "lrs_ln_sigma_total": float(np.hypot(p.lrs_sigma_c2c, p.lrs_sigma_d2d)),
        "hrs_ln_sigma_total": float(np.hypot(p.hrs_sigma_c2c, p.hrs_sigma_d2d)),
        "read_noise_sigma_s": p.read_noise_frac * p.g_max,
        "weibull_median_cycles": p.weibull_scale * np.log(2.0) ** (1.0 / p.weibull_shape),
        "stuck_start_frac": p.stuck_lrs_frac + p.stuck_hrs_frac,
        "relax_sigma_mid_1s_s": float(np.sqrt(p.relax_variance(p.g_max / 2, 1.0))),
        "relax_sigma_mid_1day_s": float(np.sqrt(p.relax_variance(p.g_max / 2, 86400.0))),
    }


def array_ground_truth(array: RRAMArray) -> dict:
    """Dict with params, laws, derived statistics and per-cell arrays (rows x cols) of a simulated chip."""
    shape = (array.rows, array.cols)
    cells = {name: np.asarray(getattr(array, name)).reshape(shape).copy() for name in _CELL_FIELDS}
    # programming state behind the relaxation law, and the noiseless conductance at time_s
    cells["g_programmed"] = array._g0.reshape(shape).copy()
    cells["t_programmed"] = array._t_prog.reshape(shape).copy()
    cells["relaxing"] = array._relax_on.reshape(shape).copy()
    r, c = np.divmod(np.arange(array.rows * array.cols), array.cols)
    cells["conductance_now"] = array.conductance(r, c).reshape(shape)
    return {
        "format": FORMAT,
        "rows": array.rows,
        "cols": array.cols,
        "seed": array.seed,
        "time_s": array.time_s,
        "params": array.params.to_dict(),
        "laws": dict(LAWS),
        "derived": derived_statistics(array.params),
        "cells": cells,
    }


def write_ground_truth(path: str | Path, array: RRAMArray, read_chain: ReadChain | None = None) -> None:
    """Write a chip's (and optionally its read chain's) ground truth to an HDF5 file (replaced atomically)."""
    gt = array_ground_truth(array)
    with atomic_write(path, force=True) as tmp, h5py.File(tmp, "w") as f:
        for key in ("format", "rows", "cols", "seed", "time_s"):
            f.attrs[key] = gt[key]
        for group in ("params", "laws", "derived"):
            grp = f.create_group(group)
            for k, v in gt[group].items():
                grp.attrs[k] = np.asarray(v) if isinstance(v, list) else v
        cells = f.create_group("cells")
        for k, v in gt["cells"].items():
            cells.create_dataset(k, data=v, compression="gzip")
        if read_chain is not None:
            rc = f.create_group("read_chain")
            for name, values in read_chain.ground_truth().items():
                grp = rc.create_group(name)
                for k, v in values.items():
                    grp.attrs[k] = v


def load_ground_truth(path: str | Path) -> dict:
    """Read a ground-truth HDF5 file back into the dict layout of `array_ground_truth` (+ 'read_chain')."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ground-truth file not found: {path}")
    with h5py.File(path, "r") as f:
        version = GROUND_TRUTH_FILE.check(f.attrs, str(path), GroundTruthError)
        out: dict = {k: _plain(f.attrs[k]) for k in ("format", "rows", "cols", "seed", "time_s")}
        for group in ("params", "laws", "derived"):
            out[group] = {k: _plain(v) for k, v in f[group].attrs.items()}
        out["cells"] = {k: f["cells"][k][()] for k in f["cells"]}
        if int(version) < 2:  # version 1 predates the spatial field: its chips had none
            out["cells"].setdefault("spatial_ln_gain", np.zeros((int(out["rows"]), int(out["cols"]))))
        if "read_chain" in f:
            out["read_chain"] = {
                name: {k: _plain(v) for k, v in grp.attrs.items()} for name, grp in f["read_chain"].items()
            }
    return out


def params_from_ground_truth(gt: dict) -> DeviceParams:
    """Rebuild the DeviceParams of a chip from its ground-truth dict."""
    return DeviceParams.from_dict(gt["params"])


def _plain(value: Any) -> Any:
    """HDF5 attribute -> plain Python value (str, float, int, bool or list)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
