"""Pure HoloViews builders for the dashboard: no Panel, no state, each testable on its own."""

from __future__ import annotations

import html
import io
import zlib

import holoviews as hv
import numpy as np

from .raster import Frame

LAYER_SIZE = 360
TOOLS = ["box_select", "lasso_select", "wheel_zoom", "pan", "reset"]
# HoloViews asks Bokeh for WebGL by default. These plots draw pre-shaded images and a few lines,
# which Bokeh paints on the 2-D canvas anyway; WebGL only adds a read-back of its own canvas into
# the 2-D one on every repaint: over 100 ms of a player step where WebGL is software-rendered
# (headless browsers, machines without a GPU), measured in benchmarks/RESULTS-dashboard.md.
CANVAS = {"plot.output_backend": "canvas"}


def layer_image(rgba: np.ndarray, frame: Frame) -> hv.RGB:
    """A pre-shaded raster of one layer as an ``hv.RGB`` covering ``frame``'s data range."""
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    return hv.RGB(rgba, bounds=(x0, y0, x1, y1), kdims=["x", "y"])


def rgba_source_data(rgba: np.ndarray, frame: Frame) -> dict:
    """The Bokeh ``ImageRGBA`` source data HoloViews would make from :func:`layer_image`.

    Rows are flipped (Bokeh's row 0 is the bottom) and the four bytes packed into one uint32
    per pixel, without HoloViews' per-channel copies.
    """
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    return _image_source(rgba, x0, x1, y0, y1)


