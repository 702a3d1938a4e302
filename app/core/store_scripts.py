"""The Lua steps of the job store. Each changes a job and announces the change in the same
atomic step: an entry on the job's event stream (what live progress follows), a webhook
booking when the job asked for that event, and the finished-jobs tally behind the metrics.

The stream and tally keys are derived inside the scripts rather than passed as KEYS: the
service runs on one Redis primary (Sentinel for failover), never on Redis Cluster."""

# Shared by every script ('ldm:stats:finished' is `stats.FINISHED_KEY`, 'ldm:webhooks' is
# `webhook_queue.WEBHOOKS_KEY`). `emit` appends an event to the job's stream and books its webhook;
# `emit_status` maps a state change to its webhook event and counts finished jobs.
_EMIT = """
local function emit(job_key, job_id, ttl, hook_event, ...)
  local stream = job_key .. ':events'
  local id = redis.call('XADD', stream, 'MAXLEN', '~', '200', '*', ...)
  redis.call('EXPIRE', stream, ttl)
  if hook_event then
    local hook = redis.call('HMGET', job_key, 'webhook_url', 'webhook_events')
    if hook[1] and string.find(',' .. hook[2] .. ',', ',' .. hook_event .. ',', 1, true) then
      local now = redis.call('TIME')
      redis.call('ZADD', 'ldm:webhooks', now[1] + now[2] / 1e6,
                 job_id .. '|' .. hook_event .. '|' .. id)
    end
  end
  return id
end
local function emit_status(job_key, job_id, ttl, status)
  local hook_event = nil
  if status == 'running' then
    hook_event = 'start'
  elseif status == 'succeeded' or status == 'failed' or status == 'canceled' then
    hook_event = 'completed'
    local model = redis.call('HGET', job_key, 'model')
    redis.call('HINCRBY', 'ldm:stats:finished', model .. '|' .. status, 1)
  end
  return emit(job_key, job_id, ttl, hook_event, 'type', 'status', 'status', status)
end
-- The job leaves the line it waits in (app/core/waiting.py), if any; returns its tenant.
local function leave_line(job_key, job_id)
  local line = redis.call('HMGET', job_key, 'wait_key', 'wait_id', 'tenant')
  local tenant = line[3] or 'public'
  if line[1] then redis.call('ZREM', line[1], line[2]) end
  redis.call('SREM', 'ldm:tenant:' .. tenant .. ':queued', job_id)
  return tenant
end
"""

# Moves a job from one of the allowed states to a new one (never back to queued: a rerun is
# app/core/recovery.py's), atomically, so that a cancel and
# a worker picking the job up can never both win; with a worker named, only while that worker
# owns the job (a worker given up for dead cannot end a job that runs again elsewhere).
# With an attempt named, only while the job is still on that attempt: a run given up for dead
# (a zombie, or RQ's callback for its RQ job) cannot end the rerun, even on the same worker.
# Running jobs are indexed for the lost-job check; a terminal state starts the record's TTL
# and books its files for the expiry sweep. ARGV[6] is the event stream's TTL, ARGV[7] the
# attempt ('' for any); the fields to set follow. Returns {1, old} or {0, current or ''}.
TRANSITION = _EMIT + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return {0, ''} end
if not string.find(',' .. ARGV[1] .. ',', ',' .. cur .. ',', 1, true) then return {0, cur} end
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], 'worker') ~= ARGV[5] then return {0, cur} end
if ARGV[7] ~= '' and (redis.call('HGET', KEYS[1], 'attempt') or '1') ~= ARGV[7] then
  return {0, cur}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], unpack(ARGV, 8))
local tenant = leave_line(KEYS[1], ARGV[4])
if ARGV[2] == 'running' then
  redis.call('ZADD', KEYS[3], tonumber(redis.call('TIME')[1]), ARGV[4])
  redis.call('SADD', 'ldm:tenant:' .. tenant .. ':running', ARGV[4])
else
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('SREM', 'ldm:tenant:' .. tenant .. ':running', ARGV[4])
end
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[2], tonumber(redis.call('TIME')[1]) + ARGV[3], ARGV[4])
end
emit_status(KEYS[1], ARGV[4], ARGV[6], ARGV[2])
return {1, cur}
"""

# A queued job is canceled at once and leaves the queue; a running one gets a flag that the
# worker reads at its next denoising step. Returns the state the job was in ('' if unknown).
CANCEL = _EMIT + """
local cur = redis.call('HGET', KEYS[1], 'status')
if not cur then return '' end
if cur == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('ZADD', KEYS[4], tonumber(redis.call('TIME')[1]) + ARGV[2], ARGV[3])
  redis.call('LREM', KEYS[2], 0, ARGV[4])
  leave_line(KEYS[1], ARGV[3])
  redis.call('DEL', KEYS[3])
  emit_status(KEYS[1], ARGV[3], ARGV[2], 'canceled')
