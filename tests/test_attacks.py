"""Adversarial twins: the attacks on a briefly trained demo CNN, their config, and how they are stored."""

from __future__ import annotations

import json

import netCDF4
import numpy as np
import pytest
import torch
from torch import nn

from neuromapper import Recorder, RunError, open_run, store
from neuromapper.attacks import AttackConfig, fgsm, one_pixel, pgd, stratified_ids
from neuromapper.data import DigitCNN, load_dataset, stratified_split
from neuromapper.record import thumbnails
from neuromapper.store import twin_table

# Measured on this machine (2 shared cores, 1 and 2 torch threads) with the module's CNN: 3 epochs
# on 2,000 MNIST-5k digits (probe accuracy 0.927), 50 stratified pairs of which 44 are classified
# right. Share of those fooled: eps 0.1: FGSM 0.25, PGD-10 0.30-0.32; eps 0.2: FGSM 0.70-0.75,
# PGD-10 0.93. The floors leave about four pairs of room for another thread count or BLAS.
FOOL_FLOORS = {0.1: {"fgsm": 0.15, "pgd": 0.20}, 0.2: {"fgsm": 0.55, "pgd": 0.80}}


@pytest.fixture(scope="module")
def mnist():
    data = load_dataset("mnist5k")
    train, probe = stratified_split(data.y, 300, seed=0)
    return data, np.random.default_rng(0).choice(train, 2000, replace=False), probe  # mnist5k is sorted by class


