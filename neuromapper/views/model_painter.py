"""The Model page's pictures from the session state: plain Python, testable without Panel.

:class:`ModelPainter` turns the shared :class:`~neuromapper.views.state.SessionState` (run,
epoch, visible classes, focused sample) into what the Model page draws: the probe's confusion at
the player's epoch as a chord diagram (or a heatmap past ``MANY_CLASSES`` classes) and stacked
per-class bars, whose clicks select the samples of one ``(true, predicted)`` pair; and, for the
focused sample, its feature maps per layer as one image grid each and the kernels feeding a
clicked channel. The Viewer in :mod:`neuromapper.views.model` wires widgets and Bokeh sources
to it; the geometry is :mod:`neuromapper.confusion`'s.

Design:

* **Clicks are positions.** Each chart's click arrives as a data position (a ``Tap``), and the
  painter finds the shape under it (:meth:`select_at`). A position means the same thing at every
  epoch, unlike Bokeh's selected glyph indices, which name whichever ribbon had that index when
  the picture was pushed; and a unit test drives exactly the path a browser click takes.
* **One image per layer** for feature maps: a grid of every channel's map composed in numpy (one
  ``hv.RGB``), not one plot per channel; a click at ``(x, y)`` in it is a channel.
"""

from __future__ import annotations

import html
from functools import cache, cached_property

import numpy as np
import param

from .. import confusion, plots, raster
from ..scene import MANY_CLASSES, class_palette
from .state import SessionState

CHORD = "chord"
HEATMAP = "heatmap"
BARS = "bars"
LABEL_CHARS = 14  # class names on the chord and the axes are cut to this length (hover shows them whole)
GAP = 1  # pixels between two tiles of a grid (white)


