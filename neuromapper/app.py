"""The dashboard: a ``pn.viewable.Viewer`` whose parameters are the widgets.

:class:`NeuroMapper` shows one plot per chosen layer side by side, an epoch player, class
toggles, colour-by and misclassification filters, reduce controls, linked selection, hover and
trajectories. The same object renders in a notebook (``NeuroMapper(run)``), in ``panel serve``
(``NeuroMapper(run).template().servable()``) and in ``neuromapper serve``.

Design (the parts that are hard to undo, and why):

* **Parameters are the public state.** ``epoch``, ``layers``, ``classes``, ``color_by``,
  ``show``, ``trajectories``, the reduce parameters and ``selection`` (sample ids) are
  ``param`` parameters; widgets are made from them per instance, so two browser sessions never
  share state, and a notebook user reads or sets the same parameters from Python.
* **HoloViews composes, the scene renders.** Each layer is an ``hv.DynamicMap`` driven by a
  ``Params`` stream on the view state and a ``RangeXY`` stream (zoom re-rasterizes the visible
  range). The images come from :class:`neuromapper.scene.EmbeddingScene`, which keeps per-epoch
  coordinates in ready arrays and rasterizes all layers in parallel when the state changes;
  HoloViews' own ``rasterize`` would re-aggregate through a DataFrame per layer and step, several
  times slower at a million points (see :mod:`neuromapper.raster` and
  ``benchmarks/bench_dashboard.py``). The first layer callback after a state change renders all
  layers at once; the others find their image ready.
* **The next epoch is rendered ahead.** After each step, the pictures of the epoch the player
  goes to next (its direction and loop policy) are rendered in a background thread while the
  browser paints the current ones, so a step is a hand-over of ready pictures. Rendering four
  layers of a million points takes about as long as the rest of a step together; on two cores
  it cannot hide inside the step itself. A jump, a turn or any other change renders as before.
* **Linked selection by sample id.** ``hv.link_selections`` needs each plot to be an element
  over a shared dataset that it re-filters per step, which is exactly the per-step DataFrame
  work the scene avoids. Instead, ``BoundsXY`` and ``Lasso`` streams on every layer turn a box or
  lasso into the sample ids under it at the current epoch; every layer then draws those samples
  in colour over a grey backdrop, and the selection persists across epochs because it is a set
  of ids, not of positions.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend for HoloViews
import numpy as np
import pandas as pd
import panel as pn
import param
import xarray as xr
from panel.io import hold, with_lock

from . import plots, raster
from .scene import COLOR_BY, SHOW, EmbeddingScene, ViewState, class_palette
from .store import json_attr, open_run

TRAJECTORIES = ("off", "class centroids", "selection")
# Scenes are read-only, so the sessions showing one embedding share its coordinates (8 bytes per
# point, layer and epoch: 3.2 GB at 10 million points); a scene goes when its last session does.
_SCENES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
PER_CLASS = ("all", "25", "50", "100", "200", "500", "1000")
MAX_SAMPLE_PATHS = 200
HOVER_RADIUS_PX = 6


class EpochPlayer(pn.widgets.DiscretePlayer):
    """The epoch player, without Panel's 50 ms wait for more changes before a step is handled.

    Panel holds a widget change for ``_debounce`` ms so that a burst of changes is handled once;
    a player step is a single change and a step's whole budget is 250 ms, so it goes at once.
    Panel runs such an undebounced change without the document lock unless its coroutine is
    marked ``with_lock``; the step's watchers change Bokeh models directly (the images, the
    curve marker), which Bokeh allows only under that lock. A step also does not flip the page's
    busy indicator on and off: for a change this short that cost more server time than pushing
    the four new pictures (py-spy profile, summarised in ``benchmarks/RESULTS-dashboard.md``).
    """

    _priority_changes = ["value"]
    _busy__ignore = ["value", "value_throttled"]

    @with_lock
    async def _change_coroutine(self, doc, event_id=None) -> None:
        await super()._change_coroutine(doc, event_id)


def _reduction():
    """The reduce stage, imported when needed (it pulls in umap-learn and numba)."""
    from . import reduce as reduction

    return reduction


class NeuroMapper(pn.viewable.Viewer):
    """Explore a recorded run: aligned embeddings per layer, epoch by epoch.

    Parameters
    ----------
    run
        A run directory or a Dataset from :func:`neuromapper.open_run`.
    embedding
        A DataArray from :func:`neuromapper.reduce`; by default the newest stored embedding of
        the run, computed in the background if there is none.
    """

    epoch = param.Selector(objects=[0], doc="Epoch shown by every layer plot.")
    layers = param.ListSelector(default=[], objects=[], doc="Layers shown side by side.")
    classes = param.ListSelector(default=[], objects=[], doc="Visible true classes.")
    color_by = param.Selector(default=COLOR_BY[0], objects=list(COLOR_BY))
    show = param.Selector(default=SHOW[0], objects=list(SHOW))
    trajectories = param.Selector(default=TRAJECTORIES[0], objects=list(TRAJECTORIES))
    method = param.Selector(default=None, objects=[None], allow_None=True, doc="Reduction method.")
    n_neighbors = param.Integer(default=15, bounds=(2, 200))
    min_dist = param.Number(default=0.1, bounds=(0.0, 0.99), step=0.05)
    per_class = param.Selector(default="all", objects=list(PER_CLASS), doc="Samples per class to embed.")
    selection = param.Array(default=None, allow_None=True, doc="Selected sample ids (the run's sample coordinate).")
    hovered = param.Integer(default=None, allow_None=True, doc="Sample id under the mouse.")
    status = param.String(default="", doc="What the reduce controls are doing.")
    scene_version = param.Integer(default=0, precedence=-1, doc="Bumped when a new embedding is shown.")
    selection_version = param.Integer(default=0, precedence=-1, doc="Bumped when the selection changes.")
    paths_version = param.Integer(default=0, precedence=-1, doc="Bumped when trajectories must be redrawn.")

    def __init__(self, run, embedding: xr.DataArray | None = None, **params):
        self.run = run if isinstance(run, xr.Dataset) else open_run(run)
        self.run_path = Path(self.run.attrs["path"])
        self.class_names = [str(c) for c in self.run["class"].values]
        self._labels_all = self.run["label"].values
        self._sample_ids_all = np.asarray(self.run["sample"].values)
        self._predictions_all = self.run["prediction"].values
        self._loss_all = self.run["loss"].values
        self._images = self.run["image"] if "image" in self.run else None
        super().__init__(**params)
        self.scene: EmbeddingScene | None = None
        self._render_lock = threading.Lock()
        self._rendered_key = None
        # The pictures of the next epoch in the player's direction, rendered while the browser
        # paints the current one: (view key, future of (coloring, {layer: (frame, rgba)})).
        self._ahead: tuple[tuple, Future] | None = None
        self._ahead_pool: ThreadPoolExecutor | None = None
        self._direction = 1
        self._shown_epoch_index: int | None = None
        self._rendered: dict[str, tuple[raster.Frame, np.ndarray]] = {}
        self._frames: dict[str, raster.Frame] = {}
        self._coloring_cache: tuple | None = None
        self._selected_mask_cache: tuple | None = None
        self._job: tuple[threading.Thread, threading.Event] | None = None
        self._doc = None
        self._paths_drawn = False
        self._hovered_cache: tuple = (None, None, None)  # (sample id, scene version, index)
        # Bokeh data sources of each layer's image and hover ring, per displayed copy, captured by
        # plot hooks so that player steps update them directly (see the module docstring).
        self._sources: dict[tuple[str, str], dict[int, object]] = {}
        self._markers: dict[int, object] = {}
        self._build_widgets()
        reduction = _reduction()
        self.param.method.objects = list(reduction.METHODS)
        if embedding is None:
            stored = reduction.list_embeddings(self.run_path)
            if stored:
                embedding = reduction.load_embedding(self.run_path, stored[-1]["key"])
        self._request_guard = True
        if embedding is not None:
            self._show_embedding(embedding)
            self._apply_params_of(embedding)
            self._request_guard = False
        else:
            self.method = reduction.DEFAULT_METHOD
            self._request_guard = False
            self._request_embedding()

    # -- embeddings ----------------------------------------------------------------------------
    def _apply_params_of(self, embedding: xr.DataArray) -> None:
        params = json.loads(embedding.attrs.get("params", "{}"))
        per_class = params.get("per_class")
        self.param.update(
            method=embedding.attrs.get("method", self.method),
            n_neighbors=int(params.get("n_neighbors", self.n_neighbors)),
            min_dist=float(params.get("min_dist", self.min_dist)),
            per_class="all" if per_class in (None, "all") else str(per_class),
        )

    def _show_embedding(self, embedding: xr.DataArray) -> None:
        """Build the scene for ``embedding`` and point every control at it."""
        position = pd.Index(self._sample_ids_all).get_indexer(embedding["sample"].values)
        if (position < 0).any():
            raise ValueError("embedding: its samples are not all in this run (was it computed for another run?)")
        key = (str(self.run_path), embedding.attrs.get("key") or id(embedding), embedding.attrs.get("created"))
        scene = _SCENES.get(key)
        if scene is None:
            run_epochs = [int(e) for e in self.run["epoch"].values]
            epoch_index = [run_epochs.index(int(e)) for e in embedding["epoch"].values]
            scene = EmbeddingScene(
                embedding,
                labels=self._labels_all[position],
                predictions=self._predictions_all[np.ix_(epoch_index, position)],
                loss=self._loss_all[np.ix_(epoch_index, position)],
                class_names=self.class_names,
            )
            _SCENES[key] = scene
        self.scene = scene
        self._rendered_key = None
        self._frames = {}
        epochs = scene.epochs
        self.param.epoch.objects = epochs
        self.param.layers.objects = scene.layers
        self.param.classes.objects = self.class_names
        updates = {"scene_version": self.scene_version + 1}
        if self.epoch not in epochs:
            updates["epoch"] = epochs[0]
        if not self.layers or not set(self.layers) <= set(scene.layers):
            updates["layers"] = scene.layers[:4]
        if not self.classes:
            updates["classes"] = list(self.class_names)
        self._plot_cache.clear()  # axis ranges belong to the embedding: new plots for a new one
        self._sources = {}
        self.param.update(**updates)
        self._layout_layers()

    def _reduce_params(self) -> dict:
        return {
            "method": self.method,
            "n_neighbors": self.n_neighbors,
            "min_dist": self.min_dist,
            "per_class": None if self.per_class == "all" else int(self.per_class),
        }

    @param.depends("method", "n_neighbors", "min_dist", "per_class", watch=True)
    def _request_embedding(self) -> None:
        """Show the cached embedding for the reduce controls, or compute it in the background."""
        if self._request_guard:
            return
        reduction = _reduction()
        params = self._reduce_params()
        hit = reduction.find_embedding(self.run_path, **params)
        if self._job is not None:
            self._job[1].set()  # cancel the computation the user no longer wants
            self._job = None
        if hit is not None:
            self._show_embedding(hit)
            self.status = "cached: shown instantly"
            self._progress.visible = False
            return
        cancel = threading.Event()
        self._doc = pn.state.curdoc
        self._progress.value, self._progress.visible = 0, True
        self.status = f"computing {params['method']} (n_neighbors={params['n_neighbors']}, min_dist={params['min_dist']})…"
        thread = threading.Thread(target=self._compute, args=(params, cancel), daemon=True, name="neuromapper-reduce")
        self._job = (thread, cancel)
        thread.start()

    def _compute(self, params: dict, cancel: threading.Event) -> None:
        reduction = _reduction()

        def progress(done: int, total: int, message: str) -> None:
            if not cancel.is_set():
                self._on_session(self._set_progress, int(100 * done / max(total, 1)), message)

        try:
            result = reduction.reduce(self.run_path, **params, progress=progress, cancel=cancel)
        except reduction.ReductionCancelled:
            return
        except Exception as exc:  # shown to the user; the previous picture stays
            self._on_session(self._finish, None, f"reduce failed: {exc}")
            return
        if not cancel.is_set():
            self._on_session(self._finish, result, "computed and cached")

    def _on_session(self, fn, *args, doc=None) -> None:
        """Run ``fn`` on the session's event loop, holding its document lock.

        Background threads (reduce) and HoloViews stream callbacks (box, lasso, pointer) run
        outside the lock Bokeh requires for changing a document, so they hand their work over.
        Outside a server (a notebook, a script) ``fn`` runs at once.
        """
        doc = doc or self._doc
        if doc is not None and doc.session_context is not None:
            doc.add_next_tick_callback(partial(fn, *args))
        else:
            fn(*args)

    def _set_progress(self, value: int, message: str) -> None:
        self._progress.value = value
        self.status = message

    def _finish(self, result: xr.DataArray | None, message: str) -> None:
        if result is not None:
            self._show_embedding(result)
        self._progress.visible = False
        self.status = message
        self._job = None

    # -- state -> pictures -----------------------------------------------------------------
    def _state(self) -> ViewState:
        hidden = frozenset(set(self.class_names) - set(self.classes))
        return ViewState(
            epoch_index=self.scene.epochs.index(self.epoch),
            color_by=self.color_by,
            hidden_classes=hidden,
            show=self.show,
            selection_version=self.selection_version,
        )

    @param.depends("selection", watch=True)
    def _bump_selection(self) -> None:
        # Streams listen to this counter rather than to the array itself: HoloViews compares
        # stream contents, and arrays do not compare to a single truth value.
        self.selection_version += 1

    # A HoloViews stream event refreshes a layer's whole overlay, so the trajectories listen to
    # this counter, which moves with the epoch only while trajectories are shown.
    @param.depends("epoch", "trajectories", "selection_version", "classes", "show", watch=True)
    def _bump_paths(self) -> None:
        if self.trajectories != "off" or self._paths_drawn:
            self._paths_drawn = self.trajectories != "off"
            self.paths_version += 1

    def _keep_source(self, layer: str, kind: str, plot, element) -> None:
        """HoloViews plot hook: remember the Bokeh data source a layer's glyph draws from."""
        source = plot.handles.get("source")
        if source is not None:
            self._sources.setdefault((layer, kind), {})[id(source)] = source

    @param.depends("epoch", "color_by", "classes", "show", "selection_version", watch=True)
    def _push_images(self) -> None:
        """Render every shown layer for the new state and update their images in one go.

        This is the player's hot path: the images go straight into the Bokeh sources that
        HoloViews created, in one document update, instead of through a HoloViews refresh per
        layer (several times slower; see the module docstring).
        """
        if self.scene is None:
            return
        images = {layer: self.layer_image(layer, *self._visible_ranges(layer)) for layer in self.layers}
        with hold():  # one combined document patch for all layers
            for layer, (frame, rgba) in images.items():
                for source in self._sources.get((layer, "image"), {}).values():
                    source.data = plots.rgba_source_data(rgba, frame)
            self._push_ring()
        self._render_ahead()

    def _render_ahead(self) -> None:
        """Start rendering the next epoch in the player's direction in the background.

        A player step is then a look-up: the server's share of a step at a million points per
        layer drops from rendering four layers to handing over ready pictures. Anything that
        changes the picture other than the epoch (colours, classes, selection, zoom, another
        embedding) makes the key or frame differ, and the pictures are rendered afresh.
        """
        state = self._state()
        upcoming = self._upcoming_epoch_index(state.epoch_index)
        if upcoming is None:
            self._ahead = None
            return
        ahead = dataclasses.replace(state, epoch_index=upcoming)
        frames = {layer: self._shown_frame(layer) for layer in self.layers}
        scene, selected = self.scene, self.selected_mask()

        def render():
            # one layer after the other on this one thread: the other core stays free for the
            # browser painting the current step and the server sending it
            coloring = scene.coloring(ahead, selected)
            return coloring, {layer: (frame, scene.render(layer, upcoming, coloring, frame))
                              for layer, frame in frames.items()}

        if self._ahead_pool is None:
            self._ahead_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuromapper-ahead")
        self._ahead = ((ahead, self.scene_version), self._ahead_pool.submit(render))

    def _upcoming_epoch_index(self, index: int) -> int | None:
        """The epoch index the player goes to next, judged from its last step and loop policy."""
        n = len(self.scene.epochs)
        if self._shown_epoch_index is not None:
            delta = index - self._shown_epoch_index
            if delta in (1, 1 - n):  # a step forward, or a loop from the last epoch to the first
                self._direction = 1
            elif delta in (-1, n - 1):
                self._direction = -1
        self._shown_epoch_index = index
        upcoming = index + self._direction
        if 0 <= upcoming < n:
            return upcoming
        policy = self._player.loop_policy
        if policy == "loop" and n > 1:
            return upcoming % n
        if policy == "reflect" and n > 1:
            return index - self._direction
        return None

    def _take_ahead(self, key: tuple) -> dict:
        """The pictures rendered ahead for ``key`` (waiting for them if still running), else none."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != key:
            return {}
        coloring, images = ahead[1].result()
        self._coloring_cache = (key, coloring)
        return images

    @param.depends("hovered", watch=True)
    def _push_ring(self) -> None:
        """Move the hover ring to the hovered sample in every layer (or hide it)."""
        if self.scene is None:
            return
        for layer in self.layers:
            data = self._ring_data(layer)
            for source in self._sources.get((layer, "ring"), {}).values():
                source.data = data

    def _visible_ranges(self, layer: str):
        frame = self._frames.get(layer)
        return (frame.x_range, frame.y_range) if frame else (None, None)

    def selected_mask(self) -> np.ndarray | None:
        """Bool per embedded sample: is it selected? ``None`` when nothing is selected."""
        if self.selection is None:
            return None
        key = (self.selection_version, self.scene_version)
        if self._selected_mask_cache is None or self._selected_mask_cache[0] != key:
            self._selected_mask_cache = (key, np.isin(self.scene.samples, self.selection))
        return self._selected_mask_cache[1]

    def _coloring(self, state: ViewState):
        key = (state, self.scene_version)
        if self._coloring_cache is None or self._coloring_cache[0] != key:
            self._coloring_cache = (key, self.scene.coloring(state, self.selected_mask()))
        return self._coloring_cache[1]

    def _frame(self, layer: str, x_range, y_range) -> raster.Frame:
        if x_range is None or y_range is None:
            return self.scene.default_frame(layer, plots.LAYER_SIZE, plots.LAYER_SIZE)
        return raster.Frame(tuple(map(float, x_range)), tuple(map(float, y_range)), plots.LAYER_SIZE, plots.LAYER_SIZE)

    def _shown_frame(self, layer: str) -> raster.Frame:
        """The region ``layer`` shows now: its last zoom, or the whole embedding."""
        return self._frames.get(layer) or self._frame(layer, None, None)

    def layer_image(self, layer: str, x_range=None, y_range=None) -> tuple[raster.Frame, np.ndarray]:
        """The current RGBA picture of ``layer`` (rendering every shown layer if the state changed)."""
        frame = self._frame(layer, x_range, y_range)
        with self._render_lock:
            self._frames[layer] = frame
            state = self._state()
            key = (state, self.scene_version)
            if key != self._rendered_key:
                self._rendered_key, self._rendered = key, self._take_ahead(key)
            if layer not in self._rendered or self._rendered[layer][0] != frame:
                todo = {
                    name: self._shown_frame(name)
                    for name in self.layers + [layer]
                    if name not in self._rendered or self._rendered[name][0] != self._frames.get(name)
                }
                todo[layer] = frame
                images = self.scene.render_layers(todo, state.epoch_index, self._coloring(state))
                self._rendered.update({name: (todo[name], images[name]) for name in todo})
            return self._rendered[layer]

    def _layer_element(self, layer: str, x_range=None, y_range=None, **_):
        frame, rgba = self.layer_image(layer, x_range, y_range)
        return plots.layer_image(rgba, frame)

    def _trajectory_element(self, layer: str, **_):
        scene = self.scene
        if self.trajectories == "off" or layer not in scene.layers:
            return plots.trajectories({}, {})
        state = self._state()
        keep = scene.visible(state)
        if self.trajectories == "class centroids":
            return plots.trajectories(scene.centroid_paths(layer, state.epoch_index, keep), scene.palette)
        mask = self.selected_mask()
        if mask is None:
            return plots.trajectories({}, {})
        members = np.flatnonzero(mask & keep)
        if members.size > MAX_SAMPLE_PATHS:  # a readable sample of a large selection
            members = np.sort(np.random.default_rng(0).choice(members, MAX_SAMPLE_PATHS, replace=False))
        paths = scene.sample_paths(layer, state.epoch_index, members)
        names = [str(scene.samples[m]) for m in members]
        colors = {n: scene.palette[self.class_names[scene.labels[m]]] for n, m in zip(names, members)}
        return plots.trajectories(dict(zip(names, paths)), colors)

    def _ring_position(self, layer: str) -> tuple[float | None, float | None]:
        index = self._hovered_index()
        if index is None or layer not in self.scene.layers:
            return None, None
        e = self.scene.epochs.index(self.epoch)
        return float(self.scene.xs[layer][e, index]), float(self.scene.ys[layer][e, index])

    def _ring_data(self, layer: str) -> dict:
        x, y = self._ring_position(layer)
        return {"x": [] if x is None else [x], "y": [] if y is None else [y]}

    def _marker_element(self, layer: str, **_):
        return plots.marker(*self._ring_position(layer))

    def _hovered_index(self) -> int | None:
        """Position of the hovered sample in the scene (remembered from the pick: 10M samples cost a scan)."""
        if self.hovered is None:
            return None
        if self._hovered_cache[:2] != (self.hovered, self.scene_version):
            found = np.flatnonzero(self.scene.samples == self.hovered)
            self._hovered_cache = (self.hovered, self.scene_version, int(found[0]) if found.size else None)
        return self._hovered_cache[2]

    # -- interactions ------------------------------------------------------------------------
    def _select_indices(self, indices: np.ndarray) -> None:
        self.selection = np.asarray(self.scene.samples[indices]) if len(indices) else None

    def select_box(self, layer: str, bounds: tuple[float, float, float, float]) -> np.ndarray:
        """Select the samples inside ``(x0, y0, x1, y1)`` of ``layer`` at the current epoch."""
        state = self._state()
        self._select_indices(self.scene.inside_box(layer, state.epoch_index, bounds, self.scene.visible(state)))
        return self.selection

    def select_lasso(self, layer: str, polygon) -> np.ndarray:
        """Select the samples inside a lasso polygon (``(k, 2)`` vertices) of ``layer``."""
        state = self._state()
        polygon = np.asarray(polygon, dtype=float)
        self._select_indices(self.scene.inside_polygon(layer, state.epoch_index, polygon, self.scene.visible(state)))
        return self.selection

    def clear_selection(self, *_) -> None:
        self.selection = None

    def selected(self) -> pd.DataFrame:
        """The selected samples at the current epoch: id, true and predicted class, loss, positions."""
        mask = self.selected_mask()
        if mask is None:
            return pd.DataFrame(columns=["sample", "label", "prediction", "correct", "loss"])
        scene, e = self.scene, self.scene.epochs.index(self.epoch)
        idx = np.flatnonzero(mask)
        frame = pd.DataFrame({
            "sample": scene.samples[idx],
            "label": [self.class_names[i] for i in scene.labels[idx]],
            "prediction": [self.class_names[i] for i in scene.predictions[e, idx]],
            "correct": scene.correct[e, idx],
            "loss": scene.loss[e, idx],
        })
        for layer in self.layers:
            frame[f"{layer}_x"] = scene.xs[layer][e, idx]
            frame[f"{layer}_y"] = scene.ys[layer][e, idx]
        return frame

    def _on_box(self, layer: str, bounds=None, **_) -> None:
        if bounds is not None:
            self._on_session(self.select_box, layer, bounds, doc=pn.state.curdoc)

    def _on_lasso(self, layer: str, geometry=None, **_) -> None:
        if geometry is not None and len(geometry) > 2:
            self._on_session(self.select_lasso, layer, geometry, doc=pn.state.curdoc)

    def _on_pointer(self, layer: str, x=None, y=None, **_) -> None:
        self._on_session(self._hover_at, layer, x, y, doc=pn.state.curdoc)

    def _hover_at(self, layer: str, x, y) -> None:
        if x is None or y is None or self.scene is None or layer not in self.scene.layers:
            return
        frame = self._shown_frame(layer)
        radius = (
            HOVER_RADIUS_PX * (frame.x_range[1] - frame.x_range[0]) / frame.width,
            HOVER_RADIUS_PX * (frame.y_range[1] - frame.y_range[0]) / frame.height,
        )
        state = self._state()
        index = self.scene.pick(layer, state.epoch_index, x, y, radius, self._coloring(state).codes)
        sample = None if index is None else int(self.scene.samples[index])
        self._hovered_cache = (sample, self.scene_version, index)
        if sample != self.hovered:
            self.hovered = sample

    # -- widgets and layout ---------------------------------------------------------------------
    def _build_widgets(self) -> None:
        self._player = EpochPlayer.from_param(
            self.param.epoch, interval=700, loop_policy="loop", show_loop_controls=True, sizing_mode="stretch_width",
        )
        self._speed = pn.widgets.IntSlider(label="frame interval (ms)", start=100, end=2000, step=100, value=700)
        self._speed.jslink(self._player, value="interval")
        self._progress = pn.indicators.Progress(value=0, max=100, visible=False, sizing_mode="stretch_width")
        self._class_buttons = pn.widgets.CheckButtonGroup.from_param(
            self.param.classes, color="light", variant="solid", sizing_mode="stretch_width",
            stylesheets=[self._class_button_css()],
        )
        self._all = pn.widgets.Button(label="all", color="light", width=60)
        self._none = pn.widgets.Button(label="none", color="light", width=60)
        self._all.on_click(lambda _: setattr(self, "classes", list(self.class_names)))
        self._none.on_click(lambda _: setattr(self, "classes", []))
        self._clear = pn.widgets.Button(label="clear selection", color="light")
        self._clear.on_click(self.clear_selection)
        self._main = pn.FlexBox(sizing_mode="stretch_width", gap="8px")
        self._plot_cache: dict[str, pn.viewable.Viewable] = {}

    def _class_button_css(self) -> str:
        """Each class button shows its class colour while the class is visible."""
        rules = [":host .bk-btn {padding: 4px 2px; min-width: 0; border-bottom: 4px solid transparent;}"]
        for i, color in enumerate(class_palette(self.class_names).values(), start=1):
            rules.append(f":host .bk-btn:nth-child({i}).bk-active {{border-bottom-color: {color};}}")
        return "\n".join(rules)

    @param.depends("layers", watch=True, on_init=False)
    def _layout_layers(self) -> None:
        if self.scene is None:
            self._main.objects = [pn.pane.HTML("<i>computing the first embedding of this run…</i>")]
        else:
            self._main.objects = [self._layer_panel(layer) for layer in self.layers]

    def _layer_panel(self, layer: str):
        if layer in self._plot_cache:
            return self._plot_cache[layer]
        # memoize=False: when the overlay refreshes (zoom, trajectories), HoloViews asks each part
        # again and gets the current state, which player steps may have changed behind its back.
        image = hv.DynamicMap(hv.core.spaces.Callable(partial(self._layer_element, layer), memoize=False),
                              streams=[hv.streams.RangeXY()])
        box = hv.streams.BoundsXY(source=image)
        box.add_subscriber(partial(self._on_box, layer))
        lasso = hv.streams.Lasso(source=image)
        lasso.add_subscriber(partial(self._on_lasso, layer))
        pointer = hv.streams.PointerXY(source=image)
        pointer.add_subscriber(partial(self._on_pointer, layer))
        paths = hv.DynamicMap(
            partial(self._trajectory_element, layer),
            streams=[hv.streams.Params(self, parameters=["paths_version"])],
        )
        ring = hv.DynamicMap(hv.core.spaces.Callable(partial(self._marker_element, layer), memoize=False)).opts(
            hooks=[partial(self._keep_source, layer, "ring")])
        x_range, y_range = self.scene.bounds[layer]
        image = image.opts(**plots.layer_options(layer, x_range, y_range),
                           hooks=[partial(self._keep_source, layer, "image")])
        overlay = (image * paths * ring).opts(show_legend=False)
        pane = pn.pane.HoloViews(overlay, linked_axes=False, sizing_mode="fixed", css_classes=["nm-layer"])
        quality = pn.pane.HTML(
            pn.bind(self._quality_html, layer, self.param.epoch, self.param.scene_version),
            width=plots.LAYER_SIZE, margin=(0, 10),
        )
        panel = pn.Column(pane, quality, margin=0, name=layer)
        self._plot_cache[layer] = panel
        return panel

    def _quality_html(self, layer: str, epoch: int, _version: int) -> str:
        emb = self.scene.embedding
        params = json.loads(emb.attrs.get("params", "{}"))
        quality, key = self.scene.quality, (epoch, layer)
        parts = [f"<b>{emb.attrs.get('method', '?')}</b> n_neighbors={params.get('n_neighbors')} "
                 f"min_dist={params.get('min_dist')}"]
        if "trustworthiness" in quality:
            parts.append(f"trustworthiness {quality['trustworthiness'][key]:.3f}")
        if "disparity" in quality:
            d = quality["disparity"][key]
            parts.append("disparity –" if np.isnan(d) else f"disparity {d:.3f}")
        unplaced = int(quality["unplaced"][key]) if "unplaced" in quality else 0
        parts.append(f"<span style='color:{'#c0392b' if unplaced else '#777'}'>{unplaced} unplaced</span>")
        return "<div class='nm-quality' style='font-size:12px;color:#444'>" + " · ".join(parts) + "</div>"

    def _legend_html(self, *_) -> str:
        if self.scene is None:
            return ""
        coloring = self._coloring(self._state())
        drawn = int(coloring.counts.sum())
        named = dict(zip(coloring.legend, coloring.counts)) if coloring.values is None else None
        selected = "" if coloring.selected is None else f" · {int(coloring.selected.sum()):,} selected"
        return (f"{plots.legend_html(coloring.legend, named)}<div style='font-size:12px;color:#666'>{drawn:,} of "
                f"{len(self.scene):,} samples drawn at epoch {self.epoch}{selected}</div>")

    def _card_html(self, *_) -> str:
        index = None if self.scene is None else self._hovered_index()
        if index is None:
            return "<i style='color:#777'>hover over a point to see its sample</i>"
        scene, e = self.scene, self.scene.epochs.index(self.epoch)
        label = self.class_names[scene.labels[index]]
        predicted = self.class_names[scene.predictions[e, index]]
        verdict = "correct" if label == predicted else "wrong"
        return (f"<div class='nm-card'><b>sample {int(scene.samples[index])}</b><br>true: <b>{label}</b><br>"
                f"predicted: <b>{predicted}</b> ({verdict}, epoch {self.epoch})<br>loss {scene.loss[e, index]:.3f}</div>")

    def _card_thumbnail(self, *_) -> bytes | None:
        index = None if self.scene is None or self._images is None else self._hovered_index()
        if index is None:
            return None
        return plots.thumbnail_png(self._images.sel(sample=int(self.scene.samples[index])).values)

    def _sample_card(self) -> pn.Row:
        # Persistent panes whose objects are bound: updating them is cheap, whereas returning new
        # panes from a depends-method makes Panel rebuild and re-link the document each time.
        refs = (self.param.hovered, self.param.epoch)
        return pn.Row(
            pn.pane.PNG(pn.bind(self._card_thumbnail, *refs), width=112, height=112,
                        visible=pn.bind(lambda hovered: hovered is not None, self.param.hovered)),
            pn.pane.HTML(pn.bind(self._card_html, *refs), css_classes=["nm-card"]),
        )

    def _curves(self):
        epochs = [int(e) for e in self.run["epoch"].values]
        series = {}
        if "metric" in self.run:
            for name in self.run["metric_name"].values:
                values = self.run["metric"].sel(metric_name=name).values
                if np.isfinite(values).any():
                    series[str(name)] = values
        series["probe accuracy"] = (self._predictions_all == self._labels_all[None, :]).mean(axis=1)
        series["probe loss"] = np.nanmean(self._loss_all, axis=1)
        marker = plots.epoch_marker(self.epoch).opts(hooks=[self._keep_marker])
        return pn.pane.HoloViews(plots.training_curves(epochs, series, marker), sizing_mode="stretch_width")

    def _keep_marker(self, plot, element) -> None:
        self._markers[id(plot.handles["glyph"])] = plot.handles["glyph"]

    @param.depends("epoch", watch=True)
    def _move_marker(self) -> None:
        """Move the epoch line on the training curves (a Bokeh ``Span``) without a HoloViews refresh."""
        for span in self._markers.values():
            span.location = self.epoch

    def _run_info(self) -> str:
        model = json_attr(self.run, "model")
        final = float((self._predictions_all[-1] == self._labels_all).mean())
        epochs = self.run["epoch"].values
        return (
            f"**{self.run_path.name}** · {self.run.attrs.get('dataset', 'dataset?')}  \n"
            f"{model.get('class', '?').rsplit('.', 1)[-1]} ({model.get('parameters', 0):,} parameters)  \n"
            f"epochs {int(epochs[0])}–{int(epochs[-1])} · {len(self._labels_all):,} probe samples  \n"
            f"final probe accuracy **{final:.1%}**"
        )

    def controls(self) -> pn.Column:
        """The sidebar: run facts, player, filters, reduce controls, selection and hover card."""
        reduce_widgets = pn.Param(
            self.param,
            parameters=["method", "n_neighbors", "min_dist", "per_class"],
            widgets={
                "n_neighbors": {"type": pn.widgets.IntSlider, "throttled": True},
                "min_dist": {"type": pn.widgets.FloatSlider, "throttled": True, "step": 0.05},
                "per_class": {"type": pn.widgets.Select, "name": "samples per class"},
            },
            show_name=False,
            sizing_mode="stretch_width",
        )
        def heading(text: str) -> pn.pane.Markdown:
            return pn.pane.Markdown(text, margin=(8, 10, 0, 10))

        return pn.Column(
            pn.pane.Markdown(self._run_info(), css_classes=["nm-run-info"]),
            self._player,
            self._speed,
            pn.widgets.MultiChoice.from_param(self.param.layers, label="layers side by side"),
            heading("**classes**"),
            self._class_buttons,
            pn.Row(self._all, self._none),
            pn.widgets.Select.from_param(self.param.color_by, label="colour by"),
            heading("**show** · flipped = learned or forgotten since the previous epoch"),
            pn.widgets.RadioButtonGroup.from_param(self.param.show, color="light"),
            heading("**trajectories** across epochs"),
            pn.widgets.RadioButtonGroup.from_param(self.param.trajectories, color="light"),
            pn.layout.Divider(),
            heading("**embedding** · recomputed in the background when changed, cached"),
            reduce_widgets,
            self._progress,
            pn.pane.Markdown(self.param.status, css_classes=["nm-status"]),
            pn.layout.Divider(),
            heading("**selection** (box or lasso in any layer) and **hovered sample**"),
            self._clear,
            self._sample_card(),
            sizing_mode="stretch_width",
        )

    def main(self) -> pn.Column:
        """The main area: legend, one plot per layer side by side, training curves."""
        if not self._main.objects:
            self._layout_layers()
        legend = pn.pane.HTML(
            pn.bind(self._legend_html, self.param.color_by, self.param.show, self.param.epoch, self.param.classes,
                    self.param.selection_version, self.param.scene_version),
            sizing_mode="stretch_width",
        )
        return pn.Column(legend, self._main, self._curves(), sizing_mode="stretch_width")

    def __panel__(self):
        return pn.Row(pn.Column(self.controls(), width=320), self.main(), sizing_mode="stretch_width")

    def template(self, title: str = "NeuroMapper") -> pn.template.BootstrapTemplate:
        """The dashboard page for ``panel serve``: controls in the sidebar, plots in the main area.

        Bootstrap rather than FastListTemplate: the Fast design always links a Google Fonts
        stylesheet, which fails (and logs console errors) on an offline machine.
        """
        return pn.template.BootstrapTemplate(
            title=f"{title} · {self.run_path.name}",
            sidebar=[self.controls()],
            main=[self.main()],
            sidebar_width=340,
            header_background="#4c78a8",
        )
