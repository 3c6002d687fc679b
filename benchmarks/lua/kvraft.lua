-- wrk script for kvraft: PUT /v1/kv/{key} with the raw value, or a linearizable
-- GET /v1/kv/{key} (the default consistency), or a random mix of the two, on a key drawn
-- uniformly from the key space. Arguments and output: see common.lua.

local script_directory = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
local common = dofile(script_directory .. "common.lua")

setup = common.setup
done = common.done
request = common.request

local function put(number, value_bytes)
    local headers = { ["Content-Type"] = "application/octet-stream" }
    return wrk.format("PUT", "/v1/kv/" .. common.key(number), headers,
        common.value(number, value_bytes))
end

local function get(number)
    return wrk.format("GET", "/v1/kv/" .. common.key(number), {})
end

function init(args)
    common.init(args, put, get)
end
