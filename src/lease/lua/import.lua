-- An operator's import of a lease another DHCP server granted (`leases import-kea`): the lease
-- is written as the hive writes a bound one, unless the address has a record already or is
-- reserved for another client. The hive then renews it for its client like its own.
--
-- KEYS: 1 expiry index (the subnet's other keys are named after it, see prelude.lua)
-- ARGV: 1 ip, 2 client id (as the node names it: id-<hex> or hw-<hex>), 3 mac, 4 hostname,
--       5 node (who wrote the record), 6 the client's own reservation in the config or '',
--       7 ms left of the lease, 8 and 9 its end in ms and s, 10 hint ttl s, 11 now (ms),
--       12 '1' for a dry run (nothing written), else '0'
-- Returns {'imported'} (or would be) | {'held'} (this client's already) | {'taken', state}
-- (another client's, declined, or reserved for another: state false for a reservation)
local zkey = KEYS[1]
local ip, cid, mac, host, node, own = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local base, lp, offered_key, count_key, hint_key = subnet_keys(zkey, cid)
local reserved_key = redis.call('GET', count_key) and base .. 'reserved'
-- A reservation added at run time (admin API) when the config has none for this client.
if own == '' and reserved_key then own = redis.call('HGET', base .. 'resv:api', mac) or '' end
local who, state = probe(lp, reserved_key, ip, cid, own)
if who == 'mine' then return {'held'} end
if who == 'taken' then return {'taken', state} end
if ARGV[12] == '1' then return {'imported'} end
bind(lp, zkey, offered_key, ip, false, mac, host, cid, node, '', '', '', ARGV[11], ARGV[7],
  ARGV[8], ARGV[9])
redis.call('SET', hint_key, ip, 'EX', ARGV[10])
return {'imported'}
