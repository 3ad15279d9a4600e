"""What every page of the app shares: it works only while it is on screen.

A session has one state and four pages, and the player's step reaches every page that watches
the epoch. Drawn for a hidden page, a step is work nobody sees: measured with
``benchmarks/bench_views.py`` on a ResNet-18 run, the hidden Activations page's ranking took 21%
of every step on the Model page, and a Model page opened once kept redrawing after the user left
it, doubling the Embeddings page's step (159-201 ms before, 359-388 ms after). So a page wraps
its expensive watchers with :meth:`Page.when_shown`: while the page is hidden a call is noted
instead of made, and the noted calls run once, without events, when the shell shows the page
again (``shown``). Cheap watchers (a marker, a label) need no wrapping. Text panes that follow
the state are made with :meth:`Page.live_html` (a ``pn.bind`` pane would redraw while hidden).

Text that needs a slow computation first (the Activations page's divergence scores: class
references at 10,000 samples take most of a second) is drawn with :meth:`Page.after`: the
computation runs on the page's background thread and the text is drawn in the session's next
tick, so a player step sends its pictures first instead of waiting for the words beside them.

``shown`` defaults to ``True``: a page used on its own (a notebook, a unit test) is on screen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import panel as pn
import param


class Page(pn.viewable.Viewer):
    """A page of the app that defers its drawing while hidden (see the module docstring)."""

    shown = param.Boolean(default=True, precedence=-1, doc="Whether the page is on screen (the shell sets it).")

    def __init__(self, **params):
        super().__init__(**params)
        self._deferred: dict[Callable, None] = {}  # an ordered set: each deferred call runs once
        self._worker: ThreadPoolExecutor | None = None

    def when_shown(self, fn: Callable) -> Callable:
        """``fn`` as a watcher that runs now when the page is shown, else once when it is next shown."""
        def run(*events):
            if self.shown:
                fn(*events)
            else:
                self._deferred[fn] = None
        return run

    @param.depends("shown", watch=True)
    def _catch_up(self) -> None:
        if self.shown:
            deferred, self._deferred = list(self._deferred), {}
            for fn in deferred:
                fn()

    def live_html(self, render: Callable[[], str], *depends: param.Parameter, prepare: Callable[[], object] | None = None,
                  **pane: object) -> pn.pane.HTML:
        """An HTML pane showing ``render()``, drawn again when a parameter in ``depends`` changes.

        Like ``pn.pane.HTML(pn.bind(...))``, except that while the page is hidden the redraw
        waits until the page is shown (:meth:`when_shown`). With ``prepare``, a redraw runs
        ``prepare()`` first through :meth:`after`.
        """
        out = pn.pane.HTML(render(), **pane)

        def draw():
            out.object = render()

        def redraw(*_):
            if prepare is None:
                draw()
            else:
                self.after(prepare, draw)

        for parameter in depends:
            parameter.owner.param.watch(self.when_shown(redraw), [parameter.name])
        return out

    def after(self, prepare: Callable[[], object], then: Callable[[], None]) -> None:
        """``prepare()`` on the page's background thread, then ``then()`` in the session's next tick.

        Without a served session (a notebook cell, a unit test) both run now, in order.
        """
        doc = pn.state.curdoc
        if doc is None or doc.session_context is None:
            prepare()
            then()
            return

        def work():
            try:
                prepare()
            except Exception:  # then() meets the same error where Panel reports it
                logging.getLogger(__name__).debug("preparing a page's text failed", exc_info=True)
            doc.add_next_tick_callback(then)

        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"neuromapper-{type(self).__name__}")
        self._worker.submit(work)

    def dispose(self) -> None:
        """Stop the page's background thread (the session closed)."""
        if self._worker is not None:
            self._worker.shutdown(wait=False, cancel_futures=True)
