"""evaluate: test-set metrics (metrics.py), slices, error bars (stats.py) and behavioural
tests (behaviour.py)."""
