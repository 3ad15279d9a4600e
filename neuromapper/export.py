"""Standalone HTML snapshot of a run's embeddings: one file that opens from disk with no network.

:func:`export_html` writes a single HTML file (``neuromapper export RUN -o snapshot.html`` on the
command line) that keeps the essentials of the live dashboard: the epoch player (play, step,
slider), every chosen layer side by side, class toggles, colouring by true class or by
correctness, and hover labels (sample id, true and predicted label, thumbnail) when the points
fit in the file. Below the embeddings, the Activations, Model and Training pages come as pictures
rendered here for every exported epoch, which the same player steps through
(:mod:`neuromapper.export_activations`, :mod:`neuromapper.export_model`,
:mod:`neuromapper.export_training`; each says what it carries and what it cannot do, and
``neuromapper export`` prints each section's size). Everything is inline: the page template ``neuromapper/templates/snapshot.html``
holds the CSS and a small hand-written script, and the data go into one JSON block with the
arrays base64-encoded. A Content-Security-Policy in the page forbids every network request, so
the snapshot provably works offline and never calls home.

Design (the parts that are hard to undo, and why):

* **Hand-written JavaScript, not a Panel/Bokeh embed.** ``panel.save(embed=True)`` pre-computes
  one state per combination of widget values. The class toggles alone are 2^classes states
  (1,024 for ten classes, times epochs, times colour modes), and multi-select widgets are not
  embeddable at all: in an export they silently do nothing (see CONVENTIONS.md, known
  pitfalls). Bokeh's inline resources also weigh several megabytes before any data. A few
  hundred lines of plain JavaScript over typed arrays do the player, toggles and hover in a
  file whose size is almost all data.
* **Two strategies, chosen by size.** Datashader cannot re-rasterize without a server, so the
  page needs either the points or the pictures:

  - ``"points"``: each sample's coordinates per layer and epoch, quantised to 16 bits over the
    layer's range (4 bytes per sample, layer and epoch), its true class, its prediction per
    epoch and the colour codes of both colour modes. The page draws them on a ``<canvas>`` and
    can hit-test the mouse, so hover labels (and, for small runs with images, thumbnails) work.
    Size grows with samples x layers x epochs.
  - ``"images"``: pictures rendered here with :mod:`neuromapper.raster` (the dashboard's own
    aggregation, equalised-histogram shading and spreading), one alpha mask per epoch, layer,
    true class and correctness. The page tints each mask with the colour of the current colour
    mode and stacks the visible ones, so class toggles and the colour switch need no other
    pictures (2 x classes masks per frame instead of one per toggle combination). Size grows with
    picture area and structure, hardly with samples; there are no hover labels because the
    points are not in the file.

  ``strategy="auto"`` computes the points size exactly (:func:`points_bytes`). Up to
  :data:`POINTS_SMALL_BYTES` (2 MB, fine to e-mail) it takes points without rendering anything
  to compare: hover labels are worth more than a smaller file that is already small, and
  rendering the estimate costs seconds.
  Above that it estimates the images size by rendering the first and last epoch of every layer
  (kept for the export) and takes the smaller; above :data:`POINTS_MAX_SAMPLES` samples it
  always takes images, because drawing and hit-testing that many points per player step in
  plain JavaScript stops feeling instant on a laptop. The page states the strategy and why.
  ``benchmarks/RESULTS-export.md`` has the figures for the demo run (points, about 1 MB) and a
  100,000-sample run (images).
* **The project's colouring, not a second one.** Colours and codes come from
  :class:`neuromapper.scene.EmbeddingScene` (``palette`` from :func:`~neuromapper.scene.class_palette`,
  correctness codes from :meth:`~neuromapper.scene.EmbeddingScene.coloring` with
  :data:`~neuromapper.scene.CORRECTNESS_COLORS`), and the pictures of the images strategy from
  :mod:`neuromapper.raster`. The page only looks colours up by code. Because each class is its
  own mask, overlapping classes stack by opacity rather than mixing per pixel as the dashboard's
  single categorical raster does; in the points strategy points are drawn as small dots of a
  fixed size, which is what the dashboard's spread raster shows for runs this small.
* **Plain base64, no compression of the points.** zlib saves only 6-12% on the demo's 16-bit
  coordinates (they are close to noise in the low byte), not worth a decompression step in the
  page. The pictures are PNGs, compressed already, and cropped to where their group has points.
* **Fixed frames.** Each layer keeps the dashboard's default view (the robust bounds of all
  exported epochs, :meth:`~neuromapper.scene.EmbeddingScene.default_frame`), so the player
  never rescales an axis between epochs.
* **Never computes an embedding.** An export takes the embedding it is given, or the one stored
  with the default :class:`~neuromapper.ReduceParams` (what ``neuromapper reduce RUN`` stores);
  when there is none it says which command makes one rather than starting a reduction that can
  take minutes behind a command that promises a file. A run that grew since its embedding was
  computed (a live run) is exported for the epochs the embedding covers, and the page and the
  command line say so. The embedding is looked up *before* the run is opened: epochs are only
  ever added, so the opened run always holds every epoch of the embedding, even when an epoch
  file appears in between.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import xarray as xr

from . import raster
from .export_activations import activations_payload
from .export_model import model_payload
from .export_training import training_payload
from .reduce_params import ReduceParams
from .scene import COLOR_BY, CORRECTNESS_COLORS, EmbeddingScene, ViewState, scene_for
from .store import find_embedding, json_attr, list_embeddings, open_run, replacing, run_dir

STRATEGIES = ("auto", "points", "images")
POINTS_MAX_SAMPLES = 50_000
POINTS_SMALL_BYTES = 2_000_000
THUMBNAIL_MAX_SAMPLES = 5_000
WIDTH_RANGE = (64, 2048)
MODES = (COLOR_BY[0], COLOR_BY[2])  # "true class", "correct / incorrect"
DATA_MARK = "__NEUROMAPPER_DATA__"
SECTIONS = ("activations", "model", "training")  # the pages beside the embeddings, each sized on its own


@dataclass
class Estimate:
    """Expected bytes of the data block (after base64) for each strategy; ``None``: not estimated."""

    points: int
    images: int | None
    thumbnails: int


def export_html(
    run,
    path: str | os.PathLike,
    *,
    embedding: xr.DataArray | None = None,
    layers: list[str] | None = None,
    epochs: list[int] | None = None,
    width: int = 360,
    strategy: str = "auto",
    thumbnails: bool | str = "auto",
    progress: bool = True,
) -> Path:
    """Write a self-contained HTML snapshot of a run's embeddings that opens with no network.

    Parameters
    ----------
    run
        A run directory or a Dataset from :func:`neuromapper.open_run`.
    path
        The HTML file to write (parent folders are created).
    embedding
        ``(epoch, layer, sample, xy)`` from :func:`neuromapper.reduce`. By default the one stored
        with the run for the default parameters (``ReduceParams.DEFAULT``, what
        ``neuromapper reduce RUN`` computes); never computed here.
    layers
        Layers to show side by side, in this order; default every layer of the embedding.
    epochs
        Epochs the player steps through; default every epoch of the embedding.
    width
        Width and height of each layer's picture in CSS pixels (64-2048).
    strategy
        ``"points"`` (coordinates drawn by the page, with hover labels), ``"images"``
        (pictures pre-rendered per epoch, layer, class and correctness) or ``"auto"`` (points
        up to 2 MB, else the smaller file; images above :data:`POINTS_MAX_SAMPLES` samples).
        See the module docstring.
    thumbnails
        Show each sample's input image in hover labels (points strategy, runs with images
        only); ``"auto"`` includes them up to :data:`THUMBNAIL_MAX_SAMPLES` samples.
    progress
        Show a tqdm progress bar on stderr while rendering images.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        When an argument is invalid; the message names the argument and lists valid values.
    FileNotFoundError
        When no ``embedding`` is given and none is stored for the default parameters; the
        message names the command that computes it.
    neuromapper.RunError
        When ``run`` is not a readable run.
    """
    return _export(run, path, embedding=embedding, layers=layers, epochs=epochs, width=width, strategy=strategy,
                   thumbnails=thumbnails, progress=progress)[0]


def _export(run, path, *, embedding, layers, epochs, width, strategy, thumbnails, progress) -> tuple[Path, dict]:
    """:func:`export_html`, also returning what the CLI prints: ``{"strategy", "coverage", "sections"}``.

    ``sections`` holds the bytes of each page's part of the data block (:data:`SECTIONS`).
    """
    width = _check_width(width)
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}")
    if thumbnails not in (True, False, "auto"):
        raise ValueError(f"thumbnails: expected True, False or 'auto', got {thumbnails!r}")
    if embedding is None:
        embedding = _default_embedding(run)  # before opening the run: see the module docstring
    ds = run if isinstance(run, xr.Dataset) else open_run(run)
    coverage = _coverage(ds, embedding)  # of the whole embedding, not of the epochs chosen below
    embedding = _select(embedding, layers, epochs)
    scene, position = scene_for(ds, embedding)

    want_thumbs = "image" in ds and (
        thumbnails is True or (thumbnails == "auto" and len(scene) <= THUMBNAIL_MAX_SAMPLES)
    )
    sprite = _thumbnail_sprite(ds["image"].values[position]) if want_thumbs else None
    rendered: dict = {}
    estimate = Estimate(points=points_bytes(scene), images=None,
                        thumbnails=_b64_len(len(sprite)) if sprite else 0)
    if strategy == "images" or (strategy == "auto" and needs_images_estimate(len(scene), estimate.points)):
        estimate.images = estimate_images_bytes(scene, width, rendered)
    if strategy == "auto":
        chosen, reason = choose_strategy(len(scene), estimate)
    else:
        chosen, reason = strategy, f"chosen by the caller (strategy={strategy!r})"

    data = _metadata(ds, embedding, scene, width)
    if chosen == "points":
        data["points"] = _points_payload(ds, scene, position, width, sprite)
    else:
        data["images"] = _images_payload(scene, width, progress, rendered)
    data["activations"] = activations_payload(ds, embedding, scene.layers)
    data["model"] = model_payload(ds, embedding)
    data["training"] = training_payload(ds, embedding)
    data["strategy"] = {"name": chosen, "reason": reason, "estimate": vars(estimate)}
    data["coverage"] = coverage
    page = _page(data)
    out = Path(path)
    with replacing(out) as tmp:  # a full disk or a kill leaves the previous file, never a truncated page
        tmp.write_text(page, encoding="utf-8")
    sections = {name: len(json.dumps(data[name], separators=(",", ":"))) for name in SECTIONS}
    return out, {"strategy": data["strategy"], "coverage": coverage, "sections": sections}


# -- arguments ---------------------------------------------------------------------------------
def _check_width(width) -> int:
    lo, hi = WIDTH_RANGE
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or not lo <= width <= hi:
        raise ValueError(f"width: expected an integer number of pixels from {lo} to {hi}, got {width!r}")
    return int(width)


def _select(embedding: xr.DataArray, layers, epochs) -> xr.DataArray:
    if not isinstance(embedding, xr.DataArray) or set(embedding.dims) != {"epoch", "layer", "sample", "xy"}:
        raise ValueError(
            "embedding: expected an xarray.DataArray with dims (epoch, layer, sample, xy) from "
            f"neuromapper.reduce, got {type(embedding).__name__}"
            + (f" with dims {embedding.dims}" if isinstance(embedding, xr.DataArray) else "")
        )
    have_layers = [str(v) for v in embedding["layer"].values]
    have_epochs = [int(v) for v in embedding["epoch"].values]
    if layers is not None:
        layers = [layers] if isinstance(layers, str) else list(layers)
        unknown = [name for name in layers if name not in have_layers]
        if unknown or not layers:
            raise ValueError(f"layers: {unknown or 'an empty list'} not in the embedding; available layers: {have_layers}")
        embedding = embedding.sel(layer=layers)
    if epochs is not None:
        epochs = [epochs] if isinstance(epochs, (int, np.integer)) else list(epochs)
        missing = [e for e in epochs if e not in have_epochs]
        if missing or not epochs:
            raise ValueError(
                f"epochs: {missing or 'an empty list'} not recorded in the embedding; "
                f"available epochs: {have_epochs}"
            )
        embedding = embedding.sel(epoch=sorted({int(e) for e in epochs}))
    return embedding.transpose("epoch", "layer", "sample", "xy")


def _default_embedding(run) -> xr.DataArray:
    """The embedding stored for the default parameters, current or covering the first epochs."""
    if isinstance(run, xr.Dataset) and not run.attrs.get("path"):
        raise ValueError("embedding: required when run is a Dataset that was not opened from a run directory")
    found = find_embedding(run, ReduceParams.DEFAULT, partial=True)
    if found is None:
        root = run_dir(run)
        stored = [info["key"] for info in list_embeddings(root)]
        raise FileNotFoundError(
            f"embedding: none given, and none is stored for the default parameters in {root}; compute it with "
            f"`neuromapper reduce {root}` (neuromapper.reduce(run) in Python), or pass a stored one with "
            f"--embedding KEY (embedding= in Python); stored keys: {stored}"
        )
    return found


def _coverage(ds: xr.Dataset, embedding: xr.DataArray) -> str | None:
    """What to tell when ``embedding`` does not cover every epoch recorded in ``ds``, else ``None``."""
    if not isinstance(embedding, xr.DataArray) or "epoch" not in embedding.coords:
        return None  # not an embedding: _select says so
    recorded = [int(e) for e in ds["epoch"].values]
    covered = {int(e) for e in embedding["epoch"].values}
    missing = [e for e in recorded if e not in covered]
    if not missing:
        return None
    return (f"the embedding covers {len(recorded) - len(missing)} of the {len(recorded)} recorded epochs; epochs "
            f"{missing} were recorded after it was computed and are not in this snapshot (`neuromapper reduce "
            f"{ds.attrs.get('path', 'RUN')}` with the same parameters extends it)")


# -- strategy ----------------------------------------------------------------------------------
def _b64_len(n_bytes: int) -> int:
    return 4 * math.ceil(n_bytes / 3)


def points_bytes(scene: EmbeddingScene) -> int:
    """Exact bytes the points strategy's arrays add (base64 included), thumbnails apart."""
    n, n_epochs, n_layers = len(scene), len(scene.epochs), len(scene.layers)
    code = 1 if len(scene.class_names) <= 255 else 2  # bytes per class code, as _code_dtype
    coords = n_layers * 2 * _b64_len(2 * n * n_epochs)  # x and y, uint16 per sample and epoch
    facts = 2 * _b64_len(code * n) + 2 * _b64_len(code * n * n_epochs)  # label, class code; prediction, correctness
    ids = _b64_len(4 * n) if _sample_ids(scene) is not None else 0
    return coords + facts + ids


