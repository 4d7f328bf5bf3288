"""``penny-cache inspect``, ``invalidate``, ``verify`` and ``stats --reset``: the
operator's look at one user and at the whole namespace (``penny_cache.admin``).

Every refusal is one line on stderr: bad input (a user id that is not one, ``--sample
0``, ``--sample`` with ``--all``, ``--reset`` without ``--yes``) exits 2, a Redis or
database that does not answer exits 1, so scripts and runbooks can tell them apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, TextIO

from penny_cache.admin import DIVERGENT, CacheAdmin, EntryCheck, VerifyReport
from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings, redact_url
from penny_cache.errors import CacheError, InvalidInputError, StoreError
from penny_cache.store.database import PersonalityStore
from penny_cache.user_ids import validate_user_id

__all__ = ["VERIFY_HELP", "add_parsers", "commands", "format_check", "format_report", "reset_stats"]

DEFAULT_SAMPLE: Final = 1000
VERIFY_HELP: Final = (
    "compare the namespace's Redis entries with SQL's committed versions (read-only, in "
    f"batches; default --sample {DEFAULT_SAMPLE}). A divergence is an entry older than SQL "
    "(older), ahead of SQL (newer: forged, or a database restored to an earlier point), "
    "one no worker can use (undecodable, unsigned or forged), or one of a user SQL does "
    "not have (orphan). A suspect is read again after PENNY_MAX_STALENESS, so an update "
    "in flight is no alarm; strict-mode tombstones are never served and never count. "
    "Exit 1 on any divergence, 0 otherwise."
)


class _RefusedError(Exception):
    """A one-line refusal and its exit status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The admin subcommands (``stats --reset`` is on the ``stats`` parser)."""
    inspect = sub.add_parser(
        "inspect", help="one user's Redis entry (version, TTL, bytes, status) beside SQL's"
    )
    inspect.add_argument("user", metavar="USER", nargs="?")  # absent: our one-line error
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    invalidate = sub.add_parser(
        "invalidate", help="drop one user's entry in Redis and every near cache (counted)"
    )
    invalidate.add_argument("user", metavar="USER", nargs="?")
    verify = sub.add_parser(
        "verify", help="compare Redis entries with SQL", description=VERIFY_HELP
    )
    verify.add_argument("--sample", metavar="N", help=f"check N random entries ({DEFAULT_SAMPLE})")
    verify.add_argument("--all", action="store_true", help="check every entry")
    verify.add_argument("--progress", action="store_true", help="progress bar (default: a TTY)")
    verify.add_argument("--json", action="store_true", help="machine-readable output")


def commands() -> dict[str, Callable[[argparse.Namespace, Settings], int]]:
    """The dispatch table's entries for ``add_parsers``' commands."""
    return {"inspect": _inspect, "invalidate": _invalidate, "verify": _verify}


def _user(text: str | None) -> str:
    if text is None:
        raise _RefusedError("give the USER whose entry to look at", 2)
    try:
        return validate_user_id(text)
    except InvalidInputError as exc:
        raise _RefusedError(f"not a user id: {exc}", 2) from exc


def _sample(args: argparse.Namespace) -> int | None:
    if args.all and args.sample is not None:
        raise _RefusedError("verify: give --sample N or --all, not both", 2)
    if args.all:
        return None
    text = args.sample if args.sample is not None else str(DEFAULT_SAMPLE)
    if not text.isdigit() or int(text) <= 0:
        raise _RefusedError(f"verify: --sample must be a positive integer, got {text!r}", 2)
    return int(text)


@contextmanager
def _admin(settings: Settings) -> Iterator[tuple[CacheAdmin, PersonalityCache]]:
    """A cache without background threads and its store; Redis must answer first."""
    try:
        store = PersonalityStore(settings.database_url)
    except InvalidInputError as exc:
        raise _RefusedError(f"PENNY_DATABASE_URL: {exc}", 2) from exc
    cache = PersonalityCache.from_settings(settings, stats_flush_interval=None)
    try:
        problem = cache.check()
        if problem is not None:
            where = redact_url(settings.redis_url)
            raise _RefusedError(f"cannot reach Redis at {where}: {problem}", 1)
        yield CacheAdmin(cache, store, recheck_after=settings.max_staleness), cache
    except StoreError as exc:
        raise _RefusedError(f"cannot read the database {store.url}: {exc}", 1) from exc
    except CacheError as exc:
        raise _RefusedError(f"Redis failed: {exc}", 1) from exc
    finally:
        cache.close()
        store.close()


def refusing(
    command: Callable[[argparse.Namespace, Settings], int],
) -> Callable[[argparse.Namespace, Settings], int]:
    """``command`` with its refusals printed as one line and turned into its status."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        try:
            return command(args, settings)
        except _RefusedError as exc:
            print(f"penny-cache: {exc}", file=sys.stderr)
            return exc.status

    return run


