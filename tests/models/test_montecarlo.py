"""Monte Carlo evaluator: batched draws == one-draw loop, invariance to chunking, KPP/CI/EKL/ECE by hand."""

import math

import numpy as np
import pytest
import torch

from models.architectures import build_model
from models.montecarlo import (
    _correct_and_kl,
    _draw_stats,
    evaluate_mc,
    evaluate_mc_reference,
    expected_calibration_error,
    fit_temperature,
    summarize,
)
from models.noise.base import WeightNoise
from models.noise.factory import noise_from_spec
from tests.helpers.threads import torch_threads

torch.set_num_threads(1)


def _noise(spec: dict) -> WeightNoise:
    """The noise of a spec (never None for the specs here)."""
    noise = noise_from_spec(spec)
    assert noise is not None
    return noise


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
    # give the random net a usable decision function: fit the last layer to random labels of a fixed net
    x = torch.randn(200, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(-1)
    return model, x, y


@pytest.mark.parametrize(
    "spec",
    [
        {"family": "gaussian", "sigma": 1.0},
        {"family": "lognormal", "sigma": 0.3},
        {"family": "censored", "sigma": 1.0, "lam": 1.0, "recentre": True},
        {"family": "state_dependent", "model": "FeFET1", "sigma": 0.5},
    ],
)
def test_batched_equals_loop_reference(setup, spec):
    model, x, y = setup
    noise = _noise(spec)
    ref = evaluate_mc_reference(model, x, y, noise, 24, seed=3)
    fast = evaluate_mc(model, x, y, noise, 24, seed=3, draws_per_chunk=7, batch_size=64)
    assert np.array_equal(fast.accuracies, ref.accuracies)
    assert fast.ekl == pytest.approx(ref.ekl, rel=1e-5)
    assert fast.clean_accuracy == 1.0 and 0 < fast.mean < 1.0
    # the batched and the plain forward round their float32 logits differently (<= ~1e-5 here, as the engine
    # tests allow): a max softmax probability moves by at most half that, and so does the ECE (no input sits
    # within rounding of a bin edge for this seed); the temperature is fitted on the same clean logits
    assert fast.temperature == pytest.approx(ref.temperature, rel=1e-5)
    assert fast.ece == pytest.approx(ref.ece, abs=1e-5) and 0 < fast.ece < 1
    assert fast.ekl_matched == pytest.approx(ref.ekl_matched, rel=1e-4)


def test_chunking_does_not_change_draws(setup):
    model, x, y = setup
    noise = _noise({"family": "additive", "eta": 0.3})
    a = evaluate_mc(model, x, y, noise, 30, seed=9, draws_per_chunk=30)
    b = evaluate_mc(model, x, y, noise, 30, seed=9, draws_per_chunk=4, batch_size=50)
    c = evaluate_mc(model, x, y, noise, 30, seed=10, draws_per_chunk=30)
    assert np.array_equal(a.accuracies, b.accuracies)
    assert not np.array_equal(a.accuracies, c.accuracies)
    # the confidence sums are exact in float64 (see _draw_stats): any chunking gives the same bits
    assert a.ece == b.ece and a.temperature == b.temperature
    assert a.ekl_matched == pytest.approx(b.ekl_matched, rel=1e-6)  # float32 per-batch sums, as for EKL


def test_confidence_metrics_do_not_depend_on_the_chunking(setup):
    """ECE and matched-temperature EKL of the same draws with 3 or 16 draws per forward: identical."""
    model, x, y = setup
    y = y.clone()
    y[::4] = (y[::4] + 1) % 10  # a quarter of the clean net's answers wrong: a finite temperature and a real ECE
    noise = _noise({"family": "gaussian", "sigma": 0.5})
    a = evaluate_mc(model, x, y, noise, 16, seed=1, draws_per_chunk=3, batch_size=64)
    b = evaluate_mc(model, x, y, noise, 16, seed=1, draws_per_chunk=16, batch_size=64)
    assert np.array_equal(a.accuracies, b.accuracies)
    assert a.ece == b.ece and a.ekl_matched == b.ekl_matched and a.temperature == b.temperature
    assert 0.01 < a.temperature < 100 and not math.isnan(a.ekl_matched)


def test_summary_statistics_by_hand():
    accs = np.arange(100) / 100.0
    r = summarize(accs, kl_sum=3.0, n_correct=6, n_samples=100, kpp=(1.0, 5.0))
    assert r.mean == pytest.approx(0.495)
    assert r.std == pytest.approx(np.std(accs, ddof=1))
    half = 1.9842169515086827 * r.std / 10.0  # t_{0.975, 99}
    assert r.ci95[0] == pytest.approx(0.495 - half) and r.ci95[1] == pytest.approx(0.495 + half)
    assert r.kpp == {1.0: 0.0, 5.0: 0.04}  # lower quantile: an observed draw
    assert r.worst == 0.0 and r.best == 0.99 and r.ekl == 0.5


def test_ekl_only_over_correct_predictions():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.25, 0.25]]]))
    y = torch.tensor([0, 1, 1])  # third sample wrong
    c, k = _correct_and_kl(logits, y)
    assert c.item() == 2
    assert k.item() == pytest.approx(-math.log(0.7) - math.log(0.8))


