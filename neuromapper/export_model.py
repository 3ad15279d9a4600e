"""The Model page in the standalone snapshot: confusion charts and one sample's feature maps, rendered here.

The snapshot has no server, so what the Model page draws is prepared here for each exported
epoch from the dashboard's own :class:`~neuromapper.views.model_painter.ModelPainter` (with its
defaults: every class visible, bars of correct and wrong) and :mod:`neuromapper.confusion`'s
geometry; the page swaps the pictures as the player steps:

* **chord diagram** (up to ``MANY_CLASSES`` classes) as **inline SVG**, not a PNG: its arcs and
  ribbons are :func:`confusion.chord` polygons, written with integer coordinates on a circle of
  radius :data:`CHORD_RADIUS`, so an epoch of the demo costs a few kilobytes, stays sharp at any
  zoom, and each ribbon and arc carries a ``<title>``, which gives hover labels (true →
  predicted, count, share) for free, which a PNG could not. Each ribbon also carries its
  ``data-true``, ``data-predicted`` and ``data-count`` for tests and readers of the file.
* **confusion heatmap** (more classes) as a PNG of one pixel per ``(true, predicted)`` cell, the
  errors' share of the true class on the Reds map (the diagonal grey), scaled up by the page
  without smoothing: ``classes²`` SVG cells would outweigh it many times.
* **per-class stacked bars** as inline SVG from :func:`confusion.stacked_bars` (correct solid at
  the bottom, wrong pale, stacked by predicted class), on a count axis fixed over epochs.
* **the focused sample** (the first spotlight sample, the Model page's default): its thumbnail,
  label and prediction per epoch, and, per map layer, its feature maps at each epoch as one PNG
  grid (one pixel per map pixel, a pixel of gap between channels), on one colour scale per layer
  and epoch shared by its channels (viridis from 0 for non-negative maps, the diverging map
  around 0 when a layer has negative values); the range is printed beside it.
* **kernels of the first weight layer** are the Training section's weight grid (the same PNGs,
  not stored twice); the section names the layer and the page draws that grid here too.

Every name is data: class names inside the SVG are escaped here (``html.escape``), and the page
sets all other text with ``textContent``. What the section cannot do is listed on the page.
"""

from __future__ import annotations

import html

import numpy as np
import xarray as xr

from .export_training import colorize, indexed_png, nice_ticks, painting, pixel_scale

CHORD_RADIUS = 200  # SVG units of the chord's unit circle: integer coordinates are finer than a pixel
CHORD_VIEW = (2.0, 1.55)  # radii from the centre the view reaches across (room for names) and up and down
BARS_SIZE = (560, 300)  # width, height of the stacked bars in CSS pixels
BARS_MARGIN = (44, 10, 12, 52)  # left, right, top, bottom
MAP_TARGET_PX = 300  # the page scales each feature-map grid up by whole pixels to about this width
HEATMAP_GREY = "#e8e8e8"


def model_payload(ds: xr.Dataset, embedding: xr.DataArray) -> dict:
    """The snapshot's Model section for the epochs of ``embedding``."""
    from .views.model_painter import HEATMAP, ModelPainter

    with painting(ds, embedding, ModelPainter) as (state, painter):
        run = state.run
        epochs = [int(e) for e in embedding["epoch"].values]
        kind = painter.kind
        frames = {}
        for epoch in epochs:
            state.epoch = epoch
            matrix = painter.matrix()
            errors = heatmap_png(painter) if kind == HEATMAP else chord_svg(painter)
            frames[str(epoch)] = {"errors": errors, "bars": bars_svg(painter), "matrix": matrix.tolist(),
                                  "summary": _summary(matrix, epoch)}
        weight_layers = run.weight_layers
        kernels = weight_layers[0] if weight_layers and run.weight_kind(weight_layers[0]) == "conv" else None
        return {"kind": kind, "frames": frames, "focus": focus_payload(run, epochs), "kernels": kernels,
                "lacks": [s for s in run.lacks if s.startswith(("feature maps", "layer weights"))]}


def _summary(matrix: np.ndarray, epoch: int) -> str:
    n = int(matrix.sum())
    errors = n - int(np.trace(matrix))
    share = f" ({errors / n:.1%})" if n else ""
    return f"epoch {epoch}: {errors:,} of {n:,} probe samples misclassified{share}"


