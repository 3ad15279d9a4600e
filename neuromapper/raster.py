"""Server-side rasterization of embedding points: aggregate, shade, spread.

Why this is not ``holoviews.operation.datashader.rasterize`` on every player step: with four
layers of 1,000,000 points, the datashader path costs 27-45 ms to aggregate and about 60 ms to
shade *each* layer on this 2-core machine (``benchmarks/bench_dashboard.py`` prints the
comparison), and rebuilding a DataFrame per epoch adds 50-100 ms, so a step takes 0.8-1.8 s.
The dashboard needs the four images in well under 250 ms. Here the per-epoch coordinates stay
in ready numpy arrays and one compiled pass per layer, which releases the GIL (so the layers
aggregate in parallel threads), adds each point's category colour and a count into a
``(height, width, 4)`` array -- 2 MB at 360 px, small enough for the CPU's L2 cache, where a
per-category count array (5 MB for ten classes) is not and ran 2-3 times slower at 10 million
points. Points outside an active selection go to a separate grey count in the same pass, and a
second compiled pass turns sums into colours and composites the coloured points over the grey
ones. Sparse pictures are spread (each point grown to a small disc), and the output is a plain RGBA
array that HoloViews composes as an ``hv.RGB`` element.

Colours mix like datashader's categorical shading: each pixel's colour is the count-weighted
mean of its categories' colours, its opacity rises with the pixel's count on an equalised
histogram scale (``eq_hist``), so dense and sparse regions stay readable together.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def transform(self) -> tuple:
        """``(x0, sx, y0, sy, width, height)``: data to pixel as the compiled kernels take it."""
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        sx = self.width / (x1 - x0) if x1 > x0 else 0.0
        sy = self.height / (y1 - y0) if y1 > y0 else 0.0
        return x0, sx, y0, sy, self.width, self.height


@numba.njit(inline="always")
def _pixel(xi, yi, x0, sx, y0, sy, width, height):
    """Row (0 at the top of the picture) and column of a point, or ``(-1, -1)`` when it is NaN
    (a point the reduction could not place) or outside the frame (right and top edges exclusive)."""
    if not (xi == xi and yi == yi):
        return -1, -1
    col = int((xi - x0) * sx)
    row = int((yi - y0) * sy)
    if col < 0 or col >= width or row < 0 or row >= height:
        return -1, -1
    return height - 1 - row, col


@numba.njit(nogil=True, cache=True)
def _count_categorical(x, y, codes, n_codes, x0, sx, y0, sy, width, height, out):
    for i in range(x.shape[0]):
        c = codes[i]
        if c < 0 or c >= n_codes:
            continue
        r, col = _pixel(x[i], y[i], x0, sx, y0, sy, width, height)
        if r >= 0:
            out[r, col, c] += 1


def count_categorical(x: np.ndarray, y: np.ndarray, codes: np.ndarray, n_codes: int, frame: Frame) -> np.ndarray:
    """Count points per pixel and category: ``(height, width, n_codes)`` uint32.

    Points with a negative code (hidden) or NaN coordinates (unplaced) are skipped; the right
    and top edges are exclusive, as in datashader.
    """
    out = np.zeros((frame.height, frame.width, n_codes), dtype=np.uint32)
    _count_categorical(x, y, codes, n_codes, *frame.transform(), out)
    return out


@numba.njit(nogil=True, cache=True)
def _mean_value(x, y, values, keep, x0, sx, y0, sy, width, height, count, total):
    for i in range(x.shape[0]):
        if not keep[i]:
            continue
        r, col = _pixel(x[i], y[i], x0, sx, y0, sy, width, height)
        if r >= 0:
            count[r, col] += 1
            total[r, col] += values[i]


def mean_value(x, y, values, keep, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel point count and mean of ``values`` over the points where ``keep`` is true."""
    count = np.zeros((frame.height, frame.width), dtype=np.uint32)
    total = np.zeros((frame.height, frame.width), dtype=np.float64)
    _mean_value(x, y, values, keep, *frame.transform(), count, total)
    with np.errstate(invalid="ignore", divide="ignore"):
        return count, np.where(count > 0, total / np.maximum(count, 1), np.nan)


@numba.njit(nogil=True, cache=True)
def _accumulate(x, y, codes, colors, selected, use_selection, x0, sx, y0, sy, width, height, sums, grey):
    for i in range(x.shape[0]):
        c = codes[i]
        if c < 0:
            continue
        r, col = _pixel(x[i], y[i], x0, sx, y0, sy, width, height)
        if r < 0:
            continue
        if use_selection and not selected[i]:
            grey[r, col] += 1
        else:
            sums[r, col, 0] += colors[c, 0]
            sums[r, col, 1] += colors[c, 1]
            sums[r, col, 2] += colors[c, 2]
            sums[r, col, 3] += 1