elseif cur == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', '1')
end
return cur
"""

# Starts jobs in one step: the job the worker took from the queue through RQ (rq id '')
# and jobs still waiting, each taken only if it is still in the queue (so no other worker
# and no cancel got it), still queued, and its tenant is under its running cap (a cap of ''
# is none; a job over it stays where it waits). A job taken leaves its line and moves its
# band's virtual time (app/core/waiting.py) to its tag. Returns the ids of the jobs started,
# counting those already running on this worker: a client that retries the script after a
# lost reply must not disown what the first run started. ARGV[3] is the event stream's TTL;
# then per job: id, RQ id, total steps, running cap.
CLAIM = _EMIT + """
local started = {}
local now = tonumber(redis.call('TIME')[1])
for i = 0, #KEYS / 2 - 2 do
  local job_key, rq_key = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local job_id, rq_id = ARGV[4 + 4 * i], ARGV[5 + 4 * i]
  local cap = ARGV[7 + 4 * i]
  local state = redis.call('HMGET', job_key, 'status', 'worker', 'tenant', 'wait_key')
  local ours = state[1] == 'running' and state[2] == ARGV[1]
  local running = 'ldm:tenant:' .. (state[3] or 'public') .. ':running'
  local room = cap == '' or redis.call('SCARD', running) < tonumber(cap)
  if ours then
    started[#started + 1] = job_id
  elseif room or state[1] ~= 'queued' then
    local taken = rq_id == '' or redis.call('LREM', KEYS[2], 1, rq_id) == 1
    -- The RQ job stays for the worker's RQ bookkeeping, unless nobody will run it.
    if taken and rq_id ~= '' and state[1] ~= 'queued' then
      redis.call('DEL', rq_key)
    end
    if taken and state[1] == 'queued' then
      if state[4] then
        local tag = tonumber(redis.call('ZSCORE', state[4], rq_id))
        local v = tonumber(redis.call('HGET', 'ldm:fair', state[4])) or 0
        if tag and tag > v then redis.call('HSET', 'ldm:fair', state[4], tostring(tag)) end
      end
      leave_line(job_key, job_id)
      redis.call('HSET', job_key, 'status', 'running', 'started_at', ARGV[2], 'step', '0',
                 'total_steps', ARGV[6 + 4 * i], 'worker', ARGV[1])
      redis.call('ZADD', KEYS[1], now, job_id)
      redis.call('SADD', running, job_id)
      emit_status(job_key, job_id, ARGV[3], 'running')
      started[#started + 1] = job_id
    end
  end
end
return started
"""

# Records the latest finished step of each job of the active set still running on this worker
# (each job at its own step, with the total its scheduler really runs), and reads their cancel
# flags, in one round trip. A job's progress webhook goes out at most once a second, and on its
# last step. A step of '' only reads the flag (a paused job's progress stays as it was).
# ARGV: worker, stream TTL, then a job id, its step and its total per key. Returns per job 1
# if its cancel was requested, 2 if it is no longer running on this worker (it was given up
# for dead and runs again, or has expired), else 0.
PROGRESS = _EMIT + """
local canceled = {}
local now = tonumber(redis.call('TIME')[1])
for i, key in ipairs(KEYS) do
  local job_id, step, total = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  local state = redis.call('HMGET', key, 'status', 'worker', 'cancel', 'total_steps',
                           'webhook_events', 'webhook_progress_at')
  if step ~= '' and state[1] == 'running' and (ARGV[1] == '' or state[2] == ARGV[1]) then
    if total == '' then total = state[4] end
    redis.call('HSET', key, 'step', step, 'total_steps', total)
    local hook_event = nil
    if state[5] and (step == total or now > tonumber(state[6] or 0)) then
      hook_event = 'progress'
      redis.call('HSET', key, 'webhook_progress_at', now)
    end
    emit(key, job_id, ARGV[2], hook_event,
         'type', 'progress', 'step', step, 'total_steps', total)
  end
  canceled[i] = state[3] == '1' and 1 or 0
  if ARGV[1] ~= '' and (state[1] ~= 'running' or state[2] ~= ARGV[1]) then canceled[i] = 2 end
end
return canceled
"""

# Marks jobs running on this worker paused (set aside at a step boundary for a higher-priority
# job) or resumed, announcing it on each job's stream. ARGV: worker, stream TTL, '1' or '0',
# then the job ids (one per key).
PAUSE = _EMIT + """
for i, key in ipairs(KEYS) do
  local state = redis.call('HMGET', key, 'status', 'worker')
  if state[1] == 'running' and state[2] == ARGV[1] then
    redis.call('HSET', key, 'paused', ARGV[3])
    emit(key, ARGV[3 + i], ARGV[2], nil, 'type', 'paused', 'paused', ARGV[3])
  end
end
return #KEYS
"""
