-- Shared by the bench's wrk scripts (run with bench/wrk as the working directory, so that
-- a scenario script can dofile("common.lua")). bench/bench_decisions.py runs wrk with one
-- connection a thread (-t c -c c): a thread is a client that sends its requests in order.
--
-- Arguments after "--", key=value: start (first step, default 1), offset (added to the
-- thread's index: a second wrk process on a second replica continues the first's ranks and
-- runs), world (world_size, default 1), path (trivial only).
--
-- done() prints one line "BENCH-RESULT {json}" that bench_decisions.py reads: latency
-- percentiles, wrk's own errors, every status counted by response() in the threads (wrk alone
-- counts only >= 400), a sample of the non-2xx bodies, and each thread's step in flight.

local ffi = require("ffi")
local bit = require("bit")

local threads = {}

function setup(thread)
   thread:set("index", #threads)
   table.insert(threads, thread)
end

function init(args)
   opt = {start = "1", offset = "0", world = "1", path = "/echo"}
   for _, arg in ipairs(args) do
      local key, value = arg:match("^(%w+)=(.*)$")
      opt[key] = value
   end
   id = index + tonumber(opt.offset)  -- this client's rank, or the number of its run
   world = tonumber(opt.world)
   step = tonumber(opt.start)  -- the step of the request in flight, or the next one
   statuses = {}
   sample = ""
   headers = {["Content-Type"] = "application/json"}
end

local function splitmix64(x)
   x = x + 0x9E3779B97F4A7C15ULL
   x = bit.bxor(x, bit.rshift(x, 30)) * 0xBF58476D1CE4E5B9ULL
   x = bit.bxor(x, bit.rshift(x, 27)) * 0x94D049BB133111EBULL
   return bit.bxor(x, bit.rshift(x, 31))
end

-- bench/common.py's metric_value, to the bit (uint64 arithmetic through LuaJIT's FFI): a
-- validation loss falling slowly under 3 % noise, a pure function of (seed, step).
function metric_value(seed, n)
   local x = bit.bxor(bit.lshift(ffi.cast("uint64_t", seed), 40), ffi.cast("uint64_t", n))
   -- the top 53 bits: an integer a double holds exactly. A whole uint64 made a double rounds
   -- one way in LuaJIT's interpreter and another in its compiled traces, and ranks then sent
   -- different values for one step (a 409, rightly).
   local noise = tonumber(bit.rshift(splitmix64(x), 11)) / 2 ^ 53
   return (1.0 / (1.0 + 0.002 * n)) * (1.0 + 0.03 * noise)
end

-- %.17g writes a double that parses back to the same double.
function post(path, body_format, ...)
   return wrk.format("POST", path, headers, string.format(body_format, ...))
end

-- The step advances on an answer, not in request(): wrk calls request() once more than it
-- sends, on thread 0 before the start, to check the script, and again for a request it
-- resends after reconnecting.
function response(status, _, body)
   statuses[status] = (statuses[status] or 0) + 1
   if (status < 200 or status > 299) and sample == "" then
      sample = string.format("step %d -> %d %s", step, status, body:sub(1, 300))
   end
   step = step + 1
end

local function json(v)
   if type(v) == "table" then
      local parts = {}
      if #v > 0 then
         for _, x in ipairs(v) do table.insert(parts, json(x)) end
         return "[" .. table.concat(parts, ",") .. "]"
      end
      for k, x in pairs(v) do table.insert(parts, json(tostring(k)) .. ":" .. json(x)) end
      return "{" .. table.concat(parts, ",") .. "}"
   elseif type(v) == "string" then
      return '"' .. v:gsub('[%c"\\]', function(c)
         return string.format("\\u%04x", c:byte())
      end) .. '"'
   end
   return string.format("%.17g", v)
end

function done(summary, latency, _)
   local all, samples, last_steps = {}, {}, {}
   for _, thread in ipairs(threads) do
      for status, n in pairs(thread:get("statuses")) do
         all[status] = (all[status] or 0) + n
      end
      local s = thread:get("sample")
      if s ~= "" then table.insert(samples, s) end
      table.insert(last_steps, thread:get("step"))
   end
   io.write("BENCH-RESULT ", json({
      duration_us = summary.duration,
      requests = summary.requests,
      socket_errors = summary.errors,
      statuses = all,
      samples = samples,
      last_steps = last_steps,
      latency_us = {
         p50 = latency:percentile(50), p90 = latency:percentile(90),
         p99 = latency:percentile(99), mean = latency.mean, max = latency.max,
      },
   }), "\n")
end
