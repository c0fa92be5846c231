-- Chains claim -> release under wrk. Each thread keeps a FIFO of the claims it
-- was granted ({id, secret} parsed from 201 bodies); a connection's next request
-- releases the oldest one when there is one (DELETE <release prefix><id> with
-- Allot-Claim-Secret), and otherwise claims (POST <claim path>, {"holder":"wrk"}).
-- A server whose answers carry no id (the trivial ceiling) only ever gets claims.
--
-- Usage: wrk ... -s bench/claim_release.lua <url> -- <claim path> <release prefix> <token>
-- done() prints one line: WRK_RESULT <json>.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per-thread state; the globals are read back by done() through thread:get().
local claim_request, release_prefix, release_headers
local ids, secrets, head, tail = {}, {}, 1, 0
claims, releases, statuses, samples = 0, 0, {}, {}

local MAX_SAMPLES = 3
local EXPECTED = { [200] = true, [201] = true, [204] = true, [503] = true }

function init(args)
  local auth = "Bearer " .. args[3]
  release_prefix = args[2]
  claim_request = wrk.format("POST", args[1],
    { ["Authorization"] = auth, ["Content-Type"] = "application/json" }, '{"holder":"wrk"}')
  release_headers = { ["Authorization"] = auth }
end

function request()
  if head > tail then
    return claim_request
  end
  local id, secret = ids[head], secrets[head]
  ids[head], secrets[head] = nil, nil
  head = head + 1
  release_headers["Allot-Claim-Secret"] = secret
  return wrk.format("DELETE", release_prefix .. id, release_headers)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 201 then
    local id = string.match(body, '"id":"([^"]+)"')
    local secret = string.match(body, '"secret":"([^"]+)"')
    if id and secret then
      tail = tail + 1
      ids[tail], secrets[tail] = id, secret
      claims = claims + 1
    end
  elseif status == 204 then
    releases = releases + 1
  end
  if not EXPECTED[status] and #samples < MAX_SAMPLES then
    table.insert(samples, status .. " " .. string.sub(body or "", 1, 400))
  end
end

local function quote(s)
  s = string.gsub(s, '[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end)
  return '"' .. s .. '"'
end

local function num(v)
  if v ~= v or v == math.huge or v == -math.huge then
    return "null"
  end
  return string.format("%.17g", v)
end

local function object(entries)
  local parts = {}
  for k, v in pairs(entries) do
    if type(v) == "number" then
      v = num(v)
    end
    table.insert(parts, quote(tostring(k)) .. ":" .. v)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local total_claims, total_releases, all_statuses, all_samples = 0, 0, {}, {}
  for _, thread in ipairs(threads) do
    total_claims = total_claims + thread:get("claims")
    total_releases = total_releases + thread:get("releases")
    for status, n in pairs(thread:get("statuses")) do
      all_statuses[status] = (all_statuses[status] or 0) + n
    end
    for _, sample in ipairs(thread:get("samples")) do
      table.insert(all_samples, quote(sample))
    end
  end
  local errors = summary.errors
  io.write("WRK_RESULT " .. object({
    durationUs = summary.duration,
    requests = summary.requests,
    claims = total_claims,
    releases = total_releases,
    statuses = object(all_statuses),
    socketErrors = object({
      connect = errors.connect, read = errors.read, write = errors.write, timeout = errors.timeout,
    }),
    latencyUs = object({
      p50 = latency:percentile(50), p99 = latency:percentile(99),
      mean = latency.mean, max = latency.max,
    }),
    samples = "[" .. table.concat(all_samples, ",") .. "]",
  }) .. "\n")
end
