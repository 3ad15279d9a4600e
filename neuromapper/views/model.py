"""The Model page: the probe's confusion at the player's epoch, and the focused sample inside the network.

Everything the page draws comes from :class:`~neuromapper.views.model_painter.ModelPainter`;
this module builds each chart once and keeps it current:

* the **errors**: a chord diagram (a heatmap past ``MANY_CLASSES`` classes) and stacked bars per
  true class. They are small (at most a few hundred shapes), so an epoch step or a change of the
  visible classes refreshes them through HoloViews (a ``Counter`` stream event), which updates
  the Bokeh sources in place; a click arrives as a ``Tap`` position and selects the samples of
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
import panel as pn

from .. import plots
from .model_painter import BARS, CHORD, HEATMAP, ModelPainter
from .state import SessionState


class ModelView(pn.viewable.Viewer):
    """Confusion charts and the focused sample's feature maps (see the module docstring)."""

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self.painter = ModelPainter(state)
        self._tick = hv.streams.Counter()
        self.taps: dict[str, hv.streams.Tap] = {}  # the charts' click streams, by chart kind
        state.param.watch(self._refresh, ["epoch", "classes", "run"])
        self.painter.param.watch(self._refresh, ["bars"])
        self._errors = pn.Row(self._errors_pane(), self._bars_pane(), sizing_mode="stretch_width",
                              css_classes=["nm-model-errors"])

    # -- the confusion charts -------------------------------------------------------------------------

    def _heatmap_element(self, **_):
        painter = self.painter
        return plots.confusion_heatmap(painter.rect_data(painter.heatmap()), painter.ticks(), painter.ticks(reverse=True))

    def _chord_part(self, part: int, builder, **_):
        return builder(self.painter.chord_data()[part])

    def _bars_element(self, **_):
        painter = self.painter
        return plots.confusion_bars(painter.rect_data(painter.bar_rects()), painter.ticks())

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
        if int(self.state.epoch) in self.state.run.epochs:
            self._tick.event()

    def _on_tap(self, kind: str, x=None, y=None, **_) -> None:
        """A click on a chart (outside the document lock): select the pair under it on the session's loop."""
        if x is None or y is None:
            return
        doc = pn.state.curdoc
        if doc is not None and doc.session_context is not None:
            doc.add_next_tick_callback(partial(self.painter.select_at, kind, x, y))
        else:
            self.painter.select_at(kind, x, y)

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
        summary = pn.pane.HTML(pn.bind(lambda *_: self.painter.summary_html(), state.param.epoch, state.param.classes,
                                       state.param.selection_version, state.param.run),
                               sizing_mode="stretch_width", css_classes=["nm-model-summary-pane"])
        return pn.Column(summary, self._errors, sizing_mode="stretch_width")

    def dispose(self) -> None:
        pass
