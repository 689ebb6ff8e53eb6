"""`textloop config`: the effective value of every setting and where it came from; the
generated files (configuration reference, dvc.yaml, params.yaml, textloop.yaml)."""

from __future__ import annotations

import json

import typer

config_app = typer.Typer(help="Every setting's effective value and source; generated files.",
                         invoke_without_command=True, no_args_is_help=False)


@config_app.callback()
def show(ctx: typer.Context,
         json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
         set_: list[str] = typer.Option([], "--set", help="KEY=VALUE as `textloop run` takes it "
                                        "(shown, not written)."),
         changed: bool = typer.Option(False, "--changed", help="Only settings whose value "
                                      "differs from the declared default.")
         ) -> None:
    """Print every setting: key, effective value, source (default, params.yaml, textloop.yaml,
    environment, --set)."""
    if ctx.invoked_subcommand is not None:
        return
    from textloop.cli import parse_sets
    from textloop.cli.command_context import open_project, user_errors
    from textloop.core.config import changed_settings, run_settings, setting_sources

    @user_errors
    def _show() -> None:
        project = open_project()
        with run_settings(parse_sets(set_)):
            rows = (changed_settings if changed else setting_sources)(project.params_path)
        if json_out:
            typer.echo(json.dumps({k: {"value": v, "source": src} for k, (v, src) in rows.items()},
                                  indent=2))
            return
        width = max((len(k) for k in rows), default=0)
        for key, (value, source) in rows.items():
            typer.echo(f"{key:<{width}}  {json.dumps(value)}  ({source})")

    _show()


@config_app.command("reference")
def reference() -> None:
    """The configuration reference (Markdown), generated from the declaration."""
    from textloop.core.catalog import render_reference

    typer.echo(render_reference(), nl=False)


@config_app.command("template")
def template(name: str = typer.Argument(..., help="dvc.yaml | params.yaml | textloop.yaml")
             ) -> None:
    """A project file as `textloop init` writes it, generated from the declaration."""
    from textloop.cli.scaffold import generated_files

    files = generated_files()
    if name not in files:
        raise typer.BadParameter(f"one of {', '.join(files)}")
    typer.echo(files[name], nl=False)
