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

local function put(number, value_bytes)
    local body = string.format('{"key": "%s", "value": "%s"}',
        common.base64(common.key(number)), common.base64(common.value(number, value_bytes)))
    return wrk.format("POST", "/v3/kv/put", headers, body)
end

local function get(number)
    local body = string.format('{"key": "%s"}', common.base64(common.key(number)))
    return wrk.format("POST", "/v3/kv/range", headers, body)
end

function init(args)
    common.init(args, put, get)
end
