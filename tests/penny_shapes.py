"""Penny's own shapes, as its tracker stores them in the drop-in cache (user "default").

``PersonalityDimension`` is Penny's dataclass (not penny_cache's Struct of the same name):
a module-level class, so spawned worker processes load it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["PersonalityDimension", "penny_state"]


@dataclass
class PersonalityDimension:
    """Penny's ``personality_tracker.PersonalityDimension``."""

    name: str
    current_value: float | str
    confidence: float
    last_updated: datetime  # naive, as Penny's datetime.now()
    learning_rate: float
    value_type: str


def penny_state(
    formality: float = 0.46, when: datetime | None = None
) -> dict[str, PersonalityDimension]:
    """What Penny's tracker caches: its dimensions by name."""
    now = when or datetime(2026, 11, 30, 9, 15, 42, 123456)
    return {
        "communication_formality": PersonalityDimension(
            "communication_formality", formality, 0.61, now, 0.1, "continuous"
        ),
        "humor_style_preference": PersonalityDimension(
            "humor_style_preference", "dry", 0.4, now, 0.15, "categorical"
        ),
        "proactive_suggestions": PersonalityDimension(
            "proactive_suggestions", 0.4, 0.3, now, 0.08, "continuous"
        ),
    }
