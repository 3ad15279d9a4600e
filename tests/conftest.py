"""Shared fixtures: small real models and probes, and a small recorded run."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from neuromapper import Recorder
from neuromapper.data import DigitCNN, load_digits8


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's real 8x8 digits as (N, 1, 8, 8) tensors."""
    return load_digits8()


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture
def mlp():
    return make_mlp()


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, digits):
    """A 4-epoch run of a DigitCNN trained on 8x8 digits, 300 probe samples, 4 layers."""
    path = tmp_path_factory.mktemp("runs") / "small"
    torch.manual_seed(0)
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_train, y_train = digits.x[300:], digits.y[300:]
    with Recorder(model, layers=["conv1", "conv2", "fc1", "fc2"], probe=(digits.x[:300], digits.y[:300]),
                  class_names=digits.class_names, path=path, dataset="digits") as rec:
        rec.capture(0)
        for epoch in range(1, 4):
            for start in range(0, len(y_train), 128):
                loss = nn.functional.cross_entropy(model(x_train[start:start + 128]), y_train[start:start + 128])
                opt.zero_grad()
                loss.backward()
                opt.step()
            rec.capture(epoch, metrics={"train_loss": loss.item()})
    return path


@pytest.fixture(scope="module")
def embedded(small_run, tmp_path_factory):
    """A copy of ``small_run`` with its default embedding stored (one per test module)."""
    from neuromapper import reduce

    run = shutil.copytree(small_run, tmp_path_factory.mktemp("embedded") / "small",
                          ignore=shutil.ignore_patterns("embeddings"))
    reduce(run)
    return run


@pytest.fixture(scope="session")
def twin_run(tmp_path_factory, digits):
    """A 3-epoch DigitCNN run on 8x8 digits with FGSM/PGD twins every epoch, one-pixel twins at the
    last epoch and one instance of the user's own; class names include markup."""
    from neuromapper.attacks import AttackConfig

    path = tmp_path_factory.mktemp("runs") / "twins"
    torch.manual_seed(0)
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_train, y_train = digits.x[300:], digits.y[300:]
    names = ["<b>zero</b>", *digits.class_names[1:]]
    attacks = AttackConfig(methods=("fgsm", "pgd", "one-pixel"), eps=0.2, pgd_steps=5, per_class=2,
                           one_pixel_budget=256, one_pixel_epochs=(2,), one_pixel_per_class=1)
    with Recorder(model, layers=["conv1", "conv2", "fc1", "fc2"], probe=(digits.x[:300], digits.y[:300]),
                  class_names=names, path=path, dataset="digits", attacks=attacks) as rec:
        for epoch in range(3):
            if epoch:
                for start in range(0, len(y_train), 128):
                    loss = nn.functional.cross_entropy(model(x_train[start:start + 128]), y_train[start:start + 128])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            rec.capture(epoch, instances={"my <i>own</i>": (digits.x[310], int(digits.y[310]))})
    return path


@pytest.fixture(scope="session")
def moons_run(tmp_path_factory):
    """The ``neuromapper demo --dataset moons`` run itself: an MLP on two moons, 101 epochs, with the
    decision boundary on a 200 x 200 grid every epoch."""
    from neuromapper.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("runs") / "moons", "moons", show_progress=False)


@pytest.fixture(scope="session")
def digits_mlp_run(tmp_path_factory, digits):
    """A 3-epoch DigitMLP run on 8x8 digits: its first Linear reads whole images, so its weights are images."""
    from neuromapper.data import DigitMLP

    path = tmp_path_factory.mktemp("runs") / "digits-mlp"
    torch.manual_seed(0)
    model = DigitMLP(image_size=8, hidden=16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x_train, y_train = digits.x[300:], digits.y[300:]
    with Recorder(model, layers=["fc1", "fc2", "out"], probe=(digits.x[:300], digits.y[:300]),
                  class_names=digits.class_names, path=path, dataset="digits") as rec:
        for epoch in range(3):
            for start in range(0, len(y_train), 128) if epoch else ():
                loss = nn.functional.cross_entropy(model(x_train[start:start + 128]), y_train[start:start + 128])
                opt.zero_grad()
                loss.backward()
                opt.step()
            rec.capture(epoch)
    return path
