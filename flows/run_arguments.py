"""What `textloop run`'s arguments mean for params.yaml, decided before anything starts (no
Prefect, no MLflow): the CLI asks it first, the lifecycle flow again under its lock."""

from __future__ import annotations

from typing import Any


def collect_overrides(current_source: str, data: str | None = None, test_data: str | None = None,
                      text_col: str | None = None, label_col: str | None = None,
                      overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """CLI/UI arguments as params.yaml edits (what `dvc exp run -S` would write). A new --data
    source starts clean: its test set and its columns (text/label detected again, id and
    confidence back to their defaults) are not inherited from the old source unless given."""
    from textloop.core.config import IngestConfig

    out: dict[str, Any] = dict(overrides or {})
    for key, value in (("ingest.source", data), ("ingest.test_source", test_data),
                       ("ingest.text_col", text_col), ("ingest.label_col", label_col)):
        if value is not None:
            out[key] = value
    if data is not None and data != current_source:
        fields = IngestConfig.model_fields
        for name in ("test_source", "text_col", "label_col", "id_col", "confidence_col"):
            out.setdefault(f"ingest.{name}", fields[name].default)
    return out
