"""Lua sources. Each is headed by its KEYS/ARGV contract; each is atomic on the server.

The transports run them with EVALSHA and reloads on NOSCRIPT, so a restarted Redis
(scripts gone) costs one extra round trip, never an error.

The version compare-and-set is one Lua function (``_CAS``) shared by the scripts that
write entries; an entry whose version cannot be read is overwritten (a read would drop
it anyway).
"""

from __future__ import annotations

import hashlib
from typing import Final

__all__ = [
    "ALL_SCRIPTS",
    "COUNT_INDEXED",
    "DELETE_INDEXED",
    "DROP_PUBLISH",
    "FILL",
    "GET_TICKET",
    "INVALIDATE_PUBLISH",
    "LEASE",
    "PUBLISH_FLUSH",
    "RETIRE_COUNTERS",
    "SET_TICKETED",
    "SHARD_PUBLISH",
    "TOMBSTONE",
    "TOMBSTONE_PUBLISH",
    "WRITE_PUBLISH",
    "Script",
]


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
_NOW_US: Final = """
local function now_us()
  local t = redis.call('TIME')
  return t[1] .. string.rep('0', 6 - #t[2]) .. t[2]
end
"""

# A strict-mode tombstone (``codec.encode_tombstone``) holds a version and no state: it
# refuses everything below its version, and the committed version itself replaces it.
# With a value key its marker sits in front of the 73-byte signature (``signing``).
_CAS: Final = """
local function is_tombstone(current)
  local tail = string.sub(current, -14)
  if tail ~= '"tombstone":1}' and string.sub(current, -73, -73) == '~' then
    tail = string.sub(current, -87, -74)
  end
  return tail == '"tombstone":1}'
end
local function stored_version(current, prefix)
  if current and string.sub(current, 1, #prefix) == prefix then
    return tonumber(string.match(current, '^(%d+),', #prefix + 1))
  end
  return nil
end
local function cas(key, version, payload, ttl_ms, prefix)
  local current = redis.call('GET', key)
  local stored = stored_version(current, prefix)
  if stored and stored >= tonumber(version) then
    if not (is_tombstone(current) and stored == tonumber(version)) then
      return 0
    end
  end
  redis.call('SET', key, payload, 'PX', ttl_ms)
  return 1
end
local function tombstone(key, version, payload, ttl_ms, prefix)
  local stored = stored_version(redis.call('GET', key), prefix)
  if stored and stored >= tonumber(version) then
    return 0
  end
  redis.call('SET', key, payload, 'PX', ttl_ms)
  return 1
end
"""

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
if ARGV[5] ~= '' and redis.call('GET', KEYS[2]) == ARGV[5] then
  redis.call('DEL', KEYS[2])
end
return written
"""
    ),
)

LEASE: Final = Script(
    "LEASE",
    """
-- Elect one loader per user: the entry if another loader already filled it, else the
-- lease if nobody holds it. Checking the entry first closes the race where a reader
-- missed just before a fill and would otherwise take a fresh lease after it.
-- KEYS[1]  entry key          KEYS[2]  lease key (same slot)
-- ARGV[1]  token              ARGV[2]  lease TTL in ms
-- returns  the entry (string) if present; else 1 when the lease is ours, 0 when held
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
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
        + _NOW_US
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
        + _NOW_US
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
        + _NOW_US
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
        + _NOW_US
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
        + _NOW_US
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
        + _NOW_US
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


# The drop-in's scripts (``PersonalityStateCache``). Its fills follow memcache's leases: a
# miss hands out the key's current ticket, any write or invalidation ends every ticket of
# the key, and a fill presenting an ended ticket is refused, so a fill that read the
# database before a change cannot land after it. Tickets are unique tokens (never
# counters), so a deleted or expired ticket key can never make an old ticket current
# again. The index (entries scored by expiry, server time in ms) gives the cache's size
# without SCAN.
_NOW_MS: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

GET_TICKET: Final = Script(
    "GET_TICKET",
    """
-- The drop-in's read: the entry, or on a miss the key's current fill ticket.
-- KEYS[1]  entry key      KEYS[2]  ticket key      KEYS[3]  index (all in one slot)
-- ARGV[1]  index member   ARGV[2]  token to become the ticket if none is current
-- ARGV[3]  ticket TTL in ms
-- returns  {entry, ''} on a hit; {false, ticket} on a miss (the member leaves the index)
local current = redis.call('GET', KEYS[1])
if current then
  return {current, ''}
end
redis.call('ZREM', KEYS[3], ARGV[1])
local ticket = redis.call('GET', KEYS[2])
if not ticket then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  ticket = ARGV[2]
end
return {false, ticket}
""",
)

SET_TICKETED: Final = Script(
    "SET_TICKETED",
    (
        """
-- The drop-in's write. With a ticket, only while it is the key's current one (no write
-- or invalidation since the miss that handed it out). A write ends every ticket.
-- KEYS[1]  entry key      KEYS[2]  ticket key      KEYS[3]  index (all in one slot)
-- ARGV[1]  index member   ARGV[2]  payload         ARGV[3]  TTL in ms
-- ARGV[4]  ticket ('' = write unconditionally)
-- returns  1 when written, 0 when the ticket was no longer current
"""
        + _NOW_MS
        + """
if ARGV[4] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[4] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
"""
    ),
)

DELETE_INDEXED: Final = Script(
    "DELETE_INDEXED",
    """
-- The drop-in's invalidation: the entry, every ticket of the key, the index member.
-- KEYS[1]  entry key      KEYS[2]  ticket key      KEYS[3]  index (all in one slot)
-- ARGV[1]  index member
-- returns  1 when the entry existed, else 0
local existed = redis.call('UNLINK', KEYS[1])
redis.call('DEL', KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
return existed
""",
)

COUNT_INDEXED: Final = Script(
    "COUNT_INDEXED",
    (
        """
-- The drop-in's size: drop members whose expiry has passed, count the rest.
-- KEYS[1]  index
-- returns  the number of entries not yet expired
"""
        + _NOW_MS
        + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
return redis.call('ZCARD', KEYS[1])
"""
    ),
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
    SHARD_PUBLISH,
    GET_TICKET,
    SET_TICKETED,
    DELETE_INDEXED,
    COUNT_INDEXED,
)
