"""The bundled demos: train a model on offline data and record it with a :class:`Recorder`.

The default demo trains the digit CNN on 5,000 real MNIST digits with adversarial twins; its
run also keeps spotlight feature maps and kernels for the Model page. ``moons`` trains an MLP on
scikit-learn's two moons (noise 0.2) for 100 epochs and records the decision boundary every
epoch; ``digits-mlp`` trains an MLP on the same MNIST digits, so the first layer's weights are
digit-shaped images on the Training page.

This is also the reference for the "plain PyTorch loop" the recorder is designed for: the
training loop below is ordinary PyTorch, and recording adds three lines to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .attacks import AttackConfig
from .data import DigitCNN, DigitMLP, LabelledImages, MoonsMLP, load_dataset, load_moons, stratified_split
from .record import Recorder

DEMO_LAYERS = ["conv1", "conv2", "fc1", "fc2"]
MLP_LAYERS = ["fc1", "fc2", "out"]


@dataclass(frozen=True)
class Recipe:
    """What differs between the demos (the CNN on images is the default for every image dataset)."""

    layers: list
    epochs: int = 10
    n_probe: int = 2000
    lr: float = 1e-3
    batch_size: int = 64
    attacks: bool = True
    threads: int | None = None  # torch threads while training; 1 for a tiny MLP (2 fight over 2 cores: 10x slower)


RECIPES = {
    "moons": Recipe(MLP_LAYERS, epochs=100, n_probe=500, lr=1e-2, batch_size=32, attacks=False, threads=1),
    "digits-mlp": Recipe(MLP_LAYERS, attacks=False),
}
DEFAULT_RECIPE = Recipe(DEMO_LAYERS)


def demo_attacks(epochs: int) -> AttackConfig:
    """The demo's adversarial twins: FGSM and PGD every epoch, one-pixel at three epochs.

    The demo's inputs are scaled to ``[0, 1]`` (see :mod:`neuromapper.data`), so ε = 0.1 is a
    tenth of the grey range, about 25 grey levels of the original 8-bit digits. 5 probe digits
    per class get FGSM and PGD twins; the one-pixel search, the costly one (about 0.15 s per
    digit that resists it), runs for 2 of them per class at the untrained epoch 0, the middle
    and the last epoch, with at most 1,024 evaluations per digit (enough to try every pixel of
    most digits). This keeps the attacks' share of the demo's recording time under half.
    """
    return AttackConfig(methods=("fgsm", "pgd", "one-pixel"), eps=0.1, pgd_steps=10, per_class=5,
                        one_pixel_budget=1024, one_pixel_epochs=(0, epochs // 2, epochs), one_pixel_per_class=2)


def train_one_epoch(model: nn.Module, loader, optimizer, progress=None) -> float:
    """One pass over ``loader``; returns the mean training loss."""
    model.train()
    total, count = 0.0, 0
    for xb, yb in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        count += len(yb)
        if progress is not None:
            progress.update(1)
    return total / count


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (in eval mode; mode is restored)."""
    was_training = model.training
    model.eval()
    correct = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum()) for i in range(0, len(y), batch_size)
    )
    model.train(was_training)
    return correct / len(y)


def _model(dataset: str, data: LabelledImages) -> nn.Module:
    if dataset == "moons":
        return MoonsMLP(n_classes=len(data.class_names))
    if dataset == "digits-mlp":
        return DigitMLP(image_size=data.x.shape[-1], in_channels=data.x.shape[1], n_classes=len(data.class_names))
    return DigitCNN(in_channels=data.x.shape[1], n_classes=len(data.class_names), image_size=data.x.shape[-1])


def run_demo(
    out: str | Path = "data/demo",
    dataset: str = "mnist5k",
    epochs: int | None = None,
    n_probe: int | None = None,
    root: str | Path | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    lr: float | None = None,
    show_progress: bool = True,
    attacks: bool | None = None,
) -> Path:
    """Train a demo model for ``epochs`` epochs and record it on a held-out probe.

    ``dataset`` is an image dataset of :data:`neuromapper.data.DATASETS` (the digit CNN, 4 layers),
    ``"moons"`` or ``"digits-mlp"`` (see the module docstring); arguments left ``None`` take the
    demo's :class:`Recipe`. Epoch 0 is the untrained network. With ``attacks`` the run also holds
    adversarial twins (:func:`demo_attacks`). Returns the run directory.
    """
    recipe = RECIPES.get(dataset, DEFAULT_RECIPE)
    epochs = recipe.epochs if epochs is None else epochs
    n_probe = recipe.n_probe if n_probe is None else n_probe
    batch_size = recipe.batch_size if batch_size is None else batch_size
    lr = recipe.lr if lr is None else lr
    attacks = recipe.attacks if attacks is None else attacks
    if epochs < 1:
        raise ValueError(f"epochs: expected at least 1, got {epochs}")
    torch.manual_seed(seed)
    if dataset == "moons":
        data = load_moons(seed=seed)
    else:
        data = load_dataset("mnist5k" if dataset == "digits-mlp" else dataset, root)
    n_probe = min(n_probe, len(data) // 2)
    train_idx, probe_idx = stratified_split(data.y, n_probe, seed=seed)
    train, probe = data.subset(train_idx), data.subset(probe_idx)
    model = _model(dataset, data)
    layers = recipe.layers
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train.x, train.y), batch_size=batch_size, shuffle=True
    )
    hyper = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "Adam", "seed": seed,
             "train_samples": len(train), "probe_samples": len(probe)}
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads or threads)
    try:
        with Recorder(model, layers=layers, probe=(probe.x, probe.y), class_names=data.class_names,
                      path=out, sample_ids=probe_idx, hyperparameters=hyper, dataset=dataset, overwrite=True,
                      attacks=demo_attacks(epochs) if attacks else None) as rec:
            rec.capture(0, metrics={"val_acc": accuracy(model, probe.x, probe.y)})
            with tqdm(total=epochs * len(loader), desc=f"training on {dataset}", unit="batch",
                      disable=not show_progress) as bar:
                for epoch in range(1, epochs + 1):
                    train_loss = train_one_epoch(model, loader, optimizer, progress=bar)
                    val_acc = accuracy(model, probe.x, probe.y)
                    rec.capture(epoch, metrics={"train_loss": train_loss, "val_acc": val_acc})
                    bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
    finally:
        torch.set_num_threads(threads)
    if show_progress:
        print(f"recorded {epochs + 1} epochs of {len(layers)} layers on {len(probe)} probe samples "
              f"to {out} in {time.perf_counter() - started:.1f} s (final probe accuracy {val_acc:.3f})")
        if attacks:
            print(_fooled_summary(out, epochs))
    return Path(out)


def _fooled_summary(path: str | Path, epoch: int) -> str:
    """One line: how many twins of each method fooled the model at ``epoch``."""
    from .store import open_run, twin_table

    with open_run(path) as ds:
        table = twin_table(ds)
        fooled = ds["twin_fooled"].sel(epoch=epoch).values
    parts = []
    for method, rows in table.groupby("method", sort=False):
        values = fooled[table.index.get_indexer(rows.index)]
        parts.append(f"{method} {int((values == 1).sum())}/{int((values >= 0).sum())}")
    return f"adversarial twins that fooled the model at epoch {epoch}: " + ", ".join(parts)
