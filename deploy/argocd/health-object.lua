-- Argo CD health of a Reflow Target, Policy or Credential (mcp.reflow.io/v1alpha1).
-- The compiler reports Accepted and ResolvedRefs, the controller adds Programmed once every
-- connected dataplane serves the object; each carries the generation it describes.
-- Healthy: all three True for the current generation. Degraded: one is False for the current
-- generation. Progressing: anything else (not yet observed, stale, Unknown, no dataplanes).
-- Plain Lua 5.1 (Argo CD's gopher-lua); also runs on lua5.4 for the tests.
local hs = {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status
if status == nil or status.conditions == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for reflow-controller to report status"
  return hs
end

local function observed(c)
  if c.observedGeneration ~= nil then
    return c.observedGeneration
  end
  return status.observedGeneration
end

-- A condition describes the current spec when it names this generation (or nobody says).
local function current(c)
  local seen = observed(c)
  return generation == nil or seen == nil or seen >= generation
end

local byType = {}
for _, c in ipairs(status.conditions) do
  if c.type ~= nil then
    byType[c.type] = c
  end
end

local function describe(t, c)
  local text = t .. " " .. tostring(c.status)
  if c.reason ~= nil and c.reason ~= "" then
    text = text .. " (" .. c.reason .. ")"
  end
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local required = {"Accepted", "ResolvedRefs", "Programmed"}
for _, t in ipairs(required) do
  local c = byType[t]
  if c ~= nil and c.status == "False" and current(c) then
    hs.status = "Degraded"
    hs.message = describe(t, c)
    return hs
  end
end

if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for reflow-controller to observe generation " .. tostring(generation)
  return hs
end

for _, t in ipairs(required) do
  local c = byType[t]
  if c == nil then
    hs.status = "Progressing"
    hs.message = "Waiting for " .. t
    return hs
  end
  if c.status ~= "True" or not current(c) then
    hs.status = "Progressing"
    hs.message = describe(t, c)
    return hs
  end
end

hs.status = "Healthy"
hs.message = describe("Programmed", byType["Programmed"])
local conflicted = byType["Conflicted"]
if conflicted ~= nil and conflicted.status == "True" then
  -- Still served (precedence is deterministic), but worth a look.
  hs.message = hs.message .. "; " .. describe("Conflicted", conflicted)
end
return hs
