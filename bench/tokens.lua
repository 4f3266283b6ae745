-- wrk script for bench/proxy.sh's JWT cases with many tokens: every request
-- carries the next token of a file (one a line), round-robin, as
-- "Authorization: Bearer <token>".
--
--   wrk ... -s bench/tokens.lua URL -- TOKENS_FILE
--
-- The requests are formatted once, in init, so the generator's cost per
-- request is a table lookup.

local requests = {}
local n = 0
local i = 0

function init(args)
    local path = args[1] or error("usage: wrk -s tokens.lua URL -- TOKENS_FILE")
    for token in io.lines(path) do
        if token ~= "" then
            n = n + 1
            requests[n] = wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. token })
        end
    end
    if n == 0 then
        error("no tokens in " .. path)
    end
end

function request()
    i = i % n + 1
    return requests[i]
end
