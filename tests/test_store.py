"""The store: round trips, lazy opening, crash safety under SIGKILL, and clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import netCDF4
import numpy as np
import pytest
import xarray as xr

from neuromapper import ReduceParams, RunError, layer_activations, open_run, store


def _epoch(epoch: int, n: int = 30, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed + epoch)
    return store.epoch_dataset(
        epoch,
        layers=["conv.1", "fc"],
        activations=[rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(n, 3)).astype(np.float32)],
        logits=rng.normal(size=(n, 4)).astype(np.float32),
        loss=rng.random(n).astype(np.float32),
        metrics={"val_acc": 0.25 * epoch} if epoch else None,
        weights=[rng.normal(size=(2, 1, 3, 3)).astype(np.float32)],
    )


def _make_run(path, epochs=3, n=30):
    store.create_run(
        path,
        labels=np.arange(n) % 4,
        class_names=["cat", "dog", "ship", "truck"],
        layers=["conv.1", "fc"],
        layer_units=[5, 3],
        layer_kinds=["conv", "Linear"],
        images=np.zeros((n, 4, 4, 1), np.uint8),
        attrs={"hyperparameters": {"lr": 0.1, "nested": {"a": [1, 2]}}, "flag": True, "dataset": "toy"},
    )
    parts = [_epoch(e, n) for e in range(epochs)]
    for part in parts:
        store.append_epoch(path, part)
    return parts


def test_epoch_file_round_trip_is_identical(tmp_path):
    part = _epoch(2)
    file = store.append_epoch(tmp_path, part)
    xr.testing.assert_identical(store.open_netcdf(file).load(), part)
    assert file.name == "epoch-000002.nc"


def test_uncompressed_round_trip(tmp_path):
    part = _epoch(1)
    xr.testing.assert_identical(store.open_netcdf(store.append_epoch(tmp_path, part, complevel=None)).load(), part)


def test_16bit_packing_is_half_the_size_and_accurate(tmp_path):
    rng = np.random.default_rng(0)
    acts = [rng.normal(size=(4000, 64)).astype(np.float32), rng.normal(size=(4000, 10)).astype(np.float32)]
    part = store.epoch_dataset(1, layers=["a", "b"], activations=acts, logits=np.zeros((4000, 3), np.float32),
                               loss=np.zeros(4000, np.float32))
    full = store.append_epoch(tmp_path / "f", part, complevel=None)
    half = store.append_epoch(tmp_path / "h", part, complevel=None, precision="16bit")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    back = store.open_netcdf(half).load()
    assert back["activation"].dtype == np.float32
    step = (max(a.max() for a in acts) - min(a.min() for a in acts)) / 65532
    np.testing.assert_allclose(back["activation"].values, part["activation"].values, atol=step, equal_nan=True)
    assert np.isnan(back["activation"].sel(epoch=1, layer="b").values[:, 10:]).all()  # padding stays NaN
    with pytest.raises(ValueError, match=r"precision: expected one of \('float32', '16bit'\), got 'float8'"):
        store.append_epoch(tmp_path / "x", part, precision="float8")


def test_open_run_combines_epochs_lazily_with_string_coords_and_json_attrs(tmp_path):
    parts = _make_run(tmp_path / "run")
    ds = open_run(tmp_path / "run")
    assert ds["activation"].chunks is not None  # dask-backed: nothing read yet
    assert ds["epoch"].values.tolist() == [0, 1, 2]
    assert ds["layer"].values.tolist() == ["conv.1", "fc"] and ds["layer"].dtype.kind == "U"
    assert ds["class"].values.tolist() == ["cat", "dog", "ship", "truck"]
    assert store.json_attr(ds, "hyperparameters") == {"lr": 0.1, "nested": {"a": [1, 2]}}
    assert ds.attrs["flag"] == 1 and ds.attrs["neuromapper_schema"] == store.SCHEMA_VERSION
    for part in parts:
        e = int(part["epoch"][0])
        for name in ("activation", "logits", "loss", "prediction", "weight_0", "nonfinite"):
            xr.testing.assert_identical(ds[name].sel(epoch=[e]).variable.load(), part[name].variable)
    assert np.isnan(ds["metric"].sel(epoch=0, metric_name="val_acc"))
    assert float(ds["metric"].sel(epoch=2, metric_name="val_acc")) == 0.5
    fc = layer_activations(ds, "fc")
    assert fc.shape == (3, 30, 3) and np.isfinite(fc.values).all()
    with pytest.raises(RunError, match=r"layer 'nope' is not in this run; recorded layers: \['conv.1', 'fc'\]"):
        layer_activations(ds, "nope")


def test_plain_xarray_and_netcdf4_read_the_files(tmp_path):
    _make_run(tmp_path / "run")
    plain = xr.open_mfdataset(str(tmp_path / "run" / "epochs" / "*.nc"), combine="nested", concat_dim="epoch",
                              data_vars="minimal", coords="minimal", compat="override", join="outer")
    assert plain.sizes["epoch"] == 3
    with netCDF4.Dataset(tmp_path / "run" / "run.nc") as nc:
        assert nc.getncattr("neuromapper_schema") == store.SCHEMA_VERSION
        assert list(nc["layer"][:]) == ["conv.1", "fc"]


def test_not_a_run(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        open_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"is not a NeuroMapper run: expected a directory containing run.nc"):
        open_run(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    xr.Dataset({"x": ("a", [1, 2])}).to_netcdf(tmp_path / "other" / "run.nc")
    with pytest.raises(RunError, match=r"other/run.nc is not a NeuroMapper file: it has no 'neuromapper_schema'"):
        open_run(tmp_path / "other")


def test_no_epochs_yet(tmp_path):
    _make_run(tmp_path / "run", epochs=0)
    with pytest.raises(RunError, match="has no recorded epochs yet"):
        open_run(tmp_path / "run")


def test_truncated_epoch_file_is_named(tmp_path):
    _make_run(tmp_path / "run")
    victim = store.epoch_file(tmp_path / "run", 1)
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunError, match=r"epoch-000001.nc is truncated or corrupt \(\d+ bytes; expected a complete"):
        open_run(tmp_path / "run")


def test_newer_schema_is_refused(tmp_path):
    _make_run(tmp_path / "run")
    future = _epoch(3)
    future.attrs["neuromapper_schema"] = store.SCHEMA_VERSION + 1
    store.append_epoch(tmp_path / "run", future)
    with pytest.raises(RunError, match=rf"epoch-000003.nc was written with NeuroMapper schema version "
                                       rf"{store.SCHEMA_VERSION + 1}, but this NeuroMapper reads schema versions up to "
                                       rf"{store.SCHEMA_VERSION}"):
        open_run(tmp_path / "run")


def test_epoch_from_another_probe_is_refused(tmp_path):
    _make_run(tmp_path / "run", n=30)
    store.append_epoch(tmp_path / "run", _epoch(5, n=31))
    with pytest.raises(RunError, match=r"epoch-000005.nc has 31 'sample' entries but run.nc has 30"):
        open_run(tmp_path / "run")


def test_leftover_tmp_file_is_ignored(tmp_path):
    _make_run(tmp_path / "run")
    (store.epoch_file(tmp_path / "run", 3).with_suffix(".nc.tmp")).write_bytes(b"\x89HDF half written")
    assert open_run(tmp_path / "run")["epoch"].values.tolist() == [0, 1, 2]


CHILD = textwrap.dedent(
    """
    import sys, torch
    from torch import nn
    from neuromapper import Recorder
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    x, y = torch.randn(20000, 64), torch.arange(20000) % 10
    with Recorder(model, layers=["0", "1", "2"], probe=(x, y), path=sys.argv[1], complevel=4) as rec:
        for epoch in range(10_000):
            with torch.no_grad():
                model[2].bias.fill_(float(epoch))  # makes each epoch's logits checkable
            rec.capture(epoch)
            rec.flush()
            print("durable", epoch, flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("extra_delay", [0.0, 0.13, 0.29])
def test_sigkill_mid_run_leaves_every_finished_epoch_readable(tmp_path, extra_delay):
    path = tmp_path / "killed"
    durable = []
    with subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True) as proc:
        try:
            for line in proc.stdout:
                durable.append(int(line.split()[1]))
                if len(durable) >= 3:
                    break
            time.sleep(extra_delay)  # land the kill at different points of the next write
            os.kill(proc.pid, signal.SIGKILL)
            durable += [int(line.split()[1]) for line in proc.stdout]
        finally:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ds = open_run(path)
    epochs = ds["epoch"].values.tolist()
    assert epochs[: len(durable)] == durable  # every epoch reported durable is there...
    assert epochs == list(range(len(epochs))) and len(epochs) <= len(durable) + 1  # ...and at most one more
    logits = ds["logits"].values
    y = ds["label"].values
    for i, epoch in enumerate(epochs):
        assert np.isfinite(logits[i]).all()
        # bias = epoch shifts every logit by the same amount, so the spread stays put
        assert abs(float(np.median(logits[i] - logits[0])) - epoch) < 1e-3
    assert (y == np.arange(20000) % 10).all()


