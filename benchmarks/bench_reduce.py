"""What the reduce stage costs and how good it is, side by side with umap-learn's AlignedUMAP.

Three parts.

**Families** (the default). For each data set, ``anchored-umap`` (the default method) and
``aligned-umap`` (umap-learn's ``AlignedUMAP`` on the same PCA pre-embedding, the reference) run
one after the other *in this process* on the same activations, called exactly as
:func:`neuromapper.reduce.reduce_layer` calls them -- ``neuromapper.methods.METHODS[name](
activations, n_neighbors, min_dist, seed, on_epoch, should_stop)`` with the default parameters --
and scored with the same :mod:`neuromapper.quality` functions on the same subsample, so the
figures are what a user gets. The data sets:

* eight synthetic families from ``benchmarks/reduce_families.py`` (3,000 samples x 10 epochs,
  10 classes that separate over training, with noise and a ReLU): slow and fast drift at 32, 256
  and 1,024 units, a class that splits (128 units) and two classes that merge (512 units);
* every layer of the demo run if there is one at ``--demo`` (``data/demo``, written by
  ``neuromapper demo``: the digit CNN on MNIST-5k, 2,000 probe samples, 11 epochs); otherwise
  the script says so and goes on.

For each it prints the wall time of the method call (the quality figures are computed afterwards,
off the clock), mean trustworthiness (k=10, against the recorded activations), the worst
per-epoch difference of trustworthiness (anchored - aligned), mean consecutive-epoch Procrustes
disparity, the speed ratio, the mean Jaccard overlap of each sample's 15 nearest neighbours
between consecutive epochs (how fast the data changes), and PASS/FAIL against the bar:

* mean trustworthiness at least AlignedUMAP's - 0.005,
* no epoch's trustworthiness below AlignedUMAP's - 0.01,
* mean disparity at most AlignedUMAP's,
* at least 50x faster.

Before the first family both methods run twice on a tiny data set so that numba's one-off
compilation is done. umap-learn rebuilds the numba function of AlignedUMAP's joint optimisation
on every ``fit``, so that compilation is part of every AlignedUMAP call; the script measures it
(the second tiny call) and leaves it out of AlignedUMAP's time for the speed ratio, which is
the conservative choice (the table also shows AlignedUMAP's full time).

**Live append** (the default; ``--skip-live`` leaves it out): ``benchmarks/bench_live.py``'s
measurement, an epoch file landing in a growing run -> its embedding stored and shown in a
session, at 2,000 and 10,000 samples x 4 layers x 10 epochs (3 trials each), beside a full
recompute of the run in the same process; issue 9's aim is <= 2 s at 2,000. That script's
docstring says how it is measured.

**Scale** (``--scale``): the end-to-end rows of the first version of this script. Every (data
set, method) runs ``neuromapper.reduce(..., force=True)`` in a fresh Python process, so that peak
memory (resident set of the process and its workers, sampled every 20 ms) belongs to it alone;
on ``synthetic-N`` (:func:`neuromapper.synthetic.make_synthetic_run`, 10 epochs, one layer of 64
units; 4 layers at 40,000) with ``anchored-umap``, ``aligned-umap`` (up to ``--aligned-max``
samples; beyond, its time is extrapolated with a power law through the measured one-layer sizes
and marked so), ``umap`` and ``pca``. The default method is also timed from a fresh interpreter
with no warm-up ("fresh process"). Its bar: 50x at 10,000 x 10, 10x from a fresh process,
40,000 x 10 x 4 layers under 5 minutes. These times include reading the run, the quality figures
and writing the result.

The load average is printed in the header and after each data set: other jobs on the machine
stretch every figure, AlignedUMAP's (which uses both cores) and ours differently, so compare
ratios measured in the same run and read them with the load beside them.

``--reference-cache DIR`` is for iterating on ``anchored-umap``: AlignedUMAP is deterministic for
a given seed and takes minutes per family, so its per-epoch figures and times are read from
``DIR/<family>.json`` when that file was made from the same activations (SHA-256 of the array),
parameters and umap-learn version, and written there after a live run otherwise. Such rows say
"cached" in the table and their speed ratio compares times from different moments (the
load differs), so a result to record runs without it: the reference in the same process.

Run it from the repository root::

    .venv/bin/python benchmarks/bench_reduce.py --quick                    # smoke run, about two minutes
    .venv/bin/python benchmarks/bench_reduce.py --json reduce.json         # the families (30-65 min on 2 cores)
    .venv/bin/python benchmarks/bench_reduce.py --families fast-256,split-128
    .venv/bin/python benchmarks/bench_reduce.py --reference-cache /tmp/aligned-cache  # iterate on the default
    .venv/bin/python benchmarks/bench_reduce.py --scale --skip-families    # the end-to-end rows (hours)
"""