def needs_images_estimate(n_samples: int, points: int) -> bool:
    """Whether ``strategy="auto"`` must render pictures to decide (see :func:`choose_strategy`)."""
    return n_samples > POINTS_MAX_SAMPLES or points > POINTS_SMALL_BYTES


def estimate_images_bytes(scene: EmbeddingScene, width: int, rendered: dict | None = None) -> int:
    """Bytes the images strategy adds (base64 included), measured on two epochs.

    The first and last epoch of every layer (the most mixed and the most separated pictures)
    are rendered and their average scaled to all epochs; the renders are kept in ``rendered``
    so that an images export does not redo them.
    """
    n_epochs = len(scene.epochs)
    sampled = sorted({0, n_epochs - 1})
    total = 0
    for e in sampled:
        for layer in scene.layers:
            masks = _frame_masks(scene, layer, e, width)
            if rendered is not None:
                rendered[(e, layer)] = masks
            total += sum(_b64_len(len(png)) + 16 for _, _, png in masks if png)
    return int(total / len(sampled) * n_epochs)


def choose_strategy(n_samples: int, estimate: Estimate) -> tuple[str, str]:
    """``("points" | "images", reason)`` for ``strategy="auto"``.

    Above :data:`POINTS_MAX_SAMPLES` samples: images. Otherwise points when they take at most
    :data:`POINTS_SMALL_BYTES` (small enough to e-mail, and only points give hover labels, so
    rendering pictures to compare is not worth its time); else the smaller of the two.
    """
    if n_samples <= POINTS_MAX_SAMPLES and estimate.points <= POINTS_SMALL_BYTES:
        return "points", (
            f"embedded points take {_mb(estimate.points)}, under {_mb(POINTS_SMALL_BYTES)}: small enough "
            "to e-mail, and only points allow hover labels"
        )
    if estimate.images is None:
        raise ValueError("estimate: images size needed to choose (see needs_images_estimate)")
    sizes = f"estimated points {_mb(estimate.points)} vs images {_mb(estimate.images)}"
    if n_samples > POINTS_MAX_SAMPLES:
        return "images", (
            f"{n_samples:,} samples is more than the page draws smoothly as points "
            f"(limit {POINTS_MAX_SAMPLES:,}); {sizes}"
        )
    if estimate.points <= estimate.images:
        return "points", f"the smaller file: {sizes}"
    return "images", f"the smaller file: {sizes}"


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f} MB"


