"""A Lightning callback that records a run with :class:`neuromapper.Recorder`.

Usage::

    trainer = Trainer(callbacks=[NeuroMapperCallback(probe=(x, y), path="runs/lit", layers=["fc1"])])

Epoch ``k`` is the model after ``k`` training epochs: it is captured when training starts
(``k = 0``, the untrained model) and at the end of each training epoch, with the trainer's logged
scalar metrics. After a crash, fit again from the last checkpoint with ``resume=True``::

    trainer = Trainer(callbacks=[NeuroMapperCallback(probe=(x, y), path="runs/lit", resume=True)])
    trainer.fit(model, ckpt_path="last.ckpt")

The checkpoint's epoch is then captured only if the run does not hold it yet (the weights are
the same; the recorded file keeps its metrics), and the run continues from there: epochs after
the checkpoint are recorded again as they are trained again.
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
    """Record the probe when training starts and after every training epoch.

    Parameters are those of :class:`neuromapper.Recorder` except ``model``, which is the
    LightningModule being fitted; ``resume=True`` appends to an existing run (see the module
    docstring).
    """

    def __init__(
        self,
        probe: Any,
        path: str,
        layers: Sequence[str] | None = None,
        *,
        resume: bool = False,
        **recorder_kwargs: Any,
    ):
        super().__init__()
        self.probe = probe
        self.path = path
        self.layers = layers
        self.resume = resume
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        # Not on_fit_start: a fit resumed from a checkpoint restores trainer.current_epoch between
        # the two hooks, and only from here on does it name the epoch the weights belong to.
        self.recorder = Recorder(pl_module, layers=self.layers, probe=self.probe, path=self.path,
                                 resume=self.resume, **self.recorder_kwargs)
        if trainer.current_epoch not in self.recorder.epochs:  # a resumed run keeps the file and its metrics
            self.recorder.capture(trainer.current_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {}
        for name, value in trainer.callback_metrics.items():
            try:
                metrics[name] = float(value)
            except (TypeError, ValueError):
                continue
        self.recorder.capture(trainer.current_epoch + 1, metrics=metrics)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self.recorder is not None:
            self.recorder.close()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.recorder is not None:
            self.recorder.close()
