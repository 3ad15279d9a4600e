"""The command line on bad input and faults: one-line errors, exit codes, nothing recorded lost."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

import pytest

from neuromapper import cli, reduce, store
from neuromapper.synthetic import make_synthetic_run


def run_cli(*argv, timeout=120):
    return subprocess.run([sys.executable, "-m", "neuromapper.cli", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(result, *fragments) -> str:
    """The single stderr line of a failed command, containing every fragment."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0, result
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = make_synthetic_run(tmp_path_factory.mktemp("cli") / "run", n_samples=200, n_epochs=2, dims=16,
                              class_names=[f"c\x1b[31m{i}\r" for i in range(10)])
    reduce(path)
    return path


def test_serve_refuses_a_taken_port_a_bad_port_and_a_bad_address(run):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(run_cli("serve", run, "--port", port, "--no-show"), f"port {port}", "in use")
    one_line_error(run_cli("serve", run, "--port", 70000, "--no-show"), "--port", "1-65535")
    one_line_error(run_cli("serve", run, "--address", "no.such.host.invalid", "--no-show"), "--address")


def test_serve_on_all_interfaces_needs_the_allowed_origins(run):
    line = one_line_error(run_cli("serve", run, "--address", "0.0.0.0", "--no-show"), "--allow-websocket-origin")
    assert "other machines" in line


