-- Shared by the bench's wrk scripts: counts statuses per thread and prints one BENCHJSON line when done.
statuses = {}
thread_list = {}

function setup(thread)
  table.insert(thread_list, thread)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function seed()
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(thread_list) do
    local s = thread:get("statuses")
    for code, n in pairs(s or {}) do
      counts[tostring(code)] = (counts[tostring(code)] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(counts) do table.insert(parts, string.format('"%s":%d', code, n)) end
  local errors = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_s":%.6f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,' ..
    '"max_ms":%.3f,"mean_ms":%.3f,"statuses":{%s},"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}}\n',
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, latency.mean / 1000, table.concat(parts, ","),
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
