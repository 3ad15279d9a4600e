"""What the embedding view draws, kept ready for fast player steps (no Panel, no HoloViews).

An :class:`EmbeddingScene` holds, for one stored embedding, each layer's coordinates per epoch
as contiguous float32 arrays and the per-sample facts a picture is coloured by (true class,
prediction and loss per epoch). Turning the view state (epoch, colour-by, hidden classes,
misclassification filter, selection) into per-point category codes is a few vectorised numpy
operations shared by all layers; the layers then rasterize in parallel threads with
:mod:`neuromapper.raster`. Nothing here needs the recorded activations, so a million-sample run
costs its coordinates (8 bytes per point, layer and epoch) and not more.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import xarray as xr

from . import raster

COLOR_BY = ("true class", "predicted class", "correct / incorrect", "learned / forgotten", "per-sample loss")
# flipped: became right (learned) or wrong (forgotten) since the previous epoch. A filter only: the
# colours stay what "colour by" says (colour by "learned / forgotten" to see which way it flipped).
SHOW = ("all", "misclassified", "flipped")
CORRECTNESS_COLORS = {"correct": "#4c78a8", "incorrect": "#e45756"}
FLIP_COLORS = {"learned": "#54a24b", "forgotten": "#e45756"}
UNCHANGED_COLOR = "#c8c8c8"
UNSELECTED_COLOR = "#b4b4b4"
# The Activations page: group bars that are not a class, and the instances' dots (benign original,
# attacked twin, the sample focused on another page).
# Instance colours stay off the class palette's hues (category10): black, magenta, sky blue.
ACTIVATION_COLORS = {"selection": "#3d3d3d", "misclassified": "#b8860b",
                     "benign": "#000000", "attacked": "#ff00ff", "focused": "#00a0ff"}
UNSELECTED_ALPHA = 0.45
# the Activations page's instance pairs: both dots of a pair share a marker, pairs differ (Bokeh
# marker name, and the character that stands for it in text)
PAIR_MARKERS = (("circle", "●"), ("square", "■"), ("triangle", "▲"), ("diamond", "◆"),
                ("inverted_triangle", "▼"), ("hex", "⬢"))


CATEGORY10 = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
              "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


MANY_CLASSES = 20
"""Past this many classes the class toggles become a searchable multi-select and the Model page
draws a confusion heatmap instead of a chord diagram (a chord of 20 arcs is already crowded)."""


def class_palette(names: list[str]) -> dict[str, str]:
    """A fixed colour per class name, as ``#rrggbb``: Category10, glasbey beyond ten classes.

    glasbey's 256 colours are as distinct as colours get; past 256 classes they repeat (no
    palette keeps a thousand classes apart by colour alone: hide classes to tell them apart).
    ``colorcet.palette`` holds hex strings; ``colorcet.glasbey_category10`` itself holds RGB
    float triples in current colorcet, which is why the hex table is read here.
    """
    if len(names) <= len(CATEGORY10):
        colors = list(CATEGORY10)
    else:
        import colorcet

        colors = list(colorcet.palette["glasbey_category10"])
    return {name: colors[i % len(colors)] for i, name in enumerate(names)}


@dataclass(frozen=True)
class ViewState:
    """Everything besides the layer and zoom that decides a picture."""

    epoch_index: int
    color_by: str = COLOR_BY[0]
    hidden_classes: frozenset = frozenset()
    show: str = SHOW[0]
    selection_version: int = 0


@dataclass
class Coloring:
    """Per-point category codes (int16, -1 = not drawn) with one colour per code, or values to map."""

    codes: np.ndarray
    colors: np.ndarray
    legend: dict[str, str]
    selected: np.ndarray | None = None  # bool per point when a selection is active
    values: np.ndarray | None = None  # per-point numbers for continuous colour (loss)
    span: tuple[float, float] | None = None
    counts: np.ndarray | None = None  # drawn points per code (for the legend)


def robust_bounds(x: np.ndarray, y: np.ndarray, pad: float = 0.05,
                  sample: int = 200_000) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis ranges covering 99.8% of the finite points over all epochs, padded by 5%.

    Percentiles of more than ``sample`` values are taken on a fixed random subset: sorting
    every point of a 10-million-point run costs seconds and moves the bounds by well under 1%.
    """
    out = []
    rng = np.random.default_rng(0)
    for v in (x, y):
        v = v.ravel()
        if v.size > sample:
            v = v[rng.integers(0, v.size, sample)]
        finite = v[np.isfinite(v)]
        if finite.size == 0:
            out.append((-1.0, 1.0))
            continue
        lo, hi = np.percentile(finite, [0.1, 99.9]) if finite.size > 1000 else (finite.min(), finite.max())
        span = (hi - lo) or 1.0
        out.append((float(lo - pad * span), float(hi + pad * span)))
    return out[0], out[1]


