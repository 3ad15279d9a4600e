"""``neuromapper serve`` under faults and load: killed and restarted, and twenty pages at once.

Each test runs the command in a process of its own (as a person does) and drives Debian's
chromium through Playwright where a page is needed:

* a server killed with SIGKILL (with a page connected, or while a session's reduction runs in
  worker processes) and started again on the same port serves the same run at once, and the
  killed server leaves no worker alive 10 s after the kill (issue 12, finding 11 and "Faults");
* with twenty pages opened at once, no request leaves the server's host: every script and
  stylesheet comes from the server itself (issue 12, finding 12);
* the cause of finding 12 on its own: a page that connects its websocket after its session
  expired gets a session built for the websocket, and that one loads its stylesheets from the
  server too;
* an idle keep-alive HTTP connection is closed after the server's idle timeout, not Tornado's
  default hour (its pending timeout kept objects made during sessions alive; finding 10).
"""

from __future__ import annotations

import signal
import time
import urllib.request

import psutil
import pytest

from neuromapper import reduce
from neuromapper.cli import CHECK_UNUSED_SESSIONS_S, UNUSED_SESSION_LIFETIME_S
from neuromapper.synthetic import make_synthetic_run

from .ui.conftest import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DOCUMENT_IDLE,
    free_port,
    listening,
    refuse_other_hosts,
    start_serve,
    wait_until,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

LAYERS = 2


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """A small synthetic run with its default embedding stored (pages show it at once)."""
    run = make_synthetic_run(tmp_path_factory.mktemp("serve") / "fault-run", n_samples=400, n_epochs=4,
                             n_layers=LAYERS, dims=16)
    reduce(run)
    return run


@pytest.fixture(scope="module")
def chromium(browser_type):
    browser = browser_type.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture
def servers(tmp_path):
    """``servers(run, port, *args, prelude="") -> (process, log path)``; every server is killed afterwards."""
    started = []

    def start(run, port, *args, prelude=""):
        log = tmp_path / f"serve-{len(started)}.log"
        with open(log, "w") as out:
            proc = start_serve(run, port, out, *args, prelude=prelude)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


@pytest.fixture
def context(chromium):
    """A fresh browser context (its own cookies and routes), closed after the test."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    yield context
    context.close()


def listening_server(servers, run, prelude: str = ""):
    """``neuromapper serve run`` on a free port, once it listens: ``(process, log path, port, url)``."""
    port = free_port()
    proc, log = servers(run, port, prelude=prelude)
    wait_until(lambda: alive(proc, log) and listening(port), timeout=120, message="the server to listen")
    return proc, log, port, f"http://127.0.0.1:{port}/"


def alive(proc, log) -> bool:
    """True while ``proc`` runs; a server that exited fails the test with the end of its output."""
    assert proc.poll() is None, f"the server exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
    return True


def status(url: str) -> int | None:
    """The HTTP status of ``url``, or ``None`` while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status
    except OSError:
        return None


def wait_answering(proc, log, url: str, timeout: float = 60) -> None:
    wait_until(lambda: alive(proc, log) and status(url) == 200, timeout=timeout, interval=0.2,
               message=f"the restarted server to answer at {url}")


def page_errors(page) -> list[str]:
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def open_page(context, url: str):
    page = context.new_page()
    errors = page_errors(page)
    page.goto(url, timeout=180_000)
    return page, errors


def wait_shown(page, layers: int = LAYERS, timeout: float = 180) -> None:
    """The page's document is idle and shows one plot per layer."""
    page.wait_for_function(DOCUMENT_IDLE, timeout=timeout * 1000)
    wait_until(lambda: page.locator(".nm-layer").count() == layers, timeout=timeout, message="the layer plots")


def server_problems(log) -> list[str]:
    text = log.read_text()
    return [line for line in text.splitlines() if "Traceback" in line or "ERROR" in line or "Exception" in line]


