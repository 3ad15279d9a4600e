"""The run store: create a run, append one epoch at a time, open it lazily, validate it.

A *run* is a directory::

    <run>/run.nc                   once per run: labels, class names, thumbnails, layer table,
                                   model description and hyperparameters (JSON strings)
    <run>/epochs/epoch-000007.nc   one file per captured epoch: activations, logits, loss,
                                   prediction, metrics, first-conv weights, non-finite flags
    <run>/embeddings/<key>.nc      2-D embeddings computed later by :mod:`neuromapper.reduce`

Why one netCDF file per epoch (a choice that is hard to undo, so the reasons are here):

* **Crash safety.** netCDF-4 files are HDF5 files, and an HDF5 file that is being appended to
  when the process is killed can be left unreadable as a whole. Writing each epoch to
  ``epoch-N.nc.tmp``, fsyncing it and renaming it with :func:`os.replace` (atomic on POSIX)
  means a ``kill -9`` at any moment loses at most the epoch being written: every other file is
  either complete or absent. Leftover ``*.tmp`` files are ignored on open.
* **Appends never rewrite.** Capturing epoch 57 of a long run writes one small file; nothing
  recorded earlier is touched, and reductions written beside the run never touch activations.
* **Lazy and plain.** :func:`open_run` opens each file with dask chunks and concatenates them
  along ``epoch``, so a run larger than memory opens instantly; each file is an ordinary netCDF
  file that ``xarray.open_mfdataset(run/"epochs/*.nc")`` or ``netCDF4.Dataset`` reads without
  NeuroMapper.

Why one padded ``activation(epoch, layer, sample, unit)`` variable rather than one variable per
layer: the design card asks for a Dataset indexed by epoch, layer, sample and dimension, and a
single variable makes ``ds.activation.sel(layer="fc1", epoch=3)`` the whole API. Layers have
different widths, so the ``unit`` axis is as long as the widest layer and ``layer_units(layer)``
says how many units are real; the padding is NaN, which zlib compresses to almost nothing on
disk (``benchmarks/bench_record.py`` prints the sizes). Use :func:`layer_activations` to get a
layer's real units only.

Adversarial twins (schema version 2). A capture may also record *twins*: probe samples changed
by an attack against the model at that epoch, and instances the user passes in (see
:mod:`neuromapper.attacks` and :meth:`neuromapper.Recorder.capture`). They live in the epoch
files along a ``twin`` dimension whose coordinate is a string id with this grammar::

    <method>[@<eps>]/<source>

``method`` is ``fgsm``, ``pgd``, ``one-pixel`` or ``instance``; ``@<eps>`` (e.g. ``fgsm@0.1``,
the shortest ``repr`` of the float) appears only when several ε are configured, otherwise the one ε is
in the run's ``attacks`` attribute (JSON of the :class:`~neuromapper.attacks.AttackConfig`, with
``twin_ids``, ``lo`` and ``hi`` resolved). ``source`` is the probe *sample id* (a value of the
``sample`` coordinate) an attack started from, or the user's name for an instance; ids split
on the first ``"/"`` only, so a name may contain ``"/"``. Only :func:`twin_table` parses ids.
The variables, all with an ``epoch`` axis so that epochs with different twins concatenate:

=====================================================  =======  ================================
``twin_activation(epoch, layer, twin, unit)``          float32  as ``activation`` (NaN-padded)
``twin_logits(epoch, twin, class)``                    float32  as ``logits``
``twin_prediction(epoch, twin)``                       int16    argmax of ``twin_logits``
``twin_label(epoch, twin)``                            int16    the source's label; an
                                                                instance's given label or -1
``twin_fooled(epoch, twin)``                           int8     1 when the source's prediction
                                                                (``prediction``) at that epoch
                                                                was its label and the twin's is
                                                                not; else 0 (always 0 for
                                                                instances)
``twin_perturbation(epoch, twin)``                     float32  L∞ distance to the source in
                                                                input units (NaN for instances)
``twin_evaluations(epoch, twin)``                      int32    model evaluations the attack
                                                                spent: 1 for FGSM, ``steps`` for
                                                                PGD, the one-pixel search's
                                                                count (the budget when nothing
                                                                fooled), 0 for instances
``twin_image(epoch, twin, image_y, image_x,            uint8    thumbnail on the probe images'
image_channel)``                                                grey/colour scale
=====================================================  =======  ================================

After :func:`open_run` a twin absent at an epoch (one-pixel twins are usually made at a few
epochs only) is NaN there, which turns the integer variables into floats. Runs written with
schema version 1 have no twins and open as before.

What the Model and Training pages read (schema version 3; older runs open and :func:`lacks` says
what they miss). Layers have differently shaped feature maps and weights, so each gets its own
variable with its own axes, numbered by the layer's position in a JSON list in run.nc's
attributes, never named after the layer: layer names are user text (``layer3.1``, or anything a
model calls a module) and netCDF variable names are not. :func:`feature_maps` and :func:`weights`
are the only readers of that numbering and give every layer the same axis names back.

============================================================  =======  ===========================
``spotlight(spotlight)`` in run.nc                             int      the probe sample ids whose
                                                                        full feature maps are kept
``feature_map_<i>(epoch, spotlight, channel_<i>,                int16    the full output of
map_y_<i>, map_x_<i>)``                                         packed   ``map_layers[i]`` (a conv
                                                                        layer) for the spotlight
                                                                        samples; 16-bit CF packing
                                                                        per variable and epoch
``weight_<i>(epoch, out_channel_<i>, in_channel_<i>,            float32  the kernels of
kernel_y_<i>, kernel_x_<i>)``                                            ``weight_layers[i]``; a
                                                                        Linear on image inputs
                                                                        stores ``(out, C, H, W)``
``boundary(epoch, grid_y, grid_x, class)``, coordinates         int16    softmax of the model over a
``grid_x``, ``grid_y`` in run.nc                                packed   grid covering 2-D inputs
``input_feature(sample, input_unit)`` in run.nc                 float32  the probe's inputs,
                                                                        flattened; PCA-compressed
                                                                        when wide (attr
                                                                        ``input_pca``)
============================================================  =======  ===========================

Run attributes (JSON): ``map_layers`` (names), ``weight_layers`` (``[{"layer", "kind", "module"}]``,
kind ``"conv"`` or ``"linear-image"``) and ``skipped_weights`` (``[{"layer", "bytes", "reason"}]``:
what the recorder's per-epoch weight budget left out, so a view can say so). Schema-2 runs kept
only the first conv layer's kernels as ``first_conv_weight``; :func:`weights` reads those too.

xarray attributes hold only strings and numbers, so dictionaries (hyperparameters, the model
description) are stored as JSON strings; booleans are stored as 0/1.

String variables and coordinates (layer and class names) are written as fixed-width character
arrays, not netCDF-4 variable-length strings: with netCDF4 1.7.4+ (HDF5 2.x) and xarray, opening
a file with vlen strings again after another handle to it was closed segfaults the process
(pydata/xarray#9093), which a dashboard serving several sessions does all the time. They read
back as ordinary ``str`` arrays.

The HDF5 library that netCDF4 wheels bundle is not thread-safe, and xarray opens a file partly
outside its own lock (variable metadata is read unlocked), so two threads opening run files at
once crash the process with a bus error (seen with a ``dask.distributed`` worker reducing two
layers; the dashboard's background reduce does the same beside a serving thread). Every open,
every lazy read of an opened file and every write in this module therefore goes through one
process-wide re-entrant lock, :data:`HDF5_GUARD`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .reduce_params import KEY_LENGTH, ReduceParams

SCHEMA_VERSION = 3
"""1: the first schema. 2: adversarial twins in the epoch files and the run's ``attacks`` attribute.
3: spotlight feature maps, layer weights, the decision-boundary grid and the probe's input features."""
TWIN_METHODS = ("fgsm", "pgd", "one-pixel", "instance")
RUN_FILE = "run.nc"
EPOCH_DIR = "epochs"
EPOCH_PATTERN = re.compile(r"^epoch-(\d{6})\.nc$")


