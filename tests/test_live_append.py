"""A live run's new epoch: carried on from the stored neighbour sets, on threads, with the same result.

What is checked here is that the fast paths of a live append change nothing: the neighbour sets
stored with an embedding (:func:`neuromapper.store.load_neighbours`) give the same new epoch as
rebuilding them from the activations (the fallback for embeddings stored without them), layers on
threads give what one layer after the other gives, and the trustworthiness figure equals
scikit-learn's bit for bit. ``benchmarks/bench_live.py`` measures the time.
"""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
from sklearn.manifold import trustworthiness as sklearn_trustworthiness

import neuromapper
from neuromapper import methods as M
from neuromapper import quality, store
from neuromapper import reduce as reduction
from neuromapper.synthetic import make_synthetic_run

EPOCHS = 4


@pytest.fixture(scope="module")
def live_master(tmp_path_factory):
    """400 samples, 2 layers, 4 epochs of drifting, separating classes."""
    return make_synthetic_run(tmp_path_factory.mktemp("live") / "run", n_samples=400, n_epochs=EPOCHS, n_layers=2,
                              n_classes=4, dims=24, seed=7)


@pytest.fixture
def live_run(live_master, tmp_path):
    """A private copy whose last epoch is held back (``run, held``): the recorder has not written it yet."""
    run = shutil.copytree(live_master, tmp_path / "run")
    held = tmp_path / "held.nc"
    store.epoch_file(run, EPOCHS - 1).rename(held)
    return run, held


def _land(run, held) -> None:
    shutil.copy(held, store.epoch_file(run, EPOCHS - 1))


def _figures(emb) -> dict:
    return {name: emb[name].values.tobytes() for name in ("trustworthiness", "disparity", "unplaced")}


def _graphs_built(monkeypatch) -> list:
    """Count the epochs whose neighbour graph is built (one pre-embedding each)."""
    built = []
    pre_embed = M.pre_embed
    monkeypatch.setattr(M, "pre_embed", lambda x, seed: built.append(len(x)) or pre_embed(x, seed))
    return built


def test_stored_neighbour_sets_give_the_new_epoch_the_fallback_gives(live_run, tmp_path, monkeypatch):
    run, held = live_run
    before = neuromapper.reduce(run, n_jobs=1)
    key = before.attrs["key"]
    # the epoch before the last, where a continuation starts: the last is laid out again, looking ahead
    kept = store.load_neighbours(run, key, EPOCHS - 3)
    assert kept.dims == ("layer", "sample", "neighbour") and kept.dtype == np.int32
    assert kept.shape == (2, 400, 15) and (kept.values[:, :, 0] == np.arange(400)).all()  # each sample first
    assert store.load_neighbours(run, key, EPOCHS - 2) is None  # only for that epoch
    saved = tmp_path / "before.nc"
    shutil.copy(store.embedding_file(run, key), saved)
    _land(run, held)

    built = _graphs_built(monkeypatch)
    fast = neuromapper.reduce(run, n_jobs=1)
    assert len(built) == 4  # per layer the last stored epoch (laid out again) and the new one, nothing earlier
    kept_fast = store.load_neighbours(run, key, EPOCHS - 2).values

    # the fallback: the same embedding stored without its neighbour sets (as before they were kept)
    shutil.copy(saved, store.embedding_file(run, key))
    store.write_embedding(run, store.load_embedding(run, key))
    assert store.load_neighbours(run, key, EPOCHS - 3) is None
    built.clear()
    slow = neuromapper.reduce(run, n_jobs=1)
    assert len(built) == 6  # and the graphs of the epoch carried on from, rebuilt from its activations
    assert store.load_neighbours(run, key, EPOCHS - 2) is not None  # ...and kept for the next epoch

    np.testing.assert_array_equal(fast.values, slow.values)
    assert _figures(fast) == _figures(slow)
    for grown in (fast, slow):  # frames laid out for good never move; the stored last one moves once
        assert grown.values[:-2].tobytes() == before.values[:-1].tobytes()
        assert _figures(grown.isel(epoch=slice(0, -2))) == _figures(before.isel(epoch=slice(0, -1)))
        assert not np.array_equal(grown.values[-2], before.values[-1])  # now with the next epoch to look ahead to
    full = neuromapper.reduce(run, n_jobs=1, force=True)
    np.testing.assert_array_equal(fast.values, full.values)
    assert _figures(fast) == _figures(full)
    np.testing.assert_array_equal(store.load_neighbours(run, key, EPOCHS - 2).values, kept_fast)


