"""The standalone HTML snapshot without a browser: self-contained, faithful data, strategy, errors.

The browser side (player, toggles, hover, no network) is in ``tests/ui/test_export_browser.py``.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil

import netCDF4
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import neuromapper
from neuromapper import export, open_run, store
from neuromapper.export import Estimate, choose_strategy, export_html
from neuromapper.scene import CORRECTNESS_COLORS, ViewState, class_palette, scene_for
from neuromapper.synthetic import make_synthetic_run


def pca_embedding(run_path, trust_offset: float = 0.5) -> xr.DataArray:
    """A quick embedding in :func:`neuromapper.reduce`'s schema: one PCA per layer over all epochs.

    ``trustworthiness`` is a known pattern (``offset + epoch / 100 + layer / 10``) so tests can
    check that the page shows the right figure for each layer and epoch.
    """
    from sklearn.decomposition import PCA

    ds = open_run(run_path)
    layers = [str(v) for v in ds["layer"].values]
    epochs = [int(e) for e in ds["epoch"].values]
    out = np.zeros((len(epochs), len(layers), ds.sizes["sample"], 2), dtype=np.float32)
    for j, layer in enumerate(layers):
        acts = neuromapper.layer_activations(ds, layer).values
        flat = acts.reshape(-1, acts.shape[-1])
        out[:, j] = PCA(2, random_state=0).fit(flat).transform(flat).reshape(len(epochs), -1, 2)
    trust = trust_offset + np.arange(len(epochs))[:, None] / 100 + np.arange(len(layers))[None, :] / 10
    da = xr.DataArray(
        out,
        dims=("epoch", "layer", "sample", "xy"),
        coords={"epoch": epochs, "layer": layers, "sample": ds["sample"].values, "xy": ["x", "y"],
                "trustworthiness": (("epoch", "layer"), trust),
                "unplaced": (("epoch", "layer"), np.zeros((len(epochs), len(layers)), dtype=int))},
        name="embedding",
    )
    da.attrs = {"method": "pca", "params": json.dumps({"n_neighbors": 15, "seed": 0}), "key": "test-pca"}
    return da


def page_data(path) -> dict:
    text = path.read_text(encoding="utf-8")
    block = re.search(r'<script id="nm-data" type="application/json">(.*?)</script>', text, re.S)
    assert block, "the data block is missing"
    return json.loads(block.group(1))


def decode(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["b64"]), dtype=np.dtype(entry["dtype"]).newbyteorder("<"))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """600 samples, 3 layers, 4 epochs, 10 classes: small, every class present."""
    path = make_synthetic_run(tmp_path_factory.mktemp("export") / "synth", n_samples=600, n_epochs=4,
                              n_layers=3, dims=16, seed=1)
    return path, pca_embedding(path)


def test_points_snapshot_is_self_contained_and_faithful(synth, tmp_path):
    run, emb = synth
    out = export_html(run, tmp_path / "snap.html", embedding=emb, strategy="auto", progress=False)
    text = out.read_text(encoding="utf-8")
    # no URL at all: nothing can be fetched, and the page forbids fetching anyway
    assert not re.search(r"https?://", text)
    assert not re.search(r"""\b(src|href)\s*=\s*["'](?!data:)""", text)
    assert "default-src 'none'" in text
    assert len(re.findall(r"<script\b", text)) == 2  # the data block and the inline script, nothing external
    data = page_data(out)
    assert data["strategy"]["name"] == "points" and "under 2.00 MB" in data["strategy"]["reason"]
    # the points estimate is exact: it is the sum of the arrays in the file
    points = data["points"]
    arrays = [points["label"], points["prediction"], *points["codes"]]
    arrays += [c[axis] for c in points["coords"].values() for axis in ("x", "y")]
    assert data["strategy"]["estimate"]["points"] == sum(len(a["b64"]) for a in arrays)
    assert data["epochs"] == [0, 1, 2, 3] and data["layers"] == ["layer0", "layer1", "layer2"]
    assert out.stat().st_size < 400_000  # 600 x 3 x 4 x 4 bytes of coordinates plus a ~25 kB page
    # coordinates survive the 16-bit quantisation to well under a pixel
    for j, layer in enumerate(data["layers"]):
        c = points["coords"][layer]
        x = c["xRange"][0] + decode(c["x"]).astype(float) / 65534 * (c["xRange"][1] - c["xRange"][0])
        truth = emb.isel(layer=j).sel(xy="x").values.ravel()
        assert np.max(np.abs(x - truth)) <= (c["xRange"][1] - c["xRange"][0]) / 65534
    ds = open_run(run)
    assert np.array_equal(decode(points["label"]), ds["label"].values)
    assert np.array_equal(decode(points["prediction"]).reshape(4, -1), ds["prediction"].values)
    wrong = decode(points["codes"][1]).reshape(4, -1)
    assert np.array_equal(wrong, (ds["prediction"].values != ds["label"].values).astype(int))
    # the dashboard's colours, by the dashboard's rules
    classes = [str(c) for c in ds["class"].values]
    assert data["modes"][0]["colors"] == list(class_palette(classes).values())
    assert data["modes"][1]["colors"] == list(CORRECTNESS_COLORS.values())
    accuracy = np.sum(data["correctByClass"], axis=1) / data["n"]
    assert np.allclose(accuracy, (ds["prediction"].values == ds["label"].values).mean(axis=1))


