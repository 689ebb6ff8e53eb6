"""Where every pipeline file lives, declared once (PathsConfig), and the files generated from
the declaration: dvc.yaml (literal paths), params.yaml, textloop.yaml and the configuration
reference. Nothing here is copied and kept in sync by hand."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from textloop.core.config import (
    ML_SECTIONS,
    OPS_SECTIONS,
    PARAMS_FILE,
    SETTINGS_FILE,
    Params,
    PathsConfig,
)

DAG_TEMPLATE = Path(__file__).resolve().parents[1] / "cli" / "template" / "dvc_yaml"
# the ML choices a new params.yaml shows (the rest keep their declared default until set)
PARAMS_KEYS = (
    "ingest.source", "ingest.test_source", "ingest.text_col", "ingest.label_col", "ingest.id_col",
    "ingest.encoding",
    "clean.strip_html", "clean.lowercase", "clean.min_chars", "clean.redact",
    "label.min_confidence", "label.merge_case", "label.issues", "label.functions",
    "label.use_weak", "label.pseudo.enabled", "label.pseudo.use",
    "shard.val_fraction", "shard.test_fraction", "shard.salt", "shard.min_class_share",
    "shard.near_duplicates.enabled",
    "train.model", "train.seed", "train.tfidf.word_ngram_max", "train.tfidf.char_ngram_min",
    "train.tfidf.char_ngram_max", "train.tfidf.char_weight", "train.tfidf.max_features",
    "train.tfidf.min_df", "train.tfidf.nb_alpha", "train.tfidf.C",
    "train.transformer.max_seq_len", "train.transformer.batch_size", "train.transformer.epochs",
    "train.transformer.lr", "train.transformer.max_minutes",
    "optimize.n_trials", "optimize.timeout_s", "optimize.space",
    "evaluate.gate_metric", "evaluate.bootstrap_samples", "evaluate.slices.columns",
    "evaluate.slices.min_rows",
    "deploy.model_name", "deploy.min_score", "deploy.max_regression", "deploy.rule",
    "deploy.approval", "deploy.mode",
    "feedback.min_accuracy", "feedback.min_new_rows",
    "text.max_chars", "text.overlong",
)
GENERATED = "generated from the declaration in textloop/core/config.py (`textloop config`)"


def paths() -> PathsConfig:
    """The catalog: every file the pipeline reads or writes, relative to the project root."""
    return PathsConfig()


def render_dvc_yaml(template: str | None = None) -> str:
    """dvc.yaml with every `${paths.NAME}` of the DAG template replaced by the catalog's path."""
    text = DAG_TEMPLATE.read_text(encoding="utf-8") if template is None else template
    catalog = paths().model_dump()

    def literal(match: re.Match) -> str:
        return catalog[match.group(1)]

    return re.sub(r"\$\{paths\.(\w+)\}", literal, text)


def _model_of(field: FieldInfo) -> type[BaseModel] | None:
    """The settings model a field holds (a section or a nested group), None for a plain value."""
    ann = field.annotation
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """(dotted key, field) of every declared setting below `model`, in declaration order."""
    out: list[tuple[str, FieldInfo]] = []
    for name, field in model.model_fields.items():
        sub = _model_of(field)
        out += _fields(sub, f"{prefix}{name}.") if sub else [(f"{prefix}{name}", field)]
    return out


def _scalar(value: Any) -> str:
    """A value as YAML a 1.1 and a 1.2 reader both read back as itself (flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _default(field: FieldInfo) -> Any:
    """A field's declared default as plain data (a nested model dumped)."""
    value = field.get_default(call_default_factory=True)
    return value.model_dump() if isinstance(value, BaseModel) else value


def _section_doc(section: str) -> str:
    """The first paragraph of a params section's model docstring, on one line: the section's
    comment in the generated file."""
    model = _model_of(Params.model_fields[section])
    doc = (model.__doc__ or "").strip().split("\n\n")[0] if model else ""
    return " ".join(doc.split())


