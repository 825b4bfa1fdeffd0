"""Wire formats of the Sentry protocol: pure parsing and serialization, no IO."""
