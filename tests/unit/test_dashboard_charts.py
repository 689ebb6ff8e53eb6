"""The dashboard's monitor charts, from report rows (no server)."""

from __future__ import annotations


def test_the_live_accuracy_chart_is_a_sentence_until_a_report_measured_it():
    """Reports with no labeled prediction drew an empty chart on an axis of -0.05 to 0.05; the
    dashboard says what would fill it instead."""
    from datetime import UTC, datetime

    from textloop.serve.dashboard import NO_LIVE_ACCURACY, monitor_charts

    report = {"created_at": datetime(2026, 12, 6, 21, 40, tzinfo=UTC), "live_accuracy": None,
              "class_psi": 0.02, "oov_increase": 0.163}
    charts = monitor_charts([report, {**report, "class_psi": 0.03}])
    assert charts["accuracy"] == NO_LIVE_ACCURACY and "<svg" in charts["drift"]
    measured = monitor_charts([report, {**report, "live_accuracy": 0.81}])["accuracy"]
    assert "<svg" in measured and "No live accuracy" not in measured
    assert monitor_charts([]) == {}
