"""The recorder: shapes for an MLP, a CNN and a ResNet-18; hooks and modes; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from neuromapper import Recorder, open_run
from neuromapper.data import DigitCNN, small_resnet18
from neuromapper.record import default_layers, thumbnails


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_mlp_shapes_logits_and_loss(tmp_path, mlp, digits):
    x, y = digits.x[:100], digits.y[:100]
    with Recorder(mlp, layers=["1", "3", "5"], probe=(x, y), path=tmp_path / "mlp") as rec:
        rec.capture(0)
        rec.capture(1, metrics={"val_acc": 0.5})
    ds = open_run(tmp_path / "mlp")
    assert ds.sizes["epoch"] == 2 and ds.sizes["sample"] == 100
    assert list(ds["layer"].values) == ["1", "3", "5"]
    assert list(ds["layer_units"].values) == [32, 16, 10]
    with torch.no_grad():
        expected_hidden = torch.relu(mlp[1](x.flatten(1)))
        expected_logits = mlp(x)
    # layer "1" is the Linear before the ReLU: its recorded output is the pre-activation
    np.testing.assert_allclose(ds["activation"].sel(epoch=0, layer="1").values[:, :32],
                               mlp[1](x.flatten(1)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected_hidden.numpy(), ds["activation"].sel(epoch=0, layer="1").values[:, :32])
    np.testing.assert_allclose(ds["logits"].sel(epoch=1).values, expected_logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ds["prediction"].sel(epoch=1).values, expected_logits.argmax(1).numpy())
    loss = nn.functional.cross_entropy(expected_logits, y, reduction="none").numpy()
    np.testing.assert_allclose(ds["loss"].sel(epoch=1).values, loss, rtol=1e-5)
    # narrower layers are padded with NaN beyond their width
    assert np.isnan(ds["activation"].sel(epoch=0, layer="5").values[:, 10:]).all()
    assert float(ds["metric"].sel(epoch=1, metric_name="val_acc")) == 0.5
    assert np.isnan(float(ds["metric"].sel(epoch=0, metric_name="val_acc")))


def test_cnn_records_channel_means_and_first_conv_weights(tmp_path, digits):
    model = DigitCNN(in_channels=1, n_classes=10, image_size=8, width=8)
    x, y = digits.x[:64], digits.y[:64]
    with Recorder(model, probe=(x, y), path=tmp_path / "cnn", batch_size=10) as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "cnn")
    assert list(ds["layer"].values) == ["conv1", "conv2", "fc1", "fc2"]  # default: the four blocks
    assert list(ds["layer_units"].values) == [8, 16, 128, 10]
    with torch.no_grad():
        fmap = model.conv2(model.conv1(x))
    np.testing.assert_allclose(ds["activation"].sel(epoch=0, layer="conv2").values[:, :16],
                               fmap.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds["first_conv_weight"].sel(epoch=0).values, model.conv1[0].weight.detach().numpy())
    assert ds.attrs["first_conv_layer"] == "conv1.0"
    assert ds["image"].dtype == np.uint8 and ds["image"].shape == (64, 8, 8, 1)


def test_resnet18_default_layers_and_widths(tmp_path):
    torch.manual_seed(0)
    model = small_resnet18(in_channels=3, n_classes=10)
    x, y = torch.rand(12, 3, 32, 32), torch.arange(12) % 10
    with Recorder(model, probe=(x, y), path=tmp_path / "resnet", channel_reduce="max") as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "resnet")
    assert list(ds["layer"].values) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert list(ds["layer_units"].values) == [64, 64, 128, 256, 512, 10]
    assert ds.sizes["unit"] == 512
    assert ds["image"].shape == (12, 32, 32, 3)


def test_dotted_layer_names_and_unknown_name_lists_valid_ones(tmp_path):
    model = small_resnet18(in_channels=1)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    with Recorder(model, layers=["layer2.1.conv2"], probe=(x, y), path=tmp_path / "dotted") as rec:
        rec.capture(0)
    assert open_run(tmp_path / "dotted")["layer_units"].values.tolist() == [128]
    with pytest.raises(ValueError, match=r"layers: \['layer9'\] not found in ResNet; valid names: .*'layer2.1.conv2'"):
        Recorder(model, layers=["layer9"], probe=(x, y), path=tmp_path / "bad")


class Exploding(nn.Module):
    """An MLP whose forward raises when ``armed`` is set, to test clean-up."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 8)
        self.fc2 = nn.Linear(8, 10)
        self.armed = False

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        if self.armed:
            raise RuntimeError("boom")
        return self.fc2(h)


def test_hooks_removed_and_mode_restored_after_exception(tmp_path, digits):
    model = Exploding()
    model.train()
    rec = Recorder(model, layers=["fc1", "fc2"], probe=(digits.x[:50], digits.y[:50]), path=tmp_path / "boom")
    rec.capture(0)
    model.armed = True
    with pytest.raises(RuntimeError, match="boom"):
        rec.capture(1)
    assert _hook_count(model) == 0
    assert model.training is True  # restored although capture switched to eval()
    model.eval()
    model.armed = False
    rec.capture(1)
    assert model.training is False  # an eval-mode model stays in eval mode
    rec.close()
    assert open_run(tmp_path / "boom")["epoch"].values.tolist() == [0, 1]


