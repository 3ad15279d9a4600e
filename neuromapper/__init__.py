"""NeuroMapper: see how a neural network learns.

The pipeline is record -> store -> reduce -> view -> export, one module per stage:
:mod:`neuromapper.record` (:class:`Recorder`), :mod:`neuromapper.store` (:func:`open_run`),
:mod:`neuromapper.reduce`, :mod:`neuromapper.app` and :mod:`neuromapper.export`.
"""

from .record import Recorder
from .store import RunError, layer_activations, open_run

__all__ = ["Recorder", "RunError", "layer_activations", "open_run"]
__version__ = "0.1.0"
