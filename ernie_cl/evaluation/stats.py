"""Small, exact statistics for downstream scores over seeds: summaries and paired t-tests.

Scores of one model over seeds get a mean, a sample std (ddof=1) and a Student t 95% interval.
Two models measured with the same seeds (same data split, same fine-tuning seed) are compared by
the per-seed differences ``d = a - b``: a paired t-test, because the seed-to-seed swing of the split
is shared by both models and cancels in ``d``; an unpaired test would count it twice.

With a handful of seeds a difference that is "not shown" is not shown to be absent either: the
verdict says "not shown at this scale", never "equal". Nothing here corrects for multiple
comparisons; the report says how many were made.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

from scipy import stats as _scipy_stats


def _checked(values: Sequence[float | None], name: str) -> list[float]:
    """The values as floats; ValueError naming the first position that is None, NaN or infinite."""
    out = []
    for i, v in enumerate(values):
        if v is None:
            raise ValueError(f"{name}[{i}] is None: every seed needs a score (drop the seed everywhere instead)")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{name}[{i}] is {f}: every score must be a finite number")
        out.append(f)
    return out


def _mean_std(xs: list[float]) -> tuple[float, float | None]:
    n = len(xs)
    mean = math.fsum(xs) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student t critical value for ``n`` values (``n - 1`` degrees of freedom)."""
    return float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1))


def summarize_scores(values: Sequence[float]) -> dict[str, Any]:
    """``{"n", "mean", "std", "ci95", "values"}`` of one model's scores over seeds.

    ``std`` is the sample std (ddof=1) and ``ci95`` the Student t interval
    ``mean ± t_{0.975, n-1} · std / sqrt(n)``; both are None with one value.
    """
    xs = _checked(values, "values")
    if not xs:
        raise ValueError("no scores to summarize: need at least one seed's value")
    n = len(xs)
    mean, std = _mean_std(xs)
    ci = None
    if std is not None:
        half = t_quantile(n) * std / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"n": n, "mean": mean, "std": std, "ci95": ci, "values": xs}


def format_p(p: float | None) -> str:
    """``"p=0.012"``, ``"p=0.41"`` (two significant digits), ``"p<0.001"``, or ``"p=n/a"``."""
    if p is None:
        return "p=n/a"
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.2g}"


def _verdict(a: str, b: str, n: int, mean_diff: float, p: float | None, alpha: float) -> str:
    if n < 2:
        return f"{a} vs {b}: not testable with one seed"
    if p is None:  # identical scores on every seed
        return f"{a} vs {b}: not shown at this scale (identical on all {n} seeds)"
    if p < alpha:  # for alpha = 0.05 exactly "ci95 excludes 0"
        return f"{a} {'>' if mean_diff > 0 else '<'} {b}: shown ({format_p(p)}, {n} seeds)"
    return f"{a} vs {b}: not shown at this scale ({format_p(p)}, {n} seeds)"


def paired_comparison(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("a", "b"),
                      alpha: float = 0.05) -> dict[str, Any]:
    """Paired t-test of ``a`` against ``b``, where ``a[i]`` and ``b[i]`` share seed ``i``.

    Returns ``{"a", "b", "n", "mean_diff", "std_diff", "ci95", "t", "p", "wins", "alpha", "verdict"}``
    on ``d = a - b``: ``ci95`` is the t interval of the mean difference, ``p`` the two-sided p-value
    (None with one seed, or when every difference is 0). When every difference is the same non-zero
    number the test is degenerate but the answer is not: ``p = 0.0``, ``t = ±inf``,
    ``ci95 = [mean_diff, mean_diff]``. The verdict says "shown" when ``p < alpha``, which for
    ``alpha = 0.05`` is the same as the 95% interval excluding 0.
    """
    name_a, name_b = names
    xa, xb = _checked(a, name_a), _checked(b, name_b)
    if len(xa) != len(xb):
        raise ValueError(f"{name_a} has {len(xa)} scores and {name_b} has {len(xb)}: "
                         "a paired comparison needs one score of each per seed")
    if not xa:
        raise ValueError(f"{name_a} vs {name_b}: no scores to compare")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    d = [x - y for x, y in zip(xa, xb)]
    n = len(d)
    mean, std = _mean_std(d)
    ci: list[float] | None = None
    t: float | None = None
    p: float | None = None
    if std is not None:
        if std > 0.0:
            se = std / math.sqrt(n)
            t = mean / se
            p = float(2.0 * _scipy_stats.t.sf(abs(t), n - 1))
            half = t_quantile(n) * se
            ci = [mean - half, mean + half]
        else:
            ci = [mean, mean]
            if mean != 0.0:
                t, p = math.copysign(math.inf, mean), 0.0
    return {"a": name_a, "b": name_b, "n": n, "mean_diff": mean, "std_diff": std, "ci95": ci, "t": t, "p": p,
            "wins": sum(x > y for x, y in zip(xa, xb)), "alpha": alpha,
            "verdict": _verdict(name_a, name_b, n, mean, p, alpha)}


def all_pairs(scores: dict[str, Sequence[float]], alpha: float = 0.05) -> list[dict[str, Any]]:
    """``paired_comparison`` for every unordered pair of ``scores``, in insertion order
    (``(m0, m1), (m0, m2), ..., (m1, m2), ...``), each as ``a`` minus ``b``."""
    return [paired_comparison(scores[x], scores[y], names=(x, y), alpha=alpha)
            for x, y in itertools.combinations(scores, 2)]
