"""A warm-started, anchored UMAP layout optimiser (numba), the engine of the ``anchored`` method.

Why this is written by hand: umap-learn optimises a layout from a fresh spectral initialisation
(:func:`umap.layouts.optimize_layout_euclidean`), or optimises *all* epochs jointly
(:func:`umap.layouts.optimize_layout_aligned_euclidean`, the core of ``AlignedUMAP``). Neither
can continue from a given layout while being pulled toward a second, fixed layout with a
per-point weight, which is what aligning one epoch to the previous one needs. Everything else
(the nearest-neighbour graph, its fuzzy weights, the curve parameters ``a`` and ``b``, the
spectral initialisation of the first epoch, the per-edge sampling schedule) comes from
umap-learn and pynndescent / scikit-learn; see :mod:`neuromapper.reduce`.

The objective is UMAP's cross-entropy between the high-dimensional fuzzy graph and the
low-dimensional similarities ``1 / (1 + a d^(2b))``, optimised the way umap-learn does it:
stochastic gradient descent over edges sampled in proportion to their weight, each followed by
a few negative samples, with a learning rate that decays linearly to zero. Two things are added:

* **a warm start** -- the layout starts from a given position for every point (the previous
  epoch's layout), so only the change has to be optimised;
* **an anchor** -- after each optimisation epoch every point moves a fraction
  ``alpha * anchor_strength * anchor_weight[i]`` of the way back toward its anchor (its
  position in the previous epoch). ``anchor_weight`` is the Jaccard similarity of the point's
  neighbour sets in the two epochs (as ``AlignedUMAP`` weights its alignment term), so a point
  whose neighbourhood is unchanged stays put and a point whose neighbourhood changed is free.
  The anchor is **scale-free**: every :data:`ANCHOR_REFIT` optimisation epochs its target is the
  anchor layout re-centred on the current layout's centroid and re-scaled to its RMS radius, so
  the spring resists changes of *shape* (what Procrustes disparity measures) and not the
  uniform growth or drift of the whole layout as clusters separate during training. Measured
  with ``benchmarks/bench_reduce.py`` (RESULTS-reduce.md): with a fixed target the spring held
  the layout back where classes separate (one epoch 0.012-0.020 below AlignedUMAP's
  trustworthiness in 7 of 12 rows); scale-free, with the pass counts of
  :mod:`neuromapper.methods`, no synthetic family's worst epoch is below -0.014. Fitting the
  target with a rotation as well (orthogonal Procrustes, so the spring resists exactly what
  disparity measures) was no better (run 4: 8 of 12 rows against 9; demo:fc1's disparity
  1.22x AlignedUMAP's against 1.17x).

The layout is two-dimensional (the only case NeuroMapper needs), which keeps the inner loop
free of per-dimension loops. Random numbers come from a seeded xorshift generator held in an
array, so a layout is a deterministic function of its inputs and seed; each call runs on one
thread (``nogil``: a dashboard thread calling it does not block the server).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numba
import numpy as np
import scipy.sparse

__all__ = ["fuzzy_graph", "neighbour_overlap", "optimize_layout", "rng_state"]

_CLIP = np.float32(4.0)
ANCHOR_REFIT = 5  # optimisation epochs between two re-fits of the scale-free anchor's target


@numba.njit(cache=True, inline="always")
def _next_random(state):
    x = state[0]
    x ^= x << np.uint64(13)
    x ^= x >> np.uint64(7)
    x ^= x << np.uint64(17)
    state[0] = x
    return x


@numba.njit(cache=True, inline="always")
def _clip(value):
    if value > _CLIP:
        return _CLIP
    if value < -_CLIP:
        return -_CLIP
    return value


@numba.njit(cache=True, nogil=True, fastmath=True, error_model="numpy")
def _sgd_epochs(
    y,
    anchor,
    anchor_weight,
    heads,
    tails,
    epochs_per_sample,
    epoch_of_next_sample,
    epochs_per_negative_sample,
    epoch_of_next_negative_sample,
    first_epoch,
    last_epoch,
    n_epochs,
    a,
    b,
    gamma,
    initial_alpha,
    anchor_strength,
    state,
):
    # float32 arithmetic throughout: the layout is float32 and powf is much cheaper than pow.
    a = np.float32(a)
    b = np.float32(b)
    gamma = np.float32(gamma)
    one = np.float32(1.0)
    two = np.float32(2.0)
    tiny = np.float32(0.001)
    n_vertices = y.shape[0]
    n_edges = heads.shape[0]
    use_anchor = anchor_strength > 0.0
    for n in range(first_epoch, last_epoch):
        alpha = np.float32(initial_alpha * (1.0 - n / n_epochs))
        for i in range(n_edges):
            if epoch_of_next_sample[i] > n:
                continue
            j = heads[i]
            k = tails[i]
            dx = y[j, 0] - y[k, 0]
            dy = y[j, 1] - y[k, 1]
            d2 = dx * dx + dy * dy
            if d2 > 0.0:
                d2b = d2**b
                coeff = -two * a * b * d2b / d2 / (a * d2b + one)
                gx = _clip(coeff * dx) * alpha
                gy = _clip(coeff * dy) * alpha
                y[j, 0] += gx
                y[j, 1] += gy
                y[k, 0] -= gx
                y[k, 1] -= gy
            epoch_of_next_sample[i] += epochs_per_sample[i]

            n_negative = int((n - epoch_of_next_negative_sample[i]) / epochs_per_negative_sample[i])
            # The negative samples of one edge all see the same position of j and their steps are
            # summed, rather than applied one after the other as umap-learn does: the steps are
            # small, and independent samples let the CPU overlap their pow/divide latencies,
            # which is most of the optimiser's time.
            jx = y[j, 0]
            jy = y[j, 1]
            gx = np.float32(0.0)
            gy = np.float32(0.0)
            for _ in range(n_negative):
                # multiply-shift maps 32 random bits onto [0, n_vertices) without a division
                k = np.int64(((_next_random(state) >> np.uint64(32)) * np.uint64(n_vertices)) >> np.uint64(32))
                if k == j:
                    continue
                dx = jx - y[k, 0]
                dy = jy - y[k, 1]
                d2 = dx * dx + dy * dy
                if d2 > 0.0:
                    coeff = two * gamma * b / ((tiny + d2) * (a * d2**b + one))
                    gx += _clip(coeff * dx)
                    gy += _clip(coeff * dy)
            y[j, 0] += gx * alpha
            y[j, 1] += gy * alpha
            epoch_of_next_negative_sample[i] += n_negative * epochs_per_negative_sample[i]

        if use_anchor:
            pull = np.float32(min(alpha * anchor_strength, 1.0))
            for v in range(n_vertices):
                w = anchor_weight[v] * pull
                if w > 0.0:
                    y[v, 0] += w * (anchor[v, 0] - y[v, 0])
                    y[v, 1] += w * (anchor[v, 1] - y[v, 1])


def rng_state(seed: int) -> np.ndarray:
    """The optimiser's random state for ``seed``: one non-zero uint64 (xorshift cannot leave 0)."""
    mixed = np.random.SeedSequence(int(seed)).generate_state(1, dtype=np.uint64)
    return np.array([mixed[0] | np.uint64(1)], dtype=np.uint64)


