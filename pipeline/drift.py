"""Drift watch: does today's batch still look like the clean panels the threshold was set on?

Compares the clean-looking part of a scoring batch (images below the threshold) with the clean
validation scores recorded at calibration: population stability index (PSI) over the
reference's deciles and the two-sample Kolmogorov-Smirnov statistic. A lighting change, a new
camera or a dirty lens moves clean scores long before anyone reads the flag rate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import ks_2samp

REFERENCE_QUANTILES = np.linspace(0, 1, 101)  # what calibration stores of the clean val scores


def reference_quantiles(clean_scores: np.ndarray) -> list[float]:
    return [float(q) for q in np.quantile(np.asarray(clean_scores, dtype=float), REFERENCE_QUANTILES)]


@dataclass(frozen=True)
class DriftCheck:
    psi: float
    ks: float
    n_clean_looking: int
    flag_rate: float
    drifted: bool
    message: str

    def to_dict(self) -> dict:
        """JSON-ready: a number that was not computed is null, not NaN (which JSON does not have)."""
        return {k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in asdict(self).items()}


def population_stability(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI over the reference's quantile bins: sum (a - e) ln(a / e); > 0.25 is a large shift."""
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1]
    def shares(values: np.ndarray) -> np.ndarray:  # add-½ smoothing: an empty bin in a small batch is not infinite drift
        counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=bins)
        return (counts + 0.5) / (len(values) + 0.5 * bins)
    expected, actual = shares(reference), shares(current)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def check_drift(scores: np.ndarray, threshold: float, reference: list[float], psi_limit: float = 0.25,
                flag_rate_limit: float = 0.8, min_images: int = 20, max_p: float = 0.01) -> DriftCheck:
    """Drift when the clean-looking scores differ from the clean calibration scores below the same
    threshold: PSI above psi_limit (a large shift) and a KS test that rules out chance (p < max_p;
    PSI alone is noisy on a small batch), or when at least flag_rate_limit of a batch is flagged
    (then there are hardly any clean-looking images left to compare: the camera changed, or
    every panel is broken; both need a person)."""
    scores = np.asarray(scores, dtype=float)
    clean = scores[scores < threshold]
    flag_rate = float(np.mean(scores >= threshold)) if len(scores) else 0.0
    if len(scores) >= min_images and flag_rate >= flag_rate_limit:
        return DriftCheck(float("nan"), float("nan"), len(clean), flag_rate, True,
                          f"DRIFT: {flag_rate:.0%} of {len(scores)} images flagged (limit {flag_rate_limit:.0%}); "
                          "check lighting, camera and panels, and recalibrate or retrain")
    if not reference:
        return DriftCheck(float("nan"), float("nan"), len(clean), flag_rate, False,
                          "no clean reference in this model's calibration: drift not checked")
    if len(clean) < min_images:
        return DriftCheck(float("nan"), float("nan"), len(clean), flag_rate, False,
                          f"only {len(clean)} clean-looking images (< {min_images}): drift not checked")
    ref = np.asarray(reference, dtype=float)
    ref = ref[ref < threshold] if (ref < threshold).sum() >= 10 else ref  # compare like with like: both truncated
    test = ks_2samp(clean, ref)
    psi, ks = population_stability(ref, clean), float(test.statistic)
    drifted = bool(psi > psi_limit and test.pvalue < max_p)
    summary = f"PSI {psi:.3f} (limit {psi_limit}), KS {ks:.3f} (p {test.pvalue:.2g}) on {len(clean)} clean-looking images; flag rate {flag_rate:.1%}"
    message = (f"DRIFT: clean-looking scores no longer match calibration ({summary}); check lighting, camera "
               "and panels, and recalibrate or retrain" if drifted else f"no drift ({summary})")
    return DriftCheck(psi, ks, len(clean), flag_rate, drifted, message)
