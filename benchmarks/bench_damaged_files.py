"""Benchmark: damaged profile, plan and model files through the real `rram` commands (issue 15, item 9 and target 3).

Each case writes one damaged file, runs the command that uses it in a fresh process and reports the exit
status, the number of stderr lines, the wall time and the process's peak resident memory next to the
same command on the intact file: the target is one line, within 5 s, and no more memory than the intact
file needs plus the file's own size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from cli_peak import run_rram  # benchmarks/ beside this script

from calibration.profile import NoiseProfile, save_profile
from hil.deploy.placement import build_plan
from hil.deploy.plan import save_plan
from models.architectures import build_model
from models.checkpoint import model_record, save_checkpoint
from models.config import TrainConfig

BOARD = "sim://?seed=3&rows=8&cols=8"


def _run(argv: list[str], peak_file: Path) -> dict[str, Any]:
    """Exit status, stderr lines, seconds and peak RSS (MiB) of `rram ARGV` in a fresh process."""
    r = run_rram(argv, peak_file)
    err = r.stderr.strip()
    return {
        "rc": r.rc,
        "stderr_lines": len([ln for ln in err.splitlines() if ln.strip()]),
        "seconds": r.seconds,
        "peak_rss_mib": r.peak_rss_mib,
        "first_line": err.splitlines()[0][:150] if err else "",
    }


class Digits:
    in_channels, image_size, num_classes = 1, 8, 10


def _model(path: Path, edit: Callable[[dict], None] | None = None) -> Path:
    net = build_model("mlp", in_channels=1, num_classes=10, image_size=8, hidden=[4])
    rec = model_record(TrainConfig(model="mlp", model_kwargs={"hidden": [4]}), Digits(), net)
    if edit is not None:
        edit(rec)
    save_checkpoint(rec, path)
    return path


def _h5(src: Path, dst: Path, edit: Callable[[h5py.File], None]) -> Path:
    dst.write_bytes(src.read_bytes())
    with h5py.File(dst, "r+") as f:
        edit(f)
    return dst


def _replace(f: h5py.File, name: str, **kw: object) -> None:
    del f[name]
    f.create_dataset(name, **kw)


def cases(d: Path) -> dict[str, tuple[list[str], list[str]]]:
    """Case name -> (argv on the damaged file, argv on the intact one)."""
    prof = save_profile(NoiseProfile.from_paper("lognormal", s=0.3, pulses_verified=4.0), d / "p.h5")
    ibm = save_profile(NoiseProfile.from_paper("ibm_reram", time="1s", pulses_verified=4.0), d / "ibm.h5")
    model = _model(d / "m.pt")
    plan = save_plan(build_plan(torch.nn.Linear(6, 4), 4e-6, 36e-6, {}, rows=4, cols=4), d / "plan.h5")
    (d / "out.h5").write_bytes(b"")

    def show(p: Path) -> list[str]:
        return ["profile", "show", str(p)]

    def program(p: Path) -> list[str]:
        return ["program", str(model), "--resume", "--plan", str(p), "-o", str(d / "out.h5"), "--port", BOARD]

    def evaluate(p: Path) -> list[str]:
        return ["evaluate", str(p), "--lognormal", "0.1", "--mc", "2"]

    def tile(f: h5py.File) -> None:
        t = f["tiles"][3]
        t["r0"] = 5
        f["tiles"][3] = t

    def nan_target(f: h5py.File) -> None:
        t = f["layers/000/targets"][...]
        t[1, 2] = np.nan
        f["layers/000/targets"][...] = t

    def kwarg(key: str, value: object) -> Callable[[dict], None]:
        return lambda r: r["arch"]["kwargs"].__setitem__(key, value)

    return {
        "profile s = inf": (show(_h5(prof, d / "p1.h5", lambda f: f["family_params"].attrs.__setitem__("s", np.inf))), show(prof)),
        "profile levels_g of 2^40": (show(_h5(prof, d / "p2.h5", lambda f: _replace(f, "levels_g", shape=(2**40,), dtype="f8"))), show(prof)),
        "profile bits_per_device 2^40": (show(_h5(prof, d / "p3.h5", lambda f: f.attrs.__setitem__("bits_per_device", 2**40))), show(prof)),
        "profile pulses_verified = NaN (ibm)": (show(_h5(ibm, d / "p4.h5", lambda f: f["family_params"].attrs.__setitem__("pulses_verified", np.nan))), show(ibm)),
        "plan tile outside its layer": (program(_h5(plan, d / "q1.h5", tile)), program(plan)),
        "plan NaN target": (program(_h5(plan, d / "q2.h5", nan_target)), program(plan)),
        "model wrong shape": (evaluate(_model(d / "m1.pt", lambda r: r["state_dict"].__setitem__("net.1.weight", torch.zeros(7, 64)))), evaluate(model)),
        "model without arch": (evaluate(_model(d / "m2.pt", lambda r: r.pop("arch"))), evaluate(model)),
        "model hidden=[2**40]": (evaluate(_model(d / "m3.pt", kwarg("hidden", [2**40]))), evaluate(model)),
        "model num_classes=-3": (evaluate(_model(d / "m4.pt", lambda r: r["arch"].__setitem__("num_classes", -3))), evaluate(model)),
        "train --model-arg hidden=16": (["train", "--model", "mlp", "--model-arg", "hidden=16", "-o", str(d / "t.pt")], ["train", "--help"]),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        peak = Path(tmp) / "peak"
        for name, (damaged, intact) in cases(Path(tmp)).items():
            rows[name] = {"damaged": _run(damaged, peak), "intact_peak_rss_mib": _run(intact, peak)["peak_rss_mib"]}
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for name, r in rows.items():
        d = r["damaged"]
        print(
            f"{name:36s} rc {d['rc']}  {d['stderr_lines']} line  {d['seconds']:5.2f} s  "
            f"peak {d['peak_rss_mib']:6.0f} MiB (intact {r['intact_peak_rss_mib']:4.0f})  {d['first_line']}"
        )


if __name__ == "__main__":
    main()
