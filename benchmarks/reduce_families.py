"""Synthetic families of one layer's activations over training, for ``bench_reduce.py``.

Each family is an array ``(epoch, sample, unit)`` of float32 made with numpy from one seed (no
run on disk): 3,000 samples of 10 classes over 10 epochs by default. The generative model
imitates a layer of a network that learns, in the order things happen in training:

* **The untrained network sees input similarity.** At epoch 0 a sample is mostly a point of a
  smooth 8-dimensional "input" manifold, only weakly tied to its class (inputs of one class are
  somewhat alike), so classes overlap.
* **Classes separate as it learns.** Class structure -- a centre (classes are arranged in a
  12-dimensional subspace, centres about 10 apart), three sub-clusters per class (styles of a
  digit), and a per-class 6-dimensional latent manifold with decreasing spreads 2.5 ... 1 --
  grows from 10% to full strength while the input part shrinks to 30%, on a saturating schedule
  ``(1 - exp(-3 t / T)) / (1 - exp(-3))``: most of the change happens in the first epochs, as in
  a real training run.
* **The representation drifts.** Every epoch the class centres, sub-cluster offsets, the latent
  and input bases and each sample's latent coordinates take a random-walk step. ``slow`` drift
  takes small steps that shrink by ``exp(-0.25)`` per epoch (a run that settles); ``fast`` drift
  takes steps 7-12 times larger that never shrink. Measured as the mean Jaccard overlap of each
  sample's 15 nearest neighbours (PCA pre-embedding) between consecutive epochs: slow 0.44 at 32
  units (used without PCA, so the noise stays), 0.66-0.71 at 256-1,024; fast 0.29 at 32 units,
  0.52-0.57 at 256-1,024 (the demo run's layers: 0.63-0.92). In every family the largest
  structural change is the turn from input similarity to classes, at epochs 1-3.
* **Samples keep their identity** (their latent coordinates and a fixed noise vector of length
  2.0 are their own), and every epoch adds fresh noise of length 1.5.
* **A ReLU**: the layer's units are ``max(0, .)`` of all that, so about half of them are zero and
  the clusters are not Gaussian.
* **Events** (optional): ``split`` -- from epoch ``n_epochs // 2``, class 0 splits in two (by the
  sign of a sample's first latent coordinate) and the halves move 6 apart over three epochs,
  more than the class's own extent; ``merge`` -- from the same epoch, everything class 1 has
  learnt (centre, sub-clusters, latent basis) moves 90% of the way to class 0's over three
  epochs, so the two classes end up interleaved.

All lengths are Euclidean and independent of ``dims``, so the families differ in dimension by
what the reduction sees: up to 50 units are used as they are, wider layers go through the PCA
pre-embedding, which removes most of the noise of a wide layer.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DRIFT", "FAMILIES", "QUICK", "drifting_clusters"]

# Per-epoch random-walk steps: class centres (length, in the 12-D class subspace), sub-cluster
# offsets (length), latent and input bases (relative), sample latent coordinates (per
# coordinate); steps shrink by exp(-decay) per epoch.
DRIFT = {
    "slow": dict(centre=0.6, mode=0.2, basis=0.05, latent=0.05, decay=0.25),
    "fast": dict(centre=4.0, mode=1.5, basis=0.6, latent=0.6, decay=0.0),
}

INPUT_DIMS = 8
CLASS_SPACE = 12

# name -> drifting_clusters keyword arguments (3,000 samples x 10 epochs unless given)
FAMILIES = {
    "slow-32": dict(dims=32, drift="slow", seed=1),
    "slow-256": dict(dims=256, drift="slow", seed=2),
    "slow-1024": dict(dims=1024, drift="slow", seed=3),
    "fast-32": dict(dims=32, drift="fast", seed=4),
    "fast-256": dict(dims=256, drift="fast", seed=5),
    "fast-1024": dict(dims=1024, drift="fast", seed=6),
    "split-128": dict(dims=128, drift="slow", event="split", seed=7),
    "merge-512": dict(dims=512, drift="slow", event="merge", seed=8),
}
# --quick: two families, small
QUICK = {
    "fast-256": dict(FAMILIES["fast-256"], n_samples=500, n_epochs=4),
    "split-128": dict(FAMILIES["split-128"], n_samples=500, n_epochs=4),
}


def drifting_clusters(
    n_samples: int = 3000,
    n_epochs: int = 10,
    dims: int = 256,
    n_classes: int = 10,
    drift: str = "slow",
    event: str | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """One layer's activations over training (see the module docstring).

    Returns
    -------
    activations : numpy.ndarray
        ``(n_epochs, n_samples, dims)`` float32, non-negative.
    labels : numpy.ndarray
        ``(n_samples,)`` class of each sample.
    """
    if drift not in DRIFT:
        raise ValueError(f"drift: expected one of {list(DRIFT)}, got {drift!r}")
    if event not in (None, "split", "merge"):
        raise ValueError(f"event: expected None, 'split' or 'merge', got {event!r}")
    step = DRIFT[drift]
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_samples) % n_classes)

    def vectors(*shape):  # random directions of length about 1
        return rng.normal(size=(*shape, dims)) / np.sqrt(dims)

    class_space = np.linalg.qr(rng.normal(size=(dims, CLASS_SPACE)))[0].T

    def class_vectors(*shape):
        return (rng.normal(size=(*shape, CLASS_SPACE)) / np.sqrt(CLASS_SPACE)) @ class_space

    # what the untrained network sees
    input_latent = 0.7 * rng.normal(size=(n_classes, INPUT_DIMS))[labels] + rng.normal(size=(n_samples, INPUT_DIMS))
    input_basis = vectors(INPUT_DIMS) * 5.0
    # what it learns
    centres = class_vectors(n_classes) * 10.0 / np.sqrt(2.0)
    spreads = np.geomspace(2.5, 1.0, 6)
    bases = vectors(n_classes, len(spreads))
    modes = vectors(n_classes, 3) * 2.5
    mode = rng.integers(3, size=n_samples)
    latent = rng.normal(size=(n_samples, len(spreads)))
    side = np.where(latent[:, 0] > 0, 1.0, -1.0)
    own_noise = vectors(n_samples) * 2.0
    split_direction = vectors(1)[0]
    walk = np.zeros_like(centres)

    out = np.empty((n_epochs, n_samples, dims), np.float32)
    last = max(n_epochs - 1, 1)
    event_epoch = n_epochs // 2
    for t in range(n_epochs):
        if t:
            k = np.exp(-step["decay"] * (t - 1))
            walk += class_vectors(n_classes) * step["centre"] * k
            modes += vectors(n_classes, 3) * step["mode"] * k
            bases += vectors(n_classes, len(spreads)) * step["basis"] * k
            bases /= np.linalg.norm(bases, axis=2, keepdims=True)
            input_basis += vectors(INPUT_DIMS) * 5.0 * step["basis"] * k
            latent += rng.normal(size=latent.shape) * step["latent"] * k
        learnt = (1.0 - np.exp(-3.0 * t / last)) / (1.0 - np.exp(-3.0))
        ramp = np.clip((t - event_epoch + 1) / 3.0, 0.0, 1.0)  # 0 before the event, 1 three epochs in
        c, m, b = centres + walk, modes.copy(), bases.copy()
        if event == "merge":
            c[1] += 0.9 * ramp * (c[0] - c[1])
            m[1] += 0.9 * ramp * (m[0] - m[1])
            b[1] += 0.9 * ramp * (b[0] - b[1])
            b[1] /= np.linalg.norm(b[1], axis=1, keepdims=True)
        x = (1.0 - 0.7 * learnt) * (input_latent @ input_basis)
        x += (0.1 + 0.9 * learnt) * (c[labels] + m[labels, mode] + np.einsum("nl,nld->nd", latent * spreads, b[labels]))
        if event == "split":
            member = labels == 0
            x[member] += 3.0 * ramp * side[member, None] * split_direction
        x += own_noise + vectors(n_samples) * 1.5
        out[t] = np.maximum(x, 0.0)
    return out, labels
