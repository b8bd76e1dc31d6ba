-- Replace a subnet's set of reserved addresses with the configured ones (run at start-up and
-- on reload). Every node of a hive runs the same config, so the result is the same whoever
-- runs it last.
--
-- KEYS: 1 reserved set
-- ARGV: the reserved addresses
redis.call('DEL', KEYS[1])
if #ARGV > 0 then redis.call('SADD', KEYS[1], unpack(ARGV)) end
return {'ok', tostring(#ARGV)}
