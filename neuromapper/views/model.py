"""The Model page: the probe's confusion at the player's epoch, and the focused sample inside the network.

Everything the page draws comes from :class:`~neuromapper.views.model_painter.ModelPainter`;
this module builds each chart once and keeps it current:

* the **errors**: a chord diagram (a heatmap past ``MANY_CLASSES`` classes) and stacked bars per
  true class. They are small (at most a few hundred shapes), so an epoch step or a change of the
  visible classes refreshes them through HoloViews (a ``Counter`` stream event), which updates
  the Bokeh sources in place. A player step only changes the columns, so once drawn the chord and
  the bars take the painter's new columns straight into the Bokeh sources HoloViews made (kept by
  a plot hook), in one document patch: HoloViews' redraw of the four plots cost about 250 ms a
  step (``benchmarks/bench_views.py``). A click arrives as a ``Tap`` position and selects the samples of
  the pair under it in the shared state, so they light up on the Embeddings page;
* the **focused sample** (hovered or clicked on any page; by default the first spotlight sample):
  its image, label and prediction, one image grid of feature maps per map layer and the kernels
  feeding a clicked channel. Grids keep their size across epochs, so a step pushes new pixels
  straight into the Bokeh sources, as the Activations page does.
"""

from __future__ import annotations

from functools import partial

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend for HoloViews
import numpy as np
import panel as pn
from panel.io import hold

from .. import plots
from .model_painter import BARS, CHORD, HEATMAP, ModelPainter
from .page import Page
from .state import SessionState, weak_hook

SPOTLIGHT = "spotlight"  # the name of the spotlight thumbnails' grid among the map layers' grids
ARCS, RIBBONS, LABELS, KERNELS = "arcs", "ribbons", "labels", "kernels"  # chart parts whose sources a step updates
CHORD_PARTS = (ARCS, RIBBONS, LABELS)  # in the order of ModelPainter.chord_data()


def _on_session(fn, *args) -> None:
    """Run a stream callback's work on the session's event loop (streams call outside the document lock)."""
    doc = pn.state.curdoc
    if doc is not None and doc.session_context is not None:
        doc.add_next_tick_callback(partial(fn, *args))
    else:
        fn(*args)


def _in_document(sources, fn) -> None:
    """Run ``fn`` (which sets the data of ``sources``) now if their document may change here, else on its
    session's event loop (a state change made on another thread, such as a test's, has no document lock)."""
    doc = next((source.document for source in sources if source.document is not None), None)
    if doc is None or doc.session_context is None or pn.state._unblocked(doc):
        fn()
    else:
        doc.add_next_tick_callback(fn)