@pytest.mark.slow  # pynndescent compiles its kernels in every new process (about 40 s)
def test_stored_neighbour_sets_start_nn_descent_where_the_whole_loop_did(live_run, monkeypatch):
    """Above EXACT_KNN_MAX the new epoch's NN-descent starts from the stored epoch's graph, as it does
    when all epochs are reduced at once; rebuilt, that graph would start from nothing and differ."""
    monkeypatch.setattr(M, "EXACT_KNN_MAX", 100)
    run, held = live_run
    before = neuromapper.reduce(run, n_jobs=1)
    _land(run, held)
    grown = neuromapper.reduce(run, n_jobs=1)
    assert grown.values[:-2].tobytes() == before.values[:-1].tobytes()
    full = neuromapper.reduce(run, n_jobs=1, force=True)
    np.testing.assert_array_equal(grown.values, full.values)


def test_unplaced_samples_survive_the_stored_neighbour_sets(live_run, monkeypatch):
    """Samples without activations at the stored epoch have no neighbour set (-1) and come back placed."""
    run, held = live_run
    layer_activations = store.layer_activations

    def with_gaps(ds, layer):  # samples 0-29 not finite at the epoch whose neighbour sets are stored
        da = layer_activations(ds, layer).copy()
        return da.where(~((da["epoch"] == EPOCHS - 3) & (da["sample"] < 30)))

    monkeypatch.setattr(reduction, "layer_activations", with_gaps)
    before = neuromapper.reduce(run, n_jobs=1)
    kept = store.load_neighbours(run, before.attrs["key"], EPOCHS - 3).values
    assert (kept[:, :30] == -1).all() and (kept[:, 30:] >= 30).all()
    assert np.isnan(before.values[-2, :, :30]).all()
    _land(run, held)
    fast = neuromapper.reduce(run, n_jobs=1)
    assert np.isfinite(fast.values[-2:]).all()
    full = neuromapper.reduce(run, n_jobs=1, force=True)
    np.testing.assert_array_equal(fast.values, full.values)


def test_layers_on_threads_give_what_one_after_the_other_gives(live_run, monkeypatch):
    run, held = live_run
    _land(run, held)
    monkeypatch.setattr(reduction.os, "cpu_count", lambda: 2)  # a small job: threads, not processes
    threads = []
    reduce_layer = reduction.reduce_layer
    monkeypatch.setattr(reduction, "reduce_layer",
                        lambda *a, **k: threads.append(threading.current_thread().name) or reduce_layer(*a, **k))
    seen = []
    threaded = neuromapper.reduce(run, progress=lambda *args: seen.append((threading.current_thread(), args)))
    assert all(name.startswith("neuromapper-layer") for name in threads) and len(threads) == 2
    assert {thread for thread, _ in seen} == {threading.current_thread()}  # progress in the calling thread
    assert sorted(args[0] for _, args in seen) == list(range(1, 2 * EPOCHS + 1))
    serial = neuromapper.reduce(run, n_jobs=1, force=True)
    np.testing.assert_array_equal(threaded.values, serial.values)
    assert _figures(threaded) == _figures(serial)


def test_a_layer_that_fails_on_a_thread_raises_its_own_error(live_run, monkeypatch):
    run, held = live_run
    monkeypatch.setattr(reduction.os, "cpu_count", lambda: 2)
    place = M._place_epoch

    def fails_on_layer1(g, *args):
        if threading.current_thread().name.endswith("_1"):
            raise MemoryError("layer 1 ran out of memory")
        return place(g, *args)

    monkeypatch.setattr(M, "_place_epoch", fails_on_layer1)
    with pytest.raises(MemoryError, match="layer 1 ran out"):
        neuromapper.reduce(run)
    assert neuromapper.find_embedding(run) is None

    cancel = threading.Event()
    monkeypatch.setattr(M, "_place_epoch", place)
    with pytest.raises(neuromapper.ReductionCancelled):
        neuromapper.reduce(run, cancel=cancel, progress=lambda *args: cancel.set())
    assert neuromapper.find_embedding(run) is None


@pytest.mark.parametrize("data", ["gaussian", "duplicates", "grid"])
def test_trustworthiness_equals_scikit_learns_bit_for_bit(data):
    """Ties between distances are where the rank depends on argsort's order: checked on purpose."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    y = rng.normal(size=(300, 2)).astype(np.float32)
    if data == "duplicates":
        x[40:90] = x[0]
    elif data == "grid":
        x = rng.integers(0, 3, size=(300, 4)).astype(np.float32)
        y = rng.integers(0, 4, size=(300, 2)).astype(np.float32)
    for k in (5, 10):
        assert quality.trustworthiness(x, y, k) == sklearn_trustworthiness(x, y, n_neighbors=k)
