-- Shared helpers. Each lease script is sent with the helpers it calls, directly or through one
-- another (`assemble` in lease/redis.rs): one paragraph per helper, so no blank line inside a
-- helper and none between it and its comment. A paragraph without a `local function` goes to
-- every script.
--
-- Keys of one subnet share the hash tag `{<subnet>}`, so each script touches a single slot and
-- stays atomic on Redis Cluster. Lease keys are built inside the script from the lease key
-- prefix (ARGV[1]), which carries the same tag.
--
-- Lease hash fields: mac, hostname (the seed's record), client_id, state (offered | bound |
-- declined), node, relay_ip, expires_at (unix seconds). The key's TTL is the lease (or offer, or
-- probation) time.

-- RELEASE, DECLINE and the stats call TIME (DISCOVER and REQUEST get the node's clock); since
-- Redis 5 effects are replicated, on older servers this opts in.
if redis.replicate_commands then redis.replicate_commands() end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function ip2int(s)
  local a, b, c, d = string.match(s, '^(%d+)%.(%d+)%.(%d+)%.(%d+)$')
  if not a then return nil end
  return ((tonumber(a) * 256 + tonumber(b)) * 256 + tonumber(c)) * 256 + tonumber(d)
end

-- The pool: disjoint address ranges, "first-last,first-last" (integers), in order. Each range
-- is {first, last, "first-last"} (the text names its cursor).
local function parse_ranges(spec)
  local ranges = {}
  for a, b in string.gmatch(spec, '(%d+)-(%d+)') do
    ranges[#ranges + 1] = {tonumber(a), tonumber(b), a .. '-' .. b}
  end
  return ranges
end

local function in_ranges(n, ranges)
  if n == nil then return false end
  for _, r in ipairs(ranges) do
    if n >= r[1] and n <= r[2] then return true end
  end
  return false
end

local function int2ip(n)
  return string.format('%d.%d.%d.%d', math.floor(n / 16777216) % 256,
    math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
end

-- One client exchange gets one answer from the hive: every node that sees a broadcast runs the
-- script, the first to write the claim answers, the others stay silent. The same node may claim
-- again, so a client's retransmission (same xid) is answered by the node that answered first.
-- The claim is neither written to the AOF nor sent to replicas: it lives 2 seconds, and what a
-- restart or a failover loses of it is at worst a second answer to an exchange in flight, with
-- the same address (the lease records, which are replicated, decide the address). Its expiry
-- still reaches them as a DEL of a key they never had, which is harmless.
local function claim(key, node, ttl_ms)
  redis.set_repl(redis.REPL_NONE)
  local won = redis.call('SET', key, node, 'NX', 'PX', ttl_ms)
  redis.set_repl(redis.REPL_ALL)
  if won then return true end
  return redis.call('GET', key) == node
end

-- The key beside a subnet's reserved set that holds its size (see count_reserved).
local function reserved_count_key(reserved_key)
  return reserved_key .. ':count'
end

-- The keys of the subnet of a DISCOVER, REQUEST or DECLINE, named after the expiry index
-- (KEYS[1], `<base>expiry`, which routes the call to the subnet's slot): the other keys of the
-- subnet share its hash tag and are built here, not sent with every call. Returns, in order:
-- the base, the lease key prefix, the offers index, the key of the reserved set's size
-- (reserved_count_key of `<base>reserved`; the set's own key is built only where the subnet has
-- one) and the sticky hint of client `cid` (its last address). Values, not a table: these scripts run twice a DORA
-- and every table is an allocation for Lua's collector.
local function subnet_keys(expiry_key, cid)
  local base = string.sub(expiry_key, 1, -7)
  return base, base .. 'lease:', base .. 'offered', base .. 'reserved:count', base .. 'client:' .. cid
end

-- The size of a subnet's reserved set (configured reservations and those added through the
-- admin API: every address of the API's hash is in the set), kept as a string beside it
-- (`<set>:count`, absent for none). DISCOVER and REQUEST read it with the client's hint in one
-- call and skip the reservation lookups in a subnet that has none. Every script that changes
-- the set calls this after it.
local function count_reserved(reserved_key)
  local n = redis.call('SCARD', reserved_key)
  if n == 0 then
    redis.call('DEL', reserved_count_key(reserved_key))
  else
    redis.call('SET', reserved_count_key(reserved_key), n)
  end
end

-- Who holds `ip` from the point of view of client `cid`:
--   'free'  no record, and not reserved for someone else
--   'mine'  held (offered or bound) by this client
--   'taken' held by another client, declined, or reserved for another client
-- The second value is the record's state, the third (for 'mine') the address its offer
-- replaces (see discover.lua). reserved_key: the subnet's reserved set, false when it has none
-- (see count_reserved).
local function probe(lease_prefix, reserved_key, ip, cid, own_reservation)
  local rec = redis.call('HMGET', lease_prefix .. ip, 'client_id', 'state', 'replaces')
  if rec[1] == false and rec[2] == false then
    if reserved_key and ip ~= own_reservation and redis.call('SISMEMBER', reserved_key, ip) == 1 then
      return 'taken', false, false
    end
    return 'free', false, false
  end
  if rec[2] == 'declined' then return 'taken', 'declined', false end
  if rec[1] == cid then return 'mine', rec[2], rec[3] end
  return 'taken', rec[2], false
end

-- Takes `ip` out of the offers index. Offers are written on the Redis primary only (see
-- discover.lua), so their removal is too: neither the AOF nor a replica ever had the entry.
local function unindex_offer(offered_key, ip)
  redis.set_repl(redis.REPL_NONE)
  redis.call('ZREM', offered_key, ip)
  redis.set_repl(redis.REPL_ALL)
end

-- Writes the bound lease of `ip` and indexes it: REQUEST, rapid commit and BOOTP alike.
-- The record's fields: mac, host, cid, node, relay, circuit, remote, bound_at; the lease:
-- hold_ms its time, hold_at its end (ms), hold_s its end (s), with hold_ms false for a
-- permanent binding (no TTL, never due in the expiry index). Numbers stay the strings the node
-- sent: a Lua number turned back into a string costs a printf of a double per argument.
-- The declined index needs no update: an address on probation is never bound, its entry is
-- trimmed by time, and an operator's release removes it. state: the record's state before
-- (false for none).
local function bind(lp, zkey, offered_key, ip, state, mac, host, cid, node, relay, circuit,
                    remote, bound_at, hold_ms, hold_at, hold_s)
  local key = lp .. ip
  local expires = hold_s
  if not hold_ms then expires = '0' end
  -- bound_at: a RELEASE or DECLINE received before this moment is stale (see release.lua).
  redis.call('HSET', key, 'mac', mac, 'hostname', host, 'client_id', cid, 'state', 'bound',
    'node', node, 'relay_ip', relay, 'circuit_id', circuit, 'remote_id', remote,
    'expires_at', expires, 'bound_at', bound_at)
  if hold_ms then
    redis.call('PEXPIRE', key, hold_ms)
    redis.call('ZADD', zkey, hold_at, ip)
  else
    redis.call('PERSIST', key)
    redis.call('ZADD', zkey, '+inf', ip)
  end
  -- A lease being renewed is not in the offers index (an offer, or an address without a
  -- record, whose offer may have run out, may be).
  if state ~= 'bound' then unindex_offer(offered_key, ip) end
end

-- Gives back the client's previous address `prev` (another of this subnet): its record goes and
-- the address is free at once. Never a declined address: its probation runs whoever declined it.
local function give_back(lp, zkey, offered_key, prev, cid, now)
  local f = redis.call('HMGET', lp .. prev, 'client_id', 'state')
  if f[1] == cid and f[2] ~= 'declined' then
    redis.call('DEL', lp .. prev)
    redis.call('ZADD', zkey, now, prev)
    unindex_offer(offered_key, prev)
  end
end
