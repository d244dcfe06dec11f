"""Calibration after read-back (issue 16 item 3): planted per-column gains and offsets are recovered, drift undone.

Planted errors are noise-free, so the fits are exact up to float rounding; each tolerance below says which
rounding it covers. Before, a deployed network was evaluated on its raw read-back weights only.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from hil.deploy.column_calibration import (
    apply_columns,
    calibrate_columns,
    compensate_drift,
    drift_factors,
    drift_reference,
)


def _param(layer: nn.Module, name: str) -> torch.Tensor:
    """A layer's parameter, detached (typed for mypy: a Sequential's items are plain Modules)."""
    p = getattr(layer, name)
    assert isinstance(p, torch.Tensor)
    return p.detach()


def _linear(model: nn.Module, name: str) -> nn.Linear:
    layer = model.get_submodule(name)
    assert isinstance(layer, nn.Linear)
    return layer


U32 = 2.0**-24  # float32 unit roundoff
# float64 fits: outputs of <= 72-term sums carry <= 72 * 2^-53 ~ 1e-14 relative error, and least squares on
# well-spread random inputs (design condition number << 1e3) amplifies it to < 1e-11; 1e-9 leaves 100x margin.
RTOL64 = 1e-9


def _planted(layer: nn.Module, gain: torch.Tensor) -> torch.Tensor:
    """Chip weights whose column j reads 1/gain_j of the trained one: a fit must find gain_j."""
    w = _param(layer, "weight")
    return w / gain.reshape(-1, *([1] * (w.dim() - 1)))


def test_linear_gain_and_offset_recovered_exactly() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 5).double()
    a_true = torch.tensor([0.5, 0.8, 1.25, 2.0, 1.6], dtype=torch.float64)
    e = torch.tensor([0.3, -0.2, 0.0, 0.5, -1.0], dtype=torch.float64)  # the chip's column offset (bias error)
    b = layer.bias.detach()
    measured = {"weight": _planted(layer, a_true), "bias": b + e}
    x_cal = torch.randn(64, 8, dtype=torch.float64)
    params, fits = calibrate_columns(layer, measured, x_cal)
    fit = fits["weight"]
    # y_ideal = W x + b and y_chip = W x / a + b + e, so y_ideal = a * y_chip + (1 - a) b - a e exactly.
    torch.testing.assert_close(fit.gain, a_true, rtol=RTOL64, atol=0.0)
    torch.testing.assert_close(fit.offset, (1 - a_true) * b - a_true * e, rtol=RTOL64, atol=RTOL64)
    assert fit.has_offset and not fit.degenerate.any()
    x_new = torch.randn(32, 8, dtype=torch.float64)  # the correction holds off the calibration inputs too
    with torch.no_grad():
        torch.testing.assert_close(functional_call(layer, params, (x_new,)), layer(x_new), rtol=RTOL64, atol=RTOL64)


def test_layer_without_bias_gets_gain_only_and_keeps_its_structure() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(6, 4, bias=False).double()
    a_true = torch.tensor([0.7, 1.0, 1.9, 0.4], dtype=torch.float64)
    params, fits = calibrate_columns(layer, {"weight": _planted(layer, a_true)}, torch.randn(48, 6).double())
    assert set(params) == {"weight"}  # no bias created
    assert not fits["weight"].has_offset and torch.equal(fits["weight"].offset, torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(fits["weight"].gain, a_true, rtol=RTOL64, atol=0.0)


@pytest.fixture(scope="module")
def digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 64-32-10 MLP trained (seeded, full batch) on the digits training split; the test split is held out."""
    from models.data.datasets import load_dataset

    ds = load_dataset("digits")
    x_tr, x_te = ds.x_train.flatten(1), ds.x_test.flatten(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x_tr), ds.y_train).backward()
        opt.step()
    return model.eval(), x_tr, ds.y_train, x_te, ds.y_test


