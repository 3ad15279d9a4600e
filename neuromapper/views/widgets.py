"""Widgets the views share that Panel does not have as they need them."""

from __future__ import annotations

import html

import panel as pn
from panel.io import with_lock


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


class Immediate:
    """A widget mixin: a change is handled at once, without Panel's 50 ms wait for more changes.

    Panel holds a widget change for ``_debounce`` ms so that a burst of changes is handled once;
    a player step or a picked option is one change, and its whole budget is 250 ms. Panel runs
    such an undebounced change without the document lock unless its coroutine is marked
    ``with_lock``; the watchers change Bokeh models directly (images, markers), which Bokeh
    allows only under that lock.
    """

    _priority_changes = ["value"]

    @with_lock
    async def _change_coroutine(self, doc, event_id=None) -> None:
        await super()._change_coroutine(doc, event_id)


class ImmediateSelect(Immediate, pn.widgets.Select):
    """A Select handled at once (:class:`Immediate`): the Activations page's sort re-sorts every layer."""
