"""Dashboard player steps in a real browser: NeuroMapper's server-side rasters against a WebGL scatter.

What is measured, and why
-------------------------
The dashboard issue asks for a player step (one epoch forward) of four layer plots to repaint in
well under a second at a million points per layer. This script serves the real dashboard
(``App(run, embedding=da, dispatch=...).template()`` of :mod:`neuromapper.views.shell`, one App
per browser session as ``serve_app`` makes them) with ``pn.serve`` in this process, opens it in
Debian's chromium through Playwright, and for every configuration reports:

* **step p50 / p95**: from the click on the player's ``button.next`` (or ``button.previous`` when
  the player is at the last epoch: the steps go back and forth, each one epoch) to all four layer
  images having *changed* (each plot's image array is a new one) *and been painted* (two
  animation frames later). After the clock stops, the position-weighted ``IMAGE_CHECKSUMS`` of
  ``tests/ui/conftest.py`` must differ from before the click for every layer, or the run fails:
  the new arrays must be new pictures. (Summing 4 x 130,000 pixels in every animation frame
  inside the timed span, as an earlier version did, cost the page about 50 ms per step.) The
  click and the clock are both in the page (``button.click()`` and ``performance.now()`` in one
  ``page.evaluate``, whose result Python then collects with ``wait_for_function``), so
  Playwright's round trips are not in the figure. Two warm-up steps per configuration are not
  counted.
* **rendered ahead, and cold**: after each step the dashboard renders the next epoch in the
  player's direction in the background (``EmbeddingPainter.render_ahead``), so a step normally
  finds its pictures ready; the JSON counts such steps (``ahead_steps``, logged from
  ``EmbeddingPainter._take_ahead``). The steps that turn at the first and last epoch find
  nothing ready. Each configuration is then run again **cold** (``TimedEmbeddingView.bench_ahead
  = False`` turns the painter's ``render_ahead`` into a no-op: nothing rendered ahead, every step
  renders its four pictures, as a jump to a far epoch does); the bar is checked on the
  as-shipped steps, the cold ones are printed beside them.
* **server ms**: from the moment the server receives the player's new value to the end of its
  handling (all watchers: the rasters of the four layers, legend, quality line, curve marker).
  The dashboard's ``EpochPlayer`` skips Panel's 50 ms change debounce for ``value``; the
  player's second property, ``value_throttled``, arrives with it and is still handled 50 ms
  later (a no-op for the pictures, which have left by then), and that is included. The JSON
  also has the handling alone (``work``) and ``EmbeddingView._push_images`` alone (``push``,
  timed by a subclass, :class:`TimedEmbeddingView`, that the App builds in its place).
* **MB per step**: websocket payload received by the page for the step, 10^6 bytes, counted in
  the page by a wrapper around ``WebSocket`` (Playwright's ``framereceived`` would pass every
  frame base64-encoded to this Python process, where decoding 2 MB per step took CPU and the
  GIL from the Panel server running in the same process).
* **session MB**: resident memory of this (server) process gained by opening one more browser
  session on the same run while the first is open (``psutil``; the JSON also has what
  ``tracemalloc`` traced meanwhile). Sessions on one run and embedding share its
  ``RunFacts`` and its scene (coordinates, labels, predictions, loss), so this is what a session
  holds of its own.
* the same with an **active linked selection**: ``app.embeddings.painter.select_box("layer0",
  box)`` is run on the session's event loop (``doc.add_next_tick_callback``) with a box holding
  about 10% of the points, so every layer draws the selected samples in colour over a grey
  backdrop (the state holds their sample ids), then the steps repeat.
* **trajectories of a 1,000-sample selection** (issue 9), at ``--trajectory-size`` points per
  layer (1,000,000 by default): 1,000 sample ids drawn at random (seeded) are selected with
  ``state.select(ids)``, and the same steps are timed with ``painter.trajectories = "off"`` and
  ``"selection"`` (each selected sample's path up to the current epoch drawn into the picture).
  The two alternate in blocks of five measured steps (one warm-up step each), each block
  starting with a jump to the same epoch in the same direction, so both see the same epochs on
  the same machine minutes; the blocks never turn at an end and never land on the first epoch
  (where no path is drawn). Both are also timed cold. The bar is p50 with trajectories within
  50 ms of p50 without.
* **WebGL reference**: the same points as a plain Bokeh scatter (``output_backend="webgl"``, one
  ``scatter`` per layer, colour mapped from the class in the browser, fixed axis ranges), served
  by Panel with the same kind of player; a step replaces the ``x`` and ``y`` columns of the four
  sources with the next epoch's coordinates (the per-step copy out of the shared array is in its
  server time). The selection case sets the same samples as ``selected.indices`` of all four
  sources (Bokeh's own linked selection). It is timed the same way in the same browser, by the
  identity of each source's ``x`` array, then two frames. Chromium runs headless with
  ``--disable-gpu``, so WebGL is SwiftShader (software), as it is for any headless server.
  Where it is too slow, it is cut off after ``--reference-timeout`` seconds for a page load or a
  step, or ``--reference-budget`` seconds of steps, and the table says so; once it has not
  finished at one size it is not tried at larger ones. ``--reference-backend canvas`` draws the
  same scatter with Bokeh's 2-D canvas instead.
* optionally (``--tutorial-steps``, at 1,000,000 points by default) HoloViews' ``rasterize`` +
  ``dynspread`` with ``count_cat`` on four DynamicMaps bound to a player, as the tutorials show
  it: a DataFrame per layer and step.

Then the bar of the issue is checked: p50 <= 250 ms for 4 x 1,000,000 points without selection,
<= 350 ms with a selection, the 1M time <= 1.5x the 100k time, 4 x 10,000,000 under 500 ms, and
(issue 9) trajectories of 1,000 selected samples at 4 x 1,000,000 within 50 ms of the same steps
without.

The synthetic data, and what is never loaded
--------------------------------------------
``N`` samples x 10 epochs x 4 layers, 10 classes. The run is written with
:func:`neuromapper.store.create_run` (labels, class names; no thumbnails at this size) and, per
epoch, a minimal Dataset written with :func:`neuromapper.store.write_atomic`: a 1-unit
``activation`` of zeros (the schema wants one; nobody reads it), ``nonfinite``, ``prediction``,
``loss`` and a ``train_loss`` metric. ``store.epoch_dataset`` is not used because it requires
``logits`` (N x classes), 400 MB per epoch at 10M samples, which the dashboard never reads.
Predictions are correct with a probability rising from 30% to 95% over the epochs, the loss
is ``-log`` of a probability drawn accordingly.

The embedding ``(epoch, layer, sample, xy)`` float32 is generated directly in 2-D and given to the
app as ``App(run, embedding=da)``: per layer, each class is a rotated, stretched
Gaussian around a centre; the centres start bunched (35% of their final spread), move apart
over the epochs and drift by a random walk; each class turns a little per epoch and each sample
turns around its class centre at its own rate, so every picture changes at every step. A
compiled loop (numba) writes it, a few seconds at 10M. Its attributes imitate a stored
embedding of the default method (its ``params`` attribute is read by
``ReduceParams.from_embedding``); trustworthiness and disparity are NaN (not computed), no point is
unplaced. The dashboard therefore reads ``run.nc`` and the per-epoch ``prediction``, ``loss``,
``metric``; recorded activations never exist at full width and are never loaded.

How sessions open the run: as shipped. The App opens it with ``RunFacts.open(path)`` (on-disk
chunks, about 4 MB along ``sample``, ``neuromapper.store.CHUNK_BYTES``), once per server process:
labels, predictions and loss are read into memory and shared by every session, and so is the
scene built from them and the embedding. The benchmark opens it once before serving and times
that (the details table prints it); page loads therefore do not include it.

Runs are cached in ``--cache`` (default ``$TMPDIR/neuromapper-bench-dashboard``, printed) and
reused when their parameters match; the embedding is regenerated in memory each time.

Run it from the repository root (progress goes to stderr; a full run takes about 20 minutes on a
2-core machine, see ``RESULTS-dashboard.md``)::

    .venv/bin/python benchmarks/bench_dashboard.py                              # 100k, 1M, 10M
    .venv/bin/python benchmarks/bench_dashboard.py --quick                      # smoke run, 2-3 minutes
    .venv/bin/python benchmarks/bench_dashboard.py --json dashboard.json        # also write figures
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numba
import numpy as np
import panel as pn
import psutil
import xarray as xr
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the browser-test helpers below live in tests/ui/conftest.py

from neuromapper import store  # noqa: E402
from neuromapper.methods import DEFAULT_METHOD  # noqa: E402
from neuromapper.plots import LAYER_SIZE  # noqa: E402
from neuromapper.scene import class_palette, robust_bounds  # noqa: E402
from neuromapper.views import jobs, shell  # noqa: E402
from neuromapper.views.embedding import EmbeddingView  # noqa: E402
from neuromapper.views.run import RunFacts  # noqa: E402
from neuromapper.views.shell import App, EpochPlayer, _session_dispatch  # noqa: E402
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, DOCUMENT_IDLE, IMAGE_CHECKSUMS, free_port  # noqa: E402

N_EPOCHS = 10
N_LAYERS = 4
N_CLASSES = 10
SEED = 0
GENERATOR_VERSION = 1  # bump when the synthetic run changes, so cached runs are rebuilt
SELECT_FRACTION = 0.10
WARMUP_STEPS = 2
VIEWPORT = {"width": 1800, "height": 1100}
MB = 1e6
BAR = {"1M": 250.0, "1M selection": 350.0, "1M / 100k": 1.5, "10M": 500.0, "1M trajectories": 50.0}
TRAJECTORY_SAMPLES = 1_000
TRAJECTORY_BLOCK = 5  # measured steps per block; the trajectory cases alternate block by block
# (start epoch index, direction) of each block: six steps (one warm-up) never turn at an end
# and never land on the first epoch, where no path is drawn.
TRAJECTORY_STARTS = ((0, 1), (N_EPOCHS - 1, -1), (2, 1), (N_EPOCHS - 3, -1))
QUICK = {"sizes": "100000", "steps": 6, "tutorial_steps": 0, "reference_budget": 20.0}


# -- synthetic data -------------------------------------------------------------------------------
@numba.njit(nogil=True)
def _place(labels, p, q, turn_cos, turn_sin, centres, shapes, out):
    """Points of one layer at one epoch: class centre + class shape applied to the latent ``(p, q)``.

    Each sample's latent then turns by its own angle, ready for the next epoch.
    """
    for i in range(labels.shape[0]):
        k = labels[i]
        out[i, 0] = centres[k, 0] + shapes[k, 0, 0] * p[i] + shapes[k, 0, 1] * q[i]
        out[i, 1] = centres[k, 1] + shapes[k, 1, 0] * p[i] + shapes[k, 1, 1] * q[i]
        p[i], q[i] = turn_cos[i] * p[i] - turn_sin[i] * q[i], turn_sin[i] * p[i] + turn_cos[i] * q[i]


def synthetic_labels(n: int, seed: int = SEED) -> np.ndarray:
    """True class per sample, classes interleaved in sample order as in a shuffled probe set."""
    return (np.random.default_rng(seed).permutation(n) % N_CLASSES).astype(np.int16)


def synthetic_embedding(labels: np.ndarray, seed: int = SEED) -> np.ndarray:
    """``(epoch, layer, sample, xy)`` float32 coordinates of drifting, separating class clusters."""
    n = len(labels)
    out = np.empty((N_EPOCHS, N_LAYERS, n, 2), dtype=np.float32)
    for layer in range(N_LAYERS):
        rng = np.random.default_rng([seed, 1, layer])
        p = rng.standard_normal(n, dtype=np.float32)
        q = rng.standard_normal(n, dtype=np.float32)
        turn = rng.standard_normal(n, dtype=np.float32) * np.float32(0.08)  # radians per epoch
        turn_cos, turn_sin = np.cos(turn), np.sin(turn)
        angles = np.linspace(0, 2 * np.pi, N_CLASSES, endpoint=False) + rng.uniform(0, 2 * np.pi)
        final = np.column_stack([np.cos(angles), np.sin(angles)]) * rng.uniform(7, 11, (N_CLASSES, 1))
        walk = np.cumsum(rng.normal(scale=0.5, size=(N_EPOCHS, N_CLASSES, 2)), axis=0)
        walk -= walk[0]
        stretch = rng.uniform(0.5, 1.8, size=(N_CLASSES, 2))
        tilt, spin = rng.uniform(0, np.pi, N_CLASSES), rng.normal(scale=0.12, size=N_CLASSES)
        for epoch in range(N_EPOCHS):
            separation = 0.35 + 0.65 * epoch / max(N_EPOCHS - 1, 1)
            centres = (separation * final + walk[epoch]).astype(np.float32)
            theta = tilt + spin * epoch
            rotation = np.stack([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]).transpose(2, 0, 1)
            shapes = (rotation * stretch[:, None, :]).astype(np.float32)
            _place(labels, p, q, turn_cos, turn_sin, centres, shapes, out[epoch, layer])
    return out


def _epoch_facts(labels: np.ndarray, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and loss per sample at ``epoch``: accuracy rises from 30% to 95%."""
    rng = np.random.default_rng([seed, 2, epoch])
    n = len(labels)
    accuracy = 0.30 + 0.65 * epoch / max(N_EPOCHS - 1, 1)
    correct = rng.random(n, dtype=np.float32) < accuracy
    wrong = (labels + rng.integers(1, N_CLASSES, n, dtype=np.int16)) % N_CLASSES
    prediction = np.where(correct, labels, wrong).astype(np.int16)
    p_true = np.where(correct, rng.uniform(0.5, 1.0, n), rng.uniform(0.02, 0.5, n)).astype(np.float32)
    return prediction, -np.log(p_true)


