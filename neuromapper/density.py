"""Densities and contour lines of points and probability grids (pure numpy; no Panel, no HoloViews).

The Training page draws three things with them: the decision boundary (the 0.5 contour of a class
probability over the recorded input grid), and, for the exploratory plots, a shaded density of
all points (datashader's ``eq_hist``) and per-class density contours (each class's smoothed point
count, contoured at the levels that enclose a share of that class's points). Contours are traced
by contourpy, the tracer HoloViews' ``contours`` operation uses, called directly so that a player
step gets plain ``(n, 2)`` arrays to draw into the picture or push to Bokeh without building a
HoloViews element.
"""

from __future__ import annotations

import numpy as np

from . import raster

MASS_LEVELS = (0.5, 0.9)  # class contours enclose the densest 50% and 90% of each class's points
BANDWIDTH_SCALE = 0.6  # of Scott's rule: a little sharper than the textbook kernel, so clusters stay apart
BANDWIDTH_PX = (1.5, 40.0)  # the smoothing kernel's bounds in raster pixels


def contour_lines(z: np.ndarray, xs: np.ndarray, ys: np.ndarray, level: float) -> list[np.ndarray]:
    """The lines where ``z`` (rows along ``ys``, columns along ``xs``) crosses ``level``, as ``(n, 2)`` x, y arrays."""
    import contourpy

    z = np.asarray(z, dtype=np.float64)
    if not np.isfinite(z).any() or not (np.nanmin(z) <= level <= np.nanmax(z)):
        return []
    generator = contourpy.contour_generator(np.asarray(xs, float), np.asarray(ys, float), z,
                                            line_type=contourpy.LineType.Separate)
    return [line for line in generator.lines(level) if len(line) >= 2]


def segments(lines: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The straight pieces of ``lines`` as ``(start, end)`` arrays for :func:`raster.draw_segments`."""
    if not lines:
        empty = np.zeros((0, 2))
        return empty, empty
    return np.concatenate([line[:-1] for line in lines]), np.concatenate([line[1:] for line in lines])


def pixel_centres(frame: raster.Frame) -> tuple[np.ndarray, np.ndarray]:
    """Data coordinates of the pixel centres of ``frame``: x left to right, y bottom to top."""
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    xs = x0 + (np.arange(frame.width) + 0.5) * (x1 - x0) / frame.width
    ys = y0 + (np.arange(frame.height) + 0.5) * (y1 - y0) / frame.height
    return xs, ys


def class_counts(xy: np.ndarray, codes: np.ndarray, n_classes: int, frame: raster.Frame) -> np.ndarray:
    """Points per pixel and class, ``(n_classes, height, width)`` float, row 0 at the *bottom* (as ``ys``)."""
    counts = raster.count_categorical(np.ascontiguousarray(xy[:, 0], np.float64),
                                      np.ascontiguousarray(xy[:, 1], np.float64),
                                      np.asarray(codes, np.int64), n_classes, frame)
    return np.moveaxis(counts[::-1], -1, 0).astype(np.float64)


def bandwidth_px(counts: np.ndarray) -> float:
    """A Gaussian kernel width in pixels for the points counted in ``counts`` (``(height, width)``).

    Scott's rule (``n ** (-1/6)`` times the points' spread, in two dimensions), scaled by
    :data:`BANDWIDTH_SCALE` and kept within :data:`BANDWIDTH_PX`: thirty points get a broad
    kernel (one smooth outline per cluster), ten thousand a narrow one (detail where it is real).
    """
    n = counts.sum()
    if n < 2:
        return BANDWIDTH_PX[0]
    rows, cols = np.indices(counts.shape)
    spread = []
    for axis in (rows, cols):
        mean = (axis * counts).sum() / n
        spread.append(np.sqrt(((axis - mean) ** 2 * counts).sum() / n))
    return float(np.clip(BANDWIDTH_SCALE * np.mean(spread) * n ** (-1 / 6), *BANDWIDTH_PX))


def smooth(counts: np.ndarray, sigma_px: float | None = None) -> np.ndarray:
    """``counts`` (``(height, width)``) blurred by a Gaussian: a kernel density estimate on the grid.

    ``sigma_px`` defaults to :func:`bandwidth_px` of the counts.
    """
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(counts, bandwidth_px(counts) if sigma_px is None else sigma_px, mode="constant")


def mass_levels(density: np.ndarray, fractions=MASS_LEVELS) -> list[float]:
    """Density values whose upper level sets hold ``fractions`` of the total mass (highest-density regions).

    The level for 0.5 is the density above which half of the class's (smoothed) points lie: its
    contour outlines where the class is concentrated, whatever the number of points.
    """
    values = np.sort(density.ravel())[::-1]
    total = values.sum()
    if total <= 0:
        return []
    cumulative = np.cumsum(values) / total
    return [float(values[min(np.searchsorted(cumulative, f), len(values) - 1)]) for f in fractions]


def class_contours(xy: np.ndarray, codes: np.ndarray, n_classes: int, frame: raster.Frame,
                   fractions=MASS_LEVELS) -> dict[int, list[list[np.ndarray]]]:
    """Per class (code), its density contour lines at each of ``fractions`` of its points.

    Each class is smoothed with its own kernel (:func:`bandwidth_px`); classes with fewer than
    three points in the frame get no contour.
    """
    counts = class_counts(xy, codes, n_classes, frame)
    xs, ys = pixel_centres(frame)
    out = {}
    for c in range(n_classes):
        if counts[c].sum() < 3:
            continue
        smoothed = smooth(counts[c])
        out[c] = [contour_lines(smoothed, xs, ys, level) for level in mass_levels(smoothed, fractions)]
    return out


def shaded_density(total: np.ndarray, cmap, floor: float = 0.03) -> np.ndarray:
    """Counts ``(height, width)`` smoothed and shaded with ``eq_hist``; below ``floor`` of the peak clear.

    The kernel is half the contours' (:func:`bandwidth_px`): the shading shows the detail, the
    contours the outline. Its far tails are cut so that the empty parts of the plot stay white.
    """
    total = total.astype(np.float64)
    smoothed = smooth(total, bandwidth_px(total) / 2)
    smoothed[smoothed < floor * smoothed.max(initial=0)] = np.nan  # datashader leaves NaN clear (not 0.0)
    return shade_eq_hist(smoothed, cmap)


def shade_eq_hist(total: np.ndarray, cmap, min_alpha: int = 60) -> np.ndarray:
    """An ``(height, width)`` count or density image (row 0 at the top) as RGBA uint8, datashader's ``eq_hist``."""
    import datashader.transfer_functions as tf
    import xarray as xr

    height, width = total.shape
    if not np.nansum(total):
        return np.zeros((height, width, 4), np.uint8)
    # shading is per pixel (the histogram is global), so rows keep their order
    agg = xr.DataArray(total, dims=["y", "x"], coords={"y": np.arange(height), "x": np.arange(width)})
    packed = np.ascontiguousarray(tf.shade(agg, cmap=cmap, how="eq_hist", min_alpha=min_alpha).values)
    return packed.view(np.uint8).reshape(height, width, 4)
