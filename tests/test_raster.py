"""Aggregation, shading and spreading of embedding points."""

from __future__ import annotations

import numpy as np

from neuromapper import raster

FRAME = raster.Frame((0.0, 4.0), (0.0, 4.0), 4, 4)  # one pixel per data unit


def test_points_land_in_their_pixel_and_category():
    x = np.array([0.5, 0.5, 3.5, 1.5, np.nan, 2.5, 9.0], dtype=np.float32)
    y = np.array([0.5, 0.5, 3.5, 2.5, 1.0, 1.5, 1.0], dtype=np.float32)
    codes = np.array([0, 1, 1, 0, 0, -1, 0], dtype=np.int8)
    counts = raster.count_categorical(x, y, codes, 2, FRAME)
    assert counts.shape == (4, 4, 2) and counts.sum() == 4  # NaN, hidden (-1) and outside are skipped
    assert counts[3, 0].tolist() == [1, 1]  # bottom-left pixel is the last row: row 0 is the top
    assert counts[0, 3].tolist() == [0, 1]
    assert counts[1, 1].tolist() == [1, 0]


def test_right_and_top_edges_are_exclusive_like_datashader():
    counts = raster.count_categorical(np.array([4.0], np.float32), np.array([4.0], np.float32),
                                      np.zeros(1, np.int8), 1, FRAME)
    assert counts.sum() == 0


def test_colour_sums_mix_category_colours_by_count():
    x = np.array([0.5] * 4 + [1.5, 1.5], np.float32)
    y = np.array([0.5] * 6, np.float32)
    codes = np.array([0, 0, 0, 0, 0, 1], np.int8)
    colors = raster.hex_to_rgb(["#ff0000", "#0000ff"])
    agg = raster.accumulate_colors(x, y, codes, colors, FRAME)
    assert agg.grey is None and agg.sums[3, 0].tolist() == [4 * 255, 0, 0, 4] and agg.sums[3, 1, 3] == 2
    rgba = raster.shade_sums(agg, (180, 180, 180), 0.45)
    assert rgba[3, 0].tolist() == [255, 0, 0, 255]  # the densest pixel is opaque
    assert np.abs(rgba[3, 1, :3].astype(int) - [128, 0, 128]).max() <= 1  # an even mix of red and blue
    assert 0 < rgba[3, 1, 3] < 255
    assert rgba[0, 0, 3] == 0  # empty stays transparent


def test_unselected_points_are_counted_grey_under_the_selected_ones():
    x = np.array([0.5, 0.5, 2.5], np.float32)
    y = np.array([0.5, 0.5, 0.5], np.float32)
    codes = np.array([0, 0, 0], np.int8)
    selected = np.array([True, False, False])
    agg = raster.accumulate_colors(x, y, codes, raster.hex_to_rgb(["#ff0000"]), FRAME, selected)
    assert agg.sums[3, 0, 3] == 1 and agg.grey[3, 0] == 1 and agg.grey[3, 2] == 1 and agg.sums[3, 2, 3] == 0
    rgba = raster.shade_sums(agg, (100, 100, 100), 0.5)
    assert rgba[3, 2, :3].tolist() == [100, 100, 100] and rgba[3, 2, 3] == 127  # grey, half of 255
    assert rgba[3, 0].tolist() == [255, 0, 0, 255]  # an opaque selected point hides the grey one


def test_eq_hist_alpha_is_monotonic_in_counts():
    total = np.array([[0, 1, 2, 3, 50, 1000]])
    alpha = raster.eq_hist_alpha(total)
    assert alpha[0, 0] == 0 and alpha[0, 1] == raster.MIN_ALPHA and alpha[0, -1] == 255
    assert np.all(np.diff(alpha[0, 1:].astype(int)) > 0)


def test_mean_value_and_value_shading():
    x = np.array([0.5, 0.5, 2.5], np.float32)
    y = np.array([0.5, 0.5, 0.5], np.float32)
    count, mean = raster.mean_value(x, y, np.array([1.0, 3.0, 10.0]), np.array([True, True, False]), FRAME)
    assert count[3, 0] == 2 and mean[3, 0] == 2.0
    assert count[3, 2] == 0 and np.isnan(mean[3, 2])  # not kept
    lut = np.stack([np.arange(256)] * 3, axis=1).astype(float)
    rgba = raster.shade_values(count, mean, lut, (0.0, 4.0))
    assert rgba[3, 0, 0] == 127 and rgba[3, 0, 3] == 255 and rgba[3, 2, 3] == 0


def test_over_composites_straight_alpha():
    red = np.array([[[255, 0, 0, 128]]], np.uint8)
    blue = np.array([[[0, 0, 255, 255]]], np.uint8)
    out = raster.over(red, blue)[0, 0]
    assert out[3] == 255 and abs(int(out[0]) - 128) <= 1 and abs(int(out[2]) - 127) <= 1
    assert raster.over(np.zeros_like(red), blue)[0, 0].tolist() == [0, 0, 255, 255]


def test_spread_grows_points_by_a_radius_that_follows_sparsity():
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[50, 50] = [255, 0, 0, 255]
    rgba[50, 52] = [0, 0, 255, 100]
    assert raster.spread_radius(rgba[..., 3]) == 2
    grown = raster.spread(rgba)
    assert np.count_nonzero(grown[..., 3]) == 2 * 21 - 11  # two 5x5-less-corners discs overlapping in 11 px
    assert grown[50, 51].tolist() == [255, 0, 0, 255]  # where discs overlap the more opaque wins
    assert grown[50, 54].tolist() == [0, 0, 255, 100]
    assert np.count_nonzero(raster.spread(rgba, px=1)[..., 3]) == 9 + 6
    medium = np.zeros((100, 100), np.uint8)
    medium[:5] = 255  # 5% of the pixels lit
    assert raster.spread_radius(medium) == 1
    dense = np.full((21, 21, 4), 255, np.uint8)
    assert raster.spread_radius(dense[..., 3]) == 0 and np.array_equal(raster.spread(dense), dense)
