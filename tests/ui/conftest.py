"""Browser tests: serve a NeuroMapper app on a free port and drive Debian's chromium with Playwright.

Chromium comes from Debian (``apt-get install chromium``, done by ``make test``); Playwright's own
browser download is never used. Every test fails on a browser console error, and screenshots
are written to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import panel as pn
import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1800, "height": 1100}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout: float = 20.0, interval: float = 0.1, message: str = "condition"):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture
def serve():
    """``serve(factory) -> url``: serve a fresh app per session on 127.0.0.1; stopped afterwards."""
    servers = []

    def start(factory):
        port = free_port()
        server = pn.serve(
            {"/": factory}, port=port, address="127.0.0.1", threaded=True, show=False,
            websocket_origin=[f"127.0.0.1:{port}"], start=True,
        )
        servers.append(server)

        def accepting():
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(accepting, timeout=30, message=f"the server on port {port}")
        return f"http://127.0.0.1:{port}/"

    yield start
    for server in servers:
        server.stop()
        server.join(timeout=30)  # pn.state.reset() would otherwise stop it a second time
    pn.state.reset()


@pytest.fixture
def console_errors(page):
    """Browser console errors and failed requests of ``page``; asserted empty after the test."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    yield errors
    assert errors == [], f"browser console errors: {errors}"


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


# JavaScript run in the page: one entry per layer plot (by title) with a position-weighted
# checksum of its RGBA image, so "did the picture change?" is not fooled by equal point counts.
IMAGE_CHECKSUMS = """
() => {
  const out = {};
  const doc = window.Bokeh && Bokeh.documents[0];
  if (!doc) return out;
  for (const m of doc.all_models) {
    if (!m.renderers || !m.title || !m.title.text) continue;
    for (const r of m.renderers) {
      const glyph = r.glyph, src = r.data_source;
      if (!glyph || !src || glyph.type !== "ImageRGBA") continue;
      const img = src.data.image && src.data.image[0];
      if (!img) continue;
      const flat = img.length !== undefined && typeof img[0] === "number" ? img : img.flat ? img.flat() : img;
      let sum = 0;
      for (let i = 0; i < flat.length; i++) sum = (sum + (flat[i] >>> 0) * ((i % 9973) + 1)) % 2147483647;
      out[m.title.text] = sum;
    }
  }
  return out;
}
"""

DOCUMENT_IDLE = "() => !!(window.Bokeh && Bokeh.documents.length && Bokeh.documents[0].is_idle)"


@pytest.fixture(scope="session")
def reduced_run(small_run, tmp_path_factory):
    """A private copy of the session's small run with only its default embedding beside it.

    The dashboard opens the newest stored embedding, so a copy keeps other tests' reductions of
    ``small_run`` (e.g. 25 samples per class) out of these pages.
    """
    from neuromapper import reduce

    run = shutil.copytree(small_run, tmp_path_factory.mktemp("ui") / "small", ignore=shutil.ignore_patterns("embeddings"))
    reduce(run)
    return run


def app_factory(path, apps: list):
    """A Panel session factory: a fresh App over ``path`` per session, kept in ``apps``."""

    from neuromapper.views.shell import App, _session_dispatch

    def factory():
        app = App(path, dispatch=_session_dispatch())
        pn.state.on_session_destroyed(lambda _context: app.dispose())
        apps.append(app)
        return app.template()

    return factory


# -- `neuromapper serve` in a process of its own (tests/test_server_faults.py, benchmarks/bench_load.py) -------


def start_serve(run, port: int, log, *args: str, prelude: str = "") -> subprocess.Popen:
    """Start ``neuromapper serve RUN --port PORT --no-show [args]``; its stdout and stderr go to ``log``.

    ``prelude`` is Python run in the server's process before the command (a test shortens Bokeh's
    session lifetimes with it); the command itself is :func:`neuromapper.cli.main`, as the console
    script runs it.
    """
    code = f"import sys\n{prelude}\nfrom neuromapper.cli import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "serve", str(run), "--port", str(port), "--no-show", *args],
                            stdout=log, stderr=subprocess.STDOUT)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def refuse_other_hosts(target, netloc: str) -> list[str]:
    """Route every request of ``target`` (a page or context): those not to ``netloc`` are refused and listed.

    Returns the list the refused URLs are appended to, as they happen.
    """
    from urllib.parse import urlsplit

    refused: list[str] = []

    def handle(route):
        url = route.request.url
        if urlsplit(url).netloc == netloc or url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            refused.append(url)
            route.abort()

    target.route("**/*", handle)
    return refused


# -- the Activations page (tests/ui/test_activations.py, benchmarks/bench_activations.py) -------------


def cli_app_factory(path, apps: list):
    """:func:`app_factory` served the way ``neuromapper serve`` serves it.

    The Activations page's ranking is a Tabulator, so the session loads the pages' Panel
    extensions (``shell.EXTENSIONS``; without them the page logs "Tabulator is not defined"),
    and, as the CLI does (``cli._served_locally``), points the session's stylesheets at this
    server: once an extension is loaded, Panel otherwise links ``loading.css`` from its CDN.
    """
    from neuromapper.cli import _served_locally
    from neuromapper.views.shell import EXTENSIONS

    factory = app_factory(path, apps)

    def session():
        pn.extension(*EXTENSIONS)
        return _served_locally(factory)

    return session


# JavaScript run in the page: one entry per Activations plot (a figure whose x axis is "activation"),
# keyed by its title (the layer): a position-weighted checksum of its density bars, the labelled
# y positions of its unit axis from the top down (``ticks``; row 0 is drawn at y = rows - 1) and
# their labels, and its number of instance dots. The Embeddings page's plots have the same titles,
# so IMAGE_CHECKSUMS cannot tell the two pages apart.
ACTIVATION_PLOTS = """
() => {
  const out = {};
  const doc = window.Bokeh && Bokeh.documents[0];
  if (!doc) return out;
  for (const m of doc.all_models) {
    if (m.type !== "Figure" || !m.title || !m.below || !m.below.length || m.below[0].axis_label !== "activation") continue;
    const entry = {checksum: null, ticks: [], labels: [], dots: null};
    for (const r of m.renderers) {
      const data = r.data_source && r.data_source.data;
      if (!r.glyph || !data) continue;
      if (r.glyph.type === "ImageRGBA" && data.image && data.image.length) {
        const img = data.image[0];
        const flat = img.length !== undefined && typeof img[0] === "number" ? img : img.flat ? img.flat() : img;
        let sum = 0;
        for (let i = 0; i < flat.length; i++) sum = (sum + (flat[i] >>> 0) * ((i % 9973) + 1)) % 2147483647;
        entry.checksum = sum;
      }
      if (r.glyph.type === "Scatter" && data.x) entry.dots = data.x.length;
    }
    const overrides = m.left[0].major_label_overrides;
    const pairs = overrides instanceof Map ? [...overrides.entries()] : Object.entries(overrides);
    pairs.sort((a, b) => Number(b[0]) - Number(a[0]));
    entry.ticks = pairs.map((p) => Number(p[0]));
    entry.labels = pairs.map((p) => p[1]);
    out[m.title.text] = entry;
  }
  return out;
}
"""