def optimize_layout(
    embedding: np.ndarray,
    heads: np.ndarray,
    tails: np.ndarray,
    epochs_per_sample: np.ndarray,
    n_epochs: int,
    a: float,
    b: float,
    *,
    seed: int,
    anchor: np.ndarray | None = None,
    anchor_weight: np.ndarray | None = None,
    anchor_strength: float = 0.0,
    initial_alpha: float = 1.0,
    gamma: float = 1.0,
    negative_sample_rate: float = 5.0,
    check_every: int = 25,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Optimise a 2-D UMAP layout in place, starting from ``embedding``; return it.

    Parameters
    ----------
    embedding
        ``(n, 2)`` float32 C-contiguous starting layout; it is modified in place.
    heads, tails
        The edges of the (symmetric) fuzzy graph, int32 or int64 arrays.
    epochs_per_sample
        For each edge, how many optimisation epochs pass between two samples of it (from
        :func:`umap.umap_.make_epochs_per_sample`); edges never sampled are dropped beforehand.
    n_epochs
        Optimisation epochs; the learning rate decays linearly from ``initial_alpha`` to 0.
    a, b
        The low-dimensional similarity curve (:func:`umap.umap_.find_ab_params`).
    seed
        Seed of the negative sampling.
    anchor, anchor_weight, anchor_strength
        Optional anchor layout ``(n, 2)`` and per-point weights in ``[0, 1]``; after each
        optimisation epoch a point moves ``alpha * anchor_strength * anchor_weight`` of the way
        toward its anchor's target: the anchor layout re-centred and re-scaled to the current
        layout (centroid and RMS radius, re-fitted every :data:`ANCHOR_REFIT` optimisation
        epochs), so the anchor holds the shape, not the size. ``anchor_strength=0`` turns the
        anchor off.
    initial_alpha
        Starting learning rate (umap-learn uses 1.0 from a fresh layout).
    gamma, negative_sample_rate
        Repulsion weight and negative samples per positive sample, as in umap-learn.
    check_every, should_stop
        Every ``check_every`` epochs ``should_stop()`` is asked whether to give up; if it
        answers true the optimisation stops early (the caller discards the layout).

    Returns
    -------
    numpy.ndarray
        ``embedding``, optimised.
    """
    if embedding.dtype != np.float32 or not embedding.flags.c_contiguous or embedding.shape[1:] != (2,):
        raise ValueError(f"embedding: expected a C-contiguous float32 array of shape (n, 2), got "
                         f"{embedding.dtype} {embedding.shape}")
    n = embedding.shape[0]
    if anchor is None:
        anchor = np.zeros((n, 2), dtype=np.float32)
        anchor_weight = np.zeros(n, dtype=np.float32)
        anchor_strength = 0.0
    epochs_per_sample = np.asarray(epochs_per_sample, dtype=np.float64)
    epoch_of_next_sample = epochs_per_sample.copy()
    epochs_per_negative_sample = epochs_per_sample / negative_sample_rate
    epoch_of_next_negative_sample = epochs_per_negative_sample.copy()
    state = rng_state(seed)
    anchor = np.ascontiguousarray(anchor, dtype=np.float32)
    anchor_centre = anchor.mean(axis=0)
    anchor_radius = np.sqrt(((anchor - anchor_centre) ** 2).sum(axis=1).mean())
    scale_free = anchor_strength > 0 and anchor_radius > 0
    target = anchor.copy()
    args = (
        target,
        np.ascontiguousarray(anchor_weight, dtype=np.float32),
        np.ascontiguousarray(heads, dtype=np.int32),
        np.ascontiguousarray(tails, dtype=np.int32),
        epochs_per_sample,
        epoch_of_next_sample,
        epochs_per_negative_sample,
        epoch_of_next_negative_sample,
    )
    step = ANCHOR_REFIT if scale_free else check_every
    next_check = 0
    for first in range(0, n_epochs, step):
        if first >= next_check:
            if should_stop is not None and should_stop():
                break
            next_check = first + check_every
        if scale_free:
            centre = embedding.mean(axis=0)
            radius = np.sqrt(((embedding - centre) ** 2).sum(axis=1).mean())
            target[:] = centre + (anchor - anchor_centre) * (radius / anchor_radius)
        last = min(first + step, n_epochs)
        _sgd_epochs(embedding, *args, first, last, n_epochs, float(a), float(b), float(gamma),
                    float(initial_alpha), float(anchor_strength), state)
    return embedding


# --- The fuzzy graph, with umap-learn's own kernels compiled once for all processes -------------
#
# umap-learn compiles ``smooth_knn_dist`` and ``compute_membership_strengths`` (the two kernels of
# ``fuzzy_simplicial_set``) with ``parallel=True`` and without an on-disk cache, which costs 10-15 s
# of compilation in *every* new process here: each ``neuromapper reduce`` command, each worker of
# the process pool, each dashboard server start. We compile umap-learn's own Python functions
# (``.py_func``, with their ``locals`` typing) with ``cache=True`` and ``nogil=True`` instead, so
# compilation happens once per machine and a graph can be built in a thread beside the optimiser.
# ``parallel`` is off: the pool already runs one layer per core. ``fuzzy_graph`` then applies the
# fuzzy union exactly as ``fuzzy_simplicial_set`` does with its default ``set_op_mix_ratio=1``;
# ``tests/test_reduce.py`` checks the result equals ``fuzzy_simplicial_set``'s.

@functools.cache
def _umap_kernels():
    # Imported on first use: umap-learn takes seconds to import, and ``import neuromapper`` should not.
    import umap.umap_ as umap_

    def cached(dispatcher):
        return numba.njit(cache=True, nogil=True, locals=dict(dispatcher.locals))(dispatcher.py_func)

    return cached(umap_.smooth_knn_dist), cached(umap_.compute_membership_strengths)


def fuzzy_graph(knn_indices: np.ndarray, knn_dists: np.ndarray, n_neighbors: int) -> scipy.sparse.csr_matrix:
    """UMAP's fuzzy simplicial set (symmetric, fuzzy union) of a k-nearest-neighbour graph.

    Parameters
    ----------
    knn_indices, knn_dists
        ``(n, k)`` neighbours of every point, the point itself first (distance 0), as
        :class:`sklearn.neighbors.NearestNeighbors` or :class:`pynndescent.NNDescent` return them.
    n_neighbors
        The ``k`` the fuzzy set is calibrated to (normally ``knn_indices.shape[1]``).

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n, n)`` edge weights in ``(0, 1]``, equal to :func:`umap.umap_.fuzzy_simplicial_set`'s.
    """
    knn_indices = np.ascontiguousarray(knn_indices, dtype=np.int64)
    knn_dists = np.ascontiguousarray(knn_dists, dtype=np.float32)
    n = knn_indices.shape[0]
    smooth_knn_dist, membership_strengths = _umap_kernels()
    sigmas, rhos = smooth_knn_dist(knn_dists, float(n_neighbors), 64, 1.0, 1.0)
    rows, cols, vals, _ = membership_strengths(knn_indices, knn_dists, sigmas, rhos, False, False)
    local = scipy.sparse.coo_matrix((vals, (rows, cols)), shape=(n, n)).tocsr()
    local.eliminate_zeros()
    transpose = local.transpose().tocsr()
    graph = local + transpose - local.multiply(transpose)
    graph.eliminate_zeros()
    return graph.tocsr()


@numba.njit(cache=True, nogil=True)
def neighbour_overlap(first, second):
    """Per row, the Jaccard similarity of two neighbour sets (rows of ids; negative ids ignored).

    ``first`` and ``second`` are ``(n, k)`` integer arrays; row ``i`` of each lists the neighbours
    of point ``i`` in two epochs, in a shared id space. Returns ``(n,)`` float32 in ``[0, 1]``.
    """
    n = first.shape[0]
    out = np.zeros(n, dtype=np.float32)
    for i in range(n):
        a = np.sort(first[i])
        b = np.sort(second[i])
        p = 0
        q = 0
        same = 0
        size_a = 0
        size_b = 0
        for v in a:
            if v >= 0:
                size_a += 1
        for v in b:
            if v >= 0:
                size_b += 1
        while p < a.shape[0] and q < b.shape[0]:
            if a[p] < 0:
                p += 1
            elif b[q] < 0:
                q += 1
            elif a[p] == b[q]:
                same += 1
                p += 1
                q += 1
            elif a[p] < b[q]:
                p += 1
            else:
                q += 1
        union = size_a + size_b - same
        out[i] = same / union if union > 0 else 1.0
    return out
