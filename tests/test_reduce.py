"""The reduce stage: alignment, faithfulness, real change kept, cache, determinism, NaN, errors.

Quality is asserted the way umap-learn's tests do it, with thresholds on trustworthiness and
Procrustes disparity, never with exact coordinates. The runs are small synthetic runs written
through the store (:mod:`neuromapper.synthetic`), so every test knows what the data contain.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
import xarray as xr

import neuromapper
from neuromapper import ReduceParams, RunError, layer_activations, open_run, store
from neuromapper import methods as M
from neuromapper.layout import fuzzy_graph, neighbour_overlap, optimize_layout
from neuromapper.quality import disparity, trustworthiness
from neuromapper.reduce_params import REDUCE_VERSION
from neuromapper.synthetic import make_synthetic_run

SPLIT_EPOCH = 3


@pytest.fixture(scope="module")
def drift_master(tmp_path_factory):
    """600 samples, 5 classes whose centres drift and separate over 5 epochs, 2 layers."""
    return make_synthetic_run(tmp_path_factory.mktemp("reduce") / "drift", n_samples=600, n_epochs=5, n_layers=2,
                              n_classes=5, dims=24, seed=3)


@pytest.fixture
def drift_run(drift_master, tmp_path):
    """A private copy, so embeddings stored by one test are not another test's cache hits."""
    return shutil.copytree(drift_master, tmp_path / "drift")


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    """Class 0 splits in two at epoch 3 (its halves move far apart); 5 epochs, 400 samples."""
    return make_synthetic_run(tmp_path_factory.mktemp("reduce") / "split", n_samples=400, n_epochs=5, n_layers=1,
                              n_classes=4, dims=24, seed=1, split_class=0, split_epoch=SPLIT_EPOCH)


def _rewrite_epoch(run_path, epoch: int, as_epoch: int | None = None, damage=None) -> None:
    """Write recorded ``epoch`` again (as ``as_epoch``) through the store, optionally damaged."""
    run = open_run(run_path)
    layers = [str(v) for v in run["layer"].values]
    activations = [layer_activations(run, layer).sel(epoch=epoch).values.copy() for layer in layers]
    if damage is not None:
        damage(activations)
    part = store.epoch_dataset(epoch if as_epoch is None else as_epoch, layers=layers, activations=activations,
                               logits=run["logits"].sel(epoch=epoch).values, loss=run["loss"].sel(epoch=epoch).values)
    run.close()
    store.append_epoch(run_path, part)


def _mean(values) -> float:
    return float(np.nanmean(np.asarray(values, dtype=float)))


# --- the pieces ---------------------------------------------------------------------------------


def test_fuzzy_graph_equals_umap_learns_fuzzy_simplicial_set():
    from sklearn.neighbors import NearestNeighbors
    from umap.umap_ import fuzzy_simplicial_set

    x = np.random.default_rng(0).normal(size=(500, 8)).astype(np.float32)
    dists, indices = NearestNeighbors(n_neighbors=12).fit(x).kneighbors(x)
    ours = fuzzy_graph(indices, dists, 12)
    theirs, _, _ = fuzzy_simplicial_set(x, 12, np.random.RandomState(0), "euclidean",
                                        knn_indices=indices, knn_dists=dists.astype(np.float32))
    assert ours.shape == theirs.shape and ours.nnz == theirs.nnz
    assert abs(ours - theirs.tocsr()).max() < 1e-5


def test_neighbour_overlap_is_jaccard():
    a = np.array([[1, 2, 3, 4], [1, 2, 3, 4], [5, 6, 7, -1]])
    b = np.array([[4, 3, 2, 1], [3, 4, 5, 6], [-1, -1, -1, -1]])
    assert neighbour_overlap(a, b).tolist() == pytest.approx([1.0, 2 / 6, 0.0])


