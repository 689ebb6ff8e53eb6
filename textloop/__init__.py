"""textloop: a Prefect + DVC + MLflow lifecycle for text classifiers."""

__version__ = "0.1.0"
