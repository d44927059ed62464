-- bench/renew.lua at a fixed pace: every connection waits PACE_MS between
-- its calls, so the load is an offered rate (connections x 1000 / PACE_MS
-- calls a second) instead of as fast as the server answers; the latencies
-- wrk reports are then those of a fleet renewing at that rate.
--
--   wrk -t1 -c16 -d10s --latency -s bench/renew_paced.lua http://HOST:PORT \
--       -- TOKEN FIRST_PORT FRONTENDS SERVERS PACE_MS

local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
dofile(here .. "renew.lua")

local renew_init = init
local pace_ms = 10

function init(args)
  pace_ms = tonumber(args[5])
  renew_init(args)
end

function delay()
  return pace_ms
end
