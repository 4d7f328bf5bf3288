"""``bench_http``'s report: the targets, the tables, the chart and its README section."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

__all__ = ["LABELS", "chart", "render", "update_readme", "verdicts"]

README: Final = Path(__file__).with_name("README.md")
CHART: Final = Path(__file__).with_name("http.png")
BEGIN: Final = "<!-- bench_http: begin (written by `make bench`; edits are overwritten) -->"
END: Final = "<!-- bench_http: end -->"

LABELS: Final[Mapping[str, str]] = {
    "near_hit": "service `GET`, near hit",
    "redis_hit": "service `GET`, Redis hit (near cache off)",
    "miss": "service `GET`, miss (SQLite)",
    "put": "service `PUT` (SQLite)",
    "bare_const": "bare FastAPI, constant JSON (dict)",
    "bare_const_bytes": "bare FastAPI, constant JSON (bytes)",
    "bare_redis": "bare FastAPI, redis-py `GET` + `json.loads`",
    "miss_postgresql": "service `GET`, miss (PostgreSQL)",
    "put_postgresql": "service `PUT` (PostgreSQL)",
}


class _Config(Protocol):
    @property
    def workers(self) -> tuple[int, ...]: ...

    @property
    def soak_seconds(self) -> float: ...


Cells = Sequence[Mapping[str, Any]]


def _cell(cells: Cells, workers: int, scenario: str, connections: int) -> Mapping[str, Any]:
    for cell in cells:
        if (cell["workers"], cell["scenario"], cell["connections"]) == (
            workers,
            scenario,
            connections,
        ):
            return cell
    return {}


def _verdict(name: str, measured: float | None, target: str, passed: bool) -> dict[str, Any]:
    shown = None if measured is None else round(measured, 3)
    return {"name": name, "measured": shown, "target": target, "passed": passed}


def _ratio(cells: Cells, workers: int, top: str, bottom: str, connections: int) -> float | None:
    a, b = _cell(cells, workers, top, connections), _cell(cells, workers, bottom, connections)
    return a["rps"] / b["rps"] if a and b and b["rps"] else None


def _near_verdicts(cells: Cells, workers: int) -> list[dict[str, Any]]:
    const = _ratio(cells, workers, "near_hit", "bare_const", 16)
    bare_redis = _ratio(cells, workers, "near_hit", "bare_redis", 16)
    one = _cell(cells, workers, "near_hit", 1)
    return [
        _verdict(f"near-hit GET req/s vs bare constant JSON, {workers} workers, 16 conns",
                 const, ">= 0.7x", const is not None and const >= 0.7),
        _verdict(f"near-hit GET req/s vs bare redis-py GET, {workers} workers, 16 conns",
                 bare_redis, ">= 2x", bare_redis is not None and bare_redis >= 2),
        _verdict(f"near-hit GET p50 at 1 keep-alive conn, {workers} workers (ms)",
                 one.get("p50_ms"), "< 1 ms", bool(one) and one["p50_ms"] < 1),
        _verdict(f"near-hit GET p99 at 1 keep-alive conn, {workers} workers (ms)",
                 one.get("p99_ms"), "< 3 ms", bool(one) and one["p99_ms"] < 3),
    ]  # fmt: skip


def _put_verdict(cells: Cells, workers: int, scenario: str) -> dict[str, Any]:
    put = _cell(cells, workers, scenario, 16)
    database = "PostgreSQL" if scenario.endswith("postgresql") else "SQLite"
    return _verdict(
        f"PUT p99 at 16 conns, {workers} workers, {database} (ms)",
        put.get("p99_ms"),
        "< 10 ms",
        bool(put) and put["p99_ms"] < 10,
    )


def verdicts(cells: Cells, soak: Mapping[str, Any] | None, config: _Config) -> list[dict[str, Any]]:
    """Every target of issue #14, measured in this run."""
    result: list[dict[str, Any]] = []
    for workers in config.workers:
        result += _near_verdicts(cells, workers)
        result.append(_put_verdict(cells, workers, "put"))
    if any(cell["scenario"] == "put_postgresql" for cell in cells):
        result.append(_put_verdict(cells, min(config.workers), "put_postgresql"))
    if soak is not None:
        failures = soak["errors"] + soak["non_2xx"]
        name = (
            f"{soak['connections']} conns on {soak['workers']} workers for "
            f"{soak['seconds']:g} s: errors + non-2xx"
        )
        result.append(_verdict(name, failures, "0", failures == 0))
    failed = sum(cell["errors"] + cell["non_2xx"] for cell in cells)
    result.append(_verdict("errors + non-2xx over every other run", failed, "0", failed == 0))
    return result