def test_ece_by_hand():
    """Four inputs, two classes: max probabilities 0.9 (right), 0.9 (wrong), 0.62 (right), 0.55 (right)."""
    p = torch.tensor([0.9, 0.9, 0.62, 0.55])
    logits = torch.log(torch.stack([p, 1 - p], -1))[None]  # (1 draw, 4, 2)
    y = torch.tensor([0, 1, 0, 0])
    ok, _, kl_t, bins = _draw_stats(logits, y, 2.0)
    assert ok.item() == 3
    # bins m = ceil(15 p) - 1: 0.9 -> 13, 0.62 -> 9, 0.55 -> 8
    assert bins[0, 0].tolist() == [0] * 8 + [1, 1, 0, 0, 0, 2, 0]
    # |acc - conf| per bin: |1 - 1.8| + |1 - 0.62| + |1 - 0.55| over 4 inputs (float32 p: 1e-7 each)
    assert expected_calibration_error(bins.numpy(), 4)[0] == pytest.approx((0.8 + 0.38 + 0.45) / 4, abs=1e-6)
    # at T = 2 the correct inputs' -log p_y come from softmax(logits / 2)
    want = sum(-float(torch.log_softmax(logits[0, i] / 2, -1)[0]) for i in (0, 2, 3))
    assert kl_t.item() == pytest.approx(want, rel=1e-6)
    r = summarize(np.array([0.75]), 1.0, 3, 4, ece_bins=bins.numpy(), kl_matched_sum=kl_t.item(), temperature=2.0)
    assert r.ece == pytest.approx(0.4075, abs=1e-6) and r.ekl_matched == pytest.approx(want / 3, rel=1e-6)


