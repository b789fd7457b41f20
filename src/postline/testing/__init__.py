"""testing: real servers on loopback for tests and benchmarks (fake MTA, DNS, clocks)."""
