"""The public surface: what ``import penny_cache`` exports and the exception tree."""

from __future__ import annotations

import importlib
import warnings

import pytest

import penny_cache
from penny_cache import errors

PUBLIC_NAMES = [
    "AsyncPersonalityCache",
    "AsyncPersonalityTracker",
    "CATALOGUE",
    "CacheError",
    "Catalogue",
    "ConfigurationError",
    "DimensionSpec",
    "EvolutionRecord",
    "InvalidInputError",
    "InvalidStateError",
    "InvalidUserIdError",
    "InvalidValueError",
    "PennyCacheError",
    "PersonalityCache",
    "PersonalityDimension",
    "PersonalityState",
    "PersonalityStore",
    "PersonalityTracker",
    "Settings",
    "StoreError",
    "StoreMismatchError",
    "StoreUnavailableError",
    "UnknownDimensionError",
    "get_shared_cache",
    "reset_shared_cache",
]

ERROR_NAMES = [
    "CacheDecodeError",
    "CacheError",
    "CacheIntegrityError",
    "CacheNotReplicatedError",
    "CacheTimeoutError",
    "CacheUnavailableError",
    "ConfigurationError",
    "InvalidInputError",
    "InvalidStateError",
    "InvalidUserIdError",
    "InvalidValueError",
    "PennyCacheError",
    "StoreConflictError",
    "StoreError",
    "StoreMismatchError",
    "StoreUnavailableError",
    "UncacheableValueError",
    "UnknownDimensionError",
]

# Each error and its direct parent, as drawn in the errors module docstring.
PARENTS = {
    "InvalidInputError": "PennyCacheError",
    "InvalidUserIdError": "InvalidInputError",
    "UnknownDimensionError": "InvalidInputError",
    "InvalidValueError": "InvalidInputError",
    "InvalidStateError": "InvalidInputError",
    "UncacheableValueError": "InvalidStateError",
    "ConfigurationError": "PennyCacheError",
    "StoreMismatchError": "ConfigurationError",
    "CacheError": "PennyCacheError",
    "CacheUnavailableError": "CacheError",
    "CacheTimeoutError": "CacheError",
    "CacheNotReplicatedError": "CacheError",
    "CacheDecodeError": "CacheError",
    "CacheIntegrityError": "CacheDecodeError",
    "StoreError": "PennyCacheError",
    "StoreUnavailableError": "StoreError",
    "StoreConflictError": "StoreError",
}


def test_package_all_is_pinned() -> None:
    """penny_cache.__all__ is exactly the agreed, sorted list of public names."""
    assert sorted(PUBLIC_NAMES) == PUBLIC_NAMES
    assert list(penny_cache.__all__) == PUBLIC_NAMES


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_is_importable(name: str) -> None:
    """Each exported name resolves on a fresh import of the package."""
    module = importlib.import_module("penny_cache")
    assert getattr(module, name) is not None


def test_star_import_gives_exactly_the_public_names() -> None:
    """``from penny_cache import *`` binds every name in __all__ and nothing else public."""
    namespace: dict[str, object] = {}
    exec("from penny_cache import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC_NAMES


def test_errors_all_is_pinned() -> None:
    """penny_cache.errors.__all__ is exactly the sorted list of its errors."""
    assert list(errors.__all__) == ERROR_NAMES
    for name in ERROR_NAMES:
        assert isinstance(getattr(errors, name), type)


def test_exported_errors_are_the_errors_module_classes() -> None:
    """The package re-exports the very classes in penny_cache.errors, not copies."""
    for name in PUBLIC_NAMES:
        if name in ERROR_NAMES:
            assert getattr(penny_cache, name) is getattr(errors, name)


@pytest.mark.parametrize(("child", "parent"), PARENTS.items())
def test_exception_tree(child: str, parent: str) -> None:
    """Each error derives from its documented parent and hence from PennyCacheError."""
    child_cls = getattr(errors, child)
    assert issubclass(child_cls, getattr(errors, parent))
    assert issubclass(child_cls, errors.PennyCacheError)
    assert issubclass(child_cls, Exception)


def test_every_error_is_placed_in_the_tree() -> None:
    """The tree covers every exported error (the root excepted)."""
    assert sorted([*PARENTS, "PennyCacheError"]) == ERROR_NAMES


def test_value_errors_are_input_and_configuration_errors_only() -> None:
    """Input and configuration errors are ValueErrors; Redis and SQL failures are not."""
    assert issubclass(errors.InvalidInputError, ValueError)
    assert issubclass(errors.ConfigurationError, ValueError)
    for name in ERROR_NAMES:
        cls = getattr(errors, name)
        expected = issubclass(cls, errors.InvalidInputError | errors.ConfigurationError)
        assert issubclass(cls, ValueError) == expected, name


def test_integrity_error_is_a_decode_error() -> None:
    """Catching CacheDecodeError also catches CacheIntegrityError (both mean: drop entry)."""
    assert issubclass(errors.CacheIntegrityError, errors.CacheDecodeError)
    with pytest.raises(errors.CacheDecodeError):
        raise errors.CacheIntegrityError("wrong user")


@pytest.mark.parametrize(
    ("old", "new"), [("get_cache", "get_shared_cache"), ("reset_cache", "reset_shared_cache")]
)
@pytest.mark.parametrize("module", ["penny_cache", "penny_cache.default"])
def test_old_names_still_work_with_a_deprecation_warning(module: str, old: str, new: str) -> None:
    """``penny_cache.get_cache``/``reset_cache`` (now ``get_shared_cache``/
    ``reset_shared_cache``) still resolve for one release, warning with the new name and
    the drop-in's own ``get_cache``; they are not in ``__all__``."""
    package = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=new) as caught:
        found = getattr(package, old)
    assert found is getattr(package, new)
    assert "personality_state_cache.get_cache" in str(caught[0].message)
    assert old not in penny_cache.__all__


def test_the_two_get_cache_functions_have_distinct_names() -> None:
    """The library's process-wide PersonalityCache is ``get_shared_cache``; the name
    ``get_cache`` without a warning belongs to the drop-in alone (Penny's import)."""
    from penny_cache import personality_state_cache

    assert "get_cache" in personality_state_cache.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert callable(personality_state_cache.get_cache)
    with pytest.raises(AttributeError):
        _ = penny_cache.no_such_name