def test_fitted_temperature_recovers_a_known_scale():
    """Labels drawn from softmax(z); the network reports 3 z: the NLL-optimal temperature is 3."""
    g = torch.Generator().manual_seed(0)
    n = 20000
    z = torch.randn(n, 10, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
    t = fit_temperature(3 * z, y)
    # the MLE of beta = 1/T has standard error 1 / sqrt(n I), I = mean Var_p(3 z) at beta = 1/3 (the Fisher
    # information of the exponential family in beta); T = 1/beta moves by T^2 times that: allow 4 of them
    p = torch.softmax(z, -1)
    info = float(((p * (3 * z) ** 2).sum(-1) - (p * 3 * z).sum(-1) ** 2).mean())
    assert t == pytest.approx(3.0, abs=4 * 9 / math.sqrt(n * info))
    # every input right by a wide margin: the NLL keeps falling as T -> 0, so the search's lower end
    assert fit_temperature(torch.tensor([[10.0, 0.0], [0.0, 10.0]]), torch.tensor([0, 1])) == 0.01


def test_clean_model_and_bad_draws(setup):
    model, x, y = setup
    r = evaluate_mc(model, x, y, None, 5)
    assert r.mean == 1.0 and r.std == 0.0 and r.worst == 1.0
    # the clean net's own calibration: the same ECE for every draw, at T = 1
    with torch.no_grad():
        _, _, _, bins = _draw_stats(model(x)[None], y, 1.0)
    assert r.ece == pytest.approx(float(expected_calibration_error(bins.numpy(), len(y))[0]), rel=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        evaluate_mc(model, x, y, None, 5, temperature=0.0)
    with pytest.raises(ValueError, match="at least one"):
        evaluate_mc(model, x, y, None, 0)


class _ChannelMixing(torch.nn.Module):
    """A model the folded layout cannot express (LayerNorm over features, softmax over channels)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.norm = torch.nn.LayerNorm(4 * 64)
        self.fc = torch.nn.Linear(4 * 64, 10)

    def forward(self, x):
        h = torch.softmax(self.conv(x), dim=1).flatten(1)
        return self.fc(self.norm(h))


def test_folded_engine_matches_vmap_and_falls_back():
    from models.batched import check_folded, folded_forward, vmap_forward
    from models.noise.apply import clean_weights

    torch.manual_seed(1)
    noise = _noise({"family": "additive", "eta": 0.1})
    x = torch.randn(6, 3, 16, 16)
    for name in ("resnet18", "vgg8"):
        model = build_model(name, in_channels=3, num_classes=10, image_size=16, width=8).eval()
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial running statistics
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
        stacked = noise.sample_batch({k: v.detach() for k, v in clean_weights(model).items()}, 3)
        a, b = folded_forward(model, stacked, x), vmap_forward(model, stacked, x)
        assert a.shape == (3, 6, 10) and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        # the swapped forwards are gone again: the model runs as before
        assert all("forward" not in vars(m) for m in model.modules())
    odd = _ChannelMixing().eval()
    stacked = noise.sample_batch({k: v.detach() for k, v in clean_weights(odd).items()}, 3)
    xo = torch.randn(5, 1, 8, 8)
    assert not check_folded(odd, stacked, xo)
    y = torch.randint(0, 10, (5,))
    r_auto = evaluate_mc(odd, xo, y, noise, 6, seed=2)
    r_ref = evaluate_mc_reference(odd, xo, y, noise, 6, seed=2)
    assert np.array_equal(r_auto.accuracies, r_ref.accuracies)


def test_engines_agree(setup):
    model, x, y = setup
    noise = _noise({"family": "gaussian", "sigma": 1.0})
    a = evaluate_mc(model, x, y, noise, 12, seed=4, engine="fold")
    b = evaluate_mc(model, x, y, noise, 12, seed=4, engine="vmap")
    assert np.array_equal(a.accuracies, b.accuracies) and a.ekl == pytest.approx(b.ekl, rel=1e-5)
    assert a.ece == pytest.approx(b.ece, abs=1e-5)  # float32 logits of two engines: see the loop reference test
    with pytest.raises(ValueError, match="engine"):
        evaluate_mc(model, x, y, noise, 2, engine="warp")


def test_parallel_normal_fill_matches_each_generator_and_survives_fork():
    """Rows filled in parallel threads equal each generator's own stream, also in a forked child."""
    import multiprocessing as mp

    from models.noise.base import randn_draws

    like = torch.empty(1)
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(4)]
    ref = torch.stack([torch.randn(300, 200, generator=g) for g in gens()])
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(randn_draws((300, 200), like, gens()), ref)  # pool created here
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_fill, args=(q,), daemon=True)
        p.start()
        try:
            got = q.get(timeout=60)  # a hang in the child times out here
            p.join(timeout=10)
        finally:
            if p.is_alive():
                p.kill()
        assert p.exitcode == 0
        assert np.array_equal(got, ref.numpy())
    finally:
        torch.set_num_threads(old)


def _child_fill(q):
    from models.noise.base import randn_draws

    torch.set_num_threads(2)
    q.put(randn_draws((300, 200), torch.empty(1), [torch.Generator().manual_seed(100 + i) for i in range(4)]).numpy())


