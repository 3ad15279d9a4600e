"""Killing ``neuromapper reduce`` at random moments: no worker outlives it, no half-written embedding is read."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuromapper import store
from neuromapper.synthetic import make_synthetic_run


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (read from /proc; the pool's workers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_synthetic_run(tmp_path_factory.mktemp("faults") / "run", n_samples=1500, n_epochs=6, n_layers=2,
                              dims=32)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killing_reduce_leaves_no_worker_and_no_invalid_embedding(run, signum):
    rng = random.Random(signum)
    for trial in range(10):
        proc = subprocess.Popen([sys.executable, "-m", "neuromapper.cli", "reduce", str(run), "--jobs", "2",
                                 "--force", "--seed", str(trial)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers: set[int] = set()
        deadline = time.monotonic() + rng.uniform(0.5, 8.0)
        while time.monotonic() < deadline and proc.poll() is None:
            workers |= _children(proc.pid)
            time.sleep(0.05)
        workers |= _children(proc.pid)
        proc.send_signal(signum)
        proc.wait(timeout=30)
        gone_by = time.monotonic() + 10
        while any(_alive(pid) for pid in workers) and time.monotonic() < gone_by:
            time.sleep(0.1)
        assert not [pid for pid in workers if _alive(pid)], f"trial {trial}: workers alive 10 s after the kill"
        # whatever is stored is a whole, readable embedding of the run; a partial write is never taken for one
        for info in store.list_embeddings(run):
            emb = store.load_embedding(run, info["key"])
            assert emb.sizes["epoch"] == 6 and emb.sizes["layer"] == 2 and emb.sizes["sample"] == 1500
        assert not [p for p in (run / store.EMBEDDING_DIR).glob("*.nc") if p.stem not in
                    {i["key"] for i in store.list_embeddings(run)}], "an unreadable embedding file"
        for leftover in (run / store.EMBEDDING_DIR).glob("*.tmp"):
            os.unlink(leftover)  # a killed write leaves its temporary file; it is never read
