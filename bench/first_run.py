"""How long a newcomer waits: a fresh clone's first ``make run`` until its first HTTP 200.

The README promises a served request in under a minute. That promise depends on what
``make run`` installs and on the machine, so it is measured here, on demand, and not
asserted in ``make test`` (a timing on a shared CI runner would be flaky, not informative).

    python -m bench.first_run                # clones HEAD of this checkout
    python -m bench.first_run --ref main     # the same for another branch or commit

The clone goes to a temporary directory with no venv, so ``make run`` builds one from
scratch (pip's own download cache, if any, is used as a newcomer's second clone would).
The script polls the service's ``/healthz`` on the port it chose, prints the seconds to
the first 200 and to ``make run``'s "Ctrl-C stops everything." line, then stops the stack
with SIGINT (as Ctrl-C would) and removes the clone.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Timing", "clean_environ", "first_ok", "free_port", "measure", "wait_for_200"]

_READY_LINE = "Ctrl-C stops everything."


@dataclass
class Timing:
    """Seconds from ``make run``'s start; None when it never happened."""

    first_200: float | None = None
    urls_printed: float | None = None
    exit_status: int | None = None


def free_port() -> int:
    """A port the kernel says is free now (the service binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def first_ok(port: int, path: str = "/healthz") -> bool:
    """Whether one GET answers 200 (a refused or reset connection is simply not yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_for_200(port: int, deadline: float, alive: threading.Event) -> float | None:
    """Poll until a 200, the monotonic ``deadline``, or ``alive`` cleared; the monotonic
    time of the 200."""
    while time.monotonic() < deadline and alive.is_set():
        if first_ok(port):
            return time.monotonic()
        time.sleep(0.1)
    return None


def clean_environ(http_port: int, exporter_port: int) -> dict[str, str]:
    """The caller's environment without ``PENNY_*`` (a newcomer has none: embedded Redis,
    SQLite) or an active venv, with the two ports chosen here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
    env.pop("VIRTUAL_ENV", None)
    env["PENNY_HTTP_PORT"] = str(http_port)
    env["PENNY_EXPORTER_PORT"] = str(exporter_port)
    return env


def _follow(stream: object, started: float, timing: Timing, echo: bool) -> None:
    for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
        line = raw.decode(errors="replace")
        if echo:
            print(f"{time.monotonic() - started:7.1f}s | {line}", end="", flush=True)
        if _READY_LINE in line and timing.urls_printed is None:
            timing.urls_printed = time.monotonic() - started


def measure(source: str, ref: str | None, timeout: float, echo: bool = True) -> Timing:
    """Clone ``source`` (at ``ref``) to a temporary directory, time its ``make run``."""
    with tempfile.TemporaryDirectory(prefix="penny-first-run-") as tmp:
        clone = Path(tmp, "penny_cache")
        command = ["git", "clone", "--quiet", source, str(clone)]
        subprocess.run(command, check=True)
        if ref:
            subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", ref], check=True)
        http_port, exporter_port = free_port(), free_port()
        timing = Timing()
        started = time.monotonic()
        make = subprocess.Popen(
            ["make", "run"],
            cwd=clone,
            env=clean_environ(http_port, exporter_port),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        alive = threading.Event()
        alive.set()
        reader = threading.Thread(target=_follow, args=(make.stdout, started, timing, echo))
        reader.start()
        watcher = threading.Thread(target=_clear_on_exit, args=(make, alive))
        watcher.start()
        try:
            ok_at = wait_for_200(http_port, started + timeout, alive)
            timing.first_200 = None if ok_at is None else ok_at - started
            if ok_at is not None:  # wait (bounded) for the URLs too, then stop it
                end = time.monotonic() + 30
                while timing.urls_printed is None and alive.is_set() and time.monotonic() < end:
                    time.sleep(0.1)
        finally:
            _stop(make)
            reader.join(timeout=10)
            watcher.join(timeout=10)
        timing.exit_status = make.returncode
        return timing


def _clear_on_exit(make: subprocess.Popen[bytes], alive: threading.Event) -> None:
    make.wait()
    alive.clear()


def _stop(make: subprocess.Popen[bytes]) -> None:
    """Ctrl-C as a user would (the whole group), then harder if it lingers."""
    for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGKILL, 10.0)):
        if make.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(make.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            make.wait(timeout=grace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    here = str(Path(__file__).resolve().parent.parent)
    parser.add_argument("--source", default=here, help="repository to clone (this one)")
    parser.add_argument("--ref", help="branch or commit to check out (the clone's HEAD)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after (s)")
    parser.add_argument("--quiet", action="store_true", help="do not echo make's output")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)
    timing = measure(args.source, args.ref, args.timeout, echo=not args.quiet)
    result = {"ref": args.ref or "HEAD", **timing.__dict__}
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if timing.first_200 is not None else 1


if __name__ == "__main__":
    sys.exit(main())
