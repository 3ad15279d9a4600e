"""NeuroMapper: see how a neural network learns.

The pipeline is record -> store -> reduce -> view -> export, one module per stage:
:mod:`neuromapper.record` (:class:`Recorder`), :mod:`neuromapper.store` (:func:`open_run`),
:mod:`neuromapper.reduce`, :mod:`neuromapper.app` and :mod:`neuromapper.export`.
"""

from . import reduce
from .record import Recorder
from .reduce import ReductionCancelled, find_embedding, list_embeddings, load_embedding
from .store import RunError, layer_activations, open_run

# ``reduce`` is the module neuromapper.reduce, which is callable: ``neuromapper.reduce(run, ...)``
# computes an embedding and ``neuromapper.reduce.find_embedding`` etc. stay reachable (see its
# docstring).
__all__ = [
    "Recorder",
    "ReductionCancelled",
    "RunError",
    "export_html",
    "find_embedding",
    "layer_activations",
    "list_embeddings",
    "load_embedding",
    "open_run",
    "reduce",
    "show",
]
__version__ = "0.1.0"


def show(run, **params):
    """The dashboard viewer for ``run``; in a notebook, display the returned object.

    Parameters are those of :class:`neuromapper.app.NeuroMapper` (``embedding=`` and any of its
    parameters, e.g. ``layers=["fc1", "fc2"]``).
    """
    from .app import NeuroMapper

    return NeuroMapper(run, **params)


def __getattr__(name: str):
    # export_html pulls in datashader and numba; import it on first use so that `import neuromapper`
    # (and `neuromapper info`) does not pay for them (PEP 562 module __getattr__).
    if name == "export_html":
        from .export import export_html

        return export_html
    raise AttributeError(f"module 'neuromapper' has no attribute {name!r}")
