"""The state one browser session shares between its views (no Panel, no widgets).

Every view of a session (Embeddings now; Activations, Model and Training next) is a thin
``pn.viewable.Viewer`` over one :class:`SessionState`; they never import each other and meet
only here. A change made in one view is a change of a parameter here, which every other view
watches:

* ``run``: the run shown (:class:`~neuromapper.views.run.RunFacts`); a new object when the run
  grows while it is recorded, so arrays never change under a picture being drawn;
* ``epoch``: the player's epoch, one of the embedded epochs;
* ``classes``: the visible true classes;
* ``selection``: a set of sample ids (the run's ``sample`` coordinate), or ``None``. Ids, not
  positions or indices: a selection made at one epoch in one layer means the same samples at
  every epoch, in every layer and in every view;
* ``focused``: one sample id (hovered or clicked) or ``None``;
* ``reduce_params`` and ``embedding``: the parameters this session asked for and the embedding
  it shows. A session shows the embedding of *its* parameters (the defaults until the user
  chooses others), never whichever reduction finished last; while its embedding is computed
  (or extended with new epochs of a live run) the previous one stays on screen.

Why a plain ``param.Parameterized`` and not a Viewer with widgets: the state must be driven
from Python (a notebook, a unit test) exactly as widgets drive it, and widgets declared on a
shared class would be shared by sessions. Callbacks from other threads (reductions, the run
watcher) go through ``dispatch``, which the server shell sets to "run on this session's event
loop under its document lock"; elsewhere they run at once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable

import numpy as np
import param
import xarray as xr

from ..reduce_params import ReduceParams
from ..scene import EmbeddingScene, join
from .jobs import JOBS, WATCHER, Listener, ReduceJobs, RunWatcher
from .run import RunFacts

# Scenes are read-only, so the sessions showing one embedding share its coordinates (8 bytes per
# point, layer and epoch: 3.2 GB at 10 million points); a scene goes when its last session does.
_SCENES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_SCENES_LOCK = threading.Lock()


def _scene(run: RunFacts, embedding: xr.DataArray) -> EmbeddingScene:
    key = (str(run.root), embedding.attrs.get("key") or id(embedding), embedding.attrs.get("created"),
           tuple(int(e) for e in embedding["epoch"].values))
    with _SCENES_LOCK:
        scene = _SCENES.get(key)
        if scene is None:
            scene = _SCENES[key] = join(embedding, run.samples, run.epochs, run.labels, run.predictions, run.loss,
                                        run.class_names)[0]
        return scene


class SessionState(param.Parameterized):
    """What every view of one session agrees on (see the module docstring).

    Parameters
    ----------
    run
        A run directory or :class:`RunFacts`.
    embedding
        An embedding to show instead of the stored one for the default parameters.
    dispatch
        ``dispatch(fn, *args)`` runs ``fn`` where the session's state may change; default: now.
    """

    run = param.ClassSelector(class_=RunFacts, doc="The run shown.")
    epoch = param.Selector(objects=[0], doc="The player's epoch (one of the embedded epochs).")
    classes = param.ListSelector(default=[], objects=[], doc="Visible true classes.")
    selection = param.Array(default=None, allow_None=True, doc="Selected sample ids, or None.")
    selection_version = param.Integer(default=0, precedence=-1, doc="Bumped when the selection changes.")
    focused = param.Integer(default=None, allow_None=True, doc="The sample hovered or clicked, or None.")
    reduce_params = param.ClassSelector(class_=ReduceParams, doc="The embedding parameters of this session.")
    embedding = param.ClassSelector(class_=xr.DataArray, allow_None=True, doc="The embedding shown.")
    scene = param.ClassSelector(class_=EmbeddingScene, allow_None=True, doc="The embedding, ready to draw.")
    status = param.String(default="", doc="What the embedding is doing, in words.")
    progress = param.Integer(default=None, allow_None=True, bounds=(-1, 100),
                             doc="Reduce progress in percent; -1 while it cannot tell; None when idle.")
    error = param.String(default="", doc="Why no embedding can be shown, if so.")
    live = param.String(default="", doc="'live · epoch N recorded, up to epoch M embedded' while the run grows.")

    def __init__(self, run, embedding: xr.DataArray | None = None, *, reduce_params: ReduceParams | None = None,
                 dispatch: Callable | None = None, jobs: ReduceJobs = JOBS, watcher: RunWatcher = WATCHER):
        facts = run if isinstance(run, RunFacts) else RunFacts.open(run)
        if reduce_params is None:
            reduce_params = ReduceParams() if embedding is None else ReduceParams.from_embedding(embedding)
        # given to the constructor, not set afterwards: setting reduce_params would start a reduction
        super().__init__(run=facts, reduce_params=reduce_params)
        self._dispatch = dispatch or (lambda fn, *args: fn(*args))
        self._jobs, self._watcher = jobs, watcher
        self._job_token: int | None = None
        self._job_params: ReduceParams | None = None
        self.param.classes.objects = list(facts.class_names)
        self.param.epoch.objects = list(facts.epochs)
        self.param.update(classes=list(facts.class_names), epoch=facts.epochs[0])
        self._watch_token = watcher.watch(facts.root, lambda epochs: self._dispatch(self._run_grew, epochs))
        self._disposed = False
        if embedding is not None:
            self.show_embedding(embedding)
        else:
            self._request()

    # -- the embedding ---------------------------------------------------------------------------
    @param.depends("reduce_params", watch=True)
    def _request(self) -> None:
        """Show the stored embedding of this session's parameters; compute what it lacks."""
        from .. import store

        params = self.reduce_params
        try:
            stored = store.find_embedding(self.run.ds, params, partial=True)
        except (ValueError, OSError) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            return
        if stored is not None and not self._showing(stored):
            try:
                self.show_embedding(stored)
            except ValueError as exc:  # stored for other samples or epochs (a copied or edited run)
                self._fail(f"the stored embedding {stored.attrs.get('key', '')} does not fit this run: {exc}")
                return
        current = stored is not None and [int(e) for e in stored["epoch"].values] == self.run.epochs
        if current:
            self._leave_job()
            self.param.update(progress=None, status="cached: shown instantly")
            return
        if self._job_params == params and self._job_token is not None:
            return  # already waiting for it
        self._leave_job()
        if stored is None:
            self.status = _describe_job(params)
        else:
            self.status = f"embedding epoch {self.run.epochs[len(stored['epoch'])]} of the live run…"
        self.progress = -1
        self._job_params = params
        self._job_token = self._jobs.join(self.run.root, params, Listener(
            progress=lambda done, total, message: self._dispatch(self._on_progress, params, done, total, message),
            done=lambda result: self._dispatch(self._on_done, params, result),
            failed=lambda message: self._dispatch(self._on_failed, params, message),
        ))

    def _showing(self, embedding: xr.DataArray) -> bool:
        """Is ``embedding`` the one shown already (same file, same epochs)? Then nothing is redrawn."""
        shown = self.embedding
        return shown is not None and all(
            shown.attrs.get(k) == embedding.attrs.get(k) for k in ("key", "created")
        ) and np.array_equal(shown["epoch"].values, embedding["epoch"].values)

    def _leave_job(self) -> None:
        if self._job_token is not None:
            self._jobs.leave(self._job_token)
        self._job_token = self._job_params = None

    def _on_progress(self, params, done: int, total: int, message: str) -> None:
        if params != self.reduce_params or self._disposed:
            return
        self.param.update(progress=int(100 * done / total) if total else -1, status=message)

    def _on_done(self, params, result: xr.DataArray) -> None:
        if params != self.reduce_params or self._disposed:
            return  # computed for parameters this session no longer shows
        self._job_token = self._job_params = None
        if not set(int(e) for e in result["epoch"].values) <= set(self.run.epochs):
            self.run = self.run.grown() or self.run  # the job saw epochs recorded since this session looked
        # the status first: a "computing..." alert bound to it goes when the plots replace it, and a
        # pane updated after its model went raises in Panel (KeyError in Pane._update_object)
        self.param.update(progress=None, status="computed and cached")
        self.show_embedding(result)
        if [int(e) for e in result["epoch"].values] != self.run.epochs:
            self._request()  # the run grew while it was being reduced

    def _on_failed(self, params, message: str) -> None:
        if params != self.reduce_params or self._disposed:
            return
        self._job_token = self._job_params = None
        self._fail(f"reduce failed: {message}")

    def _fail(self, message: str) -> None:
        self.param.update(progress=None, status=message, error=message if self.scene is None else "")

    def show_embedding(self, embedding: xr.DataArray) -> None:
        """Show ``embedding`` (computed for this run) in every view."""
        scene = _scene(self.run, embedding)
        epochs = scene.epochs
        self.param.epoch.objects = epochs
        updates = {"embedding": embedding, "scene": scene, "error": ""}
        if self.epoch not in epochs:
            updates["epoch"] = epochs[_position(epochs, self.epoch)]
        self.param.update(**updates)
        self._update_live()

    # -- a run that is still being recorded -----------------------------------------------------
    def _run_grew(self, _epochs=None) -> None:
        if self._disposed:
            return
        grown = self.run.grown()
        if grown is not None:
            self.run = grown
            if self.scene is None:
                self.param.epoch.objects = list(grown.epochs)
            self._request()
        self._update_live()

    def _update_live(self) -> None:
        embedded = [] if self.scene is None else self.scene.epochs
        growing = self._watcher.growing(self.run.root) or len(embedded) < len(self.run.epochs)
        last = f"up to epoch {embedded[-1]}" if embedded else "none yet"
        self.live = f"live · epoch {self.run.epochs[-1]} recorded, {last} embedded" if growing else ""

    # -- selection and focus ----------------------------------------------------------------------
    @param.depends("selection", watch=True)
    def _bump_selection(self) -> None:
        # Streams and caches listen to this counter rather than to the array: arrays do not compare
        # to a single truth value.
        self.selection_version += 1

    def select(self, ids) -> None:
        """Select these sample ids (an empty set clears the selection)."""
        ids = np.unique(np.asarray(ids))
        self.selection = ids if ids.size else None

    def clear_selection(self, *_) -> None:
        self.selection = None

    def focus(self, sample: int | None) -> None:
        if sample != self.focused:
            self.focused = sample

    # -- lifetime ------------------------------------------------------------------------------------
    def dispose(self) -> None:
        """Leave the reduction this session waits for (cancelled if nobody else waits) and the watcher."""
        self._disposed = True
        self._leave_job()
        self._watcher.unwatch(self._watch_token)


