"""The recorder: shapes for an MLP, a CNN and a ResNet-18; hooks and modes; bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from neuromapper import Recorder, RunError, open_run, store
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


def test_cnn_records_channel_means_and_conv_weights(tmp_path, digits):
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
    np.testing.assert_array_equal(store.weights(ds, "conv1").sel(epoch=0).values, model.conv1[0].weight.detach().numpy())
    assert store.weight_layers(ds) == ["conv1", "conv2"]
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
        ((torch.zeros(10, 64), torch.full((10,), 12)),
         r"values must lie in 0..9 for the 10 classes of the model's output \(10 logits\), got min 12"),
        ((torch.zeros(10, 64), torch.zeros(10, 2, 2)), "expected a 1-D array of class indices"),
        ((torch.zeros(10, 64), torch.full((10,), 0.5)), "expected integer class indices, got dtype torch.float32"),
        ((torch.zeros(2, 64), ["cat", "dog"]), r"expected integer class indices, got <U3 values such as 'cat'; "
                                               r"map them to 0..C-1 and pass the names as class_names"),
        ((torch.zeros(2, 64), torch.tensor([1j, 0j])), "expected integer class indices, got dtype torch.complex"),
        ((torch.zeros(0, 64), torch.zeros(0, dtype=torch.long)), "probe: the probe set is empty"),
        (torch.utils.data.TensorDataset(torch.zeros(0, 64), torch.zeros(0)), "probe: the probe set is empty"),
        ("not a probe", "expected \\(inputs, labels\\)"),
    ],
)
def test_bad_probe_is_rejected_with_a_clear_error(tmp_path, mlp, probe, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Recorder(mlp, probe=probe, class_names=[str(i) for i in range(10)], path=tmp_path / "bad")
    assert not (tmp_path / "bad" / "run.nc").exists()


def test_multi_hot_labels_are_refused_saying_what_is_supported(tmp_path, mlp):
    multi_hot = torch.tensor([[1, 0, 1], [0, 1, 0]])
    with pytest.raises(ValueError, match=r"shape \(2, 3\) looks like multi-hot \(multi-label\) targets, which "
                                         r"NeuroMapper does not support yet. Supported: single-label classifiers"):
        Recorder(mlp, probe=(torch.zeros(2, 64), multi_hot), path=tmp_path / "multi")
    assert not (tmp_path / "multi").exists()


def test_existing_run_is_not_overwritten_silently(tmp_path, mlp, digits):
    probe = (digits.x[:10], digits.y[:10])
    Recorder(mlp, probe=probe, path=tmp_path / "r").close()
    with pytest.raises(ValueError, match="already holds a NeuroMapper run: pass resume=True to append to it, "
                                         "overwrite=True to replace it"):
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


def trial_recorder(path, **kwargs) -> Recorder:
    """The recorder of the kill trials, built the same way in the child and in the test."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x, y = torch.randn(64, 16), torch.arange(64) % 4
    return Recorder(model, layers=["0", "2"], probe=(x, y), path=path, **kwargs)


# Importing torch and neuromapper takes seconds, so one server process imports them once and forks
# a fresh child per trial; the test kills the child, never the server.
FORK_SERVER = textwrap.dedent(
    """
    import os, sys, tempfile
    from neuromapper import store
    from tests.test_record import trial_recorder
    with tempfile.TemporaryDirectory() as tmp:  # the first write imports dask and netCDF4: once, here
        store.create_run(tmp, labels=[0], class_names=["0"], layers=["a"], layer_units=[1], layer_kinds=["a"])
    for line in sys.stdin:  # one trial per line: "<run path> <last epoch>"
        path, last = line.split()
        child = os.fork()
        if child == 0:
            print("pid", os.getpid(), flush=True)
            rec = trial_recorder(path)
            for epoch in range(int(last) + 1):
                rec.capture(epoch)
                print("captured", epoch, flush=True)
            rec.close()
            os._exit(0)
        os.waitpid(child, 0)
        print("done", flush=True)
    """
)


@pytest.fixture(scope="module")
def kill_after_capture():
    """``kill(path, epoch, last)``: a child records epochs 0..last into ``path`` and is SIGKILLed
    as soon as it reports that ``capture(epoch)`` returned."""
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=Path(__file__).resolve().parents[1])

    def kill(path, epoch: int, last: int) -> None:
        server.stdin.write(f"{path} {last}\n")
        server.stdin.flush()
        for line in server.stdout:
            word, *value = line.split()
            if word == "done":
                return
            if word == "pid":
                pid = int(value[0])
            elif int(value[0]) == epoch:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass  # capture(last) returned and the child finished first: nothing left to lose
        raise RuntimeError("the fork server died")

    try:
        yield kill
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()


