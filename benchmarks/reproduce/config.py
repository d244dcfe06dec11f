"""Protocol files: one paper's setting, its CPU stand-in, its methods and its claims, read from TOML or JSON.

A protocol file (``configs/NAME.toml``) holds, at the top level: ``id``, ``paper`` (the paper's short name),
``paper_file`` (its text under /work/shared/papers), ``source`` (the table or section reproduced), ``notes``;
``[methods.LABEL]`` tables (``method`` = a registered training method, ``options`` = its Options values,
``grid`` = {option: [values]} chosen on the validation split, ``select_metric``, ``train`` = TrainConfig
overrides for this label); optional ``[profiles.NAME]`` (hand-written noise profiles, see profiles.py);
``[[claims]]``; and the two sections ``[full]`` (the paper's setting) and ``[standin]`` (digits/MNIST-1D,
minutes on 2 CPU cores). A section names the data, network and training budget, ``[SECTION.train_noise]``
(name -> noise spec every noisy method trains under), ``[SECTION.conditions.NAME]`` (``train`` = a
train_noise name, ``noise`` = the evaluation noise spec, ``analog`` = optional tile preset and changes),
``[SECTION.options.LABEL]`` / ``[SECTION.grids.LABEL]`` (per-section option and grid overrides) and
``[SECTION.train.LABEL]`` (per-section TrainConfig overrides). Every method option is a plain entry, so a
new option is a config edit; `check_protocol` instantiates each method's Options with the values.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
METRICS = ("mean", "ekl", "ekl_matched", "ece", "clean", "worst")  # plus "kpp:K"
HIGHER_IS_BETTER = {"mean": True, "clean": True, "worst": True, "ekl": False, "ekl_matched": False, "ece": False}
TRAIN_KEYS = {
    "epochs",
    "batch_size",
    "accumulate",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "scheduler",
    "amp",
}
SECTION_KEYS = {
    "source",
    "data",
    "model",
    "model_kwargs",
    "seeds",
    "val_fraction",
    "val_draws",
    "draws",
    "kpp",
    "select_metric",
    "select_condition",
    "eval_batch_size",
    "calibration_samples",
    "train_noise",
    "conditions",
    "options",
    "grids",
    "train",
    *TRAIN_KEYS,
}


@dataclass(frozen=True)
class MethodSpec:
    """One method label of a protocol: a registered method with fixed options and an optional validation grid."""

    label: str
    method: str
    options: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    select_metric: str | None = None  # metric of the validation choice (default: the section's)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides of this label

    @property
    def trains_clean(self) -> bool:
        """Vanilla never reads the run's noise, so its runs are trained without one and shared across noises."""
        return self.method == "vanilla"


@dataclass(frozen=True)
class Condition:
    """One evaluation condition: the training noise the models were trained under and the noise they are tested under."""

    name: str
    train: str
    noise: dict[str, Any] | None
    analog: dict[str, Any] | None = None  # {"preset": "ibm_table1", **field changes}


@dataclass(frozen=True)
class Claim:
    """One paper claim as a paired test: metric of ``a`` versus ``b`` on ``condition`` (conditions averaged per seed)."""

    id: str
    paper: str
    text: str
    metric: str
    condition: tuple[str, ...]
    a: str
    b: str
    direction: str = ">"  # ">": a higher is the claim; "<": a lower (EKL, ECE)
    margin: float = 0.0  # in the metric's units (accuracy as a fraction)
    source: str = ""


