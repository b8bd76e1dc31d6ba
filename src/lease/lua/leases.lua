-- One page of a subnet's lease records, in address order, for the read-only lease views.
-- Bounded: looks at most `max_scan` addresses per call and says where to go on.
--
-- KEYS: 1 expiry index (only routes the call to the subnet's slot)
-- ARGV: 1 lease key prefix, 2 first address (int), 3 last address (int), 4 page size,
--       5 max addresses looked at, 6 state filter or '', 7 mac filter or '', 8 hostname filter or ''
-- Returns {next address (int) or -1 when done, {ip, pttl ms, field, value, ...}, ...}
local lp = ARGV[1]
local n, last = tonumber(ARGV[2]), tonumber(ARGV[3])
local limit, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local want_state, want_mac, want_host = ARGV[6], ARGV[7], ARGV[8]
local out = {0}
local found = 0
while n <= last and budget > 0 and found < limit do
  local ip = int2ip(n)
  local rec = redis.call('HGETALL', lp .. ip)
  n = n + 1
  budget = budget - 1
  if #rec > 0 then
    local f = {}
    for i = 1, #rec, 2 do f[rec[i]] = rec[i + 1] end
    if (want_state == '' or f.state == want_state) and (want_mac == '' or f.mac == want_mac)
        and (want_host == '' or f.hostname == want_host) then
      local row = {ip, redis.call('PTTL', lp .. ip)}
      for i = 1, #rec do row[#row + 1] = rec[i] end
      out[#out + 1] = row
      found = found + 1
    end
  end
end
if n > last then out[1] = -1 else out[1] = n end
return out
