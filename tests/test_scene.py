"""The embedding scene: colouring rules, filters, selection rendering and lookups."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr

from neuromapper import raster
from neuromapper.scene import COLOR_BY, SHOW, UNSELECTED_COLOR, EmbeddingScene, ViewState, class_palette


def _scene(n=6):
    # 3 epochs, 2 layers; sample i sits at (i, i) in layer "a" and (-i, i) in layer "b", moving +0.5 per epoch
    coords = np.zeros((3, 2, n, 2), np.float32)
    for e in range(3):
        coords[e, 0, :, 0] = coords[e, 0, :, 1] = np.arange(n) + 0.5 * e
        coords[e, 1, :, 0] = -np.arange(n)
        coords[e, 1, :, 1] = np.arange(n)
    coords[2, 0, 5] = np.nan  # unplaced in layer a at epoch 2
    emb = xr.DataArray(coords, dims=("epoch", "layer", "sample", "xy"),
                       coords={"epoch": [0, 5, 10], "layer": ["a", "b"], "sample": np.arange(100, 100 + n),
                               "xy": ["x", "y"]})
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([[1, 0, 1, 0, 2, 0], [0, 0, 1, 1, 2, 0], [0, 1, 1, 1, 2, 2]])
    loss = np.linspace(0.01, 3, 18).reshape(3, 6)
    return EmbeddingScene(emb, labels, predictions, loss, ["cat", "dog", "owl"])


def test_codes_per_color_by():
    scene = _scene()
    assert scene.coloring(ViewState(0, COLOR_BY[0])).codes.tolist() == [0, 0, 1, 1, 2, 2]
    assert scene.coloring(ViewState(0, COLOR_BY[1])).codes.tolist() == [1, 0, 1, 0, 2, 0]
    correctness = scene.coloring(ViewState(0, COLOR_BY[2]))
    assert correctness.codes.tolist() == [1, 0, 0, 1, 0, 1] and list(correctness.legend) == ["correct", "incorrect"]
    flips = scene.coloring(ViewState(1, COLOR_BY[3]))  # learned / forgotten / unchanged since the previous epoch
    assert flips.codes.tolist() == [0, 2, 2, 0, 2, 2] and list(flips.legend) == ["learned", "forgotten", "unchanged"]
    loss = scene.coloring(ViewState(1, COLOR_BY[4]))
    assert loss.values is not None and np.all(np.diff(loss.values) > 0)
    with pytest.raises(ValueError, match="color_by: expected one of"):
        scene.coloring(ViewState(0, "shoe size"))


def test_hidden_classes_and_misclassification_filters():
    scene = _scene()
    hidden = scene.coloring(ViewState(0, hidden_classes=frozenset({"dog"})))
    assert hidden.codes.tolist() == [0, 0, -1, -1, 2, 2]
    wrong = scene.coloring(ViewState(0, show=SHOW[1]))
    assert (wrong.codes >= 0).tolist() == [True, False, False, True, False, True]
    # epoch index 1 vs 0: sample 0 learned, 3 learned, others unchanged; the filter keeps the colours
    flipped = scene.coloring(ViewState(1, show=SHOW[2]))
    assert flipped.codes.tolist() == [0, -1, -1, 1, -1, -1] and list(flipped.legend) == ["cat", "dog", "owl"]
    assert scene.flips(2).tolist() == [0, -1, 0, 0, 0, 1]  # sample 1 forgotten, sample 5 learned
    assert scene.flips(0).tolist() == [0] * 6


def test_render_changes_with_epoch_and_greys_unselected_points():
    scene = _scene()
    frame = scene.default_frame("a", 40, 40)
    state = ViewState(0)
    first = scene.render("a", 0, scene.coloring(state), frame)
    second = scene.render("a", 1, scene.coloring(state), frame)
    assert not np.array_equal(first, second)
    selected = np.array([True, True, False, False, False, False])
    image = scene.render("a", 0, scene.coloring(state, selected), frame)
    grey = raster.hex_to_rgb([UNSELECTED_COLOR])[0]
    opaque = image[image[..., 3] > 0][:, :3].astype(float)
    cat = raster.hex_to_rgb([class_palette(["cat", "dog", "owl"])["cat"]])[0]
    assert np.any(np.all(np.abs(opaque - grey) < 40, axis=1))  # unselected points drawn grey
    assert np.any(np.all(np.abs(opaque - cat) < 40, axis=1))  # selected ones keep their class colour
    images = scene.render_layers({"a": frame, "b": scene.default_frame("b", 40, 40)}, 0, scene.coloring(state))
    assert set(images) == {"a", "b"} and images["a"].shape == (40, 40, 4)


def test_lookups():
    scene = _scene()
    keep = np.ones(6, bool)
    codes = np.zeros(6, np.int8)
    assert scene.pick("a", 0, 2.1, 2.05, (0.3, 0.3), codes) == 2
    assert scene.pick("a", 0, 2.5, 2.5, (0.1, 0.1), codes) is None
    codes[2] = -1
    assert scene.pick("a", 0, 2.1, 2.05, (0.3, 0.3), codes) is None  # hidden points are not hoverable
    assert scene.inside_box("a", 1, (0.9, 0.9, 3.1, 3.1), keep).tolist() == [1, 2]
    triangle = np.array([[-0.5, -0.5], [4.5, -0.5], [4.5, 4.5]])
    assert scene.inside_polygon("a", 0, triangle, keep).tolist() == [0, 1, 2, 3, 4]
    centroids = scene.centroids("a")  # (epoch, class, 2), every epoch at once
    assert centroids.shape == (3, 3, 2) and centroids[0, 0].tolist() == [0.5, 0.5]
    assert centroids[2, 2].tolist() == [5.0, 5.0]  # the NaN (unplaced) sample is ignored in the median
    assert scene.sample_paths("b", 1, np.array([0, 3])).shape == (2, 2, 2)


def test_a_class_with_no_placed_sample_has_no_centroid_and_no_warning(monkeypatch):
    scene = _scene()
    scene.xs["a"][1, 4:] = scene.ys["a"][1, 4:] = np.nan  # class "owl" unplaced at the second epoch
    real, swaps = warnings.catch_warnings, []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning would be an error here
        # render threads call this: swapping the process-wide warning filters there is a race
        monkeypatch.setattr(warnings, "catch_warnings", lambda *a, **k: swaps.append(a) or real(*a, **k))
        centroids = scene.centroids("a")
        monkeypatch.undo()
    assert swaps == [], "the warning filters were swapped"
    assert np.isnan(centroids[1, 2]).all() and centroids[1, 0].tolist() == [1.0, 1.0]
    assert centroids[0, 2].tolist() == [4.5, 4.5]


def test_many_classes_get_distinct_colours_and_codes_past_127():
    names = [f"class {i}" for i in range(1000)]
    palette = class_palette(names)
    assert all(len(c) == 7 and c.startswith("#") for c in palette.values())  # hex, as the rasterizer reads them
    assert len(set(list(palette.values())[:256])) == 256  # distinct up to glasbey's 256 colours
    n = 2000
    labels = np.arange(n) % 1000
    emb = xr.DataArray(np.random.default_rng(0).normal(size=(1, 1, n, 2)).astype(np.float32),
                       dims=("epoch", "layer", "sample", "xy"),
                       coords={"epoch": [0], "layer": ["a"], "sample": np.arange(n), "xy": ["x", "y"]})
    scene = EmbeddingScene(emb, labels, labels[None, :], np.ones((1, n)), names)
    coloring = scene.coloring(ViewState(0))
    assert coloring.codes.max() == 999 and coloring.counts.sum() == n
    rgba = scene.render("a", 0, coloring, scene.default_frame("a", 50, 50))
    assert (rgba[..., 3] > 0).sum() > 100


def test_paths_are_drawn_over_the_picture_fading_with_age():
    scene = _scene()
    frame = raster.Frame((0.0, 10.0), (0.0, 10.0), 100, 100)
    blank = np.zeros((100, 100, 4), np.uint8)
    # one sample moving right along y=5 over three epochs: an old step (0 -> 4) and a new one (4 -> 8)
    paths = np.array([[[0.0, 5.0]], [[4.0, 5.0]], [[8.0, 5.0]]])
    drawn = scene.draw_paths(blank, frame, paths, np.array([[255, 0, 0]]))
    row = 100 - 1 - 50
    old, new = drawn[row, 20], drawn[row, 60]
    assert new[3] == 255 and 0 < old[3] < new[3] and new[:3].tolist() == [255, 0, 0]
    assert drawn[10, 10, 3] == 0  # nothing drawn away from the path


def test_bounds_cover_all_epochs():
    scene = _scene()
    (x0, x1), (y0, y1) = scene.bounds["a"]
    assert x0 < 0 < 5.5 < x1 and y0 < 0 < 5.5 < y1  # 5.5: sample 4 at epoch index 1 (sample 5 is NaN later)
