"""Many users on one server: 20 Chromium sessions on one ``neuromapper serve`` for 5 minutes.

What is measured, and why
-------------------------
Issue 12 asks whether one dashboard server holds under many users: no errors, steps not much
slower than for one user, memory given back when the users leave, and no user ever seeing
another's state. This script serves a demo-like run (a synthetic run of the demo's shape: 2,000
probe samples, 4 layers, 11 epochs, 10 classes, its default embedding stored, so no session
waits for a reduction; ``--run`` takes a recorded run instead) with the real command,
``neuromapper serve RUN --port P --no-show`` in a process of its own (its stdout and stderr
captured to a file), and drives Debian's chromium through Playwright's async API: one browser,
one context per session (each its own window, so no page is a throttled background tab).

1. **single**: one session runs the workload below for ``--single`` seconds (default 60): the
   reference step times, measured in the same run on the same machine minutes. The session is
   then closed and the script waits ``--settle`` seconds (default 45; ``neuromapper serve``
   releases a closed page's session 30-35 s after it closes) and reads the server's memory:
   **before**. (The server's memory right after it started, **cold**, is printed too: the
   difference is what the first session loads once for every later one — modules, compiled
   functions, the run's arrays shared by sessions — and is not given back by design.)
2. **load**: ``--sessions`` sessions (default 20) open at once and each runs the workload for
   ``--duration`` seconds (default 300) from the moment the last of them has opened.
3. **after**: every session is closed; memory is read every 5 s for ``--after`` seconds
   (default 60). The bar: the last reading within 50 MB of **before**.

The workload, per session, in a loop:

* **step** the player three times (next; at the last epoch it turns back), each timed in the
  page from the click on ``button.next``/``button.previous`` to every layer's picture replaced
  and painted (``STEP_JS`` of ``benchmarks/bench_dashboard.py``, the same definition of a step
  as there), and checked to be a different picture;
* **toggle a class** (its button in the sidebar) off and on again; the legend's "N of 2,000
  samples drawn" must show exactly the samples of the other classes, then all of them;
* **select** with a box drag in one layer's plot (each session its own layer and place), read the
  legend's "· K selected", **step** twice more and check after each step that the legend shows
  exactly K selected at the new epoch;
* **hover** across the selected layer's plot until the sample card names a sample;
* **clear** the selection ("clear selection"); the legend must show no selection.

Each session knows what it did, so any legend that disagrees with it (a selection it never made
or already cleared, a different count, a class hidden by someone else) is counted as a
**cross-session** error: that is the check that no session ever sees another's selection.
Everything else a page reports is counted too: console errors, page errors, requests to any
host other than the server (refused), steps that timed out or did not change the pictures.
**Server errors** are the lines of the server's own output (stdout and stderr) that carry
``Traceback``, ``ERROR``, ``Error`` or ``Exception``; they are printed verbatim.

Memory is the resident set of the server process and any children (psutil), sampled every 2 s;
threads of the server process are read with it. The load average (``os.getloadavg``) is read
before, during (every sample) and after. Chromium runs on the same machine as the server, as it
does for anyone testing a dashboard on one box: on 2 cores the browser's 20 pages compete with the
server for CPU, so the step-time ratio includes the browser's share.

Usage::

    .venv/bin/python benchmarks/bench_load.py                      # 20 sessions, 300 s
    .venv/bin/python benchmarks/bench_load.py --duration 60 --sessions 5 --single 30   # a smoke run
    .venv/bin/python benchmarks/bench_load.py --results benchmarks/RESULTS-load.md

Exit status 0 when every bar is met (no server error, no console error, no cross-session error,
memory back within 50 MB), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import psutil
from playwright.async_api import TimeoutError as PlaywrightTimeout
from playwright.async_api import async_playwright

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the browser-test helpers live in tests/ui/conftest.py
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_dashboard import STEP_JS, STEP_RESULT_JS  # noqa: E402

from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, DOCUMENT_IDLE, free_port, listening, start_serve  # noqa: E402

VIEWPORT = {"width": 1400, "height": 900}  # four plots side by side, as on a laptop
MEMORY_BAR_MB = 50
ACTION_S = 180.0  # seconds a click, a drag or a step has to show its result in the legend
GRACE_S = 600  # seconds a session may take to finish its last cycle after the deadline
# BokehJS (ui_gestures.js, 3.9) takes a pointer held down for more than 300 ms before it moves
# 5 px for a press, not the start of a drag: the box-select tool then never runs. Under load the
# browser's renderers and Playwright's client share the 2 cores with the server, and the steps of
# a scripted drag can arrive that far apart. The page notes when the pointer went down and when it
# first moved, and a drag lost that way is said so.
PRESS_MS = 300
DRAG_TIMING = """() => {
  if (!window.__nmDragTiming) {
    window.__nmDragTiming = true;
    window.addEventListener("pointerdown", (e) => {
      window.__nmDrag = {x: e.clientX, y: e.clientY, down: e.timeStamp, moved: null};
    }, true);
    window.addEventListener("pointermove", (e) => {
      const d = window.__nmDrag;
      if (d && d.moved === null && e.buttons && Math.hypot(e.clientX - d.x, e.clientY - d.y) > 5) d.moved = e.timeStamp;
    }, true);
  }
  window.__nmDrag = null;
}"""
DRAG_HELD = "() => { const d = window.__nmDrag; return d && d.moved !== null ? d.moved - d.down : null; }"
DRAWN = re.compile(r"([\d,]+) of ([\d,]+) samples drawn at epoch (\d+)(?: · ([\d,]+) selected)?")
SERVER_PROBLEM = re.compile(r"Traceback|ERROR|Error|Exception")


def server_errors(log: str) -> list[str]:
    """One entry per error in the server's output: a traceback (with those chained to it) or an error line.

    A traceback is named by its last exception line, after what introduced it if anything did
    (``Task exception was never retrieved``); a line that logs an error outside a traceback counts
    on its own.
    """
    lines = log.splitlines()
    chained = ("During handling", "The above exception")
    errors, used, i = [], set(), 0
    while i < len(lines):
        if not lines[i].startswith("Traceback"):
            i += 1
            continue
        intro = [k for k in range(max(0, i - 2), i) if k not in used and SERVER_PROBLEM.search(lines[k])]
        j = i
        while True:  # to the chain's last exception line
            j += 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            k = j + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k < len(lines) and lines[k].startswith(chained):
                j = next((n for n in range(k, len(lines)) if lines[n].startswith("Traceback")), len(lines) - 1)
                continue
            break
        j = min(j, len(lines) - 1)
        used.update(range(intro[0] if intro else i, j + 1))
        first = lines[intro[0]] if intro else ""
        errors.append(f"{first} -> {lines[j]}" if first else lines[j])
        i = j + 1
    errors += [line for k, line in enumerate(lines) if k not in used and SERVER_PROBLEM.search(line)]
    return errors


def number(text: str) -> int:
    return int(text.replace(",", ""))


@dataclass
class Legend:
    drawn: int
    total: int
    epoch: int
    selected: int | None


@dataclass
class Figures:
    """What one phase's sessions measured."""

    steps: list[float] = field(default_factory=list)
    step_failures: list[str] = field(default_factory=list)
    cross_session: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    open_s: list[float] = field(default_factory=list)
    hovers: list[float] = field(default_factory=list)
    hover_misses: int = 0
    selections: int = 0
    not_applied: list[str] = field(default_factory=list)
    drags_pressed: int = 0  # drags not applied because the browser saw the pointer held still over PRESS_MS
    actions: dict = field(default_factory=dict)  # kind -> seconds from click to result shown
    selected_sizes: set = field(default_factory=set)
    toggles: int = 0
    cycles: int = 0
    busy_at_end: int = 0


