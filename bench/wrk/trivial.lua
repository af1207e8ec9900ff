-- bench/trivial_app.py's POST /echo (or path=/echo-sync): the ratio's denominator.
dofile("common.lua")

function request()
   return post(opt.path, '{"step":%d,"value":%.17g}', step, metric_value(id, step))
end
