"""The Training page's pictures from the session state: plain Python, testable without Panel.

:class:`TrainingPainter` turns the shared :class:`~neuromapper.views.state.SessionState` (run,
epoch, visible classes) and the page's own options into what the Training page draws:

* the **training curves** (every recorded metric, the probe accuracy and loss) and the epoch a
  click on them means;
* the **first-layer weight grid**: every neuron's or kernel's weights as a small tile of one
  image (numpy tiling, not a plot per kernel), on a diverging scale that is symmetric and fixed
  over all recorded epochs (``run.weight_range``) so that a weight's change shows as a change of
  colour; 3-channel kernels as colours or one input channel at a time; a clicked tile enlarged;
* the **decision boundary** of a model on 2-D inputs: the recorded class probabilities over the
  input grid as a picture (a class's probability, or the most probable class's colour with its
  confidence), the 0.5 contour, and the probe points coloured by class;
* the **exploratory plots** of the ``input`` pseudo-layer or any recorded layer, by PCA or t-SNE,
  as a datashader ``eq_hist`` shaded density with each class's density contours drawn into the
  same server-side picture.

The Viewer in :mod:`neuromapper.views.training` wires widgets and Bokeh sources to it.

Design (hard to undo, so the reasons are here):

* **Per-epoch pictures are arrays pushed into existing plots.** Only the epoch changes on a
  player step, so the weight grid, the enlarged tile, the boundary picture and its contour and
  the exploratory picture are recomputed as arrays and the Viewer pushes them into the Bokeh
  sources HoloViews made; options (layer, channel, method) rebuild a plot.
* **Exploratory coordinates come from stored embeddings where they exist** (``pca`` and
  ``tsne`` beside the run, aligned across epochs by the reduction). The input t-SNE is computed
  here once per run, in a background thread shared by every session (:class:`InputTSNE`);
  PCA of a layer without a stored embedding is computed with the same function the reduction
  uses (:func:`neuromapper.methods.pca_per_epoch`, Procrustes-aligned).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import param

from .. import density, raster
from ..scene import class_palette, robust_bounds
from .state import SessionState

INPUT = "input"
METHODS = ("PCA", "t-SNE")
DENSITY = ("shaded + class contours", "shaded density", "class contours")
ALL_CLASSES = "all classes (most probable)"
ALL_CHANNELS, RGB = "all", "rgb"
EXPLORE_PX = 400  # side of the exploratory raster in pixels
PICTURES_KEPT = 64  # exploratory pictures kept per session (640 KB each)
MAX_TILES = 1024  # tiles drawn at most (the rest are said to be left out)
BOUNDARY_STRENGTH = 0.5  # how far a fully confident pixel goes from white to its class colour
SHADE_COLORS = ("#dfe6ef", "#b7c6da", "#8ea3bf", "#6a7f9c", "#4a5a72")  # the shaded density: light to dark blue
CONTOUR_ALPHA = (230, 150)  # per mass level: the densest half opaque, the 90% line lighter


def tile(tiles: np.ndarray, columns: int, pad: int = 1, fill=np.nan) -> np.ndarray:
    """Lay ``tiles`` ``(n, h, w[, c])`` out in rows of ``columns``, ``pad`` cells of ``fill`` between them.

    Tile ``i`` sits in row ``i // columns``, column ``i % columns``; row 0 is the top.
    """
    n, h, w = tiles.shape[:3]
    rows = max(1, -(-n // columns))
    shape = (rows * (h + pad) - pad, columns * (w + pad) - pad, *tiles.shape[3:])
    dtype = tiles.dtype if np.issubdtype(tiles.dtype, np.floating) else np.result_type(tiles.dtype, np.asarray(fill).dtype)
    grid = np.full(shape, fill, dtype=dtype)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = tiles[i]
    return grid


def columns_for(n: int, h: int, w: int) -> int:
    """Columns that make ``n`` tiles of ``h`` x ``w`` a roughly square grid."""
    return max(1, int(np.ceil(np.sqrt(n * h / max(w, 1)))))


@dataclass
class _Tiling:
    """How the weight grid is laid out now: what each tile is, in which cell."""

    tiles: np.ndarray  # (n, h, w) or (n, h, w, 3) values
    columns: int
    names: list[str]  # per tile: "neuron 3" or "kernel 3 · input 1"


@dataclass
class InputTSNE:
    """One openTSNE layout of a run's inputs, computed in a background thread shared by sessions."""

    progress: float = 0.0  # 0..1
    result: np.ndarray | None = None
    error: str = ""
    listeners: list[Callable[[], None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> bool:
        return self.result is not None or bool(self.error)

    def _tell(self) -> None:
        with self.lock:
            listeners = list(self.listeners)
        for listener in listeners:
            listener()

    def compute(self, x: np.ndarray, seed: int = 0) -> None:
        from openTSNE import TSNE

        n_iter = 750

        def callback(iteration, error, embedding):
            self.progress = min(0.99, iteration / n_iter)
            self._tell()

        try:
            perplexity = float(min(30, max(2, (len(x) - 1) / 3)))
            tsne = TSNE(n_components=2, perplexity=perplexity, random_state=seed, n_jobs=1, verbose=False,
                        callbacks=callback, callbacks_every_iters=50, early_exaggeration_iter=250, n_iter=500)
            self.result = np.asarray(tsne.fit(np.asarray(x, np.float64)), dtype=np.float32)
            self.progress = 1.0
        except Exception as exc:  # shown beside the plot; the page stays usable
            self.error = f"{type(exc).__name__}: {exc}"
        self._tell()


_INPUT_TSNE: dict[str, InputTSNE] = {}
_INPUT_TSNE_LOCK = threading.Lock()


def input_tsne(run, start: bool = True) -> InputTSNE | None:
    """The t-SNE of ``run``'s inputs: computed once per run and server, started here when asked."""
    key = str(run.root)
    with _INPUT_TSNE_LOCK:
        job = _INPUT_TSNE.get(key)
        if job is None and start and run.inputs is not None:
            job = _INPUT_TSNE[key] = InputTSNE()
            threading.Thread(target=job.compute, args=(np.asarray(run.inputs),), daemon=True,
                             name="neuromapper-input-tsne").start()
        return job


class TrainingPainter(param.Parameterized):
    """The Training page's options and the pictures they give (see the module docstring)."""

    weight_layer = param.Selector(default=None, objects=[], allow_None=True, doc="Layer whose weights are tiled.")
    channels = param.Selector(default=ALL_CHANNELS, objects=[ALL_CHANNELS], doc="RGB, one input channel, or all.")
    enlarged = param.Integer(default=None, allow_None=True, doc="The tile shown large (index in the grid).")
    boundary_class = param.Selector(default=ALL_CLASSES, objects=[ALL_CLASSES], doc="Class whose probability is drawn.")
    explore_layer = param.Selector(default=None, objects=[], allow_None=True, doc="Layer of the exploratory plot.")
    explore_method = param.Selector(default=METHODS[0], objects=list(METHODS))
    density = param.Selector(default=DENSITY[0], objects=list(DENSITY), doc="How the points' density is drawn.")
    tsne_progress = param.Number(default=None, allow_None=True, doc="t-SNE progress 0..1 while one is computed.")
    tsne_failure = param.String(default="", doc="Why the last t-SNE job failed, if it did.")

    def __init__(self, state: SessionState, dispatch: Callable | None = None, **params):
        super().__init__(**params)
        self.state = state
        self._dispatch = dispatch or (lambda fn, *args: fn(*args))
        self._coords: dict[tuple, tuple[list[int], np.ndarray] | None] = {}
        self._bounds: dict[tuple, tuple] = {}
        self._pictures: dict[tuple, np.ndarray] = {}
        self._listening: InputTSNE | None = None
        self._heard: Callable[[], None] | None = None  # our listener on _listening
        self._job_token: int | None = None
        self._class_names: list[str] | None = None
        state.param.watch(self._run_changed, "run")
        self._run_changed()

    # -- the run -----------------------------------------------------------------------------------
    @property
    def run(self):
        return self.state.run

    def _run_changed(self, *_) -> None:
        run = self.run
        self._coords, self._bounds, self._pictures = {}, {}, {}
        layers = list(getattr(run, "weight_layers", []) or [])
        self.param.weight_layer.objects = layers
        names = list(run.class_names)
        self.param.boundary_class.objects = {ALL_CLASSES: ALL_CLASSES, **{name: i for i, name in enumerate(names)}}
        explore = ([INPUT] if getattr(run, "inputs", None) is not None else []) + list(run.layers)
        self.param.explore_layer.objects = explore
        same_classes = names == self._class_names
        self._class_names = names
        self.param.update(
            weight_layer=self.weight_layer if self.weight_layer in layers else (layers[0] if layers else None),
            # two classes: the probability of the second, whose 0.5 contour is the boundary
            boundary_class=self.boundary_class if same_classes else (1 if len(names) == 2 else ALL_CLASSES),
            explore_layer=self.explore_layer if self.explore_layer in explore else (explore[0] if explore else None),
        )
        self._layer_changed()

    @param.depends("weight_layer", watch=True)
    def _layer_changed(self) -> None:
        options = {"all input channels": ALL_CHANNELS}
        if self.weight_layer is not None:
            n_in = self.run.weights(self.weight_layer, self.run.epochs[0]).shape[1]
            if n_in == 3:
                options = {"RGB (3 input channels)": RGB, **options}
            if n_in > 1:
                options.update({f"input channel {c}": c for c in range(n_in)})
        self.param.channels.objects = options
        self.param.update(channels=next(iter(options.values())), enlarged=None)

    @param.depends("channels", watch=True)
    def _forget_enlarged(self) -> None:
        self.enlarged = None

    def lacks(self) -> list[str]:
        """What this run lacks for the page (older schemas), as short sentences."""
        return list(getattr(self.run, "lacks", []) or [])

    # -- training curves -----------------------------------------------------------------------------
    def curves(self) -> dict[str, np.ndarray]:
        return self.run.curves()

    def epoch_at(self, x: float) -> int:
        """The player's epoch nearest to ``x`` on the curves' epoch axis (a click jumps there)."""
        epochs = np.asarray(self.state.param.epoch.objects)
        return int(epochs[np.argmin(np.abs(epochs - x))])

    # -- weight grids -------------------------------------------------------------------------------
    def weight_limit(self) -> float:
        """Half the colour scale: the largest |weight| over every recorded epoch (fixed, symmetric)."""
        limit = float(self.run.weight_range(self.weight_layer))
        return limit if limit > 0 and np.isfinite(limit) else 1.0

    def _tiling(self, epoch: int) -> _Tiling:
        w = np.asarray(self.run.weights(self.weight_layer, epoch), dtype=np.float32)  # (out, in, ky, kx)
        n_out, n_in, h, kx = w.shape
        kind = "neuron" if self.run.weight_kind(self.weight_layer) == "linear-image" else "kernel"
        if self.channels == RGB:
            tiles, names = np.moveaxis(w, 1, -1), [f"{kind} {o}" for o in range(n_out)]
        elif self.channels == ALL_CHANNELS and n_in > 1:
            tiles = w.reshape(n_out * n_in, h, kx)
            names = [f"{kind} {o} · input {c}" for o in range(n_out) for c in range(n_in)]
            return _Tiling(tiles[:MAX_TILES], n_in if n_in <= 32 else columns_for(len(tiles), h, kx), names[:MAX_TILES])
        else:
            c = 0 if self.channels == ALL_CHANNELS else int(self.channels)
            tiles, names = w[:, c], [f"{kind} {o}" for o in range(n_out)]
        tiles, names = tiles[:MAX_TILES], names[:MAX_TILES]
        return _Tiling(tiles, columns_for(len(tiles), h, kx), names)

    def weight_grid(self, epoch: int | None = None) -> np.ndarray:
        """The tiled weights at ``epoch`` (default: the player's): float with NaN between tiles, or RGBA for RGB."""
        tiling = self._tiling(self.state.epoch if epoch is None else epoch)
        if self.channels == RGB:
            return self._to_rgba(tile(tiling.tiles, tiling.columns))
        return tile(tiling.tiles, tiling.columns)

    def _to_rgba(self, values: np.ndarray) -> np.ndarray:
        """Weights ``(..., 3)`` as colours: 0 is mid-grey, ``±limit`` no or full channel; NaN transparent."""
        finite = np.isfinite(values).all(axis=-1)
        level = np.clip(0.5 + 0.5 * np.nan_to_num(values) / self.weight_limit(), 0, 1)
        rgba = np.zeros(values.shape[:-1] + (4,), np.uint8)
        rgba[..., :3] = (level * 255).round().astype(np.uint8)
        rgba[..., 3] = np.where(finite, 255, 0)
        return rgba

    def weight_title(self) -> str:
        run = self.run
        tiling = self._tiling(run.epochs[0])
        shape = run.weights(self.weight_layer, run.epochs[0]).shape
        kind = tiling.names[0].split(" ")[0] if tiling.names else "tile"
        left = f" (first {MAX_TILES})" if shape[0] * shape[1] > MAX_TILES and self.channels == ALL_CHANNELS else ""
        return f"{self.weight_layer}: {len(tiling.names)} {kind}s{left} of {shape[2]}×{shape[3]}"

    def tile_at(self, x: float, y: float) -> int | None:
        """The tile under grid coordinates ``(x, y)`` (x from the left, y up from the bottom), or None."""
        tiling = self._tiling(self.run.epochs[0])
        h, w = tiling.tiles.shape[1:3]
        rows = max(1, -(-len(tiling.tiles) // tiling.columns))
        grid_h = rows * (h + 1) - 1
        col, row = int(np.floor(x / (w + 1))), int(np.floor((grid_h - y) / (h + 1)))
        i = row * tiling.columns + col
        inside = 0 <= col < tiling.columns and 0 <= row < rows and x - col * (w + 1) < w \
            and (grid_h - y) - row * (h + 1) < h
        return i if inside and i < len(tiling.tiles) else None

    def enlarged_tile(self, epoch: int | None = None) -> np.ndarray | None:
        """The enlarged tile at ``epoch``: ``(h, w)`` values, or RGBA for RGB; None when nothing is enlarged."""
        if self.enlarged is None:
            return None
        tiling = self._tiling(self.state.epoch if epoch is None else epoch)
        if self.enlarged >= len(tiling.tiles):
            return None
        one = tiling.tiles[self.enlarged]
        return self._to_rgba(one) if self.channels == RGB else one

    def enlarged_name(self) -> str:
        if self.enlarged is None:
            return ""
        names = self._tiling(self.run.epochs[0]).names
        return names[self.enlarged] if self.enlarged < len(names) else ""

    # -- decision boundary ---------------------------------------------------------------------------
    def has_boundary(self) -> bool:
        return getattr(self.run, "boundary_grid", None) is not None

    def boundary_ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """The input grid's extent: pixel edges, half a grid step beyond the first and last grid points."""
        xs, ys = self.run.boundary_grid
        dx, dy = (xs[-1] - xs[0]) / max(len(xs) - 1, 1), (ys[-1] - ys[0]) / max(len(ys) - 1, 1)
        return (float(xs[0] - dx / 2), float(xs[-1] + dx / 2)), (float(ys[0] - dy / 2), float(ys[-1] + dy / 2))

    def _colors(self) -> np.ndarray:
        return raster.hex_to_rgb(list(class_palette(self.run.class_names).values()))

    def boundary_picture(self, epoch: int | None = None) -> np.ndarray:
        """RGBA ``(grid_y, grid_x, 4)``, row 0 at the top (the largest input 1).

        For one class: white where its probability is 0.5, towards its colour where it is more
        probable and towards grey where less. For all classes: the most probable class's colour,
        stronger with its confidence (white where all classes are equally probable).
        """
        p = np.asarray(self.run.boundary(self.state.epoch if epoch is None else epoch), dtype=np.float64)
        colors, white = self._colors(), np.full(3, 255.0)
        if self.boundary_class == ALL_CLASSES:
            k = p.shape[-1]
            top = p.argmax(axis=-1)
            confidence = np.clip((p.max(axis=-1) - 1 / k) / (1 - 1 / k), 0, 1)[..., None]
            rgb = white + (colors[top] - white) * BOUNDARY_STRENGTH * confidence
        else:
            q = p[..., int(self.boundary_class)][..., None]
            other = raster.hex_to_rgb(["#7f7f7f"])[0] if p.shape[-1] > 2 else colors[1 - int(self.boundary_class)]
            toward = np.where(q >= 0.5, colors[int(self.boundary_class)], other)
            rgb = white + (toward - white) * BOUNDARY_STRENGTH * np.abs(2 * q - 1)
        rgba = np.empty(p.shape[:2] + (4,), np.uint8)
        rgba[..., :3] = rgb.round().astype(np.uint8)
        rgba[..., 3] = 255
        return np.ascontiguousarray(rgba[::-1])

    def boundary_lines(self, epoch: int | None = None) -> list[np.ndarray]:
        """The 0.5 contour(s) in input units: of the chosen class, or of every class (two: of class 1 only)."""
        p = np.asarray(self.run.boundary(self.state.epoch if epoch is None else epoch), dtype=np.float64)
        xs, ys = self.run.boundary_grid
        if self.boundary_class != ALL_CLASSES:
            classes = [int(self.boundary_class)]
        else:
            classes = [1] if p.shape[-1] == 2 else range(p.shape[-1])
        return [line for c in classes for line in density.contour_lines(p[..., c], xs, ys, 0.5)]

    def boundary_title(self) -> str:
        if self.boundary_class == ALL_CLASSES:
            return "most probable class (stronger = surer) · 0.5 contours"
        return f"P({self.run.class_names[int(self.boundary_class)]}) · 0.5 contour"

    def probe_points(self) -> dict:
        """The probe's 2-D inputs coloured by class (static over epochs)."""
        run = self.run
        xy = np.asarray(run.inputs)[:, :2]
        palette = class_palette(run.class_names)
        names = np.asarray(run.class_names, dtype=object)[run.labels]
        return {"input 0": xy[:, 0], "input 1": xy[:, 1], "color": [palette[n] for n in names], "class": list(names)}

    # -- exploratory plots --------------------------------------------------------------------------
    def coordinates(self) -> tuple[list[int], np.ndarray] | None:
        """``(epochs, xy (epoch, sample, 2))`` of the exploratory plot, or None while it is not available.

        The input layer has one frame for every epoch (``epochs`` is ``[None]``).
        """
        key = (self.explore_layer, self.explore_method)
        if key not in self._coords:
            found = self._find_coordinates(*key)
            if found is None:
                return None  # not cached: asked again when the t-SNE is done
            self._coords[key] = found
        return self._coords[key]

    def _find_coordinates(self, layer: str, method: str):
        run = self.run
        if layer == INPUT:
            x = np.asarray(run.inputs, dtype=np.float64)
            if method == "PCA":
                return [None], _pca(x)[None]
            job = input_tsne(run)
            self._listen(job)
            return ([None], job.result[None]) if job.result is not None else None
        stored = self._stored(layer, "pca" if method == "PCA" else "tsne")
        if stored is not None:
            return stored
        if method == "PCA":
            from ..methods import pca_per_epoch

            acts = np.stack([run.activations(layer, e) for e in run.epochs])
            return list(run.epochs), pca_per_epoch(acts, 15, 0.1, 0)[0]
        return None

    def _stored(self, layer: str, method: str):
        """A stored embedding's coordinates of ``layer`` by ``method`` (of all layers, or of this one)."""
        from ..reduce_params import ReduceParams
        from ..store import find_embedding

        if method not in ReduceParams.METHODS:
            return None
        run = self.run
        for layers in (None, (layer,)):
            try:
                emb = find_embedding(run.ds, method=method, layers=layers, partial=True)
            except (ValueError, OSError):
                emb = None
            if emb is None or layer not in [str(v) for v in emb["layer"].values]:
                continue
            row = {int(s): i for i, s in enumerate(emb["sample"].values)}
            xy = np.full((len(emb["epoch"]), len(run.samples), 2), np.nan, np.float32)
            rows = [row.get(int(s), -1) for s in run.samples]
            have = np.array([r >= 0 for r in rows])
            xy[:, have] = np.asarray(emb.sel(layer=layer).values)[:, [r for r in rows if r >= 0]]
            return [int(e) for e in emb["epoch"].values], xy
        return None

    def tsne_missing(self) -> str:
        """Why no t-SNE is shown for the chosen layer (empty when it is shown)."""
        if self.explore_method != "t-SNE" or self.explore_layer == INPUT or self.coordinates() is not None:
            return ""
        if self._job_token is not None:
            return "computing the t-SNE of every recorded layer, aligned across epochs (stored beside the run)…"
        return (f"No t-SNE of this run is stored yet: compute it here, or with `neuromapper reduce {self.run.name} "
                f"--method tsne`.")

    def can_compute_tsne(self) -> bool:
        from ..reduce_params import ReduceParams

        return "tsne" in ReduceParams.METHODS and self._job_token is None

    def compute_tsne(self, *_) -> None:
        """Start (or join) the server's reduction of this run by t-SNE; shown when it is done."""
        from ..reduce_params import ReduceParams
        from .jobs import JOBS, Listener

        if not self.can_compute_tsne():
            return
        params = ReduceParams(method="tsne")
        self.tsne_progress = 0.0
        self._job_token = JOBS.join(self.run.root, params, Listener(
            progress=lambda done, total, _message: self._dispatch(self._job_progress, done / total if total else 0.0),
            done=lambda _result: self._dispatch(self._job_finished),
            failed=lambda message: self._dispatch(self._job_finished, message)))

    def _job_progress(self, fraction: float) -> None:
        if self._job_token is not None:
            self.tsne_progress = min(0.99, fraction)

    def _job_finished(self, failure: str = "") -> None:
        self._job_token = None
        self.tsne_progress = None
        self.tsne_failure = failure
        self.param.trigger("explore_method")  # the stored layout is found now

    def dispose(self) -> None:
        """Stop waiting for a t-SNE job (cancelled when no other session waits for it) or the inputs' t-SNE.

        The inputs' t-SNE is shared by the server's sessions and outlives this one: a listener left
        on it would keep this painter, and its session, alive.
        """
        from .jobs import JOBS

        if self._job_token is not None:
            JOBS.leave(self._job_token)
            self._job_token = None
        self._unlisten()

    def _listen(self, job: InputTSNE) -> None:
        if job is None or self._listening is job:
            return
        self._unlisten()
        self._listening = job

        def heard():
            self._dispatch(self._tsne_news, job)

        self._heard = heard
        with job.lock:
            job.listeners.append(heard)
        self._tsne_news(job)

    def _unlisten(self) -> None:
        job, heard = self._listening, self._heard
        self._listening = self._heard = None
        if job is not None:
            with job.lock:
                if heard in job.listeners:
                    job.listeners.remove(heard)

    def _tsne_news(self, job: InputTSNE) -> None:
        self.tsne_progress = None if job.done else job.progress
        if job.done and self.explore_layer == INPUT and self.explore_method == "t-SNE":
            self.param.trigger("explore_method")  # the layout is ready: draw it

    def explore_bounds(self) -> tuple:
        """Axis ranges of the exploratory plot, fixed over epochs."""
        coords = self.coordinates()
        key = (self.explore_layer, self.explore_method)
        if key not in self._bounds:
            xy = coords[1]
            self._bounds[key] = robust_bounds(xy[..., 0], xy[..., 1])
        return self._bounds[key]

    def explore_frame(self) -> raster.Frame:
        x_range, y_range = self.explore_bounds()
        return raster.Frame(x_range, y_range, EXPLORE_PX, EXPLORE_PX)

    def explore_picture(self, epoch: int | None = None) -> np.ndarray:
        """RGBA picture of the exploratory plot: shaded density and/or each visible class's density contours.

        Pictures are kept per frame of coordinates and options, so the input layer (one frame for
        every epoch) costs nothing on a player step, and stepping back is a lookup.
        """
        epochs, xy = self.coordinates()
        epoch = self.state.epoch if epoch is None else epoch
        index = 0 if epochs == [None] else max(0, int(np.searchsorted(epochs, epoch, side="right")) - 1)
        key = (self.explore_layer, self.explore_method, self.density, tuple(self.state.classes), index, id(xy))
        picture = self._pictures.get(key)
        if picture is None:
            picture = self._pictures[key] = self._draw_exploration(xy[index])
            while len(self._pictures) > PICTURES_KEPT:
                self._pictures.pop(next(iter(self._pictures)))
        return picture

    def _draw_exploration(self, xy: np.ndarray) -> np.ndarray:
        frame = self.explore_frame()
        run = self.run
        visible = np.isin(np.asarray(run.class_names)[run.labels], self.state.classes)
        codes = np.where(visible, run.labels, -1)
        rgba = np.zeros((frame.height, frame.width, 4), np.uint8)
        if self.density != "class contours":
            counts = raster.count_categorical(np.ascontiguousarray(xy[:, 0], np.float64),
                                              np.ascontiguousarray(xy[:, 1], np.float64),
                                              np.asarray(codes, np.int64), len(run.class_names), frame).sum(axis=-1)
            rgba = density.shaded_density(counts, list(SHADE_COLORS))
        if self.density != "shaded density":
            colors = self._colors()
            # densities on a grid of half the picture's resolution: a quarter of the smoothing work, and
            # the contour lines are in data units, drawn at full resolution
            coarse = raster.Frame(frame.x_range, frame.y_range, frame.width // 2, frame.height // 2)
            contours = density.class_contours(xy, codes, len(run.class_names), coarse)
            for c, levels in contours.items():
                for lines, alpha in zip(levels, CONTOUR_ALPHA):
                    start, end = density.segments(lines)
                    rgba = raster.draw_segments(rgba, start, end, np.repeat(colors[c][None], len(start), 0),
                                                np.full(len(start), alpha), frame)
        return rgba

    def explore_title(self) -> str:
        epochs = self.coordinates()[0] if self.coordinates() is not None else [None]
        when = "the probe's inputs (the same at every epoch)" if epochs == [None] else "at the player's epoch"
        return f"{self.explore_layer} · {self.explore_method} · {when}"


def _pca(x: np.ndarray) -> np.ndarray:
    """Two principal components of ``x`` (the raw two columns when ``x`` has two)."""
    if x.shape[1] <= 2:
        return np.pad(x, ((0, 0), (0, 2 - x.shape[1]))).astype(np.float32)
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=0).fit_transform(x).astype(np.float32)
