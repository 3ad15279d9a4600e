"""Bad input everywhere a user can give it: a clear error naming the thing and what was expected,
and nothing recorded changed.

One run is recorded for the module (a small MLP on real digits, 3 epochs, reduced); every case
that reads it checks afterwards that every file of the run is byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn

from neuromapper import Recorder, RunError, export_html, load_embedding, open_run, reduce, store
from neuromapper.reduce_params import ReduceParams


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    path = tmp_path_factory.mktemp("bad") / "run"
    with Recorder(_mlp(), layers=["1", "3"], probe=(digits.x[:200], digits.y[:200]), path=path) as rec:
        for epoch in range(3):
            rec.capture(epoch)
    reduce(path)
    return path


def _fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def untouched(run):
    """The run, checked unchanged after the test."""
    before = _fingerprint(run)
    yield run
    assert _fingerprint(run) == before, "a bad input changed what was recorded"


@pytest.fixture
def broken(run, tmp_path):
    """``broken(edit) -> path``: a copy of the run with ``edit(copy)`` applied (corrupt, truncated, foreign files)."""
    def make(edit):
        copy = shutil.copytree(run, tmp_path / "copy")
        edit(copy)
        return copy
    return make


def _epoch(path: Path, epoch: int) -> Path:
    return store.epoch_file(path, epoch)


# (case id, how to break the copy, exception, message pattern naming the thing and what was expected)
BROKEN_RUNS = [
    ("truncated-epoch", lambda p: _epoch(p, 1).write_bytes(_epoch(p, 1).read_bytes()[:300]), RunError,
     r"epoch-000001\.nc is truncated or corrupt .* expected a complete netCDF-4 file"),
    ("garbage-epoch", lambda p: _epoch(p, 2).write_bytes(b"not a netcdf file" * 10), RunError,
     r"epoch-000002\.nc is truncated or corrupt"),
    ("empty-epoch", lambda p: _epoch(p, 0).write_bytes(b""), RunError, r"epoch-000000\.nc is truncated or corrupt \(0 bytes"),
    ("missing-run-file", lambda p: (p / store.RUN_FILE).unlink(), RunError, r"is not a NeuroMapper run: expected a directory containing run\.nc"),
    ("no-epochs", lambda p: shutil.rmtree(p / store.EPOCH_DIR), RunError, r"has no recorded epochs yet \(expected .*epoch-NNNNNN\.nc\)"),
    ("foreign-run-file", lambda p: xr.Dataset({"x": ("a", [1, 2])}).to_netcdf(p / store.RUN_FILE), RunError,
     r"run\.nc is not a NeuroMapper file: it has no 'neuromapper_schema' attribute"),
    ("newer-schema", lambda p: _rewrite(_epoch(p, 1), neuromapper_schema=99), RunError,
     r"epoch-000001\.nc was written with NeuroMapper schema version 99, but this NeuroMapper reads schema versions up to"),
    ("other-probe", lambda p: _rewrite(_epoch(p, 1), subset=100), RunError,
     r"epoch-000001\.nc has 100 'sample' entries but run\.nc has 200"),
    ("copied-from-another-run", lambda p: _rewrite(_epoch(p, 1), run_id="0" * 32), RunError,
     r"epoch-000001\.nc belongs to another run"),
]


def _rewrite(file: Path, subset: int | None = None, **attrs) -> None:
    with xr.open_dataset(file) as ds:
        ds = ds.load()
    if subset:
        ds = ds.isel(sample=slice(0, subset))
    ds.attrs.update(attrs)
    file.unlink()
    ds.to_netcdf(file)


@pytest.mark.parametrize(("edit", "error", "pattern"), [c[1:] for c in BROKEN_RUNS], ids=[c[0] for c in BROKEN_RUNS])
def test_broken_runs_are_refused_by_name(broken, edit, error, pattern):
    path = broken(edit)
    before = _fingerprint(path)
    with pytest.raises(error, match=pattern):
        open_run(path)
    assert _fingerprint(path) == before


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"method": "tsne-ish"}, r"method: expected one of \['anchored-umap', 'aligned-umap', 'umap', 'pca', 'tsne'\]"),
    ({"n_neighbors": 1}, r"n_neighbors: expected an integer from 2 to 200, got 1"),
    ({"n_neighbors": 10**6}, r"n_neighbors: expected an integer from 2 to 200"),
    ({"n_neighbors": 2.5}, r"n_neighbors: expected an integer"),
    ({"min_dist": -0.1}, r"min_dist: expected a number from 0\.0 to 0\.99, got -0\.1"),
    ({"min_dist": float("nan")}, r"min_dist: expected a number from 0\.0 to 0\.99"),
    ({"min_dist": "0.1"}, r"min_dist: expected a number"),
    ({"per_class": 0}, r"per_class: expected an integer >= 1, got 0"),
    ({"seed": -1}, r"seed: expected an integer >= 0, got -1"),
    ({"layers": []}, r"layers: expected None \(all\) or layer names"),
    ({"layers": ["nope"]}, r"layers: \['nope'\] not recorded in this run; recorded layers: \['1', '3'\]"),
    ({"n_neighbors": 199, "per_class": 2}, r"n_neighbors: expected fewer than the 20 samples being embedded"),
], ids=lambda v: ",".join(f"{k}={v[k]!r}" for k in v) if isinstance(v, dict) else "")
def test_bad_reduce_parameters(untouched, kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        reduce(untouched, **kwargs)


@pytest.mark.parametrize(("key", "error", "pattern"), [
    ("../../etc/passwd", ValueError, r"key: expected 16 lowercase hexadecimal digits"),
    ("0123456789abcdef", FileNotFoundError, r"key: no embedding '0123456789abcdef' stored in .*; stored keys: \["),
    ("ABCDEF0123456789", ValueError, r"key: expected 16 lowercase hexadecimal digits"),
])
def test_bad_embedding_keys(untouched, key, error, pattern):
    with pytest.raises(error, match=pattern):
        load_embedding(untouched, key)


def test_a_corrupt_embedding_is_named_and_recomputed_over(broken):
    path = broken(lambda p: None)
    key = ReduceParams().key(["1", "3"])
    store.embedding_file(path, key).write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(RunError, match=rf"key: the embedding '{key}' cannot be read .* recompute it"):
        load_embedding(path, key)
    assert reduce(path).sizes["epoch"] == 3  # reduce writes a good one over it


@pytest.mark.parametrize(("kwargs", "error", "pattern"), [
    ({"model": "resnet"}, TypeError, r"model: expected a torch\.nn\.Module, got str"),
    ({"probe": None}, ValueError, r"probe: required"),
    ({"probe": (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long))}, ValueError, r"probe: the probe set is empty"),
    ({"probe": (torch.zeros(5, 1, 8, 8), torch.zeros(4, dtype=torch.long))}, ValueError, r"probe: 5 inputs but 4 labels"),
    ({"probe": (torch.zeros(4, 1, 8, 8), torch.tensor([0.5, 1, 2, 3]))}, ValueError, r"probe labels: expected integer class indices"),
    ({"probe": (torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 12]))}, ValueError, r"probe labels: .*0\.\.9"),
    ({"layers": []}, ValueError, r"layers: expected at least one"),
    ({"layers": ["9"]}, ValueError, r"layers: \['9'\] not found in Sequential; valid names: \['0', '1', '2', '3'\]"),
    ({"batch_size": 0}, ValueError, r"batch_size: expected a positive integer, got 0"),
    ({"channel_reduce": "median"}, ValueError, r"channel_reduce: expected one of \('mean', 'max'\), got 'median'"),
    ({"precision": "float8"}, ValueError, r"precision: expected one of"),
    ({"class_names": ["a", "b"]}, ValueError, r"class_names: .*2.*10"),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else "")
def test_bad_recorder_arguments(tmp_path, digits, kwargs, error, pattern):
    args = {"model": _mlp(), "layers": ["1", "3"], "probe": (digits.x[:20], digits.y[:20]), "path": tmp_path / "r",
            **kwargs}
    with pytest.raises(error, match=pattern):
        Recorder(**args)
    assert not (tmp_path / "r" / store.EPOCH_DIR).exists()


@pytest.mark.parametrize(("epoch", "metrics", "pattern"), [
    (-1, None, r"epoch: expected a non-negative integer, got -1"),
    (1.5, None, r"epoch: expected a non-negative integer, got 1\.5"),
    (True, None, r"epoch: expected a non-negative integer, got True"),
    (1, {"loss": "low"}, r"metrics\['loss'\]: expected a number, got 'low'"),
])
def test_bad_captures_keep_what_was_recorded(tmp_path, digits, epoch, metrics, pattern):
    path = tmp_path / "r"
    with Recorder(_mlp(), layers=["1"], probe=(digits.x[:20], digits.y[:20]), path=path) as rec:
        rec.capture(0)
        rec.flush()
        with pytest.raises(ValueError, match=pattern):
            rec.capture(epoch, metrics=metrics)
    assert open_run(path)["epoch"].values.tolist() == [0]


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"width": 5}, r"width: expected an integer number of pixels from 64 to 2048, got 5"),
    ({"epochs": [99]}, r"epochs: \[99\] "),
    ({"layers": ["nope"]}, r"layers: \['nope'\] "),
    ({"strategy": "pdf"}, r"strategy: expected one of"),
])
def test_bad_export_arguments(untouched, tmp_path, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        export_html(untouched, tmp_path / "x.html", progress=False, **kwargs)
    assert not (tmp_path / "x.html").exists()


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "neuromapper.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize(("argv", "pattern"), [
    (["info", "{missing}"], r"neuromapper info: error: .* does not exist"),
    (["reduce", "{run}", "--n-neighbors", "1"], r"neuromapper reduce: error: n_neighbors: expected an integer from 2 to 200"),
    (["reduce", "{run}", "--layers", "nope"], r"layers: \['nope'\] not recorded"),
    (["export", "{run}", "-o", "{tmp}/x.html", "--embedding", "../../x"], r"key: expected 16 lowercase hexadecimal digits"),
    (["export", "{run}", "-o", "{tmp}/x.html", "--width", "9999"], r"width: expected an integer number of pixels"),
    (["serve", "{tmp}", "--no-show"], r"holds no NeuroMapper run"),
])
def test_bad_command_lines_fail_in_one_line(untouched, tmp_path, argv, pattern):
    result = _cli(*[a.format(run=untouched, tmp=tmp_path, missing=tmp_path / "missing") for a in argv])
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert __import__("re").search(pattern, lines[0]), lines[0]


def test_an_argument_parser_error_names_the_option(untouched):
    result = _cli("reduce", untouched, "--method", "t-sne")
    assert result.returncode == 2 and "argument --method: invalid choice: 't-sne'" in result.stderr


def test_nan_and_inf_activations_are_recorded_and_flagged_not_fatal(tmp_path, digits):
    class Exploding(nn.Module):  # a diverged network: one unit of the recorded layer is infinite
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)
            with torch.no_grad():
                self.fc.bias[3] = float("inf")

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.warns(RuntimeWarning, match=r"layer 'fc' at epoch 0: \d+ non-finite activation values"):
        with Recorder(Exploding(), layers=["fc"], probe=(digits.x[:20], digits.y[:20]), path=tmp_path / "r") as rec:
            rec.capture(0)
    ds = open_run(tmp_path / "r")
    assert int(ds["nonfinite"].sel(layer="fc", epoch=0)) > 0 and np.isinf(ds["activation"].values).any()
