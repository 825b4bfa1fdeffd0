-- Spend-control counters, atomically: check-and-consume, or refund.
--
-- Check: ARGV = "c", <groups>, then per group <n> followed by n triples
--   <limit> <increment> <ttl_seconds>   (limit -1: counted but never rejects)
-- KEYS holds the counters of all groups in order. A group is one data category:
-- when every counter of the group fits (value + increment <= limit), each of them is
-- incremented (a new key gets its ttl); otherwise none is. Returns a flat array: per
-- group 1 (consumed) or 0 (rejected), then each counter's value before the check.
--
-- Refund: ARGV = "r", then one amount per key; decrements the keys that still exist.

if ARGV[1] == "r" then
  for i = 1, #KEYS do
    if redis.call("EXISTS", KEYS[i]) == 1 then
      redis.call("DECRBY", KEYS[i], ARGV[i + 1])
    end
  end
  return 0
end

local out = {}
local pos = 3
local base = 0
for _ = 1, tonumber(ARGV[2]) do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  local values = {}
  local fits = true
  for i = 1, n do
    local value = tonumber(redis.call("GET", KEYS[base + i]) or "0")
    values[i] = value
    local limit = tonumber(ARGV[pos + 3 * (i - 1)])
    local increment = tonumber(ARGV[pos + 3 * (i - 1) + 1])
    if limit >= 0 and value + increment > limit then
      fits = false
    end
  end
  out[#out + 1] = fits and 1 or 0
  for i = 1, n do
    if fits then
      local key = KEYS[base + i]
      local increment = ARGV[pos + 3 * (i - 1) + 1]
      local after = redis.call("INCRBY", key, increment)
      if after == tonumber(increment) then
        redis.call("EXPIRE", key, ARGV[pos + 3 * (i - 1) + 2])
      end
    end
    out[#out + 1] = values[i]
  end
  pos = pos + 3 * n
  base = base + n
end
return out
