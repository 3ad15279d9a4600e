"""What recording costs: training-epoch time with and without capture, and store size per epoch.

A :class:`neuromapper.Recorder` adds a forward pass over the probe set and a netCDF write to every
epoch it captures. This script measures both on the demo setting, so that the price of
recording is a figure rather than a guess:

* time of one training epoch of :class:`neuromapper.data.DigitCNN` on MNIST-5k (5,000 real
  digits, batch 64, Adam), alone and followed by ``rec.capture(epoch)`` + ``rec.flush()`` with
  the 4 demo layers (conv1, conv2, fc1, fc2) recorded on a 10,000-sample probe, and their ratio;
* how that splits: ``capture()`` blocks the training loop for the forward pass only, the write
  (compression, fsync) runs on the Recorder's background thread until ``flush()``; and the
  epoch time when the write is left to overlap the next epoch, as an ordinary loop does;
* store size and write time per epoch for float32 and 16-bit activations, zlib-compressed or
  not. netCDF has no float16 type: 16-bit storage is CF-packed int16 (``precision="16bit"``).

Only 5,000 real MNIST digits are available offline, so the 10,000-sample probe is MNIST-5k
twice, the second copy shifted right by one pixel (a larger ``--probe`` adds copies shifted by
2, 3, ... pixels). Timings are medians of ``--epochs`` repetitions; runs go to a temporary
directory that is removed afterwards. Progress goes to stderr, the tables to stdout.

The full run trains 10 epochs and passes the probe through the model 39 times: several minutes
on 2 CPU cores alone, about 20 minutes when other jobs share them (the header prints the load average, since
contention stretches the training epochs far more than anything measured here).

Run it from the repository root::

    .venv/bin/python benchmarks/bench_record.py                         # full run, see below
    .venv/bin/python benchmarks/bench_record.py --probe 2000 --epochs 1 # quick check
    .venv/bin/python benchmarks/bench_record.py --json record.json      # also write the figures
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from neuromapper import Recorder, store
from neuromapper.data import DigitCNN, load_mnist5k
from neuromapper.demo import DEMO_LAYERS, accuracy, train_one_epoch

# (precision column, compression column, Recorder keyword arguments)
STORAGE = [
    ("float32", "none", {"precision": "float32", "complevel": None}),
    ("float32", "zlib 1 (default)", {"precision": "float32", "complevel": 1}),
    ("float32", "zlib 4", {"precision": "float32", "complevel": 4}),
    ("16-bit (CF int16)", "none", {"precision": "16bit", "complevel": None}),
    ("16-bit (CF int16)", "zlib 1", {"precision": "16bit", "complevel": 1}),
]
BATCH_SIZE = 64
MB = 1e6


def build_probe(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real digits: ``x`` as is, then copies shifted right by 1, 2, ... pixels (zero-filled)."""
    copies = -(-n // len(x))
    shifted = [F.pad(x, (k, 0))[..., : x.shape[-1]] for k in range(copies)]
    return torch.cat(shifted)[:n], y.repeat(copies)[:n]


def timed(fn, *args) -> float:
    """Seconds taken by ``fn(*args)``."""
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def summary(seconds: list[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "max": max(seconds), "runs": seconds}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=int, default=10_000, help="probe samples captured per epoch (default 10000)")
    parser.add_argument("--epochs", type=int, default=3, help="timed repetitions of each measurement (default 3)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.probe < 1 or args.epochs < 1:
        parser.error("--probe and --epochs must be positive")

    torch.manual_seed(0)
    data = load_mnist5k()
    x_probe, y_probe = build_probe(data.x, data.y, args.probe)
    model = DigitCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x, data.y), batch_size=BATCH_SIZE, shuffle=True
    )

    def train() -> None:
        train_one_epoch(model, loader, optimizer)

    load_before = os.getloadavg()[0]
    n = args.epochs
    steps = 1 + 3 * n + len(STORAGE) * n
    plain, recorded, blocked, durable, overlapped = [], [], [], [], []
    with (
        tempfile.TemporaryDirectory(prefix="bench-record-") as tmp,
        tqdm(total=steps, unit="step", file=sys.stderr) as bar,
    ):

        def recorder(name: str, **kwargs) -> Recorder:
            return Recorder(
                model,
                DEMO_LAYERS,
                probe=(x_probe, y_probe),
                class_names=data.class_names,
                path=Path(tmp) / name,
                **kwargs,
            )

        with recorder("timing") as rec:
            bar.set_description("warm-up epoch")
            train()
            bar.update()
            epochs = itertools.count()  # epoch numbers of the captures
            for _ in range(n):
                # The three kinds of epoch take turns, so that drift in machine load hits all of them.
                bar.set_description("(a) train only")
                plain.append(timed(train))
                bar.update()
                bar.set_description("(b) train + capture + flush")
                train_s = timed(train)
                capture_s = timed(rec.capture, next(epochs))
                flush_s = timed(rec.flush)
                recorded.append(train_s + capture_s + flush_s)
                blocked.append(capture_s)
                durable.append(capture_s + flush_s)
                bar.update()
                # As in a loop that never flushes: the previous epoch's write overlaps training.
                bar.set_description("(b') train + capture, write in background")
                rec.capture(next(epochs))
                overlapped.append(timed(train) + timed(rec.capture, next(epochs)))
                rec.flush()
                bar.update()
            run_file_bytes = (rec.path / store.RUN_FILE).stat().st_size
            with store.open_run(rec.path) as ds:
                units = [int(u) for u in ds["layer_units"].values]

        # Storage settings capture the same trained model, so only the encoding differs.
        forward, bare, storage = [], [], []
        for precision, compression, kwargs in STORAGE:
            bar.set_description(f"store {precision}, {compression}")
            writes = []
            with recorder(f"{kwargs['precision']}-{kwargs['complevel']}", **kwargs) as rec:
                for epoch in range(n):
                    forward.append(timed(rec.capture, epoch))
                    writes.append(timed(rec.flush))
                    # The same forward pass without hooks or Dataset, at the Recorder's batch size.
                    bare.append(timed(accuracy, model, x_probe, y_probe, rec.batch_size))
                    bar.update()
                size = store.epoch_file(rec.path, 0).stat().st_size
            storage.append(
                {
                    "precision": precision,
                    "compression": compression,
                    "recorder_kwargs": kwargs,
                    "bytes_per_epoch": size,
                    "write_s": summary(writes),
                }
            )

    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_record.py", *(argv or sys.argv[1:])]),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_1min_before": load_before,
            "load_1min_after": os.getloadavg()[0],
        },
        "train_samples": len(data),
        "batch_size": BATCH_SIZE,
        "probe_samples": args.probe,
        "layers": dict(zip(DEMO_LAYERS, units)),
        "repetitions": n,
        "train_s": summary(plain),
        "train_capture_flush_s": summary(recorded),
        "capture_blocking_s": summary(blocked),
        "capture_until_durable_s": summary(durable),
        "train_capture_background_write_s": summary(overlapped),
        "capture_alone_forward_s": summary(forward),
        "bare_forward_s": summary(bare),
        "run_file_bytes": run_file_bytes,
        "storage": storage,
    }
    results["overhead_ratio"] = results["train_capture_flush_s"]["median"] / results["train_s"]["median"]
    # Same ratio from the parts, less exposed to the spread of whole training epochs.
    results["overhead_ratio_from_parts"] = (
        1 + results["capture_until_durable_s"]["median"] / results["train_s"]["median"]
    )
    results["overhead_ratio_background_write"] = (
        results["train_capture_background_write_s"]["median"] / results["train_s"]["median"]
    )
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nfigures written to {args.json}")
    return results


