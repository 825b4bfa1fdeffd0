-- Spend-control counters, atomically: check-and-consume, or refund.
--
-- Check: ARGV = "c", <groups>, then per group <n> followed by n triples
--   <limit> <increment> <ttl_seconds>   (limit -1: counted but never rejects)
-- KEYS holds the counters of all groups in order. A group is one data category:
-- when every counter of the group fits (value + increment <= limit), each of them is
-- incremented (a new key gets its ttl); otherwise none is. Returns a flat array: per
-- group 1 (consumed), 0 (rejected) or 2 (a counter of the group holds something other
-- than an integer: nothing of the group is touched), then each counter's value before
-- the check (0 for a key that holds no integer). A bad key fails only its own group.
-- A negative increment gives back (the quota cache's allowances): it never takes a
-- counter below 0, and never creates one.
--
-- Refund: ARGV = "r", then one amount per key; decrements the keys that still exist
-- and hold an integer, none below 0.

local function is_integer(raw)
  return type(raw) == "string" and string.match(raw, "^-?%d+$") ~= nil
end

-- The counter's value: 0 when absent, nil when the key holds anything but an integer
-- (another type answers GET with an error, which `pcall` returns instead of raising).
local function counter_at(key)
  local raw = redis.pcall("GET", key)
  if raw == false then
    return 0
  end
  if not is_integer(raw) then
    return nil
  end
  return tonumber(raw)
end

if ARGV[1] == "r" then
  -- A refund never takes a counter below 0 (its key may be newer than the count it
  -- gives back: a Redis restart without persistence lost the old one).
  for i = 1, #KEYS do
    local raw = redis.pcall("GET", KEYS[i])
    if is_integer(raw) then
      local back = math.min(tonumber(ARGV[i + 1]), tonumber(raw))
      if back > 0 then
        redis.call("DECRBY", KEYS[i], back)
      end
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
  local broken = false
  for i = 1, n do
    local value = counter_at(KEYS[base + i])
    if value == nil then
      broken = true
      value = 0
    end
    values[i] = value
    local limit = tonumber(ARGV[pos + 3 * (i - 1)])
    local increment = tonumber(ARGV[pos + 3 * (i - 1) + 1])
    if limit >= 0 and value + increment > limit then
      fits = false
    end
  end
  if broken then
    out[#out + 1] = 2
  else
    out[#out + 1] = fits and 1 or 0
  end
  for i = 1, n do
    if fits and not broken then
      local key = KEYS[base + i]
      local increment = ARGV[pos + 3 * (i - 1) + 1]
      if tonumber(increment) >= 0 then
        local after = redis.call("INCRBY", key, increment)
        if after == tonumber(increment) then
          redis.call("EXPIRE", key, ARGV[pos + 3 * (i - 1) + 2])
        end
      elseif values[i] > 0 then
        redis.call("DECRBY", key, string.format("%d", math.min(-tonumber(increment), values[i])))
      end
    end
    out[#out + 1] = values[i]
  end
  pos = pos + 3 * n
  base = base + n
end
return out
