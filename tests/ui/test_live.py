"""The dashboard over runs that change under it: a live recording, closed pages, shared work, a folder.

Each test serves a fresh :class:`~neuromapper.views.shell.App` per browser session (as
``neuromapper serve`` does), keeps the server-side apps to check their state against the page,
and fails on any browser console error. What is checked:

* a run recorded by another process while its page is open grows in that page, epoch by epoch,
  without a reload, and the epochs embedded before keep their coordinates;
* closing the only page waiting for a reduction cancels it (no thread left, nothing stored);
* two pages waiting for the same embedding share one reduction;
* a folder of runs offers a run chooser, and choosing another run starts that session afresh.

Two cases guard fixes of bugs these tests found: the player's slider offers the epochs a live run
adds (Panel's Player view draws its range once, so the shell replaces the player), and a
reduction that saw an epoch its session had not seen yet is shown (``SessionState._on_done``).
"""

from __future__ import annotations

import gc
import importlib
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import panel as pn
import pytest
from tornado.ioloop import IOLoop

from neuromapper.store import recorded_epochs
from neuromapper.views.jobs import JOBS
from neuromapper.views.shell import App

from .conftest import DOCUMENT_IDLE, IMAGE_CHECKSUMS, app_factory, free_port, screenshot, wait_until

pytestmark = pytest.mark.browser

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


# -- helpers ----------------------------------------------------------------------------------------
def _collect_stopped_servers() -> None:
    IOLoop(make_current=False).close()  # tornado forgets IOLoops whose asyncio loop is closed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(autouse=True)
def _quietly_collect_stopped_servers():
    """Collect earlier tests' stopped servers before this test runs, and this test's after it.

    A stopped threaded ``pn.serve`` leaves the browser's keep-alive connections open: its
    sessions (never destroyed, since the server stopped first) and tornado's
    ``IOLoop._ioloop_for_asyncio`` map keep them alive until the test's fixtures are released
    and the next IOLoop is created. Then they are garbage, and their ``ResourceWarning``
    ("unclosed socket") fails whichever later test happens to run the cyclic collector, since
    warnings are errors here (seen in this module, from this module's servers and from
    ``test_dashboard``'s). Creating an IOLoop drops the closed ones from tornado's map; a
    collection with ``ResourceWarning`` ignored then closes what is garbage.
    """
    _collect_stopped_servers()
    yield
    _collect_stopped_servers()


@pytest.fixture
def apps():
    """The server-side apps of a test; disposed at teardown (a stopped server does not destroy sessions)."""
    made: list[App] = []
    yield made
    for app in made:
        app.dispose()  # leave reduce jobs and the run watcher, as a closed session would
    made.clear()  # their Panel objects hold the sessions' documents, and so the server's sockets


