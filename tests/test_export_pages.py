"""The snapshot's Model and Training sections without a browser: numbers, pictures, names, what a run lacks.

The page itself (player, offline, no console errors) is tested in ``tests/ui/test_export_browser.py``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import xml.etree.ElementTree as ET

import netCDF4
import numpy as np
import pytest
from bokeh.palettes import Viridis256
from PIL import Image

from neuromapper import open_run, store
from neuromapper.export import _export
from neuromapper.export_model import model_payload
from neuromapper.export_training import training_payload
from neuromapper.plots import diverging_colors
from neuromapper.synthetic import make_synthetic_run

from .test_export import page_data, pca_embedding

SVG = ""  # the SVG strings carry no xmlns: the page's HTML parser places them, and the page holds no URL


def picture(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGBA"))


def confusion(ds, epoch: int) -> np.ndarray:
    """The (true, predicted) counts at ``epoch``, counted here from the stored labels and predictions."""
    n = ds.sizes["class"]
    labels = ds["label"].values
    predictions = ds["prediction"].sel(epoch=epoch).values
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def pairs(svg: str, cls: str) -> dict[tuple[int, int], int]:
    """``{(true, predicted): count}`` of the shapes of class ``cls`` in an SVG string."""
    root = ET.fromstring(svg)
    return {(int(e.get("data-true")), int(e.get("data-predicted"))): int(e.get("data-count"))
            for e in root.iter() if e.get("class") == cls}


@pytest.fixture(scope="module")
def small(small_run):
    ds = open_run(small_run)
    embedding = pca_embedding(small_run)
    return ds, model_payload(ds, embedding), training_payload(ds, embedding)


def test_chord_and_bars_count_the_confusion_matrix_at_every_epoch(small):
    ds, model, _ = small
    assert model["kind"] == "chord" and list(model["frames"]) == [str(int(e)) for e in ds["epoch"].values]
    for epoch, frame in model["frames"].items():
        matrix = confusion(ds, int(epoch))
        errors = {(t, p): int(c) for (t, p), c in np.ndenumerate(matrix) if t != p and c}
        assert pairs(frame["errors"], "nm-ribbon") == errors
        assert pairs(frame["bars"], "nm-segment") == {(t, p): int(c) for (t, p), c in np.ndenumerate(matrix) if c}
        assert frame["matrix"] == matrix.tolist()
        wrong = int(matrix.sum() - np.trace(matrix))
        assert frame["summary"].startswith(f"epoch {epoch}: {wrong:,} of {matrix.sum():,} probe samples misclassified")
        arcs = [e for e in ET.fromstring(frame["errors"]).iter(SVG + "path") if e.get("data-class") is not None]
        assert len(arcs) == ds.sizes["class"]  # every class keeps its arc, with or without errors


def test_the_focused_sample_s_maps_thumbnail_and_predictions(small):
    ds, model, _ = small
    focus = model["focus"]
    sample = int(store.spotlight_ids(ds)[0])
    assert focus["sample"] == sample and focus["layers"] == store.map_layers(ds) == ["conv1", "conv2"]
    position = int(np.flatnonzero(ds["sample"].values == sample)[0])
    names = [str(c) for c in ds["class"].values]
    assert focus["label"] == names[int(ds["label"].values[position])]
    assert picture(focus["image"]).shape[:2] == ds["image"].shape[1:3]
    for epoch in ds["epoch"].values:
        assert focus["predicted"][str(int(epoch))] == names[int(ds["prediction"].sel(epoch=epoch).values[position])]
    for layer in focus["layers"]:
        entry = focus["maps"][layer]
        maps = store.feature_maps(ds, layer).sel(spotlight=sample).values  # (epoch, channel, y, x)
        channels, h, w = maps.shape[1:]
        columns = int(np.ceil(np.sqrt(channels * h / w)))
        rows = -(-channels // columns)
        assert entry["channels"] == channels and entry["mapSize"] == [h, w]
        for i, epoch in enumerate(ds["epoch"].values):
            frame = entry["frames"][str(int(epoch))]
            rgba = picture(frame["png"])
            assert rgba.shape[:2] == (rows * (h + 1) - 1, columns * (w + 1) - 1) == (entry["height"], entry["width"])
            assert frame["range"] == pytest.approx([0.0, float(maps[i].max())], rel=1e-6)  # ReLU maps: 0..max
            if rows > 1:
                assert rgba[h, 0, 3] == 0  # the gap between tile rows is clear
            hottest = np.unravel_index(np.argmax(maps[i]), maps[i].shape)  # drawn in the map's brightest colour
            c, y, x = hottest
            r, col = divmod(int(c), columns)
            brightest = rgba[r * (h + 1) + y, col * (w + 1) + x, :3]
            assert "#" + bytes(brightest).hex() == Viridis256[-1].lower()


def test_weight_grid_pixels_follow_one_symmetric_scale_fixed_over_epochs(small):
    ds, model, training = small
    weights = training["weights"]
    kernels = store.weights(ds, "conv1").values  # (epoch, out, in, y, x): 8 kernels of 1 x 3 x 3
    limit = float(np.abs(kernels).max())
    assert weights["layer"] == model["kernels"] == "conv1" and weights["limit"] == pytest.approx(limit)
    table = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in diverging_colors()])
    n_out, _, h, w = kernels.shape[1:]
    columns = int(np.ceil(np.sqrt(n_out * h / w)))
    for i, epoch in enumerate(ds["epoch"].values):
        rgba = picture(weights["frames"][str(int(epoch))])
        for o in range(n_out):
            r, c = divmod(o, columns)
            tile = rgba[r * (h + 1): r * (h + 1) + h, c * (w + 1): c * (w + 1) + w, :3]
            level = np.round((kernels[i, o, 0] + limit) / (2 * limit) * (len(table) - 1)).astype(int)
            np.testing.assert_array_equal(tile, table[level])
    # the largest |weight| of the whole run reaches an end of the map at its epoch, and only there
    i, o, _, y, x = np.unravel_index(np.argmax(np.abs(kernels)), kernels.shape)
    r, c = divmod(int(o), columns)
    end = table[-1] if kernels[i, o, 0, y, x] > 0 else table[0]
    rgba = picture(weights["frames"][str(int(ds["epoch"].values[i]))])
    assert tuple(rgba[r * (h + 1) + y, c * (w + 1) + x, :3]) == tuple(end)


def test_training_curves_mark_each_epoch(small):
    ds, _, training = small
    curves = training["curves"]
    names = [entry["name"] for entry in curves["legend"]]
    assert names == ["train_loss", "probe accuracy", "probe loss"]
    root = ET.fromstring(curves["svg"])
    drawn = [e.get("data-series") for e in root.iter(SVG + "path")]
    assert drawn == names
    xs = [curves["marker"][str(int(e))] for e in ds["epoch"].values]
    assert xs == sorted(xs) and len(set(xs)) == len(xs)


def test_digit_mlp_weights_are_neuron_images(digits_mlp_run):
    ds = open_run(digits_mlp_run)
    training = training_payload(ds, pca_embedding(digits_mlp_run))
    weights = training["weights"]
    assert weights["kind"] == "linear-image" and not weights["rgb"]
    shape = store.weights(ds, weights["layer"]).shape  # (epoch, 16 neurons, 1, 8, 8)
    assert shape[1:] == (16, 1, 8, 8)
    for frame in weights["frames"].values():
        assert picture(frame).shape[:2] == (4 * 9 - 1, 4 * 9 - 1) == (weights["height"], weights["width"])
    assert training["explore"]["once"] and picture(training["explore"]["frames"]["all"]).shape[:2] == (400, 400)


def test_moons_boundary_contour_and_points(moons_run):
    ds = open_run(moons_run)
    embedding = pca_embedding(moons_run)
    training = training_payload(ds, embedding)
    boundary = training["boundary"]
    ny, nx = store.boundary(ds).shape[1:3]
    assert (boundary["height"], boundary["width"]) == (ny, nx) and len(boundary["frames"]) == 101
    for frame in boundary["frames"].values():
        assert picture(frame["png"]).shape[:2] == (ny, nx)
    # the last epoch's contour runs where the stored probability is 0.5 (pixel centres at i + 0.5, row 0 at the top)
    last = boundary["frames"]["100"]["contour"]
    points = np.array(re.findall(r"[ML](-?[\d.]+) (-?[\d.]+)", last), dtype=float)
    assert len(points) > 50
    col = np.clip(np.round(points[:, 0] - 0.5).astype(int), 0, nx - 1)
    row = np.clip(ny - 1 - np.round(points[:, 1] - 0.5).astype(int), 0, ny - 1)
    p = store.boundary(ds).sel(epoch=100).values[row, col, 1]
    assert np.median(np.abs(p - 0.5)) < 0.05
    assert sum(d.get("d").count("M") for d in ET.fromstring(boundary["svg"]).iter("path")
               if d.get("class") == "nm-dots") == ds.sizes["sample"]
    model = model_payload(ds, embedding)
    assert model["kind"] == "chord" and model["focus"]["maps"] == {} and model["kernels"] is None
    assert model["lacks"][0].startswith("feature maps") and training["lacks"][0].startswith("layer weights")
    sizes = {name: len(json.dumps(part)) for name, part in (("model", model), ("training", training))}
    assert sizes["training"] < 3_000_000, sizes  # 101 epochs of a 200 x 200 boundary


def test_many_classes_draw_a_heatmap(tmp_path):
    run = make_synthetic_run(tmp_path / "many", n_samples=600, n_epochs=2, n_layers=1, n_classes=25, dims=8)
    ds = open_run(run)
    model = model_payload(ds, pca_embedding(run))
    assert model["kind"] == "heatmap"
    for epoch, frame in model["frames"].items():
        heat = frame["errors"]
        rgba = picture(heat["png"])
        assert rgba.shape[:2] == (25, 25) and heat["size"] == 25
        matrix = confusion(ds, int(epoch))
        share = matrix / matrix.sum(axis=1, keepdims=True)
        np.fill_diagonal(share, np.nan)
        assert heat["max"] == pytest.approx(np.nanmax(share))
        assert (rgba[np.arange(25), np.arange(25), :3] == 0xE8).all()  # the diagonal is grey
        darkest = np.unravel_index(np.nanargmax(share), share.shape)
        assert rgba[darkest][:3].sum() == rgba[..., :3][~np.eye(25, dtype=bool)].sum(axis=-1).min()
        assert pairs(frame["bars"], "nm-segment") == {(t, p): int(c) for (t, p), c in np.ndenumerate(matrix) if c}


def test_hostile_names_stay_text_and_sizes_are_reported(twin_run, tmp_path):
    out, facts = _export(twin_run, tmp_path / "snap.html", embedding=pca_embedding(twin_run), layers=None,
                         epochs=None, width=200, strategy="auto", thumbnails="auto", progress=False)
    text = out.read_text(encoding="utf-8")
    assert "<b>zero</b>" not in text and "<i>own</i>" not in text
    data = page_data(out)
    assert set(facts["sections"]) == {"activations", "model", "training"}
    for name in ("model", "training"):
        assert facts["sections"][name] == len(json.dumps(data[name], separators=(",", ":"))) > 1000
    for frame in data["model"]["frames"].values():
        for svg in (frame["errors"], frame["bars"]):
            assert "&lt;b&gt;zero&lt;/b&gt;" in svg and "<b>" not in svg
            root = ET.fromstring(svg)  # well-formed, and the name is text, never an element
            assert not [e for e in root.iter() if e.tag == "b"]
    zero = [t for t in ET.fromstring(data["model"]["frames"]["2"]["bars"]).iter(SVG + "text") if "zero" in (t.text or "")]
    assert [t.text for t in zero] == ["<b>zero</b>"]


def test_old_runs_export_and_say_what_they_lack(tmp_path):
    run = make_synthetic_run(tmp_path / "old", n_samples=200, n_epochs=2, n_layers=1, dims=8)
    with netCDF4.Dataset(run / "run.nc", "a") as nc:
        nc.setncattr("neuromapper_schema", 2)
    out, facts = _export(run, tmp_path / "snap.html", embedding=pca_embedding(run), layers=None, epochs=None,
                         width=200, strategy="auto", thumbnails="auto", progress=False)
    data = page_data(out)
    old = "(recorded from schema 3 on; this run is schema 2)"
    assert data["model"]["lacks"] == [f"feature maps {old}", f"layer weights {old}"]
    assert data["training"]["lacks"][:3] == [f"layer weights {old}", f"a decision boundary {old}",
                                             f"the probe's input features {old}"]
    assert data["training"]["lacks"][3].startswith("an exploratory plot")
    assert data["model"]["focus"]["maps"] == {} and data["model"]["focus"]["image"] is None
    assert data["training"]["weights"] is None and data["training"]["boundary"] is None
    assert data["training"]["explore"] is None and data["training"]["curves"]["svg"].startswith("<svg")