@pytest.fixture(scope="module")
def cnn(mnist):
    """The demo's DigitCNN after 3 epochs on 2,000 digits (about 5 s), left in train mode."""
    data, train, _ = mnist
    torch.manual_seed(0)
    model = DigitCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = data.x[train], data.y[train]
    for _ in range(3):
        order = torch.randperm(len(y))
        for start in range(0, len(y), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


@pytest.fixture(scope="module")
def attacked_run(tmp_path_factory, mnist, cnn):
    """One capture of the trained CNN with FGSM/PGD at two eps, one-pixel twins and two instances."""
    data, _, probe = mnist
    path = tmp_path_factory.mktemp("attacks") / "run"
    config = AttackConfig(methods=("fgsm", "pgd", "one-pixel"), eps=(0.1, 0.2), per_class=5,
                          one_pixel_per_class=1, one_pixel_budget=600)
    with Recorder(cnn, layers=["conv1", "conv2", "fc1", "fc2"], probe=(data.x[probe], data.y[probe]),
                  sample_ids=probe, path=path, attacks=config) as rec:
        rec.capture(3, instances={"my/cat <b>&amp;": (data.x[0], 4), "plain": data.x[1][None]})
    return path, rec


def _fool_rates(ds, eps):
    table = twin_table(ds)
    prediction = ds["prediction"].isel(epoch=0).to_series()
    rates = {}
    for method in ("fgsm", "pgd"):
        rows = table[(table["method"] == method) & (table["eps"] == eps)]
        benign_right = prediction.loc[rows["source"].to_numpy()].to_numpy() == rows["label"].to_numpy()
        fooled = ds["twin_fooled"].isel(epoch=0).sel(twin=rows.index.to_numpy()).values
        rates[method] = fooled[benign_right].mean()
    return rates


@pytest.mark.parametrize("eps", [0.1, 0.2])
def test_fgsm_and_pgd_fool_the_demo_cnn_on_a_measured_share(attacked_run, eps):
    ds = open_run(attacked_run[0])
    rates = _fool_rates(ds, eps)
    assert rates["fgsm"] >= FOOL_FLOORS[eps]["fgsm"], rates
    assert rates["pgd"] >= FOOL_FLOORS[eps]["pgd"], rates
    assert rates["pgd"] >= rates["fgsm"], rates


def test_a_pair_counted_not_fooled_keeps_its_label_and_a_fooled_one_loses_it(attacked_run):
    ds = open_run(attacked_run[0])
    table = twin_table(ds)
    attacks = table[table["method"] != "instance"]
    benign = ds["prediction"].isel(epoch=0).to_series().loc[attacks["source"].to_numpy()].to_numpy()
    twin = ds["twin_prediction"].isel(epoch=0).sel(twin=attacks.index.to_numpy()).values
    fooled = ds["twin_fooled"].isel(epoch=0).sel(twin=attacks.index.to_numpy()).values
    label = attacks["label"].to_numpy()
    np.testing.assert_array_equal(label, ds["label"].sel(sample=attacks["source"].to_numpy()).values)
    right = benign == label
    assert (twin[right & (fooled == 0)] == label[right & (fooled == 0)]).all()
    assert (twin[fooled == 1] != label[fooled == 1]).all() and right[fooled == 1].all()
    assert fooled[~right].sum() == 0  # a pair the model already got wrong is never counted as fooled


def test_perturbations_stay_within_eps_and_the_input_range(mnist, cnn):
    data, _, probe = mnist
    x, y = data.x[probe[:40]], data.y[probe[:40]]
    for eps in (0.1, 0.2):
        for adv in (fgsm(cnn, x, y, eps), pgd(cnn, x, y, eps, steps=5),
                    pgd(cnn, x, y, eps, steps=5, random_start=True, seed=3)):
            assert float((adv - x).abs().max()) <= eps + 1e-6
            assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    # a narrower range is respected too, and FGSM moves every pixel it may by exactly eps
    adv = fgsm(cnn, x, y, 0.05, lo=-1.0, hi=2.0)
    assert torch.allclose((adv - x).abs(), torch.full_like(x, 0.05), atol=1e-6) or float((adv - x).abs().min()) == 0
    assert pgd(cnn, x, y, 0.1, random_start=True, seed=1).equal(pgd(cnn, x, y, 0.1, random_start=True, seed=1))


def test_recorded_perturbation_and_evaluations(attacked_run):
    ds = open_run(attacked_run[0])
    table = twin_table(ds)
    pert = ds["twin_perturbation"].isel(epoch=0).to_series()
    evaluations = ds["twin_evaluations"].isel(epoch=0).to_series()
    for method in ("fgsm", "pgd"):
        for eps in (0.1, 0.2):
            rows = table.index[(table["method"] == method) & (table["eps"] == eps)]
            assert len(rows) == 50
            assert (pert[rows] <= eps + 1e-6).all() and (pert[rows] > eps / 2).all()
            assert (evaluations[rows] == (1 if method == "fgsm" else 10)).all()
    pixel = table.index[table["method"] == "one-pixel"]
    assert len(pixel) == 10  # one_pixel_per_class=1
    assert ((evaluations[pixel] >= 1) & (evaluations[pixel] <= 600)).all()
    instances = table.index[table["method"] == "instance"]
    assert np.isnan(pert[instances]).all() and (evaluations[instances] == 0).all()


def _changed_locations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many (y, x) locations differ between each pair of images (N, C, H, W)."""
    return (a != b).any(dim=1).flatten(1).sum(dim=1)


def test_one_pixel_changes_exactly_one_pixel_and_respects_its_budget(mnist, cnn):
    data, _, probe = mnist
    x, y = data.x[probe[:6]], data.y[probe[:6]]
    for budget in (1, 40, 200):
        for order in ("gradient", "raster"):
            adv, spent = one_pixel(cnn, x, y, budget, batch_size=64, order=order)
            assert (spent <= budget).all() and (spent >= 1).all()
            changed = _changed_locations(adv, x)
            if budget == 1 and order == "gradient":
                assert (changed == 0).all()  # the budget went on the gradient: nothing tried
            else:
                assert (changed == 1).all(), changed
            assert set(adv[adv != x].tolist()) <= {0.0, 1.0}  # corner colours only
    # (N, H, W) inputs reach the model in that shape and come back in it
    flat = nn.Sequential(nn.Unflatten(1, (1, 28)), cnn)
    adv, _ = one_pixel(flat, x[:, 0], y, 50)
    assert adv.shape == x[:, 0].shape and (_changed_locations(adv[:, None], x) == 1).all()


def test_one_pixel_reports_no_fooling_pixel_found_as_a_result(mnist, cnn):
    data, _, probe = mnist
    x, y = data.x[probe[:10]], data.y[probe[:10]]
    with torch.no_grad():
        right = cnn.eval()(x).argmax(1) == y
    cnn.train()
    adv, spent = one_pixel(cnn, x[right], y[right], budget=2000, batch_size=512)
    with torch.no_grad():
        fooled = cnn.eval()(adv).argmax(1) != y[right]
    cnn.train()
    useful = (x[right] != 0).flatten(1).sum(1) + (x[right] != 1).flatten(1).sum(1)  # distinct candidates
    # every search that found nothing tried every candidate (plus the gradient) and stopped there
    assert (spent[~fooled] == useful[~fooled] + 1).all()
    assert (_changed_locations(adv, x[right]) == 1).all()
    # a budget smaller than the candidate list ends the search, fooled or not
    _, spent = one_pixel(cnn, x[right], y[right], budget=100, batch_size=64)
    assert (spent <= 100).all()


def test_one_pixel_on_rgb_images_tries_eight_corner_colours():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    x = torch.rand(5, 3, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)
    adv, spent = one_pixel(model, x, y, budget=6 * 6 * 8 + 1, lo=0.0, hi=1.0, batch_size=16)
    assert (_changed_locations(adv, x) == 1).all()
    diff = (adv != x).any(dim=1)
    for i in range(5):
        colour = adv[i][:, diff[i]].flatten()
        assert set(colour.tolist()) <= {0.0, 1.0} and len(colour) == 3  # all channels of the one location


def test_attacks_leave_the_model_as_they_found_it(mnist):
    data, _, probe = mnist
    torch.manual_seed(0)
    model = DigitCNN(width=8)
    model.train()
    model.fc1[1].eval()  # a mixed mode the attacks must give back exactly
    model.conv1[0].weight.requires_grad_(False)  # a frozen layer stays frozen
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    x, y = data.x[probe[:6]], data.y[probe[:6]]
    with torch.no_grad():  # attacks work from inside no_grad too
        fgsm(model, x, y, 0.1)
        pgd(model, x, y, 0.1, steps=3, random_start=True)
        one_pixel(model, x, y, 20)
    assert all(p.grad is None for p in model.parameters())
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"torch.inference_mode\(\) forbids"):
        fgsm(model, x, y, 0.1)
    assert {name: m.training for name, m in model.named_modules()} == modes


def test_recording_twins_leaves_no_gradient_and_restores_the_mode(tmp_path, mnist):
    data, _, probe = mnist
    torch.manual_seed(0)
    model = DigitCNN(width=8).train()
    with Recorder(model, probe=(data.x[probe[:60]], data.y[probe[:60]]), path=tmp_path / "run",
                  attacks={"methods": ["fgsm", "pgd", "one-pixel"], "per_class": 1, "one_pixel_budget": 30}) as rec:
        rec.capture(0)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_recorded_twin_activations_equal_a_hook_on_the_attacked_image(attacked_run, mnist, cnn):
    path, rec = attacked_run
    data, _, probe = mnist
    ds = open_run(path)
    ids = list(rec.attacks.twin_ids)  # all 50, as one batch: the same gradient, bit for bit
    x, y = data.x[ids], data.y[ids]  # sample ids are dataset indices here
    cnn.eval()
    adv = fgsm(cnn, x, y, 0.2, lo=rec.attacks.lo, hi=rec.attacks.hi)
    seen = {}
    handles = [getattr(cnn, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
               for name in ("conv2", "fc1")]
    try:
        with torch.no_grad():
            logits = cnn(adv)
    finally:
        for handle in handles:
            handle.remove()
    cnn.train()
    twins = [store.twin_id("fgsm", i, 0.2) for i in ids]
    recorded = ds["twin_activation"].isel(epoch=0).sel(twin=twins)
    np.testing.assert_allclose(recorded.sel(layer="conv2").values[:, :64], seen["conv2"].mean(dim=(2, 3)).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(recorded.sel(layer="fc1").values, seen["fc1"].numpy(), rtol=1e-5, atol=1e-5)
    assert np.isnan(recorded.sel(layer="conv1").values[:, 32:]).all()  # NaN-padded like `activation`
    np.testing.assert_allclose(ds["twin_logits"].isel(epoch=0).sel(twin=twins).values, logits.numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ds["twin_prediction"].isel(epoch=0).sel(twin=twins).values, logits.argmax(1).numpy())
    # thumbnails on the probe images' scale, so a twin and its source compare pixel for pixel
    np.testing.assert_array_equal(ds["twin_image"].isel(epoch=0).sel(twin=twins).values,
                                  thumbnails(adv, value_range=rec._thumbnail_range))
    source = ds["image"].sel(sample=ids).values.astype(int)
    assert np.abs(ds["twin_image"].isel(epoch=0).sel(twin=twins).values.astype(int) - source).max() <= round(0.2 * 255) + 1


def test_instances_are_recorded_like_probe_samples(attacked_run, mnist, cnn):
    path, _ = attacked_run
    data, _, _ = mnist
    ds = open_run(path)
    table = twin_table(ds)
    assert table.loc["instance/my/cat <b>&amp;"].to_dict() == {
        "method": "instance", "eps": pytest.approx(np.nan, nan_ok=True), "source": -1, "name": "my/cat <b>&amp;",
        "label": 4}
    assert table.loc["instance/plain", "label"] == -1
    cnn.eval()
    with torch.no_grad():
        logits = cnn(data.x[:2])
    cnn.train()
    np.testing.assert_allclose(ds["twin_logits"].isel(epoch=0).sel(twin=["instance/my/cat <b>&amp;", "instance/plain"]).values,
                               logits.numpy(), rtol=1e-5, atol=1e-5)
    assert (ds["twin_fooled"].isel(epoch=0).sel(twin=table.index[table["method"] == "instance"]) == 0).all()


def test_twin_table_parses_every_kind_of_id():
    import xarray as xr

    ids = ["fgsm/12", "pgd@0.05/3", "fgsm@0.2/12", "one-pixel/7", "instance/a/b <i>x</i>", "instance/ünï/"]
    ds = xr.Dataset({"twin_label": (("epoch", "twin"), np.array([[1, 2, 1, 5, -1, 3], [1, np.nan, 1, 5, 4, 3]]))},
                    coords={"twin": ids, "epoch": [0, 1]}, attrs={"attacks": json.dumps({"eps": [0.1]})})
    table = twin_table(ds)
    assert list(table.index) == ids
    assert table["method"].tolist() == ["fgsm", "pgd", "fgsm", "one-pixel", "instance", "instance"]
    np.testing.assert_array_equal(table["eps"].to_numpy(), [0.1, 0.05, 0.2, np.nan, np.nan, np.nan])
    assert table["source"].tolist() == [12, 3, 12, 7, -1, -1]
    assert table["name"].tolist() == ["", "", "", "", "a/b <i>x</i>", "ünï/"]
    assert table["label"].tolist() == [1, 2, 1, 5, 4, 3]  # the latest epoch that has the twin
    assert twin_table(xr.Dataset()).columns.tolist() == ["method", "eps", "source", "name", "label"]
    for bad in ("fgsm", "cw/3", "one-pixel@0.1/3", "fgsm/x", "pgd@big/2"):
        with pytest.raises(RunError, match="twin id"):
            twin_table(ds.assign_coords(twin=[bad, *ids[1:]]))
    assert store.twin_id("fgsm", 3, 8 / 255) == f"fgsm@{8 / 255!r}/3"
    assert twin_table(xr.Dataset(coords={"twin": [store.twin_id("pgd", 3, 8 / 255)]}))["eps"].iloc[0] == 8 / 255


def _small_recorder(path, digits, **kwargs):
    torch.manual_seed(0)
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    return Recorder(model, probe=(digits.x[:100], digits.y[:100]), path=path, **kwargs), model


def test_open_run_joins_epochs_with_and_without_one_pixel_twins(tmp_path, digits):
    config = {"methods": ["fgsm", "one-pixel"], "per_class": 2, "one_pixel_epochs": [1], "one_pixel_budget": 40}
    rec, _ = _small_recorder(tmp_path / "run", digits, attacks=config)
    with rec:
        for epoch in range(3):
            rec.capture(epoch, instances={"mine": digits.x[500]} if epoch == 2 else None)
    ds = open_run(tmp_path / "run")
    table = twin_table(ds)
    assert ds.sizes["twin"] == 20 + 20 + 1 and list(table["method"].unique()) == ["fgsm", "one-pixel", "instance"]
    pixel = table.index[table["method"] == "one-pixel"]
    fgsm_ids = table.index[table["method"] == "fgsm"]
    for name in ("twin_fooled", "twin_prediction", "twin_perturbation", "twin_evaluations", "twin_label"):
        values = ds[name].sel(twin=pixel).values
        assert np.isnan(values[[0, 2]]).all() and np.isfinite(values[1]).all(), name
        assert np.isfinite(ds[name].sel(twin=fgsm_ids).values).all(), name
    assert np.isnan(ds["twin_activation"].sel(twin=pixel, epoch=[0, 2]).values).all()
    assert np.isnan(ds["twin_image"].sel(twin="instance/mine", epoch=[0, 1]).values).all()
    assert ds["twin_image"].sel(twin="instance/mine", epoch=2).notnull().all()
    # the probe side is untouched by the twins
    assert ds["activation"].shape == (3, 4, 100, 128) and np.isfinite(ds["prediction"].values).all()
    assert json.loads(ds.attrs["attacks"])["one_pixel_epochs"] == [1]


def test_epochs_without_any_twin_concatenate_with_epochs_that_have_them(tmp_path, digits):
    rec, _ = _small_recorder(tmp_path / "run", digits,
                             attacks={"methods": ["one-pixel"], "per_class": 1, "one_pixel_epochs": [1], "one_pixel_budget": 20})
    with rec:
        for epoch in range(3):
            rec.capture(epoch)
    with netCDF4.Dataset(store.epoch_file(tmp_path / "run", 0)) as nc:
        assert "twin" not in nc.dimensions
    ds = open_run(tmp_path / "run")
    assert ds.sizes["twin"] == 10
    assert np.isnan(ds["twin_fooled"].sel(epoch=[0, 2]).values).all() and np.isfinite(ds["twin_fooled"].sel(epoch=1)).all()


def test_a_schema_1_run_still_opens(tmp_path, digits):
    rec, _ = _small_recorder(tmp_path / "old", digits)
    with rec:
        rec.capture(0)
        rec.capture(1)
    for file in [tmp_path / "old" / "run.nc", *sorted((tmp_path / "old" / "epochs").glob("*.nc"))]:
        with netCDF4.Dataset(file, "a") as nc:  # exactly what NeuroMapper 1 wrote: no twins, schema 1
            nc.setncattr("neuromapper_schema", 1)
    ds = open_run(tmp_path / "old")
    assert ds.attrs["neuromapper_schema"] == 1 and "twin" not in ds.dims and "attacks" not in ds.attrs
    assert twin_table(ds).empty
    # and it can be resumed without attacks (with attacks it is another setup: refused by name)
    rec, _ = _small_recorder(tmp_path / "old", digits, resume=True)
    with rec:
        rec.capture(2)
    with pytest.raises(RunError, match="attacks: none in the run"):
        _small_recorder(tmp_path / "old", digits, resume=True, attacks={"per_class": 1})
    assert open_run(tmp_path / "old").sizes["epoch"] == 3


def test_resume_with_attacks_continues_with_the_same_pairs(tmp_path, digits):
    config = {"methods": ["fgsm", "pgd"], "eps": [0.1, 0.3], "per_class": 2, "pgd_steps": 3}
    rec, model = _small_recorder(tmp_path / "run", digits, attacks=config)
    with rec:
        rec.capture(0)
    first = rec.attacks.twin_ids
    rec, _ = _small_recorder(tmp_path / "run", digits, attacks=config, resume=True)
    assert rec.attacks.twin_ids == first and rec.epochs == [0]
    with rec:
        rec.capture(1, instances={"x": digits.x[200]})
    ds = open_run(tmp_path / "run")
    assert ds.sizes["epoch"] == 2 and ds.sizes["twin"] == 2 * 2 * 20 + 1
    assert np.isfinite(ds["twin_fooled"].sel(twin="pgd@0.3/" + str(first[0])).values).all()
    with pytest.raises(RunError, match=r"attacks: \{.*\"eps\": \[0.1, 0.3\].* in the run, .*\"eps\": \[0.2\]"):
        _small_recorder(tmp_path / "run", digits, attacks={**config, "eps": 0.2}, resume=True)


def test_twin_ids_pick_the_pairs_and_the_stratified_pick_is_fixed(tmp_path, digits):
    ids = stratified_ids(digits.y[:100].numpy(), np.arange(100) + 1000, per_class=3, seed=0)
    assert len(ids) == 30 and np.array_equal(ids, np.sort(ids))
    assert np.bincount(digits.y[ids - 1000].numpy(), minlength=10).tolist() == [3] * 10
    assert np.array_equal(ids, stratified_ids(digits.y[:100].numpy(), np.arange(100) + 1000, per_class=3, seed=0))
    assert not np.array_equal(ids, stratified_ids(digits.y[:100].numpy(), np.arange(100) + 1000, per_class=3, seed=1))
    labels = np.array([0, 0, 0, 1])
    assert stratified_ids(labels, np.arange(4), per_class=2).tolist() in ([0, 1, 3], [0, 2, 3], [1, 2, 3])

    rec, _ = _small_recorder(tmp_path / "run", digits, sample_ids=np.arange(100) * 7, twin_ids=[0, 14, 21])
    with rec:
        rec.capture(0)
    assert rec.attacks.methods == ("fgsm", "pgd")  # twin_ids alone: the default attacks
    assert twin_table(open_run(tmp_path / "run"))["source"].tolist() == [0, 14, 21, 0, 14, 21]


@pytest.mark.parametrize("kwargs, error, match", [
    ({"attacks": {"methods": ["cw"]}}, ValueError, r"methods: expected one or more distinct of \['fgsm', 'pgd', 'one-pixel'\]"),
    ({"attacks": {"methods": []}}, ValueError, "methods: "),
    ({"attacks": {"eps": -0.1}}, ValueError, "eps: expected one positive number"),
    ({"attacks": {"eps": [0.1, float("nan")]}}, ValueError, "eps: "),
    ({"attacks": {"eps": "0.1"}}, ValueError, "eps: "),
    ({"attacks": {"pgd_steps": 0}}, ValueError, "pgd_steps: expected a positive integer"),
    ({"attacks": {"pgd_step_size": 0}}, ValueError, "pgd_step_size: "),
    ({"attacks": {"one_pixel_budget": 2.5}}, ValueError, "one_pixel_budget: expected a positive integer"),
    ({"attacks": {"one_pixel_epochs": [-1]}}, ValueError, "one_pixel_epochs: expected non-negative integers"),
    ({"attacks": {"one_pixel_epochs": "0"}}, ValueError, "one_pixel_epochs: expected a list of integers"),
    ({"attacks": {"per_class": 0}}, ValueError, "per_class: expected a positive integer"),
    ({"attacks": {"per_class": True}}, ValueError, "per_class: "),
    ({"attacks": {"twin_ids": [1, 1]}}, ValueError, "twin_ids: expected distinct probe sample ids"),
    ({"attacks": {"lo": 1.0, "hi": 0.0}}, ValueError, "lo, hi: expected lo < hi"),
    ({"attacks": {"seed": -1}}, ValueError, "seed: "),
    ({"attacks": {"eps_list": [0.1]}}, ValueError, r"attacks: unknown field\(s\) \['eps_list'\]; valid fields: \['methods'"),
    ({"attacks": "fgsm"}, TypeError, "attacks: expected an AttackConfig, a dict of its fields or None"),
    ({"twin_ids": [0, 5000]}, ValueError, r"twin_ids: \[5000\] are not probe sample ids \(the probe's ids are 100 ids from 0 to 99\)"),
])
def test_bad_attack_configs_name_the_argument(tmp_path, digits, kwargs, error, match):
    with pytest.raises(error, match=match):
        _small_recorder(tmp_path / "run", digits, **kwargs)


def test_attacks_need_float_inputs_and_one_pixel_needs_images(tmp_path):
    embed = nn.Sequential(nn.Embedding(20, 4), nn.Flatten(), nn.Linear(12, 3))
    tokens, y = torch.randint(0, 20, (30, 3)), torch.arange(30) % 3
    with pytest.raises(ValueError, match="attacks: FGSM, PGD and one-pixel attacks change the inputs, which must be floating point"):
        Recorder(embed, layers=["2"], probe=(tokens, y), path=tmp_path / "a", attacks={})
    mlp = nn.Sequential(nn.Linear(6, 3))
    with pytest.raises(ValueError, match="attacks: the one-pixel attack needs images"):
        Recorder(mlp, layers=["0"], probe=(torch.rand(30, 6), y), path=tmp_path / "b", attacks={"methods": ["one-pixel"]})
    # tabular inputs take FGSM/PGD fine, and have no thumbnails
    with Recorder(mlp, layers=["0"], probe=(torch.rand(30, 6), y), path=tmp_path / "c", attacks={"per_class": 2}) as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "c")
    assert ds.sizes["twin"] == 12 and "twin_image" not in ds


def test_bad_instances_are_refused_before_anything_is_recorded(tmp_path, digits):
    rec, _ = _small_recorder(tmp_path / "run", digits)
    with rec:
        with pytest.raises(ValueError, match=r"instances\['big'\]: expected one input of shape \(1, 8, 8\)"):
            rec.capture(0, instances={"big": torch.zeros(1, 9, 9)})
        with pytest.raises(ValueError, match=r"instances\['x'\]: label 'cat' is not a class"):
            rec.capture(0, instances={"x": (digits.x[0], "cat")})
        with pytest.raises(ValueError, match="instances: names must be non-empty strings"):
            rec.capture(0, instances={"": digits.x[0]})
        rec.capture(0, instances={"by name": (digits.x[0], "3")})
    assert rec.epochs == [0]
    assert twin_table(open_run(tmp_path / "run"))["label"].tolist() == [3]


def test_fgsm_and_pgd_read_a_one_logit_head_and_a_selector(digits):
    torch.manual_seed(0)
    head = nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
    x, y = digits.x[:20], (digits.y[:20] > 4).long()
    adv = fgsm(head, x, y, 0.1)
    with torch.no_grad():  # the step raises the loss of the true class for every sample
        z, z_adv = head(x)[:, 0], head(adv)[:, 0]
    sign = torch.where(y == 1, -1.0, 1.0)
    assert ((z_adv - z) * sign > 0).all()

    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

        def forward(self, x):
            return {"logits": self.net(x)}

    model = Dict()
    adv = pgd(model, digits.x[:8], digits.y[:8], 0.1, steps=2, logits_selector="logits")
    assert adv.shape == (8, 1, 8, 8)