def collect_errors(page) -> list[str]:
    """Console errors and failed requests of a page other than the ``console_errors`` one."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
    return errors


def settle(page) -> dict:
    """Wait until the page is idle and its layer pictures stopped changing; their checksums."""
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    previous: dict = {}

    def settled():
        nonlocal previous
        now = page.evaluate(IMAGE_CHECKSUMS)
        same, previous = bool(now) and now == previous and page.evaluate(DOCUMENT_IDLE), now
        return same

    wait_until(settled, timeout=30, interval=0.5, message="the layer pictures to settle")
    return previous


# The epoch player's Bokeh model(s) in the page: Panel's DiscretePlayer sends option indices.
def player_in_page(page) -> tuple[str, str]:
    """(max, value) of the epoch player's slider as shown: option indices, as strings.

    Read from the DOM, not from ``Bokeh.documents[0].all_models``: after the sidebar is rebuilt
    (another run chosen) the replaced player's model lingers there, still referenced by a
    ``CustomJS`` (from the frame-interval slider's ``jslink``, its only JS link), although the page shows only
    the new player and the server's document holds only the new one.
    """
    slider = page.locator("input[type=range]")  # the player's; the other sliders are noUiSliders
    assert slider.count() == 1, f"{slider.count()} range inputs"
    return slider.get_attribute("max"), slider.input_value()


def live_text(page) -> str:
    """The live line of the page ('' when it shows none); its text lives in the pane's shadow DOM."""
    lines = page.locator(".nm-live").locator("div", has_text="live ·")
    return lines.first.inner_text().strip() if lines.count() else ""


def reduce_threads(run: Path) -> list[threading.Thread]:
    """The live reduce job threads of ``run`` (ReduceJobs names them after the run directory)."""
    return [t for t in threading.enumerate() if t.name == f"neuromapper-reduce-{run.name}" and t.is_alive()]


def unreduced_copy(run, target: Path) -> Path:
    """A copy of ``run`` without its stored embeddings (resolved, as the views name runs)."""
    return Path(shutil.copytree(run, target, ignore=shutil.ignore_patterns("embeddings"))).resolve()


@pytest.fixture
def held_reduce(monkeypatch):
    """Hold every dashboard reduction until ``release`` is set (or its cancel event is).

    ``ReduceJobs`` imports ``neuromapper.reduce`` when a job runs and calls its ``reduce``
    function, so patching that attribute reaches the server's job threads. While held, the
    wrapper checks the job's cancel event every 50 ms, as the real optimiser does between
    epochs, and raises ``ReductionCancelled`` once it is set: a reduction of the small test run
    takes 2-4 s, too short to close a page in the middle of it reliably.
    """
    reduction = importlib.import_module("neuromapper.reduce")
    real = reduction.reduce
    held = SimpleNamespace(release=threading.Event(), calls=[], cancelled=[])

    def slow_reduce(run, *args, cancel=None, **kwargs):
        held.calls.append(Path(run).resolve())
        deadline = time.monotonic() + 120
        while not held.release.is_set() and time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                held.cancelled.append(Path(run).resolve())
                raise reduction.ReductionCancelled("cancelled while held by the test")
            time.sleep(0.05)
        return real(run, *args, cancel=cancel, **kwargs)

    monkeypatch.setattr(reduction, "reduce", slow_reduce)
    yield held
    held.release.set()


# -- 1. a live run ------------------------------------------------------------------------------------
RECORDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path

    import torch
    from torch import nn

    from neuromapper import Recorder
    from neuromapper.data import DigitCNN, load_digits8

    path, gate, last, pause = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    digits = load_digits8()
    torch.manual_seed(0)
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_train, y_train = digits.x[200:], digits.y[200:]

    def train_one_epoch():
        for start in range(0, len(y_train), 128):
            loss = nn.functional.cross_entropy(model(x_train[start:start + 128]), y_train[start:start + 128])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    with Recorder(model, layers=["conv2", "fc2"], probe=(digits.x[:200], digits.y[:200]),
                  class_names=digits.class_names, path=path, dataset="digits") as rec:
        for epoch in range(last + 1):
            if epoch == 2:  # the test opens its page on epochs 0-1, then lets the run go on
                deadline = time.monotonic() + 180
                while not gate.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            elif epoch > 2:
                time.sleep(pause)
            rec.capture(epoch, metrics=None if epoch == 0 else {"train_loss": train_one_epoch()})
            rec.flush()
            print(f"captured {epoch}", flush=True)
""")


@pytest.fixture
def recording(tmp_path):
    """Start a recording subprocess; yields (run path, gate file, lines printed so far, process).

    The recorder writes epochs 0 and 1 at once, then waits for the gate file before it records
    epochs 2-5 about 3 s apart: the first embedding is then always of epochs 0-1, whatever the
    machine's load, and every later epoch lands while the page is open.
    """
    script = tmp_path / "record_live.py"
    script.write_text(RECORDER)
    run, gate = tmp_path / "live", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, str(script), str(run), str(gate), "5", "3.0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in proc.stdout), daemon=True)
    reader.start()
    try:
        yield run, gate, lines, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=10)
        proc.stdout.close()


def test_live_run_grows_in_an_open_page(page, console_errors, serve, apps, recording):
    run, gate, lines, proc = recording
    wait_until(lambda: "captured 1" in lines or proc.poll() is not None, timeout=120, message="epochs 0 and 1")
    assert "captured 1" in lines, f"the recorder stopped: {lines}"
    assert recorded_epochs(run) == [0, 1]

    url = serve(app_factory(run, apps))
    page.goto(url, timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    state = wait_until(lambda: apps and apps[0].state, message="the session's app")
    wait_until(lambda: state.scene is not None, timeout=60, message="the first embedding (epochs 0-1)")
    wait_until(lambda: page.locator(".nm-layer").count() == 2, message="one plot per layer")
    settle(page)
    first = state.scene
    assert first.epochs == [0, 1]
    coordinates = [{layer: (first.xs[layer].copy(), first.ys[layer].copy()) for layer in first.layers}]
    page.evaluate("() => { window.__nmSamePage = true; }")  # gone if the page reloads

    gate.touch()  # the run goes on: one epoch about every 3 s up to epoch 5
    seen_epochs, seen_live = [first.epochs], []
    deadline = time.monotonic() + 120
    while (scene := state.scene).epochs != list(range(6)):
        assert time.monotonic() < deadline, f"the embedding stopped growing at {seen_epochs[-1]} ({lines})"
        if scene.epochs != seen_epochs[-1]:
            seen_epochs.append(scene.epochs)
            coordinates.append({layer: (scene.xs[layer].copy(), scene.ys[layer].copy()) for layer in scene.layers})
        live = live_text(page)
        if live and live not in seen_live:
            seen_live.append(live)
        time.sleep(0.2)
    if (scene := state.scene).epochs != seen_epochs[-1]:
        seen_epochs.append(scene.epochs)
        coordinates.append({layer: (scene.xs[layer].copy(), scene.ys[layer].copy()) for layer in scene.layers})
    assert proc.wait(timeout=60) == 0, lines

    # the player offers every epoch, on the server and in the page
    assert state.param.epoch.objects == list(range(6))
    wait_until(lambda: player_in_page(page)[0] == "5", message="the page's player to offer epoch 5")
    wait_until(lambda: live_text(page) == "● live · epoch 5 recorded, up to epoch 5 embedded", message="the final live line")
    # the live line showed up while the run grew, not only once it was all embedded
    assert all(re.fullmatch(r"● live · epoch [2-5] recorded, up to epoch [1-5] embedded", text) for text in seen_live), seen_live
    assert [text for text in seen_live if text != "● live · epoch 5 recorded, up to epoch 5 embedded"], seen_live
    # the embedding grew epoch by epoch (an extension may take two epochs at once on a busy box)
    assert all(a == b[:len(a)] and len(a) < len(b) for a, b in zip(seen_epochs, seen_epochs[1:])), seen_epochs
    assert len(seen_epochs) >= 3, seen_epochs

    # frames laid out for good keep their coordinates: each extension laid out the new epochs and the
    # previous last one (it had no next epoch to look ahead to until now), nothing earlier
    for (before, after), (shown, grown) in zip(zip(seen_epochs, seen_epochs[1:]), zip(coordinates, coordinates[1:])):
        kept = len(before) - 1
        for layer, (xs, ys) in shown.items():
            assert np.array_equal(grown[layer][0][:kept], xs[:kept], equal_nan=True), f"{layer}: x of {before[:kept]} moved"
            assert np.array_equal(grown[layer][1][:kept], ys[:kept], equal_nan=True), f"{layer}: y of {before[:kept]} moved"
        assert any(not np.array_equal(grown[layer][0][kept], xs[kept]) for layer, (xs, _) in shown.items()), \
            f"epoch {before[-1]} was not laid out again when epoch {after[-1]} came"

    # the player steps to the new last epoch and every layer redraws
    before = settle(page)
    assert sorted(before) == ["conv2", "fc2"]
    page.locator("button.last").first.click()
    wait_until(lambda: state.epoch == 5, message="the server to reach epoch 5")
    wait_until(lambda: (now := page.evaluate(IMAGE_CHECKSUMS)) and all(now[k] != before[k] for k in before),
               message="every layer image to change at epoch 5")
    wait_until(lambda: player_in_page(page) == ("5", "5"), message="the page's player at epoch 5")
    assert page.evaluate("() => window.__nmSamePage === true"), "the page reloaded"
    screenshot(page, "live-epoch-5")


# -- 2. closing a page cancels its reduce ------------------------------------------------------------
@pytest.fixture
def serve_expiring():
    """``serve(factory) -> (url, expire_fast)``; after ``expire_fast()`` a closed page's session ends in under 1 s.

    Bokeh destroys a session (and Panel then calls ``on_session_destroyed``) only when its
    unused-session check finds it without a connection for longer than the unused-session
    lifetime: by default a check every 17 s for sessions unused for 15 s, so a closed page would
    cancel its reduction 15-32 s later. Here the check runs every 250 ms. The lifetime cannot
    simply be lowered at start: it also counts from a session's creation (the page's GET) until
    the page connects its websocket, and a session dropped in between is re-created from the
    websocket without Panel's page template, so every stylesheet then points at the CDN (seen
    here with a 1.5 s lifetime on a busy machine). ``expire_fast()`` lowers it once the page is
    connected, through Bokeh's private ``BokehTornado._unused_session_lifetime_milliseconds``
    (read afresh at every check; Bokeh has no public way to change it on a running server).
    """
    servers = []

    def start(factory):
        port = free_port()
        server = pn.serve(
            {"/": factory}, port=port, address="127.0.0.1", threaded=True, show=False,
            websocket_origin=[f"127.0.0.1:{port}"], start=True, check_unused_sessions_milliseconds=250,
        )
        servers.append(server)

        def accepting():
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", port)) == 0

        wait_until(accepting, timeout=30, message=f"the server on port {port}")

        def expire_fast(milliseconds: int = 300) -> None:
            bokeh_server = pn.state._servers[server.server_id][0]
            bokeh_server._tornado._unused_session_lifetime_milliseconds = milliseconds

        return f"http://127.0.0.1:{port}/", expire_fast

    yield start
    for server in servers:
        server.stop()
        server.join(timeout=30)
    pn.state.reset()


def test_closing_the_page_cancels_its_reduce(page, console_errors, serve_expiring, apps, held_reduce, small_run, tmp_path):
    run = unreduced_copy(small_run, tmp_path / "close-me")
    url, expire_fast = serve_expiring(app_factory(run, apps))
    page.goto(url, timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    expire_fast()  # the page is connected: from now on a closed session ends within about 0.6 s
    wait_until(lambda: page.locator(".nm-waiting", has_text="computing the first embedding").count() == 1,
               message="the page to say it computes the first embedding")
    wait_until(lambda: reduce_threads(run), message="the session's reduce job thread")
    assert held_reduce.calls == [run] and len(apps) == 1

    page.close()
    closed = time.monotonic()
    wait_until(lambda: not reduce_threads(run), timeout=5, interval=0.05,
               message="the reduce thread to stop after the page closed")
    took = time.monotonic() - closed
    assert held_reduce.cancelled == [run], "the reduction ended without being cancelled"
    assert apps[0].state is None, "the session's app was not disposed"
    assert not any(job.root == run for job in JOBS.running())
    assert not list((run / "embeddings").glob("*.nc*")), "a cancelled reduction stored an embedding"
    print(f"reduce thread gone {took:.2f} s after the page closed")


# -- 3. two sessions, one reduction ---------------------------------------------------------------------
def test_two_pages_share_one_reduction(browser, page, console_errors, serve, apps, held_reduce, small_run, tmp_path):
    run = unreduced_copy(small_run, tmp_path / "shared")
    url = serve(app_factory(run, apps))
    page.goto(url, timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    wait_until(lambda: reduce_threads(run), message="the first session's reduce job")
    other = browser.new_page(viewport={"width": 1800, "height": 1100})
    other_errors = collect_errors(other)
    try:
        other.goto(url, timeout=120_000)
        other.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
        wait_until(lambda: len(apps) == 2 and apps[1].state is not None, message="the second session")
        jobs = [job for job in JOBS.running() if job.root == run]
        assert len(jobs) == 1 and len(jobs[0].listeners) == 2, "both sessions should wait for one job"
        assert len(reduce_threads(run)) == 1
        assert held_reduce.calls == [run]
        for p in (page, other):
            assert p.locator(".nm-waiting", has_text="computing the first embedding").count() == 1

        held_reduce.release.set()
        for p in (page, other):
            wait_until(lambda p=p: sorted(p.evaluate(IMAGE_CHECKSUMS)) == LAYERS, timeout=60,
                       message="every layer plot in both pages")
        assert held_reduce.calls == [run], "the embedding was reduced more than once"
        assert apps[0].state.scene is apps[1].state.scene, "the sessions should share one scene"
        assert apps[0].state.scene.epochs == [0, 1, 2, 3]
        assert len(list((run / "embeddings").glob("*.nc"))) == 1
        wait_until(lambda: not reduce_threads(run), message="the job thread to end")
        settle(other)
        screenshot(other, "live-shared-second-page")
    finally:
        other.close()
    assert other_errors == [], f"second page console errors: {other_errors}"


# -- 4. runs from a folder ---------------------------------------------------------------------------------
@pytest.fixture
def run_folder(small_run, tmp_path):
    """A folder with two reduced runs: ``a-full`` (epochs 0-3) and ``b-short`` (epochs 0-2)."""
    from neuromapper import reduce

    folder = tmp_path / "runs"
    full = unreduced_copy(small_run, folder / "a-full")
    short = unreduced_copy(small_run, folder / "b-short")
    (short / "epochs" / "epoch-000003.nc").unlink()
    for run in (full, short):
        reduce(run)
    return folder


def test_folder_of_runs_offers_a_run_chooser(page, console_errors, serve, apps, run_folder):
    page.goto(serve(app_factory(run_folder, apps)), timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    wait_until(lambda: page.locator(".nm-layer").count() == len(LAYERS), message="one plot per layer")
    before = settle(page)
    app = apps[0]
    assert app.state.run.root.name == "a-full"

    chooser = page.locator("select").filter(has=page.locator("option", has_text="b-short"))
    assert chooser.count() == 1
    labels = [text.strip() for text in chooser.locator("option").all_inner_texts()]
    assert len(labels) == 2
    assert re.fullmatch(r"a-full · DigitCNN · 4 epochs · \d+\.\d% final accuracy", labels[0]), labels
    assert re.fullmatch(r"b-short · DigitCNN · 3 epochs · \d+\.\d% final accuracy", labels[1]), labels
    assert page.get_by_text("run", exact=True).count() >= 1  # the chooser's label

    # a selection and a step in the first run, to see that none of it survives the change
    old_state = app.state
    page.locator("button.next").first.click()
    wait_until(lambda: old_state.epoch == 1, message="epoch 1 of the first run")
    box = page.locator(".nm-layer").nth(3).locator("canvas").first.bounding_box()
    x0, y0 = box["x"] + 0.2 * box["width"], box["y"] + 30 + 0.2 * (box["height"] - 30)
    x1, y1 = box["x"] + 0.7 * box["width"], box["y"] + 30 + 0.7 * (box["height"] - 30)
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=8)
    page.mouse.up()
    wait_until(lambda: old_state.selection is not None, message="a selection in the first run")

    chooser.select_option(label=labels[1])
    wait_until(lambda: app.state is not None and app.state is not old_state and app.state.run.root.name == "b-short",
               message="the server app to open b-short")
    state = app.state
    assert old_state._disposed
    assert state.param.epoch.objects == [0, 1, 2]
    assert state.epoch == 0 and state.selection is None and state.focused is None
    assert state.scene is not None and state.scene.epochs == [0, 1, 2]
    wait_until(lambda: player_in_page(page) == ("2", "0"), message="the page's player over epochs 0-2")
    wait_until(lambda: page.locator(".nm-run-info", has_text="b-short").count() == 1, message="the run card of b-short")
    after = settle(page)
    assert sorted(after) == LAYERS and after != before
    assert page.locator("select").filter(has=page.locator("option", has_text="a-full")).count() == 1
    screenshot(page, "live-run-chooser")


# -- the player's slider follows a growing run (Panel's own does not: see views/shell.py) ----------------------------------------------
class StaleSlider(AssertionError):
    """The player's slider in the page does not offer the epochs its model offers."""


