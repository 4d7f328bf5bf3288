"""Lua sources. Each is headed by its KEYS/ARGV contract; each is atomic on the server.

The transports run them with EVALSHA and reloads on NOSCRIPT, so a restarted Redis
(scripts gone) costs one extra round trip, never an error.

The version compare-and-set is one Lua function (``_CAS``) shared by the scripts that
write entries; an entry whose version cannot be read (``lua.VERSION``: not a string,
over the cap, a version that is not plain digits of bounded length) is overwritten (a
read would drop it anyway). Every script that reads an entry guards it (``lua.GUARD``;
a plain read is ``commands.Commands.get``). The drop-in's scripts are in
``penny_cache.redis.dropin_scripts``.
"""

from __future__ import annotations

from typing import Final

from penny_cache.redis.dropin_scripts import (
    COUNT_INDEXED,
    DELETE_INDEXED,
    GET_TICKET,
    SET_TICKETED,
)
from penny_cache.redis.lua import GUARD, NOW_US, VERSION, Script

__all__ = [
    "ALL_SCRIPTS",
    "COUNT_INDEXED",
    "DELETE_INDEXED",
    "DROP_PUBLISH",
    "FILL",
    "GET_TICKET",
    "INSPECT",
    "INVALIDATE_PUBLISH",
    "LEASE",
    "PUBLISH_FLUSH",
    "REBASE_COUNTERS",
    "REPAIR_COUNTERS",
    "REPLACE",
    "REPLACE_PUBLISH",
    "RETIRE_COUNTERS",
    "SET_TICKETED",
    "SHARD_PUBLISH",
    "TOMBSTONE",
    "TOMBSTONE_PUBLISH",
    "WRITE_PUBLISH",
    "Script",
]


# A strict-mode tombstone (``codec.encode_tombstone``) holds a version and no state: it
# refuses everything below its version, and the committed version itself replaces it.
# With a value key its marker sits in front of the 73-byte signature (``signing``).
_CAS: Final = (
    VERSION
    + """
local function cas(key, version, payload, ttl_ms, prefix)
  local stored = stored_version(key, prefix)
  if stored and stored >= tonumber(version) then
    if not (stored == tonumber(version) and is_tombstone(key)) then
      return 0
    end
  end
  redis.call('SET', key, payload, 'PX', ttl_ms)
  return 1
end
local function tombstone(key, version, payload, ttl_ms, prefix)
  local stored = stored_version(key, prefix)
  if stored and stored >= tonumber(version) then
    return 0
  end
  redis.call('SET', key, payload, 'PX', ttl_ms)
  return 1
end
"""
)

FILL: Final = Script(
    "FILL",
    (
        """
-- A fill after a SQL read: write unless the same or a newer version is there; release
-- the loader lease if this loader still holds it. Publishes nothing: a fill never
-- replaces anything another process may hold.
-- KEYS[1]  entry key          KEYS[2]  lease key (same slot)
-- ARGV[1]  version            ARGV[2]  envelope         ARGV[3]  TTL in ms
-- ARGV[4]  envelope prefix up to the version digits     ARGV[5]  lease token ('' = none)
-- returns  1 when written, 0 when a same-or-newer version is already there
"""
        + _CAS
        + """
local written = cas(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
if ARGV[5] ~= '' and redis.pcall('GET', KEYS[2]) == ARGV[5] then
  redis.call('DEL', KEYS[2])
end
return written
"""
    ),
)

LEASE: Final = Script(
    "LEASE",
    GUARD
    + """
-- Elect one loader per user: the entry if another loader already filled it, else the
-- lease if nobody holds it. Checking the entry first closes the race where a reader
-- missed just before a fill and would otherwise take a fresh lease after it.
-- KEYS[1]  entry key          KEYS[2]  lease key (same slot)
-- ARGV[1]  token              ARGV[2]  lease TTL in ms
-- ARGV[3]  the longest TTL an entry of ours may have left, in ms
-- returns  the entry (string) if present; -1 (over the cap), -2 (not a string) or -3
--          (no TTL, or a longer one than ours) when it was unlinked here (no lease
--          taken: load without one); else 1 when the lease is ours, 0 when held. A
--          lease key of another type is dropped.
local current = guarded_get(KEYS[1], ARGV[3])
if current then
  return current
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if type(redis.pcall('GET', KEYS[2])) == 'table' then
  redis.call('UNLINK', KEYS[2])
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
  end
end
return 0
""",
)

INSPECT: Final = Script(
    "INSPECT",
    VERSION
    + """
-- What refused a write-through: the stored version, whether it is a tombstone, and the
-- whole entry (what REPLACE_PUBLISH compares before replacing it; at most the cap).
-- KEYS[1]  entry key          ARGV[1]  envelope prefix up to the version digits
-- returns  {version digits, 1 if a tombstone else 0, entry}, or false when there is
--          no entry or its version is unreadable (a write replaces it)
local digits = stored_digits(KEYS[1], ARGV[1])
if not digits then
  return false
end
local tomb = is_tombstone(KEYS[1]) and 1 or 0
return {digits, tomb, redis.call('GET', KEYS[1])}
""",
)

