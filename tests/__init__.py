"""streamimage's tests: a package so helpers import as `tests.storegen` (and
`python -m tests.storegen --record-golden` works from the repo root)."""