def test_player_slider_range_follows_a_growing_run(page, console_errors, serve, apps, small_run, tmp_path):
    """A run gains an epoch while its page is open: the slider's range should grow with the player."""
    from neuromapper import reduce

    run = unreduced_copy(small_run, tmp_path / "growing")
    last = run / "epochs" / "epoch-000003.nc"
    held_back = tmp_path / last.name
    last.rename(held_back)
    reduce(run)  # epochs 0-2 embedded, as a live run's page would have them
    page.goto(serve(app_factory(run, apps)), timeout=120_000)
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    state = wait_until(lambda: apps and apps[0].state, message="the session's app")
    wait_until(lambda: state.scene is not None and page.locator(".nm-layer").count() == len(LAYERS), message="the plots")
    assert player_in_page(page) == ("2", "0")

    held_back.rename(last)  # epoch 3 lands, atomically, as the Recorder writes it
    wait_until(lambda: state.scene.epochs == [0, 1, 2, 3], timeout=60, message="epoch 3 embedded")
    wait_until(lambda: player_in_page(page)[0] == "3", message="the page's player to offer epoch 3")
    page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
    if player_in_page(page) != ("3", "0"):
        raise StaleSlider(f"the slider shows (max, value) {player_in_page(page)} while the player offers epochs 0-3")