REOPEN = textwrap.dedent(
    """
    import gc, sys
    from neuromapper import open_run
    keep = open_run(sys.argv[1]); keep["layer_kind"].values
    for _ in range(5):
        other = open_run(sys.argv[1]); other["layer_kind"].values
        del other
        gc.collect()
    print("reopened", keep["layer"].values.tolist())
    """
)


def test_reopening_a_run_while_another_handle_closes_does_not_crash(tmp_path):
    """A dashboard opens the same run per session; vlen strings made that segfault (xarray#9093)."""
    _make_run(tmp_path / "run")
    result = subprocess.run([sys.executable, "-c", REOPEN, str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1000:]
    assert "reopened ['conv.1', 'fc']" in result.stdout
    with netCDF4.Dataset(tmp_path / "run" / "run.nc") as nc:
        assert nc["layer"].dtype == "S1"  # stored as a char array, not a variable-length string


THREADS = """
import sys
from concurrent.futures import ThreadPoolExecutor
from neuromapper import open_run

def read(i):
    ds = open_run(sys.argv[1])
    return float(ds["activation"].sel(layer="fc").mean().compute())

with ThreadPoolExecutor(4) as pool:
    means = list(pool.map(read, range(40)))
print("equal", len(set(means)) == 1, len(means))
"""


def test_opening_and_reading_a_run_from_many_threads_does_not_crash(tmp_path):
    """HDF5 is not thread-safe and xarray opens partly unlocked: a dask worker reducing two layers
    crashed with a bus error before every open and read went through ``store.HDF5_GUARD``."""
    _make_run(tmp_path / "run", epochs=4, n=200)
    result = subprocess.run([sys.executable, "-c", THREADS, str(tmp_path / "run")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-1000:]
    assert "equal True 40" in result.stdout


# --- embeddings ---------------------------------------------------------------------------------


def _embedding(key: str, epochs, n: int = 30, layers=("conv.1", "fc"), seed: int = 0) -> xr.DataArray:
    """An embedding in the schema neuromapper.reduce writes, with made-up coordinates."""
    rng = np.random.default_rng(seed)
    shape = (len(epochs), len(layers))
    return xr.DataArray(
        rng.normal(size=(*shape, n, 2)).astype(np.float32),
        dims=("epoch", "layer", "sample", "xy"),
        coords={"epoch": np.asarray(epochs, dtype=np.int64), "layer": np.array(layers), "sample": np.arange(n),
                "xy": np.array(["x", "y"]), "trustworthiness": (("epoch", "layer"), rng.random(shape)),
                "unplaced": (("epoch", "layer"), np.zeros(shape, np.int32))},
        name="embedding",
        attrs={"method": "pca", "params": ReduceParams(method="pca").to_json(), "key": key, "backend": "test",
               "created": f"2026-01-0{1 + seed}T00:00:00+00:00", "seconds": 1.5},
    )


def test_embedding_round_trip_replace_and_list(tmp_path):
    _make_run(tmp_path / "run")
    key = ReduceParams(method="pca").key(["conv.1", "fc"])
    first = _embedding(key, [0, 1, 2])
    path = store.write_embedding(tmp_path / "run", first)
    assert path == tmp_path / "run" / "embeddings" / f"{key}.nc"
    xr.testing.assert_identical(store.load_embedding(tmp_path / "run", key), first)
    second = _embedding(key, [0, 1, 2], seed=1)
    store.write_embedding(open_run(tmp_path / "run"), second)  # a Dataset stands for its directory
    xr.testing.assert_identical(store.load_embedding(tmp_path / "run", key), second)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # replaced; no temporary file left
    (listed,) = store.list_embeddings(tmp_path / "run")
    assert (listed["key"], listed["method"], listed["epochs"], listed["seconds"]) == (key, "pca", [0, 1, 2], 1.5)
    assert listed["params"]["method"] == "pca" and listed["layers"] is None


@pytest.mark.parametrize("key", ["../../x", "../run", "0123456789ABCDEG", "0123", "", None])
def test_a_key_from_a_user_is_validated(tmp_path, key):
    _make_run(tmp_path / "run")
    with pytest.raises(ValueError, match=r"key: expected 16 lowercase hexadecimal digits .*, got"):
        store.load_embedding(tmp_path / "run", key)
    with pytest.raises(ValueError, match=r"key: expected 16 lowercase hexadecimal digits"):
        store.write_embedding(tmp_path / "run", _embedding(key, [0]))
    assert not (tmp_path / "x").exists() and not (tmp_path / "run" / "embeddings").exists()


def test_a_corrupt_embedding_is_skipped_by_list_and_named_by_load(tmp_path):
    run = tmp_path / "run"
    _make_run(run)
    good = ReduceParams(method="pca").key(["conv.1", "fc"])
    bad = ReduceParams.DEFAULT.key(["conv.1", "fc"])
    store.write_embedding(run, _embedding(good, [0, 1, 2]))
    (run / "embeddings" / f"{bad}.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (run / "embeddings" / "notes.nc").write_bytes(b"not a key")
    assert [e["key"] for e in store.list_embeddings(run)] == [good]
    with pytest.raises(RunError, match=rf"key: the embedding '{bad}' cannot be read .*truncated or corrupt.*delete"):
        store.load_embedding(run, bad)
    assert store.find_embedding(run) is None  # as if absent: a reduction writes a good one over it
    with pytest.raises(FileNotFoundError, match=rf"no embedding '{'0' * 16}' stored .*stored keys: \['{good}'\]"):
        store.load_embedding(run, "0" * 16)


def test_find_embedding_current_partial_or_cut_to_what_the_caller_has_open(tmp_path):
    run = tmp_path / "run"
    _make_run(run, epochs=3)
    key = ReduceParams.DEFAULT.key(["conv.1", "fc"])
    stored = _embedding(key, [0, 1, 2])
    store.write_embedding(run, stored)
    xr.testing.assert_identical(store.find_embedding(run), stored)
    assert store.find_embedding(run, method="pca") is None and store.find_embedding(run, ReduceParams(seed=1)) is None
    opened_before = open_run(run)
    store.append_epoch(run, _epoch(3))  # the run grows: the stored embedding covers its first epochs
    assert store.find_embedding(run) is None
    xr.testing.assert_identical(store.find_embedding(run, partial=True), stored)
    xr.testing.assert_identical(store.find_embedding(opened_before), stored)  # current for what that caller sees
    store.write_embedding(run, _embedding(key, [0, 1, 2, 3]))  # extended meanwhile, by another process
    cut = store.find_embedding(opened_before)
    assert cut["epoch"].values.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(cut.values, store.load_embedding(run, key).values[:3])
    store.write_embedding(run, _embedding(key, [0, 2]))  # not the run's first epochs: stale in every sense
    assert store.find_embedding(run) is None and store.find_embedding(run, partial=True) is None


def test_a_full_disk_gives_a_clear_error_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _make_run(run, epochs=2)
    before = {p.name: p.read_bytes() for p in (run / store.EPOCH_DIR).iterdir()}
    real = xr.Dataset.to_netcdf

    def disk_fills_up(self, path, *args, **kwargs):
        with open(path, "wb") as fh:  # part of the file reaches the disk, then HDF5 fails as it does on ENOSPC
            fh.write(b"\x89HDF\r\n\x1a\n" + b"\0" * 4096)
        raise RuntimeError("NetCDF: HDF error")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", disk_fills_up)
    with pytest.raises(OSError, match=r"could not write .*epoch-000002\.nc .*NetCDF: HDF error.*free on that disk"):
        store.append_epoch(run, _epoch(2))
    monkeypatch.setattr(xr.Dataset, "to_netcdf", real)
    assert {p.name: p.read_bytes() for p in (run / store.EPOCH_DIR).iterdir()} == before  # no .tmp, nothing changed
    assert store.recorded_epochs(run) == [0, 1]


def test_an_epoch_file_copied_from_another_run_of_the_same_shape_is_refused(tmp_path):
    import shutil

    _make_run(tmp_path / "a", epochs=2)
    _make_run(tmp_path / "b", epochs=3)
    shutil.copy(store.epoch_file(tmp_path / "b", 2), store.epoch_file(tmp_path / "a", 2))
    with pytest.raises(RunError, match=r"epoch-000002\.nc belongs to another run"):
        open_run(tmp_path / "a")
