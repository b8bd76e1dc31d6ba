-- Utilisation of one subnet, for metrics and the subnets view. Read-mostly: it only trims
-- index entries that ran out. O(log n) per index, whatever the pool size.
--
-- KEYS: 1 expiry index, 2 offers index, 3 declined index
-- Returns {in use (live records of any state), offers held, declined}
local now = now_ms()
-- The offers index lives on the primary only (see unindex_offer).
redis.set_repl(redis.REPL_NONE)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.set_repl(redis.REPL_ALL)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
return {
  redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf'),
  redis.call('ZCARD', KEYS[2]),
  redis.call('ZCARD', KEYS[3]),
}
