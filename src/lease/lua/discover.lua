-- DISCOVER: pick an address for a client and hold it for the offer time.
--
-- KEYS: 1 expiry index (zset ip -> ms; the subnet's other keys are named after it, see
--       prelude.lua), 2 exchange claim
-- ARGV: 1 client id, 2 mac, 3 hostname, 4 node, 5 pool ranges ("first-last,..." as integers),
--       6 offer ms, 7 claim ms, 8 requested ip or '' (only one in ARGV 5: the node checks),
--       9 the client's own reservation or '', 10 hint ttl s, 11 relay ip or '', 12 new
--       allocations allowed per second in the subnet (0: no cap), 13 the same per relay,
--       14 lease ms for a rapid commit (RFC 4039: bind at once), 0 for an offer, -1 for a permanent binding (BOOTP), 15 the node's clock (ms),
--       16 every range of the subnet when ARGV 5 is only those open to the client's classes,
--       else '', 17 circuit id, 18 remote id (hex or ''), 19 and 20 the end of the hold this
--       call writes (the offer's, or the lease's for a rapid commit), on the node's clock, in ms
--       and in s
-- Returns {'dup'} | {'exhausted'} | {'limited', 'subnet' | 'relay'} | {'offer', ip, how, fresh}
--       with how one of reserved | bound | sticky | requested | new, and fresh '1' when the
--       address had no holder before this call
--
-- The hint outlives the lease by the sticky time plus the offer time (ARGV 10 says so): the
-- REQUEST that binds this offer leaves it as it is (see request.lua).
--
-- An offer is held on this server only: its record, TTL and offers-index entry are neither
-- written to the AOF nor sent to replicas (Kea and ISC dhcpd keep offers in memory too). A
-- restart or a failover forgets the offers in flight: a REQUEST for one then finds no record
-- and, the client's hint being kept, is answered as a client that lost its lease (see
-- request.lua). The address's expiry-index entry, the cursor and the hint are written as
-- usual, so an address is never lost to the pool.
--
-- Times and counts stay the strings the node sent wherever they only go back to Redis: a Lua
-- number turned into a command argument costs a printf of a double (see prelude.lua).
local zkey, claim_key = KEYS[1], KEYS[2]
local cid, mac, host, node = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local base, lp, offered_key, count_key, hint_key = subnet_keys(zkey, cid)
-- The address the client had (a live lease, an offer, or a hint outliving an expiry/release),
-- and whether the subnet has reservations at all.
local known = redis.call('MGET', hint_key, count_key)
local hint, reserved_key = known[1], known[2] and base .. 'reserved'
local ranges = parse_ranges(ARGV[5])
local offer_ms, claim_ms = ARGV[6], ARGV[7]
local wanted, own, hint_ttl, relay = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local subnet_cap, relay_cap = ARGV[12], ARGV[13]
local commit_ms = ARGV[14]
-- The node's clock, not Redis's TIME: index scores only order the walk of step 5, and every
-- address found there is probed (its record's TTL, on Redis's clock, is the truth).
local now = ARGV[15]
local all_ranges = ranges
if ARGV[16] ~= '' then all_ranges = parse_ranges(ARGV[16]) end
local circuit, remote = ARGV[17], ARGV[18]
local until_ms, until_s = ARGV[19], ARGV[20]
-- A reservation added at run time (admin API) when the config has none for this client.
if own == '' and reserved_key then own = redis.call('HGET', base .. 'resv:api', mac) or '' end

if not claim(claim_key, node, claim_ms) then return {'dup'} end

