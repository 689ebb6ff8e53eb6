"""Every MLflow Model Registry call: look up versions and the champion, log + register a model
with the rows it trained on, fetch a version to score it, record a gate decision, move the alias.
Names reach MLflow only through textloop.pipeline.tracking (filter_literal, mlflow_value)."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.deploy import ALIAS, GateDecision
from textloop.core.layout import Project
from textloop.core.progress import library_chatter
from textloop.pipeline import tracking
from textloop.pipeline.champion_lookup import (  # noqa: F401 (registry's public names)
    champion_info,
    current_champion,
    load_champion,
    mlflow_client,
    served_model,
)
from textloop.pipeline.history import (
    HISTORY_TAG,
    AliasMove,
    Journal,
    appended_tag,
    last_holder,
    parse_tag,
    rollback_target,
    timeline,
)
from textloop.pipeline.tracking import filter_literal, mlflow_value

log = logging.getLogger(__name__)

TRAIN_ROWS_FILE = "train_rows.npy"  # model artifact: sorted uint64 hashes of the training texts
MAX_REGISTRY_TAG = 100_000  # MLflow's limit on model-version tag values
PENDING = "pending"  # alias of a candidate that passed the gate and waits for a person (manual)


def version_with_hash(client: Any, name: str, model_hash: str) -> Any | None:
    """A registered version built from exactly this model folder, if any (errors propagate: a
    failed lookup must not turn the 'model unchanged' check off)."""
    found = client.search_model_versions(
        f"name={filter_literal(name)} and tags.model_hash={filter_literal(model_hash)}")
    return next((v for v in found if v.name == name), None)


def labels_of(version: Any) -> list[str]:
    """The label set a registered version was trained on (a version tag)."""
    return sorted(json.loads(version.tags.get("labels", "[]")))


def register(name: str, model_dir: Path, meta: dict, train_rows: np.ndarray, run_id: str,
             params: dict, tags: dict[str, str]) -> Any:
    """Log the model folder as one pyfunc (with train_rows.npy beside it) under the run and
    register it as a new version of `name`; returns the ModelVersion."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id), \
            warnings.catch_warnings(), library_chatter(log):
        warnings.simplefilter("ignore", UserWarning)  # MLflow advice, not an error
        from textloop.pipeline.pyfunc import log_pyfunc

        rows = Path(tmp) / TRAIN_ROWS_FILE
        np.save(rows, np.asarray(train_rows, dtype=np.uint64))
        info = log_pyfunc(model_dir, meta, {"labels": meta["classes"], "params": params},
                          extra_artifacts={"train_rows": str(rows), **explain_artifact(model_dir)})
        safe = {k: mlflow_value(v, MAX_REGISTRY_TAG) for k, v in tags.items()}
        return mlflow.register_model(info.model_uri, name, tags=safe)


def explain_artifact(model_dir: Path) -> dict[str, str]:
    """The model's global explanation (top n-grams per class), stored beside it as
    artifacts/global_explanation.json so a version's view is read without downloading it."""
    from textloop.core.model import GLOBAL_FILE

    path = Path(model_dir) / GLOBAL_FILE
    return {"global_explanation": str(path)} if path.is_file() else {}


def global_explanation(name: str, version: str) -> dict[str, Any] | None:
    """A registered version's global explanation, or None (transformers, older versions)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from textloop.core.model import GLOBAL_FILE

    try:
        uri = mlflow_client().get_model_version_download_uri(name, version)
        return mlflow.artifacts.load_dict(f"{uri.rstrip('/')}/artifacts/{GLOBAL_FILE}")
    except (MlflowException, OSError):
        return None


@contextlib.contextmanager
def downloaded(name: str, version: str) -> Iterator[Path]:
    """A registered version's pyfunc folder, copied to a temporary folder for this block."""
    import mlflow.artifacts

    uri = mlflow_client().get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))


def trained_rows(local: Path) -> np.ndarray | None:
    """The training-row hashes stored with a downloaded version (None: registered before rows
    were recorded)."""
    path = local / "artifacts" / TRAIN_ROWS_FILE
    return np.load(path) if path.is_file() else None


def predict_labels(local: Path, texts: Sequence[str]) -> list[str]:
    """Predicted labels of a downloaded pyfunc version for raw texts."""
    import mlflow.pyfunc
    import pandas as pd

    if not len(texts):
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        out = mlflow.pyfunc.load_model(str(local)).predict(pd.DataFrame({"text": list(texts)}))
    return out["label"].astype(str).tolist()


