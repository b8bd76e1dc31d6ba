-- REQUEST (any client state): confirm or extend a lease, or refuse it.
--
-- KEYS: as discover.lua (1 expiry index, 2 exchange claim)
-- ARGV: 1 client id, 2 mac, 3 hostname, 4 node, 5 '1' when the address asked for lies in
--       the ranges open to the client (the node knows them), else '0', 6 lease ms,
--       7 claim ms, 8 the address asked for, 9 the client's own reservation or '', 10 hint ttl
--       s, 11 relay ip or '', 12 authoritative '1' | '0', 13 the node's clock (ms),
--       14 circuit id, 15 remote id (hex or ''), 16 and 17 the lease's end on the node's
--       clock, in ms and in s
-- Returns {'dup'} | {'ack', ip, how} (how: reserved | renewed | selected | recovered)
--       | {'nak', reason} | {'silent', reason}
-- Times stay the strings the node sent (see discover.lua).
local zkey, claim_key = KEYS[1], KEYS[2]
local cid, mac, host, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local base, lp, offered_key, count_key, hint_key = subnet_keys(zkey, cid)
-- The client's hint, and whether the subnet has reservations at all (see discover.lua).
local known = redis.call('MGET', hint_key, count_key)
local hint, reserved_key = known[1], known[2] and base .. 'reserved'
local lease_ms, claim_ms = ARGV[6], ARGV[7]
local ip, own, hint_ttl, relay = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local authoritative = ARGV[12] == '1'
-- The node's clock now (ms): bound_at is kept on the nodes' clock, the one RELEASE and
-- DECLINE arrival times are read on; the index scores are on it too (see discover.lua).
local now = ARGV[13]
local circuit, remote = ARGV[14], ARGV[15]
local until_ms, until_s = ARGV[16], ARGV[17]
-- A reservation added at run time (admin API) when the config has none for this client.
if own == '' and reserved_key then own = redis.call('HGET', base .. 'resv:api', mac) or '' end

if not claim(claim_key, node, claim_ms) then return {'dup'} end

-- How to refuse: a NAK when we are authoritative or know this client (or it holds the
-- address in question); otherwise RFC 2131 4.3.2 wants silence towards a client we have no
-- record of, so that another server may answer it. (A value, not a local function: that
-- would be a closure made on every call.)
local refusal = (authoritative or hint) and 'nak' or 'silent'

-- A client with a reservation is moved to it (a NAK sends it back to DISCOVER), unless the
-- reserved address is held by someone else, in which case it keeps a dynamic one meanwhile.
if own ~= '' and ip ~= own then
  local who = probe(lp, reserved_key, own, cid, own)
  if who ~= 'taken' then return {who == 'mine' and 'nak' or refusal, 'reservation'} end
end

if ip ~= own and ARGV[5] ~= '1' then return {refusal, 'outside-pool'} end

local who, state, replaced = probe(lp, reserved_key, ip, cid, own)
if who == 'taken' then
  if state == 'declined' then return {refusal, 'declined'} end
  return {refusal, 'taken'}
end
if who == 'free' and not authoritative and not hint then
  return {'silent', 'no-record'}
end

local how
if ip == own then how = 'reserved'
elseif who == 'free' then how = 'recovered'
elseif state == 'bound' then how = 'renewed'
else how = 'selected' end

-- One lease per client and subnet: an address it held before goes back to the pool (the hint
-- names it, or the offer recorded which address it replaces).
if hint and hint ~= ip then give_back(lp, zkey, offered_key, hint, cid, now) end
if replaced and replaced ~= ip then give_back(lp, zkey, offered_key, replaced, cid, now) end
if replaced then redis.call('HDEL', lp .. ip, 'replaces') end

bind(lp, zkey, offered_key, ip, state, mac, host, cid, node, relay, circuit, remote, now,
  lease_ms, until_ms, until_s)
-- The hint outlives the lease by the sticky time. The DISCOVER that made the offer bound here
-- set it to this address for the lease, the sticky time and the offer time (and an offer lives
-- no longer than that): it already does. Anything else (a renewal, a reboot) sets it again.
if not (state == 'offered' and hint == ip) then
  redis.call('SET', hint_key, ip, 'EX', hint_ttl)
end
return {'ack', ip, how}
