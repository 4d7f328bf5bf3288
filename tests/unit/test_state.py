"""The dimension catalogue, validation at the edges, and the immutable PersonalityState."""

from __future__ import annotations

import copy
import math
from datetime import UTC, datetime

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from penny_cache.errors import (
    InvalidInputError,
    InvalidStateError,
    InvalidUserIdError,
    InvalidValueError,
    UnknownDimensionError,
)
from penny_cache.state import (
    CATALOGUE,
    DEFAULT_CONFIDENCE,
    DEFAULT_LEARNING_RATE,
    MAX_USER_ID_BYTES,
    PersonalityDimension,
    PersonalityState,
    apply_update,
    default_state,
    validate_confidence_change,
    validate_dimension_name,
    validate_dimension_value,
    validate_user_id,
)
from tests.user_ids import valid_user_ids

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 2, 8, 30, tzinfo=UTC)
CONTINUOUS = {
    "communication_formality": 0.5,
    "technical_depth_preference": 0.5,
    "conversation_pace_preference": 0.5,
    "proactive_suggestions": 0.4,
}
CATEGORICAL = {
    "humor_style_preference": (
        "balanced",
        ("dry", "playful", "roasting", "dad_jokes", "tech_humor", "balanced"),
    ),
    "response_length_preference": ("medium", ("brief", "medium", "detailed", "comprehensive")),
    "emotional_support_style": (
        "balanced",
        ("analytical", "empathetic", "solution_focused", "cheerleading", "balanced"),
    ),
}

# Hypothesis strategies --------------------------------------------------------------------

utc_datetimes = st.datetimes(timezones=st.just(UTC))
unit_floats = st.floats(min_value=0.0, max_value=1.0)


@st.composite
def states(draw: st.DrawFn) -> PersonalityState:
    """Any valid state: every field drawn from its whole allowed range."""
    dims: dict[str, PersonalityDimension] = {}
    for name, spec in CATALOGUE.items():
        value: float | str = (
            draw(unit_floats)
            if spec.value_type == "continuous"
            else draw(st.sampled_from(spec.options))
        )
        dims[name] = PersonalityDimension(
            value=value,
            confidence=draw(unit_floats),
            learning_rate=draw(unit_floats),
            value_type=spec.value_type,
            last_updated=draw(utc_datetimes),
        )
    return PersonalityState(
        user_id=draw(valid_user_ids),
        version=draw(st.integers(min_value=0, max_value=2**53)),
        updated_at=draw(utc_datetimes),
        dimensions=dims,
    )


# Catalogue and defaults -------------------------------------------------------------------


def test_catalogue_has_the_seven_dimensions_in_order() -> None:
    """The catalogue holds exactly 4 continuous then 3 categorical dimensions, in order."""
    assert list(CATALOGUE) == [*CONTINUOUS, *CATEGORICAL]
    for name, spec in CATALOGUE.items():
        assert spec.name == name


@pytest.mark.parametrize(("name", "default"), CONTINUOUS.items())
def test_continuous_dimensions_have_their_defaults(name: str, default: float) -> None:
    """Each continuous dimension has its original default and no options."""
    spec = CATALOGUE[name]
    assert (spec.value_type, spec.default, spec.options) == ("continuous", default, ())


@pytest.mark.parametrize(("name", "expected"), CATEGORICAL.items())
def test_categorical_dimensions_have_their_options(
    name: str, expected: tuple[str, tuple[str, ...]]
) -> None:
    """Each categorical dimension has its exact options, all valid; the default is one."""
    default, options = expected
    spec = CATALOGUE[name]
    assert (spec.value_type, spec.default, spec.options) == ("categorical", default, options)
    assert spec.default in spec.options
    for option in options:
        assert validate_dimension_value(name, option) == option


def test_catalogue_is_read_only() -> None:
    """Nobody can add a dimension to the shared catalogue at run time."""
    with pytest.raises(TypeError):
        CATALOGUE["new"] = CATALOGUE["communication_formality"]  # type: ignore[index]


PENNY_RATES = {
    "communication_formality": 0.1,
    "technical_depth_preference": 0.1,
    "conversation_pace_preference": 0.1,
    "proactive_suggestions": 0.08,
    "humor_style_preference": 0.15,
    "response_length_preference": 0.1,
    "emotional_support_style": 0.12,
}


def test_default_state_is_version_zero_with_catalogue_defaults() -> None:
    """default_state is version 0, every value its default, every confidence 0.3, and
    each dimension Penny's own learning rate."""
    state = default_state("alice", T0)
    assert (state.user_id, state.version, state.updated_at) == ("alice", 0, T0)
    assert list(state.dimensions) == list(CATALOGUE)
    for name, dim in state.dimensions.items():
        spec = CATALOGUE[name]
        assert dim.value == spec.default
        assert dim.value_type == spec.value_type
        assert dim.confidence == DEFAULT_CONFIDENCE == 0.3
        assert dim.learning_rate == spec.learning_rate == PENNY_RATES[name]
        assert dim.last_updated == T0
    assert state.overall_confidence == pytest.approx(0.3)


