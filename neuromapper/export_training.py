"""The Training page in the standalone snapshot: curves, weight grids, boundary and density, rendered here.

The snapshot has no server, so the page's pictures are rendered by the dashboard's own
:class:`~neuromapper.views.training_painter.TrainingPainter` with its default choices, once per
exported epoch, and the page only swaps them as the player steps:

* **training curves**: one small inline SVG of every recorded metric, the probe accuracy and
  loss over all recorded epochs (losses on the left axis, accuracies on the right, as the
  dashboard draws them); the page moves a marker to the player's epoch. Vector lines of a few
  hundred points are smaller and sharper than any picture of them.
* **first-layer weight grid** (the first of ``run.weight_layers``): a PNG per epoch, one pixel
  per weight (the page scales it up without smoothing), paletted (:func:`indexed_png`) and
  coloured on the diverging CET_D1 map at the symmetric scale ``±run.weight_range(layer)``,
  fixed over *all recorded* epochs, so that a weight's change shows as a change of colour,
  exactly as on the live page. 3-channel kernels are colours (the painter's RGB mode).
* **decision boundary** (runs on 2-D inputs): the painter's class-probability picture per epoch
  as a PNG one pixel per grid point, with its 0.5 contour as an SVG path and the probe points as
  SVG dots on top (the points do not move; only picture and contour change per epoch). The
  picture is quantised to :data:`BOUNDARY_COLORS` colours before compression: it is a blend of
  one or two class colours with white, and 64 levels of that blend look the same as 256 while
  the PNG shrinks several times (101 epochs of the moons demo; figures in ``neuromapper export``).
* **exploratory plot**: the painter's PCA picture (eq-hist shaded density and per-class density
  contours, over white and quantised as the boundary) of the ``input`` pseudo-layer, which is one
  picture for every epoch, computed as the live page does on opening (one PCA of the probe's
  stored input features, a fraction of a second).
  Without input features, the first recorded layer's PCA is shown only when a PCA embedding is
  stored beside the run: a snapshot never computes a reduction (see :mod:`neuromapper.export`).

Every name (metric, layer, class) is data: SVG text is escaped here, and the page sets other text
with ``textContent``. What the section cannot do is listed on the page.
"""

from __future__ import annotations

import html
from contextlib import contextmanager

import numpy as np
import xarray as xr

from .export_activations import _png
from .store import run_dir

CURVES_SIZE = (600, 190)  # width, height of the training curves in CSS pixels
CURVES_MARGIN = (46, 46, 20, 30)  # left, right, top, bottom
BOUNDARY_COLORS = 64
GRID_TARGET_PX = 360  # the page scales a weight grid up by whole pixels to about this width


