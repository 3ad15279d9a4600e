"""The Activations page in the standalone snapshot: pictures rendered here, a few stored orders.

The snapshot has no server, so nothing can be recomputed there: the page's bars are rendered by
the dashboard's own :class:`~neuromapper.views.activations_painter.ActivationsPainter` for the
exported epochs and layers with its default choices (the groups and the instance pair it opens
with), once per stored sort order:

* unit index;
* the first group's median;
* the first group's median minus the second's (when there are two groups);
* the attacked twin minus its benign original (when the run has a pair).

Each picture is a PNG of ``units x bins`` pixels (the page scales it up without smoothing); the
instances' dots are one byte per unit and instance (the position along the value axis, 255 =
not recorded), in the rows' order, so the page draws them over the bars. About 4 KB per layer,
epoch and order on the demo run (``neuromapper export`` reports the total). What the snapshot
cannot do (other groups, other instances, hiding units, the divergence ranking) is listed on
the page.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import xarray as xr

from .store import run_dir


def _png(rgba: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba), mode="RGBA").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def activations_payload(ds: xr.Dataset, embedding: xr.DataArray, layers: list[str]) -> dict:
    """The snapshot's Activations section for the epochs of ``embedding`` and ``layers``."""
    from .views.activations_painter import NOTHING, UNIT_INDEX, ActivationsPainter, sample_item, twin_item
    from .views.state import SessionState

    state = SessionState(run_dir(ds), embedding=embedding)
    painter = ActivationsPainter(state)
    try:
        painter.layers = [layer for layer in layers if layer in painter.param.layers.objects]
        orders = [("unit index", UNIT_INDEX, NOTHING)]
        groups = list(painter.groups)
        if groups:
            orders.append((f"median of {painter.label(groups[0])}", groups[0], NOTHING))
        if len(groups) > 1:
            orders.append((f"{painter.label(groups[0])} minus {painter.label(groups[1])}", groups[0], groups[1]))
        twins = state.run.twins
        pair = painter.pairs[0] if painter.pairs else None
        if pair is not None and twins.at[pair, "source"] >= 0:
            orders.append((f"{painter.twin_label(pair)} minus its benign original", twin_item(pair),
                           sample_item(int(twins.at[pair, "source"]))))
        epochs = [int(e) for e in embedding["epoch"].values]
        frames = {}
        for name, key, minus in orders:
            painter.param.update(sort_by=key, sort_minus=minus)
            for epoch in epochs:
                state.epoch = epoch
                for layer in painter.layers:
                    rgba, axis, rows = painter.picture(layer)
                    dots = painter.dots(layer, rows, axis)
                    frames[f"{name}|{epoch}|{layer}"] = {"png": _png(rgba), "rows": [int(r) for r in rows],
                                                         "dots": _dot_bytes(dots, rows, axis)}
        legend = {painter.label(item): painter.color(item) for item in groups}
        cards = {}
        for epoch in epochs:
            state.epoch = epoch
            cards[str(epoch)] = _pair_text(painter, pair)
        return {
            "layers": list(painter.layers),
            "axes": {layer: [painter.axis(layer).lo, painter.axis(layer).hi] for layer in painter.layers},
            "orders": [name for name, _, _ in orders],
            "legend": legend,
            "dotColors": {painter.label(item): painter.color(item) for item in painter.instance_items(list(painter.pairs))},
            "frames": frames,
            "pair": cards,
        }
    finally:
        painter.dispose()
        state.dispose()


def _dot_bytes(dots: dict, rows: np.ndarray, axis) -> dict[str, str]:
    """Each instance's value per row as one byte along the value axis (255 = none)."""
    out = {}
    top = len(rows) - 1
    for label in dict.fromkeys(dots["what"]):
        values = np.full(len(rows), 255, dtype=np.uint8)
        mine = [i for i, what in enumerate(dots["what"]) if what == label]
        row = top - np.asarray([dots["y"][i] for i in mine], dtype=np.int64)
        x = np.asarray([dots["x"][i] for i in mine], dtype=np.float64)
        values[row] = np.clip(np.round((x - axis.lo) / (axis.hi - axis.lo) * 254), 0, 254).astype(np.uint8)
        out[label] = base64.b64encode(values.tobytes()).decode("ascii")
    return out


def _pair_text(painter, pair: str | None) -> str:
    """The shown pair at the current epoch in words (plain text)."""
    if pair is None:
        return "This run has no recorded instances."
    run = painter.run
    index = list(run.twins.index).index(pair)
    predicted = run.twin_values("twin_prediction", painter.epoch)[index]
    if not np.isfinite(predicted):
        return f"{painter.twin_label(pair)}: not recorded at this epoch"
    label = int(run.twins.at[pair, "label"])
    fooled = run.twin_values("twin_fooled", painter.epoch)[index] == 1
    truth = run.class_names[label] if label >= 0 else "no label"
    return (f"{painter.twin_label(pair)} · true {truth} · attacked prediction {run.class_names[int(predicted)]}"
            f"{' · fooled' if fooled else ''}")
