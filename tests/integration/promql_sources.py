"""Every PromQL query an operator copies: the runbooks' ``promql`` blocks and the Grafana
dashboard's targets, with the markers of docs/runbooks/README.md ("PromQL in the
runbooks").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

ROOT: Final = Path(__file__).resolve().parents[2]
RUNBOOKS: Final = ROOT / "docs" / "runbooks"
DASHBOARD: Final = ROOT / "grafana" / "dashboards" / "penny-cache-overview.json"
OTHER_PAGES: Final = (ROOT / "docs" / "operations-metrics.md",)

Expectation = Literal["data", "empty when healthy", "redis_exporter"]
MARKERS: Final[dict[str, Expectation]] = {
    "[empty when healthy]": "empty when healthy",
    "[redis_exporter]": "redis_exporter",
}
_BLOCK = re.compile(r"^[ \t]*```promql[ \t]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)
_OFFSET = re.compile(r"\s+offset\s+\d+[smhdwy]+")
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


@dataclass(frozen=True, slots=True)
class Query:
    """One query, where it comes from and what a healthy test stack must answer."""

    where: str
    expr: str
    expect: Expectation

    def runnable(self) -> str:
        """The query as run in a fresh Prometheus: no history, so no ``offset``."""
        return _OFFSET.sub("", self.expr)


def pages() -> list[Path]:
    """The pages whose queries are tested: every runbook, and the metrics guide."""
    return [*sorted(RUNBOOKS.glob("*.md")), *OTHER_PAGES]


def runbook_queries(where: list[Path] | None = None) -> list[Query]:
    """One ``Query`` per non-empty line of every ``promql`` block, comment stripped
    (``where``: the page and the line number in it)."""
    found = []
    for page in pages() if where is None else where:
        text = page.read_text(encoding="utf-8")
        for block in _BLOCK.finditer(text):
            first = text.count("\n", 0, block.start(1)) + 1
            for number, line in enumerate(block.group(1).splitlines(), first):
                expr, _, comment = line.partition("#")
                if not expr.strip():
                    continue
                expect: Expectation = "data"
                for mark, kind in MARKERS.items():
                    if comment.strip().startswith(mark):
                        expect = kind
                found.append(Query(f"{page.name}:{number}", expr.strip(), expect))
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_queries(values: Mapping[str, str], path: Path = DASHBOARD) -> list[Query]:
    """Every target's ``expr`` with the dashboard's variables replaced by ``values``;
    redis_exporter's (job "redis") are marked, the test stack has none."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    found = []
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            expr = substitute(target["expr"], values)
            expect: Expectation = "redis_exporter" if 'job="redis"' in expr else "data"
            found.append(Query(f"{panel['title']} ({target['refId']})", expr, expect))
    return found


def dashboard_variables(path: Path = DASHBOARD) -> dict[str, str]:
    """Variable name -> its label_values query."""
    dashboard = json.loads(path.read_text(encoding="utf-8"))
    return {
        v["name"]: v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    }


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Grafana's substitution of ``$name`` and ``${name}``; unknown names raise."""

    def value(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return _VARIABLE.sub(value, expr)
