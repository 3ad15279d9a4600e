"""What the recorder keeps for the Model and Training pages besides activations (schema 3).

* **Weights** (:func:`weight_plan`): which layers' weights every epoch keeps. The first conv
  layer always (its kernels look at pixels, so they are pictures a person can read); then, for
  each recorded layer that outputs a feature map, the conv that makes its channels (the module
  itself, or the last ``nn.Conv2d`` inside it with as many output channels), while the epoch's
  weights stay within ``budget`` bytes: a ResNet-18's ``layer4`` alone is 9.4 MB of float32 per
  epoch, 20 times its ``conv1``. What the budget leaves out is listed, so a view can say so. A
  model without convs whose first ``nn.Linear`` reads the whole image keeps that layer's weights
  as one image per neuron, as neural-net-viz drew an MLP's first layer.
* **Decision boundary** (:func:`boundary_grid`): for 2-D inputs, a ``resolution`` × ``resolution``
  grid over the probe's range plus a margin of a tenth of it on each side.
* **Input features** (:func:`input_features`): the probe's inputs once per run, flattened, and
  reduced with scikit-learn's PCA to :data:`INPUT_COMPONENTS` components when wider than
  :data:`INPUT_WIDE`, so the raw data can be explored like a layer without storing 3,072 values
  per CIFAR image.

Spotlight feature maps are the full outputs of the map layers for a few probe samples; which
samples is :func:`neuromapper.attacks.stratified_ids` (two per class by default), and the
recorder's hooks capture them (:meth:`neuromapper.Recorder.capture`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

WEIGHT_BUDGET = 4_000_000  # bytes of weights per epoch beyond the first conv layer's
INPUT_WIDE = 64  # inputs wider than this are PCA-compressed ...
INPUT_COMPONENTS = 50  # ... to this many components
BOUNDARY_RESOLUTION = 200
BOUNDARY_MARGIN = 0.1


@dataclass(frozen=True)
class WeightEntry:
    """One layer whose weights are kept: the name the views use, its kind and the module read."""

    layer: str  # a recorded layer's name, or the first conv's module name when it is not recorded
    kind: str  # "conv" or "linear-image"
    module: str  # the dotted name of the nn.Conv2d / nn.Linear whose weight is stored
    shape: tuple[int, ...]  # as stored: (out, in, ky, kx)

    @property
    def bytes(self) -> int:
        return int(np.prod(self.shape)) * 4

    def to_json(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "shape"}


def _feeding_conv(module: nn.Module, name: str, channels: int) -> tuple[str, nn.Conv2d] | None:
    """The conv that makes the ``channels`` output channels of ``module`` (the last one inside it)."""
    found = None
    for sub_name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d) and sub.out_channels == channels:
            found = (f"{name}.{sub_name}" if sub_name else name, sub)
    return found


def weight_plan(model: nn.Module, map_layers: dict[str, int], input_shape: tuple[int, ...],
                budget: int = WEIGHT_BUDGET) -> tuple[list[WeightEntry], list[dict]]:
    """Which layers' weights to keep each epoch, and what the budget skipped (see the module docstring).

    ``map_layers`` maps each recorded feature-map layer to its channel count; ``input_shape`` is
    one probe sample's shape.
    """
    modules = dict(model.named_modules())
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    entries: list[WeightEntry] = []
    for layer, channels in map_layers.items():
        found = _feeding_conv(modules[layer], layer, channels)
        if found is not None and found[0] not in {e.module for e in entries}:
            entries.append(WeightEntry(layer, "conv", found[0], tuple(found[1].weight.shape)))
    if first is not None:
        if first[0] in {e.module for e in entries}:  # the first conv feeds a recorded layer: keep that name
            entries.insert(0, entries.pop([e.module for e in entries].index(first[0])))
        else:
            entries.insert(0, WeightEntry(first[0], "conv", first[0], tuple(first[1].weight.shape)))
    elif len(input_shape) in (2, 3):  # images without convs: the first Linear that reads them whole
        image = (1, *input_shape) if len(input_shape) == 2 else tuple(input_shape)
        linear = next(((n, m) for n, m in model.named_modules()
                       if isinstance(m, nn.Linear) and m.in_features == int(np.prod(image))), None)
        if linear is not None:
            entries.append(WeightEntry(linear[0], "linear-image", linear[0], (linear[1].out_features, *image)))
    kept, skipped, used = [], [], 0
    for i, entry in enumerate(entries):
        if i == 0 or used + entry.bytes <= budget:
            kept.append(entry)
            used += 0 if i == 0 else entry.bytes
        else:
            skipped.append({"layer": entry.layer, "bytes": entry.bytes,
                            "reason": f"over the per-epoch weight budget of {budget:,} bytes (weight_budget=)"})
    return kept, skipped


def read_weights(model: nn.Module, entries: list[WeightEntry]) -> list[np.ndarray]:
    """Copies of the current weights of ``entries`` as float32 arrays of their stored shapes.

    Copies: a float32 CPU weight's ``.numpy()`` shares the parameter's memory, and the epoch is
    written on a background thread while training already changes the weights in place.
    """
    modules = dict(model.named_modules())
    return [modules[e.module].weight.detach().float().cpu().numpy().reshape(e.shape).copy() for e in entries]


def boundary_grid(x: torch.Tensor, resolution: int = BOUNDARY_RESOLUTION) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``(xs, ys)`` of the decision-boundary grid for 2-D inputs ``(N, 2)``, else ``None``."""
    if x.ndim != 2 or x.shape[1] != 2 or not x.is_floating_point() or resolution < 2:
        return None
    lo, hi = x.float().amin(0).numpy(), x.float().amax(0).numpy()
    margin = np.maximum(hi - lo, 1e-6) * BOUNDARY_MARGIN
    xs, ys = (np.linspace(lo[k] - margin[k], hi[k] + margin[k], resolution, dtype=np.float32) for k in (0, 1))
    return xs, ys


def grid_points(xs: np.ndarray, ys: np.ndarray) -> torch.Tensor:
    """The grid's points as ``(len(ys) * len(xs), 2)``, row by row (``y`` outer, ``x`` inner)."""
    gx, gy = np.meshgrid(xs, ys)
    return torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1))


def input_features(x: torch.Tensor, seed: int = 0) -> tuple[np.ndarray, bool]:
    """The probe's inputs flattened, PCA-compressed when wide; and whether PCA was applied."""
    flat = x.detach().float().cpu().reshape(len(x), -1).numpy()
    if flat.shape[1] <= INPUT_WIDE:
        return flat, False
    from sklearn.decomposition import PCA

    components = min(INPUT_COMPONENTS, *flat.shape)
    return PCA(n_components=components, random_state=seed).fit_transform(flat).astype(np.float32), True
