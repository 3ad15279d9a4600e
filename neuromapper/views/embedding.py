"""The Embeddings page: one plot per layer side by side, linked by sample id (a thin Viewer).

Everything the page draws comes from :class:`~neuromapper.views.embedding_painter.EmbeddingPainter`;
this module only makes widgets from parameters, builds each layer's HoloViews overlay once, and
pushes new pictures straight into the Bokeh sources HoloViews created when the state changes.
That push is the player's hot path: one document update for all layers, instead of a HoloViews
refresh per layer (several times slower at a million points per layer; see
``benchmarks/bench_dashboard.py``). A HoloViews refresh still happens on zoom (``RangeXY``).

The reduce controls are this page's own parameters; a change sets the shared state's
``reduce_params``, and the state shows the stored embedding or waits for the one being computed.
"""

from __future__ import annotations

import html
from functools import partial

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend for HoloViews
import panel as pn
import param
from panel.io import hold

from .. import plots
from ..reduce_params import ReduceParams
from .embedding_painter import EmbeddingPainter
from .page import Page
from .state import SessionState, weak_hook
from .widgets import text_multichoice

PER_CLASS = {"all": None, "25": 25, "50": 50, "100": 100, "200": 200, "500": 500, "1000": 1000}


class EmbeddingView(Page):
    """Aligned embeddings per layer, epoch by epoch (see the module docstring)."""

    method = param.Selector(default=ReduceParams.DEFAULT.method,
                            objects={ReduceParams.LABELS[m]: m for m in ReduceParams.METHODS})
    n_neighbors = param.Integer(default=ReduceParams.DEFAULT.n_neighbors, bounds=ReduceParams.BOUNDS["n_neighbors"])
    min_dist = param.Number(default=ReduceParams.DEFAULT.min_dist, bounds=ReduceParams.BOUNDS["min_dist"],
                            step=ReduceParams.MIN_DIST_STEP)
    per_class = param.Selector(default=None, objects=PER_CLASS, doc="Samples per class to embed.")

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self.painter = EmbeddingPainter(state)
        self._sources: dict[tuple[str, str], dict[int, object]] = {}
        self._figures: set[int] = set()
        self._plot_cache: dict[str, pn.viewable.Viewable] = {}
        self._markers: dict[int, object] = {}
        self._main = pn.Row(sizing_mode="stretch_width", css_classes=["nm-layers"])
        self._from_state()
        state.param.watch(self._from_state, "reduce_params")
        state.param.watch(self._on_scene, "scene")
        state.param.watch(self.when_shown(self._push_images), ["epoch", "classes", "selection_version"])
        state.param.watch(self._push_ring, ["focused"])
        state.param.watch(self._move_marker, ["epoch"])
        self.painter.param.watch(self._push_images, ["color_by", "show", "trajectories", "attack_arrows"])
        self.painter.param.watch(self._layout_layers, ["layers"])
        self._layout_layers()

    # -- reduce controls <-> state ------------------------------------------------------------------
    def _from_state(self, *_) -> None:
        p = self.state.reduce_params
        with param.parameterized.discard_events(self):
            self.param.update(method=p.method, n_neighbors=p.n_neighbors, min_dist=p.min_dist, per_class=p.per_class)

    @param.depends("method", "n_neighbors", "min_dist", "per_class", watch=True)
    def _to_state(self) -> None:
        params = ReduceParams.build(self.state.reduce_params, method=self.method, n_neighbors=self.n_neighbors,
                                    min_dist=self.min_dist, per_class=self.per_class)
        if params != self.state.reduce_params:
            self.state.reduce_params = params

    # -- pictures --------------------------------------------------------------------------------------
    def _on_scene(self, *_) -> None:
        self._plot_cache.clear()  # axis ranges belong to the embedding: new plots for a new one
        self._sources = {}
        self._layout_layers()

    def _layout_layers(self, *_) -> None:
        if self.state.scene is None:
            self._main.objects = [self._waiting()]
        else:
            self._main.objects = [self._layer_panel(layer) for layer in self.painter.layers]

    def _waiting(self) -> pn.Column:
        """Where the plots will be: what is being computed and how far it got, or why it failed."""
        state = self.state

        def message(status: str, error: str) -> str:
            if error:
                return f"<b>No embedding can be shown.</b> {html.escape(error)}"
            return f"<b>Computing the first embedding of this run…</b> {html.escape(status)}"

        alert = pn.pane.Alert(pn.bind(message, state.param.status, state.param.error),
                              alert_type=pn.bind(lambda error: "danger" if error else "info", state.param.error),
                              css_classes=["nm-waiting"], sizing_mode="stretch_width")
        return pn.Column(alert, self._progress_bar(), sizing_mode="stretch_width")

    def _progress_bar(self) -> pn.indicators.Progress:
        """The reduce progress (indeterminate until the first report), shown while a reduction runs."""
        state = self.state
        return pn.indicators.Progress(
            value=pn.bind(lambda v: -1 if v is None or v < 0 else v, state.param.progress), max=100,
            visible=pn.bind(lambda v, error: v is not None and not error, state.param.progress, state.param.error),
            sizing_mode="stretch_width", css_classes=["nm-progress"])

    def _keep_source(self, layer: str, kind: str, plot, element) -> None:
        """HoloViews plot hook: remember the Bokeh source a layer's glyph draws from; clear focus on leave."""
        source = plot.handles.get("source")
        if source is not None:
            self._sources.setdefault((layer, kind), {})[id(source)] = source
        figure = plot.state
        if kind == "image" and id(figure) not in self._figures:
            from bokeh.events import MouseLeave

            self._figures.add(id(figure))
            figure.on_event(MouseLeave, lambda event: self.state.focus(None))

    def _push_images(self, *_) -> None:
        """Render every shown layer for the new state and update their images in one document patch."""
        if self.state.scene is None or self.state.epoch not in self.state.scene.epochs:
            return
        images = self.painter.images()
        with hold():
            for layer, (frame, rgba) in images.items():
                for source in self._sources.get((layer, "image"), {}).values():
                    source.data = plots.rgba_source_data(rgba, frame)
            self._push_ring()
        self.painter.render_ahead()

    def _push_ring(self, *_) -> None:
        if self.state.scene is None:
            return
        for layer in self.painter.layers:
            data = self.painter.ring(layer)
            for source in self._sources.get((layer, "ring"), {}).values():
                source.data = data

    def _layer_element(self, layer: str, x_range=None, y_range=None, width=None, height=None, **_):
        self.painter.set_size(layer, width, height)
        frame, rgba = self.painter.layer_image(layer, x_range, y_range)
        return plots.layer_image(rgba, frame)

    def _ring_element(self, layer: str, **_):
        ring = self.painter.ring(layer)
        return plots.marker(ring["x"][0] if ring["x"] else None, ring["y"][0] if ring["y"] else None)

    def _layer_panel(self, layer: str):
        if layer in self._plot_cache:
            return self._plot_cache[layer]
        # memoize=False: on a zoom HoloViews asks each part again and must get the current state,
        # which player steps changed behind its back.
        image = hv.DynamicMap(hv.core.spaces.Callable(partial(self._layer_element, layer), memoize=False),
                              streams=[hv.streams.RangeXY(), hv.streams.PlotSize()])
        for stream, handler in ((hv.streams.BoundsXY, self._on_box), (hv.streams.Lasso, self._on_lasso),
                                (hv.streams.PointerXY, self._on_pointer)):
            stream(source=image).add_subscriber(partial(handler, layer))
        ring = hv.DynamicMap(hv.core.spaces.Callable(partial(self._ring_element, layer), memoize=False)).opts(
            hooks=[weak_hook(self._keep_source, layer, "ring")])
        x_range, y_range = self.state.scene.bounds[layer]
        image = image.opts(**plots.layer_options(layer, x_range, y_range),
                           hooks=[weak_hook(self._keep_source, layer, "image")])
        pane = pn.pane.HoloViews((image * ring).opts(show_legend=False), linked_axes=False,
                                 sizing_mode="stretch_width", css_classes=["nm-layer"])
        quality = self.live_html(lambda: self.painter.quality_html(layer), self.state.param.epoch,
                                 self.state.param.scene, sizing_mode="stretch_width", margin=(0, 10))
        panel = pn.Column(pane, quality, margin=0, name=layer, sizing_mode="stretch_width")
        self._plot_cache[layer] = panel
        return panel

    # -- interactions (HoloViews stream callbacks run outside the document lock) ------------------------
    def _on_session(self, fn, *args) -> None:
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            doc.add_next_tick_callback(partial(fn, *args))
        else:
            fn(*args)

    def _on_box(self, layer: str, bounds=None, **_) -> None:
        if bounds is not None:
            self._on_session(self.painter.select_box, layer, bounds)

    def _on_lasso(self, layer: str, geometry=None, **_) -> None:
        if geometry is not None and len(geometry) > 2:
            self._on_session(self.painter.select_lasso, layer, geometry)

    def _on_pointer(self, layer: str, x=None, y=None, **_) -> None:
        self._on_session(self.painter.hover_at, layer, x, y)

    # -- the page ------------------------------------------------------------------------------------
    def controls(self) -> pn.Column:
        """This page's sidebar part: layers, colour, filters, trajectories, embedding parameters."""
        for_pca = pn.bind(lambda method: method == "pca", self.param.method)  # PCA has no such parameters
        no_min_dist = pn.bind(lambda method: method in ("pca", "tsne"), self.param.method)  # a UMAP parameter

        def heading(text: str) -> pn.pane.Markdown:
            return pn.pane.Markdown(text, margin=(6, 10, 0, 10))

        return pn.Column(
            text_multichoice(self.painter.param.layers, "layers side by side"),
            pn.widgets.Select.from_param(self.painter.param.color_by, label="colour by"),
            heading("**show** · flipped = learned or forgotten since the previous epoch"),
            pn.widgets.RadioButtonGroup.from_param(self.painter.param.show, color="light"),
            heading("**trajectories** across epochs (older steps fade)"),
            pn.widgets.RadioButtonGroup.from_param(self.painter.param.trajectories, color="light"),
            *self._attack_controls(heading),
            pn.layout.Divider(),
            heading("**embedding** · recomputed in the background when changed, cached"),
            pn.widgets.Select.from_param(self.param.method),
            pn.widgets.IntSlider.from_param(self.param.n_neighbors, throttled=True, disabled=for_pca),
            pn.widgets.FloatSlider.from_param(self.param.min_dist, throttled=True, disabled=no_min_dist),
            pn.widgets.Select.from_param(self.param.per_class, label="samples per class"),
            self._progress_bar(),
            pn.pane.HTML(pn.bind(_escaped, self.state.param.status), css_classes=["nm-status"],
                         sizing_mode="stretch_width"),
            pn.layout.Divider(),
            self._clear_button(),
            sizing_mode="stretch_width",
        )

    def _attack_controls(self, heading) -> list:
        """Arrows benign → attacked twin, for runs recorded with attacks."""
        if not (self.state.run.twin_sources >= 0).any():
            return []
        return [heading("**attacks** · arrow from each benign image to its attacked twin, placed by its nearest "
                        "probe neighbours (red: fooled)"),
                pn.widgets.RadioButtonGroup.from_param(self.painter.param.attack_arrows, color="light")]

    def _clear_button(self) -> pn.widgets.Button:
        button = pn.widgets.Button(label="clear selection", color="light")
        button.on_click(self.state.clear_selection)
        return button

    def _card(self) -> pn.Row:
        # Persistent panes whose objects are bound: updating them is cheap, whereas returning new
        # panes from a depends-method makes Panel rebuild and re-link the document each time.
        refs = (self.state.param.focused, self.state.param.epoch)
        return pn.Row(
            pn.pane.PNG(pn.bind(lambda *_: self.painter.card_thumbnail(), *refs), width=84, height=84, margin=(0, 6),
                        visible=pn.bind(lambda focused: focused is not None, self.state.param.focused)),
            self.live_html(self.painter.card_html, *refs, css_classes=["nm-card"]),
            css_classes=["nm-hover-card"], height=90, width=330, margin=(0, 10),
        )

    def _curves(self) -> pn.pane.HoloViews:
        run = self.state.run
        self._markers.clear()  # the curves are drawn anew when a live run grows: only the new marker moves
        marker = plots.epoch_marker(self.state.epoch).opts(hooks=[weak_hook(self._keep_marker)])
        overlay = plots.training_curves(run.epochs, run.curves(), marker)
        tap = hv.streams.Tap(source=overlay)
        tap.add_subscriber(lambda x=None, **_: x is not None and self._on_session(self._jump_to, x))
        return pn.pane.HoloViews(overlay, sizing_mode="stretch_width", css_classes=["nm-curves"])

    def _jump_to(self, x: float) -> None:
        """Go to the embedded epoch nearest to a click on the training curves."""
        epochs = self.state.param.epoch.objects
        self.state.epoch = min(epochs, key=lambda e: abs(e - x))

    def _keep_marker(self, plot, element) -> None:
        self._markers[id(plot.handles["glyph"])] = plot.handles["glyph"]

    def _move_marker(self, event) -> None:
        """Move the epoch line on the training curves (a Bokeh ``Span``) without a HoloViews refresh."""
        for span in self._markers.values():
            span.location = event.new

    def __panel__(self):
        painter, state = self.painter.param, self.state.param
        legend = self.live_html(self.painter.legend_html, painter.color_by, painter.show, painter.attack_arrows,
                                painter.layers, state.epoch, state.classes, state.selection_version, state.scene,
                                sizing_mode="stretch_width", css_classes=["nm-legend-pane"])
        curves = pn.panel(pn.bind(lambda *_: self._curves(), self.state.param.run), sizing_mode="stretch_width")
        return pn.Column(pn.Row(legend, self._card(), sizing_mode="stretch_width"), self._main, curves,
                         sizing_mode="stretch_width")

    def dispose(self) -> None:
        self.painter.dispose()


def _escaped(text: str) -> str:
    return f"<span style='font-size:13px'>{html.escape(text)}</span>"
