"""The dimension catalogue as data: what each dimension may hold, its default, its rate.

``Catalogue.penny()`` is Penny's seven dimensions with their learning rates; an
application declares its own without changing penny_cache::

    SASSY = Catalogue.penny().with_dimensions(
        DimensionSpec.continuous("sass_level", 0.5, learning_rate=0.2),
        DimensionSpec.categorical("humor_frequency", "sometimes", ("rarely", "sometimes")),
    )
    store = PersonalityStore(url, catalogue=SASSY)

The store (and through it the trackers, validation, history and the HTTP service) follows
the catalogue it was given. Nothing in SQL or Redis is migrated when a dimension is added:
rows are one per (user, dimension), and a state that lacks a dimension shows its default.
Penny's seven names keep their kind, range and options in every catalogue (every cache
hit checks them), though an application may give them another default or learning rate.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Final, Literal

from penny_cache.errors import ConfigurationError, InvalidUserIdError, UnknownDimensionError
from penny_cache.errors import InvalidValueError as _InvalidValue

__all__ = [
    "DEFAULT_LEARNING_RATE",
    "MAX_NAME_CHARS",
    "PENNY",
    "Catalogue",
    "DimensionSpec",
    "DimensionValue",
    "ValueType",
    "is_dimension_name",
    "load_catalogue",
]

ValueType = Literal["continuous", "categorical"]
DimensionValue = float | str

DEFAULT_LEARNING_RATE: Final = 0.1
MAX_NAME_CHARS: Final = 64  # the SQL columns' width, for names and options alike
_NAME: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")


def is_dimension_name(name: object) -> bool:
    """Whether ``name`` could name a dimension: lower-case snake case, 1-64 characters."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class DimensionSpec:
    """One catalogue entry: what a dimension may hold, where a new user starts, and how
    fast Penny learns it. A continuous dimension takes a number in [minimum, maximum], a
    categorical one one of its options. Raises ``ConfigurationError`` when inconsistent."""

    name: str
    value_type: ValueType
    default: DimensionValue
    options: tuple[str, ...] = ()
    learning_rate: float = DEFAULT_LEARNING_RATE
    minimum: float = 0.0
    maximum: float = 1.0

    @classmethod
    def continuous(
        cls,
        name: str,
        default: float,
        *,
        learning_rate: float = DEFAULT_LEARNING_RATE,
        minimum: float = 0.0,
        maximum: float = 1.0,
    ) -> DimensionSpec:
        """A number in [minimum, maximum] (by default [0, 1])."""
        return cls(name, "continuous", default, (), learning_rate, minimum, maximum)

    @classmethod
    def categorical(
        cls,
        name: str,
        default: str,
        options: Iterable[str],
        *,
        learning_rate: float = DEFAULT_LEARNING_RATE,
    ) -> DimensionSpec:
        """One of ``options``."""
        return cls(name, "categorical", default, tuple(options), learning_rate)

    def __post_init__(self) -> None:
        if not is_dimension_name(self.name):
            raise ConfigurationError(
                f"dimension name must be lower-case snake case of 1-{MAX_NAME_CHARS} "
                f"characters, got {self.name!r}"
            )
        rate = self.learning_rate
        if not _is_real(rate) or not 0.0 <= rate <= 1.0:
            raise ConfigurationError(f"{self.name}: learning_rate must be in [0, 1], got {rate!r}")
        if self.value_type == "continuous":
            self._check_range()
        elif self.value_type == "categorical":
            self._check_options()
        else:
            raise ConfigurationError(f"{self.name}: value_type must be continuous or categorical")
        try:
            object.__setattr__(self, "default", self.validate(self.default))
        except _InvalidValue as exc:
            raise ConfigurationError(f"default: {exc}") from None

    def _check_range(self) -> None:
        low, high = self.minimum, self.maximum
        if self.options:
            raise ConfigurationError(f"{self.name}: a continuous dimension has no options")
        if not (_is_real(low) and _is_real(high) and math.isfinite(low) and math.isfinite(high)):
            raise ConfigurationError(f"{self.name}: minimum and maximum must be finite numbers")
        if not low < high:
            raise ConfigurationError(f"{self.name}: minimum must be below maximum")
        object.__setattr__(self, "minimum", float(low))
        object.__setattr__(self, "maximum", float(high))

    def _check_options(self) -> None:
        options = self.options
        if not isinstance(options, tuple) or not options:
            raise ConfigurationError(f"{self.name}: a categorical dimension needs options")
        for option in options:
            if not isinstance(option, str) or not 0 < len(option) <= MAX_NAME_CHARS:
                raise ConfigurationError(
                    f"{self.name}: options are strings of 1-{MAX_NAME_CHARS} characters"
                )
        if len(set(options)) != len(options):
            raise ConfigurationError(f"{self.name}: options repeat")

    def validate(self, value: object) -> DimensionValue:
        """The value normalised for this dimension, or ``InvalidValueError`` saying why."""
        if self.value_type == "continuous":
            return self._number(value)
        if not isinstance(value, str) or value not in self.options:
            raise _InvalidValue(
                f"{self.name} must be one of {', '.join(self.options)}; got {value!r}"
            )
        return value

    def _number(self, value: object) -> float:
        bounds = f"[{self.minimum:g}, {self.maximum:g}]"
        if not _is_real(value):
            raise _InvalidValue(f"{self.name} takes a number in {bounds}, got {value!r}")
        number = float(value)  # type: ignore[arg-type]
        if not math.isfinite(number) or not self.minimum <= number <= self.maximum:
            raise _InvalidValue(f"{self.name} must be in {bounds}, got {value!r}")
        return number + 0.0  # -0.0 is stored as 0.0: one zero, one encoding

    def holds(self, value: object) -> bool:
        """Whether ``value`` is valid for this dimension (no exception, for hot paths)."""
        if self.value_type == "continuous":
            return (
                value.__class__ in _REALS and self.minimum <= value <= self.maximum  # type: ignore[operator]
            )
        return value in self.options