def build_run(path: Path, n: int, seed: int = SEED) -> Path:
    """Write (or reuse) the synthetic run of ``n`` samples at ``path``; see the module docstring."""
    params = {"n": n, "epochs": N_EPOCHS, "layers": N_LAYERS, "classes": N_CLASSES, "seed": seed,
              "generator": GENERATOR_VERSION}
    marker = path / "bench-params.json"
    if marker.exists() and json.loads(marker.read_text()) == params and store.recorded_epochs(path) == list(
        range(N_EPOCHS)
    ):
        return path
    marker.unlink(missing_ok=True)
    labels = synthetic_labels(n, seed)
    layers = [f"layer{i}" for i in range(N_LAYERS)]
    store.create_run(
        path, labels=labels, class_names=[f"c{k}" for k in range(N_CLASSES)], layers=layers,
        layer_units=[1] * N_LAYERS, layer_kinds=["synthetic"] * N_LAYERS,
        attrs={"dataset": "synthetic 2-D (benchmarks/bench_dashboard.py)",
               "model": {"class": "benchmarks.bench_dashboard", "parameters": 0}, "hyperparameters": params},
        overwrite=True,
    )
    for epoch in range(N_EPOCHS):
        prediction, loss = _epoch_facts(labels, epoch, seed)
        ds = xr.Dataset(
            {
                "activation": (("epoch", "layer", "sample", "unit"), np.zeros((1, N_LAYERS, n, 1), np.float32)),
                "nonfinite": (("epoch", "layer"), np.zeros((1, N_LAYERS), np.int64)),
                "prediction": (("epoch", "sample"), prediction[None]),
                "loss": (("epoch", "sample"), loss[None]),
                "metric": (("epoch", "metric_name"), np.array([[float(loss.mean())]])),
            },
            coords={"epoch": [epoch], "layer": np.array(layers, dtype=str), "metric_name": np.array(["train_loss"])},
            attrs={"neuromapper_schema": store.SCHEMA_VERSION},
        )
        store.write_atomic(ds, store.epoch_file(path, epoch), store.compression_encoding(ds, 1))
    marker.write_text(json.dumps(params))
    return path