from __future__ import annotations

import argparse
import hashlib
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reduce_families import FAMILIES, QUICK, drifting_clusters  # noqa: E402

REFERENCE = "aligned-umap"
DEFAULT = "anchored-umap"
# reduce()'s defaults (ReduceParams)
N_NEIGHBORS, MIN_DIST, SEED = 15, 0.1, 0
OVERLAP_K = 15
BAR = {"mean_trust": -0.005, "worst_epoch": -0.01, "speed": 50.0}


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- families: both methods in this process ---------------------------------------------------


def neighbour_overlap(activations: np.ndarray) -> float:
    """Mean Jaccard overlap of each sample's 15 neighbours (pre-embedding) between consecutive epochs."""
    from neuromapper import layout, methods

    ids = []
    for x in activations:
        knn, _ = methods.nearest_neighbours(methods.pre_embed(x, SEED), OVERLAP_K, SEED)
        ids.append(knn[:, 1:])
    return float(np.mean([layout.neighbour_overlap(b, a).mean() for a, b in zip(ids[:-1], ids[1:])]))


def quality_figures(activations: np.ndarray, layouts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trustworthiness and disparity per epoch, as :func:`neuromapper.reduce.reduce_layer` computes them."""
    from neuromapper import quality

    sub = quality.trust_subsample(activations.shape[1], SEED)
    trust = np.array([quality.trustworthiness(a[sub], y[sub]) for a, y in zip(activations, layouts)])
    disparity = np.array([np.nan] + [quality.disparity(b, y) for b, y in zip(layouts[:-1], layouts[1:])])
    return trust, disparity


def run_method(name: str, activations: np.ndarray) -> dict:
    from neuromapper.methods import METHODS, _ignore, _never

    t0 = time.perf_counter()
    layouts, backend = METHODS[name](activations, N_NEIGHBORS, MIN_DIST, SEED, _ignore, _never)
    seconds = time.perf_counter() - t0
    trust, disparity = quality_figures(activations, layouts)
    return {"seconds": seconds, "backend": backend, "trust": trust, "disparity": disparity,
            "unplaced": int(np.isnan(layouts).any(axis=2).sum())}


def warm_up() -> dict:
    """Compile both methods on a tiny family; the second call's time is what every call pays again."""
    tiny, _ = drifting_clusters(n_samples=300, n_epochs=3, dims=64, seed=99)
    seconds = {}
    for name in (DEFAULT, REFERENCE):
        calls = []
        for _ in range(2):
            t0 = time.perf_counter()
            run_method(name, tiny)
            calls.append(time.perf_counter() - t0)
        seconds[name] = calls
        _log(f"warm-up {name}: {calls[0]:.1f} s, then {calls[1]:.2f} s (300 points x 3 epochs)")
    return seconds


def _cache_file(cache: Path, name: str) -> Path:
    return cache / f"{name.replace(':', '_')}.json"


def reference(name: str, activations: np.ndarray, overhead: float, cache: Path | None) -> tuple[dict, float, bool]:
    """AlignedUMAP's figures for one layer, its compilation overhead, and whether they came from ``cache``."""
    import umap

    identity = {"activations_sha256": hashlib.sha256(np.ascontiguousarray(activations, np.float32).tobytes()).hexdigest(),
                "shape": list(activations.shape), "umap_version": umap.__version__,
                "n_neighbors": N_NEIGHBORS, "min_dist": MIN_DIST, "seed": SEED}
    if cache is not None and _cache_file(cache, name).exists():
        stored = json.loads(_cache_file(cache, name).read_text())
        if all(stored.get(k) == v for k, v in identity.items()):
            ref = {"seconds": stored["seconds"], "backend": stored["backend"], "unplaced": stored["unplaced"],
                   "trust": np.array(stored["trust"], float),
                   "disparity": np.array([np.nan if v is None else v for v in stored["disparity"]], float)}
            return ref, stored["compilation_seconds"], True
        _log(f"{name}: the cached reference does not match these activations/parameters; running it")
    ref = run_method(REFERENCE, activations)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        _cache_file(cache, name).write_text(json.dumps(_plain({
            "family": name, **identity, "seconds": ref["seconds"], "compilation_seconds": overhead,
            "backend": ref["backend"], "unplaced": ref["unplaced"], "trust": ref["trust"],
            "disparity": ref["disparity"]}), indent=1))
    return ref, overhead, False


def compare(activations: np.ndarray, overhead: float, name: str = "", cache: Path | None = None) -> dict:
    """Both methods on one layer's activations, the bar applied."""
    ours = run_method(DEFAULT, activations)
    ref, overhead, cached = reference(name, activations, overhead, cache)
    diff = ours["trust"] - ref["trust"]
    worst = int(np.nanargmin(diff))
    r = {
        "n_samples": activations.shape[1], "n_epochs": activations.shape[0], "dims": activations.shape[2],
        "overlap": neighbour_overlap(activations),
        "anchored": ours, "aligned": ref, "reference_cached": cached,
        "anchored_seconds": ours["seconds"], "aligned_seconds": ref["seconds"],
        "aligned_seconds_less_compilation": ref["seconds"] - overhead,
        "speed": (ref["seconds"] - overhead) / ours["seconds"],
        "trust_anchored": float(np.nanmean(ours["trust"])), "trust_aligned": float(np.nanmean(ref["trust"])),
        "trust_mean_diff": float(np.nanmean(diff)), "trust_worst_diff": float(diff[worst]), "worst_epoch": worst,
        "disp_anchored": float(np.nanmean(ours["disparity"])), "disp_aligned": float(np.nanmean(ref["disparity"])),
        "load_after": load_average(),
    }
    r["checks"] = {
        "mean_trust": r["trust_mean_diff"] >= BAR["mean_trust"],
        "worst_epoch": r["trust_worst_diff"] >= BAR["worst_epoch"],
        "disparity": r["disp_anchored"] <= r["disp_aligned"],
        "speed": r["speed"] >= BAR["speed"],
    }
    r["pass"] = all(r["checks"].values())
    return r


def demo_layers(path: Path) -> tuple[dict, str | None]:
    """``{"demo:<layer>": activations}`` of the demo run at ``path``, or ``({}, reason)``."""
    if not (path / "run.nc").exists():
        return {}, f"no demo run at {path} (record one with `neuromapper demo --out {path}`)"
    from neuromapper.store import layer_activations, open_run

    try:
        ds = open_run(path)
        layers = [str(v) for v in ds["layer"].values]
        out = {f"demo:{layer}": np.asarray(layer_activations(ds, layer).values, dtype=np.float32) for layer in layers}
    except Exception as error:  # a run being written, or of another schema: say so, go on
        return {}, f"the demo run at {path} could not be read: {type(error).__name__}: {error}"
    if min(a.shape[0] for a in out.values()) < 2:
        return {}, f"the demo run at {path} has fewer than 2 epochs"
    return out, None


def _source_digest() -> str:
    """Short SHA-256 of the method sources as imported (the working tree may differ from HEAD)."""
    import neuromapper.layout
    import neuromapper.methods

    text = b"".join(Path(m.__file__).read_bytes() for m in (neuromapper.methods, neuromapper.layout))
    return hashlib.sha256(text).hexdigest()[:12]


def families_part(args) -> list[dict]:
    chosen = QUICK if args.quick else FAMILIES
    if args.families:
        unknown = [f for f in args.families if f not in FAMILIES]
        if unknown:
            raise SystemExit(f"--families: unknown {unknown}; known: {list(FAMILIES)}")
        chosen = {f: (QUICK.get(f) if args.quick and f in QUICK else FAMILIES[f]) for f in args.families}
    cache = Path(args.reference_cache) if args.reference_cache else None
    overhead = warm_up()
    aligned_overhead = overhead[REFERENCE][1]
    rows = []
    for name, kwargs in chosen.items():
        activations, _ = drifting_clusters(**kwargs)
        _log(f"{name}: {activations.shape} ...")
        r = compare(activations, aligned_overhead, name, cache)
        rows.append({"family": name, "generator": kwargs, **r})
        _log(f"{name}: {r['anchored_seconds']:.1f} s vs {r['aligned_seconds']:.1f} s  load {r['load_after']}")
    if args.quick or args.skip_demo:
        print(f"demo: skipped ({'--quick' if args.quick else '--skip-demo'})")
    else:
        layers, reason = demo_layers(Path(args.demo))
        if reason:
            print(f"demo: skipped: {reason}")
        for name, activations in layers.items():
            _log(f"{name}: {activations.shape} ...")
            r = compare(activations, aligned_overhead, name, cache)
            rows.append({"family": name, "generator": {"run": args.demo}, **r})
            _log(f"{name}: {r['anchored_seconds']:.1f} s vs {r['aligned_seconds']:.1f} s  load {r['load_after']}")
    print_families(rows, overhead)
    return rows


def _describe(row: dict) -> str:
    g = row["generator"]
    if "drift" not in g:
        return "demo run"
    return g["drift"] + (f", {g['event']}" if g.get("event") else "")


def print_families(rows: list[dict], overhead: dict) -> None:
    print()
    print("| family | data | units | kNN overlap | anchored | AlignedUMAP | × faster | trust anchored | "
          "trust AlignedUMAP | worst epoch Δ (epoch) | disparity anchored | disparity AlignedUMAP | load after | bar |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['family']} | {_describe(r)} | {r['dims']} | {r['overlap']:.2f} | {r['anchored_seconds']:.1f} s | "
              f"{r['aligned_seconds']:.1f} s{' (cached)' if r.get('reference_cached') else ''} | {r['speed']:.1f}× | {r['trust_anchored']:.4f} | {r['trust_aligned']:.4f} | "
              f"{r['trust_worst_diff']:+.4f} ({r['worst_epoch']}) | {r['disp_anchored']:.4f} | {r['disp_aligned']:.4f} | "
              f"{r['load_after'].split()[0]} | {'PASS' if r['pass'] else 'FAIL'} |")
    print()
    print(f"AlignedUMAP recompiles its joint optimiser on every fit: {overhead[REFERENCE][1]:.1f} s (a 300-point fit "
          f"after a first one); '× faster' leaves it out of AlignedUMAP's time. anchored-umap's second tiny call: "
          f"{overhead[DEFAULT][1]:.2f} s.")
    print()
    print("per epoch: trustworthiness anchored - AlignedUMAP; disparity anchored / AlignedUMAP")
    for r in rows:
        diff = r["anchored"]["trust"] - r["aligned"]["trust"]
        print(f"  {r['family']:<12} Δtrust " + " ".join(f"{v:+.3f}" for v in diff))
        pairs = zip(r["anchored"]["disparity"][1:], r["aligned"]["disparity"][1:])
        print(f"  {'':<12} disp   " + " ".join(f"{a:.3f}/{b:.3f}" for a, b in pairs))
    print()
    print("the bar (mean trust >= AlignedUMAP - 0.005; no epoch below AlignedUMAP - 0.01; "
          "mean disparity <= AlignedUMAP's; >= 50x faster):")
    for r in rows:
        c = r["checks"]
        marks = [
            f"mean trust {r['trust_mean_diff']:+.4f} [{'ok' if c['mean_trust'] else 'FAIL'}]",
            f"worst epoch {r['trust_worst_diff']:+.4f} [{'ok' if c['worst_epoch'] else 'FAIL'}]",
            f"disparity {r['disp_anchored']:.4f} vs {r['disp_aligned']:.4f} [{'ok' if c['disparity'] else 'FAIL'}]",
            f"{r['speed']:.1f}x [{'ok' if c['speed'] else 'FAIL'}]",
        ]
        print(f"  {'PASS' if r['pass'] else 'FAIL'}  {r['family']:<12} " + "; ".join(marks))


# --- scale: end to end, one fresh process per measurement (the first version's rows) ----------


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


def ensure_runs(args) -> dict:
    """The synthetic runs to measure, in the order given (``--sizes``); written if absent."""
    from neuromapper.synthetic import make_synthetic_run

    data = Path(args.data)
    runs = {}
    for n in args.sizes:
        layers = 4 if n >= 40000 else 1
        path = data / f"synthetic-{n}-{layers}layers"
        if not (path / "run.nc").exists():
            _log(f"writing synthetic run {path}...")
            make_synthetic_run(path, n_samples=n, n_epochs=10, n_layers=layers, n_classes=10, dims=64, seed=0)
        runs[f"synthetic-{n}"] = {"run": str(path), "layers": None, "n_layers": layers, "n": n}
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


def scale_part(args) -> dict:
    scratch = Path(args.data) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
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
            _log(f"{name:>16} {method:<14} warm ...")
            r = summarise(measure(spec, scratch))
            r["n"] = n
            if method == DEFAULT:
                _log(f"{name:>16} {method:<14} fresh process ...")
                fresh = measure({**spec, "warm": False}, scratch)
                r["fresh_seconds"] = fresh["wall_process_seconds"]  # interpreter start to result
            results[(name, method)] = r
            _log(f"{name:>16} {method:<14} {r['seconds']:8.1f} s  load {load_average()}")

    # AlignedUMAP beyond --aligned-max: extrapolated from the measured one-layer synthetic sizes
    measured_ref = {k[0]: v for k, v in results.items() if k[1] == REFERENCE}
    for name, run in runs.items():
        if (name, REFERENCE) not in results:
            ext = extrapolate(measured_ref, run["n"], run["n_layers"], min(args.jobs, run["n_layers"]))
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
        print("the scale bar:")
        for text, ok in checks:
            print(f"  [{'pass' if ok else 'FAIL'}] {text}")
    return results


# --- main --------------------------------------------------------------------------------------


def _plain(v):
    if isinstance(v, np.ndarray):
        return [None if not np.isfinite(x) else float(x) for x in v.ravel()] if v.ndim == 1 else v.tolist()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return v


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print("RESULT " + json.dumps(child(json.loads(sys.argv[2]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: two small families, no demo")
    parser.add_argument("--families", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated subset of {','.join(FAMILIES)}")
    parser.add_argument("--demo", default="data/demo", help="the demo run (its row is skipped if absent)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-families", action="store_true")
    parser.add_argument("--skip-live", action="store_true", help="leave out the live-append rows")
    parser.add_argument("--scale", action="store_true", help="also the end-to-end rows (fresh processes)")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[10000, 40000, 2000],
                        help="--scale: synthetic run sizes")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=[DEFAULT, REFERENCE, "umap", "pca"],
                        help="--scale: methods")
    parser.add_argument("--aligned-max", type=int, default=10000, help="--scale: largest size AlignedUMAP is run at")
    parser.add_argument("--umap-max", type=int, default=10000, help="--scale: largest size per-epoch UMAP is run at")
    parser.add_argument("--data", default="data/bench", help="--scale: where synthetic runs are written")
    parser.add_argument("--jobs", type=int, default=2, help="--scale: worker processes for multi-layer runs")
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    parser.add_argument("--reference-cache", default=None, metavar="DIR",
                        help="read AlignedUMAP's figures from DIR when made from the same data, write them there "
                             "otherwise (for iterating; a recorded result runs the reference live)")
    args = parser.parse_args()

    import umap

    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# bench_reduce  {datetime.now(timezone.utc).isoformat(timespec='seconds')}  "
          f"{platform.node()}  {os.cpu_count()} cores  python {platform.python_version()}  "
          f"umap-learn {umap.__version__}  commit {head or 'n/a'}  methods+layout sha256 {_source_digest()}  "
          f"load average at start {load_average()}")
    out: dict = {}
    if not args.skip_families:
        out["families"] = families_part(args)
    if not args.skip_live and not args.quick:
        import bench_live  # beside this script

        print("\nlive append: an epoch file landing -> its embedding stored and shown (benchmarks/bench_live.py)")
        out["live"] = bench_live.live_part([2000, 10000], trials=3)
        bench_live.print_table(out["live"])
        print(f"load average after the live rows {load_average()}")
    if args.scale:
        out["scale"] = [{"data": k[0], "method": k[1], **v} for k, v in scale_part(args).items()]
    print(f"load average at end {load_average()}")
    if args.json:
        Path(args.json).write_text(json.dumps(_plain(out), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
