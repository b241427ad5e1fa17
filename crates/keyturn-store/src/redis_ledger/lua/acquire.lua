-- keyturn acquire: atomic admissions over the candidate keys, in the policy's order, for a batch
-- of k demands of one model (the acquires in flight in one process, taken in arrival order; each
-- decided exactly as if it came alone, one after the other).
-- KEYS[1]: a key in the namespace's slot (routing only).
-- ARGV: P, model, now ('' = Redis TIME), policy (rr|ll|w), four Pacific midnights b0..b3,
-- probe_timeout_ms, n, relearn_after_ms (-1: the next Pacific midnight), start (the ring position
-- round-robin begins at), k, then k × (requests, tokens), then n × (idx, fingerprint, project,
-- rpm, tpm, rpd, tpd, weight) in ring order with -1 for unlimited.
-- then the grant: want (how many admissions to take ahead, 0: none), share (a call takes at most
-- 1/share of a scope's free room ahead), the granted shape (requests, tokens), then the
-- give-backs: mark_ttl_ms, this call's id ('' = none), a and a × id (give-backs and calls
-- answered on their first send, whose marks and records may go), v and v × id (calls whose answer
-- was lost: voided), m and m × (id, r, r × (fingerprint, project, second, gen, requests, tokens)):
-- admissions taken ahead earlier and not spent, given back first, each batch once (with k = 0 and
-- n = 0 the call only gives back). A batch's id is marked (SET NX, expiring after mark_ttl_ms) in
-- the same call that applies it: a resend of a batch that already ran (its answer lost) changes
-- nothing. A call with an id records what it admitted (`c:<id>`, a list of fingerprint, project,
-- second, gen, requests, tokens; expiring after mark_ttl_ms); voiding it gives all of that back
-- and leaves `v:<id>`, so the call, if it arrives after its void, admits nothing ({'void'}).
-- Returns k replies, each {1, idx, second, probe, now, gen} or
--         {0, retry_at|-1, why, n_off, disabled_idx_csv, too_large_what, too_large_demand, too_large_limit, now},
-- and when want > 0 one more: {now, requests, tokens, then (idx, second, gen) per admission taken
-- ahead}. Admissions taken ahead (a grant) count exactly as admissions; the scope's `gx` records
-- the second of its last grant, so a refusal that room given back at that second's end could
-- lift says to retry then.

local P, model = ARGV[1], ARGV[2]
local now = now_ms(ARGV[3])
local policy = ARGV[4]
local probe_timeout = tonumber(ARGV[9])
local n = tonumber(ARGV[10])
local relearn_ms = tonumber(ARGV[11])
local start = tonumber(ARGV[12])
local k = tonumber(ARGV[13])
local BASE = 13 + 2 * k
local now_sec = math.floor(now / 1000)
local b0, b1, b2, b3 = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local day_start, day_end = day_of(now, b0, b1, b2, b3)
local GA = BASE + n * 8
local want, share = tonumber(ARGV[GA + 1]) or 0, math.max(tonumber(ARGV[GA + 2]) or 1, 1)
local greq, gtok = tonumber(ARGV[GA + 3]) or 1, tonumber(ARGV[GA + 4]) or 0
local mark_ttl = math.max(tonumber(ARGV[GA + 5]) or 1, 1)
local cid = ARGV[GA + 6] or ''
-- Voided before it arrived (its answer was taken as lost): it admits nothing.
if cid ~= '' and redis.call('EXISTS', P .. 'v:' .. cid) == 1 then return { 'void' } end
-- After a grant's second ends, those waiting on room it held look again this much later.
local GRANT_SLACK_MS = 200
-- The demand being decided (the functions below read these); granting: taking admissions ahead.
local nreq, ntok
local granting = false