class Session:
    """One browser session (its own context) and what it knows it did."""

    def __init__(self, index: int, context, page, figures: Figures, n_epochs: int, layers: int,
                 class_names: list[str], class_counts: dict[str, int], total: int):
        self.index, self.context, self.page, self.figures = index, context, page, figures
        self.n_epochs, self.layers = n_epochs, layers
        self.class_names, self.class_counts, self.total = class_names, class_counts, total
        self.epoch, self.direction = 0, 1
        self.selected: int | None = None  # what this session selected (the legend's K), or None
        self.unanswered_drag = False  # a box drag showed nothing within ACTION_S
        self.hidden: str | None = None

    # -- reading the page --------------------------------------------------------------------------
    async def legend(self) -> Legend | None:
        try:
            text = await self.page.locator(".nm-drawn").first.inner_text(timeout=30_000)
        except PlaywrightTimeout:
            return None
        match = DRAWN.search(text)
        if match is None:
            return None
        drawn, total, epoch, selected = match.groups()
        return Legend(number(drawn), number(total), int(epoch), None if selected is None else number(selected))

    async def settled_legend(self, timeout: float = 60.0, **want) -> Legend | None:
        """The legend once it shows this session's epoch (and ``want`` fields); the last one read if never."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.legend()
            if last is not None and last.epoch == self.epoch and all(getattr(last, k) == v for k, v in want.items()):
                return last
            await asyncio.sleep(0.2)
        return last

    def expected(self) -> tuple[int, int | None]:
        """(samples drawn, selected) as this session left its page: its hidden class, its selection."""
        return self.total - (self.class_counts[self.hidden] if self.hidden else 0), self.selected

    async def check(self, what: str, kind: str | None = None, started: float | None = None,
                    before: tuple[int, int | None] | None = None) -> None:
        """The legend agrees with what this session did (its epoch, classes and selection) within ACTION_S.

        ``kind`` and ``started`` time an action from its click to the legend showing its result;
        ``before`` is what the legend showed before the action, so a legend still showing it is the
        session's own action not applied yet (late), not another session's state.
        """
        drawn, selected = self.expected()
        legend = await self.settled_legend(timeout=ACTION_S, drawn=drawn, selected=selected)
        if legend is not None and legend.epoch == self.epoch and (legend.drawn, legend.selected) == (drawn, selected):
            if kind is not None:
                self.figures.actions.setdefault(kind, []).append(time.monotonic() - started)
            return
        shown = None if legend is None else (legend.drawn, legend.selected)
        if legend is None or legend.epoch != self.epoch:
            self.figures.step_failures.append(f"session {self.index} after {what}: the legend did not reach epoch "
                                              f"{self.epoch} within {ACTION_S:.0f} s ({legend})")
        elif shown == before:
            self.figures.not_applied.append(f"session {self.index}: {what} not applied within {ACTION_S:.0f} s "
                                            f"(the legend still shows {legend})")
        elif self.unanswered_drag and legend.selected is not None:
            self.figures.not_applied.append(f"session {self.index}: after {what} the page shows a selection of "
                                            f"{legend.selected}, which may be its own earlier drag that showed nothing "
                                            f"for {ACTION_S:.0f} s")
        else:
            self.figures.cross_session.append(
                f"session {self.index} after {what}: expected {drawn} drawn and selection {selected} at epoch "
                f"{self.epoch} (before: {before}); for {ACTION_S:.0f} s the page showed {legend}")

    # -- actions ---------------------------------------------------------------------------------------
    async def step(self, measured: bool = True) -> None:
        if self.direction > 0 and self.epoch == self.n_epochs - 1:
            self.direction = -1
        elif self.direction < 0 and self.epoch == 0:
            self.direction = 1
        button = await self.page.locator("button.next" if self.direction > 0 else "button.previous").first.element_handle()
        await self.page.evaluate(STEP_JS, {"button": button, "kind": "nm", "timeoutMs": 120_000})
        try:
            handle = await self.page.wait_for_function(STEP_RESULT_JS, polling=100, timeout=130_000)
            result = await handle.json_value()
        except PlaywrightTimeout:
            result = {"timeout": True}
        self.epoch += self.direction
        if result.get("timeout"):
            self.figures.step_failures.append(f"session {self.index}: a step to epoch {self.epoch} timed out")
        elif result.get("unchanged"):
            self.figures.step_failures.append(f"session {self.index}: step to epoch {self.epoch} left "
                                              f"{result['unchanged']} unchanged")
        elif measured:
            self.figures.steps.append(result["ms"])
        await self.check(f"a step to epoch {self.epoch}")

    async def toggle_class(self) -> None:
        name = self.class_names[self.index % len(self.class_names)]
        button = self.page.get_by_role("button", name=name, exact=True)
        for hide in (True, False):
            before, started = self.expected(), time.monotonic()
            await button.click()
            self.hidden = name if hide else None
            await self.check(f"{'hiding' if hide else 'showing'} class {name}", "class toggle", started, before)
        self.figures.toggles += 1

    async def plot_box(self, layer: int) -> dict:
        canvas = self.page.locator(".nm-layer").nth(layer).locator("canvas").first
        box = await canvas.bounding_box()
        return {"x": box["x"], "y": box["y"] + 30, "width": box["width"], "height": box["height"] - 30}

    async def select(self) -> None:
        layer = self.index % self.layers
        box = await self.plot_box(layer)
        # each session its own place: a box of 40% x 40% of its plot, moved along with its index
        fx, fy = 0.1 + 0.1 * (self.index % 5), 0.1 + 0.1 * ((self.index // 5) % 5)
        x0, y0 = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        mouse = self.page.mouse
        await self.page.evaluate(DRAG_TIMING)
        started = time.monotonic()
        await mouse.move(x0, y0)
        await mouse.down()
        await mouse.move(x0 + 0.4 * box["width"], y0 + 0.4 * box["height"], steps=8)
        await mouse.up()
        held = await self.page.evaluate(DRAG_HELD)
        legend = None
        while time.monotonic() < started + ACTION_S:
            legend = await self.legend()
            if legend is not None and legend.selected is not None:
                break
            await asyncio.sleep(0.2)
        if legend is None or legend.selected is None:
            # a drag the server never answered: later checks allow for it landing late
            self.unanswered_drag = True
            pressed = held is not None and held > PRESS_MS
            self.figures.drags_pressed += pressed
            self.figures.not_applied.append(
                f"session {self.index}: a box drag in layer {layer} showed no selection within {ACTION_S:.0f} s"
                + (f" (the pointer was held {held:.0f} ms before it moved: a press to BokehJS)" if pressed else ""))
            return
        self.figures.actions.setdefault("box selection", []).append(time.monotonic() - started)
        self.selected = legend.selected
        self.figures.selections += 1
        self.figures.selected_sizes.add(legend.selected)
        await self.check("its box selection")

    async def hover(self) -> None:
        box = await self.plot_box(self.index % self.layers)
        card = self.page.locator(".nm-card").last
        started = time.monotonic()
        for i in range(40):
            await self.page.mouse.move(box["x"] + box["width"] * (0.2 + 0.6 * (i % 8) / 7),
                                       box["y"] + box["height"] * (0.2 + 0.6 * (i // 8) / 4))
            await asyncio.sleep(0.1)
            try:
                text = await card.inner_text(timeout=5_000)
            except PlaywrightTimeout:
                text = ""
            if "true:" in text:  # the card of a focused sample
                self.figures.hovers.append(time.monotonic() - started)
                break
        else:
            self.figures.hover_misses += 1
        await self.page.mouse.move(3, 3)

    async def clear(self) -> None:
        before, started = self.expected(), time.monotonic()
        await self.page.get_by_role("button", name="clear selection", exact=True).click()
        self.selected = None
        await self.check(f"clearing its selection of {before[1]}", "clear selection", started, before)

    async def workload(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            for _ in range(3):
                await self.step()
            await self.toggle_class()
            await self.select()
            for _ in range(2):
                await self.step()
            await self.hover()
            if self.selected is not None:
                await self.clear()
            self.figures.cycles += 1


async def open_session(browser, url: str, index: int, figures: Figures, facts: dict) -> Session:
    context = await browser.new_context(viewport=VIEWPORT)
    netloc = url.split("/")[2]

    async def route(request_route):
        request_url = request_route.request.url
        if request_url.split("/")[2:3] == [netloc] or request_url.startswith(("data:", "blob:")):
            await request_route.continue_()
        else:
            figures.foreign.append(request_url)
            await request_route.abort()

    await context.route("**/*", route)
    page = await context.new_page()
    page.on("console", lambda msg: figures.console.append(f"session {index}: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda exc: figures.console.append(f"session {index}: {exc}"))
    started = time.monotonic()
    await page.goto(url, timeout=600_000)
    await page.wait_for_function(DOCUMENT_IDLE, polling=200, timeout=600_000)
    await page.locator(".nm-layer").nth(facts["layers"] - 1).wait_for(timeout=600_000)
    session = Session(index, context, page, figures, facts["n_epochs"], facts["layers"], facts["class_names"],
                      facts["class_counts"], facts["total"])
    await session.settled_legend(timeout=600)
    figures.open_s.append(time.monotonic() - started)
    await session.step(measured=False)  # a warm-up step, not counted
    return session


class Memory:
    """The server's resident memory (with children) and threads, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 2.0):
        self.process, self.interval = psutil.Process(pid), interval
        self.samples: list[tuple[float, str, float, int, float]] = []  # (t, phase, MB, threads, load1)
        self.phase = "cold"
        self.started = time.monotonic()

    def read(self) -> tuple[float, int]:
        rss = self.process.memory_info().rss
        for child in self.process.children(recursive=True):
            try:
                rss += child.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return rss / 2**20, self.process.num_threads()

    def sample(self) -> tuple[float, int]:
        mb, threads = self.read()
        self.samples.append((time.monotonic() - self.started, self.phase, mb, threads, os.getloadavg()[0]))
        return mb, threads

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def of(self, phase: str) -> list[float]:
        return [s[2] for s in self.samples if s[1] == phase]


