"""The driver's Lua scripts. Each declares every key it touches in KEYS, so it
runs unchanged on a cluster. Each is sent in full once per server (on a cluster,
once per node), and run by SHA from then on."""

from __future__ import annotations

import hashlib
import re

import attrs


@attrs.frozen
class Script:
    """A Lua script and its SHA1, the name Redis caches it under."""

    name: str
    body: bytes = attrs.field(repr=False)
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.body).hexdigest()

    @property
    def commands(self) -> tuple[str, ...]:
        """The commands the script calls, each once, in the order they first appear:
        what the ACL must grant its caller, since a script runs with the caller's rights."""
        found = re.findall(rb"redis\.call\('([A-Z]+)'", self.body)
        return tuple(dict.fromkeys(command.decode() for command in found))


# Session save: the hash and its TTL in one atomic step, so a session never
# exists without an expiry (the Rust driver's two round trips could leave one).
SAVE_SESSION = Script(
    "save_session",
    b"""
redis.call('HSET', KEYS[1], 'agent_id', ARGV[1], 'started_at_ns', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
""",
)

# Fixed-window increment. ARGV[1] = amount, ARGV[2] = window in milliseconds.
# Redis does not roll a script back when a command in it fails (an ACL that
# denies it, out of memory), so the window is armed in the same command that
# creates the counter: SET ... PX ... NX. No counter ever exists without an
# expiry, whatever fails after. A counter found without one (written by some
# other client) gets the window armed before it is counted, once INCRBY 0 has
# shown the key holds a counter: a key of another type is left untouched. Any
# other increment, of 0 too, leaves the window where it is. INCRBY fails on
# overflow before changing anything. The total is read back with GET because
# Lua numbers are doubles and would round totals past 2**53.
INCREMENT = Script(
    "increment",
    b"""
if not redis.call('SET', KEYS[1], 0, 'PX', ARGV[2], 'NX') then
  if redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('INCRBY', KEYS[1], 0)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
  end
end
redis.call('INCRBY', KEYS[1], ARGV[1])
return redis.call('GET', KEYS[1])
""",
)

# A cached policy and the milliseconds it has left (-1: no expiry), read at
# one instant, so that the near-cache never keeps a policy past its key's
# expiry. A missing key reads as {false, -2}, which Redis sends as {nil, -2}.
GET_POLICY_WITH_TTL = Script(
    "get_policy_with_ttl",
    b"""
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
""",
)

# A script that changes nothing, run by ``describe`` to learn whether the
# server accepts EVALSHA.
PROBE = Script("probe", b"return 1")

# --- the policy cache and its get_or_load leases ---
#
# KEYS[1] is the policy key, which holds the JSON exactly as the Rust driver
# writes it; KEYS[2] is its lease, a string: '+<token>' while a load holds it,
# '-<token>' once released or killed, 'n<token>' once released by a load that
# found no policy. It expires lease_ttl after it was issued, whatever it says,
# and until then keeps the last token, so a new one is always larger. A token
# is the server's TIME in microseconds, or one more than the last: never
# reused, and no client clock involved. Killing a lease turns '+' into '-', so
# the write-back of the load that held it is refused.

# get_or_load's first step. ARGV[1] = lease_ttl in milliseconds, ARGV[2] = the
# token the caller has been waiting on, or ''. Returns {0, json} on a hit;
# {1, token} when the caller now holds the lease and must load; {2, token,
# pttl} while another load holds it; {3} when the load waited on found no
# policy. A '+' lease without an expiry (written by hand) counts as gone.
# A lease value this script could not have written (no token of 1 to 16
# digits, below 2**53 - 1 so that one more is exact) was written by some other
# client: it counts as gone too, so it can neither hold loads up nor answer
# NotFoundError for a load nobody ran. Its holder, if any, is fenced out: its
# write-back finds the new token.
GET_OR_LEASE = Script(
    "get_or_lease",
    b"""
local value = redis.call('GET', KEYS[1])
if value then return {0, value} end
local lease = redis.call('GET', KEYS[2])
local last = 0
if lease then
  local state, token = string.sub(lease, 1, 1), string.sub(lease, 2)
  if #token > 0 and #token <= 16 and not string.find(token, '[^0-9]')
      and tonumber(token) < 9007199254740991 then
    if state == '+' then
      local pttl = redis.call('PTTL', KEYS[2])
      if pttl > 0 then return {2, token, pttl} end
    elseif state == 'n' and token == ARGV[2] then
      return {3}
    end
    last = tonumber(token)
  end
end
local now = redis.call('TIME')
local issued = tonumber(now[1]) * 1000000 + tonumber(now[2])
if issued <= last then issued = last + 1 end
local token = string.format('%.0f', issued)
redis.call('SET', KEYS[2], '+' .. token, 'PX', ARGV[1])
return {1, token}
""",
)

# The leader's write-back. ARGV[1] = token, ARGV[2] = JSON, ARGV[3] = TTL in
# seconds. Stores only while the token holds the lease, and only where no
# policy is cached: one written meanwhile by a writer that knows nothing of
# leases (a Rust process) is at least as new. Releases the lease. Returns 1 if
# it stored the policy. Run twice, the second run finds the lease released.
FILL = Script(
    "fill",
    b"""
if redis.call('GET', KEYS[2]) ~= '+' .. ARGV[1] then return 0 end
redis.call('SET', KEYS[2], '-' .. ARGV[1], 'KEEPTTL')
if redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3], 'NX') then return 1 end
return 0
""",
)

# A leader whose loader failed gives the lease up, so waiters need not wait it
# out. ARGV[1] = token, ARGV[2] = 'n' when the loader found no policy (the
# waiters on this token get NotFoundError), else '-' (they try again).
RELEASE = Script(
    "release",
    b"""
if redis.call('GET', KEYS[2]) == '+' .. ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2] .. ARGV[1], 'KEEPTTL')
end
return 1
""",
)

# cache_policy: the Rust layout's SET ... EX, and the lease killed, so no load
# under way overwrites this newer policy. ARGV[1] = JSON, ARGV[2] = TTL in seconds.
CACHE_POLICY = Script(
    "cache_policy",
    b"""
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local lease = redis.call('GET', KEYS[2])
if lease and string.sub(lease, 1, 1) == '+' then
  redis.call('SET', KEYS[2], '-' .. string.sub(lease, 2), 'KEEPTTL')
end
return 1
""",
)

# invalidate: the Rust layout's DEL, and the lease killed, so no load that
# started before it caches its policy after it.
INVALIDATE = Script(
    "invalidate",
    b"""
redis.call('DEL', KEYS[1])
local lease = redis.call('GET', KEYS[2])
if lease and string.sub(lease, 1, 1) == '+' then
  redis.call('SET', KEYS[2], '-' .. string.sub(lease, 2), 'KEEPTTL')
end
return 1
""",
)
