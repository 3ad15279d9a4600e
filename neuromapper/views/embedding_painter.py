"""The Embeddings page's pictures from the session state: plain Python, testable without Panel.

:class:`EmbeddingPainter` turns a :class:`~neuromapper.views.state.SessionState` and the page's
own options (layers, colour, filter, trajectories) into what the page draws: one RGBA picture
per layer (trajectories drawn into it), the hover ring's position, the legend, the quality
line and the sample card; and it turns a box, a lasso or a pointer into sample ids in the state.
The Viewer in :mod:`neuromapper.views.embedding` only wires widgets and Bokeh sources to it.

Design (hard to undo, so the reasons are here):

* **The next epoch is rendered ahead.** After each step the pictures of the epoch the player
  goes to next (its direction and loop policy) are rendered on one background thread while the
  browser paints the current ones, so a step is a hand-over of ready pictures. Rendering four
  layers of a million points takes about as long as the rest of a step; on two cores it cannot
  hide inside the step. A jump, a turn or any other change renders afresh. One thread, not two:
  the other core stays free for the browser (A/B in ``benchmarks/RESULTS-dashboard.md``).
* **Trajectories are drawn into the picture** (:meth:`EmbeddingScene.draw_paths`), one segment
  per sample and epoch step, older steps fading: a selection of a thousand samples costs a
  compiled pass over ten thousand segments, not a thousand Bokeh glyphs (which took 9-72 s per
  step), and the points stay visible under the paths.
* **Linked selection by sample id** (see :mod:`neuromapper.views.state`): ``hv.link_selections``
  needs each plot to be an element over a shared dataset that it re-filters per step, exactly
  the per-step DataFrame work the scene avoids.
"""

from __future__ import annotations

import dataclasses
import html
import json
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
import param

from .. import plots, raster, twins
from ..scene import ACTIVATION_COLORS, COLOR_BY, SHOW, ViewState
from .state import SessionState

TRAJECTORIES = ("off", "class centroids", "selection")
MAX_SAMPLE_PATHS = 2000
HOVER_RADIUS_PX = 6
LOOP_POLICIES = ("once", "loop", "reflect")
ATTACK_ARROWS = ("off", "fooled", "all")
NOT_FOOLED_COLOR = "#7f7f7f"
ARROW_HEAD_PX = 7


def _draw_paths(paths: tuple, rgba: np.ndarray, layer: str, epoch_index: int, frame) -> np.ndarray:
    """Draw the trajectories ``paths`` (from :meth:`EmbeddingPainter._paths_of`) into one picture."""
    kind, scene, which = paths
    if kind == "off" or epoch_index == 0:
        return rgba
    if kind == "class centroids":
        rgb = raster.hex_to_rgb([scene.palette[scene.class_names[c]] for c in which])
        return scene.draw_paths(rgba, frame, scene.centroids(layer)[: epoch_index + 1][:, which], rgb)
    if which.size == 0:
        return rgba
    rgb = raster.hex_to_rgb(list(scene.palette.values()))[scene.labels[which]]
    return scene.draw_paths(rgba, frame, scene.sample_paths(layer, epoch_index, which), rgb)


