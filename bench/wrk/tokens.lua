-- wrk script (issue 4): every request presents the next token of a file, one token per line,
-- round-robin, so authgate's token cache cannot answer it (with auth.cache.max_entries: 1 even
-- the repeats after a full cycle miss). The requests are built once in init(), so wrk pays no
-- per-request formatting.
--
--   wrk -t1 -c32 -d10s --latency -s bench/wrk/tokens.lua http://HOST:PORT/api/... -- TOKENS_FILE
local reqs = {}
local n, i = 0, 0

function init(args)
    local file = args[1]
    if not file then error("usage: ... -s tokens.lua URL -- TOKENS_FILE") end
    for line in io.lines(file) do
        if #line > 0 then
            n = n + 1
            reqs[n] = wrk.format("GET", wrk.path, { ["Authorization"] = "Bearer " .. line })
        end
    end
    if n == 0 then error("no tokens in " .. file) end
end

function request()
    i = i % n + 1
    return reqs[i]
end