def make_run(path: Path, args) -> Path:
    from neuromapper import reduce
    from neuromapper.synthetic import make_synthetic_run

    run = make_synthetic_run(path, n_samples=args.samples, n_epochs=args.epochs, n_layers=args.layers, dims=16)
    reduce(run)  # the default embedding: sessions show it at once
    return run


def run_facts(run: Path) -> dict:
    from neuromapper import open_run

    ds = open_run(run)
    names = [str(c) for c in ds["class"].values]
    labels = ds["label"].values
    return {"n_epochs": int(ds.sizes["epoch"]), "layers": int(ds.sizes["layer"]), "class_names": names,
            "class_counts": {name: int((labels == i).sum()) for i, name in enumerate(names)},
            "total": int(ds.sizes["sample"])}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def phase(browser, url: str, n: int, seconds: float, facts: dict, memory: Memory, name: str) -> Figures:
    figures = Figures()
    memory.phase = f"{name}-opening"
    sessions = await asyncio.gather(*(open_session(browser, url, i, figures, facts) for i in range(n)))
    print(f"  {name}: {n} session(s) open in {max(figures.open_s):.0f} s; running for {seconds:.0f} s", file=sys.stderr)
    memory.phase = name
    deadline = time.monotonic() + seconds
    status = asyncio.create_task(report_progress(name, figures, deadline))
    # a session's last cycle may run past the deadline; one that is still busy GRACE s after it is stopped
    done, busy = await asyncio.wait([asyncio.create_task(s.workload(deadline)) for s in sessions],
                                    timeout=seconds + GRACE_S)
    status.cancel()
    for task in busy:
        task.cancel()
    figures.busy_at_end = len(busy)
    for task in done:
        if task.exception() is not None:
            figures.step_failures.append(f"a session's workload failed: {task.exception()!r}")
    for s in sessions:
        await s.context.close()
    return figures


