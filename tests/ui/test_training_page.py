"""The Training page in a real browser: Debian's chromium driven by Playwright.

Two recorded runs of ``tests/conftest.py``: an MLP on real 8x8 digits (first-layer weights as
8x8 images) and an MLP on two moons (the decision boundary over the input grid). Each is served
as ``neuromapper serve`` serves it, with an embedding given to the app (``hand_made_embedding``) so
that no reduction competes with the page for the two cores. What the browser shows is read from the Bokeh document
(``TRAINING_PICTURES``) and checked against the session's painter.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from neuromapper import plots
from neuromapper.views.run import RunFacts

from .conftest import DOCUMENT_IDLE, refuse_other_hosts, screenshot, wait_until

pytestmark = [pytest.mark.browser]

# One entry per picture of the Training page (the figure's CSS class on its pane decides nothing in
# Bokeh's models, so the figure's title prefix does): a position-weighted checksum of its image,
# floats rounded to 1e-4 so that the server's float32 and the browser's arrays agree.
TRAINING_PICTURES = """
() => {
  const out = {};
  const doc = window.Bokeh && Bokeh.documents[0];
  if (!doc) return out;
  for (const m of doc.all_models) {
    if (m.type !== "Figure" || !m.title || !m.title.text) continue;
    for (const r of m.renderers) {
      const glyph = r.glyph, data = r.data_source && r.data_source.data;
      if (!glyph || !data || !(glyph.type === "Image" || glyph.type === "ImageRGBA") || !data.image.length) continue;
      const img = data.image[0];
      const flat = img.length !== undefined && typeof img[0] === "number" ? img : img.flat ? img.flat() : img;
      let sum = 0;
      for (let i = 0; i < flat.length; i++) {
        const v = glyph.type === "Image" ? (Number.isNaN(flat[i]) ? 7 : Math.round(flat[i] * 1e4)) : flat[i] >>> 0;
        sum = (sum + ((v % 2147483647) + 2147483647) % 2147483647 * ((i % 9973) + 1)) % 2147483647;
      }
      out[m.title.text] = sum;
    }
  }
  return out;
}
"""


def checksum(source_data: dict) -> int:
    """TRAINING_PICTURES' checksum of Bokeh source data made on the server."""
    img = np.asarray(source_data["image"][0])
    if img.dtype == np.uint32:
        flat = img.ravel().astype(np.int64)
    else:
        flat = np.where(np.isnan(img), 7, np.round(img.astype(np.float64) * 1e4)).ravel().astype(np.int64)
    flat = ((flat % 2147483647) + 2147483647) % 2147483647
    return int((flat * (np.arange(flat.size) % 9973 + 1)).sum() % 2147483647)


def shown(page, prefix: str):
    pictures = page.evaluate(TRAINING_PICTURES)
    return next((v for k, v in pictures.items() if k.startswith(prefix)), None)


def open_training(page, url):
    refused = refuse_other_hosts(page, url.split("/")[2])
    page.goto(url, timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    page.locator(".bk-tab").filter(has_text="Training").click()
    return refused


def hand_made_embedding(run) -> xr.DataArray:
    """An embedding of every layer at every epoch that is the probe's first two input features.

    The Training page does not read the embedding; given one, the session computes none, so no
    reduction competes with the page for the two cores (a PCA of the moons run's 101 epochs with
    its trustworthiness took 46 s here under load).
    """
    from neuromapper.reduce_params import ReduceParams

    facts = RunFacts.open(run)
    xy = np.asarray(facts.inputs, np.float32)[:, :2]
    layouts = np.broadcast_to(xy, (len(facts.epochs), len(facts.layers), *xy.shape)).copy()
    return xr.DataArray(layouts, dims=("epoch", "layer", "sample", "xy"), name="embedding",
                        coords={"epoch": facts.epochs, "layer": facts.layers, "sample": facts.samples, "xy": ["x", "y"]},
                        attrs={"method": "pca", "params": ReduceParams(method="pca").to_json(), "key": "hand-made",
                               "created": "test"})


@pytest.fixture
def served(serve):
    """``served(run) -> (url, apps)``: the app over ``run`` as ``neuromapper serve`` serves it."""

    def start(run):
        import panel as pn

        from neuromapper.views.shell import EXTENSIONS, App, _session_dispatch, local_resources

        apps: list = []
        embedding = hand_made_embedding(run)

        def session():
            pn.extension(*EXTENSIONS)
            local_resources()
            app = App(run, embedding=embedding, dispatch=_session_dispatch())
            pn.state.on_session_destroyed(lambda _context: app.dispose())
            apps.append(app)
            return app.template()

        return serve(session), apps

    return start


def step_changes(page, apps, prefix: str, data) -> None:
    """The picture titled ``prefix…`` shows ``data()`` now; after a player step it changes and shows it again."""
    state = apps[0].state
    before = wait_until(lambda: shown(page, prefix) == checksum(data()) and shown(page, prefix),
                        timeout=60, message=f"the {prefix} picture of the current epoch")
    epoch = state.epoch
    page.locator("button.next").first.click()
    wait_until(lambda: state.epoch != epoch, message="the server to step")
    after = wait_until(lambda: (now := shown(page, prefix)) != before and now == checksum(data()) and now,
                       timeout=30, message=f"the {prefix} picture to change to the new epoch's")
    assert after != before


def test_weight_grids_follow_the_player(page, console_errors, served, digits_mlp_run):
    url, apps = served(digits_mlp_run)
    refused = open_training(page, url)
    view = wait_until(lambda: apps and apps[0].views.get("Training"), message="the session's Training page")
    painter = view.painter
    assert painter.weight_layer is not None
    wait_until(lambda: page.locator(".nm-weight-grid").count() == 1, timeout=60, message="the weight grid")
    step_changes(page, apps, painter.weight_layer, lambda: plots.grid_source_data(painter.weight_grid()))
    assert page.locator(".nm-boundary").count() == 0  # digits: no 2-D inputs, said in words instead
    assert "decision boundary" in page.get_by_text("Not in this run:").inner_text()
    screenshot(page, "training-digits-mlp")
    assert refused == []


def test_the_decision_boundary_follows_the_player(page, console_errors, served, moons_run):
    url, apps = served(moons_run)
    open_training(page, url)
    view = wait_until(lambda: apps and apps[0].views.get("Training"), message="the session's Training page")
    painter = view.painter
    wait_until(lambda: page.locator(".nm-boundary").count() == 1, timeout=60, message="the boundary")

    def boundary():
        (x0, x1), (y0, y1) = painter.boundary_ranges()
        return plots._image_source(painter.boundary_picture(), x0, x1, y0, y1)

    step_changes(page, apps, "P(", boundary)  # the boundary is titled with the class whose probability it is
    screenshot(page, "training-moons")