def test_anchor_holds_points_whose_neighbourhood_is_unchanged():
    """With the anchor on, a warm-started layout stays closer to its start than without it."""
    from umap.umap_ import find_ab_params

    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(size=(150, 5)), rng.normal(size=(150, 5)) + 6]).astype(np.float32)
    g = M.EpochGraph(rows=np.arange(300), data=x)
    g.knn_indices, g.knn_dists = M.nearest_neighbours(x, 10, 0)
    g.graph = fuzzy_graph(g.knn_indices, g.knn_dists, 10)
    heads, tails, eps, _ = M.edge_schedule(g.graph)
    a, b = find_ab_params(1.0, 0.1)
    start = M._fresh_layout(g, 0)
    optimize_layout(start, heads, tails, eps, 100, a, b, seed=0)

    def moved(strength):
        y = start.copy()
        optimize_layout(y, heads, tails, eps, 30, a, b, seed=1, anchor=start, anchor_weight=np.ones(300, np.float32),
                        anchor_strength=strength, initial_alpha=1.0)
        return float(np.linalg.norm(y - start, axis=1).mean())

    assert moved(1.0) < 0.5 * moved(0.0)
    first, second = start.copy(), start.copy()
    for y in (first, second):
        optimize_layout(y, heads, tails, eps, 20, a, b, seed=7)
    np.testing.assert_array_equal(first, second)  # seeded: bit-for-bit reproducible


def _epoch_graph(x: np.ndarray, rows: np.ndarray, k: int = 6):
    g = M.EpochGraph(rows=rows, data=x[rows])
    g.knn_indices, g.knn_dists = M.nearest_neighbours(g.data, k, 0)
    g.graph = fuzzy_graph(g.knn_indices, g.knn_dists, k)
    return g


def test_the_look_ahead_adds_the_next_epochs_edges_between_this_epochs_samples():
    """Samples missing at either epoch (not finite there) are matched by id, not by position."""
    rng = np.random.default_rng(2)
    x0 = rng.normal(size=(60, 4)).astype(np.float32)
    x1 = (x0 + rng.normal(scale=0.3, size=x0.shape)).astype(np.float32)
    everyone, later, earlier = np.arange(60), np.arange(10, 60), np.arange(50)
    assert M.LOOK_AHEAD > 0
    for rows, next_rows in [(everyone, everyone), (everyone, later), (earlier, everyone), (earlier, later)]:
        g, following = _epoch_graph(x0, rows), _epoch_graph(x1, next_rows)
        ahead = np.zeros((60, 60))
        ahead[np.ix_(next_rows, next_rows)] = following.graph.toarray()
        expected = g.graph.toarray() + M.LOOK_AHEAD * ahead[np.ix_(rows, rows)]
        np.testing.assert_allclose(M._looking_ahead(g, following, 60).toarray(), expected, rtol=1e-6)
    assert M._looking_ahead(g, None, 60) is g.graph  # the last epoch: nothing to look ahead to


# --- what the embedding must show ---------------------------------------------------------------


def test_default_method_is_aligned_faithful_and_stored_with_its_quality(drift_run):
    emb = neuromapper.reduce(drift_run, n_jobs=1)
    assert emb.name == "embedding" and emb.dims == ("epoch", "layer", "sample", "xy")
    assert emb.dtype == np.float32 and emb.attrs["method"] == M.DEFAULT_METHOD == "anchored-umap"
    assert emb["layer"].values.tolist() == ["layer0", "layer1"] and emb["xy"].values.tolist() == ["x", "y"]
    assert emb.sizes == {"epoch": 5, "layer": 2, "sample": 600, "xy": 2}
    assert json.loads(emb.attrs["params"]) == {"method": "anchored-umap", "n_neighbors": 15, "min_dist": 0.1,
                                               "per_class": None, "seed": 0, "layers": ["layer0", "layer1"]}
    assert emb.attrs["backend"] == ("cuml+numba" if M.cuml_module() else "numba")
    assert (emb["unplaced"] == 0).all() and np.isfinite(emb.values).all()
    # faithful at every epoch and layer (umap-learn's own tests use 0.8-0.97 thresholds)
    assert float(emb["trustworthiness"].min()) > 0.93
    assert np.isnan(emb["disparity"].isel(epoch=0)).all() and np.isfinite(emb["disparity"].isel(epoch=slice(1, None))).all()
    # the stored figures are what sklearn and scipy say about the stored layout
    run = open_run(drift_run)
    x = layer_activations(run, "layer1").isel(epoch=4).values
    y = emb.sel(layer="layer1").isel(epoch=4).values
    assert float(emb["trustworthiness"].sel(layer="layer1").isel(epoch=4)) == pytest.approx(trustworthiness(x, y))
    assert float(emb["disparity"].sel(layer="layer1").isel(epoch=4)) == pytest.approx(
        disparity(emb.sel(layer="layer1").isel(epoch=3).values, y))
    xr.testing.assert_identical(emb, neuromapper.load_embedding(drift_run, emb.attrs["key"]))