# -- chord diagram and heatmap ---------------------------------------------------------------------------
def _points(polygon: np.ndarray) -> str:
    """A closed polygon of the radius-1 circle as an SVG path (y up becomes y down)."""
    xy = np.round(polygon * np.array([CHORD_RADIUS, -CHORD_RADIUS])).astype(np.int64)
    keep = np.ones(len(xy), bool)
    keep[1:] = (np.diff(xy, axis=0) != 0).any(axis=1)  # rounding repeats points on short arcs
    xy = xy[keep]
    steps = np.diff(xy, axis=0)  # relative moves after the first point: two or three characters each
    return f"M{xy[0, 0]} {xy[0, 1]}l" + " ".join(f"{dx} {dy}" for dx, dy in steps) + "Z"


def chord_svg(painter) -> str:
    """The painter's chord diagram at its epoch as one inline SVG (names escaped, a title per shape)."""
    arcs, ribbons, labels = painter.chord_data()
    across, up = (v * CHORD_RADIUS for v in CHORD_VIEW)
    parts = [f'<svg class="nm-chord" viewBox="{-across:.0f} {-up:.0f} {2 * across:.0f} {2 * up:.0f}" role="img" '
             'aria-label="misclassifications: true to predicted class">']
    names = painter.run.class_names
    for arc, k in zip(arcs, painter.chord().classes):
        accuracy = "" if not np.isfinite(arc["accuracy"]) else f": {arc['accuracy']:.1%} correct"
        polygon = np.column_stack([arc["x"], arc["y"]])
        parts.append(f'<path d="{_points(polygon)}" fill="{arc["color"]}" data-class="{int(k)}">'
                     f'<title>{html.escape(names[k])}{accuracy}</title></path>')
    index = {name: i for i, name in enumerate(names)}
    for ribbon in ribbons:
        polygon = np.column_stack([ribbon["x"], ribbon["y"]])
        tip = f"{ribbon['true']} → {ribbon['predicted']}: {ribbon['count']:,} of {ribbon['total']:,} ({ribbon['share']:.1%})"
        parts.append(f'<path d="{_points(polygon)}" fill="{ribbon["color"]}" class="nm-ribbon" data-true="{index[ribbon["true"]]}" '
                     f'data-predicted="{index[ribbon["predicted"]]}" data-count="{ribbon["count"]}">'
                     f'<title>{html.escape(tip)}</title></path>')
    for x, y, text, angle in zip(labels["x"], labels["y"], labels["text"], painter.chord().angles):
        anchor = "middle" if abs(np.cos(angle)) < 0.3 else ("start" if np.cos(angle) > 0 else "end")
        parts.append(f'<text x="{x * CHORD_RADIUS:.0f}" y="{-y * CHORD_RADIUS + 5:.0f}" text-anchor="{anchor}" '
                     f'class="nm-chord-label">{html.escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap_png(painter) -> dict:
    """The painter's heatmap cells at its epoch as a PNG, one pixel per cell (row: true, column: predicted)."""
    from bokeh.palettes import Reds256

    rects = painter.heatmap()
    n = len(painter.visible())
    data = painter.rect_data(rects)
    level = np.full((n, n), np.nan)
    rows = (n - 1 - np.asarray(rects.y0 + 0.5, dtype=np.int64))  # the first class at the top
    cols = np.asarray(rects.x0 + 0.5, dtype=np.int64)
    level[rows, cols] = data["level"]
    top = float(np.nanmax(level)) if np.isfinite(level).any() else 0.0
    rgba = colorize(level, list(Reds256)[::-1], 0.0, top or 1.0)  # Bokeh's Reds256 runs dark to light
    grey = np.array([int(HEATMAP_GREY[i:i + 2], 16) for i in (1, 3, 5)] + [255], np.uint8)
    rgba[~np.isfinite(level)] = grey
    return {"png": indexed_png(rgba), "size": n, "scale": pixel_scale(n, 420), "max": top}


# -- stacked bars ----------------------------------------------------------------------------------------
def bars_svg(painter) -> str:
    """The painter's stacked per-class bars at its epoch as one inline SVG on a count axis fixed over epochs."""
    rects = painter.bar_rects()
    data = painter.rect_data(rects)
    run = painter.run
    width, height = BARS_SIZE
    left, right, top, bottom = BARS_MARGIN
    visible = painter.visible()
    n = max(len(visible), 1)
    tallest = int(np.bincount(run.labels[run.labels >= 0]).max(initial=1)) if len(run.labels) else 1
    sx = (width - left - right) / n
    sy = (height - top - bottom) / tallest
    x_of = lambda v: left + (v + 0.5) * sx  # noqa: E731 - bar positions are 0..n-1, each 1 wide
    y_of = lambda v: height - bottom - v * sy  # noqa: E731
    parts = [f'<svg class="nm-bars-svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="probe samples per true class">']
    for tick in nice_ticks(0, tallest, 5):
        y = y_of(tick)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="nm-tick">{tick:,}</text>')
    for i in range(len(rects.count)):
        x0, x1 = x_of(data["x0"][i]), x_of(data["x1"][i])
        y0, y1 = y_of(data["y0"][i]), y_of(data["y1"][i])
        tip = f"{data['true'][i]} → {data['predicted'][i]}: {data['count'][i]:,} of {data['total'][i]:,} ({data['share'][i]:.1%})"
        parts.append(f'<rect x="{x0:.1f}" y="{y1:.1f}" width="{x1 - x0:.1f}" height="{y0 - y1:.1f}" '
                     f'fill="{data["color"][i]}" fill-opacity="{data["alpha"][i]:.2f}" class="nm-segment" data-true="{int(rects.true[i])}" data-predicted="{int(rects.predicted[i])}" '
                     f'data-count="{int(rects.count[i])}"><title>{html.escape(tip)}</title></rect>')
    rotate = n > 10
    for position, name in painter.ticks():
        x, y = x_of(position), height - bottom + 14
        turn = f' transform="rotate(-40 {x:.1f} {y:.1f})"' if rotate else ""
        parts.append(f'<text x="{x:.1f}" y="{y}" text-anchor="{"end" if rotate else "middle"}" class="nm-tick"{turn}>'
                     f'{html.escape(name)}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 3}" text-anchor="middle" class="nm-tick">'
                 "true class</text></svg>")
    return "".join(parts)


# -- the focused sample ----------------------------------------------------------------------------------
def focus_payload(run, epochs: list[int]) -> dict:
    """The first spotlight sample (else the first probe sample): picture, label, predictions, feature maps."""
    from .plots import thumbnail_png

    spotlight = list(run.spotlight)
    sample = int(spotlight[0]) if spotlight else int(run.samples[0])
    position = int(np.flatnonzero(run.samples == sample)[0])
    label = int(run.labels[position])
    image = None
    if run.images is not None:
        import base64

        image = base64.b64encode(thumbnail_png(np.asarray(run.images[position].values), scale=1)).decode("ascii")
    predicted = {}
    for epoch in epochs:
        p = int(run.predictions[run.epochs.index(epoch), position])
        predicted[str(epoch)] = run.class_names[p] if 0 <= p < len(run.class_names) else "none"
    maps = {}
    if spotlight:
        for layer in run.map_layers:
            maps[layer] = _layer_maps(run, layer, spotlight.index(sample), epochs)
    return {"sample": sample, "label": run.class_names[label] if label >= 0 else "no label", "image": image,
            "predicted": predicted, "layers": list(maps), "maps": maps}


def _layer_maps(run, layer: str, row: int, epochs: list[int]) -> dict:
    from .plots import diverging_colors
    from .views.training_painter import columns_for, tile

    frames = {}
    for epoch in epochs:
        maps = np.asarray(run.feature_maps(layer, epoch)[row], dtype=np.float32)  # (channel, y, x)
        channels, h, w = maps.shape
        grid = tile(maps, columns_for(channels, h, w))
        lo, hi = float(np.nanmin(maps)), float(np.nanmax(maps))
        if lo < 0:
            limit = max(-lo, hi) or 1.0
            rgba, span = colorize(grid, diverging_colors(), -limit, limit), [-limit, limit]
        else:
            from bokeh.palettes import Viridis256

            rgba, span = colorize(grid, list(Viridis256), 0.0, hi or 1.0), [0.0, hi]
        frames[str(epoch)] = {"png": indexed_png(rgba), "range": span}
    return {"channels": channels, "mapSize": [h, w], "width": grid.shape[1], "height": grid.shape[0],
            "scale": pixel_scale(max(grid.shape), MAP_TARGET_PX), "frames": frames}
