"""The view stage from Python, no browser: the shared state drives the Embeddings page's pictures."""

from __future__ import annotations

import shutil
import threading
import time

import numpy as np
import pytest
import xarray as xr

from neuromapper import reduce
from neuromapper.reduce_params import ReduceParams
from neuromapper.views.embedding_painter import EmbeddingPainter
from neuromapper.views.jobs import Listener, ReduceJobs, RunWatcher
from neuromapper.views.state import SessionState


@pytest.fixture
def state(embedded):
    state = SessionState(embedded)
    yield state
    state.dispose()


@pytest.fixture
def painter(state):
    painter = EmbeddingPainter(state)
    yield painter
    painter.dispose()


def test_state_opens_the_stored_embedding_of_the_default_parameters(state, painter):
    assert state.reduce_params == ReduceParams() and state.scene is not None
    assert painter.layers == ["conv1", "conv2", "fc1", "fc2"]
    assert state.epoch == 0 and state.param.epoch.objects == [0, 1, 2, 3]
    assert state.status.startswith("cached") and state.progress is None and state.live == ""
    frame, rgba = painter.layer_image("fc2")
    assert rgba.shape == (360, 360, 4) and (rgba[..., 3] > 0).sum() > 300


def test_the_newest_embedding_is_not_shown_unless_it_is_this_sessions(embedded):
    reduce(embedded, method="pca")  # stored after the default one: newer, but not what a new session asked for
    state = SessionState(embedded)
    try:
        assert state.embedding.attrs["method"] == "anchored-umap"
    finally:
        state.dispose()


def test_every_state_change_redraws(state, painter):
    base = painter.layer_image("fc1")[1].copy()
    state.epoch = 3
    stepped = painter.layer_image("fc1")[1].copy()
    assert not np.array_equal(base, stepped)
    painter.color_by = "correct / incorrect"
    assert not np.array_equal(stepped, painter.layer_image("fc1")[1])
    painter.color_by = "per-sample loss"
    assert "nm-colorbar" in painter.legend_html()  # a continuous colour gets a scale
    painter.color_by = "true class"
    state.classes = [c for c in state.run.class_names if c != "4"]
    hidden = int((state.scene.labels == 4).sum())
    assert f"{300 - hidden} of 300 samples drawn" in painter.legend_html()
    painter.show = "misclassified"
    wrong = int((~state.scene.correct[3] & (state.scene.labels != 4)).sum())
    assert f"{wrong} of 300 samples drawn" in painter.legend_html()


def test_flipped_filters_without_overriding_the_colours_and_says_why_it_is_empty_at_first(state, painter):
    painter.show = "flipped"
    state.epoch = 0
    assert "nothing can have flipped" in painter.legend_html()
    state.epoch = 2
    legend = painter.legend_html()
    assert "learned" not in legend and "nothing can have flipped" not in legend  # colours: true class still
    painter.color_by = "learned / forgotten"
    flips = state.scene.flips(2)
    assert f"learned <span style='color:#777'>({int((flips > 0).sum())})" in painter.legend_html()


def test_the_next_epoch_is_rendered_ahead_and_drawn_as_a_fresh_render_would(state, painter):
    def fresh(layer):
        view = painter.view_state()
        frame = state.scene.default_frame(layer, 360, 360)
        coloring = state.scene.coloring(view, painter.selected_mask())
        return state.scene.render_layers({layer: frame}, view.epoch_index, coloring)[layer]

    painter.images()
    state.epoch = 1
    painter.images()
    painter.render_ahead()  # a step forward: epoch 2 is rendered in the background
    assert painter.ahead_epoch_index() == 2
    _, ready = painter._ahead[1].result()
    state.epoch = 2
    assert painter.images()["fc2"][1] is ready["fc2"][1]  # the step used the ready pictures
    painter.render_ahead()
    assert painter.ahead_epoch_index() == 3
    assert all(np.array_equal(painter.layer_image(layer)[1], fresh(layer)) for layer in painter.layers)
    painter.color_by = "predicted class"  # pictures rendered ahead in the old colours must not be shown
    state.epoch = 3
    assert np.array_equal(painter.layer_image("fc2")[1], fresh("fc2"))
    painter.render_ahead()
    assert painter.ahead_epoch_index() == 0  # the player loops: after the last epoch comes the first
    state.epoch = 2  # a step back turns the direction
    painter.render_ahead()
    assert painter.ahead_epoch_index() == 1
    painter.loop_policy = "once"
    state.epoch = 3
    painter.render_ahead()
    assert painter.ahead_epoch_index() is None


