"""The ``neuromapper`` command: ``demo``, ``serve``, ``info``, ``reduce``, ``export``.

Each subcommand is a thin wrapper over a library function so that everything the CLI does can
also be done from Python. Building the parser imports nothing heavy (the reduce options come from
:class:`~neuromapper.reduce_params.ReduceParams`, which needs only the standard library); each
command imports what it needs when it runs, so ``neuromapper --help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .reduce_params import ReduceParams

# The names of neuromapper.data.DATASETS, here so that building the parser does not import
# PyTorch (tests/test_project.py keeps the two in step).
DEMO_DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "cifar10")  # neuromapper.data.DATASETS
DEMO_MODELS = ("moons", "digits-mlp")  # the MLP demos (neuromapper.demo.RECIPES); torch-free for --help


def run_summary(path: str | Path) -> dict:
    """Facts about a run for ``neuromapper info``: epochs, layers and widths, samples, accuracy.

    The facts are those of the epochs recorded when the run is opened; an epoch written meanwhile
    is left for the next call. Each stored embedding says whether it covers all of them.
    """
    import numpy as np

    from .store import json_attr, list_embeddings, open_run

    ds = open_run(path)
    epochs = [int(e) for e in ds["epoch"].values]
    labels = ds["label"].values
    final_pred = ds["prediction"].isel(epoch=-1).values
    nonfinite = ds["nonfinite"].values
    flagged = {
        str(layer): [int(e) for e, n in zip(ds["epoch"].values, nonfinite[:, i]) if n]
        for i, layer in enumerate(ds["layer"].values)
        if nonfinite[:, i].any()
    }
    model = json_attr(ds, "model")
    return {
        "path": str(path),
        "dataset": ds.attrs.get("dataset", ""),
        "model": model.get("class", ""),
        "parameters": model.get("parameters"),
        "epochs": epochs,
        "layers": {str(k): int(v) for k, v in zip(ds["layer"].values, ds["layer_units"].values)},
        "samples": int(ds.sizes["sample"]),
        "classes": [str(c) for c in ds["class"].values],
        "final_accuracy": float(np.mean(final_pred == labels)),
        "metrics": sorted(str(m) for m in ds["metric_name"].values) if "metric_name" in ds.coords else [],
        "nonfinite_epochs": flagged,
        "hyperparameters": json_attr(ds, "hyperparameters"),
        "embeddings": [
            {**{k: e[k] for k in ("key", "method", "params", "epochs", "created", "backend", "seconds")},
             "current": e["epochs"] == epochs}
            for e in list_embeddings(ds)
        ],
    }


def _print_summary(info: dict) -> None:
    print = _print_terminal_safe  # names come from users: no control characters reach the terminal
    epochs = info["epochs"]
    print(f"run        {info['path']}")
    print(f"dataset    {info['dataset']}   model {info['model']} ({info['parameters'] or 0:,} parameters)")
    print(f"epochs     {len(epochs)} ({epochs[0]}-{epochs[-1]})")
    print(f"samples    {info['samples']:,}   classes {len(info['classes'])}: {', '.join(info['classes'])}")
    print("layers     " + ", ".join(f"{k} ({v})" for k, v in info["layers"].items()))
    print(f"accuracy   {info['final_accuracy']:.4f} on the probe at epoch {epochs[-1]}")
    if info["metrics"]:
        print(f"metrics    {', '.join(info['metrics'])}")
    for layer, bad in info["nonfinite_epochs"].items():
        print(f"WARNING    layer {layer} has non-finite activations at epochs {bad}")
    for e in info.get("embeddings", []):
        p = e["params"]
        covers = "" if e["current"] else (f"  STALE: covers {_span(e['epochs'])} of {_span(epochs)}; "
                                          f"`neuromapper reduce {info['path']}` with these parameters extends it")
        print(f"embedding  {e['key']}  {e['method']} n_neighbors={p.get('n_neighbors')} min_dist={p.get('min_dist')} "
              f"per_class={p.get('per_class')} seed={p.get('seed')} layers={','.join(p.get('layers', []))} "
              f"({e['created']}, {e['seconds']:.1f} s, {e['backend']}){covers}")


def _print_terminal_safe(line: str) -> None:
    """Print ``line`` with control characters (escape sequences, carriage returns) shown as ``\\xNN``."""
    import builtins

    builtins.print("".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in line))


def _span(epochs: list[int]) -> str:
    """``"epochs 0-4"``, ``"epoch 3"`` or ``"no epochs"``."""
    if not epochs:
        return "no epochs"
    return f"epoch {epochs[0]}" if len(epochs) == 1 else f"epochs {epochs[0]}-{epochs[-1]}"


def cmd_demo(args: argparse.Namespace) -> int:
    from .reduce import reduce
    from .store import RUN_FILE, recorded_epochs

    out = Path(args.out)
    if (out / RUN_FILE).exists() and not args.overwrite:
        # never delete a recorded run without being asked: the demo shows the one already there
        print(f"{out} already holds a recorded run ({len(recorded_epochs(out))} epochs): showing it; "
              "pass --overwrite to train and record it again", file=sys.stderr)
        path = out
    else:
        from .demo import run_demo

        path = run_demo(out=out, dataset=args.dataset, epochs=args.epochs, root=args.root, n_probe=args.probe,
                        attacks=False if args.no_attacks else None)  # None: the demo recipe decides
    reduce(path, progress="tqdm")
    if not args.no_serve:
        serve(path, port=args.port, address="127.0.0.1", show=True)
    return 0


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_listen(address: str, port: int) -> None:
    """Fail now, in one line, if the server could not listen on ``address:port``.

    Raises
    ------
    ValueError
        When ``port`` is out of range or ``address`` is not an interface of this machine.
    OSError
        When the port is taken (the message names it).
    """
    import errno
    import socket

    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"--port: expected 1-65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"--address: {address!r} is not an address of this machine ({exc.strerror})") from None
    family, _, _, _, sockaddr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(sockaddr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise OSError(exc.errno, f"--port: port {port} on {address} is in use (another dashboard?); "
                                         "choose another with --port") from None
            raise ValueError(f"--address: cannot listen on {address}:{port} ({exc.strerror})") from None


def serve(run: str | Path, port: int = 5006, address: str = "127.0.0.1", show: bool = True,
          allow_websocket_origin: list[str] | None = None, **auth) -> None:
    """Serve the dashboard for ``run`` (a run, or a folder of runs) until interrupted; one app per session.

    The server binds ``127.0.0.1`` unless told otherwise. On any other address it is reachable
    from other machines: that needs the hosts browsers will use in ``allow_websocket_origin``
    (Bokeh refuses others), and it warns unless Panel's authentication is on (``auth``: Panel's
    ``basic_auth``, ``cookie_secret``, ``oauth_provider``, ``oauth_key``, ``oauth_secret``,
    passed through to :func:`panel.serve`).
    """
    from .views.run import find_runs

    runs = find_runs(run)  # fail here, with the clear error, rather than in the first session
    check_listen(address, port)
    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}", *(allow_websocket_origin or [])]
    if address not in LOOPBACK:
        if not allow_websocket_origin:
            raise ValueError(f"--address {address}: the dashboard would be reachable from other machines, whose "
                             "browsers connect under their own host name; name them with --allow-websocket-origin "
                             "HOST:PORT (and consider --basic-auth)")
        if not any(auth.get(k) for k in ("basic_auth", "oauth_provider")):
            print(f"WARNING: serving on {address} without authentication: anyone who can reach this machine can "
                  "open the dashboard and start reductions; use --basic-auth or --oauth-provider", file=sys.stderr)
    import panel as pn
    from tornado.ioloop import IOLoop

    from .views.shell import EXTENSIONS, serve_app

    pn.extension(*EXTENSIONS, notifications=True)
    loop = IOLoop.current()
    loop.asyncio_loop.set_exception_handler(quiet_closed_connections)
    what = f"{len(runs)} runs in {run}" if len(runs) > 1 else str(runs[0].path)
    print(f"NeuroMapper dashboard for {what} at http://{address}:{port}/ (Ctrl-C to stop)")
    pn.serve({"/": lambda: _served_locally(serve_app, run)}, port=port, address=address, show=show, loop=loop,
             title="NeuroMapper", websocket_origin=origins,
             unused_session_lifetime_milliseconds=int(UNUSED_SESSION_LIFETIME_S * 1000),
             check_unused_sessions_milliseconds=int(CHECK_UNUSED_SESSIONS_S * 1000),
             http_server_kwargs={"idle_connection_timeout": IDLE_CONNECTION_S},
             **{k: v for k, v in auth.items() if v})


def quiet_closed_connections(loop, context: dict) -> None:
    """The server loop's exception handler: a message to a page that has just closed is not an error.

    Panel sends a session's changes as tasks nobody awaits; when the page closed while its session
    was still busy (a tab closed mid-step), the write fails with ``WebSocketClosedError`` and asyncio
    printed "Task exception was never retrieved" and a traceback (2 such lines in a 20-session
    ``benchmarks/bench_load.py`` run). Those are logged at debug level; every other exception
    goes to asyncio's default handler as before.
    """
    from tornado.iostream import StreamClosedError
    from tornado.websocket import WebSocketClosedError

    if isinstance(context.get("exception"), (WebSocketClosedError, StreamClosedError)):
        logging.getLogger(__name__).debug("a message to a closed page was dropped: %s", context.get("message"))
        return
    loop.default_exception_handler(context)


# A page's session is made when its HTML is requested and kept for the websocket the page then
# opens. Bokeh discards a session nobody has connected to for 15 s and, when the page connects
# later (20 pages opening at once on two cores took up to a minute), builds a new one for it
# from the websocket request. Panel tells a session to load its stylesheets from the server
# only while rendering the HTML (`doc._template_variables["dist_url"]`); a session built for a
# websocket never gets it, and every stylesheet of its widgets (bootstrap, font-awesome, notyf,
# Panel's own) then points at cdn.holoviz.org. So every session is told at once, and an unused
# session lives long enough for a slow page to connect (and no longer than it must: a closed
# page's session is released this long after it closes).
UNUSED_SESSION_LIFETIME_S = 30.0
CHECK_UNUSED_SESSIONS_S = 5.0

# A browser keeps its HTTP connections open between requests (a page's scripts, stylesheets and
# images); Tornado closes an idle one after an hour. Each wait for the next request schedules that
# hour's timeout on the server's event loop, and the timeout stays scheduled, cancelled, until
# its hour is up (asyncio drops cancelled timers early only once they outnumber the live ones):
# after six sessions closed, 46 such timers with their deadlines and contexts were about 140 of
# the 355 objects born during the sessions and still alive (`benchmarks/RESULTS-load.md`, "what a
# closed session leaves"). An idle connection is closed sooner; the browser opens a new one when
# it next needs one.
IDLE_CONNECTION_S = 20.0


def _served_locally(make_app, *args):
    """``make_app(*args)`` for the current session, its stylesheets pointed at this server, not Panel's CDN."""
    from .views.shell import local_resources

    local_resources()
    return make_app(*args)


