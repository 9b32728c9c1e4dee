"""Scripts that run the library: Tables 1 and 2, benchmarks (library code never imports these)."""
