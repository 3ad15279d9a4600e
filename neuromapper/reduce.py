"""The reduce stage: every recorded layer's activations to 2-D, aligned across epochs, cached.

``neuromapper.reduce(run, ...)`` returns an :class:`xarray.DataArray` ``embedding(epoch, layer,
sample, xy)`` and stores it beside the run::

    <run>/embeddings/<key>.nc      one file per parameter set

The methods themselves live in :mod:`neuromapper.methods` (the default ``anchored-umap``, the
reference ``aligned-umap``, ``umap`` per epoch and ``pca``), the quality figures in
:mod:`neuromapper.quality`, the hand-written layout optimiser in :mod:`neuromapper.layout`.
This module handles what is around them: parameters, the cache, storage, parallelism over
layers, progress and cancellation.

The storage key
---------------
An embedding is a pure function of the recorded activations and its parameters (every method is
deterministic for a given seed), so it is stored under a key derived from the parameters only:
the first 16 hex digits of the SHA-256 of the *normalised* parameters as sorted JSON -- method
resolved (``None`` becomes the default method's name), layers resolved to the run's names in the
run's order, ``n_neighbors``/``per_class``/``seed`` as integers, ``min_dist`` as a float -- plus
:data:`REDUCE_VERSION`, bumped whenever an algorithm changes its results so that stale files are
not mistaken for current ones. Equal parameters always give the same key, in any process and on
any machine, so several parameter sets live side by side and survive restarts, and a lookup
(:func:`find_embedding`) is a file-exists check. How the work is done (``n_jobs``, ``client``,
progress, cuML or not) is not part of the key; the backend used is recorded in the file.

A stored embedding also records the epochs it covers; when the run has grown since (training
went on), it no longer matches and is recomputed under the same key.

Writes go through :func:`neuromapper.store.write_atomic` (temporary file, fsync, rename), and
recorded activations are only ever read, so a crash or a cancelled reduction loses only the
result being computed, never a stored one or the run.

Parallelism
-----------
Layers are independent problems. With several layers and enough work, each layer runs in its own
worker process (``multiprocessing`` "spawn" pool, safe from a threaded dashboard); workers send
per-epoch progress back through a queue and are terminated at once on cancellation. With a
``dask.distributed`` client, layers become tasks on the cluster, progress comes back through a
``distributed.Queue`` and cancellation goes out through a ``distributed.Event``.

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
import hashlib
import inspect
import json
import multiprocessing
import os
import queue as _queue
import sys
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
from .store import (
    SCHEMA_VERSION,
    RunError,
    compression_encoding,
    layer_activations,
    open_netcdf,
    open_run,
    recorded_epochs,
    run_root,
    write_atomic,
)

__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "ReductionCancelled",
    "embedding_key",
    "find_embedding",
    "list_embeddings",
    "load_embedding",
    "reduce",
]

REDUCE_VERSION = 1
EMBEDDING_DIR = "embeddings"
METHODS = tuple(_methods.METHODS)
DEFAULT_METHOD = _methods.DEFAULT_METHOD
# Below this many (sample x epoch) points per layer a worker process costs more than it saves.
POOL_MIN_POINTS = 50_000

Progress = Callable[[int, int, str], None]


class ReductionCancelled(RuntimeError):
    """The reduction was cancelled through its ``cancel`` event; nothing was stored."""


# --- parameters and the key -------------------------------------------------------------------


def _as_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _open(run) -> tuple[xr.Dataset, Path]:
    """The run as a lazy Dataset of everything recorded, and its directory.

    A Dataset argument stands for its directory (``attrs["path"]``): the run is opened again from
    disk, so a Dataset that was subset or modified in memory cannot disagree with what workers read.
    """
    if isinstance(run, xr.Dataset):
        path = run.attrs.get("path")
        if not path:
            raise ValueError(
                "run: expected a run directory or a Dataset from neuromapper.open_run (with attrs['path']); "
                "this Dataset has no 'path' attribute"
            )
        run = path
    if not isinstance(run, (str, os.PathLike)):
        raise TypeError(f"run: expected a run directory (str or Path) or a Dataset from open_run, got {type(run).__name__}")
    root = run_root(run)
    return open_run(root), root


def _params(ds: xr.Dataset, method, layers, n_neighbors, min_dist, per_class, seed) -> dict:
    """Validate the parameters against the run and return them normalised (see the docstring)."""
    method = DEFAULT_METHOD if method is None else method
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)} (or None for {DEFAULT_METHOD!r}), got {method!r}")
    recorded = [str(v) for v in ds["layer"].values]
    if layers is None:
        chosen = recorded
    else:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        if not wanted:
            raise ValueError(f"layers: expected None (all) or a list of layer names from {recorded}, got an empty list")
        unknown = [name for name in wanted if name not in recorded]
        if unknown:
            raise RunError(f"layers: {unknown} not recorded in this run; recorded layers: {recorded}")
        chosen = [name for name in recorded if name in wanted]
    n_neighbors = _as_int("n_neighbors", n_neighbors, 2)
    if isinstance(min_dist, bool) or not isinstance(min_dist, (int, float, np.floating, np.integer)) or not (
        0.0 <= float(min_dist) <= _methods.SPREAD
    ):
        raise ValueError(f"min_dist: expected a number from 0 to {_methods.SPREAD}, got {min_dist!r}")
    per_class = None if per_class is None else _as_int("per_class", per_class, 1)
    seed = _as_int("seed", seed, 0)
    return {
        "method": method,
        "layers": chosen,
        "n_neighbors": n_neighbors,
        "min_dist": float(min_dist),
        "per_class": per_class,
        "seed": seed,
    }


def embedding_key(params: dict) -> str:
    """The storage key of normalised ``params``: 16 hex digits of a SHA-256 (see the docstring)."""
    text = json.dumps({**params, "version": REDUCE_VERSION}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _check_sizes(params: dict, n_samples: int, epochs: Sequence[int]) -> None:
    if len(epochs) < 2:
        raise ValueError(
            f"run has {len(epochs)} recorded epoch{'s' if len(epochs) != 1 else ''} ({list(epochs)}); reduce aligns "
            "embeddings across epochs and needs at least 2: record more epochs first"
        )
    if params["n_neighbors"] >= n_samples:
        what = "all" if params["per_class"] is None else f"per_class={params['per_class']}"
        raise ValueError(
            f"n_neighbors: expected fewer than the {n_samples} samples being embedded ({what}), "
            f"got {params['n_neighbors']}; lower n_neighbors or embed more samples"
        )


# --- the cache --------------------------------------------------------------------------------


def _embedding_path(root: Path, key: str) -> Path:
    return root / EMBEDDING_DIR / f"{key}.nc"


def load_embedding(run, key: str) -> xr.DataArray:
    """The stored embedding ``key`` of ``run`` (a run directory or a Dataset from ``open_run``).

    Raises
    ------
    FileNotFoundError
        When no embedding is stored under ``key``; the message lists the stored keys.
    """
    root = _root_of(run)
    path = _embedding_path(root, key)
    if not path.exists():
        stored = [info["key"] for info in list_embeddings(root)]
        raise FileNotFoundError(f"key: no embedding {key!r} stored in {root / EMBEDDING_DIR}; stored keys: {stored}")
    with open_netcdf(path) as stored_ds:
        da = stored_ds["embedding"].load()
    da.encoding = {}
    return da


def _root_of(run) -> Path:
    if isinstance(run, xr.Dataset):
        if not run.attrs.get("path"):
            raise ValueError("run: expected a run directory or a Dataset from neuromapper.open_run; "
                             "this Dataset has no 'path' attribute")
        return run_root(run.attrs["path"])
    return run_root(run)


def list_embeddings(run) -> list[dict]:
    """The embeddings stored beside ``run``, oldest first.

    Returns
    -------
    list of dict
        One per file: ``key``, ``method``, ``params`` (dict), ``layers``, ``epochs``,
        ``created`` (ISO 8601, UTC), ``backend``, ``seconds`` (time it took) and ``path``.
    """
    root = _root_of(run)
    found = []
    for path in sorted((root / EMBEDDING_DIR).glob("*.nc")):
        try:
            with open_netcdf(path) as stored_ds:
                attrs = dict(stored_ds["embedding"].attrs)
                epochs = [int(e) for e in stored_ds["epoch"].values]
        except (RunError, KeyError, OSError):
            continue  # not an embedding file (or not readable): never let one file hide the others
        params = json.loads(attrs.get("params", "{}"))
        found.append({
            "key": attrs.get("key", path.stem),
            "method": attrs.get("method", ""),
            "params": params,
            "layers": params.get("layers", []),
            "epochs": epochs,
            "created": attrs.get("created", ""),
            "backend": attrs.get("backend", ""),
            "seconds": float(attrs.get("seconds", float("nan"))),
            "path": str(path),
        })
    return sorted(found, key=lambda info: info["created"])


def _load_if_current(root: Path, key: str, epochs: Sequence[int]) -> xr.DataArray | None:
    path = _embedding_path(root, key)
    if not path.exists():
        return None
    try:
        da = load_embedding(root, key)
    except (RunError, FileNotFoundError):
        return None
    if [int(e) for e in da["epoch"].values] != [int(e) for e in epochs]:
        return None  # the run has grown (or shrunk) since: recompute
    return da


def find_embedding(
    run, method=None, layers=None, n_neighbors=15, min_dist=0.1, per_class=None, seed=0
) -> xr.DataArray | None:
    """The stored embedding for these parameters if it is current, else ``None``; never computes.

    Parameters are those of :func:`reduce` and are validated the same way.
    """
    ds, root = _open(run)
    params = _params(ds, method, layers, n_neighbors, min_dist, per_class, seed)
    return _load_if_current(root, embedding_key(params), recorded_epochs(root))


# --- one layer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTask:
    """Everything a worker needs to reduce one layer (small and picklable)."""

    run: str
    layer: str
    samples: np.ndarray
    method: str
    n_neighbors: int
    min_dist: float
    seed: int


def reduce_layer(task: LayerTask, on_epoch: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, run: xr.Dataset | None = None) -> dict:
    """Reduce one layer: layouts ``(epoch, sample, 2)`` plus quality figures per epoch.

    ``on_epoch(i)`` is called as epoch ``i`` is laid out; ``run`` is the run already opened (in
    this process), else it is opened from ``task.run``. Raises
    :class:`neuromapper.methods.Stopped` when ``should_stop()`` answers true.
    """
    ds = open_run(task.run) if run is None else run
    activations = np.asarray(layer_activations(ds, task.layer).isel(sample=task.samples).values, dtype=np.float32)
    method = _methods.METHODS[task.method]
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
                                      should_stop or _methods._never)
        except BaseException:
            for future in trust.values():
                future.cancel()  # stopped or failed: do not wait for figures nobody will read
            raise
        trust = np.array([trust[e].result() if e in trust else np.nan for e in range(n_epochs)])
    disparity = np.array([np.nan] + [_quality.disparity(layouts[e - 1], layouts[e]) for e in range(1, n_epochs)])
    unplaced = np.isnan(layouts).any(axis=2).sum(axis=1).astype(np.int32)
    return {"layouts": layouts, "trustworthiness": trust, "disparity": disparity, "unplaced": unplaced,
            "backend": backend}


# Worker-process side of the pool: the progress queue and stop event are inherited at start-up.
_worker_queue = None
_worker_stop = None
_worker_limits = None


def _init_worker(progress_queue, stop, blas_threads: int) -> None:
    global _worker_queue, _worker_stop, _worker_limits
    _worker_queue, _worker_stop = progress_queue, stop
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

    def __init__(self, progress: Progress | None, tasks: list[LayerTask], n_epochs: int, epochs: Sequence[int]):
        self.progress = progress
        self.tasks = tasks
        self.epochs = list(epochs)
        self.total = len(tasks) * n_epochs
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


def _run_pool(tasks, tracker, cancel: Event | None, n_jobs: int) -> list[dict]:
    context = multiprocessing.get_context("spawn")  # fork is unsafe in a threaded (dashboard) process
    progress_queue = context.Queue()
    stop = context.Event()
    blas_threads = max(1, (os.cpu_count() or 1) // n_jobs)
    # ProcessPoolExecutor rather than multiprocessing.Pool: a worker that dies (out of memory,
    # a crash in native code) breaks the executor and raises here, where Pool would hang.
    executor = ProcessPoolExecutor(n_jobs, mp_context=context, initializer=_init_worker,
                                   initargs=(progress_queue, stop, blas_threads))
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
    method: str | None = None,
    layers: str | Sequence[str] | None = None,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    per_class: int | None = None,
    seed: int = 0,
    *,
    progress: Progress | str | None = None,
    cancel: Event | None = None,
    client=None,
    n_jobs: int | None = None,
    force: bool = False,
) -> xr.DataArray:
    """Embed every recorded layer in 2-D at every epoch, aligned across epochs; cached beside the run.

    Parameters
    ----------
    run
        A run directory, or a Dataset from :func:`neuromapper.open_run`.
    method
        ``"anchored-umap"`` (default, fast, see :mod:`neuromapper.methods`), ``"aligned-umap"``
        (umap-learn's ``AlignedUMAP``, the reference), ``"umap"`` (per epoch, Procrustes-aligned)
        or ``"pca"``.
    layers
        A layer name or list of names; ``None`` for all recorded layers.
    n_neighbors, min_dist
        UMAP's neighbourhood size (2 to the number of samples - 1) and minimum distance (0 to 1).
    per_class
        Embed only this many samples of each class (stratified, seeded); ``None`` for all.
    seed
        Seed of everything random; equal parameters give equal embeddings.
    progress
        ``progress(done, total, message)``, called in the calling thread after each (layer,
        epoch) is laid out (all epochs of a layer at once for ``aligned-umap``); or ``"tqdm"``
        for a progress bar on stderr (what the command line shows).
    cancel
        A :class:`threading.Event`; once set, the reduction stops soon and raises
        :class:`ReductionCancelled` (worker processes are terminated at once; in this process
        the optimiser checks it every few optimisation epochs).
    client
        A ``dask.distributed`` client: layers run as tasks on its cluster.
    n_jobs
        Worker processes (one layer each). ``None``: one per layer up to the number of cores when
        the job is big enough to pay for starting processes, else this process. ``1``: this process.
    force
        Recompute even when a current embedding is stored.

    Returns
    -------
    xarray.DataArray
        ``embedding(epoch, layer, sample, xy)`` float32 (NaN for points that could not be placed),
        with coordinates ``trustworthiness(epoch, layer)``, ``disparity(epoch, layer)`` (NaN at
        the first epoch), ``unplaced(epoch, layer)`` and attributes ``method``, ``params`` (JSON),
        ``key``, ``backend``, ``created``, ``seconds``.

    Raises
    ------
    ValueError
        Unknown method, bad parameter, ``n_neighbors`` not below the number of samples, a run
        with fewer than two epochs. (:class:`neuromapper.RunError`, a ``ValueError``, for a layer
        that is not recorded or a path that is not a run.)
    ReductionCancelled
        When ``cancel`` was set; nothing is stored.
    """
    started = time.perf_counter()
    ds, root = _open(run)
    params = _params(ds, method, layers, n_neighbors, min_dist, per_class, seed)
    epochs = [int(e) for e in ds["epoch"].values]
    samples = select_samples(np.asarray(ds["label"].values), params["per_class"], params["seed"])
    _check_sizes(params, len(samples), epochs)
    key = embedding_key(params)
    total = len(params["layers"]) * len(epochs)
    if not force:
        cached = _load_if_current(root, key, epochs)
        if cached is not None:
            if callable(progress):
                progress(total, total, "loaded from cache")
            return cached
    if n_jobs is not None:
        n_jobs = _as_int("n_jobs", n_jobs, 1)

    if progress == "tqdm":
        with _TqdmProgress(total, f"reduce {params['method']}") as bar:
            return _compute(ds, root, params, key, samples, epochs, started, bar, cancel, client, n_jobs)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress: expected a callable progress(done, total, message), 'tqdm' or None, got {progress!r}")
    return _compute(ds, root, params, key, samples, epochs, started, progress, cancel, client, n_jobs)


def _compute(ds, root, params, key, samples, epochs, started, progress, cancel, client, n_jobs) -> xr.DataArray:
    tasks = [LayerTask(str(root), layer, samples, params["method"], params["n_neighbors"], params["min_dist"],
                       params["seed"]) for layer in params["layers"]]
    tracker = _Tracker(progress, tasks, len(epochs), epochs)
    if n_jobs is None:
        big = len(samples) * len(epochs) >= POOL_MIN_POINTS
        n_jobs = min(len(tasks), os.cpu_count() or 1) if big else 1
    try:
        if client is not None:
            results = _run_dask(tasks, tracker, cancel, client)
        elif n_jobs > 1 and len(tasks) > 1:
            results = _run_pool(tasks, tracker, cancel, min(n_jobs, len(tasks)))
        else:
            results = _run_here(tasks, tracker, cancel, ds)
    except _methods.Stopped:
        raise ReductionCancelled(f"reduction {key} of {root} cancelled; nothing was stored") from None
    if cancel is not None and cancel.is_set():
        raise ReductionCancelled(f"reduction {key} of {root} cancelled; nothing was stored")

    da = _assemble(ds, params, key, samples, epochs, results, time.perf_counter() - started)
    stored = da.to_dataset()
    stored.attrs = {"neuromapper_schema": SCHEMA_VERSION}
    write_atomic(stored, _embedding_path(root, key), compression_encoding(stored, 1))
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

    backends = sorted({r["backend"] for r in results})
    public = {k: params[k] for k in ("method", "n_neighbors", "min_dist", "per_class", "seed", "layers")}
    return xr.DataArray(
        layouts,
        dims=("epoch", "layer", "sample", "xy"),
        coords={
            "epoch": np.asarray(epochs, dtype=np.int64),
            "layer": np.array(params["layers"], dtype=str),
            "sample": ds["sample"].values[samples],
            "xy": np.array(["x", "y"]),
            "trustworthiness": per_layer("trustworthiness", np.float64),
            "disparity": per_layer("disparity", np.float64),
            "unplaced": per_layer("unplaced", np.int32),
        },
        name="embedding",
        attrs={
            "method": params["method"],
            "params": json.dumps(public),
            "key": key,
            "backend": ",".join(backends),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": float(seconds),
            "trust_k": _quality.TRUST_K,
            "trust_sample": _quality.TRUST_SAMPLE,
            "reduce_version": REDUCE_VERSION,
        },
    )


class _CallableModule(types.ModuleType):
    """Makes ``neuromapper.reduce(...)`` call :func:`reduce` while staying this module."""

    def __call__(self, *args, **kwargs):
        return reduce(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
__signature__ = inspect.signature(reduce)
