"""The dashboard viewer from Python (no browser): state, selection, hover, reduce controls."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import xarray as xr

from neuromapper import reduce
from neuromapper.app import NeuroMapper


@pytest.fixture(scope="module")
def embedded(small_run):
    reduce(small_run)
    return small_run


@pytest.fixture
def viewer(embedded):
    return NeuroMapper(embedded)


def test_viewer_opens_the_stored_embedding(viewer):
    assert viewer.layers == ["conv1", "conv2", "fc1", "fc2"]
    assert viewer.epoch == 0 and viewer.param.epoch.objects == [0, 1, 2, 3]
    assert viewer.method == "anchored-umap" and viewer.n_neighbors == 15
    frame, rgba = viewer.layer_image("fc2")
    assert rgba.shape == (360, 360, 4) and (rgba[..., 3] > 0).sum() > 300


def test_choosing_layers_changes_the_plots(viewer):
    viewer.__panel__()
    assert [panel.name for panel in viewer._main.objects] == ["conv1", "conv2", "fc1", "fc2"]
    viewer.layers = ["fc2", "conv1"]
    assert [panel.name for panel in viewer._main.objects] == ["fc2", "conv1"]


def test_plots_keep_their_options_and_draw_on_the_2d_canvas(viewer):
    import holoviews as hv

    curves = hv.render(viewer._curves().object)
    assert curves.title.text.startswith("training curves") and len(curves.extra_y_ranges) == 1
    assert curves.sizing_mode == "stretch_width" and curves.output_backend == "canvas"
    layer = hv.render(viewer._layer_panel("fc1")[0].object)
    assert layer.title.text == "fc1" and layer.output_backend == "canvas"


def test_every_state_change_redraws(viewer):
    base = viewer.layer_image("fc1")[1].copy()
    viewer.epoch = 3
    stepped = viewer.layer_image("fc1")[1].copy()
    assert not np.array_equal(base, stepped)
    viewer.color_by = "correct / incorrect"
    assert not np.array_equal(stepped, viewer.layer_image("fc1")[1])
    viewer.color_by = "per-sample loss"
    assert "low loss" in viewer._legend_html()
    viewer.color_by = "true class"
    viewer.classes = [c for c in viewer.class_names if c != "4"]
    hidden = int((viewer.scene.labels == 4).sum())
    assert f"{300 - hidden} of 300 samples drawn" in viewer._legend_html()
    viewer.show = "misclassified"
    wrong = int((~viewer.scene.correct[3] & (viewer.scene.labels != 4)).sum())
    assert f"{wrong} of 300 samples drawn" in viewer._legend_html()
    viewer.show = "flipped"
    assert "learned" in viewer._legend_html()


def test_the_next_epoch_is_rendered_ahead_and_drawn_as_a_fresh_render_would(viewer):
    def fresh(layer):
        state = viewer._state()
        frame = viewer.scene.default_frame(layer, 360, 360)
        coloring = viewer.scene.coloring(state, viewer.selected_mask())
        return viewer.scene.render_layers({layer: frame}, state.epoch_index, coloring)[layer]

    viewer.epoch = 1  # a step forward: epoch 2 is rendered in the background
    assert viewer._ahead[0][0].epoch_index == 2
    _, ready = viewer._ahead[1].result()
    viewer.epoch = 2
    assert viewer._rendered["fc2"][1] is ready["fc2"][1]  # the step used the ready pictures
    assert viewer._ahead[0][0].epoch_index == 3  # and started on the next ones
    assert all(np.array_equal(viewer.layer_image(layer)[1], fresh(layer)) for layer in viewer.layers)
    viewer.color_by = "predicted class"  # pictures rendered ahead in the old colours must not be shown
    viewer._ahead[1].result()
    viewer.epoch = 3
    assert np.array_equal(viewer.layer_image("fc2")[1], fresh("fc2"))
    assert viewer._ahead[0][0].epoch_index == 0  # the player loops: after the last epoch comes the first
    viewer.epoch = 2  # a step back turns the direction
    assert viewer._ahead[0][0].epoch_index == 1
    viewer._player.loop_policy = "once"
    viewer.epoch = 3
    assert viewer._ahead is None


def test_box_selection_is_shared_by_layers_and_epochs(viewer):
    scene = viewer.scene
    x, y = scene.xs["fc2"][0], scene.ys["fc2"][0]
    bounds = (np.percentile(x, 10), np.percentile(y, 10), np.percentile(x, 60), np.percentile(y, 60))
    ids = viewer.select_box("fc2", bounds)
    inside = (x >= bounds[0]) & (x <= bounds[2]) & (y >= bounds[1]) & (y <= bounds[3])
    assert set(ids) == set(scene.samples[inside]) and 0 < len(ids) < 300
    table = viewer.selected()
    assert list(table["sample"]) == sorted(ids) or set(table["sample"]) == set(ids)
    assert {"label", "prediction", "correct", "loss", "conv1_x", "fc2_y"} <= set(table.columns)
    viewer.epoch = 2
    assert set(viewer.selected()["sample"]) == set(ids)  # the selection is of samples, not positions
    grey = viewer.layer_image("conv1")[1]
    assert "selected" in viewer._legend_html()
    viewer.clear_selection()
    assert viewer.selection is None and not np.array_equal(grey, viewer.layer_image("conv1")[1])


def test_lasso_selection(viewer):
    scene = viewer.scene
    x, y = scene.xs["fc1"][0], scene.ys["fc1"][0]
    cx, cy = np.median(x), np.median(y)
    r = (x.max() - x.min()) / 3
    polygon = [(cx - r, cy - r), (cx + r, cy - r), (cx, cy + r)]
    ids = viewer.select_lasso("fc1", polygon)
    assert ids is not None and 0 < len(ids) < 300


def test_hover_picks_the_nearest_sample_and_rings_it_in_every_layer(viewer):
    scene = viewer.scene
    target = 17
    viewer._hover_at("conv2", float(scene.xs["conv2"][0, target]), float(scene.ys["conv2"][0, target]))
    assert viewer.hovered == int(scene.samples[target])
    card = viewer._card_html()
    assert f"sample {viewer.hovered}" in card and f"true: <b>{viewer.class_names[scene.labels[target]]}</b>" in card
    assert viewer._card_thumbnail()[:4] == b"\x89PNG"
    for layer in viewer.layers:
        ring = viewer._ring_data(layer)
        assert ring == {"x": [float(scene.xs[layer][0, target])], "y": [float(scene.ys[layer][0, target])]}
    viewer._hover_at("conv2", 1e9, 1e9)  # far from every point
    assert viewer.hovered is None and viewer._ring_data("fc1") == {"x": [], "y": []}


def test_trajectories_follow_centroids_and_selected_samples(viewer):
    viewer.epoch = 2
    viewer.trajectories = "class centroids"
    paths = viewer._trajectory_element("fc2")
    assert len(paths.data) == 10 and all(len(p["x"]) == 3 for p in paths.data)
    viewer.trajectories = "selection"
    assert paths.data != viewer._trajectory_element("fc2").data  # nothing selected: an empty stand-in
    viewer.selection = viewer.scene.samples[:5]
    selected = viewer._trajectory_element("fc2")
    assert len(selected.data) == 5 and all(len(p["x"]) == 3 for p in selected.data)


def test_unplaced_points_are_counted_in_the_quality_line(embedded):
    from neuromapper.reduce import list_embeddings, load_embedding

    da = load_embedding(embedded, list_embeddings(embedded)[0]["key"]).copy()
    da[2, 1, :7] = np.nan
    unplaced = da["unplaced"].values.copy()
    unplaced[2, 1] = 7
    da = da.assign_coords(unplaced=(("epoch", "layer"), unplaced))
    del da.attrs["key"]  # no longer the stored embedding of that key (sessions share scenes by key)
    viewer = NeuroMapper(embedded, embedding=da)
    viewer.epoch = 2
    assert "7 unplaced" in viewer._quality_html("conv2", 2, 0)
    assert "0 unplaced" in viewer._quality_html("conv2", 1, 0)
    assert viewer.layer_image("conv2")[1].shape == (360, 360, 4)  # NaNs never crash a view


def test_reduce_controls_hit_the_cache_or_compute_in_the_background(viewer, monkeypatch):
    from neuromapper import reduce as reduction

    calls = []
    real_reduce = reduction.reduce
    done = threading.Event()

    def counting_reduce(*args, **kwargs):
        calls.append(kwargs)
        try:
            return real_reduce(*args, **kwargs)
        finally:
            done.set()

    monkeypatch.setattr(reduction, "reduce", counting_reduce)
    progress_seen = []
    viewer._progress.param.watch(lambda event: progress_seen.append(event.new), "value")
    viewer.per_class = "25"  # not stored yet: computed in a background thread with progress
    worker = viewer._job[0]
    assert done.wait(120), "the background reduction did not finish"
    worker.join(30)
    assert len(calls) == 1 and calls[0]["per_class"] == 25
    assert len(viewer.scene) == 250 and viewer.status == "computed and cached"
    assert progress_seen and max(progress_seen) == 100
    viewer.per_class = "all"  # stored: shown at once, nothing computed
    assert len(calls) == 1 and len(viewer.scene) == 300 and viewer.status.startswith("cached")
    params = json.loads(viewer.scene.embedding.attrs["params"])
    assert params["per_class"] is None


def test_embedding_from_another_run_is_refused(embedded):
    da = xr.DataArray(np.zeros((2, 1, 3, 2), np.float32), dims=("epoch", "layer", "sample", "xy"),
                      coords={"epoch": [0, 1], "layer": ["fc1"], "sample": [9000, 9001, 9002], "xy": ["x", "y"]})
    with pytest.raises(ValueError, match="embedding: its samples are not all in this run"):
        NeuroMapper(embedded, embedding=da)