class _SequenceMLP(torch.nn.Module):
    """Linear layers on (B, T, features) inputs: no bias, a residual, a final Linear with bias."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(8, 16, bias=False)
        self.b = torch.nn.Linear(16, 16)
        self.c = torch.nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h + torch.relu(self.b(h))
        return self.c(h).mean(1)


def test_folded_linear_chain_matches_vmap():
    """Feature-major stacked Linear layers (shared input, bias or none, 3-D inputs, residuals) equal vmap."""
    from models.batched import check_folded, folded_forward, vmap_forward
    from models.noise.apply import clean_weights

    torch.manual_seed(2)
    noise = _noise({"family": "gaussian", "sigma": 0.5})
    for model, x in (
        (build_model("mlp", in_channels=1, num_classes=10, image_size=8), torch.randn(7, 1, 8, 8)),
        (_SequenceMLP(), torch.randn(5, 3, 8)),
    ):
        model.eval()
        for n in (1, 4):
            stacked = noise.sample_batch({k: v.detach() for k, v in clean_weights(model).items()}, n)
            a, b = folded_forward(model, stacked, x), vmap_forward(model, stacked, x)
            assert a.shape == b.shape == (n, len(x), b.shape[-1])
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
            assert check_folded(model, stacked, x)


def test_affine_sampler_reuses_buffers_and_keeps_each_draw_exact():
    """Draw i equals noise.sample with generator i, call after call, also when a call has fewer draws."""
    from models.montecarlo import draw_generator
    from models.noise.apply import clean_weights
    from models.noise.base import AffineSampler

    torch.manual_seed(3)
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=8)
    weights = {k: v.detach() for k, v in clean_weights(model).items()}
    noise = _noise({"family": "gaussian", "sigma": 0.4})
    sampler = noise.draw_sampler(weights)
    assert isinstance(sampler, AffineSampler)
    with torch_threads(2):  # the parallel per-draw fill
        first = sampler([draw_generator(5, i, "cpu") for i in range(4)])
        ptr = {k: v.data_ptr() for k, v in first.items()}
        second = sampler([draw_generator(5, i, "cpu") for i in range(4, 7)])
    assert {k: v.data_ptr() for k, v in second.items()} == ptr  # same buffers, no fresh allocation
    for j, i in enumerate(range(4, 7)):
        ref = noise.sample(weights, draw_generator(5, i, "cpu"))
        for k in weights:
            assert torch.allclose(second[k][j], ref[k], rtol=0, atol=1e-6)


def test_lognormal_sampler_gives_each_draw_of_sample_bit_for_bit():
    """MTRD's log-normal draws in place (z, exp(sigma z), times w) equal noise.sample with each draw's generator."""
    from models.montecarlo import draw_generator
    from models.noise.apply import clean_weights

    torch.manual_seed(4)
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=8)
    weights = {k: v.detach() for k, v in clean_weights(model).items()}
    noise = _noise({"family": "lognormal", "sigma": 0.3})
    sampler = noise.draw_sampler(weights)
    with torch_threads(2):  # the parallel per-draw fill
        first = {k: v.clone() for k, v in sampler([draw_generator(6, i, "cpu") for i in range(3)]).items()}
        ptr = {k: v.data_ptr() for k, v in sampler([draw_generator(6, i, "cpu") for i in range(2)]).items()}
    assert ptr == {k: v.data_ptr() for k, v in sampler([draw_generator(6, 0, "cpu")]).items()}  # reused buffers
    for i in range(3):
        ref = noise.sample(weights, draw_generator(6, i, "cpu"))
        for k in weights:  # the same float operations on the same normals: equal, not close
            assert torch.equal(first[k][i], ref[k])


def test_auto_chunk_counts_the_stacked_weights():
    """Big weights with tiny activations: a chunk's stacked weights stay within the memory budget."""
    from models.montecarlo import _auto_chunk

    model = torch.nn.Linear(2000, 1000)  # 8 MB of weights, 1,000 outputs per sample
    weights = {"weight": model.weight.detach()}
    x = torch.randn(4, 2000)
    per_draw = 2_000_000 * 4 + 1000 * 4 * 4 * 2
    assert _auto_chunk(model, x, 4, torch.device("cpu"), 20 << 20, weights) == (20 << 20) // per_draw == 2
    # a roomy budget: on CPU the chunk's weights are held near 32 MiB (4 draws here, one thread)
    assert _auto_chunk(model, x, 4, torch.device("cpu"), 1 << 30, weights) == 4


def test_activations_count_new_tensors_only():
    """A view of a layer's input (Flatten, an in-place ReLU) holds no memory: only the Linear's 5 outputs count."""
    from models.architectures import SmallCNN
    from models.montecarlo import activation_numel

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5), torch.nn.ReLU(inplace=True))
    assert activation_numel(model, torch.randn(1, 3, 4)) == 5
    # the small CNN on 32x32: conv, ReLU (32x32x16 each), pool, conv, ReLU (16x16x32 each), pool, then
    # the two Linear layers (128, 10) and their ReLU; its Flatten is a view
    expected = 2 * 16 * 32 * 32 + 16 * 16 * 16 + 2 * 32 * 16 * 16 + 32 * 8 * 8 + 2 * 128 + 10
    assert activation_numel(SmallCNN(3, 10, 32), torch.randn(1, 3, 32, 32)) == expected == 55_562


