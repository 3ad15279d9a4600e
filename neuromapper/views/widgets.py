"""Widgets the views share that Panel does not have as they need them."""

from __future__ import annotations

import html

import panel as pn


def text_multichoice(parameter, label: str, **kwargs) -> pn.widgets.MultiChoice:
    """A MultiChoice over a ``ListSelector``'s names that shows each name as text.

    Bokeh's MultiChoice (choices.js) inserts option labels as markup, so a layer or class named
    ``<img src=x onerror=...>`` would run its script; the labels here are the escaped names,
    the values the names themselves.
    """
    owner, name = parameter.owner, parameter.name
    widget = pn.widgets.MultiChoice(label=label, options={html.escape(str(v)): v for v in parameter.objects},
                                    value=list(getattr(owner, name)), sizing_mode="stretch_width", **kwargs)

    def to_widget(*_):
        widget.param.update(options={html.escape(str(v)): v for v in owner.param[name].objects},
                            value=list(getattr(owner, name)))

    owner.param.watch(to_widget, [name])
    owner.param.watch(to_widget, [name], what="objects")
    widget.param.watch(lambda event: setattr(owner, name, list(event.new)), "value")
    return widget
