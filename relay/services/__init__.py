"""IO at the edges, one resource each: limiter, outbox, forwarder, metrics."""
