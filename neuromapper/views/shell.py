"""The app shell: a template with one page per view, the run's card and the player on every page.

:class:`App` owns one session: its :class:`~neuromapper.views.state.SessionState` and the views
over it, each built when its page is first shown. The sidebar holds what every page shares (the
run chooser, the run's card, the live status, the epoch player and the class toggles) followed by
the shown page's own controls. Choosing another run disposes the state and views of the old one
and builds new ones, so nothing of the old run survives in the session.

:func:`serve_app` is what ``neuromapper serve`` and ``dashboards/dashboard.py`` give each browser
session: a fresh App whose background work reports to that session's event loop, released when
the session closes (its reduce job left, and cancelled when nobody else waits; its watcher and
render thread stopped).
"""

from __future__ import annotations

import ctypes
import gc
import html
import threading
from functools import partial
from pathlib import Path

import panel as pn
import param

from ..scene import MANY_CLASSES, class_palette
from .activations import ActivationsView
from .embedding import EmbeddingView
from .model import ModelView
from .page import Page
from .run import RunFacts, find_runs
from .state import SessionState
from .training import TrainingView
from .widgets import Immediate, text_multichoice

EXTENSIONS = ("tabulator",)  # Panel extensions the pages use: pn.extension(*EXTENSIONS) before serving
PAGES = {"Embeddings": EmbeddingView, "Activations": ActivationsView, "Model": ModelView, "Training": TrainingView}


class EpochPlayer(Immediate, pn.widgets.DiscretePlayer):
    """The epoch player: a step is handled at once (:class:`~neuromapper.views.widgets.Immediate`).

    A step also does not flip the page's busy indicator on and off: for a change this short that
    cost more server time than pushing the four new pictures (py-spy profile, summarised in
    ``benchmarks/RESULTS-dashboard.md``).
    """

    _busy__ignore = ["value", "value_throttled"]