def record(name: str, version: str, decision: GateDecision, run_id: str,
           journal: Journal | None) -> AliasMove | None:
    """The decision as tags on the version and the run; then the alias move it calls for:
    promoted -> champion, pending (manual approval) -> the `pending` alias. Returns the move."""
    client = mlflow_client()
    tags = {"gate.outcome": decision.outcome, "gate.promoted": str(decision.promote).lower(),
            "gate.reason": decision.reason, "gate.metric": decision.metric,
            "gate.candidate_score": _fmt(decision.candidate_score),
            "gate.champion_score": _fmt(decision.champion_score),
            "gate.champion_version": decision.champion_version or "",
            "gate.n_compared": str(decision.n_compared), "gate.n_excluded": str(decision.n_excluded),
            "gate.rule": decision.rule, "gate.diff": _fmt(decision.diff),
            "gate.diff_ci_low": _fmt(decision.diff_ci_low),
            "gate.diff_ci_high": _fmt(decision.diff_ci_high),
            "gate.p_value": "" if decision.p_value is None else f"{decision.p_value:.6g}",
            "gate.note": decision.note, "gate.alias": decision.alias}
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, mlflow_value(value, MAX_REGISTRY_TAG))
        client.set_tag(run_id, key, mlflow_value(value))
    if decision.promote or decision.outcome == PENDING:
        alias, action = (decision.alias, "deploy") if decision.promote else (PENDING, PENDING)
        return move_alias(name, alias, version, action=action, reason=decision.reason,
                          actor=f"run {run_id}", run_id=run_id, journal=journal)
    return None


def move_alias(name: str, alias: str, version: str | None, *, action: str, reason: str,
               actor: str, journal: Journal | None, run_id: str | None = None) -> AliasMove:
    """THE way an alias moves (the gate, approval, force, rollback): the move from the alias's
    current holder is claimed in `journal` (the loop database, the authority: compare-and-set,
    raising when a concurrent decision won; callers above this layer pass it, None only where
    no database exists), then written to the registry (apply_move), then reported applied.
    Returns the recorded move."""
    held = current_champion(mlflow_client(), name, alias)
    move = AliasMove(model_name=name, alias=alias,
                     from_version=None if held is None else str(held.version),
                     to_version=None if version is None else str(version), action=action,
                     reason=reason, actor=actor, run_id=run_id)
    if journal is not None:
        journal.claim([move])
    apply_move(move)
    if journal is not None:
        journal.applied([move])
    return move


