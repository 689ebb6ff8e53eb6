"""Prefect wiring: flows call the plain functions in tasks/ and the DVC stages."""
