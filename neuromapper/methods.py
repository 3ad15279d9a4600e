"""The reduction methods: one layer's activations over epochs -> one aligned 2-D layout per epoch.

Each method is a function ``method(activations, n_neighbors, min_dist, seed, on_epoch,
should_stop, after=None) -> (layouts, backend)`` where ``activations`` is ``(epoch, sample, unit)``,
the layouts are ``(epoch, sample, 2)`` float32 with NaN for points that could not be placed, and
``on_epoch(i, layout)`` is called as each epoch's layout is final. :mod:`neuromapper.reduce` handles
everything around them (parameters, caching, storage, parallelism, quality figures).

``after`` (a :class:`Continuation`) makes a method carry on from an epoch laid out earlier -- the
last epoch of a stored embedding when the run has grown since, or for ``anchored-umap`` the one
before it (:data:`LOOKS_AHEAD`: its last epoch had no next one to look ahead to and is laid out
again) -- so that only the new epochs are computed. ``anchored-umap`` starts the first epoch it
lays out from the stored layout and compares its neighbour sets with the stored epoch's, exactly
as its loop does from one epoch to the next;
``tsne`` starts the first new epoch from the stored layout, as it starts every epoch from the one
before; ``umap`` and ``pca`` rotate the first new layout onto the stored one.
``anchored-umap`` reads the stored epoch's neighbour sets from ``Continuation.neighbours`` (stored
with the embedding) and the result equals a reduction of all epochs at once, bit for bit (its
epochs depend on the epochs before them and the one after, nothing else). Without
them it rebuilds that epoch's graph from ``Continuation.activations``: with exact neighbour
search (up to :data:`EXACT_KNN_MAX` samples) that is the same graph and the same result; above it
the rebuilt graph starts NN-descent differently, so the new epochs may differ a little.
``aligned-umap`` optimises all epochs jointly and cannot carry on: it ignores ``after`` and
:mod:`neuromapper.reduce` recomputes every epoch for it. Every method also lays out a single epoch
(``aligned-umap`` by falling back to ``umap`` for it, as there is nothing to align).

Every method starts from the same **pre-embedding**: each epoch's activations are reduced to
:data:`PCA_COMPONENTS` dimensions by PCA (layers that narrow are used as they are), which
removes noise directions and makes neighbour search cheap. Samples whose activations are not
finite at an epoch are left out of that epoch and come back as NaN.

``anchored-umap`` (the default): why it is valid and why it is fast
---------------------------------------------------------------------
``AlignedUMAP`` minimises, jointly over all epochs, the sum of each epoch's UMAP objective plus
an alignment penalty that pulls every point toward its own position in nearby epochs, weighted
by how similar its neighbourhoods are there. It pays for that with a full UMAP fit per epoch
(neighbour search, spectral initialisation and 200 optimisation epochs, whose layout it then
throws away), a second spectral initialisation per epoch, and 200 joint optimisation epochs in
which every gradient step also visits the point's copies in up to six neighbouring epochs.

``anchored-umap`` optimises the same two terms, but one epoch at a time, in order:

1. one k-nearest-neighbour graph per epoch on the pre-embedding (exact for up to
   :data:`EXACT_KNN_MAX` points, otherwise pynndescent's NN-descent started from the previous
   epoch's graph), turned into UMAP's fuzzy graph;
2. the first epoch is an ordinary UMAP layout (spectral initialisation, :data:`FIRST_PASSES`
   optimisation epochs);
3. every later epoch starts from the previous epoch's final layout (**warm start**) and runs a
   short optimisation at a lower learning rate: ``WARM_PASSES * (1 + WARM_PASSES_SLOPE *
   change)`` optimisation epochs (at most :data:`WARM_PASSES_MAX`), ``change`` being one minus
   the mean Jaccard overlap of the points' neighbour sets in the two epochs, with an **anchor**
   term that pulls each point toward its previous position, weighted by that point's Jaccard
   similarity -- the same weight ``AlignedUMAP`` uses for its alignment term. The anchor is
   scale-free (:func:`neuromapper.layout.optimize_layout`): it resists changes of the layout's
   shape, not its uniform growth as classes separate;
4. every epoch but the last **looks ahead**: it is optimised on its own fuzzy graph plus
   :data:`LOOK_AHEAD` times the next epoch's, so it already leans toward where the
   neighbourhoods go next. ``AlignedUMAP`` gets the same from aligning each epoch with the
   epochs on both sides; a method that only looks back moves late where the structure changes
   (a class splits) and then catches up in larger steps. The last epoch has nothing to look
   ahead to: when the run grows it is laid out again (:data:`LOOKS_AHEAD`), so a live run's
   newest frame moves once, when its successor arrives, and no frame before it ever does.

   Why these numbers (``benchmarks/bench_reduce.py``, RESULTS-reduce.md, 2026-11-30). The
   passes: a warm start optimised freely needs about 100 passes to reach AlignedUMAP's
   trustworthiness where classes emerge, and the Jaccard change of these runs (0.2-0.75) does
   not single those epochs out, so the slope is steep (55-110 passes per epoch on the synthetic
   families, 30-110 on the demo layers; the cap of 110 keeps the noisiest families within the
   speed budget). Looking back only (anchor strength 1, no look-ahead), 9 of the 12 rows met
   issue 9's bar against AlignedUMAP: slow-1024 kept one epoch 0.014 below its
   trustworthiness, split-128 and demo:fc1 a mean disparity 7% and 17% above its -- the lag of
   a method that cannot see the next epoch. Every causal variant tried (run 4 in the same file:
   14 of them -- stiffer, softer, capped or rotating anchors, other weights, passes and
   learning rates) moved along one front: lower disparity for less trustworthiness at the
   epoch where classes emerge. The look-ahead moves the front itself: with :data:`LOOK_AHEAD`
   0.3 and the same anchor, the disparity of every row fell (split-128 0.0326 against
   AlignedUMAP's 0.0360, demo:fc1 0.0104 against 0.0171), which leaves room for a softer
   anchor (:data:`ANCHOR_STRENGTH` 0.8) that lifts the emerging-class epochs: all 12 rows meet
   the bar. Of the neighbouring settings (look-ahead 0.2-0.4 x strength 0.5-1.0), none did; the
   figure with least margin is slow-1024's worst epoch (-0.0098 against the bar's -0.01),
   which those settings put anywhere from -0.0096 to -0.0162: a figure of the seed's luck as
   much as of the method.

This is valid because training changes a network's representation gradually: consecutive
epochs share most of their neighbourhood structure, so the previous layout is already close to
a minimum of the next epoch's objective and a few optimisation epochs find it, instead of the
hundreds a random or spectral start needs. Where the structure *does* change (a class splits,
clusters merge), the neighbour sets change, the anchor weight of the affected points drops
toward zero, and UMAP's own attraction and repulsion are free to move them, so alignment does not
hide real change (``tests/test_reduce.py`` checks this with a class that splits at a known
epoch). The quality figures stored with every embedding (trustworthiness against the recorded
activations, Procrustes disparity between epochs) show per epoch whether it worked;
``benchmarks/bench_reduce.py`` compares them with ``AlignedUMAP``'s on the same data.

The graphs of later epochs are built on a second thread while the layouts are optimised (the
numba kernels release the GIL), so one layer keeps both cores of a small machine busy.

``aligned-umap`` is umap-learn's ``AlignedUMAP`` on the same pre-embedding with identity
relations over the probe (the reference). ``umap`` runs umap-learn's ``UMAP`` (cuML's when
installed) on each epoch independently and rotates each layout onto the previous one
(orthogonal Procrustes). ``pca`` is the first two principal components of each epoch, aligned
the same way. ``tsne`` is openTSNE on each epoch, every epoch started from the previous epoch's
layout (see :func:`tsne_per_epoch`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from . import layout as _layout
from .reduce_params import ReduceParams

# scikit-learn, umap-learn and pynndescent are imported where they are used: together they take
# seconds to import, which ``import neuromapper`` (and ``neuromapper info``) should not pay.

__all__ = ["DEFAULT_METHOD", "METHODS", "Continuation", "pre_embed"]

PCA_COMPONENTS = 50
EXACT_KNN_MAX = 15_000
FIRST_PASSES = 200
WARM_PASSES = 20
WARM_PASSES_SLOPE = 8.0
WARM_PASSES_MAX = 110
WARM_ALPHA = 0.5
ANCHOR_STRENGTH = 0.8
LOOK_AHEAD = 0.3
SPREAD = 1.0
TSNE_WARM_ITERS = 250

# Methods whose layers may be reduced on threads of one process at once (neuromapper.reduce does
# so for small jobs, where worker processes cost more than they save): their heavy parts -- the
# layout optimiser and fuzzy-graph kernels (numba, nogil, not parallel), scikit-learn's brute-force
# neighbours, PCA and trustworthiness (BLAS, OpenMP, sorting) -- release the GIL. umap-learn's UMAP
# and AlignedUMAP launch parallel numba kernels of their own, which numba's "workqueue" threading
# layer (the one every numba install has) aborts on when two threads launch them at once; the one
# such kernel anchored-umap reaches, pynndescent's NN-descent, runs under _PARALLEL_KERNELS.
THREADED_METHODS = frozenset({"anchored-umap"})
# Methods that lay out each epoch looking ahead to the next one: their last epoch, laid out with
# nothing to look ahead to, is laid out again when the run grows (neuromapper.reduce carries on
# from the epoch before it).
LOOKS_AHEAD = frozenset({"anchored-umap"})
_PARALLEL_KERNELS = threading.Lock()

OnEpoch = Callable[[int, np.ndarray], None]
ShouldStop = Callable[[], bool]


class Stopped(Exception):
    """Raised inside a method when ``should_stop()`` answered true."""


@dataclass(frozen=True)
class Continuation:
    """The last epoch already laid out, for a method to carry on from (see the module docstring)."""

    index: int  # its position among the run's epochs: later epochs' seeds follow on from it
    activations: np.ndarray | None  # (sample, unit), as recorded; only anchored-umap reads them, without neighbours
    layout: np.ndarray  # (sample, 2) float32, as stored
    # Its neighbour sets as anchored-umap keeps them (neighbour_ids), stored with the layout: then
    # anchored-umap reads them instead of rebuilding that epoch's graph from ``activations``.
    neighbours: np.ndarray | None = None


def _never() -> bool:
    return False


def _ignore(epoch: int, layout: np.ndarray) -> None:
    return None


def cuml_module():
    """cuML (GPU UMAP and nearest neighbours) when it is importable, else ``None``."""
    try:
        import cuml.manifold
        import cuml.neighbors
    except Exception:  # ImportError, or a CUDA runtime that fails to initialise
        return None
    return cuml


def pre_embed(x: np.ndarray, seed: int) -> np.ndarray:
    """PCA of one epoch's finite activations to :data:`PCA_COMPONENTS` dimensions (float32)."""
    from sklearn.decomposition import PCA

    x = np.asarray(x, dtype=np.float32)
    if x.shape[1] <= PCA_COMPONENTS or x.shape[0] <= PCA_COMPONENTS:
        return np.ascontiguousarray(x)
    return PCA(n_components=PCA_COMPONENTS, random_state=seed).fit_transform(x).astype(np.float32)