class EmbeddingScene:
    """Coordinates and sample facts of one embedding, ready to rasterize per player step.

    Parameters
    ----------
    embedding
        ``(epoch, layer, sample, xy)`` from :func:`neuromapper.reduce`.
    labels
        True class index per embedded sample.
    predictions, loss
        ``(epoch, sample)`` arrays aligned with ``embedding``'s epochs and samples.
    class_names
        Name per class index.
    """

    def __init__(self, embedding: xr.DataArray, labels, predictions, loss, class_names: list[str]):
        self.embedding = embedding
        self.epochs = [int(e) for e in embedding["epoch"].values]
        self.layers = [str(v) for v in embedding["layer"].values]
        self.samples = np.asarray(embedding["sample"].values)
        self.class_names = list(class_names)
        self._class_index = {name: i for i, name in enumerate(self.class_names)}
        self.labels = np.asarray(labels).astype(np.int16)
        self.predictions = np.asarray(predictions).astype(np.int16)
        self.loss = np.asarray(loss).astype(np.float32)
        self.correct = self.predictions == self.labels[None, :]
        self.xs: dict[str, np.ndarray] = {}
        self.ys: dict[str, np.ndarray] = {}
        self.bounds = {}
        values = embedding.transpose("layer", "epoch", "xy", "sample").values.astype(np.float32, copy=False)
        for i, layer in enumerate(self.layers):
            self.xs[layer] = np.ascontiguousarray(values[i, :, 0])  # (epoch, sample)
            self.ys[layer] = np.ascontiguousarray(values[i, :, 1])
            self.bounds[layer] = robust_bounds(self.xs[layer], self.ys[layer])
        finite_loss = self.loss[np.isfinite(self.loss) & (self.loss > 0)]
        self.loss_span = (
            (float(np.log10(np.percentile(finite_loss, 1))), float(np.log10(np.percentile(finite_loss, 99))))
            if finite_loss.size
            else (0.0, 1.0)
        )
        self.palette = class_palette(self.class_names)
        # per (epoch, layer): the embedding's quality figures, read once rather than per step
        self.quality = {
            name: {(e, layer): float(v) for e, row in zip(self.epochs, embedding[name].transpose("epoch", "layer").values)
                   for layer, v in zip(self.layers, row)}
            for name in ("trustworthiness", "disparity", "unplaced") if name in embedding.coords
        }
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="neuromapper-raster")
        self._colorings: dict[ViewState, Coloring] = {}
        self._centroids: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.samples)

    # -- which points, which colours -----------------------------------------------------
    def visible(self, state: ViewState) -> np.ndarray:
        """Bool per sample: not in a hidden class and passing the misclassification filter."""
        keep = np.ones(len(self), dtype=bool)
        if state.hidden_classes:
            keep &= ~np.isin(self.labels, self.class_codes(state.hidden_classes))
        e = state.epoch_index
        if state.show == SHOW[1]:
            keep &= ~self.correct[e]
        elif state.show == SHOW[2]:
            keep &= self.flips(e) != 0
        return keep

    def class_codes(self, names) -> list[int]:
        """The class indices of ``names`` (names the run does not have are left out)."""
        return [self._class_index[name] for name in names if name in self._class_index]

    def flips(self, epoch_index: int) -> np.ndarray:
        """+1 where a sample became correct at this epoch (learned), -1 where it became wrong."""
        if epoch_index == 0:
            return np.zeros(len(self), dtype=np.int8)
        now, before = self.correct[epoch_index], self.correct[epoch_index - 1]
        return now.astype(np.int8) - before.astype(np.int8)

    def coloring(self, state: ViewState, selected: np.ndarray | None = None) -> Coloring:
        """Category codes and colours for ``state``; unselected points become grey.

        Codes by true class with no misclassification filter are the same at every epoch, so
        they are kept instead of recomputed per player step (at ten million samples computing
        them costs about 100 ms).
        """
        per_epoch = state.show != SHOW[0] or state.color_by != COLOR_BY[0]
        key = replace(state, selection_version=0, epoch_index=state.epoch_index if per_epoch else -1)
        coloring = self._colorings.get(key)
        if coloring is None:
            coloring = self._colorings[key] = self._compute_coloring(state)
            while len(self._colorings) > 8:
                self._colorings.pop(next(iter(self._colorings)))
        return replace(coloring, selected=selected)

    def _compute_coloring(self, state: ViewState) -> Coloring:
        e = state.epoch_index
        keep = self.visible(state)
        values = span = None
        if state.color_by == COLOR_BY[0]:
            codes, legend = self.labels, dict(self.palette)
        elif state.color_by == COLOR_BY[1]:
            codes, legend = self.predictions[e], dict(self.palette)
        elif state.color_by == COLOR_BY[2]:
            codes = (~self.correct[e]).astype(np.int16)
            legend = dict(CORRECTNESS_COLORS)
        elif state.color_by == COLOR_BY[3]:
            flips = self.flips(e)
            codes = np.where(flips > 0, 0, np.where(flips < 0, 1, 2)).astype(np.int16)
            legend = {**FLIP_COLORS, "unchanged": UNCHANGED_COLOR}
        elif state.color_by == COLOR_BY[4]:
            codes = np.zeros(len(self), dtype=np.int16)
            legend = {"low loss": "#440154", "high loss": "#fde725"}
            with np.errstate(divide="ignore"):
                values = np.log10(np.maximum(self.loss[e], 1e-12)).astype(np.float32)
            span = self.loss_span
        else:
            raise ValueError(f"color_by: expected one of {COLOR_BY}, got {state.color_by!r}")
        codes = np.where(keep, codes, -1).astype(np.int16)
        colors = raster.hex_to_rgb(list(legend.values()))
        counts = np.bincount(codes.astype(np.intp) + 1, minlength=len(legend) + 1)[1:]
        return Coloring(codes, colors, legend, values=values, span=span, counts=counts)

    # -- pictures ----------------------------------------------------------------------------
    def default_frame(self, layer: str, width: int, height: int) -> raster.Frame:
        x_range, y_range = self.bounds[layer]
        return raster.Frame(x_range, y_range, width, height)

    def render(self, layer: str, epoch_index: int, coloring: Coloring, frame: raster.Frame) -> np.ndarray:
        """RGBA image ``(height, width, 4)`` of one layer at one epoch."""
        x, y = self.xs[layer][epoch_index], self.ys[layer][epoch_index]
        grey_rgb = raster.hex_to_rgb([UNSELECTED_COLOR])[0]
        if coloring.values is None:
            sums = raster.accumulate_colors(x, y, coloring.codes, coloring.colors, frame, coloring.selected)
            return raster.spread(raster.shade_sums(sums, grey_rgb, UNSELECTED_ALPHA))
        # continuous colour (loss): mean value per pixel, unselected points grey underneath
        drawn = coloring.codes >= 0
        keep = drawn if coloring.selected is None else drawn & coloring.selected
        count, mean = raster.mean_value(x, y, coloring.values, keep, frame)
        image = raster.shade_values(count, mean, _viridis_lut(), coloring.span)
        if coloring.selected is not None:
            grey = raster.accumulate_colors(x, y, coloring.codes, coloring.colors, frame, coloring.selected).grey
            backdrop = raster.ColorSums(np.zeros(grey.shape + (4,), np.uint32), grey)
            image = raster.over(image, raster.shade_sums(backdrop, grey_rgb, UNSELECTED_ALPHA))
        return raster.spread(image)

    def render_layers(self, frames: dict[str, raster.Frame], epoch_index: int, coloring: Coloring) -> dict[str, np.ndarray]:
        """Render several layers in parallel threads (the compiled loops release the GIL)."""
        layers = list(frames)
        images = self._pool.map(lambda layer: self.render(layer, epoch_index, coloring, frames[layer]), layers)
        return dict(zip(layers, images))

    # -- lookups ------------------------------------------------------------------------------
    def pick(self, layer: str, epoch_index: int, x: float, y: float, radius: tuple[float, float],
             codes: np.ndarray) -> int | None:
        """Index of the drawn sample (``codes >= 0``) nearest to ``(x, y)`` within ``radius``, or None."""
        xs, ys = self.xs[layer][epoch_index], self.ys[layer][epoch_index]
        rx, ry = radius
        near = np.flatnonzero((np.abs(xs - x) <= rx) & (np.abs(ys - y) <= ry))
        near = near[codes[near] >= 0]
        if near.size == 0:
            return None
        d = ((xs[near] - x) / rx) ** 2 + ((ys[near] - y) / ry) ** 2
        return int(near[np.argmin(d)])

    def inside_box(self, layer: str, epoch_index: int, bounds: tuple[float, float, float, float],
                   keep: np.ndarray) -> np.ndarray:
        """Indices of drawn samples inside ``(x0, y0, x1, y1)`` in ``layer`` at this epoch."""
        x0, y0, x1, y1 = bounds
        xs, ys = self.xs[layer][epoch_index], self.ys[layer][epoch_index]
        return np.flatnonzero((xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) & keep)

    def inside_polygon(self, layer: str, epoch_index: int, polygon: np.ndarray, keep: np.ndarray) -> np.ndarray:
        """Indices of drawn samples inside a lasso ``polygon`` (``(k, 2)`` vertices)."""
        from matplotlib.path import Path

        x0, y0 = polygon.min(axis=0)
        x1, y1 = polygon.max(axis=0)
        candidates = self.inside_box(layer, epoch_index, (x0, y0, x1, y1), keep)
        points = np.column_stack([self.xs[layer][epoch_index][candidates], self.ys[layer][epoch_index][candidates]])
        return candidates[Path(polygon).contains_points(points)]

    def centroids(self, layer: str) -> np.ndarray:
        """Median position of each class's samples at every epoch: ``(epoch, class, 2)``, cached.

        Computed once per layer (one sort per class and epoch) so that drawing centroid paths on
        a player step is a slice, not a median over every member again. A class with no placed
        sample at an epoch has no centroid there (NaN). Those epochs are left out of the median
        rather than its warning silenced: this runs on render threads, and
        ``warnings.catch_warnings`` swaps the process-wide filter list, so two threads inside it
        at once can leave one's filter installed for the whole process.
        """
        cached = self._centroids.get(layer)
        if cached is None:
            cached = np.full((len(self.epochs), len(self.class_names), 2), np.nan, dtype=np.float32)
            order = np.argsort(self.labels, kind="stable")
            bounds = np.searchsorted(self.labels[order], np.arange(len(self.class_names) + 1))
            for c in range(len(self.class_names)):
                members = order[bounds[c]:bounds[c + 1]]
                for d, coords in enumerate((self.xs[layer], self.ys[layer])):
                    values = coords[:, members]
                    placed = ~np.isnan(values).all(axis=1)
                    if placed.any():
                        cached[placed, c, d] = np.nanmedian(values[placed], axis=1)
            self._centroids[layer] = cached
        return cached

    def sample_paths(self, layer: str, upto: int, members: np.ndarray) -> np.ndarray:
        """Each member's positions at epochs ``0..upto``: ``(upto + 1, len(members), 2)``."""
        return np.stack([self.xs[layer][: upto + 1, members], self.ys[layer][: upto + 1, members]], axis=-1)

    def draw_paths(self, rgba: np.ndarray, frame: raster.Frame, paths: np.ndarray, rgb: np.ndarray) -> np.ndarray:
        """Draw ``paths`` (``(steps, n, 2)``, oldest first) over a rendered picture, fading with age.

        Each path is one segment per epoch step; the newest step is opaque and older steps fade,
        so where a sample or class came from reads at a glance without hiding the points.
        """
        steps = paths.shape[0] - 1
        if steps < 1 or paths.shape[1] == 0:
            return rgba
        start = paths[:-1].reshape(-1, 2)
        end = paths[1:].reshape(-1, 2)
        age = np.repeat(np.arange(steps, 0, -1), paths.shape[1])  # 1 = the newest step
        alpha = np.clip(255 * (1.0 - (age - 1) / (steps + 1)), 50, 255)
        return raster.draw_segments(rgba, start, end, np.tile(rgb, (steps, 1)), alpha, frame)


