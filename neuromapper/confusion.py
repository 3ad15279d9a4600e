"""Confusion at one epoch in plain numpy: counts, the samples of a pair, and the shapes that draw it.

The Model page draws the probe's misclassifications at the player's epoch three ways, all from
one ``(true, predicted)`` count matrix: a chord diagram (a ribbon from each true class to each
class it is mistaken for), a confusion heatmap (past ``MANY_CLASSES`` classes, where a chord is
a hairball) and stacked per-class bars. A click on any of them names one ``(true, predicted)``
pair, and :func:`pair_samples` turns the pair into sample ids for the shared selection.

Chord geometry (hard to undo, so the reasons are here):

* **Every class keeps an arc of the same size**, with or without errors, so that the circle does
  not reshuffle as the network learns and a class without errors is still there to see
  (HoloViews' ``hv.Chord`` sizes arcs by their edges' weights and drops a class without any).
* **Fractional weights**: a ribbon's width is the share of the true class's probe samples
  predicted as the other class, so a class of 30 samples and one of 3,000 compare.
* A ribbon leaves the **first half** of its true class's arc and lands on the **second half** of
  the predicted class's arc, both ends equally wide. One scale serves every ribbon at an epoch,
  chosen so that the busiest half-arc is just full: a trained network's errors are a few percent
  of a class and would be hairlines on an absolute scale, and an untrained one that calls
  everything a "3" sends nine ribbons to the 3's arc. Widths compare within an epoch; the
  counts and shares are in each ribbon's hover.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GAP = 0.04  # radians between two arcs
ARC_WIDTH = 0.08  # radial thickness of a class's arc (the circle has radius 1)
STEPS = 24  # points per arc segment and per ribbon side


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``(true, predicted)`` of ``n_classes`` classes (int64); unpredicted samples (< 0) left out."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    ok = (predictions >= 0) & (predictions < n_classes) & (labels >= 0) & (labels < n_classes)
    flat = labels[ok] * n_classes + predictions[ok]
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def row_fractions(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum: the share of a true class predicted as each class (0 for an empty row)."""
    totals = matrix.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=np.float64), where=totals > 0)


def pair_samples(samples: np.ndarray, labels: np.ndarray, predictions: np.ndarray, true: int,
                 predicted: int) -> np.ndarray:
    """The ids of the samples of class ``true`` predicted as ``predicted``."""
    return np.asarray(samples)[(np.asarray(labels) == true) & (np.asarray(predictions) == predicted)]


# -- chord diagram ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Chord:
    """A chord diagram's shapes: one arc per class and one ribbon per (true, predicted) error pair.

    ``arcs[k]`` and ``ribbons[k]`` are ``(n, 2)`` closed polygons (radius-1 circle); ``classes`` the
    classes of the arcs in drawing order, ``pairs`` the ``(true, predicted)`` of each ribbon.
    ``centers`` is where each arc's label goes (outside the circle), ``angles`` its angle.
    """

    classes: np.ndarray
    arcs: list[np.ndarray]
    centers: np.ndarray
    angles: np.ndarray
    pairs: list[tuple[int, int]]
    ribbons: list[np.ndarray]
    scale: float

    def pair_at(self, x: float, y: float, tolerance: float = 0.03) -> tuple[int, int] | None:
        """The ``(true, predicted)`` of the ribbon under ``(x, y)``, else of the nearest within ``tolerance``."""
        if x is None or y is None or not self.ribbons:
            return None
        point = np.array([x, y], dtype=np.float64)
        inside = [k for k, polygon in enumerate(self.ribbons) if contains(polygon, x, y)]
        if inside:  # where ribbons cross, the narrowest is the one meant (it is drawn on top)
            return self.pairs[min(inside, key=lambda k: _area(self.ribbons[k]))]
        distances = [_distance_to_outline(polygon, point) for polygon in self.ribbons]
        k = int(np.argmin(distances))
        return self.pairs[k] if distances[k] <= tolerance else None


def chord(fractions: np.ndarray, classes) -> Chord:
    """The chord diagram of row fractions ``fractions`` over ``classes`` (class indices, drawn in order).

    Only ribbons between the given classes are drawn; the diagonal (correct predictions) never is.
    """
    classes = np.asarray(list(classes), dtype=np.int64)
    n = len(classes)
    if n == 0:
        return Chord(classes, [], np.zeros((0, 2)), np.zeros(0), [], [], 1.0)
    span = 2 * np.pi / n
    gap = min(GAP, span * 0.2)
    starts = np.pi / 2 - np.arange(n) * span  # clockwise from the top
    arc_len = span - gap
    half = arc_len / 2
    sub = fractions[np.ix_(classes, classes)].astype(np.float64).copy()
    np.fill_diagonal(sub, 0.0)
    busiest = max(float(sub.sum(axis=1).max(initial=0)), float(sub.sum(axis=0).max(initial=0)))
    scale = half / busiest if busiest > 0 else 1.0  # radians per unit of fraction
    arcs, centers, angles = [], [], []
    for i in range(n):
        a0, a1 = starts[i], starts[i] - arc_len
        arcs.append(_band(a0, a1, 1.0, 1.0 + ARC_WIDTH))
        mid = (a0 + a1) / 2
        angles.append(mid)
        centers.append((1.0 + ARC_WIDTH + 0.1) * np.array([np.cos(mid), np.sin(mid)]))
    out_pos = starts.copy()  # next free angle on each arc's first half (going clockwise)
    in_pos = starts - half  # ...and on its second half
    pairs, ribbons = [], []
    for i in range(n):
        for j in range(n):
            width = sub[i, j] * scale
            if width <= 0:
                continue
            s0, s1 = out_pos[i], out_pos[i] - width
            t0, t1 = in_pos[j], in_pos[j] - width
            out_pos[i], in_pos[j] = s1, t1
            ribbons.append(_ribbon(s0, s1, t0, t1))
            pairs.append((int(classes[i]), int(classes[j])))
    return Chord(classes, arcs, np.array(centers), np.array(angles), pairs, ribbons, scale)