@dataclass
class EpochGraph:
    """One epoch's pre-embedding and neighbour graph, over the samples placed at that epoch."""

    rows: np.ndarray  # indices (into the layer's samples) of the finite samples
    data: np.ndarray  # their pre-embedding
    knn_indices: np.ndarray | None = None  # (m, k), compact indices, the point itself first
    knn_dists: np.ndarray | None = None
    graph: scipy.sparse.csr_matrix | None = None

    @property
    def usable(self) -> bool:
        return self.knn_indices is not None

    @classmethod
    def from_ids(cls, ids: np.ndarray) -> EpochGraph:
        """An epoch's rows and neighbour indices from its :func:`neighbour_ids` (no pre-embedding, no graph)."""
        rows = np.flatnonzero(ids[:, 0] >= 0)
        g = cls(rows=rows, data=np.empty((0, 0), np.float32))
        if len(rows):
            position = np.full(len(ids), -1, dtype=np.int64)
            position[rows] = np.arange(len(rows))
            g.knn_indices = position[ids[rows]]
        return g


def neighbour_ids(g: EpochGraph, n_samples: int, k: int) -> np.ndarray:
    """``g``'s neighbour sets over all samples: ``(n_samples, k)`` sample positions, each sample first.

    -1 for samples without (not finite at that epoch, or an epoch too small to search); the ids
    that ``anchored-umap`` compares between epochs and stores with the last one.
    """
    ids = np.full((n_samples, k), -1, dtype=np.int64)
    if g.usable:
        ids[g.rows] = g.rows[g.knn_indices]
    return ids


