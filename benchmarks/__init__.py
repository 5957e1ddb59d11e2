"""In-process benchmarks: prodkit's per-request overhead against a bare app and its peers."""
