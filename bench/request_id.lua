-- wrk script for `make bench`: a random 6-digit X-Request-ID on every request (the key
-- every balancer hashes on), and a machine-readable summary line at the end.
--   wrk -t1 -c64 -d10s --latency -s bench/request_id.lua http://127.0.0.1:PORT/home

local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
end

function init(args)
   -- Each thread its own seed, so two threads never send the same id sequence.
   math.randomseed(os.time() * 1000 + (id or 0))
end

function request()
   wrk.headers["X-Request-ID"] = tostring(math.random(100000, 999999))
   return wrk.format()
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9), latency.max))
end
