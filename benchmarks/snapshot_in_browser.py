"""Open HTML snapshots in Debian's chromium, offline, and print how fast they show and step.

Usage: ``python benchmarks/snapshot_in_browser.py SNAPSHOT.html [...]`` (files written by
``neuromapper export``). For each file: its size, the time from navigation to the first drawn
picture, and the median time of five player steps measured inside the page, from the click to
the pictures being drawn and to the next painted frame (after a 3 s pause in which the images
strategy decodes the other epochs ahead). Results are in ``benchmarks/RESULTS-export.md``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEP = """async () => {
  const before = Number(document.body.dataset.rendered);
  const t = performance.now();
  document.getElementById('nm-next').click();
  while (Number(document.body.dataset.rendered) === before) await new Promise((r) => setTimeout(r, 1));
  const drawn = performance.now() - t;
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return [drawn, performance.now() - t];
}"""


def main(paths: list[str]) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for name in paths:
            path = Path(name).resolve()
            context = browser.new_context(viewport={"width": 1800, "height": 1100}, offline=True)
            page = context.new_page()
            errors: list[str] = []
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            start = time.perf_counter()
            page.goto(path.as_uri())
            page.wait_for_function("() => document.body.dataset.rendered", timeout=120_000)
            first = time.perf_counter() - start
            page.wait_for_timeout(3_000)
            steps = [page.evaluate(STEP) for _ in range(5)]
            drawn = statistics.median(s[0] for s in steps)
            painted = statistics.median(s[1] for s in steps)
            strategy = page.evaluate("() => document.body.dataset.strategy")
            print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, {strategy}, first picture {first:.2f} s, "
                  f"step drawn {drawn:.0f} ms / painted {painted:.0f} ms (median of 5), console errors {len(errors)}")
            context.close()
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1:])
