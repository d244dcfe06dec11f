"""IBM-style HWA training: ramp, clipping, remapping, folding, drop-connect, FP pre-training, the analog tile forward,
learned input ranges and Table 3's schedule (weight decay, momentum, LR steps, gradient clipping)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from models.analog import analog_tiles
from models.config import TrainConfig
from models.data import Dataset, load_dataset
from models.methods import TrainContext, get_method
from models.methods.ibm_hwa import column_scales, lr_factor, ramp_factor
from models.montecarlo import evaluate_mc
from models.noise.apply import clean_weights
from models.noise.factory import noise_from_spec
from models.training import train

torch.set_num_threads(1)
_NOISE = {"family": "gaussian", "sigma": 0.3}
_DIGITAL = {"analog": "none", "pretrain_epochs": 0}  # the HWA mechanics alone, on the initial weights


def _ctx(model, noise, n_batches=10, optimizer=None, epochs=10):
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(n_batches)]
    return TrainContext(
        model=model,
        noise=noise,
        optimizer=optimizer or torch.optim.SGD(model.parameters(), lr=0.1),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        config=TrainConfig(epochs=epochs),
        num_classes=3,
        train_loader=batches,
    )


def test_ramp_is_linear_then_flat():
    assert [ramp_factor(s, 4) for s in range(6)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert ramp_factor(0, 0) == 1.0


def test_column_scales_are_row_max_abs():
    w = torch.tensor([[1.0, -3.0], [0.5, 0.25]])
    assert torch.equal(column_scales(w), torch.tensor([[3.0], [0.5]]))
    assert column_scales(torch.randn(5, 2, 3, 3)).shape == (5, 1, 1, 1)


def test_defaults_follow_the_supplement():
    o = get_method("ibm_hwa").options
    assert (o.noise_scale, o.analog, o.pretrain_epochs, o.drop_connect) == (1.0, "ibm_table1", None, 0.001)
    assert (o.weight_decay, o.momentum, o.lr_steps, o.lr_decay, o.grad_clip) == (1e-3, 0.9, (0.5,), 0.1, None)
    with pytest.raises(ValueError, match="option analog must be 'none' or a tile preset"):
        get_method("ibm_hwa", analog="pcm")
    with pytest.raises(ValueError, match="option lr_steps must be fractions of the epochs strictly between 0 and 1"):
        get_method("ibm_hwa", lr_steps="0.5,1.5")


def test_effective_weights_without_noise_equal_w_and_gamma_gets_a_gradient():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    m = get_method("ibm_hwa", noise_scale=0.0, drop_connect=0.0, **_DIGITAL)
    ctx = _ctx(model, noise_from_spec(_NOISE))
    m.prepare(ctx)
    eff = m.effective_weights(ctx, clean_weights(model))
    assert torch.allclose(eff["weight"], model.weight)
    m2 = get_method("ibm_hwa", drop_connect=0.0, ramp_batches=0, **_DIGITAL)
    ctx2 = _ctx(model, noise_from_spec(_NOISE))
    m2.prepare(ctx2)
    m2.training_step(ctx2, torch.randn(4, 6), torch.tensor([0, 1, 2, 0]))
    assert m2.gamma["weight"].grad is not None and float(m2.gamma["weight"].grad.abs().sum()) > 0
    groups = ctx2.optimizer.param_groups
    assert any(p is m2.gamma["weight"] for g in groups for p in g["params"])  # out-scales are trained


def test_clipping_remapping_and_folding():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    m = get_method("ibm_hwa", remap_every=3, **_DIGITAL)
    ctx = _ctx(model, noise_from_spec(_NOISE))
    m.prepare(ctx)
    g = m.gamma["weight"]
    assert torch.equal(g.detach(), column_scales(model.weight))
    with torch.no_grad():
        model.weight.mul_(2.0)  # optimizer pushed |W| past gamma
    m._sync(model, step=1)
    assert bool((model.weight.abs() <= g + 1e-7).all())  # fixed-value clipping |W_hat| <= 1
    with torch.no_grad():
        before = model.weight.clone()
        g.mul_(0.5)  # a learned change of the out-scales
    m._sync(model, step=2)
    assert torch.allclose(model.weight, 0.5 * before)  # folded: W_hat unchanged
    with torch.no_grad():
        model.weight[0].mul_(0.1)
    m._sync(model, step=3)  # remap step
    assert torch.allclose(g.detach(), column_scales(model.weight))


def test_drop_connect_rate():
    torch.manual_seed(0)
    model = nn.Linear(200, 100)
    m = get_method("ibm_hwa", noise_scale=0.0, drop_connect=0.1, **_DIGITAL)
    ctx = _ctx(model, noise_from_spec(_NOISE))
    m.prepare(ctx)
    eff = m.effective_weights(ctx, clean_weights(model))["weight"]
    # 20,000 weights: the binomial std of the dropped fraction is sqrt(0.1 * 0.9 / 2e4) = 0.002; 0.01 is 5 of it
    assert float((eff == 0).float().mean()) == pytest.approx(0.1, abs=0.01)


def test_noise_is_scaled_and_ramped():
    torch.manual_seed(0)
    model = nn.Linear(200, 100)
    base = noise_from_spec(_NOISE)
    m = get_method("ibm_hwa", noise_scale=2.0, drop_connect=0.0, ramp_batches=4, **_DIGITAL)
    ctx = _ctx(model, base)
    m.prepare(ctx)
    w = clean_weights(model)
    std = base.noise_std({"weight": model.weight.detach()})["weight"]
    for step, expected in ((0, 0.5), (10, 2.0)):
        ctx.step = step
        dev = (m.effective_weights(ctx, w)["weight"] - model.weight).detach()
        # 20,000 standardised deviations: the sample std has a relative error of 1/sqrt(2 * 2e4) = 0.5 %
        assert float((dev / std).std()) == pytest.approx(expected, rel=0.05)


def test_fp_pretraining_runs_first_and_defaults_to_half_the_epochs():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    before = model.weight.detach().clone()
    m = get_method("ibm_hwa", analog="none")
    ctx = _ctx(model, noise_from_spec(_NOISE), epochs=6)
    m.prepare(ctx)
    assert m.pretrain_epochs == 3 and not torch.equal(model.weight.detach(), before)
    ctx_r = _ctx(nn.Linear(6, 3), noise_from_spec(_NOISE), epochs=6)
    ctx_r.resuming = True  # a resumed run does not pre-train again
    w0 = ctx_r.model.weight.detach().clone()
    get_method("ibm_hwa", analog="none").prepare(ctx_r)
    assert torch.equal(ctx_r.model.weight.detach(), w0)


def test_training_runs_through_the_analog_tile_with_learned_input_ranges():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    m = get_method("ibm_hwa", pretrain_epochs=0, ramp_batches=0)
    ctx = _ctx(model, noise_from_spec(_NOISE))
    m.prepare(ctx)
    assert m.tiles is not None and m.tiles.config.ir_drop == 0.0  # IR drop off in training (A.1.7)
    alphas = m.tiles.input_ranges
    assert set(alphas) == {"0", "2"} and all(float(a.detach()) > 0 for a in alphas.values())
    trained = {id(p) for g in ctx.optimizer.param_groups for p in g["params"]}
    assert all(id(a) in trained for a in alphas.values())
    start = m.tiles.input_range_state()
    for step in range(3):
        ctx.step = step
        ctx.optimizer.zero_grad()
        m.training_step(ctx, torch.randn(4, 6) * 3, torch.randint(0, 3, (4,)))
        assert alphas["0"].grad is not None
        ctx.optimizer.step()
    assert m.tiles.input_range_state() != start
    assert all("forward" not in vars(mod) for mod in model.modules())  # the tile is only on during the step
    state = m.state_dict()
    assert set(state["input_ranges"]) == {"0", "2"} and state["analog"] == "ibm_table1"
    m2 = get_method("ibm_hwa", pretrain_epochs=0)
    m2.prepare(_ctx(model, noise_from_spec(_NOISE)))
    m2.load_state_dict(state)
    assert m2.tiles is not None and m2.tiles.input_range_state() == state["input_ranges"]


def test_table3_schedule_weight_decay_momentum_steps_and_clipping():
    assert [lr_factor(e, 10, (0.5, 0.8), 0.1) for e in (0, 4, 5, 7, 8, 9)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    )
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.0, weight_decay=0.0)
    m = get_method("ibm_hwa", analog="none", pretrain_epochs=0, grad_clip=0.5, momentum=0.95, weight_decay=1e-4)
    ctx = _ctx(model, noise_from_spec(_NOISE), optimizer=opt)
    m.prepare(ctx)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_param[id(model.weight)]["weight_decay"] == 1e-4 and by_param[id(model.bias)]["weight_decay"] == 0.0
    assert all(g["momentum"] == 0.95 for g in opt.param_groups[:2])
    ctx.epoch = 5  # half of the 10 epochs: the first step
    m.on_epoch_start(ctx)
    assert by_param[id(model.weight)]["lr"] == pytest.approx(0.01)
    opt.zero_grad()
    model.weight.grad = torch.full_like(model.weight, 10.0)
    opt.step()  # the pre-step hook clips the norm of all gradients to 0.5 first
    assert float(model.weight.grad.norm()) == pytest.approx(0.5, rel=1e-4)


def test_distill_needs_a_teacher():
    m = get_method("ibm_hwa", distill=True, pretrain_epochs=0)
    with pytest.raises(ValueError, match="floating-point teacher"):
        m.prepare(_ctx(nn.Linear(6, 3), noise_from_spec(_NOISE)))


@pytest.mark.parametrize("opts", [{}, {"distill": True, "analog": "none"}])
def test_trains_on_digits_and_evaluates_on_the_tiles(opts):
    d = load_dataset("digits")
    ds = Dataset("digits", d.x_train[:384], d.y_train[:384], d.x_test[:120], d.y_test[:120], 10)
    cfg = TrainConfig(
        method="ibm_hwa",
        method_options=opts,
        noise=_NOISE,
        epochs=2,
        lr=1e-2,
        progress=False,
        val_noise_draws=2,
        model_kwargs={"channels": [8, 16], "hidden": 32},
    )
    res = train(cfg, dataset=ds, log=lambda _s: None)  # 1 FP epoch, then 2 HWA epochs
    assert res.history[-1]["val_acc"] > 0.5
    state = res.checkpoint["train_state"]["method"]
    gam = state["gamma"]
    for name, w in clean_weights(res.model).items():
        assert bool((w.detach().abs() <= gam[name] * (1 + 1e-6)).all())
    assert set(res.model.state_dict()) == set(res.checkpoint["state_dict"])
    if "input_ranges" in state:  # evaluate the trained model on the tiles with its learned input ranges
        with analog_tiles(res.model, "ibm_table1", input_ranges=state["input_ranges"]) as tiles:
            r = evaluate_mc(res.model, ds.x_test, ds.y_test, tiles.draws(noise_from_spec(_NOISE)), 4, seed=0)
        # a barely trained net (12 steps) under noise on the tiles: above chance (0.1) by more than 3 standard
        # errors of a 4-draw mean (per-draw std ~0.1 here, SE 0.05); the draws differ
        assert r.mean > 0.25 and r.std > 0 and np.isfinite(r.ekl)


def _ddp_worker(rank: int, out_dir: str, port: int) -> None:
    """One of 2 gloo ranks training ibm_hwa (FP pre-training, calibrated input ranges, HWA) on digits."""
    import os

    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    d = load_dataset("digits")
    ds = Dataset("digits", d.x_train[:128], d.y_train[:128], d.x_test[:32], d.y_test[:32], 10)
    cfg = TrainConfig(
        method="ibm_hwa", noise=_NOISE, epochs=1, batch_size=64, lr=1e-2, device="cpu", progress=False,
        val_noise_draws=0, model_kwargs={"channels": [4, 8], "hidden": 16},
    )  # fmt: skip
    res = train(cfg, dataset=ds, log=lambda _s: None)
    state = {"model": res.model.state_dict(), "ranges": res.checkpoint["train_state"]["method"]["input_ranges"]}
    torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two forked gloo processes: 1 s after the other tests here, 30 s alone on a loaded 2-core machine
def test_data_parallel_ranks_pretrain_and_calibrate_alike(tmp_path):
    # each rank pre-trains and calibrates on its own shard: averaged gradients, statistics and input ranges keep
    # the ranks on one model (bit-equal: same machine, one thread, the same reductions on both)
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_ddp_worker, args=(str(tmp_path), port), nprocs=2, join=True, start_method="fork")
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a["ranges"] == b["ranges"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