class EmbeddingPainter(param.Parameterized):
    """The Embeddings page's options and the pictures they give (see the module docstring)."""

    layers = param.ListSelector(default=[], objects=[], doc="Layers shown side by side.")
    color_by = param.Selector(default=COLOR_BY[0], objects=list(COLOR_BY))
    show = param.Selector(default=SHOW[0], objects=list(SHOW))
    trajectories = param.Selector(default=TRAJECTORIES[0], objects=list(TRAJECTORIES))
    attack_arrows = param.Selector(default="fooled", objects=list(ATTACK_ARROWS),
                                   doc="Arrows from each benign image to its attacked twin (fooled ones or all).")
    loop_policy = param.Selector(default="loop", objects=list(LOOP_POLICIES), doc="What the player does at the end.")
    size = param.Integer(default=plots.LAYER_SIZE, bounds=(64, 2048),
                         doc="Raster pixels per layer side until the plot reports its own size.")

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self._lock = threading.Lock()
        self._rendered_key = None
        self._rendered: dict[str, tuple[raster.Frame, np.ndarray]] = {}
        self._frames: dict[str, raster.Frame] = {}
        self._sizes: dict[str, tuple[int, int]] = {}  # each plot's drawing area in screen pixels
        self._coloring_cache: tuple | None = None
        self._mask_cache: tuple | None = None
        self._ahead: tuple[tuple, Future] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._direction = 1
        self._shown_epoch_index: int | None = None
        self._focused_cache: tuple = (None, None, None)
        self._arrow_cache: dict[tuple, tuple] = {}
        state.param.watch(self._scene_changed, "scene")
        self._scene_changed()

    # -- the scene -------------------------------------------------------------------------------
    @property
    def scene(self):
        return self.state.scene

    def _scene_changed(self, *_) -> None:
        scene = self.scene
        if scene is None:
            return
        self.param.layers.objects = scene.layers
        self._frames = {}  # zoom belongs to an embedding's coordinates
        if not self.layers or not set(self.layers) <= set(scene.layers):
            self.layers = scene.layers[:4]

    # -- state -> pictures -----------------------------------------------------------------------
    def view_state(self) -> ViewState:
        state = self.state
        return ViewState(
            epoch_index=self.scene.epochs.index(state.epoch),
            color_by=self.color_by,
            hidden_classes=frozenset(set(state.run.class_names) - set(state.classes)),
            show=self.show,
            selection_version=state.selection_version,
        )

    def _key(self, view: ViewState) -> tuple:
        return (view, id(self.scene), self.trajectories, self.attack_arrows)

    def selected_mask(self) -> np.ndarray | None:
        """Bool per embedded sample: is it selected? ``None`` when nothing is selected."""
        if self.state.selection is None:
            return None
        key = (self.state.selection_version, id(self.scene))
        if self._mask_cache is None or self._mask_cache[0] != key:
            self._mask_cache = (key, np.isin(self.scene.samples, self.state.selection))
        return self._mask_cache[1]

    def coloring(self, view: ViewState):
        key = (view, id(self.scene))
        if self._coloring_cache is None or self._coloring_cache[0] != key:
            self._coloring_cache = (key, self.scene.coloring(view, self.selected_mask()))
        return self._coloring_cache[1]

    def frame(self, layer: str, x_range=None, y_range=None) -> raster.Frame:
        """The raster of ``layer`` for a data range (default: the whole embedding) at the plot's pixel size.

        One raster pixel per screen pixel: a picture scaled down by the browser drops rows and
        columns of points (they look like dashes), one scaled up looks blurred.
        """
        width, height = self._sizes.get(layer, (self.size, self.size))
        if x_range is None or y_range is None:
            return self.scene.default_frame(layer, width, height)
        return raster.Frame(tuple(map(float, x_range)), tuple(map(float, y_range)), width, height)

    def set_size(self, layer: str, width, height) -> None:
        """The plot of ``layer`` is ``width`` x ``height`` screen pixels (from HoloViews' PlotSize).

        The plot's data frame is square and the plot's height includes its toolbar, so the frame's
        side is the smaller of the two: a raster of the full height would be squeezed into the
        frame and draw round points as dashes.
        """
        if width and height:
            lo, hi = self.param.size.bounds
            side = int(min(max(min(width, height), lo), hi))
            self._sizes[layer] = (side, side)

    def shown_frame(self, layer: str) -> raster.Frame:
        """The region ``layer`` shows now: its last zoom, or the whole embedding."""
        return self._frames.get(layer) or self.frame(layer)

    def _render_all(self, frames: dict[str, raster.Frame], epoch_index: int, coloring, view) -> dict:
        images = self.scene.render_layers(frames, epoch_index, coloring)
        paths = self._paths_of(view)
        arrows = (self.attack_arrows, self.scene)
        return {layer: self._draw_arrows(arrows, _draw_paths(paths, images[layer], layer, epoch_index, frames[layer]),
                                         layer, epoch_index, frames[layer]) for layer in frames}

    def twin_arrows(self, layer: str, epoch_index: int, scene=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(benign xy, twin xy, fooled)`` of every attacked twin at ``layer`` and epoch, in the layout.

        Both ends are placed by :func:`neuromapper.twins.place` from the embedded probe samples'
        activations at that layer and epoch (a benign image that is itself embedded lands on its
        own point); NaN where a twin was not recorded at that epoch.
        """
        scene = scene or self.scene
        run = self.state.run
        key = (id(scene), id(run), layer, epoch_index)
        cached = self._arrow_cache.get(key)
        if cached is not None:
            return cached
        made_from = run.twin_sources
        attacked = np.flatnonzero(made_from >= 0)
        epoch = scene.epochs[epoch_index]
        if not len(attacked) or "twin_activation" not in run.ds or epoch not in run.epochs:
            empty = np.zeros((0, 2))
            return empty, empty, np.zeros(0, bool)
        row_of = {int(s): i for i, s in enumerate(run.samples)}
        embedded = np.array([row_of[int(s)] for s in scene.samples])
        reference = run.activations(layer, epoch)[embedded]
        xy = np.column_stack([scene.xs[layer][epoch_index], scene.ys[layer][epoch_index]])
        sources = np.array([row_of[int(made_from[i])] for i in attacked])
        start = twins.place(run.activations(layer, epoch)[sources], reference, xy)
        end = twins.place(run.twin_activations(layer, epoch)[attacked], reference, xy)
        fooled = run.twin_values("twin_fooled", epoch)[attacked] == 1
        self._arrow_cache[key] = result = (start, end, fooled)
        return result

    def _draw_arrows(self, arrows: tuple, rgba: np.ndarray, layer: str, epoch_index: int, frame) -> np.ndarray:
        kind, scene = arrows
        if kind == "off" or scene is None:
            return rgba
        start, end, fooled = self.twin_arrows(layer, epoch_index, scene)
        keep = np.isfinite(start).all(axis=1) & np.isfinite(end).all(axis=1) & (fooled if kind == "fooled" else True)
        if not keep.any():
            return rgba
        start, end, fooled = start[keep], end[keep], fooled[keep]
        rgb = raster.hex_to_rgb([ACTIVATION_COLORS["attacked"], NOT_FOOLED_COLOR])[np.where(fooled, 0, 1)]
        head_a, head_b = raster.arrow_heads(start, end, frame, ARROW_HEAD_PX)
        segments = (np.vstack([start, end, end]), np.vstack([end, head_a, head_b]))
        colors = np.vstack([rgb, rgb, rgb])
        return raster.draw_segments(rgba, *segments, colors, np.full(len(colors), 230.0), frame)

    def _paths_of(self, view: ViewState) -> tuple:
        """What the trajectories of ``view`` are drawn from, fixed now: (kind, scene, hidden or members)."""
        scene = self.scene
        if self.trajectories == "class centroids":
            hidden = set(scene.class_codes(view.hidden_classes))
            return ("class centroids", scene, [c for c in range(len(scene.class_names)) if c not in hidden])
        if self.trajectories == "selection":
            return ("selection", scene, self.path_members(view))
        return ("off", scene, None)

    def layer_image(self, layer: str, x_range=None, y_range=None) -> tuple[raster.Frame, np.ndarray]:
        """The current RGBA picture of ``layer`` (rendering every shown layer if the state changed)."""
        frame = self.frame(layer, x_range, y_range)
        with self._lock:
            self._frames[layer] = frame
            view = self.view_state()
            key = self._key(view)
            if key != self._rendered_key:
                self._rendered_key, self._rendered = key, self._take_ahead(key)
            if layer not in self._rendered or self._rendered[layer][0] != frame:
                todo = {name: self.shown_frame(name) for name in [*self.layers, layer]
                        if name not in self._rendered or self._rendered[name][0] != self._frames.get(name)}
                todo[layer] = frame
                images = self._render_all(todo, view.epoch_index, self.coloring(view), view)
                self._rendered.update({name: (todo[name], images[name]) for name in todo})
            return self._rendered[layer]

    def images(self) -> dict[str, tuple[raster.Frame, np.ndarray]]:
        """Every shown layer's picture for the current state (the player's hot path)."""
        return {layer: self.layer_image(layer, *self._zoom(layer)) for layer in self.layers}

    def _zoom(self, layer: str):
        frame = self._frames.get(layer)
        return (frame.x_range, frame.y_range) if frame else (None, None)

    # -- rendering ahead ---------------------------------------------------------------------------
    def render_ahead(self) -> None:
        """Start rendering the next epoch in the player's direction in the background."""
        if self.scene is None:
            return
        view = self.view_state()
        upcoming = self.upcoming_epoch_index(view.epoch_index)
        if upcoming is None:
            self._ahead = None
            return
        ahead = dataclasses.replace(view, epoch_index=upcoming)
        frames = {layer: self.shown_frame(layer) for layer in self.layers}
        selected = self.selected_mask()
        scene = self.scene
        paths = self._paths_of(ahead)  # everything the thread uses is fixed here, not read later

        def render():
            # one layer after the other on this one thread: the other core stays free for the
            # browser painting the current step and the server sending it
            coloring = scene.coloring(ahead, selected)
            return coloring, {layer: (frame, _draw_paths(paths, scene.render(layer, upcoming, coloring, frame),
                                                         layer, upcoming, frame))
                              for layer, frame in frames.items()}

        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuromapper-ahead")
        self._ahead = (self._key(ahead), self._pool.submit(render))

    def upcoming_epoch_index(self, index: int) -> int | None:
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
        if self.loop_policy == "loop" and n > 1:
            return upcoming % n
        if self.loop_policy == "reflect" and n > 1:
            return index - self._direction
        return None

    def ahead_epoch_index(self) -> int | None:
        """The epoch index being rendered ahead, if any (for tests and benchmarks)."""
        return None if self._ahead is None else self._ahead[0][0].epoch_index

    def _take_ahead(self, key: tuple) -> dict:
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead[0] != key:
            return {}
        coloring, images = ahead[1].result()
        self._coloring_cache = ((key[0], key[1]), coloring)
        return images

    # -- trajectories ---------------------------------------------------------------------------------
    def path_members(self, view: ViewState) -> np.ndarray:
        """Indices of the selected, visible samples whose paths are drawn (a fixed sample of a huge one)."""
        mask = self.selected_mask()
        if mask is None:
            return np.zeros(0, dtype=np.intp)
        members = np.flatnonzero(mask & self.scene.visible(view))
        if members.size > MAX_SAMPLE_PATHS:  # beyond this the paths are a solid mass: a readable sample
            members = np.sort(np.random.default_rng(0).choice(members, MAX_SAMPLE_PATHS, replace=False))
        return members

    # -- selection and hover --------------------------------------------------------------------------
    def _select_indices(self, indices: np.ndarray) -> np.ndarray | None:
        self.state.select(self.scene.samples[indices])
        return self.state.selection

    def select_box(self, layer: str, bounds) -> np.ndarray | None:
        """Select the drawn samples inside ``(x0, y0, x1, y1)`` of ``layer`` at the current epoch."""
        view = self.view_state()
        return self._select_indices(self.scene.inside_box(layer, view.epoch_index, bounds, self.scene.visible(view)))

    def select_lasso(self, layer: str, polygon) -> np.ndarray | None:
        """Select the drawn samples inside a lasso polygon (``(k, 2)`` vertices) of ``layer``."""
        view = self.view_state()
        polygon = np.asarray(polygon, dtype=float)
        return self._select_indices(self.scene.inside_polygon(layer, view.epoch_index, polygon, self.scene.visible(view)))

    def hover_at(self, layer: str, x, y) -> None:
        """Focus the drawn sample nearest to ``(x, y)`` in ``layer`` (within a few pixels), or none."""
        if self.scene is None or layer not in self.scene.layers:
            return
        if x is None or y is None:
            self.state.focus(None)
            return
        frame = self.shown_frame(layer)
        radius = (HOVER_RADIUS_PX * (frame.x_range[1] - frame.x_range[0]) / frame.width,
                  HOVER_RADIUS_PX * (frame.y_range[1] - frame.y_range[0]) / frame.height)
        view = self.view_state()
        index = self.scene.pick(layer, view.epoch_index, x, y, radius, self.coloring(view).codes)
        sample = None if index is None else int(self.scene.samples[index])
        self._focused_cache = (sample, id(self.scene), index)
        self.state.focus(sample)

    def focused_index(self) -> int | None:
        """Position of the focused sample in the scene (remembered from the pick: 10M samples cost a scan)."""
        focused = self.state.focused
        if focused is None or self.scene is None:
            return None
        if self._focused_cache[:2] != (focused, id(self.scene)):
            found = np.flatnonzero(self.scene.samples == focused)
            self._focused_cache = (focused, id(self.scene), int(found[0]) if found.size else None)
        return self._focused_cache[2]

    def ring(self, layer: str) -> dict:
        """Bokeh source data of the ring around the focused sample in ``layer`` (empty if none)."""
        index = self.focused_index()
        if index is None or layer not in self.scene.layers:
            return {"x": [], "y": []}
        e = self.scene.epochs.index(self.state.epoch)
        x, y = float(self.scene.xs[layer][e, index]), float(self.scene.ys[layer][e, index])
        return {"x": [] if np.isnan(x) else [x], "y": [] if np.isnan(y) else [y]}

    def selected(self) -> pd.DataFrame:
        """The selected samples at the current epoch: id, true and predicted class, loss, positions."""
        mask = self.selected_mask()
        if mask is None:
            return pd.DataFrame(columns=["sample", "label", "prediction", "correct", "loss"])
        scene, e = self.scene, self.scene.epochs.index(self.state.epoch)
        idx = np.flatnonzero(mask)
        names = np.asarray(scene.class_names, dtype=object)
        frame = pd.DataFrame({
            "sample": scene.samples[idx],
            "label": names[scene.labels[idx]],
            "prediction": names[scene.predictions[e, idx]],
            "correct": scene.correct[e, idx],
            "loss": scene.loss[e, idx],
        })
        for layer in self.layers:
            frame[f"{layer}_x"] = scene.xs[layer][e, idx]
            frame[f"{layer}_y"] = scene.ys[layer][e, idx]
        return frame

    # -- words beside the pictures -----------------------------------------------------------------
    def legend_html(self) -> str:
        """Colour swatches with counts, how many samples are drawn, and why none are if so."""
        if self.scene is None:
            return ""
        view = self.view_state()
        coloring = self.coloring(view)
        drawn = int(coloring.counts.sum())
        if coloring.values is not None:
            legend = plots.colorbar_html("per-sample loss (log10)", coloring.span)
        else:
            legend = plots.legend_html(coloring.legend, dict(zip(coloring.legend, coloring.counts)))
        selected = "" if coloring.selected is None else f" · {int((coloring.selected & (coloring.codes >= 0)).sum()):,} selected"
        note = ""
        if view.epoch_index == 0 and (self.show == SHOW[2] or self.color_by == COLOR_BY[3]):
            note = (" · <b>nothing can have flipped at the first embedded epoch</b>: "
                    "step the player forward to compare with the previous epoch")
        elif drawn == 0:
            note = " · <b>no sample passes the filters</b>: show more classes or choose another filter"
        return (f"{legend}<div class='nm-drawn' style='font-size:12px;color:#666'>{drawn:,} of {len(self.scene):,} "
                f"samples drawn at epoch {self.state.epoch}{selected}{self._arrows_note(view)}{note}</div>")

    def _arrows_note(self, view: ViewState) -> str:
        if self.attack_arrows == "off" or not self.layers:
            return ""
        _, _, fooled = self.twin_arrows(self.layers[0], view.epoch_index)
        if not len(fooled):
            return ""
        color = ACTIVATION_COLORS["attacked"]
        return (f" · <span style='color:{color}'>→</span> {int(fooled.sum())} of {len(fooled)} attacked twins fooled "
                f"the model (arrows: benign → twin{', red = fooled' if self.attack_arrows == 'all' else ''})")

    def quality_html(self, layer: str) -> str:
        """Method, parameters and faithfulness of ``layer`` at the current epoch."""
        scene = self.scene
        emb = scene.embedding
        params = json.loads(emb.attrs.get("params", "{}"))
        quality, key = scene.quality, (self.state.epoch, layer)
        parts = [f"<b>{html.escape(str(emb.attrs.get('method', '?')))}</b>"]
        if emb.attrs.get("method") != "pca":
            parts[0] += f" n_neighbors={params.get('n_neighbors')} min_dist={params.get('min_dist')}"
        if "trustworthiness" in quality:
            parts.append(f"trustworthiness {quality['trustworthiness'][key]:.3f}")
        if "disparity" in quality:
            d = quality["disparity"][key]
            parts.append("disparity –" if np.isnan(d) else f"disparity {d:.3f}")
        unplaced = int(quality["unplaced"][key]) if "unplaced" in quality else 0
        parts.append(f"<span style='color:{'#c0392b' if unplaced else '#777'}'>{unplaced} unplaced</span>")
        return "<div class='nm-quality' style='font-size:12px;color:#444'>" + " · ".join(parts) + "</div>"

    def card_html(self) -> str:
        """The focused sample's id, true class, prediction and loss at this epoch (escaped)."""
        index = self.focused_index()
        if index is None:
            return "<span class='nm-card-empty' style='color:#777'>hover over a point to see its sample</span>"
        scene, e = self.scene, self.scene.epochs.index(self.state.epoch)
        label = scene.class_names[scene.labels[index]]
        predicted = scene.class_names[scene.predictions[e, index]]
        verdict = "correct" if label == predicted else "wrong"
        return (f"<div class='nm-card'><b>sample {int(scene.samples[index])}</b><br>true: <b>{html.escape(label)}</b>"
                f"<br>predicted: <b>{html.escape(predicted)}</b> ({verdict}, epoch {self.state.epoch})"
                f"<br>loss {scene.loss[e, index]:.3f}</div>")

    def card_thumbnail(self) -> bytes | None:
        images = self.state.run.images
        index = self.focused_index()
        if index is None or images is None:
            return None
        return plots.thumbnail_png(images.sel(sample=int(self.scene.samples[index])).values)

    # -- lifetime ------------------------------------------------------------------------------------
    def dispose(self) -> None:
        """Stop the render-ahead thread (a closed session must not keep one)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._ahead = None
