"""The reduce stage: every recorded layer's activations to 2-D, aligned across epochs, cached.

``neuromapper.reduce(run, ...)`` returns an :class:`xarray.DataArray` ``embedding(epoch, layer,
sample, xy)`` and stores it beside the run::

    <run>/embeddings/<key>.nc      one file per parameter set

What is computed is one :class:`~neuromapper.reduce_params.ReduceParams` (method, ``n_neighbors``,
``min_dist``, ``per_class``, ``seed``, ``layers``: defaults, bounds, canonical values and the
storage key, in :mod:`neuromapper.reduce_params`); the embedding files are part of the run's
on-disk schema and are written, read, listed and looked up by :mod:`neuromapper.store`
(:func:`~neuromapper.store.write_embedding`, :func:`~neuromapper.store.load_embedding`,
:func:`~neuromapper.store.list_embeddings`, :func:`~neuromapper.store.find_embedding`). The
methods live in :mod:`neuromapper.methods`, the quality figures in :mod:`neuromapper.quality`,
the layout optimiser in :mod:`neuromapper.layout`. This module does what is around them: the
cache, growing runs, parallelism over layers, progress and cancellation.

Equal parameters give the same key, and every method is deterministic for a given seed, so a
stored embedding for the same parameters *is* the result: :func:`reduce` returns it without
computing. How the work is done (``n_jobs``, ``client``, progress, cuML or not) is not part of the
key; the backend used is recorded in the file. Writes are atomic and recorded activations are only
ever read, so a crash or a cancelled reduction loses only the result being computed, never a
stored one or the run.

Growing runs
------------
A live run gains an epoch file at a time. When the stored embedding for the same parameters
covers the first epochs of the run, :func:`reduce` lays out only the new epochs, carrying on from
the last stored layout (:class:`neuromapper.methods.Continuation`), and stores the extended
embedding under the same key: the stored coordinates and figures of the earlier epochs are kept
as they are, byte for byte, trustworthiness and disparity are computed for the new epochs (the
first new one's disparity against the last stored layout), and progress counts only the new
(layer, epoch) units. ``anchored-umap`` lays each epoch out looking ahead to the next
(:data:`neuromapper.methods.LOOKS_AHEAD`), so for it the last stored epoch, laid out with nothing
to look ahead to, counts as new: it is laid out again, carrying on from the epoch before it. A
live run's newest frame therefore moves once, when its successor arrives; no earlier frame ever
moves. Why that and not a frame that never moves: looking ahead is what brings the method to
``AlignedUMAP``'s quality where the structure changes (``benchmarks/RESULTS-reduce.md``,
2026-11-30: without it 9 of 12 rows met issue 9's bar, with it all 12), and only the frame
nobody has stepped past yet pays for it. For ``anchored-umap`` the result equals a reduction of
all epochs at once; it reads the neighbour sets of the epoch it carries on from in the
embedding's file (:func:`~neuromapper.store.load_neighbours`, stored with every ``anchored-umap``
embedding) instead of rebuilding that epoch's graph, and rebuilds them from its activations for
an embedding stored without them. ``aligned-umap`` optimises all epochs jointly and cannot carry
on: its embedding is recomputed for every epoch. A run of a single epoch is reduced without alignment (its disparity
is NaN), by every method.

Parallelism
-----------
Layers are independent problems. With several layers and enough work, each layer runs in its own
worker process (``multiprocessing`` "spawn" pool, safe from a threaded dashboard); workers send
per-epoch progress back through a queue and are terminated at once on cancellation. A smaller job
(a live run's new epoch) would spend more on starting workers than on its layers, so its layers
run on threads of this process instead, one per core, for the methods whose heavy parts release
the GIL (:data:`neuromapper.methods.THREADED_METHODS`); the others run one layer after the other.
With a ``dask.distributed`` client, layers become tasks on the cluster, progress comes back through a
``distributed.Queue`` and cancellation goes out through a ``distributed.Event``. Each task names
the epochs to lay out, so a worker that opens the run after it grew further still computes what
was asked.

``neuromapper.reduce`` is both this module and the function
------------------------------------------------------------
``neuromapper.reduce(run)`` computes an embedding, and ``import neuromapper.reduce`` /
``from neuromapper.reduce import find_embedding`` reach this module. Both work because the
module object is callable: its class is replaced by :class:`_CallableModule` at import (the
``sys.modules[__name__].__class__`` idiom from the Python reference, "Customizing module
attribute access"). ``neuromapper.reduce.reduce`` is the plain function, for tools that want one.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import multiprocessing
import os
import queue as _queue
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from threading import Event

import numpy as np
import xarray as xr

from . import methods as _methods
from . import quality as _quality
from .reduce_params import REDUCE_VERSION, ReduceParams, check_integer
from .store import (
    find_embedding,
    layer_activations,
    list_embeddings,
    load_embedding,
    load_neighbours,
    open_run,
    run_dir,
    write_embedding,
)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "ReduceParams",
    "ReductionCancelled",
    "find_embedding",
    "list_embeddings",
    "load_embedding",
    "reduce",
]

# The method names, read here by the dashboard; ReduceParams holds them.
METHODS = ReduceParams.METHODS
DEFAULT_METHOD = ReduceParams.DEFAULT.method
# Below this many (sample x epoch) points per layer a worker process costs more than it saves.
POOL_MIN_POINTS = 50_000

Progress = Callable[[int, int, str], None]


class ReductionCancelled(RuntimeError):
    """The reduction was cancelled through its ``cancel`` event; nothing was stored."""


# --- parameters against the run ---------------------------------------------------------------


def _open(run) -> tuple[xr.Dataset, Path]:
    """The run as a lazy Dataset of everything recorded, and its directory.

    A Dataset argument stands for its directory (``attrs["path"]``): the run is opened again from
    disk, so a Dataset that was subset or modified in memory cannot disagree with what workers read.
    """
    root = run_dir(run)
    return open_run(root), root


def select_samples(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Sorted positions of the samples to embed: all, or ``per_class`` of each class (seeded).

    A class with fewer than ``per_class`` samples contributes all of them.
    """
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng([seed, 0x5A3])
    picked = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        picked.append(members if len(members) <= per_class else rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def _check_sizes(params: ReduceParams, n_samples: int) -> None:
    if params.n_neighbors >= n_samples:
        what = "all" if params.per_class is None else f"per_class={params.per_class}"
        raise ValueError(
            f"n_neighbors: expected fewer than the {n_samples} samples being embedded ({what}), "
            f"got {params.n_neighbors}; lower n_neighbors or embed more samples"
        )


# --- one layer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTask:
    """Everything a worker needs to reduce one layer (small and picklable).

    ``epochs`` are the epoch numbers to lay out; with ``after_epoch``, the layout of that (stored,
    earlier) epoch is ``after_layout`` and the method carries on from it, and ``after_neighbours``
    its neighbour sets when they were stored with it (:func:`neuromapper.store.load_neighbours`).
    """

    run: str
    layer: str
    samples: np.ndarray
    epochs: tuple[int, ...]
    method: str
    n_neighbors: int
    min_dist: float
    seed: int
    after_epoch: int | None = None
    after_layout: np.ndarray | None = None
    after_neighbours: np.ndarray | None = None


def reduce_layer(task: LayerTask, on_epoch: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, run: xr.Dataset | None = None) -> dict:
    """Reduce one layer: layouts ``(epoch, sample, 2)`` of ``task.epochs`` plus quality figures per epoch.

    ``on_epoch(i)`` is called as the ``i``-th epoch of ``task.epochs`` is laid out; ``run`` is the
    run already opened (in this process), else it is opened from ``task.run``. Raises
    :class:`neuromapper.methods.Stopped` when ``should_stop()`` answers true. The result's
    ``neighbours`` are the last epoch's neighbour sets for methods that keep them, else ``None``.
    """
    ds = open_run(task.run) if run is None else run
    recorded = layer_activations(ds, task.layer).isel(sample=task.samples)
    activations = np.asarray(recorded.sel(epoch=list(task.epochs)).values, dtype=np.float32)
    after = None
    if task.after_epoch is not None:
        index = [int(e) for e in ds["epoch"].values].index(task.after_epoch)
        last = None  # not read when its neighbour sets were stored: they are all a method needs of them
        if task.after_neighbours is None:
            last = np.asarray(recorded.sel(epoch=task.after_epoch).values, np.float32)
        after = _methods.Continuation(index, last, task.after_layout, task.after_neighbours)
    method = _methods.METHODS[task.method]
    kept = {"neighbours": None}
    options = {"on_neighbours": lambda ids: kept.update(neighbours=ids)} if method is _methods.anchored_umap else {}
    sub = _quality.trust_subsample(activations.shape[1], task.seed)
    n_epochs = activations.shape[0]
    # Trustworthiness of each epoch is computed on a helper thread as soon as the epoch is laid
    # out (scikit-learn spends it in BLAS and sorting, without the GIL), beside the optimiser.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuromapper-quality") as helper:
        trust = {}

        def laid_out(epoch: int, layout: np.ndarray) -> None:
            trust[epoch] = helper.submit(_quality.trustworthiness, activations[epoch][sub], layout[sub].copy())
            if on_epoch is not None:
                on_epoch(epoch)

        try:
            layouts, backend = method(activations, task.n_neighbors, task.min_dist, task.seed, laid_out,
                                      should_stop or _methods._never, after, **options)
        except BaseException:
            for future in trust.values():
                future.cancel()  # stopped or failed: do not wait for figures nobody will read
            raise
        trust = np.array([trust[e].result() if e in trust else np.nan for e in range(n_epochs)])
    before = [None if after is None else after.layout, *layouts[:-1]]
    disparity = np.array([np.nan if b is None else _quality.disparity(b, y) for b, y in zip(before, layouts)])
    unplaced = np.isnan(layouts).any(axis=2).sum(axis=1).astype(np.int32)
    return {"layouts": layouts, "trustworthiness": trust, "disparity": disparity, "unplaced": unplaced,
            "backend": backend, "neighbours": kept["neighbours"]}


# Worker-process side of the pool: the progress queue and stop event are inherited at start-up.
_worker_queue = None
_worker_stop = None
_worker_limits = None


def _init_worker(progress_queue, stop, blas_threads: int, parent: int) -> None:
    global _worker_queue, _worker_stop, _worker_limits
    _worker_queue, _worker_stop = progress_queue, stop
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="neuromapper-orphan-check").start()
    # Load every native library the methods use *before* limiting threads: threadpoolctl only
    # limits libraries already loaded. Each worker owns a share of the cores, so BLAS and OpenMP
    # must not start a thread per core in every worker.
    import pynndescent  # noqa: F401
    import scipy.linalg  # noqa: F401
    import sklearn.decomposition  # noqa: F401
    import sklearn.neighbors  # noqa: F401
    import umap  # noqa: F401
    from threadpoolctl import threadpool_limits

    _worker_limits = threadpool_limits(blas_threads)