_REALS: Final = frozenset({float, int})


@dataclass(frozen=True, slots=True)
class Catalogue:
    """An ordered, immutable set of ``DimensionSpec``: the dimensions a store tracks.

    Equal catalogues (same specs, same order) compare and hash equal.
    """

    dimensions: tuple[DimensionSpec, ...]
    _by_name: Mapping[str, DimensionSpec] = field(init=False, repr=False, compare=False)

    def __init__(self, dimensions: Iterable[DimensionSpec]) -> None:
        specs = tuple(dimensions)
        if not specs:
            raise ConfigurationError("a catalogue needs at least one dimension")
        by_name: dict[str, DimensionSpec] = {}
        for spec in specs:
            if not isinstance(spec, DimensionSpec):
                raise ConfigurationError(f"not a DimensionSpec: {spec!r}")
            if spec.name in by_name:
                raise ConfigurationError(f"dimension {spec.name!r} is declared twice")
            _check_penny_name(spec)
            by_name[spec.name] = spec
        object.__setattr__(self, "dimensions", specs)
        object.__setattr__(self, "_by_name", MappingProxyType(by_name))

    @classmethod
    def penny(cls) -> Catalogue:
        """Penny's seven dimensions and learning rates (the default everywhere)."""
        return PENNY

    @classmethod
    def default(cls) -> Catalogue:
        """The default catalogue: ``Catalogue.penny()``."""
        return PENNY

    def with_dimensions(self, *specs: DimensionSpec) -> Catalogue:
        """A new catalogue: these dimensions after this one's (a repeated name raises)."""
        return Catalogue((*self.dimensions, *specs))

    def with_learning_rates(self, **rates: float) -> Catalogue:
        """A new catalogue with other learning rates for the named dimensions."""
        unknown = sorted(set(rates) - set(self._by_name))
        if unknown:
            raise ConfigurationError(f"unknown dimensions: {', '.join(unknown)}")
        return Catalogue(
            replace(spec, learning_rate=rates.get(spec.name, spec.learning_rate))
            for spec in self.dimensions
        )

    @property
    def specs(self) -> Mapping[str, DimensionSpec]:
        """Read-only name -> spec, in declaration order."""
        return self._by_name

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self.dimensions)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def __getitem__(self, name: str) -> DimensionSpec:
        return self._by_name[name]

    def spec(self, dimension: object) -> DimensionSpec:
        """The spec of ``dimension``, or ``UnknownDimensionError`` listing the known ones."""
        spec = self._by_name.get(dimension) if isinstance(dimension, str) else None
        if spec is None:
            known = ", ".join(self._by_name)
            raise UnknownDimensionError(f"unknown dimension {dimension!r}; known: {known}")
        return spec

    def validate_name(self, dimension: object) -> str:
        """``dimension`` if this catalogue has it, else ``UnknownDimensionError``."""
        return self.spec(dimension).name

    def validate_value(self, dimension: object, value: object) -> DimensionValue:
        """The value normalised for ``dimension``; ``InvalidInputError`` if not allowed."""
        return self.spec(dimension).validate(value)

    def refuse_dimension_as_user_id(self, user_id: object, signature: str) -> None:
        """Raise ``InvalidUserIdError`` when ``user_id`` is one of this catalogue's
        dimension names: a call in Penny's argument order (dimension first) reached an
        API whose first argument is the user, and would otherwise succeed silently."""
        if user_id in self:
            raise InvalidUserIdError(
                f"user id {user_id!r} is a dimension name: arguments in the wrong order? "
                f"This call takes {signature}"
            )