def embedding_array(values: np.ndarray, run: xr.Dataset) -> xr.DataArray:
    """``values`` as the DataArray :func:`neuromapper.reduce` would return for ``run``."""
    shape = (N_EPOCHS, N_LAYERS)
    per_layer = ("epoch", "layer")
    return xr.DataArray(
        values,
        dims=("epoch", "layer", "sample", "xy"),
        coords={
            "epoch": run["epoch"].values.astype(np.int64),
            "layer": run["layer"].values,
            "sample": run["sample"].values,
            "xy": np.array(["x", "y"]),
            "trustworthiness": (per_layer, np.full(shape, np.nan)),  # not computed for synthetic points
            "disparity": (per_layer, np.full(shape, np.nan)),
            "unplaced": (per_layer, np.zeros(shape, np.int32)),
        },
        name="embedding",
        attrs={
            "method": DEFAULT_METHOD,
            "params": json.dumps({"method": DEFAULT_METHOD, "n_neighbors": 15, "min_dist": 0.1, "per_class": None,
                                  "seed": SEED, "layers": [str(v) for v in run["layer"].values],
                                  "note": "synthetic 2-D coordinates of benchmarks/bench_dashboard.py"}),
            "key": "bench-dashboard-synthetic",
        },
    )


def selection_box(x: np.ndarray, y: np.ndarray, fraction: float = SELECT_FRACTION) -> tuple[float, ...]:
    """A box around the median point of a layer that holds about ``fraction`` of the points."""
    cx, cy = float(np.median(x)), float(np.median(y))
    sx, sy = float(np.std(x)), float(np.std(y))
    lo, hi = 0.0, 4.0
    for _ in range(30):
        mid = (lo + hi) / 2
        inside = np.count_nonzero((np.abs(x - cx) <= mid * sx) & (np.abs(y - cy) <= mid * sy)) / len(x)
        lo, hi = (mid, hi) if inside < fraction else (lo, mid)
    half = (lo + hi) / 2
    return (cx - half * sx, cy - half * sy, cx + half * sx, cy + half * sy)


def box_indices(x: np.ndarray, y: np.ndarray, box: tuple[float, ...]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).astype(np.int32)


# -- server-side timing ------------------------------------------------------------------------------
@dataclass
class ServerLog:
    """Server-side timestamps (``time.perf_counter``) appended as the server handles steps."""

    received: list[float] = field(default_factory=list)  # player value arrived from the browser
    handled: list[tuple[float, float]] = field(default_factory=list)  # (start, end) of the handling
    push: list[float] = field(default_factory=list)  # seconds in EmbeddingView._push_images / the update
    ahead: list[bool] = field(default_factory=list)  # NeuroMapper: were the pictures rendered ahead?

    def mark(self) -> tuple[int, int, int, int]:
        return len(self.received), len(self.handled), len(self.push), len(self.ahead)

    def since(self, mark: tuple[int, int, int, int]) -> dict:
        received, handled, push = self.received[mark[0]:], self.handled[mark[1]:], self.push[mark[2]:]
        out = {"work_ms": 1e3 * sum(end - start for start, end in handled), "push_ms": 1e3 * sum(push) if push else None}
        if self.ahead[mark[3]:]:
            out["ahead"] = any(self.ahead[mark[3]:])
        out["server_ms"] = 1e3 * (handled[-1][1] - received[0]) if received and handled else None
        return out


def instrument_player(player, log: ServerLog) -> None:
    """Time a Panel player's server side: value received, then its (debounced) handling.

    Wraps two private Panel methods on this instance (``Syncable._server_change`` and
    ``_change_event``); it must run before the player is rendered, which binds them.
    """
    server_change, change_event = player._server_change, player._change_event

    def on_server_change(doc, ref, subpath, attr, old, new):  # Bokeh checks the (attr, old, new) signature
        log.received.append(time.perf_counter())
        return server_change(doc, ref, subpath, attr, old, new)

    def on_change_event(*args, **kwargs):
        start = time.perf_counter()
        try:
            return change_event(*args, **kwargs)
        finally:
            log.handled.append((start, time.perf_counter()))

    player._server_change, player._change_event = on_server_change, on_change_event


class TimedEmbeddingView(EmbeddingView):
    """The Embeddings page with its player hot path (``_push_images``) timed.

    It also logs whether a step found its pictures rendered ahead, and with ``bench_ahead =
    False`` renders nothing ahead, so that every step renders its four pictures (the cold rows).
    Both are done by wrapping two methods of this view's :class:`EmbeddingPainter` instance
    (``render_ahead``, called by ``_push_images``, and ``_take_ahead``, called by
    ``layer_image``): the painter calls them through ``self``, and the view builds its own
    painter, so a painter subclass could not be put in its place.
    """

    def __init__(self, state, **params):
        self.bench_log = ServerLog()  # set first: _push_images may run during __init__
        self.bench_ahead = True
        super().__init__(state, **params)
        painter = self.painter
        render_ahead, take_ahead = painter.render_ahead, painter._take_ahead

        def maybe_render_ahead() -> None:
            if self.bench_ahead:
                render_ahead()
            else:
                painter._ahead = None

        def logged_take_ahead(key: tuple) -> dict:
            images = take_ahead(key)
            self.bench_log.ahead.append(bool(images))
            return images

        painter.render_ahead, painter._take_ahead = maybe_render_ahead, logged_take_ahead

    def _push_images(self, *events) -> None:  # the state's watchers were bound to this method in __init__
        start = time.perf_counter()
        try:
            super()._push_images(*events)
        finally:
            self.bench_log.push.append(time.perf_counter() - start)


@contextmanager
def timed_pages():
    """Apps built meanwhile get a :class:`TimedEmbeddingView` as their Embeddings page.

    ``App`` builds its pages from the module's ``PAGES`` table; it takes no page classes.
    """
    with mock.patch.dict(shell.PAGES, {"Embeddings": TimedEmbeddingView}):
        yield


@contextmanager
def reduction_returns(embedding: xr.DataArray):
    """Sessions that ask the server's reduce jobs for an embedding get ``embedding`` at once.

    A session given ``embedding=`` still joins a reduce job for that embedding's parameters when
    the run has none stored (``SessionState.__init__`` sets ``reduce_params``, whose watcher
    ``_request`` looks in the store before the given embedding is shown). Left alone, that job
    reduces the synthetic run's placeholder activations in this process and two worker
    processes during the whole measurement, shows an animated progress bar in the page, and
    would replace the shown embedding when done. As shipped, a run's stored embedding is found
    and nothing is computed; this makes the benchmark's sessions behave the same way.
    """
    def join(root, params, listener):
        listener.done(embedding)  # handed to the session's event loop by its dispatch
        return -1

    with mock.patch.object(jobs.JOBS, "join", join), mock.patch.object(jobs.JOBS, "leave", lambda token: None):
        yield


