"""The Lightning callback records a real fit, and resumes one from a checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as L
import torch
from torch import nn

from neuromapper import open_run
from neuromapper.lightning import NeuroMapperCallback


class LitMLP(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(self.hidden(x))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


# Lightning warns that a 2-core test loader has few workers and that no logger is set; both are
# about throughput of real training, not about what these tests check.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*`num_workers`.*:UserWarning"),
    pytest.mark.filterwarnings("ignore:.*log_every_n_steps.*:UserWarning"),
    # Lightning's own use of a torch.utils._pytree API that newer torch deprecates; not our code.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
]


def _fit(digits, path, max_epochs, model, ckpt_path=None, **callback_kwargs):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits.x[200:], digits.y[200:]), batch_size=64)
    callback = NeuroMapperCallback(probe=(digits.x[:200], digits.y[:200]), path=path, layers=["hidden", "out"],
                                   class_names=digits.class_names, **callback_kwargs)
    trainer = L.Trainer(max_epochs=max_epochs, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, loader, ckpt_path=ckpt_path)
    return trainer


def test_callback_records_start_and_each_epoch(tmp_path, digits):
    _fit(digits, tmp_path / "lit", 3, LitMLP())
    ds = open_run(tmp_path / "lit")
    assert ds["epoch"].values.tolist() == [0, 1, 2, 3]
    assert list(ds["layer_units"].values) == [32, 10]
    losses = ds["metric"].sel(metric_name="train_loss").values
    assert losses[3] < losses[1]


def test_callback_resumes_a_run_from_a_checkpoint(tmp_path, digits):
    torch.manual_seed(0)
    trainer = _fit(digits, tmp_path / "lit", 2, LitMLP())
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    before = open_run(tmp_path / "lit")["logits"].sel(epoch=2).values
    _fit(digits, tmp_path / "lit", 4, LitMLP(), ckpt_path=tmp_path / "last.ckpt", resume=True)
    ds = open_run(tmp_path / "lit")
    assert ds["epoch"].values.tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(ds["logits"].sel(epoch=2).values, before)  # kept, with its metrics
    assert np.isfinite(ds["metric"].sel(metric_name="train_loss", epoch=[1, 2, 3, 4]).values).all()
    # the resumed fit went on from the checkpoint's weights: epoch 3 is one epoch of training after 2
    with torch.no_grad():
        start = LitMLP.load_from_checkpoint(tmp_path / "last.ckpt")(digits.x[:200]).numpy()
    np.testing.assert_allclose(start, before, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ds["logits"].sel(epoch=3).values, before)
