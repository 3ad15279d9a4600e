"""A Lightning callback that records a run with :class:`neuromapper.Recorder`.

Usage::

    trainer = Trainer(callbacks=[NeuroMapperCallback(probe=(x, y), path="runs/lit", layers=["fc1"])])

Epoch 0 is captured when fitting starts (the untrained model), epoch ``k`` at the end of the
``k``-th training epoch with the trainer's logged scalar metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

try:  # the unified package first, the standalone one second: both ship the same Callback API
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - depends on which Lightning the user installed
    from pytorch_lightning.callbacks import Callback

from .record import Recorder


class NeuroMapperCallback(Callback):
    """Record the probe at the start of fitting and after every training epoch.

    Parameters are those of :class:`neuromapper.Recorder` except ``model``, which is the
    LightningModule being fitted.
    """

    def __init__(self, probe: Any, path: str, layers: Sequence[str] | None = None, **recorder_kwargs: Any):
        super().__init__()
        self.probe = probe
        self.path = path
        self.layers = layers
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        self.recorder = Recorder(pl_module, layers=self.layers, probe=self.probe, path=self.path, **self.recorder_kwargs)
        self.recorder.capture(0)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {}
        for name, value in trainer.callback_metrics.items():
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                continue
        self.recorder.capture(trainer.current_epoch + 1, metrics=metrics)

    def on_fit_end(self, trainer, pl_module) -> None:
        self.recorder.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.recorder is not None:
            self.recorder.close()
