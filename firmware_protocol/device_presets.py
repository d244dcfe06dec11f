"""Published device constants used by both the simulator and the paper noise profiles, written once.

Source: IBM HWA-training supplement (Rasch et al., "Hardware-aware training for large-scale and
diverse deep learning inference workloads using in-memory computing-based accelerators"), section B.2
"Generalizing to other memory technologies": ReRAM programming-plus-relaxation error
sigma(g) = sum_i c_i (g / g_max)^i in microsiemens, a 4th-order polynomial fitted with g_max = 40 uS to
measurements 1 s and 1 day after programming; short-term read noise 1 % of g_max, independent of g.
In the base layer (plain constants, no imports) so that sim_backend and calibration can both use them.
"""

from __future__ import annotations

# g_max (S) the B.2 polynomials were fitted with; their argument is g / IBM_RERAM_G_MAX_S.
IBM_RERAM_G_MAX_S: float = 40e-6

# Polynomial coefficients c_0..c_4 (uS) of the error sigma, 1 s and 1 day after programming.
IBM_RERAM_SIGMA_1S_US: tuple[float, ...] = (0.348, 16.030, -43.853, 45.393, -16.815)
IBM_RERAM_SIGMA_1DAY_US: tuple[float, ...] = (0.701, 22.086, -50.7, 47.09, -16.458)

# The measurement times of the two fits, by the keys paper profiles use ("1s", "1d").
IBM_RERAM_TIMES_S: dict[str, float] = {"1s": 1.0, "1d": 86400.0}
IBM_RERAM_COEFFS_US: dict[str, tuple[float, ...]] = {"1s": IBM_RERAM_SIGMA_1S_US, "1d": IBM_RERAM_SIGMA_1DAY_US}

# Read-to-read noise sigma as a fraction of g_max.
IBM_RERAM_READ_FRAC: float = 0.01
