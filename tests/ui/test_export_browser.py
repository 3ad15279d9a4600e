"""The HTML snapshot in a real browser: Debian's chromium opens the file from disk with no network.

The demo-sized snapshot is exported from a synthetic run of exactly the demo's shape (2,000 probe
samples, 4 layers, 11 epochs, 10 classes): the export sees only an embedding, labels and
predictions, so a synthetic run exercises the same code and file size as the real demo, in about
two seconds instead of the demo's minute of training plus its reduction. The real demo run is
measured in ``benchmarks/RESULTS-export.md``. Hover thumbnails are checked on the session's
small run of real 8x8 digits, which has images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from neuromapper import export_html, layer_activations, open_run
from neuromapper.scene import scene_for
from neuromapper.synthetic import make_synthetic_run

from .conftest import screenshot

pytestmark = pytest.mark.browser

CANVASES = "() => Array.from(document.querySelectorAll('canvas.nm-plot')).map(c => c.toDataURL())"
RING_INK = """(layer) => {
  const c = document.querySelector(`figure[data-layer="${layer}"] canvas.nm-ring`);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let ink = 0;
  for (let i = 3; i < d.length; i += 4) ink += d[i];
  return ink;
}"""


def pca_embedding(run_path) -> xr.DataArray:
    """One PCA per layer over all epochs, in ``neuromapper.reduce``'s schema (fast, deterministic).

    ``trustworthiness`` is the known pattern ``0.5 + epoch / 100 + layer / 10`` so the page's
    figures can be checked.
    """
    from sklearn.decomposition import PCA

    ds = open_run(run_path)
    layers = [str(v) for v in ds["layer"].values]
    epochs = [int(e) for e in ds["epoch"].values]
    out = np.zeros((len(epochs), len(layers), ds.sizes["sample"], 2), dtype=np.float32)
    for j, layer in enumerate(layers):
        acts = layer_activations(ds, layer).values
        flat = acts.reshape(-1, acts.shape[-1])
        out[:, j] = PCA(2, random_state=0).fit(flat).transform(flat).reshape(len(epochs), -1, 2)
    trust = 0.5 + np.arange(len(epochs))[:, None] / 100 + np.arange(len(layers))[None, :] / 10
    return xr.DataArray(
        out, dims=("epoch", "layer", "sample", "xy"), name="embedding",
        coords={"epoch": epochs, "layer": layers, "sample": ds["sample"].values, "xy": ["x", "y"],
                "trustworthiness": (("epoch", "layer"), trust)},
        attrs={"method": "pca", "params": json.dumps({"n_neighbors": 15}), "key": "browser-test"},
    )


@pytest.fixture(scope="module")
def demo_sized(tmp_path_factory):
    """(run, embedding, snapshot path) of a run with the demo's shape, exported with the defaults."""
    folder = tmp_path_factory.mktemp("snapshot")
    run = make_synthetic_run(folder / "demo-sized", n_samples=2000, n_epochs=11, n_layers=4, dims=16)
    embedding = pca_embedding(run)
    return run, embedding, export_html(run, folder / "snapshot.html", embedding=embedding, progress=False)


@pytest.fixture
def offline(context):
    """Take the browser offline; every request is recorded and all but ``file://`` ones are refused."""
    context.set_offline(True)
    requests: list[str] = []

    def handle(route):
        requests.append(route.request.url)
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            route.abort()

    context.route("**/*", handle)
    yield requests
    assert [url for url in requests if not url.startswith("file://")] == [], "the snapshot tried the network"


def open_snapshot(page, path):
    page.goto(path.as_uri())
    page.wait_for_function("() => document.body.dataset.rendered", timeout=30_000)


def rendered(page) -> int:
    return int(page.evaluate("() => Number(document.body.dataset.rendered)"))


def wait_rendered_after(page, count: int) -> None:
    page.wait_for_function(f"() => Number(document.body.dataset.rendered) > {count}", timeout=10_000)