def test_serve_passes_panels_basic_auth_through(run):
    from .ui.conftest import free_port, wait_until

    port = free_port()
    with subprocess.Popen([sys.executable, "-m", "neuromapper.cli", "serve", str(run), "--port", str(port), "--no-show",
                           "--basic-auth", "s3cret", "--cookie-secret", "nm-test-cookie-secret"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            def accepting():
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", port)) == 0

            wait_until(accepting, timeout=90, message="the server to listen")
            jar = CookieJar()
            opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
            page = opener.open(f"http://127.0.0.1:{port}/", timeout=60)
            assert "/login" in page.geturl()  # not logged in: sent to the login page
            form = urllib.parse.urlencode({"username": "me", "password": "wrong"}).encode()
            try:
                refused = "/login" in opener.open(f"http://127.0.0.1:{port}/login", data=form, timeout=60).geturl()
            except urllib.error.HTTPError:
                refused = True
            assert refused  # a wrong password does not get in
            form = urllib.parse.urlencode({"username": "me", "password": "s3cret"}).encode()
            page = opener.open(f"http://127.0.0.1:{port}/login", data=form, timeout=60)
            assert "/login" not in page.geturl() and "NeuroMapper" in page.read().decode()
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_serve_runs_under_jemalloc_unless_the_user_chose_an_allocator(run, tmp_path, monkeypatch):
    """``neuromapper serve`` restarts itself under jemalloc (closed sessions' memory goes back to the system).

    Launched as ``python -m neuromapper.cli`` and as a program calling ``main(sys.argv[1:])`` (how
    the browser tests and benchmarks start it); ``make test`` installs libjemalloc2.
    """
    from .ui.conftest import free_port, listening, start_serve, wait_until

    assert any(os.path.exists(path) for path in cli.JEMALLOC_PATHS), "libjemalloc2 is not installed (make test does it)"
    module = [sys.executable, "-m", "neuromapper.cli", "serve", str(run), "--no-show", "--port"]
    for launch, given, jemalloc in (("module", None, True), ("module", "pymalloc", False), ("program", None, True)):
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONMALLOC", "LD_PRELOAD")}
        if given is not None:
            env["PYTHONMALLOC"] = given
        port = free_port()
        with open(tmp_path / "server.log", "w") as log:
            if launch == "module":
                proc = subprocess.Popen([*module, str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
            else:
                monkeypatch.delenv("PYTHONMALLOC", raising=False)  # start_serve passes the test's environment on
                monkeypatch.delenv("LD_PRELOAD", raising=False)
                proc = start_serve(run, port, log)
        try:
            wait_until(lambda: listening(port) or proc.poll() is not None, timeout=90,  # noqa: B023
                       message="the server to listen")
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            environ = Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
            assert ("libjemalloc" in maps) is jemalloc, (launch, given)
            assert f"PYTHONMALLOC={'malloc' if jemalloc else given}".encode() in environ, (launch, given)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_without_jemalloc_serve_says_so_and_runs_on(monkeypatch, capsys):
    for name in ("PYTHONMALLOC", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    started = []
    monkeypatch.setattr(cli.os, "execve", lambda *args: started.append(args))
    monkeypatch.setattr(cli, "JEMALLOC_PATHS", ("/nonexistent/libjemalloc.so.2",))
    cli._restart_under_jemalloc()
    assert not started and "jemalloc not found (Debian: apt-get install libjemalloc2)" in capsys.readouterr().err
    monkeypatch.setattr(cli, "JEMALLOC_PATHS", (sys.executable,))  # any file that exists
    monkeypatch.setenv("MALLOC_CONF", "narenas:1")  # a user's jemalloc options are kept
    cli._restart_under_jemalloc()
    (executable, argv, env), = started
    assert executable == sys.executable and argv == [sys.executable, *sys.orig_argv[1:]]
    assert (env["LD_PRELOAD"], env["PYTHONMALLOC"], env["MALLOC_CONF"]) == (sys.executable, "malloc", "narenas:1")
    started.clear()
    monkeypatch.setenv("LD_PRELOAD", "/opt/my/allocator.so")  # the user's own allocator: no restart
    cli._restart_under_jemalloc()
    assert not started


def test_export_to_a_directory_is_a_one_line_error(run, tmp_path):
    one_line_error(run_cli("export", run, "-o", tmp_path), "is a directory")


def test_a_failed_export_leaves_the_previous_file_and_no_temporary_one(run, tmp_path, monkeypatch):
    out = tmp_path / "snap.html"
    out.write_text("the previous snapshot")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    assert cli.main(["export", str(run), "-o", str(out)]) == 2
    assert out.read_text() == "the previous snapshot" and sorted(p.name for p in tmp_path.iterdir()) == ["snap.html"]


def test_demo_never_deletes_a_recorded_run(run, tmp_path):
    copy = shutil.copytree(run, tmp_path / "demo")
    before = sorted(p.name for p in (copy / "epochs").iterdir())
    result = run_cli("demo", "--out", copy, "--no-serve", "--epochs", 1)
    assert result.returncode == 0 and "already holds a recorded run" in result.stderr and "--overwrite" in result.stderr
    assert sorted(p.name for p in (copy / "epochs").iterdir()) == before
    assert store.recorded_epochs(copy) == [0, 1]


@pytest.mark.parametrize(("flags", "attacks"), [([], None), (["--no-attacks"], False)])
def test_demo_leaves_attacks_to_the_demo_recipe_unless_told(flags, attacks, tmp_path, monkeypatch):
    """The MLP demos record no twins by default (a one-pixel attack needs images): the CLI passes
    None, not True, so that the recipe decides; --no-attacks turns them off for every demo."""
    import neuromapper.demo
    import neuromapper.reduce

    seen = {}
    monkeypatch.setattr(neuromapper.demo, "run_demo", lambda **kwargs: seen.update(kwargs) or tmp_path)
    monkeypatch.setattr(neuromapper.reduce, "reduce", lambda *args, **kwargs: None)
    assert cli.main(["demo", "--dataset", "moons", "--out", str(tmp_path / "m"), "--no-serve", *flags]) == 0
    assert seen["dataset"] == "moons" and seen["attacks"] is attacks and seen["epochs"] is None


def test_info_shows_control_characters_escaped(run, capsys):
    assert cli.main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "c\\x1b[31m0\\r" in out


def test_an_unexpected_failure_is_one_line_and_exit_1(run, monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(cli, "cmd_info", broken)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "info", broken))
    assert cli.main(["info", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "neuromapper info: error: unexpected RuntimeError: something broke (set NEUROMAPPER_DEBUG=1 for the traceback)"


def _with_func(parser, command, func):
    parser._subparsers._group_actions[0].choices[command].set_defaults(func=func)
    return parser


def test_a_missing_run_is_a_one_line_error(tmp_path):
    one_line_error(run_cli("info", tmp_path / "nope"), "does not exist")
    one_line_error(run_cli("reduce", tmp_path / "nope"), "does not exist")
    one_line_error(run_cli("export", tmp_path / "nope", "-o", tmp_path / "x.html"), "does not exist")


def test_a_message_to_a_closed_page_is_not_reported_as_a_server_error(caplog):
    """Only the closed connection is quiet: any other exception of a forgotten task is still reported."""
    import asyncio
    import gc

    from tornado.websocket import WebSocketClosedError

    from neuromapper.cli import quiet_closed_connections

    async def fails(exc):
        raise exc

    loop = asyncio.new_event_loop()
    loop.set_exception_handler(quiet_closed_connections)
    try:
        for exc in (WebSocketClosedError(), ValueError("a real error")):
            task = loop.create_task(fails(exc))
            loop.run_until_complete(asyncio.sleep(0.01))
            assert task.done()
            del task
            gc.collect()  # a finished task nobody asked for its exception reports it when collected
    finally:
        loop.close()
    reported = [r.getMessage() + str(r.exc_info) for r in caplog.records if r.name == "asyncio"]
    assert len(reported) == 1 and "a real error" in reported[0]


@pytest.mark.parametrize(("method", "kept"), [("anchored-umap", 2), ("pca", 3)])
def test_reduce_on_a_grown_run_says_how_many_stored_epochs_it_kept(method, kept, tmp_path, capsys):
    """anchored-umap lays the last stored epoch out again (it can now look ahead); pca keeps all three."""
    path = make_synthetic_run(tmp_path / "run", n_samples=150, n_epochs=4, n_layers=1, dims=12, n_classes=3)
    held = tmp_path / "held.nc"
    store.epoch_file(path, 3).rename(held)  # epoch 3 not recorded yet
    assert cli.main(["reduce", str(path), "--method", method]) == 0
    assert "computed in" in capsys.readouterr().out
    held.rename(store.epoch_file(path, 3))
    assert cli.main(["reduce", str(path), "--method", method]) == 0
    out = capsys.readouterr().out
    assert "extended from 3 to 4 epochs in " in out and f"(the first {kept} kept as they were)" in out, out
    assert cli.main(["reduce", str(path), "--method", method]) == 0
    assert "found in the cache" in capsys.readouterr().out