def _acc(model: nn.Module, params: dict[str, torch.Tensor] | None, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        out = functional_call(model, params, (x,)) if params else model(x)
    return float((out.argmax(1) == y).float().mean())


def test_mlp_accuracy_restored_from_training_inputs_only(digits_mlp) -> None:
    model, x_tr, _, x_te, y_te = digits_mlp
    g = torch.Generator().manual_seed(3)
    measured = {}
    for name in ("0.weight", "2.weight"):
        layer = _linear(model, name[0])
        gain = 0.4 + 2.1 * torch.rand(layer.out_features, generator=g)  # planted column gains in [0.4, 2.5]
        measured[name] = _planted(layer, gain)
        measured[name[0] + ".bias"] = layer.bias.detach() + 0.5 * torch.randn(layer.out_features, generator=g)
    clean, planted = _acc(model, None, x_te, y_te), _acc(model, measured, x_te, y_te)
    params, _ = calibrate_columns(model, measured, x_tr[:128])  # 128 training inputs; the test split never enters
    restored = _acc(model, params, x_te, y_te)
    # Measured (torch 2.13 CPU): clean 0.958, planted 0.633, restored 0.958 on the 360 held-out digits.
    assert clean > 0.93 and planted < clean - 0.2
    assert restored == clean
    with torch.no_grad():
        want, got = model(x_te), functional_call(model, params, (x_te,))
    # float32: each layer's outputs and the fitted gains carry <= 64 * 2^-24 ~ 4e-6 relative rounding
    # (worst-case sum bound); two layers stay below 1e-5 of the logit scale, 1e-4 leaves 10x margin.
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_conv_channel_gains_recovered_and_next_layer_left_alone() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double()
    a_true = torch.tensor([0.5, 1.5, 2.0, 0.8], dtype=torch.float64)
    measured = {"0.weight": _planted(model[0], a_true), "3.weight": _param(model[3], "weight").clone()}
    _, fits = calibrate_columns(model, measured, torch.randn(16, 2, 6, 6, dtype=torch.float64))
    torch.testing.assert_close(fits["0.weight"].gain, a_true, rtol=RTOL64, atol=0.0)
    b = _param(model[0], "bias")  # y_chip = W*x / a + b, so the offset that restores W*x + b is (1 - a) b
    torch.testing.assert_close(fits["0.weight"].offset, (1 - a_true) * b, rtol=RTOL64, atol=RTOL64)
    # the corrected conv feeds the Linear its ideal input, and its chip weights are exact: gain 1, offset 0.
    torch.testing.assert_close(fits["3.weight"].gain, torch.ones(3, dtype=torch.float64), rtol=RTOL64, atol=0.0)
    torch.testing.assert_close(fits["3.weight"].offset, torch.zeros(3, dtype=torch.float64), rtol=0.0, atol=RTOL64)


def _polyfit_columns(z: torch.Tensor, t: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Independent reference: numpy's degree-1 polyfit of each column t[:, j] on z[:, j] -> (gains, offsets)."""
    fits = [np.polyfit(z[:, j].numpy(), t[:, j].numpy(), 1) for j in range(z.shape[1])]
    return np.array([f[0] for f in fits]), np.array([f[1] for f in fits])


def test_layers_are_fitted_in_order_on_the_corrected_chip_signals() -> None:
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    w1, b1, w2, b2 = (_param(model[i], k) for i in (0, 2) for k in ("weight", "bias"))
    g = torch.Generator().manual_seed(11)
    # per-weight errors: no column gain makes these exact, so each fit depends on the signals it is given.
    measured = {
        n: w + 0.3 * torch.randn(w.shape, generator=g, dtype=torch.float64)
        for n, w in (("0.weight", w1), ("2.weight", w2))
    }
    x = torch.randn(64, 6, dtype=torch.float64)
    _, fits = calibrate_columns(model, measured, x)
    a1, c1 = _polyfit_columns(x @ measured["0.weight"].T + b1, x @ w1.T + b1)
    h_chip = torch.relu((x @ measured["0.weight"].T + b1) * torch.from_numpy(a1) + torch.from_numpy(c1))
    a2, c2 = _polyfit_columns(h_chip @ measured["2.weight"].T + b2, h_chip @ w2.T + b2)
    np.testing.assert_allclose(fits["0.weight"].gain.numpy(), a1, rtol=RTOL64)
    np.testing.assert_allclose(fits["2.weight"].gain.numpy(), a2, rtol=RTOL64)
    np.testing.assert_allclose(fits["2.weight"].offset.numpy(), c2, rtol=RTOL64, atol=RTOL64)
    h_ideal = torch.relu(x @ w1.T + b1)  # what a fit on the ideal network's signals would have used instead
    a2_ideal, _ = _polyfit_columns(h_ideal @ measured["2.weight"].T + b2, h_ideal @ w2.T + b2)
    assert np.abs(a2_ideal - a2).max() > 1e-3


def _mlp32(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 6)).eval()


def _rounding_bound(w: torch.Tensor, x: torch.Tensor) -> float:
    """Relative error bound of sum|W x| from one float32 rounding per weight: u * sum|W||x| / sum|W x| (float64)."""
    w, x = w.double(), x.double()
    return U32 * float((x.abs() @ w.abs().T).sum()) / float((x @ w.T).abs().sum())


def test_uniform_drift_gives_factor_1_25_and_restores_outputs() -> None:
    model = _mlp32(4)
    names = ("0.weight", "2.weight")
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    x_ref = torch.randn(64, 16)
    ref = drift_reference(model, w0, x_ref)
    w_t = {n: (v * 0.8 if n in names else v) for n, v in w0.items()}  # every conductance at 80 % of its t0 value
    params, factors = compensate_drift(model, w_t, ref)
    for n in names:
        eps = _rounding_bound(w0[n], ref.inputs[n])  # fl(0.8 W) moves each summed term by <= u relative
        assert abs(factors[n] - 1.25) <= 1.25 * eps / (1 - eps)
        # restored weights: the 0.8 and the factor product each round once (2u) plus the factor's own error.
        torch.testing.assert_close(params[n], w0[n], rtol=3 * U32 + eps / (1 - eps), atol=0.0)
    assert torch.equal(params["0.bias"], w0["0.bias"])  # the bias is digital: drift compensation leaves it
    with torch.no_grad():
        want, got = model(x_ref), functional_call(model, params, (x_ref,))
    # weights agree to < 1e-6 relative (above); float32 sums of <= 32 terms add <= 32u ~ 2e-6; 1e-5 covers both.
    assert float((got - want).abs().max()) <= 1e-5 * float(want.abs().max())


def test_drift_is_compensated_per_layer() -> None:
    model = _mlp32(5)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref = drift_reference(model, w0, torch.randn(32, 16))
    w_t = dict(w0, **{"0.weight": w0["0.weight"] * 0.8, "2.weight": w0["2.weight"] * 0.5})
    factors = drift_factors(model, w_t, ref)
    eps = _rounding_bound(w0["0.weight"], ref.inputs["0.weight"])
    assert abs(factors["0.weight"] - 1.25) <= 1.25 * eps / (1 - eps)
    assert factors["2.weight"] == 2.0  # halving is exact in binary floating point, and so is the ratio


def test_calibrate_then_drift_then_reapply_fits() -> None:
    """The workflow: calibrate at t0, store the fits and the reference; at t re-read, apply the fits, compensate."""
    model = _mlp32(6).double()
    g = torch.Generator().manual_seed(7)
    measured = {
        n: _planted(
            _linear(model, n[0]),
            0.5 + torch.rand(_linear(model, n[0]).out_features, generator=g, dtype=torch.float64),
        )
        for n in ("0.weight", "2.weight")
    }
    x_cal = torch.randn(64, 16, dtype=torch.float64)
    p0, fits = calibrate_columns(model, measured, x_cal)
    ref = drift_reference(model, p0, x_cal)
    p_t = apply_columns(model, {n: w * 0.5 for n, w in measured.items()}, fits)  # halving: exact, factor 2 exact
    params, factors = compensate_drift(model, p_t, ref)
    assert factors == {"0.weight": 2.0, "2.weight": 2.0}
    for n, v in p0.items():
        torch.testing.assert_close(params[n], v, rtol=RTOL64, atol=0.0)


def test_dead_column_keeps_gain_one_and_others_are_fitted() -> None:
    torch.manual_seed(8)
    layer = nn.Linear(5, 4).double()
    a_true = torch.tensor([1.5, 0.6, 1.0, 2.0], dtype=torch.float64)
    w_chip = _planted(layer, a_true)
    w_chip[2] = 0.0  # column 2 reads all zero on the chip: its output is its bias, whatever the input
    params, fits = calibrate_columns(layer, {"weight": w_chip}, torch.randn(40, 5, dtype=torch.float64))
    fit = fits["weight"]
    assert fit.degenerate.tolist() == [False, False, True, False]
    assert fit.gain[2] == 1.0 and fit.offset[2] == 0.0
    keep = torch.tensor([0, 1, 3])
    torch.testing.assert_close(fit.gain[keep], a_true[keep], rtol=RTOL64, atol=0.0)
    assert torch.equal(params["weight"][2], torch.zeros(5, dtype=torch.float64))
    assert params["bias"][2] == layer.bias[2]
    _, no_bias = calibrate_columns(nn.Linear(5, 2, bias=False), {"weight": torch.zeros(2, 5)}, torch.randn(8, 5))
    assert no_bias["weight"].degenerate.all() and torch.equal(no_bias["weight"].gain, torch.ones(2))


def test_calibration_runs_in_eval_mode_and_restores_the_mode() -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3)).train()
    measured = {n: p.detach() * 0.7 for n, p in model.named_parameters() if n.endswith("weight")}
    x = torch.randn(20, 6)
    first, second = calibrate_columns(model, measured, x)[0], calibrate_columns(model, measured, x)[0]
    assert all(torch.equal(first[n], second[n]) for n in first)  # Dropout off during calibration: deterministic
    assert model.training and model[1].training


@pytest.mark.parametrize(
    ("measured", "x_cal", "needle"),
    [
        ({"0.weight": torch.ones(3, 4), "2.weight": torch.ones(2, 3)}, torch.zeros(0, 4), "x_cal holds 0 inputs"),
        ({"0.weight": torch.ones(3, 4), "2.weight": torch.ones(2, 3)}, torch.zeros(1, 4), "x_cal holds 1 inputs"),
        ({"0.weight": torch.ones(3, 4)}, torch.zeros(8, 4), "'2.weight'"),
        ({"0.weight": torch.ones(3, 4), "2.weight": torch.ones(2, 3), "x": torch.ones(1)}, torch.zeros(8, 4), "'x'"),
        ({"0.weight": torch.ones(4, 3), "2.weight": torch.ones(2, 3)}, torch.zeros(8, 4), "shape (4, 3)"),
    ],
)
def test_bad_input_is_a_one_line_value_error(measured, x_cal, needle) -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ValueError) as err:
        calibrate_columns(model, measured, x_cal)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_layer_used_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.fc(x)))

    model = Twice()
    with pytest.raises(ValueError, match="runs 2 times"):
        calibrate_columns(model, {"fc.weight": model.fc.weight.detach()}, torch.randn(4, 3))