def short(name: str, limit: int = LABEL_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


class ModelPainter(param.Parameterized):
    """The Model page's options and pictures (see the module docstring)."""

    bars = param.Selector(default="correct and wrong", objects=["correct and wrong", "wrong only"],
                          doc="What the per-class bars stack (wrong only: the errors, on their own scale).")
    map_scale = param.Selector(default="shared", objects=["shared", "per channel"],
                               doc="Feature map colours: one scale per layer, or each channel its own.")
    channel = param.Tuple(default=None, allow_None=True, length=2,
                          doc="(layer, channel) whose feeding kernels are shown.")

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self._matrices: dict[tuple[int, int], np.ndarray] = {}
        self._picked: tuple[int, int, int, int] | None = None  # (true, predicted, epoch, selection_version)
        self._chord_cache: tuple | None = None
        state.param.watch(self._run_changed, ["run"])

    @property
    def run(self):
        return self.state.run

    def _run_changed(self, *_) -> None:
        self._matrices.clear()
        for name in ("palette", "class_index"):
            self.__dict__.pop(name, None)
        self._picked = None
        self.channel = None

    @cached_property
    def palette(self) -> list[str]:
        """One colour per class index, the scene's palette (so colours match every page)."""
        return list(class_palette(self.run.class_names).values())

    @cached_property
    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.run.class_names)}

    # -- confusion at the current epoch ----------------------------------------------------------------
    @property
    def epoch_index(self) -> int:
        return self.run.epochs.index(int(self.state.epoch))

    def predictions(self) -> np.ndarray:
        return self.run.predictions[self.epoch_index]

    def matrix(self) -> np.ndarray:
        """Counts ``(true, predicted)`` of the probe at the current epoch (every class)."""
        key = (id(self.run), self.epoch_index)
        if key not in self._matrices:
            self._matrices[key] = confusion.confusion_matrix(self.run.labels, self.predictions(),
                                                             len(self.run.class_names))
        return self._matrices[key]

    def visible(self) -> list[int]:
        """Indices of the visible classes, in class order."""
        return sorted(self.class_index[c] for c in self.state.classes if c in self.class_index)

    @property
    def kind(self) -> str:
        """The chart of errors: a chord diagram, or a heatmap past ``MANY_CLASSES`` classes."""
        return HEATMAP if len(self.run.class_names) > MANY_CLASSES else CHORD

    def chord(self) -> confusion.Chord:
        return confusion.chord(confusion.row_fractions(self.matrix()), self.visible())

    def chord_data(self) -> tuple[list[dict], list[dict], dict]:
        """``(arcs, ribbons, labels)`` of :func:`plots.chord_diagram` at the current epoch (kept for the
        three parts a view draws separately)."""
        key = (id(self.run), self.epoch_index, tuple(self.visible()))
        if self._chord_cache is None or self._chord_cache[0] != key:
            self._chord_cache = (key, self._chord_data())
        return self._chord_cache[1]

    def _chord_data(self) -> tuple[list[dict], list[dict], dict]:
        matrix, names = self.matrix(), self.run.class_names
        totals = matrix.sum(axis=1)
        shape = self.chord()
        arcs = [{"x": a[:, 0], "y": a[:, 1], "name": names[c], "color": self.palette[c],
                 "accuracy": matrix[c, c] / totals[c] if totals[c] else np.nan}
                for c, a in zip(shape.classes, shape.arcs)]
        ribbons = [{"x": r[:, 0], "y": r[:, 1], **self._pair_columns(t, p), "color": self.palette[t]}
                   for (t, p), r in zip(shape.pairs, shape.ribbons)]
        labels = {"x": shape.centers[:, 0], "y": shape.centers[:, 1],
                  "text": [short(names[c]) for c in shape.classes]}
        return arcs, ribbons, labels

    def _pair_columns(self, true: int, predicted: int) -> dict:
        matrix, names = self.matrix(), self.run.class_names
        total = int(matrix[true].sum())
        count = int(matrix[true, predicted])
        return {"true": names[true], "predicted": names[predicted], "count": count, "total": total,
                "share": count / total if total else 0.0}

    def bar_rects(self) -> confusion.Rects:
        return confusion.stacked_bars(self.matrix(), self.visible(), correct=self.bars == "correct and wrong")

    def heatmap(self) -> confusion.Rects:
        return confusion.heatmap_cells(self.matrix(), self.visible())

    def rect_data(self, rects: confusion.Rects) -> dict:
        """Columns of :func:`plots.confusion_bars` / :func:`plots.confusion_heatmap` for ``rects``."""
        names = self.run.class_names
        totals = self.matrix().sum(axis=1)
        total = totals[rects.true] if len(rects.true) else np.zeros(0, dtype=np.int64)
        share = np.divide(rects.count, total, out=np.zeros(len(total)), where=total > 0)
        return {"x0": rects.x0, "y0": rects.y0, "x1": rects.x1, "y1": rects.y1,
                "true": [names[t] for t in rects.true], "predicted": [names[p] for p in rects.predicted],
                "count": rects.count, "total": total, "share": share,
                "color": [self.palette[p] for p in rects.predicted],
                "alpha": np.where(rects.true == rects.predicted, 1.0, 0.55),
                "level": np.where(rects.true == rects.predicted, np.nan, share)}

    def ticks(self, reverse: bool = False) -> list[tuple[int, str]]:
        """Axis ticks naming the visible classes at positions 0, 1... (the first at the top if ``reverse``)."""
        visible = self.visible()
        n = len(visible)
        return [((n - 1 - i) if reverse else i, short(self.run.class_names[c])) for i, c in enumerate(visible)]

    # -- clicks ------------------------------------------------------------------------------------------
    def pair_at(self, kind: str, x: float | None, y: float | None) -> tuple[int, int] | None:
        """The ``(true, predicted)`` pair drawn at ``(x, y)`` in chart ``kind`` at the current epoch."""
        if x is None or y is None:
            return None
        if kind == CHORD:
            return self.chord().pair_at(x, y)
        if kind == HEATMAP:
            return self.heatmap().pair_at(x, y)
        if kind == BARS:
            return self.bar_rects().pair_at(x, y)
        raise ValueError(f"kind: expected {CHORD!r}, {HEATMAP!r} or {BARS!r}, got {kind!r}")

    def pair_samples(self, true: int, predicted: int) -> np.ndarray:
        """Ids of the probe samples of class ``true`` predicted as ``predicted`` at the current epoch."""
        return confusion.pair_samples(self.run.samples, self.run.labels, self.predictions(), true, predicted)

    def select_at(self, kind: str, x: float | None, y: float | None) -> tuple[int, int] | None:
        """Select (in the shared state) the samples of the pair under a click; nothing happens off the shapes."""
        pair = self.pair_at(kind, x, y)
        if pair is not None:
            self.select_pair(*pair)
        return pair

    def select_pair(self, true: int, predicted: int) -> None:
        # noted first: views bound to the selection redraw (and read it) while the selection is set
        self._picked = (int(true), int(predicted), int(self.state.epoch), self.state.selection_version + 1)
        self.state.select(self.pair_samples(true, predicted))

    def _how_to_read(self) -> str:
        if self.kind == HEATMAP:
            return "A cell is the share of its true class (row) predicted as its column's class."
        return ("A ribbon leaves the first half (clockwise) of its true class's arc for the second half of the "
                "predicted class's, as wide as the share of the true class (the busiest arc full); a bar's pale "
                "segments are coloured by the predicted class.")

    # -- words -------------------------------------------------------------------------------------------
    def summary_html(self) -> str:
        """Errors at this epoch, how to click, and what the last click selected (names escaped)."""
        matrix = self.matrix()
        visible = self.visible()
        rows = matrix[visible] if visible else matrix[:0]
        n = int(rows.sum())
        errors = n - int(sum(matrix[c, c] for c in visible))
        hidden = len(self.run.class_names) - len(visible)
        shown = f" of the {len(visible)} visible classes" if hidden else ""
        share = f" ({errors / n:.1%})" if n else ""
        parts = [f"epoch <b>{int(self.state.epoch)}</b>: <b>{errors:,}</b> of {n:,} probe samples{shown} "
                 f"misclassified{share}. {self._how_to_read()} Click a {'cell' if self.kind == HEATMAP else 'ribbon'} "
                 f"or a bar segment to select its samples (they light up on the Embeddings page)."]
        picked = self._picked
        if picked is not None and self.state.selection is not None and picked[3] == self.state.selection_version:
            t, p, epoch, _ = picked  # shown while the selection is still the one this page made
            names = self.run.class_names
            parts.append(f"Selected: true <b>{html.escape(names[t])}</b> → predicted "
                         f"<b>{html.escape(names[p])}</b>, {len(self.state.selection):,} samples at epoch {epoch}.")
        return "<div class='nm-model-summary' style='font-size:13px'>" + " ".join(parts) + "</div>"

    # -- the focused sample -------------------------------------------------------------------------------
    def shown_sample(self) -> int | None:
        """The sample whose feature maps are drawn: the focused one if it is a spotlight sample, else
        the first spotlight sample (``None`` for runs without feature maps)."""
        spotlight = self.run.spotlight
        focused = self.state.focused
        if focused is not None and focused in spotlight:
            return int(focused)
        return int(spotlight[0]) if len(spotlight) else None

    def focus_note_html(self) -> str:
        """Why the maps are not the focused sample's (when so), escaped; else ""."""
        focused, shown = self.state.focused, self.shown_sample()
        if focused is None or shown is None or focused == shown:
            return ""
        return (f"<div class='nm-focus-note' style='font-size:13px;color:#b35900'>Sample #{int(focused)} (focused) "
                f"has no recorded feature maps: only the spotlight samples below do. Showing #{shown}; click a "
                f"thumbnail to focus another.</div>")

    def lacks_html(self) -> str:
        """What this run lacks for the sample part of the page (``run.lacks``), as escaped text."""
        missing = [m for m in self.run.lacks if m.startswith(("feature maps", "layer weights"))]
        if not missing:
            return ""
        return ("<div class='nm-model-lacks' style='font-size:13px;color:#666'>This run has no "
                + "; no ".join(html.escape(m) for m in missing) + ".</div>")

    def _row(self, sample: int) -> int:
        return int(np.flatnonzero(self.run.samples == sample)[0])

    def sample_html(self) -> str:
        """The shown sample's id, true label and prediction at this epoch (names escaped)."""
        sample = self.shown_sample()
        if sample is None:
            return ""
        row, names = self._row(sample), self.run.class_names
        true, predicted = int(self.run.labels[row]), int(self.predictions()[row])
        verdict = ("<span style='color:#4c78a8'>correct</span>" if true == predicted
                   else "<span style='color:#e45756'>wrong</span>")
        return (f"<div class='nm-model-sample' style='font-size:13px;line-height:1.5'><b>sample #{sample}</b><br>"
                f"true: <b>{html.escape(names[true])}</b><br>predicted at epoch {int(self.state.epoch)}: "
                f"<b>{html.escape(names[predicted])}</b> ({verdict})</div>")

    def sample_png(self, sample: int | None = None) -> bytes | None:
        """The input image of ``sample`` (default: the shown one) as PNG bytes, or ``None`` without images."""
        sample = self.shown_sample() if sample is None else sample
        images = self.run.images
        if sample is None or images is None:
            return None
        return plots.thumbnail_png(images.sel(sample=int(sample)).values, scale=max(1, 84 // images.shape[1]))

    def spotlight_grid(self) -> np.ndarray | None:
        """The spotlight samples' images as one RGBA grid (the shown one opaque, the others faded), or None."""
        images, spotlight = self.run.images, self.run.spotlight
        if images is None or not len(spotlight):
            return None
        pixels = np.asarray(images.sel(sample=spotlight).values)
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        rgba = np.concatenate([pixels, np.full(pixels.shape[:-1] + (1,), 255, dtype=np.uint8)], axis=-1)
        rgba[spotlight != self.shown_sample(), ..., 3] = 90
        return tile(rgba)

    def focus_at(self, x: float | None, y: float | None) -> int | None:
        """Focus the spotlight sample whose thumbnail is at ``(x, y)`` of :meth:`spotlight_grid`."""
        images, spotlight = self.run.images, self.run.spotlight
        if x is None or y is None or images is None:
            return None
        k = tile_at(len(spotlight), images.shape[1], images.shape[2], x, y)
        if k is not None:
            self.state.focus(int(spotlight[k]))
        return k

    # -- feature maps and kernels ---------------------------------------------------------------------------
    def maps(self, layer: str) -> np.ndarray:
        """``(channel, y, x)`` feature maps of the shown sample at ``layer`` and the current epoch."""
        spotlight = list(self.run.spotlight)
        return self.run.feature_maps(layer, int(self.state.epoch))[spotlight.index(self.shown_sample())]

    def map_grid(self, layer: str) -> np.ndarray:
        """The shown sample's feature maps at ``layer`` as one RGBA grid (channel 0 top left, row by row)."""
        maps = self.maps(layer).astype(np.float64)
        if self.map_scale == "shared":
            lo, hi = np.nanmin(maps), np.nanmax(maps)
            levels = (maps - lo) / (hi - lo if hi > lo else 1.0)
        else:
            lo = np.nanmin(maps, axis=(1, 2), keepdims=True)
            hi = np.nanmax(maps, axis=(1, 2), keepdims=True)
            levels = (maps - lo) / np.where(hi > lo, hi - lo, 1.0)
        return tile(colorize(levels, _viridis()))

    def channel_at(self, layer: str, x: float, y: float) -> int | None:
        """The channel whose tile of ``layer``'s grid holds ``(x, y)`` (grid pixels, y up), or ``None``."""
        channels, h, w = self.maps(layer).shape
        return tile_at(channels, h, w, x, y)

    def pick_channel(self, layer: str, x: float | None, y: float | None) -> int | None:
        """Show the kernels feeding the channel clicked at ``(x, y)`` of ``layer``'s grid."""
        channel = None if x is None or y is None else self.channel_at(layer, x, y)
        if channel is not None:
            self.channel = (layer, channel)
        return channel

    def kernels(self) -> tuple[np.ndarray | None, str]:
        """``(RGBA grid of the kernels feeding the clicked channel, or None; what it shows, escaped)``.

        One tile per input channel, on a diverging scale symmetric about 0 and fixed over the epochs
        (the layer's largest ``|w|`` at any epoch), so a step shows how the kernels change.
        """
        if self.channel is None:
            return None, "Click a feature map to see the kernels that make it."
        layer, channel = self.channel
        name = html.escape(layer)
        if layer not in self.run.weight_layers:
            recorded = ", ".join(html.escape(w) for w in self.run.weight_layers) or "none"
            return None, (f"The weights of {name} are not recorded (recorded: {recorded}), so its channel {channel}'s "
                          f"kernels cannot be shown.")
        weights = self.run.weights(layer, int(self.state.epoch))[channel].astype(np.float64)  # (in, ky, kx)
        bound = self.run.weight_range(layer) or 1.0
        grid = tile(colorize((weights / bound + 1) / 2, _diverging()))
        n = weights.shape[0]
        return grid, (f"The {n} kernel{'s' if n > 1 else ''} ({weights.shape[1]}×{weights.shape[2]}) feeding {name} channel "
                      f"{channel} at epoch {int(self.state.epoch)}, one per input channel; blue negative, red positive, "
                      f"±{bound:.3g} (the layer's largest |w| over all epochs).")


def colorize(levels: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``(..., y, x)`` levels in [0, 1] (NaN: transparent) through a ``(256, 3)`` colour table to RGBA uint8."""
    finite = np.isfinite(levels)
    index = np.clip(np.round(np.where(finite, levels, 0) * 255), 0, 255).astype(np.intp)
    rgba = np.empty(levels.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = lut[index]
    rgba[..., 3] = np.where(finite, 255, 0)
    return rgba


def grid_shape(n: int) -> tuple[int, int]:
    """``(rows, columns)`` of a near-square grid of ``n`` tiles, wider than tall."""
    cols = int(np.ceil(np.sqrt(n))) if n else 1
    return int(np.ceil(n / cols)) if n else 1, cols


def tile(images: np.ndarray) -> np.ndarray:
    """``(n, h, w, 4)`` RGBA tiles as one grid image, tile 0 top left, row by row, white gaps between."""
    n, h, w = images.shape[:3]
    rows, cols = grid_shape(n)
    grid = np.full((rows * (h + GAP) - GAP, cols * (w + GAP) - GAP, 4), 255, dtype=np.uint8)
    for k in range(n):
        r, c = divmod(k, cols)
        grid[r * (h + GAP): r * (h + GAP) + h, c * (w + GAP): c * (w + GAP) + w] = images[k]
    return grid


def tile_at(n: int, h: int, w: int, x: float, y: float) -> int | None:
    """The tile of :func:`tile`'s grid of ``n`` tiles of ``h`` x ``w`` at grid position ``(x, y)`` (y up)."""
    rows, cols = grid_shape(n)
    height = rows * (h + GAP) - GAP
    c, r = int(np.floor(x / (w + GAP))), int(np.floor((height - y) / (h + GAP)))
    k = r * cols + c
    return k if 0 <= c < cols and 0 <= r < rows and k < n else None


@cache
def _viridis() -> np.ndarray:
    from bokeh.palettes import Viridis256

    return raster.hex_to_rgb(list(Viridis256))


@cache
def _diverging() -> np.ndarray:
    import colorcet

    return raster.hex_to_rgb(list(colorcet.palette["coolwarm"]))
