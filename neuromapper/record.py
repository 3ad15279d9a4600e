"""Record what a PyTorch model does to a fixed probe set, one epoch at a time.

The :class:`Recorder` is meant to feel like ``torch.utils.tensorboard.SummaryWriter``: create it
once, call :meth:`Recorder.capture` whenever you want a snapshot (usually once per epoch, and
once before training), and close it (or use it as a context manager)::

    with Recorder(model, layers=["conv2", "fc1", "fc2"], probe=(x_probe, y_probe),
                  class_names=names, path="runs/mnist") as rec:
        rec.capture(epoch=0)
        for epoch in range(1, 11):
            train_one_epoch(...)
            rec.capture(epoch, metrics={"train_loss": loss, "val_acc": acc})

A capture runs the probe through the model in ``eval()`` mode under ``torch.no_grad()`` in
batches, with forward hooks on the chosen modules (named by their dotted ``named_modules()``
path, as torchvision's feature extraction names them). The hooks exist only while a capture
runs and are removed in ``finally``; the model's previous train/eval mode is restored, so the
recorder never changes what the training loop sees. Floating-point probe inputs are cast to the
model's dtype (a bfloat16 model gets a bfloat16 probe); everything is stored as float32.

What is stored for a layer is one vector per probe sample: a ``(batch, features)`` output as it
is, a feature map ``(batch, channels, *spatial)`` reduced over its spatial axes
(``channel_reduce``), and the ``(batch, time, features)`` or ``(time, batch, features)`` output of
a sequence module (RNN, LSTM, GRU, attention, transformer, or a block of linear/embedding layers)
reduced over time (``sequence_reduce``); :func:`_batch_first` says how a 3-D output is read.
Tuple outputs give their first tensor; dict outputs need an ``output_selector``. The run's
``layer_reduction(layer)`` variable says which reduction each layer got (``"none"``,
``"spatial-mean"``, ``"time-last"``...).

The model's output is the classifier head: ``C`` logits give ``C`` classes; a single logit ``z``
(a sigmoid head trained with ``BCEWithLogitsLoss``) gives two classes and is stored as the logits
``[0, z]``, whose softmax is ``[1 - sigmoid(z), sigmoid(z)]``, so the prediction is ``z > 0`` and
the stored cross-entropy loss equals the binary cross-entropy. Multi-label heads are refused.

With ``attacks=`` (an :class:`~neuromapper.attacks.AttackConfig`) each capture also makes
*adversarial twins*: for a fixed, class-stratified set of probe samples, FGSM, PGD and one-pixel
attacks against the model as it is at that epoch; ``capture(..., instances={"my-cat": x})`` adds
inputs of your own. Twins go through the same hooked forward pass as the probe, so their
activations are reduced exactly like the probe's; :mod:`neuromapper.store` describes how they are
stored and :func:`neuromapper.store.twin_table` what each one is.

Writing an epoch to disk (compression, fsync, atomic rename) happens on a background thread, so
the disk work of epoch ``N`` overlaps training epoch ``N + 1``; but at most one epoch is in
flight: ``capture(N)`` waits for the previous epoch's write before queueing its own. So when
``capture(N)`` returns, every epoch captured before ``N`` is durably on disk and a ``kill -9``
loses at most epoch ``N``; :meth:`Recorder.flush` makes ``N`` durable too and
:meth:`Recorder.close` flushes. An error in the writer is raised at the next call. After a crash,
``Recorder(..., resume=True)`` with the same model layers, probe and class names appends to the
run (see :class:`Recorder`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import attacks as attacks_
from . import model_parts, store

CHANNEL_REDUCTIONS = ("mean", "max")
SEQUENCE_REDUCTIONS = ("mean", "last", "max")
_SKIPPED_DEFAULT_TYPES = (nn.ReLU, nn.Dropout, nn.Flatten, nn.Identity, nn.MaxPool2d, nn.AvgPool2d)


def default_layers(model: nn.Module) -> list[str]:
    """The output of each top-level block that has parameters (norm layers excepted).

    For a ``Sequential`` of single layers this is every weight layer; for a torchvision ResNet it
    is ``conv1, layer1, ..., layer4, fc``; for a model built from named blocks it is the blocks.
    """
    names = []
    for name, child in model.named_children():
        if isinstance(child, _SKIPPED_DEFAULT_TYPES) or isinstance(child, nn.modules.batchnorm._NormBase):
            continue
        if any(True for _ in child.parameters()):
            names.append(name)
    if not names:
        raise ValueError(
            f"{type(model).__name__} has no top-level module with parameters: pass layers=[...] "
            f"explicitly; valid names: {_module_names(model)}"
        )
    return names


def _module_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def _to_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except Exception as exc:
        raise TypeError(f"{what}: expected a tensor or array, got {type(value).__name__}") from exc


def _labels_tensor(y: Any) -> torch.Tensor:
    """Probe labels as int64 class indices ``(N,)``, or a clear error saying what is accepted."""
    if not isinstance(y, torch.Tensor):
        values = np.asarray(y)
        if values.dtype.kind not in "biuf":
            example = f" such as {values.flat[0].item()!r}" if values.size else ""
            raise TypeError(
                f"probe labels: expected integer class indices, got {values.dtype} values{example}; "
                "map them to 0..C-1 and pass the names as class_names=[...]"
            )
        y = torch.as_tensor(values)
    if y.is_complex():
        raise TypeError(f"probe labels: expected integer class indices, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:  # (N, 1) targets, as BCEWithLogitsLoss wants them
        y = y[:, 0]
    if y.ndim == 2:
        raise ValueError(
            f"probe labels: shape {tuple(y.shape)} looks like multi-hot (multi-label) targets, which "
            "NeuroMapper does not support yet. Supported: single-label classifiers, with labels of "
            "shape (N,) holding class indices 0..C-1 for a C-logit head or 0/1 for a one-logit "
            "sigmoid head (for one-hot labels pass y.argmax(1))"
        )
    if y.ndim != 1:
        raise ValueError(f"probe labels: expected a 1-D array of class indices, got shape {tuple(y.shape)}")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(f"probe labels: expected integer class indices, got dtype {y.dtype}")
    return y.long()


def _probe_tensors(probe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept ``(x, y)`` tensors/arrays or a map-style dataset of ``(x, y)`` pairs."""
    if isinstance(probe, (tuple, list)) and len(probe) == 2:
        x, y = probe
    elif isinstance(probe, torch.utils.data.Dataset):
        if len(probe) == 0:
            raise ValueError("probe: the probe set is empty")
        pairs = [probe[i] for i in range(len(probe))]
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    else:
        raise TypeError(
            "probe: expected (inputs, labels) or a map-style torch Dataset of (input, label) pairs, "
            f"got {type(probe).__name__}"
        )
    x = _to_tensor(x, "probe inputs")
    y = _labels_tensor(y)
    if len(x) != len(y):
        raise ValueError(f"probe: {len(x)} inputs but {len(y)} labels; they must match one to one")
    if len(y) == 0:
        raise ValueError("probe: the probe set is empty")
    return x, y


