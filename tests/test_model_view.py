"""The Model page driven through the shared state with no browser (confusion geometry, painter, Viewer)."""

from __future__ import annotations

import html

import holoviews as hv
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion

from neuromapper import confusion, plots
from neuromapper.views.model import ModelView
from neuromapper.views.model_painter import BARS, CHORD, HEATMAP, ModelPainter
from neuromapper.views.state import SessionState


class NoJobs:
    """Stands in for the server's reduce jobs: these tests never look at an embedding."""

    def join(self, *_):
        return 1

    def leave(self, *_):
        pass


def session(path) -> SessionState:
    return SessionState(path, jobs=NoJobs())


@pytest.fixture
def state(twin_run):
    state = session(twin_run)
    yield state
    state.dispose()


@pytest.fixture
def painter(state):
    return ModelPainter(state)


def sk_matrix(run, epoch_index: int) -> np.ndarray:
    n = len(run.class_names)
    return sk_confusion(run.labels, run.predictions[epoch_index], labels=list(range(n)))


def inside_point(polygon: np.ndarray) -> tuple[float, float]:
    """A point strictly inside a ribbon: the middle of its source end, moved a little towards the centre."""
    source_mid = polygon[4]  # the ribbon starts with 8 points along its true class's arc
    return float(source_mid[0] * 0.97), float(source_mid[1] * 0.97)


# -- geometry -----------------------------------------------------------------------------------------------
def test_chord_ribbons_are_the_off_diagonal_pairs_with_widths_proportional_to_their_share():
    matrix = np.array([[8, 2, 0], [0, 5, 5], [1, 0, 0]])
    fractions = confusion.row_fractions(matrix)
    shape = confusion.chord(fractions, [0, 1, 2])
    assert shape.pairs == [(0, 1), (1, 2), (2, 0)]
    assert len(shape.arcs) == 3  # every class keeps its arc, class 2 has no correct sample at all
    widths = []
    for polygon in shape.ribbons:
        a0, a1 = np.arctan2(polygon[0, 1], polygon[0, 0]), np.arctan2(polygon[7, 1], polygon[7, 0])
        widths.append(abs(np.angle(np.exp(1j * (a0 - a1)))))
    np.testing.assert_allclose(widths, [fractions[0, 1] * shape.scale, fractions[1, 2] * shape.scale,
                                        fractions[2, 0] * shape.scale])
    for pair, polygon in zip(shape.pairs, shape.ribbons):
        assert shape.pair_at(*inside_point(polygon)) == pair
    assert shape.pair_at(0.0, 1.4) is None  # outside the circle
    assert confusion.chord(np.zeros((3, 3)), [0, 1, 2]).ribbons == []  # no errors: arcs only


def test_bars_stack_correct_first_then_each_wrong_prediction():
    matrix = np.array([[8, 2, 0], [0, 5, 5], [1, 0, 0]])
    bars = confusion.stacked_bars(matrix, [0, 2])
    assert list(zip(bars.true, bars.predicted, bars.count)) == [(0, 0, 8), (0, 1, 2), (2, 0, 1)]
    np.testing.assert_array_equal(bars.y1 - bars.y0, bars.count)
    assert bars.pair_at(0.0, 9.0) == (0, 1) and bars.pair_at(1.0, 0.5) == (2, 0) and bars.pair_at(1.0, 3) is None
    wrong = confusion.stacked_bars(matrix, [0, 1, 2], correct=False)
    assert list(zip(wrong.true, wrong.predicted, wrong.count)) == [(0, 1, 2), (1, 2, 5), (2, 0, 1)]
    assert wrong.y0.tolist() == [0, 0, 0]


# -- the painter on a recorded run ---------------------------------------------------------------------------
def test_chord_and_bars_count_what_sklearn_counts_at_every_epoch(painter, state):
    run = state.run
    assert painter.kind == CHORD
    for i, epoch in enumerate(run.epochs):
        state.epoch = epoch
        expected = sk_matrix(run, i)
        np.testing.assert_array_equal(painter.matrix(), expected)
        totals = expected.sum(axis=1)
        _, ribbons, _ = painter.chord_data()
        off = {(t, p): expected[t, p] for t in range(10) for p in range(10) if t != p and expected[t, p]}
        names = run.class_names
        assert {(names.index(r["true"]), names.index(r["predicted"])): r["count"] for r in ribbons} == off
        for r in ribbons:
            assert r["share"] == pytest.approx(r["count"] / totals[names.index(r["true"])])
        bars = painter.bar_rects()
        per_class = np.bincount(bars.true, weights=bars.count, minlength=10)
        np.testing.assert_array_equal(per_class, totals)  # each bar sums to its class's probe samples
        np.testing.assert_array_equal(np.bincount(run.labels, minlength=10), totals)
        heat = painter.heatmap()
        np.testing.assert_array_equal(heat.count.reshape(10, 10), expected)