_REPLACE: Final = """
local function replace(key, found, payload, ttl_ms)
  if redis.pcall('GET', key) == found then
    redis.call('SET', key, payload, 'PX', ttl_ms)
    return 1
  end
  return 0
end
"""

REPLACE: Final = Script(
    "REPLACE",
    _REPLACE
    + """
-- Replace an entry ahead of SQL with SQL's version, only if it is still exactly the
-- entry that was found (so a write that landed since is never overwritten). Redis
-- Cluster: the announcement is a second step.
-- KEYS[1]  entry key          ARGV[1]  the entry found (INSPECT)
-- ARGV[2]  SQL's envelope     ARGV[3]  TTL in ms
-- returns  1 when replaced, 0 when the entry had changed
return replace(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
""",
)

REPLACE_PUBLISH: Final = Script(
    "REPLACE_PUBLISH",
    _REPLACE
    + NOW_US
    + """
-- REPLACE, then tell every near cache to drop the user whatever its version (a near
-- cache holding the version that was ahead would keep it: it is not older than SQL's).
-- KEYS[1]  entry key          KEYS[2]  sequence key
-- ARGV[1]  the entry found    ARGV[2]  SQL's envelope    ARGV[3]  TTL in ms
-- ARGV[4]  channel            ARGV[5]  encoded user id
-- returns  {replaced (1/0), sequence number published}
local written = replace(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[4], seq .. '|*|' .. now_us() .. '|' .. ARGV[5])
return {written, seq}
""",
)

WRITE_PUBLISH: Final = Script(
    "WRITE_PUBLISH",
    (
        """
-- Write a committed (or explicitly set) state through, and tell every near cache.
-- KEYS[1]  entry key          KEYS[2]  sequence key
-- ARGV[1]  version            ARGV[2]  envelope         ARGV[3]  TTL in ms
-- ARGV[4]  envelope prefix    ARGV[5]  channel          ARGV[6]  encoded user id
-- returns  {written (1/0), sequence number published}
-- Publishes <seq>|<version>|<published us>|<user>, even when a newer version is there:
-- it only ever makes caches drop more.
"""
        + _CAS
        + NOW_US
        + """
local written = cas(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[5], seq .. '|' .. ARGV[1] .. '|' .. now_us() .. '|' .. ARGV[6])
return {written, seq}
"""
    ),
)

TOMBSTONE: Final = Script(
    "TOMBSTONE",
    (
        """
-- Strict mode, before a commit (Redis Cluster: the announcement is a second step).
-- KEYS[1]  entry key
-- ARGV[1]  version to be committed    ARGV[2]  tombstone    ARGV[3]  TTL in ms
-- ARGV[4]  envelope prefix
-- returns  1 when written, 0 when the same or a newer version is already there
"""
        + _CAS
        + """
return tombstone(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
    ),
)

TOMBSTONE_PUBLISH: Final = Script(
    "TOMBSTONE_PUBLISH",
    (
        """
-- Strict mode, before a commit: make the user's entry unusable below the version about
-- to be committed (a tombstone; fills and write-throughs below it are refused, that
-- version replaces it) and tell every near cache to drop older versions.
-- KEYS[1]  entry key          KEYS[2]  sequence key
-- ARGV[1]  version            ARGV[2]  tombstone        ARGV[3]  TTL in ms
-- ARGV[4]  envelope prefix    ARGV[5]  channel          ARGV[6]  encoded user id
-- returns  {written (1/0), sequence number published}
"""
        + _CAS
        + NOW_US
        + """
local written = tombstone(KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[5], seq .. '|' .. ARGV[1] .. '|' .. now_us() .. '|' .. ARGV[6])
return {written, seq}
"""
    ),
)

DROP_PUBLISH: Final = Script(
    "DROP_PUBLISH",
    (
        """
-- A write-through Redis refused (out of memory under noeviction, or a sequence key that
-- is not a number): drop the entry and tell every listener, needing no memory and not
-- touching the sequence key. Sequence number 0 is never the next one a listener
-- expects: it flushes its near cache (a gap), or, before its first message, drops the
-- user. UNLINK and PUBLISH are allowed when Redis is out of memory.
-- KEYS[1]  entry key          ARGV[1]  channel          ARGV[2]  encoded user id
-- returns  1
"""
        + NOW_US
        + """
redis.call('UNLINK', KEYS[1])
redis.call('PUBLISH', ARGV[1], '0|*|' .. now_us() .. '|' .. ARGV[2])
return 1
"""
    ),
)

INVALIDATE_PUBLISH: Final = Script(
    "INVALIDATE_PUBLISH",
    (
        """
-- Drop an entry and tell every near cache to drop the user, whatever its version.
-- KEYS[1]  entry key          KEYS[2]  sequence key
-- ARGV[1]  channel            ARGV[2]  encoded user id
-- returns  the sequence number published
"""
        + NOW_US
        + """
redis.call('UNLINK', KEYS[1])
local seq = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[1], seq .. '|*|' .. now_us() .. '|' .. ARGV[2])
return seq
"""
    ),
)

PUBLISH_FLUSH: Final = Script(
    "PUBLISH_FLUSH",
    (
        """
-- Tell every near cache to empty itself (after clear()).
-- KEYS[1]  sequence key       ARGV[1]  channel
-- returns  the sequence number published
"""
        + NOW_US
        + """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], seq .. '|flush|' .. now_us() .. '|')