def test_title_facts_and_trustworthiness(synth, tmp_path):
    run, emb = synth
    data = page_data(export_html(run, tmp_path / "snap.html", embedding=emb, progress=False))
    assert data["run"] == "synth" and data["dataset"] == "synthetic" and data["method"] == "pca"
    assert data["params"] == {"n_neighbors": 15, "seed": 0}
    assert data["trustworthiness"]["layer2"] == pytest.approx([0.7, 0.71, 0.72, 0.73])
    assert data["unplaced"]["layer0"] == [0, 0, 0, 0]


def test_images_strategy_matches_the_dashboard_raster(synth, tmp_path):
    run, emb = synth
    out = export_html(run, tmp_path / "img.html", embedding=emb, strategy="images", width=200, progress=False)
    data = page_data(out)
    assert data["strategy"]["name"] == "images" and "points" not in data
    masks = data["images"]["masks"]
    assert len(masks) == 4 and all(len(m) == 3 and all(len(g) == 20 for g in m) for m in masks)
    # stacked, the masks of a frame cover exactly the pixels the dashboard's raster paints
    ds = open_run(run)
    scene, _ = scene_for(ds, emb)
    for e, j in [(0, 0), (3, 2)]:
        layer = scene.layers[j]
        covered = np.zeros((200, 200), dtype=bool)
        for left, top, b64 in masks[e][j]:
            if not b64:
                continue
            picture = Image.open(io.BytesIO(base64.b64decode(b64)))
            assert picture.mode == "LA"
            alpha = np.asarray(picture)[..., 1]
            covered[top : top + alpha.shape[0], left : left + alpha.shape[1]] |= alpha > 0
        dashboard = scene.render(layer, e, scene.coloring(ViewState(e)), scene.default_frame(layer, 200, 200))
        assert np.array_equal(covered, dashboard[..., 3] > 0)
    groups = data["images"]["groups"]
    assert groups[3] == {"cls": 1, "colors": [class_palette(scene.class_names)["c1"], CORRECTNESS_COLORS["incorrect"]]}


def test_auto_strategy_rules():
    small, big = export.POINTS_SMALL_BYTES, export.POINTS_SMALL_BYTES + 1
    name, reason = choose_strategy(2_000, Estimate(points=small, images=None, thumbnails=0))
    assert name == "points" and "hover labels" in reason  # small enough: no pictures rendered to compare
    assert choose_strategy(2_000, Estimate(points=big, images=big + 1, thumbnails=0))[0] == "points"
    assert choose_strategy(2_000, Estimate(points=big, images=big - 1, thumbnails=0))[0] == "images"
    name, reason = choose_strategy(export.POINTS_MAX_SAMPLES + 1, Estimate(points=1, images=2, thumbnails=0))
    assert name == "images" and f"{export.POINTS_MAX_SAMPLES:,}" in reason
    with pytest.raises(ValueError, match="estimate: images size needed"):
        choose_strategy(2_000, Estimate(points=big, images=None, thumbnails=0))


def test_auto_strategy_follows_size(tmp_path, monkeypatch):
    small = make_synthetic_run(tmp_path / "small", n_samples=300, n_epochs=3, n_layers=1, dims=16)
    big = make_synthetic_run(tmp_path / "big", n_samples=30_000, n_epochs=3, n_layers=1, dims=16)
    # a small points file is taken without rendering pictures to compare
    data = page_data(export_html(small, tmp_path / "s.html", embedding=pca_embedding(small), progress=False))
    assert data["strategy"]["name"] == "points" and data["strategy"]["estimate"]["images"] is None
    # compared on size: few samples -> points; many samples over few epochs -> images
    monkeypatch.setattr(export, "POINTS_SMALL_BYTES", 0)
    sizes = {}
    for name, run in [("small", small), ("big", big)]:
        out = export_html(run, tmp_path / f"{name}.html", embedding=pca_embedding(run), width=200, progress=False)
        data = page_data(out)
        sizes[name] = data["strategy"]["estimate"]
        assert data["strategy"]["name"] == ("points" if name == "small" else "images"), data["strategy"]
        assert "the smaller file" in data["strategy"]["reason"]
    assert sizes["small"]["points"] < sizes["small"]["images"]
    assert sizes["big"]["points"] > sizes["big"]["images"]
    # the sample limit forces images even when points would be smaller
    monkeypatch.setattr(export, "POINTS_MAX_SAMPLES", 100)
    forced = page_data(export_html(small, tmp_path / "forced.html", embedding=pca_embedding(small), progress=False))
    assert forced["strategy"]["name"] == "images" and "more than the page draws smoothly" in forced["strategy"]["reason"]


