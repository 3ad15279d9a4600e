"""The Activations page: per-unit activation distributions per layer, groups against instances (a thin Viewer).

Everything the page draws comes from
:class:`~neuromapper.views.activations_painter.ActivationsPainter`; this module makes widgets from
its parameters, builds each layer's plot once (an ``hv.RGB`` of density bars under an
``hv.Points`` of instance dots) and, when the state or an option changes, pushes the new
pictures into the Bokeh sources HoloViews made, in one document patch, as the Embeddings page
does (a HoloViews refresh per layer costs several times more; ``benchmarks/bench_activations.py``).
A layer's rows never change in number (hidden units stay, greyed, at the bottom) and its value
axis is fixed, so the plot ranges never need a refresh.

The page follows the shared player, shows the Embeddings page's selection as a group, draws the
focused sample (hovered or clicked anywhere) as dark dots, and a click in the divergence ranking
focuses that sample everywhere.
"""

from __future__ import annotations

import html
from functools import partial

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend for HoloViews
import numpy as np
import panel as pn
from panel.io import hold

from .. import plots
from .activations_painter import NOTHING, UNIT_INDEX, ActivationsPainter
from .page import Page
from .state import SessionState, weak_hook
from .widgets import ImmediateSelect, text_multichoice

LABEL_PX = 13  # the unit axis labels every k-th row so that labels are at least this far apart