def _id_summary(ids: np.ndarray) -> str:
    return str(ids.tolist()) if len(ids) <= 12 else f"{len(ids)} ids from {ids.min()} to {ids.max()}"


def probe_hash(x: torch.Tensor) -> str:
    """SHA-256 of the probe inputs (dtype, shape and bytes), kept in run.nc for ``resume=True``."""
    x = x.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{x.dtype} {tuple(x.shape)}".encode())
    digest.update(x.view(torch.uint8).numpy())
    return digest.hexdigest()


_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
)
_FEATURES_LAST = (nn.Linear, nn.Embedding, nn.LayerNorm)


def _batch_first(module: nn.Module) -> bool | None:
    """How to read a 3-D output of ``module``: a batch-first sequence ``(batch, time, features)``
    (``True``), a time-first one ``(time, batch, features)`` (``False``), or a feature map
    ``(batch, channels, length)`` (``None``).

    The first module inside ``module`` (itself included, in ``modules()`` order) that settles it
    decides. A ``batch_first`` attribute says it outright: RNNs, ``nn.MultiheadAttention`` and
    ``nn.Transformer`` have one, ``nn.TransformerEncoder(Layer)`` reach theirs through their
    attention; a shape could not tell ``(batch, time)`` from ``(time, batch)`` when both have the
    same length. Convolution, pooling and batch/group norm work on axis 1: a feature map. Linear,
    embedding and layer norm work on the last axis: a batch-first sequence of tokens, as in
    HuggingFace-style encoders. Anything else (a lone ReLU, say) is taken for a feature map.
    """
    for sub in module.modules():
        if isinstance(getattr(sub, "batch_first", None), bool):
            return sub.batch_first
        if isinstance(sub, _CHANNELS_FIRST):
            return None
        if isinstance(sub, _FEATURES_LAST):
            return True
    return None


def _select(output: Any, selector: Any, what: str, how: str) -> torch.Tensor:
    """The tensor to record from ``output``: ``selector``'s pick, else a tuple's first item."""
    if selector is not None:
        output = selector(output) if callable(selector) else output[selector]
    elif isinstance(output, Mapping):
        raise TypeError(f"{what} returned a dict with keys {list(output)}: pick one with {how}")
    elif isinstance(output, (tuple, list)) and output:
        output = output[0]  # LSTM (out, (h, c)), attention (out, weights), (logits, aux)...
    if not isinstance(output, torch.Tensor):
        raise TypeError(f"{what} returned {type(output).__name__}, not a tensor: pick one with {how}")
    return output