def test_layers_and_epochs_select_what_is_exported(synth, tmp_path):
    run, emb = synth
    data = page_data(export_html(run, tmp_path / "sub.html", embedding=emb, layers=["layer2", "layer0"],
                                 epochs=[3, 0], strategy="points", progress=False))
    assert data["layers"] == ["layer2", "layer0"] and data["epochs"] == [0, 3]
    c = data["points"]["coords"]["layer2"]
    x = c["xRange"][0] + decode(c["x"]).reshape(2, -1) / 65534 * (c["xRange"][1] - c["xRange"][0])
    truth = emb.sel(layer="layer2", xy="x", epoch=3).values
    assert np.allclose(x[1], truth, atol=(c["xRange"][1] - c["xRange"][0]) / 60000)
    assert data["trustworthiness"]["layer2"] == pytest.approx([0.7, 0.73])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["layer0", "fc9"]}, r"layers: \['fc9'\] not in the embedding; available layers: \['layer0', 'layer1', 'layer2'\]"),
        ({"layers": []}, r"layers: an empty list"),
        ({"epochs": [0, 12]}, r"epochs: \[12\] not recorded in the embedding; available epochs: \[0, 1, 2, 3\]"),
        ({"width": 10}, r"width: expected an integer number of pixels from 64 to 2048, got 10"),
        ({"width": 360.5}, r"width: .* got 360.5"),
        ({"width": "360"}, r"width: .* got '360'"),
        ({"strategy": "vector"}, r"strategy: expected one of \('auto', 'points', 'images'\), got 'vector'"),
        ({"thumbnails": "yes"}, r"thumbnails: expected True, False or 'auto'"),
        ({"embedding": np.zeros((2, 2))}, r"embedding: expected an xarray.DataArray with dims"),
    ],
)
def test_bad_arguments_name_the_argument(synth, tmp_path, kwargs, message):
    run, emb = synth
    kwargs = {"embedding": emb, **kwargs}
    with pytest.raises(ValueError, match=message):
        export_html(run, tmp_path / "bad.html", progress=False, **kwargs)
    assert not (tmp_path / "bad.html").exists()


def test_unplaced_points_are_flagged_not_fatal(synth, tmp_path):
    """Points a reduction could not place (NaN) are left out of both strategies, never a crash."""
    run, emb = synth
    holes = emb.copy(deep=True)
    holes[1, 0, :25] = np.nan
    holes = holes.assign_coords(unplaced=(("epoch", "layer"), np.where(np.arange(4)[:, None] == 1, 25, 0) * [[1, 0, 0]]))
    data = page_data(export_html(run, tmp_path / "p.html", embedding=holes, strategy="points", progress=False))
    x = decode(data["points"]["coords"]["layer0"]["x"]).reshape(4, -1)
    assert (x[1, :25] == 65535).all() and (x[1, 25:] < 65535).all() and (x[0] < 65535).all()
    assert data["unplaced"]["layer0"] == [0, 25, 0, 0]
    images = page_data(export_html(run, tmp_path / "i.html", embedding=holes, strategy="images", progress=False))
    assert len(images["images"]["masks"][1][0]) == 20


def test_embedding_of_another_run_is_refused(synth, tmp_path):
    run, emb = synth
    other = emb.assign_coords(sample=emb["sample"].values + 10_000)
    with pytest.raises(ValueError, match="embedding: its samples are not all in this run"):
        export_html(run, tmp_path / "bad.html", embedding=other, progress=False)


def test_script_breaking_text_is_escaped(synth, tmp_path):
    run, emb = synth
    hostile = emb.copy()
    hostile.attrs = {**emb.attrs, "key": "</script><script>alert(1)</script>"}
    out = export_html(run, tmp_path / "x.html", embedding=hostile, progress=False)
    text = out.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in text and text.count("</script>") == 2
    assert page_data(out)["key"] == "</script><script>alert(1)</script>"


