"""Penny's tracker API on a real redis-server: a new event loop per call, two processes'
views, and docs/migrating.md's migration snippet run as written."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.config import Settings
from penny_cache.default import reset_cache
from penny_cache.penny import (
    PennyPersonalityTracker,
    SyncPennyPersonalityTracker,
    reset_shared_caches,
)

pytestmark = pytest.mark.integration

MIGRATING = Path(__file__).resolve().parents[2] / "docs" / "migrating.md"


@pytest.fixture
def settings(redis_url: str, sqlite_url: str, namespace: str) -> Iterator[Settings]:
    """Settings of one deployment; the caches made from them are closed afterwards."""
    yield Settings(
        redis_url=redis_url, database_url=sqlite_url, namespace=namespace, near_cache=False
    )
    reset_shared_caches()


def test_asyncio_run_per_call_never_fails_a_write_through(settings: Settings) -> None:
    """Thirty updates and reads, each in its own asyncio.run (Penny's sync callers), all
    commit and are written through: Redis errors stay 0, every read after the first is a
    hit, and the value read is always the one just written."""
    face = PennyPersonalityTracker(settings=settings)
    for n in range(30):
        value = round(n / 30, 4)
        assert asyncio.run(face.update_personality_dimension("communication_formality", value))
        state = asyncio.run(face.get_current_personality_state())
        assert state["communication_formality"].current_value == value
    face.tracker.cache.flush_stats()
    stats = face.get_cache_stats()
    assert stats["redis_errors"] == 0 and stats["hits"] == 30 and stats["misses"] == 0
    face.close()


def test_two_processes_see_one_state(settings: Settings, sqlite_url: str) -> None:
    """A face on another cache object (another process's) reads what this one wrote from
    Redis, not SQL, and its own update is seen here: one state, newest first history."""
    here = SyncPennyPersonalityTracker(settings=settings)
    with PersonalityCache.from_url(
        settings.redis_url, namespace=settings.namespace, near_cache=False
    ) as other_cache:
        there = SyncPennyPersonalityTracker(database_url=sqlite_url, cache=other_cache)
        assert here.update_personality_dimension("humor_style_preference", "dry", 0.2, "lol")
        assert there.get_current_personality_state()["humor_style_preference"].current_value == (
            "dry"
        )
        assert other_cache.local_stats()["hits"] == 1
        assert there.update_personality_dimension("humor_style_preference", "playful", 0.1)
        seen = here.get_current_personality_state()["humor_style_preference"]
        assert seen.current_value == "playful"
        assert seen.confidence == pytest.approx(0.6)
        history = here.get_personality_evolution_history("humor_style_preference")
        assert [h.new_value for h in history] == ["playful", "dry"]
        there.close()
    here.close()


def _migration_snippet() -> str:
    """The first python block of the "Migrating Penny" section of docs/migrating.md."""
    text = MIGRATING.read_text(encoding="utf-8")
    section = text.split("\n## Migrating Penny\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found, "docs/migrating.md's migration section lost its snippet"
    return found.group(1)


def test_readme_migration_snippet_runs(
    redis_url: str,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The migration snippet (docs/migrating.md) runs as written (Redis from PENNY_REDIS_URL, the
    database in the working directory) and prints what it says it reads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PENNY_REDIS_URL", redis_url)
    monkeypatch.setenv("PENNY_NAMESPACE", namespace)
    reset_cache()
    scope: dict[str, object] = {"__name__": "readme_snippet"}
    try:
        exec(compile(_migration_snippet(), str(MIGRATING), "exec"), scope)
        printed = capsys.readouterr().out.split()
        assert printed[:3] == ["dry", "dry", "0.15"]
        assert 0.0 <= float(printed[3]) <= 1.0
        assert (tmp_path / "penny.db").exists()
    finally:
        tracker = scope.get("tracker")
        if tracker is not None:
            tracker.storage.close()  # type: ignore[attr-defined]
        reset_cache()
