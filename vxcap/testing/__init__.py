"""Real peers for tests and benchmarks: namespaces with a mirror, a Resurface-like collector."""
