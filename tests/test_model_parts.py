"""What schema 3 records for the Model and Training pages: spotlight feature maps, weights, the
decision-boundary grid and the probe's input features, each checked against the model itself."""

from __future__ import annotations

import netCDF4
import numpy as np
import pytest
import torch
from torch import nn

from neuromapper import Recorder, RunError, open_run, store
from neuromapper.data import DigitCNN, DigitMLP, MoonsMLP, load_moons, small_resnet18
from neuromapper.model_parts import grid_points


def _train(model, x, y, steps=20):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_feature_maps_and_kernels_equal_the_models_own_at_each_epoch(tmp_path, digits):
    torch.manual_seed(0)
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    x, y = digits.x[:200], digits.y[:200]
    seen = []
    with Recorder(model, layers=["conv1", "conv2", "fc2"], probe=(x, y), path=tmp_path / "run") as rec:
        for epoch in range(2):
            if epoch:
                _train(model, digits.x[200:600], digits.y[200:600])
            rec.capture(epoch)
            with torch.no_grad():
                model.eval()
                spot = x[torch.as_tensor([int(i) for i in rec.sample_ids[rec._spotlight_rows]])]
                maps1 = model.conv1(spot)
                seen.append((maps1.numpy(), model.conv2(maps1).numpy(), model.conv1[0].weight.numpy().copy(),
                             model.conv2[0].weight.numpy().copy()))
    ds = open_run(tmp_path / "run")
    ids = store.spotlight_ids(ds)
    assert len(ids) == 20 and sorted(np.bincount(y.numpy()[ids])) == [2] * 10  # two per class by default
    assert store.map_layers(ds) == ["conv1", "conv2"]  # fc2 outputs no feature map
    assert store.weight_layers(ds) == ["conv1", "conv2"] and store.weight_kind(ds, "conv2") == "conv"
    for epoch, (conv1, conv2, w1, w2) in enumerate(seen):
        for layer, expected in (("conv1", conv1), ("conv2", conv2)):
            got = store.feature_maps(ds, layer).sel(epoch=epoch).values
            assert got.shape == expected.shape  # (spotlight, channel, y, x)
            step = (expected.max() - expected.min()) / 65532  # 16-bit packing: half a step at most
            np.testing.assert_allclose(got, expected, atol=step)
        np.testing.assert_array_equal(store.weights(ds, "conv1").sel(epoch=epoch).values, w1)
        np.testing.assert_array_equal(store.weights(ds, "conv2").sel(epoch=epoch).values, w2)
    assert not np.allclose(seen[0][2], seen[1][2])  # training moved the kernels the test compares
    assert store.lacks(ds) == ["a decision boundary: recorded only for models on 2-D inputs"]


def test_the_weight_budget_keeps_the_first_conv_and_says_what_it_skipped(tmp_path, digits):
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    with Recorder(model, layers=["conv2", "fc1"], probe=(digits.x[:50], digits.y[:50]), path=tmp_path / "run",
                  weight_budget=1000, spotlight=[3, 7]) as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "run")
    assert store.weight_layers(ds) == ["conv1.0"]  # not recorded itself, but the first conv is always kept
    assert store.skipped_weights(ds) == [{"layer": "conv2", "bytes": 16 * 8 * 9 * 4,
                                          "reason": "over the per-epoch weight budget of 1,000 bytes (weight_budget=)"}]
    assert store.spotlight_ids(ds).tolist() == [3, 7] and store.map_layers(ds) == ["conv2"]


def test_a_resnet_block_keeps_the_kernels_of_the_conv_that_makes_its_channels(tmp_path):
    torch.manual_seed(0)
    model = small_resnet18(in_channels=3, n_classes=4)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    with Recorder(model, layers=["layer1", "layer2.1", "fc"], probe=(x, y), path=tmp_path / "run", spotlight_per_class=1) as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "run")
    table = {e["layer"]: e["module"] for e in store._weight_table(ds)}
    assert table == {"conv1": "conv1", "layer1": "layer1.1.conv2", "layer2.1": "layer2.1.conv2"}
    np.testing.assert_array_equal(store.weights(ds, "layer2.1").sel(epoch=0).values,
                                  model.layer2[1].conv2.weight.detach().numpy())
    assert store.feature_maps(ds, "layer2.1").shape == (1, 4, 128, 8, 8)


