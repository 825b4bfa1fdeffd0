"""Project and org policy: resolved per request, compiled once per config revision."""
