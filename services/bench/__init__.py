"""The trivial BenchService behind `make bench`."""
