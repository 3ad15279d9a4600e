"""Work shared by every session of one server: background reductions and the run watcher.

Both are hard to undo, so the reasons are here:

* **One reduction per run and parameters, owned by the sessions waiting for it.** A session
  that needs an embedding that is not stored joins the job computing it (:meth:`ReduceJobs.join`)
  or starts one. Two sessions on the same run and parameters therefore reduce once. A job is
  cancelled as soon as no session waits for it any more (the page was closed, or the user chose
  other parameters): ``reduce``'s cancel event stops it within a few seconds, and worker
  processes are terminated. At most :data:`MAX_RUNNING` jobs run at once per server; more wait
  in line (and say so), so that no number of sessions can start unbounded work.
* **One watcher per server, not per session.** :class:`RunWatcher` lists each watched run's
  epoch files once a second on one thread and tells the sessions watching that run when it grew.
  Listing a directory is cheap; twenty sessions opening twenty netCDF files a second is not.

Callbacks run on the job's or the watcher's thread; each session hands them to its own event
loop (see :class:`neuromapper.views.state.SessionState`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..store import recorded_epochs

MAX_RUNNING = 2
POLL_SECONDS = 0.25  # listing a run folder four times a second costs nothing measurable
LIVE_WINDOW_SECONDS = 120.0


@dataclass
class Listener:
    """What a session wants to hear from a job: progress, the result, or a failure."""

    progress: Callable[[int, int, str], None]
    done: Callable[[object], None]
    failed: Callable[[str], None]


@dataclass
class ReduceJob:
    root: Path
    params: object
    cancel: threading.Event = field(default_factory=threading.Event)
    listeners: dict[int, Listener] = field(default_factory=dict)
    thread: threading.Thread | None = None
    last_progress: tuple[int, int, str] | None = None


class ReduceJobs:
    """The server's background reductions, one per (run, parameters), shared by sessions."""

    def __init__(self, max_running: int = MAX_RUNNING):
        self._lock = threading.Lock()
        self._jobs: dict[tuple[str, object], ReduceJob] = {}
        self._tokens: dict[int, tuple[str, object]] = {}
        self._ids = itertools.count()
        self._slots = threading.BoundedSemaphore(max_running)

    def join(self, root: Path, params, listener: Listener) -> int:
        """Wait for the embedding of ``params`` (computing it unless a job already does); a token."""
        key = (str(root), params)
        with self._lock:
            token = next(self._ids)
            job = self._jobs.get(key)
            if job is None or job.cancel.is_set():
                job = self._jobs[key] = ReduceJob(Path(root), params)
                job.thread = threading.Thread(target=self._run, args=(key, job), daemon=True,
                                              name=f"neuromapper-reduce-{Path(root).name}")
                job.thread.start()
            job.listeners[token] = listener
            self._tokens[token] = key
            if job.last_progress is not None:
                listener.progress(*job.last_progress)
        return token

    def leave(self, token: int) -> None:
        """Stop waiting; the job is cancelled when nobody waits for it any more."""
        with self._lock:
            key = self._tokens.pop(token, None)
            job = self._jobs.get(key) if key else None
            if job is None:
                return
            job.listeners.pop(token, None)
            if not job.listeners:
                job.cancel.set()
                del self._jobs[key]

    def running(self) -> list[ReduceJob]:
        with self._lock:
            return list(self._jobs.values())

    def _notify(self, job: ReduceJob, what: str, *args) -> None:
        with self._lock:
            listeners = list(job.listeners.values())
        for listener in listeners:
            getattr(listener, what)(*args)

    def _run(self, key, job: ReduceJob) -> None:
        from .. import reduce as reduction

        def progress(done: int, total: int, message: str) -> None:
            job.last_progress = (done, total, message)
            if not job.cancel.is_set():
                self._notify(job, "progress", done, total, message)

        try:
            while not self._slots.acquire(timeout=0.2):  # a place among the running jobs
                if job.cancel.is_set():
                    return
                if job.last_progress is None:
                    self._notify(job, "progress", 0, 0, "waiting for another reduction on this server to finish")
            try:
                if job.cancel.is_set():
                    return
                result = reduction.reduce(job.root, **job.params.as_kwargs(), progress=progress, cancel=job.cancel)
            finally:
                self._slots.release()
        except reduction.ReductionCancelled:
            return
        except Exception as exc:  # every session waiting for it shows the failure where the plots are
            if not job.cancel.is_set():
                self._notify(job, "failed", f"{type(exc).__name__}: {exc}")
        else:
            if not job.cancel.is_set():
                self._notify(job, "done", result)
        finally:
            with self._lock:
                if self._jobs.get(key) is job:
                    del self._jobs[key]


class RunWatcher:
    """One thread that notices new epochs of the runs sessions show (see the module docstring)."""

    def __init__(self, interval: float = POLL_SECONDS):
        self.interval = interval
        self._lock = threading.Lock()
        self._watchers: dict[int, tuple[str, Callable[[list[int]], None]]] = {}
        self._epochs: dict[str, list[int]] = {}
        self._grew_at: dict[str, float] = {}
        self._quiet: set[str] = set()  # runs whose growth was last reported as over
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, root: Path, callback: Callable[[list[int]], None]) -> int:
        """Call ``callback(recorded epochs)`` whenever the run at ``root`` gains epochs; a token.

        It is called once more when the run has not grown for :data:`LIVE_WINDOW_SECONDS`, so that
        sessions can say it is no longer live.
        """
        root = str(Path(root).resolve())
        with self._lock:
            token = next(self._ids)
            if all(r != root for r, _ in self._watchers.values()):
                # nobody watched it meanwhile: what was seen before (files deleted since?) is stale
                self._epochs[root] = recorded_epochs(root)
            self._watchers[token] = (root, callback)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="neuromapper-watcher")
                self._thread.start()
        return token

    def unwatch(self, token: int) -> None:
        with self._lock:
            self._watchers.pop(token, None)

    def growing(self, root: Path) -> bool:
        """Did the run gain an epoch within the last :data:`LIVE_WINDOW_SECONDS`?"""
        grew = self._grew_at.get(str(Path(root).resolve()))
        return grew is not None and time.monotonic() - grew < LIVE_WINDOW_SECONDS

    def _loop(self) -> None:
        while True:
            time.sleep(self.interval)
            with self._lock:
                if not self._watchers:
                    self._thread = None
                    return
                roots = {root for root, _ in self._watchers.values()}
            for root in roots:
                try:
                    epochs = recorded_epochs(root)
                except OSError:
                    continue
                if epochs != self._epochs.get(root):
                    self._epochs[root] = epochs
                    self._grew_at[root] = time.monotonic()
                    self._quiet.discard(root)
                elif root in self._grew_at and root not in self._quiet and not self.growing(root):
                    self._quiet.add(root)  # it stopped growing: once more, so sessions drop "live"
                else:
                    continue
                with self._lock:
                    callbacks = [cb for r, cb in self._watchers.values() if r == root]
                for callback in callbacks:
                    try:
                        callback(epochs)
                    except Exception:  # one broken session must not stop the others hearing
                        logging.getLogger(__name__).exception("run watcher callback failed")


JOBS = ReduceJobs()
WATCHER = RunWatcher()
