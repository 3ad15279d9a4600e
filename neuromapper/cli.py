"""The ``neuromapper`` command: ``demo``, ``info`` (and the later pipeline stages).

Each subcommand is a thin wrapper over a library function so that everything the CLI does can
also be done from Python.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def run_summary(path: str | Path) -> dict:
    """Facts about a run for ``neuromapper info``: epochs, layers and widths, samples, accuracy."""
    from .store import json_attr, open_run

    ds = open_run(path)
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
        "epochs": [int(e) for e in ds["epoch"].values],
        "layers": {str(k): int(v) for k, v in zip(ds["layer"].values, ds["layer_units"].values)},
        "samples": int(ds.sizes["sample"]),
        "classes": [str(c) for c in ds["class"].values],
        "final_accuracy": float(np.mean(final_pred == labels)),
        "metrics": sorted(str(m) for m in ds["metric_name"].values) if "metric_name" in ds.coords else [],
        "nonfinite_epochs": flagged,
        "hyperparameters": json_attr(ds, "hyperparameters"),
        "embeddings": _embeddings_summary(path),
    }


def _embeddings_summary(path: str | Path) -> list[dict]:
    from .reduce import list_embeddings

    return [{k: e[k] for k in ("key", "method", "params", "epochs", "created", "backend", "seconds")}
            for e in list_embeddings(path)]


def _print_summary(info: dict) -> None:
    epochs = info["epochs"]
    print(f"run        {info['path']}")
    print(f"dataset    {info['dataset']}   model {info['model']} ({info['parameters']:,} parameters)")
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
        print(f"embedding  {e['key']}  {e['method']} n_neighbors={p.get('n_neighbors')} min_dist={p.get('min_dist')} "
              f"per_class={p.get('per_class')} seed={p.get('seed')} layers={','.join(p.get('layers', []))} "
              f"({e['created']}, {e['seconds']:.1f} s, {e['backend']})")


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .reduce import reduce

    path = run_demo(out=args.out, dataset=args.dataset, epochs=args.epochs, root=args.root, n_probe=args.probe)
    reduce(path, progress="tqdm")
    if not args.no_serve:
        serve(path, port=args.port, address="127.0.0.1", show=True)
    return 0


def serve(run: str | Path, port: int = 5006, address: str = "127.0.0.1", show: bool = True) -> None:
    """Serve the dashboard for ``run`` until interrupted; every browser session gets its own viewer."""
    import panel as pn

    from .app import NeuroMapper
    from .store import run_root

    run = run_root(run)  # fail here, with the clear error, rather than in the first session
    pn.extension(notifications=True)
    print(f"NeuroMapper dashboard for {run} at http://{address}:{port}/ (Ctrl-C to stop)")
    pn.serve(
        {"/": lambda: NeuroMapper(run).template()},
        port=port, address=address, show=show, title="NeuroMapper",
        websocket_origin=[f"{address}:{port}", f"localhost:{port}"],
    )


def cmd_serve(args: argparse.Namespace) -> int:
    serve(args.run, port=args.port, address=args.address, show=not args.no_show)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = run_summary(args.run)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_summary(info)
    return 0


def cmd_reduce(args: argparse.Namespace) -> int:
    from .reduce import find_embedding, reduce

    params = dict(method=args.method, layers=args.layers, n_neighbors=args.n_neighbors, min_dist=args.min_dist,
                  per_class=args.per_class, seed=args.seed)
    cached = None if args.force else find_embedding(args.run, **params)
    emb = cached if cached is not None else reduce(args.run, **params, progress="tqdm", n_jobs=args.jobs, force=args.force)
    how = "found in the cache" if cached is not None else f"computed in {emb.attrs['seconds']:.1f} s"
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
        from .reduce import load_embedding

        embedding = load_embedding(args.run, args.embedding)
    path, strategy = _export(
        args.run, args.output, embedding=embedding, layers=args.layers, epochs=args.epochs, width=args.width,
        strategy=args.strategy, thumbnails="auto", progress=True,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.1f} s; "
          f"{strategy['name']} strategy: {strategy['reason']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS

    parser = argparse.ArgumentParser(prog="neuromapper", description="See how a neural network learns.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the demo CNN on offline digits, record it, reduce it, open the dashboard")
    demo.add_argument("--dataset", choices=DATASETS, default="mnist5k")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--probe", type=int, default=2000, help="held-out probe samples (default 2000)")
    demo.add_argument("--out", default="data/demo", help="run directory (default data/demo)")
    demo.add_argument("--root", default=None, help="torchvision dataset folder for mnist/fashion-mnist/cifar10")
    demo.add_argument("--no-serve", action="store_true", help="record and reduce only; do not open the dashboard")
    demo.add_argument("--port", type=int, default=5006, help="dashboard port (default 5006)")
    demo.set_defaults(func=cmd_demo)

    serve_cmd = sub.add_parser("serve", help="open the dashboard for a recorded run")
    serve_cmd.add_argument("run")
    serve_cmd.add_argument("--port", type=int, default=5006)
    serve_cmd.add_argument("--address", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve_cmd.add_argument("--no-show", action="store_true", help="do not open a browser")
    serve_cmd.set_defaults(func=cmd_serve)

    info = sub.add_parser("info", help="summarise a recorded run")
    info.add_argument("run")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    from .reduce import DEFAULT_METHOD, METHODS

    red = sub.add_parser("reduce", help="embed every layer in 2-D per epoch, aligned across epochs (cached)")
    red.add_argument("run")
    red.add_argument("--method", choices=METHODS, default=None, help=f"default {DEFAULT_METHOD}")
    red.add_argument("--n-neighbors", type=int, default=15, help="UMAP neighbourhood size (default 15)")
    red.add_argument("--min-dist", type=float, default=0.1, help="UMAP minimum distance (default 0.1)")
    red.add_argument("--layers", type=_comma_list(str), default=None, help="comma-separated layers (default all)")
    red.add_argument("--per-class", type=int, default=None, help="embed N samples per class (default all samples)")
    red.add_argument("--seed", type=int, default=0)
    red.add_argument("--jobs", type=int, default=None, help="worker processes, one layer each (default automatic)")
    red.add_argument("--force", action="store_true", help="recompute even if a stored embedding matches")
    red.set_defaults(func=cmd_reduce)

    export = sub.add_parser("export", help="write a standalone HTML snapshot that opens offline")
    export.add_argument("run")
    export.add_argument("-o", "--output", default="snapshot.html", help="HTML file to write (default snapshot.html)")
    export.add_argument("--layers", type=_comma_list(str), default=None, help="comma-separated layers (default all)")
    export.add_argument("--epochs", type=_comma_list(int), default=None, help="comma-separated epochs (default all)")
    export.add_argument("--width", type=int, default=360, help="pixels per layer picture (default 360)")
    export.add_argument("--strategy", choices=["auto", "points", "images"], default="auto",
                        help="embed points (hover labels) or pre-rendered images; auto picks the smaller file")
    export.add_argument("--embedding", default=None, help="key of a stored embedding (default the newest)")
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``neuromapper`` console script."""
    from .store import RunError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RunError, ValueError, FileNotFoundError) as exc:
        print(f"neuromapper {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
