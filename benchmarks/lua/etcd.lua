-- wrk script for etcd's JSON gateway: POST /v3/kv/put {"key", "value"} or a linearizable
-- POST /v3/kv/range {"key"} (the default, serializable = false), or a random mix of the two,
-- on a key drawn uniformly from the key space. Keys and values travel base64-encoded, as the
-- gateway requires. Arguments and output: see common.lua.

local script_directory = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
local common = dofile(script_directory .. "common.lua")

setup = common.setup
done = common.done
request = common.request

local headers = { ["Content-Type"] = "application/json" }

-- base64 encodes 3-byte groups, so a value's encoding is that of its first 12 bytes (which
-- name the key) followed by that of the rest, the same for every key: that is encoded once
-- (formatting 100,000 puts took seconds of pure-Lua base64 otherwise).
local encoded_tails = {}

local function base64_value(value)
    local tail = value:sub(13)
    local encoded_tail = encoded_tails[tail]
    if encoded_tail == nil then
        encoded_tail = common.base64(tail)
        encoded_tails[tail] = encoded_tail
    end
    return common.base64(value:sub(1, 12)) .. encoded_tail
end

local function put(number, value_bytes)
    local body = string.format('{"key": "%s", "value": "%s"}',
        common.base64(common.key(number)), base64_value(common.value(number, value_bytes)))
    return wrk.format("POST", "/v3/kv/put", headers, body)
end

local function get(number)
    local body = string.format('{"key": "%s"}', common.base64(common.key(number)))
    return wrk.format("POST", "/v3/kv/range", headers, body)
end

function init(args)
    common.init(args, put, get)
end
