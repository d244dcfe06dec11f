"""Judging a claim from paired per-seed differences: mean, t-based 95 % CI over seeds, and a three-way verdict.

The difference of seed s is ``d_s = m_a(s) - m_b(s)`` for a claim "a > b" and ``m_b(s) - m_a(s)`` for
"a < b" (lower is better: EKL, ECE), so d > 0 always means "as claimed". Seeds pair the two methods: same
initialisation, batch order, validation split and Monte Carlo draws. With n paired seeds the 95 % interval
is ``mean(d) +- t(0.975, n - 1) * sd(d) / sqrt(n)``; it covers training variability (each seed is a fresh
run) and the Monte Carlo error of each run (which is inside each d_s).

Verdict, against the claim's margin (0 unless the paper claims a size):

* **holds**: the interval lies above the margin (lower bound > margin);
* **does not hold**: the interval lies below the margin (upper bound < margin): the data contradict the
  claimed advantage of that size (for margin 0: b is significantly better than a);
* **inconclusive**: the interval contains the margin, or fewer than 2 paired seeds (no interval).

Each claim is a separate 95 % test (no correction for the number of claims): read a table of many claims
with that in mind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass(frozen=True)
class PairedResult:
    """Paired differences over seeds and the verdict they give against a margin."""

    n: int
    mean: float
    half_width: float  # t-based 95 % half-width (NaN with n < 2)
    lo: float
    hi: float
    margin: float
    verdict: str
    diffs: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-able form."""
        return {
            "n": self.n,
            "mean": self.mean,
            "half_width": self.half_width,
            "ci95": [self.lo, self.hi],
            "margin": self.margin,
            "verdict": self.verdict,
            "diffs": list(self.diffs),
        }


def t_quantile(n: int) -> float:
    """t(0.975, n - 1), the two-sided 95 % quantile of Student's t with n - 1 degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1))


def judge(diffs: list[float], margin: float = 0.0) -> PairedResult:
    """Mean of the paired differences, its t-based 95 % CI over seeds, and the verdict against ``margin``."""
    n = len(diffs)
    if n == 0:
        nan = float("nan")
        return PairedResult(0, nan, nan, nan, nan, margin, INCONCLUSIVE, ())
    mean = sum(diffs) / n
    if n < 2:
        nan = float("nan")
        return PairedResult(n, mean, nan, nan, nan, margin, INCONCLUSIVE, tuple(diffs))
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(n) * sd / math.sqrt(n)
    lo, hi = mean - half, mean + half
    verdict = HOLDS if lo > margin else FAILS if hi < margin else INCONCLUSIVE
    return PairedResult(n, mean, half, lo, hi, margin, verdict, tuple(diffs))


def paired_diffs(a: dict[int, float], b: dict[int, float], direction: str) -> list[float]:
    """Per-seed differences over the seeds both have (sorted by seed), signed so > 0 is "as claimed"."""
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    seeds = sorted(set(a) & set(b))
    sign = 1.0 if direction == ">" else -1.0
    return [sign * (a[s] - b[s]) for s in seeds]
