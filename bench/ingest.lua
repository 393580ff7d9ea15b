-- wrk script for ingest: BENCH_MODE=event (one event per request), events (BENCH_BATCH events per request)
-- or reward (one reward per request, for the decision ids listed one per line in BENCH_IDS).
dofile(os.getenv("BENCH_LUA_DIR") .. "/wrk_common.lua")
local mode = os.getenv("BENCH_MODE") or "event"
local batch = tonumber(os.getenv("BENCH_BATCH") or "1000")
local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "100000")
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")}
local pages = {"home", "search", "product", "cart", "checkout"}
local ids = {}
local next_id = 0

function init(args)
  seed()
  if mode == "reward" then
    for line in io.lines(os.getenv("BENCH_IDS")) do table.insert(ids, line) end
    next_id = math.random(0, #ids - 1)
  end
end

local function event()
  if math.random() < 0.8 then
    return string.format('{"customer_id":"e-%d","type":"page_view","properties":{"page":"%s"}}',
      math.random(0, customers - 1), pages[math.random(1, #pages)])
  end
  return string.format('{"customer_id":"e-%d","type":"purchase","properties":{"amount":%.2f,"category":"c%d"}}',
    math.random(0, customers - 1), math.random() * 300, math.random(0, 9))
end

function request()
  if mode == "reward" then
    next_id = next_id + 1
    local id = ids[(next_id % #ids) + 1]
    return wrk.format("POST", "/v1/decisions/" .. id .. "/reward", headers, '{"value":1.0}')
  elseif mode == "events" then
    local parts = {}
    for i = 1, batch do parts[i] = event() end
    return wrk.format("POST", "/v1/events", headers, "[" .. table.concat(parts, ",") .. "]")
  end
  return wrk.format("POST", "/v1/events", headers, event())
end
