"""Runs unlike the demo end to end (reduce, the app, export): one epoch, 20, 100 and 1,000 classes."""

from __future__ import annotations

import json
import re

import numpy as np
import panel as pn
import pytest

from neuromapper import export_html, reduce
from neuromapper.synthetic import make_synthetic_run
from neuromapper.views.shell import MANY_CLASSES, App


@pytest.mark.parametrize(("epochs", "classes", "samples"), [(1, 10, 300), (2, 20, 400), (2, 100, 1000), (2, 1000, 3000)],
                         ids=["one-epoch", "20-classes", "100-classes", "1000-classes"])
def test_reduce_view_and_export(tmp_path, epochs, classes, samples):
    run = make_synthetic_run(tmp_path / "run", n_samples=samples, n_epochs=epochs, n_layers=2, n_classes=classes,
                             dims=16)
    emb = reduce(run)
    assert emb.sizes["epoch"] == epochs and np.isfinite(emb.values).mean() > 0.99
    if epochs == 1:
        assert np.isnan(emb["disparity"].values).all()  # nothing to align to
    app = App(run)
    try:
        state, painter = app.state, app.embeddings.painter
        assert state.scene is not None and state.error == "" and state.param.epoch.objects == list(range(epochs))
        frame, rgba = painter.layer_image("layer0")
        assert (rgba[..., 3] > 0).sum() > 50
        toggles = app._class_toggles()
        if classes > MANY_CLASSES:
            assert isinstance(toggles, pn.widgets.MultiChoice) and len(toggles.options) == classes
        else:
            assert len(toggles[0].options) == classes
        state.classes = state.run.class_names[:1]
        assert f"{samples // classes:,} of {samples:,} samples drawn" in painter.legend_html()
    finally:
        app.dispose()
    page = export_html(run, tmp_path / "snap.html", progress=False).read_text()
    data = json.loads(re.search(r'<script id="nm-data" type="application/json">(.*?)</script>', page, re.S).group(1))
    assert data["classes"] == [f"c{k}" for k in range(classes)] and len(data["epochs"]) == epochs
