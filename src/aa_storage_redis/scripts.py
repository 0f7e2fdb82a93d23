"""The driver's Lua scripts. Each declares every key it touches in KEYS, so it
runs unchanged on a cluster, and is sent once per connection pool, then run by SHA."""

from __future__ import annotations

import hashlib

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
