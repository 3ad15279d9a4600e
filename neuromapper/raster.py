"""Server-side rasterization of embedding points: aggregate, shade, spread.

Why this is not ``holoviews.operation.datashader.rasterize`` on every player step: with four
layers of 1,000,000 points, the datashader path costs 27-45 ms to aggregate and about 60 ms to
shade *each* layer on this 2-core machine (``benchmarks/bench_dashboard.py`` prints the
comparison), and rebuilding a DataFrame per epoch adds 50-100 ms, so a step takes 0.8-1.8 s.
The dashboard needs the four images in well under 250 ms. Here the per-epoch coordinates stay
in ready numpy arrays, the categorical count aggregate is a compiled loop that releases the GIL
(so the layers aggregate in parallel threads), and shading mixes category colours per pixel in
one compiled pass. Spreading of sparse images still uses datashader's own ``spread``, which
is fast on a finished image, and the output is a plain RGBA array that HoloViews composes as
an ``hv.RGB`` element.

Colours mix like datashader's categorical shading: each pixel's colour is the count-weighted
mean of its categories' colours, its opacity rises with the pixel's count on an equalised
histogram scale (``eq_hist``), so dense and sparse regions stay readable together.
"""

from __future__ import annotations

from dataclasses import dataclass

import datashader.transfer_functions as tf
import numba
import numpy as np

MIN_ALPHA = 140


@dataclass(frozen=True)
class Frame:
    """The region and resolution of one raster: ``x_range`` x ``y_range`` on ``width`` x ``height``."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    width: int
    height: int


@numba.njit(nogil=True, cache=True)
def _count_categorical(x, y, codes, n_codes, x0, sx, y0, sy, width, height, out):
    for i in range(x.shape[0]):
        c = codes[i]
        if c < 0 or c >= n_codes:
            continue
        xi = x[i]
        yi = y[i]
        if not (xi == xi and yi == yi):  # NaN: a point the reduction could not place
            continue
        col = int((xi - x0) * sx)
        row = int((yi - y0) * sy)
        if col < 0 or col >= width or row < 0 or row >= height:
            continue
        out[height - 1 - row, col, c] += 1  # row 0 is the top of the picture


def count_categorical(x: np.ndarray, y: np.ndarray, codes: np.ndarray, n_codes: int, frame: Frame) -> np.ndarray:
    """Count points per pixel and category: ``(height, width, n_codes)`` uint32.

    Points with a negative code (hidden) or NaN coordinates (unplaced) are skipped; the right
    and top edges are exclusive, as in datashader.
    """
    out = np.zeros((frame.height, frame.width, n_codes), dtype=np.uint32)
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    sx = frame.width / (x1 - x0) if x1 > x0 else 0.0
    sy = frame.height / (y1 - y0) if y1 > y0 else 0.0
    _count_categorical(x, y, codes, n_codes, x0, sx, y0, sy, frame.width, frame.height, out)
    return out


@numba.njit(nogil=True, cache=True)
def _mean_value(x, y, values, keep, x0, sx, y0, sy, width, height, count, total):
    for i in range(x.shape[0]):
        if not keep[i]:
            continue
        xi = x[i]
        yi = y[i]
        if not (xi == xi and yi == yi):
            continue
        col = int((xi - x0) * sx)
        row = int((yi - y0) * sy)
        if col < 0 or col >= width or row < 0 or row >= height:
            continue
        count[height - 1 - row, col] += 1
        total[height - 1 - row, col] += values[i]


def mean_value(x, y, values, keep, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel point count and mean of ``values`` over the points where ``keep`` is true."""
    count = np.zeros((frame.height, frame.width), dtype=np.uint32)
    total = np.zeros((frame.height, frame.width), dtype=np.float64)
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    sx = frame.width / (x1 - x0) if x1 > x0 else 0.0
    sy = frame.height / (y1 - y0) if y1 > y0 else 0.0
    _mean_value(x, y, values, keep, x0, sx, y0, sy, frame.width, frame.height, count, total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, np.where(count > 0, total / np.maximum(count, 1), np.nan)


def eq_hist_alpha(total: np.ndarray) -> np.ndarray:
    """Opacity per pixel from its point count, histogram-equalised over non-empty pixels.

    Counts are small integers, so the equalisation is a cumulative histogram of counts
    (``np.bincount``) rather than a sort; empty pixels get 0.
    """
    flat = total.ravel()
    nonzero = flat[flat > 0]
    alpha = np.zeros(flat.shape, dtype=np.uint8)
    if nonzero.size == 0:
        return alpha.reshape(total.shape)
    hist = np.bincount(nonzero)
    cdf = np.cumsum(hist).astype(np.float64)
    span = cdf[-1] - cdf[hist.nonzero()[0][0]]
    if span > 0:
        level = (cdf - cdf[hist.nonzero()[0][0]]) / span
    else:
        level = np.ones_like(cdf)
    lut = (MIN_ALPHA + (255 - MIN_ALPHA) * level).astype(np.uint8)
    alpha[flat > 0] = lut[nonzero]
    return alpha.reshape(total.shape)


@numba.njit(nogil=True, cache=True)
def _mix(counts, colors, alpha, out):
    height, width, n = counts.shape
    for r in range(height):
        for c in range(width):
            a = alpha[r, c]
            if a == 0:
                continue
            red = 0.0
            green = 0.0
            blue = 0.0
            total = 0.0
            for k in range(n):
                w = counts[r, c, k]
                if w:
                    red += w * colors[k, 0]
                    green += w * colors[k, 1]
                    blue += w * colors[k, 2]
                    total += w
            out[r, c, 0] = np.uint8(red / total)
            out[r, c, 1] = np.uint8(green / total)
            out[r, c, 2] = np.uint8(blue / total)
            out[r, c, 3] = a


def hex_to_rgb(colors: list[str]) -> np.ndarray:
    """``["#1f77b4", ...]`` to an ``(n, 3)`` float array of 0-255 channel values."""
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=np.float64)