@dataclass(frozen=True)
class Section:
    """The full protocol or its stand-in: data, network, training budget, noises, conditions, draws, seeds."""

    kind: str
    source: str
    data: str
    model: str
    model_kwargs: dict[str, Any]
    train: dict[str, Any]  # TrainConfig fields shared by every label
    seeds: int
    val_fraction: float
    val_draws: int
    draws: int
    kpp: tuple[float, ...]
    select_metric: str
    select_condition: str  # "train" (validation under the training noise) or a condition name
    eval_batch_size: int
    calibration_samples: int
    train_noise: dict[str, dict[str, Any] | None]
    conditions: dict[str, Condition]
    options: dict[str, dict[str, Any]]
    grids: dict[str, dict[str, list[Any]]]
    label_train: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Protocol:
    """A paper's protocol file: methods, claims, profiles, and its full and stand-in sections."""

    name: str
    id: str
    paper: str
    paper_file: str
    source: str
    notes: str
    methods: dict[str, MethodSpec]
    claims: list[Claim]
    profiles: dict[str, dict[str, Any]]
    full: Section
    standin: Section

    def section(self, kind: str) -> Section:
        """The "full" or "standin" section."""
        if kind not in ("full", "standin"):
            raise ValueError(f"section must be 'full' or 'standin', got {kind!r}")
        return self.full if kind == "full" else self.standin

    def options(self, kind: str, label: str) -> dict[str, Any]:
        """The fixed options of ``label`` in a section (the method's, then the section's overrides)."""
        return {**self.methods[label].options, **self.section(kind).options.get(label, {})}

    def grid(self, kind: str, label: str) -> dict[str, list[Any]]:
        """The validation grid of ``label`` in a section (a section's grid of an option replaces the method's)."""
        return {**self.methods[label].grid, **self.section(kind).grids.get(label, {})}


def parse_metric(metric: str) -> tuple[str, float | None]:
    """("kpp", K) for "kpp:K", else (metric, None); one-line ValueError for an unknown metric."""
    if metric.startswith("kpp:"):
        try:
            k = float(metric[4:])
        except ValueError:
            raise ValueError(f"metric {metric!r}: KPP needs a percentile, e.g. kpp:1") from None
        if not 0.0 < k < 100.0:
            raise ValueError(f"metric {metric!r}: the percentile must lie strictly between 0 and 100")
        return "kpp", k
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (known: {', '.join(METRICS)}, kpp:K)")
    return metric, None


def _load_raw(path: Path) -> dict[str, Any]:
    """The file as a dict: TOML (Python 3.11's tomllib) or JSON."""
    text = path.read_text()
    if path.suffix == ".json":
        return dict(json.loads(text))
    if sys.version_info >= (3, 11):
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path.name}: not valid TOML ({exc})") from None
    raise ValueError(f"{path.name}: reading TOML needs Python 3.11 (tomllib); convert it to JSON for Python 3.10")


def available() -> list[str]:
    """Names of the shipped protocol files (configs/*.toml and *.json), sorted."""
    return sorted(p.stem for p in CONFIG_DIR.iterdir() if p.suffix in (".toml", ".json"))


def config_path(name: str) -> Path:
    """The file of a shipped protocol name, or a path given as is."""
    p = Path(name)
    if p.suffix in (".toml", ".json") and p.is_file():
        return p
    for suffix in (".toml", ".json"):
        q = CONFIG_DIR / f"{name}{suffix}"
        if q.is_file():
            return q
    raise ValueError(f"unknown protocol {name!r} (known: {', '.join(available())}, or a .toml/.json path)")


