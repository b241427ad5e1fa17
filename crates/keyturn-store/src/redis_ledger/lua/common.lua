-- keyturn: helpers shared by acquire.lua and settle.lua (prepended to each).
-- The rules are keyturn-core's (crates/keyturn-core/src/window.rs, memory.rs, breaker.rs):
-- a rolling minute of 61 one-second buckets with running sums, a request count per Pacific day,
-- server cooldowns, per-day exhaustion, learned limits, and a circuit breaker per key.
--
-- Layout under the prefix P ("kt:{<namespace>}:": the namespace is a Redis Cluster hash tag, so
-- every key below is in one slot and a script may compute them; KEYS[1] names the slot):
--   P.."k:"..fp                 key health: dis, dis_at, bs (closed|open|half), bu, bp, bf, bt
--   P.."s:"..model.."|"..proj   scope counters: head, sr, sk, t<slot>, r<slot>, k<slot>, dk, dc, dt, cd, ex,
--                               ds, dx (of the day's dc: served, refused),
--                               pr (second of a re-probe out through this scope, a hint for settle),
--                               gx (the second of the last grant taken from the scope),
--                               gen (the hash's generation, from P.."gen" when an acquire finds none:
--                               a lease settles its corrections only while it is unchanged)
--                               (expires by itself after its window, day and cooldowns)
--   P.."l:"..model.."|"..proj   learned limits: rpm, tpm, rpd, tpd (rpd = 0: the model is off for the
--                               project), until (when they expire: forgotten, or for a switch-off,
--                               one re-probe may go), pf, ps, pd (the re-probe out: fingerprint,
--                               lease second, deadline). No Redis expiry: `until` rules.
--   P.."p:"..proj               a project switched off as a whole: since, until, pf, ps, pd
--   P.."w:"..model              smooth weighted round-robin weights by fingerprint
--   P.."u:"..day_start_ms       usage history of one Pacific day: fp|model|r (requests sent),
--                               fp|model|s and |x (of those, served and refused) and
--                               fp|model|t (input tokens); expires 30 days after the day ends
--   P.."n:"..id                 a warning already sent (SET NX), expiring at the end of its day
--   P.."b:"..id                 a batch of unspent grants given back (SET NX in the call that applies
--                               it, so a resend is a no-op); deleted once its first send is answered,
--                               else expires after the resend window (grants/mod.rs: MARK_TTL_MS)
--   P.."c:"..id                 what acquire call id admitted (a list: fp, project, second, gen,
--                               requests, tokens per entry), so a call whose answer was lost can be
--                               voided; deleted once answered, else expires like a mark
--   P.."v:"..id                 a voided acquire call: all it admitted was given back, and the call,
--                               arriving later, admits nothing; expires like a mark
--   P.."gen"                    the last scope-hash generation handed out (INCR; never reset)
--   P.."layout"                 set once the namespace's pre-hash-tag keys (kt:<namespace>:…) were renamed

local W = 61
local DAY = 86400000
local HISTORY_MS = 30 * DAY

local function now_ms(arg)
  if arg == '' then
    local t = redis.call('TIME')
    return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return tonumber(arg)
end

-- The Pacific day containing `now`, from four midnights the client computed (DST-correct).
local function day_of(now, b0, b1, b2, b3)
  if now < b0 then return b0 - DAY, b0 end
  if now < b1 then return b0, b1 end
  if now < b2 then return b1, b2 end
  if now < b3 then return b2, b3 end
  return b3, b3 + DAY
end

local function lim(v)
  v = tonumber(v)
  if v == nil or v < 0 then return nil end
  return v
end

local function minl(a, b)
  if a == nil then return b end
  if b == nil then return a end
  return math.min(a, b)
end

-- A loaded hash with change tracking.
local function load_hash(key)
  local h = redis.call('HGETALL', key)
  local f = {}
  for i = 1, #h, 2 do f[h[i]] = tonumber(h[i + 1]) or h[i + 1] end
  return { key = key, f = f, set = {}, del = {} }
end

local function put(s, field, value)
  s.f[field] = value
  s.set[field] = value
  s.del[field] = nil
end

local function clear(s, field)
  if s.f[field] ~= nil then
    s.f[field] = nil
    s.del[field] = true
    s.set[field] = nil
  end
end

-- `ttl_ms` is relative: "now" may be a test's clock, not Redis's.
local function flush_hash(s, ttl_ms)
  local args = {}
  for k, v in pairs(s.set) do
    args[#args + 1] = k
    args[#args + 1] = v
  end
  if #args > 0 then redis.call('HSET', s.key, unpack(args)) end
  local dels = {}
  for k, _ in pairs(s.del) do dels[#dels + 1] = k end
  if #dels > 0 then redis.call('HDEL', s.key, unpack(dels)) end
  -- The TTL runs past the day's end: refresh it when the second or a flag moves, not per call.
  if ttl_ms ~= nil and (s.set.head ~= nil or s.set.cd ~= nil or s.set.ex ~= nil or s.set.dk ~= nil) then
    redis.call('PEXPIRE', s.key, math.max(ttl_ms, 1000))
  end
end

-- Loads a scope's sums, flags, cached learned limits and the bucket of second `now_sec`:
-- all the hot path reads, in one command.
local SCALARS = { 'head', 'sr', 'sk', 'dk', 'dc', 'dt', 'ds', 'dx', 'cd', 'ex', 'lset', 'lrpm', 'ltpm', 'lrpd', 'ltpd', 'luntil', 'pr', 'gen', 'gx' }
-- Fields that survive the window being cleared.
local KEEP = { 'dk', 'dc', 'dt', 'ds', 'dx', 'cd', 'ex', 'lset', 'lrpm', 'ltpm', 'lrpd', 'ltpd', 'luntil', 'pr', 'gen' }

-- A switch-off's gate: 'open' (not off), 'probe' (its time is up and no re-probe is out: one
-- request may go), 'wait' (a re-probe is out until the deadline returned second: its answer
-- decides) or 'shut'.
local function gate(is_off, untl, probe_deadline, now)
  if not is_off then return 'open' end
  if untl ~= nil and untl > 0 and now >= untl then
    if probe_deadline == nil or probe_deadline <= now then return 'probe' end
    return 'wait', probe_deadline
  end
  return 'shut'
end
local function load_scope_scalars(key, now_sec)
  local slot = now_sec % W
  local names = { unpack(SCALARS) }
  names[#names + 1] = 't' .. slot
  names[#names + 1] = 'r' .. slot
  names[#names + 1] = 'k' .. slot
  local h = redis.call('HMGET', key, unpack(names))
  local f, fetched = {}, {}
  for i, name in ipairs(names) do
    f[name] = tonumber(h[i])
    fetched[name] = true
  end
  return { key = key, f = f, set = {}, del = {}, full = false, fetched = fetched }
end

-- Loads every bucket too (refusal path, status): once per scope per call.
local function load_buckets(s)
  if s.full then return end
  local h = redis.call('HGETALL', s.key)
  for i = 1, #h, 2 do
    local name = h[i]
    if s.f[name] == nil and s.del[name] == nil and s.set[name] == nil then s.f[name] = tonumber(h[i + 1]) end
  end
  s.full = true
end

-- Moves the window's head to `now_sec`, clearing buckets that left it (never backwards).
-- Reads only the buckets it clears.
local function advance(s, now_sec)
  local head = s.f.head
  if head ~= nil and now_sec <= head then return end
  local sr, sk = s.f.sr or 0, s.f.sk or 0
  if head == nil or now_sec - head >= W then
    -- Everything left the window: start the hash again, keeping the day and the flags.
    redis.call('DEL', s.key)
    for _, name in ipairs(KEEP) do
      if s.f[name] ~= nil then put(s, name, s.f[name]) end
    end
    for name, _ in pairs(s.f) do
      if s.set[name] == nil then s.f[name] = nil end
    end
    s.full = true
    sr, sk = 0, 0
  else
    -- Buckets already read (the current second's, with the scalars) are not read again.
    local fields, known = {}, {}
    for x = head + 1, now_sec do
      local slot = x % W
      if s.fetched ~= nil and s.fetched['t' .. slot] then
        known[#known + 1] = slot
      else
        fields[#fields + 1] = 't' .. slot
        fields[#fields + 1] = 'r' .. slot
        fields[#fields + 1] = 'k' .. slot
      end
    end
    local values = {}
    if #fields > 0 then values = redis.call('HMGET', s.key, unpack(fields)) end
    for _, slot in ipairs(known) do
      fields[#fields + 1] = 't' .. slot
      fields[#fields + 1] = 'r' .. slot
      fields[#fields + 1] = 'k' .. slot
      values[#fields - 2] = s.f['t' .. slot] or false
      values[#fields - 1] = s.f['r' .. slot] or false
      values[#fields] = s.f['k' .. slot] or false
    end
    for i = 1, #fields, 3 do
      if values[i] then
        sr = sr - (tonumber(values[i + 1]) or 0)
        sk = sk - (tonumber(values[i + 2]) or 0)
        s.del[fields[i]] = true; s.del[fields[i + 1]] = true; s.del[fields[i + 2]] = true
      end
      s.f[fields[i]] = nil; s.f[fields[i + 1]] = nil; s.f[fields[i + 2]] = nil
    end
  end
  put(s, 'head', now_sec); put(s, 'sr', sr); put(s, 'sk', sk)
end

-- Adds an admission to the head second's bucket.
local function record(s, nreq, ntok)
  local rec = s.f.head
  local slot = rec % W
  local t, r, k = 't' .. slot, 'r' .. slot, 'k' .. slot
  if not s.full and s.set[t] == nil and not s.del[t] and not (s.fetched and s.fetched[t]) then
    local h = redis.call('HMGET', s.key, t, r, k)
    s.f[t], s.f[r], s.f[k] = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])
  end
  if s.f[t] ~= rec then
    put(s, t, rec); put(s, r, 0); put(s, k, 0)
  end
  put(s, r, s.f[r] + nreq)
  put(s, k, s.f[k] + ntok)
  put(s, 'sr', s.f.sr + nreq)
  put(s, 'sk', s.f.sk + ntok)
  put(s, 'dc', (s.f.dc or 0) + nreq)
  put(s, 'dt', (s.f.dt or 0) + ntok)
  return rec
end

local function roll_day(s, day_start)
  if (s.f.dk or 0) < day_start then
    put(s, 'dk', day_start); put(s, 'dc', 0); put(s, 'dt', 0); put(s, 'ds', 0); put(s, 'dx', 0)
  end
end

-- How long a scope's counters matter: past its window, its day and its cooldowns.
local function scope_ttl(s, now, day_end)
  local t = math.max(day_end, ((s.f.head or 0) + W + 1) * 1000, s.f.cd or 0, s.f.ex or 0)
  return t - now + 60000
end
