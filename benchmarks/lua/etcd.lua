-- wrk script for etcd's JSON gateway: POST /v3/kv/put {"key", "value"} or a linearizable
-- POST /v3/kv/range {"key"} (the default, serializable = false), on a key drawn uniformly
-- from the key space. Keys and values travel base64-encoded, as the gateway requires.
-- Arguments and output: see common.lua.

local script_directory = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$")
local common = dofile(script_directory .. "common.lua")

local requests = {}

setup = common.setup
done = common.done

function init(args)
    common.seed()
    local options = common.options(args)
    for number = 0, options.keys - 1 do
        local headers = { ["Content-Type"] = "application/json" }
        local key = common.base64(common.key(number))
        if options.operation == "put" then
            local value = common.base64(common.value(number, options.value_bytes))
            local body = string.format('{"key": "%s", "value": "%s"}', key, value)
            requests[number + 1] = wrk.format("POST", "/v3/kv/put", headers, body)
        else
            local body = string.format('{"key": "%s"}', key)
            requests[number + 1] = wrk.format("POST", "/v3/kv/range", headers, body)
        end
    end
end

function request()
    return requests[math.random(#requests)]
end
