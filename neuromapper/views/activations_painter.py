"""The Activations page's pictures from the session state: plain Python, testable without Panel.

:class:`ActivationsPainter` turns the shared :class:`~neuromapper.views.state.SessionState` (run,
epoch, selection, focused sample) and the page's own options (layers, groups, instance pairs,
sort, hidden units) into what the page draws for each layer: one RGBA picture of density bars
(units down, activation value across, one colour per group, opacity = the share of the group's
samples in that bin relative to the unit's fullest bin), the instances' dots, the divergence
ranking and the instance cards. The Viewer in :mod:`neuromapper.views.activations` wires widgets
and Bokeh sources to it.

Design (hard to undo, so the reasons are here):

* **Items are string keys.** A group or an instance is named by a key (``class:3``,
  ``selection``, ``misclassified``, ``sample:<id>``, ``twin:<twin id>``) and shown by an escaped
  label. Sort options refer to the same keys, so "sort by the difference of two items" is one
  rule for groups and instances alike, and no user-written name is ever part of a key's grammar.
* **One picture per layer, composed in numpy**, not one HoloViews glyph per unit: 512 units by
  three groups would be 1,536 ``hv.Distribution`` glyphs per layer (``benchmarks/bench_activations.py``
  compares the two).
* **Hidden units stay on the page**, greyed below a gap at the bottom of the layer, so the click
  that hid a unit can show it again; "show all" resets.
* **The order is computed at every epoch** from the chosen sort key (a group's median moves as
  the network trains, so does the order); "unit index" keeps it fixed.
* **Per-item statistics are cached in unit order**, keyed by (layer, epoch, item, selection
  version): a group's density opacities and medians, an instance's activations, the divergence
  references. A picture is then the cached opacities indexed by the rows' order and composited,
  so a re-sort or a hide reorders rows without counting anything again, and :meth:`prefetch`
  computes the next epoch's statistics while the user looks at this one. The cache belongs to
  the session and is bounded in bytes (``STATS_BYTES``, least recently used first out): one
  1,000-class reference of a 512-unit layer is 8 MB, so stepping through a long run of a large
  head cannot fill the server. ``benchmarks/bench_activations.py`` measures what it saves.
"""

from __future__ import annotations

import base64
import html
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import param

from .. import distributions, plots, raster
from ..scene import ACTIVATION_COLORS, PAIR_MARKERS, class_palette
from .state import SessionState

SELECTION = "selection"
MISCLASSIFIED = "misclassified"
UNIT_INDEX = "unit index"
NOTHING = "nothing"
MAX_LAYERS = 4
RANKED = 12
HIDDEN_GREY = np.array([150, 150, 150], dtype=np.float64)
HIDDEN_ALPHA = 0.35
STATS_BYTES = 64 * 2**20  # per-session bytes of cached (layer, epoch, item) statistics; see the module docstring


def class_item(c: int) -> str:
    return f"class:{int(c)}"


def sample_item(sample) -> str:
    return f"sample:{int(sample)}"


def twin_item(twin: str) -> str:
    return f"twin:{twin}"