def isolated_sample(run, embedding, layer: str, epoch_index: int, width: int) -> tuple[int, float, float]:
    """A sample with no other within 5 px in ``layer``: (index, x, y) in page pixels of its canvas."""
    scene, _ = scene_for(open_run(run), embedding)
    frame = scene.default_frame(layer, width, width)
    (x0, x1), (y0, y1) = frame.x_range, frame.y_range
    px = (scene.xs[layer][epoch_index] - x0) / (x1 - x0) * width
    py = width - (scene.ys[layer][epoch_index] - y0) / (y1 - y0) * width
    d = np.hypot(px[:, None] - px[None, :], py[:, None] - py[None, :])
    np.fill_diagonal(d, np.inf)
    inside = (px > 30) & (px < width - 30) & (py > 30) & (py < width - 30)
    gap = np.where(inside, d.min(axis=1), -1)
    i = int(np.argmax(gap))
    assert gap[i] > 5, "no isolated sample to hover"
    return i, float(px[i]), float(py[i])


def test_demo_sized_snapshot_offline(page, offline, console_errors, demo_sized):
    run, embedding, path = demo_sized
    open_snapshot(page, path)
    assert offline == [path.as_uri()]  # the file itself and nothing else
    assert page.evaluate("() => document.body.dataset.strategy") == "points"
    assert page.title() == "NeuroMapper snapshot: demo-sized"
    assert "What this snapshot cannot do" in page.inner_text("#nm-cannot")
    assert "embedded points" in page.inner_text("#nm-strategy")
    assert page.is_hidden("#nm-no-hover")
    assert page.locator("canvas.nm-plot").count() == 4
    caption = page.locator('figure[data-layer="layer3"] figcaption')
    assert "trustworthiness 0.800" in caption.inner_text()

    # step the player: every layer's picture changes, and the facts follow the epoch
    before = page.evaluate(CANVASES)
    count = rendered(page)
    page.click("button.next")
    wait_rendered_after(page, count)
    assert page.evaluate("() => document.body.dataset.epoch") == "1"
    stepped = page.evaluate(CANVASES)
    assert all(a != b for a, b in zip(before, stepped))
    assert "epoch 1" in page.inner_text("#nm-epoch-label") and page.input_value("#nm-epoch") == "1"
    assert "trustworthiness 0.810" in caption.inner_text()

    # hide a class: the pictures change; show all again: the pictures are back
    count = rendered(page)
    page.click('button.nm-class[data-class="c3"]')
    wait_rendered_after(page, count)
    assert page.get_attribute('button.nm-class[data-class="c3"]', "aria-pressed") == "false"
    hidden = page.evaluate(CANVASES)
    assert all(a != b for a, b in zip(stepped, hidden))
    page.click("#nm-all")
    assert page.evaluate(CANVASES) == stepped

    # colour by correctness: the pictures change and the legend counts every sample once
    page.check('input[name="nm-color"][value="1"]')
    assert all(a != b for a, b in zip(stepped, page.evaluate(CANVASES)))
    legend = page.inner_text("#nm-legend")
    counts = [int(part.split()[-1].replace(",", "")) for part in legend.split("\n") if part.strip()]
    assert "correct" in legend and "incorrect" in legend and sum(counts) == 2000
    page.check('input[name="nm-color"][value="0"]')

    # hover a sample: a label with its id and labels, and a ring around it in every layer
    i, x, y = isolated_sample(run, embedding, "layer2", 1, 360)
    box = page.locator('canvas.nm-plot[data-layer="layer2"]').bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_selector("#nm-tip", state="visible")
    ds = open_run(run)
    tip = page.inner_text("#nm-tip")
    truth = str(ds["class"].values[ds["label"].values[i]])
    guess = str(ds["class"].values[ds["prediction"].values[1, i]])
    assert f"sample {int(ds['sample'].values[i])}" in tip
    assert f"true label: {truth}" in tip and f"predicted at epoch 1: {guess}" in tip
    assert all(page.evaluate(RING_INK, layer) > 0 for layer in ["layer0", "layer1", "layer2", "layer3"])
    shot = screenshot(page, "export")
    assert shot.stat().st_size > 20_000

    # leave: the label goes; play: the player runs on by itself; pause: it stops
    page.mouse.move(5, 5)
    page.wait_for_selector("#nm-tip", state="hidden")
    assert page.evaluate(RING_INK, "layer0") == 0
    page.click("button.play")
    page.wait_for_function("() => Number(document.body.dataset.epoch) >= 3", timeout=10_000)
    page.click("button.pause")
    stopped = page.evaluate("() => document.body.dataset.epoch")
    page.wait_for_timeout(1_000)
    assert page.evaluate("() => document.body.dataset.epoch") == stopped
    page.keyboard.press("ArrowLeft")
    assert page.evaluate("() => document.body.dataset.epoch") == str(int(stopped) - 1)