@dataclass
class ColorSums:
    """Per pixel: summed colour channels and count of drawn points, and the grey (unselected) count."""

    sums: np.ndarray  # (height, width, 4) uint32: red, green, blue sums and the count
    grey: np.ndarray | None  # (height, width) uint32, or None without a selection


def accumulate_colors(x: np.ndarray, y: np.ndarray, codes: np.ndarray, colors: np.ndarray, frame: Frame,
                      selected: np.ndarray | None = None) -> ColorSums:
    """Sum the colour of each point's category per pixel, in one pass.

    ``codes`` index ``colors`` (``(n, 3)``, 0-255); negative codes (hidden) and NaN coordinates
    (unplaced) are skipped. With ``selected`` (bool per point), unselected points are only
    counted, in :attr:`ColorSums.grey`.
    """
    sums = np.zeros((frame.height, frame.width, 4), dtype=np.uint32)
    grey = np.zeros((frame.height, frame.width), dtype=np.uint32)
    use_selection = selected is not None
    flags = selected if use_selection else np.zeros(1, dtype=np.bool_)
    _accumulate(x, y, codes, np.asarray(colors, dtype=np.uint32), flags, use_selection,
                *frame.transform(), sums, grey)
    return ColorSums(sums, grey if use_selection else None)


@numba.njit(nogil=True, cache=True)
def _compose(sums, alpha, grey_alpha, grey_rgb, out):
    height, width = alpha.shape
    for r in range(height):
        for c in range(width):
            ta = alpha[r, c] / 255.0
            ba = grey_alpha[r, c] / 255.0
            if ta == 0.0 and ba == 0.0:
                continue
            out_a = ta + ba * (1.0 - ta)
            n = sums[r, c, 3]
            for k in range(3):
                top = sums[r, c, k] / n if n else 0.0
                out[r, c, k] = np.uint8((top * ta + grey_rgb[k] * ba * (1.0 - ta)) / out_a + 0.5)
            out[r, c, 3] = np.uint8(out_a * 255.0 + 0.5)


def shade_sums(agg: ColorSums, grey_rgb, grey_scale: float) -> np.ndarray:
    """RGBA ``(height, width, 4)`` uint8 from :func:`accumulate_colors`' sums.

    A pixel's colour is the mean colour of its points, its opacity :func:`eq_hist_alpha` of its
    count; unselected points are drawn grey at ``grey_scale`` of that opacity, under the others.
    """
    alpha = eq_hist_alpha(agg.sums[..., 3])
    grey_alpha = (eq_hist_alpha(agg.grey) * grey_scale).astype(np.uint8) if agg.grey is not None \
        else np.zeros_like(alpha)
    out = np.zeros(alpha.shape + (4,), dtype=np.uint8)
    _compose(agg.sums, alpha, grey_alpha, np.asarray(grey_rgb, dtype=np.float64), out)
    return out


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