# -- a reduction that saw more epochs than its session ------------------------------------
class EmbeddingNotShown(AssertionError):
    """A finished reduction was not shown by the session that waited for it."""


def test_a_reduction_of_more_epochs_than_the_session_knows_is_shown(held_reduce, small_run, tmp_path):
    """No browser: the session state driven as a notebook drives it, with a watcher that is slow to look.

    Kept beside the live browser tests because it is the same live-run path; it needs no page,
    and a page could not make the watcher miss the new epoch deterministically.
    """
    from neuromapper.views.jobs import ReduceJobs, RunWatcher
    from neuromapper.views.state import SessionState

    run = unreduced_copy(small_run, tmp_path / "raced")
    (run / "epochs" / "epoch-000003.nc").unlink()
    late = run / "epochs" / "epoch-000002.nc"
    late.rename(tmp_path / late.name)
    errors: list[str] = []

    def dispatch(fn, *args):  # as the server's next-tick callbacks: an error is logged, not raised
        try:
            fn(*args)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    state = SessionState(run, dispatch=dispatch, jobs=ReduceJobs(), watcher=RunWatcher(interval=3600))
    try:
        assert state.run.epochs == [0, 1] and state.scene is None
        wait_until(lambda: held_reduce.calls == [run], message="the held reduction")
        (tmp_path / late.name).rename(late)  # epoch 2 lands before the job opens the run
        held_reduce.release.set()
        try:
            wait_until(lambda: errors or (state.scene is not None and state.progress is None), timeout=60,
                       message="the reduction to finish")
        except AssertionError as exc:
            raise EmbeddingNotShown(str(exc)) from None
        if errors or state.scene is None:
            raise EmbeddingNotShown(f"errors {errors}; scene {state.scene}; status {state.status!r}")
        assert state.scene.epochs == [0, 1, 2] and state.run.epochs == [0, 1, 2]
    finally:
        state.dispose()


