"""The dashboard in a real browser: Debian's chromium driven by Playwright.

Each test serves a fresh app factory (one app per browser session, as ``panel serve`` does),
keeps the server-side apps it created so that browser actions can be checked against their
shared state, and writes a screenshot to ``test-artifacts/``.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from neuromapper.scene import class_palette
from neuromapper.views.shell import App

from .conftest import DOCUMENT_IDLE, IMAGE_CHECKSUMS, app_factory, screenshot, wait_until

pytestmark = pytest.mark.browser


@pytest.fixture
def dashboard(serve, reduced_run):
    """Serve the dashboard for the reduced test run; returns (url, apps created so far)."""
    apps: list[App] = []
    return serve(app_factory(reduced_run, apps)), apps


SPAN_LOCATIONS = """
() => Bokeh.documents[0].all_models ? [...Bokeh.documents[0].all_models].filter(m => m.type === "Span").map(m => m.location) : []
"""


def open_dashboard(page, url, app=None):
    page.goto(url, timeout=120_000)  # a session's first page builds the viewer: slow on a busy 2-core CI box
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    wait_until(lambda: len(page.evaluate(IMAGE_CHECKSUMS)) >= 1, message="layer images")
    if app is not None:  # every plot has reported its size on screen (its pictures are redrawn at it)
        painter = app().embeddings.painter
        wait_until(lambda: set(painter._sizes) >= set(painter.layers), timeout=60, message="the plots' sizes")
    # the first pictures are redrawn once the plots report their size on screen: wait until settled
    previous = {}

    def settled():
        nonlocal previous
        now = page.evaluate(IMAGE_CHECKSUMS)
        same, previous = now == previous and page.evaluate(DOCUMENT_IDLE), now
        return same

    wait_until(settled, interval=0.5, message="the layer pictures to settle")
    return previous


def layer_box(page, index: int):
    """Bounding box of the drawing area of the ``index``-th layer plot (below its toolbar)."""
    canvas = page.locator(".nm-layer").nth(index).locator("canvas").first
    box = canvas.bounding_box()
    return {"x": box["x"], "y": box["y"] + 30, "width": box["width"], "height": box["height"] - 30}


def test_page_loads_with_one_plot_per_layer(page, console_errors, dashboard):
    url, apps = dashboard
    checksums = open_dashboard(page, url)
    assert sorted(checksums) == sorted(apps[0].embeddings.painter.layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert page.locator(".nm-layer").count() == 4
    assert "of 300 samples drawn at epoch 0" in page.locator(".nm-legend").locator("..").inner_text()
    screenshot(page, "dashboard-loaded")


def test_player_step_changes_every_layer(page, console_errors, dashboard):
    url, viewers = dashboard
    before = open_dashboard(page, url)
    page.locator("button.next").first.click()
    wait_until(lambda: viewers[0].state.epoch == 1, message="the server to reach epoch 1")
    after = wait_until(
        lambda: (now := page.evaluate(IMAGE_CHECKSUMS)) and all(now[k] != before[k] for k in before) and now,
        message="every layer image to change",
    )
    assert set(after) == set(before)
    # the epoch line on the training curves moved too (a Bokeh Span changed by the step's watcher)
    wait_until(lambda: page.evaluate(SPAN_LOCATIONS) == [1] * len(viewers[0].embeddings._markers), message="the epoch marker at 1")
    screenshot(page, "dashboard-epoch-1")


def test_hiding_a_class_changes_the_picture(page, console_errors, dashboard):
    url, viewers = dashboard
    before = open_dashboard(page, url)
    page.get_by_role("button", name="3", exact=True).click()
    wait_until(lambda: "3" not in viewers[0].state.classes, message="class 3 to be hidden on the server")
    wait_until(lambda: page.evaluate(IMAGE_CHECKSUMS) != before, message="the images to change")
    hidden = int((viewers[0].state.scene.labels == 3).sum())
    drawn = f"{300 - hidden} of 300 samples drawn"
    wait_until(lambda: drawn in page.locator(".nm-legend").locator("..").inner_text(), message=drawn)
    screenshot(page, "dashboard-class-3-hidden")


def test_box_selection_in_one_layer_highlights_points_in_another(page, console_errors, dashboard):
    url, viewers = dashboard
    before = open_dashboard(page, url)
    box = layer_box(page, 3)  # fc2, the logits: classes are apart, a box takes some of them
    x0, y0 = box["x"] + 0.2 * box["width"], box["y"] + 0.2 * box["height"]
    x1, y1 = box["x"] + 0.6 * box["width"], box["y"] + 0.6 * box["height"]
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=8)
    page.mouse.up()
    viewer = viewers[0].state
    wait_until(lambda: viewer.selection is not None and 0 < len(viewer.selection) < 300, message="a selection")
    after = wait_until(
        lambda: (now := page.evaluate(IMAGE_CHECKSUMS)) and now["conv1"] != before["conv1"] and now,
        message="conv1 to redraw with the selection highlighted",
    )
    assert after["fc2"] != before["fc2"]
    # the other layer now shows unselected samples in grey
    png = page.locator(".nm-layer").nth(0).locator("canvas").first.screenshot()
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(int)
    greyish = (np.abs(pixels - pixels.mean(axis=1, keepdims=True)).max(axis=1) < 6) & (pixels.mean(axis=1) < 235)
    assert greyish.sum() > 20
    frame = viewers[0].embeddings.painter.selected()
    assert len(frame) == len(viewer.selection) and set(frame["sample"]) == set(viewer.selection)
    # the selection survives a player step
    page.locator("button.next").first.click()
    wait_until(lambda: viewer.epoch == 1, message="epoch 1")
    assert len(viewer.selection) == len(frame)
    screenshot(page, "dashboard-selection")


def _coloured_pixel(page, index: int):
    """Page coordinates and RGB of a strongly coloured pixel in the ``index``-th layer plot."""
    canvas = page.locator(".nm-layer").nth(index).locator("canvas").first
    box = canvas.bounding_box()
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot())).convert("RGB")).astype(int)
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    saturation[:40] = 0  # skip the toolbar
    row, col = np.unravel_index(np.argmax(saturation), saturation.shape)
    scale = box["width"] / pixels.shape[1]
    return box["x"] + col * scale, box["y"] + row * scale, pixels[row, col]


def _nearest_class_colour(rgb, palette: dict) -> str:
    """The class whose colour, drawn with some alpha over white, comes nearest to ``rgb``.

    Points are drawn with an alpha that grows with their density, so a lone point is a paler
    version of its class colour: compare along each colour's line from white, not to the colour.
    """
    white, seen = np.full(3, 255.0), np.asarray(rgb, float)
    distances = {}
    for name, hex_colour in palette.items():
        colour = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], float)
        direction = colour - white
        alpha = np.clip(np.dot(seen - white, direction) / max(np.dot(direction, direction), 1e-9), 0, 1)
        distances[name] = float(np.linalg.norm(white + alpha * direction - seen))
    return min(distances, key=distances.get)


def test_hover_shows_the_sample_label(page, console_errors, dashboard):
    url, viewers = dashboard
    open_dashboard(page, url)
    x, y, rgb = _coloured_pixel(page, 3)
    page.mouse.move(x - 3, y)
    page.mouse.move(x, y, steps=3)
    viewer = viewers[0].state
    wait_until(lambda: viewer.focused is not None, message="the server to pick a hovered sample")
    card = page.locator(".nm-card").last
    wait_until(lambda: "true:" in card.inner_text(), message="the sample card")
    text = card.inner_text()
    assert f"sample {viewer.focused}" in text
    index = int(np.flatnonzero(viewer.scene.samples == viewer.focused)[0])
    label = viewer.run.class_names[viewer.scene.labels[index]]
    assert f"true: {label}" in text
    # the hovered point's colour on screen is the colour of the label the card names: of all class
    # colours, blended over the white background at the best alpha, it is the nearest
    assert _nearest_class_colour(rgb, class_palette(viewer.run.class_names)) == label
    screenshot(page, "dashboard-hover")
    # leaving the plot clears the card and the ring
    page.mouse.move(5, 5)
    wait_until(lambda: viewer.focused is None, message="the focus to clear when the pointer leaves")
    wait_until(lambda: page.locator(".nm-card-empty").count() == 1, message="an empty card")


def test_two_sessions_keep_separate_states(browser, console_errors, page, dashboard):
    url, viewers = dashboard
    first = open_dashboard(page, url)
    other = browser.new_page(viewport={"width": 1800, "height": 1100})
    try:
        second_before = open_dashboard(other, url, app=lambda: viewers[1])
        assert len(viewers) == 2
        page.get_by_role("button", name="none", exact=True).click()
        wait_until(lambda: viewers[0].state.classes == [], message="session 1 to hide every class")
        wait_until(lambda: page.evaluate(IMAGE_CHECKSUMS) != first, message="session 1 images to change")
        other.wait_for_timeout(500)
        assert other.evaluate(IMAGE_CHECKSUMS) == second_before
        assert viewers[1].state.classes == viewers[1].state.run.class_names
        other.locator("button.next").first.click()
        wait_until(lambda: viewers[1].state.epoch == 1, message="session 2 to step")
        assert viewers[0].state.epoch == 0
    finally:
        other.close()


def test_neuromapper_serve_command(page, console_errors, reduced_run, tmp_path):
    """The CLI path a person uses: `neuromapper serve RUN` on 127.0.0.1, every session its own viewer."""
    import socket
    import subprocess
    import sys

    from .conftest import free_port

    bad = subprocess.run([sys.executable, "-m", "neuromapper.cli", "serve", str(tmp_path), "--no-show"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "holds no NeuroMapper run" in bad.stderr

    port = free_port()
    with subprocess.Popen([sys.executable, "-m", "neuromapper.cli", "serve", str(reduced_run), "--port", str(port),
                           "--no-show"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            def accepting():
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", port)) == 0

            wait_until(accepting, timeout=90, message="neuromapper serve to listen")
            checksums = open_dashboard(page, f"http://127.0.0.1:{port}/")
            assert sorted(checksums) == ["conv1", "conv2", "fc1", "fc2"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_clicking_the_training_curves_jumps_to_that_epoch(page, console_errors, dashboard):
    url, apps = dashboard
    before = open_dashboard(page, url)
    canvas = page.locator(".nm-curves").locator("canvas").first
    box = canvas.bounding_box()
    # the curves span epochs 0-3 across the plot's frame: a click right of the middle is nearest epoch 2 or 3
    page.mouse.click(box["x"] + 0.62 * box["width"], box["y"] + 0.55 * box["height"])
    wait_until(lambda: apps[0].state.epoch in (2, 3), message="the player to jump to the clicked epoch")
    # the epoch beside the player follows a jump made on the server (Panel's own player label does not)
    wait_until(lambda: page.locator(".nm-epoch").filter(has_text=f"epoch {apps[0].state.epoch} of 0–3").count() == 1,
               message="the epoch beside the player")
    wait_until(lambda: page.evaluate(IMAGE_CHECKSUMS) != before, message="the layer pictures to follow")
    wait_until(lambda: page.evaluate(SPAN_LOCATIONS) == [apps[0].state.epoch] * len(apps[0].embeddings._markers),
               message="the epoch marker to follow")
