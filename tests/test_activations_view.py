"""The Activations page driven through the shared state with no browser (painter and Viewer)."""

from __future__ import annotations

import html

import numpy as np
import pytest

from neuromapper import distributions
from neuromapper.store import layer_activations, open_run
from neuromapper.views.activations import ActivationsView
from neuromapper.views.activations_painter import (
    MISCLASSIFIED,
    NOTHING,
    SELECTION,
    UNIT_INDEX,
    ActivationsPainter,
    class_item,
    sample_item,
    twin_item,
)
from neuromapper.views.state import SessionState


@pytest.fixture
def state(twin_run):
    state = SessionState(twin_run)
    yield state
    state.dispose()


@pytest.fixture
def painter(state):
    painter = ActivationsPainter(state)
    yield painter
    painter.dispose()


distributions_densities, distributions_medians = distributions.densities, distributions.medians


def _acts(run_path, layer, epoch):
    return np.asarray(layer_activations(open_run(run_path), layer).sel(epoch=epoch).values)


def test_the_defaults_show_a_fooled_pair_with_its_true_and_attacked_classes(painter, state):
    run = state.run
    twins = run.twins
    assert set(twins["method"]) == {"fgsm", "pgd", "one-pixel", "instance"}
    (pair,) = painter.pairs
    i = list(twins.index).index(pair)
    last = run.epochs[-1]
    fooled = run.twin_values("twin_fooled", last)
    if (fooled == 1).any():
        assert fooled[i] == 1
    predicted = int(run.twin_values("twin_prediction", last)[i])
    true = int(twins.at[pair, "label"])
    assert painter.groups == list(dict.fromkeys([class_item(true), class_item(predicted)]))
    assert painter.layers == ["conv1", "conv2", "fc1", "fc2"]


def test_each_group_bar_is_that_groups_histogram(painter, state, twin_run):
    painter.groups = [class_item(3)]
    state.epoch = 2
    rgba, axis, rows = painter.picture("fc1")
    acts = _acts(twin_run, "fc1", 2)
    members = acts[state.run.labels == 3]
    assert rgba.shape == (acts.shape[1], axis.bins, 4)
    for row, unit in enumerate(rows[:5]):
        counts, _ = np.histogram(np.clip(members[:, unit], axis.lo, axis.hi), bins=axis.bins, range=(axis.lo, axis.hi))
        expected = np.round(255 * counts / counts.max())
        np.testing.assert_allclose(rgba[row, :, 3], expected, atol=1)


def test_sort_orders_follow_each_option(painter, state, twin_run):
    state.epoch = 2
    acts = _acts(twin_run, "fc1", 2)
    labels = state.run.labels
    painter.sort_by = UNIT_INDEX
    np.testing.assert_array_equal(painter.rows("fc1"), np.arange(acts.shape[1]))
    painter.sort_by = class_item(4)
    median4 = np.median(acts[labels == 4], axis=0)
    assert np.all(np.diff(median4[painter.rows("fc1")]) <= 0)
    painter.sort_minus = class_item(5)
    difference = median4 - np.median(acts[labels == 5], axis=0)
    assert np.all(np.diff(difference[painter.rows("fc1")]) <= 0)
    twin = painter.pairs[0]
    sample = int(state.run.twins.at[twin, "source"])
    painter.sort_by, painter.sort_minus = sample_item(sample), NOTHING
    row = int(np.flatnonzero(state.run.samples == sample)[0])
    assert np.all(np.diff(acts[row][painter.rows("fc1")]) <= 0)
    painter.sort_by = twin_item(twin)
    twin_acts = state.run.twin_activations("fc1", 2)[list(state.run.twins.index).index(twin)]
    assert np.all(np.diff(twin_acts[painter.rows("fc1")]) <= 0)


