-- REQUEST (any client state): confirm or extend a lease, or refuse it.
--
-- KEYS: as discover.lua (1 expiry index, 2 cursor (unused), 3 reserved set, 4 client hint,
--       5 exchange claim, 6 offers index, 7 declined index (unused), 8 run-time reservations)
-- ARGV: 1 lease key prefix, 2 client id, 3 mac, 4 hostname, 5 node, 6 pool ranges
--       ("first-last,..."), 7 unused, 8 lease ms, 9 claim ms, 10 the address asked for, 11 the client's own
--       reservation or '', 12 hint ttl s, 13 relay ip or '', 14 authoritative '1' | '0',
--       15 the node's clock (ms), 16 circuit id, 17 remote id (hex or ''), 18 and 19 the
--       lease's end on the node's clock, in ms and in s
-- Returns {'dup'} | {'ack', ip, how} (how: reserved | renewed | selected | recovered)
--       | {'nak', reason} | {'silent', reason}
-- Times stay the strings the node sent (see discover.lua).
local zkey, reserved_key, hint_key, claim_key = KEYS[1], KEYS[3], KEYS[4], KEYS[5]
local offered_key = KEYS[6]
local lp, cid, mac, host, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local lease_ms, claim_ms = ARGV[8], ARGV[9]
local ip, own, hint_ttl, relay = ARGV[10], ARGV[11], ARGV[12], ARGV[13]
local authoritative = ARGV[14] == '1'
-- The node's clock now (ms): bound_at is kept on the nodes' clock, the one RELEASE and
-- DECLINE arrival times are read on; the index scores are on it too (see discover.lua).
local now = ARGV[15]
local circuit, remote = ARGV[16] or '', ARGV[17] or ''
local hold = {ms = lease_ms, at = ARGV[18], s = ARGV[19]}
-- A reservation added at run time (admin API) when the config has none for this client.
if own == '' then own = redis.call('HGET', KEYS[8], mac) or '' end

if not claim(claim_key, node, claim_ms) then return {'dup'} end
local hint = redis.call('GET', hint_key)

-- Refuse: a NAK when we are authoritative or know this client; otherwise RFC 2131 4.3.2 wants
-- silence towards a client we have no record of, so that another server may answer it.
local function refuse(reason, who)
  if authoritative or hint or who == 'mine' then return {'nak', reason} end
  return {'silent', reason}
end

-- A client with a reservation is moved to it (a NAK sends it back to DISCOVER), unless the
-- reserved address is held by someone else, in which case it keeps a dynamic one meanwhile.
if own ~= '' and ip ~= own then
  local who = probe(lp, reserved_key, own, cid, own)
  if who ~= 'taken' then return refuse('reservation', who) end
end

if ip ~= own then
  local n = ip2int(ip)
  if not in_ranges(n, parse_ranges(ARGV[6])) then return refuse('outside-pool', nil) end
end

local who, state, replaced = probe(lp, reserved_key, ip, cid, own)
if who == 'taken' then
  if state == 'declined' then return refuse('declined', who) end
  return refuse('taken', who)
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
for _, prev in ipairs({hint or '', replaced or ''}) do
  if prev ~= '' and prev ~= ip then give_back(lp, zkey, offered_key, prev, cid, now) end
end
if replaced then redis.call('HDEL', lp .. ip, 'replaces') end

bind(lp, zkey, offered_key, ip, {mac = mac, host = host, cid = cid, node = node,
  relay = relay, circuit = circuit, remote = remote, bound_at = now}, hold)
redis.call('SET', hint_key, ip, 'EX', hint_ttl)
return {'ack', ip, how}
