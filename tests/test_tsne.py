"""The ``tsne`` reduction method on real digits: cached like the others, aligned, faithful, extendable.

The run is scikit-learn's real 8x8 digits (400 samples, 64 standardised pixels) recorded as one
layer over three epochs with shrinking noise (0.9, 0.6, 0.3 standard deviations), so that the
classes sharpen from epoch to epoch as they do in training while the picture should stay put.
Quality is asserted with thresholds (kNN accuracy, trustworthiness, Procrustes disparity), never
with coordinates.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr

import neuromapper
from neuromapper import layer_activations, open_run, store
from neuromapper import methods as M
from neuromapper.quality import disparity

NOISE = (0.9, 0.6, 0.3)


@pytest.fixture(scope="module")
def digits_master(tmp_path_factory):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, labels = digits.data[:400], digits.target[:400]
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    path = tmp_path_factory.mktemp("tsne") / "digits"
    store.create_run(path, labels=labels, class_names=[str(c) for c in range(10)], layers=["pixels"],
                     layer_units=[64], layer_kinds=["input"])
    rng = np.random.default_rng(0)
    for epoch, noise in enumerate(NOISE):
        activations = (x + noise * rng.normal(size=x.shape)).astype(np.float32)
        store.append_epoch(path, store.epoch_dataset(epoch, layers=["pixels"], activations=[activations],
                                                     logits=np.zeros((len(labels), 10)), loss=np.zeros(len(labels))))
    return path


@pytest.fixture(scope="module")
def reduced(digits_master, tmp_path_factory):
    """A copy of the run with its t-SNE embedding stored (computed once for the tests that read it)."""
    run = shutil.copytree(digits_master, tmp_path_factory.mktemp("tsne") / "reduced")
    return run, neuromapper.reduce(run, method="tsne", n_jobs=1)


def test_tsne_round_trips_through_the_cache(reduced, monkeypatch):
    run, emb = reduced
    assert emb.attrs["method"] == "tsne" and emb.attrs["backend"] == "openTSNE"
    assert emb.sizes == {"epoch": 3, "layer": 1, "sample": 400, "xy": 2} and np.isfinite(emb.values).all()

    monkeypatch.delitem(M.METHODS, "tsne")  # recomputing would now fail: the method cannot be found
    calls = []
    for hit in (neuromapper.reduce(run, method="tsne", n_jobs=1, progress=lambda *a: calls.append(a)),
                neuromapper.find_embedding(run, method="tsne"), neuromapper.load_embedding(run, emb.attrs["key"])):
        xr.testing.assert_identical(hit, emb)
    assert calls == [(3, 3, "loaded from cache")]
    assert neuromapper.find_embedding(run, method="tsne", seed=1) is None
    assert [e["method"] for e in neuromapper.list_embeddings(run)] == ["tsne"]


def test_tsne_epochs_are_aligned_by_initialisation_and_separate_the_digits(reduced):
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    run, emb = reduced
    ds = open_run(run)
    activations = layer_activations(ds, "pixels").values.astype(np.float32)
    aligned = emb["disparity"].values[1:, 0]
    # the same method with each epoch fitted on its own, from another seed
    alone = [M.tsne_per_epoch(activations[e:e + 1], 15, 0.1, seed=10 + e)[0][0] for e in range(3)]
    independent = np.array([disparity(a, b) for a, b in zip(alone[:-1], alone[1:])])
    assert aligned.max() < 0.5 * independent.min(), (aligned, independent)  # measured: 0.10, 0.05 vs 0.40, 0.39
    last = emb.sel(layer="pixels").isel(epoch=-1).values
    accuracy = cross_val_score(KNeighborsClassifier(10), last, ds["label"].values, cv=5).mean()
    assert accuracy > 0.85, accuracy  # measured: 0.945
    assert float(emb["trustworthiness"].isel(epoch=-1).min()) > 0.9


def test_tsne_carries_a_growing_run_on_without_moving_stored_frames(digits_master, tmp_path):
    run = shutil.copytree(digits_master, tmp_path / "live")
    held_back = tmp_path / "epoch-2.nc"
    store.epoch_file(run, 2).rename(held_back)  # the recorder has not written epoch 2 yet
    before = neuromapper.reduce(run, method="tsne", per_class=20, n_jobs=1)
    held_back.rename(store.epoch_file(run, 2))  # ...now it has
    seen = []
    grown = neuromapper.reduce(run, method="tsne", per_class=20, n_jobs=1, progress=lambda *a: seen.append(a))
    assert seen == [(1, 1, "layer pixels, epoch 2")]  # only the new epoch is laid out
    assert grown.attrs["key"] == before.attrs["key"] and grown["epoch"].values.tolist() == [0, 1, 2]
    assert np.array_equal(grown.values[:2], before.values)  # earlier frames untouched, bit for bit
    # started from the stored layout: the same as laying out all three epochs in one go
    full = neuromapper.reduce(run, method="tsne", per_class=20, n_jobs=1, force=True)
    np.testing.assert_array_equal(grown.values, full.values)


def test_tsne_stops_within_an_epoch_when_asked(digits_master):
    activations = layer_activations(open_run(digits_master), "pixels").values.astype(np.float32)
    asked = []

    def should_stop() -> bool:  # false at the epoch's start, true at openTSNE's first callback
        asked.append(1)
        return len(asked) > 1

    laid_out = []
    with pytest.raises(M.Stopped):
        M.tsne_per_epoch(activations, 15, 0.1, 0, lambda e, y: laid_out.append(e), should_stop)
    assert laid_out == [] and len(asked) == 3  # asked at the start, by the callback, then stopped