# -- payloads ----------------------------------------------------------------------------------
def _array(values: np.ndarray, dtype: str) -> dict:
    """A typed array for the page: little-endian bytes, base64."""
    data = np.ascontiguousarray(values, dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": dtype, "b64": base64.b64encode(data.tobytes()).decode("ascii")}


def _code_dtype(n_codes: int) -> str:
    return "uint8" if n_codes <= 255 else "uint16"


def _sample_ids(scene: EmbeddingScene) -> np.ndarray | None:
    """Sample ids when they are integers other than 0..n-1 (then the page needs them)."""
    ids = scene.samples
    if ids.dtype.kind in "iu" and np.array_equal(ids, np.arange(len(ids))):
        return None
    return ids


def _metadata(ds: xr.Dataset, embedding: xr.DataArray, scene: EmbeddingScene, width: int) -> dict:
    from . import __version__  # not at the top: neuromapper/__init__.py imports this module
    model = json_attr(ds, "model")
    run_path = ds.attrs.get("path", "")
    params = json.loads(embedding.attrs.get("params", "{}") or "{}")
    n_epochs = len(scene.epochs)

    def per_epoch_layer(name: str, kind=float) -> dict | None:
        if name not in embedding.coords:
            return None
        values = embedding[name].transpose("epoch", "layer").values
        return {layer: [None if not np.isfinite(v) else kind(v) for v in values[:, i]]
                for i, layer in enumerate(scene.layers)}

    n_classes = len(scene.class_names)
    correct_by_class = np.zeros((n_epochs, n_classes), dtype=np.int64)
    for e in range(n_epochs):
        correct_by_class[e] = np.bincount(scene.labels[scene.correct[e]], minlength=n_classes)[:n_classes]
    frames = {}
    for layer in scene.layers:
        frame = scene.default_frame(layer, width, width)
        frames[layer] = [*frame.x_range, *frame.y_range]
    class_legend = scene.coloring(ViewState(0, color_by=MODES[0])).legend
    correct_legend = scene.coloring(ViewState(0, color_by=MODES[1])).legend
    return {
        "version": 1,
        "generator": f"NeuroMapper {__version__}",
        "run": Path(run_path).name if run_path else "run",
        "dataset": str(ds.attrs.get("dataset", "")),
        "model": str(model.get("class", "")).rsplit(".", 1)[-1],
        "parameters": model.get("parameters"),
        "method": str(embedding.attrs.get("method", "")),
        "params": params,
        "key": str(embedding.attrs.get("key", "")),
        "n": len(scene),
        "epochs": scene.epochs,
        "layers": scene.layers,
        "classes": scene.class_names,
        "width": width,
        "frames": frames,
        "modes": [
            {"name": MODES[0], "colors": list(class_legend.values()), "names": list(class_legend)},
            {"name": MODES[1], "colors": list(correct_legend.values()), "names": list(correct_legend)},
        ],
        "classCounts": np.bincount(scene.labels, minlength=n_classes)[:n_classes].tolist(),
        "correctByClass": correct_by_class.tolist(),
        "trustworthiness": per_epoch_layer("trustworthiness"),
        "unplaced": per_epoch_layer("unplaced", int),
    }


def _points_payload(ds, scene: EmbeddingScene, position: np.ndarray, width: int, sprite: bytes | None) -> dict:
    n_codes = max(len(scene.class_names), len(CORRECTNESS_COLORS))
    code_dtype = _code_dtype(n_codes)
    coords = {}
    for layer in scene.layers:
        entry = {}
        for axis, values in (("x", scene.xs[layer]), ("y", scene.ys[layer])):
            finite = values[np.isfinite(values)]
            lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            span = (hi - lo) or 1.0
            q = np.round((np.nan_to_num(values, nan=lo) - lo) / span * 65534)
            q = np.where(np.isfinite(values), q, 65535)  # 65535: unplaced by the reduction
            entry[axis] = _array(q, "uint16")
            entry[axis + "Range"] = [lo, lo + span]
        coords[layer] = entry
    codes_by_mode = [
        scene.coloring(ViewState(0, color_by=MODES[0])).codes,
        np.stack([scene.coloring(ViewState(e, color_by=MODES[1])).codes for e in range(len(scene.epochs))]),
    ]
    ids = _sample_ids(scene)
    payload = {
        "label": _array(scene.labels, code_dtype),
        "prediction": _array(scene.predictions, code_dtype),
        "codes": [
            {"perEpoch": c.ndim == 2, **_array(c, code_dtype)} for c in codes_by_mode
        ],
        "coords": coords,
        "radius": float(np.clip(0.22 * width / math.sqrt(max(len(scene), 1)), 1.0, 3.0)),
        "ids": None if ids is None else (_array(ids, "int32") if ids.dtype.kind in "iu" else [str(s) for s in ids]),
        "thumbnails": None,
    }
    if sprite is not None:
        _, h, w, _ = ds["image"].shape
        payload["thumbnails"] = {
            "png": base64.b64encode(sprite).decode("ascii"),
            "height": int(h),
            "width": int(w),
            "columns": _sprite_columns(len(scene)),
        }
    return payload


def _sprite_columns(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def _thumbnail_sprite(images: np.ndarray) -> bytes:
    """All thumbnails ``(sample, y, x, channel)`` on one grid, as PNG bytes."""
    from PIL import Image

    n, h, w, c = images.shape
    cols = _sprite_columns(n)
    rows = math.ceil(n / cols)
    grid = np.zeros((rows, cols, h, w, c), dtype=np.uint8)
    grid.reshape(rows * cols, h, w, c)[:n] = images
    sheet = grid.transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)
    picture = Image.fromarray(sheet[..., 0] if c == 1 else sheet[..., :3])
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _frame_masks(scene: EmbeddingScene, layer: str, epoch_index: int, width: int) -> list[tuple[int, int, bytes]]:
    """PNG alpha masks of one layer at one epoch, one per (true class, correctness) group.

    Group ``2 * k + j`` holds the samples of class ``k`` that are correct (``j = 0``) or not
    (``j = 1``), the codes of :meth:`EmbeddingScene.coloring`'s two colour modes. Opacity and
    spreading are decided on the whole frame, as the dashboard's single raster does: each
    pixel's opacity is :func:`raster.eq_hist_alpha` of its total count, and every group is
    spread by the number of pixels :func:`raster.spread` picks for the whole picture. Shading
    or spreading each group on its own would make a sparse group (the few misclassified samples
    of a class) look bolder than a dense one. Each mask is cropped to where its group has points
    and returned as ``(left, top, png)``, an empty group as ``(0, 0, b"")``: a class covers a
    small part of the picture, so cropping keeps a ten-class frame at a few kilobytes.
    """
    n_groups = 2 * len(scene.class_names)
    classes = scene.coloring(ViewState(epoch_index, color_by=MODES[0])).codes.astype(np.int16)
    wrong = scene.coloring(ViewState(epoch_index, color_by=MODES[1])).codes.astype(np.int16)
    groups = np.where(classes >= 0, 2 * classes + wrong, -1).astype(np.int16)
    frame = scene.default_frame(layer, width, width)
    x, y = scene.xs[layer][epoch_index], scene.ys[layer][epoch_index]
    counts = raster.count_categorical(x, y, groups, n_groups, frame)
    alpha = raster.eq_hist_alpha(counts.sum(axis=2, dtype=np.uint64))
    px = raster.spread_radius(alpha)
    planes = np.ascontiguousarray(counts.transpose(2, 0, 1))  # one copy, then a contiguous plane per group
    masks = []
    for plane in planes:
        rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        if rows.size == 0:
            masks.append((0, 0, b""))
            continue
        top, bottom = max(rows[0] - px, 0), min(rows[-1] + px + 1, frame.height)
        left, right = max(cols[0] - px, 0), min(cols[-1] + px + 1, frame.width)
        crop = np.where(plane[top:bottom, left:right] > 0, alpha[top:bottom, left:right], 0).astype(np.uint8)
        masks.append((int(left), int(top), _alpha_png(raster.spread(_white(crop), px)[..., 3])))
    return masks


def _white(alpha: np.ndarray) -> np.ndarray:
    """White RGBA of opacity ``alpha`` (fully transparent black where ``alpha`` is 0)."""
    # one uint32 per pixel, little-endian bytes R, G, B, A: A << 24 | 0xFFFFFF where lit
    packed = np.where(alpha > 0, (alpha.astype(np.uint32) << 24) | 0x00FFFFFF, 0).astype("<u4")
    return packed.view(np.uint8).reshape(alpha.shape + (4,))


def _alpha_png(alpha: np.ndarray) -> bytes:
    """A white picture whose opacity is ``alpha``, as greyscale+alpha PNG bytes."""
    from PIL import Image

    pixels = np.stack([np.full_like(alpha, 255), alpha], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="LA").save(buffer, format="PNG")
    return buffer.getvalue()


def _images_payload(scene: EmbeddingScene, width: int, progress: bool, rendered: dict) -> dict:
    jobs = [(e, layer) for e in range(len(scene.epochs)) for layer in scene.layers if (e, layer) not in rendered]
    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="rendering snapshot images", unit="picture")

    def render(job):
        masks = _frame_masks(scene, job[1], job[0], width)
        if bar is not None:
            bar.update(1)
        return job, masks

    # The compiled aggregation and zlib both release the GIL, so two threads use both cores.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="neuromapper-export") as pool:
        rendered.update(dict(pool.map(render, jobs)))
    if bar is not None:
        bar.close()
    n_classes = len(scene.class_names)
    class_colors = list(scene.palette.values())
    correctness = list(CORRECTNESS_COLORS.values())
    groups = [
        {"cls": k, "colors": [class_colors[k], correctness[j]]} for k in range(n_classes) for j in range(2)
    ]
    return {
        "groups": groups,
        # Draw order per colour mode: by class; for correctness the wrong ones last, on top.
        "order": [list(range(2 * n_classes)), [2 * k for k in range(n_classes)] + [2 * k + 1 for k in range(n_classes)]],
        "masks": [
            [
                [[left, top, base64.b64encode(png).decode("ascii")] for left, top, png in rendered[(e, layer)]]
                for layer in scene.layers
            ]
            for e in range(len(scene.epochs))
        ],
    }


# -- page --------------------------------------------------------------------------------------
def _page(data: dict) -> str:
    template = resources.files("neuromapper").joinpath("templates/snapshot.html").read_text(encoding="utf-8")
    # Inside <script>, "</script>" ends the block and "<!--" changes how the parser reads it; JSON
    # escapes of <, > and & keep any text (a class name, a path) from doing either.
    block = json.dumps(data, separators=(",", ":"), allow_nan=False)
    block = block.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = f"NeuroMapper snapshot: {data['run']}"
    return template.replace("__TITLE__", html.escape(title)).replace(DATA_MARK, block)
