"""Synthetic runs with known structure, for tests and benchmarks of the later pipeline stages.

A synthetic run is written with the same store functions the :class:`~neuromapper.Recorder`
uses (:func:`~neuromapper.store.create_run`, :func:`~neuromapper.store.epoch_dataset`,
:func:`~neuromapper.store.append_epoch`), so it is an ordinary run in every respect; only the
activations are generated instead of recorded.

The generative model imitates what a layer of a network that learns looks like, and makes the
things the reduce stage must get right measurable:

* **Classes separate over training.** Each class has a centre in the layer's ``dims``-dimensional
  space; the centres start bunched together (an untrained network mixes classes) and move apart
  epoch by epoch, while also *drifting* (a small random walk), so a good embedding changes from
  epoch to epoch and an unaligned one jumps.
* **Classes have low-dimensional inner structure.** A sample is its class centre plus a point of a
  8-dimensional latent Gaussian mapped into the layer by a per-class random basis, plus a little
  isotropic noise. A 2-D embedding can therefore be faithful (trustworthiness well above 0.9 is
  reachable), so differences in trustworthiness between methods mean something.
* **Samples keep their identity.** Each sample's latent coordinates and most of its noise are its
  own, fixed up to a slow random walk and a smaller fresh part per epoch, so the same sample sits in
  the same part of its class at every epoch, as the same input does in a network: aligned methods
  can keep it in place, and a Procrustes disparity between consecutive epochs measures how much the
  picture jumps. The sizes are set so that a sample's 15 nearest neighbours overlap by about
  0.6-0.8 (Jaccard) from one epoch to the next, as they do in the demo run's layers once training
  has settled (they overlap less in its first epochs).
* **Optionally, a class splits in two** at a known epoch (``split_class``, ``split_epoch``): from
  that epoch on, the half of the class with a positive first latent coordinate moves away from the
  other half by more than the class's own extent, so a faithful embedding must show two groups
  there. Alignment must not hide this.

Each layer has its own centres, bases and noise, so layers are independent problems, as in a real
network.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import store

LATENT_DIMS = 8


def make_synthetic_run(
    path: str | os.PathLike,
    n_samples: int = 2000,
    n_epochs: int = 10,
    n_layers: int = 1,
    n_classes: int = 10,
    dims: int = 64,
    seed: int = 0,
    split_class: int | None = None,
    split_epoch: int | None = None,
    drift: float = 1.0,
    overwrite: bool = True,
    class_names: list[str] | None = None,
    layer_names: list[str] | None = None,
    dataset: str = "synthetic",
    metric: str | None = None,
) -> Path:
    """Write a synthetic run of drifting, separating clusters and return its directory.

    Parameters
    ----------
    path
        Run directory to create.
    n_samples
        Probe samples; classes are balanced (``i % n_classes``, shuffled).
    n_epochs
        Epochs to write, numbered ``0 .. n_epochs - 1``.
    n_layers
        Layers, named ``layer0``, ``layer1``, ...; each has its own independent structure.
    n_classes
        Classes (clusters), named ``c0``, ``c1``, ...
    dims
        Units per layer.
    seed
        Seed of everything random; the same arguments always write the same run.
    split_class, split_epoch
        If given, class ``split_class`` splits into two groups from epoch ``split_epoch`` on
        (see the module docstring). Give both or neither.
    drift
        Scale of the per-epoch random walk of class centres and sample latents (0 keeps the
        clusters still apart from their separation over training).
    overwrite
        Replace a run already at ``path``.
    class_names, layer_names, dataset, metric
        Names to store instead of ``c0``/``layer0``/``"synthetic"``, and the name of a made-up
        per-epoch metric (none by default): tests give them hostile text (markup, quotes, 500
        characters) to check that every view shows names as text.

    Returns
    -------
    pathlib.Path
        The run directory, ready for :func:`neuromapper.open_run`.
    """
    if n_samples < n_classes:
        raise ValueError(f"n_samples: expected at least n_classes={n_classes}, got {n_samples}")
    if n_epochs < 1 or n_layers < 1 or n_classes < 1 or dims < LATENT_DIMS:
        raise ValueError(
            f"expected n_epochs >= 1, n_layers >= 1, n_classes >= 1 and dims >= {LATENT_DIMS}; got "
            f"n_epochs={n_epochs}, n_layers={n_layers}, n_classes={n_classes}, dims={dims}"
        )
    if (split_class is None) != (split_epoch is None):
        raise ValueError("split_class and split_epoch: give both or neither")
    if split_class is not None and not 0 <= split_class < n_classes:
        raise ValueError(f"split_class: expected 0 <= split_class < {n_classes}, got {split_class}")
    if split_epoch is not None and not 0 < split_epoch < n_epochs:
        raise ValueError(f"split_epoch: expected 0 < split_epoch < {n_epochs}, got {split_epoch}")

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_samples) % n_classes)
    layers = list(layer_names) if layer_names is not None else [f"layer{i}" for i in range(n_layers)]
    class_names = list(class_names) if class_names is not None else [f"c{k}" for k in range(n_classes)]
    if len(layers) != n_layers or len(class_names) != n_classes:
        raise ValueError(f"layer_names and class_names: expected {n_layers} and {n_classes} names, "
                         f"got {len(layers)} and {len(class_names)}")
    layer_models = [_LayerModel(rng, labels, n_classes, dims, drift) for _ in layers]
    store.create_run(
        path,
        labels=labels,
        class_names=class_names,
        layers=layers,
        layer_units=[dims] * n_layers,
        layer_kinds=["synthetic"] * n_layers,
        attrs={
            "dataset": dataset,
            "model": {"class": "neuromapper.synthetic", "parameters": 0},
            "hyperparameters": {
                "n_samples": n_samples, "n_epochs": n_epochs, "n_layers": n_layers, "n_classes": n_classes,
                "dims": dims, "seed": seed, "split_class": split_class, "split_epoch": split_epoch,
                "drift": drift,
            },
        },
        overwrite=overwrite,
    )
    for epoch in range(n_epochs):
        split = split_class is not None and epoch >= split_epoch
        activations = [m.activations(epoch, n_epochs, split_class if split else None) for m in layer_models]
        # The logits of a nearest-centre classifier on the last layer give the views a prediction.
        logits = layer_models[-1].logits(activations[-1])
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        loss = -log_p[np.arange(n_samples), labels]
        metrics = {metric: float(loss.mean())} if metric else None
        ds = store.epoch_dataset(epoch, layers=layers, activations=activations, logits=logits, loss=loss,
                                 metrics=metrics)
        store.append_epoch(path, ds)
    return Path(path)


class _LayerModel:
    """The random structure of one synthetic layer, evolved epoch by epoch."""

    def __init__(self, rng: np.random.Generator, labels: np.ndarray, n_classes: int, dims: int, drift: float):
        n = len(labels)
        self.rng = rng
        self.labels = labels
        self.drift = drift
        self.dims = dims
        # Scales are set as Euclidean lengths so they do not depend on ``dims``: class centres
        # end about 20 apart, a class spreads about 2 along each of its latent directions, and
        # the isotropic noise is about 2.4 long.
        self.centres = rng.normal(size=(n_classes, dims)) * 20.0 / np.sqrt(2.0 * dims)
        self.bases = rng.normal(size=(n_classes, LATENT_DIMS, dims))
        self.bases *= 2.0 / np.linalg.norm(self.bases, axis=2, keepdims=True)
        self.latent = rng.normal(size=(n, LATENT_DIMS))
        self.centre_walk = np.zeros((n_classes, dims))
        self.latent_walk = np.zeros((n, LATENT_DIMS))
        self.split_direction = rng.normal(size=dims)
        self.split_direction /= np.linalg.norm(self.split_direction)
        # Noise that belongs to the sample (what makes this input unlike the others) and a smaller
        # part that is new at every epoch; together about 2.4 long.
        self.sample_noise = rng.normal(size=(n, dims)) * 2.2 / np.sqrt(dims)
        self.epoch_noise = 1.0 / np.sqrt(dims)

    def activations(self, epoch: int, n_epochs: int, split_class: int | None) -> np.ndarray:
        rng = self.rng
        if epoch > 0:
            self.centre_walk += rng.normal(size=self.centre_walk.shape) * 2.0 / np.sqrt(self.dims) * self.drift
            self.latent_walk += rng.normal(size=self.latent_walk.shape) * 0.04 * self.drift
        # Separation grows from 0.35 (classes overlap) to 1 over training.
        separation = 0.35 + 0.65 * (epoch / max(n_epochs - 1, 1))
        centres = separation * self.centres + self.centre_walk
        latent = self.latent + self.latent_walk
        x = centres[self.labels]
        x = x + np.einsum("nl,nld->nd", latent, self.bases[self.labels])
        if split_class is not None:
            # Half of the class (by its first latent coordinate) moves away from the other half
            # by more than the class's own diameter.
            member = self.labels == split_class
            side = np.where(self.latent[:, 0] > 0, 1.0, -1.0)
            x[member] += 9.0 * side[member, None] * self.split_direction
        x += self.sample_noise + rng.normal(size=x.shape) * self.epoch_noise
        return x.astype(np.float32)

    def logits(self, x: np.ndarray) -> np.ndarray:
        means = np.stack([x[self.labels == k].mean(axis=0) for k in range(len(self.centres))])
        d2 = ((x[:, None, :] - means[None]) ** 2).sum(axis=2) if len(x) <= 20000 else _chunked_d2(x, means)
        return (-d2 / self.dims).astype(np.float32)


def _chunked_d2(x: np.ndarray, means: np.ndarray) -> np.ndarray:
    return np.concatenate([((x[i : i + 10000, None, :] - means[None]) ** 2).sum(axis=2) for i in range(0, len(x), 10000)])
