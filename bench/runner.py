"""The command line every benchmark shares: ``--quick``, ``--json PATH``, SIGTERM-safe.

A benchmark supplies its two configurations and a ``run(config)`` returning the report
(a JSON-ready dict with ``date``, ``platform``, ``cpu_count``, ``python`` and
``redis_server``) and its printed text; this prints both and writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

__all__ = ["bench_main"]


class _Config(Protocol):
    @property
    def mode(self) -> str: ...


C = TypeVar("C", bound=_Config)


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit, so the finally blocks stop children and redis-server."""
    raise SystemExit(128 + signum)


def bench_main(
    argv: Sequence[str] | None,
    *,
    title: str,
    quick: C,
    full: C,
    run: Callable[[C], tuple[dict[str, Any], str]],
    footer: Callable[[dict[str, Any]], str] = lambda _report: "",
) -> int:
    """Print the report (and write JSON); 0 even when a target is missed."""
    parser = argparse.ArgumentParser(description=title)
    parser.add_argument("--quick", action="store_true", help="a smoke run, not a measurement")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    config = quick if args.quick else full
    print(f"{title} ({config.mode}): {config}", file=sys.stderr)
    started = time.monotonic()
    report, text = run(config)
    report["duration_s"] = round(time.monotonic() - started, 1)
    print(text)
    print(f"\n{report['date']}  {report['platform']}  cpus={report['cpu_count']}  "
          f"{footer(report)}python {report['python']}  redis {report['redis_server']}  "
          f"({report['duration_s']} s)")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
