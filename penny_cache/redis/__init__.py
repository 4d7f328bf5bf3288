"""The transports that run the policy's typed operations on redis-py (sync and asyncio,
standalone, Sentinel and Cluster), the Lua scripts, the error boundary and circuit breaker,
and the invalidation listener. The only package that imports redis-py."""
