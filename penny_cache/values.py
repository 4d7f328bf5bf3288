"""The drop-in's values: what ``set()`` stored comes back from ``get()`` equal and with
its types, or ``set()`` refuses it. JSON through msgspec, never pickle.

JSON forgets types: a dataclass comes back a dict, a ``datetime`` a string. So an entry
carries, next to the JSON, a small description of the types JSON cannot say (``types``;
``null`` when the value is plain JSON)::

    null                         JSON as decoded (dict with str keys, list, str, int,
                                 float, bool, None)
    "datetime" "date" "time"     that type, from its ISO string (naive stays naive)
    {"c": "module:Qualname"}     a dataclass or msgspec Struct, rebuilt by msgspec.convert
                                 (its fields follow its annotations)
    {"l": [t0, t1, ...]}         a list whose item i is described by t_i
    {"d": {"key": t, ...}}       a dict; only the keys whose values need a description

A class is rebuilt only if its module is already in ``sys.modules`` and the name there is
a dataclass or Struct: nothing is ever imported or called because Redis named it, and
anything else is a ``CacheDecodeError`` (the cache counts a decode error and answers a
miss; a class this process has not loaded is a ``ClassNotLoadedError``, and the entry,
valid for the processes that have it, is kept). With ``value_type`` the caller names the
type instead, and the description is not used. Either way ``encode`` decodes what it
made and compares (``==``, and the types again): a value that would not come back as it
was (a tuple, a set, a class defined inside a function, a dataclass field whose
annotation does not say its type) raises ``UncacheableValueError`` (a ``TypeError``)
naming the type and what to do.
"""

from __future__ import annotations

import dataclasses
import sys
from datetime import date, datetime, time
from typing import Any, Final

import msgspec

from penny_cache.codec import ENVELOPE_SCHEMA, MAX_ENTRY_BYTES
from penny_cache.errors import (
    CacheDecodeError,
    CacheIntegrityError,
    InvalidStateError,
    UncacheableValueError,
)
from penny_cache.state import builtin_hook

__all__ = ["ClassNotLoadedError", "ValueCodec", "describe"]

_JSON_SCALARS: Final = (str, int, float, bool, type(None))
_TIMES: Final = {datetime: "datetime", date: "date", time: "time"}
_BY_NAME: Final = {name: kind for kind, name in _TIMES.items()}
_HOW: Final = (
    "the drop-in caches JSON values (dicts with str keys, lists, str, int, float, bool, "
    "None), datetime/date/time, and dataclasses or msgspec Structs defined at module "
    "level (with annotated fields), nested in any way; convert the value to one of "
    "those, or name its type with PersonalityStateCache(value_type=...)"
)


class ClassNotLoadedError(CacheDecodeError):
    """An entry names a class this process has not loaded (yet): a miss here, but a
    valid entry for the processes that have it, so it is not dropped."""


class _Envelope(msgspec.Struct, frozen=True):
    schema: int
    version: int
    user: str
    value: msgspec.Raw
    types: Any = None


_encoder = msgspec.json.Encoder(enc_hook=builtin_hook)
_envelope_decoder = msgspec.json.Decoder(_Envelope)


def _refuse(value: Any, path: str, why: str = "") -> UncacheableValueError:
    kind = type(value)
    name = f"{kind.__module__}.{kind.__qualname__}"
    return UncacheableValueError(f"cannot cache the {name} at {path}{why}: {_HOW}")


def describe(value: Any, path: str = "value") -> Any:
    """The type description of ``value`` (see the module docstring); raises
    ``UncacheableValueError`` for a type it cannot describe."""
    kind = type(value)
    if kind in _JSON_SCALARS:
        return None
    if kind in _TIMES:
        return _TIMES[kind]
    if kind is list:
        items = [describe(item, f"{path}[{n}]") for n, item in enumerate(value)]
        return {"l": items} if any(item is not None for item in items) else None
    if kind is dict:
        return _describe_dict(value, path)
    if isinstance(value, msgspec.Struct) or dataclasses.is_dataclass(value):
        name = f"{kind.__module__}:{kind.__qualname__}"
        if "<" in kind.__qualname__:
            raise _refuse(value, path, " (defined inside a function)")
        return {"c": name}
    raise _refuse(value, path)


