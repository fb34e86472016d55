"""Storage sinks: where cut-outs go."""
