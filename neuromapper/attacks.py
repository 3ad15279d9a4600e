"""Adversarial twins: FGSM, PGD and a one-pixel attack, written with autograd, and their config.

A *twin* is a probe sample changed by an attack against the model as it is at one epoch; the
:class:`~neuromapper.Recorder` records twins exactly like probe samples (same hooks, same layer
reductions) so that a view can compare their activations with the distributions of the classes
(see :mod:`neuromapper.store` for how they are stored).

Every attack here leaves the model as it found it: it runs the model in ``eval()`` mode and
restores each module's own train/eval flag afterwards, takes gradients with
:func:`torch.autograd.grad` with respect to the input only (so no parameter's ``.grad`` is
touched and ``requires_grad`` flags stay as they are), and works under ``torch.enable_grad()``
so it may be called from inside a ``torch.no_grad()`` block. Attacked images stay inside the
input range ``[lo, hi]``.

The loss is the cross-entropy of the true class. A model may return a structure rather than
logits (``logits_selector`` picks them, as in :class:`~neuromapper.Recorder`), and a one-logit
sigmoid head ``z`` is read as the two logits ``[0, z]``, as the recorder stores it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

METHODS = ("fgsm", "pgd", "one-pixel")


# --- the attacks ------------------------------------------------------------------------------
@contextlib.contextmanager
def evaluating(model: nn.Module):
    """Run ``model`` in eval mode, then give every module back its own train/eval flag.

    ``model.train(was_training)`` would set *all* submodules to one mode; a model that keeps,
    say, a frozen batch-norm in eval mode while training must get exactly its modes back.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_logits(model: nn.Module, x: torch.Tensor, logits_selector: Any = None) -> torch.Tensor:
    """The model's ``(N, C)`` logits for ``x``; a one-logit head ``z`` becomes ``[0, z]``."""
    out = model(x)
    if logits_selector is not None:
        out = logits_selector(out) if callable(logits_selector) else out[logits_selector]
    elif isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, not logits: pick them with logits_selector=")
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[1] == 1:  # softmax([0, z]) = [1 - sigmoid(z), sigmoid(z)]: the recorder's convention
        out = torch.cat([torch.zeros_like(out), out], dim=1)
    return out


def _check_range(eps: float, lo: float, hi: float) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps: expected a positive number (in input units), got {eps!r}")
    if not lo < hi:
        raise ValueError(f"lo, hi: expected lo < hi (the input range), got lo={lo!r}, hi={hi!r}")


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits_selector: Any) -> torch.Tensor:
    """d(summed cross-entropy)/d(x), and nothing else: parameters get no ``.grad``."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("attacks: FGSM, PGD and the one-pixel search need input gradients, which "
                           "torch.inference_mode() forbids; capture outside it (torch.no_grad() is fine)")
    x = x.detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(model_logits(model, x, logits_selector), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, lo: float = 0.0, hi: float = 1.0,
         logits_selector: Any = None) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one L∞ step of size ``eps``.

    Parameters
    ----------
    model
        A classifier; its modes are restored afterwards and its parameters get no gradient.
    x, y
        Inputs ``(N, ...)`` (on the model's device, in its dtype) and true labels ``(N,)``.
    eps
        Size of the step in input units (the data's own scale: ``0.1`` is a tenth of the range of
        images scaled to ``[0, 1]``).
    lo, hi
        The input range the attacked images are clamped to.

    Returns
    -------
    torch.Tensor
        The attacked inputs, detached, with ``|x_adv - x| <= eps`` everywhere.
    """
    _check_range(eps, lo, hi)
    with evaluating(model), torch.enable_grad():
        grad = _input_gradient(model, x, y, logits_selector)
    return (x.detach() + eps * grad.sign()).clamp(lo, hi)


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, *, lo: float = 0.0, hi: float = 1.0, random_start: bool = False,
        seed: int = 0, logits_selector: Any = None) -> torch.Tensor:
    """Projected gradient descent in the L∞ ball (Madry et al. 2018): ``steps`` signed steps.

    Parameters
    ----------
    model, x, y, eps, lo, hi, logits_selector
        As for :func:`fgsm`.
    steps
        Gradient steps; each costs one forward and one backward pass.
    step_size
        Size of each step; default ``2.5 * eps / steps`` (Madry et al.'s choice, enough to reach
        the ball's surface from anywhere in it).
    random_start
        Start from a uniform point of the ball rather than ``x``, drawn from a generator seeded
        with ``seed``, so the same call gives the same twin.

    Returns
    -------
    torch.Tensor
        The last iterate, detached, within ``eps`` of ``x`` and inside ``[lo, hi]``.
    """
    _check_range(eps, lo, hi)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    step_size = 2.5 * eps / steps if step_size is None else float(step_size)
    if not step_size > 0:
        raise ValueError(f"step_size: expected a positive number, got {step_size!r}")
    x = x.detach()
    adv = x.clone()
    if random_start:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noise = torch.rand(x.shape, generator=generator, dtype=torch.float32) * 2 - 1
        adv = (adv + eps * noise.to(device=x.device, dtype=x.dtype)).clamp(lo, hi)
    with evaluating(model), torch.enable_grad():
        for _ in range(int(steps)):
            grad = _input_gradient(model, adv, y, logits_selector)
            adv = adv + step_size * grad.sign()
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(lo, hi)
    return adv.detach()