def test_small_dots_for_many_points(page, offline, console_errors, demo_sized, tmp_path):
    """At 2,000 points in 200 px the dots are a pixel wide and written straight into the image."""
    run, embedding, _ = demo_sized
    path = export_html(run, tmp_path / "dots.html", embedding=embedding, width=200, strategy="points", progress=False)
    open_snapshot(page, path)
    i, x, y = isolated_sample(run, embedding, "layer1", 0, 200)
    ds = open_run(run)
    color = json.loads(page.evaluate("() => document.getElementById('nm-data').textContent"))["modes"][0]["colors"][
        int(ds["label"].values[i])]
    pixel = page.evaluate(
        "([x, y]) => Array.from(document.querySelector('canvas.nm-plot[data-layer=\"layer1\"]')"
        ".getContext('2d').getImageData(x, y, 1, 1).data)", [int(round(x)), int(round(y))])
    expected = [int(color[k : k + 2], 16) for k in (1, 3, 5)]
    assert pixel[3] == 204 and all(abs(a - b) <= 1 for a, b in zip(pixel[:3], expected))  # its class colour at 0.8
    before = page.evaluate(CANVASES)
    count = rendered(page)
    page.click("button.next")
    wait_rendered_after(page, count)
    assert all(a != b for a, b in zip(before, page.evaluate(CANVASES)))


def test_images_snapshot_offline(page, offline, console_errors, tmp_path):
    run = make_synthetic_run(tmp_path / "run", n_samples=600, n_epochs=4, n_layers=2, dims=16)
    path = export_html(run, tmp_path / "images.html", embedding=pca_embedding(run), strategy="images",
                       width=300, progress=False)
    open_snapshot(page, path)
    assert offline == [path.as_uri()]
    assert page.evaluate("() => document.body.dataset.strategy") == "images"
    assert page.is_visible("#nm-no-hover") and "pre-rendered images" in page.inner_text("#nm-strategy")
    blank = page.evaluate("() => { const c = document.createElement('canvas'); c.width = c.height = 300; return c.toDataURL(); }")
    first = page.evaluate(CANVASES)
    assert blank not in first  # the masks were decoded and drawn
    count = rendered(page)
    page.click("button.next")
    wait_rendered_after(page, count)
    stepped = page.evaluate(CANVASES)
    assert all(a != b for a, b in zip(first, stepped))
    count = rendered(page)
    page.click('button.nm-class[data-class="c0"]')
    wait_rendered_after(page, count)
    assert all(a != b for a, b in zip(stepped, page.evaluate(CANVASES)))
    count = rendered(page)
    page.click("#nm-none")
    wait_rendered_after(page, count)
    assert page.evaluate(CANVASES) == [blank, blank]
    count = rendered(page)
    page.click("#nm-all")
    wait_rendered_after(page, count)
    assert page.evaluate(CANVASES) == stepped
    screenshot(page, "export-images")


def test_hover_shows_the_digit(page, offline, console_errors, small_run, tmp_path):
    embedding = pca_embedding(small_run)
    path = export_html(small_run, tmp_path / "digits.html", embedding=embedding, progress=False)
    open_snapshot(page, path)
    for _ in range(3):  # to the last epoch: the untrained network of epoch 0 piles the digits up
        page.click("button.next")
    page.wait_for_function("() => document.body.dataset.epoch === '3'")
    i, x, y = isolated_sample(small_run, embedding, "fc2", 3, 360)
    box = page.locator('canvas.nm-plot[data-layer="fc2"]').bounding_box()
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.wait_for_selector("#nm-tip canvas", state="visible")
    pixels = page.evaluate("""() => {
      const c = document.querySelector('#nm-tip canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const out = [];
      for (let r = 0; r < 8; r++) for (let col = 0; col < 8; col++) out.push(d[((r * 10 + 5) * c.width + col * 10 + 5) * 4]);
      return [c.width, out];
    }""")
    assert pixels[0] == 80  # 8x8 thumbnail drawn 10x, without smoothing
    digit = open_run(small_run)["image"].values[i, ..., 0]
    assert np.array_equal(np.array(pixels[1]).reshape(8, 8), digit)
    screenshot(page, "export-digits")