-- Gives back admissions taken ahead and not spent: off the second's bucket while it is in the
-- window, off the day's counts while it is the same day, off the usage history. Nothing if a
-- reset or restore replaced the scope's counters since (another generation).
local function give_back(fp, project, sec, gen, r, t)
  local sk = P .. 's:' .. model .. '|' .. project
  local slot = sec % W
  local h = redis.call('HMGET', sk, 'gen', 't' .. slot, 'r' .. slot, 'k' .. slot, 'head', 'sr', 'sk', 'dk', 'dc', 'dt')
  if tonumber(h[1]) ~= gen then return end
  local args = {}
  local head = tonumber(h[5])
  if tonumber(h[2]) == sec and head ~= nil and sec > head - W then
    local br, bk = tonumber(h[3]) or 0, tonumber(h[4]) or 0
    local dr, dk = math.min(r, br), math.min(t, bk)
    args = { 'r' .. slot, br - dr, 'k' .. slot, bk - dk, 'sr', math.max((tonumber(h[6]) or 0) - dr, 0), 'sk', math.max((tonumber(h[7]) or 0) - dk, 0) }
  end
  local sday = day_of(sec * 1000, b0, b1, b2, b3)
  if tonumber(h[8]) == sday then
    args[#args + 1] = 'dc'; args[#args + 1] = math.max((tonumber(h[9]) or 0) - r, 0)
    args[#args + 1] = 'dt'; args[#args + 1] = math.max((tonumber(h[10]) or 0) - t, 0)
  end
  if #args > 0 then redis.call('HSET', sk, unpack(args)) end
  local uk = P .. 'u:' .. sday
  if redis.call('EXISTS', uk) == 1 then
    -- (0 - x, not -x: Lua writes -0 as "-0", which Redis reads as no integer.)
    local fr, ft = fp .. '|' .. model .. '|r', fp .. '|' .. model .. '|t'
    local nr = redis.call('HINCRBY', uk, fr, 0 - r)
    local nt = redis.call('HINCRBY', uk, ft, 0 - t)
    -- A row only grants made shows nothing was sent: no row, as if never taken.
    if nr <= 0 and nt <= 0 and not redis.call('HGET', uk, fp .. '|' .. model .. '|s')
      and not redis.call('HGET', uk, fp .. '|' .. model .. '|x') then
      redis.call('HDEL', uk, fr, ft)
    end
  end
end
local o = GA + 7
local nack = tonumber(ARGV[o]) or 0
for j = 1, nack do redis.call('DEL', P .. 'b:' .. ARGV[o + j], P .. 'c:' .. ARGV[o + j]) end
o = o + nack + 1
-- Calls whose answer was lost: what each admitted goes back, once (the tombstone says so).
for j = 1, tonumber(ARGV[o]) or 0 do
  local ck, vk = P .. 'c:' .. ARGV[o + j], P .. 'v:' .. ARGV[o + j]
  if redis.call('EXISTS', vk) == 0 then
    local rec = redis.call('LRANGE', ck, 0, -1)
    for e = 1, #rec - 5, 6 do
      give_back(rec[e], rec[e + 1], tonumber(rec[e + 2]), tonumber(rec[e + 3]), tonumber(rec[e + 4]), tonumber(rec[e + 5]))
    end
    redis.call('DEL', ck)
    redis.call('SET', vk, 1, 'PX', mark_ttl)
  end
end
o = o + (tonumber(ARGV[o]) or 0) + 1
for _ = 1, tonumber(ARGV[o]) or 0 do
  local r = tonumber(ARGV[o + 2])
  -- Applied once: a resend finds its mark and skips it.
  if redis.call('SET', P .. 'b:' .. ARGV[o + 1], 1, 'NX', 'PX', mark_ttl) then
    for j = 0, r - 1 do
      local e = o + 2 + j * 6
      give_back(ARGV[e + 1], ARGV[e + 2], tonumber(ARGV[e + 3]), tonumber(ARGV[e + 4]), tonumber(ARGV[e + 5]), tonumber(ARGV[e + 6]))
    end
  end
  o = o + 2 + r * 6
end

local scopes = {}

-- What this call admitted, per fingerprint, project, second and generation (for its record).
local made, made_order = {}, {}
local function note_made(fp, project, sec, gen, r, t)
  if cid == '' then return end
  local id = fp .. '\0' .. project .. '\0' .. sec .. '\0' .. gen
  local m = made[id]
  if m == nil then
    m = { fp, project, sec, gen, 0, 0 }
    made[id] = m
    made_order[#made_order + 1] = m
  end
  m[5], m[6] = m[5] + r, m[6] + t
end

local function scope(project, rpm, tpm, rpd, tpd)
  local key = P .. 's:' .. model .. '|' .. project
  local s = scopes[key]
  if s then return s end
  s = load_scope_scalars(key, now_sec)
  local lk = P .. 'l:' .. model .. '|' .. project
  if s.f.lset == nil then
    -- Learned limits are durable in their own hash and cached in the scope's (a settle that
    -- learns drops the cache).
    local l = redis.call('HMGET', lk, 'rpm', 'tpm', 'rpd', 'tpd', 'until')
    if (l[1] or l[2] or l[3] or l[4]) and not l[5] then
      -- Learned before expiries were recorded: it holds as if learned now.
      local untl = day_end
      if relearn_ms >= 0 then untl = now + relearn_ms end
      redis.call('HSET', lk, 'until', untl)
      l[5] = untl
    end
    put(s, 'lset', 1)
    for i, name in ipairs({ 'lrpm', 'ltpm', 'lrpd', 'ltpd', 'luntil' }) do
      local v = tonumber(l[i])
      if v ~= nil then put(s, name, v) else clear(s, name) end
    end
  end
  local learned_off = s.f.lrpm == 0 or s.f.ltpm == 0 or s.f.lrpd == 0 or s.f.ltpd == 0
  if s.f.luntil ~= nil and now >= s.f.luntil and not learned_off then
    -- What the server taught has had its time: forget it.
    redis.call('DEL', lk)
    for _, name in ipairs({ 'lrpm', 'ltpm', 'lrpd', 'ltpd', 'luntil' }) do clear(s, name) end
  end
  if rpm == 0 or tpm == 0 or rpd == 0 or tpd == 0 then
    s.gate = 'shut'
  elseif learned_off then
    local pd = nil
    if s.f.luntil ~= nil and now >= s.f.luntil then pd = tonumber(redis.call('HGET', lk, 'pd')) end
    s.gate, s.pd = gate(true, s.f.luntil, pd, now)
  else
    s.gate = 'open'
  end
  if s.gate == 'probe' then
    -- A re-probe is measured against what is configured.
    s.rpm, s.tpm, s.rpd, s.tpd = rpm, tpm, rpd, tpd
  else
    s.rpm, s.tpm, s.rpd = minl(rpm, lim(s.f.lrpm)), minl(tpm, lim(s.f.ltpm)), minl(rpd, lim(s.f.lrpd))
    s.tpd = minl(tpd, lim(s.f.ltpd))
  end
  s.lk = lk
  advance(s, now_sec)
  roll_day(s, day_start)
  scopes[key] = s
  return s
end

local function off(s) return s.gate == 'shut' or s.gate == 'wait' or s.rpm == 0 or s.tpm == 0 or s.rpd == 0 or s.tpd == 0 end

-- Whether a project is switched off as a whole (402, a zero whole-API quota), once per call;
-- for 'wait', also until when its re-probe holds the gate.
local pgates = {}
local function project_gate(project)
  local g = pgates[project]
  if g then return g[1], g[2] end
  local h = redis.call('HMGET', P .. 'p:' .. project, 'since', 'until', 'pd')
  local state, pd = gate(h[1] ~= false, tonumber(h[2]), tonumber(h[3]), now)
  pgates[project] = { state, pd }
  return state, pd
end

local function fits(s)
  if off(s) then return false end
  if (s.f.cd or 0) > now or (s.f.ex or 0) > now then return false end
  if s.rpd ~= nil and (s.f.dc or 0) + nreq > s.rpd then return false end
  if s.tpd ~= nil and (s.f.dt or 0) + ntok > s.tpd then return false end
  if s.rpm ~= nil and s.f.sr + nreq > s.rpm then return false end
  if s.tpm ~= nil and s.f.sk + ntok > s.tpm then return false end
  return true
end

local function headroom(s)
  local function free(used, limit)
    if limit == nil then return 1.0 end
    if limit <= 0 then return 0.0 end
    return math.max(limit - used, 0) / limit
  end
  return math.min(free(s.f.sr, s.rpm), free(s.f.sk, s.tpm), free(s.f.dc or 0, s.rpd), free(s.f.dt or 0, s.tpd))
end

-- How many admissions of the granted shape a grant may still take from a scope in this call:
-- 1/share of its free room when first asked (so the last requests of a window or a day are
-- decided here one by one, never held ahead in an idle process).
local function grant_room(s)
  if s.gleft == nil then
    local function q(limit, used, per)
      if limit == nil or per <= 0 then return math.huge end
      return math.floor(math.max(limit - used, 0) / per)
    end
    local free = math.min(q(s.rpm, s.f.sr, nreq), q(s.tpm, s.f.sk, ntok), q(s.rpd, s.f.dc or 0, nreq), q(s.tpd, s.f.dt or 0, ntok))
    s.gleft = math.floor(free / share)
  end
  return s.gleft > 0
end

local function read_breaker(fp)
  local h = redis.call('HMGET', P .. 'k:' .. fp, 'dis', 'bs', 'bu', 'bp')
  if h[1] then return 'dis', nil end
  local bs = h[2]
  if not bs or bs == 'closed' then return 'yes', nil end
  if bs == 'open' then
    local bu = tonumber(h[3]) or 0
    if now >= bu then return 'probe', nil end
    return 'no', bu
  end
  local bp = tonumber(h[4]) or 0
  if bp > 0 and now < bp then return 'no', bp end
  return 'probe', nil
end

-- A key's admission, read once per call (a probe let out below updates it).
local breakers = {}
local function breaker(fp)
  local b = breakers[fp]
  if b == nil then
    local adm, until_ = read_breaker(fp)
    b = { adm, until_ }
    breakers[fp] = b
  end
  return b[1], b[2]
end

-- The day's usage added by this call, written once at the end: field -> count.
local usage = {}
local function add_usage(field, v)
  usage[field] = (usage[field] or 0) + v
end

local function cand(i)
  local o = BASE + ((start + i) % n) * 8
  return ARGV[o + 1], ARGV[o + 2], ARGV[o + 3], lim(ARGV[o + 4]), lim(ARGV[o + 5]), lim(ARGV[o + 6]), lim(ARGV[o + 7]), tonumber(ARGV[o + 8])
end

local function writeback()
  for _, s in pairs(scopes) do flush_hash(s, scope_ttl(s, now, day_end)) end
end

-- Nothing fits: why, and when the earliest key can serve again.
local function window_free_at(s, r, t, rpm, tpm)
  load_buckets(s)
  if (rpm ~= nil and r > rpm) or (tpm ~= nil and t > tpm) then return nil end
  local sr, sk = s.f.sr, s.f.sk
  local function ok(a, b) return (rpm == nil or a + r <= rpm) and (tpm == nil or b + t <= tpm) end
  if ok(sr, sk) then return now end
  local head = s.f.head
  for x = head - (W - 1), head do
    local slot = x % W
    if s.f['t' .. slot] == x then
      sr = sr - (s.f['r' .. slot] or 0)
      sk = sk - (s.f['k' .. slot] or 0)
      if ok(sr, sk) then return math.max((x + W) * 1000, now) end
    end
  end
  return math.max((head + 1) * 1000, now)
end

local function free_at(s)
  local at, why = now, 'rpm'
  local function later(t, w)
    if t > at then at, why = t, w end
  end
  later(s.f.cd or 0, 'cooling')
  if (s.f.ex or 0) > now then later(s.f.ex, 'rpd') end
  if s.rpd ~= nil then
    if nreq > s.rpd then return nil end
    if (s.f.dc or 0) + nreq > s.rpd then later(day_end, 'rpd') end
  end
  if s.tpd ~= nil then
    if ntok > s.tpd then return nil end
    if (s.f.dt or 0) + ntok > s.tpd then later(day_end, 'tpd') end
  end
  local a = window_free_at(s, nreq, 0, s.rpm, nil)
  if a == nil then return nil end
  later(a, 'rpm')
  a = window_free_at(s, 0, ntok, nil, s.tpm)
  if a == nil then return nil end
  later(a, 'tpm')
  a = window_free_at(s, nreq, ntok, s.rpm, s.tpm)
  if a == nil then return nil end
  later(a, 'rpm')
  return at, why
end

local function refuse()
  local disabled = {}
  local n_off = 0
  local best_at, best_why
  local tl_what, tl_demand, tl_limit = '', -1, -1
  for i = 0, n - 1 do
    local idx, fp, project, rpm, tpm, rpd, tpd = cand(i)
    local adm, until_ = breaker(fp)
    if adm == 'dis' then
      disabled[#disabled + 1] = idx
    elseif project_gate(project) == 'shut' then
      n_off = n_off + 1
    else
      local pg, ppd = project_gate(project)
      local s = scope(project, rpm, tpm, rpd, tpd)
      if s.gate == 'shut' or (s.gate ~= 'wait' and off(s)) then
        n_off = n_off + 1
      elseif pg == 'wait' or s.gate == 'wait' then
        -- A re-probe is out: its answer (or its deadline) may free this key.
        local at = math.max(ppd or 0, s.pd or 0)
        if until_ ~= nil and until_ > at then at = until_ end
        if best_at == nil or at < best_at then best_at, best_why = at, 'reprobe' end
      else
        local at, why = free_at(s)
        if at ~= nil and why ~= 'cooling' and (s.f.gx or -1) >= now_sec then
          -- Room taken ahead this second comes back when the second ends, if unspent.
          at = math.min(at, (s.f.gx + 1) * 1000 + GRANT_SLACK_MS)
        end
        if at == nil then
          if tl_what == '' then
            if s.rpm ~= nil and nreq > s.rpm then tl_what, tl_demand, tl_limit = 'rpm', nreq, s.rpm
            elseif s.rpd ~= nil and nreq > s.rpd then tl_what, tl_demand, tl_limit = 'rpd', nreq, s.rpd
            elseif s.tpd ~= nil and ntok > s.tpd then tl_what, tl_demand, tl_limit = 'tpd', ntok, s.tpd
            else tl_what, tl_demand, tl_limit = 'tpm', ntok, s.tpm or -1 end
          end
        else
          if until_ ~= nil and until_ > at then at, why = until_, 'circuit' end
          if best_at == nil or at < best_at then best_at, best_why = at, why end
        end
      end
    end
  end
  return { 0, best_at or -1, best_why or '', n_off, table.concat(disabled, ','), tl_what, tl_demand, tl_limit, now }
end

local function admit()
  local pick, pick_fp, pick_adm, pick_s, pick_score, pick_project
  local wtotal = 0
  for i = 0, n - 1 do
    local idx, fp, project, rpm, tpm, rpd, tpd, weight = cand(i)
    local adm = breaker(fp)
    local pg = project_gate(project)
    local eligible
    if granting then
      -- Ahead of demand: never a probe or a re-probe, and at most 1/share of a scope's room.
      eligible = adm == 'yes' and pg == 'open'
    else
      eligible = (adm == 'yes' or adm == 'probe') and (pg == 'open' or pg == 'probe')
    end
    if eligible then
      local s = scope(project, rpm, tpm, rpd, tpd)
      if fits(s) and (not granting or (s.gate == 'open' and grant_room(s))) then
        if policy == 'rr' then
          pick, pick_fp, pick_adm, pick_s, pick_project = idx, fp, adm, s, project
          break
        elseif policy == 'll' then
          local h = headroom(s)
          if pick_score == nil or h > pick_score then
            pick, pick_fp, pick_adm, pick_s, pick_score, pick_project = idx, fp, adm, s, h, project
          end
        else
          local cur = redis.call('HINCRBY', P .. 'w:' .. model, fp, weight)
          wtotal = wtotal + weight
          if pick_score == nil or cur > pick_score then
            pick, pick_fp, pick_adm, pick_s, pick_score, pick_project = idx, fp, adm, s, cur, project
          end
        end
      end
    end
  end

  if pick ~= nil then
    if policy == 'w' then redis.call('HINCRBY', P .. 'w:' .. model, pick_fp, -wtotal) end
    local rec = record(pick_s, nreq, ntok)
    -- The scope hash's generation, new whenever a reset or a restore replaced the hash: the
    -- lease carries it, and a lease of an older generation corrects none of its counters.
    if pick_s.f.gen == nil then put(pick_s, 'gen', redis.call('INCR', P .. 'gen')) end
    note_made(pick_fp, pick_project, rec, pick_s.f.gen, nreq, ntok)
    add_usage(pick_fp .. '|' .. model .. '|r', nreq)
    add_usage(pick_fp .. '|' .. model .. '|t', ntok)
    -- The re-probe of an expired switch-off: it holds the gate until it settles or times out.
    local reprobe = false
    if pick_s.gate == 'probe' then
      redis.call('HSET', pick_s.lk, 'pf', pick_fp, 'ps', rec, 'pd', now + probe_timeout)
      reprobe = true
    end
    if project_gate(pick_project) == 'probe' then
      redis.call('HSET', P .. 'p:' .. pick_project, 'pf', pick_fp, 'ps', rec, 'pd', now + probe_timeout)
      reprobe = true
    end
    if reprobe then put(pick_s, 'pr', rec) end
    local probe = 0
    if pick_adm == 'probe' then
      redis.call('HSET', P .. 'k:' .. pick_fp, 'bs', 'half', 'bp', now + probe_timeout)
      breakers[pick_fp] = { 'no', now + probe_timeout }
      probe = 1
    end
    -- Later demands of the batch see the re-probes out and the next round-robin start.
    if pick_s.gate == 'probe' then pick_s.gate, pick_s.pd = 'wait', now + probe_timeout end
    if pgates[pick_project] and pgates[pick_project][1] == 'probe' then
      pgates[pick_project] = { 'wait', now + probe_timeout }
    end
    if policy == 'rr' then start = (tonumber(pick) + 1) % n end
    if granting then
      pick_s.gleft = pick_s.gleft - 1
      if pick_s.f.gx ~= now_sec then put(pick_s, 'gx', now_sec) end
    end
    return { 1, tonumber(pick), rec, probe, now, pick_s.f.gen }
  end
  if granting then return nil end
  return refuse()
end

-- A refusal depends only on the demand and the state, and only an admission changes the state:
-- identical demands refused one after the other get the same answer without working it out again.
local replies, refused = {}, {}
for j = 1, k do
  nreq, ntok = tonumber(ARGV[12 + 2 * j]), tonumber(ARGV[13 + 2 * j])
  local shape = nreq .. ':' .. ntok
  local r = refused[shape]
  if r == nil then
    r = admit()
    if r[1] == 1 then refused = {} else refused[shape] = r end
  end
  replies[j] = r
end
-- Round-robin's grant, counted in bulk: which keys may take admissions ahead is read once (as
-- admit() would in grant mode), the rotation is run on counters, and each key's share is then
-- recorded with one record(): the same admissions, in the same order, as one admit() each.
local function grant_round_robin(g)
  local ring, left = {}, {}
  for i = 0, n - 1 do
    local idx, fp, project, rpm, tpm, rpd, tpd = cand(i)
    if breaker(fp) == 'yes' and project_gate(project) == 'open' then
      local s = scope(project, rpm, tpm, rpd, tpd)
      if s.gate == 'open' and fits(s) and grant_room(s) then
        ring[#ring + 1] = { idx = tonumber(idx), fp = fp, project = project, s = s, c = 0 }
      end
    end
  end
  if #ring == 0 then return end
  local order, taken, j = {}, 0, 1
  local live = #ring
  while taken < want and live > 0 do
    local c = ring[j]
    if c.s.gleft > 0 then
      c.s.gleft = c.s.gleft - 1
      c.c = c.c + 1
      taken = taken + 1
      order[taken] = c
    elseif not c.dead then
      c.dead = true
      live = live - 1
    end
    j = j % #ring + 1
  end
  for _, c in ipairs(ring) do
    if c.c > 0 then
      c.rec = record(c.s, c.c * nreq, c.c * ntok)
      if c.s.f.gen == nil then put(c.s, 'gen', redis.call('INCR', P .. 'gen')) end
      note_made(c.fp, c.project, c.rec, c.s.f.gen, c.c * nreq, c.c * ntok)
      if c.s.f.gx ~= now_sec then put(c.s, 'gx', now_sec) end
      add_usage(c.fp .. '|' .. model .. '|r', c.c * nreq)
      add_usage(c.fp .. '|' .. model .. '|t', c.c * ntok)
    end
  end
  for _, c in ipairs(order) do
    g[#g + 1] = c.idx; g[#g + 1] = c.rec; g[#g + 1] = c.s.f.gen
  end
end

if want > 0 then
  -- The grant: admissions of one shape taken ahead, decided like any other.
  nreq, ntok, granting = greq, gtok, true
  local g = { now, greq, gtok }
  if policy == 'rr' then
    grant_round_robin(g)
  else
    for _ = 1, want do
      local r = admit()
      if r == nil then break end
      g[#g + 1] = r[2]; g[#g + 1] = r[3]; g[#g + 1] = r[6]
    end
  end
  replies[k + 1] = g
end
if next(usage) ~= nil then
  local uk = P .. 'u:' .. day_start
  for field, v in pairs(usage) do redis.call('HINCRBY', uk, field, v) end
  redis.call('PEXPIRE', uk, day_end - now + HISTORY_MS)
end
if #made_order > 0 then
  local ck, flat = P .. 'c:' .. cid, {}
  for _, m in ipairs(made_order) do
    for i = 1, 6 do flat[#flat + 1] = m[i] end
  end
  redis.call('RPUSH', ck, unpack(flat))
  redis.call('PEXPIRE', ck, mark_ttl)
end
writeback()
return replies
