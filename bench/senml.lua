-- wrk script for bench/messages.sh: every request publishes one SenML pack of
-- three records to the benchmark channel over HTTP, as one of the devices
-- `moat-bench setup` created.
--
-- Environment: BENCH_CHANNEL (the channel id) and BENCH_KEYS (a file of
-- device keys, one a line, in device order).
--
-- wrk gives a script no handle on which connection a request goes out on, so
-- a connection is not tied to a device: each thread cycles through all the
-- devices, one request each in turn, threads starting at different devices.
-- The server's work is the same as with one device per connection, since
-- every HTTP publish authenticates its own device key. Device i sends
-- bn "dev<i>/" (the body `moat-bench`'s `rows::ingest_body` builds), so the
-- records of different devices are different names, as in the field.
--
-- done() prints one `RESULT wrk …` line for the script to read: requests
-- completed, non-2xx answers, socket errors, and latency percentiles in µs.

local channel = assert(os.getenv("BENCH_CHANNEL"), "set BENCH_CHANNEL")
local keys_path = assert(os.getenv("BENCH_KEYS"), "set BENCH_KEYS")

local keys = {}
for line in io.lines(keys_path) do
  if line ~= "" then
    keys[#keys + 1] = line
  end
end
assert(#keys > 0, "no device keys in " .. keys_path)

local path = "/api/v1/channels/" .. channel .. "/messages"
local threads = 0

function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end

local requests = {}
local next_one = 0

function init(args)
  for i, key in ipairs(keys) do
    local body = string.format(
      '[{"bn":"dev%d/","n":"temp","u":"Cel","v":21.5},'
        .. '{"n":"hum","u":"%%RH","v":40},{"n":"pres","u":"hPa","v":1013}]',
      i - 1)
    requests[i] = wrk.format("POST", path, {
      ["Authorization"] = "Device " .. key,
      ["Content-Type"] = "application/senml+json",
    }, body)
  end
  -- Threads start apart, so that at any moment they speak for different devices.
  next_one = ((first or 0) * 7) % #requests
end

function request()
  next_one = next_one % #requests + 1
  return requests[next_one]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT wrk requests=%d duration_us=%d non2xx=%d connect_errors=%d read_errors=%d "
      .. "write_errors=%d timeouts=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.0f\n",
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