def test_thumbnails_of_a_real_run_for_hover(small_run, tmp_path):
    emb = pca_embedding(small_run)
    data = page_data(export_html(small_run, tmp_path / "t.html", embedding=emb, progress=False))
    thumbs = data["points"]["thumbnails"]
    assert (thumbs["height"], thumbs["width"], thumbs["columns"]) == (8, 8, 18)  # 300 digits on an 18-wide grid
    sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumbs["png"]))))
    images = open_run(small_run)["image"].values
    assert np.array_equal(sheet[8:16, 8 * 5 : 8 * 6], images[18 + 5, ..., 0])  # sample 23: row 1, column 5
    no_thumbs = page_data(export_html(small_run, tmp_path / "n.html", embedding=emb, thumbnails=False, progress=False))
    assert no_thumbs["points"]["thumbnails"] is None


def test_export_never_reduces_and_takes_the_default_embedding(tmp_path, monkeypatch):
    from neuromapper import methods

    run = make_synthetic_run(tmp_path / "run", n_samples=200, n_epochs=3, n_layers=1, dims=16)
    other = neuromapper.reduce(run, method="pca", n_neighbors=5)

    def must_not_run(*args, **kwargs):
        raise AssertionError("export started a reduction")

    for name in methods.METHODS:
        monkeypatch.setitem(methods.METHODS, name, must_not_run)
    # only a non-default embedding is stored: say how to make the default one (or pick the stored one)
    message = rf"embedding: none given, .*`neuromapper reduce {run}`.*--embedding KEY.*stored keys: \['{other.attrs['key']}'\]"
    with pytest.raises(FileNotFoundError, match=message):
        export_html(run, tmp_path / "a.html", progress=False)
    assert not (tmp_path / "a.html").exists()
    monkeypatch.undo()
    default = neuromapper.reduce(run)
    for name in methods.METHODS:
        monkeypatch.setitem(methods.METHODS, name, must_not_run)
    data = page_data(export_html(run, tmp_path / "b.html", width=128, progress=False))
    assert data["key"] == default.attrs["key"] and data["method"] == "anchored-umap" and data["coverage"] is None


def _grow(run, as_epoch: int) -> None:
    """The recorder writes another epoch (a copy of the last one's data, as epoch ``as_epoch``)."""
    last = store.recorded_epochs(run)[-1]
    shutil.copy(store.epoch_file(run, last), store.epoch_file(run, as_epoch))
    with netCDF4.Dataset(store.epoch_file(run, as_epoch), "a") as nc:
        nc["epoch"][:] = [as_epoch]


def test_a_run_that_grew_exports_the_epochs_its_embedding_covers_and_says_so(tmp_path, capsys):
    from neuromapper.cli import main

    run = make_synthetic_run(tmp_path / "run", n_samples=200, n_epochs=3, n_layers=1, dims=16)
    neuromapper.reduce(run)
    _grow(run, 3)
    assert open_run(run)["epoch"].values.tolist() == [0, 1, 2, 3]
    out = tmp_path / "snap.html"
    assert main(["export", str(run), "-o", str(out), "--width", "128"]) == 0
    printed = capsys.readouterr().out
    note = "the embedding covers 3 of the 4 recorded epochs; epochs [3] were recorded after it was computed"
    assert f"note: {note}" in printed and f"neuromapper reduce {run}" in printed
    data = page_data(out)
    assert data["epochs"] == [0, 1, 2] and data["coverage"].startswith(note)
    assert 'id="nm-coverage"' in out.read_text(encoding="utf-8")


def test_export_of_a_run_opened_before_it_grew(tmp_path):
    """A Dataset opened at epoch 2, while the recorder writes epoch 3 and a reduce extends the embedding."""
    run = make_synthetic_run(tmp_path / "run", n_samples=200, n_epochs=3, n_layers=1, dims=16)
    neuromapper.reduce(run)
    opened = open_run(run)
    _grow(run, 3)
    assert neuromapper.reduce(run)["epoch"].values.tolist() == [0, 1, 2, 3]
    data = page_data(export_html(opened, tmp_path / "s.html", width=128, progress=False))
    assert data["epochs"] == [0, 1, 2] and data["coverage"] is None


def test_export_while_an_epoch_file_appears(tmp_path, monkeypatch):
    """The embedding is looked up before the run is opened, so the opened run holds all its epochs."""
    run = make_synthetic_run(tmp_path / "run", n_samples=200, n_epochs=3, n_layers=1, dims=16)
    neuromapper.reduce(run)
    real_open = export.open_run

    def open_while_growing(path, *args, **kwargs):
        _grow(run, 3)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(export, "open_run", open_while_growing)
    data = page_data(export_html(run, tmp_path / "s.html", width=128, progress=False))
    assert data["epochs"] == [0, 1, 2] and "covers 3 of the 4 recorded epochs" in data["coverage"]


