"""What the reduce stage costs and how good it is, side by side with umap-learn's AlignedUMAP.

For each data set and method this prints wall time, peak memory, mean trustworthiness (k=10,
against the recorded activations) and mean consecutive-epoch Procrustes disparity, and the
ratios to ``aligned-umap`` (umap-learn's ``AlignedUMAP`` on the same PCA pre-embedding, the
reference column), all in one run on the same data:

* ``mnist``: the demo run (``neuromapper demo``: the digit CNN on MNIST-5k, 2,000 held-out probe
  samples, 11 epochs, layers conv1, conv2, fc1, fc2), all four layers;
* ``synthetic-2000`` / ``synthetic-10000``: :func:`neuromapper.synthetic.make_synthetic_run`,
  10 epochs, one layer of 64 units, 10 drifting classes;
* ``synthetic-40000``: the same with 40,000 samples and 4 layers (the original NeuroMapper's
  headline size). ``AlignedUMAP`` is *not* run there (it would take hours): its column is
  extrapolated from the sizes where it was measured (a power law fitted to the measured
  one-layer times, times 4 layers over the pool's processes) and marked ``extrapolated``.

How it is measured. Every (data set, method) runs in a fresh Python process, so that peak memory
(the resident set of the process and its worker processes, sampled every 20 ms) belongs to it
alone. In that process the method first runs once on a tiny run so that one-off compilation is
done ("warm"); then ``neuromapper.reduce(..., force=True)`` is timed. For the default method a
second fresh process times the very first call with no warm-up, from interpreter start to
result ("fresh": what ``neuromapper reduce`` on the command line costs -- interpreter start,
imports, compilation with numba's on-disk cache allowed, the work), and the difference is
reported as one-off cost. umap-learn rebuilds the numba
function of AlignedUMAP's joint optimisation on every ``fit``, so that compilation is part of
every AlignedUMAP call: the script measures it (a second 300-point fit) and leaves it out of
AlignedUMAP's time for the speed-ups, which is the conservative choice.

All times include what ``reduce`` does besides the layout: reading the activations, PCA, the
quality figures, writing the result. The load average is printed in the header: other jobs on
the machine stretch every figure (ratios measured in the same run are what to compare).

Run it from the repository root::

    .venv/bin/python benchmarks/bench_reduce.py                            # everything (hours: AlignedUMAP)
    .venv/bin/python benchmarks/bench_reduce.py --sizes 2000 --skip-mnist  # a quick look
    .venv/bin/python benchmarks/bench_reduce.py --json reduce.json         # also write the figures
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REFERENCE = "aligned-umap"
DEFAULT = "anchored-umap"


# --- child process: one measurement ---------------------------------------------------------------


def _tree_rss(process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except Exception:  # a worker that just exited
            pass
    return total


class _PeakMemory:
    """Peak resident memory of this process and its children while the block runs (sampled)."""

    def __enter__(self):
        import psutil

        self.process = psutil.Process()
        self.peak = _tree_rss(self.process)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, _tree_rss(self.process))

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, _tree_rss(self.process))


def child(spec: dict) -> dict:
    import neuromapper
    from neuromapper.synthetic import make_synthetic_run

    kwargs = dict(method=spec["method"], layers=spec["layers"], n_jobs=spec["n_jobs"], force=True)
    warmup = []
    if spec["warm"]:
        tiny = Path(spec["scratch"]) / f"warmup-{os.getpid()}"
        make_synthetic_run(tiny, n_samples=300, n_epochs=3, n_layers=1, n_classes=5, dims=64, seed=1)
        for _ in range(2):  # the second call shows what is compiled again on every call
            t0 = time.perf_counter()
            neuromapper.reduce(tiny, method=spec["method"], n_jobs=1, force=True)
            warmup.append(time.perf_counter() - t0)
        shutil.rmtree(tiny, ignore_errors=True)
    t0 = time.perf_counter()
    with _PeakMemory() as mem:
        emb = neuromapper.reduce(spec["run"], **kwargs)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "warmup_seconds": warmup,
        "peak_mb": mem.peak / 2**20,
        "trust": emb["trustworthiness"].values.tolist(),  # (epoch, layer)
        "disparity": emb["disparity"].values.tolist(),
        "unplaced": int(emb["unplaced"].sum()),
        "backend": emb.attrs["backend"],
    }


def measure(spec: dict, scratch: Path) -> dict:
    spec = {**spec, "scratch": str(scratch)}
    started = time.time()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {spec} failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    result["wall_process_seconds"] = time.time() - started
    return result


# --- parent: data sets, table, bar --------------------------------------------------------------


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def ensure_runs(args) -> dict:
    """The runs to measure, in the order given (``--sizes``), the demo run last; written if absent."""
    from neuromapper.synthetic import make_synthetic_run

    data = Path(args.data)
    runs = {}
    for n in args.sizes:
        layers = 4 if n >= 40000 else 1
        path = data / f"synthetic-{n}-{layers}layers"
        if not (path / "run.nc").exists():
            print(f"writing synthetic run {path}...", file=sys.stderr)
            make_synthetic_run(path, n_samples=n, n_epochs=10, n_layers=layers, n_classes=10, dims=64, seed=0)
        runs[f"synthetic-{n}"] = {"run": str(path), "layers": None, "n_layers": layers, "n": n}
    if not args.skip_mnist:
        demo = Path(args.demo)
        if not (demo / "run.nc").exists():
            from neuromapper.demo import run_demo

            print(f"recording the demo run to {demo} (MNIST-5k, about a minute)...", file=sys.stderr)
            run_demo(out=demo, show_progress=False)
        runs["mnist"] = {"run": str(demo), "layers": None, "n_layers": 4}
    return runs


def summarise(result: dict) -> dict:
    trust = np.array(result["trust"], dtype=float)  # (epoch, layer)
    disp = np.array(result["disparity"], dtype=float)
    return {**result, "trust_mean": float(np.nanmean(trust)), "disp_mean": float(np.nanmean(disp[1:])),
            "trust_by_epoch": trust}


def _ref_seconds(ref: dict) -> float:
    """AlignedUMAP's time without the compilation umap-learn repeats on every fit (conservative)."""
    warmup = ref.get("warmup_seconds") or [0.0, 0.0]
    return ref["seconds"] - warmup[1]


