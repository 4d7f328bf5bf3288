"""Every ``CacheOp`` has a plan, in every flavour of ``Commands``.

mypy's ``assert_never`` in ``Commands.plan`` refuses a forgotten case statically; this is
the same check at run time (a subclass, or code that mypy does not see, cannot slip by):
each member of ``typing.get_args(CacheOp)`` is planned and driven to its end against a
scripted Redis, so an operation added without a plan fails here with ``assert_never``'s
``AssertionError``.
"""

from __future__ import annotations

from typing import Any

import pytest

from penny_cache.policy.ops import CacheOp
from penny_cache.redis import scripts
from penny_cache.redis.commands import (
    Call,
    ClusterCommands,
    Commands,
    Eval,
    Pipeline,
    Plan,
    Scan,
    Step,
)
from tests.contract.samples import CACHE_OPS, sample

FLAVOURS = {
    "standalone": Commands(),
    "sentinel": Commands(wait_replicas=1, wait_timeout_ms=50),
    "cluster": ClusterCommands(),
}


def _answer(step: Step) -> Any:
    """What a healthy Redis would answer each step (shapes only)."""
    if isinstance(step, Scan):
        return [b"sample:1", b"sample:2"]
    if isinstance(step, Eval):
        if step.script is scripts.GET_TICKET:
            return [None, b"ticket"]
        if step.script is scripts.INSPECT:
            return [b"3", 0, b"digest"]
        pairs = (scripts.WRITE_PUBLISH, scripts.TOMBSTONE_PUBLISH, scripts.REPLACE_PUBLISH)
        return [1, 1] if step.script in pairs else 1
    if isinstance(step, Pipeline):
        return [_answer(call) for call in step.calls]
    assert isinstance(step, Call), f"a cache operation's plan sent {step!r}"
    answers = {
        "get": b"x", "getrange": b"x", "set": True, "unlink": 1, "wait": 1, "spublish": 1,
        "pttl": 1000,
    }  # fmt: skip
    return answers[step.method]


def _drive(plan: Plan) -> tuple[list[Step], Any]:
    steps: list[Step] = []
    try:
        step = next(plan)
        while True:
            steps.append(step)
            step = plan.send(_answer(step))
    except StopIteration as done:
        return steps, done.value


def test_cache_op_is_the_union_the_samples_cover() -> None:
    """``CacheOp`` has members, and each is a distinct operation type (the union was not
    collapsed into ``Any`` by a refactoring)."""
    assert len(CACHE_OPS) >= 10
    assert len(set(CACHE_OPS)) == len(CACHE_OPS)


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
@pytest.mark.parametrize("op_type", CACHE_OPS, ids=lambda t: t.__name__)
def test_every_cache_op_has_a_plan(flavour: str, op_type: type[Any]) -> None:
    """``plan(op)`` of each operation sends at least one step to Redis and runs to its
    end (no ``assert_never``) on standalone, Sentinel and Cluster commands."""
    op: CacheOp = sample(op_type)
    steps, _answer_value = _drive(FLAVOURS[flavour].plan(op))
    assert steps, f"{op_type.__name__} sends nothing"


@pytest.mark.parametrize("op_type", CACHE_OPS, ids=lambda t: t.__name__)
def test_only_announcements_wait_for_a_replica(op_type: type[Any]) -> None:
    """Behind Sentinel exactly the operations that announce a change (and so must not be
    undone by a failover) end with ``WAIT``; the others are planned as on a standalone."""
    op: CacheOp = sample(op_type)
    sentinel, _ = _drive(FLAVOURS["sentinel"].plan(op))
    standalone, _ = _drive(FLAVOURS["standalone"].plan(op))
    announcers = {
        "WritePublish",
        "Tombstone",
        "DropPublish",
        "InvalidatePublish",
        "PublishFlush",
        "ReplacePublish",
    }
    announces = op_type.__name__ in announcers
    waits = [s for s in sentinel if isinstance(s, Call) and s.method == "wait"]
    assert len(waits) == (1 if announces else 0)
    assert sentinel[: len(standalone)] == standalone
