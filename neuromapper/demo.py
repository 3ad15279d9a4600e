"""The bundled demo: train the digit CNN on offline data and record it with a :class:`Recorder`.

This is also the reference for the "plain PyTorch loop" the recorder is designed for: the
training loop below is ordinary PyTorch, and recording adds three lines to it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .data import DigitCNN, LabelledImages, load_dataset, stratified_split
from .record import Recorder

DEMO_LAYERS = ["conv1", "conv2", "fc1", "fc2"]


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


def run_demo(
    out: str | Path = "data/demo",
    dataset: str = "mnist5k",
    epochs: int = 10,
    n_probe: int = 2000,
    root: str | Path | None = None,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    show_progress: bool = True,
) -> Path:
    """Train :class:`DigitCNN` for ``epochs`` epochs and record 4 layers on a held-out probe.

    Epoch 0 is the untrained network. Returns the run directory.
    """
    if epochs < 1:
        raise ValueError(f"epochs: expected at least 1, got {epochs}")
    torch.manual_seed(seed)
    data: LabelledImages = load_dataset(dataset, root)
    n_probe = min(n_probe, len(data) // 2)
    train_idx, probe_idx = stratified_split(data.y, n_probe, seed=seed)
    train, probe = data.subset(train_idx), data.subset(probe_idx)
    model = DigitCNN(in_channels=data.x.shape[1], n_classes=len(data.class_names), image_size=data.x.shape[-1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(train.x, train.y), batch_size=batch_size, shuffle=True
    )
    hyper = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": "Adam", "seed": seed,
             "train_samples": len(train), "probe_samples": len(probe)}
    started = time.perf_counter()
    with Recorder(model, layers=DEMO_LAYERS, probe=(probe.x, probe.y), class_names=data.class_names,
                  path=out, sample_ids=probe_idx, hyperparameters=hyper, dataset=dataset, overwrite=True) as rec:
        rec.capture(0, metrics={"val_acc": accuracy(model, probe.x, probe.y)})
        with tqdm(total=epochs * len(loader), desc=f"training on {dataset}", unit="batch",
                  disable=not show_progress) as bar:
            for epoch in range(1, epochs + 1):
                train_loss = train_one_epoch(model, loader, optimizer, progress=bar)
                val_acc = accuracy(model, probe.x, probe.y)
                rec.capture(epoch, metrics={"train_loss": train_loss, "val_acc": val_acc})
                bar.set_postfix(epoch=epoch, loss=f"{train_loss:.3f}", val_acc=f"{val_acc:.3f}")
    if show_progress:
        print(f"recorded {epochs + 1} epochs of {len(DEMO_LAYERS)} layers on {len(probe)} probe samples "
              f"to {out} in {time.perf_counter() - started:.1f} s (final probe accuracy {val_acc:.3f})")
    return Path(out)
