"""Test helpers with real parts: redis-server processes, a recording upstream."""