# Where Debian, Ubuntu and Fedora put jemalloc (``apt-get install libjemalloc2``; ``make`` does it).
JEMALLOC_PATHS = tuple(f"/usr/lib/{arch}-linux-gnu/libjemalloc.so.2" for arch in ("x86_64", "aarch64")) + (
    "/usr/lib64/libjemalloc.so.2", "/usr/lib/libjemalloc.so.2")
# Give freed pages back after 5 s, from jemalloc's own background thread.
JEMALLOC_CONF = "background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:0"


def _restart_under_jemalloc() -> None:
    """Run this process's command line again, in this process, with every allocation served by jemalloc.

    Why (``benchmarks/RESULTS-load.md``, 2026-11-30, "jemalloc"): nothing of a closed session
    stays alive (102 KB of 708 blocks after five), yet with Python's own small-object allocator
    the server stayed 114 MB above its level before 20 sessions, 60 s after they closed:
    pymalloc returns a 1 MiB arena only when every object in it is free, and the few hundred
    objects that libraries keep in their caches (Bokeh's decoded messages, HoloViews' option
    lookups, Tornado's file hashes) sit among the sessions' freed ones. jemalloc gives freed
    pages back a page at a time: the same benchmark, the server under jemalloc, stayed 11 MB
    above, with steps under load as fast (p50 1,440 ms against 1,874 ms, one run each; glibc's
    malloc, the other page-granular choice, left 82 MB at 2,866 ms). Python cannot swap its allocator once
    running, hence the restart (``LD_PRELOAD`` and ``PYTHONMALLOC=malloc`` are read at start).
    An allocator the user chose (``PYTHONMALLOC`` or ``LD_PRELOAD`` set) is kept, and without
    jemalloc the server runs as it is, after saying so; not on Windows (no ``exec`` that keeps
    the process).
    """
    if os.name != "posix" or "PYTHONMALLOC" in os.environ or "LD_PRELOAD" in os.environ:
        return
    library = next((path for path in JEMALLOC_PATHS if os.path.exists(path)), None)
    if library is None:
        print("neuromapper serve: jemalloc not found (Debian: apt-get install libjemalloc2); closed "
              "sessions' memory stays with this process for reuse instead of going back to the system",
              file=sys.stderr)
        return
    env = {**os.environ, "LD_PRELOAD": library, "PYTHONMALLOC": "malloc",
           "MALLOC_CONF": os.environ.get("MALLOC_CONF", JEMALLOC_CONF)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)  # the same command line, options included