def test_sigkill_right_after_capture_keeps_every_earlier_epoch(tmp_path, kill_after_capture):
    """When ``capture(N)`` returns, epochs 0..N-1 are on disk: at most one epoch is in flight."""
    rng = np.random.default_rng(0)
    last = 6
    for trial in range(20):
        n = int(rng.integers(1, last + 1))
        path = tmp_path / f"trial{trial}"
        kill_after_capture(path, n, last)
        epochs = open_run(path)["epoch"].values.tolist()
        assert epochs[:n] == list(range(n)), f"trial {trial}: killed after capture({n}), found {epochs}"


def test_resume_after_sigkill_continues_the_run(tmp_path, kill_after_capture):
    path = tmp_path / "resumed"
    kill_after_capture(path, 3, last=8)
    on_disk = open_run(path)["epoch"].values.tolist()
    with trial_recorder(path, resume=True) as rec:
        assert rec.epochs == on_disk and on_disk[:3] == [0, 1, 2]
        for epoch in range(rec.epochs[-1] + 1, 9):
            rec.capture(epoch)
    assert rec.epochs == list(range(9))
    ds = open_run(path)
    assert ds["epoch"].values.tolist() == list(range(9))
    np.testing.assert_allclose(ds["logits"].sel(epoch=8).values, ds["logits"].sel(epoch=0).values)


def test_resume_creates_a_missing_run_and_refuses_overwrite_too(tmp_path):
    with trial_recorder(tmp_path / "new", resume=True) as rec:
        assert rec.epochs == []
        rec.capture(0)
    assert open_run(tmp_path / "new")["epoch"].values.tolist() == [0]
    with pytest.raises(ValueError, match="overwrite=True and resume=True contradict each other"):
        trial_recorder(tmp_path / "new", resume=True, overwrite=True)


def _resume_variants():
    """(what changes, recorder kwargs or model change, the message naming the difference)."""
    torch.manual_seed(0)
    wide = nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 4))
    x, y = torch.randn(64, 16), torch.arange(64) % 4
    return [
        ("layers", dict(layers=["0"]), r"layer names: the run has \['0', '2'\], this recorder \['0'\]"),
        ("widths", dict(model=wide), r"layer widths: the run has \[32, 4\], this recorder \[33, 4\]"),
        ("reduction", dict(output_selector={"0": lambda out: out[:, None, :]}),
         r"layer reductions: the run has \['none', 'none'\], this recorder \['time-mean', 'none'\]"),
        ("classes", dict(class_names=list("abcd")),
         r"class names: the run has \['0', '1', '2', '3'\], this recorder \['a', 'b', 'c', 'd'\]"),
        ("sample count", dict(probe=(x[:10], y[:10])), r"probe sample ids: the run has 64 entries, this recorder \[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]"),
        ("sample ids", dict(sample_ids=range(1, 65)), "probe sample ids: 64 of 64 differ"),
        ("labels", dict(probe=(x, (y + 1) % 4)), r"probe labels: 64 of 64 differ \(first at position 0\)"),
        ("inputs", dict(probe=(x + 1, y)), "probe inputs: SHA-256 [0-9a-f]{64} in the run, [0-9a-f]{64} now"),
    ]


@pytest.mark.parametrize(("what", "change", "match"), _resume_variants(), ids=[v[0] for v in _resume_variants()])
def test_resume_refuses_a_different_setup_naming_the_difference(tmp_path, what, change, match):
    with trial_recorder(tmp_path / "r") as rec:
        rec.capture(0)
    torch.manual_seed(0)
    kwargs = dict(model=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), layers=["0", "2"])
    x, y = torch.randn(64, 16), torch.arange(64) % 4
    kwargs.update(probe=(x, y))
    kwargs.update(change)
    with pytest.raises(RunError, match=f"resume=True cannot append to .*differs from the recorded run in .*{match}"):
        Recorder(path=tmp_path / "r", resume=True, **kwargs)
    assert open_run(tmp_path / "r")["epoch"].values.tolist() == [0]  # nothing touched