def test_a_click_hides_a_unit_and_a_click_on_it_shows_it_again(painter, state):
    painter.sort_by = UNIT_INDEX
    n = len(painter.rows("conv2"))
    top_y = n - 1  # row 0 is drawn at the top
    assert painter.unit_at("conv2", top_y) == 0
    painter.toggle_unit("conv2", painter.unit_at("conv2", top_y - 3))
    assert painter.hidden == {"conv2": (3,)}
    shown, hidden = painter.order("conv2")
    assert 3 not in shown and list(hidden) == [3] and painter.rows("conv2")[-1] == 3  # greyed at the bottom
    rgba, _, _ = painter.picture("conv2")
    assert (rgba[-1, :, 3] <= 0.35 * 255 + 1).all()
    assert painter.unit_at("conv2", 0) == 3  # the bottom row is the hidden unit: clicking it shows it
    painter.toggle_unit("conv2", 3)
    assert painter.hidden == {}
    painter.toggle_unit("conv2", 1)
    painter.show_all()
    assert painter.hidden == {} and painter.unit_at("conv2", -5) is None


def test_an_epoch_step_changes_the_bars_and_a_selection_becomes_a_group(painter, state):
    before = painter.picture("fc2")[0].copy()
    state.epoch = 2
    assert not np.array_equal(before, painter.picture("fc2")[0])
    ids = state.run.samples[:40]
    state.select(ids)
    assert SELECTION in painter.groups
    assert painter.members(SELECTION).sum() == 40
    assert np.array_equal(painter.members(MISCLASSIFIED), state.run.predictions[2] != state.run.labels)


def _fresh_picture(state, painter, layer):
    """The picture a new painter with the same options draws (nothing cached)."""
    other = ActivationsPainter(state)
    try:
        other.param.update(layers=painter.layers, groups=painter.groups, pairs=painter.pairs, sort_by=painter.sort_by,
                           sort_minus=painter.sort_minus, hidden=painter.hidden)
        return other.picture(layer)[0]
    finally:
        other.dispose()


def test_cached_bars_equal_freshly_counted_ones_after_steps_sorts_hides_and_new_selections(painter, state):
    painter.groups = [class_item(1), class_item(2), SELECTION, MISCLASSIFIED]
    for epoch, sort_by, ids in [(1, class_item(1), slice(0, 30)), (2, class_item(2), slice(0, 30)),
                                (1, class_item(1), slice(10, 70)), (2, MISCLASSIFIED, slice(10, 70))]:
        state.epoch = epoch
        painter.picture("fc1")  # fills the cache for this epoch and selection
        state.select(state.run.samples[ids])
        painter.sort_by = sort_by
        painter.toggle_unit("fc1", 2)
        np.testing.assert_array_equal(painter.picture("fc1")[0], _fresh_picture(state, painter, "fc1"))


def test_a_prefetched_epoch_is_drawn_without_counting_again(painter, state, monkeypatch):
    painter.groups = [class_item(0), MISCLASSIFIED]
    painter.sort_by = class_item(0)
    state.epoch = 1
    painter.prefetch(2)
    painter._prefetcher.submit(lambda: None).result(timeout=60)  # the queue is in order: the prefetch is done
    counted = []
    monkeypatch.setattr(distributions, "densities", lambda *a, **k: counted.append(a) or distributions_densities(*a))
    monkeypatch.setattr(distributions, "medians", lambda *a: counted.append(a) or distributions_medians(*a))
    state.epoch = 2
    for layer in painter.layers:
        painter.picture(layer)
    assert counted == []
    monkeypatch.undo()
    np.testing.assert_array_equal(painter.picture("fc2")[0], _fresh_picture(state, painter, "fc2"))


def test_statistics_computed_while_the_selection_changed_are_not_kept(painter, state):
    calls = []

    def compute():
        calls.append(1)
        state.select(state.run.samples[:5 + len(calls)])  # the selection moves while this runs
        return np.zeros(3)

    painter._cached(("test",), compute, selection=True)
    painter._cached(("test",), compute, selection=True)
    assert len(calls) == 2
    painter._cached(("plain",), lambda: np.zeros(2))
    state.select(state.run.samples[:3])
    painter._cached(("plain",), lambda: calls.append(1) or np.zeros(2))  # not selection-bound: still cached
    assert len(calls) == 2


