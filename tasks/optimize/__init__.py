"""optimize: tune the baseline on the val split (tune.py) over the searched space (search_space.py)."""