def extrapolate(measured: dict, n: int, layers: int, jobs: int) -> dict | None:
    """AlignedUMAP's one-layer time as a power law of n through the measured sizes."""
    pts = sorted((m["n"], _ref_seconds(m)) for m in measured.values() if m.get("n"))
    if len(pts) < 2:
        return None
    (n1, t1), (n2, t2) = pts[-2], pts[-1]
    power = np.log(t2 / t1) / np.log(n2 / n1)
    one_layer = t2 * (n / n2) ** power
    return {"seconds": one_layer * layers / jobs, "power": float(power), "from": [n1, n2]}


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[10000, 40000, 2000])
    parser.add_argument("--methods", type=lambda s: s.split(","), default=[DEFAULT, REFERENCE, "umap", "pca"])
    parser.add_argument("--aligned-max", type=int, default=10000, help="largest size AlignedUMAP is run at")
    parser.add_argument("--umap-max", type=int, default=10000, help="largest size per-epoch UMAP is run at")
    parser.add_argument("--skip-mnist", action="store_true")
    parser.add_argument("--demo", default="data/bench/mnist-demo", help="the demo run (recorded there if absent)")
    parser.add_argument("--data", default="data/bench", help="where synthetic runs are written")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes for multi-layer runs")
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    args = parser.parse_args()

    scratch = Path(args.data) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    import umap

    print(f"# bench_reduce  {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"{platform.node()}  {os.cpu_count()} cores  python {platform.python_version()}  "
          f"umap-learn {umap.__version__}  load average at start {load_average()}")
    runs = ensure_runs(args)
    results: dict = {}
    for name, run in runs.items():
        n = run.get("n", 0)
        for method in args.methods:
            if method == REFERENCE and n > args.aligned_max:
                continue
            if method == "umap" and n > args.umap_max:
                continue
            spec = {"run": run["run"], "layers": run["layers"], "method": method, "warm": True,
                    "n_jobs": args.jobs if run["n_layers"] > 1 else 1}
            print(f"{name:>16} {method:<14} warm ...", file=sys.stderr, flush=True)
            r = summarise(measure(spec, scratch))
            r["n"] = n
            if method == DEFAULT:
                print(f"{name:>16} {method:<14} fresh process ...", file=sys.stderr, flush=True)
                fresh = measure({**spec, "warm": False}, scratch)
                r["fresh_seconds"] = fresh["wall_process_seconds"]  # interpreter start to result
            results[(name, method)] = r
            print(f"{name:>16} {method:<14} {r['seconds']:8.1f} s  load {load_average()}", file=sys.stderr, flush=True)

    # AlignedUMAP beyond --aligned-max: extrapolated from the measured one-layer synthetic sizes
    measured_ref = {k: v for k, v in results.items() if k[1] == REFERENCE and k[0].startswith("synthetic")}
    for name, run in runs.items():
        if (name, REFERENCE) not in results and name.startswith("synthetic"):
            ext = extrapolate({k[0]: v for k, v in measured_ref.items()}, run["n"], run["n_layers"],
                              min(args.jobs, run["n_layers"]))
            if ext is not None:
                results[(name, REFERENCE)] = {"seconds": ext["seconds"], "extrapolated": ext, "n": run["n"]}

    print()
    print("| data | method | wall time (warm) | × faster than AlignedUMAP | fresh process (×) | peak memory | "
          "trustworthiness (mean) | Δ vs AlignedUMAP: mean / worst epoch | disparity (mean) | disparity ratio | unplaced |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in runs:
        ref = results.get((name, REFERENCE))
        for method in args.methods:
            r = results.get((name, method))
            if r is None:
                continue
            if "extrapolated" in r:
                e = r["extrapolated"]
                print(f"| {name} | {method} | ~{r['seconds']:,.0f} s (extrapolated: n^{e['power']:.2f} from "
                      f"{e['from'][0]:,} and {e['from'][1]:,}) | 1 | | | | | | | |")
                continue
            speed = f"{_ref_seconds(ref) / r['seconds']:.1f}×" if ref else "n/a"
            fresh = ""
            if "fresh_seconds" in r:
                fresh = f"{r['fresh_seconds']:.1f} s"
                if ref:
                    fresh += f" ({_ref_seconds(ref) / r['fresh_seconds']:.1f}×)"
            if ref and "trust_by_epoch" in ref:
                diff = r["trust_by_epoch"] - ref["trust_by_epoch"]
                delta = f"{np.nanmean(diff):+.4f} / {np.nanmin(diff):+.4f}"
                ratio = f"{r['disp_mean'] / ref['disp_mean']:.2f}"
            else:
                delta = ratio = ""
            print(f"| {name} | {method} | {r['seconds']:,.1f} s | {speed} | {fresh} | {r['peak_mb']:,.0f} MB | "
                  f"{r['trust_mean']:.4f} | {delta} | {r['disp_mean']:.5f} | {ratio} | {r['unplaced']} |")

    print()
    for name in runs:
        ref = results.get((name, REFERENCE))
        if ref and ref.get("warmup_seconds"):
            print(f"{name}: AlignedUMAP recompiles its joint optimiser on every fit: {ref['warmup_seconds'][1]:.1f} s "
                  f"(a 300-point fit after a first one); the speed-ups above exclude it. Its time including it: "
                  f"{ref['seconds']:.1f} s.")
        ours = results.get((name, DEFAULT))
        if ours and ours.get("warmup_seconds"):
            print(f"{name}: {DEFAULT} one-off compilation and imports: first call {ours['warmup_seconds'][0]:.1f} s, "
                  f"second {ours['warmup_seconds'][1]:.2f} s (300 points); fresh process minus warm call: "
                  f"{ours['fresh_seconds'] - ours['seconds']:.1f} s.")
    print(f"load average at end {load_average()}")
    key = "synthetic-10000"
    if (key, DEFAULT) in results and (key, REFERENCE) in results and "trust_by_epoch" in results[(key, REFERENCE)]:
        r, ref = results[(key, DEFAULT)], results[(key, REFERENCE)]
        diff = r["trust_by_epoch"] - ref["trust_by_epoch"]
        checks = [
            (f"warm speed-up at 10,000 x 10 >= 50x: {_ref_seconds(ref) / r['seconds']:.1f}x",
             _ref_seconds(ref) / r["seconds"] >= 50),
            (f"fresh-process speed-up >= 10x: {_ref_seconds(ref) / r['fresh_seconds']:.1f}x",
             _ref_seconds(ref) / r["fresh_seconds"] >= 10),
            (f"mean trustworthiness no more than 0.005 below: {np.nanmean(diff):+.4f}", np.nanmean(diff) >= -0.005),
            (f"no epoch more than 0.01 below: worst {np.nanmin(diff):+.4f}", np.nanmin(diff) >= -0.01),
            (f"mean disparity no worse: {r['disp_mean']:.5f} vs {ref['disp_mean']:.5f}", r["disp_mean"] <= ref["disp_mean"]),
        ]
        big = results.get(("synthetic-40000", DEFAULT))
        if big is not None:
            checks.append((f"40,000 x 10 x 4 layers under 5 minutes: {big['seconds']:.0f} s", big["seconds"] < 300))
        print("the bar:")
        for text, ok in checks:
            print(f"  [{'pass' if ok else 'FAIL'}] {text}")

    if args.json:
        def plain(v):
            return v.tolist() if isinstance(v, np.ndarray) else v

        Path(args.json).write_text(json.dumps(
            [{"data": k[0], "method": k[1], **{f: plain(x) for f, x in v.items()}} for k, v in results.items()],
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
