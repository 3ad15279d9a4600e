"""The example notebook runs top to bottom in a real kernel and its outputs are what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "dashboards" / "explore.ipynb"


@pytest.mark.slow
def test_explore_notebook_executes_and_shows_the_viewer(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROMAPPER_RUNS", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # the kernel inherits this process's environment, NEUROMAPPER_RUNS included
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = {i: cell.get("outputs", []) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"}
    errors = [o for cell in outputs.values() for o in cell if o.get("output_type") == "error"]
    assert not errors, errors

    def code_index(fragment: str) -> int:
        return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and fragment in c.source)

    # the viewer cell renders a Panel/Bokeh widget, not a plain repr
    viewer_out = outputs[code_index("app = neuromapper.show(run)")]
    mimetypes = {m for o in viewer_out for m in o.get("data", {})}
    assert "application/vnd.holoviews_exec.v0+json" in mimetypes, mimetypes
    # the selection cell prints real sample ids, and the table lists them with labels and positions
    printed = "".join(o.get("text", "") for o in outputs[code_index("ids = page.select_box")])
    count = int(printed.split()[0])
    assert 0 < count < 500 and "samples selected: [" in printed
    table = outputs[code_index("page.selected().head(10)")][0]["data"]["text/plain"]
    assert "sample" in table and "prediction" in table and "fc2_x" in table
    # the trustworthiness table has one row per epoch 0-6 and one column per layer
    reduce_out = outputs[code_index("embedding = neuromapper.reduce(run)")]
    assert [o["output_type"] for o in reduce_out] == ["execute_result"], reduce_out  # no warnings printed
    trust = reduce_out[0]["data"]["text/plain"]
    assert all(layer in trust for layer in ("conv1", "conv2", "fc1", "fc2"))
    assert (tmp_path / "explore-digits" / "run.nc").exists()
    json.dumps(nb)  # the executed notebook is still valid JSON
