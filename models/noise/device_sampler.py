"""Monte Carlo draws of a measured profile's per-device noise, with the layout built once per evaluation.

`ProfileNoise._delta` (the reference) rebuilds every layer's device layout and draws one normal and one
uniform per *device* for every chunk of draws. This sampler builds the layout once and then, per draw:

- the independent Gaussian part of a weight's devices as ONE normal per weight: a weight's error
  sum_d c_d (mu_d + s_d z_d) is exactly N(sum c_d mu_d, sum c_d^2 s_d^2);
- the spatial part from one N(0, I_k) per physical tile: when a weight's device coefficients are a * s_d
  (bit-sliced and analog mappings), its field is a * z[tile] . R[slot] with R (cells / D, k) built once, so a
  draw costs k multiply-adds per weight, not per device, and no table k times the layer's size is kept;
- stuck-at faults sparsely: the positions of stuck devices come from geometric gaps of a Bernoulli(p)
  process (about p * n_devices numbers, not n_devices uniforms); given which devices are stuck, the other
  devices of a weight still sum to one Gaussian (the stuck ones' means and variances taken out) that the
  weight's normal drives, and a stuck device's field share is taken back in the same sums, so the joint law is
  the reference's (up to rounding: a weight whose devices are all stuck lands within a few sqrt(eps) of its
  stuck sum); a stuck device's error coef * (g_stuck - g_t) is made at the stuck devices only;
- log-normal devices (no closed form for a weight's sum) keep one normal per device, on the prebuilt layout
  stored device-major (a weight's sum adds D contiguous rows); their Gaussian read noise is again one normal
  per weight.

Each draw takes its numbers from its own generator only, layer after layer (Gaussian: weight normals, stuck
gaps, stuck kinds, tile normals; log-normal: device normals, read normals per weight, tile normals, stuck gaps,
stuck kinds), so results do not depend on how draws are chunked or on the thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from models.noise.base import DrawBuffers, map_draws

if TYPE_CHECKING:
    from models.noise.profile_noise import ProfileNoise


@dataclass
class _Layer:
    """One layer's prebuilt device layout: everything a draw needs besides its random numbers."""

    shape: tuple[int, ...]
    base: Tensor  # w + quantisation shift (*shape)
    n_weights: int
    per_weight: int  # D: devices per weight and sign array
    sign_arrays: int  # P: 1 (separate sign) or 2 (differential pair)
    # Gaussian path: the independent part summed per weight
    mean_w: Tensor | None  # (W,)
    std_w: Tensor | None  # (W,)
    # per-device terms, flat in (P, W, D) order
    coef: Tensor  # (n_dev,)
    # with faults: coef * mean, (coef * sigma)^2 and the target g_t, all (n_dev,), gathered at the stuck devices
    dev_pack: tuple[Tensor, Tensor, Tensor] | None
    weight_var: Tensor | None  # (W,): std_w^2; with faults
    stuck_g: tuple[float, float]  # what a device stuck on and one stuck off reads (g_hi, g_lo)
    # log-normal path
    # device-major copies (P, D, W) flat, so a weight's sum over its devices adds D contiguous rows
    g_t: Tensor | None  # (n_dev,)
    coef_dw: Tensor | None  # (n_dev,)
    # read noise of a log-normal layer, summed per weight (W,), and each device's share of its variance (n_dev,)
    read_std_w: Tensor | None
    read_var: Tensor | None
    # spatial: A (cells, k), its transpose (k, cells) and the number of tiles
    spatial_A: Tensor | None
    spatial_At: Tensor | None
    tiles: int
    # when coef = a (per slot p * W + w) x s (per device of a weight) and cells % D == 0: a, and the slot rows
    # R^T (k, cells / D) with R[j] = sum_d s_d A[j D + d], so a weight's spatial error is a * z[tile] . R[slot]
    slot_coef: Tensor | None = None
    slot_rows: Tensor | None = None