def test_the_statistics_cache_is_bounded_in_bytes_and_keeps_the_latest(painter, monkeypatch):
    from neuromapper.views import activations_painter

    monkeypatch.setattr(activations_painter, "STATS_BYTES", 10_000)
    for i in range(10):
        painter._cached(("test", i), lambda: np.zeros(500))  # 4,000 bytes each
    assert painter._stats_bytes <= 10_000
    assert [key[1] for key in painter._stats] == [8, 9]  # the two most recent fit
    profiles = painter.profiles("fc1")  # a ClassProfiles counts its arrays
    assert painter._stats_bytes == profiles.center.nbytes + profiles.spread.nbytes
    painter.clear_statistics()
    assert painter._stats_bytes == 0 and not painter._stats


def test_a_statistic_asked_for_by_two_threads_at_once_is_computed_once(painter):
    import threading

    started, release, calls = threading.Event(), threading.Event(), []

    def compute():
        calls.append(1)
        started.set()
        release.wait(30)
        return np.arange(3.0)

    results = []
    first = threading.Thread(target=lambda: results.append(painter._cached(("both",), compute)))
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=lambda: results.append(painter._cached(("both",), compute)))
    second.start()
    second.join(0.2)
    assert second.is_alive()  # waiting for the first thread's value, not computing it again
    release.set()
    first.join(30)
    second.join(30)
    assert len(calls) == 1 and len(results) == 2 and results[0] is results[1]


def test_dots_show_both_members_of_a_pair_and_the_focused_sample(painter, state):
    twin = painter.pairs[0]
    source = int(state.run.twins.at[twin, "source"])
    rows = painter.rows("fc1")
    dots = painter.dots("fc1", rows, painter.axis("fc1"))
    assert dots["what"].count(f"benign #{source}") == len(rows)
    assert dots["what"].count(painter.twin_label(twin)) == len(rows)
    other = int(state.run.samples[5])
    state.focus(other)
    dots = painter.dots("fc1", rows, painter.axis("fc1"))
    assert dots["what"].count(f"focused #{other}") == len(rows)
    axis = painter.axis("fc1")
    assert min(dots["x"]) >= axis.lo and max(dots["x"]) <= axis.hi


def test_each_shown_pair_has_its_own_marker_shared_by_its_benign_and_attacked_dots(painter, state):
    twins = state.run.twins
    attacked = [t for t in twins.index if twins.at[t, "source"] >= 0]
    sources = {int(twins.at[t, "source"]) for t in attacked}
    pairs = [next(t for t in attacked if int(twins.at[t, "source"]) == s) for s in sorted(sources)[:3]]
    assert len(pairs) == 3
    painter.pairs = pairs
    rows = painter.rows("fc1")
    dots = painter.dots("fc1", rows, painter.axis("fc1"))
    marker_of = {}
    for what, marker in zip(dots["what"], dots["marker"]):
        assert marker_of.setdefault(what, marker) == marker
    markers = []
    for t in pairs:
        twin, benign = painter.twin_label(t), f"benign #{int(twins.at[t, 'source'])}"
        assert marker_of[twin] == marker_of[benign] == painter.pair_marker(t)[0]
        markers.append(marker_of[twin])
    assert len(set(markers)) == 3
    cards = painter.pair_cards_html()
    assert [cards.index(painter.pair_marker(t)[1]) for t in pairs] == sorted(cards.index(painter.pair_marker(t)[1]) for t in pairs)


def test_divergence_scores_twins_against_their_predicted_class(painter, state, twin_run):
    state.epoch = 2
    layer = painter.score_layer
    acts = _acts(twin_run, layer, 2)
    profiles = distributions.class_profiles(acts, state.run.labels, 10)
    twins = state.run.twins
    predicted = state.run.twin_values("twin_prediction", 2)
    scores = painter.twin_scores(layer)
    i = 0
    expected = distributions.divergence(state.run.twin_activations(layer, 2)[[i]], [int(predicted[i])], profiles)
    assert scores[i] == pytest.approx(expected[0])
    ranking = painter.ranking(n=8)
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)
    n, higher, twin_median, benign_median = painter.twin_vs_benign(layer)
    assert n == int((twins["source"] >= 0).sum()) - int(np.isnan(scores[(twins["source"] >= 0).to_numpy()]).sum())
    assert 0 <= higher <= n and np.isfinite(twin_median)


