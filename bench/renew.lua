-- wrk script: phone-home calls for FRONTENDS x SERVERS servers, cycled in a
-- fixed order over keep-alive connections. Against a registry that already
-- holds those servers every call is a lease renewal.
--
--   wrk -t1 -c32 -d10s --latency -s bench/renew.lua http://HOST:PORT \
--       -- TOKEN FIRST_PORT FRONTENDS SERVERS
--
-- Frontend f (0-based) is port FIRST_PORT+f, owned by the name "svc<port>";
-- its server s is 127.77.<f>.<s+1>:30443 (the same scheme as
-- bench/lbclient.py). At the end it prints one line "WRK {json}".

local requests = {}
local count = 0
local next_index = 0

function init(args)
  local token = args[1]
  local first = tonumber(args[2])
  local frontends = tonumber(args[3])
  local servers = tonumber(args[4])
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-Funkypenguin-Token"] = token,
  }
  -- Interleave frontends: consecutive calls go to different frontends.
  for s = 0, servers - 1 do
    for f = 0, frontends - 1 do
      local port = first + f
      local body = string.format(
        '{"name":"svc%d","frontend-port":"%d","backend-port":"30443",'
          .. '"dst-ip":"127.77.%d.%d","action":"add","send-proxy":""}',
        port, port, f, s + 1)
      count = count + 1
      requests[count] = wrk.format("POST", "/hooks/update-haproxy", headers, body)
    end
  end
end

function request()
  next_index = next_index % count + 1
  return requests[next_index]
end

function done(summary, latency, _)
  local seconds = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"seconds":%.3f,"rps":%.1f,"p50_ms":%.3f,"p90_ms":%.3f,'
      .. '"p99_ms":%.3f,"max_ms":%.3f,"non2xx":%d,"socket_errors":%d}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout))
end
