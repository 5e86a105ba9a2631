-- wrk's side of the steady fan7 load (bench/harness.py drive): each connection either
-- waits (?wait=60) for a ticket started before, or starts a new one; the location of a
-- started ticket waits for the next free connection. A ticket counts as done when its
-- record says so of itself and of each step.
-- Usage: wrk -s fan7.lua URL -- START_PATH STEPS_PER_TICKET

local start_path, steps, waiting, started = nil, 0, {}, 0
tickets_done, tickets_failed = 0, 0  -- globals, which the main state reads from each thread

function init(args)
  start_path, steps = args[1], tonumber(args[2])
end

function request()
  local location = table.remove(waiting)
  if location then
    return wrk.format('GET', location .. '?wait=60')
  end
  started = started + 1
  return wrk.format('POST', start_path, {['Content-Type'] = 'application/json'},
                    '{"key": "w' .. started .. '"}')
end

local function count(text, word)
  local found, at = 0, 1
  while true do
    at = string.find(text, word, at, true)
    if not at then return found end
    found, at = found + 1, at + #word
  end
end

function response(status, headers, body)
  if status == 201 and headers['Location'] then
    table.insert(waiting, headers['Location'])
  elseif status == 200 and count(body, '"current": "done"') == steps + 1 then
    tickets_done = tickets_done + 1
  else
    tickets_failed = tickets_failed + 1
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done()
  local finished, failed = 0, 0
  for _, thread in ipairs(threads) do
    finished = finished + thread:get('tickets_done')
    failed = failed + thread:get('tickets_failed')
  end
  io.write(string.format('tickets done %d failed %d\n', finished, failed))
end
