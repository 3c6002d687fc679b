-- Shared by kvraft.lua and etcd.lua (wrk scripts for benchmarks/bench_vs_etcd.py).
--
-- Script arguments (after wrk's "--"): OPERATION KEYS VALUE_BYTES [PUT_PERCENT], e.g.
-- "-- put 1000 100" or "-- mixed 1000 100 50". OPERATION is put, get or mixed: a mixed run
-- makes each request a put with probability PUT_PERCENT / 100 (50 if not given) and a get
-- otherwise, each on its own uniformly drawn key.
-- Both systems get the same keys ("bench/000000" .. "bench/<KEYS - 1>") and the same values,
-- so the only difference between their requests is each system's HTTP encoding.
-- done() prints one line "WRK_JSON {...}" that the benchmark parses instead of wrk's text.

local common = {}

local BASE64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function base64_digit(number)
    return BASE64_ALPHABET:sub(number + 1, number + 1)
end

-- Standard base64 with padding (etcd's JSON gateway takes keys and values as base64).
function common.base64(data)
    local pieces = {}
    for index = 1, #data, 3 do
        local first, second, third = data:byte(index, index + 2)
        local group = first * 65536 + (second or 0) * 256 + (third or 0)
        pieces[#pieces + 1] = base64_digit(math.floor(group / 262144) % 64)
            .. base64_digit(math.floor(group / 4096) % 64)
            .. (second and base64_digit(math.floor(group / 64) % 64) or "=")
            .. (third and base64_digit(group % 64) or "=")
    end
    return table.concat(pieces)
end

function common.options(args)
    local operation = args[1] or "put"
    if operation ~= "put" and operation ~= "get" and operation ~= "mixed" then
        error("operation must be put, get or mixed, got " .. operation)
    end
    local put_percent = 100
    if operation == "get" then
        put_percent = 0
    elseif operation == "mixed" then
        put_percent = tonumber(args[4] or "50")
    end
    return {
        operation = operation,
        keys = tonumber(args[2] or "1000"),
        value_bytes = tonumber(args[3] or "100"),
        put_percent = put_percent,
    }
end

function common.key(number)
    return string.format("bench/%06d", number)
end

-- A value of exactly value_bytes bytes that names its key.
function common.value(number, value_bytes)
    local prefix = string.format("value-%06d-", number)
    return (prefix .. string.rep(".", value_bytes)):sub(1, value_bytes)
end

-- Seeds each thread's generator differently (setup numbers the threads), so that threads do
-- not replay the same key sequence. setup runs in the main Lua state, once per thread; done()
-- reads each thread's counters through the threads kept here.
local threads = {}

function common.setup(thread)
    threads[#threads + 1] = thread
    thread:set("thread_number", #threads)
end

function common.seed()
    math.randomseed(os.time() * 1000 + (thread_number or 0))
end

-- Each thread's requests, formatted once in init: puts[n] and gets[n] for key n - 1.
local puts, gets = {}, {}
local put_percent = 100

-- How many puts and gets this thread sent (globals, so that done() can read them).
puts_sent, gets_sent = 0, 0

-- put(number, value_bytes) and get(number) format one request in the system's encoding.
function common.init(args, put, get)
    common.seed()
    local options = common.options(args)
    put_percent = options.put_percent
    for number = 0, options.keys - 1 do
        if put_percent > 0 then
            puts[number + 1] = put(number, options.value_bytes)
        end
        if put_percent < 100 then
            gets[number + 1] = get(number)
        end
    end
end

function common.request()
    if put_percent >= 100 or (put_percent > 0 and math.random(100) <= put_percent) then
        puts_sent = puts_sent + 1
        return puts[math.random(#puts)]
    end
    gets_sent = gets_sent + 1
    return gets[math.random(#gets)]
end

-- Every latency seen, as "[microseconds, count]" pairs in increasing order, so that runs
-- can be merged into exact percentiles. wrk counts per microsecond; #latency is how many
-- distinct latencies it saw, and latency(i) the i-th of them and its count.
local function histogram(latency)
    local pairs_seen = {}
    for index = 1, #latency do
        local us, count = latency(index)
        pairs_seen[#pairs_seen + 1] = string.format("[%d, %d]", us, count)
    end
    return "[" .. table.concat(pairs_seen, ", ") .. "]"
end

-- Latency in microseconds, as wrk records it (every request, puts and gets together).
function common.done(summary, latency, requests)
    local errors = summary.errors
    local put_count, get_count = 0, 0
    for _, thread in ipairs(threads) do
        put_count = put_count + (thread:get("puts_sent") or 0)
        get_count = get_count + (thread:get("gets_sent") or 0)
    end
    io.write(string.format(
        "WRK_JSON {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, "
            .. "\"errors\": {\"connect\": %d, \"read\": %d, \"write\": %d, \"status\": %d, "
            .. "\"timeout\": %d}, \"sent\": {\"put\": %d, \"get\": %d}, "
            .. "\"latency_us\": {\"min\": %d, \"mean\": %.1f, \"max\": %d, "
            .. "\"stdev\": %.1f, \"p50\": %d, \"p90\": %d, \"p99\": %d, \"p99_9\": %d}, "
            .. "\"histogram_us\": %s}\n",
        summary.requests, summary.duration, summary.bytes,
        errors.connect, errors.read, errors.write, errors.status, errors.timeout,
        put_count, get_count,
        latency.min, latency.mean, latency.max, latency.stdev,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), histogram(latency)
    ))
end

return common
