"""NeuroMapper: see how a neural network learns.

The pipeline is record -> store -> reduce -> view -> export, one module per stage:
:mod:`neuromapper.record` (:class:`Recorder`), :mod:`neuromapper.store` (:func:`open_run` and the
embedding files), :mod:`neuromapper.reduce` (with :class:`ReduceParams`), :mod:`neuromapper.views`
and :mod:`neuromapper.export`.

``import neuromapper`` loads only the store (numpy and xarray): ``Recorder`` (PyTorch),
``reduce`` and ``ReductionCancelled`` (numba, umap-learn, scikit-learn) and ``export_html``
(datashader) are imported on first use (PEP 562 module ``__getattr__``), so that
``neuromapper --help``, ``neuromapper info`` and a script that only reads runs start in a fraction
of a second. ``tests/test_project.py`` checks that none of them is imported.
"""

from importlib import import_module
from importlib.metadata import version

from .reduce_params import ReduceParams
from .store import RunError, find_embedding, layer_activations, list_embeddings, load_embedding, open_run

__all__ = [
    "Recorder",
    "ReduceParams",
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
__version__ = version("neuromapper")

# name -> (module, attribute); attribute None: the module itself. ``neuromapper.reduce`` is the
# module neuromapper.reduce, which is callable (see its docstring).
_LAZY = {
    "Recorder": ("record", "Recorder"),
    "ReductionCancelled": ("reduce", "ReductionCancelled"),
    "export_html": ("export", "export_html"),
    "reduce": ("reduce", None),
}


def show(run, embedding=None):
    """The dashboard for ``run`` (a run, or a folder of runs); in a notebook, display the returned object.

    Returns a :class:`neuromapper.views.shell.App`: its ``state`` is the session's shared state
    (``app.state.epoch = 5``, ``app.state.selection`` as sample ids) and
    ``app.embeddings.painter`` the Embeddings page's options (``layers``, ``color_by``...) and
    ``selected()`` table. ``embedding`` shows that embedding instead of the stored default.
    """
    from .views.shell import App

    return App(run, embedding=embedding)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'neuromapper' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    found = import_module(f".{module}", __name__)
    return found if attribute is None else getattr(found, attribute)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