class _ProcessGuard:
    """A re-entrant lock shared by the whole process that pickles as a reference to itself.

    xarray keeps the lock inside every lazily opened array, and dask (with a distributed client)
    pickles those arrays; a plain :class:`threading.RLock` cannot be pickled, and a copy would not
    guard anything. Unpickled in a worker process it becomes that process's own guard.
    """

    _lock = threading.RLock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self):
        self._lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def __reduce__(self):
        return (_process_guard, ())


def _process_guard() -> _ProcessGuard:
    return HDF5_GUARD


HDF5_GUARD = _ProcessGuard()
"""Serialises all HDF5 work of this process that goes through this module (see the docstring)."""


class RunError(ValueError):
    """A run directory or one of its files is not what NeuroMapper expects."""


def epoch_file(path: str | os.PathLike, epoch: int) -> Path:
    """Path of the netCDF file that holds ``epoch`` of the run at ``path``."""
    return Path(path) / EPOCH_DIR / f"epoch-{int(epoch):06d}.nc"


@contextlib.contextmanager
def replacing(target: str | os.PathLike):
    """Write ``target`` whole or not at all: yields a temporary path beside it to write to.

    On leaving the block the temporary file is fsynced and renamed over ``target`` (atomic on
    POSIX) and the directory entry fsynced, so a completed write survives a power cut. If the
    block fails (a full disk, a kill), the temporary file is removed and ``target`` is as it was.
    Every file NeuroMapper writes goes through here: epochs, embeddings, snapshots.
    """
    target = Path(target)
    if target.is_dir():
        raise IsADirectoryError(f"output: {target} is a directory; expected the path of a file to write")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(ds: xr.Dataset, target: str | os.PathLike, encoding: dict | None = None) -> Path:
    """Write ``ds`` to ``target`` so that the file is either complete or absent (see :func:`replacing`).

    A failed write (a full disk, a read-only folder) raises an ``OSError`` naming ``target``
    (HDF5 reports a full disk only as "NetCDF: HDF error").
    """
    target = Path(target)
    ds = ds.load()  # lazy inputs are read (under the guard) before the write takes it
    try:
        with replacing(target) as tmp, HDF5_GUARD:
            ds.to_netcdf(tmp, engine="netcdf4", encoding=encoding or {})
    except (OSError, RuntimeError) as exc:  # netCDF4 raises RuntimeError("NetCDF: HDF error")
        if isinstance(exc, OSError) and exc.filename:
            raise
        free = _free_bytes(target.parent)
        raise OSError(getattr(exc, "errno", None) or 0,
                      f"could not write {target} ({type(exc).__name__}: {exc}; {free} free on that disk); "
                      "nothing was changed", str(target)) from exc
    return target


def _free_bytes(folder: Path) -> str:
    try:
        usage = os.statvfs(folder)
    except OSError:
        return "unknown space"
    return f"{usage.f_bavail * usage.f_frsize / 1e6:,.1f} MB"


CHUNK_BYTES = 4_000_000