# -- 5. a closed session gives back what it made --------------------------------------------------------
def test_closed_sessions_release_their_threads_and_watchers(browser, console_errors, serve_expiring, apps, reduced_run):
    from neuromapper.views.jobs import WATCHER

    def ahead_threads():
        return [t for t in threading.enumerate() if t.name.startswith("neuromapper-ahead")]

    before = len(ahead_threads())
    tokens = []  # this test's watcher entries (sessions of other tests may still watch the same run)
    url, expire_fast = serve_expiring(app_factory(reduced_run, apps))
    for i in range(4):
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        errors = collect_errors(page)
        expire_fast(15_000)  # Bokeh's default while a page loads (see serve_expiring)
        page.goto(url, timeout=120_000)
        page.wait_for_function(DOCUMENT_IDLE, timeout=60_000)
        expire_fast()
        wait_until(lambda i=i: len(apps) == i + 1 and apps[i].state is not None and apps[i].state.scene is not None,
                   message=f"session {i}")
        tokens.append(apps[i].state._watch_token)
        page.locator("button.next").first.click()  # a step starts the session's render-ahead thread
        wait_until(lambda i=i: apps[i].state.epoch == 1, message=f"session {i} at epoch 1")
        wait_until(lambda: len(ahead_threads()) > before, message="a render-ahead thread")
        page.close()
        assert errors == [], errors
    wait_until(lambda: all(app.state is None for app in apps), timeout=10, message="every session disposed")
    wait_until(lambda: len(ahead_threads()) == before, timeout=10, message="the render-ahead threads to end")
    assert not set(tokens) & set(WATCHER._watchers)
