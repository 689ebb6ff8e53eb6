"""`textloop explain "text" | FILE`: why the champion labels a text the way it does, printed as
the text with coloured spans (green: for the predicted class, red: against) and the top features;
`--json` prints the explanation object instead (the same as POST /explain)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from textloop.core.errors import UserError

_SHADES = 4  # colour steps between no weight and the largest |weight|


def read_text(arg: str) -> str:
    """The argument itself, or the content of the file it names (UTF-8)."""
    path = Path(arg)
    if len(arg) < 4096 and path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return arg


def styled(text: str, spans: list[dict[str, Any]]) -> Text:
    """The text with each span on a green (positive) or red (negative) background, darker for
    larger |weight|."""
    out = Text(text)
    top = max((abs(s["weight"]) for s in spans), default=0.0)
    for s in spans:
        if top <= 0 or s["weight"] == 0:
            continue
        level = min(_SHADES, 1 + int(abs(s["weight"]) / top * _SHADES))
        shade = ["22", "28", "34", "40"][level - 1] if s["weight"] > 0 else \
            ["52", "88", "124", "160"][level - 1]
        out.stylize(f"on color({shade})", s["start"], s["end"])
    return out


def features_table(result: dict[str, Any]) -> Table:
    """The top features for and against the explained class, side by side."""
    table = Table("for", "weight", "against", "weight", title=f"top features ({result['target']})")
    rows = max(len(result["top_for"]), len(result["top_against"]))
    name = (lambda f: f"{f['block']}: {f['feature']!r}" if f["block"] != "token"
            else repr(f["feature"]))
    for i in range(rows):
        cells = []
        for side in ("top_for", "top_against"):
            f = result[side][i] if i < len(result[side]) else None
            cells += [name(f), f"{f['weight']:+.4f}"] if f else ["", ""]
        table.add_row(*cells)
    return table


def explain(text_or_file: str = typer.Argument(..., help="A text, or a UTF-8 file holding one."),
            target: str | None = typer.Option(None, help="Class to explain (default: predicted)."),
            as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON."),
            ) -> None:
    """Explain the champion's prediction for one text (settings: `explain.*`, see `textloop config`)."""
    from textloop.cli.command_context import open_project
    from textloop.core.limits import apply_text_limit
    from textloop.pipeline.registry import load_champion

    text = read_text(text_or_file)
    project = open_project()
    params = project.params()
    limited = apply_text_limit([text], params.text)
    if limited.refused:
        raise UserError(f"the text is longer than text.max_chars={params.text.max_chars}")
    model, info = load_champion(project)
    if target is not None and target not in model.classes_:
        raise UserError(f"--target {target!r}: unknown class; known: {list(model.classes_)}")
    cfg = params.explain
    result = model.explain(limited.texts[0], target=target, method=cfg.method, steps=cfg.steps,
                           top_k=cfg.top_k)
    result["model"] = {"name": info["model_name"], "version": info["version"]}
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    show(limited.texts[0], result)


def show(text: str, result: dict[str, Any]) -> None:
    """Print the coloured text, the verdict line and the features table."""
    out = Console()
    k = result["classes"].index(result["label"])
    out.print(f"{result['model']['name']} v{result['model']['version']}: [bold]{result['label']}"
              f"[/bold] ({100 * result['proba'][k]:.1f} %); explained class {result['target']}: "
              f"logit {result['score']:.3f} = {result['base']:.3f} + contributions "
              f"({result['method']}, completeness error {result['completeness_error']:.1e})",
              highlight=False)
    out.print(styled(text, result["spans"]))
    out.print(features_table(result))


def register(app: typer.Typer) -> None:
    """Add `explain` to the textloop CLI."""
    from textloop.cli.command_context import user_errors

    app.command("explain")(user_errors(explain))
