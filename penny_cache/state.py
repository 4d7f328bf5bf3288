"""Penny's personality record: the dimension catalogue, validation, and the immutable state.

The state types are msgspec ``Struct`` classes so that a cached envelope decodes straight
into them (no intermediate dicts on the hot path); ``__post_init__`` runs on decode too,
so a value read back from Redis is validated exactly like one built in code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Annotated, Any, Final

import msgspec

from penny_cache.catalogue import (
    DEFAULT_LEARNING_RATE,
    PENNY,
    Catalogue,
    DimensionSpec,
    DimensionValue,
    ValueType,
    is_dimension_name,
)
from penny_cache.errors import InvalidStateError, InvalidUserIdError, InvalidValueError
from penny_cache.user_ids import MAX_USER_ID_BYTES, validate_user_id

__all__ = [
    "CATALOGUE",
    "DEFAULT_CONFIDENCE",
    "DEFAULT_LEARNING_RATE",
    "EPOCH",
    "MAX_USER_ID_BYTES",
    "Catalogue",
    "DimensionSpec",
    "DimensionValue",
    "EvolutionRecord",
    "PersonalityDimension",
    "PersonalityState",
    "ValueType",
    "apply_update",
    "conform",
    "conformer",
    "default_state",
    "validate_confidence",
    "validate_confidence_change",
    "validate_dimension_name",
    "validate_dimension_value",
    "validate_user_id",
]

UnitInterval = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]

DEFAULT_CONFIDENCE: Final = 0.3

# The default catalogue's mapping (name -> DimensionSpec), kept under its old name.
CATALOGUE: Final[Mapping[str, DimensionSpec]] = PENNY.specs
# When a dimension never written was "last updated": the Unix epoch, in UTC.
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def validate_dimension_name(dimension: object, catalogue: Catalogue = PENNY) -> str:
    """Return ``dimension`` if the catalogue has it, else raise ``UnknownDimensionError``."""
    return catalogue.validate_name(dimension)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_dimension_value(
    dimension: object, value: object, catalogue: Catalogue = PENNY
) -> DimensionValue:
    """Return the value normalised for ``dimension``, or raise naming what is wrong."""
    return catalogue.validate_value(dimension, value)


def validate_confidence(confidence: object) -> float | None:
    """An absolute confidence (None: keep the stored one and apply the change)."""
    if confidence is None:
        return None
    if not _is_real(confidence) or not 0.0 <= float(confidence) <= 1.0:  # type: ignore[arg-type]
        raise InvalidValueError(f"confidence must be a number in [0, 1], got {confidence!r}")
    return float(confidence) + 0.0  # type: ignore[arg-type]  # -0.0 is stored as 0.0


def validate_confidence_change(change: object) -> float:
    """Return the change as a float if it is a finite real number."""
    if not _is_real(change) or not math.isfinite(float(change)):  # type: ignore[arg-type]
        raise InvalidValueError(f"confidence_change must be a finite number, got {change!r}")
    return float(change)  # type: ignore[arg-type]


def _require_unit(field: str, value: float) -> None:
    if value.__class__ not in _REALS or not 0.0 <= value <= 1.0:  # NaN fails both
        raise InvalidStateError(f"{field} must be in [0, 1], got {value!r}")


def _require_utc(moment: datetime, field: str) -> datetime:
    if moment.tzinfo is UTC:  # what msgspec decodes: the fast path of every cache hit
        return moment
    if moment.tzinfo is None:
        raise InvalidStateError(f"{field} must be timezone-aware (UTC)")
    return moment.astimezone(UTC)


_REALS: Final = frozenset({float, int})


class PersonalityDimension(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One learned dimension: its value and how sure Penny is of it.

    A dimension is checked (range, kind, UTC time) when a ``PersonalityState`` holds it.
    """

    value: DimensionValue
    confidence: UnitInterval
    learning_rate: UnitInterval
    value_type: ValueType
    last_updated: datetime

    # Validated as part of its PersonalityState (one pass over all dimensions per state,
    # instead of one Python call per dimension on every cache hit).


