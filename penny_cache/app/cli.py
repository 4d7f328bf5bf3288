"""penny-cache: the command line of penny_cache (settings come from PENNY_* variables).

penny-cache demo [--workers N] [--duration S] [--users N]   the `make run` job
penny-cache stats [--json]                                  cross-process totals
penny-cache stats --reset --yes                             zero the shared counters
penny-cache inspect USER [--json]                           one user's entry beside SQL
penny-cache invalidate USER                                 drop one user's entry everywhere
penny-cache verify [--sample N | --all] [--progress]        Redis against SQL, exit 1 on
                                                            divergence
penny-cache check                                           exit 1 unless Redis and SQL answer
                                                            and Redis keeps keys without a TTL
penny-cache exporter [--host H] [--port P]                  Prometheus /metrics, all processes
penny-cache serve [--host H] [--port P] [--workers N]       the HTTP service (uvicorn workers)
penny-cache run [--workers N] [--duration S]                the `make run` stack: service,
                                                            exporter, embedded Redis, self-check
penny-cache history-sweep [--days D]                        delete history older than D days
penny-cache after-restore --yes                             drop every cache entry after a
                                                            database restore (runbook)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from penny_cache.app import admin_cli
from penny_cache.app.demo import DemoConfig, format_report, run_demo
from penny_cache.app.embedded import embedded_redis
from penny_cache.app.maintenance import after_restore, history_sweep
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings, redact_url
from penny_cache.errors import CacheError, ConfigurationError, InvalidInputError, StoreError
from penny_cache.redis.clients import sync_client
from penny_cache.redis.eviction import judge_eviction_policy, read_eviction_policy
from penny_cache.store.database import PersonalityStore
from penny_cache.wiring import sync_backend

__all__ = ["main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="penny-cache",
        description="penny_cache's command line; settings come from PENNY_* variables",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run worker processes on a shared cache and report")
    demo.add_argument("--workers", type=_positive_int, default=4)
    demo.add_argument("--duration", type=_positive_float, default=5.0, help="seconds")
    demo.add_argument("--users", type=_positive_int, default=1000)
    stats = sub.add_parser("stats", help="print the hit rate and counters of all processes")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.add_argument(
        "--reset",
        action="store_true",
        help="zero the namespace's shared counters (needs --yes; running workers' counts "
        "return with their next flush)",
    )
    stats.add_argument("--yes", action="store_true", help="confirm --reset")
    admin_cli.add_parsers(sub)
    sub.add_parser(
        "check",
        help="exit non-zero unless Redis and SQL are reachable and Redis's eviction policy "
        "keeps keys without a TTL",
    )
    sub.add_parser(
        "load-scripts",
        help="load the Lua scripts into Redis (admin credentials: the service's ACL user "
        "may run them but not load them)",
    )
    exporter = sub.add_parser("exporter", help="serve the cross-process counters to Prometheus")
    exporter.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104
    exporter.add_argument("--port", type=_port, help="default: PENNY_EXPORTER_PORT or 9464")
    serve = sub.add_parser("serve", help="run the HTTP service on several worker processes")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104
    serve.add_argument("--port", type=_port, help="default: PENNY_HTTP_PORT or 8000")
    serve.add_argument("--workers", type=_positive_int, help="default: PENNY_HTTP_WORKERS or 2")
    _maintenance_parsers(sub)
    run = sub.add_parser("run", help="the make-run stack: service, exporter, Redis, self-check")
    run.add_argument("--workers", type=_positive_int, default=4)
    run.add_argument("--duration", type=_positive_float, help="seconds (default: until Ctrl-C)")
    return parser


def _maintenance_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweep = sub.add_parser(
        "history-sweep",
        help="DELETE history rows older than --days (default PENNY_HISTORY_DAYS), for cron",
    )
    sweep.add_argument("--days", type=_positive_float, help="default: PENNY_HISTORY_DAYS")
    sweep.add_argument("--batch", type=_positive_int, default=1000, help="rows per transaction")
    restore = sub.add_parser(
        "after-restore",
        help="after a database restore: drop every cache entry of the namespace "
        "(see docs/runbooks/DatabaseRestored.md)",
    )
    restore.add_argument("--yes", action="store_true", help="confirm: the command refuses without")


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {text!r}")
    return value


def _exporter(args: argparse.Namespace, settings: Settings) -> int:
    from penny_cache import __version__
    from penny_cache.app.exporter import registry_for_settings, serve

    registry, close = registry_for_settings(settings, __version__)
    server = serve(registry, args.host, args.port or settings.exporter_port)
    print(f"exporter         http://{args.host}:{server.server_port}/metrics", flush=True)
    print(f"redis            {redact_url(settings.redis_url)}, namespace {settings.namespace}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        close()
    return 0


def _demo(args: argparse.Namespace, environ: dict[str, str]) -> int:
    with tempfile.TemporaryDirectory(prefix="penny-demo-") as tmp:
        database_url = environ.get("PENNY_DATABASE_URL") or f"sqlite:///{Path(tmp, 'demo.db')}"
        if environ.get("PENNY_REDIS_URL"):
            settings = Settings.from_env(environ)
            print(f"redis            {redact_url(settings.redis_url)} (PENNY_REDIS_URL)")
            return _run_demo(args, settings.redis_url, database_url, settings.redis_timeout)
        with embedded_redis() as redis:
            print(f"redis            {redis.description}; set PENNY_REDIS_URL to use yours")
            return _run_demo(args, redis.url, database_url, redis.timeout)


def _run_demo(args: argparse.Namespace, redis_url: str, database_url: str, timeout: float) -> int:
    config = DemoConfig(
        redis_url=redis_url,
        redis_timeout=timeout,
        database_url=database_url,
        namespace=f"demo-{uuid.uuid4().hex[:8]}",
        workers=args.workers,
        duration=args.duration,
        users=args.users,
    )
    print(f"database         {config.database_url}")
    print(f"namespace        {config.namespace}")
    print(f"running {config.workers} workers for {config.duration:g} s ...", flush=True)
    report = run_demo(config)
    print(format_report(report))
    return 0 if report.counted_exactly else 1


def _stats(args: argparse.Namespace, settings: Settings) -> int:
    if args.reset:
        return admin_cli.reset_stats(args, settings)
    with PersonalityCache.from_settings(settings) as cache:
        problem = cache.check()
        stats = None if problem else cache.get_stats()
    if stats is None or not stats["shared"]:
        where = redact_url(settings.redis_url)
        print(f"penny-cache: cannot read the counters from {where}: {problem}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        for name, value in stats.items():
            shown = f"{value:.1%}" if name == "hit_rate" else value
            print(f"{name:<22} {shown}")
    return 0


def _check(settings: Settings) -> int:
    with PersonalityCache.from_settings(settings) as cache:
        redis_problem = cache.check()
    where = redact_url(settings.redis_url)
    print(f"redis   {'ok' if not redis_problem else 'UNREACHABLE'}  {where}  {redis_problem or ''}")
    evicts_counters = False if redis_problem else _check_eviction(settings)
    sql_problem = _check_sql(settings.database_url)
    return 1 if redis_problem or evicts_counters or sql_problem else 0


def _check_eviction(settings: Settings) -> bool:
    """Print the eviction policy's verdict; True when the policy would evict keys
    penny_cache keeps without a TTL (an ``allkeys-*`` policy)."""
    client = sync_client(settings)
    try:
        verdict = judge_eviction_policy(*read_eviction_policy(client))
    finally:
        client.close()
    label = {"ok": "ok", "warning": "WARNING", "failure": "UNSAFE"}[verdict.level]
    print(f"eviction {label}  {verdict.message}")
    return verdict.level == "failure"


def _check_sql(url: str) -> str | None:
    try:
        store = PersonalityStore(url)
    except InvalidInputError as exc:
        print(f"sql     UNUSABLE  PENNY_DATABASE_URL: {exc}")
        return str(exc)
    try:
        store.ping()
    except StoreError as exc:
        print(f"sql     UNREACHABLE  {store.url}  {exc}")
        return str(exc)
    finally:
        store.close()
    print(f"sql     ok  {store.url}")
    return None


def _dispatch(args: argparse.Namespace, environ: dict[str, str]) -> int:
    if args.command == "demo":
        return _demo(args, environ)
    if args.command == "run":
        from penny_cache.app.launcher import StackOptions, run_stack

        return run_stack(StackOptions(args.workers, args.duration), environ)
    settings = Settings.from_env(environ)
    commands: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "serve": _serve,
        "stats": _stats,
        "exporter": _exporter,
        "load-scripts": lambda _args, settings: _load_scripts(settings),
        "check": lambda _args, settings: _check(settings),
        "history-sweep": lambda args, settings: history_sweep(settings, args.days, args.batch),
        "after-restore": lambda args, settings: after_restore(settings, args.yes),
        **admin_cli.commands(),
    }
    return commands[args.command](args, settings)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from penny_cache.app.launcher import serve

    port, workers = args.port or settings.http_port, args.workers or settings.http_workers
    return serve(settings, args.host, port, workers)


def _load_scripts(settings: Settings) -> int:
    backend = sync_backend(settings)
    try:
        shas = backend.load_scripts()
    except CacheError as exc:
        print(f"penny-cache: cannot load the scripts: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    print(f"loaded {len(shas)} scripts: {' '.join(sha[:12] for sha in shas)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``penny-cache`` command."""
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    for line in Settings.unknown_variables(environ):
        logging.getLogger("penny_cache.config").warning("%s", line)
    try:
        return _dispatch(args, environ)
    except ConfigurationError as exc:
        print(f"penny-cache: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