-- Starvation caps: addresses that were free and are handed out now are counted per second,
-- hive-wide (the counters live with the subnet's keys); a client's own address is not.
-- capped: which cap this second has reached ('subnet' or 'relay'), nil for none.
local subnet_capped, relay_capped = subnet_cap ~= '0', relay_cap ~= '0' and relay ~= ''
local subnet_rate, relay_rate, capped
if subnet_capped or relay_capped then
  local second = string.sub(now, 1, -4)
  subnet_rate = base .. 'rate:s:' .. second
  relay_rate = base .. 'rate:r:' .. relay .. ':' .. second
  if subnet_capped and tonumber(redis.call('GET', subnet_rate) or 0) >= tonumber(subnet_cap) then
    capped = 'subnet'
  elseif relay_capped and tonumber(redis.call('GET', relay_rate) or 0) >= tonumber(relay_cap) then
    capped = 'relay'
  end
end

-- The address to hold, its record's state (false: none) and how it was chosen: the first of
-- the steps below that finds one leaves the block. (No local functions here: each would be a
-- closure made on every call, with one more allocation for every local it uses.)
local ip, state, how
repeat
  -- 1. A reservation is the client's, wherever it is (it may lie outside the pool).
  if own ~= '' then
    local who, st = probe(lp, reserved_key, own, cid, own)
    if who == 'mine' or (who == 'free' and not capped) then
      ip, state, how = own, st, 'reserved'
      break
    end
  end

  -- 2. The address the client had.
  if hint and hint ~= own and in_ranges(ip2int(hint), ranges) then
    local who, st = probe(lp, reserved_key, hint, cid, own)
    if who == 'mine' or (who == 'free' and not capped) then
      ip, state, how = hint, st, 'sticky'
      break
    end
  end

  -- 3. The address the client asks for (option 50), if it is free (it is in the pool).
  if wanted ~= '' then
    local who, st = probe(lp, reserved_key, wanted, cid, own)
    if who == 'mine' or (who == 'free' and not capped) then
      ip, state, how = wanted, st, 'requested'
      break
    end
  end

  if capped then return {'limited', capped} end

  -- 4. Addresses never handed out yet, in order. Bounded: at most 64 steps per call.
  -- Each range has its own cursor, named after the range, so a reload that changes the ranges
  -- starts new cursors (they skip whatever is in use). The cursor holds the next address to
  -- try; each step takes one with INCR (one command, where a GET and a SET took two).
  local steps = 0
  for _, r in ipairs(ranges) do
    local key = base .. 'cursor:' .. r[3]
    while steps < 64 do
      local c = redis.call('INCR', key) - 1
      if c < r[1] then
        -- A new cursor (or one below its range): start at the range's first address.
        c = r[1]
        redis.call('SET', key, r[1] + 1)
      end
      if c > r[2] then break end
      steps = steps + 1
      local candidate = int2ip(c)
      if probe(lp, reserved_key, candidate, cid, own) == 'free' then
        ip = candidate
        break
      end
    end
    if ip or steps >= 64 then break end
  end
  if ip then
    state, how = false, 'new'
    break
  end

  -- 5. Addresses whose lease, offer or probation ran out, longest expired first (so an
  -- address released a moment ago stays free the longest for its last owner). Bounded batch.
  local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', now, 'LIMIT', 0, 16)
  for _, candidate in ipairs(expired) do
    local n = ip2int(candidate)
    if not in_ranges(n, all_ranges) then
      -- Out of every range (a reload shrank the pool): forget it.
      redis.call('ZREM', zkey, candidate)
    elseif not in_ranges(n, ranges) then
      -- In a pool of classes this client is not in: left for them.
    elseif probe(lp, reserved_key, candidate, cid, own) == 'free' then
      ip, state, how = candidate, false, 'new'
      break
    else
      -- Still held (renewed through another path, or reserved): move its index entry to the
      -- record's real expiry so the next call does not look at it again.
      local ttl = redis.call('PTTL', lp .. candidate)
      if ttl > 0 then
        redis.call('ZADD', zkey, tonumber(now) + ttl, candidate)
      else
        redis.call('ZREM', zkey, candidate)
      end
    end
  end
until true
if not ip then return {'exhausted'} end

-- Hold `ip` for this client. A lease the client already has bound stays as it is: the
-- REQUEST that follows extends it, and a DISCOVER must not shorten it to an offer hold.
local fresh = '0'
if state == false then
  fresh = '1'
  if subnet_capped then
    redis.call('INCR', subnet_rate)
    redis.call('EXPIRE', subnet_rate, 2)
  end
  if relay_capped then
    redis.call('INCR', relay_rate)
    redis.call('EXPIRE', relay_rate, 2)
  end
end
local key = lp .. ip
if commit_ms ~= '0' then
  -- Rapid commit or BOOTP: the lease itself, as request.lua writes it.
  local hold_ms = commit_ms
  if commit_ms == '-1' then hold_ms = false end
  bind(lp, zkey, offered_key, ip, state, mac, host, cid, node, relay, circuit, remote, now,
    hold_ms, until_ms, until_s)
  -- One lease per client and subnet (as request.lua).
  if hint and hint ~= ip then give_back(lp, zkey, offered_key, hint, cid, now) end
elseif state ~= 'bound' then
  -- The offer itself stays on this server (see above); its expiry-index entry does not.
  redis.set_repl(redis.REPL_NONE)
  if hint and hint ~= ip then
    -- The client's previous address (its class changed, a reload moved the pool): the
    -- REQUEST that binds this one gives it back.
    redis.call('HSET', key, 'mac', mac, 'hostname', host, 'client_id', cid, 'state', 'offered',
      'node', node, 'relay_ip', relay, 'circuit_id', circuit, 'remote_id', remote,
      'expires_at', until_s, 'replaces', hint)
  else
    if state ~= false then redis.call('HDEL', key, 'replaces') end
    redis.call('HSET', key, 'mac', mac, 'hostname', host, 'client_id', cid, 'state', 'offered',
      'node', node, 'relay_ip', relay, 'circuit_id', circuit, 'remote_id', remote,
      'expires_at', until_s)
  end
  redis.call('PEXPIRE', key, offer_ms)
  redis.call('ZADD', offered_key, until_ms, ip)
  redis.set_repl(redis.REPL_ALL)
  redis.call('ZADD', zkey, until_ms, ip)
else
  how = 'bound'
end
if commit_ms == '-1' then
  redis.call('SET', hint_key, ip)
else
  redis.call('SET', hint_key, ip, 'EX', hint_ttl)
end
return {'offer', ip, how, fresh}
