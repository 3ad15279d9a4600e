"""The project's own promises: README snippet runs, conda mirror in step with pyproject, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda names the PyTorch package differently from PyPI
CONDA_NAMES = {"torch": "pytorch"}


def _names(requirements) -> set[str]:
    return {re.split(r"[<>=!~ \[]", r, maxsplit=1)[0].lower() for r in requirements}


def test_readme_recorder_snippet_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- recorder-snippet -->\s*```python\n(.*?)```", readme, re.S)
    assert block, "README.md lost its recorder snippet markers"
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {"__name__": "readme"})
    from neuromapper import open_run

    run = open_run(tmp_path / "runs" / "digits-mlp")
    assert run["epoch"].values.tolist() == [0, 1, 2, 3, 4, 5]
    assert run.sizes["sample"] == 500
    losses = run["metric"].sel(metric_name="train_loss").values[1:]
    assert losses[-1] < losses[0]  # the snippet really trains


def test_anaconda_project_mirrors_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    conda = yaml.safe_load((ROOT / "anaconda-project.yml").read_text())
    wanted = {CONDA_NAMES.get(n, n) for n in _names(pyproject["project"]["dependencies"])}
    listed = _names(p for p in conda["packages"] if isinstance(p, str)) - {"python", "pip"}
    assert listed == wanted
    assert set(conda["commands"]) == {"demo", "dashboard", "export", "test"}
    for command in conda["commands"].values():  # every script a command names exists
        for word in command["unix"].split():
            if word.endswith(".py"):
                assert (ROOT / word).exists(), word


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_command = re.search(r"^(make test)\b", readme, re.M)
    assert test_command
    assert test_command.group(1) in (ROOT / ".ci" / "run").read_text()


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "neuromapper.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_info_json_of_a_recorded_run(small_run):
    result = _cli("info", str(small_run), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["epochs"] == [0, 1, 2, 3]
    assert info["layers"] == {"conv1": 8, "conv2": 16, "fc1": 128, "fc2": 10}
    assert info["samples"] == 300 and len(info["classes"]) == 10
    assert 0.5 < info["final_accuracy"] <= 1.0
    text = _cli("info", str(small_run)).stdout
    assert "epochs     4 (0-3)" in text and "conv2 (16)" in text


HEAVY = ("torch", "numba", "umap", "panel", "sklearn", "datashader")
LOADED = f"import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"


def test_import_neuromapper_loads_nothing_heavy():
    """``import neuromapper`` pays for numpy and xarray only; the rest is imported on first use."""
    result = subprocess.run([sys.executable, "-c", f"import neuromapper; {LOADED}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    lazy = ("import neuromapper; assert neuromapper.reduce.__name__ == 'neuromapper.reduce'; "
            "assert neuromapper.Recorder.__name__ == 'Recorder'; assert callable(neuromapper.export_html); "
            "assert issubclass(neuromapper.ReductionCancelled, RuntimeError); "
            "assert {'Recorder', 'reduce', 'export_html'} <= set(dir(neuromapper)); " + LOADED)
    result = subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert {"'numba'", "'torch'"} <= set(result.stdout.strip("[]\n").split(", "))  # loaded when asked for


@pytest.mark.parametrize("argv", [["--help"], ["reduce", "--help"], ["demo", "--help"]])
def test_cli_help_is_instant_and_imports_nothing_heavy(argv):
    code = ("import sys; from neuromapper.cli import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    print('exit', exc.code)\n" + LOADED)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["exit 0", "[]"], result.stdout
    assert "usage: neuromapper" in result.stdout


def test_cli_options_come_from_the_library():
    from neuromapper import ReduceParams
    from neuromapper.cli import DEMO_DATASETS, DEMO_MODELS, build_parser
    from neuromapper.data import DATASETS
    from neuromapper.demo import RECIPES

    assert DEMO_DATASETS == DATASETS
    assert set(DEMO_MODELS) == set(RECIPES)
    args = build_parser().parse_args(["reduce", "run"])
    assert ReduceParams(method=args.method, n_neighbors=args.n_neighbors, min_dist=args.min_dist, layers=args.layers,
                        per_class=args.per_class, seed=args.seed) == ReduceParams.DEFAULT


def test_info_on_a_run_that_grows_meanwhile(small_run, tmp_path, monkeypatch, capsys):
    """An epoch file written while ``info`` runs is left for the next call; a stale embedding says so."""
    import shutil

    import netCDF4

    from neuromapper import cli, reduce, store

    run = shutil.copytree(small_run, tmp_path / "run")
    reduce(run, method="pca")
    real_open = store.open_run

    def open_then_grow(path, *args, **kwargs):
        ds = real_open(path, *args, **kwargs)
        shutil.copy(store.epoch_file(run, 3), store.epoch_file(run, 4))
        with netCDF4.Dataset(store.epoch_file(run, 4), "a") as nc:
            nc["epoch"][:] = [4]
        return ds

    monkeypatch.setattr(store, "open_run", open_then_grow)
    assert cli.main(["info", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["epochs"] == [0, 1, 2, 3] and info["embeddings"][0]["current"] is True
    monkeypatch.undo()
    assert cli.main(["info", str(run)]) == 0
    printed = capsys.readouterr().out
    assert "epochs     5 (0-4)" in printed
    assert f"STALE: covers epochs 0-3 of epochs 0-4; `neuromapper reduce {run}` with these parameters extends it" in printed


def test_info_on_a_folder_that_is_not_a_run(tmp_path):
    result = _cli("info", str(tmp_path))
    assert result.returncode == 2
    assert "is not a NeuroMapper run" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_trains_to_95_percent_and_info_reports_it(tmp_path):
    """The acceptance run: 10 epochs on MNIST-5k, 2,000 held-out probe samples, 4 layers."""
    out = tmp_path / "demo"
    result = _cli("demo", "--no-serve", "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(_cli("info", str(out), "--json").stdout)
    assert info["epochs"] == list(range(11))
    assert list(info["layers"]) == ["conv1", "conv2", "fc1", "fc2"]
    assert info["samples"] == 2000 and len(info["classes"]) == 10
    assert info["final_accuracy"] >= 0.95
    assert "training on mnist5k" in result.stderr  # the tqdm progress bar
