"""A message that tells a user where to change a setting names the file its declaration puts
it in: alerts and serve live in textloop.yaml, the ML choices in params.yaml."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from textloop.cli import app
from textloop.core.config import ML_SECTIONS, OPS_SECTIONS, where_set
from textloop.serve.page_templates import templates

ROOT = Path(__file__).resolve().parents[2]


def test_where_set_names_the_declared_file():
    assert where_set("alerts") == "textloop.yaml alerts"
    assert where_set("serve.host") == "textloop.yaml serve.host"
    assert where_set("train.tfidf.C") == "params.yaml train.tfidf.C"


def test_serve_help_and_the_dashboard_name_textloop_yaml():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert "default: textloop.yaml serve.host" in result.output, result.output
    assert "params serve" not in result.output
    html = templates().get_template("controls_block.html").render(
        deliveries=[], alert_sinks_setting=where_set("alerts"))
    assert "no alert sent yet (sinks: textloop.yaml alerts)" in html


def test_no_source_string_puts_an_operational_setting_in_params():
    """`params serve.host`, `params.yaml alerts`: the file is written by hand and wrong."""
    wrong = re.compile(rf"params(?:\.yaml)?:? `?({'|'.join(OPS_SECTIONS)})\b")
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for folder in ("textloop", "flows") for path in (ROOT / folder).rglob("*")
            if path.suffix in (".py", ".html", ".js")
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if wrong.search(line)]
    assert not hits, "\n".join(hits)
    assert "alerts" not in ML_SECTIONS and "serve" not in ML_SECTIONS