def compression_encoding(ds: xr.Dataset, complevel: int | None) -> dict:
    """netCDF encoding that zlib-compresses every array variable of ``ds`` at ``complevel``.

    ``complevel=None`` stores the arrays uncompressed. Arrays with a ``sample`` axis are chunked
    one epoch and layer at a time and about :data:`CHUNK_BYTES` along ``sample``: reading one
    layer across epochs (what :mod:`neuromapper.reduce` does) never decompresses other layers,
    and a per-sample variable such as ``prediction`` is one chunk per epoch even for a million
    samples, so reading it is a few large reads rather than thousands of small ones.
    """
    encoding = {}
    for name, var in ds.variables.items():
        if var.dtype.kind in "UO":
            encoding[name] = {"dtype": "S1"}  # char arrays, not vlen strings: see module docstring
            continue
        if name not in ds.data_vars or var.ndim == 0:
            continue
        enc: dict = {"zlib": complevel is not None}
        if complevel is not None:
            enc["complevel"] = int(complevel)
            enc["shuffle"] = True
        if "sample" in var.dims:
            per_sample = var.dtype.itemsize * int(np.prod(
                [size for dim, size in zip(var.dims, var.shape) if dim not in ("epoch", "layer", "sample")]))
            chunk_sample = max(1024, CHUNK_BYTES // max(per_sample, 1))
            enc["chunksizes"] = tuple(
                min(size, chunk_sample) if dim == "sample" else (1 if dim in ("epoch", "layer") else size)
                for dim, size in zip(var.dims, var.shape)
            )
        encoding[name] = enc
    return encoding


def create_run(
    path: str | os.PathLike,
    *,
    labels: np.ndarray,
    class_names: list[str],
    layers: list[str],
    layer_units: list[int],
    layer_kinds: list[str],
    layer_reductions: list[str] | None = None,
    images: np.ndarray | None = None,
    sample_ids: np.ndarray | None = None,
    spotlight: np.ndarray | None = None,
    inputs: np.ndarray | None = None,
    grid: tuple[np.ndarray, np.ndarray] | None = None,
    attrs: dict | None = None,
    overwrite: bool = False,
    resume: bool = False,
) -> Path:
    """Create the run directory and write ``run.nc``, the part of a run that never changes.

    ``images`` are uint8 thumbnails ``(sample, height, width, channel)``; ``layer_reductions``
    says how each layer's output became one vector per sample (``"none"``, ``"spatial-mean"``,
    ``"time-last"``...); ``attrs`` values that are dicts or lists are stored as JSON strings,
    booleans as 0/1. ``spotlight`` (sample ids whose feature maps the epochs keep), ``inputs``
    (the probe's input features, ``(sample, input_unit)``) and ``grid`` (the ``(xs, ys)`` of the
    decision-boundary grid) are the schema-3 parts described in the module docstring.

    An existing run at ``path`` is an error unless ``overwrite`` (its epochs and embeddings are
    deleted) or ``resume``: then nothing is written, after checking that the existing ``run.nc``
    describes the same run (see :func:`_check_same_run`).
    """
    root = Path(path)
    n = len(labels)
    coords = {
        "sample": np.arange(n) if sample_ids is None else np.asarray(sample_ids),
        "layer": np.array(layers, dtype=str),
        "class": np.array(class_names, dtype=str),
    }
    data = {
        "label": ("sample", np.asarray(labels, dtype=np.int16)),
        "layer_units": ("layer", np.asarray(layer_units, dtype=np.int32)),
        "layer_kind": ("layer", np.array(layer_kinds, dtype=str)),
    }
    if layer_reductions is not None:
        data["layer_reduction"] = ("layer", np.array(layer_reductions, dtype=str))
    if images is not None:
        data["image"] = (("sample", "image_y", "image_x", "image_channel"), images.astype(np.uint8))
    if spotlight is not None and len(spotlight):
        coords["spotlight"] = np.asarray(spotlight)
    if inputs is not None:
        data["input_feature"] = (("sample", "input_unit"), np.asarray(inputs, dtype=np.float32))
    if grid is not None:
        coords["grid_x"], coords["grid_y"] = (np.asarray(v, dtype=np.float32) for v in grid)
    ds = xr.Dataset(data, coords=coords)
    ds.attrs = {"neuromapper_schema": SCHEMA_VERSION, "run_id": uuid.uuid4().hex}
    for key, value in (attrs or {}).items():
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, default=str)
        elif isinstance(value, bool):
            value = int(value)
        elif value is None:
            continue
        ds.attrs[key] = value
    if (root / RUN_FILE).exists() or recorded_epochs(root):
        if resume:
            _check_same_run(root, ds)
            return root / RUN_FILE
        if not overwrite:
            raise RunError(
                f"{root} already holds a NeuroMapper run: pass resume=True to append to it, "
                "overwrite=True to replace it, or choose another path"
            )
        for old in (root / EPOCH_DIR).glob("epoch-*.nc*"):
            old.unlink()
        for old in (root / "embeddings").glob("*.nc*"):
            old.unlink()
    return write_atomic(ds, root / RUN_FILE, compression_encoding(ds, 4))


def _check_same_run(root: Path, new: xr.Dataset) -> None:
    """Raise :class:`RunError` naming each way ``new`` differs from the run at ``root``.

    Epochs appended to a run must share its layers, probe and classes, or the run would mix
    incomparable epochs; a SHA-256 of the probe inputs (attribute ``probe_sha256``) stands in for
    the inputs themselves, which run.nc does not keep.
    """
    if not (root / RUN_FILE).exists():
        raise RunError(
            f"{root} holds epoch files but no {RUN_FILE}, so resume=True cannot check that they belong "
            "to this run: pass overwrite=True to replace them, or choose another path"
        )
    old = open_netcdf(root / RUN_FILE).load()
    old.close()
    differences = []
    for name, what in [("layer", "layer names"), ("layer_units", "layer widths"),
                       ("layer_reduction", "layer reductions"), ("class", "class names"),
                       ("sample", "probe sample ids"), ("label", "probe labels"),
                       ("spotlight", "spotlight sample ids")]:
        was = old[name].values if name in old.variables else None
        now = new[name].values if name in new.variables else None
        if was is None and now is None:
            continue
        if was is None or now is None or len(was) != len(now) or not np.array_equal(was, now):
            differences.append(f"{what}: {_difference(was, now)}")
    for name in ("map_layers", "weight_layers"):
        if old.attrs.get(name, "[]") != new.attrs.get(name, "[]"):
            differences.append(f"{name}: {old.attrs.get(name, 'none')} in the run, {new.attrs.get(name, 'none')} now")
    if old.attrs.get("attacks") != new.attrs.get("attacks"):
        differences.append(
            f"attacks: {old.attrs.get('attacks', 'none')} in the run, {new.attrs.get('attacks', 'none')} now"
        )
    if old.attrs.get("probe_sha256") != new.attrs.get("probe_sha256"):
        differences.append(
            f"probe inputs: SHA-256 {old.attrs.get('probe_sha256')} in the run, {new.attrs.get('probe_sha256')} now"
        )
    if differences:
        raise RunError(
            f"resume=True cannot append to {root}: this recorder differs from the recorded run in "
            + "; ".join(differences)
            + ". Pass overwrite=True to start the run afresh, or choose another path"
        )


def _difference(was: np.ndarray | None, now: np.ndarray | None) -> str:
    """How a layer-table or probe column of the run differs from the new one, in a few words."""
    if was is not None and now is not None and len(was) == len(now) > 12:
        differing = np.flatnonzero(was != now)
        return f"{len(differing)} of {len(was)} differ (first at position {differing[0]})"
    return f"the run has {_listing(was)}, this recorder {_listing(now)}"


