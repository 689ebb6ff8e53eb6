"""Every command shown in README.md and docs/ works: a documented command can never break again.

Each shell block runs in a fresh `textloop init` project (with `.venv` pointing at this
interpreter's environment, so `.venv/bin/textloop` works as in a checkout), unless a comment
before it marks it `not-run` (with the reason) or `slow` (run under `-m slow`). Every `textloop`
command in every block, run or not, must name a real subcommand and real options: each is
resolved in the CLI's own command tree and answers `--help`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from tests.support.doc_blocks import (
    REPO,
    Block,
    all_blocks,
    documented_files,
    inline_invocations,
    setting_overrides,
    textloop_invocations,
)
from textloop.cli import app

BLOCKS = all_blocks()
YAML_BLOCKS = all_blocks(("yaml",))
BLOCK_TIMEOUT_S = 300
SLOW_BLOCK_TIMEOUT_S = 1800


def _ids(blocks: list[Block]) -> list[str]:
    return [b.where for b in blocks]


def _is_group(command: Any) -> bool:
    """A command with subcommands (typer ships its own click: duck-typed, not isinstance)."""
    return isinstance(getattr(command, "commands", None), dict)


def _resolve(args: list[str]) -> tuple[list[str], Any, list[str]]:
    """The subcommand path an argument list names, its click command, and the rest."""
    command = typer.main.get_command(app)
    path: list[str] = []
    rest = list(args)
    while _is_group(command) and rest and rest[0] in command.commands:
        command = command.commands[rest[0]]
        path.append(rest.pop(0))
    return path, command, rest


def _option_names(command: Any) -> set[str]:
    """Every option spelling a command accepts, --help included."""
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def _unknown_options(command: Any, rest: list[str]) -> list[str]:
    """The options in `rest` the command does not declare."""
    known = _option_names(command)
    return [word.split("=", 1)[0] for word in rest
            if word.startswith("-") and word != "-" and word.split("=", 1)[0] not in known]


def test_the_docs_show_shell_blocks_and_mark_only_with_a_reason():
    assert len(BLOCKS) >= 10, "README.md and docs/ should show their commands in shell blocks"
    for block in BLOCKS:
        assert block.commands.strip(), f"{block.where}: an empty shell block"
        if block.mode != "run":
            assert len(block.reason) >= 8, f"{block.where}: say why it is {block.mode}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if textloop_invocations(b.commands)],
                         ids=_ids([b for b in BLOCKS if textloop_invocations(b.commands)]))
def test_every_documented_textloop_command_exists_with_its_options(block):
    runner = CliRunner()
    for args in textloop_invocations(block.commands):
        path, command, rest = _resolve(args)
        if _is_group(command) and rest and not rest[0].startswith("-"):
            pytest.fail(f"{block.where}: `textloop {' '.join(path)}` has no command {rest[0]!r}")
        unknown = _unknown_options(command, rest)
        assert not unknown, f"{block.where}: `textloop {' '.join(path)}` has no option {unknown}"
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"{block.where}: textloop {' '.join(path)} --help\n{result.output}"


def test_every_textloop_command_named_in_prose_exists_with_its_options():
    """Inline mentions (`textloop feedback check`, the CLI table's usage lines) name real
    commands and options too."""
    wrong = []
    for path in documented_files():
        for number, words in inline_invocations(path):
            where = f"{path.relative_to(REPO)}:{number}: textloop {' '.join(words)}"
            command_path, command, rest = _resolve(words)
            if _is_group(command) and rest and re.fullmatch(r"[a-z][\w-]*", rest[0]):
                wrong.append(f"{where}: no command {rest[0]!r} under textloop {' '.join(command_path)}")
            elif unknown := _unknown_options(command, [w for w in words if w.startswith("--")]):
                wrong.append(f"{where}: no option {unknown}")
    assert not wrong, "\n".join(wrong)


@pytest.fixture(scope="module")
def template_project(tmp_path_factory) -> Path:
    """One `textloop init` project; every block gets its own copy."""
    root = tmp_path_factory.mktemp("documented") / "project"
    subprocess.run([str(Path(sys.executable).parent / "textloop"), "init", str(root)],
                   env=_env(), check=True, capture_output=True, timeout=BLOCK_TIMEOUT_S)
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return root


def _textloop(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """This interpreter's `textloop` with the given arguments, in a project."""
    return subprocess.run([str(Path(sys.executable).parent / "textloop"), *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S,
                          check=False)


@pytest.mark.parametrize("block", [b for b in BLOCKS if setting_overrides(b.commands)],
                         ids=_ids([b for b in BLOCKS if setting_overrides(b.commands)]))
def test_every_documented_setting_override_is_a_valid_setting(block, template_project):
    """`--set KEY=VALUE` and `dvc exp run -S KEY=VALUE` in the docs name a declared setting and
    a value it accepts, checked by the one validation a run does (`textloop config --set`)."""
    sets = [arg for kv in setting_overrides(block.commands) for arg in ("--set", kv)]
    done = _textloop("config", "--json", *sets, cwd=template_project)
    assert done.returncode == 0, f"{block.where}: {done.stderr.strip() or done.stdout[-500:]}"


def _unknown_keys(tree: dict, declared: set[str], prefix: str = "") -> list[str]:
    """Dotted keys of a YAML tree that are no declared setting (a declared key may hold a dict)."""
    unknown = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in declared:
            continue
        if isinstance(value, dict):
            unknown += _unknown_keys(value, declared, f"{dotted}.")
        else:
            unknown.append(dotted)
    return unknown


@pytest.mark.parametrize("block", YAML_BLOCKS, ids=_ids(YAML_BLOCKS))
def test_every_documented_settings_snippet_names_declared_settings(block, template_project):
    declared = set(json.loads(_textloop("config", "--json", cwd=template_project).stdout))
    unknown = _unknown_keys(yaml.safe_load(block.commands), declared)
    assert not unknown, f"{block.where}: not a declared setting: {unknown}"


def _env() -> dict[str, str]:
    """This interpreter's tools first on PATH; this checkout's code wins in every subprocess."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES="0", NO_COLOR="1", COLUMNS="120")
    env.pop("TEXTLOOP_PROJECT", None)
    return env


def _run_block(block: Block, template: Path, tmp_path: Path, timeout: int) -> None:
    """The block's commands in bash (-e, pipefail) inside a fresh copy of the project."""
    project = tmp_path / "project"
    shutil.copytree(template, project, symlinks=True)
    script = f"set -euo pipefail\n{block.commands}\n"
    done = subprocess.run(["bash", "-c", script], cwd=project, env=_env(), text=True,
                          capture_output=True, timeout=timeout, check=False)
    assert done.returncode == 0, (f"{block.where} exited {done.returncode}:\n{block.commands}\n"
                                  f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}")


EXP_SHOW_BLOCKS = [b for b in BLOCKS if "dvc exp show" in b.commands]
HEADLINE = {"accuracy": 0.8123, "f1_macro": 0.7456}


@pytest.mark.parametrize("block", EXP_SHOW_BLOCKS, ids=_ids(EXP_SHOW_BLOCKS))
def test_every_documented_exp_show_shows_the_headline_metrics(block, template_project, tmp_path):
    """A documented `dvc exp show` (run, slow or not-run) shows the accuracy a run measured:
    with one metrics file DVC names its columns plainly, so a filter that keeps
    `metrics/metrics.json:accuracy` keeps no metric at all. The workspace gets a headline
    metrics file with known values, and each `dvc exp show` line of the block runs as written."""
    project = tmp_path / "project"
    shutil.copytree(template_project, project, symlinks=True)
    (project / "metrics").mkdir(exist_ok=True)
    (project / "metrics" / "metrics.json").write_text(json.dumps(HEADLINE), encoding="utf-8")
    for line in (ln for ln in block.commands.splitlines() if "dvc exp show" in ln):
        done = subprocess.run(["bash", "-c", f"set -euo pipefail\n{line}\n"], cwd=project,
                              env=_env(), text=True, capture_output=True,
                              timeout=BLOCK_TIMEOUT_S, check=False)
        assert done.returncode == 0, f"{block.where}: {line}\n{done.stderr[-2000:]}"
        assert "accuracy" in done.stdout and "0.8123" in done.stdout, (
            f"{block.where}: `{line}` shows no accuracy value:\n{done.stdout[-2000:]}")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mode == "run"],
                         ids=_ids([b for b in BLOCKS if b.mode == "run"]))
def test_documented_block_runs(block, template_project, tmp_path):
    _run_block(block, template_project, tmp_path, BLOCK_TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.timeout(SLOW_BLOCK_TIMEOUT_S + 120)
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.mode == "slow"],
                         ids=_ids([b for b in BLOCKS if b.mode == "slow"]))
def test_documented_slow_block_runs(block, template_project, tmp_path):
    _run_block(block, template_project, tmp_path, SLOW_BLOCK_TIMEOUT_S)
