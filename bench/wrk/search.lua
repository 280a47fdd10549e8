-- wrk script (issue 7): a product-search mix with a realistic repeat ratio, against
-- upstream-mock's /api/products/search/ held DELAY_MS per request (`delay_ms`, the same in every
-- request, so it never splits a cache entry).
--   80 % of requests: one of 20 popular searches, weighted 1/rank (Zipf-like: the first is asked
--         20 times as often as the 20th);
--   20 % of requests: a search never asked before (a long tail of unique queries; NONCE keeps
--         them unique across runs, so a previous round cannot have cached them).
-- SEED fixes the draw, so the cached and the uncached target see the same sequence.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/search.lua http://HOST:PORT/ -- NONCE SEED DELAY_MS
local popular = {
    "q=yoga+mat", "q=running+shoes", "q=kettlebell", "q=headphones", "q=yoga&category=yoga",
    "q=tent", "q=backpack", "q=bike+helmet", "q=dumbbell+set", "q=swim+goggles",
    "q=hiking+boots", "q=bluetooth+speaker", "q=chef+knife", "category=fitness", "q=puzzle",
    "q=ukulele", "q=garden+hose", "q=cookbook&page=2", "q=resistance+band", "q=power+bank",
}
local words = { "mat", "shoes", "bag", "gloves", "light", "watch", "bottle", "jacket" }
local cum, reqs = {}, {}
local nonce, delay = "x", "200"
local tail = 0

function init(args)
    nonce = args[1] or tostring(os.time())
    math.randomseed(tonumber(args[2]) or 1)
    delay = args[3] or "200"
    local total = 0
    for k = 1, #popular do total = total + 1 / k end
    local acc = 0
    for k = 1, #popular do
        acc = acc + (1 / k) / total
        cum[k] = acc
        reqs[k] = wrk.format("GET", "/api/products/search/?" .. popular[k] .. "&delay_ms=" .. delay)
    end
    cum[#popular] = 1.0
end

function request()
    if math.random() < 0.8 then
        local r = math.random()
        for k = 1, #cum do
            if r <= cum[k] then return reqs[k] end
        end
        return reqs[#reqs]
    end
    tail = tail + 1
    local w = words[tail % #words + 1]
    return wrk.format("GET", "/api/products/search/?q=" .. w .. "+" .. nonce .. "t" .. tail
        .. "&delay_ms=" .. delay)
end
