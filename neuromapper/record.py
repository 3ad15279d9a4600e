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
recorder never changes what the training loop sees.

Writing the epoch to disk (compression, fsync) happens on a background thread so the training
loop does not wait for the disk; :meth:`Recorder.flush` waits for it, :meth:`Recorder.close`
flushes. An error in the writer is raised at the next call.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import store

CHANNEL_REDUCTIONS = ("mean", "max")
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


def _probe_tensors(probe: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Accept ``(x, y)`` tensors/arrays or a map-style dataset of ``(x, y)`` pairs."""
    if isinstance(probe, (tuple, list)) and len(probe) == 2:
        x, y = probe
    elif isinstance(probe, torch.utils.data.Dataset):
        pairs = [probe[i] for i in range(len(probe))]
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    else:
        raise TypeError(
            "probe: expected (inputs, labels) or a map-style torch Dataset of (input, label) pairs, "
            f"got {type(probe).__name__}"
        )
    x = _to_tensor(x, "probe inputs")
    y = _to_tensor(y, "probe labels")
    if y.ndim != 1:
        raise ValueError(f"probe labels: expected a 1-D array of class indices, got shape {tuple(y.shape)}")
    if len(x) != len(y):
        raise ValueError(f"probe: {len(x)} inputs but {len(y)} labels; they must match one to one")
    if len(y) == 0:
        raise ValueError("probe: the probe set is empty")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        if not torch.equal(y, y.round()):
            raise ValueError(f"probe labels: expected integer class indices, got dtype {y.dtype}")
    return x, y.long()


def thumbnails(x: torch.Tensor, max_side: int = 32) -> np.ndarray | None:
    """Small uint8 images ``(sample, y, x, channel)`` of image-like probe inputs, else ``None``.

    Inputs are usually normalised, so they are rescaled with the probe's global min and max
    (the same mapping for every sample keeps relative brightness). Larger images are shrunk to
    ``max_side`` so that hover cards and exports stay small.
    """
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3) or min(x.shape[2:]) < 4:
        return None
    x = x.detach().float().cpu()
    if max(x.shape[2:]) > max_side:
        x = torch.nn.functional.interpolate(x, size=(max_side, max_side), mode="area")
    lo, hi = float(x.min()), float(x.max())
    scaled = (x - lo) / (hi - lo if hi > lo else 1.0)
    return (scaled * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def _describe(model: nn.Module) -> dict:
    return {
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "repr": repr(model),
    }


class Recorder:
    """Capture activations of chosen layers for a fixed probe set into a run directory.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``; it may live on the CPU or a GPU (the probe follows it).
    layers
        Dotted ``named_modules()`` paths, e.g. ``["conv2", "layer3.1", "fc"]``; ``None`` picks
        :func:`default_layers`. A module's output is recorded: conv feature maps ``(N, C, H, W)``
        are reduced per channel with ``channel_reduce``, giving one value per channel.
    probe
        ``(inputs, labels)`` as tensors or arrays, or a map-style dataset of pairs. The same
        samples are used at every capture.
    class_names
        One name per class index; default ``"0", "1", ...``.
    path
        Run directory to create (see :mod:`neuromapper.store`).
    batch_size
        Probe samples per forward pass during a capture.
    channel_reduce
        ``"mean"`` or ``"max"`` over the spatial axes of feature maps.
    precision
        ``"float32"`` (exact) or ``"16bit"`` (CF-packed int16, half the size; see
        :func:`neuromapper.store.packed_int16_encoding`) for stored activations.
    complevel
        zlib level 1-9 for the epoch files, or ``None`` for uncompressed.
    images
        uint8 thumbnails ``(sample, y, x, channel)`` to store; by default derived from image-like
        inputs with :func:`thumbnails`.
    hyperparameters, dataset
        Stored in the run's attributes (hyperparameters as JSON).
    overwrite
        Replace an existing run at ``path`` instead of raising.
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
        precision: str = "float32",
        complevel: int | None = 1,
        images: np.ndarray | None = None,
        sample_ids: Iterable[int] | None = None,
        hyperparameters: Mapping[str, Any] | None = None,
        dataset: str | None = None,
        overwrite: bool = False,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if probe is None:
            raise ValueError("probe: required, e.g. probe=(x_probe, y_probe)")
        if channel_reduce not in CHANNEL_REDUCTIONS:
            raise ValueError(f"channel_reduce: expected one of {CHANNEL_REDUCTIONS}, got {channel_reduce!r}")
        if precision not in store.PRECISIONS:
            raise ValueError(f"precision: expected one of {store.PRECISIONS}, got {precision!r}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
        self.model = model
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.channel_reduce = channel_reduce
        self.precision = precision
        self.complevel = complevel
        self.x, self.y = _probe_tensors(probe)
        n_classes = int(self.y.max()) + 1
        if class_names is None:
            class_names = [str(i) for i in range(n_classes)]
        self.class_names = [str(c) for c in class_names]
        if int(self.y.min()) < 0 or n_classes > len(self.class_names):
            raise ValueError(
                f"probe labels: values must lie in 0..{len(self.class_names) - 1} to match the "
                f"{len(self.class_names)} class_names, got min {int(self.y.min())} and max {int(self.y.max())}"
            )
        modules = dict(model.named_modules())
        self.layers = list(default_layers(model) if layers is None else layers)
        unknown = [name for name in self.layers if name not in modules or not name]
        if unknown:
            raise ValueError(f"layers: {unknown} not found in {type(model).__name__}; valid names: {_module_names(model)}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers: each layer may be named once, got {self.layers}")
        self._modules = [modules[name] for name in self.layers]
        self._first_conv = _first_conv(model)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuromapper-writer")
        self._pending: list[Future] = []
        self._closed = False
        self.epochs: list[int] = []

        # One forward pass on two samples tells the layer widths and kinds for run.nc.
        widths, kinds = self._probe_shapes()
        if images is None:
            images = thumbnails(self.x)
        attrs = {
            "model": _describe(model),
            "hyperparameters": dict(hyperparameters or {}),
            "dataset": dataset,
            "channel_reduce": channel_reduce,
            "first_conv_layer": self._first_conv[0] if self._first_conv else "",
        }
        store.create_run(
            self.path,
            labels=self.y.numpy(),
            class_names=self.class_names,
            layers=self.layers,
            layer_units=widths,
            layer_kinds=kinds,
            images=images,
            sample_ids=None if sample_ids is None else np.asarray(list(sample_ids)),
            attrs=attrs,
            overwrite=overwrite,
        )

    # -- capture -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:
            return torch.device("cpu")

    def _reduce(self, output: Any) -> torch.Tensor:
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"a recorded layer returned {type(output).__name__}; expected a tensor")
        out = output.detach()
        if out.ndim > 2:  # (N, C, *spatial): one value per channel
            flat = out.flatten(2)
            out = flat.mean(dim=2) if self.channel_reduce == "mean" else flat.amax(dim=2)
        elif out.ndim == 1:
            out = out[:, None]
        return out.float().cpu()

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run ``x`` through the model in eval mode with hooks; restore everything afterwards."""
        captured: list[list[torch.Tensor]] = [[] for _ in self.layers]
        handles = []
        was_training = self.model.training
        try:
            for i, module in enumerate(self._modules):
                handles.append(module.register_forward_hook(self._hook(captured[i])))
            self.model.eval()
            outputs = []
            with torch.no_grad():
                for start in range(0, len(x), self.batch_size):
                    batch = x[start : start + self.batch_size].to(self.device)
                    out = self.model(batch)
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    outputs.append(out.detach().float().cpu())
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        acts = [torch.cat(parts) for parts in captured]
        for name, a in zip(self.layers, acts):
            if a.shape[0] != len(x):
                raise RuntimeError(
                    f"layer {name!r} produced {a.shape[0]} rows for {len(x)} probe samples: a module "
                    "called more than once per forward pass cannot be recorded; pick a distinct module"
                )
        return torch.cat(outputs), acts

    def _hook(self, sink: list):
        def hook(module, inputs, output):
            sink.append(self._reduce(output))

        return hook

    def _probe_shapes(self) -> tuple[list[int], list[str]]:
        logits, acts = self._forward(self.x[:2])
        if logits.ndim != 2:
            raise ValueError(
                f"model output: expected logits of shape (batch, classes), got {tuple(logits.shape)}"
            )
        if logits.shape[1] < len(self.class_names) and logits.shape[1] != 1:
            raise ValueError(
                f"model output has {logits.shape[1]} logits but {len(self.class_names)} class_names were given"
            )
        kinds = []
        for module in self._modules:
            kind = "conv" if isinstance(module, nn.modules.conv._ConvNd) else type(module).__name__
            kinds.append(kind)
        return [a.shape[1] for a in acts], kinds

    def capture(self, epoch: int, metrics: Mapping[str, float] | None = None) -> None:
        """Record the probe at ``epoch`` (an integer; capturing the same epoch again replaces it).

        ``metrics`` are scalars to keep with the epoch (training loss, validation accuracy...).
        Returns once the activations are in memory; the write finishes in the background.
        """
        self._check_open()
        self._raise_writer_errors()
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative integer, got {epoch!r}")
        clean_metrics = {}
        for key, value in (metrics or {}).items():
            try:
                clean_metrics[str(key)] = float(value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"metrics[{key!r}]: expected a number, got {value!r}") from exc
        logits, acts = self._forward(self.x)
        n_classes = len(self.class_names)
        loss = torch.nn.functional.cross_entropy(logits[:, :n_classes], self.y, reduction="none")
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
        weight = None
        if self._first_conv is not None:
            weight = self._first_conv[1].weight.detach().float().cpu().numpy()
        ds = store.epoch_dataset(
            int(epoch),
            layers=self.layers,
            activations=activations,
            logits=logits[:, :n_classes].numpy(),
            loss=loss.numpy(),
            metrics=clean_metrics,
            first_conv_weight=weight,
        )
        self._pending.append(
            self._writer.submit(store.append_epoch, self.path, ds, self.complevel, self.precision)
        )
        self.epochs.append(int(epoch))

    # -- lifecycle ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Recorder for {self.path} is closed")

    def _raise_writer_errors(self) -> None:
        done = [f for f in self._pending if f.done()]
        self._pending = [f for f in self._pending if not f.done()]
        for future in done:
            future.result()

    def flush(self) -> None:
        """Wait until every captured epoch is durably on disk."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        """Flush pending writes and release the writer thread (hooks are already gone)."""
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