def apply_move(move: AliasMove) -> None:
    """Write one decided move to the registry: set (or, to_version None, remove) the alias and
    add the move to the history tag of the versions it left and reached. Idempotent, so
    reconciliation can replay a move a crash interrupted."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    if move.to_version is None:
        with contextlib.suppress(MlflowException):  # already absent
            client.delete_registered_model_alias(move.model_name, move.alias)
    else:
        client.set_registered_model_alias(move.model_name, move.alias, move.to_version)
    for touched in dict.fromkeys(v for v in (move.from_version, move.to_version) if v):
        try:
            mv = client.get_model_version(move.model_name, touched)
        except MlflowException:  # the version was deleted from the registry
            continue
        existing = mv.tags.get(HISTORY_TAG)
        if move.id not in {e.get("id") for e in parse_tag(existing)}:
            client.set_model_version_tag(move.model_name, touched, HISTORY_TAG,
                                         appended_tag(existing, move))
    log.info("alias %s of %s: %s -> %s (%s by %s)", move.alias, move.model_name,
             move.from_version, move.to_version, move.action, move.actor)


def pending_info(name: str) -> dict[str, Any] | None:
    """The version waiting for approval (version, gate reason, run, registered at) or None."""
    mv = current_champion(mlflow_client(), name, PENDING)
    if mv is None:
        return None
    return {"version": str(mv.version), "reason": mv.tags.get("gate.reason", ""),
            "run_id": mv.run_id, "created_at": mv.creation_timestamp}


def alias_history(name: str) -> list[AliasMove]:
    """Every recorded alias move of the model (from the version tags), oldest first."""
    client = mlflow_client()
    found = client.search_model_versions(f"name={filter_literal(name)}")
    return timeline(v.tags.get(HISTORY_TAG) for v in found if v.name == name)


def existing_versions(name: str) -> set[str]:
    """The versions of `name` still in the registry (deleted ones are not)."""
    found = mlflow_client().search_model_versions(f"name={filter_literal(name)}")
    return {str(v.version) for v in found if v.name == name}


def missing_champion(name: str, alias: str = ALIAS) -> dict[str, str | None] | None:
    """When the version the newest recorded move made champion was deleted from the registry
    (the alias went with it): {deleted, rollback_to} (the latest earlier champion still
    registered, or None); else None."""
    moves = alias_history(name)
    alive = existing_versions(name)
    last = last_holder(moves, alias)
    if last is None or last in alive or current_champion(mlflow_client(), name, alias):
        return None
    return {"deleted": last, "rollback_to": rollback_target(moves, alias, None, alive)}


def get_version(name: str, version: str) -> Any:
    """A registered version; UserError naming the model when it does not exist."""
    from mlflow.exceptions import MlflowException

    from textloop.core.errors import UserError

    try:
        return mlflow_client().get_model_version(name, str(version))
    except MlflowException:
        raise UserError(f"{name} has no version {version!r}") from None


def versions_of_run(name: str, run_id: str) -> list[Any]:
    """The versions of `name` registered from an MLflow run (lineage by run id)."""
    found = mlflow_client().search_model_versions(
        f"name={filter_literal(name)} and run_id={filter_literal(run_id)}")
    return [v for v in found if v.name == name]


def _fmt(score: float | None) -> str:
    return "" if score is None else f"{score:.6f}"


def versions_trained_on(groups: dict[str, Sequence[int]]) -> dict[str, list[dict[str, str]]]:
    """For each key (e.g. a text hash) of `groups`, the registered versions (any model name in
    this store) whose stored training rows (train_rows.npy: tasks.deploy.row_hashes) contain
    one of its row hashes: which models an erased text was trained on. One pass over the
    versions; only train_rows.npy is downloaded, not the model."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    client = mlflow_client()
    out: dict[str, list[dict[str, str]]] = {key: [] for key in groups}
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name={filter_literal(model.name)}"):
            uri = client.get_model_version_download_uri(model.name, version.version)
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    rows = np.load(mlflow.artifacts.download_artifacts(
                        artifact_uri=f"{uri}/artifacts/{TRAIN_ROWS_FILE}", dst_path=tmp))
                except (OSError, MlflowException):  # registered before rows were recorded
                    log.warning("%s v%s has no %s", model.name, version.version, TRAIN_ROWS_FILE)
                    continue
            for key, hashes in groups.items():
                if np.isin(np.asarray(list(hashes), dtype=np.uint64), rows).any():
                    out[key].append({"model": model.name, "version": str(version.version),
                                     "run_id": version.run_id or ""})
    return {k: sorted(v, key=lambda d: (d["model"], int(d["version"]))) for k, v in out.items()}


def log_run_text(run_id: str, text: str, artifact_file: str) -> None:
    """A text artifact (lineage record, model card) on a finished or running MLflow run."""
    mlflow_client().log_text(run_id, text, artifact_file)


def run_text(run_id: str | None, artifact_file: str) -> str | None:
    """A text artifact of a run (None when the run or the file does not exist)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    if not run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_file,
                                                       dst_path=tmp)
        except (MlflowException, OSError):
            return None
        return Path(path).read_text(encoding="utf-8")


def version_tags(project: Project, name: str) -> list[tuple[str, dict[str, str]]]:
    """(version, tags) of every registered version of `name`, oldest first ([] when the model
    is not registered): what the learning curve reads."""
    from mlflow.exceptions import MlflowException

    tracking.setup(project)
    try:
        found = mlflow_client().search_model_versions(f"name={filter_literal(name)}")
    except MlflowException:
        return []
    return [(str(v.version), dict(v.tags or {})) for v in sorted(found, key=lambda v: int(v.version))]


def resolve_challenger(name: str, challenger_alias: str, version: str, promote: bool,
                       reason: str, journal: Journal | None = None) -> None:
    """End a shadow trial: promoted moves the champion alias to the challenger's version;
    either way the challenger alias is removed and the outcome is tagged on the version
    (`shadow.outcome`, `shadow.reason`). Both moves go through move_alias (alias history)."""
    client = mlflow_client()
    outcome = "promoted" if promote else "retired"
    client.set_model_version_tag(name, version, "shadow.outcome", outcome)
    client.set_model_version_tag(name, version, "shadow.reason",
                                 mlflow_value(reason, MAX_REGISTRY_TAG))
    actor = "shadow policy"
    if promote:
        move_alias(name, ALIAS, version, action="shadow_promote", reason=reason, actor=actor,
                   journal=journal)
    move_alias(name, challenger_alias, None, action=f"shadow_{outcome}", reason=reason,
               actor=actor, journal=journal)
    log.info("shadow: %s version %s %s (%s)", name, version, outcome, reason)