def test_alignment_is_measurably_better_than_independent_umap(drift_run):
    """Consecutive-epoch Procrustes disparity: anchored layouts keep their shape, independent ones jump."""
    anchored = neuromapper.reduce(drift_run, layers="layer0", n_jobs=1)
    independent = neuromapper.reduce(drift_run, method="umap", layers="layer0", n_jobs=1)
    d_anchored, d_independent = _mean(anchored["disparity"]), _mean(independent["disparity"])
    assert d_anchored < 0.5 * d_independent, (d_anchored, d_independent)
    # ...at no cost in faithfulness
    assert _mean(anchored["trustworthiness"]) > _mean(independent["trustworthiness"]) - 0.01


def _split_separation(run_path, emb) -> list[float]:
    """Per epoch: distance between the 2-D centroids of the split class's two halves / their spread."""
    from sklearn.cluster import KMeans

    run = open_run(run_path)
    members = np.flatnonzero(run["label"].values == 0)
    after = layer_activations(run, "layer0").isel(epoch=SPLIT_EPOCH).values[members]
    half = KMeans(2, n_init=10, random_state=0).fit_predict(after)  # the halves, where the data split
    ratios = []
    for e in range(emb.sizes["epoch"]):
        y = emb.sel(layer="layer0").isel(epoch=e).values[members]
        a, b = y[half == 0], y[half == 1]
        spread = np.sqrt((((a - a.mean(0)) ** 2).sum(1).mean() + ((b - b.mean(0)) ** 2).sum(1).mean()) / 2)
        ratios.append(float(np.linalg.norm(a.mean(0) - b.mean(0)) / spread))
    return ratios


def test_alignment_does_not_hide_a_class_that_splits(split_run):
    ratios = _split_separation(split_run, neuromapper.reduce(split_run, n_jobs=1))
    assert max(ratios[:SPLIT_EPOCH]) < 1.0, ratios  # one blob before the split...
    assert min(ratios[SPLIT_EPOCH:]) > 2.5, ratios  # ...two groups, clearly apart, from the split epoch on


@pytest.mark.slow
def test_aligned_umap_reference_shows_the_split_too(split_run):
    emb = neuromapper.reduce(split_run, method="aligned-umap", n_jobs=1)
    assert emb.attrs["backend"] == "umap-learn"
    ratios = _split_separation(split_run, emb)
    assert max(ratios[:SPLIT_EPOCH]) < 1.0, ratios
    assert min(ratios[SPLIT_EPOCH:]) > 2.5, ratios
    assert float(emb["trustworthiness"].min()) > 0.9


def test_pca_method(drift_run):
    emb = neuromapper.reduce(drift_run, method="pca", n_jobs=1)
    assert emb.attrs["backend"] == "scikit-learn" and np.isfinite(emb.values).all()
    assert float(emb["trustworthiness"].min()) > 0.7  # linear: less faithful, but not random


# --- cache, determinism, samples ----------------------------------------------------------------