def hex_to_rgb(colors: list[str]) -> np.ndarray:
    """``["#1f77b4", ...]`` to an ``(n, 3)`` float array of 0-255 channel values."""
    return np.array([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=np.float64)


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


def spread_radius(alpha: np.ndarray) -> int:
    """How many pixels :func:`spread` grows a picture with opacity ``alpha`` by.

    The radius follows the share of lit pixels: below 2% (a few thousand points in a 360 px
    plot) points grow by 2 px, below 8% by 1 px, denser pictures are left alone. datashader's
    ``dynspread`` judges sparsity by how many lit pixels have lit neighbours, which embeddings
    (tight clusters by design) pass at once, so it leaves a 2,000-point probe as specks.
    """
    lit = np.count_nonzero(alpha) / alpha.size
    return 2 if lit < 0.02 else 1 if lit < 0.08 else 0


@numba.njit(nogil=True, cache=True)
def _dilate(src, offsets, out):
    height, width = src.shape[:2]
    for r in range(height):
        for c in range(width):
            a = src[r, c, 3]
            if a == 0:
                continue
            for k in range(offsets.shape[0]):
                rr = r + offsets[k, 0]
                cc = c + offsets[k, 1]
                if 0 <= rr < height and 0 <= cc < width and a > out[rr, cc, 3]:
                    out[rr, cc, 0] = src[r, c, 0]
                    out[rr, cc, 1] = src[r, c, 1]
                    out[rr, cc, 2] = src[r, c, 2]
                    out[rr, cc, 3] = a


def spread(rgba: np.ndarray, px: int | None = None) -> np.ndarray:
    """Grow each lit pixel into a disc of radius ``px`` (default :func:`spread_radius`).

    Where discs overlap the more opaque pixel wins, so dense cores stay on top of sparse edges.
    Written here rather than taken from datashader's ``spread`` because that is compiled anew in
    every process (6-19 s before a server's first picture on this machine); this loop is
    compiled once and cached on disk.
    """
    if px is None:
        px = spread_radius(rgba[..., 3])
    if px == 0:
        return rgba
    dr, dc = np.mgrid[-px : px + 1, -px : px + 1]
    disc = (dr**2 + dc**2) <= px * px + px  # the usual pixel disc: 3x3 at 1 px, 5x5 less corners at 2
    offsets = np.column_stack([dr[disc], dc[disc]]).astype(np.int64)
    out = np.ascontiguousarray(rgba).copy()
    _dilate(np.ascontiguousarray(rgba), offsets, out)
    return out


@numba.njit(nogil=True, cache=True)
def _draw_segments(x0s, y0s, x1s, y1s, rgb, alpha, x0, sx, y0, sy, width, height, out):
    for i in range(x0s.shape[0]):
        ax, ay, bx, by = x0s[i], y0s[i], x1s[i], y1s[i]
        if not (ax == ax and ay == ay and bx == bx and by == by):
            continue
        # pixel coordinates (row 0 at the top), unclipped: segments may cross the frame's edge
        pc0, pr0 = (ax - x0) * sx, height - 1 - (ay - y0) * sy
        pc1, pr1 = (bx - x0) * sx, height - 1 - (by - y0) * sy
        steps = int(max(abs(pc1 - pc0), abs(pr1 - pr0))) + 1
        if steps > 4 * (width + height):  # a segment far outside the frame: nothing to see
            continue
        a = alpha[i] / 255.0
        for s in range(steps + 1):
            t = s / steps
            col = int(pc0 + (pc1 - pc0) * t)
            row = int(pr0 + (pr1 - pr0) * t)
            for dc in range(2):  # two pixels wide: a one-pixel line vanishes among the points
                cc = col + dc
                if 0 <= row < height and 0 <= cc < width:
                    under = out[row, cc, 3] / 255.0
                    out_a = a + under * (1.0 - a)
                    for k in range(3):
                        out[row, cc, k] = np.uint8((rgb[i, k] * a + out[row, cc, k] * under * (1.0 - a)) / out_a + 0.5)
                    out[row, cc, 3] = np.uint8(out_a * 255.0 + 0.5)


def draw_segments(rgba: np.ndarray, start: np.ndarray, end: np.ndarray, rgb: np.ndarray, alpha: np.ndarray,
                  frame: Frame) -> np.ndarray:
    """Draw straight segments ``start[i] -> end[i]`` (``(n, 2)`` data coordinates) over ``rgba``.

    Each segment has its own colour (``rgb``, ``(n, 3)`` 0-255) and opacity (``alpha``, 0-255),
    composited "over" in order, so later segments lie on top. Written here because trajectories
    are drawn into the layer picture the scene already rendered, in the same frame, with an
    opacity per segment (older steps fade): datashader's ``Canvas.line`` aggregates counts from a
    DataFrame and would need its own shading pass per player step. Returns a new array.
    """
    out = np.ascontiguousarray(rgba).copy()
    n = len(start)
    if n:
        _draw_segments(np.ascontiguousarray(start[:, 0], dtype=np.float64), np.ascontiguousarray(start[:, 1], dtype=np.float64),
                       np.ascontiguousarray(end[:, 0], dtype=np.float64), np.ascontiguousarray(end[:, 1], dtype=np.float64),
                       np.ascontiguousarray(rgb, dtype=np.float64), np.ascontiguousarray(alpha, dtype=np.float64),
                       *frame.transform(), out)
    return out


def arrow_heads(start: np.ndarray, end: np.ndarray, frame: Frame, px: float) -> tuple[np.ndarray, np.ndarray]:
    """The two barb ends of an arrowhead ``px`` screen pixels long at each ``end`` (data coordinates).

    Computed in screen pixels, so the heads look the same in a layer whose axes have different
    scales; an arrow of zero length gets its barbs at its end (drawn as a point).
    """
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    scale = np.array([frame.width / (x1 - x0), frame.height / (y1 - y0)])
    direction = (end - start) * scale
    length = np.linalg.norm(direction, axis=1, keepdims=True)
    unit = np.divide(direction, length, out=np.zeros_like(direction), where=length > 0)
    barbs = []
    for angle in (np.pi * 5 / 6, -np.pi * 5 / 6):
        c, s = np.cos(angle), np.sin(angle)
        rotated = np.column_stack([unit[:, 0] * c - unit[:, 1] * s, unit[:, 0] * s + unit[:, 1] * c])
        barbs.append(end + px * rotated / scale)
    return barbs[0], barbs[1]