def test_user_text_is_escaped_in_labels_cards_and_legend(painter, state):
    painter.groups = [class_item(0)]
    painter.pairs = [t for t in state.run.twins.index if state.run.twins.at[t, "method"] == "instance"]
    cards, legend = painter.pair_cards_html(), painter.legend_html()
    assert "<b>zero</b>" not in legend and html.escape("class <b>zero</b>") in legend
    assert "<i>own</i>" not in cards and html.escape("instance my <i>own</i>") in cards


def test_the_view_pushes_new_pictures_when_the_state_moves(state):
    view = ActivationsView(state)
    try:
        view.__panel__()
        assert [panel.name for panel in view._main.objects] == view.painter.layers
        view.painter.layers = ["fc1"]
        assert [panel.name for panel in view._main.objects] == ["fc1"]
        frame = view._ranking_frame()
        assert list(frame["divergence"]) == sorted(frame["divergence"], reverse=True)
        row = int(np.flatnonzero(frame["twin"].isna())[0])
        view._focus_row(frame, row)
        assert state.focused == int(frame.iloc[row]["id"])
    finally:
        view.dispose()


def test_the_pages_text_follows_the_epoch_only_while_the_page_is_shown(state):
    view = ActivationsView(state)
    try:
        page = view.__panel__()
        cards = page.select(lambda obj: "nm-pair-cards" in getattr(obj, "css_classes", []))[0]
        drawn = []
        cards.param.watch(lambda event: drawn.append(state.epoch), "object", onlychanged=False)
        view.shown = False
        state.epoch, state.epoch = 1, 2
        assert drawn == []  # hidden: nothing drawn
        view.shown = True
        assert drawn == [2] and cards.object == view.painter.pair_cards_html()  # drawn once, for the epoch now
        state.epoch = 1
        assert drawn == [2, 1] and cards.object == view.painter.pair_cards_html()
    finally:
        view.dispose()


def test_the_prefetch_follows_the_players_direction_and_turns_at_the_ends(state, monkeypatch):
    view = ActivationsView(state)
    try:
        view.__panel__()
        view._sources = {("fc1", "image"): {}}  # as if drawn: the view pushes (and prefetches) on a step
        asked = []
        monkeypatch.setattr(view.painter, "prefetch", asked.append)
        epochs = list(state.param.epoch.objects)
        assert len(epochs) == 3
        for epoch in (epochs[1], epochs[2], epochs[1], epochs[0], epochs[2]):
            state.epoch = epoch
        # forward, at the end (turns), backward, at the start (turns), forward to the end (turns)
        assert asked == [epochs[2], epochs[1], epochs[0], epochs[1], epochs[1]]
    finally:
        view.dispose()


def test_a_push_sends_only_the_columns_that_changed():
    from bokeh.document import Document
    from bokeh.document.events import ColumnDataChangedEvent
    from bokeh.models import ColumnDataSource

    from neuromapper import plots

    source = ColumnDataSource({"x": np.zeros(3), "what": ["a", "b", "c"], "image": [np.zeros((2, 2))]*3})
    doc = Document()
    doc.add_root(source)
    events = []
    doc.on_change(lambda event: events.append(event))
    plots.push_columns(source, {"x": np.arange(3.0), "what": ["a", "b", "c"], "image": [np.zeros((2, 2))]*3})
    assert [(type(e), sorted(e.cols)) for e in events] == [(ColumnDataChangedEvent, ["x"])]
    plots.push_columns(source, {"x": np.arange(3.0), "what": ["a", "b", "c"], "image": [np.zeros((2, 2))]*3})
    assert len(events) == 1  # nothing changed, nothing sent
    plots.push_columns(source, {"x": np.arange(3.0), "what": ["a", "b", "d"], "image": [np.ones((2, 2))]*3})
    assert sorted(events[-1].cols) == ["image", "what"]
    plots.push_columns(source, {"x": np.arange(4.0), "what": list("abcd"), "image": [np.ones((2, 2))]*4})
    assert events[-1].cols is None and len(source.data["x"]) == 4  # a new length: the data replaced whole
    np.testing.assert_array_equal(source.data["x"], np.arange(4.0))