def _listing(values: np.ndarray | None) -> str:
    if values is None:
        return "none"
    return str(values.tolist()) if len(values) <= 12 else f"{len(values)} entries"


def epoch_dataset(
    epoch: int,
    *,
    layers: list[str],
    activations: list[np.ndarray],
    logits: np.ndarray,
    loss: np.ndarray,
    metrics: dict | None = None,
    feature_maps: list[np.ndarray] | None = None,
    weights: list[np.ndarray] | None = None,
    boundary: np.ndarray | None = None,
    twins: dict | None = None,
) -> xr.Dataset:
    """Build the Dataset of one epoch in the store's schema.

    ``activations`` is one ``(sample, units)`` array per layer; they are padded with NaN to the
    widest layer (see the module docstring). Non-finite values are kept as recorded and counted
    in ``nonfinite(epoch, layer)`` so that views can flag them.

    ``twins`` holds the epoch's adversarial twins and instances (see the module docstring):
    ``id`` (one string per twin, from :func:`twin_id`), ``activations`` (one ``(twin, units)``
    array per layer), ``logits`` ``(twin, class)``, ``label``, ``fooled``, ``perturbation``,
    ``evaluations`` (one value per twin) and optionally ``images`` (uint8
    ``(twin, y, x, channel)``).

    ``feature_maps`` holds one ``(spotlight, channel, y, x)`` array per entry of the run's
    ``map_layers``, ``weights`` one ``(out, in, ky, kx)`` array per entry of ``weight_layers``,
    and ``boundary`` the ``(grid_y, grid_x, class)`` probabilities (see the module docstring).
    """
    n = logits.shape[0]
    width = max(a.shape[1] for a in activations)
    act = np.full((1, len(layers), n, width), np.nan, dtype=np.float32)
    nonfinite = np.zeros((1, len(layers)), dtype=np.int64)
    for i, a in enumerate(activations):
        act[0, i, :, : a.shape[1]] = a
        nonfinite[0, i] = int(a.size - np.count_nonzero(np.isfinite(a)))
    ds = xr.Dataset(
        {
            "activation": (("epoch", "layer", "sample", "unit"), act),
            "nonfinite": (("epoch", "layer"), nonfinite),
            "logits": (("epoch", "sample", "class"), logits[None].astype(np.float32)),
            "prediction": (("epoch", "sample"), logits.argmax(axis=1)[None].astype(np.int16)),
            "loss": (("epoch", "sample"), loss[None].astype(np.float32)),
        },
        coords={"epoch": [int(epoch)], "layer": np.array(layers, dtype=str)},
    )
    if metrics:
        names = sorted(metrics)
        ds["metric"] = (("epoch", "metric_name"), np.array([[float(metrics[k]) for k in names]]))
        ds = ds.assign_coords(metric_name=np.array(names, dtype=str))
    for i, maps in enumerate(feature_maps or []):
        ds[f"feature_map_{i}"] = (("epoch", "spotlight") + tuple(f"{axis}_{i}" for axis in _MAP_AXES),
                                  np.asarray(maps, dtype=np.float32)[None])
    for i, weight in enumerate(weights or []):
        ds[f"weight_{i}"] = (("epoch",) + tuple(f"{axis}_{i}" for axis in _WEIGHT_AXES),
                             np.asarray(weight, dtype=np.float32)[None])
    if boundary is not None:
        ds["boundary"] = (("epoch", "grid_y", "grid_x", "class"), np.asarray(boundary, dtype=np.float32)[None])
    if twins is not None and len(twins["id"]):
        ds = ds.merge(_twin_dataset(twins, layers, width), join="exact")
    ds.attrs = {"neuromapper_schema": SCHEMA_VERSION}
    return ds


def twin_id(method: str, source: int | str, eps: float | None = None) -> str:
    """The ``twin`` coordinate value for ``method`` applied to ``source`` (see the module docstring)."""
    if method not in TWIN_METHODS:
        raise ValueError(f"method: expected one of {list(TWIN_METHODS)}, got {method!r}")
    return f"{method}{'' if eps is None else f'@{float(eps)!r}'}/{source}"


def _twin_dataset(twins: dict, layers: list[str], width: int) -> xr.Dataset:
    ids = [str(i) for i in twins["id"]]
    if len(set(ids)) != len(ids):
        raise ValueError(f"twin ids must be distinct, got {ids}")
    n = len(ids)
    act = np.full((1, len(layers), n, width), np.nan, dtype=np.float32)
    for i, a in enumerate(twins["activations"]):
        act[0, i, :, : a.shape[1]] = a
    logits = np.asarray(twins["logits"], dtype=np.float32)
    one = lambda key, dtype: (("epoch", "twin"), np.asarray(twins[key]).astype(dtype).reshape(1, n))  # noqa: E731
    data = {
        "twin_activation": (("epoch", "layer", "twin", "unit"), act),
        "twin_logits": (("epoch", "twin", "class"), logits[None]),
        "twin_prediction": (("epoch", "twin"), logits.argmax(axis=1)[None].astype(np.int16)),
        "twin_label": one("label", np.int16),
        "twin_fooled": one("fooled", np.int8),
        "twin_perturbation": one("perturbation", np.float32),
        "twin_evaluations": one("evaluations", np.int32),
    }
    if twins.get("images") is not None:
        data["twin_image"] = (("epoch", "twin", "image_y", "image_x", "image_channel"),
                              np.asarray(twins["images"], dtype=np.uint8)[None])
    return xr.Dataset(data, coords={"twin": np.array(ids, dtype=str), "layer": np.array(layers, dtype=str)})


