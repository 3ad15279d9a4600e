"""Per-neuron activation distributions, neuron orders and the divergence score (pure numpy).

The Activations page (NeuralDivergence, Park, Hohman and Chau) compares, neuron by neuron, how a
*group* of probe samples (a class, the Embeddings page's selection, the misclassified ones)
activates a layer with how single *instances* (a benign image and its attacked twin) do.
Everything here works on one layer at one epoch: ``acts`` is ``(samples, units)``.

**Value axis.** A layer's bars share one value axis, :func:`value_axis`: the 0.1th to 99.9th
percentile of the finite activations given (the Activations view gives it the first, middle and
last recorded epochs, so the axis stays put while the player moves and drift is visible). One
outlying unit (common in transformers) would otherwise squash every other bar into a few bins.
Values outside the axis count in its edge bins.

**Densities.** :func:`densities` counts each unit's values into ``bins`` equal bins with one
``np.bincount`` over ``unit * bins + bin``, for all units at once. It equals ``np.histogram`` per
unit (``tests/test_distributions.py``) and is about as fast: 61 ms against 76 ms at 512 units by
10,000 samples on a quiet spell of this VM, and no faster under load
(``benchmarks/RESULTS-activations.md``); it is kept because it needs no loop over units and
treats out-of-axis values (edge bins) and NaN (not counted) in one place.

**Divergence score** (:func:`divergence`). How far a sample's activations at a layer lie from the
distribution of the class the model *predicts* for it, NeuralDivergence's "cat classified as a
dog that activates the network unlike most dogs". Definition, per layer and epoch:

* the reference of class ``c`` is the probe samples whose **true label** is ``c`` (what the
  network sees of real members of the class, whatever it predicts for them), at most
  ``REFERENCE_SAMPLES`` (500) of them: a larger class gives a fixed random subset of 500, the
  same at every epoch. A median from 500 samples is within about 5% of a spread of the whole
  class's (its standard error, 1.25 σ/√n), and the score averages that over units; the subset
  cuts the references of a 10,000-sample probe from about 460 ms to a fifth, work the
  Activations page does at every epoch step beside the player (``bench_activations.py``);
* per unit, the reference centre is the median and the spread ``1.4826 · MAD`` (the robust
  standard deviation), floored at a tenth of the median spread of all units over the whole
  probe (at most ten times ``REFERENCE_SAMPLES`` of it, chosen the same way), so a unit that is constant within a class (a dead ReLU) cannot turn a tiny difference
  into an enormous score; a layer whose every unit is constant has the floor ``1e-6``;
* the score is the mean over units of ``|a - median| / spread``: the mean absolute robust
  z-score. 0 means "typical of the predicted class"; about 0.67 is the typical member of a
  normal distribution; a sample scoring 3 lies three spreads from its class on an average unit.

A class with no probe member has no reference: its samples score NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 48
REFERENCE_SAMPLES = 500  # per class; see "Divergence score" in the module docstring
AXIS_PERCENTILES = (0.1, 99.9)
MAD_TO_SIGMA = 1.4826
SPREAD_FLOOR_SHARE = 0.1


@dataclass(frozen=True)
class ValueAxis:
    """The value range of a layer's bars and how many bins divide it."""

    lo: float
    hi: float
    bins: int = BINS

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def bin_of(self, values: np.ndarray) -> np.ndarray:
        """The bin of each value; values outside the axis land in the edge bins, NaN in ``-1``."""
        values = np.asarray(values, dtype=np.float64)
        scaled = (values - self.lo) / (self.hi - self.lo) * self.bins
        index = np.clip(np.floor(np.nan_to_num(scaled, nan=0.0)), 0, self.bins - 1).astype(np.int64)
        return np.where(np.isfinite(values), index, -1)


def value_axis(*acts: np.ndarray, bins: int = BINS) -> ValueAxis:
    """The shared value axis of arrays of one layer's activations (see the module docstring)."""
    finite = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in acts])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return ValueAxis(0.0, 1.0, bins)
    lo, hi = np.percentile(finite, AXIS_PERCENTILES)
    if not hi > lo:  # a constant layer still gets an axis around its value
        lo, hi = lo - 0.5, hi + 0.5
    return ValueAxis(float(lo), float(hi), bins)


def densities(acts: np.ndarray, axis: ValueAxis) -> np.ndarray:
    """Per-unit counts of ``acts`` ``(samples, units)`` in ``axis``'s bins: ``(units, bins)``.

    Non-finite values are not counted.
    """
    acts = np.asarray(acts)
    n_units = acts.shape[1]
    index = axis.bin_of(acts)
    flat = (np.arange(n_units)[None, :] * axis.bins + index)[index >= 0]
    return np.bincount(flat, minlength=n_units * axis.bins).reshape(n_units, axis.bins)