def test_a_click_on_a_ribbon_selects_exactly_that_pairs_samples(painter, state):
    run = state.run
    state.epoch = run.epochs[0]  # the untrained network: plenty of errors
    shape = painter.chord()
    assert shape.pairs
    before = state.selection_version
    for pair, polygon in list(zip(shape.pairs, shape.ribbons))[:5]:
        x, y = inside_point(polygon)
        assert painter.select_at(CHORD, x, y) == pair
        true, predicted = pair
        expected = run.samples[(run.labels == true) & (run.predictions[0] == predicted)]
        np.testing.assert_array_equal(np.sort(state.selection), np.sort(expected))
    assert state.selection_version > before
    # off every shape: the selection stays
    kept = state.selection.copy()
    assert painter.select_at(CHORD, 0.0, 1.45) is None
    np.testing.assert_array_equal(state.selection, kept)


def test_clicks_on_bar_segments_and_heatmap_cells_select_their_pairs(painter, state):
    run = state.run
    state.epoch = run.epochs[1]
    bars = painter.bar_rects()
    for k in range(len(bars.true)):
        x, y = (bars.x0[k] + bars.x1[k]) / 2, (bars.y0[k] + bars.y1[k]) / 2
        painter.select_at(BARS, x, y)
        mask = (run.labels == bars.true[k]) & (run.predictions[1] == bars.predicted[k])
        np.testing.assert_array_equal(np.sort(state.selection), np.sort(run.samples[mask]))
        assert len(state.selection) == bars.count[k]
    cells = painter.heatmap()
    k = int(np.argmax(np.where(cells.true != cells.predicted, cells.count, -1)))
    assert painter.select_at(HEATMAP, (cells.x0[k] + cells.x1[k]) / 2, cells.y0[k] + 0.5) == (
        cells.true[k], cells.predicted[k])
    assert len(state.selection) == cells.count[k]


def test_hidden_classes_leave_the_charts_but_bars_still_count_every_prediction(painter, state):
    run = state.run
    state.epoch = run.epochs[0]
    names = run.class_names
    state.classes = [names[1], names[3]]
    assert painter.visible() == [1, 3]
    assert all({t, p} <= {1, 3} for t, p in painter.chord().pairs)
    assert len(painter.chord().arcs) == 2
    bars = painter.bar_rects()
    assert set(bars.true) <= {1, 3}
    np.testing.assert_array_equal([bars.count[bars.true == c].sum() for c in (1, 3)],
                                  [(run.labels == c).sum() for c in (1, 3)])
    assert [label for _, label in painter.ticks()] == [names[1], names[3]]


def test_more_classes_than_the_shell_lists_as_buttons_draw_a_heatmap(painter, monkeypatch):
    from neuromapper.views import model_painter

    monkeypatch.setattr(model_painter, "MANY_CLASSES", 5)
    assert painter.kind == HEATMAP


def test_hostile_class_names_are_text_in_every_chart_and_escaped_in_the_summary(painter, state):
    run = state.run
    assert run.class_names[0] == "<b>zero</b>"
    state.epoch = run.epochs[0]
    arcs, ribbons, labels = painter.chord_data()
    assert arcs[0]["name"] == "<b>zero</b>" and "<b>zero</b>" in labels["text"]  # drawn as canvas text / tooltip field
    zero_errors = [(t, p) for t, p in painter.chord().pairs if t == 0]
    painter.select_pair(*zero_errors[0])
    summary = painter.summary_html()
    assert "<b>zero</b>" not in summary and html.escape("<b>zero</b>") in summary
    rendered = hv.render(plots.chord_diagram(arcs, ribbons, labels))
    hover_fields = [str(t.tooltips) for t in rendered.tools if hasattr(t, "tooltips")]
    assert hover_fields and not any("{safe}" in f for f in hover_fields)  # Bokeh escapes fields without {safe}


def test_the_summary_names_the_pair_only_while_its_selection_stands(painter, state):
    state.epoch = state.run.epochs[0]
    (t, p) = painter.chord().pairs[0]
    painter.select_pair(t, p)
    assert "Selected: true" in painter.summary_html()
    state.select(state.run.samples[:3])  # a selection made elsewhere
    assert "Selected: true" not in painter.summary_html()


# -- the Viewer ---------------------------------------------------------------------------------------------
def test_the_view_follows_the_player_and_a_tap_selects(state):
    view = ModelView(state)
    chord_pane, bars_pane = view._errors.objects
    ribbons = {}
    for epoch in (state.run.epochs[0], state.run.epochs[-1]):
        ticks = view._tick.counter
        state.epoch = epoch
        assert view._tick.counter == ticks + (epoch != state.run.epochs[0])  # a step refreshes the charts
        ribbons[epoch] = [(r["true"], r["predicted"], r["count"]) for r in chord_pane.object[()].Polygons.II.data]
        bars = bars_pane.object[()]
        assert list(bars.dimension_values("count")) == list(view.painter.bar_rects().count)
    assert ribbons[state.run.epochs[0]] != ribbons[state.run.epochs[-1]]
    # a Tap as Bokeh sends it: the stream's subscriber runs the path a browser click takes
    state.epoch = state.run.epochs[0]
    shape = view.painter.chord()
    x, y = inside_point(shape.ribbons[0])
    view.taps[CHORD].event(x=x, y=y)
    true, predicted = shape.pairs[0]
    assert len(state.selection) == view.painter.matrix()[true, predicted] > 0
    view.dispose()