def load_catalogue(reference: str) -> Catalogue:
    """The ``Catalogue`` an application declared, named ``package.module:NAME`` by an
    operator's setting (``PENNY_CATALOGUE`` for the HTTP service); ``ConfigurationError``
    when it cannot be imported or is not a ``Catalogue``."""
    module_name, colon, attribute = reference.strip().partition(":")
    if not (colon and module_name and attribute):
        raise ConfigurationError(f"PENNY_CATALOGUE must be package.module:NAME, got {reference!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"PENNY_CATALOGUE: cannot import {module_name}: {exc}") from exc
    found = getattr(module, attribute, None)
    if not isinstance(found, Catalogue):
        raise ConfigurationError(f"PENNY_CATALOGUE: {reference} is not a Catalogue")
    return found


def _check_penny_name(spec: DimensionSpec) -> None:
    """Penny's names mean the same everywhere: a cached state is checked against them."""
    penny = _PENNY_SPECS.get(spec.name)
    if penny is None:
        return
    same = (spec.value_type, spec.options, spec.minimum, spec.maximum) == (
        penny.value_type,
        penny.options,
        penny.minimum,
        penny.maximum,
    )
    if not same:
        raise ConfigurationError(
            f"{spec.name} is one of Penny's dimensions: its kind, range and options are "
            "fixed (only its default and learning rate may change); choose another name"
        )


_PENNY_SPECS: Final[Mapping[str, DimensionSpec]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            DimensionSpec.continuous("communication_formality", 0.5, learning_rate=0.1),
            DimensionSpec.continuous("technical_depth_preference", 0.5, learning_rate=0.1),
            DimensionSpec.continuous("conversation_pace_preference", 0.5, learning_rate=0.1),
            DimensionSpec.continuous("proactive_suggestions", 0.4, learning_rate=0.08),
            DimensionSpec.categorical(
                "humor_style_preference",
                "balanced",
                ("dry", "playful", "roasting", "dad_jokes", "tech_humor", "balanced"),
                learning_rate=0.15,
            ),
            DimensionSpec.categorical(
                "response_length_preference",
                "medium",
                ("brief", "medium", "detailed", "comprehensive"),
                learning_rate=0.1,
            ),
            DimensionSpec.categorical(
                "emotional_support_style",
                "balanced",
                ("analytical", "empathetic", "solution_focused", "cheerleading", "balanced"),
                learning_rate=0.12,
            ),
        )
    }
)

PENNY: Final = Catalogue(_PENNY_SPECS.values())
