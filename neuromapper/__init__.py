"""NeuroMapper: see how a neural network learns.

The pipeline is record -> store -> reduce -> view -> export, one module per stage:
:mod:`neuromapper.record` (:class:`Recorder`), :mod:`neuromapper.store` (:func:`open_run`),
:mod:`neuromapper.reduce`, :mod:`neuromapper.app` and :mod:`neuromapper.export`.
"""

from .record import Recorder
from .store import RunError, layer_activations, open_run

__all__ = ["Recorder", "RunError", "export_html", "layer_activations", "open_run"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # export_html pulls in datashader and numba; import it on first use so that `import neuromapper`
    # (and `neuromapper info`) does not pay for them (PEP 562 module __getattr__).
    if name == "export_html":
        from .export import export_html

        return export_html
    raise AttributeError(f"module 'neuromapper' has no attribute {name!r}")