def test_a_single_epoch_run_is_exported(tmp_path):
    run = make_synthetic_run(tmp_path / "one", n_samples=200, n_epochs=1, n_layers=2, dims=16)
    neuromapper.reduce(run)
    for strategy in ("points", "images"):
        data = page_data(export_html(run, tmp_path / f"{strategy}.html", width=128, strategy=strategy, progress=False))
        assert data["epochs"] == [0] and data["layers"] == ["layer0", "layer1"] and data["strategy"]["name"] == strategy
        assert len(data["trustworthiness"]["layer0"]) == 1 and data["coverage"] is None


def test_cli_export(tmp_path, capsys):
    from neuromapper.cli import main

    run = make_synthetic_run(tmp_path / "run", n_samples=200, n_epochs=3, n_layers=2, dims=16)
    assert main(["export", str(run), "-o", str(tmp_path / "none.html")]) == 2
    err = capsys.readouterr().err
    assert "neuromapper export: error: embedding: none given" in err and f"`neuromapper reduce {run}`" in err
    key = neuromapper.reduce(run, method="pca").attrs["key"]
    assert main(["export", str(run), "-o", str(tmp_path / "bad.html"), "--embedding", "../../x"]) == 2
    assert "neuromapper export: error: key: expected 16 lowercase hexadecimal digits" in capsys.readouterr().err
    out = tmp_path / "snap.html"
    code = main(["export", str(run), "-o", str(out), "--layers", "layer1", "--epochs", "0,2", "--width", "200",
                 "--strategy", "points", "--embedding", key])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert str(out) in printed.out and "points strategy" in printed.out and "MB" in printed.out
    data = page_data(out)
    assert data["layers"] == ["layer1"] and data["epochs"] == [0, 2] and data["width"] == 200
    assert main(["export", str(run), "-o", str(tmp_path / "bad.html"), "--layers", "nope", "--embedding", key]) == 2
    err = capsys.readouterr().err
    assert "neuromapper export: error: layers: ['nope'] not in the embedding" in err and "Traceback" not in err
    assert not (tmp_path / "bad.html").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run), "--epochs", "0,x"])
    assert exit_info.value.code == 2 and "argument --epochs: expected comma-separated int values" in capsys.readouterr().err


def test_the_snapshot_carries_the_activations_page_as_the_dashboard_draws_it(twin_run, tmp_path):
    from neuromapper.reduce import reduce
    from neuromapper.views.activations_painter import UNIT_INDEX, ActivationsPainter
    from neuromapper.views.state import SessionState

    embedding = reduce(twin_run, method="pca", progress=None)
    out = export_html(twin_run, tmp_path / "snap.html", embedding=embedding, progress=False)
    text = out.read_text()
    assert "<b>zero</b>" not in text  # hostile class names are JSON-escaped data, never markup
    act = page_data(out)["activations"]
    epochs = [int(e) for e in embedding["epoch"].values]
    assert act["orders"][0] == "unit index" and len(act["orders"]) == 4  # index, median, difference, twin - benign
    assert len(act["frames"]) == len(act["orders"]) * len(epochs) * len(act["layers"])
    state = SessionState(twin_run, embedding=embedding)
    painter = ActivationsPainter(state)
    try:
        assert set(act["legend"]) == {painter.label(group) for group in painter.groups}
        state.epoch = epochs[-1]
        painter.sort_by = UNIT_INDEX
        rgba, axis, rows = painter.picture("fc1")
        frame = act["frames"][f"unit index|{epochs[-1]}|fc1"]
        assert frame["rows"] == list(rows)
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(frame["png"])))), rgba)
        painter.sort_by = painter.groups[0]
        name = act["orders"][1]
        assert act["frames"][f"{name}|{epochs[-1]}|fc1"]["rows"] == list(painter.rows("fc1"))
        twin = painter.pairs[0]
        values = painter.values("fc1", f"twin:{twin}")
        dots = np.frombuffer(base64.b64decode(frame["dots"][painter.twin_label(twin)]), dtype=np.uint8)
        expected = np.round((np.clip(values, axis.lo, axis.hi) - axis.lo) / (axis.hi - axis.lo) * 254)
        np.testing.assert_array_equal(dots, expected[np.arange(len(values))])
        assert act["pair"][str(epochs[-1])].startswith(painter.twin_label(twin))
    finally:
        painter.dispose()
        state.dispose()
