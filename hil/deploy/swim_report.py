"""Text tables of a SWIM study: accuracy and write cost versus fraction verified."""

from __future__ import annotations

import math

from models.swim.planning import PlanPoint


def _kpp_cell(p: PlanPoint) -> str:
    """The 1 % KPP with its order-statistic interval; the coverage it really has when that is below 95 %."""
    lo, hi = p.kpp1_ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{100 * p.kpp1:.2f}"
    cell = f"{100 * p.kpp1:.2f} [{100 * lo:.2f}, {100 * hi:.2f}]"
    if math.isfinite(p.kpp1_ci_coverage) and p.kpp1_ci_coverage < 0.95:
        cell += f" (covers {100 * p.kpp1_ci_coverage:.0f}%)"
    return cell


def curve_table(points: list[PlanPoint]) -> str:
    """Markdown table: one row per (method, fraction)."""
    lines = [
        "| method | verified | mean acc | 95% CI | 1% KPP [95% CI] | worst | write cycles (norm.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p.method} | {100 * p.fraction:.1f}% | {100 * p.mean:.2f} | {100 * p.ci95[0]:.2f}-{100 * p.ci95[1]:.2f} "
            f"| {_kpp_cell(p)} | {100 * p.worst:.2f} | {p.cycles_norm:.3f} |"
        )
    return "\n".join(lines)
