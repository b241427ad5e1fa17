-- keyturn settle: what happened to leased requests, several settles in one call (those that
-- arrived while the previous call was out), each decided exactly as if it came alone, in order.
-- ARGV: c, then c × (l, then the l arguments of one settle): P, model, now ('' = Redis TIME),
-- fingerprint, project, lease second, reserved tokens, outcome (ok|thr|off|poff|dead|pdead|trans|fault), real tokens (-1 unknown), throttle kind
-- (rpm|tpm|rpd|tpd|none), retry_after_ms (-1), quota_value (-1), dead reason, probe (0|1),
-- failure_threshold, base_cooldown_ms, max_cooldown_ms, default_cooldown_ms, b0..b3,
-- relearn_after_ms (-1: until the next Pacific midnight), the lease's request count, the
-- generation of the scope hash it was admitted under, then m and the m fingerprints of the
-- project's keys (pdead disables each).
-- Returns c replies, each the settle's state changes as a list of words (closed, opened,
-- disabled, cooling, exhausted, off, project-off, back, project-back), or {'!', error} if that
-- settle failed (what it changed before failing stays; the others are unaffected).

-- One settle; its arguments as ARGV was when each settle was its own call.
local function settle_one(ARGV)
  local P, model = ARGV[1], ARGV[2]
  local now = now_ms(ARGV[3])
  local fp, project = ARGV[4], ARGV[5]
  local sec, reserved = tonumber(ARGV[6]), tonumber(ARGV[7])
  local outcome = ARGV[8]
  local real = tonumber(ARGV[9])
  local kind, retry, qv = ARGV[10], tonumber(ARGV[11]), tonumber(ARGV[12])
  local reason, probe = ARGV[13], ARGV[14] == '1'
  local threshold, base_cd, max_cd, default_cd = tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17]), tonumber(ARGV[18])
  local b0, b1, b2, b3 = tonumber(ARGV[19]), tonumber(ARGV[20]), tonumber(ARGV[21]), tonumber(ARGV[22])
  local _, day_end = day_of(now, b0, b1, b2, b3)
  local relearn_ms = tonumber(ARGV[23])
  local nreq = tonumber(ARGV[24]) or 1
  -- When what is learned now expires.
  local relearn_at = day_end
  if relearn_ms >= 0 then relearn_at = now + relearn_ms end

  local kk = P .. 'k:' .. fp
  local sk = P .. 's:' .. model .. '|' .. project
  local lk = P .. 'l:' .. model .. '|' .. project
  local pk = P .. 'p:' .. project
  local events = {}
  -- Whether the scope's counters are still those the lease was admitted under: a reset or a
  -- restore since replaced them, and the lease corrects none of the new ones.
  local current = redis.call('HGET', sk, 'gen') == ARGV[25]

  -- A re-probe through an expired switch-off: its answer decides the switch. 'serves': the model
  -- served or named a real quota (model and project are back); 'project': the model is off but
  -- the project answered; anything else frees the gate for another re-probe.
  local answer = 'nothing'
  if outcome == 'ok' or (outcome == 'thr' and kind ~= 'none') then answer = 'serves'
  elseif outcome == 'off' then answer = 'project' end
  if tonumber(redis.call('HGET', sk, 'pr')) == sec then
    local l = redis.call('HMGET', lk, 'pf', 'ps')
    if l[1] == fp and tonumber(l[2]) == sec then
      if answer == 'serves' then
        redis.call('DEL', lk)
        events[#events + 1] = 'back'
      else
        redis.call('HDEL', lk, 'pf', 'ps', 'pd')
      end
      redis.call('HDEL', sk, 'lset')
    end
    local pj = redis.call('HMGET', pk, 'pf', 'ps')
    if pj[1] == fp and tonumber(pj[2]) == sec then
      if answer == 'serves' or answer == 'project' then
        redis.call('DEL', pk)
        events[#events + 1] = 'project-back'
      else
        redis.call('HDEL', pk, 'pf', 'ps', 'pd')
      end
    end
    redis.call('HDEL', sk, 'pr')
  end

  local function breaker_success()
    local h = redis.call('HMGET', kk, 'bs', 'bf')
    local bs, bf = h[1], tonumber(h[2]) or 0
    if (bs ~= false and bs ~= 'closed') then events[#events + 1] = 'closed' end
    if (bs ~= false and bs ~= 'closed') or bf ~= 0 then
      redis.call('HSET', kk, 'bs', 'closed', 'bf', 0, 'bt', 0, 'bp', 0)
    end
  end

  local function learn(field)
    if qv ~= nil and qv > 0 then
      local old = tonumber(redis.call('HGET', lk, field))
      if old == nil or qv <= old then
        -- Said again, it holds again for as long.
        redis.call('HSET', lk, field, qv, 'until', relearn_at)
        redis.call('HDEL', sk, 'lset')
      end
    end
  end

  if outcome == 'ok' then
    if real >= 0 and real ~= reserved then
      -- The usage history counts real tokens, on the day the request was admitted.
      local uk = P .. 'u:' .. day_of(sec * 1000, b0, b1, b2, b3)
      if redis.call('EXISTS', uk) == 1 then
        redis.call('HINCRBY', uk, fp .. '|' .. model .. '|t', real - reserved)
      end
      if current then
        local slot = sec % W
        local h = redis.call('HMGET', sk, 't' .. slot, 'r' .. slot, 'k' .. slot, 'head', 'sk')
        local t, r, k, head, sum = tonumber(h[1]), tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]), tonumber(h[5]) or 0
        if t == sec and head ~= nil and sec <= head and sec > head - W and (r > 0 or k > 0) then
          local delta = real - reserved
          if delta < 0 then delta = -math.min(-delta, k) end
          redis.call('HSET', sk, 'k' .. slot, k + delta, 'sk', sum + delta)
        end
        -- The day's tokens too, if the request was admitted on the day being counted.
        local d = redis.call('HMGET', sk, 'dk', 'dt')
        if tonumber(d[1]) == day_of(sec * 1000, b0, b1, b2, b3) and d[2] then
          redis.call('HSET', sk, 'dt', math.max(tonumber(d[2]) + real - reserved, 0))
        end
      end
    end
    breaker_success()
  elseif outcome == 'thr' then
    breaker_success()
    local s = load_hash(sk)
    if kind == 'rpd' or kind == 'tpd' then
      learn(kind)
      put(s, 'ex', math.max(s.f.ex or 0, day_end))
      events[#events + 1] = 'exhausted'
    elseif kind == 'rpm' or kind == 'tpm' then
      learn(kind)
      local untl
      if retry >= 0 then
        untl = now + retry
      else
        -- Until the oldest request we see in the window leaves it.
        local head, oldest = s.f.head, nil
        if head ~= nil then
          for x = head - (W - 1), head do
            if oldest == nil and s.f['t' .. (x % W)] == x then oldest = x end
          end
        end
        if oldest ~= nil then untl = (oldest + W) * 1000 else untl = now + default_cd end
      end
      put(s, 'cd', math.max(s.f.cd or 0, math.max(untl, now + 1000)))
      events[#events + 1] = 'cooling'
    else
      local d = default_cd
      if retry >= 0 then d = retry end
      put(s, 'cd', math.max(s.f.cd or 0, now + d))
      events[#events + 1] = 'cooling'
    end
    flush_hash(s, scope_ttl(s, now, day_end))
  elseif outcome == 'off' then
    redis.call('HSET', lk, 'rpd', 0, 'until', relearn_at)
    redis.call('HDEL', lk, 'pf', 'ps', 'pd')
    redis.call('HDEL', sk, 'lset')
    events[#events + 1] = 'off'
    breaker_success()
  elseif outcome == 'poff' then
    redis.call('HSETNX', pk, 'since', now)
    redis.call('HSET', pk, 'until', relearn_at)
    redis.call('HDEL', pk, 'pf', 'ps', 'pd')
    events[#events + 1] = 'project-off'
    breaker_success()
  elseif outcome == 'dead' then
    if redis.call('HSETNX', kk, 'dis', reason) == 1 then
      redis.call('HSET', kk, 'dis_at', now)
      events[#events + 1] = 'disabled'
    end
  elseif outcome == 'pdead' then
    local m = tonumber(ARGV[26]) or 0
    for i = 1, m do
      local k = P .. 'k:' .. ARGV[26 + i]
      if redis.call('HSETNX', k, 'dis', reason) == 1 then
        redis.call('HSET', k, 'dis_at', now)
        events[#events + 1] = 'disabled:' .. ARGV[26 + i]
      end
    end
  elseif outcome == 'trans' then
    local h = redis.call('HMGET', kk, 'bs', 'bf', 'bt')
    local bs, bf, bt = h[1] or 'closed', tonumber(h[2]) or 0, tonumber(h[3]) or 0
    local trip = false
    if bs == 'closed' then
      bf = bf + 1
      if bf >= math.max(threshold, 1) then trip = true else redis.call('HSET', kk, 'bf', bf) end
    elseif bs == 'half' and probe then
      trip = true
    end
    if trip then
      bt = bt + 1
      local factor = 2 ^ math.min(bt - 1, 30)
      local cd = math.min(base_cd * factor, max_cd)
      redis.call('HSET', kk, 'bs', 'open', 'bu', now + cd, 'bf', 0, 'bt', bt, 'bp', 0)
      events[#events + 1] = 'opened'
    end
  elseif outcome == 'fault' then
    if probe and redis.call('HGET', kk, 'bs') == 'half' then
      redis.call('HSET', kk, 'bp', 0)
    end
  end

  -- Served or refused, counted on the day the request was sent (sending counted it at admission):
  -- the day's account of its scope (ds, dx) and the key's usage history (fp|model|s, |x).
  local answered = nil
  if outcome == 'ok' then answered = 's'
  elseif outcome == 'thr' or outcome == 'off' or outcome == 'poff' or outcome == 'dead' or outcome == 'pdead' then
    answered = 'x'
  end
  if answered ~= nil then
    local sent_day = day_of(sec * 1000, b0, b1, b2, b3)
    if current and tonumber(redis.call('HGET', sk, 'dk')) == sent_day then
      redis.call('HINCRBY', sk, 'd' .. answered, nreq)
    end
    local uk = P .. 'u:' .. sent_day
    if redis.call('EXISTS', uk) == 1 then
      redis.call('HINCRBY', uk, fp .. '|' .. model .. '|' .. answered, nreq)
    end
  end
  return events
end

local replies, o = {}, 2
for j = 1, tonumber(ARGV[1]) do
  local l = tonumber(ARGV[o])
  local args = {}
  for x = 1, l do args[x] = ARGV[o + x] end
  local ok, events = pcall(settle_one, args)
  if ok then replies[j] = events else replies[j] = { '!', tostring(events) } end
  o = o + l + 1
end
return replies