class PersonalityState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A user's whole personality record at one committed ``version``.

    Immutable: ``dimensions`` is a read-only mapping, and a change is a new state.
    """

    user_id: str
    version: Annotated[int, msgspec.Meta(ge=0)]
    updated_at: datetime
    dimensions: Mapping[str, PersonalityDimension]

    def __post_init__(self) -> None:
        # Runs on every decode (every cache hit): cheap checks, fast paths first. Which
        # dimensions a state holds is its catalogue's business (``conform``): entries
        # written under an older or newer catalogue must still decode.
        validate_user_id(self.user_id)
        if self.version.__class__ is not int or self.version < 0:
            raise InvalidStateError(f"version must be an integer >= 0, got {self.version!r}")
        checked = dict(self.dimensions)
        if not checked:
            raise InvalidStateError("a state holds at least one dimension")
        for name, dim in checked.items():
            if not _dimension_ok(name, dim):
                checked[name] = _checked_dimension(name, dim)  # raises, or normalises to UTC
        force = msgspec.structs.force_setattr
        if self.updated_at.tzinfo is not UTC:
            force(self, "updated_at", _require_utc(self.updated_at, "updated_at"))
        force(self, "dimensions", MappingProxyType(checked))

    @property
    def overall_confidence(self) -> float:
        """Mean confidence over all dimensions, as the original web panel showed."""
        return sum(d.confidence for d in self.dimensions.values()) / len(self.dimensions)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping; ``from_dict(to_dict())`` gives an equal state."""
        result: dict[str, Any] = msgspec.to_builtins(self, enc_hook=builtin_hook)
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PersonalityState:
        """Validate and build a state from ``to_dict()`` output."""
        try:
            return msgspec.convert(data, cls)
        except (msgspec.ValidationError, InvalidUserIdError, ValueError) as exc:
            raise InvalidStateError(f"not a valid personality state: {exc}") from exc


# Penny's names mean the same in every catalogue (``catalogue._check_penny_name``), so a
# state checks them fully; an application's dimensions are checked for their kind here and
# against their catalogue when written.
_KINDS: Final = {spec.name: (spec.value_type, frozenset(spec.options)) for spec in PENNY.dimensions}


def _dimension_ok(name: str, dim: PersonalityDimension) -> bool:
    """The fast check every cache hit runs, once per dimension: comparisons only."""
    value, confidence, rate = dim.value, dim.confidence, dim.learning_rate
    kind = _KINDS.get(name)
    if kind is None:
        value_ok = _custom_name_ok(name) and _custom_value_ok(dim.value_type, value)
    else:
        options = kind[1]
        value_ok = dim.value_type == kind[0] and (
            value in options if options else value.__class__ in _REALS and 0.0 <= value <= 1.0  # type: ignore[operator]
        )
    return (
        value_ok
        and confidence.__class__ in _REALS
        and 0.0 <= confidence <= 1.0
        and rate.__class__ in _REALS
        and 0.0 <= rate <= 1.0
        and dim.last_updated.tzinfo is UTC
    )


@lru_cache(maxsize=1024)
def _custom_name_ok(name: object) -> bool:
    return is_dimension_name(name)


def _custom_value_ok(value_type: str, value: object) -> bool:
    if value_type == "continuous":
        return value.__class__ in _REALS and math.isfinite(value)  # type: ignore[arg-type]
    return value_type == "categorical" and isinstance(value, str) and 0 < len(value) <= 64


def _checked_dimension(name: str, dim: PersonalityDimension) -> PersonalityDimension:
    """The slow path: say exactly what is wrong, or return the dimension in UTC."""
    if not _custom_name_ok(name):
        raise InvalidStateError(f"not a dimension name: {name!r}")
    spec = PENNY.specs.get(name)
    if spec is None:
        if not _custom_value_ok(dim.value_type, dim.value):
            raise InvalidStateError(f"{name} holds {dim.value!r}, not a {dim.value_type} value")
    elif dim.value_type != spec.value_type:
        raise InvalidStateError(f"{name} is {spec.value_type}, not {dim.value_type}")
    else:
        try:
            spec.validate(dim.value)
        except InvalidValueError as exc:
            raise InvalidStateError(str(exc)) from exc
    _require_unit(f"{name}.confidence", dim.confidence)
    _require_unit(f"{name}.learning_rate", dim.learning_rate)
    moment = _require_utc(dim.last_updated, f"{name}.last_updated")
    return msgspec.structs.replace(dim, last_updated=moment)