def shade_categorical(counts: np.ndarray, colors: np.ndarray, alpha_scale: float = 1.0) -> np.ndarray:
    """Mix category colours per pixel: ``(H, W, C)`` counts to ``(H, W, 4)`` uint8 RGBA."""
    total = counts.sum(axis=2, dtype=np.uint64)
    alpha = eq_hist_alpha(total)
    if alpha_scale != 1.0:
        alpha = (alpha * alpha_scale).astype(np.uint8)
    out = np.zeros(counts.shape[:2] + (4,), dtype=np.uint8)
    _mix(counts, colors, alpha, out)
    return out


def shade_values(count: np.ndarray, mean: np.ndarray, lut: np.ndarray, span: tuple[float, float]) -> np.ndarray:
    """Colour per-pixel means through a ``(256, 3)`` colour table over ``span``; opacity from counts."""
    lo, hi = span
    level = np.clip((mean - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    index = np.nan_to_num(level * 255, nan=0).astype(np.intp)
    out = np.zeros(count.shape + (4,), dtype=np.uint8)
    out[..., :3] = lut[index]
    out[..., 3] = eq_hist_alpha(count)
    return out


def over(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Composite RGBA ``top`` over ``bottom`` (both ``(H, W, 4)`` uint8, straight alpha)."""
    ta = top[..., 3:4].astype(np.float32) / 255
    ba = bottom[..., 3:4].astype(np.float32) / 255
    out_a = ta + ba * (1 - ta)
    with np.errstate(invalid="ignore", divide="ignore"):
        rgb = (top[..., :3] * ta + bottom[..., :3] * ba * (1 - ta)) / np.where(out_a > 0, out_a, 1)
    return np.concatenate([rgb, out_a * 255], axis=-1).round().astype(np.uint8)


def spread(rgba: np.ndarray) -> np.ndarray:
    """Grow points of sparse pictures with datashader's ``spread`` so they stay visible.

    The radius follows the share of lit pixels: below 2% (a few thousand points in a 360 px
    plot) points grow by 2 px, below 8% by 1 px, denser pictures are left alone. datashader's
    ``dynspread`` judges sparsity by how many lit pixels have lit neighbours, which embeddings
    (tight clusters by design) pass at once, so it leaves a 2,000-point probe as specks.
    """
    lit = np.count_nonzero(rgba[..., 3]) / (rgba.shape[0] * rgba.shape[1])
    px = 2 if lit < 0.02 else 1 if lit < 0.08 else 0
    if px == 0:
        return rgba
    packed = np.ascontiguousarray(rgba).view(np.uint32)[..., 0]
    grown = tf.spread(tf.Image(packed, dims=["y", "x"]), px=px, shape="circle")
    return np.ascontiguousarray(grown.data).view(np.uint8).reshape(rgba.shape)
