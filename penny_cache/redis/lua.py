"""The pieces every Lua script shares: the ``Script`` record and the Lua functions that
read an entry without trusting it.

An entry key may hold anything whoever can write to Redis put there: a value far over
``signing.MAX_STORED_BYTES``, a LIST or HASH, a version no SQL row ever had. Every script
that reads an entry goes through ``GUARD`` or ``VERSION``: the size and the type are
checked on the server (``STRLEN``, which is O(1) and answers WRONGTYPE for a key of
another type) before a byte of the value leaves Redis, and a bad entry is unlinked
there. A plain read needs no script: ``commands.Commands.get`` reads with ``GETRANGE``
bounded by the cap. So one bad key costs its own user a miss, never a transfer that
times out and trips the breaker every user shares, nor a WRONGTYPE reply on every read.
"""

from __future__ import annotations

import hashlib
from typing import Final

from penny_cache.codec import MAX_VERSION_DIGITS
from penny_cache.signing import MAX_STORED_BYTES, SIGNATURE_BYTES

_TAIL: Final = 14 + SIGNATURE_BYTES  # a tombstone's marker, and the signature after it

__all__ = ["GUARD", "NOW_MS", "NOW_US", "VERSION", "Script"]


class Script:
    """A named Lua source and its SHA1, for EVALSHA (``SCRIPT LOAD`` on NOSCRIPT)."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str, source: str) -> None:
        self.name = name
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r}, sha={self.sha[:8]})"


# The publish time (Redis TIME, microseconds) goes into every message: receivers measure
# the invalidation lag against it. Scripts may call TIME: Redis 7 replicates effects.
NOW_US: Final = """
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
end
"""

NOW_MS: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# guarded_get answers the entry, false (none), -1 (larger than the cap: unlinked), -2
# (not a string: unlinked) or -3 (no TTL, or more left than ``max_ttl_ms``: unlinked).
# Every entry penny_cache writes has a TTL of at most PENNY_CACHE_TTL, so one without,
# or with more, was written by someone else: dropping it bounds how long a forged entry
# is served to one cache TTL. ``max_ttl_ms`` '' skips that check (the drop-in's TTLs are
# the caller's). redis.pcall returns an error as a table instead of raising.
GUARD: Final = f"""
local ENTRY_CAP = {MAX_STORED_BYTES}
local function guarded_get(key, max_ttl_ms)
  local size = redis.pcall('STRLEN', key)
  if type(size) == 'table' then
    redis.call('UNLINK', key)
    return -2
  end
  if size > ENTRY_CAP then
    redis.call('UNLINK', key)
    return -1
  end
  if size > 0 and max_ttl_ms and max_ttl_ms ~= '' then
    local left = redis.call('PTTL', key)
    if left == -1 or left > tonumber(max_ttl_ms) then
      redis.call('UNLINK', key)
      return -3
    end
  end
  return redis.call('GET', key)
end
"""

# The version an entry claims, read from its prefix only (GETRANGE: never the whole
# value): digits only, no leading zero, at most MAX_VERSION_DIGITS (so a Lua double holds
# it exactly), the same rule ``codec`` applies. Anything else (another type, over the
# cap, no such prefix) is unreadable: nil, and a write replaces it.
VERSION: Final = f"""
local VERSION_DIGITS = {MAX_VERSION_DIGITS}
local function stored_digits(key, prefix)
  local size = redis.pcall('STRLEN', key)
  if type(size) == 'table' or size == 0 or size > {MAX_STORED_BYTES} then
    return nil
  end
  local head = redis.call('GETRANGE', key, 0, #prefix + VERSION_DIGITS)
  if string.sub(head, 1, #prefix) ~= prefix then
    return nil
  end
  local digits = string.match(head, '^(%d+),', #prefix + 1)
  if not digits or #digits > VERSION_DIGITS then
    return nil
  end
  if #digits > 1 and string.sub(digits, 1, 1) == '0' then
    return nil
  end
  return digits
end
local function stored_version(key, prefix)
  local digits = stored_digits(key, prefix)
  return digits and tonumber(digits)
end
local function is_tombstone(key)
  local tail = redis.call('GETRANGE', key, -{_TAIL}, -1)
  if string.sub(tail, -14) == '"tombstone":1}}' then
    return true
  end
  return string.sub(tail, -{SIGNATURE_BYTES}, -{SIGNATURE_BYTES}) == '~'
    and string.sub(tail, 1, 14) == '"tombstone":1}}'
end
"""