def builtin_hook(obj: Any) -> Any:
    """msgspec encode hook: read-only mappings serialise as plain objects."""
    if isinstance(obj, MappingProxyType):
        return dict(obj)
    raise NotImplementedError(f"cannot serialise {type(obj).__name__}")


def _default_dimension(spec: DimensionSpec, now: datetime) -> PersonalityDimension:
    return PersonalityDimension(
        value=spec.default,
        confidence=DEFAULT_CONFIDENCE,
        learning_rate=spec.learning_rate,
        value_type=spec.value_type,
        last_updated=now,
    )


def default_state(user_id: str, now: datetime, catalogue: Catalogue = PENNY) -> PersonalityState:
    """The state of a user Penny has not learned anything about yet (version 0)."""
    dims = {spec.name: _default_dimension(spec, now) for spec in catalogue.dimensions}
    return PersonalityState(user_id=user_id, version=0, updated_at=now, dimensions=dims)


def conform(state: PersonalityState, catalogue: Catalogue = PENNY) -> PersonalityState:
    """``state`` as ``catalogue`` sees it: exactly its dimensions, in its order, each with
    the catalogue's learning rate. A dimension the state lacks (declared after the state
    was written) or holds as another kind shows its default, last updated at ``EPOCH``, as
    a store shows a dimension never written. Returns ``state`` itself when it conforms."""
    dims = state.dimensions
    if _conforms(dims, catalogue):
        return state
    view: dict[str, PersonalityDimension] = {}
    for spec in catalogue.dimensions:
        dim = dims.get(spec.name)
        if dim is None or dim.value_type != spec.value_type:
            dim = _default_dimension(spec, EPOCH)
        elif dim.learning_rate != spec.learning_rate:
            dim = msgspec.structs.replace(dim, learning_rate=spec.learning_rate)
        view[spec.name] = dim
    return msgspec.structs.replace(state, dimensions=view)


_MAX_VIEWS: Final = 10_000  # as many as a default near cache holds: mostly the same objects


def conformer(catalogue: Catalogue) -> Callable[[PersonalityState], PersonalityState]:
    """``conform`` for one catalogue, remembering the last view made per user: a near
    hit returns the same state object again and again, and pays one dict lookup
    (about 50 ns) instead of one check per dimension (about 900 ns)."""
    views: dict[str, tuple[PersonalityState, PersonalityState]] = {}

    def view(state: PersonalityState) -> PersonalityState:
        seen = views.get(state.user_id)
        if seen is not None and seen[0] is state:
            return seen[1]
        shown = conform(state, catalogue)
        if len(views) >= _MAX_VIEWS:
            views.clear()
        views[state.user_id] = (state, shown)
        return shown

    return view


def _conforms(dims: Mapping[str, PersonalityDimension], catalogue: Catalogue) -> bool:
    """Exactly the catalogue's dimensions, in its order, of its kinds and rates."""
    if len(dims) != len(catalogue):
        return False
    for (name, dim), spec in zip(dims.items(), catalogue.dimensions, strict=True):
        if (
            name != spec.name
            or dim.value_type != spec.value_type
            or dim.learning_rate != spec.learning_rate
        ):
            return False
    return True


def apply_update(
    state: PersonalityState,
    dimension: str,
    value: DimensionValue,
    confidence_change: float,
    now: datetime,
    *,
    confidence: float | None = None,
) -> PersonalityState:
    """The next version: ``dimension`` takes ``value``; confidence is set to
    ``confidence`` when given, else moves by ``confidence_change``, clamped to [0, 1]."""
    old = state.dimensions[dimension]
    if confidence is None:
        confidence = min(1.0, max(0.0, old.confidence + confidence_change))
    new_dim = msgspec.structs.replace(old, value=value, confidence=confidence, last_updated=now)
    dims = {**state.dimensions, dimension: new_dim}
    return PersonalityState(
        user_id=state.user_id, version=state.version + 1, updated_at=now, dimensions=dims
    )


class EvolutionRecord(msgspec.Struct, frozen=True):
    """One committed change, as the evolution history returns it."""

    user_id: str
    dimension: str
    old_value: DimensionValue
    new_value: DimensionValue
    confidence_change: float
    trigger_context: str | None
    timestamp: datetime
    version: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping of the record."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result