def _require(d: dict[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ValueError(f"{where}: missing {key!r}")
    return d[key]


def _noise(spec: Any, where: str) -> dict[str, Any] | None:
    if spec is None or spec == {} or spec == "none":
        return None
    if not isinstance(spec, dict) or "family" not in spec:
        raise ValueError(f"{where}: a noise spec is a table with 'family', got {spec!r}")
    return dict(spec)


def _section(kind: str, raw: dict[str, Any], where: str) -> Section:
    unknown = sorted(set(raw) - SECTION_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(SECTION_KEYS))})")
    train_noise = {str(k): _noise(v, f"{where}.train_noise.{k}") for k, v in raw.get("train_noise", {}).items()}
    if not train_noise:
        raise ValueError(f"{where}: needs at least one [train_noise] entry")
    conds: dict[str, Condition] = {}
    for name, c in _require(raw, "conditions", where).items():
        w = f"{where}.conditions.{name}"
        extra = sorted(set(c) - {"train", "noise", "analog"})
        if extra:
            raise ValueError(f"{w}: unknown key(s) {', '.join(extra)} (known: train, noise, analog)")
        tr = str(_require(c, "train", w))
        if tr not in train_noise:
            raise ValueError(f"{w}: train {tr!r} is not a train_noise entry ({', '.join(train_noise)})")
        analog = c.get("analog")
        if analog is not None and not isinstance(analog, dict):
            raise ValueError(f"{w}: analog is a table {{preset = ..., field = value}}")
        conds[str(name)] = Condition(str(name), tr, _noise(c.get("noise"), w), dict(analog) if analog else None)
    kpp = tuple(float(k) for k in raw.get("kpp", [1.0]))
    select_condition = str(raw.get("select_condition", "train"))
    if select_condition != "train" and select_condition not in conds:
        raise ValueError(f"{where}: select_condition {select_condition!r} is neither 'train' nor a condition")
    sec = Section(
        kind=kind,
        source=str(raw.get("source", "")),
        data=str(_require(raw, "data", where)),
        model=str(_require(raw, "model", where)),
        model_kwargs=dict(raw.get("model_kwargs", {})),
        train={k: raw[k] for k in TRAIN_KEYS if k in raw},
        seeds=int(raw.get("seeds", 5)),
        val_fraction=float(raw.get("val_fraction", 0.1)),
        val_draws=int(raw.get("val_draws", 100)),
        draws=int(_require(raw, "draws", where)),
        kpp=kpp,
        select_metric=str(raw.get("select_metric", "mean")),
        select_condition=select_condition,
        eval_batch_size=int(raw.get("eval_batch_size", 1000)),
        calibration_samples=int(raw.get("calibration_samples", 512)),
        train_noise=train_noise,
        conditions=conds,
        options={str(k): dict(v) for k, v in raw.get("options", {}).items()},
        grids={str(k): {str(o): list(vs) for o, vs in v.items()} for k, v in raw.get("grids", {}).items()},
        label_train={str(k): dict(v) for k, v in raw.get("train", {}).items()},
    )
    if not 0.0 < sec.val_fraction < 1.0:
        raise ValueError(f"{where}: val_fraction must be in (0, 1): the choices need a validation split")
    if sec.seeds < 1 or sec.draws < 1 or sec.val_draws < 1:
        raise ValueError(f"{where}: seeds, draws and val_draws must be >= 1")
    parse_metric(sec.select_metric)
    return sec


def load_protocol(name: str) -> Protocol:
    """Read and check a protocol file (shipped name or path); one-line ValueError naming the problem."""
    path = config_path(name)
    raw = _load_raw(path)
    where = path.name
    methods: dict[str, MethodSpec] = {}
    for label, m in _require(raw, "methods", where).items():
        w = f"{where}: methods.{label}"
        extra = sorted(set(m) - {"method", "options", "grid", "select_metric", "train"})
        if extra:
            raise ValueError(f"{w}: unknown key(s) {', '.join(extra)}")
        bad = sorted(set(m.get("train", {})) - TRAIN_KEYS)
        if bad:
            raise ValueError(f"{w}: train overrides {', '.join(bad)} are not training-budget fields")
        methods[str(label)] = MethodSpec(
            str(label),
            str(_require(m, "method", w)),
            dict(m.get("options", {})),
            {str(k): list(v) for k, v in m.get("grid", {}).items()},
            m.get("select_metric"),
            dict(m.get("train", {})),
        )
    claims = []
    for i, c in enumerate(raw.get("claims", [])):
        w = f"{where}: claims[{i}]"
        cond = c.get("condition")
        conds = (cond,) if isinstance(cond, str) else tuple(str(x) for x in (cond or ()))
        if not conds:
            raise ValueError(f"{w}: needs a condition (a name or a list of names)")
        claim = Claim(
            id=str(_require(c, "id", w)),
            paper=str(c.get("paper", raw.get("paper", ""))),
            text=str(_require(c, "text", w)),
            metric=str(_require(c, "metric", w)),
            condition=conds,
            a=str(_require(c, "a", w)),
            b=str(_require(c, "b", w)),
            direction=str(c.get("direction", ">")),
            margin=float(c.get("margin", 0.0)),
            source=str(c.get("source", "")),
        )
        if claim.direction not in (">", "<"):
            raise ValueError(f"{w}: direction must be '>' or '<', got {claim.direction!r}")
        if not math.isfinite(claim.margin):
            raise ValueError(f"{w}: margin must be a finite number")
        parse_metric(claim.metric)
        claims.append(claim)
    proto = Protocol(
        name=path.stem,
        id=str(raw.get("id", path.stem)),
        paper=str(_require(raw, "paper", where)),
        paper_file=str(raw.get("paper_file", "")),
        source=str(raw.get("source", "")),
        notes=str(raw.get("notes", "")),
        methods=methods,
        claims=claims,
        profiles={str(k): dict(v) for k, v in raw.get("profiles", {}).items()},
        full=_section("full", _require(raw, "full", where), f"{where}: [full]"),
        standin=_section("standin", _require(raw, "standin", where), f"{where}: [standin]"),
    )
    check_references(proto)
    return proto


