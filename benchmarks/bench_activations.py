"""The Activations page at 4 layers x 512 units x 10,000 samples: server time, the plain HoloViews way, Chromium.

What is measured, and why
-------------------------
Issue 10 asks for an epoch step and a re-sort of the Activations page with 4 layers x 512
units x 10,000 samples, 3 groups and 2 instance pairs, timed on the server and from a click to
the repaint in Chromium (aim: <= 250 ms), beside the same bars drawn the plain HoloViews way,
and for the cost of each attack per pair on the demo CNN. This script prints, in one run:

1. **Server time** of the page's work, in this process, without a browser:
   :class:`~neuromapper.views.activations_painter.ActivationsPainter` ``picture`` + ``dots``
   for the 4 layers, plus the packing of each picture into its Bokeh source data
   (``plots.bars_source_data``), which is what ``ActivationsView._push`` computes before it
   patches the document. Groups: classes ``c0`` and ``c1`` (1,000 samples each) and a selection
   of 1,000 random sample ids (``state.select``, as the Embeddings page makes it); pairs: an
   FGSM and a PGD twin (each drawn as two dots per unit: the benign original and the twin).

   * **epoch step**, four ways: *prefetched* (as shipped: after each step the painter computes
     the next epoch's per-unit statistics on its background thread, ``painter.prefetch``; the
     script waits for it before the next step, as a player at its default 700 ms interval
     would), *drawn again* (the same step a second time: every statistic cached, the rows'
     compositing and packing alone), *warm compute* (the painter's statistics emptied, arrays
     in memory: the counting and medians) and *cold* (the run's array cache emptied too: the
     step reads its 4 x 20 MB from the netCDF files). The table also says for how many of the
     4 layers the prefetch had every group's statistics ready when the step came.
   * **re-sort**: ``sort_by`` alternating between ``c0`` and ``c1`` (group medians) at one epoch.
   * **the text beside the bars**: the divergence score's class references, which the page
     computes on its text thread after the bars are sent (``Page.after``), then the ranking,
     summary, pair cards and legend.

2. **The plain HoloViews way**, for one layer (512 units x 3 groups of the same samples),
   rendered to Bokeh models with ``hv.render`` (no browser): (a) one ``hv.Violin`` over a long
   DataFrame with key dimensions ``unit`` and ``group`` (HoloViews computes one KDE per unit and
   group: 1,536 violins); (b) an ``hv.NdOverlay`` of one ``hv.Distribution`` per unit and group
   (1,536 elements). Each takes seconds to minutes, so each is run once, at ``--violin-units`` and
   ``--overlay-units`` units (512 by default); a figure for 512 units made from fewer is scaled
   linearly and marked "extrapolated". The ratio is against the painter's time for one
   layer, its statistics computed (not taken from the cache).

3. **Densities**: :func:`neuromapper.distributions.densities` (one ``np.bincount``) against one
   ``np.histogram`` per unit, on one layer's 10,000 x 512 activations (the claim in the module
   docstring of ``distributions.py``: about 30 ms against about 0.6 s). The two results must be
   equal.

4. **Click -> repaint in Chromium**: the real dashboard (``App`` as ``neuromapper serve`` serves
   it, ``cli_app_factory`` of ``tests/ui/conftest.py``: the pages' Panel extensions and local
   stylesheets) with ``pn.serve`` in this process, opened in Debian's chromium through
   Playwright, on the Activations tab with the same groups and pairs. *Epoch step*: a click on
   the player's ``button.next`` (``button.previous`` at the last epoch: steps go back and forth);
   *re-sort*: the "sort by" select set to the other class and its ``change`` event dispatched.
   The clock runs in the page (``performance.now()`` around ``click()`` / ``dispatchEvent``) until
   every Activations plot's image array is a new one, then two animation frames; afterwards the
   plot's ``ACTIVATION_PLOTS`` checksum must differ from before, or the run fails. Server side:
   the player's value received -> its handling done (``instrument_player`` of
   ``bench_dashboard.py``; this includes the hidden Embeddings page's own push, as shipped), and
   ``ActivationsView._push`` alone (timed by a subclass put in ``shell.PAGES``). For a re-sort,
   from the select's value received (``Select._server_change``, wrapped) to the end of ``_push``;
   The sort select handles its change at once (``widgets.ImmediateSelect``: no 50 ms debounce).
   Each is run twice: clicks back to back (the next click as soon as the bars are repainted:
   the page's background work for the last step, the prefetch and the divergence text, is
   still running and competes for the GIL and the two cores) and clicks 0.7 s apart (the
   player's default interval; a person looking at the bars).
   Also the websocket payload per step (MB, counted in the page).

5. **Attack cost** on the demo CNN (``DigitCNN`` on 28 x 28 MNIST-5k, trained ``--train-epochs``
   epochs offline as ``neuromapper.demo`` trains it): FGSM (ε 0.1), PGD-10 (ε 0.1) and the
   one-pixel search with a budget of 1,024 evaluations, on ``--pairs`` probe digits (stratified,
   as the recorder picks them), in one batch for FGSM and PGD (as the recorder calls them) and
   per image for one-pixel; ms per pair, the share fooled (among pairs the model got right) and
   the one-pixel search's evaluations per image.

The synthetic run
-----------------
:func:`neuromapper.synthetic.make_synthetic_run` (drifting, separating clusters; 10 classes
``c0``..``c9``), then each epoch file is written again with two twins added through
:func:`neuromapper.store.epoch_dataset` (``twins=``, the dict the recorder passes; ids
``fgsm@0.1/<id>`` and ``pgd@0.1/<id>`` from :func:`neuromapper.store.twin_id`): a probe sample of
``c0`` and one of ``c1`` moved 60% of the way to the medians of ``c2``/``c3`` plus noise, their
logits turned to that class, ``fooled`` computed as the recorder does. A PCA embedding
(``reduce(method="pca")``) gives the Embeddings page its layout without a UMAP of 4 x 512 x
10,000 values. Runs are cached in ``--cache`` and reused when their parameters match.

Run from the repository root (progress on stderr; 3-12 minutes on the shared 2-core machine,
depending on its load, the run built once in about 40 s; see ``RESULTS-activations.md``)::

    .venv/bin/python benchmarks/bench_activations.py
    .venv/bin/python benchmarks/bench_activations.py --quick          # smoke run, under a minute
    .venv/bin/python benchmarks/bench_activations.py --skip reference,attacks   # the page's figures only
    .venv/bin/python benchmarks/bench_activations.py --json act.json  # also write the figures
    .venv/bin/python benchmarks/bench_activations.py --skip server,reference,densities,attacks --js-profile steps.cpuprofile
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ui/conftest.py (browser helpers)
sys.path.insert(0, str(REPO / "benchmarks"))  # bench_dashboard.py (server and websocket instruments)

from neuromapper import distributions, plots, store  # noqa: E402
from neuromapper.synthetic import make_synthetic_run  # noqa: E402
from neuromapper.views.activations import ActivationsView  # noqa: E402
from neuromapper.views.activations_painter import SELECTION, ActivationsPainter, class_item  # noqa: E402

N_CLASSES = 10
GROUP_SIZE = 1_000  # the selection's size; classes c0 and c1 hold about n/10 samples each
SEED = 0
GENERATOR_VERSION = 1  # bump when the run written here changes, so cached runs are rebuilt
VIEWPORT = {"width": 1800, "height": 1100}
MB = 1e6
AIM_MS = 250.0
PAUSE_S = 0.7  # the player's default interval: a second series waits this long before each click
FULL = {"samples": 10_000, "units": 512, "epochs": 6, "steps": 20, "violin_units": 512, "overlay_units": 512,
        "pairs": 50, "train_epochs": 2}
QUICK = {"samples": 2_000, "units": 128, "epochs": 4, "steps": 5, "violin_units": 16, "overlay_units": 16,
         "pairs": 10, "train_epochs": 1}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pct(values, q) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.percentile(values, q)) if values else None


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


# -- the synthetic run with twins ---------------------------------------------------------------------
def build_run(cache: Path, n: int, units: int, epochs: int) -> Path:
    """A synthetic run (4 layers) with an FGSM and a PGD twin in every epoch, and a PCA embedding."""
    from neuromapper import reduce

    params = {"n": n, "units": units, "epochs": epochs, "layers": 4, "seed": SEED, "version": GENERATOR_VERSION}
    path = cache / f"activations-{n}x{units}x{epochs}"
    marker = path / "bench-params.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        log(f"reusing {path}")
        return path
    started = time.perf_counter()
    log(f"writing the synthetic run {path} ({n:,} samples x 4 layers x {units} units x {epochs} epochs)…")
    make_synthetic_run(path, n_samples=n, n_epochs=epochs, n_layers=4, n_classes=N_CLASSES, dims=units, seed=SEED,
                       dataset="synthetic (benchmarks/bench_activations.py)")
    run = store.open_run(path)
    labels = run["label"].values
    ids = run["sample"].values
    layers = [str(v) for v in run["layer"].values]
    run.close()
    sources = [int(np.flatnonzero(labels == 0)[0]), int(np.flatnonzero(labels == 1)[0])]
    targets = [2, 3]
    rng = np.random.default_rng([SEED, 10])
    for epoch in range(epochs):
        with store.open_netcdf(store.epoch_file(path, epoch)) as ds:
            ds = ds.load()
        acts = [np.asarray(ds["activation"].sel(layer=layer).values[0][:, :units]) for layer in layers]
        logits = np.asarray(ds["logits"].values[0])
        loss = np.asarray(ds["loss"].values[0])
        twin_acts = []
        for a in acts:
            rows = []
            for s, t in zip(sources, targets):
                toward = np.median(a[labels == t], axis=0)
                rows.append(0.4 * a[s] + 0.6 * toward + rng.normal(0, 0.05 * a.std(), units))
            twin_acts.append(np.array(rows, dtype=np.float32))
        twin_logits = logits[sources].copy()
        for i, t in enumerate(targets):
            twin_logits[i, t] = twin_logits[i].max() + 1.0
        benign = logits.argmax(1)
        twin_labels = labels[sources]
        fooled = (benign[sources] == twin_labels) & (twin_logits.argmax(1) != twin_labels)
        twins = {"id": [store.twin_id("fgsm", int(ids[sources[0]]), 0.1), store.twin_id("pgd", int(ids[sources[1]]), 0.1)],
                 "activations": twin_acts, "logits": twin_logits, "label": twin_labels, "fooled": fooled.astype(np.int8),
                 "perturbation": np.array([0.1, 0.1]), "evaluations": np.array([1, 10]), "images": None}
        new = store.epoch_dataset(epoch, layers=layers, activations=acts, logits=logits, loss=loss, twins=twins)
        store.append_epoch(path, new)
    log("  twins written; PCA embedding for the Embeddings page…")
    reduce(path, method="pca", progress=None)
    marker.write_text(json.dumps(params))
    log(f"  built in {time.perf_counter() - started:.0f} s")
    return path


def pca_embedding(path: Path):
    with store.open_run(path) as ds:
        embedding = store.find_embedding(ds, method="pca")
    if embedding is None:
        raise RuntimeError(f"{path} has no PCA embedding: delete it from the cache and run again")
    return embedding


def configure(painter: ActivationsPainter, state, n: int) -> dict:
    """The benchmark's page: 4 layers, groups c0, c1 and a 1,000-sample selection, the two twins."""
    run = state.run
    ids = np.sort(np.random.default_rng([SEED, 3]).choice(run.samples, min(GROUP_SIZE, n // 2), replace=False))
    twins = list(run.twins.index)
    return {"layers": list(run.layers), "groups": [class_item(0), class_item(1)], "pairs": twins, "selection": ids}


# -- 1. server time ----------------------------------------------------------------------------------------
def draw(painter: ActivationsPainter) -> None:
    """What ActivationsView._push computes for the shown layers before it patches the document."""
    for layer in painter.layers:
        rgba, axis, rows = painter.picture(layer)
        plots.bars_source_data(rgba, axis.lo, axis.hi)
        painter.dots(layer, rows, axis)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return 1e3 * (time.perf_counter() - start)


def bench_server(path: Path, n: int, steps: int) -> dict:
    from neuromapper.views.state import SessionState

    state = SessionState(path, embedding=pca_embedding(path))
    painter = ActivationsPainter(state)
    try:
        setup = configure(painter, state, n)
        painter.param.update(layers=setup["layers"], groups=setup["groups"], pairs=setup["pairs"])
        state.select(setup["selection"])
        assert painter.groups == [class_item(0), class_item(1), SELECTION], painter.groups
        epochs = list(state.param.epoch.objects)
        group_sizes = {painter.label(g): int(painter.members(g).sum()) for g in painter.groups}
        draw(painter)  # value axes (read from three epochs), twin table: once per session
        out = {"groups": group_sizes, "pairs": [painter.twin_label(t) for t in painter.pairs],
               "prefetched": [], "again": [], "cold": [], "warm": [], "prefetch_hits": [], "extras": [], "references": []}
        position, direction = 0, 1
        for i in range(steps + 1):
            if position + direction not in range(len(epochs)):
                direction = -direction
            position += direction
            epoch = epochs[position]
            # as shipped: the view asked for this epoch ahead after the last step; wait for the read
            painter._prefetcher.submit(lambda: None).result()
            ready = {key[1:4] for key in painter._stats if key[0] == "alphas"}
            hits = sum(all((layer, epoch, g) in ready for g in painter.groups) for layer in painter.layers)
            state.epoch = epoch
            prefetched = timed(lambda: draw(painter))
            # what else a step recomputes on the page: the class references of the divergence score
            # (on the page's text thread, off the step: Page.after), then the ranking, the summary
            # line, the pair cards and the legend (panes bound to the epoch)
            references = timed(painter.prepare_scores)
            extras = timed(lambda: (painter.ranking(), painter.twin_vs_benign(painter.score_layer),
                                    painter.pair_cards_html(), painter.legend_html()))
            again = timed(lambda: draw(painter))
            painter.clear_statistics()
            warm = timed(lambda: draw(painter))
            painter.clear_statistics()
            state.run._arrays.clear()
            cold = timed(lambda: draw(painter))
            # as ActivationsView._push does: the epoch the player reaches next going this way (turning at the ends)
            ahead = position + direction if position + direction in range(len(epochs)) else position - direction
            painter.prefetch(epochs[ahead])
            if i:  # the first step is a warm-up
                out["prefetched"].append(prefetched)
                out["again"].append(again)
                out["warm"].append(warm)
                out["cold"].append(cold)
                out["prefetch_hits"].append(hits)
                out["extras"].append(extras)
                out["references"].append(references)
            log(f"  server step {i}/{steps}: prefetched {prefetched:.0f} ms (ready {hits}/4), again {again:.0f}, "
                f"cold {cold:.0f}, warm {warm:.0f}, ranking/cards/legend {extras:.0f}")
        resort = []
        for i in range(steps + 1):
            painter.sort_by = class_item(i % 2)
            ms = timed(lambda: draw(painter))
            if i:
                resort.append(ms)
        log(f"  re-sort p50 {pct(resort, 50):.0f} ms")
        out["resort"] = resort
        # one layer's share, for the HoloViews reference
        layer = painter.layers[-1]
        out["one_layer_warm"] = []
        for _ in range(steps):  # computed, not cached: the reference computes too
            painter.clear_statistics()
            out["one_layer_warm"].append(timed(lambda: (lambda r: (plots.bars_source_data(r[0], r[1].lo, r[1].hi),
                                                                   painter.dots(layer, r[2], r[1])))(painter.picture(layer))))
        return out
    finally:
        painter.dispose()
        state.dispose()


# -- 2. the plain HoloViews way ----------------------------------------------------------------------------
def bench_reference(path: Path, n: int, violin_units: int, overlay_units: int) -> dict:
    """One layer's bars for 3 groups drawn as hv.Violin / an NdOverlay of hv.Distribution, rendered to Bokeh."""
    import holoviews as hv
    import pandas as pd

    hv.extension("bokeh", logo=False)
    with store.open_run(path) as ds:
        layers = [str(v) for v in ds["layer"].values]
        acts = np.asarray(store.layer_activations(ds, layers[-1]).isel(epoch=-1).values)
        labels = ds["label"].values
    rng = np.random.default_rng([SEED, 3])
    selection = np.sort(rng.choice(len(labels), min(GROUP_SIZE, n // 2), replace=False))
    groups = {"c0": acts[labels == 0], "c1": acts[labels == 1], "selection": acts[selection]}
    units = acts.shape[1]
    out = {"units": units}

    def violin(k: int) -> float:
        start = time.perf_counter()
        frame = pd.concat([pd.DataFrame({"unit": np.tile(np.arange(k), len(a)), "group": name,
                                         "activation": a[:, :k].ravel()}) for name, a in groups.items()])
        element = hv.Violin(frame, kdims=["unit", "group"], vdims="activation").opts(inner=None, width=600, height=3000)
        hv.render(element, backend="bokeh")
        return time.perf_counter() - start

    def overlay(k: int) -> float:
        start = time.perf_counter()
        element = hv.NdOverlay({(u, name): hv.Distribution(a[:, u]) for u in range(k) for name, a in groups.items()},
                               kdims=["unit", "group"])
        hv.render(element, backend="bokeh")
        return time.perf_counter() - start

    for name, fn, k in (("violin", violin, violin_units), ("distribution overlay", overlay, overlay_units)):
        k = min(k, units)
        log(f"  plain HoloViews, {name}: {k} units x 3 groups…")
        seconds = fn(k)
        out[name] = {"units_measured": k, "elements": 3 * k, "seconds": seconds,
                     "seconds_all_units": seconds * units / k, "extrapolated": k < units}
        log(f"    {seconds:.1f} s")
    return out


# -- 3. densities --------------------------------------------------------------------------------------------
def bench_densities(path: Path, reps: int = 5) -> dict:
    with store.open_run(path) as ds:
        layer = str(ds["layer"].values[0])
        acts = np.asarray(store.layer_activations(ds, layer).isel(epoch=-1).values)
    axis = distributions.value_axis(acts)

    def per_unit(bins):
        # values outside the axis count in its edge bins, as in densities
        clipped = np.clip(acts, axis.lo, axis.hi)
        if isinstance(bins, int):  # equal bins given by number and range: NumPy's fast path for uniform bins
            return np.stack([np.histogram(clipped[:, u], bins=bins, range=(axis.lo, axis.hi))[0]
                             for u in range(acts.shape[1])])
        return np.stack([np.histogram(clipped[:, u], bins=bins)[0] for u in range(acts.shape[1])])

    times = {"bincount_ms": [], "histogram_ms": [], "histogram_edges_ms": []}
    for _ in range(reps):
        for key, fn in (("bincount_ms", lambda: distributions.densities(acts, axis)),
                        ("histogram_ms", lambda: per_unit(axis.bins)), ("histogram_edges_ms", lambda: per_unit(axis.edges))):
            start = time.perf_counter()
            result = fn()
            times[key].append(1e3 * (time.perf_counter() - start))
            if key == "bincount_ms":
                a = result
            elif key == "histogram_ms":
                b = result
    # equal up to values on a bin edge, which floating point may put on either side
    return {"shape": list(acts.shape), "bins": axis.bins, **times,
            "values_in_other_bins": int(np.abs(a - b).sum() // 2), "values": int(a.sum())}


# -- 4. click -> repaint in Chromium ----------------------------------------------------------------------------
# Activations plots only (x axis "activation"): the Embeddings page's plots carry the same titles.
ACT_CURRENT_JS = """
  const current = () => {
    const out = new Map();
    for (const m of Bokeh.documents[0].all_models) {
      if (m.type !== "Figure" || !m.title || !m.below || !m.below.length || m.below[0].axis_label !== "activation") continue;
      for (const r of m.renderers) {
        const data = r.data_source && r.data_source.data;
        if (r.glyph && r.glyph.type === "ImageRGBA" && data && data.image && data.image.length) out.set(m.title.text, data.image[0]);
      }
    }
    return out;
  };
"""

# Starts a click (or a select change) and returns at once; the result lands in window.__actStep.
ACT_STEP_JS = "({target, value, timeoutMs}) => {\n" + ACT_CURRENT_JS + """
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const before = current();
  window.__actStep = null;
  const t0 = performance.now();
  if (value === null) target.click(); else { target.value = value; target.dispatchEvent(new Event("change")); }
  (async () => {
    let arrived = null;
    while (arrived === null) {
      await frame();
      const elapsed = performance.now() - t0;
      if (elapsed > timeoutMs) return {timeout: true, ms: elapsed};
      const now = current();
      if (![...before].every(([title, picture]) => now.has(title) && now.get(title) !== picture)) continue;
      arrived = performance.now() - t0;
    }
    await frame();
    await frame();
    return {timeout: false, ms: performance.now() - t0, arrived_ms: arrived, plots: before.size};
  })().then((result) => { window.__actStep = result; });
}"""


PAINTER_PARTS = ("picture", "dots", "ranking", "twin_vs_benign", "pair_cards_html", "legend_html")


def clock(obj, names, sink: list) -> None:
    """Wrap ``obj``'s methods ``names`` (on the instance) to append ``(name, start, end)`` to ``sink``."""
    def wrap(name: str, fn):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                sink.append((name, start, time.perf_counter()))

        return wrapped

    for name in names:
        setattr(obj, name, wrap(name, getattr(obj, name)))


class TimedActivationsView(ActivationsView):
    """The Activations page with ``_push`` timed (start and end, ``time.perf_counter``)."""

    def __init__(self, state, **params):
        self.bench_push: list[tuple[float, float]] = []  # set first: _push may run during __init__
        super().__init__(state, **params)

    def _push(self, *events) -> None:  # the watchers were bound to this method in __init__
        start = time.perf_counter()
        try:
            super()._push(*events)
        finally:
            self.bench_push.append((start, time.perf_counter()))


def js_profile(cdp, out: Path) -> None:
    """Stop Chromium's sampling profiler, save its profile (DevTools' ``.cpuprofile``), log the top self times."""
    profile = cdp.send("Profiler.stop")["profile"]
    out.write_text(json.dumps(profile))
    nodes = {node["id"]: node for node in profile["nodes"]}
    self_ms: dict[str, float] = {}
    for sample, delta in zip(profile["samples"], profile["timeDeltas"]):
        frame = nodes[sample]["callFrame"]
        name = f"{frame['functionName'] or '(anonymous)'} {Path(frame['url']).name}:{frame['lineNumber']}"
        self_ms[name] = self_ms.get(name, 0.0) + delta / 1e3
    total = sum(self_ms.values())
    log(f"  JS profile of the steps ({total:.0f} ms sampled) saved to {out}; top self times:")
    for name, ms in sorted(self_ms.items(), key=lambda kv: -kv[1])[:25]:
        log(f"    {ms:8.0f} ms {100 * ms / total:5.1f}%  {name}")


def bench_browser(path: Path, n: int, steps: int, load_timeout: float, step_timeout: float,
                  profile_to: Path | None = None) -> dict:
    import panel as pn
    from bench_dashboard import (
        ServerLog,
        TimedEmbeddingView,
        app_player,
        instrument_player,
        on_session,
        open_page,
        served,
        settle,
    )
    from playwright.sync_api import sync_playwright

    from neuromapper.cli import _served_locally
    from neuromapper.views import shell
    from neuromapper.views.shell import EXTENSIONS, App, _session_dispatch
    from tests.ui.conftest import ACTIVATION_PLOTS, CHROMIUM, CHROMIUM_ARGS

    embedding = pca_embedding(path)
    apps: list[App] = []
    player_log = ServerLog()
    select_received: list[tuple[str, float]] = []
    select_change = pn.widgets.Select._server_change

    def logged_select_change(self, doc, ref, subpath, attr, old, new):  # Bokeh checks the (attr, old, new) signature
        select_received.append((getattr(self, "label", None) or self.name, time.perf_counter()))
        return select_change(self, doc, ref, subpath, attr, old, new)

    def factory():
        # as cli_app_factory of tests/ui/conftest.py, with the embedding given (nothing is reduced)
        pn.extension(*EXTENSIONS)

        def make():
            app = App(path, embedding=embedding, dispatch=_session_dispatch())
            pn.state.on_session_destroyed(lambda _context: app.dispose())
            template = app.template()
            instrument_player(app_player(template), player_log)
            app.bench_doc = pn.state.curdoc
            apps.append(app)
            return template

        return _served_locally(make)

    out: dict = {}
    with mock.patch.dict(shell.PAGES, {"Embeddings": TimedEmbeddingView, "Activations": TimedActivationsView}), \
            mock.patch.object(pn.widgets.Select, "_server_change", logged_select_change), \
            served(factory) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = open_page(browser, url, "nm", 4, load_timeout)
            app = apps[-1]
            view, state = app.views["Activations"], app.state
            painter = view.painter
            parts: list[tuple[str, float, float]] = []
            clock(painter, PAINTER_PARTS, parts)
            setup = configure(painter, state, n)
            on_session(app.bench_doc, lambda: painter.param.update(layers=setup["layers"], groups=setup["groups"],
                                                                   pairs=setup["pairs"]))
            on_session(app.bench_doc, state.select, setup["selection"])
            start = time.monotonic()
            page.page.locator(".bk-tab").filter(has_text="Activations").click()
            page.page.wait_for_function(f"() => Object.values(({ACTIVATION_PLOTS})()).filter(v => v.checksum).length >= 4",
                                        polling=100, timeout=load_timeout * 1e3)
            settle(page, lambda: True, load_timeout)
            out["tab_open_s"] = time.monotonic() - start
            if painter.groups != [class_item(0), class_item(1), SELECTION]:
                raise RuntimeError(f"unexpected groups {painter.groups}")

            def one(kind: str, target, value, server_done, mark_push: int) -> dict:
                before = page.page.evaluate(ACTIVATION_PLOTS)
                received = page.counter.received
                t_click, mark_embeddings = time.perf_counter(), len(app.embeddings.bench_log.push)
                page.page.evaluate(ACT_STEP_JS, {"target": target, "value": value, "timeoutMs": step_timeout * 1e3})
                result = page.page.wait_for_function("() => window.__actStep", polling=50,
                                                     timeout=step_timeout * 1e3).json_value()
                if result["timeout"]:
                    raise RuntimeError(f"{kind}: the bars did not change within {step_timeout:.0f} s")
                settle(page, lambda: server_done() and len(view.bench_push) > mark_push, step_timeout)
                after = page.page.evaluate(ACTIVATION_PLOTS)
                same = [k for k in before if after[k]["checksum"] == before[k]["checksum"]]
                if same:
                    raise RuntimeError(f"{kind}: new image arrays but the same bars in {same}")
                push = view.bench_push[mark_push:]
                since = [(name, e - s) for name, s, e in parts if s >= t_click]
                breakdown = {name: 1e3 * sum(d for k, d in since if k == name) for name in PAINTER_PARTS}
                breakdown["Embeddings push"] = 1e3 * sum(app.embeddings.bench_log.push[mark_embeddings:])
                return {"parts": breakdown, "ms": result["ms"], "arrived_ms": result["arrived_ms"], "bytes": page.counter.received - received,
                        "push_ms": 1e3 * sum(e - s for s, e in push), "push_end": push[-1][1]}

            epochs = list(state.param.epoch.objects)
            where = {"position": epochs.index(state.epoch), "direction": 1}

            def step(i: int) -> dict:
                position, direction = where["position"], where["direction"]
                if position + direction not in range(len(epochs)):
                    direction = where["direction"] = -direction
                button = page.page.locator("button.next" if direction > 0 else "button.previous").first.element_handle()
                mark = player_log.mark()
                row = one("epoch step", button, None, lambda: len(player_log.handled) > mark[1], len(view.bench_push))
                position = where["position"] = position + direction
                since = player_log.since(mark)
                row.update(server_ms=since["server_ms"], work_ms=since["work_ms"])
                if state.epoch != epochs[position]:
                    raise RuntimeError(f"expected epoch {epochs[position]}, the session is at {state.epoch}")
                return row

            def resort(i: int) -> dict:
                target = class_item(1) if painter.sort_by == class_item(0) else class_item(0)  # the other one
                label = painter.label(target)
                mark_received = len(select_received)
                row = one("re-sort", handle, options[label], lambda: True, len(view.bench_push))
                got = [t for name, t in select_received[mark_received:] if name == "sort by"]
                row["server_ms"] = 1e3 * (row["push_end"] - got[0]) if got else None
                if painter.sort_by != target:
                    raise RuntimeError(f"the select did not sort by {label}")
                return row

            def series(kind: str, act, pause: float) -> list[dict]:
                """``steps`` timed actions after two warm-up ones, each ``pause`` seconds after the last."""
                rows = []
                for i in range(steps + 2):
                    time.sleep(pause)
                    row = act(i)
                    if i >= 2:
                        rows.append(row)
                    log(f"  browser {kind} {i + 1}/{steps + 2} (pause {pause:.1f} s): {row['ms']:.0f} ms "
                        f"(server {row.get('server_ms') or 0:.0f}, push {row['push_ms']:.0f})")
                return rows

            if profile_to is not None:
                cdp = page.page.context.new_cdp_session(page.page)
                cdp.send("Profiler.enable")
                cdp.send("Profiler.setSamplingInterval", {"interval": 500})  # microseconds
                cdp.send("Profiler.start")
            step_rows = series("step", step, 0.0)
            if profile_to is not None:
                js_profile(cdp, profile_to)
            step_paused = series("step", step, PAUSE_S)
            select = page.page.locator(".bk-input-group").filter(has_text="sort by").locator("select").first
            handle = select.element_handle()
            options = dict(zip(select.locator("option").all_inner_texts(),
                               select.locator("option").evaluate_all("els => els.map(e => e.value)")))
            sort_rows, sort_paused = series("re-sort", resort, 0.0), series("re-sort", resort, PAUSE_S)
            out["step"], out["resort"] = step_rows, sort_rows
            out["step_paused"], out["resort_paused"] = step_paused, sort_paused
            out["errors"] = list(page.errors)
            page.close()
        finally:
            browser.close()
            tornado = logging.getLogger("tornado.application")
            tornado.setLevel(logging.CRITICAL)  # pending websocket writes of the closed page
    for app in apps:
        app.dispose()
    return out


# -- 5. attacks ----------------------------------------------------------------------------------------------
def bench_attacks(n_pairs: int, train_epochs: int) -> dict:
    import torch

    from neuromapper import attacks
    from neuromapper.data import DigitCNN, load_dataset, stratified_split
    from neuromapper.demo import accuracy, train_one_epoch

    torch.manual_seed(SEED)
    data = load_dataset("mnist5k")
    train_idx, probe_idx = stratified_split(data.y, 2000, seed=SEED)
    train, probe = data.subset(train_idx), data.subset(probe_idx)
    model = DigitCNN(in_channels=1, n_classes=10, image_size=28)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train.x, train.y), batch_size=64, shuffle=True)
    started = time.perf_counter()
    for epoch in range(train_epochs):
        train_one_epoch(model, loader, optimizer)
        log(f"  demo CNN epoch {epoch + 1}/{train_epochs} trained")
    train_s = time.perf_counter() - started
    acc = accuracy(model, probe.x, probe.y)
    ids = attacks.stratified_ids(probe.y.numpy(), np.arange(len(probe)), max(1, n_pairs // 10), seed=SEED)
    x, y = probe.x[ids], probe.y[ids]
    model.eval()
    with torch.no_grad():
        right = model(x).argmax(1) == y
    out = {"train_epochs": train_epochs, "train_s": train_s, "probe_accuracy": acc, "pairs": len(ids),
           "correct_pairs": int(right.sum()), "torch_threads": torch.get_num_threads(), "methods": {}}

    def record(name: str, seconds: float, adv, evaluations=None) -> None:
        with torch.no_grad():
            fooled = (model(adv).argmax(1) != y) & right
        entry = {"ms_per_pair": 1e3 * seconds / len(ids), "seconds": seconds, "fooled": int(fooled.sum()),
                 "of": int(right.sum())}
        if evaluations is not None:
            entry.update(evaluations_mean=float(evaluations.float().mean()), evaluations_max=int(evaluations.max()))
        out["methods"][name] = entry
        log(f"  {name}: {entry['ms_per_pair']:.1f} ms per pair, fooled {entry['fooled']}/{entry['of']}")

    attacks.fgsm(model, x[:2], y[:2], 0.1)  # warm-up
    start = time.perf_counter()
    adv = attacks.fgsm(model, x, y, 0.1)
    record("FGSM ε=0.1 (one batch)", time.perf_counter() - start, adv)
    start = time.perf_counter()
    adv = attacks.pgd(model, x, y, 0.1, steps=10)
    record("PGD-10 ε=0.1 (one batch)", time.perf_counter() - start, adv)
    start = time.perf_counter()
    adv, spent = attacks.one_pixel(model, x, y, 1024)
    record("one-pixel, budget 1,024 (per image)", time.perf_counter() - start, adv, spent)
    # FGSM and PGD one image at a time too (a user's own instance, or a pair recorded alone)
    for name, fn in (("FGSM ε=0.1 (one image at a time)", lambda i: attacks.fgsm(model, x[i:i + 1], y[i:i + 1], 0.1)),
                     ("PGD-10 ε=0.1 (one image at a time)",
                      lambda i: attacks.pgd(model, x[i:i + 1], y[i:i + 1], 0.1, steps=10))):
        start = time.perf_counter()
        adv = torch.cat([fn(i) for i in range(len(ids))])
        record(name, time.perf_counter() - start, adv)
    return out


# -- the report --------------------------------------------------------------------------------------------
def fmt(value, spec: str = ".0f", missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def report(r: dict) -> None:
    p = r["params"]
    print(f"NeuroMapper Activations page, {r['date']}: {r['machine']['cpus']} CPUs, Python {r['machine']['python']}, "
          f"{', '.join(f'{k} {v}' for k, v in r['versions'].items())}")
    print("Load average (1, 5, 15 min): " + "; ".join(f"{k} {v}" for k, v in r["load"].items()))
    print(f"Synthetic run: {p['samples']:,} samples x 4 layers x {p['units']} units x {p['epochs']} epochs, "
          f"10 classes; command: {r['command']}")
    s = r.get("server")
    if s:
        print(f"Groups {', '.join(f'{k} ({v:,})' for k, v in s['groups'].items())}; pairs {', '.join(s['pairs'])}")
        print()
        print("1. Server time: ActivationsPainter.picture + dots (+ Bokeh source packing), all 4 layers, ms")
        print(f"   {'':38s}{'p50':>8s}{'p95':>8s}{'steps':>7s}")
        rows = [("epoch step, prefetched (as shipped)", s["prefetched"]), ("epoch step, drawn again (all cached)", s.get("again", [])),
                ("epoch step, warm compute (in memory)", s["warm"]), ("epoch step, cold (read from disk)", s["cold"]),
                ("re-sort (c0 <-> c1 medians)", s["resort"]),
                ("+ per step, off the step: class references", s.get("references", [])),
                ("+ per step: ranking, summary, cards, legend", s["extras"])]
        for name, values in rows:
            print(f"   {name:38s}{fmt(pct(values, 50)):>8s}{fmt(pct(values, 95)):>8s}{len(values):>7d}")
        hits = s["prefetch_hits"]
        print(f"   layers whose statistics the prefetch had ready when the step came: {sum(hits)} of {4 * len(hits)}")
    ref = r.get("reference")
    if ref and s:
        ours = pct(s["one_layer_warm"], 50)
        print()
        print(f"2. One layer ({ref['units']} units x 3 groups), rendered to Bokeh models on the server, s")
        print(f"   {'NeuroMapper painter (picture + dots + packing), p50':58s}{ours / 1e3:>9.3f}")
        for name in ("violin", "distribution overlay"):
            e = ref[name]
            label = {"violin": "hv.Violin, kdims unit x group", "distribution overlay":
                     "hv.NdOverlay of hv.Distribution per unit and group"}[name]
            how = (f"measured at {e['units_measured']} units, x{ref['units'] / e['units_measured']:.0f} "
                   "extrapolated" if e["extrapolated"] else "measured")
            print(f"   {label:58s}{e['seconds_all_units']:>9.1f}  ({how}; {e['seconds_all_units'] * 1e3 / ours:,.0f}x ours)")
    d = r.get("densities")
    if d:
        print()
        print(f"3. Densities of one layer, {d['shape'][0]:,} samples x {d['shape'][1]} units, {d['bins']} bins, ms "
              f"(p50, min-max of {len(d['bincount_ms'])})")
        for name, key in (("np.bincount (distributions.densities)", "bincount_ms"),
                          ("np.histogram per unit, bins=48, range=", "histogram_ms"),
                          ("np.histogram per unit, bins=axis.edges", "histogram_edges_ms")):
            v = d[key]
            print(f"   {name:40s}{pct(v, 50):>9.1f}  ({min(v):.1f}-{max(v):.1f})")
        moved = d["values_in_other_bins"]
        print(f"   ratio {pct(d['histogram_ms'], 50) / pct(d['bincount_ms'], 50):.1f}x; "
              + ("the counts are equal" if not moved else f"{moved:,} of {d['values']:,} values fall in a neighbouring bin"))
    b = r.get("browser")
    if b:
        print()
        print(f"4. Click -> repaint in Chromium (Activations tab, 4 layers), ms; aim <= {AIM_MS:.0f} ms at p50")
        print(f"   {'':14s}{'p50':>7s}{'p95':>7s}{'arrived p50':>13s}{'server p50':>12s}{'_push p50':>11s}{'MB/step':>9s}"
              f"{'n':>4s}")
        series = [("epoch step", b["step"]), ("re-sort", b["resort"]),
                  (f"step, {PAUSE_S:g} s", b.get("step_paused")), (f"re-sort, {PAUSE_S:g} s", b.get("resort_paused"))]
        for name, rows in [(name, rows) for name, rows in series if rows]:
            ms = [x["ms"] for x in rows]
            print(f"   {name:14s}{fmt(pct(ms, 50)):>7s}{fmt(pct(ms, 95)):>7s}"
                  f"{fmt(pct([x['arrived_ms'] for x in rows], 50)):>13s}{fmt(pct([x.get('server_ms') for x in rows], 50)):>12s}"
                  f"{fmt(pct([x['push_ms'] for x in rows], 50)):>11s}{pct([x['bytes'] for x in rows], 50) / MB:>9.2f}"
                  f"{len(rows):>4d}   {'PASS' if pct(ms, 50) <= AIM_MS else 'FAIL'}")
        print("   server time within a step, p50 ms (the bars: picture + dots; the rest: panes bound to the epoch;")
        print("   the hidden Embeddings page's push is deferred until it is shown, so it should read 0):")
        for name, rows in (("epoch step", b["step"]), ("re-sort", b["resort"])):
            keys = list(rows[0]["parts"])
            print(f"   {name:14s}" + ", ".join(f"{k} {pct([x['parts'][k] for x in rows], 50):.0f}" for k in keys))
        print(f"   opening the tab (first render of 4 layers): {b['tab_open_s']:.1f} s; console errors: {b['errors'] or 'none'}")
    a = r.get("attacks")
    if a:
        print()
        print(f"5. Attacks on the demo CNN (DigitCNN, MNIST-5k, {a['train_epochs']} epochs trained in {a['train_s']:.0f} s, "
              f"probe accuracy {a['probe_accuracy']:.3f}), {a['pairs']} stratified pairs ({a['correct_pairs']} classified "
              f"right), torch {a['torch_threads']} threads")
        for name, e in a["methods"].items():
            extra = (f", evaluations mean {e['evaluations_mean']:.0f} max {e['evaluations_max']}"
                     if "evaluations_mean" in e else "")
            print(f"   {name:40s}{e['ms_per_pair']:>9.1f} ms/pair   fooled {e['fooled']}/{e['of']}{extra}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k} {v}" for k, v in QUICK.items()))
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"default {value}")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: server, reference, densities, browser, attacks")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "neuromapper-bench-activations",
                        help="directory for the synthetic run, reused across invocations")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--js-profile", type=Path, metavar="PATH",
                        help="profile the browser's JavaScript during the epoch steps (a DevTools .cpuprofile) "
                             "and print where the time went; the profiler slows the steps it measures")
    parser.add_argument("--load-timeout", type=float, default=300, help="seconds for the page (and the tab) to load")
    parser.add_argument("--step-timeout", type=float, default=60, help="seconds for one step or re-sort")
    args = parser.parse_args(argv)
    params = {key: (getattr(args, key) if getattr(args, key) is not None else (QUICK if args.quick else FULL)[key])
              for key in FULL}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.cache.mkdir(parents=True, exist_ok=True)
    import bokeh
    import holoviews
    import panel
    import torch

    results: dict = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_activations.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": {"panel": panel.__version__, "bokeh": bokeh.__version__, "holoviews": holoviews.__version__,
                     "numpy": np.__version__, "torch": torch.__version__},
        "params": params, "load": {"start": load()},
    }
    path = build_run(args.cache, params["samples"], params["units"], params["epochs"])
    results["load"]["run built"] = load()
    parts = [("server", lambda: bench_server(path, params["samples"], params["steps"])),
             ("reference", lambda: bench_reference(path, params["samples"], params["violin_units"], params["overlay_units"])),
             ("densities", lambda: bench_densities(path)),
             ("browser", lambda: bench_browser(path, params["samples"], params["steps"], args.load_timeout,
                                               args.step_timeout, args.js_profile)),
             ("attacks", lambda: bench_attacks(params["pairs"], params["train_epochs"]))]
    for name, fn in parts:
        if name in skip:
            continue
        log(f"{name}…")
        started = time.perf_counter()
        results[name] = fn()
        results["load"][f"after {name}"] = load()
        log(f"{name} done in {time.perf_counter() - started:.0f} s, load {results['load'][f'after {name}']}")
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    return results


if __name__ == "__main__":
    main()