def test_cache_hit_returns_without_recomputing_and_parameter_sets_live_side_by_side(drift_run, monkeypatch):
    first = neuromapper.reduce(drift_run, method="pca", n_jobs=1)
    other = neuromapper.reduce(drift_run, method="pca", n_neighbors=10, per_class=50, n_jobs=1)
    assert other.attrs["key"] != first.attrs["key"] and other.sizes["sample"] == 250

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed although the embedding is stored")

    monkeypatch.setitem(M.METHODS, "pca", must_not_run)
    calls = []
    hit = neuromapper.reduce(drift_run, method="pca", n_jobs=1, progress=lambda *a: calls.append(a))
    xr.testing.assert_identical(hit, first)
    assert calls == [(10, 10, "loaded from cache")]
    xr.testing.assert_identical(neuromapper.find_embedding(drift_run, method="pca"), first)
    xr.testing.assert_identical(neuromapper.find_embedding(open_run(drift_run), method="pca", n_neighbors=10,
                                                           per_class=50), other)
    assert neuromapper.find_embedding(drift_run, method="pca", seed=1) is None
    listed = {e["key"]: e for e in neuromapper.list_embeddings(drift_run)}
    assert set(listed) == {first.attrs["key"], other.attrs["key"]}
    assert listed[other.attrs["key"]]["params"]["n_neighbors"] == 10 and listed[other.attrs["key"]]["method"] == "pca"
    with pytest.raises(AssertionError, match="recomputed"):
        neuromapper.reduce(drift_run, method="pca", n_jobs=1, force=True)