class ActivationsPainter(param.Parameterized):
    """The Activations page's options and the pictures they give (see the module docstring)."""

    layers = param.ListSelector(default=[], objects=[], doc="Layers shown, one panel each.")
    groups = param.ListSelector(default=[], objects=[], doc="Groups whose distributions are drawn.")
    pairs = param.ListSelector(default=[], objects=[], doc="Recorded instances shown as dots (twin ids).")
    sort_by = param.Selector(default=UNIT_INDEX, objects=[UNIT_INDEX], doc="Units sorted by this item, largest first.")
    sort_minus = param.Selector(default=NOTHING, objects=[NOTHING], doc="…minus this item (a difference sort).")
    score_layer = param.Selector(default=None, objects=[], allow_None=True, doc="Layer of the divergence ranking.")
    hidden = param.Dict(default={}, doc="Hidden units per layer.")

    def __init__(self, state: SessionState, **params):
        super().__init__(**params)
        self.state = state
        self._axes: dict[str, distributions.ValueAxis] = {}
        self._stats: OrderedDict = OrderedDict()  # key -> (value, bytes)
        self._stats_bytes = 0
        self._computing: dict[tuple, threading.Event] = {}
        self._generation = 0  # bumped when the run changes: a value computed across the change is not kept
        self._lock = threading.Lock()
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="neuromapper-activations")
        self._run_changed()
        self._selection_changed()  # a selection made before this page was first shown joins the groups too
        state.param.watch(self._run_changed, ["run"])
        state.param.watch(self._selection_changed, ["selection_version"])

    # -- options from the run ----------------------------------------------------------------------
    @property
    def run(self):
        return self.state.run

    def _run_changed(self, *_) -> None:
        run = self.run
        with self._lock:
            self._axes.clear()
            self._generation += 1
        self.clear_statistics()
        layers = run.layers
        self.param.layers.objects = layers
        self.param.score_layer.objects = layers
        twins = run.twins
        self.param.pairs.objects = list(twins.index)
        self.param.groups.objects = [class_item(c) for c in range(len(run.class_names))] + [SELECTION, MISCLASSIFIED]
        items = self.param.groups.objects + self.instance_items(list(twins.index))
        self.param.sort_by.objects = [UNIT_INDEX, *items]
        self.param.sort_minus.objects = [NOTHING, *items]
        pairs = self._default_pairs()
        self.param.update(
            layers=layers[-MAX_LAYERS:], score_layer=layers[-1], pairs=pairs, groups=self._default_groups(pairs),
            sort_by=UNIT_INDEX, sort_minus=NOTHING, hidden={},
        )

    def _default_pairs(self) -> list[str]:
        """The first attacked twin that fools the trained model (the last epoch), else the first twin."""
        twins = self.run.twins
        attacks = [t for t in twins.index if twins.at[t, "source"] >= 0]
        if not attacks:
            return list(twins.index[:1])
        fooled = self.run.twin_values("twin_fooled", self.run.epochs[-1])
        index = {t: i for i, t in enumerate(twins.index)}
        for t in attacks:
            if fooled[index[t]] == 1:
                return [t]
        return attacks[:1]

    def _default_groups(self, pairs: list[str]) -> list[str]:
        """The true class of the first pair and the class the attack made of it at the last epoch (else classes 0, 1)."""
        run = self.run
        if pairs:
            twins = run.twins
            t = pairs[0]
            source = int(twins.at[t, "source"])
            if source >= 0:
                row = int(np.flatnonzero(run.samples == source)[0])
                true = int(run.labels[row])
                predicted = self.run.twin_values("twin_prediction", self.run.epochs[-1])[list(twins.index).index(t)]
                attacked = int(predicted) if np.isfinite(predicted) else true
                return list(dict.fromkeys([class_item(true), class_item(attacked)]))
        return [class_item(c) for c in range(min(2, len(run.class_names)))]

    def instance_items(self, twins: list[str]) -> list[str]:
        """Sort items of the given twins: each attacked twin and its benign original."""
        table = self.run.twins
        items = []
        for t in twins:
            source = int(table.at[t, "source"])
            if source >= 0:
                items.append(sample_item(source))
            items.append(twin_item(t))
        return list(dict.fromkeys(items))

    def _selection_changed(self, *_) -> None:
        if self.state.selection is not None and len(self.state.selection) and SELECTION not in self.groups:
            self.groups = [*self.groups, SELECTION]

    # -- labels and colours ----------------------------------------------------------------------
    def label(self, item: str) -> str:
        """A plain-text label of an item (escape it where shown as markup)."""
        run = self.run
        if item.startswith("class:"):
            return f"class {run.class_names[int(item[6:])]}"
        if item == SELECTION:
            return "selection on the Embeddings page"
        if item == MISCLASSIFIED:
            return "misclassified at this epoch"
        if item.startswith("sample:"):
            return f"benign #{item[7:]}"
        if item.startswith("twin:"):
            return self.twin_label(item[5:])
        return item

    def twin_label(self, twin: str) -> str:
        row = self.run.twins.loc[twin]
        if row["source"] < 0:
            return f"instance {row['name']}"
        eps = f" ε={row['eps']:g}" if np.isfinite(row["eps"]) else ""
        return f"{row['method']}{eps} #{int(row['source'])}"

    def color(self, item: str) -> str:
        if item.startswith("class:"):
            return class_palette(self.run.class_names)[self.run.class_names[int(item[6:])]]
        if item.startswith("sample:"):
            return ACTIVATION_COLORS["benign"]
        if item.startswith("twin:"):
            return ACTIVATION_COLORS["attacked"]
        return ACTIVATION_COLORS[item]

    # -- data at an epoch (the current one unless given) --------------------------------------------------
    @property
    def epoch(self) -> int:
        return int(self.state.epoch)

    def _at(self, epoch: int | None) -> int:
        return self.epoch if epoch is None else int(epoch)

    def _epoch_index(self, epoch: int | None = None) -> int:
        return self.run.epochs.index(self._at(epoch))

    def clear_statistics(self) -> None:
        """Forget every cached statistic (they are computed again when asked for)."""
        with self._lock:
            self._stats.clear()
            self._stats_bytes = 0

    def _cached(self, key: tuple, compute, selection: bool = False):
        """``compute()`` cached under ``key`` (see the module docstring).

        With ``selection`` the value depends on the Embeddings page's selection: its version joins
        the key, and a value computed while the selection changed is returned but not kept (a
        prefetch on the background thread must not file a stale selection's statistics under the
        new version). A key being computed on another thread (the prefetch) is waited for, not
        computed twice.
        """
        key = (*key, self.state.selection_version if selection else None)
        with self._lock:
            generation = self._generation
            if key in self._stats:
                self._stats.move_to_end(key)
                return self._stats[key][0]
            computing = self._computing.get(key)
            if computing is None:  # this thread computes it; others asking meanwhile wait for it
                self._computing[key] = done = threading.Event()
        if computing is not None:
            computing.wait()
            with self._lock:
                if key in self._stats:
                    return self._stats[key][0]
            return self._cached(key[:-1], compute, selection)  # not kept (see above): compute afresh
        try:
            value = compute()
            if isinstance(value, np.ndarray):
                value.flags.writeable = False  # shared by every caller until evicted
            with self._lock:
                if generation == self._generation and (not selection or self.state.selection_version == key[-1]):
                    size = _nbytes(value)
                    self._stats[key] = (value, size)
                    self._stats_bytes += size
                    while self._stats_bytes > STATS_BYTES and len(self._stats) > 1:
                        self._stats_bytes -= self._stats.popitem(last=False)[1][1]
            return value
        finally:
            with self._lock:
                self._computing.pop(key, None)
            done.set()

    def members(self, item: str, epoch: int | None = None) -> np.ndarray:
        """Boolean mask over the probe samples of a group item at ``epoch``."""
        run = self.run
        if item.startswith("class:"):
            return run.labels == int(item[6:])
        if item == SELECTION:
            if self.state.selection is None:
                return np.zeros(len(run.samples), dtype=bool)
            return np.isin(run.samples, self.state.selection)
        if item == MISCLASSIFIED:
            return run.predictions[self._epoch_index(epoch)] != run.labels
        raise ValueError(f"group: expected a class, {SELECTION!r} or {MISCLASSIFIED!r}, got {item!r}")

    def values(self, layer: str, item: str, epoch: int | None = None) -> np.ndarray:
        """One value per unit of ``layer`` for an item: a group's median or an instance's activation."""
        epoch = self._at(epoch)
        return self._cached(("values", layer, epoch, item), lambda: self._values(layer, item, epoch), item == SELECTION)

    def _values(self, layer: str, item: str, epoch: int) -> np.ndarray:
        run = self.run
        acts = run.activations(layer, epoch)
        if item.startswith("sample:"):
            rows = np.flatnonzero(run.samples == int(item[7:]))
            return acts[rows[0]].astype(np.float64) if len(rows) else np.full(acts.shape[1], np.nan)
        if item.startswith("twin:"):
            index = list(run.twins.index).index(item[5:])
            return run.twin_activations(layer, epoch)[index].astype(np.float64)
        return distributions.medians(acts[self.members(item, epoch)])

    def alphas(self, layer: str, item: str, epoch: int | None = None) -> np.ndarray:
        """A group's bar opacities ``(units, bins)`` in unit order, 0–255: each bin's count over the unit's fullest."""
        epoch = self._at(epoch)

        def compute():
            acts = self.run.activations(layer, epoch)
            counts = distributions.densities(acts[self.members(item, epoch)], self.axis(layer)).astype(np.float64)
            peak = counts.max(axis=1, keepdims=True)
            alpha = np.divide(counts, peak, out=np.zeros_like(counts), where=peak > 0)
            return np.round(alpha * 255).astype(np.uint8)

        return self._cached(("alphas", layer, epoch, item), compute, item == SELECTION)

    def axis(self, layer: str) -> distributions.ValueAxis:
        """The layer's value axis from its first, middle and last recorded epochs (fixed while stepping)."""
        with self._lock:
            if layer not in self._axes:
                epochs = self.run.epochs
                picks = sorted({epochs[0], epochs[len(epochs) // 2], epochs[-1]})
                arrays = [self.run.activations(layer, e) for e in picks]
                self._axes[layer] = (distributions.value_axis(*arrays), arrays[0].shape[1])
            return self._axes[layer][0]

    def n_units(self, layer: str) -> int:
        self.axis(layer)
        return self._axes[layer][1]

    def order(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """``(shown units in sort order, hidden units by index)`` of ``layer`` at the current epoch."""
        n_units = self.n_units(layer)
        hidden = np.array(sorted(u for u in self.hidden.get(layer, ()) if u < n_units), dtype=np.int64)
        if self.sort_by == UNIT_INDEX:
            key = -np.arange(n_units, dtype=np.float64)
        else:
            key = self.values(layer, self.sort_by)
            if self.sort_minus != NOTHING:
                key = key - self.values(layer, self.sort_minus)
        return distributions.neuron_order(key, hidden), hidden

    def rows(self, layer: str) -> np.ndarray:
        """Units from the top row down: the shown units in order, then the hidden ones."""
        shown, hidden = self.order(layer)
        return np.concatenate([shown, hidden])

    # -- pictures ------------------------------------------------------------------------------------
    def picture(self, layer: str) -> tuple[np.ndarray, distributions.ValueAxis, np.ndarray]:
        """``(rgba (rows, bins, 4), value axis, units from the top row down)`` of one layer."""
        axis = self.axis(layer)
        shown, hidden = self.order(layer)
        rows = np.concatenate([shown, hidden])
        rgba = np.zeros((len(rows), axis.bins, 4), dtype=np.uint8)
        for item in self.groups:
            layer_rgba = np.zeros_like(rgba)
            layer_rgba[..., :3] = raster.hex_to_rgb([self.color(item)])[0]
            layer_rgba[..., 3] = self.alphas(layer, item)[rows]
            rgba = raster.over(layer_rgba, rgba)
        if len(hidden):
            tail = rgba[len(shown):]
            tail[..., :3] = HIDDEN_GREY
            tail[..., 3] = (tail[..., 3] * HIDDEN_ALPHA).astype(np.uint8)
        return rgba, axis, rows

    def dots(self, layer: str, rows: np.ndarray, axis: distributions.ValueAxis) -> dict[str, list]:
        """The instances' dots: value (clipped to the axis), row position, colour, marker and what they are.

        Benign and attacked differ by colour, pairs by marker (:meth:`pair_marker`).
        """
        out: dict[str, list] = {"x": [], "y": [], "color": [], "marker": [], "what": []}
        top = len(rows) - 1
        items = [(item, self.color(item), self.pair_marker(twin)[0], self.label(item))
                 for twin in self.pairs for item in self.instance_items([twin])]
        focused = self.state.focused
        if focused is not None and sample_item(focused) not in {item for item, *_ in items}:
            items.append((sample_item(focused), ACTIVATION_COLORS["focused"], PAIR_MARKERS[0][0], f"focused #{focused}"))
        for item, color, marker, label in dict.fromkeys(items):
            values = self.values(layer, item)[rows]
            finite = np.isfinite(values)
            out["x"].append(np.clip(values[finite], axis.lo, axis.hi))
            out["y"].append(top - np.flatnonzero(finite))
            out["color"] += [color] * int(finite.sum())
            out["marker"] += [marker] * int(finite.sum())
            out["what"] += [label] * int(finite.sum())
        # numbers as arrays: Bokeh sends them as binary buffers, lists element by element
        out["x"] = np.concatenate(out["x"]) if out["x"] else np.zeros(0)
        out["y"] = np.concatenate(out["y"]).astype(np.float64) if out["y"] else np.zeros(0)
        return out

    def pair_marker(self, twin: str) -> tuple[str, str]:
        """``(Bokeh marker, the character shown for it in text)`` of a shown pair."""
        return PAIR_MARKERS[list(self.pairs).index(twin) % len(PAIR_MARKERS)]

    def unit_at(self, layer: str, y: float) -> int | None:
        """The unit of the row at plot coordinate ``y`` (row 0 at the top), or ``None`` off the rows."""
        rows = self.rows(layer)
        row = len(rows) - 1 - int(round(y))
        return int(rows[row]) if 0 <= row < len(rows) else None

    def toggle_unit(self, layer: str, unit: int) -> None:
        """Hide a shown unit, show a hidden one."""
        hidden = {k: set(v) for k, v in self.hidden.items()}
        units = hidden.setdefault(layer, set())
        units.symmetric_difference_update({int(unit)})
        self.hidden = {k: tuple(sorted(v)) for k, v in hidden.items() if v}

    def show_all(self, *_) -> None:
        self.hidden = {}

    # -- divergence --------------------------------------------------------------------------------------
    def profiles(self, layer: str, epoch: int | None = None) -> distributions.ClassProfiles:
        """The class references of ``layer`` at ``epoch`` (the current one), cached."""
        run, epoch = self.run, self._at(epoch)
        return self._cached(("profiles", layer, epoch), lambda: distributions.class_profiles(
            run.activations(layer, epoch), run.labels, len(run.class_names)))

    def probe_scores(self, layer: str, epoch: int | None = None) -> np.ndarray:
        """Divergence of every probe sample at ``layer`` from its predicted class at ``epoch``, cached."""
        run, epoch = self.run, self._at(epoch)
        return self._cached(("scores", layer, epoch), lambda: distributions.divergence(
            run.activations(layer, epoch), run.predictions[self._epoch_index(epoch)], self.profiles(layer, epoch)))

    def prepare_scores(self) -> None:
        """Compute (and cache) what the divergence text needs at the current epoch: the slow part of it."""
        if self.score_layer is not None:
            self.probe_scores(self.score_layer)

    def twin_scores(self, layer: str) -> np.ndarray:
        """Divergence of every twin at ``layer`` from its predicted class; NaN where not recorded."""
        run = self.run
        predicted = run.twin_values("twin_prediction", self.epoch)
        out = np.full(len(predicted), np.nan)
        ok = np.isfinite(predicted)
        if ok.any():
            acts = run.twin_activations(layer, self.epoch)[ok]
            out[ok] = distributions.divergence(acts, predicted[ok].astype(np.int64), self.profiles(layer))
        return out

    def ranking(self, n: int = RANKED) -> list[dict]:
        """The most divergent probe samples and twins at the score layer, highest first."""
        layer = self.score_layer
        run = self.run
        e = self._epoch_index()
        rows = []
        scores = self.probe_scores(layer)
        for i in np.argsort(-np.nan_to_num(scores, nan=-np.inf))[:n]:
            rows.append({"score": float(scores[i]), "sample": int(run.samples[i]), "twin": None,
                         "what": "probe", "label": run.class_names[run.labels[i]],
                         "predicted": run.class_names[run.predictions[e, i]]})
        if len(run.twins):
            predicted = run.twin_values("twin_prediction", self.epoch)
            for t, score in zip(run.twins.index, self.twin_scores(layer)):
                if np.isfinite(score):
                    source, label = int(run.twins.at[t, "source"]), int(run.twins.at[t, "label"])
                    label = run.class_names[label] if label >= 0 else ""
                    rows.append({"score": float(score), "sample": source if source >= 0 else None, "twin": t,
                                 "what": self.twin_label(t), "label": label,
                                 "predicted": run.class_names[int(predicted[list(run.twins.index).index(t)])]})
        rows.sort(key=lambda r: -r["score"])
        return rows[:n]

    def twin_vs_benign(self, layer: str) -> tuple[int, int, float, float]:
        """``(attacked twins scored, how many score above their benign original, median of each)``."""
        run = self.run
        twins = run.twins
        attacked = twins.index[run.twin_sources >= 0]
        if not len(attacked):
            return 0, 0, float("nan"), float("nan")
        position = {t: i for i, t in enumerate(twins.index)}
        twin_scores, probe_scores = self.twin_scores(layer), self.probe_scores(layer)
        row_of = {int(s): i for i, s in enumerate(run.samples)}
        pairs = [(twin_scores[position[t]], probe_scores[row_of[int(twins.at[t, "source"])]]) for t in attacked]
        pairs = np.array([p for p in pairs if np.isfinite(p).all()]).reshape(-1, 2)
        if not len(pairs):
            return 0, 0, float("nan"), float("nan")
        return len(pairs), int((pairs[:, 0] > pairs[:, 1]).sum()), float(np.median(pairs[:, 0])), float(np.median(pairs[:, 1]))

    def legend_html(self) -> str:
        """Swatches of the groups (with their sizes at this epoch) and of the dots."""
        legend = {self.label(item): self.color(item) for item in self.groups}
        counts = {self.label(item): int(self.members(item).sum()) for item in self.groups}
        if self.pairs:
            legend.update({"benign original (dots)": ACTIVATION_COLORS["benign"],
                           "attacked twin (dots)": ACTIVATION_COLORS["attacked"]})
        if self.state.focused is not None:
            legend[f"focused #{self.state.focused} (dots)"] = ACTIVATION_COLORS["focused"]
        return plots.legend_html(legend, counts)

    def thumbnail_uri(self, sample: int | None, twin: str | None) -> str:
        """A ``data:`` URI of a twin's attacked image, or of a probe sample's image ("" if none)."""
        if twin is not None:
            png = self._twin_png(twin)
        else:
            rows = np.flatnonzero(self.run.samples == sample) if sample is not None else []
            png = self._probe_png(int(rows[0])) if len(rows) else None
        return f"data:image/png;base64,{base64.b64encode(png).decode()}" if png else ""

    # -- cards -------------------------------------------------------------------------------------------
    def pair_cards_html(self) -> str:
        """One card per shown pair: both thumbnails, true label, both predictions, fooled, scores."""
        run = self.run
        if not len(run.twins):
            return ("<div class='nm-pairs' style='color:#777;font-size:13px'>This run has no recorded instances: "
                    "record with <code>Recorder(..., attacks=...)</code> or <code>capture(..., instances=...)</code> "
                    "to compare benign images with their attacked twins here.</div>")
        e = self._epoch_index()
        index = {t: i for i, t in enumerate(run.twins.index)}
        predicted = run.twin_values("twin_prediction", self.epoch)
        fooled = run.twin_values("twin_fooled", self.epoch)
        twin_scores = self.twin_scores(self.score_layer)
        probe_scores = self.probe_scores(self.score_layer)
        cards = []
        for t in self.pairs:
            i = index[t]
            source = int(run.twins.at[t, "source"])
            parts = []
            if source >= 0:
                row = int(np.flatnonzero(run.samples == source)[0])
                parts.append(_figure(self._probe_png(row), "benign",
                                     f"{run.class_names[run.predictions[e, row]]}", probe_scores[row]))
            if np.isfinite(predicted[i]):
                parts.append(_figure(self._twin_png(t), self.twin_label(t), run.class_names[int(predicted[i])],
                                     twin_scores[i]))
                verdict = ("<b style='color:#d73027'>fooled</b>" if fooled[i] == 1 else
                           "not fooled" if source >= 0 else "")
            else:
                verdict = "<span style='color:#777'>not recorded at this epoch</span>"
            label = int(run.twins.at[t, "label"])
            truth = f"true: {html.escape(run.class_names[label])}" if label >= 0 else "no label"
            marker = f"<span title='its dots' style='font-size:14px'>{self.pair_marker(t)[1]}</span>"
            cards.append(f"<div class='nm-pair' style='display:inline-block;margin:0 12px 6px 0;font-size:12px'>"
                         f"<div>{' · '.join(part for part in (marker, truth, verdict) if part)}</div><div style='display:flex;gap:6px'>{''.join(parts)}</div></div>")
        return "<div class='nm-pairs'>" + "".join(cards) + "</div>"

    def _probe_png(self, row: int) -> bytes | None:
        images = self.run.images
        return None if images is None else plots.thumbnail_png(np.asarray(images[row].values), scale=2)

    def _twin_png(self, twin: str) -> bytes | None:
        if "twin_image" not in self.run.ds:
            return None
        image = np.asarray(self.run.ds["twin_image"].sel(epoch=self.epoch, twin=twin).values)
        if not np.isfinite(image).all():
            return None
        return plots.thumbnail_png(image.astype(np.uint8), scale=2)

    # -- lifecycle ----------------------------------------------------------------------------------------
    def prefetch(self, epoch: int | None) -> None:
        """Compute the bars and dots of the shown layers at ``epoch`` on a background thread.

        The divergence scores are left to the page's text thread (:meth:`prepare_scores`): their
        class references take most of a second at 10,000 samples, and queued here they held up
        the next epoch's bars when the user stepped quickly (``bench_activations.py``, py-spy).
        """
        if epoch is None:
            return
        layers, groups = list(self.layers), list(self.groups)
        items = self.instance_items(list(self.pairs))
        if self.sort_by != UNIT_INDEX:
            items.append(self.sort_by)
        if self.sort_minus != NOTHING:
            items.append(self.sort_minus)
        if self.state.focused is not None:
            items.append(sample_item(self.state.focused))

        def work():
            for layer in layers:
                for item in groups:
                    self.alphas(layer, item, epoch)
                for item in dict.fromkeys(items):
                    self.values(layer, item, epoch)

        self._prefetcher.submit(work)

    def dispose(self) -> None:
        self._prefetcher.shutdown(wait=False, cancel_futures=True)


def _nbytes(value) -> int:
    """Memory held by a cached statistic: an array, or the arrays of a :class:`~neuromapper.distributions.ClassProfiles`."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    return sum(array.nbytes for array in vars(value).values() if isinstance(array, np.ndarray))


def _figure(png: bytes | None, caption: str, predicted: str, score: float) -> str:
    image = (f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}' width=56 height=56 "
             "style='image-rendering:pixelated;border:1px solid #ccc'>" if png else "")
    score_text = f" · divergence {score:.2f}" if np.isfinite(score) else ""
    return (f"<figure style='margin:0'>{image}<figcaption>{html.escape(caption)}<br>"
            f"→ {html.escape(predicted)}{score_text}</figcaption></figure>")