class ModelView(Page):
    """Confusion charts and the focused sample's feature maps (see the module docstring)."""

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self.painter = ModelPainter(state)
        self._tick = hv.streams.Counter()
        self.taps: dict[str, hv.streams.Tap] = {}  # the charts' click streams, by chart kind
        self._sources: dict[str, dict[int, object]] = {}  # grid name (a map layer, or SPOTLIGHT) -> Bokeh sources
        self._shown: tuple | None = None  # (sample, run, epoch, scale) of the maps pushed last
        self._charts: dict[str, dict[int, object]] = {}  # chart part (ARCS, RIBBONS, LABELS, BARS, KERNELS) -> sources
        self._drawn: tuple | None = None  # _chart_key() of the charts' last HoloViews redraw
        # hidden, the page notes a step and draws once when shown again (views/page.py)
        state.param.watch(self.when_shown(self._refresh), ["epoch", "classes", "run"])
        self.painter.param.watch(self._refresh, ["bars"])
        state.param.watch(self.when_shown(self._push_maps), ["epoch", "focused", "run"])
        self.painter.param.watch(self._push_maps, ["map_scale"])
        self._errors = pn.Column(self._errors_pane(), self._bars_pane(), width=plots.CHORD_SIZE + 20,
                                 css_classes=["nm-model-errors"])
        self._sample = self._sample_part()

    # -- the confusion charts -------------------------------------------------------------------------

    def _heatmap_element(self, **_):
        painter = self.painter
        return plots.confusion_heatmap(painter.rect_data(painter.heatmap()), painter.ticks(), painter.ticks(reverse=True))

    def _chord_part(self, part: int, builder, **_):
        return builder(self.painter.chord_data()[part]).opts(hooks=[weak_hook(self._keep_chart, CHORD_PARTS[part])])

    def _bars_element(self, **_):
        painter = self.painter
        return plots.confusion_bars(painter.rect_data(painter.bar_rects()), painter.ticks()).opts(
            hooks=[weak_hook(self._keep_chart, BARS)])

    def _keep_chart(self, part: str, plot, element) -> None:
        """HoloViews plot hook: remember the Bokeh source a chart part draws with (for :meth:`_push_charts`)."""
        source = plot.handles.get("source")
        if source is not None:
            self._charts.setdefault(part, {})[id(source)] = source
            self._drawn = self._chart_key()  # HoloViews draws the state now

    def _chart_key(self) -> tuple:
        """What a step leaves alone but a HoloViews redraw must follow (the shapes' number and ticks)."""
        painter = self.painter
        return id(self.state.run), tuple(painter.visible()), painter.bars, painter.kind

    def _dynamic(self, element) -> hv.DynamicMap:
        return hv.DynamicMap(hv.core.spaces.Callable(element, memoize=False), streams=[self._tick])

    def _clickable(self, dmap: hv.DynamicMap, kind: str) -> hv.DynamicMap:
        self.taps[kind] = hv.streams.Tap(source=dmap)
        self.taps[kind].add_subscriber(partial(self._on_tap, kind))
        return dmap

    def _errors_pane(self) -> pn.pane.HoloViews:
        if self.painter.kind == CHORD:
            arcs, ribbons, labels = (self._dynamic(partial(self._chord_part, i, builder)) for i, builder in
                                     enumerate((plots.chord_arcs, plots.chord_ribbons, plots.chord_labels)))
            chart = (arcs * self._clickable(ribbons, CHORD) * labels).opts(**plots.chord_options())
        else:
            chart = self._clickable(self._dynamic(self._heatmap_element), HEATMAP)
        return pn.pane.HoloViews(chart, css_classes=["nm-chord"], linked_axes=False)

    def _bars_pane(self) -> pn.pane.HoloViews:
        chart = self._clickable(self._dynamic(self._bars_element), BARS)
        return pn.pane.HoloViews(chart, css_classes=["nm-confusion-bars"], linked_axes=False,
                                 sizing_mode="stretch_width")

    def _refresh(self, *_) -> None:
        if int(self.state.epoch) not in self.state.run.epochs:
            return
        key = self._chart_key()
        if key != self._drawn or not self._push_charts():
            self._drawn = key  # the classes, the run or the bars' stacking changed (or nothing drawn yet)
            self._tick.event()
            self._push_kernels()

    def _chart_columns(self) -> dict[str, dict]:
        """The chord's and the bars' Bokeh source columns at the current epoch, as HoloViews makes them."""
        painter = self.painter
        arcs, ribbons, labels = painter.chord_data()

        def polygons(rows: list[dict], vdims: tuple[str, ...]) -> dict:
            columns = {"xs": [[[np.asarray(r["x"])]] for r in rows], "ys": [[[np.asarray(r["y"])]] for r in rows]}
            for name in vdims:
                values = [r[name] for r in rows]
                columns[name] = values if values and isinstance(values[0], str) else np.asarray(values)
            return columns

        rects = painter.rect_data(painter.bar_rects())
        bars = {"left": rects["x0"], "right": rects["x1"], "bottom": rects["y0"], "top": rects["y1"],
                **{k: rects[k] for k in ("x0", "y0", "x1", "y1", "true", "predicted", "count", "total", "share",
                                         "color", "alpha")}}
        return {ARCS: polygons(arcs, ("name", "accuracy", "color")),
                RIBBONS: polygons(ribbons, ("true", "predicted", "count", "total", "share", "color")),
                LABELS: {"x": np.asarray(labels["x"]), "y": np.asarray(labels["y"]), "text": list(labels["text"])},
                BARS: bars}

    def _push_charts(self) -> bool:
        """A step: the chord's, the bars' and the kernels' new columns in one document patch. False (nothing
        pushed) when a part is not drawn yet or its columns are not the ones HoloViews drew: then redraw."""
        if self.painter.kind != CHORD or not self.painter.chord_data()[1] or any(
                not self._charts.get(part) for part in (*CHORD_PARTS, BARS)):
            return False  # the heatmap (colour mapped, framewise) and a chord without ribbons go through HoloViews
        columns = self._chart_columns()
        sources = [(source, columns[part]) for part in (*CHORD_PARTS, BARS) for source in self._charts[part].values()]
        if any(set(source.data) != set(data) for source, data in sources):
            return False
        kernels = self._kernel_data()
        kernel_sources = list(self._charts.get(KERNELS, {}).values()) if kernels is not None else []

        def push():
            with hold():
                for source, data in sources:
                    source.data = dict(data)
                for source in kernel_sources:
                    source.data = kernels

        _in_document([source for source, _ in sources], push)
        return True

    def _on_tap(self, kind: str, x=None, y=None, **_) -> None:
        """A click on a chart: select the pair under it."""
        if x is not None and y is not None:
            _on_session(self.painter.select_at, kind, x, y)

    # -- the focused sample: image, feature maps, kernels ------------------------------------------------
    def _sample_part(self) -> pn.Column:
        painter, state = self.painter, self.state
        refs = (state.param.focused, state.param.epoch)
        if painter.shown_sample() is None:
            return pn.Column(pn.pane.HTML(painter.lacks_html(), sizing_mode="stretch_width"), sizing_mode="stretch_width")
        card = pn.Column(
            # the input image is the same at every epoch: a step sends it no more
            pn.pane.PNG(pn.bind(lambda *_: painter.sample_png(), state.param.focused, state.param.run),
                        width=84, height=84, margin=(5, 10)),
            self.live_html(painter.sample_html, *refs, css_classes=["nm-model-sample-pane"]),
            self.live_html(painter.focus_note_html, *refs, sizing_mode="stretch_width"),
            pn.pane.HTML("<div style='font-size:13px'><b>spotlight samples</b>: their feature maps are recorded; "
                         "click one to focus it</div>", margin=(6, 10, 0, 10)),
            *self._spotlight_pane(),
            width=210, css_classes=["nm-model-card"])
        layers = [self._grid_pane(layer) for layer in painter.run.map_layers]
        kernels = pn.Column(
            self.live_html(lambda: painter.kernels()[1], painter.param.channel, state.param.epoch,
                           sizing_mode="stretch_width", css_classes=["nm-kernels-note"]),
            pn.panel(pn.bind(self._kernels_pane, painter.param.channel)),
            sizing_mode="stretch_width")
        maps = pn.Column(
            pn.pane.HTML(painter.lacks_html()),
            pn.Row(*layers, css_classes=["nm-feature-maps"]),  # in a pn.FlexBox Bokeh never painted them (Panel 1.9)
            kernels, sizing_mode="stretch_width")
        return pn.Row(card, maps, sizing_mode="stretch_width")

    def _spotlight_pane(self) -> list:
        grid = self.painter.spotlight_grid()
        if grid is None:
            return []
        images = self.painter.run.images
        element = plots.tile_grid(grid, "", px=max(1, 24 // images.shape[1])).opts(
            hooks=[weak_hook(self._keep, SPOTLIGHT)])
        hv.streams.Tap(source=element).add_subscriber(
            lambda x=None, y=None, **_: x is not None and _on_session(self.painter.focus_at, x, y))
        return [pn.pane.HoloViews(element, css_classes=["nm-spotlight"], linked_axes=False)]

    def _grid_pane(self, layer: str) -> pn.pane.HoloViews:
        """One map layer's feature maps as one image; a click on a map shows the kernels feeding it."""
        channels = self.painter.maps(layer).shape[0]
        element = plots.tile_grid(self.painter.map_grid(layer), f"{layer} · {channels} channels").opts(
            hooks=[weak_hook(self._keep, layer)])
        hv.streams.Tap(source=element).add_subscriber(
            lambda x=None, y=None, **_: x is not None and _on_session(self.painter.pick_channel, layer, x, y))
        return pn.pane.HoloViews(element, css_classes=["nm-feature-map"], linked_axes=False)

    def _grid(self, name: str) -> np.ndarray | None:
        return self.painter.spotlight_grid() if name == SPOTLIGHT else self.painter.map_grid(name)

    def _keep(self, name: str, plot, element) -> None:
        """HoloViews plot hook: remember a grid's Bokeh source and draw the state now (shown late: a tab)."""
        source = plot.handles.get("source")
        if source is not None:
            self._sources.setdefault(name, {})[id(source)] = source
            source.data = plots.tile_grid_source(self._grid(name))

    def _push_maps(self, *_) -> None:
        """New pixels for every grid in one document patch, when the picture changed."""
        painter = self.painter
        if not self._sources or painter.shown_sample() is None or int(self.state.epoch) not in self.state.run.epochs:
            return
        shown = (painter.shown_sample(), id(self.state.run), int(self.state.epoch), painter.map_scale)
        if shown == self._shown:
            return  # hovering over samples without maps, or a step that changed nothing here
        # the spotlight thumbnails change with the shown sample only, not with the epoch or the scale
        names = [name for name in self._sources
                 if name != SPOTLIGHT or self._shown is None or self._shown[:2] != shown[:2]]
        self._shown = shown
        data = {name: plots.tile_grid_source(self._grid(name)) for name in names}
        pushes = [(source, data[name]) for name in names for source in self._sources[name].values()]

        def push():
            with hold():
                for source, columns in pushes:
                    source.data = columns

        _in_document([source for source, _ in pushes], push)

    def _kernel_data(self) -> dict | None:
        grid, _ = self.painter.kernels()
        return None if grid is None else plots.tile_grid_source(grid)

    def _keep_kernels(self, plot, element) -> None:
        """HoloViews plot hook: remember the kernels' Bokeh source and draw the state now (shown late)."""
        source = plot.handles.get("source")
        data = self._kernel_data()
        if source is not None and data is not None and len(source.data.get("image", [])) == 1 and \
                np.shape(source.data["image"][0]) == np.shape(data["image"][0]):
            self._charts.setdefault(KERNELS, {})[id(source)] = source
            source.data = data

    def _push_kernels(self) -> None:
        data, sources = self._kernel_data(), list(self._charts.get(KERNELS, {}).values())
        if data is not None and sources:
            def push():
                with hold():
                    for source in sources:
                        source.data = data

            _in_document(sources, push)

    def _kernels_pane(self, channel):
        """The kernels feeding the clicked channel: a grid whose size is the layer's, pushed new on steps."""
        self._charts.pop(KERNELS, None)  # the previous channel's grid is gone
        grid, _ = self.painter.kernels()
        if grid is None:
            return pn.Spacer(height=0)
        height, width = grid.shape[:2]
        px = max(4, min(24, 200 // max(width, height)))
        element = plots.tile_grid(grid, "kernels", px=px).opts(hooks=[weak_hook(self._keep_kernels)])
        return pn.pane.HoloViews(element, css_classes=["nm-kernels"], linked_axes=False)

    # -- the page -------------------------------------------------------------------------------------
    def controls(self) -> pn.Column:
        """This page's sidebar part: what the bars stack, the feature maps' colour scale."""
        return pn.Column(
            pn.pane.Markdown("**per-class bars** stack", margin=(6, 10, 0, 10)),
            pn.widgets.RadioButtonGroup.from_param(self.painter.param.bars, color="light"),
            pn.pane.Markdown("**feature maps** colour scale", margin=(6, 10, 0, 10)),
            pn.widgets.RadioButtonGroup.from_param(self.painter.param.map_scale, color="light"),
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        state = self.state
        summary = self.live_html(self.painter.summary_html, state.param.epoch, state.param.classes,
                                 state.param.selection_version, state.param.run,
                                 sizing_mode="stretch_width", css_classes=["nm-model-summary-pane"])
        return pn.Column(summary, pn.Row(self._errors, self._sample, sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")

    def dispose(self) -> None:
        pass