ORPHAN_CHECK_SECONDS = 0.5


def _exit_with_parent(parent: int) -> None:
    """End this worker when the process that started it is gone.

    A ``reduce`` killed with SIGKILL (or SIGTERM, which skips ``finally``) cannot terminate its
    workers; without this check they ran on, holding gigabytes, until their layer was done.
    Workers write no files, so exiting at once loses nothing but the unfinished layer.
    """
    while True:
        time.sleep(ORPHAN_CHECK_SECONDS)
        if os.getppid() != parent:
            os._exit(3)


def _pool_task(index: int, task: LayerTask) -> dict:
    def on_epoch(epoch: int) -> None:
        _worker_queue.put((index, epoch))

    return reduce_layer(task, on_epoch, _worker_stop.is_set)


def _dask_task(index: int, task: LayerTask, queue_name: str, event_name: str) -> dict:
    from distributed import Event as DistributedEvent
    from distributed import Queue as DistributedQueue

    progress_queue = DistributedQueue(queue_name)
    stop = DistributedEvent(event_name)

    def on_epoch(epoch: int) -> None:
        progress_queue.put((index, epoch))

    try:
        return reduce_layer(task, on_epoch, stop.is_set)
    except _methods.Stopped:
        return {}


# --- running the layers -----------------------------------------------------------------------