def nearest_neighbours(data: np.ndarray, k: int, seed: int, init: np.ndarray | None = None,
                       cuml=None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every row of ``data`` (itself first): indices, distances.

    Exact (brute force, BLAS) up to :data:`EXACT_KNN_MAX` rows, pynndescent's NN-descent above,
    started from ``init`` (a previous graph over the same rows) when given; cuML's brute force
    when ``cuml`` is given.
    """
    from sklearn.neighbors import NearestNeighbors

    n = data.shape[0]
    if cuml is not None:
        model = cuml.neighbors.NearestNeighbors(n_neighbors=k).fit(data)
        dists, indices = model.kneighbors(data)
        indices, dists = np.asarray(indices, dtype=np.int64), np.asarray(dists, dtype=np.float32)
    elif n <= EXACT_KNN_MAX:
        dists, indices = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(data).kneighbors(data)
        indices, dists = indices.astype(np.int64), dists.astype(np.float32)
    else:
        from pynndescent import NNDescent

        with _PARALLEL_KERNELS:
            index = NNDescent(data, n_neighbors=k, random_state=seed, n_jobs=1, init_graph=init,
                              low_memory=True, compressed=True)
        indices, dists = index.neighbor_graph
        indices, dists = indices.astype(np.int64), dists.astype(np.float32)
    # Brute force computes |x|^2 + |y|^2 - 2x.y, so a point's distance to itself comes out as
    # rounding noise (1e-7) rather than 0; UMAP would take that noise for the distance to the
    # nearest neighbour (rho) and weaken every edge of the point, which costs trustworthiness.
    # Exact zeros, as umap-learn's own small-data path gives.
    dists[indices == np.arange(n)[:, None]] = 0.0
    return indices, dists


def build_graphs(
    activations, n_neighbors: int, seed: int, cuml=None, should_stop: ShouldStop = _never, first_epoch: int = 0,
    previous: EpochGraph | None = None,
):
    """Yield one :class:`EpochGraph` per epoch (generator: graphs are built as they are needed).

    ``activations`` is any sequence of ``(sample, unit)`` arrays; ``first_epoch`` is the position
    of the first among the run's epochs (it seeds NN-descent); ``previous`` is the graph of the
    epoch before it, if any (NN-descent starts from it).
    """
    for epoch, x in enumerate(activations, start=first_epoch):
        if should_stop():
            raise Stopped
        rows = np.flatnonzero(np.isfinite(x).all(axis=1))
        g = EpochGraph(rows=rows, data=pre_embed(x[rows], seed) if len(rows) else np.empty((0, 0), np.float32))
        if len(rows) > n_neighbors:
            init = None
            if previous is not None and previous.usable and np.array_equal(previous.rows, rows):
                init = previous.knn_indices
            g.knn_indices, g.knn_dists = nearest_neighbours(g.data, n_neighbors, seed + epoch, init, cuml)
            g.graph = _layout.fuzzy_graph(g.knn_indices, g.knn_dists, n_neighbors)
        previous = g
        yield g


def edge_schedule(graph: scipy.sparse.csr_matrix, passes: int = FIRST_PASSES):
    """UMAP's edge list and sampling schedule: edges too weak to be sampled in ``passes`` dropped.

    Returns ``heads, tails, epochs_per_sample, degree`` (degree counts kept edges per vertex;
    a vertex with none is disconnected and cannot be placed).
    """
    from umap.umap_ import make_epochs_per_sample

    coo = graph.tocoo()
    keep = coo.data >= coo.data.max() / passes
    heads, tails, weights = coo.row[keep], coo.col[keep], coo.data[keep]
    degree = np.bincount(heads, minlength=graph.shape[0])
    return heads, tails, make_epochs_per_sample(weights, passes), degree


def _curve(min_dist: float) -> tuple[float, float]:
    from umap.umap_ import find_ab_params

    a, b = find_ab_params(SPREAD, min_dist)
    return float(a), float(b)


def _fresh_layout(g: EpochGraph, seed: int) -> np.ndarray:
    """UMAP's initial layout: spectral, scaled to +-10 with a little noise; PCA if it fails."""
    from umap.spectral import spectral_layout
    from umap.umap_ import noisy_scale_coords

    random_state = np.random.RandomState(seed)
    # umap-learn warns and falls back to a *random* start when the eigensolver fails; a PCA start
    # of the pre-embedding is better, so turn that one warning into a signal.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Spectral initialisation failed", category=UserWarning)
        try:
            init = spectral_layout(g.data, g.graph, 2, random_state)
        except UserWarning:
            init = None
    if init is None or not np.isfinite(init).all() or np.abs(init).max() == 0:
        from sklearn.decomposition import PCA

        init = PCA(n_components=2, random_state=seed).fit_transform(g.data)
    init = noisy_scale_coords(init, random_state, max_coord=10.0, noise=0.0001)
    # As umap-learn's simplicial_set_embedding does before optimising: each axis spans [0, 10], so
    # a spectral start with one dominant direction does not begin squashed onto a line.
    init = 10.0 * (init - init.min(axis=0)) / (init.max(axis=0) - init.min(axis=0))
    return np.ascontiguousarray(init, dtype=np.float32)


def anchored_umap(
    activations: np.ndarray,
    n_neighbors: int,
    min_dist: float,
    seed: int,
    on_epoch: OnEpoch = _ignore,
    should_stop: ShouldStop = _never,
    after: Continuation | None = None,
    *,
    on_neighbours: Callable[[np.ndarray], None] | None = None,
    warm_passes: int = WARM_PASSES,
    warm_alpha: float = WARM_ALPHA,
    anchor_strength: float = ANCHOR_STRENGTH,
) -> tuple[np.ndarray, str]:
    """Warm-started, anchored UMAP layouts of every epoch (see the module docstring).

    ``on_neighbours(ids)`` is called at the end with the :func:`neighbour_ids` of the epoch
    before the last, the last one laid out for good (the last epoch had no next one to look
    ahead to, so a continuation lays it out again: :data:`LOOKS_AHEAD`). Given back as
    ``Continuation.neighbours`` with that epoch's layout, they spare a later call rebuilding
    that epoch's graph.
    """
    with _one_core_for_the_optimiser():
        return _anchored_umap(activations, n_neighbors, min_dist, seed, on_epoch, should_stop, after, on_neighbours,
                              warm_passes, warm_alpha, anchor_strength)


@contextlib.contextmanager
def _one_core_for_the_optimiser():
    """Leave one core to the layout thread: cap BLAS/OpenMP threads (graphs, PCA) at cores - 1.

    The graphs are built on a second thread while the layout is optimised; scikit-learn's
    neighbour search and BLAS otherwise start one thread per core and spin against the optimiser.
    A lower limit already set (a worker process of the pool) is kept.
    """
    import sklearn.neighbors  # noqa: F401 -- load its OpenMP runtime so the limit reaches it
    from threadpoolctl import threadpool_info, threadpool_limits

    current = [lib["num_threads"] for lib in threadpool_info()]
    limit = max(1, min([(os.cpu_count() or 1) - 1, *current]))
    with threadpool_limits(limit):
        yield


def _anchored_umap(activations, n_neighbors, min_dist, seed, on_epoch, should_stop, after, on_neighbours,
                   warm_passes, warm_alpha, anchor_strength):
    n_epochs, n_samples = activations.shape[:2]
    cuml = cuml_module()
    a, b = _curve(min_dist)
    out = np.full((n_epochs, n_samples, 2), np.nan, dtype=np.float32)
    previous_layout = None if after is None else after.layout
    previous_ids = None  # (n_samples, k - 1) neighbour ids of the previous placed epoch, -1 if absent
    previous_graph = None
    # steps: the activations to go through; first: position of steps[0] among the run's epochs;
    # skip: steps that are not laid out
    if after is None:
        steps, first, skip = list(activations), 0, 0
    elif after.neighbours is None:
        # A continued epoch goes through the loop first, for its neighbour ids; its layout is kept.
        steps, first, skip = [after.activations, *activations], after.index, 1
    else:  # ...unless its neighbour ids were kept with its layout
        previous_graph = EpochGraph.from_ids(after.neighbours)
        if previous_graph.usable:
            previous_ids = np.ascontiguousarray(after.neighbours[:, 1:], dtype=np.int64)
        steps, first, skip = list(activations), after.index + 1, 0
    # neighbour_ids of the last step and of the one before: that one is where a later continuation
    # starts (the last epoch is laid out again once its successor exists)
    last_ids = before_last_ids = None
    stopped = False

    def stop() -> bool:
        return stopped or should_stop()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuromapper-graphs") as pool:
        graphs = build_graphs(steps, n_neighbors, seed, cuml, stop, first_epoch=first, previous=previous_graph)
        # Epoch t is laid out with epoch t+1's graph (the look-ahead), so the graphs of t+1 and t+2
        # are queued while t is optimised: one graph thread, in order, one epoch ahead of the need.
        queued = deque(pool.submit(next, graphs, None) for _ in range(min(2, len(steps))))
        try:
            for step in range(len(steps)):
                g = queued.popleft().result()
                following = queued[0].result() if queued else None
                if step + 2 < len(steps):
                    queued.append(pool.submit(next, graphs, None))
                if should_stop():
                    raise Stopped
                before_last_ids, last_ids = last_ids, neighbour_ids(g, n_samples, n_neighbors)
                ids = np.ascontiguousarray(last_ids[:, 1:]) if g.usable else None
                epoch = step - skip
                if epoch < 0:
                    previous_ids = ids
                    continue
                if g.usable:
                    out[epoch] = _place_epoch(g, following, previous_layout, ids, previous_ids, a, b, seed, first + step,
                                              n_samples, warm_passes, warm_alpha, anchor_strength, should_stop)
                    previous_ids = ids
                previous_layout = out[epoch]
                if should_stop():
                    raise Stopped
                on_epoch(epoch, out[epoch])
        finally:
            stopped = True
            for future in queued:
                future.cancel()
    if on_neighbours is not None and before_last_ids is not None:
        on_neighbours(before_last_ids)
    return out, "cuml+numba" if cuml is not None else "numba"


def _place_epoch(g, following, previous_layout, ids, previous_ids, a, b, seed, epoch, n_samples,
                 warm_passes, warm_alpha, anchor_strength, should_stop):
    g = dataclasses.replace(g, graph=_looking_ahead(g, following, n_samples))
    heads, tails, epochs_per_sample, degree = edge_schedule(g.graph)
    layout_seed = seed * 100_003 + epoch
    placed_before = None
    if previous_layout is not None:
        placed_before = np.isfinite(previous_layout[g.rows]).all(axis=1)
    if placed_before is None or not placed_before.any():
        y = _fresh_layout(g, layout_seed)
        _layout.optimize_layout(y, heads, tails, epochs_per_sample, FIRST_PASSES, a, b, seed=layout_seed,
                                should_stop=should_stop)
    else:
        y = np.empty((len(g.rows), 2), dtype=np.float32)
        y[placed_before] = previous_layout[g.rows[placed_before]]
        _place_newcomers(y, placed_before, g.knn_indices, layout_seed)
        overlap = _layout.neighbour_overlap(ids[g.rows], previous_ids[g.rows])
        weight = np.where(placed_before, overlap, 0.0).astype(np.float32)
        change = 1.0 - float(overlap[placed_before].mean())
        passes = int(min(WARM_PASSES_MAX, round(warm_passes * (1.0 + WARM_PASSES_SLOPE * change))))
        anchor = y.copy()
        _layout.optimize_layout(y, heads, tails, epochs_per_sample, passes, a, b, seed=layout_seed,
                                anchor=anchor, anchor_weight=weight, anchor_strength=anchor_strength,
                                initial_alpha=warm_alpha, should_stop=should_stop)
    placed = np.full((n_samples, 2), np.nan, dtype=np.float32)
    y[degree == 0] = np.nan  # disconnected: no position is meaningful
    placed[g.rows] = y
    return placed


def _looking_ahead(g: EpochGraph, following: EpochGraph | None, n_samples: int) -> scipy.sparse.csr_matrix:
    """``g``'s fuzzy graph plus :data:`LOOK_AHEAD` times the next epoch's (its edges among ``g``'s rows).

    The look-ahead: a layout optimised on it leans toward where the neighbourhoods go next, as
    AlignedUMAP's two-sided alignment does (module docstring). The last epoch has no next one.
    """
    if following is None or not following.usable or LOOK_AHEAD == 0:
        return g.graph
    ahead = following.graph
    if not np.array_equal(following.rows, g.rows):
        position = np.full(n_samples, -1, dtype=np.int64)
        position[g.rows] = np.arange(len(g.rows))
        coo = ahead.tocoo()
        heads, tails = position[following.rows[coo.row]], position[following.rows[coo.col]]
        both = (heads >= 0) & (tails >= 0)
        ahead = scipy.sparse.csr_matrix((coo.data[both], (heads[both], tails[both])), shape=g.graph.shape)
    return (g.graph + np.float32(LOOK_AHEAD) * ahead).tocsr()


def _place_newcomers(y: np.ndarray, known: np.ndarray, knn_indices: np.ndarray, seed: int) -> None:
    """Start points not placed in the previous epoch at the mean of their placed neighbours."""
    missing = np.flatnonzero(~known)
    if not len(missing):
        return
    rng = np.random.default_rng(seed)
    centre, extent = y[known].mean(axis=0), y[known].std(axis=0) + 1e-3
    for i in missing:
        neighbours = knn_indices[i, 1:]
        neighbours = neighbours[known[neighbours]]
        if len(neighbours):
            y[i] = y[neighbours].mean(axis=0) + rng.normal(scale=1e-3, size=2)
        else:
            y[i] = centre + rng.normal(size=2) * extent


def aligned_umap(activations, n_neighbors, min_dist, seed, on_epoch=_ignore, should_stop=_never, after=None):
    """umap-learn's ``AlignedUMAP`` on the PCA pre-embedding, identity relations over the probe.

    Optimises all epochs jointly, so ``after`` is ignored (the caller recomputes every epoch). A
    single epoch has nothing to align: it is laid out by :func:`umap_per_epoch` (plain UMAP).
    """
    from umap import AlignedUMAP

    n_epochs, n_samples = activations.shape[:2]
    if n_epochs == 1:
        return umap_per_epoch(activations, n_neighbors, min_dist, seed, on_epoch, should_stop)
    rows, data = [], []
    for x in activations:
        r = np.flatnonzero(np.isfinite(x).all(axis=1))
        if len(r) <= n_neighbors:
            raise ValueError(
                f"aligned-umap needs more than n_neighbors={n_neighbors} finite samples at every epoch; "
                f"an epoch has {len(r)} (use method='anchored-umap', which leaves such epochs empty)"
            )
        rows.append(r)
        data.append(pre_embed(x[r], seed))
    relations = []
    for before, after in zip(rows[:-1], rows[1:]):
        position = {int(s): i for i, s in enumerate(after)}
        relations.append({i: position[int(s)] for i, s in enumerate(before) if int(s) in position})
    if should_stop():
        raise Stopped
    with warnings.catch_warnings():
        # AlignedUMAP builds UMAP models with the default n_jobs=-1; with a random_state umap-learn
        # warns that it runs single-threaded for reproducibility, which is what we ask for.
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden to 1 by setting random_state",
                                category=UserWarning)
        model = AlignedUMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed)
        embeddings = model.fit_transform(data, relations=relations)
    out = np.full((n_epochs, n_samples, 2), np.nan, dtype=np.float32)
    for epoch, (r, emb) in enumerate(zip(rows, embeddings)):
        out[epoch, r] = emb
        on_epoch(epoch, out[epoch])
    return out, "umap-learn"


