-- INFORM: no lease, only the "one exchange, one answer" claim.
--
-- KEYS: 1 exchange claim
-- ARGV: 1 node, 2 claim ms
-- Returns {'ok'} | {'dup'}
if not claim(KEYS[1], ARGV[1], tonumber(ARGV[2])) then return {'dup'} end
return {'ok'}