def test_cache_survives_a_restart_and_a_grown_run_is_extended(drift_run):
    emb = neuromapper.reduce(drift_run, method="pca", n_jobs=1)
    code = ("import neuromapper, sys; e = neuromapper.find_embedding(sys.argv[1], method='pca'); "
            "print(e.attrs['key'] if e is not None else None)")
    fresh = subprocess.run([sys.executable, "-c", code, str(drift_run)], capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == emb.attrs["key"]
    # training goes on: epoch 5 is recorded, the stored embedding covers only the first epochs
    _rewrite_epoch(drift_run, 4, as_epoch=5)
    assert neuromapper.find_embedding(drift_run, method="pca") is None
    xr.testing.assert_identical(neuromapper.find_embedding(drift_run, method="pca", partial=True), emb)
    seen = []
    grown = neuromapper.reduce(drift_run, method="pca", n_jobs=1, progress=lambda *a: seen.append(a))
    assert grown.attrs["key"] == emb.attrs["key"] and grown["epoch"].values.tolist() == [0, 1, 2, 3, 4, 5]
    assert seen == [(1, 2, "layer layer0, epoch 5"), (2, 2, "layer layer1, epoch 5")]  # only the new work
    xr.testing.assert_identical(grown.isel(epoch=slice(0, 5)).drop_attrs(), emb.drop_attrs())
    # the new epoch is aligned with the last stored one, as a reduction of all six would have done
    full = neuromapper.reduce(drift_run, method="pca", n_jobs=1, force=True)
    np.testing.assert_array_equal(grown.values, full.values)
    np.testing.assert_array_equal(grown["disparity"].values, full["disparity"].values)


@pytest.fixture(scope="module")
def live_master(tmp_path_factory):
    """1,500 samples over 8 epochs, 1 layer: enough work that the cost of an epoch shows."""
    return make_synthetic_run(tmp_path_factory.mktemp("reduce") / "live", n_samples=1500, n_epochs=8, n_layers=1,
                              n_classes=5, dims=24, seed=4)


def test_a_live_run_that_grows_is_extended_fast_and_keeps_its_earlier_frames(live_master, tmp_path, monkeypatch):
    run = shutil.copytree(live_master, tmp_path / "live")
    held_back = tmp_path / "epoch-7.nc"
    store.epoch_file(run, 7).rename(held_back)  # the recorder has not written epoch 7 yet
    before = neuromapper.reduce(run, n_jobs=1)
    stored_bytes = {name: before[name].values.tobytes() for name in ("trustworthiness", "disparity", "unplaced")}
    held_back.rename(store.epoch_file(run, 7))  # ...now it has
    placed = []  # the run epochs laid out (each costs an optimisation: what the fast path saves)
    place = M._place_epoch
    monkeypatch.setattr(M, "_place_epoch", lambda *args: placed.append(args[8]) or place(*args))
    seen = []
    grown = neuromapper.reduce(run, n_jobs=1, progress=lambda *a: seen.append(a))
    assert placed == [6, 7]
    # the new epoch, and the last stored one laid out again now that it has a next epoch to look ahead to
    assert seen == [(1, 2, "layer layer0, epoch 6"), (2, 2, "layer layer0, epoch 7")]
    assert grown["epoch"].values.tolist() == list(range(8)) and grown.attrs["key"] == before.attrs["key"]
    assert np.array_equal(grown.values[:6], before.values[:6])  # earlier frames untouched, bit for bit
    assert {name: grown[name].values[:6].tobytes() for name in stored_bytes} == {
        name: value[:len(value) * 6 // 7] for name, value in stored_bytes.items()}
    assert not np.array_equal(grown.values[6], before.values[6])
    assert np.isfinite(grown["trustworthiness"].values[6:]).all() and np.isfinite(grown["disparity"].values[6:]).all()
    placed.clear()
    full = neuromapper.reduce(run, n_jobs=1, force=True)
    assert placed == list(range(8))
    # exact neighbour search: carrying on gives what the whole loop gives
    np.testing.assert_array_equal(grown.values, full.values)
    np.testing.assert_array_equal(grown["trustworthiness"].values, full["trustworthiness"].values)


def test_a_single_epoch_run_is_reduced_by_every_method_without_alignment(tmp_path):
    one = make_synthetic_run(tmp_path / "one", n_samples=200, n_epochs=1, n_layers=1, n_classes=4, dims=16)
    for method in neuromapper.ReduceParams.METHODS:
        emb = neuromapper.reduce(one, method=method, n_jobs=1)
        assert emb.sizes == {"epoch": 1, "layer": 1, "sample": 200, "xy": 2}, method
        assert np.isfinite(emb.values).all() and np.isnan(emb["disparity"].values).all(), method
        assert float(emb["trustworthiness"].min()) > 0.8, method
        if method == "aligned-umap":
            assert emb.attrs["backend"] in {"umap-learn", "cuml"}  # plain UMAP: nothing to align


def _digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*"))}


def test_seeded_results_are_deterministic_and_activations_untouched(drift_run):
    before = _digest(drift_run / "epochs")
    first = neuromapper.reduce(drift_run, layers=["layer1"], per_class=40, seed=5, n_jobs=1)
    again = neuromapper.reduce(drift_run, layers=["layer1"], per_class=40, seed=5, n_jobs=1, force=True)
    np.testing.assert_array_equal(first.values, again.values)
    other = neuromapper.reduce(drift_run, layers=["layer1"], per_class=40, seed=6, n_jobs=1)
    assert not np.array_equal(first["sample"].values, other["sample"].values)  # another stratified draw
    labels = open_run(drift_run)["label"].sel(sample=first["sample"].values).values
    assert np.bincount(labels).tolist() == [40] * 5
    assert _digest(drift_run / "epochs") == before  # reducing never rewrites recorded activations


def test_non_finite_activations_are_unplaced_not_fatal(drift_run):
    bad = np.arange(12)

    def damage(activations):  # layer0 at epoch 2, as a diverging layer would record it
        activations[0][bad, 0] = np.nan
        activations[0][bad[:3], 1] = np.inf

    _rewrite_epoch(drift_run, 2, damage=damage)
    assert open_run(drift_run)["nonfinite"].sel(epoch=2).values.tolist() == [15, 0]
    emb = neuromapper.reduce(drift_run, n_jobs=1)
    layer0 = emb.sel(layer="layer0")
    assert int(layer0["unplaced"].sel(epoch=2)) == len(bad)
    assert np.isnan(layer0.sel(epoch=2).values[bad]).all()
    assert np.isfinite(np.delete(layer0.sel(epoch=2).values, bad, axis=0)).all()
    assert int(layer0["unplaced"].drop_sel(epoch=2).sum()) == 0  # placed again at the next epoch
    assert int(emb.sel(layer="layer1")["unplaced"].sum()) == 0
    assert np.isfinite(emb["trustworthiness"]).all() and float(layer0["trustworthiness"].sel(epoch=2)) > 0.9
    for method in ("umap", "pca"):
        other = neuromapper.reduce(drift_run, method=method, layers="layer0", n_jobs=1)
        assert int(other["unplaced"].sel(epoch=2, layer="layer0")) == len(bad)


# --- progress, cancellation, parallelism --------------------------------------------------------


def test_progress_reports_every_layer_and_epoch(drift_run):
    seen = []
    neuromapper.reduce(drift_run, method="pca", n_jobs=1, progress=lambda *args: seen.append(args))
    assert [s[:2] for s in seen] == [(i, 10) for i in range(1, 11)]
    assert seen[0][2] == "layer layer0, epoch 0" and seen[-1][2] == "layer layer1, epoch 4"


def test_cancel_stops_soon_and_stores_nothing(drift_run):
    kept = neuromapper.reduce(drift_run, method="pca", n_jobs=1)
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append(done)
        if done == 2:
            cancel.set()

    with pytest.raises(neuromapper.ReductionCancelled, match="nothing was stored"):
        neuromapper.reduce(drift_run, n_jobs=1, progress=progress, cancel=cancel)
    assert max(seen) == 2  # stopped within the epoch after the request
    assert [p.name for p in (drift_run / "embeddings").iterdir()] == [f"{kept.attrs['key']}.nc"]
    assert neuromapper.find_embedding(drift_run) is None


@pytest.mark.slow
def test_process_pool_gives_the_same_result_forwards_progress_and_cancels(drift_run):
    here = neuromapper.reduce(drift_run, n_jobs=1)
    seen = []
    pooled = neuromapper.reduce(drift_run, n_jobs=2, force=True, progress=lambda *args: seen.append(args))
    np.testing.assert_array_equal(here.values, pooled.values)
    np.testing.assert_array_equal(here["trustworthiness"].values, pooled["trustworthiness"].values)
    assert sorted(s[0] for s in seen) == list(range(1, 11))
    assert {s[2] for s in seen} == {f"layer layer{i}, epoch {e}" for i in (0, 1) for e in range(5)}

    cancel = threading.Event()
    with pytest.raises(neuromapper.ReductionCancelled):
        neuromapper.reduce(drift_run, method="umap", n_jobs=2, cancel=cancel, progress=lambda *args: cancel.set())
    assert [p.name for p in (drift_run / "embeddings").iterdir()] == [f"{here.attrs['key']}.nc"]


@pytest.mark.slow
def test_dask_distributed_client_runs_the_layers(drift_run):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        seen = []
        emb = neuromapper.reduce(drift_run, method="pca", client=client, progress=lambda *args: seen.append(args))
    here = neuromapper.reduce(drift_run, method="pca", n_jobs=1, force=True)
    np.testing.assert_array_equal(emb.values, here.values)
    assert len(seen) == 10 and seen[-1][:2] == (10, 10)


def test_cpu_path_when_cuml_is_missing(drift_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "cuml", None)  # what an import of an absent package does
    assert M.cuml_module() is None
    emb = neuromapper.reduce(drift_run, method="umap", layers="layer0", per_class=40, n_jobs=1)
    assert emb.attrs["backend"] == "umap-learn" and float(emb["trustworthiness"].min()) > 0.9


def test_cuml_is_used_for_the_per_epoch_part_when_importable(drift_run, monkeypatch):
    """cuML mirrors the scikit-learn/umap-learn estimator API; on this GPU-less machine a module with
    that API (backed by umap-learn and scikit-learn) checks that the GPU path is taken and works."""
    from sklearn.neighbors import NearestNeighbors
    from umap import UMAP

    cuml = types.ModuleType("cuml")
    cuml.manifold = types.ModuleType("cuml.manifold")
    cuml.neighbors = types.ModuleType("cuml.neighbors")
    cuml.manifold.UMAP = lambda **kw: UMAP(n_jobs=1, **kw)
    cuml.neighbors.NearestNeighbors = NearestNeighbors
    for name in ("cuml", "cuml.manifold", "cuml.neighbors"):
        monkeypatch.setitem(sys.modules, name, getattr(cuml, name.partition(".")[2]) if "." in name else cuml)
    emb = neuromapper.reduce(drift_run, method="umap", layers="layer0", per_class=40, n_jobs=1)
    assert emb.attrs["backend"] == "cuml" and float(emb["trustworthiness"].min()) > 0.9
    fast = neuromapper.reduce(drift_run, layers="layer0", per_class=40, n_jobs=1)
    assert fast.attrs["backend"] == "cuml+numba" and float(fast["trustworthiness"].min()) > 0.9


# --- the interface ------------------------------------------------------------------------------


def test_module_is_callable_and_importable():
    import neuromapper.reduce as reduction

    assert reduction is neuromapper.reduce and callable(reduction)
    assert reduction.find_embedding is neuromapper.find_embedding is store.find_embedding
    assert reduction.ReductionCancelled is neuromapper.ReductionCancelled
    assert tuple(M.METHODS) == ReduceParams.METHODS == reduction.METHODS
    assert ReduceParams.METHODS == ("anchored-umap", "aligned-umap", "umap", "pca", "tsne")
    assert M.DEFAULT_METHOD == reduction.DEFAULT_METHOD == ReduceParams.DEFAULT.method


# --- parameters ---------------------------------------------------------------------------------


def test_params_are_canonical_bounded_and_keyed():
    stepped = ReduceParams(min_dist=0.1 + 0.05 * 5)  # 0.35000000000000003, what a slider gives
    assert stepped == ReduceParams(min_dist=0.3499999999999999) == ReduceParams(min_dist=0.35)
    assert stepped.min_dist == 0.35 and repr(stepped.min_dist) == "0.35"
    assert stepped.key(["a"]) == ReduceParams(min_dist=0.35).key(["a"])
    widget = ReduceParams(n_neighbors=np.int64(20), per_class=np.int32(50), seed=np.uint8(3), min_dist=np.float32(0.2),
                          method=None, layers="fc")
    assert widget == ReduceParams(n_neighbors=20, per_class=50, seed=3, min_dist=0.2, layers=("fc",))
    assert type(widget.n_neighbors) is int and type(widget.min_dist) is float
    assert ReduceParams(**widget.as_kwargs()) == widget and hash(widget) == hash(ReduceParams(**widget.as_kwargs()))
    # the JSON NeuroMapper 0.1.0 hashed (REDUCE_VERSION 1): its key of the default parameters...
    version_1 = ReduceParams.DEFAULT.resolve(["layer0", "layer1"]).to_json(version=1)
    assert hashlib.sha256(version_1.encode()).hexdigest()[:16] == "b5cc8bd4e29feb96"
    # ...and REDUCE_VERSION 2 (anchored-umap's look-ahead): a new key, so older layouts are not taken for current
    assert REDUCE_VERSION == 2 and ReduceParams.DEFAULT.key(["layer0", "layer1"]) == "c64b9f53decf4718"
    # layers: None and every layer are one key; the run's order, not the caller's
    assert ReduceParams(layers=["layer1", "layer0"]).key(["layer0", "layer1"]) == ReduceParams.DEFAULT.key(["layer0", "layer1"])
    assert ReduceParams(layers=["b", "a"]).resolve(["a", "b", "c"]).layers == ("a", "b")
    assert ReduceParams(layers=["a"]).key(["a", "b"]) != ReduceParams().key(["a", "b"])
    assert ReduceParams.BOUNDS == {"n_neighbors": (2, 200), "min_dist": (0.0, 0.99)}
    assert ReduceParams.MIN_DIST_STEP == 0.05 and ReduceParams.DEFAULT == ReduceParams()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_neighbors": 1}, r"n_neighbors: expected an integer from 2 to 200, got 1"),
        ({"n_neighbors": 201}, r"n_neighbors: expected an integer from 2 to 200, got 201"),
        ({"n_neighbors": 15.0}, r"n_neighbors: .* got 15.0"),
        ({"min_dist": 1.0}, r"min_dist: expected a number from 0.0 to 0.99, got 1.0"),
        ({"min_dist": True}, r"min_dist: .* got True"),
        ({"per_class": 0}, r"per_class: expected an integer >= 1, got 0"),
        ({"seed": -1}, r"seed: expected an integer >= 0, got -1"),
        ({"method": "t-sne"}, r"method: expected one of \['anchored-umap', 'aligned-umap', 'umap', 'pca', 'tsne'\]"),
        ({"layers": []}, r"layers: expected None \(all\) or layer names, got \[\]"),
    ],
)
def test_bad_params_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReduceParams(**kwargs)


def test_params_of_a_stored_embedding_and_both_call_forms(drift_run, monkeypatch):
    emb = neuromapper.reduce(drift_run, method="pca", min_dist=0.1 + 0.05 * 5, per_class=30, n_jobs=1)
    params = ReduceParams.from_embedding(emb)
    assert params == ReduceParams(method="pca", min_dist=0.35, per_class=30, layers=("layer0", "layer1"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("recomputed although the embedding is stored")

    monkeypatch.setitem(M.METHODS, "pca", must_not_run)
    # what a user types finds what the slider stored, in either call form
    xr.testing.assert_identical(neuromapper.reduce(drift_run, method="pca", min_dist=0.35, per_class=30), emb)
    xr.testing.assert_identical(neuromapper.reduce(drift_run, params), emb)
    xr.testing.assert_identical(neuromapper.reduce(drift_run, ReduceParams(method="pca", per_class=30), min_dist=0.35),
                                emb)
    xr.testing.assert_identical(neuromapper.find_embedding(drift_run, params), emb)
    with pytest.raises(TypeError, match=r"params: expected a ReduceParams or None, got str 'pca'"):
        neuromapper.reduce(drift_run, "pca")
    with pytest.raises(TypeError, match=r"unexpected reduce parameter\(s\) \['mindist'\]"):
        neuromapper.reduce(drift_run, mindist=0.3)
    with pytest.raises(ValueError, match="embedding: has no 'params' attribute"):
        ReduceParams.from_embedding(xr.DataArray([0.0]))


def test_clear_errors(drift_run):
    with pytest.raises(ValueError, match=r"n_neighbors: expected an integer from 2 to 200, got 600"):
        neuromapper.reduce(drift_run, n_neighbors=600)
    with pytest.raises(ValueError, match=r"n_neighbors: expected fewer than the 100 samples being embedded \(per_class=20\)"):
        neuromapper.reduce(drift_run, n_neighbors=150, per_class=20)
    with pytest.raises(ValueError, match=r"n_neighbors: expected fewer than the 10 samples being embedded \(per_class=2\)"):
        neuromapper.reduce(drift_run, n_neighbors=15, per_class=2)
    with pytest.raises(RunError, match=r"layers: \['fc9'\] not recorded in this run; recorded layers: \['layer0', 'layer1'\]"):
        neuromapper.reduce(drift_run, layers=["layer0", "fc9"])
    with pytest.raises(ValueError, match=r"method: expected one of \['anchored-umap', 'aligned-umap', 'umap', 'pca', 'tsne'\]"):
        neuromapper.reduce(drift_run, method="t-sne")
    with pytest.raises(ValueError, match="min_dist: expected a number from 0.0 to 0.99, got -0.5"):
        neuromapper.reduce(drift_run, min_dist=-0.5)
    with pytest.raises(ValueError, match="n_neighbors: expected an integer from 2 to 200, got 1.5"):
        neuromapper.find_embedding(drift_run, n_neighbors=1.5)
    with pytest.raises(ValueError, match="run: .* this Dataset has no 'path' attribute"):
        neuromapper.reduce(xr.Dataset())
    with pytest.raises(TypeError, match="run: expected a run directory"):
        neuromapper.reduce(42)
    with pytest.raises(ValueError, match="n_jobs: expected an integer >= 1, got 0"):
        neuromapper.reduce(drift_run, n_jobs=0)
    with pytest.raises(FileNotFoundError, match="no embedding '0123456789abcdef' stored"):
        neuromapper.load_embedding(drift_run, "0123456789abcdef")


def test_cli_reduce_and_info(drift_run, capsys):
    from neuromapper.cli import main

    args = ["reduce", str(drift_run), "--method", "pca", "--layers", "layer1", "--per-class", "30"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "computed in" in out and "layer1" in out and "trustworthiness" in out
    assert "reduce pca" in err  # the tqdm bar
    assert main(args) == 0 and "found in the cache" in capsys.readouterr().out
    assert main(["info", str(drift_run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [e["method"] for e in info["embeddings"]] == ["pca"]
    assert info["embeddings"][0]["params"]["per_class"] == 30
    assert main(["info", str(drift_run)]) == 0 and "embedding  " in capsys.readouterr().out
    assert main(["reduce", str(drift_run), "--layers", "nope"]) == 2
    assert "neuromapper reduce: error: layers: ['nope'] not recorded in this run" in capsys.readouterr().err
