"""A stand-in `lifecycle` flow for tests of the dashboard and the policy (no training)."""

from __future__ import annotations

from typing import Any

from prefect import flow


@flow(name="lifecycle")
def stub_lifecycle(data: str | None = None, test_data: str | None = None,
                   overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accept the lifecycle's parameters and do nothing with them."""
    return {"data": data, "test_data": test_data, "overrides": overrides or {}}