def _results_table(cells: Cells) -> list[str]:
    lines = [
        "| workers | route | conns | req/s | p50 ms | p99 ms | p99.9 ms | CPU µs/req "
        "| errors | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(LABELS)
    for cell in sorted(
        cells, key=lambda c: (c["workers"], order.index(c["scenario"]), c["connections"])
    ):
        lines.append(
            f"| {cell['workers']} | {LABELS[cell['scenario']]} | {cell['connections']} | "
            f"{cell['rps']:,.0f} | {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} | "
            f"{cell['p999_ms']:.2f} | {cell['cpu_us_per_request']:.0f} | "
            f"{cell['errors']} | {cell['non_2xx']} |"
        )
    return lines


def _ratio_table(cells: Cells) -> list[str]:
    lines = [
        "| workers | conns | near hit / bare const (dict) | near hit / bare const (bytes) "
        "| near hit / bare redis-py | Redis hit / bare redis-py |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted({(c["workers"], c["connections"]) for c in cells if c["scenario"] == "near_hit"})
    for workers, conns in keys:
        ratios = [
            _ratio(cells, workers, top, bottom, conns)
            for top, bottom in (
                ("near_hit", "bare_const"),
                ("near_hit", "bare_const_bytes"),
                ("near_hit", "bare_redis"),
                ("redis_hit", "bare_redis"),
            )
        ]
        shown = " | ".join("-" if r is None else f"{r:.2f}x" for r in ratios)
        lines.append(f"| {workers} | {conns} | {shown} |")
    return lines


def _cpu_table(cells: Cells) -> list[str]:
    lines = [
        "| workers | conns | near hit | bare const (dict) | bare redis-py "
        "| bare const ÷ near hit | bare redis-py ÷ near hit |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(c["workers"], c["connections"]) for c in cells if c["scenario"] == "near_hit"})
    for workers, conns in keys:
        near, const, bare_redis = (
            _cell(cells, workers, name, conns).get("cpu_us_per_request") or 0.0
            for name in ("near_hit", "bare_const", "bare_redis")
        )
        if not near:
            continue
        lines.append(
            f"| {workers} | {conns} | {near:.0f} µs | {const:.0f} µs | {bare_redis:.0f} µs | "
            f"{const / near:.2f}x | {bare_redis / near:.2f}x |"
        )
    return lines


def render(report: Mapping[str, Any]) -> str:
    """The tables and the verdicts, as Markdown."""
    lines = ["Requests/s and keep-alive latency (wrk):", "", *_results_table(report["cells"])]
    lines += ["", "Ratios of requests/s, same run:", "", *_ratio_table(report["cells"])]
    lines += [
        "",
        "Server CPU per request (the server's processes + redis-server, user + system; "
        "wrk excluded), lower is better:",
        "",
        *_cpu_table(report["cells"]),
    ]
    lines += ["", "| target (issue #14) | measured | bound | |", "|---|---|---|---|"]
    for v in report["verdicts"]:
        shown = "-" if v["measured"] is None else f"{v['measured']:g}"
        verdict = "PASS" if v["passed"] else "FAIL"
        lines.append(f"| {v['name']} | {shown} | {v['target']} | {verdict} |")
    return "\n".join(lines)


_SHADES: Final = {"bare_const": "0.45", "bare_const_bytes": "0.65", "bare_redis": "0.82"}


def _bars(axis: Any, cells: Cells, workers: int, key: str) -> None:
    names = [n for n in LABELS if not n.endswith("postgresql")]
    conns = sorted({c["connections"] for c in cells if c["workers"] == workers})
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        heights = [_cell(cells, workers, name, n).get(key, 0) for n in conns]
        xs = [j + i * width for j in range(len(conns))]
        shade = _SHADES.get(name)
        axis.bar(xs, heights, width, label=LABELS[name].replace("`", ""), color=shade,
                 hatch="//" if shade else None, edgecolor="white")  # fmt: skip
    axis.set_xticks([j + 0.4 - width / 2 for j in range(len(conns))], [str(n) for n in conns])
    axis.set_xlabel("keep-alive connections")


def chart(cells: Cells) -> str:
    """Requests/s (top) and server CPU per request (bottom) per route and connection
    count, one column per worker count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install '.[bench]')"
    workers = sorted({c["workers"] for c in cells if c["scenario"] == "near_hit"})
    figure, axes = plt.subplots(2, len(workers), figsize=(6 * len(workers), 8), squeeze=False)
    for column, count in enumerate(workers):
        _bars(axes[0][column], cells, count, "rps")
        axes[0][column].set_ylabel("requests/s (higher is better)")
        axes[0][column].set_title(f"{count} workers (gray, hatched: bare FastAPI)")
        _bars(axes[1][column], cells, count, "cpu_us_per_request")
        axes[1][column].set_yscale("log")
        axes[1][column].set_ylabel("server CPU per request, µs (log; lower is better)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=4, fontsize="small")
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    figure.savefig(CHART, dpi=100)
    plt.close(figure)
    return str(CHART)


def update_readme(report: Mapping[str, Any], text: str) -> str:
    """Write the run's tables between the markers in bench/README.md (and the chart)."""
    drawn = chart(report["cells"])
    machine = (
        f"{report['date']}, {report['platform']}, {report['cpu_count']} CPUs, Python "
        f"{report['python']}, redis-server {report['redis_server']}, {report['wrk']}, "
        f"uvicorn {report['uvicorn']} (uvloop {report['uvloop']}, httptools "
        f"{report['httptools']}), {report['config']['rounds']} x {report['config']['seconds']} s "
        f"per cell, load average at the end {report['load_average_at_end']}"
    )
    image = "![requests/s](http.png)" if drawn == str(CHART) else f"(chart {drawn})"
    section = f"{BEGIN}\n\nRun: {machine}.\n\n{text}\n\n{image}\n\n{END}"
    current = README.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    if pattern.search(current) is None:
        return f"not written: the markers are missing from {README}"
    README.write_text(pattern.sub(lambda _m: section, current))
    return str(README)
