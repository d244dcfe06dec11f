"""Text tables of a SWIM study: accuracy and write cost versus fraction verified."""

from __future__ import annotations

from models.swim.planning import PlanPoint


def curve_table(points: list[PlanPoint]) -> str:
    """Markdown table: one row per (method, fraction)."""
    lines = [
        "| method | verified | mean acc | 95% CI | 1% KPP | worst | write cycles (norm.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p.method} | {100 * p.fraction:.1f}% | {100 * p.mean:.2f} | {100 * p.ci95[0]:.2f}-{100 * p.ci95[1]:.2f} "
            f"| {100 * p.kpp1:.2f} | {100 * p.worst:.2f} | {p.cycles_norm:.3f} |"
        )
    return "\n".join(lines)