def _image_source(rgba: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> dict:
    packed = np.ascontiguousarray(rgba[::-1]).view(np.uint32)[..., 0]
    return {"image": [packed], "x": [x0], "y": [y0], "dw": [x1 - x0], "dh": [y1 - y0]}


# -- the Activations page ------------------------------------------------------------------------------
def activation_bars(rgba: np.ndarray, lo: float, hi: float) -> hv.RGB:
    """Density bars of one layer: ``rgba`` rows are units (row 0 at the top, at y = rows - 1)."""
    rows = rgba.shape[0]
    return hv.RGB(rgba, bounds=(lo, -0.5, hi, rows - 0.5), kdims=["activation", "unit"])


def bars_source_data(rgba: np.ndarray, lo: float, hi: float) -> dict:
    """The Bokeh source data of :func:`activation_bars` (for pushing a new picture)."""
    return _image_source(rgba, lo, hi, -0.5, rgba.shape[0] - 0.5)


def push_columns(source, data: dict) -> None:
    """Put ``data`` into a Bokeh ``ColumnDataSource``, sending only the columns that changed.

    ``source.data = data`` sends every column; ``source.data.update`` sends the columns given
    (Bokeh's ``ColumnDataChangedEvent``). When an epoch step moves the instance dots but not
    their colours, markers and labels, those stay on the browser's side. A change of columns
    or of length replaces the data whole, so the browser never sees columns of unequal length.
    """
    old = source.data
    lengths = {len(v) for v in data.values()}
    if set(old) != set(data) or len(lengths) > 1 or lengths != {len(v) for v in old.values()}:
        source.data = data
        return
    changed = {name: column for name, column in data.items() if not _same_column(old[name], column)}
    if changed:
        source.data.update(changed)


def _same_column(a, b) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        if a and isinstance(a[0], np.ndarray):  # an image column: one 2-D array per image
            return all(_same_column(x, y) for x, y in zip(a, b))
        return a == b
    return False


def activation_height(rows: int) -> int:
    """Height in pixels of a layer's bars with ``rows`` units (toolbar and axis included)."""
    return int(np.clip(rows * 6 + 70, 240, 680))


def activation_options(title: str, rows: int, lo: float, hi: float) -> dict:
    """A layer's bars: as wide as the page gives, a few pixels per unit, fixed ranges."""
    return dict(title=title, responsive=True, height=activation_height(rows), min_width=200,
                xlim=(lo, hi), ylim=(-0.5, rows - 0.5),
                framewise=False, tools=["tap"], default_tools=["pan", "wheel_zoom", "reset"], toolbar="above",
                bgcolor="white", xlabel="activation", ylabel="unit", backend_opts=CANVAS)


def instance_dots(dots: dict) -> hv.Points:
    """Instances' activations as dots over the bars; ``dots`` has x, y, color, marker and what (plain text)."""
    return hv.Points(dots, kdims=["x", "y"], vdims=["color", "marker", "what"]).opts(
        color="color", marker="marker", size=6, line_color="white", line_width=0.5, tools=["hover"],
        hover_tooltips=[("", "@what"), ("activation", "@x{0.000}")])


def layer_options(title: str, x_range, y_range) -> dict:
    """Plot options shared by the layer views: square, as wide as the page gives, fixed axes.

    The plots scale with the window (four layers in one row from about 1,400 px); the raster
    behind them keeps its resolution and Bokeh scales the image.
    """
    return dict(
        title=title,
        responsive=True,
        aspect=1,
        min_width=200,
        min_height=200,
        xlim=tuple(x_range),
        ylim=tuple(y_range),
        framewise=False,
        tools=TOOLS,
        active_tools=["box_select", "wheel_zoom"],
        default_tools=[],
        xaxis=None,
        yaxis=None,
        toolbar="above",
        bgcolor="white",
        backend_opts=CANVAS,
    )


def trajectories(paths: dict[str, np.ndarray], colors: dict[str, str]) -> hv.Path:
    """One line per named path (class centroid or sample) across epochs, ending at the current one."""
    data = [{"x": p[:, 0], "y": p[:, 1], "name": name} for name, p in paths.items()]
    if not data:  # HoloViews cannot colour-map an empty Path; an invisible NaN line stands in
        data, colors = [{"x": np.array([np.nan]), "y": np.array([np.nan]), "name": ""}], {"": "#00000000"}
    return hv.Path(data, vdims=["name"]).opts(
        color="name", cmap=colors, line_width=2, alpha=0.85, show_legend=False
    )


def marker(x: float | None, y: float | None) -> hv.Points:
    """A ring around the hovered sample (empty when nothing is hovered)."""
    points = [] if x is None else [(x, y)]
    return hv.Points(points).opts(
        marker="circle", size=16, fill_alpha=0, line_color="black", line_width=2, tools=[]
    )


SERIES_COLORS = {"probe accuracy": "#4c78a8", "probe loss": "#e45756", "train_loss": "#f58518",
                 "val_acc": "#54a24b", "val_loss": "#b279a2"}
_OTHER_COLORS = ("#72b7b2", "#eeca3b", "#9d755d", "#bab0ac", "#ff9da6", "#4c78a8", "#f58518", "#54a24b")


def series_color(name: str) -> str:
    """A colour per series *name*, the same in every run (not per position in the legend)."""
    if name in SERIES_COLORS:
        return SERIES_COLORS[name]
    return _OTHER_COLORS[zlib.crc32(name.encode()) % len(_OTHER_COLORS)]


def training_curves(epochs: list[int], series: dict[str, np.ndarray], marker: hv.VLine | None = None,
                    height: int = 220) -> hv.Overlay:
    """Loss and accuracy per epoch, losses on the left y-axis, accuracies on a second one.

    ``marker`` (the current epoch) is composed here because an overlay made with ``*`` afterwards
    is a new overlay without these options. Series names are data: HoloViews escapes labels.
    """
    curves = []
    for name, values in series.items():
        dim = "loss" if "loss" in name else "accuracy"
        curves.append(hv.Curve((epochs, values), "epoch", hv.Dimension(dim), label=name).opts(
            tools=["hover", "tap"], line_width=2, color=series_color(name)))
    return hv.Overlay(curves + ([] if marker is None else [marker])).opts(
        multi_y=True, legend_position="right", height=height, responsive=True, show_grid=True, backend_opts=CANVAS,
        title="training curves (click to jump to an epoch; probe accuracy from the recorded predictions)",
    )


def epoch_marker(epoch: int) -> hv.VLine:
    """The current epoch on the training curves (on the loss axis: its own would add a third)."""
    return hv.VLine(epoch, kdims=["epoch", "loss"]).opts(color="black", line_dash="dashed", line_width=1.5)


def legend_html(legend: dict[str, str], counts: dict[str, int] | None = None) -> str:
    """Colour swatches with names (and point counts) as a compact HTML legend."""
    items = []
    for name, color in legend.items():
        count = f" <span style='color:#777'>({counts[name]:,})</span>" if counts and name in counts else ""
        # long names are cut with an ellipsis; the full name is the item's tooltip
        items.append(
            f"<span title='{html.escape(name, quote=True)}' style='white-space:nowrap;margin-right:10px;"
            f"display:inline-block;max-width:260px;overflow:hidden;text-overflow:ellipsis;vertical-align:bottom'>"
            f"<span style='display:inline-block;width:11px;height:11px;border-radius:2px;"
            f"background:{color};margin-right:4px;vertical-align:-1px'></span>{html.escape(name)}{count}</span>"
        )
    return "<div class='nm-legend'>" + " ".join(items) + "</div>"


def colorbar_html(title: str, span: tuple[float, float] | None, colors: tuple[str, ...] = (
        "#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")) -> str:
    """A horizontal colour bar (viridis by default) from ``span[0]`` to ``span[1]`` with a title."""
    lo, hi = span if span is not None else (0.0, 1.0)
    gradient = ", ".join(colors)
    return (f"<div class='nm-colorbar' style='font-size:12px;display:flex;align-items:center;gap:6px'>"
            f"<span>{html.escape(title)}</span><span>{lo:.2g}</span>"
            f"<span style='display:inline-block;width:160px;height:11px;border-radius:2px;"
            f"background:linear-gradient(to right, {gradient})'></span><span>{hi:.2g}</span></div>")


def thumbnail_png(image: np.ndarray, scale: int = 4) -> bytes:
    """A ``(y, x, channel)`` uint8 thumbnail as PNG bytes, enlarged without smoothing."""
    from PIL import Image

    pixels = image[..., 0] if image.shape[-1] == 1 else image
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


# -- the Training page ---------------------------------------------------------------------------------
BOUNDARY_LINE = "#222222"


def diverging_colors() -> list[str]:
    """colorcet's CET_D1 (blue - white - red, perceptually even): weights below, at and above zero."""
    import colorcet

    return list(colorcet.palette["CET_D1"])


def weight_grid(grid: np.ndarray, limit: float, title: str) -> hv.Image:
    """Tiled weights (NaN between tiles) on a diverging map fixed at ``-limit..limit``, with a colour bar.

    ``grid`` row 0 is the top; it covers ``0..width`` by ``0..height``, one unit per weight.
    """
    height, width = grid.shape
    return hv.Image(grid, bounds=(0, 0, width, height), kdims=["x", "y"], vdims=["weight"]).opts(
        cmap=diverging_colors(), clim=(-limit, limit), colorbar=True, clipping_colors={"NaN": (0, 0, 0, 0)},
        **_tile_options(title, width, height))


def weight_grid_rgb(rgba: np.ndarray, title: str) -> hv.RGB:
    """Tiled 3-channel kernels as colours (grey = 0, each channel's ±limit = none or full)."""
    height, width = rgba.shape[:2]
    return hv.RGB(rgba, bounds=(0, 0, width, height), kdims=["x", "y"]).opts(**_tile_options(title, width, height))


def _tile_options(title: str, width: int, height: int, side: int = 380) -> dict:
    """A grid of tiles at its own aspect, its longer side ``side`` screen pixels."""
    scale = side / max(width, height)
    return dict(title=title, frame_width=int(width * scale), frame_height=int(height * scale),
                tools=["tap"], default_tools=[], toolbar=None, xaxis=None, yaxis=None,
                bgcolor="white", framewise=False, backend_opts=CANVAS)


def grid_source_data(grid: np.ndarray) -> dict:
    """The Bokeh source data of :func:`weight_grid` (or :func:`weight_grid_rgb` for RGBA ``grid``)."""
    height, width = grid.shape[:2]
    if grid.ndim == 3:
        return _image_source(grid, 0, width, 0, height)
    return {"image": [np.ascontiguousarray(grid[::-1])], "x": [0], "y": [0], "dw": [width], "dh": [height]}


def probability_image(rgba: np.ndarray, x_range, y_range, title: str) -> hv.RGB:
    """The decision boundary's class-probability picture over the input grid (axes in input units)."""
    (x0, x1), (y0, y1) = x_range, y_range
    return hv.RGB(rgba, bounds=(x0, y0, x1, y1), kdims=["input 0", "input 1"]).opts(
        title=title, responsive=True, aspect=(x1 - x0) / (y1 - y0) if y1 > y0 else 1, min_height=200,
        max_height=560, xlim=(x0, x1), ylim=(y0, y1), framewise=False, default_tools=["pan", "wheel_zoom", "reset"],
        toolbar="above", bgcolor="white", backend_opts=CANVAS)


def contour_path(lines: list[np.ndarray]) -> hv.Path:
    """Contour lines (``(n, 2)`` arrays) as one dark path: the 0.5 probability line."""
    return hv.Path(lines or [], kdims=["input 0", "input 1"]).opts(color=BOUNDARY_LINE, line_width=2.5)


def path_source_data(lines: list[np.ndarray]) -> dict:
    """The Bokeh source data of :func:`contour_path` (for pushing new lines)."""
    return {"xs": [line[:, 0] for line in lines], "ys": [line[:, 1] for line in lines]}


def class_points(points: dict) -> hv.Points:
    """Probe points coloured by class; ``points`` has x, y, color and class (plain text, escaped by Bokeh).

    A dark rim keeps a point visible over the background of its own class.
    """
    return hv.Points(points, kdims=["input 0", "input 1"], vdims=["color", "class"]).opts(
        color="color", size=5, line_color="#222222", line_width=0.5, tools=["hover"],
        hover_tooltips=[("class", "@{class}")])


def exploration_options(title: str, x_range, y_range) -> dict:
    """An exploratory plot: square, as wide as the page gives, fixed axes so epochs can be compared."""
    return dict(title=title, responsive=True, aspect=1, min_height=200, max_height=620, xlim=tuple(x_range),
                ylim=tuple(y_range), framewise=False, default_tools=["pan", "wheel_zoom", "reset"], toolbar="above",
                xaxis=None, yaxis=None, bgcolor="white", backend_opts=CANVAS)


# -- the Model page ------------------------------------------------------------------------------------------
# Inputs are plain columns made by views/model_painter.py; names in them are data, drawn as canvas
# text or tooltip fields (Bokeh escapes tooltip fields), never as markup.
CONFUSION_HOVER = [("", "@true → @predicted"), ("samples", "@count of @total (@share{0.0%})")]


def chord_diagram(arcs: list[dict], ribbons: list[dict], labels: dict) -> hv.Overlay:
    """Class arcs, error ribbons (true → predicted) and class names on a radius-1 circle.

    The three parts are separate builders so that a view can keep each in a DynamicMap of its
    own (a ``Tap`` stream attaches to a DynamicMap of one element, not to one of an overlay).
    """
    return (chord_arcs(arcs) * chord_ribbons(ribbons) * chord_labels(labels)).opts(**chord_options())


def chord_arcs(arcs: list[dict]) -> hv.Polygons:
    """One arc per class: dicts with x, y (closed outline), name, accuracy (share correct), color."""
    return hv.Polygons(arcs, vdims=["name", "accuracy", "color"]).opts(
        color="color", line_width=0, tools=["hover"], hover_tooltips=[("class", "@name"), ("correct", "@accuracy{0.0%}")])


def chord_ribbons(ribbons: list[dict]) -> hv.Polygons:
    """One ribbon per error pair: dicts with x, y, true, predicted, count, total, share, color."""
    if not ribbons:  # HoloViews cannot colour an empty Polygons by a column: an invisible one stands in
        ribbons = [{"x": [np.nan], "y": [np.nan], "true": "", "predicted": "", "count": 0, "total": 0,
                    "share": 0.0, "color": "#ffffff"}]
    return hv.Polygons(ribbons, vdims=["true", "predicted", "count", "total", "share", "color"]).opts(
        color="color", alpha=0.6, line_color="white", line_width=0.5, hover_alpha=0.95,
        nonselection_alpha=0.6, selection_alpha=0.6, tools=["hover", "tap"], hover_tooltips=CONFUSION_HOVER)


def chord_labels(labels: dict) -> hv.Labels:
    """Class names outside the arcs: columns x, y, text (drawn as canvas text)."""
    return hv.Labels(labels, kdims=["x", "y"], vdims=["text"]).opts(text_font_size="10pt", text_color="#333")


CHORD_SIZE = 420


def chord_options(size: int = CHORD_SIZE) -> dict:
    limit = 1.55
    return dict(width=size, height=size, xlim=(-limit, limit), ylim=(-limit, limit), xaxis=None, yaxis=None,
                default_tools=["reset"], toolbar="above", show_frame=False, bgcolor="white",
                title="errors: true → predicted class", backend_opts=CANVAS)


def confusion_bars(rects: dict, ticks: list[tuple[int, str]], height: int = 260) -> hv.Rectangles:
    """Per true class, a bar of its probe samples: correct at the bottom, each wrong prediction stacked.

    ``rects``: columns x0, y0, x1, y1, true, predicted, count, total, share, color, alpha (correct
    segments opaque, wrong ones paler); ``ticks``: (x, class name).
    """
    return hv.Rectangles(rects, kdims=["x0", "y0", "x1", "y1"],
                         vdims=["true", "predicted", "count", "total", "share", "color", "alpha"]).opts(
        color="color", alpha="alpha", line_color="white", line_width=0.5, nonselection_alpha=1, selection_alpha=1,
        tools=["hover", "tap"], hover_tooltips=CONFUSION_HOVER, default_tools=["reset"], toolbar="above",
        responsive=True, height=height, min_width=300, xticks=ticks, xrotation=45 if len(ticks) > 10 else 0,
        xlabel="true class", ylabel="probe samples", show_grid=True, bgcolor="white", framewise=True,
        title="per true class: correct (solid), wrong (pale)",
        backend_opts=CANVAS)


def confusion_heatmap(rects: dict, xticks: list[tuple[int, str]], yticks: list[tuple[int, str]],
                      size: int = 520) -> hv.Rectangles:
    """One cell per (true, predicted) pair coloured by the share of the true class (errors only; the
    diagonal is grey). ``rects`` as in :func:`confusion_bars` with a ``level`` column (NaN on the diagonal)."""
    n = max(len(xticks), 1)
    return hv.Rectangles(rects, kdims=["x0", "y0", "x1", "y1"],
                         vdims=["level", "true", "predicted", "count", "total", "share"]).opts(
        color="level", cmap="Reds", clipping_colors={"NaN": "#e8e8e8"}, colorbar=True, line_width=0,
        nonselection_alpha=1, selection_alpha=1, tools=["hover", "tap"], hover_tooltips=CONFUSION_HOVER,
        default_tools=["reset", "wheel_zoom", "pan"], toolbar="above", width=size + 80, height=size,
        xlim=(-0.5, n - 0.5), ylim=(-0.5, n - 0.5), xticks=xticks, yticks=yticks, xrotation=90,
        xlabel="predicted", ylabel="true", bgcolor="white", framewise=True, clabel="share of the true class",
        title="errors: share of the true class per predicted class", backend_opts=CANVAS)


def tile_grid(rgba: np.ndarray, title: str, px: int = 0) -> hv.RGB:
    """A grid of small images (feature maps, kernels) in grid pixels, y up; ``px`` screen pixels per
    grid pixel (0: at most about 180 px across). ``title`` is data: Bokeh draws titles as canvas text."""
    height, width = rgba.shape[:2]
    px = px or max(1, min(24, round(180 / max(width, height))))
    return hv.RGB(rgba, bounds=(0, 0, width, height), kdims=["x", "y"]).opts(
        title=title, frame_width=width * px, frame_height=height * px, xaxis=None, yaxis=None,
        tools=["tap"], default_tools=[], toolbar=None, bgcolor="white", framewise=False, backend_opts=CANVAS)


def tile_grid_source(rgba: np.ndarray) -> dict:
    """The Bokeh source data of :func:`tile_grid` (for pushing new pixels of the same size)."""
    height, width = rgba.shape[:2]
    return _image_source(rgba, 0, width, 0, height)