def kill(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


# Bokeh drops a session nobody connected to for LIFETIME s, checked every CHECK s; the wrapper
# prints which request each session was built for, so the test sees a page's session rebuilt.
SHORT_LIVED = """
import neuromapper.cli as cli
import panel as pn
cli.UNUSED_SESSION_LIFETIME_S, cli.CHECK_UNUSED_SESSIONS_S = {lifetime}, {check}
_served = cli._served_locally
def _announced(*args):
    print("session built for", pn.state.curdoc.session_context.request.path, flush=True)
    return _served(*args)
cli._served_locally = _announced
"""


def short_lived(lifetime: float, check: float) -> str:
    """A server prelude: unused sessions live ``lifetime`` s, checked every ``check`` s; sessions announced."""
    return SHORT_LIVED.format(lifetime=lifetime, check=check)


def sessions_built(log) -> list[str]:
    """The request path each session of a ``short_lived`` server was built for, in order ("/" or "/ws")."""
    return [line.rsplit(" ", 1)[-1] for line in log.read_text().splitlines() if line.startswith("session built")]


def test_a_killed_server_restarted_on_its_port_serves_the_run_at_once(served_run, servers, context):
    first, _, port, url = listening_server(servers, served_run)
    page, _ = open_page(context, url)
    wait_shown(page)  # a live websocket: the kill leaves connections behind on the port
    kill(first)
    started = time.monotonic()
    second, log = servers(served_run, port)
    wait_answering(second, log, url)
    answered = time.monotonic() - started
    fresh, errors = open_page(context, url)
    name = fresh.locator(".nm-header-run").filter(has_text=served_run.name)
    wait_until(lambda: name.count() == 1, timeout=60, message="the run's name in the page")
    shown = time.monotonic() - started
    print(f"after the restart: HTTP 200 in {answered:.1f} s, the run's name in the page in {shown:.1f} s")
    # a Python start and one session (about 6 s here, 16 s with other jobs on both cores), not a
    # wait for the port to be freed (TIME_WAIT lasts 60 s)
    assert shown < 30
    wait_shown(fresh)
    assert errors == []
    assert second.poll() is None and server_problems(log) == []


def gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_server_killed_during_a_reduction_leaves_no_worker_and_restarts_at_once(tmp_path, servers, context):
    # big enough (5,000 samples x 11 epochs) that the session's reduction runs in worker processes
    run = make_synthetic_run(tmp_path / "unreduced", n_samples=5000, n_epochs=11, n_layers=2, dims=16)
    first, _, port, url = listening_server(servers, run)
    server = psutil.Process(first.pid)
    open_page(context, url)  # its session starts the run's first reduction
    workers = wait_until(lambda: server.children(recursive=True), timeout=120, message="reduce workers")
    assert all(not gone(w) for w in workers)
    kill(first)
    # the bar: no worker of the killed server alive 10 s after the kill
    wait_until(lambda: all(gone(w) for w in workers), timeout=10, message="the killed server's workers to exit")
    wait_answering(*servers(run, port), url)  # how soon: the test above
    assert not (run / "embeddings").exists() or all(not p.name.endswith(".tmp")
                                                    for p in (run / "embeddings").iterdir())


def test_twenty_pages_at_once_load_everything_from_the_server(served_run, servers, context):
    # the CLI's own session lifetimes, sessions announced: on a busy machine some pages connect
    # after their session expired (finding 12 took about 20 demo-sized pages at the old 15 s);
    # the next test makes that happen every time
    _, log, port, url = listening_server(
        servers, served_run, prelude=short_lived(UNUSED_SESSION_LIFETIME_S, CHECK_UNUSED_SESSIONS_S))
    refused = refuse_other_hosts(context, f"127.0.0.1:{port}")
    # twenty requests at once: the server builds one session after the other while the first
    # pages' websockets wait for it, as when twenty people open the link
    pages = [(page := context.new_page(), page_errors(page)) for _ in range(20)]
    for page, _ in pages:
        page.evaluate("url => setTimeout(() => { location.href = url; }, 0)", url)
    for page, _ in pages:
        page.wait_for_url(url, timeout=300_000)
        wait_shown(page, timeout=300)
    for page, _ in pages:  # stylesheets load as widgets attach: give the last ones time
        page.wait_for_timeout(500)
    print(f"{len(sessions_built(log))} sessions built for 20 pages, {sessions_built(log).count('/ws')} of them "
          "for a websocket whose session had expired")
    assert refused == [], f"{len(refused)} requests left the server's host, e.g. {refused[:5]}"
    errors = [e for _, page_errors in pages for e in page_errors]
    assert errors == []
    assert server_problems(log) == []


def test_a_session_rebuilt_for_its_websocket_loads_everything_from_the_server(served_run, servers, context):
    _, log, port, url = listening_server(servers, served_run, prelude=short_lived(1.0, 0.5))
    refused = refuse_other_hosts(context, f"127.0.0.1:{port}")

    def slow_bokeh(route):  # the page connects its websocket after its session expired
        time.sleep(4)
        route.continue_()

    page = context.new_page()
    page.route("**/bokeh.min.js*", slow_bokeh)
    errors = page_errors(page)
    page.goto(url, timeout=180_000)
    wait_shown(page)
    page.wait_for_timeout(500)
    assert sessions_built(log) == ["/", "/ws"]  # the page's session was rebuilt for its websocket
    assert refused == [], f"{len(refused)} requests left the server's host, e.g. {refused[:5]}"
    assert errors == []
    assert server_problems(log) == []


def test_an_idle_http_connection_is_closed_after_the_servers_idle_timeout(served_run, servers):
    """A browser's keep-alive connection is closed once idle, not after Tornado's default hour.

    While a connection waits for its next request its timeout is scheduled on the server's loop,
    and after the connection is gone it stays scheduled until it falls due, keeping objects made
    during the sessions alive (``neuromapper.cli.IDLE_CONNECTION_S``). The server here is told 2 s.
    """
    import http.client

    _, _, port, _ = listening_server(servers, served_run,
                                     prelude="import neuromapper.cli as cli\ncli.IDLE_CONNECTION_S = 2.0")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", "/favicon.ico")  # HTTP/1.1: the connection is kept for the next request
        response = connection.getresponse()
        assert response.status == 200 and response.read() and not response.will_close
        idle_from = time.monotonic()
        connection.sock.settimeout(30)  # Tornado's default keeps it open for an hour: recv would time out
        assert connection.sock.recv(1) == b"", "the server sent more than the response"
        closed_after = time.monotonic() - idle_from
    finally:
        connection.close()
    print(f"the idle connection was closed after {closed_after:.1f} s")
    assert 1.5 <= closed_after < 30
