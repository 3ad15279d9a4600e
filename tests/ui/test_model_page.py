"""The Model page in a real browser: Debian's chromium driven by Playwright.

The run is ``reduced_run`` (``small_run`` of ``tests/conftest.py`` with its default embedding, so
that the Embeddings page can show a selection made here). What the browser shows is read from
the Bokeh document (``CONFUSION_SOURCES``) and checked against the session's painter; a click
lands on a ribbon at the pixel Bokeh itself maps the ribbon's data position to.
"""

from __future__ import annotations

import numpy as np
import pytest

from neuromapper import plots
from neuromapper.views.shell import App

from .conftest import DOCUMENT_IDLE, IMAGE_CHECKSUMS, cli_app_factory, screenshot, wait_until
from .test_activations import _settled, open_dashboard

pytestmark = [pytest.mark.browser]

# JavaScript run in the page: the (true, predicted, count) rows of the chord's ribbons and of the
# bars' segments as the browser has them (the two sources carrying those columns; the bars' has
# an ``alpha`` column, the ribbons' not).
CONFUSION_SOURCES = """
() => {
  const doc = window.Bokeh && Bokeh.documents[0];
  const sources = doc ? [...doc.all_models].filter((m) => m.type === "ColumnDataSource" && m.data.predicted) : [];
  const kind = (d) => (d.alpha ? "bars" : d.level ? "heatmap" : "chord");
  const rows = (d) => Array.from(d.count, (n, i) => [d.true[i], d.predicted[i], Number(n)]).filter((r) => r[0] !== "");
  return Object.fromEntries(sources.map((m) => [kind(m.data), rows(m.data)]));
}
"""

# The pixel (relative to the figure's canvas) where the figure titled ``title`` draws data (x, y).
DATA_TO_PIXEL = """
({title, x, y}) => {
  const seen = new Set();
  let found = null;
  const walk = (v) => {
    if (!v || seen.has(v) || found) return;
    seen.add(v);
    if (v.model && v.model.type === "Figure" && v.frame && v.model.title && v.model.title.text === title) {
      found = [v.frame.x_scale.compute(x), v.frame.y_scale.compute(y)];
      return;
    }
    for (const c of (v.child_views || [])) walk(c);
  };
  for (const root of Object.values(Bokeh.index)) walk(root);
  return found;
}
"""
CHORD_TITLE = "errors: true → predicted class"


@pytest.fixture
def model_page(serve, reduced_run):
    """Serve the dashboard over the reduced small run; returns (url, apps created so far)."""
    apps: list[App] = []
    return serve(cli_app_factory(reduced_run, apps)), apps


def expected_rows(painter) -> dict:
    """What CONFUSION_SOURCES should read for the painter's state now."""
    _, ribbons, _ = painter.chord_data()
    bars = painter.rect_data(painter.bar_rects())
    return {"chord": [[r["true"], r["predicted"], r["count"]] for r in ribbons],
            "bars": [[t, p, int(c)] for t, p, c in zip(bars["true"], bars["predicted"], bars["count"])]}


def map_checksums(page) -> dict:
    """IMAGE_CHECKSUMS of the feature map grids (titled "<layer> · N channels"), keyed by layer."""
    return {title.split(" · ")[0]: v for title, v in page.evaluate(IMAGE_CHECKSUMS).items() if " channels" in title}


def grid_checksum(rgba) -> int:
    """IMAGE_CHECKSUMS' checksum of a grid as the view pushes it."""
    flat = plots.tile_grid_source(rgba)["image"][0].ravel().astype(np.int64)
    return int((flat * (np.arange(flat.size) % 9973 + 1)).sum() % 2147483647)


