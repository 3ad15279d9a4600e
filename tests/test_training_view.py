"""The Training page driven through the shared state with no browser (painter and Viewer)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuromapper import density, raster
from neuromapper.views.run import RunFacts
from neuromapper.views.state import SessionState
from neuromapper.views.training_painter import ALL_CHANNELS, INPUT, RGB, TrainingPainter, columns_for, tile


class Synthetic(RunFacts):
    """A recorded run plus schema-3 facts made of small synthetic arrays (weights of 6 kernels 3x3x3)."""

    rng = np.random.default_rng(0)
    _w = (rng.normal(size=(4, 6, 3, 3, 3)) * np.array([1, 2, 3, 4])[:, None, None, None, None]).astype(np.float32)
    weight_layers = ["conv1"]

    def weights(self, layer, epoch):
        return self._w[self.epochs.index(epoch)]

    def weight_range(self, layer):
        return float(np.abs(self._w).max())

    def weight_kind(self, layer):
        return "conv"

    @property
    def inputs(self):
        return np.asarray(self.ds["image"].values, np.float32).reshape(len(self.samples), -1)[:, :40]

    boundary_grid = None
    lacks = ["decision boundary (models on 2-D inputs)"]


def synthetic(path) -> Synthetic:
    base = RunFacts.open(path)
    return Synthetic(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init
                        and not f.name.startswith("_")})


@pytest.fixture
def state(small_run):
    state = SessionState(synthetic(small_run))
    yield state
    state.dispose()


@pytest.fixture
def painter(state):
    return TrainingPainter(state)


def test_tile_lays_tiles_out_row_by_row_with_gaps():
    tiles = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    grid = tile(tiles, 2)
    assert grid.shape == (3 * 3 - 1, 2 * 4 - 1)
    np.testing.assert_array_equal(grid[3:5, 4:7], tiles[3])
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 3]).all() and np.isnan(grid[6:, 4:]).all()
    assert columns_for(64, 8, 8) == 8


def test_curve_click_jumps_to_the_nearest_epoch(painter, state):
    assert painter.epoch_at(2.4) == 2
    assert painter.epoch_at(-3) == state.run.epochs[0]
    assert painter.epoch_at(99) == state.run.epochs[-1]
    assert set(painter.curves()) >= {"train_loss", "probe accuracy"}


def test_the_weight_grid_is_the_recorded_weights_tiled(painter, state):
    run = state.run
    assert painter.weight_layer == "conv1"
    assert painter.channels == RGB  # three input channels
    painter.channels = ALL_CHANNELS
    for epoch in run.epochs:
        grid = painter.weight_grid(epoch)
        w = run.weights("conv1", epoch)
        np.testing.assert_array_equal(grid, tile(w.reshape(-1, 3, 3), 3))  # a row per kernel, a column per input
    painter.channels = 2
    np.testing.assert_array_equal(painter.weight_grid(1), tile(run.weights("conv1", 1)[:, 2], columns_for(6, 3, 3)))


def test_the_colour_scale_is_symmetric_and_fixed_over_epochs(painter, state):
    limits = set()
    for epoch in state.run.epochs:
        state.epoch = epoch
        limits.add(painter.weight_limit())
    assert limits == {float(np.abs(Synthetic._w).max())}
    rgba = painter.weight_grid(0)  # RGB: grey is zero on the fixed scale
    assert rgba.dtype == np.uint8 and rgba.shape[-1] == 4


def test_a_clicked_tile_is_enlarged(painter, state):
    painter.channels = 1
    grid = painter.weight_grid()
    height = grid.shape[0]
    columns = columns_for(6, 3, 3)
    # tile 4 sits in row 1, column 1 of a grid of 3 x 3 cells of 3 + 1 pixels: its centre
    assert columns == 3
    x, y = 1 * 4 + 1.5, height - (1 * 4 + 1.5)
    assert painter.tile_at(x, y) == 4
    assert painter.tile_at(3.5, y) is None  # the gap between tiles
    painter.enlarged = 4
    np.testing.assert_array_equal(painter.enlarged_tile(), state.run.weights("conv1", state.epoch)[4, 1])
    assert painter.enlarged_name() == "kernel 4"


def test_pca_of_a_layer_and_of_the_input(painter, state):
    painter.explore_layer = "fc1"
    epochs, xy = painter.coordinates()
    assert epochs == state.run.epochs and xy.shape == (len(epochs), len(state.run.samples), 2)
    rgba = painter.explore_picture()
    assert rgba.shape == (400, 400, 4) and rgba[..., 3].any()
    painter.explore_layer = INPUT
    epochs, xy = painter.coordinates()
    assert epochs == [None]


def test_class_contours_surround_each_class():
    rng = np.random.default_rng(1)
    xy = np.concatenate([rng.normal(-2, 0.5, (300, 2)), rng.normal(2, 0.5, (300, 2))])
    codes = np.repeat([0, 1], 300)
    frame = raster.Frame((-5.0, 5.0), (-5.0, 5.0), 200, 200)
    contours = density.class_contours(xy, codes, 2, frame)
    for c, centre in ((0, -2), (1, 2)):
        half, most = contours[c]
        points = np.concatenate(half)
        assert np.abs(points.mean(axis=0) - centre).max() < 0.3  # around its class
        assert np.abs(points - centre).max() < 2.0
