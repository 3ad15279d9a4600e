"""Place recorded instances (attacked twins, the user's own inputs) into a layer's 2-D layout.

An embedding is computed from the probe only; a twin is not part of it and must not change it.
:func:`place` puts a twin where its nearest probe neighbours *in activation space* lie in the
2-D layout: the inverse-distance-weighted mean of the 2-D positions of its ``k`` nearest probe
samples at that layer and epoch. This is a transform of the existing layout, not a new
reduction, so every frame of the embedding stays exactly as stored; it is what UMAP's own
``transform`` does for its initial placement (a weighted mean of the neighbours' positions),
without the optimisation passes that would need the fitted model, which NeuroMapper does not keep
(the layouts are aligned across epochs, see :mod:`neuromapper.layout`). The neighbour search is
scipy's ``cKDTree``.

Drawn as an arrow from the benign original's position to the twin's, layer by layer, it shows
where an attack moves an image through the network.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

NEIGHBORS = 10


def place(query: np.ndarray, reference: np.ndarray, xy: np.ndarray, k: int = NEIGHBORS) -> np.ndarray:
    """2-D positions ``(len(query), 2)`` of ``query`` activations in the layout ``xy`` of ``reference``.

    ``reference`` ``(n, units)`` and ``xy`` ``(n, 2)`` are the probe's activations and layout at one
    layer and epoch; rows of either with non-finite values are not used as neighbours. A query
    that coincides with a reference sample lands exactly on it. Rows of ``query`` with non-finite
    values, or an empty usable reference, give NaN.
    """
    query = np.asarray(query, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    xy = np.asarray(xy, dtype=np.float64)
    if reference.shape[0] != xy.shape[0]:
        raise ValueError(f"reference: {reference.shape[0]} rows, but the layout xy has {xy.shape[0]}")
    usable = np.isfinite(reference).all(axis=1) & np.isfinite(xy).all(axis=1)
    out = np.full((len(query), 2), np.nan)
    finite_query = np.isfinite(query).all(axis=1) if query.size else np.zeros(len(query), bool)
    if not usable.any() or not finite_query.any():
        return out
    reference, xy = reference[usable], xy[usable]
    k = min(k, len(reference))
    dist, index = cKDTree(reference).query(query[finite_query], k=k)
    dist, index = dist.reshape(len(index), k), index.reshape(len(index), k)
    exact = dist[:, 0] == 0
    weights = 1.0 / np.maximum(dist, 1e-12)
    placed = (weights[:, :, None] * xy[index]).sum(axis=1) / weights.sum(axis=1)[:, None]
    placed[exact] = xy[index[exact, 0]]
    out[finite_query] = placed
    return out
