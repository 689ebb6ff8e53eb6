"""Lifecycle steps as plain typed functions: one module per stage, no Prefect imports."""
