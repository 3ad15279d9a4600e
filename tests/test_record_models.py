"""The recorder across model families, each checked against an independent forward computation.

Every case is recorded for two epochs (one training step between them) on a small random probe,
opened with :func:`neuromapper.open_run`, and compared with what the case's own forward code says
each recorded layer, the logits and the accuracy should be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from torch import nn

from neuromapper import Recorder, open_run
from neuromapper.data import DigitCNN, small_resnet18


@dataclass
class Case:
    """A model, its probe inputs, and an independent forward pass giving each recorded layer."""

    model: nn.Module
    x: torch.Tensor
    n_classes: int
    expected: Callable[[nn.Module, torch.Tensor], dict[str, torch.Tensor]]  # layer -> (N, units)
    logits: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (N, logits) as the model emits them
    recorder_kwargs: dict = field(default_factory=dict)


def mlp_case(n_classes: int = 5) -> Case:
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, n_classes))
    return Case(model, torch.randn(24, 3, 4), n_classes,
                lambda m, x: {"1": m[1](x.flatten(1)), "3": m(x)}, lambda m, x: m(x))


def cnn_case() -> Case:
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=4)

    def expected(m, x):
        c1 = m.conv1(x)
        c2 = m.conv2(c1)
        return {"conv1": c1.mean((2, 3)), "conv2": c2.mean((2, 3)), "fc1": m.fc1(c2), "fc2": m.fc2(m.fc1(c2))}

    return Case(model, torch.rand(20, 1, 8, 8), 10, expected, lambda m, x: m(x))


def resnet_case() -> Case:
    model = small_resnet18(in_channels=3, n_classes=10)

    def expected(m, x):
        h = m.relu(m.bn1(m.conv1(x)))
        out = {"conv1": m.conv1(x).amax((2, 3))}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(m, name)(h)
            out[name] = h.amax((2, 3))
        out["fc"] = m(x)
        return out

    return Case(model, torch.rand(6, 3, 8, 8), 10, expected, lambda m, x: m(x),
                {"channel_reduce": "max"})


class SequenceNet(nn.Module):
    """An RNN classifier fed ``(batch, time, features)``, run in either layout inside."""

    def __init__(self, cell: type[nn.RNNBase], batch_first: bool, n_classes: int = 4):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(3, 6, batch_first=batch_first)
        self.head = nn.Linear(6, n_classes)

    def forward(self, x):
        out, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        return self.head(out[:, -1] if self.batch_first else out[-1])


def rnn_case(cell: type[nn.RNNBase], batch_first: bool, reduce: str) -> Case:
    model = SequenceNet(cell, batch_first)
    time = 1 if batch_first else 0

    def expected(m, x):
        out, _ = m.rnn(x if batch_first else x.transpose(0, 1))
        rows = out.mean(time) if reduce == "mean" else out.select(time, -1)
        return {"rnn": rows, "head": m(x)}

    # 8 time steps for 8 samples in batches of 4: the layout must come from batch_first, not shapes
    return Case(model, torch.randn(8, 8, 3), 4, expected, lambda m, x: m(x),
                {"sequence_reduce": reduce, "batch_size": 4})


class TransformerNet(nn.Module):
    def __init__(self, batch_first: bool, n_classes: int = 3):
        super().__init__()
        self.batch_first = batch_first
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=batch_first)
        # nested tensors only apply to batch-first layers; asking for them otherwise only warns
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, n_classes)

    def forward(self, x):
        out = self.encoder(x if self.batch_first else x.transpose(0, 1))
        return self.head(out.mean(1 if self.batch_first else 0))


def transformer_case(batch_first: bool) -> Case:
    model = TransformerNet(batch_first)
    time = 1 if batch_first else 0

    def expected(m, x):
        seq = x if batch_first else x.transpose(0, 1)
        first = m.encoder.layers[0](seq)
        attention, _ = m.encoder.layers[1].self_attn(first, first, first, need_weights=False)
        return {"encoder": m.encoder(seq).mean(time), "encoder.layers.0": first.mean(time),
                "encoder.layers.1.self_attn": attention.mean(time), "head": m(x)}

    return Case(model, torch.randn(6, 5, 8), 3, expected, lambda m, x: m(x))


def one_logit_case() -> Case:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 1))
    return Case(model, torch.randn(30, 6), 2, lambda m, x: {"0": m[0](x), "2": m(x)}, lambda m, x: m(x))


def wide_head_case(n_classes: int) -> Case:
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, n_classes))
    return Case(model, torch.randn(40, 6), n_classes, lambda m, x: {"0": m[0](x), "2": m(x)}, lambda m, x: m(x))


CASES = {
    "mlp": mlp_case,
    "cnn": cnn_case,
    "resnet18": resnet_case,
    "lstm-batch-first": lambda: rnn_case(nn.LSTM, True, "mean"),
    "lstm-time-first": lambda: rnn_case(nn.LSTM, False, "mean"),
    "gru-batch-first": lambda: rnn_case(nn.GRU, True, "last"),
    "gru-time-first": lambda: rnn_case(nn.GRU, False, "last"),
    "transformer-batch-first": lambda: transformer_case(True),
    "transformer-time-first": lambda: transformer_case(False),
    "one-logit": one_logit_case,
    "20-classes": lambda: wide_head_case(20),
    "1000-classes": lambda: wide_head_case(1000),
}


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One training step of ``model`` on ``(x, y)`` (a sigmoid loss for a one-logit head); returns the loss."""
    model.train()
    logits = model(x)
    if logits.shape[1] == 1:
        loss = nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    else:
        loss = nn.functional.cross_entropy(logits, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def _as_classes(logits: torch.Tensor) -> torch.Tensor:
    """The two-class logits ``[0, z]`` of a one-logit head; other heads as they are."""
    return torch.cat([torch.zeros_like(logits), logits], 1) if logits.shape[1] == 1 else logits


@pytest.mark.parametrize("name", list(CASES))
def test_model_is_recorded_as_its_own_forward_pass_says(tmp_path, name):
    torch.manual_seed(0)
    case = CASES[name]()
    model, x = case.model, case.x
    y = torch.randint(0, case.n_classes, (len(x),))
    layers = list(case.expected(model.eval(), x[:2]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    want = []
    with Recorder(model, layers=layers, probe=(x, y), path=tmp_path / name, **case.recorder_kwargs) as rec:
        for epoch in range(2):
            with torch.no_grad():
                model.eval()
                want.append(({k: v.detach() for k, v in case.expected(model, x).items()},
                             _as_classes(case.logits(model, x))))
            rec.capture(epoch)
            train_step(model, x, y, optimizer)

    ds = open_run(tmp_path / name)
    assert ds["epoch"].values.tolist() == [0, 1]
    assert ds["class"].values.tolist() == [str(i) for i in range(case.n_classes)]
    assert ds["layer_units"].values.tolist() == [want[0][0][layer].shape[1] for layer in layers]
    assert ds["logits"].shape == (2, len(x), case.n_classes)
    for epoch, (acts, logits) in enumerate(want):
        for layer in layers:
            width = int(ds["layer_units"].sel(layer=layer))
            np.testing.assert_allclose(ds["activation"].sel(epoch=epoch, layer=layer).values[:, :width],
                                       acts[layer].numpy(), rtol=1e-4, atol=1e-5, err_msg=f"{name} {layer} {epoch}")
        np.testing.assert_allclose(ds["logits"].sel(epoch=epoch).values, logits.numpy(), rtol=1e-4, atol=1e-5)
        accuracy = float((logits.argmax(1) == y).float().mean())
        assert float((ds["prediction"].sel(epoch=epoch) == ds["label"]).mean()) == pytest.approx(accuracy)
    # one training step at lr 0.5 moves every model's logits
    assert not np.allclose(ds["logits"].sel(epoch=0).values, ds["logits"].sel(epoch=1).values)