return seq
"""
    ),
)

SHARD_PUBLISH: Final = Script(
    "SHARD_PUBLISH",
    (
        """
-- Redis Cluster: announce a change on one sharded invalidation channel. The sequence key
-- and the channel share a hash tag, so this runs in one slot, on the node owning it.
-- KEYS[1]  the shard's sequence key
-- ARGV[1]  the shard's channel    ARGV[2]  version, '*' or 'flush'    ARGV[3]  encoded user
-- returns  the sequence number published
"""
        + NOW_US
        + """
local seq = redis.call('INCR', KEYS[1])
redis.call('SPUBLISH', ARGV[1], seq .. '|' .. ARGV[2] .. '|' .. now_us() .. '|' .. ARGV[3])
return seq
"""
    ),
)

RETIRE_COUNTERS: Final = Script(
    "RETIRE_COUNTERS",
    """
-- Fold a closing process's cumulative counters into the 'retired' totals, exactly once.
-- KEYS[1]  the counters hash; fields are '<process>|<counter>'
-- KEYS[2]  the process's retired marker (same hash slot as KEYS[1])
-- ARGV[1]  process id
-- ARGV[2]  marker TTL in seconds (long enough to outlive any retry)
-- ARGV[3..] counter name, final cumulative value, name, value, ...
-- returns  1 when folded, 0 when this process was already folded (a retried call)
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then
  return 0
end
for i = 3, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], 'retired|' .. ARGV[i], ARGV[i + 1])
  redis.call('HDEL', KEYS[1], ARGV[1] .. '|' .. ARGV[i])
end
redis.call('HDEL', KEYS[1], ARGV[1] .. '|seen')
return 1
""",
)

REBASE_COUNTERS: Final = Script(
    "REBASE_COUNTERS",
    """
-- Reset a counters hash to zero while its processes keep publishing absolute values:
-- subtract what it holds per counter into '<baseline>|<counter>' (zero or negative).
-- Only integer fields of the named counters count, the baseline's own included, so a
-- second reset subtracts only what came since the first. Atomic per hash.
-- KEYS[1]  a counters hash    ARGV[1]  the baseline's name    ARGV[2..] counter names
-- returns  the number of counters rebased
local known = {}
for i = 2, #ARGV do
  known[ARGV[i]] = true
end
local sums = {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local name = string.match(fields[i], '|([^|]+)$')
  if name and known[name] and string.match(fields[i + 1], '^%-?%d+$') then
    sums[name] = (sums[name] or 0) + tonumber(fields[i + 1])
  end
end
local rebased = 0
for name, total in pairs(sums) do
  if total ~= 0 then
    redis.call('HINCRBY', KEYS[1], ARGV[1] .. '|' .. name, -total)
    rebased = rebased + 1
  end
end
return rebased
""",
)

REPAIR_COUNTERS: Final = Script(
    "REPAIR_COUNTERS",
    """
-- A counters key that is not a hash (whoever can write to Redis put it there) refuses
-- every flush of every process writing to it. It holds no counts of ours: unlink it, so
-- the next flush recreates the hash. Never touches a hash or a missing key.
-- KEYS[1]  a counters hash key
-- returns  the type it had when it was unlinked, or '' when it was left alone
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'hash' or kind == 'none' then
  return ''
end
redis.call('UNLINK', KEYS[1])
return kind
""",
)


# Every script the service runs: ``penny-cache load-scripts`` loads them for an ACL user
# that may only EVALSHA.
ALL_SCRIPTS: Final = (
    FILL,
    WRITE_PUBLISH,
    TOMBSTONE,
    TOMBSTONE_PUBLISH,
    DROP_PUBLISH,
    INVALIDATE_PUBLISH,
    PUBLISH_FLUSH,
    LEASE,
    RETIRE_COUNTERS,
    REPAIR_COUNTERS,
    REBASE_COUNTERS,
    SHARD_PUBLISH,
    GET_TICKET,
    SET_TICKETED,
    DELETE_INDEXED,
    COUNT_INDEXED,
    INSPECT,
    REPLACE,
    REPLACE_PUBLISH,
)
