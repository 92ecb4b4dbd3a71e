"""State several bridge instances share through one Redis (SPEC 10).

`link.RedisLink` is one Redis as the bridge uses it: a bounded pool with a timeout on every
call, and the outage bookkeeping that lets every user of it (rate-limit buckets, cache entries,
registrations) fall back to what this instance has, say so once, and come back on its own.
"""