def _procrustes_onto(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Rotate/reflect and translate ``current`` onto ``previous`` (orthogonal Procrustes)."""
    import scipy.linalg

    both = np.isfinite(previous).all(axis=1) & np.isfinite(current).all(axis=1)
    if both.sum() < 3:
        return current
    p_mean = previous[both].mean(axis=0)
    c_mean = current[both].mean(axis=0)
    rotation, _ = scipy.linalg.orthogonal_procrustes(current[both] - c_mean, previous[both] - p_mean)
    return ((current - c_mean) @ rotation + p_mean).astype(np.float32)


def _finite_epochs(activations, should_stop: ShouldStop):
    """Each epoch's position, activations and rows of finite samples, raising :class:`Stopped` when asked."""
    for epoch, x in enumerate(activations):
        if should_stop():
            raise Stopped
        yield epoch, x, np.flatnonzero(np.isfinite(x).all(axis=1))


def umap_per_epoch(activations, n_neighbors, min_dist, seed, on_epoch=_ignore, should_stop=_never, after=None):
    """Independent UMAP per epoch (cuML's when installed), Procrustes-aligned to the epoch before.

    With ``after``, the first epoch is aligned to ``after.layout``.
    """
    cuml = cuml_module()
    if cuml is None:
        from umap import UMAP
    n_epochs, n_samples = activations.shape[:2]
    out = np.full((n_epochs, n_samples, 2), np.nan, dtype=np.float32)
    previous = None if after is None else after.layout
    for epoch, x, r in _finite_epochs(activations, should_stop):
        if len(r) > n_neighbors:
            data = pre_embed(x[r], seed)
            if cuml is not None:
                model = cuml.manifold.UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed)
            else:
                model = UMAP(n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed, n_jobs=1)
            out[epoch, r] = np.asarray(model.fit_transform(data), dtype=np.float32)
            if previous is not None:
                out[epoch] = _procrustes_onto(previous, out[epoch])
        previous = out[epoch]
        on_epoch(epoch, out[epoch])
    return out, "cuml" if cuml is not None else "umap-learn"


