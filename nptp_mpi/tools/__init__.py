"""Tools around the engine: calibration, benchmarks, the virtual board cluster, cache warming."""
