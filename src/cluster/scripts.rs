//! Lua scripts that make directory updates atomic in Redis. Epochs only ever grow per serial number, and a
//! route is only ever replaced by a newer epoch or removed by the connection that owns it.

/// Claims or refreshes a route.
/// KEYS: route, epoch counter, this node's device set. ARGV: route JSON (epoch filled in here), TTL seconds,
/// serial number, known epoch (0 for a new connection).
/// Returns `{1, epoch, ""}` when the route is ours, `{0, newer_epoch, newer_node}` when a newer connection
/// holds it. The counter is raised to at least every epoch seen, so a Redis restart (which loses the counter)
/// never hands out an epoch below one still held by a node.
pub const CLAIM: &str = r#"
local known = tonumber(ARGV[4])
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
local current = redis.call('GET', KEYS[1])
local current_epoch = 0
local current_node = ''
if current then
  local ok, decoded = pcall(cjson.decode, current)
  if ok then
    current_epoch = tonumber(decoded.epoch) or 0
    current_node = decoded.node or ''
  end
end
local epoch = known
if known == 0 then
  epoch = math.max(counter, current_epoch) + 1
  redis.call('SET', KEYS[2], epoch)
else
  if current_epoch > known then
    return {0, current_epoch, current_node}
  end
  if counter < known then
    redis.call('SET', KEYS[2], known)
  end
end
local route = cjson.decode(ARGV[1])
route.epoch = epoch
redis.call('SET', KEYS[1], cjson.encode(route), 'EX', tonumber(ARGV[2]))
redis.call('SADD', KEYS[3], ARGV[3])
return {1, epoch, ''}
"#;

/// Removes a route only if it still belongs to (node, epoch): a late disconnect never removes a successor.
/// KEYS: route, the node's device set. ARGV: node, epoch, serial number. Returns 1 when removed.
pub const RELEASE: &str = r#"
redis.call('SREM', KEYS[2], ARGV[3])
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
local ok, decoded = pcall(cjson.decode, current)
if ok and decoded.node == ARGV[1] and tonumber(decoded.epoch) == tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// Drops every route a dead node still owns. KEYS: the dead node's device set. ARGV: key prefix, node id.
/// Returns the number of routes removed.
pub const RELEASE_NODE: &str = r#"
local removed = 0
for _, sn in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. ':route:' .. sn
  local current = redis.call('GET', key)
  if current then
    local ok, decoded = pcall(cjson.decode, current)
    if ok and decoded.node == ARGV[2] then
      redis.call('DEL', key)
      removed = removed + 1
    end
  end
end
redis.call('DEL', KEYS[1])
return removed
"#;