def one_pixel(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, *, lo: float = 0.0,
              hi: float = 1.0, batch_size: int = 64, order: str = "gradient",
              logits_selector: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Change one pixel of each image to a corner colour, searching exhaustively in batches.

    The candidates for an image are every pixel location × every corner colour (each channel at
    ``lo`` or ``hi``: 2 colours for a grayscale image, 8 for RGB), leaving out those that change
    nothing. They are tried ``batch_size`` at a time, in ``order``, until a batch holds a candidate
    the model does not classify as ``y`` (of those, the one with the lowest probability of ``y``
    is kept) or ``budget`` model evaluations are spent. "No fooling pixel found after ``budget``
    evaluations" is a result: the image then gets the candidate with the lowest probability of
    ``y`` seen, so a twin always differs from its source in exactly one pixel (all its channels).

    Why an exhaustive search and not Su et al.'s differential evolution (DE, scipy's
    ``differential_evolution``): a 28 × 28 grey digit has only ``28 * 28 * 2 = 1,568``
    candidates and about 40 % of them change nothing (the background is already black), so
    trying them all costs fewer model evaluations than one short DE run, and says for certain
    that no fooling pixel exists; DE's in-between colours did not find anything the corners
    missed. Measured here (2 shared cores) on the demo CNN, 30 correctly classified probe
    digits; DE over (row, column, grey) with 399 individuals, ``mutation=0.5``,
    ``recombination=1`` (Su et al.'s settings), vectorised, stopped at the first fooling
    candidate:

    ====================================  ===========  ===========  ===================
    search (budget 1,568 for exhaustive)  after 2      after 10     evaluations/image
                                          epochs       epochs       (2 / 10 epochs)
    ====================================  ===========  ===========  ===================
    exhaustive, gradient order            2/30 fooled  0/30 fooled  888 / 947
    exhaustive, raster order              2/30         0/30         885 / 946
    DE, 3 generations                     2/30         0/30         1,543 / 1,596
    DE, 20 generations                    2/30         0/30         7,874 / 7,993
    ====================================  ===========  ===========  ===================

    An evaluation costs 0.1-0.2 ms with this CNN here, so a digit that resists costs
    0.1-0.2 s exhaustively and 1-2 s with 20 DE generations. The gradient order pays off when
    a pixel does fool: after 1 epoch, on 150 digits, both orders fooled the same 16, after 59
    evaluations on average (median 33) in gradient order against 196 (median 96) in raster
    order. For larger images (a 224 × 224 RGB image has 401,408 candidates) the budget cuts
    the search short; DE may then be the better tool, and its place is behind the same
    signature.

    Parameters
    ----------
    model, x, y, lo, hi, logits_selector
        As for :func:`fgsm`; ``x`` is ``(N, C, H, W)`` or ``(N, H, W)``.
    budget
        Most model evaluations (candidate images) per image; the last batch is cut to fit.
    batch_size
        Candidates per forward pass. On this machine's CPU 32-64 cost no more per evaluation
        than 256 (0.15-0.2 ms for the demo CNN; 16 was slower), and a search that fools stops
        sooner with small batches.
    order
        ``"gradient"``: most promising first, by the first-order change of the loss
        ``grad · (candidate - x)`` (the gradient costs one forward and backward pass, counted as
        one evaluation); ``"raster"``: row by row.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The attacked images (detached) and the evaluations spent on each, ``(N,)`` int64.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise ValueError(f"budget: expected a positive integer (model evaluations per image), got {budget!r}")
    if not lo < hi:
        raise ValueError(f"lo, hi: expected lo < hi (the input range), got lo={lo!r}, hi={hi!r}")
    if order not in ("gradient", "raster"):
        raise ValueError(f"order: expected 'gradient' or 'raster', got {order!r}")
    squeeze = x.ndim == 3
    images = x.detach()[:, None] if squeeze else x.detach()
    if images.ndim != 4:
        raise ValueError(f"x: expected images (N, C, H, W) or (N, H, W), got shape {tuple(x.shape)}")
    n, channels, height, width = images.shape
    # every corner colour, as a (colours, C) table of lo/hi values
    bits = torch.tensor([[(k >> c) & 1 for c in range(channels)] for k in range(2 ** channels)])
    colours = (lo + (hi - lo) * bits).to(device=images.device, dtype=images.dtype)
    adversarial, spent = images.clone(), torch.zeros(n, dtype=torch.int64)
    with evaluating(model):
        for i in range(n):
            adversarial[i], spent[i] = _one_pixel_single(
                model, images[i], y[i : i + 1], colours, int(budget), int(batch_size), order, logits_selector,
                tuple(x.shape[1:]))
    return (adversarial[:, 0] if squeeze else adversarial), spent


def _one_pixel_single(model, image, label, colours, budget, batch_size, order, logits_selector, shape):
    """Search one ``(C, H, W)`` image; the model sees inputs of the caller's ``shape`` per sample."""
    channels, height, width = image.shape
    # candidate k = (colour, pixel): new[:, pixel] = colours[colour]
    change = colours[:, :, None] - image.reshape(channels, -1)[None]  # (colours, C, pixels)
    useful = change.abs().amax(dim=1) > 0  # (colours, pixels): a candidate equal to the image is skipped
    if order == "gradient":
        with torch.enable_grad():
            grad = _input_gradient(model, image.reshape(1, *shape), label, logits_selector).reshape(channels, -1)
        score = (change * grad[None]).sum(dim=1)  # first-order rise of the loss
        score = torch.where(useful, score, torch.full_like(score, -torch.inf))
        candidates = torch.argsort(score.flatten().float(), descending=True, stable=True)
        candidates = candidates[: int(useful.sum())]
    else:
        # pixel-major (row by row), both colours of a pixel in turn
        candidates = useful.T.flatten().nonzero()[:, 0]
        pixel, colour = candidates // colours.shape[0], candidates % colours.shape[0]
        candidates = colour * useful.shape[1] + pixel
    best, best_prob, spent = image, math.inf, 1 if order == "gradient" else 0
    flat = image.reshape(channels, -1)
    with torch.no_grad():
        for start in range(0, len(candidates), batch_size):
            chunk = candidates[start : start + min(batch_size, budget - spent)]
            if len(chunk) == 0:
                break
            colour, pixel = chunk // useful.shape[1], chunk % useful.shape[1]
            batch = flat[None].repeat(len(chunk), 1, 1)
            batch[torch.arange(len(chunk)), :, pixel] = colours[colour]
            batch = batch.reshape(len(chunk), *image.shape)
            logits = model_logits(model, batch.reshape(len(chunk), *shape), logits_selector)
            spent += len(chunk)
            prob = logits.float().softmax(dim=1)[:, int(label)]
            fooled = logits.argmax(dim=1) != label
            pool = prob.masked_fill(~fooled, math.inf) if bool(fooled.any()) else prob
            k = int(pool.argmin())
            if float(prob[k]) < best_prob or bool(fooled.any()):
                best, best_prob = batch[k], float(prob[k])
            if bool(fooled.any()) or spent >= budget:
                break
    return best, spent


# --- configuration ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Which adversarial twins a :class:`~neuromapper.Recorder` makes at each capture.

    Parameters
    ----------
    methods
        Any of ``"fgsm"``, ``"pgd"``, ``"one-pixel"``.
    eps
        L∞ size of FGSM and PGD perturbations in input units, one number or several (each gives
        its own twins, named ``fgsm@0.1``...; see :mod:`neuromapper.store`).
    pgd_steps, pgd_step_size
        PGD iterations and step size (default ``2.5 * eps / steps``).
    one_pixel_budget
        Model evaluations per image for the one-pixel search (see :func:`one_pixel`).
    one_pixel_epochs
        The epochs at which one-pixel twins are made (it is the costly attack); ``None``: every
        capture.
    one_pixel_per_class
        One-pixel twins for only the first ``k`` pairs of each class; ``None``: every pair.
    per_class
        Probe samples per class that get twins, picked once by :func:`stratified_ids`.
    twin_ids
        Explicit probe sample ids instead (the ``sample`` coordinate values); overrides
        ``per_class``.
    lo, hi
        The input range attacked images are clamped to; ``None``: the probe's minimum/maximum.
    seed
        Seeds the choice of pairs and PGD's random start.
    pgd_random_start
        Start PGD from a random point of the ball (seeded).
    """

    methods: tuple[str, ...] = ("fgsm", "pgd")
    eps: tuple[float, ...] = (0.1,)
    pgd_steps: int = 10
    pgd_step_size: float | None = None
    one_pixel_budget: int = 2048
    one_pixel_epochs: tuple[int, ...] | None = None
    one_pixel_per_class: int | None = None
    per_class: int = 5
    twin_ids: tuple[int, ...] | None = None
    lo: float | None = None
    hi: float | None = None
    seed: int = 0
    pgd_random_start: bool = False

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods or len(set(methods)) != len(methods):
            raise ValueError(f"methods: expected one or more distinct of {list(METHODS)}, got {list(methods)}")
        set_("methods", methods)
        eps = (self.eps,) if isinstance(self.eps, (int, float)) else tuple(self.eps)
        if not eps or not all(_is_real(e) and math.isfinite(e) and e > 0 for e in eps):
            raise ValueError(f"eps: expected one positive number or a list of them (in input units), got {self.eps!r}")
        set_("eps", tuple(sorted({float(e) for e in eps})))
        set_("pgd_steps", _positive_int("pgd_steps", self.pgd_steps))
        if self.pgd_step_size is not None:
            if not (_is_real(self.pgd_step_size) and self.pgd_step_size > 0):
                raise ValueError(f"pgd_step_size: expected a positive number or None, got {self.pgd_step_size!r}")
            set_("pgd_step_size", float(self.pgd_step_size))
        set_("one_pixel_budget", _positive_int("one_pixel_budget", self.one_pixel_budget))
        if self.one_pixel_epochs is not None:
            set_("one_pixel_epochs", tuple(sorted({_nonneg_int("one_pixel_epochs", e) for e in
                                                   _iterable("one_pixel_epochs", self.one_pixel_epochs)})))
        if self.one_pixel_per_class is not None:
            set_("one_pixel_per_class", _positive_int("one_pixel_per_class", self.one_pixel_per_class))
        set_("per_class", _positive_int("per_class", self.per_class))
        if self.twin_ids is not None:
            ids = tuple(_nonneg_int("twin_ids", i, negative_ok=True) for i in _iterable("twin_ids", self.twin_ids))
            if not ids or len(set(ids)) != len(ids):
                raise ValueError(f"twin_ids: expected distinct probe sample ids, got {list(ids)}")
            set_("twin_ids", ids)
        for name in ("lo", "hi"):
            value = getattr(self, name)
            if value is not None:
                if not (_is_real(value) and math.isfinite(value)):
                    raise ValueError(f"{name}: expected a finite number or None, got {value!r}")
                set_(name, float(value))
        if self.lo is not None and self.hi is not None and not self.lo < self.hi:
            raise ValueError(f"lo, hi: expected lo < hi (the input range), got lo={self.lo}, hi={self.hi}")
        set_("seed", _nonneg_int("seed", self.seed))
        if not isinstance(self.pgd_random_start, (bool, np.bool_)):
            raise ValueError(f"pgd_random_start: expected True or False, got {self.pgd_random_start!r}")

    @classmethod
    def build(cls, value: AttackConfig | Mapping | None) -> AttackConfig | None:
        """An :class:`AttackConfig` from itself, a dict of its fields, or ``None`` (no attacks)."""
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"attacks: expected an AttackConfig, a dict of its fields or None, got {type(value).__name__}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ValueError(f"attacks: unknown field(s) {unknown}; valid fields: {fields}")
        return cls(**value)

    def twin_sets(self, epoch: int) -> list[tuple[str, float | None, bool]]:
        """The sets of twins to make at ``epoch``: ``(method, eps, eps_in_id)`` for each.

        ``eps`` is ``None`` for one-pixel twins; ``eps_in_id`` says whether the twin ids carry it
        (only when several ε are configured; see :mod:`neuromapper.store`).
        """
        sets = []
        for method in self.methods:
            if method == "one-pixel":
                if self.one_pixel_epochs is None or int(epoch) in self.one_pixel_epochs:
                    sets.append((method, None, False))
            else:
                sets.extend((method, eps, len(self.eps) > 1) for eps in self.eps)
        return sets

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _iterable(name: str, value) -> Iterable:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Iterable, np.ndarray)):
        if _is_real(value):
            return (value,)
        raise ValueError(f"{name}: expected a list of integers, got {value!r}")
    return list(value)


def _positive_int(name: str, value) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _nonneg_int(name: str, value, negative_ok: bool = False) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or (value < 0 and not negative_ok):
        raise ValueError(f"{name}: expected {'' if negative_ok else 'non-negative '}integers, got {value!r}")
    return int(value)


def stratified_ids(labels: Sequence[int] | np.ndarray, sample_ids: Sequence[int] | np.ndarray, per_class: int,
                   seed: int = 0) -> np.ndarray:
    """``per_class`` probe sample ids of each class (all of a smaller class), seeded, sorted.

    The same labels, ids and seed give the same subset, so a recorder picks the same pairs at
    every epoch and again after ``resume=True``.
    """
    labels, sample_ids = np.asarray(labels), np.asarray(sample_ids)
    per_class = _positive_int("per_class", per_class)
    if labels.shape != sample_ids.shape:
        raise ValueError(f"labels and sample_ids: expected the same length, got {len(labels)} and {len(sample_ids)}")
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        chosen.extend(rng.choice(members, size=min(per_class, len(members)), replace=False).tolist())
    return sample_ids[np.sort(np.asarray(chosen, dtype=np.int64))]