async def report_progress(name: str, figures: Figures, deadline: float) -> None:
    while True:
        await asyncio.sleep(30)
        print(f"  {name}: {deadline - time.monotonic():4.0f} s left; {figures.cycles} cycles, {len(figures.steps)} "
              f"steps (p50 {percentile(figures.steps, 50):.0f} ms), {len(figures.step_failures)} failures, "
              f"{len(figures.cross_session)} cross-session", file=sys.stderr)


async def main_async(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    loads = {"start": os.getloadavg()}
    try:
        run = Path(args.run) if args.run else make_run(work / "demo-like", args)
        facts = run_facts(run)
        port = free_port()
        log_path = work / "server.log"
        with open(log_path, "w") as log:
            server = start_serve(run, port, log)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 120
        while not listening(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"neuromapper serve did not start:\n{log_path.read_text()}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        memory = Memory(server.pid)
        cold_mb, cold_threads = memory.sample()
        sampler = asyncio.create_task(memory.run())
        try:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                print(f"single session for {args.single:.0f} s", file=sys.stderr)
                single = await phase(browser, url, 1, args.single, facts, memory, "single")
                memory.phase = "settle"
                await asyncio.sleep(args.settle)
                before_mb, before_threads = memory.sample()
                loads["load"] = os.getloadavg()
                print(f"{args.sessions} sessions for {args.duration:.0f} s", file=sys.stderr)
                load = await phase(browser, url, args.sessions, args.duration, facts, memory, "load")
                loads["closed"] = os.getloadavg()
                memory.phase = "after"
                closed_at = time.monotonic()
                after = []
                while (waited := time.monotonic() - closed_at) < args.after:
                    await asyncio.sleep(min(5.0, args.after - waited))
                    after.append((time.monotonic() - closed_at, *memory.sample()))
                await browser.close()
        finally:
            sampler.cancel()
            server.terminate()
            server.wait(timeout=60)
        loads["end"] = os.getloadavg()
        server_log = log_path.read_text()
    finally:
        if args.keep:
            print(f"run and server log kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    problems = server_errors(server_log)
    report = render(args, facts, single, load, memory, cold_mb, cold_threads, before_mb, before_threads, after,
                    problems, server_log, loads)
    print(report)
    if args.results:
        Path(args.results).write_text(report)
    ok = (not problems and not single.console and not load.console and not single.cross_session
          and not load.cross_session and not load.foreign and after and after[-1][1] - before_mb <= MEMORY_BAR_MB)
    return 0 if ok else 1


def render(args, facts, single, load, memory, cold_mb, cold_threads, before_mb, before_threads, after, problems,
           server_log, loads) -> str:
    import bokeh
    import panel

    def fmt_load(values):
        return ", ".join(f"{v:.2f}" for v in values)

    def fmt_s(values):
        if not values:
            return f"{'-':>10}"
        return f"{percentile(values, 50):.1f}/{percentile(values, 95):.1f}/{max(values):.0f}".rjust(10)

    during = memory.of("load")
    s50, s95 = percentile(single.steps, 50), percentile(single.steps, 95)
    l50, l95 = percentile(load.steps, 50), percentile(load.steps, 95)
    during_loads = [s[4] for s in memory.samples if s[1] == "load"]
    last_after = after[-1] if after else (float("nan"), float("nan"), 0)
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    lines = [
        f"NeuroMapper load benchmark, {datetime.now(timezone.utc).isoformat(timespec='seconds')}: "
        f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.python_version()}, "
        f"panel {panel.__version__}, bokeh {bokeh.__version__}, {CHROMIUM} (headless)",
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"run: {'--run ' + str(args.run) if args.run else 'synthetic, demo-like'}: {facts['total']:,} samples, "
        f"{facts['layers']} layers, {facts['n_epochs']} epochs, {len(facts['class_names'])} classes; "
        "`neuromapper serve` in its own process",
        f"load average (1, 5, 15 min): start {fmt_load(loads['start'])}; before the {args.sessions} sessions "
        f"{fmt_load(loads['load'])}; during (1 min, every 2 s) median {statistics.median(during_loads):.2f}, "
        f"max {max(during_loads):.2f}; sessions closed {fmt_load(loads['closed'])}; end {fmt_load(loads['end'])}",
        "",
        f"{'':34} {'single':>10} {'load':>10}",
        f"{'sessions':34} {1:>10} {args.sessions:>10}",
        f"{'seconds of workload':34} {args.single:>10.0f} {args.duration:>10.0f}",
        f"{'page open s (max)':34} {max(single.open_s):>10.1f} {max(load.open_s):>10.1f}",
        f"{'workload cycles (all sessions)':34} {single.cycles:>10} {load.cycles:>10}",
        f"{'measured steps':34} {len(single.steps):>10} {len(load.steps):>10}",
        f"{'step p50 ms':34} {s50:>10.0f} {l50:>10.0f}   ratio {l50 / s50:.1f}x",
        f"{'step p95 ms':34} {s95:>10.0f} {l95:>10.0f}   ratio {l95 / s95:.1f}x",
        f"{'steps failed (timeout, unchanged)':34} {len(single.step_failures):>10} {len(load.step_failures):>10}",
        f"{'sessions stopped busy at the end':34} {single.busy_at_end:>10} {load.busy_at_end:>10}",
        f"{'class toggles (off + on, checked)':34} {single.toggles:>10} {load.toggles:>10}",
        f"{'box selections (checked)':34} {single.selections:>10} {load.selections:>10}   "
        f"({len(load.selected_sizes)} different sizes under load)",
        *(f"{kind + ' s p50 / p95 / max':34} {fmt_s(single.actions.get(kind))} {fmt_s(load.actions.get(kind))}"
          for kind in ("class toggle", "box selection", "clear selection")),
        f"{'actions not applied within ' + format(ACTION_S, '.0f') + ' s':34} {len(single.not_applied):>10} "
        f"{len(load.not_applied):>10}",
        f"{'... drags held > ' + format(PRESS_MS) + ' ms before moving':34} {single.drags_pressed:>10} "
        f"{load.drags_pressed:>10}   (a press to BokehJS, not a drag)",
        f"{'hover answered p50 s (misses)':34} {percentile(single.hovers, 50):>6.1f} ({single.hover_misses}) "
        f"{percentile(load.hovers, 50):>6.1f} ({load.hover_misses})",
        f"{'cross-session errors':34} {len(single.cross_session):>10} {len(load.cross_session):>10}   "
        f"{verdict(not single.cross_session and not load.cross_session)} (no session saw another's selection)",
        f"{'console errors':34} {len(single.console):>10} {len(load.console):>10}   "
        f"{verdict(not single.console and not load.console)}",
        f"{'requests to other hosts (refused)':34} {len(single.foreign):>10} {len(load.foreign):>10}   "
        f"{verdict(not single.foreign and not load.foreign)}",
        f"server errors (tracebacks and error lines in its output): {len(problems)}   {verdict(not problems)}",
        "",
        "server memory (RSS with children, MB) and threads:",
        f"  cold (started, no session yet)           {cold_mb:8.0f} MB  {cold_threads:4} threads",
        f"  before (one session opened, closed, released after {args.settle:.0f} s)"
        f" {before_mb:8.0f} MB  {before_threads:4} threads",
        f"  during the {args.sessions} sessions: median {statistics.median(during):.0f} MB, max {max(during):.0f} MB, "
        f"max threads {max(s[3] for s in memory.samples if s[1] == 'load')}",
        "  after the sessions closed: " + ", ".join(f"{t:.0f} s {mb:.0f} MB/{th} thr" for t, mb, th in after),
        f"  {last_after[0]:.0f} s after: {last_after[1]:.0f} MB = before {last_after[1] - before_mb:+.0f} MB "
        f"(cold {last_after[1] - cold_mb:+.0f} MB)   {verdict(last_after[1] - before_mb <= MEMORY_BAR_MB)} "
        f"(within {MEMORY_BAR_MB} MB of before)",
    ]
    for title, items in (("step failures", single.step_failures + load.step_failures),
                         ("actions not applied", single.not_applied + load.not_applied),
                         ("cross-session errors", single.cross_session + load.cross_session),
                         ("console errors", single.console + load.console),
                         ("requests to other hosts", single.foreign + load.foreign),
                         ("server errors", problems)):
        if items:
            lines += ["", f"{title} ({len(items)}; first 20):", *(f"  {item}" for item in items[:20])]
    if problems:
        lines += ["", "server output (last 60 lines):", *server_log.splitlines()[-60:]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    parser.add_argument("--duration", type=float, default=300, help="seconds of the concurrent workload (default 300)")
    parser.add_argument("--single", type=float, default=60, help="seconds of the single-session reference (default 60)")
    parser.add_argument("--settle", type=float, default=45,
                        help="seconds after the single session closes before 'before' is read (default 45)")
    parser.add_argument("--after", type=float, default=60, help="seconds memory is followed after closing (default 60)")
    parser.add_argument("--run", default=None, help="a recorded run with its default embedding (default: a synthetic one)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=11)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--results", default=None, help="also write the report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the run and the server log (printed path)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