def test_box_selection_is_shared_by_layers_epochs_and_other_views(state, painter):
    other = EmbeddingPainter(state)  # a second view over the same state sees the same selection
    scene = state.scene
    x, y = scene.xs["fc2"][0], scene.ys["fc2"][0]
    bounds = (np.percentile(x, 10), np.percentile(y, 10), np.percentile(x, 60), np.percentile(y, 60))
    ids = painter.select_box("fc2", bounds)
    inside = (x >= bounds[0]) & (x <= bounds[2]) & (y >= bounds[1]) & (y <= bounds[3])
    assert set(ids) == set(scene.samples[inside]) and 0 < len(ids) < 300
    assert set(other.selected()["sample"]) == set(ids)
    table = painter.selected()
    assert {"label", "prediction", "correct", "loss", "conv1_x", "fc2_y"} <= set(table.columns)
    state.epoch = 2
    assert set(painter.selected()["sample"]) == set(ids)  # a selection is of samples, not positions
    grey = painter.layer_image("conv1")[1]
    assert f"{len(ids)} selected" in painter.legend_html()
    state.clear_selection()
    assert state.selection is None and not np.array_equal(grey, painter.layer_image("conv1")[1])
    other.dispose()


def test_lasso_selection(state, painter):
    scene = state.scene
    x, y = scene.xs["fc1"][0], scene.ys["fc1"][0]
    cx, cy, r = np.median(x), np.median(y), (x.max() - x.min()) / 3
    ids = painter.select_lasso("fc1", [(cx - r, cy - r), (cx + r, cy - r), (cx, cy + r)])
    assert ids is not None and 0 < len(ids) < 300


def test_hover_focuses_the_nearest_sample_and_rings_it_in_every_layer(state, painter):
    scene, target = state.scene, 17
    painter.hover_at("conv2", float(scene.xs["conv2"][0, target]), float(scene.ys["conv2"][0, target]))
    assert state.focused == int(scene.samples[target])
    card = painter.card_html()
    assert f"sample {state.focused}" in card and f"true: <b>{scene.class_names[scene.labels[target]]}</b>" in card
    assert painter.card_thumbnail()[:4] == b"\x89PNG"
    for layer in painter.layers:
        assert painter.ring(layer) == {"x": [float(scene.xs[layer][0, target])], "y": [float(scene.ys[layer][0, target])]}
    painter.hover_at("conv2", None, None)  # the pointer left the plot
    assert state.focused is None and painter.ring("fc1") == {"x": [], "y": []}
    assert "hover over a point" in painter.card_html()


def test_trajectories_are_drawn_into_the_picture_fading_with_age(state, painter):
    state.epoch = 3
    plain = painter.layer_image("fc2")[1].copy()
    painter.trajectories = "class centroids"
    with_centroids = painter.layer_image("fc2")[1]
    assert not np.array_equal(plain, with_centroids)
    painter.trajectories = "selection"
    assert np.array_equal(plain, painter.layer_image("fc2")[1])  # nothing selected: nothing drawn
    state.select(state.scene.samples[:5])
    assert painter.path_members(painter.view_state()).tolist() == [0, 1, 2, 3, 4]
    # the newest step is drawn opaque in the sample's class colour, older steps fainter
    scene = state.scene
    paths = scene.sample_paths("fc2", 3, np.arange(5))
    assert paths.shape == (4, 5, 2) and np.allclose(paths[-1, :, 0], scene.xs["fc2"][3, :5])


def test_unplaced_points_are_counted_and_never_crash(embedded):
    from neuromapper import store

    da = store.load_embedding(embedded, ReduceParams().key(["conv1", "conv2", "fc1", "fc2"])).copy()
    da[2, 1, :7] = np.nan
    unplaced = da["unplaced"].values.copy()
    unplaced[2, 1] = 7
    da = da.assign_coords(unplaced=(("epoch", "layer"), unplaced))
    del da.attrs["key"]  # no longer the stored embedding of that key (sessions share scenes by key)
    state = SessionState(embedded, embedding=da)
    assert state.progress is None and state._job_token is None  # a given embedding starts no reduction
    painter = EmbeddingPainter(state)
    state.epoch = 2
    assert "7 unplaced" in painter.quality_html("conv2")
    state.epoch = 1
    assert "0 unplaced" in painter.quality_html("conv2")
    assert painter.layer_image("conv2")[1].shape == (360, 360, 4)
    painter.dispose()
    state.dispose()


def test_embedding_from_another_run_is_refused(embedded):
    da = xr.DataArray(np.zeros((2, 1, 3, 2), np.float32), dims=("epoch", "layer", "sample", "xy"),
                      coords={"epoch": [0, 1], "layer": ["fc1"], "sample": [9000, 9001, 9002], "xy": ["x", "y"]},
                      attrs={"params": ReduceParams().to_json()})
    with pytest.raises(ValueError, match="embedding: its samples are not all in this run"):
        SessionState(embedded, embedding=da)


def test_other_parameters_compute_in_the_background_then_hit_the_cache(state):
    seen, status_when_shown = [], []
    state.param.watch(lambda event: seen.append(event.new), "progress")
    # the plots replace the "computing..." alert: its status is final before they do (views/state.py)
    state.param.watch(lambda event: status_when_shown.append(state.status), "scene")
    state.reduce_params = ReduceParams(per_class=25)
    deadline = time.monotonic() + 120
    while len(state.scene) != 250 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(state.scene) == 250 and seen[0] == -1 and 100 in seen and state.progress is None
    assert state.status == "computed and cached" and status_when_shown == ["computed and cached"]
    state.reduce_params = ReduceParams(min_dist=0.1 + 0.05 * 0)  # canonical: the stored default
    assert len(state.scene) == 300 and state.status.startswith("cached")


