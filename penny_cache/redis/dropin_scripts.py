"""The drop-in's Lua scripts (``PersonalityStateCache``), each headed by its KEYS/ARGV.

Its fills follow memcache's leases: a miss hands out the key's current ticket, any write
or invalidation ends every ticket of the key, and a fill presenting an ended ticket is
refused, so a fill that read the database before a change cannot land after it. Tickets
are unique tokens (never counters), so a deleted or expired ticket key can never make an
old ticket current again. The index (entries scored by expiry, server time in ms) gives
the cache's size without SCAN.

A key of the wrong type is repaired where it is met, never answered with WRONGTYPE: an
entry over the cap or of another type is unlinked (``lua.GUARD``), a ticket key of
another type is dropped (a fresh ticket is handed out), and an index of another type is
dropped and begun again (the index is the namespace's: without this one bad key failed
every drop-in read; the size then counts only entries written since). A ticket key
longer than any token (``TICKET_CAP``) is dropped too: it would be sent on every miss.
"""

from __future__ import annotations

from typing import Final

from penny_cache.redis.lua import GUARD, NOW_MS, Script

__all__ = ["COUNT_INDEXED", "DELETE_INDEXED", "GET_TICKET", "SET_TICKETED", "TICKET_CAP"]

# Tickets are short tokens (a process prefix and a counter); a ticket key holding more
# was not made here, and sending it back on every miss would be a transfer per read.
TICKET_CAP: Final = 256

# zrem/zadd on the index, dropping an index of another type first
_INDEX: Final = """
local function index_call(command, key, ...)
  local answer = redis.pcall(command, key, ...)
  if type(answer) == 'table' and answer.err then
    redis.call('UNLINK', key)
    answer = redis.call(command, key, ...)
  end
  return answer
end
"""

GET_TICKET: Final = Script(
    "GET_TICKET",
    GUARD
    + _INDEX
    + f"""
local TICKET_CAP = {TICKET_CAP}
"""
    + """
-- The drop-in's read: the entry, or on a miss the key's current fill ticket.
-- KEYS[1]  entry key      KEYS[2]  ticket key      KEYS[3]  index (all in one slot)
-- ARGV[1]  index member   ARGV[2]  token to become the ticket if none is current
-- ARGV[3]  ticket TTL in ms
-- returns  {entry, ''} on a hit; on a miss {false, ticket}, or {-1 (over the cap) or
--          -2 (not a string), ticket} when the entry was unlinked here; the member
--          leaves the index
local current = guarded_get(KEYS[1])
if type(current) == 'string' then
  return {current, ''}
end
index_call('ZREM', KEYS[3], ARGV[1])
local ticket = false
local size = redis.pcall('STRLEN', KEYS[2])
if type(size) == 'table' or size > TICKET_CAP then
  redis.call('UNLINK', KEYS[2])  -- not a ticket we made: never sent back
elseif size > 0 then
  ticket = redis.call('GET', KEYS[2])
end
if not ticket then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  ticket = ARGV[2]
end
return {current, ticket}
""",
)

SET_TICKETED: Final = Script(
    "SET_TICKETED",
    NOW_MS
    + _INDEX
    + """
-- The drop-in's write. With a ticket, only while it is the key's current one (no write
-- or invalidation since the miss that handed it out). A write ends every ticket.
-- KEYS[1]  entry key      KEYS[2]  ticket key      KEYS[3]  index (all in one slot)
-- ARGV[1]  index member   ARGV[2]  payload         ARGV[3]  TTL in ms
-- ARGV[4]  ticket ('' = write unconditionally)
-- returns  1 when written, 0 when the ticket was no longer current
if ARGV[4] ~= '' and redis.pcall('GET', KEYS[2]) ~= ARGV[4] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('UNLINK', KEYS[2])
index_call('ZADD', KEYS[3], now_ms() + tonumber(ARGV[3]), ARGV[1])
return 1
""",
)

DELETE_INDEXED: Final = Script(
    "DELETE_INDEXED",
    _INDEX
    + """
-- The drop-in's invalidation: the entry, every ticket of the key, the index member.
-- KEYS[1]  entry key      KEYS[2]  ticket key      KEYS[3]  index (all in one slot)
-- ARGV[1]  index member
-- returns  1 when the entry existed, else 0
local existed = redis.call('UNLINK', KEYS[1])
redis.call('UNLINK', KEYS[2])
index_call('ZREM', KEYS[3], ARGV[1])
return existed
""",
)

COUNT_INDEXED: Final = Script(
    "COUNT_INDEXED",
    NOW_MS
    + _INDEX
    + """
-- The drop-in's size: drop members whose expiry has passed, count the rest.
-- KEYS[1]  index
-- returns  the number of entries not yet expired
index_call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms())
return index_call('ZCARD', KEYS[1])
""",
)
