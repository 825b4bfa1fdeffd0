"""Pure processing stages: filters, sampling, scrubbing, fingerprinting, the pipeline.

Nothing under this package does IO or imports aiohttp, redis or prometheus_client.
"""