def medians(acts: np.ndarray) -> np.ndarray:
    """Per-unit median of ``acts`` ``(samples, units)`` ignoring NaN; NaN for an empty group.

    Equal to ``np.nanmedian(acts.astype(float64), axis=0)`` (``tests/test_distributions.py``), and
    faster (:func:`_row_medians`).
    """
    return _row_medians(_unit_rows(acts))


def _unit_rows(acts: np.ndarray) -> np.ndarray:
    """``acts`` ``(samples, units)`` as contiguous rows ``(units, samples)``, float32 kept.

    Transposed in its own dtype: casting to float64 first makes the transposing copy 6x slower
    (285 against 44 ms at 10,000 x 512 here); float32 values promote exactly where they meet float64.
    """
    acts = np.asarray(acts)
    if acts.dtype not in (np.float32, np.float64):
        acts = acts.astype(np.float64)
    return np.ascontiguousarray(acts.T)


def _row_medians(rows: np.ndarray) -> np.ndarray:
    """Median of each row of ``rows`` ``(units, samples)`` ignoring NaN, in float64.

    Where there is no NaN, the two middle values are found with ``np.partition`` along each
    unit's contiguous row, in the array's own dtype, and averaged in float64 (as ``np.median``
    does). Measured at 10,000 x 512 float32 on this VM: ``np.median`` down the columns in float64
    210-266 ms, this 80-135 ms; ``np.nanmedian`` loops over units in Python past 600 samples.
    """
    n = rows.shape[1]
    if n == 0:
        return np.full(rows.shape[0], np.nan)
    if np.isnan(rows).any():
        return np.nanmedian(rows.astype(np.float64), axis=1)
    middle = [(n - 1) // 2, n // 2]
    # 64 units at a time: numpy holds the GIL through a partition, and this runs beside the
    # session's event loop (a whole 512 x 10,000 layer held it for about 90 ms at once)
    return np.concatenate([np.partition(rows[i:i + 64], middle, axis=1)[:, middle]
                           for i in range(0, rows.shape[0], 64)]).astype(np.float64).mean(axis=1)


def neuron_order(key: np.ndarray, hidden=()) -> np.ndarray:
    """Units sorted by ``key`` (largest first, NaN last, ties by unit index), hidden units left out.

    ``key`` is a group's medians, an instance's activations, or the difference of two of those.
    """
    key = np.asarray(key, dtype=np.float64)
    hidden = set(int(h) for h in hidden)
    order = np.lexsort((np.arange(key.size), np.where(np.isnan(key), np.inf, -key)))
    return np.array([u for u in order if int(u) not in hidden], dtype=np.int64)


@dataclass(frozen=True)
class ClassProfiles:
    """Per-class reference centre and spread of one layer at one epoch (see :func:`divergence`)."""

    center: np.ndarray  # (classes, units); NaN for a class without probe members
    spread: np.ndarray  # (classes, units)


def class_profiles(acts: np.ndarray, labels: np.ndarray, n_classes: int) -> ClassProfiles:
    """The reference of each class from the probe ``acts`` and true ``labels`` (module docstring)."""
    rows = _unit_rows(acts)
    labels = np.asarray(labels)
    whole = rows[:, _subset(np.arange(rows.shape[1]), 10 * REFERENCE_SAMPLES)]
    overall = _robust_spread(whole, _row_medians(whole))
    floor = max(SPREAD_FLOOR_SHARE * float(np.nanmedian(overall)) if np.isfinite(overall).any() else 0.0, 1e-6)
    center = np.full((n_classes, rows.shape[0]), np.nan)
    spread = np.full((n_classes, rows.shape[0]), np.nan)
    for c in range(n_classes):
        members = rows[:, _subset(np.flatnonzero(labels == c), REFERENCE_SAMPLES)]
        if members.shape[1]:
            center[c] = _row_medians(members)
            spread[c] = np.fmax(_robust_spread(members, center[c]), floor)
    return ClassProfiles(center, spread)


def _subset(index: np.ndarray, most: int) -> np.ndarray:
    """``index`` itself, or a fixed random subset of ``most`` of it (sorted) when it is longer."""
    if len(index) <= most:
        return index
    return np.sort(np.random.default_rng(0).choice(index, most, replace=False))


def _robust_spread(rows: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``1.4826 · MAD`` of each row of ``rows`` ``(units, samples)`` around ``center``."""
    return MAD_TO_SIGMA * _row_medians(np.abs(rows - center[:, None]))


def divergence(acts: np.ndarray, predicted: np.ndarray, profiles: ClassProfiles) -> np.ndarray:
    """Mean absolute robust z-score of each row of ``acts`` against its predicted class's profile."""
    acts = np.asarray(acts, dtype=np.float64)
    predicted = np.asarray(predicted).astype(np.int64)
    z = np.abs(acts - profiles.center[predicted]) / profiles.spread[predicted]
    counted = np.isfinite(z)
    total = np.where(counted, z, 0.0).sum(axis=1)
    n = counted.sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)