def scene_for(run: xr.Dataset, embedding: xr.DataArray) -> tuple[EmbeddingScene, np.ndarray]:
    """The scene of ``embedding`` joined with a run Dataset's labels, predictions and loss (see :func:`join`)."""
    return join(embedding, np.asarray(run["sample"].values), [int(e) for e in run["epoch"].values],
                np.asarray(run["label"].values), np.asarray(run["prediction"].values),
                np.asarray(run["loss"].values), [str(c) for c in run["class"].values])


def join(embedding: xr.DataArray, samples, epochs, labels, predictions, loss,
         class_names) -> tuple[EmbeddingScene, np.ndarray]:
    """The scene of ``embedding`` joined with a run's per-sample arrays (the run's order).

    Returns the scene and each embedded sample's position in the run. The one place where a run
    and an embedding meet: the dashboard (from the arrays it already holds) and the export (from
    the Dataset, :func:`scene_for`) both draw through it.

    Raises
    ------
    ValueError
        When the embedding holds samples or epochs that the run does not.
    """
    import pandas as pd

    position = pd.Index(np.asarray(samples)).get_indexer(embedding["sample"].values)
    if (position < 0).any():
        raise ValueError("embedding: its samples are not all in this run (was it computed for another run?)")
    run_epochs = pd.Index([int(e) for e in epochs])
    epoch_index = run_epochs.get_indexer([int(e) for e in embedding["epoch"].values])
    if (epoch_index < 0).any():
        missing = [int(e) for e, i in zip(embedding["epoch"].values, epoch_index) if i < 0]
        raise ValueError(f"embedding: epochs {missing} are not recorded in this run (recorded: {list(run_epochs)})")
    scene = EmbeddingScene(
        embedding,
        labels=np.asarray(labels)[position],
        predictions=np.asarray(predictions)[np.ix_(epoch_index, position)],
        loss=np.asarray(loss)[np.ix_(epoch_index, position)],
        class_names=list(class_names),
    )
    return scene, position


@functools.lru_cache(maxsize=1)
def _viridis_lut() -> np.ndarray:
    from bokeh.palettes import Viridis256

    return raster.hex_to_rgb(list(Viridis256))
