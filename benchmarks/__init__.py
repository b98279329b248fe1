"""Benchmarks: the project timed against its peers in the same run; results as JSON in results/."""
