"""Widgets the views share that Panel does not have as they need them."""

from __future__ import annotations

import html

import panel as pn


def text_multichoice(parameter, label: str, labels=str, **kwargs) -> pn.widgets.MultiChoice:
    """A MultiChoice over a ``ListSelector``'s values that shows each value's label as text.

    Bokeh's MultiChoice (choices.js) inserts option labels as markup, so a layer or class named
    ``<img src=x onerror=...>`` would run its script; the labels here are the escaped names,
    the values the names themselves. ``labels`` turns a value into its plain-text label.
    """
    owner, name = parameter.owner, parameter.name
    widget = pn.widgets.MultiChoice(label=label, options=_options(parameter.objects, labels),
                                    value=list(getattr(owner, name)), sizing_mode="stretch_width", **kwargs)

    def to_widget(*_):
        widget.param.update(options=_options(owner.param[name].objects, labels),
                            value=list(getattr(owner, name)))

    owner.param.watch(to_widget, [name])
    owner.param.watch(to_widget, [name], what="objects")
    widget.param.watch(lambda event: setattr(owner, name, list(event.new)), "value")
    return widget


def _options(values, labels) -> dict:
    return {html.escape(str(labels(v))): v for v in values}