def test_spotlight_ids_must_be_probe_ids(tmp_path, digits):
    with pytest.raises(ValueError, match=r"spotlight: ids \[999\] are not probe sample ids"):
        Recorder(DigitCNN(1, 10, 8, 8), probe=(digits.x[:50], digits.y[:50]), path=tmp_path / "run", spotlight=[1, 999])


def test_a_linear_first_layer_on_images_keeps_each_neurons_weights_as_an_image(digits_mlp_run, tmp_path, digits):
    ds = open_run(digits_mlp_run)
    assert store.weight_layers(ds) == ["fc1.1"] and store.weight_kind(ds, "fc1.1") == "linear-image"
    w = store.weights(ds, "fc1.1")
    assert w.shape == (3, 16, 1, 8, 8)
    model = DigitMLP(image_size=8, hidden=16)
    flat = model.fc1[1].weight.detach().numpy()
    with Recorder(model, layers=["fc2"], probe=(digits.x[:30], digits.y[:30]), path=tmp_path / "one") as rec:
        rec.capture(0)
    np.testing.assert_array_equal(store.weights(open_run(tmp_path / "one"), "fc1.1").sel(epoch=0).values[:, 0].reshape(16, 64), flat)
    assert store.map_layers(ds) == [] and store.spotlight_ids(ds).size == 0
    assert store.input_features(ds).shape == (300, 64) and ds.attrs["input_pca"] == 0
    np.testing.assert_array_equal(store.input_features(ds).values, digits.x[:300].reshape(300, 64).numpy())


def test_wide_inputs_are_kept_pca_compressed(tmp_path):
    x, y = torch.rand(120, 1, 16, 16), torch.arange(120) % 3
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 3))
    with Recorder(model, layers=["1"], probe=(x, y), path=tmp_path / "run") as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "run")
    assert store.input_features(ds).shape == (120, 50) and ds.attrs["input_pca"] == 1
    with Recorder(model, layers=["1"], probe=(x, y), path=tmp_path / "none", record_inputs=False) as rec:
        rec.capture(0)
    assert store.input_features(open_run(tmp_path / "none")) is None


@pytest.mark.parametrize("one_logit", [False, True])
def test_the_boundary_grid_is_the_models_softmax_over_the_grid_at_each_epoch(tmp_path, one_logit):
    torch.manual_seed(0)
    data = load_moons(400)
    model = MoonsMLP(n_classes=1 if one_logit else 2)
    seen = []
    with Recorder(model, layers=["fc2"], probe=(data.x[:200], data.y[:200]), path=tmp_path / "run",
                  boundary_resolution=50) as rec:
        for epoch in range(2):
            if epoch:
                opt = torch.optim.Adam(model.parameters(), lr=0.05)
                for _ in range(30):
                    out = model(data.x[200:])
                    loss = (nn.functional.binary_cross_entropy_with_logits(out[:, 0], data.y[200:].float()) if one_logit
                            else nn.functional.cross_entropy(out, data.y[200:]))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            rec.capture(epoch)
            seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    ds = open_run(tmp_path / "run")
    grid = store.boundary(ds)
    xs, ys = ds["grid_x"].values, ds["grid_y"].values
    assert grid.shape == (2, 50, 50, 2) and len(xs) == len(ys) == 50
    x = data.x[:200].numpy()
    assert xs[0] < x[:, 0].min() and xs[-1] > x[:, 0].max() and ys[0] < x[:, 1].min() and ys[-1] > x[:, 1].max()
    for epoch, state in enumerate(seen):
        model.load_state_dict(state)
        with torch.no_grad():
            out = model(grid_points(xs, ys))
        expected = (torch.stack([1 - torch.sigmoid(out[:, 0]), torch.sigmoid(out[:, 0])], 1) if one_logit
                    else torch.softmax(out, 1)).numpy().reshape(50, 50, 2)
        np.testing.assert_allclose(grid.sel(epoch=epoch).values, expected, atol=1 / 65532)
    np.testing.assert_array_equal(store.input_features(ds).values, x)