class App(pn.viewable.Viewer):
    """One session of NeuroMapper over a run, or over a folder of runs (a chooser on top).

    Parameters
    ----------
    path
        A run directory, or a folder holding runs.
    embedding
        An embedding to show instead of the stored default (a notebook use).
    dispatch
        How background threads hand work to this session (see :class:`SessionState`).
    """

    run_path = param.Selector(default=None, objects=[], doc="The run shown (one of the runs found at path).")

    def __init__(self, path, *, embedding=None, dispatch=None, **params):
        entries = find_runs(path)
        super().__init__(**params)
        self.param.run_path.objects = {entry.label: entry.path for entry in entries}
        self._dispatch = dispatch
        self._embedding = embedding
        self._sidebar = pn.Column(sizing_mode="stretch_width")
        self._main = pn.Column(sizing_mode="stretch_width")
        self.state: SessionState | None = None
        self.views: dict[str, pn.viewable.Viewer] = {}  # the pages built so far (see _open)
        self._pages: dict[str, pn.Column] = {}
        self.run_path = entries[0].path

    @param.depends("run_path", watch=True)
    def _open(self) -> None:
        """Show ``run_path``: a fresh state and fresh views; the old ones are disposed.

        A page's view is built the first time its tab is shown (:meth:`view`), not with the session:
        most sessions never leave the Embeddings page, and building the other three up front cost
        every session about 1 s of server time and 38% more small objects (``App`` over a
        demo-shaped run: 76,500 against 55,500 Python allocations, 4.4-5.0 s against 3.3-3.5 s, three
        builds each; ``benchmarks/RESULTS-load.md``), memory that twenty sessions opened at once make
        Python's allocator keep after they close.
        """
        self._dispose_session()
        self.state = SessionState(self.run_path, embedding=self._embedding, dispatch=self._dispatch)
        self._embedding = None
        self._pages = {name: pn.Column(sizing_mode="stretch_width", margin=0) for name in PAGES}
        self._tabs = pn.Tabs(*self._pages.items(), dynamic=True, sizing_mode="stretch_width")
        names = list(PAGES)  # tab index -> page name

        def show_active(*_):  # a hidden page defers its drawing (views/page.py)
            active = self.view(names[self._tabs.active])
            for view in self.views.values():
                if isinstance(view, Page):
                    view.shown = view is active

        self._tabs.param.watch(show_active, "active")
        show_active()
        controls = {}  # built once per page: each build adds watchers to the page's painter

        def page_controls_of(active: int):
            if active not in controls:
                controls[active] = self.view(names[active]).controls()
            return controls[active]

        page_controls = pn.panel(pn.bind(page_controls_of, self._tabs.param.active), sizing_mode="stretch_width")
        self._sidebar.objects = [*self._shared_controls(), pn.layout.Divider(), page_controls]
        self._main.objects = [self._tabs]

    def view(self, name: str) -> pn.viewable.Viewer:
        """The view of page ``name`` (one of ``PAGES``), built over the session's state on first use."""
        if name not in self.views:
            self.views[name] = PAGES[name](self.state)
            self._pages[name].objects = [self.views[name]]
        return self.views[name]

    @property
    def embeddings(self) -> EmbeddingView:
        return self.view("Embeddings")

    # -- what every page shares -----------------------------------------------------------------------
    def _shared_controls(self) -> list:
        state = self.state
        controls = []
        if len(self.param.run_path.objects) > 1:
            controls.append(pn.widgets.Select.from_param(self.param.run_path, label="run"))
        controls.append(pn.pane.HTML(pn.bind(self._run_card, state.param.run), css_classes=["nm-run-info"],
                                     sizing_mode="stretch_width"))
        controls.append(pn.pane.HTML(pn.bind(_live_html, state.param.live), css_classes=["nm-live"],
                                     sizing_mode="stretch_width"))
        # The player's own "epoch: N" label is not redrawn when the epoch is set from the server (a click
        # on the training curves, a notebook): the epoch is shown by a pane bound to the state instead.
        controls.append(pn.pane.HTML(pn.bind(_epoch_html, state.param.epoch, state.param.run),
                                     css_classes=["nm-epoch"], margin=(8, 10, 0, 10)))
        self._interval = 700
        self._player_box = pn.Column(*self._player(), sizing_mode="stretch_width", margin=0)
        # Panel 1.9's player draws its slider's range once (panel/models/player.ts watches no start/end):
        # when a live run adds epochs, a fresh player (and its speed slider, linked in the page) offers them.
        state.param.watch(lambda _: setattr(self._player_box, "objects", self._player()), "epoch", what="objects")
        controls += [self._player_box, pn.pane.Markdown("**classes**", margin=(6, 10, 0, 10)), self._class_toggles()]
        return controls

    def _player(self) -> list:
        """The epoch player over the state's epochs and its frame-interval slider."""
        painter = self.embeddings.painter
        player = EpochPlayer.from_param(self.state.param.epoch, label="", show_value=False,
                                        interval=self._interval, loop_policy=painter.loop_policy,
                                        show_loop_controls=True, sizing_mode="stretch_width", margin=(0, 10, 25, 10))
        player.link(painter, loop_policy="loop_policy")
        speed = pn.widgets.IntSlider(label="frame interval (ms)", start=100, end=2000, step=100, value=self._interval,
                                     sizing_mode="stretch_width")
        speed.jslink(player, value="interval")
        speed.param.watch(lambda event: setattr(self, "_interval", event.new), "value")
        return [player, speed]

    def _class_toggles(self):
        state = self.state
        names = state.run.class_names
        if len(names) > MANY_CLASSES:
            return text_multichoice(state.param.classes, f"visible classes ({len(names)})", search_option_limit=50)
        buttons = pn.widgets.CheckButtonGroup.from_param(
            state.param.classes, label="", color="light", variant="solid", sizing_mode="stretch_width",
            stylesheets=[_class_button_css(names)], css_classes=["nm-classes"])
        every = pn.widgets.Button(label="all", color="light", width=60)
        none = pn.widgets.Button(label="none", color="light", width=60)
        every.on_click(lambda _: setattr(state, "classes", list(names)))
        none.on_click(lambda _: setattr(state, "classes", []))
        return pn.Column(buttons, pn.Row(every, none), sizing_mode="stretch_width")

    def _run_card(self, run: RunFacts) -> str:
        model = run.model
        final = run.accuracy()[-1]
        dataset = f" · {html.escape(run.dataset)}" if run.dataset else ""
        return (f"<div style='font-size:13px;line-height:1.5'><b>{html.escape(run.name)}</b>{dataset}<br>"
                f"{html.escape(str(model.get('class', '?')).rsplit('.', 1)[-1])} "
                f"({int(model.get('parameters', 0)):,} parameters)<br>"
                f"epochs {run.epochs[0]}–{run.epochs[-1]} · {len(run.labels):,} probe samples<br>"
                f"final probe accuracy <b>{final:.1%}</b></div>")

    # -- page ------------------------------------------------------------------------------------------
    def __panel__(self):
        return pn.Row(pn.Column(self._sidebar, width=330), self._main, sizing_mode="stretch_width")

    def template(self, title: str = "NeuroMapper") -> pn.template.BootstrapTemplate:
        """The page for ``panel serve``: shared and page controls in the sidebar, pages in the main area.

        Bootstrap rather than FastListTemplate: the Fast design always links a Google Fonts
        stylesheet, which fails (and logs console errors) on an offline machine.
        """
        # The template inserts its title into the header as markup (and into <title> as text): the
        # run's folder name, which is data, goes into a pane of its own as escaped text.
        run_name = pn.pane.HTML(pn.bind(lambda *_: _header_html(self.state.run.name if self.state else ""),
                                        self.param.run_path), css_classes=["nm-header-run"], margin=(0, 10))
        return pn.template.BootstrapTemplate(
            title=title, header=[run_name], sidebar=[self._sidebar], main=[self._main],
            sidebar_width=330, header_background="#4c78a8",
        )

    # -- lifetime --------------------------------------------------------------------------------------
    def _dispose_session(self) -> None:
        for view in self.views.values():
            view.dispose()
        if self.state is not None:
            self.state.dispose()
        self.views, self.state = {}, None

    def dispose(self) -> None:
        """Release everything this session made: its reduce job, watcher entry and threads."""
        self._dispose_session()
        release_memory_soon()