@refusing
def _inspect(args: argparse.Namespace, settings: Settings) -> int:
    user = _user(args.user)
    with _admin(settings) as (admin, _cache):
        check = admin.inspect(user)
    if args.json:
        print(json.dumps(check.as_dict(), sort_keys=True))
    else:
        print(format_check(check))
    return 0


def format_check(check: EntryCheck) -> str:
    """The human form of ``inspect``: no personal value, only versions and sizes."""
    ttl = "-" if check.ttl_seconds is None else f"{check.ttl_seconds:.1f} s"
    status = check.status + (f" ({check.why})" if check.why else "")
    outbox = "none"
    if check.outbox_version is not None:
        outbox = f"version {check.outbox_version}, undelivered since {check.outbox_since}"
    rows = [
        ("user", check.user_id),
        ("redis status", status),
        ("redis version", _shown(check.redis_version)),
        ("redis ttl", ttl),
        ("redis bytes", str(check.size_bytes)),
        ("sql version", _shown(check.sql_version, "no row")),
        ("agree", f"{'yes' if check.agree else 'NO'} ({check.kind})"),
        ("outbox", outbox),
    ]
    return "\n".join(f"{name:<14} {value}" for name, value in rows)


def _shown(value: int | None, none: str = "-") -> str:
    return none if value is None else str(value)


@refusing
def _invalidate(args: argparse.Namespace, settings: Settings) -> int:
    user = _user(args.user)
    with _admin(settings) as (admin, cache):
        before = admin.inspect(user)
        if not admin.invalidate(user):
            raise _RefusedError("the invalidation did not reach Redis; run it again", 1)
        cache.flush_stats()
    held = "no entry" if before.status == "absent" else f"version {_shown(before.redis_version)}"
    print(
        f"invalidated {user} in namespace {settings.namespace} (Redis held {held}); "
        "every worker was told to drop it, the next read fills from SQL"
    )
    return 0


@refusing
def _verify(args: argparse.Namespace, settings: Settings) -> int:
    sample = _sample(args)
    show = args.progress or sys.stderr.isatty()
    with _admin(settings) as (admin, _cache):
        report = admin.verify(sample, _bar(sys.stderr) if show else None)
    if show:
        print(file=sys.stderr)
    if args.json:
        print(json.dumps(report.as_dict(), sort_keys=True))
    else:
        print(format_report(report))
    return 1 if report.divergent else 0


def _bar(stream: TextIO) -> Callable[[int, int], None]:
    def progress(done: int, total: int) -> None:
        filled = 30 * done // max(total, 1)
        stream.write(f"\rverify [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        stream.flush()

    return progress


def format_report(report: VerifyReport) -> str:
    lines = [f"checked {report.checked} of {report.total} entries"]
    if not report.total:
        lines.append("  (no entries: check PENNY_NAMESPACE and PENNY_DATABASE_URL)")
    lines += [f"  {kind:<12} {report.kinds[kind]}" for kind in ("agree", "tombstone", *DIVERGENT)]
    for kind, users in sorted(report.examples.items()):
        lines.append(f"{kind}: {' '.join(users)} (see: penny-cache inspect USER)")
    verdict = "Redis agrees with SQL" if not report.divergent else f"{report.divergent} DIVERGE"
    return "\n".join([*lines, verdict])


@refusing
def reset_stats(args: argparse.Namespace, settings: Settings) -> int:
    """``stats --reset --yes``: zero the shared counters (live workers' counts return
    with their next flush: they publish absolutes)."""
    if not args.yes:
        raise _RefusedError(
            "stats --reset zeroes the shared counters of namespace "
            f"{settings.namespace!r}; run it again with --yes",
            2,
        )
    with _admin(settings) as (admin, _cache):
        admin.reset_stats()
    print(
        f"reset the shared counters of namespace {settings.namespace}; running workers' "
        "own counts come back with their next flush (restart them for a clean slate)"
    )
    return 0
