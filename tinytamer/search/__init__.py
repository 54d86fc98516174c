"""Hardware-aware search: cost models measured on the target, HAQ, and the executors that run the work."""