# Round trip and immutability --------------------------------------------------------------


def test_to_dict_from_dict_round_trip_is_exact() -> None:
    """from_dict(to_dict(s)) equals s, and serialises to the identical dict."""
    state = apply_update(default_state("bob", T0), "humor_style_preference", "dry", 0.2, T1)
    data = state.to_dict()
    back = PersonalityState.from_dict(data)
    assert back == state
    assert back.to_dict() == data
    assert back.updated_at.tzinfo is UTC


@settings(max_examples=150)
@given(states())
def test_round_trip_property(state: PersonalityState) -> None:
    """For any valid state the dict round trip is exact, including datetimes to the µs."""
    data = state.to_dict()
    back = PersonalityState.from_dict(data)
    assert back == state
    assert back.to_dict() == data
    assert list(back.dimensions) == list(CATALOGUE)


@pytest.mark.parametrize("field", ["user_id", "version", "updated_at", "dimensions"])
def test_state_attributes_cannot_be_set(field: str) -> None:
    """A state is frozen: assigning any attribute raises AttributeError."""
    state = default_state("alice", T0)
    with pytest.raises(AttributeError):
        setattr(state, field, getattr(state, field))


def test_dimensions_mapping_is_read_only() -> None:
    """state.dimensions[...] = x raises TypeError; the dimension records are frozen too."""
    state = default_state("alice", T0)
    dim = state.dimensions["communication_formality"]
    with pytest.raises(TypeError):
        state.dimensions["communication_formality"] = dim  # type: ignore[index]
    with pytest.raises(AttributeError):
        setattr(dim, "value", 0.9)  # noqa: B010
    assert state.dimensions["communication_formality"].value == 0.5


# apply_update -----------------------------------------------------------------------------


def test_apply_update_bumps_version_and_leaves_the_rest() -> None:
    """apply_update: version+1, only the target dimension changes, the input is unchanged."""
    old = default_state("alice", T0)
    before = old.to_dict()
    new = apply_update(old, "communication_formality", 0.8, 0.1, T1)
    assert new.version == old.version + 1
    assert new.updated_at == T1
    changed = new.dimensions["communication_formality"]
    assert (changed.value, changed.last_updated) == (0.8, T1)
    assert changed.confidence == pytest.approx(0.4)
    assert changed.learning_rate == DEFAULT_LEARNING_RATE
    for name in CATALOGUE:
        if name != "communication_formality":
            assert new.dimensions[name] == old.dimensions[name]
    assert old.to_dict() == before


@pytest.mark.parametrize(("change", "expected"), [(0.9, 1.0), (5.0, 1.0), (-0.9, 0.0), (-5, 0.0)])
def test_apply_update_clamps_confidence(change: float, expected: float) -> None:
    """Confidence is clamped to [0, 1] however large the change."""
    new = apply_update(
        default_state("alice", T0), "response_length_preference", "brief", change, T1
    )
    assert new.dimensions["response_length_preference"].confidence == expected


def test_apply_update_rejects_a_value_the_catalogue_does_not_allow() -> None:
    """apply_update cannot produce a state with an invalid value."""
    with pytest.raises(InvalidStateError):
        apply_update(default_state("alice", T0), "humor_style_preference", "slapstick", 0.0, T1)


# from_dict rejects bad data ---------------------------------------------------------------


_DELETE = object()
_DIM = "dimensions"
_CORRUPTIONS: dict[str, tuple[tuple[str, ...], object]] = {
    "no dimensions": ((_DIM,), {}),
    "not a dimension name": (
        (_DIM, "Bogus Name"),
        default_state("x", T0).to_dict()[_DIM]["communication_formality"],
    ),
    "custom categorical not a string": (
        (_DIM, "sass_level"),
        {**default_state("x", T0).to_dict()[_DIM]["humor_style_preference"], "value": 5},
    ),
    "wrong value_type": ((_DIM, "communication_formality", "value_type"), "categorical"),
    "value out of range": ((_DIM, "communication_formality", "value"), 1.5),
    "unknown category": ((_DIM, "humor_style_preference", "value"), "slapstick"),
    "naive updated_at": (("updated_at",), "2026-01-01T12:00:00"),
    "naive last_updated": (
        (_DIM, "technical_depth_preference", "last_updated"),
        datetime(2026, 1, 1),
    ),
    "confidence 1.5": ((_DIM, "communication_formality", "confidence"), 1.5),
    "negative version": (("version",), -1),
    "bad user id": (("user_id",), "a\nb"),
    "unknown field": (("extra",), 1),
}


@pytest.mark.parametrize(("path", "value"), _CORRUPTIONS.values(), ids=list(_CORRUPTIONS))
def test_from_dict_rejects_bad_data(path: tuple[str, ...], value: object) -> None:
    """Each kind of corruption makes from_dict raise InvalidStateError, nothing else."""
    data = default_state("alice", T0).to_dict()
    target = data
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = copy.deepcopy(value)
    with pytest.raises(InvalidStateError):
        PersonalityState.from_dict(data)


