"""Every model family of the record matrix, recorded, reduced, served in Chromium and exported.

The models and their probes are those of ``tests/test_record_models.py`` (MLP, CNN, ResNet-18,
LSTM and GRU in both layouts, Transformer encoder in both layouts, a one-logit head, 20- and
1,000-class heads), imported from there. Each is recorded for two epochs with one training step
between them on a probe of the case's input shape, reduced with PCA (fast; the dashboard is
given that embedding, so no session starts a reduction), then

* served: the page loads without a console error, shows one plot per recorded layer, and a
  player step moves the session to epoch 1 and changes the pictures;
* exported: the snapshot opens from disk in Chromium without a console error or a request, and
  draws one picture per layer.

One browser is shared by the whole file (pytest-playwright's session browser).
"""

from __future__ import annotations

import numpy as np
import panel as pn
import pytest
import torch

from neuromapper import Recorder, export_html, open_run, reduce
from neuromapper.views.shell import App, _session_dispatch

from ..test_record_models import CASES, train_step
from .conftest import DOCUMENT_IDLE, IMAGE_CHECKSUMS, screenshot, wait_until

pytestmark = pytest.mark.browser

PROBE = 96  # samples: enough for a PCA and a picture, small enough to record in a fraction of a second

# Per layer plot (by title): how many pixels of its picture have any ink.
LAYER_INK = """
() => {
  const out = {};
  for (const m of Bokeh.documents[0].all_models) {
    if (!m.renderers || !m.title || !m.title.text) continue;
    for (const r of m.renderers) {
      if (!r.glyph || r.glyph.type !== "ImageRGBA") continue;
      const img = r.data_source.data.image[0];
      const flat = typeof img[0] === "number" ? img : img.flat();
      let ink = 0;
      for (let i = 0; i < flat.length; i++) if (flat[i] >>> 24) ink++;
      out[m.title.text] = ink;
    }
  }
  return out;
}
"""
SNAPSHOT_INK = """
() => Object.fromEntries([...document.querySelectorAll('canvas.nm-plot')].map(c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i]) ink++;
  return [c.dataset.layer, ink];
}))
"""


def record(case, path):
    """Record ``case`` for epochs 0 and 1 (one SGD step between) on a fresh probe of its input shape."""
    torch.manual_seed(0)
    model = case.model
    x = torch.randn(PROBE, *case.x.shape[1:])
    y = torch.randint(0, case.n_classes, (PROBE,))
    layers = list(case.expected(model.eval(), x[:2]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    with Recorder(model, layers=layers, probe=(x, y), path=path, **case.recorder_kwargs) as rec:
        rec.capture(0)
        loss = train_step(model, x, y, optimizer)
        rec.capture(1, metrics={"train_loss": loss.item()})
    return layers


@pytest.mark.parametrize("name", list(CASES))
def test_model_is_served_and_exported(name, page, console_errors, serve, tmp_path):
    case = CASES[name]()
    layers = record(case, tmp_path / name)
    embedding = reduce(tmp_path / name, method="pca")
    assert [str(v) for v in embedding["layer"].values] == layers

    apps: list[App] = []

    def factory():
        app = App(tmp_path / name, embedding=embedding, dispatch=_session_dispatch())
        app.embeddings.painter.layers = layers  # every layer side by side (the page shows four by default)
        pn.state.on_session_destroyed(lambda _context: app.dispose())
        apps.append(app)
        return app.template()

    url = serve(factory)
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(url, timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    wait_until(lambda: page.locator(".nm-layer").count() == len(layers), timeout=60, message="one plot per layer")
    before = wait_until(lambda: (now := page.evaluate(IMAGE_CHECKSUMS)) and len(now) == len(layers) and now,
                        timeout=60, message="a picture per layer")
    assert sorted(before) == sorted(layers)
    assert [layer for layer, ink in page.evaluate(LAYER_INK).items() if not ink] == []
    page.locator("button.next").first.click()
    wait_until(lambda: apps[0].state.epoch == 1, message="the player to step to epoch 1")
    wait_until(lambda: page.evaluate(IMAGE_CHECKSUMS) != before, message="the pictures to follow the step")
    wait_until(lambda: page.locator(".nm-epoch").filter(has_text="epoch 1 of 0–1").count() == 1,
               message="the epoch beside the player")
    screenshot(page, f"model-{name}")

    snapshot = export_html(tmp_path / name, tmp_path / f"{name}.html", embedding=embedding, progress=False)
    page.goto(snapshot.as_uri())
    page.wait_for_function("() => document.body.dataset.rendered", timeout=30_000)
    assert page.locator("canvas.nm-plot").count() == len(layers)
    assert [layer for layer, ink in page.evaluate(SNAPSHOT_INK).items() if not ink] == []
    screenshot(page, f"model-{name}-export")
    assert [u for u in requests if not u.startswith((url, snapshot.as_uri(), "data:", "blob:"))] == []


def test_pca_places_a_one_unit_layer_along_its_value(tmp_path):
    case = CASES["one-logit"]()
    record(case, tmp_path / "run")
    embedding = reduce(tmp_path / "run", method="pca")
    assert int(embedding["unplaced"].sel(layer="2").sum()) == 0
    logit = open_run(tmp_path / "run")["activation"].sel(layer="2").values[:, :, 0]
    for epoch, layout in enumerate(embedding.sel(layer="2").values):
        # a line (up to the rotation that aligns it to the epoch before) ordered as the logits are
        spread = np.linalg.svd(layout - layout.mean(0), compute_uv=False)
        assert spread[1] < 1e-4 * spread[0]
        direction = np.linalg.svd(layout - layout.mean(0))[2][0]
        assert abs(np.corrcoef(layout @ direction, logit[epoch])[0, 1]) > 0.9999