def app_player(template) -> EpochPlayer:
    """The epoch player in an App's template (the App keeps no reference to it)."""
    players = [found for item in template.sidebar for found in item.select(EpochPlayer)]
    if len(players) != 1:
        raise RuntimeError(f"expected one EpochPlayer in the sidebar, found {len(players)}")
    return players[0]


# -- the reference apps ------------------------------------------------------------------------------
def scatter_app(values: np.ndarray, labels: np.ndarray, epochs: list[int], layers: list[str], bounds: dict,
                backend: str, log: ServerLog, sessions: list):
    """Factory of the plain Bokeh scatter page (``backend`` webgl or canvas): a player, one scatter per layer."""
    from bokeh.models import ColumnDataSource, LinearColorMapper, Range1d
    from bokeh.plotting import figure
    from panel.io import hold

    palette = list(class_palette([f"c{k}" for k in range(N_CLASSES)]).values())
    codes = labels.astype(np.int8)

    def factory():
        player = pn.widgets.DiscretePlayer(name="epoch", options=list(epochs), value=epochs[0], interval=700,
                                           loop_policy="loop", show_loop_controls=True)
        instrument_player(player, log)
        mapper = LinearColorMapper(palette=palette, low=-0.5, high=N_CLASSES - 0.5)
        sources, panes = [], []
        for i, layer in enumerate(layers):
            source = ColumnDataSource({"x": np.ascontiguousarray(values[0, i, :, 0]),
                                       "y": np.ascontiguousarray(values[0, i, :, 1]), "label": codes})
            (x0, x1), (y0, y1) = bounds[layer]
            fig = figure(title=layer, width=LAYER_SIZE, height=LAYER_SIZE, output_backend=backend,
                         x_range=Range1d(x0, x1), y_range=Range1d(y0, y1), toolbar_location="above",
                         tools="box_select,lasso_select,wheel_zoom,pan,reset")
            fig.scatter("x", "y", source=source, size=2, line_color=None, fill_alpha=0.5,
                        fill_color={"field": "label", "transform": mapper})
            fig.axis.visible = False
            fig.grid.visible = False
            sources.append(source)
            panes.append(pn.pane.Bokeh(fig))

        def step(event):
            start = time.perf_counter()
            e = epochs.index(event.new)
            with hold():
                for i, source in enumerate(sources):
                    source.data.update(x=np.ascontiguousarray(values[e, i, :, 0]),
                                       y=np.ascontiguousarray(values[e, i, :, 1]))
            log.push.append(time.perf_counter() - start)

        player.param.watch(step, "value")

        def select(indices):
            for source in sources:
                source.selected.indices = indices

        sessions.append(SimpleNamespace(player=player, select=select, doc=pn.state.curdoc))
        return pn.Column(player, pn.Row(*panes))

    return factory


def tutorial_app(values: np.ndarray, labels: np.ndarray, epochs: list[int], layers: list[str],
                 log: ServerLog, sessions: list):
    """Factory of HoloViews' ``rasterize`` on DynamicMaps bound to a player, as the tutorials show it."""
    import datashader as ds
    import holoviews as hv
    import pandas as pd
    from holoviews.operation.datashader import dynspread, rasterize

    names = [f"c{k}" for k in range(N_CLASSES)]
    color_key = class_palette(names)
    label = pd.Categorical.from_codes(labels, names)

    def factory():
        player = pn.widgets.DiscretePlayer(name="epoch", options=list(epochs), value=epochs[0], interval=700,
                                           loop_policy="loop", show_loop_controls=True)
        instrument_player(player, log)

        def points(i, epoch):
            e = epochs.index(epoch)
            frame = pd.DataFrame({"x": values[e, i, :, 0], "y": values[e, i, :, 1], "label": label})
            return hv.Points(frame, ["x", "y"], "label")

        plots = []
        for i, layer in enumerate(layers):
            dmap = hv.DynamicMap(pn.bind(points, i, player))
            shaded = dynspread(rasterize(dmap, aggregator=ds.count_cat("label"), width=LAYER_SIZE, height=LAYER_SIZE))
            plots.append(shaded.opts(cmap=color_key, title=layer, width=LAYER_SIZE, height=LAYER_SIZE,
                                     xaxis=None, yaxis=None, framewise=False, show_legend=False))
        sessions.append(SimpleNamespace(player=player, doc=pn.state.curdoc))
        return pn.Column(player, pn.pane.HoloViews(hv.Layout(plots).cols(4), linked_axes=False))

    return factory


# -- the browser side -------------------------------------------------------------------------------
# ``kind`` picks what a plot's picture is: "nm" and "image" watch each titled plot's image array
# (plus, for "nm", the checksums of tests/ui/conftest.py), "scatter" each scatter's x array.
_CURRENT_JS = """
  const current = () => {
    const out = new Map();
    const doc = Bokeh.documents[0];
    for (const m of doc.all_models) {
      if (!m.renderers || !m.title || !m.title.text) continue;
      for (const r of m.renderers) {
        const data = r.data_source && r.data_source.data;
        if (!data || !r.glyph) continue;
        if (kind === "scatter" && r.glyph.type === "Scatter") out.set(m.title.text, data.x);
        if (kind !== "scatter" && data.image && data.image.length) out.set(m.title.text, data.image[0]);
      }
    }
    return out;
  };
"""

PLOTS_JS = "(kind) => {" + _CURRENT_JS + " return window.Bokeh && Bokeh.documents.length ? current().size : 0; }"

# Starts a step and returns at once; the result lands in ``window.__benchStep``, which Python waits
# for with Playwright's own timeout (a page busy painting cannot time itself out).
STEP_JS = (
    "({button, kind, timeoutMs}) => {\n  const checksums = " + IMAGE_CHECKSUMS.strip() + ";\n" + _CURRENT_JS
    + """
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  const before = current();
  const sumsBefore = kind === "nm" ? checksums() : null;
  window.__benchStep = null;
  const t0 = performance.now();
  button.click();
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
    const ms = performance.now() - t0;
    // Checked after the clock stops: summing 4 x 130,000 pixels per frame took about 50 ms of the
    // page's main thread, which is the instrument's cost, not the dashboard's.
    let unchanged = [];
    if (kind === "nm") {
      const sums = checksums();
      unchanged = Object.keys(sumsBefore).filter((title) => !(title in sums) || sums[title] === sumsBefore[title]);
    }
    return {timeout: false, ms, arrived_ms: arrived, plots: before.size, unchanged};
  })().then((result) => { window.__benchStep = result; });
}"""
)
STEP_RESULT_JS = "() => window.__benchStep"


# Counts the websocket payload in the page itself. Playwright's ``framereceived`` would hand every
# frame to this Python process base64-encoded: decoding 2 MB per step there took CPU and the GIL
# from the Panel server in the same process, on a 2-core machine (py-spy, RESULTS-dashboard.md).
WEBSOCKET_COUNTER_JS = """
(() => {
  const Native = window.WebSocket;
  const encoder = new TextEncoder();
  window.__ws = {bytes: 0, frames: 0, last: performance.now()};
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => {
        const data = event.data;
        window.__ws.bytes += typeof data === "string" ? encoder.encode(data).length : (data.byteLength ?? data.size);
        window.__ws.frames += 1;
        window.__ws.last = performance.now();
      });
    }
  };
})();
"""


class FrameCounter:
    """Websocket payload bytes and frames received by one page, and ms since the last frame."""

    def __init__(self, page):
        self.page = page

    def _read(self) -> dict:
        return self.page.evaluate("() => ({...window.__ws, quiet: performance.now() - window.__ws.last})")

    @property
    def received(self) -> int:
        return self._read()["bytes"]

    @property
    def frames(self) -> int:
        return self._read()["frames"]

    @property
    def quiet_s(self) -> float:
        return self._read()["quiet"] / 1e3