def stuck_positions(n_dev: int, p: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """Sorted indices of the devices a Bernoulli(p) fault process hits, from geometric gaps (float64 uniforms).

    P(gap = k) = (1 - p)^(k - 1) p, drawn as floor(log V / log(1 - p)) + 1 with V = 1 - U uniform on (0, 1];
    blocks of about p * n_dev + 6 sqrt(p * n_dev) + 64 gaps are drawn until the positions pass n_dev (the block
    size depends only on n_dev and p, so the stream a draw takes is fixed).
    """
    if p <= 0.0 or n_dev == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    if p >= 1.0:
        return torch.arange(n_dev, device=device)
    lam = p * n_dev
    block = int(lam + 6.0 * math.sqrt(lam) + 64)
    log_q = math.log1p(-p)
    parts: list[Tensor] = []
    last = -1.0
    while True:
        u = torch.rand(block, generator=generator, dtype=torch.float64, device=device)
        pos = last + torch.cumsum(torch.floor(torch.log1p(-u) / log_q) + 1.0, 0)
        inside = pos < n_dev
        parts.append(pos[inside])
        if not bool(inside[-1]):
            break
        last = float(pos[-1])
    return torch.cat(parts).long()


_PER_DRAW_STUCK = 1 << 14  # expected stuck devices per draw from which a layer's workers make its stuck weights


class DeviceSampler:
    """Draws of `ProfileNoise` on its per-device path (stuck faults, spatial field, log-normal devices).

    The spatial field is built in blocks of tiles (a bounded scratch, not an (n, W) temporary per chunk).
    """

    def __init__(self, noise: ProfileNoise, weights: dict[str, Tensor]) -> None:
        self.noise = noise
        self.lognormal = noise._is_lognormal
        self.p_lrs, self.p_hrs = noise._stuck
        self.layers = {name: self._build(name, w.detach()) for name, w in weights.items()}
        self._buffers = DrawBuffers()

    def _build(self, name: str, w: Tensor) -> _Layer:
        nz = self.noise
        g_t, coef, idx, vmask = nz._layout(name, w)
        mean, sig = nz._device_moments(idx, vmask, w)
        A = None
        tiles = 0
        n_dev = g_t.numel()
        if nz._spatial_A is not None:
            A = torch.as_tensor(nz._spatial_A, dtype=w.dtype, device=w.device) * nz.factor  # (cells, k)
            cells = A.shape[0]
            tiles = -(-n_dev // cells)
            field_var = (A**2).sum(1).repeat(tiles)[:n_dev]  # device j sits on cell j % cells of its tile
            sig = sig.pow_(2).sub_(field_var.view(g_t.shape)).clamp_(min=0.0).sqrt_()  # sig is this call's own
        coef_f = coef.expand(g_t.shape).reshape(-1).contiguous()
        faults = self.p_lrs > 0 or self.p_hrs > 0
        g_hi, g_lo = getattr(nz.profile, "stuck_conductances", (float(nz._tables.g[-1]), float(nz._tables.g[0])))
        base = (w + nz.quantization_shift(w)).reshape(-1).contiguous()
        layer = _Layer(
            shape=tuple(w.shape),
            base=base,
            n_weights=w.numel(),
            per_weight=g_t.shape[-1],
            sign_arrays=g_t.shape[0],
            mean_w=None,
            std_w=None,
            coef=coef_f,
            dev_pack=None,
            weight_var=None,
            stuck_g=(float(g_hi), float(g_lo)),
            g_t=None,
            coef_dw=None,
            read_std_w=None,
            read_var=None,
            spatial_A=A,
            spatial_At=None if A is None else A.T.contiguous(),
            tiles=tiles,
        )
        if A is not None:
            factored = _slot_rows(coef.expand(g_t.shape), A)
            if factored is not None:
                layer.slot_coef, layer.slot_rows = factored
        if self.lognormal:
            layer.g_t = _device_major(g_t)
            layer.coef_dw = _device_major(coef.expand(g_t.shape))
            if nz.read:
                rs = torch.as_tensor(nz.profile.read_sigma(nz._tables.g), dtype=w.dtype, device=w.device)
                var = (coef * rs[idx] * nz.factor) ** 2
                layer.read_std_w = torch.sqrt(var.sum(-1).sum(0)).reshape(-1).contiguous()
                layer.read_var = var.expand(g_t.shape).reshape(-1).contiguous()
        else:
            dev_mean, dev_var = coef * mean, (coef * sig) ** 2  # each device's share of its weight's mean, variance
            layer.mean_w = dev_mean.sum(-1).sum(0).reshape(-1).contiguous()
            layer.std_w = torch.sqrt(dev_var.sum(-1).sum(0)).reshape(-1).contiguous()
            if faults:  # gathered at the stuck devices
                layer.dev_pack = (
                    dev_mean.expand(g_t.shape).reshape(-1).contiguous(),
                    dev_var.expand(g_t.shape).reshape(-1).contiguous(),
                    g_t.reshape(-1),
                )
                layer.weight_var = (layer.std_w**2).contiguous()
        return layer

    # ------------------------------------------------------------------ drawing
    def __call__(self, generators: list[torch.Generator]) -> dict[str, Tensor]:
        """One draw per generator, ``{name: (len(generators), *shape)}``, in buffers the next call overwrites.

        Draw i takes its random numbers from generator i only, in the order the module's docstring lists (in
        worker threads on CPU). A log-normal draw is finished in its thread; on the Gaussian path a layer with
        many stuck devices has each draw's thread make its stuck weights too (while the draw's normals are in
        cache), and the rest of the arithmetic runs once for the whole chunk, so its cost per draw does not
        carry Python's.
        """
        n = len(generators)
        out = {name: self._buffers.get(name, lay.base, n) for name, lay in self.layers.items()}
        reads = {
            name: self._buffers.get(f"{name}/read", lay.base, n)
            for name, lay in self.layers.items()
            if lay.read_std_w is not None
        }
        zks = {
            name: self._buffers.get(f"{name}/zk", lay.base, n, (lay.tiles, lay.spatial_A.shape[1]))
            for name, lay in self.layers.items()
            if lay.spatial_A is not None
        }
        rows = 1 if self.lognormal else n  # draws whose slot field is built together
        scratch = {
            name: self._buffers.get(f"{name}/field", lay.base, n, (_field_rows(lay, rows), lay.slot_rows.shape[1]))
            for name, lay in self.layers.items()
            if lay.slot_rows is not None
        }
        taken: dict[str, list] = {name: [None] * n for name in self.layers}  # Gaussian path: see _finish

        def fill(i: int) -> None:
            gen = generators[i]
            for name, layer in self.layers.items():
                zk = zks[name][i] if name in zks else None
                if self.lognormal:
                    read = reads[name][i] if name in reads else None
                    field = scratch[name][i : i + 1] if name in scratch else None
                    self._draw_lognormal(layer, out[name][i], gen, read, zk, field)
                    continue
                z = out[name][i]
                z.normal_(generator=gen)  # z of every weight, then the stuck devices, then the tiles
                hit = self._stuck(layer, gen)
                if zk is not None:
                    zk.normal_(generator=gen)
                if hit is not None and self._stuck_per_draw(layer):  # while this draw's z is in cache
                    taken[name][i] = self._stuck_weights(layer, z, hit[0], hit[1], zk)
                else:
                    taken[name][i] = hit

        map_draws(
            fill, n, sum(lay.n_weights for lay in self.layers.values()), (lay.base for lay in self.layers.values())
        )
        if not self.lognormal:
            for name, layer in self.layers.items():
                self._finish(layer, out[name], taken[name], zks[name] if name in zks else None, scratch.get(name))
        return {name: o.view(n, *self.layers[name].shape) for name, o in out.items()}

    def _finish(self, lay: _Layer, z: Tensor, taken: list, zk: Tensor | None, scratch: Tensor | None) -> None:
        """Turn the chunk's normals z (n, W) into weights: the independent part, the weights with stuck devices,
        the spatial field, the base. ``taken``, per draw (None without faults): its stuck weights (indices,
        values), made by its worker when `_stuck_per_draw`, else its stuck devices (positions, stuck-on), whose
        weights are made here for every draw at once."""
        assert lay.mean_w is not None and lay.std_w is not None
        fixed: list[tuple[Tensor, tuple[Tensor, Tensor]]] = []
        if self._stuck_per_draw(lay):
            fixed = [(z[i], t) for i, t in enumerate(taken) if t is not None]
        elif any(t is not None and t[0].numel() for t in taken):
            hits = [(i, t) for i, t in enumerate(taken) if t is not None]
            draw = torch.repeat_interleave(
                torch.tensor([i for i, _ in hits], device=z.device),
                torch.tensor([t[0].numel() for _, t in hits], device=z.device),
            )
            pos, on = torch.cat([t[0] for _, t in hits]), torch.cat([t[1] for _, t in hits])
            fixed = [(z.view(-1), self._stuck_weights(lay, z.view(-1), pos, on, zk, draw))]
        torch.addcmul(lay.mean_w, z, lay.std_w, out=z)  # the independent part of each weight
        for target, (index, values) in fixed:
            target.index_copy_(0, index, values)
        if zk is not None:
            self._add_spatial(lay, z, zk, scratch, None)
        z += lay.base

    def _stuck_per_draw(self, lay: _Layer) -> bool:
        """Whether a draw's worker makes its stuck weights (while its normals are in cache): for layers with many
        stuck devices per draw; a small layer's would cost more in per-operation overhead than the cache saves."""
        return (self.p_lrs + self.p_hrs) * lay.coef.numel() >= _PER_DRAW_STUCK

    def _stuck(self, lay: _Layer, gen: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """(device positions, stuck-on mask) of this draw's stuck devices, or None without stuck faults."""
        p = self.p_lrs + self.p_hrs
        if p <= 0:
            return None
        pos = stuck_positions(lay.coef.numel(), p, gen, lay.coef.device)
        on = torch.rand(pos.numel(), generator=gen, dtype=torch.float64, device=pos.device) < self.p_lrs / p
        return pos, on

    def _stuck_weights(
        self, lay: _Layer, z: Tensor, pos: Tensor, on: Tensor, zk: Tensor | None, draw: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(flat indices into ``z`` of the weights with a stuck device, their value less the spatial field the
        whole weight gets later): the stuck values plus the Gaussian of the other devices, less the stuck
        devices' field share (a stuck device holds its stuck value, not its field).

        Given which devices are stuck, the other devices of a weight still sum to one Gaussian, with the stuck
        devices' means and variances taken out; ``z``, the weights' standard normals, drives it: one draw's (W,)
        (its tile normals ``zk`` (tiles, k)), or, with ``draw`` (each position's draw), the chunk's flat (n W,)
        (``zk`` (n, tiles, k)). Every weight's terms are added in the same order either way.
        """
        assert lay.dev_pack is not None and lay.weight_var is not None and lay.mean_w is not None
        w_n = lay.n_weights
        key = (pos // lay.per_weight) % w_n
        if draw is not None:
            key += draw * w_n
        if lay.sign_arrays == 1:  # positions ascend within a draw and draws ascend, so the keys do too
            uw, inv = torch.unique_consecutive(key, return_inverse=True)
        else:
            uw, inv = torch.unique(key, sorted=True, return_inverse=True)
        dev_mean, dev_var, g_t = lay.dev_pack
        coef = torch.index_select(lay.coef, 0, pos)
        value = stuck_errors(lay.stuck_g, on, torch.index_select(g_t, 0, pos), coef)
        if zk is not None:
            rows = zk.reshape(-1, zk.shape[-1])
            value -= coef * self._field_at(lay, rows, pos, 0 if draw is None else draw * lay.tiles)
        dev = (value, torch.index_select(dev_mean, 0, pos), torch.index_select(dev_var, 0, pos))
        sums = torch.zeros((uw.numel(), 3), dtype=z.dtype, device=z.device)
        sums.index_add_(0, inv, torch.stack(dev, 1))
        weight = uw if draw is None else uw % w_n
        var = torch.clamp(torch.index_select(lay.weight_var, 0, weight) - sums[:, 2], min=0.0)
        mean = torch.index_select(lay.mean_w, 0, weight) - sums[:, 1] + sums[:, 0]
        return uw, torch.addcmul(mean, torch.sqrt(var), torch.index_select(z, 0, uw))

    def _add_spatial(
        self, lay: _Layer, rows: Tensor, zk: Tensor, scratch: Tensor | None, stuck: tuple[Tensor, Tensor] | None
    ) -> None:
        """Add the spatial error of every weight of draws ``rows`` (n, W), tile normals zk (n, tiles, k), less
        the share of their stuck devices (``stuck``: device positions and their draws; a stuck device holds its
        stuck value, not its field share)."""
        n, w_n, d_n = rows.shape[0], lay.n_weights, lay.per_weight
        if lay.slot_rows is None or lay.slot_coef is None or scratch is None:  # through the per-device field
            assert lay.spatial_At is not None
            field = tile_fields(zk, lay.spatial_At).reshape(n, -1)[:, : lay.coef.numel()]
            rows += sum_devices((field * lay.coef).view(n, -1, w_n, d_n))
        else:
            per_tile, step = lay.slot_rows.shape[1], scratch.shape[1]
            for t0 in range(0, lay.tiles, step):  # the slots t0 * per_tile ... of this block of tiles
                block = tile_fields(zk[:, t0 : t0 + step], lay.slot_rows, scratch).view(n, -1)
                s0, s1 = t0 * per_tile, t0 * per_tile + block.shape[1]
                for p in range(lay.sign_arrays):  # the block's slots of sign array p: weights lo - p W ... hi - p W
                    lo, hi = max(s0, p * w_n), min(s1, (p + 1) * w_n)
                    if lo < hi:
                        rows[:, lo - p * w_n : hi - p * w_n].addcmul_(block[:, lo - s0 : hi - s0], lay.slot_coef[lo:hi])
        if stuck is not None:
            pos, draw = stuck
            field = self._field_at(lay, zk.view(-1, zk.shape[-1]), pos, draw * lay.tiles)
            w_flat = draw * w_n + (pos // d_n) % w_n
            rows.view(-1).index_add_(0, w_flat, -torch.index_select(lay.coef, 0, pos) * field)

    def _field_at(self, lay: _Layer, zk_rows: Tensor, pos: Tensor, row0: Tensor | int = 0) -> Tensor:
        """The spatial field at device positions ``pos`` only; zk_rows holds one tile's normals per row, the
        tiles of a position's draw starting at row0."""
        At = lay.spatial_At
        assert At is not None
        cells = At.shape[1]
        # gathered as (k, K) columns, so the k terms add as contiguous rows
        prod = torch.index_select(At, 1, pos % cells) * torch.index_select(
            zk_rows.T.contiguous(), 1, row0 + pos // cells
        )
        out = prod[0].clone()
        for j in range(1, prod.shape[0]):  # summed term by term, in order
            out += prod[j]
        return out

    def _draw_lognormal(
        self, lay: _Layer, row: Tensor, gen: torch.Generator, read: Tensor | None, zk: Tensor | None, scratch
    ) -> None:
        """Log-normal devices: g_t * expm1(s z), stuck values put in sparsely, then the read noise (one normal per
        weight: a sum of independent Gaussians, less the stuck devices' share) and the spatial field."""
        assert lay.g_t is not None and lay.coef_dw is not None
        s = float(self.noise.profile.family_params["s"]) * self.noise.factor
        dg = torch.empty_like(lay.g_t).normal_(generator=gen)  # device-major: (P, D, W)
        dg.mul_(s).expm1_().mul_(lay.g_t)
        if read is not None:
            read.normal_(generator=gen)
        if zk is not None:
            zk.normal_(generator=gen)
        dg.mul_(lay.coef_dw)
        hit = self._stuck(lay, gen)
        stuck = hit is not None and hit[0].numel() > 0
        if hit is not None and stuck:
            pos, on = hit
            w_n, d_n = lay.n_weights, lay.per_weight
            major = (
                (pos // (w_n * d_n)) * (w_n * d_n) + (pos % d_n) * w_n + (pos // d_n) % w_n
            )  # (p, w, d) -> (p, d, w)
            g_at = torch.index_select(lay.g_t, 0, major)
            dg.index_copy_(0, major, stuck_errors(lay.stuck_g, on, g_at, torch.index_select(lay.coef_dw, 0, major)))
        per_device = dg.view(1, lay.sign_arrays, lay.per_weight, lay.n_weights).transpose(2, 3)  # (1, P, W, D)
        sum_devices(per_device, lay.base, row.view(1, -1))
        if read is not None:
            assert lay.read_std_w is not None and lay.read_var is not None
            row.addcmul_(read, lay.read_std_w)
            if hit is not None and stuck:  # a stuck device reads its stuck value: its read variance goes
                uw, inv = torch.unique((hit[0] // lay.per_weight) % lay.n_weights, sorted=True, return_inverse=True)
                gone = torch.zeros(uw.numel(), dtype=row.dtype, device=row.device)
                gone.index_add_(0, inv, torch.index_select(lay.read_var, 0, hit[0]))
                std = torch.index_select(lay.read_std_w, 0, uw)
                left = torch.sqrt(torch.clamp(std * std - gone, min=0.0))
                row.index_add_(0, uw, (left - std) * torch.index_select(read, 0, uw))
        if zk is not None:
            at = None if hit is None or not stuck else (hit[0], torch.zeros_like(hit[0]))
            self._add_spatial(lay, row.view(1, -1), zk.unsqueeze(0), scratch, at)


_FIELD_BLOCK = 1 << 20  # numbers in one block of the slot field (4 MiB of float32): a bounded scratch in the L3 cache


def _field_rows(lay: _Layer, draws: int) -> int:
    """Tiles per block of a layer's slot field built for ``draws`` draws together: bounded on CPU; a GPU takes
    the whole field at once (its kernels are launched one by one, so blocks would only add launches)."""
    assert lay.slot_rows is not None
    if lay.base.device.type != "cpu":
        return lay.tiles
    return max(1, min(lay.tiles, _FIELD_BLOCK // (lay.slot_rows.shape[1] * draws)))


def stuck_errors(stuck_g: tuple[float, float], on: Tensor, g_t: Tensor, coef: Tensor) -> Tensor:
    """The weight errors coef * (g_stuck - g_t) of stuck devices: g_stuck is ``stuck_g[0]`` where ``on`` (stuck
    on, in the LRS), ``stuck_g[1]`` elsewhere; g_t and coef are the devices' targets and coefficients."""
    return torch.full_like(g_t, stuck_g[1]).masked_fill_(on, stuck_g[0]).sub_(g_t).mul_(coef)


def tile_fields(zk: Tensor, At: Tensor, out: Tensor | None = None) -> Tensor:
    """The field (..., tiles, cells) = zk @ At for tile normals zk (..., tiles, k) and At (k, cells), as k
    multiply-adds in order: every element is the same sum whatever the batch, chunk or thread count (a GEMM's
    blocking is not). ``out``: where to write it (its leading rows are used when it has more)."""
    o = torch.empty((*zk.shape[:-1], At.shape[1]), dtype=At.dtype, device=At.device) if out is None else out
    o = o[..., : zk.shape[-2], :]
    torch.mul(zk[..., 0:1], At[0], out=o)
    for j in range(1, At.shape[0]):
        o.addcmul_(zk[..., j : j + 1], At[j])
    return o


def sum_devices(v: Tensor, base: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """Per-weight sums (n, W) of device terms (n, P, W, D), plus ``base`` if given, added device by device in a
    fixed order (into ``out`` if given)."""
    first = v[:, 0, :, 0]
    if base is not None:
        out = torch.add(base, first, out=out)
    else:
        out = first.clone() if out is None else out.copy_(first)
    for p in range(v.shape[1]):
        for d in range(v.shape[3]):
            if p or d:
                out += v[:, p, :, d]
    return out


def _device_major(t: Tensor) -> Tensor:
    """A per-device tensor (P, *shape, D) flattened device-major, (P, D, W): device d of every weight in a row."""
    return t.reshape(t.shape[0], -1, t.shape[-1]).transpose(1, 2).contiguous().reshape(-1)


def _slot_rows(coef: Tensor, A: Tensor) -> tuple[Tensor, Tensor] | None:
    """(a (P W,), R^T (k, cells / D)) when every weight's device coefficients are a * s for one s (D,) and a
    weight's D devices share a tile (cells % D == 0); None otherwise.

    Devices are numbered (P, W, D) and tiled every ``cells``, so slot g = p W + w lies in tile g // (cells / D)
    at position g % (cells / D), and its devices' field sum_d a s_d A[cell_d] . z is a R[position] . z[tile].
    A bit-sliced weight's coefficients are sign * step / dg * 2^(jK): powers of two apart, so the test is exact.
    """
    d = coef.shape[-1]
    cells, k = A.shape
    if cells % d:
        return None
    c = coef.reshape(-1, d)
    a = c[:, 0].contiguous()
    if not bool(torch.all(a != 0)):
        return None
    s = c[0] / a[0]
    if not torch.equal(c, a.unsqueeze(1) * s):
        return None
    per_dev = A.view(cells // d, d, k)
    rows = per_dev[:, 0] * s[0]
    for j in range(1, d):  # in order, once per evaluation
        rows = rows + per_dev[:, j] * s[j]
    return a, rows.T.contiguous()


def device_draw_sampler(noise: ProfileNoise, weights: dict[str, Tensor]) -> Callable[[list[torch.Generator]], dict]:
    """The per-device sampler, or the reference closure when gradients flow through the weights."""
    if torch.is_grad_enabled() and any(w.requires_grad for w in weights.values()):

        def draws(generators: list[torch.Generator]) -> dict[str, Tensor]:
            return {
                name: noise._delta(name, w.detach(), generators, None).add_(w + noise.quantization_shift(w.detach()))
                for name, w in weights.items()
            }

        return draws
    return DeviceSampler(noise, weights)