def _describe_dict(value: dict[Any, Any], path: str) -> Any:
    described = {}
    for key, item in value.items():
        if type(key) is not str:
            raise _refuse(key, f"a key of {path}", " (JSON object keys are strings)")
        about = describe(item, f"{path}[{key!r}]")
        if about is not None:
            described[key] = about
    return {"d": described} if described else None


def _loaded_class(name: Any) -> type[Any]:
    """The dataclass or Struct ``name`` names, if its module is already loaded."""
    if not isinstance(name, str):
        raise CacheDecodeError("malformed type description")
    module_name, _, qualname = name.partition(":")
    found: Any = sys.modules.get(module_name)
    if found is None:
        raise ClassNotLoadedError(f"{module_name} is not loaded in this process")
    for part in qualname.split("."):
        # vars(), not getattr(): a module's __getattr__ could import or compute things
        found = vars(found).get(part) if hasattr(found, "__dict__") else None
    if found is None:
        raise ClassNotLoadedError(f"{name} is not defined in this process")
    if not isinstance(found, type) or not (
        issubclass(found, msgspec.Struct) or dataclasses.is_dataclass(found)
    ):
        raise CacheDecodeError(f"{name} is not a loaded dataclass or Struct")
    return found


def _rebuild(value: Any, about: Any) -> Any:
    """``value`` (decoded JSON) turned back into the types ``about`` describes."""
    if about is None:
        return value
    if isinstance(about, str) and about in _BY_NAME:
        return msgspec.convert(value, _BY_NAME[about])
    if isinstance(about, dict) and len(about) == 1:
        ((tag, inner),) = about.items()
        if tag == "c":
            return msgspec.convert(value, _loaded_class(inner))
        if tag == "l" and isinstance(value, list) and isinstance(inner, list):
            if len(inner) != len(value):
                raise CacheDecodeError("type description does not fit the value")
            return [_rebuild(item, kind) for item, kind in zip(value, inner, strict=True)]
        if tag == "d" and isinstance(value, dict) and isinstance(inner, dict):
            return {key: _rebuild(item, inner.get(key)) for key, item in value.items()}
    raise CacheDecodeError("malformed type description")


class ValueCodec:
    """Encode and decode the drop-in's values; ``value_type`` (a msgspec type: a class,
    ``dict[str, Dimension]``, ...) names the type to rebuild instead of the description."""

    def __init__(self, value_type: Any = None) -> None:
        self.value_type = value_type
        self._typed = None if value_type is None else msgspec.json.Decoder(value_type)

    def encode(self, user_id: str, value: Any) -> bytes:
        """The entry for ``value``, checked to decode back equal, with the same types."""
        about = describe(value) if self._typed is None else None
        try:
            raw = _encoder.encode(value)
        except (TypeError, NotImplementedError, msgspec.EncodeError, OverflowError) as exc:
            raise _refuse(value, "value", f" ({exc})") from exc
        payload = _encoder.encode(_Envelope(ENVELOPE_SCHEMA, 0, user_id, msgspec.Raw(raw), about))
        if len(payload) > MAX_ENTRY_BYTES:
            raise InvalidStateError(
                f"entry is {len(payload)} bytes; the limit is {MAX_ENTRY_BYTES}"
            )
        try:
            back = self.decode(payload, user_id)
        except CacheDecodeError as exc:
            raise _refuse(value, "value", f" (it would not decode: {exc})") from exc
        if back != value or (self._typed is None and describe(back) != about):
            came = type(back).__name__
            raise _refuse(value, "value", f" (it would come back unequal, as a {came})")
        return payload

    def decode(self, payload: bytes, user_id: str) -> Any:
        """The value of an entry read under ``user_id``'s key, or ``CacheDecodeError``."""
        if len(payload) > MAX_ENTRY_BYTES:
            raise CacheDecodeError("entry exceeds the size cap")
        try:
            envelope = _envelope_decoder.decode(payload)
            if envelope.schema != ENVELOPE_SCHEMA:
                raise CacheDecodeError(f"entry has schema {envelope.schema}")
            if envelope.user != user_id:
                raise CacheIntegrityError("entry belongs to another user than its key")
            if self._typed is not None:
                return self._typed.decode(envelope.value)
            return _rebuild(msgspec.json.decode(envelope.value), envelope.types)
        except CacheDecodeError:
            raise
        except Exception as exc:  # a rebuilt class's __post_init__ may raise anything
            # what kind, not what: messages may quote (personal) values
            raise CacheDecodeError(f"undecodable entry ({type(exc).__name__})") from exc