def pca_per_epoch(activations, n_neighbors, min_dist, seed, on_epoch=_ignore, should_stop=_never, after=None):
    """First two principal components of each epoch, Procrustes-aligned to the epoch before.

    With ``after``, the first epoch is aligned to ``after.layout``.
    """
    from sklearn.decomposition import PCA

    n_epochs, n_samples = activations.shape[:2]
    out = np.full((n_epochs, n_samples, 2), np.nan, dtype=np.float32)
    previous = None if after is None else after.layout
    for epoch, x, r in _finite_epochs(activations, should_stop):
        if len(r) >= 3:
            if x.shape[1] >= 2:
                out[epoch, r] = PCA(n_components=2, random_state=seed).fit_transform(x[r]).astype(np.float32)
            else:  # one unit (a one-logit head): PCA needs two, so its centred value along x
                out[epoch, r, 0], out[epoch, r, 1] = x[r, 0] - x[r, 0].mean(), 0.0
            if previous is not None:
                out[epoch] = _procrustes_onto(previous, out[epoch])
        previous = out[epoch]
        on_epoch(epoch, out[epoch])
    return out, "scikit-learn"


def tsne_per_epoch(activations, n_neighbors, min_dist, seed, on_epoch=_ignore, should_stop=_never, after=None):
    """openTSNE per epoch, each epoch started from the layout of the epoch before (aligned by initialisation).

    The first epoch is an ordinary openTSNE fit (PCA initialisation, early exaggeration, then
    the normal phase). Every later epoch -- and with ``after`` the first new one, from
    ``after.layout``, so stored frames never move -- starts each sample where the previous layout
    put it (samples not placed there start at the mean of their placed neighbours) and runs
    :data:`TSNE_WARM_ITERS` iterations without exaggeration, which keeps the picture in place
    unless the neighbourhoods changed. No rotation is applied afterwards: the start is the alignment.

    The affinities use the k-nearest-neighbour graph of the PCA pre-embedding, found as for the
    other methods (:func:`nearest_neighbours`), with ``k = n_neighbors`` and ``perplexity =
    n_neighbors / 3``: openTSNE reads ``3 * perplexity`` neighbours, so UMAP and t-SNE see the
    same neighbourhood (the default ``n_neighbors=15`` gives perplexity 5, a local picture;
    raise ``n_neighbors`` for a more global one). ``min_dist`` is a UMAP setting and is ignored.
    ``n_jobs=1``: layers already run in parallel worker processes and trustworthiness on a helper
    thread, so more threads here would only compete with them for the cores. Equal parameters
    give bit-for-bit equal layouts, as the cache assumes (``tests/test_tsne.py`` checks it with
    openTSNE's Barnes-Hut gradient, which it uses below 10,000 points; FFT above).
    """
    from openTSNE import TSNE, TSNEEmbedding
    from openTSNE.affinity import PerplexityBasedNN
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    n_epochs, n_samples = activations.shape[:2]
    out = np.full((n_epochs, n_samples, 2), np.nan, dtype=np.float32)
    previous = None if after is None else after.layout
    first = 0 if after is None else after.index + 1  # position of activations[0] among the run's epochs

    def interrupt(*_) -> bool:  # an openTSNE callback: answering true ends the optimisation
        return should_stop()

    for epoch, x, r in _finite_epochs(activations, should_stop):
        if len(r) > n_neighbors:
            data = pre_embed(x[r], seed)
            indices, dists = nearest_neighbours(data, n_neighbors + 1, seed + first + epoch)
            affinities = PerplexityBasedNN(perplexity=n_neighbors / 3, n_jobs=1,
                                           knn_index=PrecomputedNeighbors(indices[:, 1:], dists[:, 1:]))
            options = {"n_jobs": 1, "random_state": seed + first + epoch, "callbacks": interrupt,
                       "callbacks_every_iters": 25}
            known = np.zeros(len(r), bool) if previous is None else np.isfinite(previous[r]).all(axis=1)
            if known.any():
                start = np.empty((len(r), 2), dtype=np.float32)
                start[known] = previous[r[known]]
                _place_newcomers(start, known, indices, seed + first + epoch)
                layout = TSNEEmbedding(start.astype(np.float64), affinities, **options).optimize(TSNE_WARM_ITERS)
            else:
                init = "pca" if data.shape[1] >= 2 else "spectral"
                layout = TSNE(initialization=init, **options).fit(data, affinities=affinities)
            if should_stop():
                raise Stopped
            out[epoch, r] = np.asarray(layout, dtype=np.float32)
        previous = out[epoch]
        on_epoch(epoch, out[epoch])
    return out, "openTSNE"


# Keyed by ReduceParams.METHODS (tests/test_reduce.py keeps the two in step).
METHODS: dict[str, Callable] = {
    "anchored-umap": anchored_umap,
    "aligned-umap": aligned_umap,
    "umap": umap_per_epoch,
    "pca": pca_per_epoch,
    "tsne": tsne_per_epoch,
}
DEFAULT_METHOD = ReduceParams.DEFAULT.method
