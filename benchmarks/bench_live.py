"""A live run: from an epoch file landing to its embedding stored and shown, beside a full recompute.

A run that is still being recorded is the normal case. When the recorder renames a new epoch
file into place, the dashboard's watcher (one thread per server, polling every
:data:`neuromapper.views.jobs.POLL_SECONDS`) tells the sessions showing that run; a session
opens the grown run, joins the reduction of the new epoch (warm-started from the stored layouts;
``anchored-umap`` lays the previous last epoch out again, now that it has a next one to look
ahead to, and no earlier frame moves) and shows the extended embedding. This script times that
whole path in-process, without a browser, through the same objects a served session uses
(:class:`~neuromapper.views.state.SessionState` with the server's watcher and job registry):

* **live append**: the epoch file lands (an atomic rename, as the recorder does it) → the
  session's scene holds the new epoch; median of ``--trials`` landings;
* **full recompute**: ``neuromapper.reduce(run, force=True)`` of every epoch, the reference (what
  a tool without incremental reduction does for every new epoch);

at 2,000 and 10,000 probe samples × 4 layers × 10 epochs of synthetic drifting clusters
(:func:`neuromapper.synthetic.make_synthetic_run`, 64 units per layer). The aim from issue 9 is
≤ 2 s at 2,000 samples. The poll interval is part of the figure (on average half of it). Each
trial also checks that the earlier frames did not move and that the epochs laid out (the new
one and the previous last) equal the full recompute's. ``--without-neighbours`` times the append
from an embedding stored without neighbour sets (as before they were stored,
:func:`neuromapper.store.load_neighbours`), which rebuilds the graphs of the epoch carried on from.

Run it from the repository root::

    .venv/bin/python benchmarks/bench_live.py                # both sizes, 3 trials each
    .venv/bin/python benchmarks/bench_live.py --sizes 2000 --trials 1
    .venv/bin/python benchmarks/bench_live.py --without-neighbours
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuromapper import reduce, store  # noqa: E402
from neuromapper.reduce_params import ReduceParams  # noqa: E402
from neuromapper.synthetic import make_synthetic_run  # noqa: E402
from neuromapper.views.state import SessionState  # noqa: E402

LAYERS, EPOCHS, DIMS = 4, 10, 64


def measure(n_samples: int, trials: int, folder: Path, without_neighbours: bool = False) -> dict:
    run = make_synthetic_run(folder / f"live-{n_samples}", n_samples=n_samples, n_epochs=EPOCHS, n_layers=LAYERS,
                             dims=DIMS)
    last = store.epoch_file(run, EPOCHS - 1)
    held = folder / f"held-{n_samples}.nc"
    started = time.perf_counter()
    whole = reduce(run, force=True)
    full = time.perf_counter() - started
    key = ReduceParams().key(store.open_run(run)["layer"].values)
    shutil.move(last, held)  # the run as it was before its last epoch was recorded
    reduce(run, force=True)
    if without_neighbours:
        store.write_embedding(run, store.load_embedding(run, key))
    stored_before = folder / f"embedding-{n_samples}.nc"
    shutil.copy(store.embedding_file(run, key), stored_before)
    before = store.load_embedding(run, key)
    times, moved, equal = [], [], []
    for _ in range(trials):
        shutil.copy(stored_before, store.embedding_file(run, key))
        state = SessionState(run)
        assert state.scene is not None and len(state.scene.epochs) == EPOCHS - 1
        landed = time.perf_counter()
        tmp = last.with_name(last.name + ".tmp")
        shutil.copy(held, tmp)
        os.replace(tmp, last)  # lands as the recorder's files do
        while state.scene is None or len(state.scene.epochs) < EPOCHS:
            time.sleep(0.005)
        times.append(time.perf_counter() - landed)
        after = store.load_embedding(run, key)
        moved.append(not np.array_equal(after.values[: EPOCHS - 2], before.values[:-1]))
        equal.append(np.array_equal(after.values[-2:], whole.values[-2:], equal_nan=True))
        state.dispose()
        os.unlink(last)
    return {"samples": n_samples, "layers": LAYERS, "epochs": EPOCHS, "live_append_s": times,
            "live_append_median_s": statistics.median(times), "full_recompute_s": full,
            "earlier_frames_moved": any(moved), "appended_equals_full": all(equal),
            "without_neighbours": without_neighbours}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda t: [int(v) for v in t.split(",")], default=[2000, 10000])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--without-neighbours", action="store_true",
                        help="append from an embedding stored without neighbour sets")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}", file=sys.stderr)
    results = live_part(args.sizes, args.trials, args.without_neighbours)
    print(f"load average after: {os.getloadavg()}", file=sys.stderr)
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def live_part(sizes: list[int], trials: int, without_neighbours: bool = False) -> list[dict]:
    """:func:`measure` at each size, in a temporary folder (also run by ``bench_reduce.py``)."""
    results = []
    with tempfile.TemporaryDirectory(prefix="nm-live-") as tmp:
        for n in sizes:
            results.append(measure(n, trials, Path(tmp), without_neighbours))
            print(f"  {n:,} samples done", file=sys.stderr)
    return results


def print_table(results: list[dict]) -> None:
    print(f"{'samples':>8} {'layers':>6} {'live append (median, s)':>24} {'trials (s)':>22} "
          f"{'full recompute (s)':>19} {'ratio':>6} {'earlier frames moved':>21} {'laid out = full':>17}")
    for r in results:
        trials = ", ".join(f"{t:.2f}" for t in r["live_append_s"])
        print(f"{r['samples']:>8,} {r['layers']:>6} {r['live_append_median_s']:>24.2f} {trials:>22} "
              f"{r['full_recompute_s']:>19.1f} {r['full_recompute_s'] / r['live_append_median_s']:>5.1f}x "
              f"{'yes' if r['earlier_frames_moved'] else 'no':>21} {'yes' if r['appended_equals_full'] else 'NO':>17}")


if __name__ == "__main__":
    sys.exit(main())
