"""Monte Carlo draws of a measured profile's per-device noise, with the layout built once per evaluation.

`ProfileNoise._delta` (the reference) rebuilds every layer's device layout and draws one normal and one
uniform per *device* for every chunk of draws. This sampler builds the layout once and then, per draw:

- the independent Gaussian part of a weight's devices as ONE normal per weight: a weight's error
  sum_d c_d (mu_d + s_d z_d) is exactly N(sum c_d mu_d, sum c_d^2 s_d^2);
- the spatial part as a low-rank matmul per physical tile (z_k @ A^T), contracted with the coefficients;
- stuck-at faults sparsely: the positions of stuck devices come from geometric gaps of a Bernoulli(p)
  process (about p * n_devices numbers, not n_devices uniforms), and a stuck device's share of its weight's
  Gaussian is removed by drawing it conditionally on the weight's total (X_d | T ~ N(m_d + s_d^2/S^2 (T - M),
  s_d^2 (1 - s_d^2/S^2)); several stuck devices of one weight are taken one after the other on what is left),
  so the joint law is the reference's exactly;
- log-normal devices (no closed form for a weight's sum) keep one normal per device, on the prebuilt layout.

Each draw takes its numbers from its own generator only (layer after layer: weight normals, tile normals,
stuck gaps, stuck kinds, conditional normals), so results do not depend on how draws are chunked.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
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
    # with faults: ((n_dev, 2) coef * mean and (coef * sigma)^2, (2 n_dev,) stuck-on and stuck-off errors interleaved)
    dev_pack: tuple[Tensor, Tensor] | None
    weight_pack: Tensor | None  # (W, 2): mean_w, std_w^2; with faults
    stuck_hi: Tensor | None  # coef * (g_hi - g_t) (n_dev,)
    stuck_lo: Tensor | None  # coef * (g_lo - g_t) (n_dev,)
    # log-normal path
    g_t: Tensor | None  # (n_dev,)
    read_sigma: Tensor | None  # (n_dev,) or None
    # spatial: A (cells, k) and the number of tiles
    spatial_A: Tensor | None
    tiles: int
    # per sign array p: (first tile, weight offset in it, B (k, tiles_p, weights per tile)) with
    # B[w] = sum_d c_d A[cell_d], when a weight's devices never straddle two tiles (cells % D == 0)
    tile_blocks: list[tuple[int, int, Tensor]] | None = None


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


class DeviceSampler:
    """Draws of `ProfileNoise` on its per-device path (stuck faults, spatial field, log-normal devices)."""

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
            cell = torch.arange(n_dev, device=w.device) % cells
            sig = torch.sqrt(torch.clamp(sig**2 - (A**2).sum(1)[cell].view(g_t.shape), min=0.0))
            tiles = -(-n_dev // cells)
        coef_f = coef.expand(g_t.shape).reshape(-1).contiguous()
        stuck_hi = stuck_lo = None
        if self.p_lrs > 0 or self.p_hrs > 0:
            g_hi, g_lo = getattr(nz.profile, "stuck_conductances", (float(nz._tables.g[-1]), float(nz._tables.g[0])))
            gt_f = g_t.reshape(-1)
            stuck_hi, stuck_lo = coef_f * (g_hi - gt_f), coef_f * (g_lo - gt_f)
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
            weight_pack=None,
            stuck_hi=stuck_hi,
            stuck_lo=stuck_lo,
            g_t=None,
            read_sigma=None,
            spatial_A=A,
            tiles=tiles,
        )
        if A is not None and not self.lognormal:
            layer.tile_blocks = _tile_blocks(coef.expand(g_t.shape), A)
        if self.lognormal:
            layer.g_t = g_t.reshape(-1).contiguous()
            if nz.read:
                rs = torch.as_tensor(nz.profile.read_sigma(nz._tables.g), dtype=w.dtype, device=w.device)
                layer.read_sigma = (rs[idx] * nz.factor).expand(g_t.shape).reshape(-1).contiguous()
        else:
            layer.mean_w = (coef * mean).sum(-1).sum(0).reshape(-1).contiguous()
            layer.std_w = torch.sqrt(((coef * sig) ** 2).sum(-1).sum(0)).reshape(-1).contiguous()
            if stuck_hi is not None and stuck_lo is not None:  # rows gathered together at the stuck devices
                dm, dv = (coef * mean).reshape(-1), ((coef * sig) ** 2).reshape(-1)
                layer.dev_pack = (
                    torch.stack([dm, dv], 1).contiguous(),
                    torch.stack([stuck_hi, stuck_lo], 1).reshape(-1).contiguous(),  # 2 pos: on, 2 pos + 1: off
                )
                layer.weight_pack = torch.stack([layer.mean_w, layer.std_w**2], 1).contiguous()
        return layer

    # ------------------------------------------------------------------ drawing
    def __call__(self, generators: list[torch.Generator]) -> dict[str, Tensor]:
        """One draw per generator, ``{name: (len(generators), *shape)}``, in buffers the next call overwrites.

        Each draw takes its random numbers from its own generator (in worker threads on CPU); the arithmetic
        then runs once for the whole chunk (Gaussian path), so its cost per draw does not carry Python's.
        """
        n = len(generators)
        out = {name: self._buffers.get(name, lay.base, n) for name, lay in self.layers.items()}
        taken: dict[str, list] = {name: [None] * n for name in self.layers}  # per draw: stuck hits
        fields = {
            name: torch.empty((n, lay.tiles, lay.spatial_A.shape[1]), dtype=lay.base.dtype, device=lay.base.device)
            for name, lay in self.layers.items()
            if lay.spatial_A is not None and not self.lognormal
        }

        def fill(i: int) -> None:
            gen = generators[i]
            for name, layer in self.layers.items():
                row = out[name][i]
                if self.lognormal:
                    self._draw_lognormal(layer, row, gen)
                    continue
                row.normal_(generator=gen)  # z of every weight, then the stuck devices, then the tile normals
                taken[name][i] = self._stuck(layer, gen)
                if name in fields:
                    fields[name][i].normal_(generator=gen)

        map_draws(
            fill, n, sum(lay.n_weights for lay in self.layers.values()), (lay.base for lay in self.layers.values())
        )
        if not self.lognormal:
            for name, layer in self.layers.items():
                self._finish(layer, out[name], taken[name], fields.get(name))
        return {name: o.view(n, *self.layers[name].shape) for name, o in out.items()}

    def _finish(self, lay: _Layer, z: Tensor, hits: list, zk: Tensor | None) -> None:
        """Turn the chunk's normals z (n, W) into weights: Gaussian part, stuck devices, spatial field, base."""
        assert lay.mean_w is not None and lay.std_w is not None
        n = z.shape[0]
        pos = on = draw = None
        if hits and hits[0] is not None:
            sizes = [h[0].numel() for h in hits]
            if sum(sizes):
                pos = torch.cat([h[0] for h in hits])
                on = torch.cat([h[1] for h in hits])
                draw = torch.repeat_interleave(torch.arange(n, device=z.device), torch.tensor(sizes, device=z.device))
        fixed = None
        if pos is not None and on is not None and draw is not None:
            fixed = self._stuck_weights(lay, z, pos, on, draw)
        torch.addcmul(lay.mean_w, z, lay.std_w, out=z)  # the independent part of each weight
        flat = z.view(-1)
        if fixed is not None:
            flat.index_copy_(0, fixed[0], fixed[1])
        if zk is not None:
            z += self._spatial_per_weight(lay, zk)
            if pos is not None and draw is not None:  # a stuck device holds its stuck value, not its field share
                w_flat = draw * lay.n_weights + (pos // lay.per_weight) % lay.n_weights
                field = self._field_at(lay, zk.view(-1, zk.shape[-1]), pos, draw * lay.tiles)
                flat.index_add_(0, w_flat, -torch.index_select(lay.coef, 0, pos) * field)
        z += lay.base

    def _field(self, lay: _Layer, gen: torch.Generator) -> Tensor | None:
        """The spatial error of every device (n_dev,), one N(0, I_k) per physical tile, or None."""
        if lay.spatial_A is None:
            return None
        A = lay.spatial_A
        zk = torch.empty((lay.tiles, A.shape[1]), dtype=A.dtype, device=A.device).normal_(generator=gen)
        return tile_fields(zk, A).reshape(-1)[: lay.coef.numel()]

    def _stuck(self, lay: _Layer, gen: torch.Generator) -> tuple[Tensor, Tensor] | None:
        """(device positions, stuck-on mask) of this draw's stuck devices, or None without stuck faults."""
        p = self.p_lrs + self.p_hrs
        if p <= 0:
            return None
        pos = stuck_positions(lay.coef.numel(), p, gen, lay.coef.device)
        on = torch.rand(pos.numel(), generator=gen, dtype=torch.float64, device=pos.device) < self.p_lrs / p
        return pos, on

    def _stuck_weights(self, lay: _Layer, z: Tensor, pos: Tensor, on: Tensor, draw: Tensor) -> tuple[Tensor, Tensor]:
        """(flat (draw, weight) index of weights with a stuck device, their independent part): the stuck values
        plus the Gaussian of the other devices.

        Given which devices are stuck, the other devices of a weight still sum to one Gaussian, with the stuck
        devices' means and variances taken out; ``z`` (n, W), the weight's standard normal, drives it.
        """
        assert lay.dev_pack is not None and lay.weight_pack is not None
        w_of = (pos // lay.per_weight) % lay.n_weights
        key = draw * lay.n_weights + w_of
        if lay.sign_arrays == 1:  # positions ascend within a draw and draws ascend, so the keys do too
            uw, inv = torch.unique_consecutive(key, return_inverse=True)
        else:
            uw, inv = torch.unique(key, sorted=True, return_inverse=True)
        mean_var, stuck_values = lay.dev_pack
        dev = F.embedding(pos, mean_var)  # (K, 2) rows: the device's mean and variance
        value = torch.index_select(stuck_values, 0, 2 * pos + (~on).long()).to(z.dtype)  # stuck-on, stuck-off
        sums = torch.zeros((uw.numel(), 3), dtype=z.dtype, device=z.device)
        sums.index_add_(0, inv, torch.stack([value, dev[:, 0], dev[:, 1]], 1))
        wts = F.embedding(uw % lay.n_weights, lay.weight_pack)  # (k, 2): the weight's mean and variance
        var = torch.clamp(wts[:, 1] - sums[:, 2], min=0.0)
        zu = torch.index_select(z.reshape(-1), 0, uw)
        return uw, torch.addcmul(wts[:, 0] - sums[:, 1] + sums[:, 0], torch.sqrt(var), zu)

    def _spatial_per_weight(self, lay: _Layer, zk: Tensor) -> Tensor:
        """The spatial error of every weight, (n, W) for tile normals zk (n, tiles, k): sum_d c_d A[cell_d] . z."""
        n = zk.shape[0]
        if lay.tile_blocks is None:  # devices of one weight may straddle tiles: through the per-device field
            assert lay.spatial_A is not None
            field = tile_fields(zk, lay.spatial_A).reshape(n, -1)[:, : lay.coef.numel()]
            return sum_devices((field * lay.coef).view(n, -1, lay.n_weights, lay.per_weight))
        out = None
        for t0, offset, B in lay.tile_blocks:  # one block per sign array: (k, tiles, weights per tile)
            z = zk[:, t0 : t0 + B.shape[1]]
            part = B[0] * z[:, :, 0:1]
            for j in range(1, B.shape[0]):  # k multiply-adds, in order: the same sums whatever the chunk
                part.addcmul_(B[j], z[:, :, j : j + 1])
            part = part.view(n, -1)[:, offset : offset + lay.n_weights]
            out = part if out is None else out + part
        assert out is not None
        return out

    def _field_at(self, lay: _Layer, zk_rows: Tensor, pos: Tensor, row0: Tensor | int = 0) -> Tensor:
        """The spatial field at device positions ``pos`` only; zk_rows holds one tile's normals per row, the
        tiles of a position's draw starting at row0."""
        A = lay.spatial_A
        assert A is not None
        cells = A.shape[0]
        prod = F.embedding(pos % cells, A) * F.embedding(row0 + pos // cells, zk_rows)  # row gathers, (K, k)
        out = prod[:, 0].clone()
        for j in range(1, prod.shape[1]):  # summed term by term, in order
            out += prod[:, j]
        return out

    def _draw_lognormal(self, lay: _Layer, row: Tensor, gen: torch.Generator) -> None:
        """Log-normal devices: g_t * expm1(s z) (+ read noise, spatial field), stuck values put in sparsely."""
        assert lay.g_t is not None
        s = float(self.noise.profile.family_params["s"]) * self.noise.factor
        dg = torch.empty_like(lay.g_t).normal_(generator=gen)
        dg.mul_(s).expm1_().mul_(lay.g_t)
        if lay.read_sigma is not None:
            dg.addcmul_(torch.empty_like(dg).normal_(generator=gen), lay.read_sigma)
        field = self._field(lay, gen)
        if field is not None:
            dg += field
        dg.mul_(lay.coef)
        hit = self._stuck(lay, gen)
        if hit is not None and hit[0].numel():
            assert lay.stuck_hi is not None and lay.stuck_lo is not None
            pos, on = hit
            value = torch.where(on, torch.index_select(lay.stuck_hi, 0, pos), torch.index_select(lay.stuck_lo, 0, pos))
            dg.index_copy_(0, pos, value.to(dg.dtype))
        torch.add(lay.base, sum_devices(dg.view(1, -1, lay.n_weights, lay.per_weight))[0], out=row)


def tile_fields(zk: Tensor, A: Tensor) -> Tensor:
    """The spatial field (..., tiles, cells) = zk @ A^T for tile normals zk (..., tiles, k), as k multiply-adds
    in order: every element is the same sum whatever the batch, chunk or thread count (a GEMM's blocking is not)."""
    out = zk[..., 0:1] * A[:, 0]
    for j in range(1, A.shape[1]):
        out.addcmul_(zk[..., j : j + 1], A[:, j])
    return out


def sum_devices(v: Tensor) -> Tensor:
    """Per-weight sums (n, W) of device terms (n, P, W, D), added device by device in a fixed order."""
    out = v[:, 0, :, 0].clone()
    for p in range(v.shape[1]):
        for d in range(v.shape[3]):
            if p or d:
                out += v[:, p, :, d]
    return out


def _tile_blocks(coef: Tensor, A: Tensor) -> list[tuple[int, int, Tensor]] | None:
    """Per sign array, each weight's spatial row sum_d c_d A[cell_d], laid out tile by tile (k, tiles, weights per tile) for k multiply-adds per chunk.

    Devices are numbered (P, W, D) and tiled every ``cells`` devices; with cells % D == 0 a weight's D devices
    share one tile, so its spatial error is z[tile] . B[w]. None when they may straddle.
    """
    p_arrays, d = coef.shape[0], coef.shape[-1]
    cells, k = A.shape
    if cells % d:
        return None
    n_w = coef[0].numel() // d
    per_tile = cells // d
    blocks = []
    for p in range(p_arrays):
        start = p * n_w * d  # first device of array p
        t0, offset = start // cells, (start % cells) // d
        cell = (start + torch.arange(n_w * d, device=A.device)) % cells
        rows = (coef[p].reshape(n_w, d, 1) * A[cell].view(n_w, d, k)).sum(1)  # (W, k)
        n_tiles = -(-(offset + n_w) // per_tile)
        B = torch.zeros((n_tiles * per_tile, k), dtype=A.dtype, device=A.device)
        B[offset : offset + n_w] = rows
        blocks.append((t0, offset, B.view(n_tiles, per_tile, k).permute(2, 0, 1).contiguous()))
    return blocks


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
