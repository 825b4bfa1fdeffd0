-- Spend-control counters, atomically: check-and-consume, or refund.
--
-- Check: ARGV = "c", <deadline_ms>, <groups>, then per group <n> followed by n triples
--   <limit> <increment> <ttl_seconds>   (limit -1: counted but never rejects)
-- KEYS holds the counters of all groups in order. A group is one data category:
-- when every counter of the group fits (value + increment <= limit), each of them is
-- incremented (a new key gets its ttl); otherwise none is. Returns a flat array: Redis's
-- own time (TIME, in ms), then per group 1 (consumed), 0 (rejected) or 2 (a counter of
-- the group holds something other than an integer: nothing of the group is touched),
-- then each counter's value before the check (0 for a key that holds no integer). A bad
-- key fails only its own group.
--
-- The deadline is in Redis's time (ms; 0: none): a call that runs after it counts
-- nothing and returns Redis's time and -1. The caller has given up on it by then, so
-- whatever it counted would never be undone: a Redis that stalled runs the calls queued
-- on its sockets when it wakes, even those of connections closed meanwhile.
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

-- Before Redis 5, a script that reads TIME may write only when it replicates its effects.
if redis.replicate_commands then
  redis.replicate_commands()
end
local clock = redis.call("TIME")
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local deadline = tonumber(ARGV[2])
if deadline > 0 and now_ms > deadline then
  return {now_ms, -1}
end

local out = {now_ms}
local pos = 4
local base = 0
for _ = 1, tonumber(ARGV[3]) do
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