def test_attack_arrows_start_at_the_benign_point_and_are_drawn_into_the_embedding(twin_run):
    from neuromapper.reduce import reduce
    from neuromapper.views.embedding_painter import EmbeddingPainter

    embedding = reduce(twin_run, method="pca", progress=None)
    state = SessionState(twin_run, embedding=embedding)
    painter = EmbeddingPainter(state)
    try:
        scene = state.scene
        state.epoch = scene.epochs[-1]
        e = scene.epochs.index(state.epoch)
        start, end, fooled = painter.twin_arrows("fc2", e)
        table = state.run.twins
        sources = table["source"][table["source"] >= 0].to_numpy()
        assert len(start) == len(sources) == len(fooled)
        embedded = {int(s): i for i, s in enumerate(scene.samples)}
        for k in range(3):
            i = embedded[int(sources[k])]  # the benign image is embedded: its arrow starts on its own point
            np.testing.assert_allclose(start[k], [scene.xs["fc2"][e, i], scene.ys["fc2"][e, i]])
        assert np.isfinite(end).all()
        np.testing.assert_array_equal(fooled, state.run.twin_values("twin_fooled", state.epoch)[table["source"] >= 0] == 1)
        painter.attack_arrows = "all"
        with_arrows = painter.layer_image("fc2")[1].copy()
        painter.attack_arrows = "off"
        without = painter.layer_image("fc2")[1]
        assert (with_arrows != without).any(axis=-1).sum() > 20
        painter.attack_arrows = "all"
        assert "attacked twins fooled" in painter.legend_html()
    finally:
        painter.dispose()
        state.dispose()


def test_the_embeddings_legend_mentions_the_arrows_only_while_they_are_drawn(twin_run):
    from neuromapper.reduce import reduce
    from neuromapper.views.embedding import EmbeddingView

    state = SessionState(twin_run, embedding=reduce(twin_run, method="pca", progress=None))
    view = EmbeddingView(state)
    try:
        view.shown = True
        legend = view.__panel__()[0][0]
        for arrows, mentioned in (("all", True), ("off", False), ("fooled", True)):
            view.painter.attack_arrows = arrows
            assert ("attacked twins fooled" in legend.object) is mentioned, arrows
    finally:
        view.dispose()
        state.dispose()


def test_a_page_is_built_when_first_shown_and_sees_what_was_chosen_before(twin_run):
    """The shell builds a page's view on its first showing; a selection made earlier is in its groups."""
    from neuromapper.views.shell import PAGES, App

    app = App(twin_run)
    try:
        assert list(app.views) == ["Embeddings"]
        app.state.select(app.state.run.samples[:7])
        app._tabs.active = list(PAGES).index("Activations")
        view = app.views["Activations"]
        assert view.shown and not app.views["Embeddings"].shown
        assert SELECTION in view.painter.groups
        app._tabs.active = 0
        assert not view.shown and app.views["Embeddings"].shown and list(app.views) == ["Embeddings", "Activations"]
    finally:
        app.dispose()


def test_the_twin_table_outlives_the_activation_cache(state):
    """Player steps fill the per-run LRU of activations; the twin table is read once and kept."""
    from neuromapper.views.run import ACTIVATION_CACHE

    run = state.run
    table, sources = run.twins, run.twin_sources
    for epoch in run.epochs:
        for layer in run.layers:
            run.activations(layer, epoch)
            run.twin_activations(layer, epoch)
    assert 2 * len(run.epochs) * len(run.layers) > ACTIVATION_CACHE  # more than the LRU holds: the churn happened
    assert run.twins is table and run.twin_sources is sources
    assert sources.tolist() == table["source"].tolist() and (sources >= 0).any() and not sources.flags.writeable
