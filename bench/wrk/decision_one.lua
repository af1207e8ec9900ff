-- The c ranks of one data-parallel job: every client posts steps 1, 2, 3, ... to bench-one,
-- the same value for a step. The first to arrive decides; the others are retries answered
-- with the stored decision.
dofile("common.lua")

function request()
   return post("/v1/runs/bench-one/observations",
               '{"step":%d,"value":%.17g,"rank":%d,"world_size":%d}',
               step, metric_value(0, step), id, world)
end
