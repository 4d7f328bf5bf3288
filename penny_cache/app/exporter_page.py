"""The exporter's landing page: the last 15 minutes of the shared counters, without Grafana.

A ``make run`` user has no Prometheus. The exporter therefore keeps a small history
itself: every few seconds ``Sampler`` collects the same registry ``/metrics`` serves (one
read of the shared totals in Redis), keeps the totals in a ring buffer, and
``/series.json`` turns consecutive samples into per-interval points. The page draws them
with inline SVG and script (no CDN: it works offline) and polls the JSON.

Invalidation lag is not in the shared counters: it is a per-process histogram
(``penny_cache_invalidation_lag_seconds``) on the service's own ``/metrics``, which the
exporter does not read. The third chart shows what the counters do carry about
invalidation: write-throughs published per second, with stale reads served and sequence
gaps (both should stay at 0) beside it. The page says so.
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from prometheus_client import CollectorRegistry

__all__ = ["LANDING_PAGE", "SAMPLED", "Sample", "Sampler", "series"]

WINDOW: Final = 15 * 60.0
# the exposition's name of each total the page plots, by the short name it uses
SAMPLED: Final = {
    "requests": "penny_cache_requests_total",
    "hits": "penny_cache_hits_total",
    "misses": "penny_cache_misses_total",
    "invalidations": "penny_cache_invalidations_total",
    "stale_served": "penny_cache_stale_served_total",
    "sequence_gaps": "penny_cache_sequence_gaps_total",
}


@dataclass(frozen=True)
class Sample:
    """The totals at wall-clock time ``t``; None when Redis could not be read."""

    t: float
    totals: Mapping[str, float] | None


def read_totals(registry: CollectorRegistry) -> Mapping[str, float] | None:
    """What ``/metrics`` would show now, reduced to ``SAMPLED``; None unless
    ``penny_cache_up`` is 1 (a gap on the chart, not a fake zero)."""
    found: dict[str, float] = {}
    wanted = {name: short for short, name in SAMPLED.items()}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "penny_cache_up":
                found["up"] = sample.value
            elif sample.name in wanted:  # hits: one sample per tier (near, redis)
                short = wanted[sample.name]
                found[short] = found.get(short, 0.0) + sample.value
    if found.pop("up", 0.0) != 1.0 or len(found) != len(SAMPLED):
        return None
    return found


class Sampler:
    """A ring buffer of totals, filled by a daemon thread every ``interval`` seconds."""

    def __init__(
        self,
        read: Callable[[], Mapping[str, float] | None],
        interval: float = 5.0,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.interval = interval
        self._read = read
        self._clock = clock
        self._samples: collections.deque[Sample] = collections.deque(
            maxlen=int(WINDOW / interval) + 1
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> Sample:
        """One reading; a failed read is kept as a gap (the collector logs why)."""
        try:
            totals = self._read()
        except Exception:  # the page must keep working while Redis is away
            totals = None
        taken = Sample(self._clock(), totals)
        with self._lock:
            self._samples.append(taken)
        return taken

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="penny-page-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)


def _point(before: Sample, after: Sample) -> dict[str, Any] | None:
    """The interval between two readings; None across a gap or a reset (a total that went
    down: ``penny-cache stats --reset``, or a flushed Redis)."""
    if before.totals is None or after.totals is None or after.t <= before.t:
        return None
    delta = {name: after.totals[name] - before.totals[name] for name in SAMPLED}
    if any(value < 0 for value in delta.values()):
        return None
    seconds = after.t - before.t
    lookups = delta["hits"] + delta["misses"]
    return {
        "t": round(after.t, 3),
        "seconds": round(seconds, 3),
        "hit_ratio": None if lookups == 0 else round(delta["hits"] / lookups, 6),
        "requests_per_s": round(delta["requests"] / seconds, 3),
        "invalidations_per_s": round(delta["invalidations"] / seconds, 3),
        "stale_served": delta["stale_served"],
        "sequence_gaps": delta["sequence_gaps"],
    }


def series(samples: list[Sample], interval: float) -> dict[str, Any]:
    """The JSON ``/series.json`` answers: points over the window, and the latest totals
    (those ``/metrics`` and ``penny-cache stats`` show)."""
    points = [p for a, b in itertools.pairwise(samples) if (p := _point(a, b))]
    latest = samples[-1] if samples else None
    return {
        "interval": interval,
        "window": WINDOW,
        "up": bool(latest and latest.totals is not None),
        "latest": None if latest is None or latest.totals is None else dict(latest.totals),
        "latest_t": None if latest is None else round(latest.t, 3),
        "points": points,
    }


def series_json(sampler: Sampler) -> bytes:
    return json.dumps(series(sampler.samples(), sampler.interval)).encode()


LANDING_PAGE: Final = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>penny_cache exporter</title>
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;max-width:60em;color:#222}
.chart{margin:0 0 1.2em}.chart h2{font-size:15px;margin:.2em 0}
svg{background:#fafafa;border:1px solid #ddd}
.note{color:#555;font-size:13px}#status{font-weight:bold}
</style></head><body>
<h1>penny_cache: the shared cache, last 15 minutes</h1>
<p class="note">The counters of every process of this namespace, read from Redis every
<span id="interval">?</span> s (the same totals as <a href="/metrics">/metrics</a> and
<code>penny-cache stats</code>). Counters accumulate across runs; status:
<span id="status">loading</span>. Also: <a href="/series.json">/series.json</a>,
<a href="/healthz">/healthz</a>.</p>
<div class="chart"><h2>Shared hit ratio (hits / lookups per interval; near hits included)</h2>
<svg id="hit_ratio" width="720" height="140" data-points="[]"></svg></div>
<div class="chart"><h2>Request rate (lookups per second, all processes)</h2>
<svg id="requests_per_s" width="720" height="140" data-points="[]"></svg></div>
<div class="chart"><h2>Invalidations published per second</h2>
<svg id="invalidations_per_s" width="720" height="140" data-points="[]"></svg>
<p class="note">Invalidation <em>lag</em> is measured by each service worker
(the histogram <code>penny_cache_invalidation_lag_seconds</code> on the service's
<code>/metrics</code>); this exporter only reads the shared counters, so it shows the
invalidations published instead, and the interval's stale reads served and sequence gaps
(both should be 0): <span id="faults">-</span>.</p></div>
<p id="latest" class="note" data-requests="" data-hits="" data-misses=""></p>
<script>
"use strict";
const W = 720, H = 140, PAD = 30, WINDOW = 900;
function draw(id, points, fixedMax) {
  const svg = document.getElementById(id);
  const shown = points.filter(p => p[1] !== null);
  svg.setAttribute("data-points", JSON.stringify(shown));
  const now = points.length ? points[points.length - 1][0] : Date.now() / 1000;
  const max = fixedMax || Math.max(1, ...shown.map(p => p[1])) * 1.1;
  const x = t => PAD + (W - PAD - 5) * (1 - (now - t) / WINDOW);
  const y = v => H - 15 - (H - 25) * v / max;
  let d = "";
  let pen = "M";
  for (const p of points) {
    if (p[1] === null) { pen = "M"; continue; }
    d += pen + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1) + " ";
    pen = "L";
  }
  const label = v => (fixedMax === 1 ? (100 * v).toFixed(0) + "%" : v.toFixed(1));
  svg.innerHTML =
    '<line x1="' + PAD + '" y1="' + y(0) + '" x2="' + W + '" y2="' + y(0) + '" stroke="#bbb"/>' +
    '<text x="2" y="' + (y(max) + 10) + '" font-size="10">' + label(max) + '</text>' +
    '<text x="2" y="' + y(0) + '" font-size="10">0</text>' +
    '<text x="' + (W - 60) + '" y="' + (H - 2) + '" font-size="10">now</text>' +
    '<text x="' + PAD + '" y="' + (H - 2) + '" font-size="10">-15 min</text>' +
    '<path d="' + d + '" fill="none" stroke="#2a6fdb" stroke-width="2"/>' +
    (shown.length ? '<text x="' + (W - 170) + '" y="12" font-size="11">last interval: ' +
      label(shown[shown.length - 1][1]) + '</text>' : "");
}
async function refresh() {
  try {
    const response = await fetch("/series.json", {cache: "no-store"});
    const s = await response.json();
    document.getElementById("interval").textContent = s.interval;
    document.getElementById("status").textContent = s.up ? "reading Redis" :
      "Redis unreadable (gap in the charts)";
    draw("hit_ratio", s.points.map(p => [p.t, p.hit_ratio]), 1);
    draw("requests_per_s", s.points.map(p => [p.t, p.requests_per_s]), 0);
    draw("invalidations_per_s", s.points.map(p => [p.t, p.invalidations_per_s]), 0);
    const stale = s.points.reduce((n, p) => n + p.stale_served, 0);
    const gaps = s.points.reduce((n, p) => n + p.sequence_gaps, 0);
    document.getElementById("faults").textContent = stale + " stale served, " + gaps + " gaps";
    const latest = document.getElementById("latest");
    if (s.latest) {
      for (const k of ["requests", "hits", "misses"]) latest.dataset[k] = s.latest[k];
      latest.textContent = "Totals since the counters began: " + s.latest.requests +
        " lookups, " + s.latest.hits + " hits, " + s.latest.misses + " misses, " +
        s.latest.invalidations + " invalidations.";
    }
    document.body.dataset.loaded = String(s.latest_t);
  } catch (err) {
    document.getElementById("status").textContent = "exporter unreachable: " + err;
  }
}
refresh();
setInterval(refresh, 5000);
</script></body></html>
"""
