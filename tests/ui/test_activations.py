"""The Activations page in a real browser: Debian's chromium driven by Playwright.

The run is ``twin_run`` of ``tests/conftest.py`` (a DigitCNN on 8x8 digits with FGSM, PGD and
one-pixel twins, an instance named ``my <i>own</i>`` and a class named ``<b>zero</b>``), copied
and reduced so that the Embeddings page, where a selection is made, has its layout. The page is
served as ``neuromapper serve`` serves it (``cli_app_factory``); what the browser shows is read
from the Bokeh document (``ACTIVATION_PLOTS``) and checked against the session's painter.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from neuromapper import plots
from neuromapper.views.activations_painter import SELECTION, UNIT_INDEX, class_item
from neuromapper.views.shell import App

from .conftest import (
    ACTIVATION_PLOTS,
    DOCUMENT_IDLE,
    cli_app_factory,
    refuse_other_hosts,
    screenshot,
    wait_until,
)

pytestmark = [pytest.mark.browser]

LAYERS = ["conv1", "conv2", "fc1", "fc2"]

# Elements anywhere in the page, shadow roots included, whose tag is one of ``tags`` and whose text
# contains ``text``: markup injected from a name would make one.
ELEMENTS_WITH_TEXT = """
({tags, text}) => {
  const found = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (tags.includes(el.tagName.toLowerCase()) && el.textContent.includes(text)) found.push(el.outerHTML);
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return found;
}
"""


@pytest.fixture(scope="module")
def reduced_twin_run(twin_run, tmp_path_factory):
    """A private copy of ``twin_run`` with its default embedding (other tests' reductions stay out)."""
    from neuromapper import reduce

    run = shutil.copytree(twin_run, tmp_path_factory.mktemp("ui") / "twins", ignore=shutil.ignore_patterns("embeddings"))
    reduce(run)
    return run


@pytest.fixture
def activations(serve, reduced_twin_run):
    """Serve the dashboard over the twin run; returns (url, apps created so far)."""
    apps: list[App] = []
    return serve(cli_app_factory(reduced_twin_run, apps)), apps


def _settled(page, read):
    """Poll ``read()`` until two reads half a second apart agree on an idle document; return it."""
    previous = None

    def same():
        nonlocal previous
        now = read()
        ok, previous = now == previous and page.evaluate(DOCUMENT_IDLE), now
        return ok

    wait_until(same, interval=0.5, timeout=60, message="the page to settle")
    return previous


def open_dashboard(page, url) -> list[str]:
    """Open the dashboard with every request to another host refused (and listed: console_errors fails on them)."""
    refused = refuse_other_hosts(page, url.split("/")[2])
    page.goto(url, timeout=120_000)  # a session's first page builds the viewer: slow on a busy 2-core box
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    wait_until(lambda: page.locator(".nm-layer").count() == 4, message="the Embeddings page")
    return refused


def open_activations(page):
    """Show the Activations tab; wait until each layer's bars are drawn and settled; return ACTIVATION_PLOTS."""
    page.locator(".bk-tab").filter(has_text="Activations").click()
    wait_until(lambda: sorted(k for k, v in page.evaluate(ACTIVATION_PLOTS).items() if v["checksum"]) == LAYERS,
               timeout=60, message="the bars of four layers")
    return _settled(page, lambda: page.evaluate(ACTIVATION_PLOTS))


def bars_checksum(painter, layer: str) -> int:
    """ACTIVATION_PLOTS' checksum of the picture the painter draws for ``layer`` now (as pushed to Bokeh)."""
    rgba, axis, _ = painter.picture(layer)
    flat = plots.bars_source_data(rgba, axis.lo, axis.hi)["image"][0].ravel().astype(np.int64)
    return int((flat * (np.arange(flat.size) % 9973 + 1)).sum() % 2147483647)


def assert_bars_are_current(page, painter) -> None:
    """Every layer's bars in the browser are the painter's picture for the session's state now."""
    shown = page.evaluate(ACTIVATION_PLOTS)
    stale = [layer for layer in LAYERS if shown[layer]["checksum"] != bars_checksum(painter, layer)]
    assert stale == [], f"the browser shows outdated bars for {stale}"


def unit_labels(plot: dict, rows) -> tuple[list[str], list[str]]:
    """``(labels shown, labels of the painter's rows at the same positions)`` of one ACTIVATION_PLOTS entry."""
    top = len(rows) - 1
    return plot["labels"], [str(int(rows[top - tick])) for tick in plot["ticks"]]


def labels_follow(plot: dict, rows) -> bool:
    """Does the plot's unit axis name the painter's ``rows`` (top row labelled, every k-th row after)?"""
    shown, expected = unit_labels(plot, rows)
    return bool(shown) and shown == expected and plot["ticks"][0] == len(rows) - 1


def legend_text(page) -> str:
    return page.locator(".nm-activation-legend .nm-legend").inner_text()


def painter_of(apps):
    return apps[0].views["Activations"].painter


def test_the_page_loads_offline_with_one_panel_per_layer(page, console_errors, activations):
    url, apps = activations
    refused = open_dashboard(page, url)
    plots = open_activations(page)
    painter = painter_of(apps)
    assert painter.layers == LAYERS
    assert page.locator(".nm-activation-layer").count() == 4
    assert sorted(plots) == LAYERS  # one Bokeh figure per layer, titled with its name
    # the page's own controls are in the sidebar
    for label in ("layers", "groups (bars)", "instances (dots: benign and attacked)", "sort by", "minus"):
        assert page.locator(".bk-input-group label").filter(has_text=label).count() >= 1, label
    for layer, plot in plots.items():
        rows = painter.rows(layer)
        # the y axis names the units from the top row down (every k-th row on a tall layer)
        assert labels_follow(plot, rows), (layer, unit_labels(plot, rows))
        assert plot["dots"] == 2 * len(rows)  # the default pair: benign and attacked, one dot per unit each
    assert_bars_are_current(page, painter)
    legend = legend_text(page)
    for group in painter.groups:
        assert f"{painter.label(group)} ({int(painter.members(group).sum())})" in legend
    (pair,) = painter.pairs
    wait_until(lambda: painter.twin_label(pair) in page.locator(".nm-pair-cards .nm-pairs").inner_text(),
               message="the pair's card")
    # the divergence ranking (a Tabulator: the pages' extension is loaded) has its rows
    wait_until(lambda: page.locator(".nm-ranking .tabulator-row").count() > 0, message="the ranking rows")
    assert refused == []
    screenshot(page, "activations-loaded")


def test_a_sort_reorders_the_units_and_an_epoch_step_changes_the_bars(page, console_errors, activations):
    url, apps = activations
    open_dashboard(page, url)
    before = open_activations(page)
    painter, state = painter_of(apps), apps[0].state
    assert painter.sort_by == UNIT_INDEX
    assert all(labels_follow(before[k], np.arange(len(painter.rows(k)))) for k in LAYERS)
    group = painter.groups[0]
    sort_select = page.locator(".bk-input-group").filter(has_text="sort by").locator("select")
    sort_select.select_option(label=painter.label(group))
    wait_until(lambda: painter.sort_by == group, message="the server to sort by the group")
    sorted_plots = wait_until(
        lambda: (now := page.evaluate(ACTIVATION_PLOTS)) and all(now[k]["labels"] != before[k]["labels"] for k in LAYERS)
        and now, message="every layer's units to be reordered")
    sorted_plots = _settled(page, lambda: page.evaluate(ACTIVATION_PLOTS))
    for layer in LAYERS:  # the axis names the server's new order: the largest median of the group on top
        rows = painter.rows(layer)
        assert labels_follow(sorted_plots[layer], rows), (layer, unit_labels(sorted_plots[layer], rows))
        median = np.median(state.run.activations(layer, state.epoch)[painter.members(group)], axis=0)
        assert np.all(np.diff(median[rows]) <= 0), layer
    for layer in LAYERS:
        assert sorted_plots[layer]["checksum"] != before[layer]["checksum"], layer  # the rows moved
    assert_bars_are_current(page, painter)
    screenshot(page, "activations-sorted")

    page.locator("button.next").first.click()
    wait_until(lambda: state.epoch == 1, message="the server to reach epoch 1")
    stepped = wait_until(
        lambda: (now := page.evaluate(ACTIVATION_PLOTS)) and all(now[k]["checksum"] != sorted_plots[k]["checksum"]
                                                                 for k in LAYERS) and now,
        message="every layer's bars to change")
    stepped = _settled(page, lambda: page.evaluate(ACTIVATION_PLOTS))
    # the order follows the group's medians at the new epoch
    assert all(labels_follow(stepped[k], painter.rows(k)) for k in LAYERS)
    assert_bars_are_current(page, painter)
    # the pair cards' divergence figures follow too (computed off the step, drawn a tick later)
    figures = re.findall(r"divergence \d+\.\d\d", painter.pair_cards_html())
    assert figures
    wait_until(lambda: re.findall(r"divergence \d+\.\d\d", page.locator(".nm-pair-cards .nm-pairs").inner_text())
               == figures, message="the cards' divergence at epoch 1")
    screenshot(page, "activations-epoch-1")


def select_on_the_embeddings_page(page, apps) -> None:
    """A box drag on fc2's layout (the logits: classes are apart, a box takes some), as test_dashboard does."""
    wait_until(lambda: set(apps[0].embeddings.painter._sizes) >= set(LAYERS), timeout=60, message="the plots' sizes")
    canvas = page.locator(".nm-layer").nth(3).locator("canvas").first.bounding_box()
    x, y, w, h = canvas["x"], canvas["y"] + 30, canvas["width"], canvas["height"] - 30
    page.mouse.move(x + 0.2 * w, y + 0.2 * h)
    page.mouse.down()
    page.mouse.move(x + 0.6 * w, y + 0.6 * h, steps=8)
    page.mouse.up()
    state = apps[0].state
    wait_until(lambda: state.selection is not None and 0 < len(state.selection) < 300, message="a selection")


def test_a_selection_on_the_embeddings_page_is_a_group_here(page, console_errors, activations):
    url, apps = activations
    open_dashboard(page, url)
    open_activations(page)
    painter, state = painter_of(apps), apps[0].state
    before = page.evaluate(ACTIVATION_PLOTS)
    page.locator(".bk-tab").filter(has_text="Embeddings").click()
    select_on_the_embeddings_page(page, apps)
    page.locator(".bk-tab").filter(has_text="Activations").click()
    assert SELECTION in painter.groups
    expected = f"selection on the Embeddings page ({len(state.selection)})"
    wait_until(lambda: expected in legend_text(page), message=f"{expected!r} in the legend")
    # and its bars are drawn (in every layer: the group is added to the picture)
    wait_until(lambda: all(v["checksum"] != before[k]["checksum"] for k, v in page.evaluate(ACTIVATION_PLOTS).items()),
               message="the selection's bars")
    _settled(page, lambda: page.evaluate(ACTIVATION_PLOTS))
    assert_bars_are_current(page, painter)
    screenshot(page, "activations-selection")


def test_the_bars_are_current_when_the_page_is_first_opened(page, console_errors, activations):
    url, apps = activations
    open_dashboard(page, url)
    page.locator("button.next").first.click()
    wait_until(lambda: apps[0].state.epoch == 1, message="epoch 1")
    select_on_the_embeddings_page(page, apps)
    open_activations(page)
    painter = painter_of(apps)
    assert SELECTION in painter.groups
    assert_bars_are_current(page, painter)


def test_a_click_on_a_units_bar_hides_it(page, console_errors, activations):
    url, apps = activations
    open_dashboard(page, url)
    before = open_activations(page)
    painter = painter_of(apps)
    wait_until(lambda: page.get_by_text("click a unit's bar to hide it").count() == 4, message="the notes under the plots")
    # fc2 has 10 units, 17 px a row: a click in the middle of its plot lands on one of them
    box = page.locator(".nm-activation-layer").nth(3).locator("canvas").first.bounding_box()
    page.mouse.click(box["x"] + 0.5 * box["width"], box["y"] + 0.5 * box["height"])
    wait_until(lambda: painter.hidden, message="a unit hidden on the server")
    ((layer, (unit,)),) = painter.hidden.items()
    assert layer == "fc2"
    note = page.get_by_text("1 hidden (grey, at the bottom; click to show)")
    wait_until(lambda: note.count() == 1, message="'1 hidden' under the plot")
    assert note.inner_text().endswith(f": {unit}")
    assert painter.rows("fc2")[-1] == unit  # hidden units go to the bottom, greyed
    after = wait_until(lambda: (now := page.evaluate(ACTIVATION_PLOTS)) and labels_follow(now["fc2"], painter.rows("fc2"))
                       and now, message="fc2's unit axis to follow the new order")
    assert after["fc2"]["checksum"] != before["fc2"]["checksum"]  # greyed
    assert_bars_are_current(page, painter)
    assert all(after[k]["checksum"] == before[k]["checksum"] for k in ("conv1", "conv2", "fc1"))
    page.get_by_role("button", name="show all units").click()
    wait_until(lambda: painter.hidden == {}, message="every unit shown again")
    wait_until(lambda: page.get_by_text("click a unit's bar to hide it").count() == 4, message="the notes reset")
    wait_until(lambda: page.evaluate(ACTIVATION_PLOTS)["fc2"]["checksum"] == before["fc2"]["checksum"],
               message="fc2's bars as before")


def _choose(page, index: int, typed: str) -> None:
    """Type into the ``index``-th MultiChoice of the page and take the first match."""
    page.locator(".choices").nth(index).click()
    page.keyboard.type(typed)
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    page.mouse.click(900, 5)  # close its dropdown, which would cover the next widget


def test_hostile_names_show_literally_and_inject_no_markup(page, console_errors, activations):
    url, apps = activations
    open_dashboard(page, url)
    open_activations(page)
    painter = painter_of(apps)
    zero = class_item(0)
    own = "instance/my <i>own</i>"
    assert page.locator(".choices").count() == 3  # layers, groups, instances
    _choose(page, 1, "zero")
    wait_until(lambda: zero in painter.groups, message="class <b>zero</b> added to the groups")
    _choose(page, 2, "own")
    wait_until(lambda: own in painter.pairs, message="the user's own instance added")
    wait_until(lambda: "class <b>zero</b> (" in legend_text(page), message="the class name, literally, in the legend")
    cards = page.locator(".nm-pair-cards .nm-pairs")
    wait_until(lambda: "instance my <i>own</i>" in cards.inner_text(), message="the instance's name in its card")
    # the sort options and the chosen chips name them literally too
    sort_select = page.locator(".bk-input-group").filter(has_text="sort by").locator("select")
    assert "class <b>zero</b>" in sort_select.locator("option").all_inner_texts()
    sort_select.select_option(label="instance my <i>own</i>")
    wait_until(lambda: painter.sort_by == "twin:" + own, message="sorted by the user's instance")
    wait_until(lambda: page.get_by_text("instance my <i>own</i>").count() >= 3, message="the name on the page")
    _settled(page, lambda: page.evaluate(ACTIVATION_PLOTS))
    assert page.evaluate(ELEMENTS_WITH_TEXT, {"tags": ["b"], "text": "zero"}) == []
    assert page.evaluate(ELEMENTS_WITH_TEXT, {"tags": ["i"], "text": "own"}) == []
    screenshot(page, "activations-hostile-names")