RELEASE_DELAY_S = 2.0
_release_timer: threading.Timer | None = None
_release_lock = threading.Lock()


def release_memory_soon(delay: float = RELEASE_DELAY_S) -> None:
    """Collect the garbage closed sessions left and give its memory back, once, ``delay`` s after the last close.

    A session's objects refer to each other (views, state, painters, Bokeh models), so they go
    only with a full collection of the cyclic garbage, which Python starts when allocations call
    for it: an idle server, the moment users leave, makes none, and kept them all
    (``benchmarks/RESULTS-load.md``). The freed memory then sits in glibc's heap until
    ``malloc_trim`` hands it back. One timer for all sessions: twenty closing together cost one
    collection, off the event loop.
    """
    global _release_timer
    with _release_lock:
        if _release_timer is not None:
            _release_timer.cancel()
        _release_timer = threading.Timer(delay, _release_memory)
        _release_timer.daemon = True
        _release_timer.start()


def _release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the collection alone
        pass


def _class_button_css(names: list[str]) -> str:
    """Class buttons show full names (wrapping onto more rows) and their class colour while visible."""
    rules = [":host .bk-btn-group {flex-wrap: wrap; gap: 2px;}",
             ":host .bk-btn {padding: 3px 6px; min-width: 0; flex: 0 1 auto; white-space: nowrap; max-width: 100%;"
             " overflow: hidden; text-overflow: ellipsis; border-bottom: 4px solid transparent;}"]
    for i, color in enumerate(class_palette(names).values(), start=1):
        rules.append(f":host .bk-btn:nth-child({i}).bk-active {{border-bottom-color: {color};}}")
    return "\n".join(rules)


def _header_html(name: str) -> str:
    return (f"<div style='color:white;font-size:1.4em;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;"
            f"max-width:60vw'>· {html.escape(name)}</div>")


def _epoch_html(epoch: int, run: RunFacts) -> str:
    return f"<span style='font-size:14px'>epoch <b>{epoch}</b> of {run.epochs[0]}–{run.epochs[-1]}</span>"


def _live_html(live: str) -> str:
    if not live:
        return ""
    return (f"<div style='font-size:13px;color:#b35900'><span style='color:#e45756'>●</span> "
            f"{html.escape(live)}</div>")


def _session_dispatch():
    """Hand a background thread's work to the current session's event loop (under its lock)."""
    doc = pn.state.curdoc
    if doc is None or doc.session_context is None:
        return None

    def dispatch(fn, *args) -> None:
        try:
            doc.add_next_tick_callback(partial(fn, *args))
        except Exception:  # the session closed meanwhile: nothing to show the result to
            pass

    return dispatch


def local_resources() -> None:
    """Make the session's stylesheets point at this server, never at Panel's CDN.

    Panel rewrites each component's stylesheet links for the document's ``dist_url``, which it
    sets only when the page's HTML is rendered, after the template has built its components; a
    component built before that (every one of them, at session creation) gets the CDN address,
    and some keep it: ``loading.css`` was requested from cdn.holoviz.org after a player step
    with one session open, and several stylesheets once sessions were recreated under load
    (issue 12, finding 12; a session Bokeh builds for a late websocket never gets it at all).
    Setting the local address up front, as Panel itself later does for a server in ``server``
    resource mode, keeps every link on this server.
    """
    from panel.io.resources import get_dist_path

    doc = pn.state.curdoc
    if doc is not None:
        doc._template_variables.setdefault("dist_url", get_dist_path(cdn=False))


def serve_app(path: str | Path) -> pn.template.BootstrapTemplate:
    """A fresh App for the current browser session, released when the session closes."""
    local_resources()
    app = App(path, dispatch=_session_dispatch())
    pn.state.on_session_destroyed(partial(_session_closed, app))
    return app.template()


def _session_closed(app: App, _context) -> None:
    app.dispose()
    forget_closed_templates()


def forget_closed_templates() -> None:
    """Drop the ids of closed sessions' templates from ``pn.state._fake_roots``.

    Panel (1.9.4) notes each served template's root id there and means to drop it when the
    session ends, but its session-end hook reads the id from ``BaseTemplate._refs``, which nothing
    fills: a string per session stayed for the server's life (``tests/test_session_release.py``),
    one of the few objects a closed session left (``benchmarks/RESULTS-load.md``). A template
    whose session is open has its root in ``pn.state._views``; a closed one's is removed from there
    when its session ends (before or after this hook, in Bokeh's order, so at the latest with the
    next session that closes).
    """
    state = pn.state
    state._fake_roots[:] = [ref for ref in state._fake_roots if ref in state._views]