def test_class_count_comes_from_the_logit_width(tmp_path):
    """A model that always predicts class 9 on labels 0..4 is 0% accurate, not 22%."""
    model = nn.Sequential(nn.Linear(3, 10))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.arange(10.0))
    x, y = torch.randn(50, 3), torch.arange(50) % 5
    with Recorder(model, probe=(x, y), path=tmp_path / "r") as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "r")
    assert ds["class"].values.tolist() == [str(i) for i in range(10)]
    assert ds["logits"].shape == (1, 50, 10)
    assert (ds["prediction"].values == 9).all()
    assert float((ds["prediction"] == ds["label"]).mean()) == 0.0
    np.testing.assert_allclose(ds["loss"].values[0], nn.functional.cross_entropy(model(x), y, reduction="none")
                               .detach().numpy(), rtol=1e-5)


def test_class_names_must_match_the_logit_width(tmp_path, mlp, digits):
    with pytest.raises(ValueError, match=r"class_names: 3 names given, but the model outputs 10 logits, so it has 10 "
                                         r"classes"):
        Recorder(mlp, probe=(digits.x[:10], digits.y[:10] % 3), class_names=["a", "b", "c"], path=tmp_path / "r")
    with pytest.raises(ValueError, match=r"class_names: 3 names given, but the model outputs one sigmoid logit, so "
                                         r"it has 2 classes"):
        Recorder(nn.Sequential(nn.Linear(64, 1)), probe=(digits.x[:10].flatten(1), digits.y[:10] % 2), class_names=["a", "b", "c"],
                 path=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("squeeze", [False, True])
def test_one_logit_head_records_two_classes(tmp_path, squeeze):
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1))
    model = nn.Sequential(head, nn.Flatten(0)) if squeeze else head  # (N,) or (N, 1) logits
    x = torch.randn(40, 5)
    y = (torch.arange(40) % 2).float()[:, None]  # BCEWithLogitsLoss-style (N, 1) float targets
    with Recorder(model, layers=["0"], probe=(x, y), path=tmp_path / "bin") as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "bin")
    z = head(x).detach()[:, 0]
    assert ds["class"].values.tolist() == ["0", "1"] and ds.attrs["head"].startswith("sigmoid")
    np.testing.assert_allclose(ds["logits"].values[0], torch.stack([torch.zeros_like(z), z], 1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(torch.softmax(torch.as_tensor(ds["logits"].values[0]), 1)[:, 1], torch.sigmoid(z),
                               rtol=1e-5)
    np.testing.assert_array_equal(ds["prediction"].values[0], (z > 0).numpy())
    bce = nn.functional.binary_cross_entropy_with_logits(z, y[:, 0], reduction="none")
    np.testing.assert_allclose(ds["loss"].values[0], bce.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"values must lie in 0..1 for the 2 classes of the model's output \(one "
                                         r"sigmoid logit\), got min 0 and max 2"):
        Recorder(model, probe=(x, torch.arange(40) % 3), path=tmp_path / "bad")


class Sequences(nn.Module):
    """A sequence classifier on ``(batch, time, features)`` inputs whatever the RNN's layout."""

    def __init__(self, cell=nn.LSTM, batch_first=True, features=3, hidden=6, classes=4):
        super().__init__()
        self.batch_first = batch_first
        self.rnn = cell(features, hidden, batch_first=batch_first)
        self.attn = nn.MultiheadAttention(hidden, 2, batch_first=batch_first)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        seq, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        mixed, _ = self.attn(seq, seq, seq)
        return self.head(mixed.mean(dim=1 if self.batch_first else 0))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("reduce", ["mean", "last", "max"])
def test_sequence_layers_are_reduced_over_time(tmp_path, batch_first, reduce):
    torch.manual_seed(0)
    model = Sequences(batch_first=batch_first)
    x, y = torch.randn(7, 7, 3), torch.arange(7) % 4  # time steps == batch size: only batch_first can tell
    with Recorder(model, layers=["rnn", "attn", "head"], probe=(x, y), path=tmp_path / "seq", sequence_reduce=reduce,
                  batch_size=7) as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "seq")
    assert ds["layer_units"].values.tolist() == [6, 6, 4]
    assert ds["layer_reduction"].values.tolist() == [f"time-{reduce}", f"time-{reduce}", "none"]
    assert ds.attrs["sequence_reduce"] == reduce
    with torch.no_grad():
        seq, _ = model.rnn(x if batch_first else x.transpose(0, 1))
        mixed, _ = model.attn(seq, seq, seq)
    time = 1 if batch_first else 0
    pick = {"mean": lambda t: t.mean(time), "max": lambda t: t.amax(time), "last": lambda t: t.select(time, -1)}[reduce]
    np.testing.assert_allclose(ds["activation"].sel(epoch=0, layer="rnn").values[:, :6], pick(seq), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(ds["activation"].sel(epoch=0, layer="attn").values[:, :6], pick(mixed), rtol=1e-5,
                               atol=1e-6)


def test_output_selector_picks_from_tuples_and_dicts(tmp_path):
    class DictBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 5)

        def forward(self, x):
            hidden = self.proj(x)
            return {"last_hidden_state": hidden, "pooler_output": hidden.amax(dim=1)}

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 6, batch_first=True)
            self.block = DictBlock()
            self.head = nn.Linear(11, 2)

        def forward(self, x):
            _, h = self.rnn(x)
            return self.head(torch.cat([h[-1], self.block(x)["pooler_output"]], dim=1))

    torch.manual_seed(0)
    model = Model()
    x, y = torch.randn(9, 4, 3), torch.arange(9) % 2
    with pytest.raises(TypeError, match=r"layer 'block' returned a dict with keys \['last_hidden_state', "
                                        r"'pooler_output'\]: pick one with output_selector=\{'block': key or callable\}"):
        Recorder(model, layers=["block"], probe=(x, y), path=tmp_path / "bad")
    with Recorder(model, layers=["rnn", "block"], probe=(x, y), path=tmp_path / "r",
                  output_selector={"rnn": lambda out: out[1][-1], "block": "last_hidden_state"}) as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "r")
    assert ds["layer_reduction"].values.tolist() == ["none", "time-mean"]
    with torch.no_grad():
        np.testing.assert_allclose(ds["activation"].sel(epoch=0, layer="rnn").values[:, :6], model.rnn(x)[1][-1],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ds["activation"].sel(epoch=0, layer="block").values[:, :5],
                                   model.block.proj(x).mean(1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"output_selector: \['head'\] are not among the recorded layers \['rnn'\]"):
        Recorder(model, layers=["rnn"], probe=(x, y), path=tmp_path / "bad", output_selector={"head": 0})


def test_a_layer_whose_first_axis_is_not_the_batch_is_named(tmp_path):
    class TimeFirst(nn.Module):  # a custom block without batch_first: its layout cannot be known
        def forward(self, x):
            return x.transpose(0, 1)

    x, y = torch.randn(4, 5, 3), torch.arange(4) % 2
    with pytest.raises(ValueError, match=r"layer '0' returned shape \(5, 2, 3\) for a batch of 2 probe samples: "
                                         r"expected the batch on the first axis"):
        Recorder(nn.Sequential(TimeFirst(), nn.Linear(3, 2)), layers=["0"], probe=(x, y), path=tmp_path / "r")


class Branchy(nn.Module):
    """A model with a module that forward never calls, and a dict output."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Linear(4, 3)
        self.as_dict = as_dict

    def forward(self, x):
        logits = self.fc(x)
        return {"logits": logits, "hidden": x} if self.as_dict else logits


def test_common_mistakes_get_clear_errors(tmp_path):
    x, y = torch.randn(6, 4), torch.arange(6) % 3
    with pytest.raises(ValueError, match=r"layers: \['unused'\] never ran in Branchy.forward, so there is nothing "
                                         r"to record"):
        Recorder(Branchy(), layers=["fc", "unused"], probe=(x, y), path=tmp_path / "r")
    with pytest.raises(TypeError, match=r"the model returned a dict with keys \['logits', 'hidden'\]: pick one with "
                                        r"logits_selector=key or callable"):
        Recorder(Branchy(as_dict=True), layers=["fc"], probe=(x, y), path=tmp_path / "r")
    with pytest.raises(ValueError, match=r"layers: expected at least one layer name, got none; valid names: "
                                         r"\['fc', 'unused'\]"):
        Recorder(Branchy(), layers=[], probe=(x, y), path=tmp_path / "r")
    assert not (tmp_path / "r").exists()
    with Recorder(Branchy(as_dict=True), layers=["fc"], probe=(x, y), path=tmp_path / "r",
                  logits_selector="logits") as rec:
        rec.capture(0)
    assert open_run(tmp_path / "r")["logits"].shape == (1, 6, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_probe_is_cast_to_the_model_dtype(tmp_path, mlp, digits, dtype):
    model = mlp.to(dtype)
    x, y = digits.x[:30], digits.y[:30]  # float32
    with Recorder(model, layers=["1", "5"], probe=(x, y), path=tmp_path / "r") as rec:
        rec.capture(0)
    ds = open_run(tmp_path / "r")
    assert ds["activation"].dtype == np.float32 and ds["logits"].dtype == np.float32
    with torch.no_grad():
        expected = model(x.to(dtype)).float().numpy()
    np.testing.assert_allclose(ds["logits"].values[0], expected, rtol=1e-6)
    assert np.isfinite(ds["activation"].values[0, :, :, :10]).all()
