-- The benchmark's traffic for wrk: the corpus mix, as bench/wrkgen.py prepared it.
--
--   wrk -t1 -c64 -d10s --timeout 30s -s bench/wrk.lua http://127.0.0.1:PORT -- DIR
--
-- DIR holds one complete HTTP request per file (request line, headers, gzip body)
-- and `order.txt`, one `<file>\t<name>` line per request of one mix cycle, in send
-- order. Each thread reads them once in init() and sends them round robin. done()
-- prints one line `wrk-result <json>` with the counts and latency percentiles (ms).

local requests = {}
local names = {}
local cursor = 0

-- Globals, read by done() through thread:get().
sent = 0
statuses = {}
mix_sent = {}

local threads = {}

function setup(thread)
   thread:set("thread_index", #threads)
   table.insert(threads, thread)
end

function init(args)
   local dir = args[1]
   for line in io.lines(dir .. "/order.txt") do
      local file, name = line:match("^([^\t]+)\t([^\t]+)$")
      local f = assert(io.open(dir .. "/" .. file, "rb"))
      requests[#requests + 1] = f:read("*a")
      f:close()
      names[#names + 1] = name
   end
   assert(#requests > 0, "no requests in " .. dir)
   -- Threads start at different points of the cycle, so the mix interleaves across them.
   cursor = (thread_index or 0) * 7 % #requests
end

function request()
   cursor = cursor % #requests + 1
   sent = sent + 1
   local name = names[cursor]
   mix_sent[name] = (mix_sent[name] or 0) + 1
   return requests[cursor]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

local function json_counts(t)
   local parts = {}
   for k, v in pairs(t) do
      parts[#parts + 1] = string.format('"%s":%d', tostring(k), v)
   end
   table.sort(parts)
   return "{" .. table.concat(parts, ",") .. "}"
end

local function add(into, from)
   for k, v in pairs(from or {}) do
      into[k] = (into[k] or 0) + v
   end
end

function done(summary, latency, _)
   local total_sent, by_status, by_name = 0, {}, {}
   for _, thread in ipairs(threads) do
      total_sent = total_sent + (thread:get("sent") or 0)
      add(by_status, thread:get("statuses"))
      add(by_name, thread:get("mix_sent"))
   end
   local function ms(us)
      return string.format("%.3f", us / 1000)
   end
   local e = summary.errors
   io.write(string.format(
      'wrk-result {"duration_us":%d,"requests":%d,"bytes":%d,"sent":%d,' ..
      '"statuses":%s,"mix_sent":%s,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_ms":{"p50":%s,"p90":%s,"p99":%s,"p999":%s,"max":%s,"mean":%s}}\n',
      summary.duration, summary.requests, summary.bytes, total_sent,
      json_counts(by_status), json_counts(by_name),
      e.connect, e.read, e.write, e.status, e.timeout,
      ms(latency:percentile(50)), ms(latency:percentile(90)), ms(latency:percentile(99)),
      ms(latency:percentile(99.9)), ms(latency.max), ms(latency.mean)
   ))
end