def cmd_serve(args: argparse.Namespace) -> int:
    if args.from_command_line:
        _restart_under_jemalloc()
    serve(args.run, port=args.port, address=args.address, show=not args.no_show,
          allow_websocket_origin=args.allow_websocket_origin, basic_auth=args.basic_auth,
          cookie_secret=args.cookie_secret, oauth_provider=args.oauth_provider, oauth_key=args.oauth_key,
          oauth_secret=args.oauth_secret)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = run_summary(args.run)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_summary(info)
    return 0


def cmd_reduce(args: argparse.Namespace) -> int:
    import time

    from .reduce import find_embedding, reduce

    params = ReduceParams(method=args.method, layers=args.layers, n_neighbors=args.n_neighbors,
                          min_dist=args.min_dist, per_class=args.per_class, seed=args.seed)
    before = None if args.force else find_embedding(args.run, params, partial=True)
    start = time.perf_counter()
    emb = reduce(args.run, params, progress="tqdm", n_jobs=args.jobs, force=args.force)
    seconds = time.perf_counter() - start
    from .methods import LOOKS_AHEAD

    # epochs of the stored embedding a growing run kept (see neuromapper.reduce, "Growing runs")
    kept = 0 if before is None or emb.attrs["method"] == "aligned-umap" else (
        before.sizes["epoch"] - (emb.attrs["method"] in LOOKS_AHEAD))
    if before is not None and before.sizes["epoch"] == emb.sizes["epoch"]:
        how = "found in the cache"
    elif kept > 0:
        how = (f"extended from {before.sizes['epoch']} to {emb.sizes['epoch']} epochs in {seconds:.1f} s "
               f"(the first {kept} kept as they were)")
    else:
        how = f"computed in {seconds:.1f} s"
    print(f"embedding {emb.attrs['key']} ({emb.attrs['method']}, {emb.attrs['backend']}) {how}: "
          f"{emb.sizes['epoch']} epochs x {emb.sizes['layer']} layers x {emb.sizes['sample']:,} samples")
    print(f"{'layer':<16} {'trustworthiness':>16} {'disparity':>10} {'unplaced':>9}")
    for layer in emb["layer"].values:
        one = emb.sel(layer=layer)
        print(f"{str(layer):<16} {float(one['trustworthiness'].mean()):>16.4f} "
              f"{float(one['disparity'].mean()):>10.5f} {int(one['unplaced'].sum()):>9}")
    return 0