class ActivationsView(Page):
    """Density bars per layer and unit for groups and instances (see the module docstring)."""

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self.painter = ActivationsPainter(state)
        self._sources: dict[tuple[str, str], dict[int, object]] = {}
        self._figures: dict[str, dict[int, object]] = {}
        self._panels: dict[str, pn.viewable.Viewable] = {}
        self._main = pn.Row(sizing_mode="stretch_width", css_classes=["nm-activation-layers"])
        state.param.watch(self.when_shown(self._push), ["epoch", "selection_version", "focused"])
        state.param.watch(self._on_run, ["run"])
        self.painter.param.watch(self._push, ["groups", "pairs", "sort_by", "sort_minus", "hidden"])
        self.painter.param.watch(self._layout, ["layers"])
        self._layout()

    # -- plots ----------------------------------------------------------------------------------------
    def _on_run(self, *_) -> None:
        self._panels.clear()
        self._sources, self._figures = {}, {}
        self._layout()

    def _layout(self, *_) -> None:
        self._main.objects = [self._layer_panel(layer) for layer in self.painter.layers]

    def _layer_panel(self, layer: str):
        if layer in self._panels:
            return self._panels[layer]
        rgba, axis, rows = self.painter.picture(layer)
        image = plots.activation_bars(rgba, axis.lo, axis.hi).opts(
            hooks=[weak_hook(self._keep, layer, "image")], **plots.activation_options(layer, len(rows), axis.lo, axis.hi))
        dots = plots.instance_dots(self.painter.dots(layer, rows, axis)).opts(hooks=[weak_hook(self._keep, layer, "dots")])
        hv.streams.Tap(source=image).add_subscriber(partial(self._on_tap, layer))
        pane = pn.pane.HoloViews(image * dots, linked_axes=False, sizing_mode="stretch_width",
                                 css_classes=["nm-activation-layer"])
        note = pn.pane.HTML(pn.bind(lambda *_: self._hidden_html(layer), self.painter.param.hidden),
                            sizing_mode="stretch_width", margin=(0, 10))
        panel = pn.Column(pane, note, name=layer, sizing_mode="stretch_width", margin=0)
        self._panels[layer] = panel
        return panel

    def _keep(self, layer: str, kind: str, plot, element) -> None:
        """HoloViews plot hook: remember the Bokeh source (and figure) a layer draws with."""
        source = plot.handles.get("source")
        if source is not None:
            self._sources.setdefault((layer, kind), {})[id(source)] = source
            # the plot may be shown long after it was built (the tab opened later): draw the state now
            rgba, axis, rows = self.painter.picture(layer)
            source.data = (plots.bars_source_data(rgba, axis.lo, axis.hi) if kind == "image"
                           else self.painter.dots(layer, rows, axis))
        if kind == "image":
            self._figures.setdefault(layer, {})[id(plot.state)] = plot.state
            self._label_units(plot.state, self.painter.rows(layer))

    def _push(self, *events) -> None:
        """Draw every shown layer for the new state and update the pictures in one document patch."""
        if self.state.epoch not in self.state.run.epochs or not self._sources:
            return  # nothing shown yet: the plots draw the state when they are first shown (_keep)
        pictures = {}
        for layer in self.painter.layers:
            rgba, axis, rows = self.painter.picture(layer)
            pictures[layer] = (plots.bars_source_data(rgba, axis.lo, axis.hi), self.painter.dots(layer, rows, axis), rows)
        with hold():
            for layer, (bars, dots, rows) in pictures.items():
                for source in self._sources.get((layer, "image"), {}).values():
                    plots.push_columns(source, bars)
                for source in self._sources.get((layer, "dots"), {}).values():
                    plots.push_columns(source, dots)
                for figure in self._figures.get(layer, {}).values():
                    self._label_units(figure, rows)
        steps = [event for event in events if event.name == "epoch"]
        if steps:
            old, new = steps[-1].old, steps[-1].new  # epochs are sorted numbers
            self.painter.prefetch(self._next_epoch(backwards=old is not None and new < old))

    def _next_epoch(self, backwards: bool = False) -> int | None:
        """The epoch the player shows next if it keeps going the way it went (it reflects at the ends)."""
        epochs = list(self.state.param.epoch.objects)
        if self.state.epoch not in epochs:
            return None
        i = epochs.index(self.state.epoch) + (-1 if backwards else 1)
        if not 0 <= i < len(epochs):
            i = epochs.index(self.state.epoch) + (1 if backwards else -1)
        return epochs[i] if 0 <= i < len(epochs) else None

    @staticmethod
    def _label_units(figure, rows: np.ndarray) -> None:
        """Label the unit axis with unit numbers (row 0 at the top)."""
        from bokeh.models import FixedTicker

        drawn_px = plots.activation_height(len(rows)) - 70  # minus toolbar, title and axis
        step = max(1, int(np.ceil(len(rows) * LABEL_PX / drawn_px)))
        top = len(rows) - 1
        ticks = list(range(0, len(rows), step))
        for axis in figure.yaxis:
            if isinstance(axis.ticker, FixedTicker):  # a new ticker model makes Bokeh re-walk the document
                axis.ticker.ticks = [top - i for i in ticks]
            else:
                axis.ticker = FixedTicker(ticks=[top - i for i in ticks])
            axis.major_label_overrides = {top - i: str(int(rows[i])) for i in ticks}

    def _on_tap(self, layer: str, x=None, y=None, **_) -> None:
        if y is None:
            return
        doc = pn.state.curdoc

        def toggle():
            unit = self.painter.unit_at(layer, y)
            if unit is not None:
                self.painter.toggle_unit(layer, unit)

        if doc is not None and doc.session_context is not None:
            doc.add_next_tick_callback(toggle)
        else:
            toggle()

    def _hidden_html(self, layer: str) -> str:
        hidden = self.painter.hidden.get(layer, ())
        if not hidden:
            return "<span style='font-size:12px;color:#777'>click a unit's bar to hide it</span>"
        shown = ", ".join(str(u) for u in hidden[:12]) + (" …" if len(hidden) > 12 else "")
        return (f"<span style='font-size:12px;color:#777'>{len(hidden)} hidden (grey, at the bottom; click to "
                f"show): {shown}</span>")

    # -- the page -------------------------------------------------------------------------------------
    def controls(self) -> pn.Column:
        """This page's sidebar part: layers, groups, instances, sort, ranking layer."""
        painter = self.painter

        def heading(text: str) -> pn.pane.Markdown:
            return pn.pane.Markdown(text, margin=(6, 10, 0, 10))

        show_all = pn.widgets.Button(label="show all units", color="light")
        show_all.on_click(painter.show_all)
        return pn.Column(
            text_multichoice(painter.param.layers, "layers"),
            text_multichoice(painter.param.groups, "groups (bars)", labels=painter.label),
            text_multichoice(painter.param.pairs, "instances (dots: benign and attacked)", labels=painter.twin_label),
            heading("**sort units** by an item, largest first (or by the difference of two)"),
            self._item_select(painter.param.sort_by, "sort by", UNIT_INDEX),
            self._item_select(painter.param.sort_minus, "minus", NOTHING),
            show_all,
            pn.layout.Divider(),
            pn.widgets.Select.from_param(painter.param.score_layer, label="divergence at layer"),
            sizing_mode="stretch_width",
        )

    def _item_select(self, parameter, label: str, plain: str) -> pn.widgets.Select:
        """A Select over items with readable labels (Bokeh's Select shows option labels as text)."""
        painter = self.painter

        def options():
            return {(key if key == plain else painter.label(key)): key for key in parameter.objects}

        widget = ImmediateSelect(label=label, options=options(), value=getattr(painter, parameter.name),
                                 sizing_mode="stretch_width")
        widget.param.watch(lambda event: setattr(painter, parameter.name, event.new), "value")
        painter.param.watch(lambda *_: widget.param.update(options=options(), value=getattr(painter, parameter.name)),
                            [parameter.name])
        painter.param.watch(lambda *_: widget.param.update(options=options()), [parameter.name], what="objects")
        return widget

    def _ranking(self) -> pn.Column:
        """The most divergent probe samples and twins; a click focuses the sample everywhere."""
        table = pn.widgets.Tabulator(self._ranking_frame(), show_index=False, disabled=True, selectable=False,
                                     sizing_mode="stretch_width", height=250, css_classes=["nm-ranking"],
                                     formatters={"image": {"type": "image", "height": "28px"}},
                                     hidden_columns=["id", "twin"], titles={"image": ""}, widths={"image": 40},
                                     layout="fit_data_fill")

        def refresh(*_):
            self.after(self.painter.prepare_scores, lambda: setattr(table, "value", self._ranking_frame()))

        self.state.param.watch(self.when_shown(refresh), ["epoch", "run"])
        self.painter.param.watch(refresh, ["score_layer"])
        table.on_click(lambda event: self._focus_row(table.value, event.row))
        summary = self.live_html(self._hypothesis_html, self.state.param.epoch, self.painter.param.score_layer,
                                 prepare=self.painter.prepare_scores, sizing_mode="stretch_width")
        return pn.Column(pn.pane.Markdown("**most divergent** from their predicted class (click to focus)",
                                          margin=(0, 10)), summary, table, width=420)

    def _ranking_frame(self):
        import pandas as pd

        rows = self.painter.ranking()
        frame = pd.DataFrame(rows, columns=["score", "sample", "twin", "what", "label", "predicted"])
        frame.insert(0, "image", [self.painter.thumbnail_uri(r["sample"], r["twin"]) for r in rows])
        frame["score"] = frame["score"].round(2)
        frame["what"] = [f"#{r['sample']}" if r["twin"] is None else r["what"] for r in rows]
        return frame.rename(columns={"sample": "id", "score": "divergence", "label": "true", "what": "sample"})

    def _focus_row(self, frame, row: int) -> None:
        sample = frame.iloc[row]["id"]
        if sample is not None and np.isfinite(sample):
            self.state.focus(int(sample))

    def _hypothesis_html(self) -> str:
        n, higher, twin_median, benign_median = self.painter.twin_vs_benign(self.painter.score_layer)
        if not n:
            return ""
        return (f"<div style='font-size:12px'>At {html.escape(str(self.painter.score_layer))}, {higher} of {n} "
                f"attacked twins diverge more than their benign original (median {twin_median:.2f} vs "
                f"{benign_median:.2f}).</div>")

    def __panel__(self):
        cards = self.live_html(self.painter.pair_cards_html, self.state.param.epoch, self.painter.param.pairs,
                               self.painter.param.score_layer, prepare=self.painter.prepare_scores,
                               sizing_mode="stretch_width",
                               css_classes=["nm-pair-cards"])
        legend = self.live_html(self.painter.legend_html, self.painter.param.groups, self.painter.param.pairs,
                                self.state.param.selection_version, self.state.param.focused, self.state.param.epoch,
                                sizing_mode="stretch_width", css_classes=["nm-activation-legend"])
        return pn.Column(pn.Row(pn.Column(legend, cards, sizing_mode="stretch_width"), self._ranking(),
                                sizing_mode="stretch_width"),
                         self._main, sizing_mode="stretch_width")

    def dispose(self) -> None:
        super().dispose()
        self.painter.dispose()
