"""Serving side of the loop: prediction API, prediction log, dashboard."""