@pytest.mark.parametrize(("version", "confidence"), [(-1, 0.3), (0, 1.5), (0, math.nan)])
def test_constructor_enforces_the_same_rules_as_decoding(version: int, confidence: float) -> None:
    """A state built in code is validated like one decoded from Redis (module docstring)."""
    base = default_state("alice", T0)
    dims = dict(base.dimensions)
    with pytest.raises(InvalidStateError):
        dims["communication_formality"] = msgspec.structs.replace(
            dims["communication_formality"], confidence=confidence
        )
        PersonalityState(user_id="alice", version=version, updated_at=T0, dimensions=dims)


# validate_user_id -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    [
        "",
        5,
        None,
        b"x",
        "a" * (MAX_USER_ID_BYTES + 1),
        "日" * 86,  # 86 x 3 bytes = 258 bytes, though only 86 characters
        "\U0001f600" * 65,  # 260 bytes
        "a\nb",
        "a\rb",
        "a\x00b",
        "a\x7fb",
        "\x1b[31m",
        "\ud800",
        "ok\udfff",
    ],
)
def test_invalid_user_ids_are_rejected(user_id: object) -> None:
    """Empty, non-string, over 256 UTF-8 bytes, control chars and lone surrogates raise."""
    with pytest.raises(InvalidUserIdError) as info:
        validate_user_id(user_id)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, InvalidInputError)


@pytest.mark.parametrize(
    "user_id",
    [
        "alice",
        "user:*?[]{}",
        "日本語",
        "with space",
        "%41",
        "a" * MAX_USER_ID_BYTES,
        "日" * 85,  # 255 bytes
        "\U0001f600" * 64,  # 256 bytes
    ],
)
def test_valid_user_ids_pass_unchanged(user_id: str) -> None:
    """Unicode, glob and brace characters and exactly-256-byte ids are valid and unchanged."""
    assert validate_user_id(user_id) == user_id


@settings(max_examples=200)
@given(st.text(max_size=300))
def test_any_text_is_accepted_or_rejected_cleanly(text: str) -> None:
    """Any text either passes validate_user_id or raises InvalidUserIdError, never another."""
    try:
        assert validate_user_id(text) == text
    except InvalidUserIdError:
        return
    assert 0 < len(text.encode("utf-8")) <= MAX_USER_ID_BYTES


# Dimension names, values and confidence changes -------------------------------------------


@pytest.mark.parametrize("name", ["nope", "", "Communication_Formality", 5, None])
def test_unknown_dimensions_are_rejected(name: object) -> None:
    """A name outside the catalogue raises UnknownDimensionError, in both validators."""
    with pytest.raises(UnknownDimensionError):
        validate_dimension_name(name)
    with pytest.raises(UnknownDimensionError):
        validate_dimension_value(name, 0.5)


@pytest.mark.parametrize("value", [0, 1, 0.0, 0.5, 1.0, -0.0])
def test_continuous_values_in_range_pass_as_float(value: float) -> None:
    """Reals in [0, 1], ints included, are accepted and normalised to float."""
    result = validate_dimension_value("communication_formality", value)
    assert isinstance(result, float)
    assert result == value


@pytest.mark.parametrize(
    ("dimension", "value"),
    [
        ("communication_formality", math.nan),
        ("communication_formality", math.inf),
        ("communication_formality", -math.inf),
        ("communication_formality", -0.1),
        ("communication_formality", 1.0000001),
        ("communication_formality", True),
        ("communication_formality", "0.5"),
        ("communication_formality", None),
        ("humor_style_preference", "slapstick"),
        ("humor_style_preference", "Dry"),
        ("humor_style_preference", 1),
        ("response_length_preference", None),
    ],
)
def test_invalid_dimension_values_are_rejected(dimension: str, value: object) -> None:
    """Values outside the dimension's range or options raise InvalidValueError."""
    with pytest.raises(InvalidValueError):
        validate_dimension_value(dimension, value)


@pytest.mark.parametrize("change", [math.nan, math.inf, -math.inf, "x", True, None])
def test_invalid_confidence_changes_are_rejected(change: object) -> None:
    """A confidence change must be a finite real number (bools excluded)."""
    with pytest.raises(InvalidValueError):
        validate_confidence_change(change)


@pytest.mark.parametrize("change", [0, -1, 0.25, -0.5, 10.0])
def test_finite_confidence_changes_pass_as_float(change: float) -> None:
    """Finite reals pass (clamping happens later) and come back as float."""
    result = validate_confidence_change(change)
    assert isinstance(result, float)
    assert result == change


@settings(max_examples=200)
@given(st.floats())
def test_any_float_is_accepted_or_rejected_cleanly(number: float) -> None:
    """Any float passes for a continuous dimension iff it is in [0, 1], else InvalidValueError."""
    try:
        result = validate_dimension_value("technical_depth_preference", number)
    except InvalidValueError:
        assert not 0.0 <= number <= 1.0
        return
    assert result == number
    assert 0.0 <= number <= 1.0
