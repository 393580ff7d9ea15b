-- wrk script: POST decide-shaped bodies for random customers.
-- Environment: BENCH_LUA_DIR, BENCH_PATH (default /v1/decide), BENCH_CHANNEL, BENCH_CUSTOMERS (pool size),
-- BENCH_TOKEN (empty: no Authorization header, for the ceiling route).
dofile(os.getenv("BENCH_LUA_DIR") .. "/wrk_common.lua")
local path = os.getenv("BENCH_PATH") or "/v1/decide"
local channel = os.getenv("BENCH_CHANNEL") or "web20"
local customers = tonumber(os.getenv("BENCH_CUSTOMERS") or "10000")
local token = os.getenv("BENCH_TOKEN")
local devices = {"mobile", "desktop", "tablet"}
local headers = {["Content-Type"] = "application/json"}
if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end

function init(args)
  seed()
end

function request()
  local body = string.format(
    '{"customer_id":"c-%d","channel":"%s","context":{"device":"%s","page":"checkout","cart_value":%.2f,"tags":["returning"]}}',
    math.random(0, customers - 1), channel, devices[math.random(1, 3)], math.random() * 200)
  return wrk.format("POST", path, headers, body)
end
