"""The parameters of a reduction: one :class:`ReduceParams` read by the library, the CLI and the dashboard.

This module imports nothing but the standard library, so the command line can build its options
(``neuromapper reduce --help``) and the store can compute storage keys without loading numpy,
numba or umap-learn.

Canonical values
----------------
A ``ReduceParams`` holds its values in one canonical form, so that equal settings are equal
objects with equal keys however they were reached: integers as ``int`` (a ``numpy.int64`` from a
widget is converted), ``layers`` as a tuple, ``method=None`` as the default method's name, and
``min_dist`` rounded to :data:`MIN_DIST_DECIMALS` decimals. The rounding matters: a slider that
steps by 0.05 lands on ``0.1 + 0.05 * 5 == 0.35000000000000003``, while a user types ``0.35``;
both are the same setting and must find the same stored embedding. Six decimals are far below
any difference UMAP's ``min_dist`` can show.

The storage key (hard to undo, hence here)
------------------------------------------
An embedding is a pure function of the recorded activations and its parameters (every method is
deterministic for a given seed), so it is stored under a key derived from the parameters only:
the first 16 hex digits of the SHA-256 of the canonical parameters as sorted, compact JSON --
layers resolved to the run's names in the run's order (``None`` means every layer, so
``layers=None`` and an explicit list of all layers share a key), ``per_class`` ``null`` for all
samples -- plus :data:`REDUCE_VERSION`, bumped whenever an algorithm changes its results so that
stale files are not mistaken for current ones. Equal parameters always give the same key, in any
process and on any machine, so several parameter sets live side by side beside a run, survive
restarts, and a lookup is a file-exists check. How the work is done (processes, a dask cluster,
progress, cuML or not) is not part of the key. The JSON is exactly what NeuroMapper 0.1.0 hashed
(``tests/test_reduce.py`` pins the key of the default parameters); version 2 (``anchored-umap``
looks one epoch ahead) made the layouts of version 1 stale, so they are computed again. The
epochs an embedding covers are not part of the key either: a run that grows keeps its key, and
the stored embedding is extended (see :func:`neuromapper.reduce.reduce`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar

__all__ = ["KEY_LENGTH", "METHODS", "REDUCE_VERSION", "ReduceParams", "check_integer"]

METHODS = ("anchored-umap", "aligned-umap", "umap", "pca", "tsne")
"""The reduction methods, the default first (see :mod:`neuromapper.methods`)."""
REDUCE_VERSION = 2
KEY_LENGTH = 16
MIN_DIST_DECIMALS = 6


def check_integer(name: str, value, lo: int, hi: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer from ``lo`` to ``hi``; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo or (hi is not None and value > hi):
        span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}: expected an integer {span}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ReduceParams:
    """What a reduction computes: method, UMAP settings, samples, seed and layers (validated, canonical).

    Parameters
    ----------
    method
        One of :attr:`METHODS`; ``None`` stands for the default, ``"anchored-umap"``.
    n_neighbors
        UMAP's neighbourhood size, within ``BOUNDS["n_neighbors"]`` (and below the number of
        samples embedded, which :func:`neuromapper.reduce` checks against the run); ``tsne``
        uses as many neighbours, with perplexity ``n_neighbors / 3``.
    min_dist
        UMAP's minimum distance, within ``BOUNDS["min_dist"]``; rounded to six decimals
        (``pca`` and ``tsne`` ignore it).
    per_class
        Embed only this many samples of each class (stratified, seeded); ``None`` for all.
    seed
        Seed of everything random; equal parameters give equal embeddings.
    layers
        Layer names (any iterable, or one name); ``None`` for every recorded layer.

    Raises
    ------
    ValueError
        When a value is out of bounds or of the wrong type; the message names the field.

    Examples
    --------
    >>> ReduceParams(min_dist=0.1 + 0.05 * 5) == ReduceParams(min_dist=0.35)
    True
    >>> ReduceParams.BOUNDS["n_neighbors"], ReduceParams.DEFAULT.min_dist
    ((2, 200), 0.1)
    """

    method: str = METHODS[0]
    n_neighbors: int = 15
    min_dist: float = 0.1
    per_class: int | None = None
    seed: int = 0
    layers: tuple[str, ...] | None = None

    METHODS: ClassVar[tuple[str, ...]] = METHODS
    LABELS: ClassVar[Mapping[str, str]] = MappingProxyType({
        "anchored-umap": "anchored UMAP", "aligned-umap": "AlignedUMAP (umap-learn)", "umap": "UMAP per epoch",
        "pca": "PCA", "tsne": "t-SNE (openTSNE)"})
    """A name for people to read, per method (a selector's ``{label: method}``)."""
    BOUNDS: ClassVar[Mapping[str, tuple]] = MappingProxyType({"n_neighbors": (2, 200), "min_dist": (0.0, 0.99)})
    MIN_DIST_STEP: ClassVar[float] = 0.05
    DEFAULT: ClassVar[ReduceParams]

    def __post_init__(self) -> None:
        def set_(name: str, value) -> None:  # frozen: canonical values are set once, here
            object.__setattr__(self, name, value)

        method = METHODS[0] if self.method is None else self.method
        if method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)} (or None for {METHODS[0]!r}), got {method!r}")
        set_("method", method)
        set_("n_neighbors", check_integer("n_neighbors", self.n_neighbors, *self.BOUNDS["n_neighbors"]))
        lo, hi = self.BOUNDS["min_dist"]
        value = self.min_dist
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not lo <= float(value) <= hi:
            raise ValueError(f"min_dist: expected a number from {lo} to {hi}, got {value!r}")
        # round() gives the double nearest the rounded decimal, so 0.35000000000000003 and
        # 0.3499999999999999 both become 0.35; "+ 0.0" turns -0.0 into 0.0.
        set_("min_dist", round(float(value), MIN_DIST_DECIMALS) + 0.0)
        set_("per_class", None if self.per_class is None else check_integer("per_class", self.per_class, 1))
        set_("seed", check_integer("seed", self.seed, 0))
        set_("layers", self._layer_tuple(self.layers))

    @staticmethod
    def _layer_tuple(layers) -> tuple[str, ...] | None:
        if layers is None:
            return None
        names = (layers,) if isinstance(layers, str) else tuple(layers)
        if not names or not all(isinstance(name, str) for name in names):
            raise ValueError(f"layers: expected None (all) or layer names, got {layers!r}")
        return tuple(dict.fromkeys(names))  # duplicates dropped, order kept

    @classmethod
    def build(cls, params: ReduceParams | None = None, **changes: Any) -> ReduceParams:
        """``params`` (default :attr:`DEFAULT`) with ``changes`` applied: how functions take both forms.

        ``reduce(run, params=p)``, ``reduce(run, min_dist=0.3)`` and ``reduce(run, p, seed=2)`` all
        go through here.

        Raises
        ------
        TypeError
            When ``params`` is not a ``ReduceParams`` or a change names no field.
        """
        if params is None:
            params = cls.DEFAULT
        elif not isinstance(params, cls):
            raise TypeError(
                f"params: expected a ReduceParams or None, got {type(params).__name__} {params!r} "
                "(pass parameters by name, e.g. method='pca')"
            )
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(changes) - set(fields))
        if unknown:
            raise TypeError(f"unexpected reduce parameter(s) {unknown}; expected some of {fields}")
        return dataclasses.replace(params, **changes) if changes else params

    @classmethod
    def from_embedding(cls, embedding) -> ReduceParams:
        """The parameters an embedding from :func:`neuromapper.reduce` was computed with (its ``params`` attribute)."""
        text = getattr(embedding, "attrs", {}).get("params")
        if not text:
            raise ValueError("embedding: has no 'params' attribute (expected a DataArray from neuromapper.reduce)")
        stored = json.loads(text)
        return cls(**{f.name: stored[f.name] for f in dataclasses.fields(cls) if f.name in stored})

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments: ``reduce(run, **params.as_kwargs())``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def resolve(self, run_layers: Iterable[str]) -> ReduceParams:
        """These parameters with ``layers`` made explicit: the run's names, in the run's order.

        Raises
        ------
        neuromapper.RunError
            When a layer is not one of ``run_layers``; the message lists them.
        """
        recorded = [str(name) for name in run_layers]
        if self.layers is None:
            return dataclasses.replace(self, layers=tuple(recorded))
        unknown = [name for name in self.layers if name not in recorded]
        if unknown:
            from .store import RunError  # the store imports this module, not the other way round

            raise RunError(f"layers: {unknown} not recorded in this run; recorded layers: {recorded}")
        return dataclasses.replace(self, layers=tuple(name for name in recorded if name in self.layers))

    def to_json(self, **extra: Any) -> str:
        """The fields (and ``extra``) as compact, sorted JSON, ``layers`` a list: what embeddings store as ``params``."""
        fields = {**self.as_kwargs(), "layers": None if self.layers is None else list(self.layers), **extra}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def key(self, run_layers: Iterable[str]) -> str:
        """The 16-hex-digit storage key of these parameters for a run with ``run_layers`` (see the module docstring)."""
        text = self.resolve(run_layers).to_json(version=REDUCE_VERSION)
        return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


ReduceParams.DEFAULT = ReduceParams()