def test_exception_in_training_loop_keeps_recorded_epochs(tmp_path, mlp, digits):
    with pytest.raises(KeyError):
        with Recorder(mlp, layers=["1"], probe=(digits.x[:40], digits.y[:40]), path=tmp_path / "crash") as rec:
            for epoch in range(7):
                rec.capture(epoch)
            raise KeyError("crash in epoch 7")
    assert _hook_count(mlp) == 0
    assert open_run(tmp_path / "crash")["epoch"].values.tolist() == list(range(7))
    with pytest.raises(RuntimeError, match="closed"):
        rec.capture(8)


def test_nonfinite_activations_are_recorded_and_flagged(tmp_path, digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.Linear(4, 10))
    with torch.no_grad():
        model[1].bias[0] = float("inf")
    rec = Recorder(model, layers=["1", "2"], probe=(digits.x[:20], digits.y[:20]), path=tmp_path / "nan")
    with pytest.warns(RuntimeWarning, match=r"layer '1' at epoch 0: 20 non-finite"):
        with pytest.warns(RuntimeWarning, match=r"layer '2' at epoch 0"):
            rec.capture(0)
    rec.close()
    ds = open_run(tmp_path / "nan")
    assert int(ds["nonfinite"].sel(epoch=0, layer="1")) == 20
    assert np.isinf(ds["activation"].sel(epoch=0, layer="1").values[:, 0]).all()


@pytest.mark.parametrize(
    ("probe", "match"),
    [
        ((torch.zeros(10, 64), torch.zeros(9, dtype=torch.long)), "10 inputs but 9 labels"),
        ((torch.zeros(10, 64), torch.full((10,), 12)), r"values must lie in 0..9 to match the 10 class_names"),
        ((torch.zeros(10, 64), torch.zeros(10, 2)), "expected a 1-D array of class indices"),
        ((torch.zeros(10, 64), torch.full((10,), 0.5)), "expected integer class indices"),
        ("not a probe", "expected \\(inputs, labels\\)"),
    ],
)
def test_bad_probe_is_rejected_with_a_clear_error(tmp_path, mlp, probe, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Recorder(mlp, probe=probe, class_names=[str(i) for i in range(10)], path=tmp_path / "bad")
    assert not (tmp_path / "bad" / "run.nc").exists()


def test_existing_run_is_not_overwritten_silently(tmp_path, mlp, digits):
    probe = (digits.x[:10], digits.y[:10])
    Recorder(mlp, probe=probe, path=tmp_path / "r").close()
    with pytest.raises(ValueError, match="already holds a NeuroMapper run: pass overwrite=True"):
        Recorder(mlp, probe=probe, path=tmp_path / "r")
    Recorder(mlp, probe=probe, path=tmp_path / "r", overwrite=True).close()


def test_bad_epoch_and_metrics(tmp_path, mlp, digits):
    with Recorder(mlp, probe=(digits.x[:10], digits.y[:10]), path=tmp_path / "r") as rec:
        with pytest.raises(ValueError, match="epoch: expected a non-negative integer"):
            rec.capture(-1)
        with pytest.raises(ValueError, match=r"metrics\['acc'\]: expected a number"):
            rec.capture(0, metrics={"acc": "high"})


def test_recapturing_an_epoch_replaces_it(tmp_path, mlp, digits):
    with Recorder(mlp, layers=["5"], probe=(digits.x[:10], digits.y[:10]), path=tmp_path / "r") as rec:
        rec.capture(0)
        with torch.no_grad():
            mlp[5].bias += 1.0
        rec.capture(0)
    ds = open_run(tmp_path / "r")
    assert ds.sizes["epoch"] == 1
    with torch.no_grad():
        np.testing.assert_allclose(ds["logits"].sel(epoch=0).values, mlp(digits.x[:10]).numpy(), rtol=1e-5)


def test_default_layers_and_thumbnails():
    assert default_layers(small_resnet18()) == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc"]
    with pytest.raises(ValueError, match="no top-level module with parameters"):
        default_layers(nn.Sequential(nn.ReLU()))
    x = torch.linspace(-1, 1, 2 * 3 * 64 * 64).reshape(2, 3, 64, 64)
    thumbs = thumbnails(x)
    assert thumbs.shape == (2, 32, 32, 3) and thumbs.dtype == np.uint8
    assert thumbs.min() == 0 and thumbs.max() == 255
    assert thumbnails(torch.zeros(5, 2)) is None  # tabular inputs have no picture


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_probe_follows_the_model_device(tmp_path, digits, device):
    model = DigitCNN(image_size=8, width=4).to(device)
    with Recorder(model, probe=(digits.x[:16], digits.y[:16]), path=tmp_path / device) as rec:
        rec.capture(0)
    assert open_run(tmp_path / device)["logits"].shape == (1, 16, 10)
