"""Apps that only the benchmarks serve (imported as `benchmarks.apps.<name>:app` from the repository root)."""
