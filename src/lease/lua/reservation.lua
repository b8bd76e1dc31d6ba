-- Add or remove a reservation at run time (the admin API). Configured reservations win: they
-- cannot be changed here.
--
-- KEYS: 1 reserved addresses (set), 2 configured reservations, 3 API reservations
-- ARGV: 1 'add' | 'remove', 2 mac, 3 ip (add only)
-- Returns {'ok'} | {'error', reason}
local reserved, configured, api = KEYS[1], KEYS[2], KEYS[3]
local op, mac, ip = ARGV[1], ARGV[2], ARGV[3]

local function configured_ip(target)
  for _, v in ipairs(redis.call('HVALS', configured)) do
    if v == target then return true end
  end
  return false
end

if redis.call('HEXISTS', configured, mac) == 1 then return {'error', 'configured'} end
local old = redis.call('HGET', api, mac)
if op == 'add' then
  if old ~= ip and redis.call('SISMEMBER', reserved, ip) == 1 then
    return {'error', 'reserved-for-another'}
  end
  if old and old ~= ip and not configured_ip(old) then redis.call('SREM', reserved, old) end
  redis.call('HSET', api, mac, ip)
  redis.call('SADD', reserved, ip)
  count_reserved(reserved)
  return {'ok'}
end
if not old then return {'error', 'none'} end
redis.call('HDEL', api, mac)
if not configured_ip(old) then redis.call('SREM', reserved, old) end
count_reserved(reserved)
return {'ok'}