def twin_table(ds: xr.Dataset) -> pd.DataFrame:
    """What each twin of ``ds`` (a run from :func:`open_run`, or one epoch file) is, one row per twin.

    Returns
    -------
    pandas.DataFrame
        Indexed by twin id (``ds["twin"]`` order), with columns ``method`` (``"fgsm"``,
        ``"pgd"``, ``"one-pixel"`` or ``"instance"``), ``eps`` (float; NaN for one-pixel twins
        and instances, and for ids without ``@<eps>`` when ``ds`` lacks the run's ``attacks``
        attribute, as a bare epoch file does), ``source`` (int: the probe sample id attacked; -1 for instances),
        ``name`` (str: the instance's name; ``""`` for attacks) and ``label`` (int: the true
        label, -1 when an instance has none). Empty (with these columns) for a run without twins.

    Raises
    ------
    RunError
        When an id does not follow the grammar of the module docstring.
    """
    columns = {"method": [], "eps": [], "source": [], "name": [], "label": []}
    ids = [str(v) for v in ds["twin"].values] if "twin" in ds.coords else []
    config = json.loads(ds.attrs.get("attacks", "{}") or "{}")
    single_eps = config.get("eps", [])
    single_eps = float(single_eps[0]) if len(single_eps) == 1 else np.nan
    labels = np.full(len(ids), -1, dtype=np.int64)
    if ids and "twin_label" in ds:
        values = np.asarray(ds["twin_label"].transpose("epoch", "twin").values, dtype=float)
        for j in range(len(ids)):
            present = values[:, j][np.isfinite(values[:, j])]
            if present.size:
                labels[j] = int(present[-1])  # the latest epoch that has this twin
    for twin in ids:
        head, slash, source = twin.partition("/")
        method, at, eps = head.partition("@")
        if not slash or method not in TWIN_METHODS or (at and method not in ("fgsm", "pgd")):
            raise RunError(f"twin id {twin!r} does not read as <method>[@<eps>]/<source> with method one of "
                           f"{list(TWIN_METHODS)}")
        try:
            eps_value = float(eps) if at else (single_eps if method in ("fgsm", "pgd") else np.nan)
            source_id = -1 if method == "instance" else int(source)
        except ValueError:
            raise RunError(f"twin id {twin!r}: expected a number after '@' and an integer sample id after "
                           "'/' for an attack") from None
        columns["method"].append(method)
        columns["eps"].append(eps_value)
        columns["source"].append(source_id)
        columns["name"].append(source if method == "instance" else "")
    columns["label"] = labels.tolist()
    table = pd.DataFrame(columns, index=pd.Index(ids, name="twin"))
    return table.astype({"eps": float, "source": np.int64, "label": np.int64})


PRECISIONS = ("float32", "16bit")


def packed_int16_encoding(values: np.ndarray) -> dict:
    """CF packing of float values into int16 (``scale_factor``/``add_offset``), NaN as fill value.

    netCDF has no float16 type, so 16-bit storage uses the CF convention every netCDF reader
    decodes: the absolute error is at most half a step of ``(max - min) / 65532``. Non-finite
    values cannot be packed and read back as NaN (they are counted in ``nonfinite`` anyway).
    """
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    scale = (hi - lo) / 65532 or 1.0
    return {
        "dtype": "int16",
        "scale_factor": np.float32(scale),
        "add_offset": np.float32((hi + lo) / 2),
        "_FillValue": np.int16(-32768),
    }


def append_epoch(
    path: str | os.PathLike, ds: xr.Dataset, complevel: int | None = 1, precision: str = "float32"
) -> Path:
    """Write one epoch (from :func:`epoch_dataset`) durably; an existing epoch is replaced.

    ``precision="16bit"`` stores activations as CF-packed int16 (see
    :func:`packed_int16_encoding`), halving their size before compression.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    epoch = int(ds["epoch"].values[0])
    run_id = _run_id(path)
    if run_id:  # stamped with the run it belongs to: a file copied in from another run is refused on open
        ds = ds.assign_attrs(run_id=run_id)
    encoding = compression_encoding(ds, complevel)
    if precision == "16bit":
        encoding["activation"].update(packed_int16_encoding(ds["activation"].values))
    for name in ds.data_vars:  # feature maps and boundary probabilities are always 16-bit
        if name.startswith("feature_map_") or name == "boundary":
            encoding[name].update(packed_int16_encoding(ds[name].values))
    return write_atomic(ds, epoch_file(path, epoch), encoding)


def _read_schema(path: Path, ds: xr.Dataset) -> int:
    version = ds.attrs.get("neuromapper_schema")
    if version is None:
        raise RunError(
            f"{path} is not a NeuroMapper file: it has no 'neuromapper_schema' attribute "
            "(expected a file written by neuromapper.Recorder)"
        )
    version = int(version)
    if version > SCHEMA_VERSION:
        raise RunError(
            f"{path} was written with NeuroMapper schema version {version}, but this NeuroMapper "
            f"reads schema versions up to {SCHEMA_VERSION}: upgrade neuromapper to open it"
        )
    return version


def open_netcdf(path: Path, chunks: dict | None = None) -> xr.Dataset:
    """Open one NeuroMapper netCDF file, turning low-level HDF5 errors into a clear message."""
    try:
        with HDF5_GUARD:
            ds = xr.open_dataset(path, engine="netcdf4", chunks=chunks, lock=HDF5_GUARD)
            _read_schema(path, ds)
            # char-array strings decode as object arrays; give callers plain str arrays back
            strings = {name: var.astype(str) for name, var in ds.variables.items() if var.dtype.kind == "O"}
    except (FileNotFoundError, RunError):
        raise
    except Exception as exc:  # netCDF4/HDF5 raise OSError, RuntimeError or KeyError on bad bytes
        size = path.stat().st_size if path.exists() else 0
        raise RunError(
            f"{path} is truncated or corrupt ({size} bytes; expected a complete netCDF-4 file): "
            f"{type(exc).__name__}: {exc}. Delete it to open the rest of the run"
        ) from exc
    return ds.assign_coords({k: v for k, v in strings.items() if k in ds.coords}).assign(
        {k: v for k, v in strings.items() if k in ds.data_vars}
    )


def run_root(path: str | os.PathLike) -> Path:
    """Check that ``path`` is a NeuroMapper run directory and return it as a :class:`Path`."""
    root = Path(path)
    if not root.exists():
        raise RunError(f"{root} does not exist (expected a NeuroMapper run directory)")
    if not root.is_dir() or not (root / RUN_FILE).exists():
        raise RunError(
            f"{root} is not a NeuroMapper run: expected a directory containing {RUN_FILE} "
            f"and {EPOCH_DIR}/epoch-NNNNNN.nc files (written by neuromapper.Recorder)"
        )
    return root


def recorded_epochs(path: str | os.PathLike) -> list[int]:
    """Epoch numbers whose files are complete, in ascending order (``*.tmp`` files are ignored)."""
    folder = Path(path) / EPOCH_DIR
    if not folder.is_dir():
        return []
    found = (EPOCH_PATTERN.match(p.name) for p in folder.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def open_run(path: str | os.PathLike, chunks: dict | None = None) -> xr.Dataset:
    """Open a recorded run as one lazy :class:`xarray.Dataset`.

    Parameters
    ----------
    path
        The run directory given to :class:`neuromapper.Recorder`.
    chunks
        dask chunks per file, passed to :func:`xarray.open_dataset`; the default ``{}`` keeps the
        on-disk chunks so nothing is read until it is used.

    Returns
    -------
    xarray.Dataset
        Dimensions ``epoch``, ``layer``, ``sample``, ``unit``, ``class`` (and image/weight axes;
        ``twin`` when adversarial twins were recorded, in the order they were first recorded);
        the run's attributes (``model``, ``hyperparameters``, ``attacks`` as JSON strings,
        ``dataset``, ``neuromapper_schema``).

    Raises
    ------
    RunError
        When ``path`` is not a run, a file is truncated or corrupt, a file was written by a newer
        schema, a file disagrees with ``run.nc`` about the probe, or no epoch is recorded yet.
    """
    root = run_root(path)
    chunks = {} if chunks is None else chunks
    static = open_netcdf(root / RUN_FILE, chunks=chunks)
    epochs = recorded_epochs(root)
    if not epochs:
        raise RunError(f"{root} has no recorded epochs yet (expected {root / EPOCH_DIR}/epoch-NNNNNN.nc)")
    parts = []
    for epoch in epochs:
        file = epoch_file(root, epoch)
        part = open_netcdf(file, chunks=chunks)
        _check_epoch_part(file, part, static)
        parts.append(part)
    # ``join="outer"`` lets epochs carry different metric names (epoch 0 usually has none).
    per_epoch = xr.concat(
        parts, dim="epoch", data_vars="minimal", coords="minimal", compat="override", join="outer"
    )
    if "twin" in per_epoch.coords:  # the outer join sorts ids as strings; keep the order they were recorded in
        order = list(dict.fromkeys(str(t) for part in parts if "twin" in part.coords for t in part["twin"].values))
        per_epoch = per_epoch.reindex(twin=order)
    per_epoch.attrs = {}
    ds = xr.merge([static, per_epoch], compat="override", join="exact", combine_attrs="override")
    ds.attrs = dict(static.attrs)
    ds.attrs["path"] = str(root)
    return ds


def _run_id(path) -> str:
    """The ``run_id`` of the run at ``path`` (runs written before run ids existed have none)."""
    file = Path(path) / RUN_FILE
    if not file.exists():
        return ""
    import netCDF4

    with HDF5_GUARD, netCDF4.Dataset(file) as nc:
        return str(getattr(nc, "run_id", ""))


def _check_epoch_part(file: Path, part: xr.Dataset, static: xr.Dataset) -> None:
    mine, theirs = static.attrs.get("run_id"), part.attrs.get("run_id")
    if mine and theirs and mine != theirs:
        raise RunError(f"{file} belongs to another run (run_id {theirs}, this run's is {mine}): it was copied "
                       "in from elsewhere; remove it to open the rest of the run")
    for dim in ("sample", "layer"):
        if part.sizes.get(dim) != static.sizes.get(dim):
            raise RunError(
                f"{file} has {part.sizes.get(dim)} '{dim}' entries but run.nc has "
                f"{static.sizes.get(dim)}: the file belongs to a different probe or layer set"
            )
    if not np.array_equal(part["layer"].values, static["layer"].values):
        raise RunError(
            f"{file} records layers {list(part['layer'].values)} but run.nc lists "
            f"{list(static['layer'].values)}"
        )


def layer_activations(ds: xr.Dataset, layer: str) -> xr.DataArray:
    """Activations of one layer, ``(epoch, sample, unit)``, with the NaN padding removed."""
    layers = [str(v) for v in ds["layer"].values]
    if layer not in layers:
        raise RunError(f"layer {layer!r} is not in this run; recorded layers: {layers}")
    width = int(ds["layer_units"].sel(layer=layer))
    return ds["activation"].sel(layer=layer).isel(unit=slice(0, width))


def json_attr(ds: xr.Dataset, name: str) -> dict:
    """Decode a JSON-string attribute (``model``, ``hyperparameters``) into a dict."""
    return json.loads(ds.attrs.get(name, "{}"))


# --- what the Model and Training pages read (schema 3; see the module docstring) ------------------
_WEIGHT_AXES = ("out_channel", "in_channel", "kernel_y", "kernel_x")
_MAP_AXES = ("channel", "map_y", "map_x")


def spotlight_ids(ds: xr.Dataset) -> np.ndarray:
    """Sample ids whose full feature maps are recorded (empty for runs without them)."""
    return ds["spotlight"].values if "spotlight" in ds.coords else np.array([], dtype=np.int64)


def map_layers(ds: xr.Dataset) -> list[str]:
    """Recorded layers whose full feature maps the epochs keep for the spotlight samples."""
    return list(json.loads(ds.attrs.get("map_layers", "[]")))


def _weight_table(ds: xr.Dataset) -> list[dict]:
    if "weight_layers" in ds.attrs:
        return list(json.loads(ds.attrs["weight_layers"]))
    if "first_conv_weight" in ds.data_vars and ds.attrs.get("first_conv_layer"):  # schema 1-2
        return [{"layer": ds.attrs["first_conv_layer"], "kind": "conv", "module": ds.attrs["first_conv_layer"]}]
    return []


def weight_layers(ds: xr.Dataset) -> list[str]:
    """Layers whose weights every epoch keeps: the first conv layer (or the first Linear on image
    inputs), then recorded conv layers within the recorder's per-epoch budget."""
    return [entry["layer"] for entry in _weight_table(ds)]


def weight_kind(ds: xr.Dataset, layer: str) -> str:
    """``"conv"`` (kernels) or ``"linear-image"`` (each neuron's input weights as an image)."""
    return _weight_table(ds)[_position(weight_layers(ds), layer, "weights")]["kind"]


def skipped_weights(ds: xr.Dataset) -> list[dict]:
    """The weights the recorder's budget left out: ``[{"layer", "bytes", "reason"}]``."""
    return list(json.loads(ds.attrs.get("skipped_weights", "[]")))


def _position(names: list[str], layer: str, what: str) -> int:
    if layer not in names:
        raise RunError(f"layer {layer!r} has no recorded {what} in this run; layers with {what}: {names}")
    return names.index(layer)


def feature_maps(ds: xr.Dataset, layer: str) -> xr.DataArray:
    """The full output of ``layer`` for the spotlight samples: ``(epoch, spotlight, channel, map_y, map_x)``."""
    i = _position(map_layers(ds), layer, "feature maps")
    return ds[f"feature_map_{i}"].rename({f"{axis}_{i}": axis for axis in _MAP_AXES}).rename(layer)


def weights(ds: xr.Dataset, layer: str) -> xr.DataArray:
    """The weights of ``layer`` per epoch: ``(epoch, out_channel, in_channel, kernel_y, kernel_x)``."""
    i = _position(weight_layers(ds), layer, "weights")
    if "weight_layers" not in ds.attrs:  # schema 1-2: the first conv layer only
        return ds["first_conv_weight"].rename(layer)
    return ds[f"weight_{i}"].rename({f"{axis}_{i}": axis for axis in _WEIGHT_AXES}).rename(layer)


def boundary(ds: xr.Dataset) -> xr.DataArray | None:
    """Class probabilities over the 2-D input grid per epoch, ``(epoch, grid_y, grid_x, class)``, or None."""
    return ds["boundary"] if "boundary" in ds.data_vars else None


def input_features(ds: xr.Dataset) -> xr.DataArray | None:
    """The probe's inputs once per run, ``(sample, input_unit)`` (PCA-compressed when wide), or None."""
    return ds["input_feature"] if "input_feature" in ds.data_vars else None


def lacks(ds: xr.Dataset) -> list[str]:
    """What the run lacks for the Model and Training pages, one short sentence each."""
    version = int(ds.attrs.get("neuromapper_schema", SCHEMA_VERSION))
    old = f" (recorded from schema 3 on; this run is schema {version})" if version < 3 else ""
    missing = []
    if not map_layers(ds):
        missing.append("feature maps" + (old or ": no recorded layer outputs a feature map (channels x height x width)"))
    if not weight_layers(ds):
        missing.append("layer weights" + (old or ": the model has no conv layer, nor a Linear first layer on image inputs"))
    if boundary(ds) is None:
        missing.append("a decision boundary" + (old or ": recorded only for models on 2-D inputs"))
    if input_features(ds) is None:
        missing.append("the probe's input features" + (old or ": recorded with Recorder(record_inputs=True)"))
    return missing


# --- embeddings -------------------------------------------------------------------------------
# <run>/embeddings/<key>.nc holds one DataArray ``embedding(epoch, layer, sample, xy)`` float32
# with coordinates trustworthiness/disparity/unplaced(epoch, layer) and attributes method, params
# (ReduceParams.to_json()), key, backend, created, seconds, written by neuromapper.reduce. The key
# is a function of the parameters only (see neuromapper.reduce_params), so one file per parameter
# set; the epochs it covers are read from the file and compared with the run's here, which is
# what makes a stored embedding current, partial (the run grew since) or stale. The same file may
# also hold ``neighbours(layer, sample, neighbour)``, the neighbour sets of the epoch a later
# continuation starts from, that epoch's number in the variable's ``epoch`` attribute (see
# :func:`load_neighbours` for why).

EMBEDDING_DIR = "embeddings"
_KEY_PATTERN = re.compile(rf"^[0-9a-f]{{{KEY_LENGTH}}}$")


def run_dir(run) -> Path:
    """The directory of ``run``: a run directory, or a Dataset from :func:`open_run` (its ``attrs["path"]``).

    Raises
    ------
    TypeError
        When ``run`` is neither a path nor a Dataset.
    ValueError
        When a Dataset has no ``path`` attribute.
    RunError
        When the directory is not a run.
    """
    if isinstance(run, xr.Dataset):
        if not run.attrs.get("path"):
            raise ValueError("run: expected a run directory or a Dataset from neuromapper.open_run (with "
                             "attrs['path']); this Dataset has no 'path' attribute")
        run = run.attrs["path"]
    if not isinstance(run, (str, os.PathLike)):
        raise TypeError(f"run: expected a run directory (str or Path) or a Dataset from open_run, got {type(run).__name__}")
    return run_root(run)


def embedding_file(run, key: str) -> Path:
    """Where the embedding ``key`` of ``run`` is (or would be) stored; ``key`` is validated first.

    Raises
    ------
    ValueError
        When ``key`` is not 16 lowercase hex digits (a key typed by a user must never name a
        path outside the run, e.g. ``"../../x"``).
    """
    if not isinstance(key, str) or not _KEY_PATTERN.match(key):
        raise ValueError(f"key: expected {KEY_LENGTH} lowercase hexadecimal digits (as `neuromapper info` lists them), got {key!r}")
    return run_dir(run) / EMBEDDING_DIR / f"{key}.nc"


def write_embedding(run, embedding: xr.DataArray, neighbours: xr.DataArray | None = None) -> Path:
    """Store ``embedding`` (from :func:`neuromapper.reduce`) under its ``key`` attribute, atomically.

    An embedding stored under the same key is replaced; a crash leaves the old file or the new one.
    ``neighbours``, the neighbour sets of one of the embedding's epochs (its number in their
    ``epoch`` attribute; see :func:`load_neighbours`), are stored in the same file when given.
    """
    path = embedding_file(run, embedding.attrs.get("key"))
    stored = embedding.rename("embedding").to_dataset()
    if neighbours is not None:
        stored[NEIGHBOURS] = neighbours.astype(np.int32)
    stored.attrs = {"neuromapper_schema": SCHEMA_VERSION}
    return write_atomic(stored, path, compression_encoding(stored, 1))


NEIGHBOURS = "neighbours"


def load_neighbours(run, key: str, epoch: int) -> xr.DataArray | None:
    """The neighbour sets stored with the embedding ``key`` for its epoch ``epoch``; else ``None``.

    Why they are stored: carrying an ``anchored-umap`` embedding on to a new epoch needs the
    neighbour sets of the epoch it carries on from (they weight the anchor, and start NN-descent above
    :data:`neuromapper.methods.EXACT_KNN_MAX` samples). Rebuilt from the activations they cost
    a PCA and a k-nearest-neighbour search per layer on every live append (0.3 s a layer at
    10,000 samples, ``benchmarks/RESULTS-live.md``); stored, the append reads them. They sit in
    the embedding's own file, written in the same atomic write, so they always belong to the
    stored layouts; they are optional, and ``None`` here (an embedding written before they were
    stored, by a method that keeps none, or neighbour sets of another epoch) means the caller
    rebuilds them. For ``anchored-umap`` that epoch is the one before the last
    (:data:`neuromapper.methods.LOOKS_AHEAD`).

    Returns
    -------
    xarray.DataArray or None
        ``neighbours(layer, sample, neighbour)`` int32: positions among the embedding's samples,
        each sample itself first, -1 where a sample has none (not placed at that epoch).
    """
    path = embedding_file(run, key)
    try:
        with HDF5_GUARD, open_netcdf(path) as stored:
            if NEIGHBOURS not in stored.data_vars or stored[NEIGHBOURS].attrs.get("epoch") != int(epoch):
                return None
            neighbours = stored[NEIGHBOURS].load()
    except (RunError, OSError, KeyError, IndexError):
        return None  # unreadable or absent: rebuilt, as for an embedding that never had them
    neighbours.encoding = {}
    return neighbours


def _read_embedding(path: Path) -> xr.DataArray:
    with HDF5_GUARD, open_netcdf(path) as stored:
        if "embedding" not in stored.data_vars:
            raise RunError(f"{path} is not an embedding file (it has no 'embedding' variable)")
        try:
            da = stored["embedding"].load()
        except (OSError, RuntimeError, ValueError) as exc:  # damaged data past a readable header
            raise RunError(f"{path} is truncated or corrupt: {type(exc).__name__}: {exc}") from exc
    da.encoding = {}
    return da


def load_embedding(run, key: str) -> xr.DataArray:
    """The embedding stored under ``key`` beside ``run`` (a run directory or a Dataset from :func:`open_run`).

    Raises
    ------
    ValueError
        When ``key`` is not a key (see :func:`embedding_file`).
    FileNotFoundError
        When no embedding is stored under ``key``; the message lists the stored keys.
    RunError
        When the file is truncated, corrupt or not an embedding; the message names the file.
    """
    path = embedding_file(run, key)
    if not path.exists():
        stored = [info["key"] for info in list_embeddings(run)]
        raise FileNotFoundError(f"key: no embedding {key!r} stored in {path.parent}; stored keys: {stored}")
    try:
        return _read_embedding(path)
    except RunError as exc:
        raise RunError(f"key: the embedding {key!r} cannot be read ({exc}); delete {path} or recompute it "
                       "with `neuromapper reduce --force`") from exc


def list_embeddings(run) -> list[dict]:
    """The embeddings stored beside ``run``, oldest first; unreadable files are left out.

    Returns
    -------
    list of dict
        One per file: ``key``, ``method``, ``params`` (dict), ``layers``, ``epochs``,
        ``created`` (ISO 8601, UTC), ``backend``, ``seconds`` (time it took) and ``path``.
    """
    found = []
    for path in sorted((run_dir(run) / EMBEDDING_DIR).glob("*.nc")):
        if not _KEY_PATTERN.match(path.stem):
            continue
        try:
            with HDF5_GUARD, open_netcdf(path) as stored:
                attrs = dict(stored["embedding"].attrs)
                epochs = [int(e) for e in stored["epoch"].values]
        except (RunError, KeyError, OSError):
            continue  # corrupt, or not an embedding: never let one file hide the others
        params = json.loads(attrs.get("params", "{}"))
        found.append({
            "key": path.stem,
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


def find_embedding(run, params: ReduceParams | None = None, *, partial: bool = False, **changes) -> xr.DataArray | None:
    """The stored embedding for these parameters, or ``None``; never computes.

    Parameters
    ----------
    run
        A run directory, or a Dataset from :func:`open_run`: then "the recorded epochs" are the
        Dataset's, so the answer agrees with what the caller has open.
    params
        A :class:`~neuromapper.ReduceParams`; default ``ReduceParams.DEFAULT``.
    partial
        ``False``: only an embedding that covers every recorded epoch. ``True``: also one that
        covers the first epochs only (the run grew since it was computed), which a viewer can
        show while :func:`neuromapper.reduce` extends it; compare its ``epoch`` coordinate with
        the run's to tell.
    **changes
        Fields of ``ReduceParams`` that override ``params``, e.g. ``method="pca"``.

    Returns
    -------
    xarray.DataArray or None
        As :func:`neuromapper.reduce` returns it. An embedding stored for more epochs than
        ``run`` shows (a Dataset opened before the run grew) is cut to the epochs ``run`` shows.
        ``None`` when nothing matching is stored, or the stored file is unreadable or disagrees
        with the run's epochs.
    """
    params = ReduceParams.build(params, **changes)
    root = run_dir(run)
    if isinstance(run, xr.Dataset):
        layers, recorded = run["layer"].values, [int(e) for e in run["epoch"].values]
    else:
        with HDF5_GUARD, open_netcdf(root / RUN_FILE) as static:
            layers = static["layer"].values
        recorded = recorded_epochs(root)
    path = embedding_file(root, params.key(layers))
    if not path.exists():
        return None
    try:
        da = _read_embedding(path)
    except RunError:
        return None  # unreadable: as if absent, so that reduce() writes a good one over it
    stored = [int(e) for e in da["epoch"].values]
    common = 0
    for mine, theirs in zip(stored, recorded):
        if mine != theirs:
            break
        common += 1
    if recorded and common == len(recorded):
        return da if len(stored) == common else da.isel(epoch=slice(0, common))
    if partial and 0 < common == len(stored):
        return da
    return None
