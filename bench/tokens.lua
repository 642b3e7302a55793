-- wrk script for `make bench`: every request carries "Authorization: Bearer <token>",
-- the tokens taken in turn from a file (one per line), cycling, and "X-Tenant: acme"
-- (which the authorization variants' rule checks: bench/run.py TENANT_HEADER). A file
-- with one token gives the cached case; a file with more tokens than the filter's cache
-- gives the cold case. Every variant is driven through this same script, headers and
-- all, so the load generator does the same work for all of them.
--
--   wrk -t1 -c16 -d5s --latency -s bench/tokens.lua http://127.0.0.1:PORT/ -- TOKENS_FILE [THREADS]
--
-- The requests are formatted once in init(); request() only hands the next one out.

local counter = 0

-- Runs in the main Lua state; "id" becomes a global of the thread's own state.
function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
end

local requests = {}
local i = 0

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s tokens.lua URL -- TOKENS_FILE")
   end
   for line in io.lines(path) do
      if #line > 0 then
         requests[#requests + 1] = wrk.format("GET", "/", {
            ["Authorization"] = "Bearer " .. line,
            ["X-Tenant"] = "acme",
         })
      end
   end
   if #requests == 0 then
      error("no tokens in " .. path)
   end
   -- Threads start at different places in the list.
   local nthreads = tonumber(args[2]) or 1
   local first = tonumber(id) or 0
   i = math.floor(#requests * first / nthreads) % #requests
end

function request()
   i = i % #requests + 1
   return requests[i]
end
