"""cce-study harness: data, training, memory, sweeps, analysis."""