def weak_hook(method: Callable, *args) -> Callable:
    """A HoloViews plot hook calling ``method(*args, plot, element)`` that does not keep ``method``'s view alive.

    HoloViews keeps an element's options, hooks included, in a tree on its global ``Store`` that it
    drops only once every element using it is collected. A hook bound to a view (``partial(self._keep,
    ...)``) keeps the view alive from there, and the view keeps its elements, the session's state,
    painters and Bokeh models: every closed session stayed in the server (issue 12, finding 10; in
    ``tests/test_session_release.py`` each closed session left its App, SessionState and views
    reachable from ``Store._custom_options`` through such a hook). Held weakly, the view goes with
    its session, then its elements, and then HoloViews drops the options tree itself.
    """
    ref = weakref.WeakMethod(method)

    def hook(*more):
        bound = ref()
        if bound is not None:
            bound(*args, *more)

    return hook


def _describe_job(params: ReduceParams) -> str:
    label = ReduceParams.LABELS[params.method]
    if params.method == "pca":
        return f"computing {label}…"
    if params.method == "tsne":  # min_dist is a UMAP parameter
        return f"computing {label} (n_neighbors={params.n_neighbors})…"
    return f"computing {label} (n_neighbors={params.n_neighbors}, min_dist={params.min_dist})…"


def _position(epochs: list[int], epoch: int) -> int:
    """Index of the last of ``epochs`` not after ``epoch`` (0 when all are after it)."""
    return max(0, int(np.searchsorted(epochs, epoch, side="right")) - 1)
