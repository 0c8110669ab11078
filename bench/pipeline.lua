-- wrk script: each send is 16 pipelined GETs of wrk's path, so the server sees 16 requests
-- per read and owes 16 responses per write (wrk counts every response as a request).
--   wrk -t1 -c64 -d5s -s bench/pipeline.lua http://127.0.0.1:18080/
local depth = 16

init = function(args)
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format(nil)          -- GET wrk.path with wrk.headers (Host), HTTP/1.1
  end
  req = table.concat(r)
end

request = function()
  return req
end
