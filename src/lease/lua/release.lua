-- RELEASE, or the withdrawal of an offer when the client chose another server.
--
-- KEYS: 1 expiry index, 2 exchange claim
-- ARGV: 1 lease key prefix, 2 client id, 3 ip, 4 node, 5 claim ms, 6 'release' | 'offer'
-- Returns {'dup'} | {'released'} | {'ignored', reason}
local zkey, claim_key = KEYS[1], KEYS[2]
local lp, cid, ip, node, claim_ms, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]

if not claim(claim_key, node, claim_ms) then return {'dup'} end
local key = lp .. ip
local rec = redis.call('HMGET', key, 'client_id', 'state')
-- Only the holder may give an address back; anyone else's RELEASE is forged or stale.
if rec[1] ~= cid or rec[2] == 'declined' then return {'ignored', 'not-holder'} end
if mode == 'offer' and rec[2] ~= 'offered' then return {'ignored', 'not-offered'} end
redis.call('DEL', key)
-- Score "now": free at once, but behind every address that has been free for longer, and the
-- client hint stays, so the client gets this address back if nobody took it meanwhile.
redis.call('ZADD', zkey, now_ms(), ip)
return {'released'}