class _Tracker:
    """Counts finished (layer, epoch) units and reports them through ``progress``."""

    def __init__(self, progress: Progress | None, tasks: list[LayerTask], epochs: Sequence[int]):
        self.progress = progress
        self.tasks = tasks
        self.epochs = list(epochs)
        self.total = len(tasks) * len(epochs)
        self.done = 0

    def __call__(self, index: int, epoch: int) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total, f"layer {self.tasks[index].layer}, epoch {self.epochs[epoch]}")


def _run_here(tasks, tracker, cancel: Event | None, ds: xr.Dataset) -> list[dict]:
    results = []
    should_stop = cancel.is_set if cancel is not None else None
    for index, task in enumerate(tasks):
        results.append(reduce_layer(task, lambda epoch, i=index: tracker(i, epoch), should_stop, ds))
    return results


def _run_threads(tasks, tracker, cancel: Event | None, ds: xr.Dataset, n_threads: int) -> list[dict]:
    """The layers on ``n_threads`` threads of this process; progress is still reported in this thread."""
    from threadpoolctl import threadpool_limits

    progress_queue = _queue.SimpleQueue()  # (layer, epoch) as laid out; None as a layer ends
    failed = threading.Event()

    def should_stop() -> bool:
        return failed.is_set() or (cancel is not None and cancel.is_set())

    def one(index: int, task: LayerTask) -> dict:
        try:
            return reduce_layer(task, lambda epoch: progress_queue.put((index, epoch)), should_stop, ds)
        except _methods.Stopped:
            raise
        except BaseException:
            failed.set()  # the other layers give up at their next check
            raise
        finally:
            progress_queue.put(None)

    # BLAS gets a share of the cores, as in the process pool; set before the layers start, so that
    # the limit each layer sets and restores for itself (anchored-umap's) never restores another.
    with threadpool_limits(max(1, (os.cpu_count() or 1) // n_threads)), \
            ThreadPoolExecutor(n_threads, thread_name_prefix="neuromapper-layer") as executor:
        pending = [executor.submit(one, i, task) for i, task in enumerate(tasks)]
        ended = 0
        while ended < len(pending):
            item = progress_queue.get()
            if item is None:
                ended += 1
            else:
                tracker(*item)
    errors = [f.exception() for f in pending if not isinstance(f.exception(), (type(None), _methods.Stopped))]
    if errors:
        raise errors[0]  # the failure itself, not the layers it stopped
    return [future.result() for future in pending]


def _run_pool(tasks, tracker, cancel: Event | None, n_jobs: int) -> list[dict]:
    context = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded (dashboard) process
    progress_queue = context.Queue()
    stop = context.Event()
    blas_threads = max(1, (os.cpu_count() or 1) // n_jobs)
    # ProcessPoolExecutor rather than multiprocessing.Pool: a worker that dies (out of memory,
    # a crash in native code) breaks the executor and raises here, where Pool would hang.
    executor = ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_init_worker,
                                   initargs=(progress_queue, stop, blas_threads, os.getpid()))
    try:
        pending = [executor.submit(_pool_task, i, task) for i, task in enumerate(tasks)]
        while True:
            _drain(progress_queue, tracker, timeout=0.05)
            if cancel is not None and cancel.is_set():
                raise _methods.Stopped
            if all(future.done() for future in pending):
                break
        results = [future.result() for future in pending]  # re-raises a worker's exception here
        _drain(progress_queue, tracker)
        return results
    except BaseException:
        stop.set()  # workers give up at their next check...
        _terminate_workers(executor)  # ...or at once, for work that has no checks (AlignedUMAP)
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        progress_queue.close()


def _drain(progress_queue, tracker, timeout: float | None = None) -> None:
    try:
        item = progress_queue.get(timeout=timeout) if timeout else progress_queue.get_nowait()
        while True:
            tracker(*item)
            item = progress_queue.get_nowait()
    except _queue.Empty:
        pass


def _terminate_workers(executor: ProcessPoolExecutor) -> None:
    if hasattr(executor, "terminate_workers"):  # Python 3.14+
        executor.terminate_workers()
        return
    # Before 3.14 the executor has no public way to stop a running task; its process table is the
    # documented-in-source ``_processes`` dict. Nothing is lost: workers never write files.
    for process in list(getattr(executor, "_processes", {}).values()):
        if process.is_alive():
            process.terminate()


def _run_dask(tasks, tracker, cancel: Event | None, client) -> list[dict]:
    from distributed import Event as DistributedEvent
    from distributed import Queue as DistributedQueue

    name = f"neuromapper-reduce-{uuid.uuid4().hex}"
    progress_queue = DistributedQueue(name, client=client)
    stop = DistributedEvent(name, client=client)
    futures = [client.submit(_dask_task, i, task, name, name, pure=False) for i, task in enumerate(tasks)]
    try:
        while True:
            for item in progress_queue.get(batch=True):
                tracker(*item)
            if cancel is not None and cancel.is_set():
                stop.set()
                raise _methods.Stopped
            if all(future.done() for future in futures):
                break
            time.sleep(0.05)
        results = client.gather(futures)
        for item in progress_queue.get(batch=True):
            tracker(*item)
        return results
    finally:
        client.cancel(futures)
        progress_queue.close()


# --- the entry point --------------------------------------------------------------------------


def reduce(
    run,
    params: ReduceParams | None = None,
    *,
    progress: Progress | str | None = None,
    cancel: Event | None = None,
    client=None,
    n_jobs: int | None = None,
    force: bool = False,
    **changes,
) -> xr.DataArray:
    """Embed every recorded layer in 2-D at every epoch, aligned across epochs; cached beside the run.

    Parameters
    ----------
    run
        A run directory, or a Dataset from :func:`neuromapper.open_run`.
    params
        What to compute, a :class:`~neuromapper.ReduceParams`; default ``ReduceParams.DEFAULT``
        (``anchored-umap``, ``n_neighbors=15``, ``min_dist=0.1``, all samples and layers, seed 0).
    **changes
        Fields of ``ReduceParams`` overriding ``params``: ``method`` (``"anchored-umap"``, fast,
        see :mod:`neuromapper.methods`; ``"aligned-umap"``, umap-learn's ``AlignedUMAP``, the
        reference; ``"umap"`` per epoch, Procrustes-aligned; ``"pca"``), ``n_neighbors``,
        ``min_dist``, ``per_class``, ``seed``, ``layers`` (a name or names). So
        ``reduce(run, min_dist=0.35)`` and ``reduce(run, ReduceParams(min_dist=0.35))`` are the
        same call, and hit the same stored embedding.
    progress
        ``progress(done, total, message)``, called in the calling thread after each (layer,
        epoch) is laid out (all epochs of a layer at once for ``aligned-umap``), counting only the
        epochs computed now; or ``"tqdm"`` for a progress bar on stderr (what the command line shows).
    cancel
        A :class:`threading.Event`; once set, the reduction stops soon and raises
        :class:`ReductionCancelled` (worker processes are terminated at once; in this process
        the optimiser checks it every few optimisation epochs).
    client
        A ``dask.distributed`` client: layers run as tasks on its cluster.
    n_jobs
        Worker processes (one layer each). ``None``: one per layer up to the number of cores when
        the job is big enough to pay for starting processes, else this process (on one thread per
        layer up to the number of cores, for ``anchored-umap``). ``1``: this process, one layer
        after the other.
    force
        Recompute every epoch even when an embedding is stored.

    Returns
    -------
    xarray.DataArray
        ``embedding(epoch, layer, sample, xy)`` float32 (NaN for points that could not be placed),
        with coordinates ``trustworthiness(epoch, layer)``, ``disparity(epoch, layer)`` (NaN at
        the first epoch), ``unplaced(epoch, layer)`` and attributes ``method``, ``params`` (JSON
        of the resolved :class:`~neuromapper.ReduceParams`), ``key``, ``backend``, ``created``,
        ``seconds`` (compute time, summed over extensions).

    Notes
    -----
    When the stored embedding covers only the first epochs of the run (it grew since), only the
    new epochs are computed, carrying on from the last stored layout, and the earlier epochs are
    kept unchanged; ``anchored-umap`` also lays the last stored epoch out again (it can now look
    ahead), and ``aligned-umap`` recomputes all epochs (see the module docstring).
    A run of one epoch is reduced without alignment; ``aligned-umap`` lays it out with plain UMAP.

    Raises
    ------
    ValueError
        Unknown method, bad parameter, ``n_neighbors`` not below the number of samples.
        (:class:`neuromapper.RunError`, a ``ValueError``, for a layer that is not recorded or a
        path that is not a run.)
    TypeError
        ``params`` not a ``ReduceParams``, or a change that names no parameter.
    ReductionCancelled
        When ``cancel`` was set; nothing is stored.
    """
    started = time.perf_counter()
    ds, root = _open(run)
    params = ReduceParams.build(params, **changes).resolve(ds["layer"].values)
    epochs = [int(e) for e in ds["epoch"].values]
    samples = select_samples(np.asarray(ds["label"].values), params.per_class, params.seed)
    _check_sizes(params, len(samples))
    if n_jobs is not None:
        n_jobs = check_integer("n_jobs", n_jobs, 1)
    if progress is not None and progress != "tqdm" and not callable(progress):
        raise TypeError(f"progress: expected a callable progress(done, total, message), 'tqdm' or None, got {progress!r}")

    stored = None if force else find_embedding(ds, params, partial=True)
    if stored is not None and stored.sizes["epoch"] == len(epochs):
        if callable(progress):
            total = len(params.layers) * len(epochs)
            progress(total, total, "loaded from cache")
        return stored
    if stored is not None and (
        params.method == "aligned-umap" or not np.array_equal(stored["sample"].values, ds["sample"].values[samples])
    ):
        stored = None  # a joint optimisation cannot carry on; other samples cannot either: recompute all
    if stored is not None and params.method in _methods.LOOKS_AHEAD:
        # Its last epoch was laid out with no next epoch to look ahead to: laid out again now.
        stored = stored.isel(epoch=slice(0, -1)) if stored.sizes["epoch"] > 1 else None

    new_epochs = epochs[stored.sizes["epoch"]:] if stored is not None else epochs
    if progress == "tqdm":
        with _TqdmProgress(len(params.layers) * len(new_epochs), f"reduce {params.method}") as bar:
            return _compute(ds, root, params, samples, new_epochs, stored, started, bar, cancel, client, n_jobs)
    return _compute(ds, root, params, samples, new_epochs, stored, started, progress, cancel, client, n_jobs)


def _compute(ds, root, params, samples, epochs, stored, started, progress, cancel, client, n_jobs) -> xr.DataArray:
    """Lay out ``epochs`` (after those of ``stored``, if any), store the whole embedding, return it."""
    key = params.key(params.layers)
    after_epoch = None if stored is None else int(stored["epoch"].values[-1])
    kept = None if stored is None else load_neighbours(root, key, after_epoch)
    tasks = [
        LayerTask(str(root), layer, samples, tuple(epochs), params.method, params.n_neighbors, params.min_dist,
                  params.seed, after_epoch,
                  None if stored is None else stored.sel(layer=layer, epoch=after_epoch).values,
                  None if kept is None else kept.sel(layer=layer).values)
        for layer in params.layers
    ]
    tracker = _Tracker(progress, tasks, epochs)
    cores = min(len(tasks), os.cpu_count() or 1)
    n_threads = 1
    if n_jobs is None:
        big = len(samples) * len(epochs) >= POOL_MIN_POINTS
        n_jobs = cores if big else 1
        if not big and params.method in _methods.THREADED_METHODS:
            n_threads = cores
    try:
        if client is not None:
            results = _run_dask(tasks, tracker, cancel, client)
        elif n_jobs > 1 and len(tasks) > 1:
            results = _run_pool(tasks, tracker, cancel, min(n_jobs, len(tasks)))
        elif n_threads > 1:
            results = _run_threads(tasks, tracker, cancel, ds, n_threads)
        else:
            results = _run_here(tasks, tracker, cancel, ds)
    except _methods.Stopped:
        raise ReductionCancelled(f"reduction {key} of {root} cancelled; nothing was stored") from None
    if cancel is not None and cancel.is_set():
        raise ReductionCancelled(f"reduction {key} of {root} cancelled; nothing was stored")

    da = _assemble(ds, params, key, samples, epochs, results, time.perf_counter() - started)
    if stored is not None:
        da = _extend(stored, da)
    neighbours = None
    if all(r.get("neighbours") is not None for r in results):
        neighbours = xr.DataArray(np.stack([r["neighbours"] for r in results]), dims=("layer", "sample", "neighbour"),
                                  coords={"layer": da["layer"].values, "sample": da["sample"].values},
                                  attrs={"epoch": int(da["epoch"].values[-2])})
    write_embedding(root, da, neighbours)
    return load_embedding(root, key)


class _TqdmProgress:
    """A tqdm bar on stderr as a ``progress(done, total, message)`` callback (context manager)."""

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="epoch")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def __call__(self, done: int, total: int, message: str) -> None:
        self.bar.set_postfix_str(message, refresh=False)
        self.bar.update(done - self.bar.n)


def _assemble(ds, params, key, samples, epochs, results, seconds) -> xr.DataArray:
    layouts = np.stack([r["layouts"] for r in results], axis=1).astype(np.float32)  # epoch, layer, sample, xy

    def per_layer(name, dtype):
        return (("epoch", "layer"), np.stack([r[name] for r in results], axis=1).astype(dtype))

    return xr.DataArray(
        layouts,
        dims=("epoch", "layer", "sample", "xy"),
        coords={
            "epoch": np.asarray(epochs, dtype=np.int64),
            "layer": np.array(params.layers, dtype=str),
            "sample": ds["sample"].values[samples],
            "xy": np.array(["x", "y"]),
            "trustworthiness": per_layer("trustworthiness", np.float64),
            "disparity": per_layer("disparity", np.float64),
            "unplaced": per_layer("unplaced", np.int32),
        },
        name="embedding",
        attrs={
            "method": params.method,
            "params": params.to_json(),
            "key": key,
            "backend": ",".join(sorted({r["backend"] for r in results})),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": float(seconds),
            "trust_k": _quality.TRUST_K,
            "trust_sample": _quality.TRUST_SAMPLE,
            "reduce_version": REDUCE_VERSION,
        },
    )


def _extend(stored: xr.DataArray, new: xr.DataArray) -> xr.DataArray:
    """``stored`` followed by the epochs of ``new``; the stored values are copied as they are."""
    whole = xr.concat([stored, new], dim="epoch", coords="different", compat="equals", join="exact")
    backends = {b for b in (stored.attrs.get("backend", "") + "," + new.attrs["backend"]).split(",") if b}
    whole.attrs = {**new.attrs, "backend": ",".join(sorted(backends)),
                   "seconds": float(stored.attrs.get("seconds", 0.0)) + new.attrs["seconds"]}
    return whole


class _CallableModule(types.ModuleType):
    """Makes ``neuromapper.reduce(...)`` call :func:`reduce` while staying this module."""

    def __call__(self, *args, **kwargs):
        return reduce(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(reduce)