def test_forward_parts_keep_a_cpu_pass_in_the_cache_and_a_weight_heavy_one_whole():
    """Inputs per pass: the cache over the pass's activations, no fewer than the weights over a sample's."""
    from models.montecarlo import _CPU_CACHE_BYTES, forward_part

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    cnn_sample, cnn_weights = 55_562 * 4, 268_464 * 4  # the small CNN on 32x32 images
    assert forward_part(cnn_sample, cnn_weights, 2, 1000, cpu) == _CPU_CACHE_BYTES // (2 * cnn_sample) == 75
    assert forward_part(cnn_sample, cnn_weights, 1, 1000, cpu) == 150
    # weights of 50 MB: a part re-reads them, so it holds at least as many bytes of activations
    assert forward_part(cnn_sample, 50_000_000, 8, 1000, cpu) == -(-50_000_000 // cnn_sample) == 225
    # the MLP 3072-256-128-10: 778 activations a sample against 820k weights: one pass
    assert forward_part(778 * 4, 820_480 * 4, 10, 1000, cpu) == 1000
    assert forward_part(cnn_sample, cnn_weights, 2, 1000, gpu) == 1000  # a GPU takes the whole batch
    assert forward_part(cnn_sample, cnn_weights, 2, 40, cpu) == 40  # never more than the batch


def _count_passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The input counts of the batched forward passes Monte Carlo makes from now on."""
    from models import montecarlo

    sizes: list[int] = []
    folded = montecarlo.folded_forward

    def counted(model, stacked, x):
        sizes.append(len(x))
        return folded(model, stacked, x)

    monkeypatch.setattr(montecarlo, "folded_forward", counted)
    return sizes


def test_forward_parts_do_not_change_the_draws(setup, monkeypatch):
    """Batches of 64 run in passes of 16 inputs (a cache figure of 16 samples x 4 draws), the last chunk's 2
    draws too (parts follow the nominal chunk): the same accuracies, and confidence sums that differ only by
    the float rounding of the logits (as batched vs plain above)."""
    from models import montecarlo

    model, x, y = setup
    noise = _noise({"family": "gaussian", "sigma": 0.5})
    whole = evaluate_mc(model, x, y, noise, 10, seed=4, draws_per_chunk=4, batch_size=64, engine="fold")
    sample_bytes = montecarlo.activation_numel(model, x[:1]) * 4
    monkeypatch.setattr(montecarlo, "_CPU_CACHE_BYTES", 4 * 16 * sample_bytes)
    sizes = _count_passes(monkeypatch)
    parts = evaluate_mc(model, x, y, noise, 10, seed=4, draws_per_chunk=4, batch_size=64, engine="fold")
    assert sizes == 3 * ([16] * 4 + [16] * 4 + [16] * 4 + [8])  # 3 chunks of batches 64, 64, 64, 8
    assert np.array_equal(parts.accuracies, whole.accuracies)
    assert parts.ekl == pytest.approx(whole.ekl, rel=1e-5)
    assert parts.clean_accuracy == whole.clean_accuracy and parts.temperature == pytest.approx(whole.temperature)
    assert parts.ece == pytest.approx(whole.ece, abs=1e-5)


def test_analog_tiles_keep_whole_batches(setup, monkeypatch):
    """Analog tiles draw their noise per pass, so splitting would change the draws: their batches stay whole."""
    from models import montecarlo
    from models.analog import analog_tiles

    model, x, y = setup
    monkeypatch.setattr(montecarlo, "_CPU_CACHE_BYTES", 1)
    sizes = _count_passes(monkeypatch)
    noise = _noise({"family": "gaussian", "sigma": 0.5})
    with analog_tiles(model, "ideal") as tiles:
        evaluate_mc(model, x, y, tiles.draws(noise), 4, seed=1, draws_per_chunk=4, batch_size=64, engine="fold")
    assert sizes == [64, 64, 64, 8]
    evaluate_mc(model, x, y, noise, 4, seed=1, draws_per_chunk=4, batch_size=64, engine="fold")
    assert max(sizes[4:]) < 64  # the same call without tiles is split


def test_a_fresh_read_per_input_batch_matches_the_loop_and_ignores_the_chunking(setup):
    """Read noise redrawn per batch of inputs (issue 16 item 4): batched == the one-draw loop, any chunking."""
    model, x, y = setup
    chip = _noise({"family": "gaussian", "sigma": 0.3})
    read = _noise({"family": "gaussian", "sigma": 0.6})
    ref = evaluate_mc_reference(model, x, y, chip, 12, seed=5, read_noise=read, batch_size=50)
    a = evaluate_mc(model, x, y, chip, 12, seed=5, draws_per_chunk=5, batch_size=50, read_noise=read)
    b = evaluate_mc(model, x, y, chip, 12, seed=5, draws_per_chunk=12, batch_size=50, read_noise=read)
    assert np.array_equal(a.accuracies, ref.accuracies) and np.array_equal(a.accuracies, b.accuracies)
    frozen = evaluate_mc(model, x, y, chip, 12, seed=5, batch_size=50)  # the same chips without the reads
    assert not np.array_equal(a.accuracies, frozen.accuracies)


def test_each_input_batch_gets_its_own_read_and_a_draw_keeps_its_chip(setup):
    from models.montecarlo import with_fresh_read
    from models.noise.apply import clean_weights

    model, _, _ = setup
    weights = {k: v.detach() for k, v in clean_weights(model).items()}
    chip = _noise({"family": "gaussian", "sigma": 0.3}).draw_sampler(weights)
    reads = _noise({"family": "gaussian", "sigma": 0.6}).draw_sampler(weights)
    stacked = chip([torch.Generator().manual_seed(1)])
    b0 = with_fresh_read(stacked, weights, reads, 0, [3], 0, "cpu")
    b1 = with_fresh_read(stacked, weights, reads, 0, [3], 1, "cpu")
    again = with_fresh_read(stacked, weights, reads, 0, [3], 0, "cpu")
    name = next(iter(weights))
    assert torch.equal(b0[name], again[name]) and not torch.equal(b0[name], b1[name])
    # the read's noise sits on the chip's weights: b0 - chip is the read sampler's own draw for (seed, 3, 1, 0)
    from models.montecarlo import draw_generator

    own = reads([draw_generator(0, 3, "cpu", 1, 0)])
    for k in weights:
        # float32: (chip + (read - w)) - chip against read - w differ by at most 3 roundings of values <= M
        m = float(max(b0[k].abs().max(), own[k].abs().max(), stacked[k].abs().max()))
        torch.testing.assert_close(b0[k] - stacked[k], own[k] - weights[k], rtol=0, atol=4 * m * 2**-24)


def _mc_rank(rank: int, out: str, port: int) -> None:
    """One of 2 gloo processes: the same net and noise as the single-process run, draws split round-robin."""
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2")
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        r = _mc_confidence()
        if rank == 0:
            accs = torch.from_numpy(r.accuracies)  # a tensor, so the file loads with weights_only=True
            torch.save({"ece": r.ece, "ekl_matched": r.ekl_matched, "t": r.temperature, "accs": accs}, out)
    finally:
        torch.distributed.destroy_process_group()


def _mc_confidence():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = build_model("mlp", in_channels=1, num_classes=10, image_size=8)
    x = torch.randn(120, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(120) % 10
    with torch.no_grad():
        y[::2] = model(x[::2]).argmax(-1)  # half the labels the clean net's own: a finite temperature
    return evaluate_mc(model, x, y, _noise({"family": "gaussian", "sigma": 0.5}), 9, seed=2, draws_per_chunk=2)


@pytest.mark.slow
def test_confidence_metrics_are_gathered_over_processes(tmp_path):
    """Under torch.distributed (2 gloo processes) the ECE bins and matched EKL sums are all-reduced like the KL."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    one = _mc_confidence()
    out = str(tmp_path / "two.pt")
    mp.start_processes(_mc_rank, args=(out, port), nprocs=2, join=True, start_method="fork")
    two = torch.load(out, weights_only=True)
    assert np.array_equal(one.accuracies, two["accs"].numpy()) and one.temperature == two["t"]
    # each process stacks other draws into a chunk, so a float32 GEMM may round logits differently (~1e-7
    # relative): a confidence moves by about that, the ECE (a mean of |acc - conf| sums) by no more
    assert abs(one.ece - two["ece"]) < 1e-6 and one.ece > 0
    assert abs(one.ekl_matched - two["ekl_matched"]) < 1e-6 * max(1.0, one.ekl_matched)
