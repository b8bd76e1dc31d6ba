-- Write a subnet's configured reservations (at start-up and on reload) and rebuild the set of
-- reserved addresses from them and the ones added through the admin API. Every node of a hive
-- runs the same config, so the result is the same whoever runs it last.
--
-- KEYS: 1 reserved addresses (set), 2 configured reservations (hash mac -> ip),
--       3 API reservations (hash mac -> ip)
-- ARGV: mac, ip, mac, ip, ... of the configured reservations
redis.call('DEL', KEYS[1], KEYS[2])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('SADD', KEYS[1], ARGV[i + 1])
end
for _, ip in ipairs(redis.call('HVALS', KEYS[3])) do redis.call('SADD', KEYS[1], ip) end
count_reserved(KEYS[1])
return {'ok', tostring(#ARGV / 2)}
