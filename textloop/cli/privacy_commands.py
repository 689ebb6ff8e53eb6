"""`textloop forget`: erase texts from the prediction log, the labeling queue and, through the
DVC-versioned tombstone list ingest applies, from every later data version (textloop/loop/privacy.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from textloop.cli.command_context import open_project


def forget(
    text: list[str] = typer.Option([], "--text", help="A text to erase (repeatable)."),
    text_hash: list[str] = typer.Option([], "--hash", help="A text hash (sha256 of the normalised "
                                        "text, the prediction log's text_hash; repeatable)."),
    file: Path | None = typer.Option(None, "--file", help="A .txt file (one text per line) or a "
                                     "table with a `text` or `text_hash` column."),
) -> None:
    """Erase texts: prediction log, feedback table and labeling queue rows are deleted; the
    hashes go into the DVC-versioned tombstone list, so the next run's data and model no longer
    contain them. Prints the erasure record (which registered versions trained on each)."""
    from textloop.core.errors import UserError
    from textloop.loop.privacy import forget as run
    from textloop.loop.privacy import read_targets, targets

    if file is not None and not file.is_file():
        raise UserError(f"{file}: no such file")
    wanted = targets(texts=text, hashes=text_hash) if (text or text_hash) else {}
    if file is not None:
        wanted.update(read_targets(file))
    if not wanted:
        raise UserError("nothing to forget: give --text, --hash or --file")
    out: dict[str, Any] = run(open_project(), wanted)
    typer.echo(json.dumps(out, default=str))
    typer.echo("run `textloop run` to rebuild the data and the model without them", err=True)


def register(app: typer.Typer) -> None:
    """Add `forget` to the textloop CLI."""
    from textloop.cli.ops import user_errors

    app.command("forget")(user_errors(forget))
