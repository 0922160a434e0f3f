"""Paired comparisons over seeds: the difference of two policies with a 95% confidence interval.

Two policies run with the same seed share their data order, label noise, initial weights and test set, so the
difference *per seed* removes what the seed changes for both; its mean over seeds, with Student's t interval, says
whether one policy beats the other. A difference is claimed only when its interval excludes 0.
"""

import math
import statistics
from dataclasses import asdict, dataclass

from scipy import stats


@dataclass
class PairedDifference:
    """mean(a - b) over the seeds both ran, with a two-sided `level` confidence interval."""

    a: str
    b: str
    n: int
    mean: float
    low: float
    high: float
    level: float = 0.95

    @property
    def verdict(self) -> str:
        """`a better`, `b better` or `no difference` (the interval contains 0, or too few seeds to tell)."""
        if self.n < 2 or math.isnan(self.low):
            return "no difference"
        if self.low > 0:
            return f"{self.a} better"
        if self.high < 0:
            return f"{self.b} better"
        return "no difference"

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def paired_difference(a: dict[int, float], b: dict[int, float], names: tuple[str, str], level: float = 0.95):
    """The paired difference of scores per seed (`{seed: score}`), over the seeds present in both."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    if not diffs:
        raise ValueError(f"{names[0]} and {names[1]} share no seed: nothing to pair.")
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return PairedDifference(*names, len(diffs), mean, float("nan"), float("nan"), level)
    # Student's t interval of the mean paired difference (scipy's, as the paired t-test defines it).
    interval = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).confidence_interval(level)
    return PairedDifference(*names, len(diffs), mean, float(interval.low), float(interval.high), level)
