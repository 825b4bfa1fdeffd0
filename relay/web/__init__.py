"""HTTP: ingest endpoints, error mapping, health and admin routes."""