def test_the_moons_demo_learns_the_moons_and_its_half_contour_separates_them(moons_run):
    ds = open_run(moons_run)
    last = int(ds["epoch"].values[-1])
    assert last == 100 and float(ds["metric"].sel(epoch=last, metric_name="val_acc")) >= 0.95
    p_lower = store.boundary(ds).sel(epoch=last, **{"class": "lower moon"}).values
    xs, ys = ds["grid_x"].values, ds["grid_y"].values
    points, labels = store.input_features(ds).values, ds["label"].values
    # the side of the 0.5 contour each probe point falls on (its grid cell) is its moon for >= 95% of points
    col = np.clip(np.searchsorted(xs, points[:, 0]), 0, len(xs) - 1)
    row = np.clip(np.searchsorted(ys, points[:, 1]), 0, len(ys) - 1)
    assert ((p_lower[row, col] > 0.5) == (labels == 1)).mean() >= 0.95
    assert 0.2 < (p_lower > 0.5).mean() < 0.8  # and the contour runs through the grid, not around it
    assert store.lacks(ds) == ["feature maps: no recorded layer outputs a feature map (channels x height x width)",
                               "layer weights: the model has no conv layer, nor a Linear first layer on image inputs"]


def test_a_schema_2_run_opens_and_says_what_it_lacks(tmp_path, digits):
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    with Recorder(model, layers=["conv1", "fc2"], probe=(digits.x[:40], digits.y[:40]), path=tmp_path / "old",
                  spotlight=[], record_inputs=False) as rec:
        rec.capture(0)
    # rewrite the files as schema 2 wrote them: the first conv's kernels as first_conv_weight
    file = store.epoch_file(tmp_path / "old", 0)
    old = open_run(tmp_path / "old").isel(epoch=[0]).load()
    part = store.open_netcdf(file).load().rename({"weight_0": "first_conv_weight", "out_channel_0": "out_channel", "in_channel_0": "in_channel",
                            "kernel_y_0": "kernel_y", "kernel_x_0": "kernel_x"})
    part.attrs["neuromapper_schema"] = 2
    store.write_atomic(part, file, store.compression_encoding(part, 1))
    with netCDF4.Dataset(tmp_path / "old" / "run.nc", "a") as nc:
        for name in ("map_layers", "weight_layers", "skipped_weights", "input_pca"):
            nc.delncattr(name)
        nc.setncattr("first_conv_layer", "conv1.0")
        nc.setncattr("neuromapper_schema", 2)
    ds = open_run(tmp_path / "old")
    assert store.weight_layers(ds) == ["conv1.0"]
    np.testing.assert_array_equal(store.weights(ds, "conv1.0").values, old["weight_0"].values)
    assert store.lacks(ds) == [f"{what} (recorded from schema 3 on; this run is schema 2)" for what in
                               ("feature maps", "a decision boundary", "the probe's input features")]
    with pytest.raises(RunError, match=r"layer 'conv2' has no recorded feature maps in this run; layers with feature maps: \[\]"):
        store.feature_maps(ds, "conv2")


def test_the_views_read_the_schema_3_parts_through_run_facts(small_run):
    from neuromapper.views.run import RunFacts

    run = RunFacts.open(small_run)
    assert run.map_layers == ["conv1", "conv2"] and len(run.spotlight) == 20
    maps = run.feature_maps("conv2", run.epochs[-1])
    assert maps.shape == (20, 16, 2, 2) and maps.dtype == np.float32
    kernels = [run.weights("conv1", e) for e in run.epochs]
    assert run.weight_range("conv1") == max(float(np.abs(k).max()) for k in kernels)
    assert run.weight_kind("conv1") == "conv" and run.boundary(0) is None and run.boundary_grid is None
    assert run.inputs.shape == (300, 64)


def test_stored_weights_are_those_of_the_captured_epoch_even_if_training_goes_on_before_the_write(tmp_path, digits, monkeypatch):
    """The epoch is written on a background thread while training changes the weights in place:
    the recorder must store a copy taken at capture time, not a view of the live parameters."""
    import threading

    release = threading.Event()
    append = store.append_epoch

    def held_append(*args, **kwargs):  # the write waits until training has moved the weights
        release.wait(10)
        return append(*args, **kwargs)

    monkeypatch.setattr(store, "append_epoch", held_append)
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    captured = model.conv1[0].weight.detach().numpy().copy()
    with Recorder(model, layers=["conv1"], probe=(digits.x[:40], digits.y[:40]), path=tmp_path / "run") as rec:
        rec.capture(0)
        with torch.no_grad():
            model.conv1[0].weight.add_(1.0)  # an optimiser step, in place
        release.set()
    np.testing.assert_array_equal(store.weights(open_run(tmp_path / "run"), "conv1").sel(epoch=0).values, captured)