def report(r: dict) -> None:
    """Print the figures of :func:`main` as plain-text tables."""
    m = r["machine"]
    copies = -(-r["probe_samples"] // r["train_samples"])
    print(
        f"NeuroMapper recording cost, {r['date']}: {m['cpus']} CPUs, torch {m['torch']} "
        f"({m['torch_threads']} threads), Python {m['python']}, "
        f"load average {m['load_1min_before']:.1f} before / {m['load_1min_after']:.1f} after"
    )
    print(f"Model: DigitCNN trained on MNIST-5k ({r['train_samples']:,} real digits, batch {r['batch_size']}, Adam).")
    layers = ", ".join(f"{name} ({units} units)" for name, units in r["layers"].items())
    print(f"Probe: {r['probe_samples']:,} samples; recorded layers {layers}.")
    if copies > 1:
        print(
            f"  Only {r['train_samples']:,} real MNIST digits exist offline: the probe is MNIST-5k {copies} times,"
            f" copy k shifted right by k pixels (k = 0..{copies - 1})."
        )
    print(f"Times in seconds: median (min-max) of {r['repetitions']} repetitions.\n")

    def row(label: str, s: dict, extra: str = "") -> None:
        print(f"  {label:<60} {s['median']:7.2f}  ({s['min']:.2f}-{s['max']:.2f}){extra}")

    print("Epoch time")
    row("(a) training epoch alone", r["train_s"])
    row("(b) training epoch + capture(epoch) + flush()", r["train_capture_flush_s"])
    row("    of which capture(): training loop blocked", r["capture_blocking_s"])
    row("    of which capture() + flush(): until the epoch is durable", r["capture_until_durable_s"])
    print(f"  {'recording overhead (b)/(a)':<60} {r['overhead_ratio']:7.2f}x")
    print(f"  {'  same from the parts, 1 + (capture + flush)/(a)':<60} {r['overhead_ratio_from_parts']:7.2f}x")
    row(
        "(b') training epoch + capture(), write left in background",
        r["train_capture_background_write_s"],
        f"  {r['overhead_ratio_background_write']:.2f}x of (a)",
    )
    print("     (no flush: each write overlaps the next training epoch, as in an ordinary loop)\n")

    print("Capture alone, no training (all storage settings pooled for the forward pass)")
    row("(c) capture(): forward pass over the probe + epoch Dataset", r["capture_alone_forward_s"])
    row("    for reference: bare forward pass, no hooks (demo.accuracy)", r["bare_forward_s"])
    default = next(s for s in r["storage"] if s["recorder_kwargs"] == {"precision": "float32", "complevel": 1})
    row("    flush(): write float32 zlib 1 (default), fsync, rename", default["write_s"])
    print()

    raw = r["storage"][0]["bytes_per_epoch"]
    print("Store size per epoch (one epochs/epoch-NNNNNN.nc file; MB = 10^6 bytes)")
    print(f"  {'precision':<18} {'compression':<17} {'MB/epoch':>9} {'vs float32 raw':>15} {'write s (min-max)':>22}")
    for s in r["storage"]:
        w = s["write_s"]
        print(
            f"  {s['precision']:<18} {s['compression']:<17} {s['bytes_per_epoch'] / MB:9.2f} "
            f"{s['bytes_per_epoch'] / raw:14.2f}x {w['median']:10.2f} ({w['min']:.2f}-{w['max']:.2f})"
        )
    n, units = r["probe_samples"], list(r["layers"].values())
    print("  netCDF has no float16 type: 16-bit storage is CF-packed int16 (scale_factor/add_offset).")
    print(
        f"  The real activations are {n:,} x {sum(units)} units = {n * sum(units) * 4 / MB:.2f} MB as float32; the store"
        f" pads all {len(units)} layers to {max(units)} units with NaN ({n * len(units) * max(units) * 4 / MB:.2f} MB),"
        " which only compression removes."
    )
    print(
        f"  Written once per run, not per epoch: run.nc (labels, thumbnails, metadata) {r['run_file_bytes'] / MB:.2f} MB."
    )


if __name__ == "__main__":
    main()
