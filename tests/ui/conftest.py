"""Browser tests: serve a NeuroMapper app on a free port and drive Debian's chromium with Playwright.

Chromium comes from Debian (``apt-get install chromium``, done by ``make test``); Playwright's own
browser download is never used. Every test fails on a browser console error, and screenshots
are written to ``test-artifacts/`` for people to look at.
"""

from __future__ import annotations

import shutil
import socket
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