def _render_yaml(header: str, keys: list[tuple[str, FieldInfo]]) -> str:
    """Nested YAML of `keys` with their defaults, each followed by its one-line doc."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    opened: list[str] = []
    for key, field in keys:
        *parents, leaf = key.split(".")
        common = 0
        while common < min(len(opened), len(parents)) and opened[common] == parents[common]:
            common += 1
        for depth in range(common, len(parents)):
            doc = _section_doc(parents[0]) if depth == 0 else ""
            lines.append("  " * depth + f"{parents[depth]}:" + (f"  # {doc}" if doc else ""))
        opened = parents
        text = "  " * len(parents) + f"{leaf}: {_scalar(_default(field))}"
        lines.append(f"{text}  # {field.description}" if field.description else text)
    return "\n".join(lines) + "\n"


def render_params_yaml() -> str:
    """params.yaml of a new project: the ML choices DVC tracks (`dvc exp run -S` edits them)."""
    declared = dict(_fields(Params))
    header = (f"The ML choices DVC tracks as params; {GENERATED}.\n"
              "A key left out keeps its declared default (docs/reference/configuration.md).\n"
              "Operational settings (serving, alerts, schedules, backend) live in textloop.yaml.")
    return _render_yaml(header, [(key, declared[key]) for key in PARAMS_KEYS])


def render_settings_yaml() -> str:
    """textloop.yaml of a new project: every operational setting with its default."""
    header = (f"Operational settings (not ML choices: DVC does not track them); {GENERATED}.\n"
              "Secrets never belong here: the environment or $TEXTLOOP_SECRETS_FILE.")
    return _render_yaml(header, [(k, f) for k, f in _fields(Params)
                                 if k.split(".")[0] in OPS_SECTIONS])


def _allowed(field: FieldInfo) -> str:
    """The values a setting accepts: its enum, or its numeric bounds."""
    choices = _literals(field.annotation)
    if choices:
        return " \\| ".join(f"`{_scalar(c)}`" for c in choices)
    bounds = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(meta, attr, None) is not None:
                bounds.append(f"{sign} {getattr(meta, attr)}")
    return ", ".join(bounds)


def _literals(ann: Any) -> list[Any]:
    """Every Literal value inside an annotation (through Optional, list, Annotated)."""
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    return [v for arg in typing.get_args(ann) for v in _literals(arg)]


def render_reference() -> str:
    """docs/reference/configuration.md: every setting, its file, default, range and doc."""
    out = ["# Configuration reference", "",
           f"<!-- {GENERATED}: `textloop config reference > docs/reference/configuration.md` -->",
           "", (f"- `{PARAMS_FILE}`: the ML choices DVC tracks as params "
           "(`dvc exp run -S KEY=VALUE` and `textloop run --set KEY=VALUE` edit it)."),
           f"- `{SETTINGS_FILE}`: operational settings; DVC does not track them.",
           ("- `paths`: where every pipeline file lives, fixed by the catalog "
           "(`textloop/core/catalog.py`); `dvc.yaml` is generated with these paths."),
           ("- `textloop config` prints the effective value of every setting and where it came "
           "from (default, params.yaml, textloop.yaml, environment, --set)."), ""]
    for section in Params.model_fields:
        owner = (PARAMS_FILE if section in ML_SECTIONS
                 else SETTINGS_FILE if section in OPS_SECTIONS else "catalog")
        out += [f"## `{section}` ({owner})", "", _section_doc(section), "",
                "| key | default | allowed | description |", "|---|---|---|---|"]
        for key, field in _fields(_model_of(Params.model_fields[section]), f"{section}."):
            desc = (field.description or "").replace("|", "\\|")
            default = _scalar(_default(field)).replace("|", "\\|")
            out.append(f"| `{key}` | `{default}` | {_allowed(field)} | {desc} |")
        out.append("")
    return "\n".join(out)
