-- DECLINE: the client found the address in use; keep it out of use for the probation time.
--
-- KEYS: 1 expiry index (the client's hint is named after it, see prelude.lua), 2 exchange
--       claim, 3 offers index, 4 declined index
-- ARGV: 1 lease key prefix, 2 client id, 3 ip, 4 node, 5 claim ms, 6 probation ms, 7 mac,
--       8 when the message was received (ms, the nodes' clock)
-- Returns {'dup'} | {'declined'} | {'ignored', reason}
local zkey, claim_key = KEYS[1], KEYS[2]
local lp, cid, ip, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local hint_key = select(5, subnet_keys(zkey, cid))
local claim_ms, probation_ms, mac = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]

if not claim(claim_key, node, claim_ms) then return {'dup'} end
local key = lp .. ip
local rec = redis.call('HMGET', key, 'client_id', 'state', 'bound_at')
-- Accepted only from the client that holds the address: rogue DECLINEs would otherwise take
-- any address out of service (Kea made the same change).
if rec[1] ~= cid or rec[2] == 'declined' then return {'ignored', 'not-holder'} end
local now = now_ms()
-- Received before the lease was last bound: stale (see release.lua).
if rec[3] and tonumber(ARGV[8] or '0') < tonumber(rec[3]) then return {'ignored', 'stale'} end
redis.call('HSET', key, 'state', 'declined', 'node', node, 'mac', mac,
  'expires_at', math.floor((now + probation_ms) / 1000))
redis.call('PEXPIRE', key, probation_ms)
redis.call('ZADD', zkey, now + probation_ms, ip)
unindex_offer(KEYS[3], ip)
redis.call('ZADD', KEYS[4], now + probation_ms, ip)
if redis.call('GET', hint_key) == ip then redis.call('DEL', hint_key) end
return {'declined'}