def test_a_job_is_shared_by_sessions_and_cancelled_when_the_last_one_leaves(embedded, monkeypatch):
    from neuromapper import reduce as reduction

    started, calls = threading.Event(), []
    real = reduction.reduce

    def slow_reduce(*args, cancel=None, **kwargs):
        calls.append(kwargs)
        started.set()
        while not cancel.is_set():
            time.sleep(0.01)
        raise reduction.ReductionCancelled("cancelled")

    monkeypatch.setattr(reduction, "reduce", slow_reduce)
    jobs = ReduceJobs()
    params = ReduceParams(n_neighbors=7)
    quiet = Listener(progress=lambda *a: None, done=lambda r: None, failed=lambda m: None)
    first, second = jobs.join(embedded, params, quiet), jobs.join(embedded, params, quiet)
    assert started.wait(10)
    job = jobs.running()[0]
    assert len(calls) == 1 and len(job.listeners) == 2  # two sessions, one reduction
    jobs.leave(first)
    assert not job.cancel.is_set()
    jobs.leave(second)  # the last one leaves: cancelled, and the thread is gone within 5 s
    job.thread.join(5)
    assert job.cancel.is_set() and not job.thread.is_alive()
    monkeypatch.setattr(reduction, "reduce", real)


def test_the_watcher_tells_sessions_when_a_run_grows(small_run, tmp_path):
    run = shutil.copytree(small_run, tmp_path / "growing", ignore=shutil.ignore_patterns("embeddings"))
    last = run / "epochs" / "epoch-000003.nc"
    held = tmp_path / "held.nc"
    shutil.move(last, held)
    watcher, heard = RunWatcher(interval=0.05), []
    token = watcher.watch(run, heard.append)
    shutil.move(held, last)
    deadline = time.monotonic() + 5
    while not heard and time.monotonic() < deadline:
        time.sleep(0.02)
    assert heard == [[0, 1, 2, 3]] and watcher.growing(run)
    watcher.unwatch(token)


def test_a_failed_reduce_is_shown_where_the_plots_would_be(small_run, tmp_path, monkeypatch):
    from neuromapper import reduce as reduction
    from neuromapper.views.embedding import EmbeddingView

    def failing(*args, **kwargs):
        raise ValueError("n_neighbors: expected fewer than the 3 samples")

    monkeypatch.setattr(reduction, "reduce", failing)
    run = shutil.copytree(small_run, tmp_path / "bare", ignore=shutil.ignore_patterns("embeddings"))
    state = SessionState(run)
    view = EmbeddingView(state)
    deadline = time.monotonic() + 60
    while not state.error and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state.error.startswith("reduce failed: ValueError: n_neighbors") and state.progress is None
    alert = view._main.objects[0][0]
    assert alert.alert_type == "danger" and "No embedding can be shown" in alert.object
    view.dispose()
    state.dispose()


def test_the_watcher_looks_afresh_at_a_run_nobody_watched_meanwhile(small_run, tmp_path):
    run = shutil.copytree(small_run, tmp_path / "again", ignore=shutil.ignore_patterns("embeddings"))
    last = run / "epochs" / "epoch-000003.nc"
    watcher, heard = RunWatcher(interval=0.05), []
    watcher.unwatch(watcher.watch(run, heard.append))  # seen with epochs 0-3, then nobody watches
    held = shutil.move(last, tmp_path / "held.nc")  # epoch 3 deleted (say, a corrupt file), then recorded again
    token = watcher.watch(run, heard.append)
    shutil.move(held, last)
    deadline = time.monotonic() + 5
    while not heard and time.monotonic() < deadline:
        time.sleep(0.02)
    assert heard == [[0, 1, 2, 3]]
    watcher.unwatch(token)


def test_pictures_are_rasterized_square_at_the_plot_frame_size(state, painter):
    # the plot reports its size with the toolbar in its height; the data frame is square and as wide
    # as the smaller side, so the raster is that square (a taller raster squeezed in draws dashes)
    painter.set_size("fc1", 300, 331)
    frame, rgba = painter.layer_image("fc1")
    assert (frame.width, frame.height) == (300, 300) and rgba.shape == (300, 300, 4)


def test_a_hidden_page_defers_its_drawing_until_shown(state):
    """A player step reaches every page; a hidden one notes the call and makes it once, when shown."""
    from neuromapper.views.page import Page

    class Counting(Page):
        def __init__(self, state, **params):
            super().__init__(**params)
            self.calls = 0
            state.param.watch(self.when_shown(self.draw), ["epoch"])

        def draw(self, *_):
            self.calls += 1

    page = Counting(state)
    state.epoch = state.param.epoch.objects[1]
    assert page.calls == 1  # shown by default (a page on its own is on screen)
    page.shown = False
    for epoch in state.param.epoch.objects[:3]:
        state.epoch = epoch
    assert page.calls == 1
    page.shown = True
    assert page.calls == 2  # the three deferred steps drawn once
    page.shown = True
    assert page.calls == 2