def _small_images(x: torch.Tensor, max_side: int) -> torch.Tensor | None:
    """Image-like inputs as float ``(N, C, h, w)`` no larger than ``max_side``, else ``None``."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or min(x.shape[2:]) < 4:
        return None
    x = x.detach().float().cpu()
    if max(x.shape[2:]) > max_side:
        x = torch.nn.functional.interpolate(x, size=(max_side, max_side), mode="area")
    return x


def thumbnails(x: torch.Tensor, max_side: int = 32, value_range: tuple[float, float] | None = None) -> np.ndarray | None:
    """Small uint8 images ``(sample, y, x, channel)`` of image-like probe inputs, else ``None``.

    Inputs are usually normalised, so they are rescaled with the probe's global min and max
    (the same mapping for every sample keeps relative brightness), or with ``value_range``
    (the recorder passes the probe's range for adversarial twins, so that a twin and its source
    share one scale). Larger images are shrunk to ``max_side`` so that hover cards and exports
    stay small.
    """
    x = _small_images(x, max_side)
    if x is None:
        return None
    lo, hi = value_range if value_range is not None else (float(x.min()), float(x.max()))
    scaled = (x - lo) / (hi - lo if hi > lo else 1.0)
    return (scaled * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _describe(model: nn.Module) -> dict:
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "repr": repr(model),
    }


def _kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, nn.modules.conv._ConvNd) else type(module).__name__


class Recorder:
    """Capture activations of chosen layers for a fixed probe set into a run directory.

    At most one epoch is ever in flight: when :meth:`capture` returns for epoch ``N``, every
    earlier capture is durably on disk, so a crash or ``kill -9`` loses at most epoch ``N``;
    :meth:`flush` makes ``N`` durable too, and :meth:`close` flushes.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``; it may live on the CPU or a GPU (the probe follows it). Its output
        is a classifier head: ``(batch, C)`` logits, or ``(batch, 1)`` / ``(batch,)`` for a
        one-logit sigmoid head (two classes, stored as logits ``[0, z]``; see :mod:`the module
        docstring <neuromapper.record>`). Tuple outputs give their first item.
    layers
        Dotted ``named_modules()`` paths, e.g. ``["conv2", "layer3.1", "fc"]``; ``None`` picks
        :func:`default_layers`. A module's output is recorded as one vector per sample: conv
        feature maps ``(N, C, H, W)`` are reduced per channel with ``channel_reduce``, and the
        outputs of sequence modules with ``sequence_reduce``.
    probe
        ``(inputs, labels)`` as tensors or arrays, or a map-style dataset of pairs. The same
        samples are used at every capture. Labels are class indices ``0..C-1`` (``(N, 1)`` is
        accepted as ``(N,)``); multi-hot labels (multi-label heads) are refused.
    class_names
        One name per class; default ``"0", "1", ..., "C-1"``. The number of classes ``C`` is the
        model's logit width (2 for a one-logit head), and ``class_names`` must have ``C`` names.
    path
        Run directory to create (see :mod:`neuromapper.store`).
    batch_size
        Probe samples per forward pass during a capture.
    channel_reduce
        ``"mean"`` or ``"max"`` over the spatial axes of feature maps.
    sequence_reduce
        ``"mean"``, ``"last"`` or ``"max"`` over the time axis of a sequence module's 3-D output:
        ``nn.RNN``/``LSTM``/``GRU``, ``nn.MultiheadAttention``, ``nn.Transformer*`` and modules
        containing them, whose ``batch_first`` attribute says whether the output is
        ``(batch, time, features)`` or ``(time, batch, features)``, and blocks that start with a
        linear, embedding or layer-norm layer, read as ``(batch, tokens, features)``. A
        time-first output of a module without ``batch_first`` is an error (its first axis is not
        the batch) unless ``output_selector`` transposes it.
    output_selector
        ``{layer_name: key_or_callable}`` for layers whose output is not one tensor: a key picks
        ``output[key]`` (e.g. ``"last_hidden_state"`` of a dict output), a callable gets the output
        and returns a tensor (e.g. ``lambda out: out[1][0][-1]`` for an LSTM's last hidden
        state). A selected 2-D tensor is recorded as it is; 3-D and larger ones are reduced as
        above. Without a selector, tuples give their first item and dicts are an error.
    logits_selector
        Key or callable that picks the logits from the model's output, for models that return a
        dict (e.g. ``"logits"``) or a structure whose first item is not the logits.
    precision
        ``"float32"`` (exact) or ``"16bit"`` (CF-packed int16, half the size; see
        :func:`neuromapper.store.packed_int16_encoding`) for stored activations.
    complevel
        zlib level 1-9 for the epoch files, or ``None`` for uncompressed.
    images
        uint8 thumbnails ``(sample, y, x, channel)`` to store; by default derived from image-like
        inputs with :func:`thumbnails`.
    sample_ids
        One integer id per probe sample (e.g. its index in the dataset); default ``0..N-1``.
    hyperparameters, dataset
        Stored in the run's attributes (hyperparameters as JSON).
    overwrite
        Replace an existing run at ``path`` instead of raising.
    resume
        Append to an existing run at ``path`` (after a crash, say) instead of raising; the run is
        created if it does not exist yet. The layers (names, widths and reductions), the probe
        (sample ids, labels and a SHA-256 of the inputs), the class names and the attacks must
        match the run's, otherwise a :class:`~neuromapper.store.RunError` says what differs.
        Epochs on disk are kept and listed in :attr:`epochs`; capturing one of them again
        replaces it.
    attacks
        Adversarial twins to make at each capture: an :class:`~neuromapper.attacks.AttackConfig`,
        a dict of its fields (e.g. ``{"methods": ["fgsm", "pgd"], "eps": 0.1}``) or ``None``
        (none). For a fixed set of probe samples (``per_class`` of each class, the same at every
        epoch) each attack runs against the model as it is at that epoch, and the attacked
        input is recorded like a probe sample (same hooks, same layer reductions) with its
        logits, prediction, whether it fooled the model, the perturbation size and a thumbnail;
        see :mod:`neuromapper.store` for the schema. Needs floating-point inputs.
    twin_ids
        Probe sample ids (values of ``sample_ids``) to attack, instead of the stratified pick;
        given without ``attacks`` it turns on the default :class:`~neuromapper.attacks.AttackConfig`.
    spotlight
        Probe sample ids whose **full** feature maps (channels × height × width, 16-bit) are kept
        at every recorded layer that outputs one, for the Model page; default
        ``spotlight_per_class`` per class (:func:`~neuromapper.attacks.stratified_ids`); ``[]``
        keeps none.
    spotlight_per_class
        The default spotlight's samples per class.
    weight_budget
        Bytes of weights kept per epoch besides the first conv layer's kernels, which are always
        kept: the convs feeding the recorded feature-map layers, in order, while they fit (what
        does not fit is listed in the run; see :mod:`neuromapper.model_parts`). A model without
        convs whose first ``nn.Linear`` reads image inputs whole keeps that layer's weights.
    record_inputs
        Keep the probe's inputs once per run (flattened; PCA-compressed when wide) as the
        ``input_feature`` variable, so the Training page can explore the raw data like a layer.
    boundary_resolution
        For models on 2-D inputs (``(N, 2)`` probes), the class probabilities over a
        ``boundary_resolution`` × ``boundary_resolution`` grid covering the probe are kept at every
        capture (the Training page's decision boundary); 0 turns it off.

    Attributes
    ----------
    epochs
        The epochs captured so far (including, with ``resume=True``, those found on disk).
    class_names
        The class names, one per class of the model's output.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        probe: Any = None,
        class_names: Sequence[str] | None = None,
        path: str | Path = "runs/run",
        *,
        batch_size: int = 256,
        channel_reduce: str = "mean",
        sequence_reduce: str = "mean",
        output_selector: Mapping[str, Any] | None = None,
        logits_selector: Any = None,
        precision: str = "float32",
        complevel: int | None = 1,
        images: np.ndarray | None = None,
        sample_ids: Iterable[int] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        overwrite: bool = False,
        resume: bool = False,
        attacks: attacks_.AttackConfig | Mapping[str, Any] | None = None,
        twin_ids: Iterable[int] | None = None,
        spotlight: Iterable[int] | None = None,
        spotlight_per_class: int = 2,
        weight_budget: int = model_parts.WEIGHT_BUDGET,
        record_inputs: bool = True,
        boundary_resolution: int = model_parts.BOUNDARY_RESOLUTION,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if probe is None:
            raise ValueError("probe: required, e.g. probe=(x_probe, y_probe)")
        if channel_reduce not in CHANNEL_REDUCTIONS:
            raise ValueError(f"channel_reduce: expected one of {CHANNEL_REDUCTIONS}, got {channel_reduce!r}")
        if sequence_reduce not in SEQUENCE_REDUCTIONS:
            raise ValueError(f"sequence_reduce: expected one of {SEQUENCE_REDUCTIONS}, got {sequence_reduce!r}")
        if precision not in store.PRECISIONS:
            raise ValueError(f"precision: expected one of {store.PRECISIONS}, got {precision!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        if overwrite and resume:
            raise ValueError("overwrite=True and resume=True contradict each other: pick one")
        self.model = model
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.channel_reduce = channel_reduce
        self.sequence_reduce = sequence_reduce
        self.logits_selector = logits_selector
        self.precision = precision
        self.complevel = complevel
        self.x, self.y = _probe_tensors(probe)
        modules = dict(model.named_modules())
        self.layers = list(default_layers(model) if layers is None else layers)
        if not self.layers:
            raise ValueError(
                f"layers: expected at least one layer name, got none; valid names: {_module_names(model)} "
                "(or layers=None for the top-level blocks)"
            )
        unknown = [name for name in self.layers if name not in modules or not name]
        if unknown:
            raise ValueError(f"layers: {unknown} not found in {type(model).__name__}; valid names: {_module_names(model)}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers: each layer may be named once, got {self.layers}")
        self.output_selector = dict(output_selector or {})
        stray = sorted(set(self.output_selector) - set(self.layers))
        if stray:
            raise ValueError(f"output_selector: {stray} are not among the recorded layers {self.layers}")
        self._modules = [modules[name] for name in self.layers]
        self._batch_first = [_batch_first(module) for module in self._modules]

        # One forward pass on two samples tells the logit width and the layers' widths for run.nc.
        logits, acts, reductions = self._forward(self.x[:2])
        width = logits.shape[1]
        self._one_logit = width == 1
        n_classes = 2 if self._one_logit else width
        head = "one sigmoid logit" if self._one_logit else f"{width} logits"
        if class_names is None:
            class_names = [str(i) for i in range(n_classes)]
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) != n_classes:
            raise ValueError(
                f"class_names: {len(self.class_names)} names given, but the model outputs {head}, "
                f"so it has {n_classes} classes"
            )
        if int(self.y.min()) < 0 or int(self.y.max()) >= n_classes:
            raise ValueError(
                f"probe labels: values must lie in 0..{n_classes - 1} for the {n_classes} classes of the "
                f"model's output ({head}), got min {int(self.y.min())} and max {int(self.y.max())}"
            )

        small = _small_images(self.x, 32)
        self._thumbnail_range = None if small is None else (float(small.min()), float(small.max()))
        if images is None:
            images = thumbnails(self.x)
        self._image_shape = None if images is None else tuple(images.shape[1:])
        self.sample_ids = np.arange(len(self.y)) if sample_ids is None else np.asarray(list(sample_ids))
        self.attacks = self._attack_config(attacks, twin_ids)
        self._spotlight_rows, self._map_layers = self._spotlight(spotlight, spotlight_per_class)
        self._weights, skipped = model_parts.weight_plan(model, self._map_layers, tuple(self.x.shape[1:]), weight_budget)
        self._grid = model_parts.boundary_grid(self.x, int(boundary_resolution))
        inputs, input_pca = model_parts.input_features(self.x) if record_inputs else (None, False)
        attrs = {
            "model": _describe(model),
            "hyperparameters": dict(hyperparameters or {}),
            "dataset": dataset,
            "channel_reduce": channel_reduce,
            "sequence_reduce": sequence_reduce,
            "head": "sigmoid: logits stored as [0, z]" if self._one_logit else "softmax",
            "probe_sha256": probe_hash(self.x),
            "attacks": None if self.attacks is None else self.attacks.to_json(),
            "map_layers": list(self._map_layers),
            "weight_layers": [entry.to_json() for entry in self._weights],
            "skipped_weights": skipped,
            "input_pca": input_pca,
        }
        store.create_run(
            self.path,
            labels=self.y.numpy(),
            class_names=self.class_names,
            layers=self.layers,
            layer_units=[a.shape[1] for a in acts],
            layer_kinds=[_kind(module) for module in self._modules],
            layer_reductions=reductions,
            images=images,
            sample_ids=None if sample_ids is None else self.sample_ids,
            spotlight=self.sample_ids[self._spotlight_rows],
            inputs=inputs,
            grid=self._grid,
            attrs=attrs,
            overwrite=overwrite,
            resume=resume,
        )
        self.epochs: list[int] = store.recorded_epochs(self.path) if resume else []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuromapper-writer")
        self._pending: Future | None = None
        self._closed = False

    def _attack_config(self, attacks: Any, twin_ids: Iterable[int] | None) -> attacks_.AttackConfig | None:
        """The attack config with its pairs and input range resolved (what run.nc keeps)."""
        config = attacks_.AttackConfig.build(attacks)
        if twin_ids is not None:
            ids = np.asarray(list(twin_ids)) if not isinstance(twin_ids, np.ndarray) else twin_ids
            config = dataclasses.replace(config or attacks_.AttackConfig(), twin_ids=tuple(ids.tolist()))
        if config is None:
            self._twin_rows = self._one_pixel_rows = np.zeros(0, dtype=np.int64)
            return None
        if not self.x.is_floating_point():
            raise ValueError(f"attacks: FGSM, PGD and one-pixel attacks change the inputs, which must be "
                             f"floating point; this probe holds {self.x.dtype} values")
        if "one-pixel" in config.methods and (self.x.ndim not in (3, 4)):
            raise ValueError(f"attacks: the one-pixel attack needs images (N, C, H, W) or (N, H, W), but the "
                             f"probe has shape {tuple(self.x.shape)}; drop 'one-pixel' from methods")
        row_of = {int(sid): row for row, sid in enumerate(self.sample_ids)}
        if config.twin_ids is not None:
            missing = [i for i in config.twin_ids if i not in row_of]
            if missing:
                raise ValueError(f"twin_ids: {missing[:12]} are not probe sample ids (the probe's ids are "
                                 f"{_id_summary(self.sample_ids)})")
            ids = np.sort(np.asarray(config.twin_ids, dtype=np.int64))
        else:
            ids = attacks_.stratified_ids(self.y.numpy(), self.sample_ids, config.per_class, seed=config.seed)
        self._twin_rows = np.array([row_of[int(i)] for i in ids], dtype=np.int64)
        if config.one_pixel_per_class is None:
            self._one_pixel_rows = self._twin_rows
        else:  # the first k pairs of each class
            taken: dict[int, int] = {}
            keep = []
            for row in self._twin_rows:
                cls = int(self.y[row])
                if taken.get(cls, 0) < config.one_pixel_per_class:
                    keep.append(row)
                    taken[cls] = taken.get(cls, 0) + 1
            self._one_pixel_rows = np.asarray(keep, dtype=np.int64)
        lo = float(self.x.min()) if config.lo is None else config.lo
        hi = float(self.x.max()) if config.hi is None else config.hi
        if not lo < hi:
            raise ValueError(f"attacks: the input range lo={lo}, hi={hi} is empty (a constant probe?); pass lo and hi")
        return dataclasses.replace(config, twin_ids=tuple(int(i) for i in ids), lo=lo, hi=hi)

    # -- capture -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _input_dtype(self) -> torch.dtype | None:
        """The dtype of the model's floating-point weights, which floating inputs must match."""
        return next((p.dtype for p in self.model.parameters() if p.is_floating_point()), None)

    def _rows(self, index: int, output: Any, batch: int) -> tuple[torch.Tensor, str]:
        """One row per sample of layer ``index``'s output, and the name of the reduction used."""
        name = self.layers[index]
        out = _select(output, self.output_selector.get(name), f"layer {name!r}",
                      f"output_selector={{{name!r}: key or callable}}").detach()
        reduction = "none"
        batch_first = self._batch_first[index]
        if out.ndim == 3 and batch_first is not None:
            time = 1 if batch_first else 0
            if self.sequence_reduce == "mean":
                out = out.mean(dim=time)
            elif self.sequence_reduce == "max":
                out = out.amax(dim=time)
            else:
                out = out.select(time, -1)
            reduction = f"time-{self.sequence_reduce}"
        if out.ndim == 0 or out.shape[0] != batch:
            raise ValueError(
                f"layer {name!r} returned shape {tuple(out.shape)} for a batch of {batch} probe samples: "
                "expected the batch on the first axis (the second for a sequence module with "
                f"batch_first=False); record another module or pass output_selector={{{name!r}: callable}} "
                "returning a (batch, ...) tensor"
            )
        if out.ndim > 2:  # (N, C, *spatial): one value per channel
            flat = out.flatten(2)
            out = flat.mean(dim=2) if self.channel_reduce == "mean" else flat.amax(dim=2)
            reduction = f"spatial-{self.channel_reduce}"
        elif out.ndim == 1:
            out = out[:, None]
        return out.float().cpu(), reduction

    def _run(self, x: torch.Tensor, hooks: Mapping[int, Any], batch_size: int | None = None) -> torch.Tensor:
        """Run ``x`` through the model in eval mode under ``no_grad`` in batches, with ``hooks``
        (``{layer index: hook(index, output, batch)}``) on the recorded modules; hooks, train/eval
        mode and gradients are restored afterwards. Returns the logits as ``(N, width)``."""
        handles = []
        was_training = self.model.training
        device, dtype = self.device, self._input_dtype()
        batch_rows = [0]  # the hooks need the size of the batch being run

        def hook(index):
            return lambda module, inputs, output: hooks[index](index, output, batch_rows[0])

        try:
            for i in hooks:
                handles.append(self._modules[i].register_forward_hook(hook(i)))
            self.model.eval()
            outputs = []
            with torch.no_grad():
                step = batch_size or self.batch_size
                for start in range(0, len(x), step):
                    batch = x[start : start + step].to(device)
                    if batch.is_floating_point() and dtype is not None:
                        batch = batch.to(dtype)
                    batch_rows[0] = len(batch)
                    out = _select(self.model(batch), self.logits_selector, "the model", "logits_selector=key or callable")
                    outputs.append(out.detach().float().cpu())
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        logits = torch.cat(outputs)
        if logits.ndim == 1:  # a one-logit head that squeezed its last axis
            logits = logits[:, None]
        if logits.ndim != 2 or logits.shape[1] == 0:
            raise ValueError(
                f"model output: expected logits of shape (batch, classes) or (batch, 1), got {tuple(logits.shape)}"
            )
        return logits

    def _class_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """One logit per class: a one-logit head's ``z`` becomes ``[0, z]`` (see the module docstring)."""
        return torch.cat([torch.zeros_like(logits), logits], dim=1) if self._one_logit else logits

    def _raw_outputs(self, x: torch.Tensor, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        """The unreduced outputs of the layers at ``indices`` for ``x`` (after ``output_selector``)."""
        parts: dict[int, list[torch.Tensor]] = {i: [] for i in indices}

        def keep(index, output, batch):
            name = self.layers[index]
            parts[index].append(_select(output, self.output_selector.get(name), f"layer {name!r}",
                                        f"output_selector={{{name!r}: key or callable}}").detach().float().cpu())

        self._run(x, {i: keep for i in indices})
        return {i: torch.cat(p) for i, p in parts.items() if p}

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
        """Run ``x`` through the model with hooks on every recorded layer (see :meth:`_run`).

        Returns the model's output as ``(N, logits)``, each layer's ``(N, units)`` rows, and the
        reduction each layer's output needed.
        """
        captured: list[list[tuple[torch.Tensor, str]]] = [[] for _ in self.layers]

        def rows(index, output, batch):
            captured[index].append(self._rows(index, output, batch))

        logits = self._run(x, {i: rows for i in range(len(self.layers))})
        silent = [name for name, parts in zip(self.layers, captured) if not parts]
        if silent:
            raise ValueError(
                f"layers: {silent} never ran in {type(self.model).__name__}.forward, so there is nothing "
                "to record; pick modules that the forward pass calls"
            )
        acts = [torch.cat([rows for rows, _ in parts]) for parts in captured]
        for name, a in zip(self.layers, acts):
            if a.shape[0] != len(x):
                raise RuntimeError(
                    f"layer {name!r} produced {a.shape[0]} rows for {len(x)} probe samples: a module "
                    "called more than once per forward pass cannot be recorded; pick a distinct module"
                )
        return logits, acts, [parts[0][1] for parts in captured]

    # -- what the Model and Training pages read (see neuromapper.model_parts) -------------------------
    def _spotlight(self, spotlight: Iterable[int] | None, per_class: int) -> tuple[np.ndarray, dict[str, int]]:
        """The spotlight's probe rows and the map layers (name -> channels) whose full outputs they keep."""
        candidates = [i for i, first in enumerate(self._batch_first) if first is None]
        outputs = self._raw_outputs(self.x[:2], candidates)
        maps = {self.layers[i]: int(out.shape[1]) for i, out in outputs.items() if out.ndim == 4}
        if spotlight is None:
            ids = attacks_.stratified_ids(self.y.numpy(), self.sample_ids, per_class) if maps else []
        else:
            ids = [int(i) for i in spotlight]
        position = {int(v): k for k, v in enumerate(self.sample_ids)}
        unknown = [i for i in ids if i not in position]
        if unknown:
            raise ValueError(f"spotlight: ids {unknown[:12]} are not probe sample ids "
                             f"({_id_summary(np.asarray(self.sample_ids))})")
        rows = np.asarray([position[int(i)] for i in ids], dtype=np.int64)
        return rows, (maps if len(rows) else {})

    def _feature_maps(self) -> list[np.ndarray] | None:
        """The map layers' full outputs for the spotlight samples, ``(spotlight, C, H, W)`` each."""
        if not self._map_layers:
            return None
        indices = [self.layers.index(name) for name in self._map_layers]
        outputs = self._raw_outputs(self.x[self._spotlight_rows], indices)
        return [outputs[i].numpy() for i in indices]

    def _boundary(self) -> np.ndarray | None:
        """Class probabilities over the 2-D input grid, ``(grid_y, grid_x, class)``, for 2-D inputs."""
        if self._grid is None:
            return None
        xs, ys = self._grid
        # no hooks and a 2-D input: large batches (40,000 points cost 2 ms per 4,096 for a small MLP)
        logits = self._class_logits(self._run(model_parts.grid_points(xs, ys), {}, batch_size=4096))
        return torch.softmax(logits, dim=1).numpy().reshape(len(ys), len(xs), -1)

    def _instances(self, instances: Mapping[str, Any] | None) -> tuple[list[str], torch.Tensor | None, list[int]]:
        """The user's instances as names, one input batch and labels (-1 when not given)."""
        if instances is None:
            return [], None, []
        if not isinstance(instances, Mapping):
            raise TypeError(f"instances: expected a dict {{name: input or (input, label)}}, got {type(instances).__name__}")
        names, inputs, labels = [], [], []
        shape = tuple(self.x.shape[1:])
        for name, value in instances.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"instances: names must be non-empty strings, got {name!r}")
            label = -1
            if isinstance(value, tuple) and len(value) == 2:
                value, label = value
                if isinstance(label, str):
                    if label not in self.class_names:
                        raise ValueError(f"instances[{name!r}]: label {label!r} is not a class; classes: {self.class_names}")
                    label = self.class_names.index(label)
                elif isinstance(label, bool) or not isinstance(label, (int, np.integer)) or not 0 <= label < len(self.class_names):
                    raise ValueError(f"instances[{name!r}]: label must be a class index 0..{len(self.class_names) - 1} "
                                     f"or a class name, got {label!r}")
            x = _to_tensor(value, f"instances[{name!r}]")
            if tuple(x.shape) == (1, *shape):
                x = x[0]
            if tuple(x.shape) != shape:
                raise ValueError(f"instances[{name!r}]: expected one input of shape {shape} (like a probe sample), "
                                 f"got {tuple(x.shape)}")
            names.append(name)
            inputs.append(x.to(self.x.dtype))
            labels.append(int(label))
        return names, (torch.stack(inputs) if inputs else None), labels

    def _attack(self, epoch: int) -> dict:
        """This epoch's attacked twins: ids, source rows, inputs, labels, perturbation, evaluations."""
        config = self.attacks
        out: dict = {"id": [], "row": [], "input": [], "label": [], "perturbation": [], "evaluations": []}
        if config is None:
            return out
        device, dtype = self.device, self._input_dtype()
        common = {"lo": config.lo, "hi": config.hi, "logits_selector": self.logits_selector}
        for method, eps, eps_in_id in config.twin_sets(epoch):
            rows = self._one_pixel_rows if method == "one-pixel" else self._twin_rows
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                x = self.x[chunk].to(device=device, dtype=dtype or self.x.dtype)
                y = self.y[chunk].to(device)
                if method == "fgsm":
                    adv, spent = attacks_.fgsm(self.model, x, y, eps, **common), np.ones(len(chunk))
                elif method == "pgd":
                    adv = attacks_.pgd(self.model, x, y, eps, config.pgd_steps, config.pgd_step_size,
                                       random_start=config.pgd_random_start, seed=config.seed + start, **common)
                    spent = np.full(len(chunk), config.pgd_steps)
                else:
                    adv, spent = attacks_.one_pixel(self.model, x, y, config.one_pixel_budget, **common)
                    spent = spent.numpy()
                adv = adv.detach()
                out["input"].append(adv.cpu())
                out["id"].extend(store.twin_id(method, int(self.sample_ids[r]), eps if eps_in_id else None) for r in chunk)
                out["row"].extend(int(r) for r in chunk)
                out["label"].extend(int(v) for v in self.y[chunk])
                out["perturbation"].extend((adv.float() - x.float()).abs().flatten(1).amax(1).cpu().tolist())
                out["evaluations"].extend(int(v) for v in spent)
        return out

    def _twins(self, epoch: int, benign_prediction: np.ndarray, instances: tuple) -> dict | None:
        """Attack the pairs, add the instances (from :meth:`_instances`), record them all with :meth:`_forward`."""
        names, instance_x, instance_labels = instances
        twins = self._attack(epoch)
        if instance_x is not None:
            twins["id"].extend(store.twin_id("instance", name) for name in names)
            twins["input"].append(instance_x)
            twins["label"].extend(instance_labels)
            twins["perturbation"].extend([np.nan] * len(names))
            twins["evaluations"].extend([0] * len(names))
        if not twins["id"]:
            return None
        x = torch.cat([t.cpu() for t in twins["input"]])
        logits, acts, _ = self._forward(x)
        logits = self._class_logits(logits)
        prediction = logits.argmax(1).numpy()
        label = np.asarray(twins["label"])
        n_attacked = len(twins["row"])
        source_rows = np.asarray(twins["row"], dtype=np.int64)
        fooled = np.zeros(len(label), dtype=np.int8)
        fooled[:n_attacked] = (benign_prediction[source_rows] == label[:n_attacked]) & (prediction[:n_attacked] != label[:n_attacked])
        images = None
        if self._image_shape is not None and self._thumbnail_range is not None:
            images = thumbnails(x, value_range=self._thumbnail_range)
            if images is None or tuple(images.shape[1:]) != self._image_shape:
                images = None  # the user's own probe images have another shape: twins go without
        return {"id": twins["id"], "activations": [a.numpy() for a in acts], "logits": logits.numpy(),
                "label": label, "fooled": fooled, "perturbation": np.asarray(twins["perturbation"], dtype=float),
                "evaluations": np.asarray(twins["evaluations"]), "images": images}

    def capture(self, epoch: int, metrics: Mapping[str, float] | None = None,
                instances: Mapping[str, Any] | None = None) -> None:
        """Record the probe at ``epoch`` (an integer; capturing the same epoch again replaces it).

        ``metrics`` are scalars to keep with the epoch (training loss, validation accuracy...).
        With ``attacks=`` the pairs' adversarial twins are made against the model as it is now
        and recorded beside the probe. ``instances`` are inputs of your own to record the same
        way, ``{name: input}`` or ``{name: (input, label)}`` with one probe-shaped input and a
        class index or name (stored as twins ``"instance/<name>"``).

        The probe runs through the model first; then the previous epoch's write is awaited (at
        most one epoch is in flight) and this epoch's write is queued. So when ``capture``
        returns, every earlier epoch is durably on disk and this one is being written; call
        :meth:`flush` to wait for it too.
        """
        self._check_open()
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative integer, got {epoch!r}")
        clean_metrics = {}
        for key, value in (metrics or {}).items():
            try:
                clean_metrics[str(key)] = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metrics[{key!r}]: expected a number, got {value!r}") from exc
        instances = self._instances(instances)  # bad instances fail before any work
        logits, acts, _ = self._forward(self.x)
        logits = self._class_logits(logits)  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]
        loss = torch.nn.functional.cross_entropy(logits, self.y, reduction="none")
        activations = [a.numpy() for a in acts]
        for name, a in zip(self.layers, activations):
            bad = a.size - int(np.isfinite(a).sum())
            if bad:
                warnings.warn(
                    f"layer {name!r} at epoch {epoch}: {bad} non-finite activation values; recorded "
                    "as they are and counted in the run's 'nonfinite' variable",
                    RuntimeWarning,
                    stacklevel=2,
                )
        twins = self._twins(int(epoch), logits.argmax(1).numpy(), instances)
        ds = store.epoch_dataset(
            int(epoch),
            layers=self.layers,
            activations=activations,
            logits=logits.numpy(),
            loss=loss.numpy(),
            metrics=clean_metrics,
            feature_maps=self._feature_maps(),
            weights=model_parts.read_weights(self.model, self._weights),
            boundary=self._boundary(),
            twins=twins,
        )
        self.flush()
        self._pending = self._writer.submit(store.append_epoch, self.path, ds, self.complevel, self.precision)
        if int(epoch) not in self.epochs:
            self.epochs.append(int(epoch))

    # -- lifecycle ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Recorder for {self.path} is closed")

    def flush(self) -> None:
        """Wait until every captured epoch is durably on disk; raise the writer's error if any."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Flush the pending write and release the writer thread (hooks are already gone)."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._writer.shutdown(wait=True)
            self._closed = True

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Recorder(path={str(self.path)!r}, layers={self.layers}, samples={len(self.y)}, epochs={self.epochs})"
