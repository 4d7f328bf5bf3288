"""Lua sources. Each is headed by its KEYS/ARGV contract; each is atomic on the server.

redis-py's ``Script`` objects call EVALSHA and reload on NOSCRIPT, so a restarted Redis
(scripts gone) costs one extra round trip, never an error.
"""

from __future__ import annotations

from typing import Final

__all__ = ["RETIRE_COUNTERS", "SET_IF_NEWER"]

SET_IF_NEWER: Final = """
-- Version compare-and-set fill: never replace an entry of the same or a newer version.
-- KEYS[1]  entry key
-- ARGV[1]  version of the new entry (integer)
-- ARGV[2]  the new envelope
-- ARGV[3]  TTL in milliseconds
-- ARGV[4]  literal prefix of a current-schema envelope, up to the version digits
-- returns  1 when written, 0 when a same-or-newer version is already there
-- An entry whose version cannot be read is overwritten (a read would drop it anyway).
local current = redis.call('GET', KEYS[1])
if current then
  local prefix = ARGV[4]
  if string.sub(current, 1, #prefix) == prefix then
    local stored = tonumber(string.match(current, '^(%d+),', #prefix + 1))
    if stored and stored >= tonumber(ARGV[1]) then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

RETIRE_COUNTERS: Final = """
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
"""