@dataclass
class Page:
    page: object
    context: object
    counter: FrameCounter
    errors: list[str]
    load_s: float

    def close(self) -> None:
        self.context.close()


class StepTimeout(RuntimeError):
    pass


def open_page(browser, url: str, kind: str, n_plots: int, timeout_s: float) -> Page:
    """Open ``url`` in a fresh context and wait until its ``n_plots`` plots are drawn and idle."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.add_init_script(WEBSOCKET_COUNTER_JS)
    counter, errors = FrameCounter(page), []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    start = time.monotonic()
    try:
        page.goto(url, timeout=timeout_s * 1e3)
        page.wait_for_function(PLOTS_JS, arg=kind, polling=100, timeout=timeout_s * 1e3)
        if n_plots and page.evaluate(PLOTS_JS, kind) < n_plots:
            page.wait_for_function(f"(kind) => ({PLOTS_JS})(kind) >= {n_plots}", arg=kind, polling=100,
                                   timeout=timeout_s * 1e3)
        page.wait_for_function(DOCUMENT_IDLE, polling=100, timeout=timeout_s * 1e3)
    except Exception:
        context.close()
        raise
    load_s = time.monotonic() - start
    handle = Page(page, context, counter, errors, load_s)
    settle(handle, lambda: True, timeout_s)
    return handle


def settle(page: Page, server_done, timeout_s: float, quiet_s: float = 0.3) -> None:
    """Wait until the server has finished, no frame arrived for ``quiet_s`` and the document is idle."""
    deadline = time.monotonic() + timeout_s
    while True:
        page.page.wait_for_timeout(50)
        if server_done() and page.counter.quiet_s >= quiet_s and page.page.evaluate(DOCUMENT_IDLE):
            return
        if time.monotonic() > deadline:
            raise StepTimeout(f"the page did not settle within {timeout_s:.0f} s")


def run_steps(page: Page, log: ServerLog, kind: str, n_steps: int, position: list[int], timeout_s: float,
              budget_s: float | None = None, progress: str = "", warmup: int = WARMUP_STEPS) -> list[dict]:
    """Click through ``warmup + n_steps`` player steps; return the measured ones.

    ``position`` is the player's epoch index, updated in place: steps go forward to the last
    epoch and back, one epoch at a time. With ``budget_s``, stops once that many seconds of
    measured steps have passed (at least three steps are attempted).
    """
    measured, started = [], time.monotonic()
    for i in range(warmup + n_steps):
        if position[1] > 0 and position[0] == N_EPOCHS - 1:
            position[1] = -1
        elif position[1] < 0 and position[0] == 0:
            position[1] = 1
        button = page.page.locator("button.next" if position[1] > 0 else "button.previous").first.element_handle()
        received, mark = page.counter.received, log.mark()
        page.page.evaluate(STEP_JS, {"button": button, "kind": kind, "timeoutMs": timeout_s * 1e3})
        try:
            result = page.page.wait_for_function(STEP_RESULT_JS, polling=100, timeout=timeout_s * 1e3).json_value()
        except PlaywrightTimeout:
            raise StepTimeout(f"step {i + 1}: the pictures were not painted within {timeout_s:.0f} s") from None
        if result["timeout"]:
            raise StepTimeout(f"step {i + 1}: the pictures did not change within {timeout_s:.0f} s")
        if result.get("unchanged"):
            raise RuntimeError(f"step {i + 1}: new image arrays arrived but the pictures of "
                               f"{', '.join(result['unchanged'])} are the same as before")
        position[0] += position[1]
        settle(page, lambda m=mark: len(log.handled) > m[1], timeout_s)
        step = {"ms": result["ms"], "arrived_ms": result["arrived_ms"], "bytes": page.counter.received - received,
                **log.since(mark)}
        if i >= warmup:
            measured.append(step)
            print(f"\r  {progress}: step {len(measured)}/{n_steps} {step['ms']:8.0f} ms", end="", file=sys.stderr)
            if budget_s is not None and len(measured) >= 3 and time.monotonic() - started > budget_s:
                break
    print(file=sys.stderr)
    return measured


def on_session(doc, fn, *args) -> None:
    """Run ``fn(*args)`` on the Bokeh session's event loop (documents are not thread-safe)."""
    from panel.io.state import set_curdoc

    def call():
        with set_curdoc(doc):
            fn(*args)

    doc.add_next_tick_callback(call)


def session_memory(browser, url: str, kind: str, timeout_s: float) -> dict:
    """Memory this process gains when one more browser session opens the page."""
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    tracemalloc.start()
    page = open_page(browser, url, kind, N_LAYERS, timeout_s)
    traced, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    after = process.memory_info().rss
    page.close()
    return {"rss_mb": (after - before) / MB, "traced_mb": traced / MB, "traced_peak_mb": traced_peak / MB,
            "load_s": page.load_s}


