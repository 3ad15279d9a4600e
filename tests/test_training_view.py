"""The Training page driven through the shared state with no browser (painter and Viewer)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuromapper import density, raster
from neuromapper.views.run import RunFacts
from neuromapper.views.state import SessionState
from neuromapper.views.training_painter import ALL_CHANNELS, INPUT, RGB, TrainingPainter, columns_for, tile

LAYER = "fc1.1"  # DigitMLP's fc1 is Flatten then Linear: the Linear's dotted path


class Synthetic(RunFacts):
    """A recorded run whose weights are 6 synthetic kernels of 3 input channels (no fixture has RGB kernels)."""

    _w = (np.random.default_rng(0).normal(size=(4, 6, 3, 3, 3)) * np.array([1, 2, 3, 4])[:, None, None, None, None]
          ).astype(np.float32)
    weight_layers = ["conv1"]

    def weights(self, layer, epoch):
        return self._w[self.epochs.index(epoch)]

    def weight_range(self, layer):
        return float(np.abs(self._w).max())

    def weight_kind(self, layer):
        return "conv"


def synthetic(path) -> Synthetic:
    base = RunFacts.open(path)
    return Synthetic(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init
                        and not f.name.startswith("_")})


def _state(path, run=None):
    from neuromapper import reduce

    # given an embedding, the state starts no background reduction (it would compete with the tests)
    return SessionState(run or path, embedding=reduce(path, method="pca"))


@pytest.fixture
def rgb_state(small_run):
    state = _state(small_run, synthetic(small_run))
    yield state
    state.dispose()


@pytest.fixture
def moons(moons_run):
    state = _state(moons_run)
    yield state, TrainingPainter(state)
    state.dispose()


@pytest.fixture
def digits_mlp(digits_mlp_run):
    state = _state(digits_mlp_run)
    yield state, TrainingPainter(state)
    state.dispose()


def test_tile_lays_tiles_out_row_by_row_with_gaps():
    tiles = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    grid = tile(tiles, 2)
    assert grid.shape == (3 * 3 - 1, 2 * 4 - 1)
    np.testing.assert_array_equal(grid[3:5, 4:7], tiles[3])
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 3]).all() and np.isnan(grid[6:, 4:]).all()
    assert columns_for(64, 8, 8) == 8


def test_curve_click_jumps_to_the_nearest_epoch(moons):
    state, painter = moons
    assert state.param.epoch.objects == list(range(101))
    assert painter.epoch_at(37.4) == 37 and painter.epoch_at(37.6) == 38
    assert painter.epoch_at(-3) == 0 and painter.epoch_at(1e9) == 100
    assert set(painter.curves()) >= {"train_loss", "probe accuracy"}


def test_the_weight_grid_is_the_recorded_weights_tiled(digits_mlp, digits_mlp_run):
    from neuromapper import store

    state, painter = digits_mlp
    run = state.run
    assert run.weight_layers == [LAYER] and painter.weight_layer == LAYER
    assert painter.param.channels.objects == {"all input channels": ALL_CHANNELS}  # one input channel (grey images)
    recorded = store.weights(store.open_run(digits_mlp_run), LAYER)  # (epoch, out, in, y, x): 16 neurons of 8x8
    assert recorded.shape[1:] == (16, 1, 8, 8)
    for epoch in run.epochs:
        grid = painter.weight_grid(epoch)
        assert grid.shape == (4 * 9 - 1, 4 * 9 - 1)  # 16 neurons of 8 x 8, a 4 x 4 grid, 1-pixel gaps
        w = recorded.sel(epoch=epoch).values[:, 0]
        for i in range(16):
            r, c = divmod(i, 4)
            np.testing.assert_array_equal(grid[r * 9: r * 9 + 8, c * 9: c * 9 + 8], w[i])
        assert np.isnan(grid[8]).all() and np.isnan(grid[:, 17]).all()
    assert not np.array_equal(painter.weight_grid(0), painter.weight_grid(run.epochs[-1]))  # the weights learn


def test_the_colour_scale_is_symmetric_and_fixed_over_epochs(digits_mlp):
    state, painter = digits_mlp
    limits = set()
    for epoch in state.run.epochs:
        state.epoch = epoch
        limits.add(painter.weight_limit())
        assert np.nanmax(np.abs(painter.weight_grid())) <= painter.weight_limit()
    assert len(limits) == 1  # the same at every epoch ...
    largest = max(float(np.abs(state.run.weights(LAYER, e)).max()) for e in state.run.epochs)
    assert limits == {largest}  # ... and the largest |weight| of any epoch, so -limit..limit holds every one


def test_a_clicked_neuron_is_enlarged(digits_mlp):
    state, painter = digits_mlp
    height = painter.weight_grid().shape[0]
    x, y = 1 * 9 + 4.5, height - (2 * 9 + 4.5)  # the centre of row 2, column 1: neuron 9
    assert painter.tile_at(x, y) == 9
    assert painter.tile_at(8.5, y) is None  # the gap between two tiles
    painter.enlarged = 9
    state.epoch = state.run.epochs[-1]
    np.testing.assert_array_equal(painter.enlarged_tile(), state.run.weights(LAYER, state.epoch)[9, 0])
    assert painter.enlarged_name() == "neuron 9"


def test_rgb_kernels_and_one_input_channel(rgb_state):
    painter, run = TrainingPainter(rgb_state), rgb_state.run
    assert painter.channels == RGB  # three input channels
    rgba = painter.weight_grid(0)
    assert rgba.dtype == np.uint8 and rgba.shape == (2 * 4 - 1, 3 * 4 - 1, 4)  # 6 kernels of 3 x 3, 3 to a row
    limit = painter.weight_limit()
    np.testing.assert_array_equal(rgba[:3, :3, :3], np.round(255 * (0.5 + 0.5 * run.weights("conv1", 0)[0]
                                                                    .transpose(1, 2, 0) / limit)).astype(np.uint8))
    painter.channels = ALL_CHANNELS  # a row per kernel, a column per input channel
    np.testing.assert_array_equal(painter.weight_grid(1), tile(run.weights("conv1", 1).reshape(-1, 3, 3), 3))
    painter.channels = 2
    np.testing.assert_array_equal(painter.weight_grid(1), tile(run.weights("conv1", 1)[:, 2], columns_for(6, 3, 3)))


def test_the_moons_boundary_contour_separates_the_moons(moons):
    from scipy.interpolate import RegularGridInterpolator

    state, painter = moons
    run = state.run
    assert run.class_names and len(run.class_names) == 2 and painter.boundary_class == 1
    state.epoch = run.epochs[-1]
    lines = painter.boundary_lines()
    assert lines, "no 0.5 contour at the last epoch"
    xs, ys = run.boundary_grid
    p1 = run.boundary(state.epoch)[..., 1]
    on_line = RegularGridInterpolator((ys, xs), p1)(np.concatenate(lines)[:, ::-1])
    assert np.abs(on_line - 0.5).max() < 0.02  # the lines are where P(class 1) = 0.5
    # every probe point is on its class's side of the line: P(class 1) interpolated at the point
    side = RegularGridInterpolator((ys, xs), p1, bounds_error=False, fill_value=np.nan)(run.inputs[:, ::-1]) > 0.5
    assert (side == (run.labels == 1)).mean() >= 0.95
    # the picture: class 1's colour where it is more probable, class 0's where less (row 0 at the top)
    rgba = painter.boundary_picture()
    assert rgba.shape == (len(ys), len(xs), 4)
    assert not np.array_equal(painter.boundary_picture(run.epochs[0]), rgba)  # it changes while the model trains


def test_exploratory_pca_of_a_layer_and_of_the_input(moons):
    state, painter = moons
    run = state.run
    assert painter.param.explore_layer.objects[0] == INPUT and painter.explore_layer == INPUT
    epochs, xy = painter.coordinates()
    assert epochs == [None]
    np.testing.assert_allclose(xy[0], run.inputs, rtol=1e-6)  # 2-D inputs are their own PCA
    painter.explore_layer = run.layers[0]
    epochs, xy = painter.coordinates()
    assert epochs == run.epochs and xy.shape == (len(epochs), len(run.samples), 2)
    rgba = painter.explore_picture()
    assert rgba.shape == (400, 400, 4) and rgba[..., 3].any()
    frame = painter.explore_frame()
    state.epoch = run.epochs[-1]
    assert painter.explore_frame() == frame  # fixed axes over epochs
    assert not np.array_equal(painter.explore_picture(), rgba)
    state.classes = [run.class_names[0]]  # a hidden class is neither shaded nor outlined
    painter.density = "class contours"
    one = painter.explore_picture()
    colors = {tuple(c) for c in one[one[..., 3] > 0][:, :3]}
    assert len(colors) > 0 and all(np.abs(np.array(c) - (31, 119, 180)).max() < 60 for c in colors)


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
