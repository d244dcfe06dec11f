"""The claims table (markdown and JSON) and each protocol's per-method summary."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.reproduce.config import parse_metric
from benchmarks.reproduce.runner import ProtocolResult, condition_text, metric_value

_ACCURACY = ("mean", "kpp", "clean", "worst")  # metrics in [0, 1], shown in % (differences in points)


def _is_accuracy(metric: str) -> bool:
    return parse_metric(metric)[0] in _ACCURACY


def fmt_value(metric: str, v: float) -> str:
    """A metric value: accuracies in %, others (EKL, ECE) as they are."""
    if not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.1f} %" if _is_accuracy(metric) else f"{v:.4f}"


def fmt_diff(metric: str, mean: float, lo: float, hi: float) -> str:
    """A paired difference with its CI: accuracies in percentage points."""
    if not math.isfinite(mean):
        return "n/a"
    if _is_accuracy(metric):
        ci = f" [{100 * lo:+.2f}, {100 * hi:+.2f}]" if math.isfinite(lo) else " [no CI: < 2 seeds]"
        return f"{100 * mean:+.2f} pp{ci}"
    ci = f" [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) else " [no CI: < 2 seeds]"
    return f"{mean:+.4f}{ci}"


def _context(metric: str, ctx: dict[str, Any], a: str, b: str) -> str:
    parts = [f"{a} {fmt_value(metric, ctx['a_mean'])}, {b} {fmt_value(metric, ctx['b_mean'])}"]
    for side, lab in (("a", a), ("b", b)):
        iv = ctx.get(f"{side}_kpp_ci")
        if iv:
            parts.append(f"{lab} order-statistic 95 % CI {100 * iv[0]:.1f}-{100 * iv[1]:.1f} %")
    return "; ".join(parts)


def claim_rows(results: list[ProtocolResult]) -> list[dict[str, Any]]:
    """Every judged claim as a JSON-able row (differences signed so that > 0 is "as claimed")."""
    rows = []
    for res in results:
        for claim, paired, ctx in res.claims:
            rows.append(
                {
                    "id": claim.id,
                    "protocol": res.protocol.name,
                    "section": res.section.kind,
                    "paper": claim.paper,
                    "source": claim.source,
                    "text": claim.text,
                    "a": claim.a,
                    "b": claim.b,
                    "direction": claim.direction,
                    "metric": claim.metric,
                    "condition": list(claim.condition),
                    **paired.to_dict(),
                    "context": ctx,
                }
            )
    return rows


def claims_markdown(results: list[ProtocolResult]) -> str:
    """The claims table: id, paper, claim, a vs b, metric @ condition, n, mean paired difference [95 % CI], verdict."""
    lines = [
        "| claim | paper | claim (our words) | a vs b | metric @ condition | n | a - b, mean [95 % CI] | verdict | context (seed means) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for claim, p, ctx in res.claims:
            cond = (
                " + ".join(claim.condition)
                if len(claim.condition) < 4
                else f"mean of {len(claim.condition)} conditions"
            )
            sign = "a - b" if claim.direction == ">" else "b - a"
            diff = fmt_diff(claim.metric, p.mean, p.lo, p.hi)
            margin = f" (margin {fmt_value(claim.metric, claim.margin)})" if claim.margin else ""
            lines.append(
                f"| {claim.id} | {claim.paper}{' ' + claim.source if claim.source else ''} | {claim.text} | "
                f"{claim.a} {claim.direction} {claim.b} | {claim.metric} @ {cond} | {p.n} | "
                f"{diff}{'' if sign == 'a - b' else ' (b - a)'}{margin} | **{p.verdict}** | "
                f"{_context(claim.metric, ctx, claim.a, claim.b)} |"
            )
    return "\n".join(lines)


def _t_interval(values: list[float]) -> tuple[float, float, float]:
    from benchmarks.reproduce.verdict import judge

    r = judge(values)
    return r.mean, r.lo, r.hi


def summary_markdown(res: ProtocolResult) -> str:
    """A protocol's setting and, per method and condition, test accuracy [t CI over seeds], KPP and EKL."""
    p, sec = res.protocol, res.section
    kpp = sorted(set(sec.kpp))
    head = (
        f"### {p.name}: {p.paper} ({sec.kind})\n\n"
        f"{p.source}. {sec.source}\n\n"
        f"Data {sec.data}, network {sec.model} {sec.model_kwargs or ''}, training "
        f"{', '.join(f'{k}={v}' for k, v in sorted(sec.train.items())) or 'defaults'}, "
        f"{len(res.seeds)} seeds, validation {100 * sec.val_fraction:g} % of the training split "
        f"({sec.val_draws} draws per choice), test split read once with {sec.draws} "
        f"Monte Carlo draws per condition; {res.trained} runs trained and {res.evaluated} evaluations computed "
        f"in this call ({res.wall_s:.0f} s)."
    )
    lines = [head, ""]
    multi = len(sec.train_noise) > 1
    for label, per in res.chosen.items():
        grid = p.grid(sec.kind, label)
        if not grid:
            continue
        if multi:
            picks = "; ".join(f"{t}: {', '.join(f'{k}={o[k]}' for k in grid)}" for t, o in per.items())
        else:
            o = next(iter(per.values()))
            picks = ", ".join(f"{k}={o[k]}" for k in grid)
        metric = p.methods[label].select_metric or sec.select_metric
        under = sec.select_condition if sec.select_condition != "train" else "the training noise"
        lines.append(f"- {label}: chosen on validation (by {metric} under {under}) from {grid}: {picks}")
    cols = ["method", "condition", "clean %", "mean % [95 % CI over seeds]"] + [f"KPP{k:g} %" for k in kpp] + ["EKL"]
    lines += ["", "| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * len(cols)) + "|"]
    for label in p.methods:
        for cname, cond in sec.conditions.items():
            per_seed = res.stats.get(label, {}).get(cname, {})
            if not per_seed:
                continue
            recs = [per_seed[s] for s in sorted(per_seed)]
            clean = [r["clean"] for r in recs if r["clean"] is not None]
            m, lo, hi = _t_interval([r["mean"] for r in recs])
            ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if math.isfinite(lo) else ""
            row = [
                label,
                f"{cname}: {condition_text(cond)}",
                f"{100 * sum(clean) / len(clean):.1f}" if clean else "n/a",
            ]
            row.append(f"{100 * m:.1f}{ci}")
            for k in kpp:
                vals = [metric_value(r, f"kpp:{k:g}") for r in recs]
                row.append(f"{100 * sum(vals) / len(vals):.1f}")
            ekl = [r["ekl"] for r in recs if r["ekl"] is not None and math.isfinite(r["ekl"])]
            row.append(f"{sum(ekl) / len(ekl):.3f}" if ekl else "n/a")
            lines.append("| " + " | ".join(row) + " |")
    if p.notes:
        lines += ["", f"Notes: {p.notes}"]
    return "\n".join(lines)


def full_markdown(results: list[ProtocolResult]) -> str:
    """The claims table followed by every protocol's summary."""
    parts = ["## Claims", "", claims_markdown(results), "", _VERDICT_NOTE, "", "## Protocols", ""]
    parts += [summary_markdown(r) + "\n" for r in results]
    return "\n".join(parts)


_VERDICT_NOTE = (
    "Verdict: paired differences over seeds (same initialisation, batch order, validation split and Monte Carlo "
    "draws per seed), t-based 95 % CI; holds when the CI lies above the margin, does not hold when it lies below, "
    "inconclusive otherwise (or with fewer than 2 seeds). Each claim is its own 95 % test. Hyper-parameters were "
    "chosen on the validation split; the test split was read once per chosen model and condition."
)


def to_json(results: list[ProtocolResult]) -> dict[str, Any]:
    """Everything as JSON: claims, and per protocol its setting, choices and per-seed test statistics."""
    protocols = []
    for r in results:
        sec = r.section
        protocols.append(
            {
                "name": r.protocol.name,
                "id": r.protocol.id,
                "paper": r.protocol.paper,
                "paper_file": r.protocol.paper_file,
                "source": r.protocol.source,
                "section": sec.kind,
                "section_source": sec.source,
                "setting": {
                    "data": sec.data,
                    "model": sec.model,
                    "model_kwargs": sec.model_kwargs,
                    "train": sec.train,
                    "val_fraction": sec.val_fraction,
                    "val_draws": sec.val_draws,
                    "draws": sec.draws,
                    "kpp": list(sec.kpp),
                    "train_noise": sec.train_noise,
                    "conditions": {
                        n: {"train": c.train, "noise": c.noise, "analog": c.analog} for n, c in sec.conditions.items()
                    },
                },
                "seeds": r.seeds,
                "chosen": r.chosen,
                "stats": {
                    lab: {c: {str(s): v for s, v in per.items()} for c, per in d.items()} for lab, d in r.stats.items()
                },
                "trained": r.trained,
                "evaluated": r.evaluated,
                "wall_s": r.wall_s,
            }
        )
    return finite({"claims": claim_rows(results), "protocols": protocols, "verdict_rule": _VERDICT_NOTE})


def finite(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj
