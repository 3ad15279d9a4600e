"""What the views read from a recorded run, opened once per run and version, shared by sessions.

:class:`RunFacts` holds the lazily opened run and the small per-sample arrays every view needs
(labels, predictions and loss per epoch, class names, metrics), read into memory once. A run
that is still being recorded is opened again when it grows (:meth:`RunFacts.grown`): the old
facts stay valid for the sessions still drawing from them, so a growing run never changes an
array under a picture being rendered.

:func:`find_runs` turns the path given to ``neuromapper serve`` into the runs it offers: the
path itself when it is a run, else every run directly inside it (or one level deeper).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from .. import store
from ..store import (
    RUN_FILE,
    RunError,
    json_attr,
    layer_activations,
    open_run,
    recorded_epochs,
    run_dir,
    run_root,
    twin_table,
)

_OPENED: dict[tuple[str, tuple[int, ...]], RunFacts] = {}
_OPENED_LOCK = threading.Lock()
ACTIVATION_CACHE = 12  # (layer, epoch) arrays kept per run: 12 x 20 MB at 10,000 samples x 512 units


@dataclass(eq=False)
class RunFacts:
    """A run opened for the views: the Dataset and its per-sample arrays in memory."""

    root: Path
    ds: xr.Dataset
    epochs: list[int]
    class_names: list[str]
    labels: np.ndarray
    samples: np.ndarray
    predictions: np.ndarray  # (epoch, sample)
    loss: np.ndarray  # (epoch, sample)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    _arrays: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _arrays_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path) -> RunFacts:
        """The facts of the run at ``path`` as recorded now (shared with other sessions)."""
        root = run_root(path).resolve()
        key = (str(root), tuple(recorded_epochs(root)))
        with _OPENED_LOCK:
            facts = _OPENED.get(key)
            if facts is None:
                facts = _OPENED[key] = cls._read(root)
                for old in [k for k in _OPENED if k[0] == key[0] and k != key]:
                    del _OPENED[old]  # sessions on an older version keep their own reference
            return facts

    @classmethod
    def _read(cls, root: Path) -> RunFacts:
        ds = open_run(root)
        metrics = {}
        if "metric" in ds:
            for name in ds["metric_name"].values:
                values = np.asarray(ds["metric"].sel(metric_name=name).values, dtype=float)
                if np.isfinite(values).any():
                    metrics[str(name)] = values
        return cls(
            root=root,
            ds=ds,
            epochs=[int(e) for e in ds["epoch"].values],
            class_names=[str(c) for c in ds["class"].values],
            labels=np.asarray(ds["label"].values),
            samples=np.asarray(ds["sample"].values),
            predictions=np.asarray(ds["prediction"].values),
            loss=np.asarray(ds["loss"].values, dtype=np.float32),
            metrics=metrics,
        )

    def grown(self) -> RunFacts | None:
        """The facts of this run as recorded now, when epochs were added since; else ``None``."""
        if recorded_epochs(self.root) == self.epochs:
            return None
        return RunFacts.open(self.root)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def model(self) -> dict:
        return json_attr(self.ds, "model")

    @property
    def dataset(self) -> str:
        return str(self.ds.attrs.get("dataset", "") or "")

    @property
    def images(self) -> xr.DataArray | None:
        return self.ds["image"] if "image" in self.ds else None

    @property
    def layers(self) -> list[str]:
        return [str(v) for v in self.ds["layer"].values]

    def activations(self, layer: str, epoch: int) -> np.ndarray:
        """The probe's activations ``(sample, unit)`` at ``layer`` and ``epoch`` (float32, shared, read-only)."""
        return self._cached(("probe", layer, epoch),
                            lambda: layer_activations(self.ds, layer).sel(epoch=epoch).values)

    @cached_property
    def twins(self) -> pd.DataFrame:
        """The run's recorded instances (attacked twins and the user's own), from :func:`store.twin_table`.

        Kept for the run's life (a row per twin), not in the activations' LRU, where player steps
        evicted it and every later use read it from the file again.
        """
        return twin_table(self.ds)

    @cached_property
    def twin_sources(self) -> np.ndarray:
        """The probe sample each twin was made from (``-1``: an instance of the user's own), read-only.

        Read once from :attr:`twins`. Indexing the shared table on every player step instead added a
        reference to it each time (pandas' copy-on-write bookkeeping keeps up to 500 of them): small
        objects that outlive the sessions that made them, which can keep Python's memory arenas
        from being given back. In a served run after four sessions they were 284 of the 583
        objects born during the sessions and still alive; with this array, none of the 275 left
        were pandas' (``benchmarks/RESULTS-load.md``, 11:00-11:35 UTC).
        """
        sources = self.twins["source"].to_numpy(dtype=np.int64, copy=True)
        sources.flags.writeable = False
        return sources

    def twin_activations(self, layer: str, epoch: int) -> np.ndarray:
        """The twins' activations ``(twin, unit)`` at ``layer`` and ``epoch``; NaN rows where not recorded."""
        def read():
            width = int(self.ds["layer_units"].sel(layer=layer))
            return self.ds["twin_activation"].sel(layer=layer, epoch=epoch).isel(unit=slice(0, width)).values
        return self._cached(("twin", layer, epoch), read)

    def twin_values(self, name: str, epoch: int) -> np.ndarray:
        """A per-twin variable (``twin_prediction``, ``twin_fooled``...) at ``epoch``, one value per twin."""
        return self._cached((name, epoch), lambda: np.asarray(self.ds[name].sel(epoch=epoch).values))

    # -- what the Model and Training pages read (schema 3; :func:`store.lacks` says what a run misses) --
    @property
    def map_layers(self) -> list[str]:
        return store.map_layers(self.ds)

    @property
    def weight_layers(self) -> list[str]:
        return store.weight_layers(self.ds)

    @property
    def spotlight(self) -> np.ndarray:
        """Sample ids whose full feature maps are recorded."""
        return store.spotlight_ids(self.ds)

    @property
    def lacks(self) -> list[str]:
        return store.lacks(self.ds)

    def feature_maps(self, layer: str, epoch: int) -> np.ndarray:
        """``(spotlight, channel, map_y, map_x)`` float32 maps of ``layer`` at ``epoch``."""
        return self._cached(("maps", layer, epoch), lambda: store.feature_maps(self.ds, layer).sel(epoch=epoch).values)

    def weights(self, layer: str, epoch: int) -> np.ndarray:
        """``(out, in, ky, kx)`` float32 weights of ``layer`` at ``epoch``."""
        return self._cached(("weights", layer, epoch), lambda: store.weights(self.ds, layer).sel(epoch=epoch).values)

    def weight_kind(self, layer: str) -> str:
        return store.weight_kind(self.ds, layer)

    def weight_range(self, layer: str) -> float:
        """The largest ``|w|`` of ``layer`` over every recorded epoch: one symmetric colour scale for all."""
        return self._cached(("weight-range", layer),
                            lambda: float(abs(store.weights(self.ds, layer)).max().values))

    def boundary(self, epoch: int) -> np.ndarray | None:
        """Class probabilities ``(grid_y, grid_x, class)`` over the 2-D input grid at ``epoch``, or None."""
        grid = store.boundary(self.ds)
        return None if grid is None else self._cached(("boundary", epoch), lambda: grid.sel(epoch=epoch).values)

    @property
    def boundary_grid(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The grid's ``(xs, ys)`` in input units, or None."""
        return None if "grid_x" not in self.ds.coords else (self.ds["grid_x"].values, self.ds["grid_y"].values)

    @property
    def inputs(self) -> np.ndarray | None:
        """The probe's input features ``(sample, input_unit)`` (PCA-compressed when wide), or None."""
        features = store.input_features(self.ds)
        return None if features is None else self._cached(("inputs",), lambda: features.values)

    def _cached(self, key: tuple, read):
        with self._arrays_lock:
            if key in self._arrays:
                self._arrays.move_to_end(key)
                return self._arrays[key]
        value = read()  # lazy reads take the HDF5 guard themselves (on dask's threads: not held here)
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
        with self._arrays_lock:
            self._arrays[key] = value
            while len(self._arrays) > ACTIVATION_CACHE:
                self._arrays.popitem(last=False)
        return value

    def accuracy(self) -> np.ndarray:
        """Probe accuracy per recorded epoch."""
        return (self.predictions == self.labels[None, :]).mean(axis=1)

    def curves(self) -> dict[str, np.ndarray]:
        """Every per-epoch series worth plotting: recorded metrics, probe accuracy and loss."""
        return {**self.metrics, "probe accuracy": self.accuracy(), "probe loss": np.nanmean(self.loss, axis=1)}


@dataclass(frozen=True)
class RunEntry:
    """One run offered by the run chooser."""

    path: Path
    label: str


def find_runs(path) -> list[RunEntry]:
    """The runs at ``path``: the run itself, or the runs inside the folder (two levels at most).

    ``path`` may also be a Dataset from :func:`neuromapper.open_run` (it stands for its directory).

    Raises
    ------
    RunError
        When ``path`` does not exist or holds no run.
    """
    root = run_dir(path) if isinstance(path, xr.Dataset) else Path(path)
    if not root.exists():
        raise RunError(f"{root} does not exist (expected a NeuroMapper run, or a folder of runs)")
    if (root / RUN_FILE).exists():
        candidates = [root]
    else:
        candidates = sorted({p.parent for p in [*root.glob(f"*/{RUN_FILE}"), *root.glob(f"*/*/{RUN_FILE}")]})
    entries = [RunEntry(p, _label(p, root)) for p in candidates]
    if not entries:
        raise RunError(f"{root} holds no NeuroMapper run (expected {RUN_FILE} in it or in its subfolders)")
    return entries


def _label(path: Path, root: Path) -> str:
    """``name · model · N epochs · accuracy`` for the run chooser (plain text, escaped where shown)."""
    name = str(path.relative_to(root)) if path != root else path.name
    try:
        facts = RunFacts.open(path)
    except (RunError, OSError) as exc:
        return f"{name} · cannot be opened: {exc}"[:300]
    model = facts.model.get("class", "?").rsplit(".", 1)[-1]
    return f"{name} · {model} · {len(facts.epochs)} epochs · {facts.accuracy()[-1]:.1%} final accuracy"