def _comma_list(kind):
    """argparse type: ``"a,b"`` -> ``[kind("a"), kind("b")]``."""

    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}") from None

    return parse


def cmd_export(args: argparse.Namespace) -> int:
    import time

    from .export import _export

    start = time.perf_counter()
    embedding = None
    if args.embedding:
        from .store import load_embedding

        embedding = load_embedding(args.run, args.embedding)
    path, facts = _export(
        args.run, args.output, embedding=embedding, layers=args.layers, epochs=args.epochs, width=args.width,
        strategy=args.strategy, thumbnails="auto", progress=True,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f} s; "
          f"{facts['strategy']['name']} strategy: {facts['strategy']['reason']}"
          + "; sections: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in facts["sections"].items()))
    if facts["coverage"]:
        print(f"note: {facts['coverage']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser; imports nothing beyond the standard library and :mod:`neuromapper.reduce_params`."""
    parser = argparse.ArgumentParser(prog="neuromapper", description="See how a neural network learns.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the demo CNN on offline digits, record it, reduce it, open the dashboard")
    demo.add_argument("--dataset", choices=DEMO_DATASETS + DEMO_MODELS, default=DEMO_DATASETS[0],
                      help="an image dataset for the digit CNN (default mnist5k), 'moons' (an MLP on two moons, "
                           "100 epochs, with the decision boundary) or 'digits-mlp' (an MLP on MNIST-5k whose "
                           "first-layer weights are images)")
    demo.add_argument("--epochs", type=int, default=None, help="epochs to train (default 10; 100 for moons)")
    demo.add_argument("--probe", type=int, default=None, help="held-out probe samples (default 2000; 500 for moons)")
    demo.add_argument("--out", default="data/demo", help="run directory (default data/demo)")
    demo.add_argument("--root", default=None, help="torchvision dataset folder for mnist/fashion-mnist/cifar10")
    demo.add_argument("--no-serve", action="store_true", help="record and reduce only; do not open the dashboard")
    demo.add_argument("--no-attacks", action="store_true",
                      help="record no adversarial twins (default: FGSM and PGD every epoch, one-pixel at three)")
    demo.add_argument("--port", type=int, default=5006, help="dashboard port (default 5006)")
    demo.add_argument("--overwrite", action="store_true",
                      help="record again over a run already at --out (default: show the recorded run)")
    demo.set_defaults(func=cmd_demo)

    serve_cmd = sub.add_parser("serve", help="open the dashboard for a recorded run")
    serve_cmd.add_argument("run")
    serve_cmd.add_argument("--port", type=int, default=5006)
    serve_cmd.add_argument("--address", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--no-show", action="store_true", help="do not open a browser")
    serve_cmd.add_argument("--allow-websocket-origin", action="append", default=None, metavar="HOST[:PORT]",
                           help="a host browsers use to reach this server (needed with --address other than 127.0.0.1)")
    serve_cmd.add_argument("--basic-auth", default=None, metavar="PASSWORD|FILE",
                           help="Panel's basic authentication: one password, or a JSON file of user: password")
    serve_cmd.add_argument("--cookie-secret", default=None, help="Panel's cookie secret (with --basic-auth or OAuth)")
    serve_cmd.add_argument("--oauth-provider", default=None, help="Panel's OAuth provider (e.g. github)")
    serve_cmd.add_argument("--oauth-key", default=None, help="OAuth client id")
    serve_cmd.add_argument("--oauth-secret", default=None, help="OAuth client secret")
    serve_cmd.set_defaults(func=cmd_serve)

    info = sub.add_parser("info", help="summarise a recorded run")
    info.add_argument("run")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    default, bounds = ReduceParams.DEFAULT, ReduceParams.BOUNDS
    red = sub.add_parser("reduce", help="embed every layer in 2-D per epoch, aligned across epochs (cached; "
                                        "a run that grew is extended)")
    red.add_argument("run")
    red.add_argument("--method", choices=ReduceParams.METHODS, default=default.method,
                     help=f"default {default.method}")
    red.add_argument("--n-neighbors", type=int, default=default.n_neighbors,
                     help="UMAP neighbourhood size, {} to {} (default %(default)s)".format(*bounds["n_neighbors"]))
    red.add_argument("--min-dist", type=float, default=default.min_dist,
                     help="UMAP minimum distance, {} to {} (default %(default)s)".format(*bounds["min_dist"]))
    red.add_argument("--layers", type=_comma_list(str), default=default.layers, help="comma-separated layers (default all)")
    red.add_argument("--per-class", type=int, default=default.per_class,
                     help="embed N samples per class (default all samples)")
    red.add_argument("--seed", type=int, default=default.seed, help="default %(default)s")
    red.add_argument("--jobs", type=int, default=None, help="worker processes, one layer each (default automatic)")
    red.add_argument("--force", action="store_true", help="recompute every epoch even if an embedding is stored")
    red.set_defaults(func=cmd_reduce)

    export = sub.add_parser("export", help="write a standalone HTML snapshot that opens offline")
    export.add_argument("run")
    export.add_argument("-o", "--output", default="snapshot.html", help="HTML file to write (default snapshot.html)")
    export.add_argument("--layers", type=_comma_list(str), default=None, help="comma-separated layers (default all)")
    export.add_argument("--epochs", type=_comma_list(int), default=None, help="comma-separated epochs (default all)")
    export.add_argument("--width", type=int, default=360, help="pixels per layer picture (default 360)")
    export.add_argument("--strategy", choices=["auto", "points", "images"], default="auto",
                        help="embed points (hover labels) or pre-rendered images; auto picks the smaller file")
    export.add_argument("--embedding", default=None,
                        help="key of a stored embedding (see `neuromapper info`); default the one `neuromapper "
                             "reduce RUN` stores with the default parameters")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuromapper`` console script."""
    from .store import RunError

    args = build_parser().parse_args(argv)
    # the process is this command's own (the console script, or a program passing its own arguments),
    # not, say, a test calling main() in-process: cmd_serve may then run it again (see there)
    args.from_command_line = argv is None or list(argv) == sys.argv[1:]
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"neuromapper {args.command}: interrupted", file=sys.stderr)
        return 130
    except (RunError, ValueError, TypeError, OSError) as exc:  # OSError: missing, unwritable, full, port taken
        print(f"neuromapper {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an unforeseen failure: still one line; the traceback on request
        if os.environ.get("NEUROMAPPER_DEBUG"):
            raise
        print(f"neuromapper {args.command}: error: unexpected {type(exc).__name__}: {_one_line(exc)} "
              "(set NEUROMAPPER_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line; OSErrors with the file they concern."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename and str(exc.filename) not in str(exc.strerror):
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
