-- wrk script for kvraft: PUT /v1/kv/{key} with the raw value, or a linearizable
-- GET /v1/kv/{key} (the default consistency), on a key drawn uniformly from the key space.
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
        local path = "/v1/kv/" .. common.key(number)
        if options.operation == "put" then
            local headers = { ["Content-Type"] = "application/octet-stream" }
            requests[number + 1] =
                wrk.format("PUT", path, headers, common.value(number, options.value_bytes))
        else
            requests[number + 1] = wrk.format("GET", path, {})
        end
    end
end

function request()
    return requests[math.random(#requests)]
end
