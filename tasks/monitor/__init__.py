"""monitor: live accuracy and drift (live_metrics.py, embedding_drift.py), the shadow
comparison (shadow_rule.py) and the retrain decision (retrain_rule.py), pure."""
