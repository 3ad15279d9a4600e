"""The Training page: curves, first-layer weight grids, decision boundary, exploratory plots (a thin Viewer).

Everything the page draws comes from :class:`~neuromapper.views.training_painter.TrainingPainter`;
this module makes widgets from its parameters, builds each plot once per option (layer, channel,
class, method) and, on a player step, pushes the new pictures into the Bokeh sources HoloViews
made, in one document patch, as the other pages do: the weight grid, the enlarged tile, the
boundary picture with its 0.5 contour, the exploratory picture, and the epoch line on the curves.
A click on the curves jumps the shared player to that epoch; a click on a tile enlarges it.
"""

from __future__ import annotations

import html
from functools import partial

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend for HoloViews
import panel as pn
from panel.io import hold

from .. import plots
from .page import Page
from .state import SessionState, weak_hook
from .training_painter import RGB, TrainingPainter

NOTE = "font-size:13px;color:#555"
ENLARGED_PX = 170  # the clicked tile's side on screen


class TrainingView(Page):
    """Training curves, weight grids, decision boundary and exploratory plots (see the module docstring)."""

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self._doc = pn.state.curdoc
        self.painter = TrainingPainter(state, dispatch=self._on_session)
        self._sources: dict[str, dict[int, object]] = {}
        self._spans: dict[int, object] = {}
        state.param.watch(self.when_shown(self._push), ["epoch"])
        state.param.watch(partial(self._push, kinds=("explore",)), ["classes"])
        self.painter.param.watch(partial(self._push, kinds=("explore",)), ["density"])
        self.painter.param.watch(partial(self._push, kinds=("enlarged",)), ["enlarged"])

    def _on_session(self, fn, *args) -> None:
        """Run ``fn`` where this session's models may change (HoloViews streams and threads call from outside)."""
        doc = self._doc
        if doc is not None and doc.session_context is not None:
            try:
                doc.add_next_tick_callback(partial(fn, *args))
            except Exception:  # the session closed meanwhile
                pass
        else:
            fn(*args)

    # -- pictures as Bokeh source data ------------------------------------------------------------------
    def _data(self, kind: str):
        painter = self.painter
        if kind == "grid":
            return plots.grid_source_data(painter.weight_grid())
        if kind == "enlarged":
            one = painter.enlarged_tile()
            return None if one is None else plots.grid_source_data(one)
        if kind == "boundary":
            (x0, x1), (y0, y1) = painter.boundary_ranges()
            return plots._image_source(painter.boundary_picture(), x0, x1, y0, y1)
        if kind == "contour":
            return plots.path_source_data(painter.boundary_lines())
        if kind == "explore":
            return None if painter.coordinates() is None else plots.rgba_source_data(
                painter.explore_picture(), painter.explore_frame())
        raise KeyError(kind)

    def _keep_span(self, plot, element) -> None:
        """HoloViews plot hook: remember the epoch line (a Bokeh ``Span``) a step moves."""
        self._spans[id(plot.handles["glyph"])] = plot.handles["glyph"]

    def _keep(self, kind: str, plot, element) -> None:
        """HoloViews plot hook: remember the source a picture draws from, and draw the state now.

        A plot may be shown long after it was built (the tab opened later): it must show the
        current epoch, not the one it was built at.
        """
        source = plot.handles.get("source")
        if source is None:
            return
        self._sources.setdefault(kind, {})[id(source)] = source
        data = self._data(kind)
        if data is not None:
            source.data = data

    def _push(self, *_, kinds=("grid", "enlarged", "boundary", "contour", "explore")) -> None:
        """Draw the shown pictures for the new state and update them in one document patch."""
        if self.state.epoch not in self.state.run.epochs:
            return
        fresh = {kind: self._data(kind) for kind in kinds if self._sources.get(kind)}
        with hold():
            for kind, data in fresh.items():
                if data is None:
                    continue
                for source in self._sources[kind].values():
                    source.data = data
            for span in self._spans.values():
                span.location = self.state.epoch

    # -- the plots ----------------------------------------------------------------------------------------
    def _curves(self, run) -> pn.pane.HoloViews:
        self._spans.clear()  # drawn anew when a live run grows: only the new line moves
        line = plots.epoch_marker(self.state.epoch).opts(
            hooks=[weak_hook(self._keep_span)])
        overlay = plots.training_curves(run.epochs, self.painter.curves(), line)
        hv.streams.Tap(source=overlay).add_subscriber(
            lambda x=None, **_: x is not None and self._on_session(self._jump, x))
        return _pane(overlay, sizing_mode="stretch_width", css_classes=["nm-training-curves"])

    def _compute_tsne(self) -> None:
        self.painter.compute_tsne()
        self.painter.param.trigger("explore_method")  # say that it is being computed

    def _jump(self, x: float) -> None:
        self.state.epoch = self.painter.epoch_at(x)

    def _weights(self, layer, channels, run):
        painter = self.painter
        if layer is None:
            return _note(" ".join(["No weights recorded for this run.", *painter.lacks()]))
        self._sources["grid"], self._sources["enlarged"] = {}, {}
        grid = painter.weight_grid()
        limit = painter.weight_limit()
        if channels == RGB:
            image = plots.weight_grid_rgb(grid, painter.weight_title())
        else:
            image = plots.weight_grid(grid, limit, painter.weight_title())
        image = image.opts(hooks=[weak_hook(self._keep, "grid")])
        hv.streams.Tap(source=image).add_subscriber(
            lambda x=None, y=None, **_: x is not None and self._on_session(self._enlarge, x, y))
        first = painter._tiling(painter.state.epoch).tiles[0]
        # an RGB element has no colour bar (HoloViews refuses the option): only the weight image drops it
        big = (plots.weight_grid_rgb(painter._to_rgba(first), "") if channels == RGB
               else plots.weight_grid(first, limit, "").opts(colorbar=False)).opts(
            hooks=[weak_hook(self._keep, "enlarged")], responsive=False, frame_width=ENLARGED_PX,
            frame_height=ENLARGED_PX, tools=[])
        caption = pn.pane.HTML(pn.bind(lambda *_: self._enlarged_html(), painter.param.enlarged),
                               css_classes=["nm-enlarged-name"], margin=(0, 10), width=220)
        shown = pn.bind(lambda enlarged: enlarged is not None, painter.param.enlarged)
        scale = (f"colour scale fixed over all epochs: ±{limit:.3g} (the largest |weight| recorded)"
                 + (" · RGB: grey = 0, each channel from none (−) to full (+)" if channels == RGB else ""))
        return pn.Column(_pane(image, css_classes=["nm-weight-grid"]),
                         # the wrapper shows and hides: toggling a HoloViews pane's own visible fails in Panel 1.9
                         pn.Row(pn.Column(_pane(big, css_classes=["nm-enlarged"]), visible=shown, margin=0),
                                pn.Column(caption, _note(scale), width=240)),
                         sizing_mode="stretch_width")

    def _enlarge(self, x: float, y: float) -> None:
        self.painter.enlarged = self.painter.tile_at(x, y)

    def _enlarged_html(self) -> str:
        name = self.painter.enlarged_name()
        if not name:
            return f"<div style='{NOTE}'>click a tile to see it large here</div>"
        return f"<div style='font-size:13px'><b>{html.escape(name)}</b> (same colour scale)</div>"

    def _boundary(self, _class, run):
        painter = self.painter
        if not painter.has_boundary():
            reasons = " ".join(painter.lacks()) or "It is drawn for models on 2-D inputs (e.g. `neuromapper demo --dataset moons`)."
            return _note(f"No decision boundary for this run. {reasons}")
        self._sources["boundary"], self._sources["contour"] = {}, {}
        x_range, y_range = painter.boundary_ranges()
        picture = plots.probability_image(painter.boundary_picture(), x_range, y_range, painter.boundary_title()).opts(
            hooks=[weak_hook(self._keep, "boundary")])
        line = plots.contour_path(painter.boundary_lines()).opts(hooks=[weak_hook(self._keep, "contour")])
        overlay = (picture * line * plots.class_points(painter.probe_points())).opts(show_legend=False)
        return _pane(overlay, sizing_mode="stretch_width", css_classes=["nm-boundary"])

    def _explore(self, layer, method, run, *_):
        painter = self.painter
        self._sources["explore"] = {}
        if layer is None:
            return _note("Nothing to explore in this run.")
        if painter.coordinates() is None:
            missing = painter.tsne_missing()
            if not missing:
                return _note("computing the t-SNE of the probe's inputs (once per run; it appears here when done)…")
            note = _note(" ".join([missing, painter.tsne_failure]).strip())
            if not painter.can_compute_tsne():
                return note
            button = pn.widgets.Button(label="compute t-SNE (in the background)", color="primary", width=260)
            button.on_click(lambda _: self._compute_tsne())
            return pn.Column(note, button, sizing_mode="stretch_width")
        x_range, y_range = painter.explore_bounds()
        image = plots.layer_image(painter.explore_picture(), painter.explore_frame()).opts(
            hooks=[weak_hook(self._keep, "explore")], **plots.exploration_options(painter.explore_title(), x_range, y_range))
        return _pane(image, sizing_mode="stretch_width", css_classes=["nm-explore"])

    # -- the page ---------------------------------------------------------------------------------------
    def controls(self) -> pn.Column:
        """This page's sidebar part: weight layer and channels, boundary class, exploratory plot options."""
        painter = self.painter

        def heading(text: str) -> pn.pane.Markdown:
            return pn.pane.Markdown(text, margin=(6, 10, 0, 10))

        weights = [heading("**weights** of the first layer"),
                   pn.widgets.Select.from_param(painter.param.weight_layer, label="layer"),
                   pn.widgets.Select.from_param(painter.param.channels, label="input channels")]
        boundary = [heading("**decision boundary**"),
                    pn.widgets.Select.from_param(painter.param.boundary_class, label="probability of")]
        return pn.Column(
            *(weights if painter.weight_layer is not None else []),
            *(boundary if painter.has_boundary() else []),
            heading("**exploratory plot**"),
            pn.widgets.Select.from_param(painter.param.explore_layer, label="layer"),
            pn.widgets.RadioButtonGroup.from_param(painter.param.explore_method, color="light"),
            pn.widgets.RadioButtonGroup.from_param(painter.param.density, color="light", orientation="vertical"),
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        painter, state = self.painter, self.state
        curves = pn.panel(pn.bind(self._curves, state.param.run), sizing_mode="stretch_width")
        weights = pn.panel(pn.bind(self._weights, painter.param.weight_layer, painter.param.channels, state.param.run),
                           sizing_mode="stretch_width")
        boundary = pn.panel(pn.bind(self._boundary, painter.param.boundary_class, state.param.run),
                            sizing_mode="stretch_width")
        progress = pn.indicators.Progress(
            value=pn.bind(lambda v: -1 if v is None else int(100 * v), painter.param.tsne_progress), max=100,
            visible=pn.bind(lambda v: v is not None, painter.param.tsne_progress), sizing_mode="stretch_width",
            css_classes=["nm-tsne-progress"])
        explore = pn.panel(pn.bind(self._explore, painter.param.explore_layer, painter.param.explore_method,
                                   state.param.run), sizing_mode="stretch_width")
        explore = pn.Column(progress, explore, sizing_mode="stretch_width")
        return pn.Column(curves, pn.panel(pn.bind(self._pictures, weights, boundary, explore, state.param.run)),
                         sizing_mode="stretch_width", css_classes=["nm-training"])

    def _pictures(self, weights, boundary, explore, _run) -> pn.Column:
        """The pictures this run has, two to a row; what it lacks said in one line above them."""
        painter = self.painter
        lacks = painter.lacks()

        def why(word: str, otherwise: str) -> str:
            # the run's own account (store.lacks), for this page's parts only
            said = next((text for text in lacks if word in text), "")
            return said or otherwise

        shown, missing = [], []
        for has, part, what in ((painter.weight_layer is not None, weights, why("weight", "first-layer weights")),
                                (painter.has_boundary(), boundary, why("boundary", "a decision boundary"))):
            (shown if has else missing).append(part if has else what)
        shown.append(explore)
        rows = [pn.Row(*[pn.Column(part, sizing_mode="stretch_width") for part in shown[i:i + 2]],
                       sizing_mode="stretch_width") for i in range(0, len(shown), 2)]
        if len(shown) % 2:
            rows[-1].append(pn.Spacer(sizing_mode="stretch_width"))
        if missing:
            rows.insert(0, _note("Not in this run: " + "; ".join(missing) + "."))
        return pn.Column(*rows, sizing_mode="stretch_width")

    def dispose(self) -> None:
        self.painter.dispose()
        self._sources.clear()


def _pane(element, **params) -> pn.pane.HoloViews:
    """A HoloViews pane whose axes are its own (Panel links panes whose dimensions share names)."""
    return pn.pane.HoloViews(element, linked_axes=False, **params)


def _note(text: str) -> pn.pane.HTML:
    """A short note where a plot would be (plain text: it may name a run or a layer)."""
    return pn.pane.HTML(f"<div style='{NOTE}'>{html.escape(text)}</div>", sizing_mode="stretch_width", margin=(10, 10))
