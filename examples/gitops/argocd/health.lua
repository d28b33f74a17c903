-- Argo CD health check of sparring.dev/AdversarialGame.
-- Installed as the argocd-cm key resource.customizations.health.sparring.dev_AdversarialGame
-- (argocd-cm.yaml holds this same text; tests/test_gitops.py checks both, on the statuses the
-- operator really writes).
--   Pending, Running -> Progressing    Succeeded -> Healthy    Failed -> Degraded
--   Suspended -> Suspended             no status yet -> Progressing
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function first_message(...)
  -- not ipairs: it would stop at the first nil argument
  for i = 1, select("#", ...) do
    local m = select(i, ...)
    if m ~= nil and m ~= "" then
      return m
    end
  end
  return ""
end

local status = obj.status
if status == nil or status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to pick up the game"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and status.observedGeneration ~= nil and status.observedGeneration < generation then
  -- The status still describes an older spec (e.g. rounds just grew).
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation
  return hs
end

local phase = status.phase
local own = condition(status, phase)
local ready = condition(status, "Ready")
local message = first_message(status.message, own and own.message, ready and ready.message)
local rounds = ""
if status.completedRounds ~= nil and obj.spec ~= nil and obj.spec.rounds ~= nil then
  rounds = " (" .. status.completedRounds .. "/" .. obj.spec.rounds .. " rounds)"
end

if phase == "Succeeded" then
  hs.status = "Healthy"
elseif phase == "Failed" then
  hs.status = "Degraded"
elseif phase == "Suspended" then
  hs.status = "Suspended"
else
  -- Pending, Running: still playing. Stalled (store or Secret unavailable) or Reconciling
  -- (a retry backoff) says why nothing moves right now; Argo CD has no separate state for it.
  hs.status = "Progressing"
  for _, kind in ipairs({"Stalled", "Reconciling"}) do
    local c = condition(status, kind)
    if c ~= nil and c.status == "True" and c.message ~= "" then
      message = first_message(message .. "; " .. string.lower(kind) .. ": " .. c.message, c.message)
    end
  end
end
if message ~= "" then
  message = ": " .. message
end
hs.message = phase .. message .. rounds
return hs
