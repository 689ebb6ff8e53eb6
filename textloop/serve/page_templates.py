"""The Jinja2 environment of every server-rendered page (dashboard, /label, /explain, version
cards), created on first use; its own module so any page can render without importing another."""

from __future__ import annotations

from jinja2 import Environment, PackageLoader, select_autoescape

_ENV: Environment | None = None


def templates() -> Environment:
    """The Jinja2 environment (autoescaping on), created on first use."""
    global _ENV
    if _ENV is None:
        _ENV = Environment(loader=PackageLoader("textloop.serve", "templates"),
                           autoescape=select_autoescape(["html"]))
    return _ENV
