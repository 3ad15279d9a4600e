"""How faithful and how stable an embedding is: the quality figures stored with every embedding.

Two numbers per (epoch, layer), both computed with well-kept library functions:

* **Trustworthiness** (:func:`sklearn.manifold.trustworthiness`, ``k=10``) of the 2-D layout
  against the *recorded activations* of the layer (not the PCA pre-embedding), so it measures the
  whole chain. It is 1 when every point's 2-D neighbours are also neighbours among the
  activations, and penalises points that the layout brings close although they are far apart.
  It costs ``O(m^2 log m)`` for ``m`` points, so it is computed on a seeded subsample of at most
  :data:`TRUST_SAMPLE` points; the subsample is the same at every epoch and for every method
  (it depends only on the seed and the probe), so figures are comparable across both.
* **Procrustes disparity** (:func:`scipy.spatial.procrustes`) between the layout of an epoch and
  the layout of the epoch before, on the points placed in both. Both layouts are centred and
  scaled to unit size and the best rotation/reflection is applied first, so the disparity
  (between 0 and 1) measures how much the *shape* of the picture changed, not how it is turned:
  independent per-epoch layouts that rearrange clusters at random score high, aligned layouts
  score low unless the data really changed.

Points a method could not place (NaN coordinates) and samples whose activations are not finite
are left out of both figures; when too few points remain the figure is NaN.
"""

from __future__ import annotations

import numpy as np

__all__ = ["TRUST_K", "TRUST_SAMPLE", "disparity", "trust_subsample", "trustworthiness"]

TRUST_K = 10
TRUST_SAMPLE = 2000


def trust_subsample(n_samples: int, seed: int, size: int = TRUST_SAMPLE) -> np.ndarray:
    """Sorted indices of the seeded subsample on which trustworthiness is computed."""
    if n_samples <= size:
        return np.arange(n_samples)
    rng = np.random.default_rng([int(seed), 0x7E57])
    return np.sort(rng.choice(n_samples, size=size, replace=False))


def trustworthiness(activations: np.ndarray, layout: np.ndarray, k: int = TRUST_K) -> float:
    """Trustworthiness of ``layout`` (``(n, 2)``) against ``activations`` (``(n, units)``).

    Rows that are not finite in either array are dropped; returns NaN when fewer than
    ``2 * k + 2`` rows remain (scikit-learn needs ``k < n / 2``).
    """
    from sklearn.manifold import trustworthiness as sklearn_trustworthiness

    ok = np.isfinite(activations).all(axis=1) & np.isfinite(layout).all(axis=1)
    if ok.sum() < 2 * k + 2:
        return float("nan")
    return float(sklearn_trustworthiness(activations[ok], layout[ok], n_neighbors=k))


def disparity(previous: np.ndarray, current: np.ndarray) -> float:
    """Procrustes disparity between two ``(n, 2)`` layouts of the same points (NaN rows dropped).

    Returns NaN when fewer than three points are placed in both or a layout has collapsed to a
    single point (no shape to compare).
    """
    from scipy.spatial import procrustes

    ok = np.isfinite(previous).all(axis=1) & np.isfinite(current).all(axis=1)
    if ok.sum() < 3:
        return float("nan")
    a = previous[ok].astype(np.float64)
    b = current[ok].astype(np.float64)
    if np.ptp(a, axis=0).max() == 0 or np.ptp(b, axis=0).max() == 0:
        return float("nan")
    return float(procrustes(a, b)[2])
