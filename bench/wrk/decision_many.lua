-- c independent training jobs: client i posts steps 1, 2, 3, ... to its own run bench-many-<i>.
dofile("common.lua")

function request()
   return post("/v1/runs/bench-many-" .. id .. "/observations",
               '{"step":%d,"value":%.17g}', step, metric_value(id, step))
end
