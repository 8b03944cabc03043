# Benchmark harness for streamimage: a synthetic Nix-like store (corpus), a side-by-side
# timing harness against the reference script (compare), and an RSS probe (memory).
# Rule: standard library only, and every tool under test gets the same output consumer.
