-- Argo CD health of a Reflow MCPInstance (mcp.reflow.io/v1alpha1): one per-identity pod of a
-- `kubernetes` Target, reconciled by reflow-controller.
-- Healthy: Ready True for the current generation. Degraded: phase Failed, or Ready False for a
-- reason other than the pod still starting. Progressing: anything else.
-- Plain Lua 5.1 (Argo CD's gopher-lua); also runs on lua5.4 for the tests.
local hs = {}
local generation = nil
if obj.metadata ~= nil then
  generation = obj.metadata.generation
end
local status = obj.status
if status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for reflow-controller to report status"
  return hs
end

local ready = nil
if status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Ready" then
      ready = c
    end
  end
end

local function describe(c)
  local text = "Ready " .. tostring(c.status)
  if c.reason ~= nil and c.reason ~= "" then
    text = text .. " (" .. c.reason .. ")"
  end
  if c.message ~= nil and c.message ~= "" then
    text = text .. ": " .. c.message
  end
  return text
end

local seen = status.observedGeneration
if ready ~= nil and ready.observedGeneration ~= nil then
  seen = ready.observedGeneration
end
local isCurrent = generation == nil or seen == nil or seen >= generation

if status.phase == "Failed" and isCurrent then
  hs.status = "Degraded"
  if ready ~= nil then
    hs.message = describe(ready)
  else
    hs.message = "Instance failed"
  end
  return hs
end
if ready == nil or not isCurrent then
  hs.status = "Progressing"
  hs.message = "Waiting for reflow-controller to observe generation " .. tostring(generation)
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
if ready.status == "False" and ready.reason ~= "PodNotReady" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end
hs.status = "Progressing"
hs.message = describe(ready)
return hs