def test_activations_section_follows_the_player_and_the_sort(page, offline, console_errors, twin_run, tmp_path):
    embedding = pca_embedding(twin_run)
    path = export_html(twin_run, tmp_path / "twins.html", embedding=embedding, progress=False)
    open_snapshot(page, path)
    bars = page.locator("canvas.nm-bars")
    assert bars.count() == 4
    first = [int(e) for e in embedding["epoch"].values][0]
    page.wait_for_function("() => document.querySelector('canvas.nm-bars').dataset.drawn")
    assert page.eval_on_selector("canvas.nm-bars", "c => c.dataset.drawn") == f"unit index|{first}|conv1"
    before = page.eval_on_selector("canvas.nm-bars", "c => c.toDataURL()")
    page.locator("#nm-next").click()
    page.wait_for_function(f"() => document.querySelector('canvas.nm-bars').dataset.drawn !== 'unit index|{first}|conv1'")
    assert page.eval_on_selector("canvas.nm-bars", "c => c.toDataURL()") != before
    page.locator("#nm-act-order").select_option(index=1)
    assert not page.eval_on_selector("canvas.nm-bars", "c => c.dataset.drawn").startswith("unit index")
    # hostile names show literally: the class named "<b>zero</b>" makes no <b> element
    legend = page.locator("#nm-act-legend").inner_text()
    assert "<b>zero</b>" in legend or "<b>zero</b>" in page.locator("#nm-classes").inner_text()
    assert page.locator("#nm-act-legend b").count() == 0


PAGE_PICTURES = """() => ({
  chord: document.querySelector('#nm-model-errors').innerHTML,
  bars: document.querySelector('#nm-model-bars').innerHTML,
  summary: document.querySelector('#nm-model-summary').textContent,
  maps: Array.from(document.querySelectorAll('figure[data-map-layer] img')).map((i) => i.src),
  kernels: document.querySelector('figure[data-kernels] img').src,
  weights: document.querySelector('figure[data-weights] img').src,
  marker: document.querySelector('#nm-train-curves line.nm-marker').getAttribute('x1'),
})"""
PAGE_IMAGES_DECODED = """() => Array.from(document.querySelectorAll('#nm-model img, #nm-train img'))
  .every((i) => i.complete && i.naturalWidth > 0)"""


def test_model_and_training_sections_follow_the_player(page, offline, console_errors, small_run, tmp_path):
    path = export_html(small_run, tmp_path / "pages.html", embedding=pca_embedding(small_run), progress=False)
    open_snapshot(page, path)
    assert page.is_visible("#nm-model") and page.is_visible("#nm-train")
    assert page.evaluate("() => document.body.dataset.pagesEpoch") == "0"
    assert page.locator("#nm-model-errors svg.nm-chord path.nm-ribbon").count() > 0
    assert page.locator("figure[data-map-layer]").count() == 2  # conv1 and conv2 of the first spotlight sample
    assert "Cannot here" in page.inner_text("#nm-model") and "Cannot here" in page.inner_text("#nm-train")
    assert "a decision boundary" in page.inner_text("#nm-train-lacks")
    page.wait_for_function(PAGE_IMAGES_DECODED, timeout=10_000)
    before = page.evaluate(PAGE_PICTURES)
    page.click("button.next")
    page.wait_for_function("() => document.body.dataset.pagesEpoch === '1'", timeout=10_000)
    page.wait_for_function(PAGE_IMAGES_DECODED, timeout=10_000)
    after = page.evaluate(PAGE_PICTURES)
    changed = {key: before[key] != after[key] for key in before}
    assert all(changed.values()), changed
    assert after["summary"].startswith("epoch 1:")
    assert float(after["marker"]) > float(before["marker"])
    screenshot(page, "export-pages")
