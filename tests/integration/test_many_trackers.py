"""Trackers are cheap: built per request (as Penny does) they share one engine and one
outbox sweeper per database per process, so threads and connections stay flat."""

from __future__ import annotations

import multiprocessing

import pytest

from tests.integration import workers

pytestmark = pytest.mark.integration

SPAWN = multiprocessing.get_context("spawn")
REQUESTS = 1000


def test_a_tracker_per_request_keeps_threads_and_connections_flat(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Two processes each build a store and a tracker for every one of 1,000 requests
    and never close them (Penny's way; it used to leave a thread and an engine per
    tracker: 20 trackers, 20 threads). Threads, open files and sockets after 1,000
    requests equal those after the first 500, with one engine and one sweeper each.
    Redis sockets may gain one when two of the process's threads first use the pool at
    once; they stay within the pool's bound (main, flusher and sweeper threads, plus the
    listener's subscription), where a leak per tracker would add hundreds."""
    args = [(redis_url, namespace, sqlite_url, REQUESTS)] * 2
    with SPAWN.Pool(2) as pool:
        per_process = pool.starmap(workers.tracker_per_request, args)
    for warm, done in per_process:
        assert done["threads"] == warm["threads"], (warm, done)
        assert done["fds"] - done["sockets"] == warm["fds"] - warm["sockets"], (warm, done)
        assert done["sockets"] <= 4, done
        assert (done["engines"], done["sweepers"]) == (1, 1)