def colorize(values: np.ndarray, colors: list[str], lo: float, hi: float) -> np.ndarray:
    """``values`` through the colour table ``colors`` over ``lo..hi`` as RGBA uint8; NaN transparent."""
    from .raster import hex_to_rgb

    table = hex_to_rgb(colors).round().astype(np.uint8)
    level = np.clip((np.nan_to_num(values, nan=lo) - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgba = np.zeros(values.shape + (4,), np.uint8)
    rgba[..., :3] = table[np.round(level * (len(table) - 1)).astype(np.intp)]
    rgba[..., 3] = np.where(np.isfinite(values), 255, 0)
    return rgba


def indexed_png(rgba: np.ndarray) -> str:
    """``rgba`` as a paletted PNG (base64), lossless: one byte per pixel instead of four.

    A picture coloured through a table (:func:`colorize`) has at most the table's colours and
    clear gaps; paletted, the PNG is a third to a quarter the size. Pictures with more than 256
    colours are saved as RGBA.
    """
    import base64
    import io

    from PIL import Image

    packed = np.ascontiguousarray(rgba, dtype=np.uint8).view("<u4")[..., 0]
    colors, index = np.unique(packed, return_inverse=True)
    if len(colors) > 256:
        return _png(rgba)
    palette = colors.astype("<u4").view(np.uint8).reshape(-1, 4)
    picture = Image.fromarray(index.reshape(packed.shape).astype(np.uint8), mode="P")
    picture.putpalette(palette[:, :3].ravel().tobytes())
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True, transparency=palette[:, 3].tobytes())
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pixel_scale(width: int, target: int = GRID_TARGET_PX) -> int:
    """Whole screen pixels per picture pixel that bring a ``width``-pixel picture near ``target``."""
    return int(max(1, min(16, target // max(width, 1))))


@contextmanager
def painting(ds: xr.Dataset, embedding: xr.DataArray, painter_class):
    """``(state, painter)``: a session on the run at the epochs of ``embedding`` and one of the dashboard's
    painters over it with its defaults, disposed of afterwards."""
    from .views.state import SessionState

    state = SessionState(run_dir(ds), embedding=embedding)
    painter = painter_class(state)
    try:
        yield state, painter
    finally:
        getattr(painter, "dispose", lambda: None)()
        state.dispose()


def training_payload(ds: xr.Dataset, embedding: xr.DataArray) -> dict:
    """The snapshot's Training section for the epochs of ``embedding``."""
    from .views.training_painter import TrainingPainter

    with painting(ds, embedding, TrainingPainter) as (state, painter):
        run = state.run
        epochs = [int(e) for e in embedding["epoch"].values]
        payload = {"curves": curves_payload(run.epochs, run.curves(), epochs), "weights": None,
                   "boundary": None, "explore": None, "lacks": [s for s in run.lacks if not s.startswith("feature")]}
        if painter.weight_layer is not None:
            payload["weights"] = _weights(painter, epochs)
        if painter.has_boundary():
            payload["boundary"] = _boundary(painter, epochs)
        payload["explore"] = _explore(painter, epochs)
        if payload["explore"] is None:
            payload["lacks"].append(
                "an exploratory plot: it needs the probe's input features, or a PCA embedding stored beside the run "
                f"(`neuromapper reduce {run.name} --method pca`)")
        return payload


# -- training curves -------------------------------------------------------------------------------------
def curves_payload(all_epochs: list[int], series: dict[str, np.ndarray], epochs: list[int]) -> dict:
    """The curves as an SVG over ``all_epochs``, and the marker's x (CSS pixels) at each of ``epochs``."""
    width, height = CURVES_SIZE
    left, right, top, bottom = CURVES_MARGIN
    x_of = _axis(min(all_epochs), max(all_epochs), left, width - right)
    losses = [v for name, v in series.items() if "loss" in name]
    loss_hi = _ceiling(max((float(np.nanmax(v)) for v in losses if np.isfinite(v).any()), default=1.0))
    y_loss = _axis(0.0, loss_hi, height - bottom, top)
    y_acc = _axis(0.0, 1.0, height - bottom, top)
    from .plots import series_color

    parts = [f'<svg class="nm-curves" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="training curves">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="#fff" stroke="#ccc"/>']
    for k in range(5):  # grid lines with both axes' ticks
        y = top + k * (height - top - bottom) / 4
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="nm-tick">'
                     f'{loss_hi * (4 - k) / 4:g}</text>')
        parts.append(f'<text x="{width - right + 4}" y="{y + 4:.1f}" class="nm-tick">{(4 - k) / 4:.2f}</text>')
    for e in nice_ticks(min(all_epochs), max(all_epochs)):
        parts.append(f'<text x="{x_of(e):.1f}" y="{height - bottom + 14}" text-anchor="middle" class="nm-tick">{e}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 3}" text-anchor="middle" class="nm-tick">epoch</text>')
    parts.append(f'<text x="{left}" y="{top - 8}" text-anchor="middle" class="nm-tick">loss</text>')
    parts.append(f'<text x="{width - right}" y="{top - 8}" text-anchor="middle" class="nm-tick">accuracy</text>')
    legend = []
    for name, values in series.items():
        y_of = y_loss if "loss" in name else y_acc
        color = series_color(name)
        legend.append({"name": name, "color": color, "axis": "left" if "loss" in name else "right"})
        d = _polyline_d([x_of(e) for e in all_epochs], [y_of(float(v)) for v in values])
        if d:
            parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2" data-series="'
                         f'{html.escape(name, quote=True)}"><title>{html.escape(name)}</title></path>')
    parts.append(f'<line class="nm-marker" x1="{x_of(epochs[0]):.1f}" x2="{x_of(epochs[0]):.1f}" y1="{top}" '
                 f'y2="{height - bottom}" stroke="#000" stroke-dasharray="4 3" stroke-width="1.5"/>')
    parts.append("</svg>")
    return {"svg": "".join(parts), "marker": {str(e): round(x_of(e), 1) for e in epochs}, "legend": legend}


def _ceiling(value: float) -> float:
    """The loss axis's top: ``value`` rounded up to a number whose quarters read well (0.8, 3.2, 40...)."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** np.floor(np.log10(value))
    return float(next(m for m in (1, 1.2, 2, 3.2, 4, 6, 8, 10) if m * power >= value) * power)


def _axis(d0: float, d1: float, p0: float, p1: float):
    span = (d1 - d0) or 1.0
    return lambda v: p0 + (v - d0) / span * (p1 - p0)


def nice_ticks(lo: int, hi: int, most: int = 8) -> list[int]:
    """Integer ticks from ``lo`` to ``hi``, at most about ``most``, on a step of 1, 2, 2.5 or 5 times a power of ten."""
    step = max(1, int(np.ceil((hi - lo) / most)))
    scale = 10 ** int(np.floor(np.log10(step)))
    step = next(int(m * scale) for m in (1, 2, 2.5, 5, 10) if m * scale >= step and float(m * scale).is_integer())
    return list(range(lo - lo % step + (step if lo % step else 0), hi + 1, step))


def _polyline_d(xs: list[float], ys: list[float]) -> str:
    """An SVG path through the finite points, broken where a value is missing."""
    out, pen = [], "M"
    for x, y in zip(xs, ys):
        if not np.isfinite(y):
            pen = "M"
            continue
        out.append(f"{pen}{x:.1f} {y:.1f}")
        pen = "L"
    return "".join(out)


# -- weight grid -----------------------------------------------------------------------------------------
def _weights(painter, epochs: list[int]) -> dict:
    from .plots import diverging_colors

    limit = painter.weight_limit()
    colors = diverging_colors()
    frames = {}
    for epoch in epochs:
        grid = painter.weight_grid(epoch)
        rgba = grid if grid.ndim == 3 else colorize(grid, colors, -limit, limit)
        frames[str(epoch)] = indexed_png(rgba)
    height, width = grid.shape[:2]
    run = painter.run
    return {"layer": painter.weight_layer, "kind": run.weight_kind(painter.weight_layer), "title": painter.weight_title()
            .split(" · click")[0], "limit": limit, "rgb": grid.ndim == 3, "width": width, "height": height,
            "scale": pixel_scale(max(width, height)), "colors": [colors[0], colors[len(colors) // 2], colors[-1]],
            "frames": frames}


# -- decision boundary -----------------------------------------------------------------------------------
def _boundary(painter, epochs: list[int]) -> dict:
    from .scene import class_palette

    (x0, x1), (y0, y1) = painter.boundary_ranges()
    first = painter.boundary_picture(epochs[0])
    height, width = first.shape[:2]

    def px(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (xy[:, 0] - x0) / (x1 - x0) * width, (y1 - xy[:, 1]) / (y1 - y0) * height

    frames = {}
    for epoch in epochs:
        picture = painter.boundary_picture(epoch)
        paths = []
        for line in painter.boundary_lines(epoch):
            xs, ys = px(line)
            paths.append(_polyline_d(list(xs), list(ys)))
        frames[str(epoch)] = {"png": _quantised_png(picture), "contour": "".join(paths)}
    run = painter.run
    dots = []
    if run.inputs is not None:
        palette = list(class_palette(run.class_names).values())
        xs, ys = px(np.asarray(run.inputs, dtype=np.float64)[:, :2])
        for k in range(len(run.class_names)):  # one path of dots per class: far smaller than a circle each
            mine = np.flatnonzero(run.labels == k)
            d = "".join(f"M{xs[i]:.1f} {ys[i]:.1f}h0" for i in mine if np.isfinite(xs[i]) and np.isfinite(ys[i]))
            if d:
                dots.append(f'<path d="{d}" stroke="#fff" stroke-width="3.4" stroke-linecap="round"/>'  # outline
                            f'<path d="{d}" stroke="{palette[k]}" stroke-width="2.4" stroke-linecap="round" '
                            f'class="nm-dots" data-class="{k}"/>')
    side = 360  # CSS pixels wide; the grid's pixels are smoothed by the browser, as the dashboard's
    svg = (f'<svg class="nm-boundary" viewBox="0 0 {width} {height}" width="{side}" height="{round(side * height / width)}">'
           f'<image x="0" y="0" width="{width}" height="{height}" preserveAspectRatio="none"/>{"".join(dots)}'
           '<path class="nm-contour" fill="none" stroke="#222" stroke-width="2"/></svg>')
    return {"width": width, "height": height, "title": painter.boundary_title(), "svg": svg,
            "ranges": [[x0, x1], [y0, y1]], "frames": frames}


def _quantised_png(rgba: np.ndarray) -> str:
    """A picture over white as a paletted PNG of :data:`BOUNDARY_COLORS` colours (base64)."""
    import base64
    import io

    from PIL import Image

    from .raster import over

    white = np.full_like(rgba, 255)
    opaque = over(rgba, white)[..., :3] if (rgba[..., 3] < 255).any() else rgba[..., :3]
    picture = Image.fromarray(np.ascontiguousarray(opaque), mode="RGB").quantize(BOUNDARY_COLORS, dither=0)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# -- exploratory plot ------------------------------------------------------------------------------------
def _explore(painter, epochs: list[int]) -> dict | None:
    """The painter's PCA picture of the input pseudo-layer, or of the first layer from a stored PCA."""
    from .store import find_embedding
    from .views.training_painter import INPUT

    run = painter.run
    if run.inputs is None:
        stored = find_embedding(run.ds, method="pca", partial=True)
        if stored is None or run.layers[0] not in [str(v) for v in stored["layer"].values]:
            return None  # computing one is a reduction: never done by an export
        painter.explore_layer = run.layers[0]
    else:
        painter.explore_layer = INPUT
    painter.explore_method = "PCA"
    once = painter.coordinates()[0] == [None]
    frames = {}
    for epoch in epochs[:1] if once else epochs:
        frames["all" if once else str(epoch)] = _quantised_png(painter.explore_picture(epoch))
    return {"layer": painter.explore_layer, "title": painter.explore_title(), "once": once, "frames": frames}