@contextmanager
def served(factory):
    """Serve ``factory`` on a free local port in a thread; yields the URL."""
    port = free_port()
    server = pn.serve({"/": factory}, port=port, address="127.0.0.1", threaded=True, show=False, verbose=False,
                      websocket_origin=[f"127.0.0.1:{port}"], start=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Panel server on port {port} did not start within 30 s") from None
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        # Stopping cancels websocket writes still pending for closed pages; tornado would log each.
        tornado_log = logging.getLogger("tornado.application")
        level = tornado_log.level
        tornado_log.setLevel(logging.CRITICAL)
        try:
            server.stop()
            server.join(timeout=30)  # a stopped thread is skipped by pn.state.reset()
            pn.state.reset()
        finally:
            tornado_log.setLevel(level)
        gc.collect()


# -- statistics and one configuration -------------------------------------------------------------------
def summarize(steps: list[dict]) -> dict:
    def pct(key, q):
        values = [s[key] for s in steps if s.get(key) is not None]
        if not values:
            return None
        return float(np.percentile(values, q))

    return {
        "steps": len(steps),
        "p50_ms": pct("ms", 50), "p95_ms": pct("ms", 95), "arrived_p50_ms": pct("arrived_ms", 50),
        "server_p50_ms": pct("server_ms", 50), "work_p50_ms": pct("work_ms", 50), "push_p50_ms": pct("push_ms", 50),
        "mb_per_step": statistics.median([s["bytes"] for s in steps]) / MB if steps else None,
        "ahead_steps": sum(1 for s in steps if s.get("ahead")),
        "raw": steps,
    }


def facts_read_seconds(path: Path) -> float:
    """Seconds to open the run as the App does (``RunFacts.open``: label, prediction, loss read).

    Called before the first session, so this is the one read that sessions then share.
    """
    start = time.perf_counter()
    RunFacts.open(path)
    return time.perf_counter() - start


def change(page: Page, view: TimedEmbeddingView, fn, *args, repaints: bool = True, timeout_s: float = 60) -> None:
    """Run ``fn(*args)`` on the session's event loop; wait for its repaint (if any) and a settled page."""
    mark = view.bench_log.mark()
    done = []
    on_session(view.bench_doc, lambda: (fn(*args), done.append(True)))
    settle(page, lambda: bool(done) and (not repaints or len(view.bench_log.push) > mark[2]), timeout_s)


def bench_trajectories(page: Page, app: App, n_steps: int, timeout_s: float) -> dict:
    """Issue 9: the same steps with and without trajectories of 1,000 selected samples (see the docstring)."""
    state, view = app.state, app.embeddings
    painter, epochs = view.painter, state.scene.epochs
    ids = np.sort(np.random.default_rng([SEED, 3]).choice(state.scene.samples, TRAJECTORY_SAMPLES, replace=False))
    change(page, view, state.select, ids, timeout_s=timeout_s)
    n = len(state.scene)
    cases = {("off", True): "trajectories off", ("selection", True): "trajectories",
             ("off", False): "trajectories off cold", ("selection", False): "trajectories cold"}
    steps = {case: [] for case in cases.values()}
    for block, first in enumerate(range(0, n_steps, TRAJECTORY_BLOCK)):
        start, direction = TRAJECTORY_STARTS[block % len(TRAJECTORY_STARTS)]
        for (mode, ahead), case in cases.items():
            view.bench_ahead = ahead
            painter._ahead = None  # nothing rendered ahead for another case is used
            if painter.trajectories != mode:
                before = page.page.evaluate(IMAGE_CHECKSUMS)
                change(page, view, setattr, painter, "trajectories", mode, timeout_s=timeout_s)
                same = [title for title, value in page.page.evaluate(IMAGE_CHECKSUMS).items() if before.get(title) == value]
                if same and state.epoch != epochs[0]:  # no path is drawn at the first epoch
                    raise RuntimeError(f"trajectories {mode!r} did not change the pictures of {', '.join(same)}")
            change(page, view, setattr, state, "epoch", epochs[start], repaints=state.epoch != epochs[start],
                   timeout_s=timeout_s)
            steps[case] += run_steps(page, view.bench_log, "nm", min(TRAJECTORY_BLOCK, n_steps - first),
                                     [start, direction], timeout_s, warmup=1,
                                     progress=f"NeuroMapper {n:,}, {TRAJECTORY_SAMPLES:,} selected, {case}, block {block + 1}")
    view.bench_ahead = True
    change(page, view, setattr, painter, "trajectories", "off", timeout_s=timeout_s)
    out = {case: {**summarize(measured), "selected": int(len(state.selection))} for case, measured in steps.items()}
    out["trajectories"]["paths_drawn"] = int(painter.path_members(painter.view_state()).size)
    return out


def bench_neuromapper(browser, run_path: Path, values: np.ndarray, args) -> dict:
    """The dashboard: steps without and with a selection (and trajectories), then one more session's memory."""
    n = values.shape[2]
    out = {"facts_read_s": {"RunFacts.open (on-disk chunks), once per server": facts_read_seconds(run_path)}}
    embedding = embedding_array(values, RunFacts.open(run_path).ds)
    apps: list[App] = []

    def factory():
        app = App(run_path, embedding=embedding, dispatch=_session_dispatch())
        pn.state.on_session_destroyed(lambda _context: app.dispose())
        template = app.template()
        app.embeddings.bench_doc = pn.state.curdoc
        instrument_player(app_player(template), app.embeddings.bench_log)
        apps.append(app)
        return template

    with timed_pages(), reduction_returns(embedding), served(factory) as url:
        page = open_page(browser, url, "nm", N_LAYERS, args.load_timeout)
        try:
            app = apps[-1]
            view = app.embeddings
            if app.state.progress is not None or app.state.scene is None:
                raise RuntimeError(f"the session is not showing the embedding at rest: {app.state.status!r}")
            out["load_s"] = page.load_s
            position = [0, 1]

            def steps_both_ways(case: str, label: str) -> None:
                """Steps as shipped (pictures rendered ahead), then cold (every step renders)."""
                steps = run_steps(page, view.bench_log, "nm", args.steps, position, args.step_timeout,
                                  progress=f"NeuroMapper {n:,}{label}")
                out[case] = summarize(steps)
                view.bench_ahead, view.painter._ahead = False, None
                steps = run_steps(page, view.bench_log, "nm", args.steps, position, args.step_timeout,
                                  progress=f"NeuroMapper {n:,}{label}, cold")
                out[f"{case} cold"] = summarize(steps)
                view.bench_ahead = True

            steps_both_ways("none", "")
            e = position[0]
            box = selection_box(values[e, 0, :, 0], values[e, 0, :, 1])
            change(page, view, view.painter.select_box, "layer0", box, timeout_s=args.step_timeout)
            selected = len(app.state.selection)
            steps_both_ways("selection", " + selection")
            out["selection"].update(selected=selected, box=box, selected_at_epoch=e)
            if n == args.trajectory_size:
                out.update(bench_trajectories(page, app, args.steps, args.step_timeout))
            out["errors"] = list(page.errors)
        finally:
            page.close()
        out["session"] = session_memory(browser, url, "nm", args.load_timeout)
    for app in apps:  # their sessions may outlive the stopped server (no on_session_destroyed then)
        app.dispose()
    apps.clear()
    return out


def bench_reference(browser, factory_of, values: np.ndarray, kind: str, args, with_selection: bool,
                    n_steps: int) -> dict:
    """A reference page (WebGL scatter or HoloViews tutorial): steps, selection, session memory."""
    log, sessions = ServerLog(), []
    n = values.shape[2]
    out = {}
    name = f"{args.reference_backend} scatter" if kind == "scatter" else "HoloViews rasterize"
    with served(factory_of(log, sessions)) as url:
        try:
            page = open_page(browser, url, kind, N_LAYERS, args.reference_timeout)
        except Exception as exc:  # too slow or crashed: reported, not fatal
            return {"error": f"page did not load within {args.reference_timeout:.0f} s ({type(exc).__name__})"}
        out["load_s"] = page.load_s
        position = [0, 1]
        try:
            steps = run_steps(page, log, kind, n_steps, position, args.reference_timeout,
                              budget_s=args.reference_budget, progress=f"{name} {n:,}")
            out["none"] = summarize(steps)
            if with_selection:
                e = position[0]
                indices = box_indices(values[e, 0, :, 0], values[e, 0, :, 1],
                                      selection_box(values[e, 0, :, 0], values[e, 0, :, 1]))
                frames = page.counter.frames
                on_session(sessions[-1].doc, sessions[-1].select, indices)
                settle(page, lambda: page.counter.frames > frames, args.reference_timeout)
                steps = run_steps(page, log, kind, n_steps, position, args.reference_timeout,
                                  budget_s=args.reference_budget, progress=f"{name} {n:,} + selection")
                out["selection"] = {**summarize(steps), "selected": len(indices)}
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            out["errors"] = list(page.errors)
            page.close()
        if "error" not in out:
            try:
                out["session"] = session_memory(browser, url, kind, args.reference_timeout)
            except Exception as exc:
                out["session"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def memory_needed(n: int) -> float:
    """Rough bytes a size needs here (generous: sessions now share one scene and one copy of the facts)."""
    coords = N_EPOCHS * N_LAYERS * n * 2 * 4
    facts = N_EPOCHS * n * (2 + 4) * 3  # prediction + loss: run arrays and the scene's copies
    return coords + 2 * (coords + facts)


# -- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: sizes {QUICK['sizes']}, {QUICK['steps']} steps, no tutorial, a "
                             f"{QUICK['reference_budget']:.0f} s reference budget, trajectories at the first size "
                             "(options given explicitly still win)")
    parser.add_argument("--sizes", default=None,
                        help="points per layer, comma-separated (default 100000,1000000,10000000)")
    parser.add_argument("--steps", type=int, default=None, help="measured player steps per configuration (default 20)")
    parser.add_argument("--trajectory-size", type=int, default=None,
                        help="points per layer at which trajectories of 1,000 selected samples are timed "
                             "(default 1000000; 0 skips)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to this JSON file")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "neuromapper-bench-dashboard",
                        help="directory for the synthetic runs, reused across invocations")
    parser.add_argument("--no-reference", action="store_true", help="skip the scatter reference")
    parser.add_argument("--reference-backend", choices=("webgl", "canvas"), default="webgl",
                        help="Bokeh output_backend of the scatter reference (default webgl, as the issue asks)")
    parser.add_argument("--tutorial-steps", type=int, default=None,
                        help="steps of HoloViews' tutorial rasterize (0 skips; default 5)")
    parser.add_argument("--tutorial-size", type=int, default=1_000_000,
                        help="points per layer at which the tutorial rasterize runs (default 1000000)")
    parser.add_argument("--load-timeout", type=float, default=300, help="seconds for a dashboard page to load")
    parser.add_argument("--step-timeout", type=float, default=60, help="seconds for one dashboard step")
    parser.add_argument("--reference-timeout", type=float, default=60,
                        help="seconds for a reference page to load or take one step (default 60)")
    parser.add_argument("--reference-budget", type=float, default=None,
                        help="seconds of reference steps per configuration before stopping early (default 90)")
    args = parser.parse_args(argv)
    defaults = {"sizes": "100000,1000000,10000000", "steps": 20, "tutorial_steps": 5, "reference_budget": 90.0}
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)
    try:
        sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--sizes: expected comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < N_CLASSES or args.steps < 1:
        parser.error(f"--sizes must be integers >= {N_CLASSES} and --steps positive")
    if args.trajectory_size is None:
        args.trajectory_size = sizes[0] if args.quick else 1_000_000
    if args.trajectory_size and args.trajectory_size not in sizes:
        parser.error(f"--trajectory-size {args.trajectory_size} is not one of --sizes {sizes}")
    if args.trajectory_size and args.trajectory_size < TRAJECTORY_SAMPLES:
        parser.error(f"--trajectory-size must be at least {TRAJECTORY_SAMPLES} points")
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: install Debian's chromium (`make chromium`)")

    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"synthetic runs cached in {args.cache}", file=sys.stderr)
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "benchmarks/bench_dashboard.py", *(sys.argv[1:] if argv is None
                                                                                     else argv)]),
        "machine": {"cpus": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / 2**30,
                    "python": platform.python_version(), "load_before": os.getloadavg()},
        "versions": {name: __import__(name).__version__ for name in ("panel", "bokeh", "holoviews", "datashader",
                                                                     "numpy", "numba")},
        "epochs": N_EPOCHS, "layers": N_LAYERS, "classes": N_CLASSES, "steps": args.steps,
        "select_fraction": SELECT_FRACTION, "reference_backend": args.reference_backend,
        "trajectory_size": args.trajectory_size, "trajectory_samples": TRAJECTORY_SAMPLES, "sizes": {},
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        results["versions"]["chromium"] = browser.version
        reference_failed_at = None  # a reference that timed out is not tried again at larger sizes
        try:
            for n in sizes:
                entry = results["sizes"][str(n)] = {"points_per_layer": n}
                available = psutil.virtual_memory().available
                if memory_needed(n) > 0.9 * available:
                    entry["skipped"] = (f"needs about {memory_needed(n) / 2**30:.1f} GiB, "
                                        f"{available / 2**30:.1f} GiB available")
                    print(f"{n:,} points: skipped, {entry['skipped']}", file=sys.stderr)
                    continue
                start = time.monotonic()
                path = build_run(args.cache / f"run-{n}", n)
                entry["run_build_s"] = time.monotonic() - start
                start = time.monotonic()
                values = synthetic_embedding(synthetic_labels(n))
                entry["embedding_s"] = time.monotonic() - start
                print(f"{n:,} points: run {path} ({entry['run_build_s']:.1f} s), embedding "
                      f"{values.nbytes / MB:,.0f} MB ({entry['embedding_s']:.1f} s)", file=sys.stderr)
                entry["neuromapper"] = bench_neuromapper(browser, path, values, args)
                gc.collect()
                labels = synthetic_labels(n)
                epochs = list(range(N_EPOCHS))
                layers = [f"layer{i}" for i in range(N_LAYERS)]
                if not args.no_reference and reference_failed_at is not None:
                    entry["webgl"] = {"error": f"not attempted: it did not finish at {reference_failed_at:,} points"}
                elif not args.no_reference:
                    stride = max(1, n // 1_000_000)
                    bounds = {layer: robust_bounds(values[:, i, ::stride, 0], values[:, i, ::stride, 1])
                              for i, layer in enumerate(layers)}
                    factory_of = partial(scatter_app, values, labels, epochs, layers, bounds, args.reference_backend)
                    entry["webgl"] = bench_reference(browser, factory_of, values, "scatter", args, True, args.steps)
                    if "none" not in entry["webgl"]:
                        reference_failed_at = n
                if args.tutorial_steps and n == args.tutorial_size:
                    factory_of = partial(tutorial_app, values, labels, epochs, layers)
                    entry["tutorial"] = bench_reference(browser, factory_of, values, "image", args, False,
                                                        args.tutorial_steps)
                del values
                gc.collect()
        finally:
            browser.close()
    results["machine"]["load_after"] = os.getloadavg()
    results["bar"] = check_bar(results)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")
        print(f"\nfigures written to {args.json}")
    return results


def _p50(results: dict, n: int, case: str) -> float | None:
    entry = results["sizes"].get(str(n), {})
    return entry.get("neuromapper", {}).get(case, {}).get("p50_ms")


def check_bar(results: dict) -> list[dict]:
    """The issue's bar, each as {check, limit, value, verdict}; unmeasured sizes say so."""
    checks = []

    def add(name, value, limit, unit="ms"):
        verdict = "not measured" if value is None else ("PASS" if value <= limit else "FAIL")
        checks.append({"check": name, "value": value, "limit": limit, "unit": unit, "verdict": verdict})

    add("p50, 4 x 1,000,000 points, no selection", _p50(results, 1_000_000, "none"), BAR["1M"])
    add("p50, 4 x 1,000,000 points, active linked selection", _p50(results, 1_000_000, "selection"),
        BAR["1M selection"])
    a, b = _p50(results, 1_000_000, "none"), _p50(results, 100_000, "none")
    add("p50 at 4 x 1,000,000 / p50 at 4 x 100,000", None if a is None or b is None else a / b, BAR["1M / 100k"], "x")
    add("p50, 4 x 10,000,000 points, no selection", _p50(results, 10_000_000, "none"), BAR["10M"])
    a, b = _p50(results, 1_000_000, "trajectories"), _p50(results, 1_000_000, "trajectories off")
    add(f"p50 with - without trajectories of {TRAJECTORY_SAMPLES:,} selected, 4 x 1M",
        None if a is None or b is None else a - b, BAR["1M trajectories"])
    return checks


def _fmt(value, spec: str, missing: str = "-") -> str:
    """``format(value, spec)``, or ``missing`` padded to the same width when there is no value."""
    width = int(spec.split(".")[0] or 0)
    return missing.rjust(width) if value is None else format(value, spec)


def report(r: dict) -> None:
    """Print the figures of :func:`main` as plain-text tables."""
    m = r["machine"]
    v = r["versions"]
    ref_name = {"webgl": "WebGL", "canvas": "canvas"}[r["reference_backend"]]
    print(f"NeuroMapper dashboard player steps, {r['date']}: {m['cpus']} CPUs, {m['memory_gb']:.0f} GiB, "
          f"load average {m['load_before'][0]:.2f} before / {m['load_after'][0]:.2f} after")
    print(f"panel {v['panel']}, bokeh {v['bokeh']}, holoviews {v['holoviews']}, datashader {v['datashader']}, "
          f"chromium {v['chromium']} (headless, WebGL on SwiftShader)")
    print(f"{r['layers']} layers x {r['epochs']} epochs x {r['classes']} classes; {r['steps']} measured steps per "
          f"row after {WARMUP_STEPS} warm-up steps; selection = {r['select_fraction']:.0%} of the points (box in layer0)")
    print("step = click on the player -> all 4 layer pictures changed and painted (ms, in the page); "
          "cold = the same with nothing rendered ahead; server = value received -> handled (ms);\n"
          "MB = websocket payload per step (10^6 bytes); session MB = server RSS gained by one more session; "
          f"speed-up = {ref_name} p50 / NeuroMapper p50\n")
    header = (f"{'points/layer':>12} | {'selection':<11} | {'p50 ms':>7} | {'p95 ms':>7} | {'cold p50':>8} | {'server ms':>9} | "
              f"{'MB/step':>7} | {'session MB':>10} | {ref_name + ' p50':>10} | {ref_name + ' MB':>8} | {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    notes = []
    for key, entry in r["sizes"].items():
        n = int(key)
        if "skipped" in entry:
            print(f"{n:>12,} | skipped: {entry['skipped']}")
            continue
        nm, webgl = entry["neuromapper"], entry.get("webgl")
        for case, label in (("none", "none"), ("selection", "active"), ("trajectories off", "1k, paths -"),
                            ("trajectories", "1k, paths")):
            s = nm.get(case)
            if s is None:
                continue
            ref = (webgl or {}).get(case)
            if case.startswith("trajectories"):
                ref_p50, ref_mb, speed = "-", "-", "-"
            elif webgl is None:
                ref_p50, ref_mb, speed = "not run", "-", "-"
            elif ref is None:
                ref_p50, ref_mb, speed = "no result", "-", "-"
                notes.append(f"{ref_name} scatter at {n:,} ({label} selection): {webgl.get('error', 'not measured')}")
            else:
                ref_p50 = f"{ref['p50_ms']:.0f}" + ("*" if ref["steps"] < r["steps"] else "")
                ref_mb = f"{ref['mb_per_step']:.1f}"
                speed = f"{ref['p50_ms'] / s['p50_ms']:.1f}x"
                if ref["steps"] < r["steps"]:
                    notes.append(f"* {ref_name} scatter at {n:,} ({label} selection): only {ref['steps']} steps within the "
                                 "time budget")
            session = nm["session"]["rss_mb"]
            cold = nm.get(f"{case} cold", {}).get("p50_ms")
            print(f"{n:>12,} | {label:<11} | {s['p50_ms']:7.0f} | {s['p95_ms']:7.0f} | {_fmt(cold, '8.0f')} | "
                  f"{_fmt(s['server_p50_ms'], '9.0f'):>9} | "
                  f"{s['mb_per_step']:7.2f} | {session:10.0f} | {ref_p50:>10} | {ref_mb:>8} | {speed:>8}")
    for note in dict.fromkeys(notes):
        print(f"  {note}")
    print(f"  active = {r['select_fraction']:.0%} of the points selected by a box; 1k = {r['trajectory_samples']:,} "
          "samples selected at random, their trajectories drawn (paths) or not (paths -), the same steps interleaved")

    print("\nDetails (p50 over the measured steps)")
    print(f"  {'points/layer':>12} {'app':<28} {'selection':<21} {'load s':>7} {'data in':>8} {'painted':>8} "
          f"{'server':>7} {'handling':>8} {'render+push':>11} {'session MB (traced)':>20}")
    for key, entry in r["sizes"].items():
        if "skipped" in entry:
            continue
        for app_key, app in (("neuromapper", "NeuroMapper"), ("webgl", f"Bokeh {ref_name} scatter"),
                             ("tutorial", "HoloViews rasterize tutorial")):
            a = entry.get(app_key)
            if a is None:
                continue
            if "none" not in a:
                print(f"  {int(key):>12,} {app:<28} {'':<21} {a.get('error', 'no result')}")
                continue
            for case in ("none", "none cold", "selection", "selection cold", "trajectories off",
                         "trajectories off cold", "trajectories", "trajectories cold"):
                s = a.get(case)
                if s is None:
                    continue
                sess = a.get("session", {})
                memory = (f"{sess['rss_mb']:.0f} ({sess['traced_mb']:.0f})" if "rss_mb" in sess
                          else sess.get("error", "-")[:20])
                print(f"  {int(key):>12,} {app:<28} {case:<21} {a['load_s']:7.1f} {_fmt(s['arrived_p50_ms'], '8.0f')} "
                      f"{s['p50_ms']:8.0f} {_fmt(s['server_p50_ms'], '7.0f')} {_fmt(s['work_p50_ms'], '8.0f')} "
                      f"{_fmt(s['push_p50_ms'], '11.0f')} {memory:>20}   ({s['steps']} steps, "
                      f"{s['mb_per_step']:.2f} MB/step" + (f", {s['ahead_steps']} rendered ahead)" if app_key ==
                                                          "neuromapper" else ")"))
            if a.get("error"):
                print(f"  {'':>12} {'':<28} stopped: {a['error']}")
            if a.get("errors"):
                print(f"  {'':>12} {'':<28} browser console errors: {a['errors'][:3]}")
    for key, entry in r["sizes"].items():
        reads = entry.get("neuromapper", {}).get("facts_read_s")
        if reads:
            text = ", ".join(f"{seconds:.1f} s with {how}" for how, seconds in reads.items())
            print(f"  {int(key):>12,} opening the run and reading label, prediction, loss: {text}")
    print("  data in = click -> new pictures in the page; painted = two frames later; handling = server work"
          " alone (the reference player's 50 ms debounce left out); render+push = EmbeddingView._push_images (reference: its"
          " source update)")
    print("  cold = the same steps with nothing rendered ahead: every step renders its four pictures (as a jump to"
          " a far epoch, or a step against the player's direction, does)")

    for key, entry in r["sizes"].items():
        nm = entry.get("neuromapper", {})
        if "trajectories" not in nm:
            continue
        with_, without = nm["trajectories"], nm["trajectories off"]
        cold, cold_without = nm["trajectories cold"], nm["trajectories off cold"]
        print(f"\nTrajectories of {with_['selected']:,} selected samples (issue 9), 4 x {int(key):,} points: "
              f"{with_['paths_drawn']:,} paths per layer, the same steps with and without, interleaved in blocks")
        print(f"  as shipped: p50 {with_['p50_ms']:.0f} ms with, {without['p50_ms']:.0f} ms without: "
              f"{with_['p50_ms'] - without['p50_ms']:+.0f} ms (p95 {with_['p95_ms']:.0f} / {without['p95_ms']:.0f} ms; "
              f"{with_['ahead_steps']} / {without['ahead_steps']} of {with_['steps']} steps rendered ahead)")
        print(f"  cold:       p50 {cold['p50_ms']:.0f} ms with, {cold_without['p50_ms']:.0f} ms without: "
              f"{cold['p50_ms'] - cold_without['p50_ms']:+.0f} ms (render+push {_fmt(cold['push_p50_ms'], '.0f')} / "
              f"{_fmt(cold_without['push_p50_ms'], '.0f')} ms)")

    print("\nThe bar of the dashboard issue")
    for c in r["bar"]:
        value = "-" if c["value"] is None else (f"{c['value']:.2f}x" if c["unit"] == "x" else f"{c['value']:+.0f} ms"
                                                if c["check"].startswith("p50 with -") else f"{c['value']:.0f} ms")
        limit = f"{c['limit']:.1f}x" if c["unit"] == "x" else f"{c['limit']:.0f} ms"
        print(f"  {c['verdict']:<12} {c['check']:<60} {value:>10}  (limit {limit})")


if __name__ == "__main__":
    main()