# -- the focused sample: feature maps and kernels (schema 3) ---------------------------------------------
def test_tile_grids_place_tile_k_row_by_row_and_a_position_finds_it():
    from neuromapper.views.model_painter import tile, tile_at

    tiles = np.zeros((5, 2, 3, 4), dtype=np.uint8)
    tiles[..., 0] = np.arange(5)[:, None, None]
    grid = tile(tiles)  # 5 tiles: 2 rows of 3 columns, 1-pixel gaps
    assert grid.shape == (2 * 3 - 1, 3 * 4 - 1, 4)
    assert grid[0, 0, 0] == 0 and grid[0, 4, 0] == 1 and grid[3, 0, 0] == 3 and grid[3, 4, 0] == 4
    height = grid.shape[0]
    assert tile_at(5, 2, 3, 0.5, height - 0.5) == 0  # y up: the top row is tile 0
    assert tile_at(5, 2, 3, 4.5, 0.5) == 4
    assert tile_at(5, 2, 3, 8.5, 0.5) is None  # the sixth place of the grid holds no tile


def test_the_maps_are_the_recorded_maps_of_the_shown_sample(painter, state):
    from neuromapper import store

    run = state.run
    assert run.map_layers and len(run.spotlight)
    assert painter.shown_sample() == run.spotlight[0]  # nothing focused: the first spotlight sample
    state.focus(int(run.spotlight[3]))
    assert painter.shown_sample() == run.spotlight[3] and painter.focus_note_html() == ""
    epoch = run.epochs[-1]
    state.epoch = epoch
    for layer in run.map_layers:
        recorded = store.feature_maps(run.ds, layer).sel(epoch=epoch, spotlight=int(run.spotlight[3])).values
        np.testing.assert_array_equal(painter.maps(layer), recorded)
        channels, h, w = recorded.shape
        grid = painter.map_grid(layer)
        shared = grid.copy()
        painter.map_scale = "per channel"
        assert painter.map_grid(layer).shape == shared.shape
        painter.map_scale = "shared"
        # channel k's tile is where a click on it lands
        for k in (0, channels - 1):
            rows, cols = divmod(k, int(np.ceil(np.sqrt(channels))))
            x, y = cols * (w + 1) + w / 2, grid.shape[0] - (rows * (h + 1) + h / 2)
            assert painter.channel_at(layer, x, y) == k


def test_a_focused_sample_without_maps_is_said_and_the_first_spotlight_sample_shown(painter, state):
    run = state.run
    outside = int(np.setdiff1d(run.samples, run.spotlight)[0])
    state.focus(outside)
    assert painter.shown_sample() == run.spotlight[0]
    note = painter.focus_note_html()
    assert f"#{outside}" in note and "no recorded feature maps" in note
    # a click on a spotlight thumbnail focuses it
    images = run.images
    h, w = images.shape[1:3]
    grid = painter.spotlight_grid()
    painter.focus_at(1 * (w + 1) + w / 2, grid.shape[0] - h / 2)  # the second thumbnail of the top row
    assert state.focused == run.spotlight[1] and painter.focus_note_html() == ""


def test_the_kernels_of_a_clicked_channel_are_the_layers_weights_at_this_epoch(painter, state):
    from neuromapper.views.model_painter import _diverging, colorize, tile

    run = state.run
    layer = run.weight_layers[-1]
    assert painter.kernels()[0] is None  # nothing clicked yet
    channels, h, w = painter.maps(layer).shape
    grid = painter.map_grid(layer)
    assert painter.pick_channel(layer, 0.5, grid.shape[0] - 0.5) == 0
    for epoch in run.epochs:
        state.epoch = epoch
        picture, words = painter.kernels()
        weights = run.weights(layer, epoch)[0].astype(np.float64)
        expected = tile(colorize((weights / run.weight_range(layer) + 1) / 2, _diverging()))
        np.testing.assert_array_equal(picture, expected)
        assert f"feeding {layer} channel 0 at epoch {epoch}" in words
    painter.channel = ("fc1", 0)  # a layer whose weights are not recorded: said, not drawn
    picture, words = painter.kernels()
    assert picture is None and "are not recorded" in words


def test_a_run_without_feature_maps_says_what_it_lacks(tmp_path, digits):
    import torch

    from neuromapper import Recorder
    from tests.conftest import make_mlp

    path = tmp_path / "mlp"
    with Recorder(make_mlp(), layers=["2", "4"], probe=(digits.x[:100], digits.y[:100]),
                  class_names=digits.class_names, path=path) as rec:
        with torch.no_grad():
            rec.capture(0)
    state = session(path)
    try:
        view = ModelView(state)
        assert view.painter.shown_sample() is None
        text = view.painter.lacks_html()
        assert "feature maps" in text and "no recorded layer outputs a feature map" in html.unescape(text)
        view.__panel__()  # builds without a sample part
    finally:
        state.dispose()
