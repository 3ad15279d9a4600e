"""Names a user controls are data, never markup: a served page with hostile names runs nothing."""

from __future__ import annotations

import pytest

from neuromapper import reduce
from neuromapper.synthetic import make_synthetic_run
from neuromapper.views.shell import App

from .conftest import DOCUMENT_IDLE, IMAGE_CHECKSUMS, app_factory, screenshot, wait_until

pytestmark = pytest.mark.browser

IMG = "<img src=x onerror=window.__pwned=1>"
SCRIPT = "<script>window.__pwned=2</script>"
QUOTES = "\"quoted\" & 'single' <b>bold</b>"
LONG = "ü" * 500


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    # the run's folder, its dataset, a class, a layer and a metric carry markup
    run = make_synthetic_run(tmp_path_factory.mktemp("hostile") / IMG, n_samples=240, n_epochs=3, n_layers=2,
                             n_classes=3, dims=16, class_names=[IMG, QUOTES, LONG], layer_names=[SCRIPT, "x"],
                             dataset=QUOTES, metric=f"<i>{IMG}</i>")
    reduce(run)
    return run


def test_every_user_string_shows_as_text_and_nothing_runs(page, console_errors, serve, hostile_run):
    apps: list[App] = []
    page.goto(serve(app_factory(hostile_run, apps)), timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    wait_until(lambda: len(page.evaluate(IMAGE_CHECKSUMS)) == 2, message="both layer pictures")
    # hover along the first plot until a sample of the hostile class is focused
    state = apps[0].state
    canvas = page.locator(".nm-layer").first.locator("canvas").first.bounding_box()
    for i in range(60):
        page.mouse.move(canvas["x"] + canvas["width"] * (0.05 + (i % 20) / 21),
                        canvas["y"] + canvas["height"] * (0.2 + 0.3 * (i // 20)))
        page.wait_for_timeout(60)
    page.mouse.move(5, 5)
    assert page.evaluate("() => window.__pwned") is None
    for text in (IMG, SCRIPT, QUOTES):  # the names appear literally (header, card, legend, chips, titles)
        assert page.get_by_text(text, exact=False).count() > 0, text
    # the hover card names the hostile class literally when one of its samples is focused
    index = int((state.scene.labels == 0).argmax())
    state._dispatch(state.focus, int(state.scene.samples[index]))  # on the session, as a hover would
    wait_until(lambda: page.locator(".nm-card").filter(has_text=IMG).count() > 0, message="the card with the class")
    assert page.evaluate("() => window.__pwned") is None
    screenshot(page, "dashboard-hostile-names")
