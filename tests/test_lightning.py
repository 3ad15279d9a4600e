"""The Lightning callback records a real fit."""

from __future__ import annotations

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
# about throughput of real training, not about what this test checks.
@pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning")
@pytest.mark.filterwarnings("ignore:.*`num_workers`.*:UserWarning")
@pytest.mark.filterwarnings("ignore:.*log_every_n_steps.*:UserWarning")
# Lightning's own use of a torch.utils._pytree API that newer torch deprecates; not our code.
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")
def test_callback_records_start_and_each_epoch(tmp_path, digits):
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits.x[200:], digits.y[200:]), batch_size=64)
    callback = NeuroMapperCallback(probe=(digits.x[:200], digits.y[:200]), path=tmp_path / "lit",
                                   layers=["hidden", "out"], class_names=digits.class_names)
    trainer = L.Trainer(max_epochs=3, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(LitMLP(), loader)
    ds = open_run(tmp_path / "lit")
    assert ds["epoch"].values.tolist() == [0, 1, 2, 3]
    assert list(ds["layer_units"].values) == [32, 10]
    losses = ds["metric"].sel(metric_name="train_loss").values
    assert losses[3] < losses[1]