def check_references(p: Protocol) -> None:
    """Claims name known labels and conditions of both sections; overrides name known labels; ids are unique."""
    from benchmarks.reproduce.profiles import check_declaration, referenced

    ids = [c.id for c in p.claims]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"{p.name}: duplicate claim id(s) {', '.join(dup)}")
    for name, decl in p.profiles.items():
        check_declaration(name, decl)
    for c in p.claims:
        for lab in (c.a, c.b):
            if lab not in p.methods:
                raise ValueError(f"{p.name}: claim {c.id} names method label {lab!r}, not in [methods]")
        for sec in (p.full, p.standin):
            missing = [n for n in c.condition if n not in sec.conditions]
            if missing:
                raise ValueError(f"{p.name}: claim {c.id} names condition(s) {', '.join(missing)}, not in [{sec.kind}]")
    for sec in (p.full, p.standin):
        for table in (sec.options, sec.grids, sec.label_train):
            unknown = sorted(set(table) - set(p.methods))
            if unknown:
                raise ValueError(f"{p.name}: [{sec.kind}] overrides unknown label(s) {', '.join(unknown)}")
        for lab, tr in sec.label_train.items():
            bad = sorted(set(tr) - TRAIN_KEYS)
            if bad:
                raise ValueError(f"{p.name}: [{sec.kind}.train.{lab}] {', '.join(bad)} are not training-budget fields")
        specs = [*sec.train_noise.values(), *(c.noise for c in sec.conditions.values())]
        for spec in specs:
            for ref in referenced(spec):
                if ref not in p.profiles:
                    raise ValueError(f"{p.name}: [{sec.kind}] noise refers to profile @{ref}, not in [profiles]")


def check_methods(p: Protocol) -> None:
    """Every label names a registered method and every option value (fixed and grid) parses into its Options."""
    from models.methods import get_method_class
    from models.methods.options import parse_options

    for kind in ("full", "standin"):
        for label, spec in p.methods.items():
            cls = get_method_class(spec.method)
            opts = p.options(kind, label)
            for key, values in p.grid(kind, label).items():
                if not values:
                    raise ValueError(f"{p.name}: [{kind}] grid {label}.{key} is empty")
                for v in values:
                    parse_options(cls.Options, spec.method, {**opts, key: v})
            parse_options(cls.Options, spec.method, opts)
            if spec.select_metric is not None:
                parse_metric(spec.select_metric)


def check_protocol(p: Protocol) -> None:
    """All checks of a loaded protocol that need the registered methods (see `check_methods`)."""
    check_references(p)
    check_methods(p)
