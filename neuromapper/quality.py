"""How faithful and how stable an embedding is: the quality figures stored with every embedding.

Two numbers per (epoch, layer):

* **Trustworthiness** (:func:`sklearn.manifold.trustworthiness`'s figure, ``k=10``) of the 2-D
  layout against the *recorded activations* of the layer (not the PCA pre-embedding), so it
  measures the whole chain. It is 1 when every point's 2-D neighbours are also neighbours among
  the activations, and penalises points that the layout brings close although they are far
  apart. It costs ``O(m^2)`` for ``m`` points, so it is computed on a seeded subsample of at most
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

    The figure of :func:`sklearn.manifold.trustworthiness`, bit for bit (``tests/test_reduce.py``
    checks it, with and without tied distances), from the same distance matrix and 2-D neighbours,
    in half its time: scikit-learn argsorts every row of the ``n x n`` distance matrix and builds an
    ``n x n`` inverted index to read ``k`` ranks per row, which was the largest part of a live
    append (``benchmarks/RESULTS-live.md``); see :func:`_ranks`.
    """
    from sklearn.metrics import pairwise_distances
    from sklearn.neighbors import NearestNeighbors

    ok = np.isfinite(activations).all(axis=1) & np.isfinite(layout).all(axis=1)
    n = int(ok.sum())
    if n < 2 * k + 2:
        return float("nan")
    distances = pairwise_distances(activations[ok])
    np.fill_diagonal(distances, np.inf)  # as scikit-learn does: a point is not its own neighbour
    near = NearestNeighbors(n_neighbors=k).fit(layout[ok]).kneighbors(return_distance=False)
    ranks = _ranks(distances, near) - k
    t = np.sum(ranks[ranks > 0])
    return float(1.0 - t * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))))


def _ranks(distances: np.ndarray, near: np.ndarray, rows_at_once: int = 128) -> np.ndarray:
    """Where each ``near[i]`` comes (from 1) in row ``i`` of ``distances`` ordered by ``np.argsort``.

    A neighbour's place is one more than the number of distances below its own, unless another
    distance in the row equals it: then its place among the equals is argsort's choice, so those
    rows (a few in a thousand on recorded activations) are argsorted as scikit-learn does; argsort
    orders each row on its own, so a row gets the same order alone as in the whole matrix.
    """
    ranks = np.empty(near.shape, dtype=np.int64)
    tied = []
    for start in range(0, len(near), rows_at_once):
        block = distances[start:start + rows_at_once, None, :]
        own = np.take_along_axis(distances[start:start + rows_at_once], near[start:start + rows_at_once],
                                 axis=1)[:, :, None]
        ranks[start:start + rows_at_once] = np.count_nonzero(block < own, axis=2) + 1
        tied.append(start + np.flatnonzero((np.count_nonzero(block == own, axis=2) > 1).any(axis=1)))
    tied = np.concatenate(tied)
    if len(tied):
        order = np.argsort(distances[tied], axis=1)
        place = np.empty_like(order)
        np.put_along_axis(place, order, np.broadcast_to(np.arange(1, distances.shape[1] + 1), order.shape), axis=1)
        ranks[tied] = np.take_along_axis(place, near[tied], axis=1)
    return ranks


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