def _circle(a0: float, a1: float, radius: float, steps: int = STEPS) -> np.ndarray:
    angles = np.linspace(a0, a1, max(2, steps))
    return radius * np.column_stack([np.cos(angles), np.sin(angles)])


def _band(a0: float, a1: float, r0: float, r1: float) -> np.ndarray:
    return np.concatenate([_circle(a0, a1, r0), _circle(a1, a0, r1)])


def _bezier(p0: np.ndarray, p1: np.ndarray, steps: int = STEPS) -> np.ndarray:
    """A quadratic curve from ``p0`` to ``p1`` pulled through the centre (as chord diagrams draw)."""
    t = np.linspace(0, 1, steps)[:, None]
    return (1 - t) ** 2 * p0 + t ** 2 * p1  # control point (0, 0): its term vanishes


def _ribbon(s0: float, s1: float, t0: float, t1: float) -> np.ndarray:
    source = _circle(s0, s1, 1.0, 8)
    target = _circle(t0, t1, 1.0, 8)
    return np.concatenate([source, _bezier(source[-1], target[0]), target, _bezier(target[-1], source[0])])


def contains(polygon: np.ndarray, x: float, y: float) -> bool:
    """Is ``(x, y)`` inside the closed ``polygon`` (even-odd rule)?"""
    px, py = polygon[:, 0], polygon[:, 1]
    qx, qy = np.roll(px, -1), np.roll(py, -1)
    crosses = (py > y) != (qy > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = px + (y - py) * (qx - px) / (qy - py)
    return bool(np.count_nonzero(crosses & (x < at)) % 2)


def _area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _distance_to_outline(polygon: np.ndarray, point: np.ndarray) -> float:
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    length2 = np.maximum((ab ** 2).sum(axis=1), 1e-18)
    t = np.clip(((point - a) * ab).sum(axis=1) / length2, 0, 1)
    return float(np.sqrt(((a + t[:, None] * ab - point) ** 2).sum(axis=1)).min())


# -- stacked bars and heatmap cells --------------------------------------------------------------------------
@dataclass(frozen=True)
class Rects:
    """Axis-aligned rectangles, one per ``(true, predicted)`` pair drawn: bar segments or heatmap cells."""

    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    true: np.ndarray
    predicted: np.ndarray
    count: np.ndarray

    def pair_at(self, x: float, y: float) -> tuple[int, int] | None:
        """The ``(true, predicted)`` of the rectangle under ``(x, y)``, or ``None``."""
        if x is None or y is None:
            return None
        hit = np.flatnonzero((self.x0 <= x) & (x <= self.x1) & (self.y0 <= y) & (y <= self.y1))
        return (int(self.true[hit[0]]), int(self.predicted[hit[0]])) if len(hit) else None


def stacked_bars(matrix: np.ndarray, classes, width: float = 0.8, correct: bool = True) -> Rects:
    """Per true class (one bar at x = its position in ``classes``): correct count at the bottom (unless
    ``correct`` is false), then each wrong prediction (every predicted class, shown or hidden) stacked
    in class order."""
    columns: dict[str, list] = {k: [] for k in ("x0", "y0", "x1", "y1", "true", "predicted", "count")}
    for position, true in enumerate(classes):
        row = matrix[true]
        order = [true] * correct + [p for p in range(len(row)) if p != true]
        bottom = 0
        for predicted in order:
            count = int(row[predicted])
            if count == 0:
                continue
            for key, value in zip(columns, (position - width / 2, bottom, position + width / 2, bottom + count,
                                            true, predicted, count)):
                columns[key].append(value)
            bottom += count
    return _rects(columns)


def heatmap_cells(matrix: np.ndarray, classes) -> Rects:
    """One unit cell per (true, predicted) pair of ``classes``: x = predicted position, y = true position
    (the first class at the top, y = len - 1)."""
    classes = list(classes)
    n = len(classes)
    ti, pi = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    ti, pi = ti.ravel(), pi.ravel()
    true = np.asarray(classes, dtype=np.int64)[ti] if n else np.zeros(0, dtype=np.int64)
    predicted = np.asarray(classes, dtype=np.int64)[pi] if n else np.zeros(0, dtype=np.int64)
    y = (n - 1 - ti).astype(np.float64)
    return Rects(pi - 0.5, y - 0.5, pi + 0.5, y + 0.5, true, predicted,
                 matrix[true, predicted] if n else np.zeros(0, dtype=np.int64))


def _rects(columns: dict[str, list]) -> Rects:
    floats = {k: np.asarray(columns[k], dtype=np.float64) for k in ("x0", "y0", "x1", "y1")}
    ints = {k: np.asarray(columns[k], dtype=np.int64) for k in ("true", "predicted", "count")}
    return Rects(**floats, **ints)
