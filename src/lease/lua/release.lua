-- RELEASE, the withdrawal of an offer when the client chose another server, or an operator's
-- release.
--
-- KEYS: 1 expiry index, 2 exchange claim, 3 offers index, 4 declined index (force only)
-- ARGV: 1 lease key prefix, 2 client id, 3 ip, 4 node, 5 claim ms,
--       6 'release' | 'offer' | 'force' ('force': an operator's release, whoever holds it),
--       7 when the message was received (ms, the nodes' clock)
-- Returns {'dup'} | {'released'} | {'ignored', reason}
local zkey, claim_key = KEYS[1], KEYS[2]
local lp, cid, ip, node, claim_ms, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]

local key = lp .. ip
local rec = redis.call('HMGET', key, 'client_id', 'state', 'bound_at')
local now = now_ms()
if mode == 'force' then
  if rec[1] == false and rec[2] == false then return {'ignored', 'no-lease'} end
else
  if not claim(claim_key, node, claim_ms) then return {'dup'} end
  -- Only the holder may give an address back; anyone else's RELEASE is forged or stale.
  if rec[1] ~= cid or rec[2] == 'declined' then return {'ignored', 'not-holder'} end
  if mode == 'offer' and rec[2] ~= 'offered' then return {'ignored', 'not-offered'} end
  -- A RELEASE that was received before the lease was last bound is stale: it waited (in a
  -- stopped node, behind a backlog) while the client got its address back.
  if rec[3] and tonumber(ARGV[7] or '0') < tonumber(rec[3]) then return {'ignored', 'stale'} end
end
redis.call('DEL', key)
-- Score "now": free at once, but behind every address that has been free for longer, and the
-- client hint stays, so the client gets this address back if nobody took it meanwhile.
redis.call('ZADD', zkey, now, ip)
unindex_offer(KEYS[3], ip)
if KEYS[4] then redis.call('ZREM', KEYS[4], ip) end
return {'released'}