def open_model(page, app) -> tuple:
    """Show the Model tab (its view is built then); return its painter and the settled CONFUSION_SOURCES."""
    page.locator(".bk-tab").filter(has_text="Model").click()
    painter = wait_until(lambda: (view := app.views.get("Model")) and view.painter, timeout=60,
                         message="the Model page to be built")
    wait_until(lambda: page.evaluate(CONFUSION_SOURCES) == expected_rows(painter), timeout=60,
               message="the chord and the bars of the current epoch")
    return painter, _settled(page, lambda: page.evaluate(CONFUSION_SOURCES))


def test_the_model_page_loads_and_follows_the_player(page, console_errors, model_page):
    url, apps = model_page
    refused = open_dashboard(page, url)
    state = apps[0].state
    assert "Model" not in apps[0].views  # built when its page is first shown
    painter, before = open_model(page, apps[0])
    assert before["chord"] and before["bars"]
    assert sum(c for _, _, c in before["bars"]) == len(state.run.labels)  # the bars count every probe sample
    summary = page.locator(".nm-model-summary").inner_text()
    assert f"epoch {state.epoch}:" in summary and "misclassified" in summary
    page.locator("button.next").first.click()
    wait_until(lambda: state.epoch == state.run.epochs[1], message="the server to reach the next epoch")
    wait_until(lambda: page.evaluate(CONFUSION_SOURCES) == expected_rows(painter), message="the next epoch's charts")
    after = page.evaluate(CONFUSION_SOURCES)
    assert after["chord"] != before["chord"] and after["bars"] != before["bars"]
    assert f"epoch {state.epoch}:" in page.locator(".nm-model-summary").inner_text()
    # the focused sample's feature maps follow the player too: each layer's grid is the painter's picture now
    layers = state.run.map_layers
    expected = {layer: grid_checksum(painter.map_grid(layer)) for layer in layers}
    wait_until(lambda: map_checksums(page) == expected, message="every layer's feature maps at the new epoch")
    state.epoch = state.run.epochs[0]
    assert all(grid_checksum(painter.map_grid(layer)) != expected[layer] for layer in layers)  # they do change
    assert refused == []
    screenshot(page, "model-epoch-1")


def test_a_click_on_a_ribbon_selects_its_samples_and_the_embeddings_page_highlights_them(
        page, console_errors, model_page):
    url, apps = model_page
    open_dashboard(page, url)
    state = apps[0].state
    embeddings = _settled(page, lambda: page.evaluate(IMAGE_CHECKSUMS))
    painter, _ = open_model(page, apps[0])
    shape = painter.chord()
    k = int(np.argmax([c for _, _, c in expected_rows(painter)["chord"]]))  # the widest ribbon: easy to hit
    inside = shape.ribbons[k][4] * 0.97  # the middle of its source end, just inside the circle
    x, y = page.evaluate(DATA_TO_PIXEL, {"title": CHORD_TITLE, "x": float(inside[0]), "y": float(inside[1])})
    canvas = page.locator(".nm-chord canvas").first.bounding_box()
    page.mouse.click(canvas["x"] + x, canvas["y"] + y)
    true, predicted = shape.pairs[k]
    run = state.run
    expected = np.sort(run.samples[(run.labels == true) & (run.predictions[0] == predicted)])
    wait_until(lambda: state.selection is not None and np.array_equal(np.sort(state.selection), expected),
               message=f"the samples of {true} → {predicted} selected")
    wait_until(lambda: "Selected: true" in page.locator(".nm-model-summary").inner_text(), message="the pair named")
    screenshot(page, "model-ribbon-clicked")
    page.locator(".bk-tab").filter(has_text="Embeddings").click()
    legend = page.locator(".nm-legend-pane .nm-drawn")
    wait_until(lambda: f"{len(expected):,} selected" in legend.inner_text(), timeout=40,
               message=f"'{len(expected):,} selected' on the Embeddings page")
    wait_until(lambda: (now := page.evaluate(IMAGE_CHECKSUMS)) and all(now[k] != v for k, v in embeddings.items()),
               message="every layer's picture to highlight the selection")
    assert page.evaluate(DOCUMENT_IDLE)
    screenshot(page, "model-selection-on-embeddings")
