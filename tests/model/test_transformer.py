"""The torch trainer: learns, runs MiniLM offline, resumes after SIGKILL, saves/loads."""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tasks.train.transformer.fine_tune import resume_point
from tasks.train.transformer.torch_classifier import load_classifier
from tasks.train.transformer.torch_model import (
    Predictor,
    SequenceClassifier,
    TextSpec,
    encode,
    predict_proba_ids,
    save_folder,
    scratch_encoder,
    train_bpe,
)
from tasks.train.transformer.trainer import optimize_transformer, train_transformer
from textloop.core.config import Params
from textloop.core.model import read_meta
from textloop.pipeline.models import NormalizingClassifier

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "TOKENIZERS_PARALLELISM": "false"}
TINY = {"max_seq_len": 32, "batch_size": 8, "epochs": 8, "lr": 3e-3, "dropout": 0.0,
        "hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 256, "num_threads": 1,
        "patience": 3, "checkpoint_every": 5, "eval_batch_size": 16}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


def toy(n: int, seed: int) -> pd.DataFrame:
    """Filler words plus one sentiment word that decides the label: trivially separable."""
    rng = random.Random(seed)
    filler = ["the", "a", "movie", "film", "it", "was", "this", "plot", "actor", "scene"]
    rows = []
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        words = [rng.choice(filler) for _ in range(rng.randint(3, 12))]
        cue = rng.choice(["great", "wonderful", "excellent"] if label == "pos"
                         else ["awful", "terrible", "boring"])
        words.insert(rng.randint(0, len(words)), cue)
        rows.append((" ".join(words), label))
    return pd.DataFrame(rows, columns=["text", "label"])


def params(model: str = "scratch", **transformer: object) -> Params:
    return Params.model_validate({"train": {"model": model, "seed": 7,
                                            "transformer": {**TINY, **transformer}}})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    """One tiny scratch model shared by the save/load/optimize/pyfunc tests."""
    os.environ.update(OFFLINE)
    tmp = tmp_path_factory.mktemp("trained")
    val = toy(32, 2)
    metrics = train_transformer(toy(96, 1), val, params(), tmp / "model",
                                checkpoint_dir=tmp / "ckpt")
    return tmp / "model", metrics, val


def test_scratch_learns_a_separable_toy_set(trained: tuple[Path, dict, pd.DataFrame]) -> None:
    folder, metrics, _ = trained
    assert metrics["accuracy"] >= 0.95 and metrics["f1_macro"] >= 0.95
    assert metrics["steps"] > 0 and metrics["samples_seen"] == metrics["steps"] * 8
    meta = read_meta(folder)
    assert meta["kind"] == "torch" and meta["classes"] == ["neg", "pos"]
    assert meta["train"]["model"] == "scratch" and meta["budget"]["steps"] == metrics["steps"]
    assert meta["clean"] == {"strip_html": True, "lowercase": False}


def test_budgets_cap_the_run_and_are_reported(tmp_path: Path) -> None:
    p = params(max_train_samples=24, max_minutes=1e-9)
    metrics = train_transformer(toy(96, 1), toy(16, 2), p, tmp_path / "m", None, tmp_path / "ck")
    assert metrics["train_rows"] == 24 and metrics["steps"] == 1 and metrics["samples_seen"] == 8
    assert metrics["stopped_by"] == "max_minutes" and metrics["epochs"] == pytest.approx(1 / 3,
                                                                                          abs=1e-3)
    assert read_meta(tmp_path / "m")["budget"]["stopped_by"] == "max_minutes"


def test_minilm_short_run_uses_packaged_weights_offline(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    seen: list[tuple[str, float, int | None]] = []
    p = params("minilm", max_steps=2, lr=5e-5, dropout=0.1)
    metrics = train_transformer(toy(16, 3), toy(8, 4), p, tmp_path / "m",
                                on_metric=lambda n, v, s: seen.append((n, v, s)),
                                checkpoint_dir=tmp_path / "ck")
    assert metrics["steps"] == 2 and metrics["stopped_by"] == "max_steps"
    assert {n for n, _, _ in seen} >= {"train_loss", "lr", "val_accuracy", "val_f1_macro"}
    clf = load_classifier(tmp_path / "m")
    proba = clf.predict_proba(["a great film", "an awful plot"])
    assert proba.shape == (2, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert json.loads((tmp_path / "m" / "encoder_config.json").read_text())["hidden_size"] == 384


def _train_in_subprocess(p: Params, train: Path, val: Path, out: Path,
                         ckpt: Path) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        from pathlib import Path
        import pandas as pd
        from textloop.core.config import Params
        from tasks.train.transformer.trainer import train_transformer
        p = Params.model_validate_json({p.model_dump_json()!r})
        train_transformer(pd.read_parquet({str(train)!r}), pd.read_parquet({str(val)!r}), p,
                          Path({str(out)!r}), checkpoint_dir=Path({str(ckpt)!r}))
    """)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **OFFLINE})


def _complete_checkpoint(folder: Path) -> bool:
    """A checkpoint the Trainer finished writing: its trainer state (written last) reads back."""
    for state in folder.glob("checkpoint-*/trainer_state.json"):
        try:
            json.loads(state.read_text())
            return True
        except (OSError, ValueError):
            continue
    return False


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    train, val = toy(400, 5), toy(40, 6)
    p = params(batch_size=4, epochs=3, patience=5, checkpoint_every=3)
    train.to_parquet(tmp_path / "train.parquet")
    val.to_parquet(tmp_path / "val.parquet")
    proc = _train_in_subprocess(p, tmp_path / "train.parquet", tmp_path / "val.parquet",
                                tmp_path / "killed", tmp_path / "ck")
    deadline = time.monotonic() + 120
    while not _complete_checkpoint(tmp_path / "ck" / "scratch"):
        assert proc.poll() is None, "training ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    resumed = train_transformer(train, val, p, tmp_path / "resumed", checkpoint_dir=tmp_path / "ck")
    straight = train_transformer(train, val, p, tmp_path / "straight",
                                 checkpoint_dir=tmp_path / "ck2")
    assert 0 < resumed["resumed_from_step"] < resumed["steps"]
    for key in ("accuracy", "f1_macro", "steps", "samples_seen", "epochs", "stopped_by"):
        assert resumed[key] == straight[key], key
    a = load_file(tmp_path / "resumed" / "model.safetensors")
    b = load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_checkpoint_of_another_config_is_not_resumed(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    train, val = toy(48, 8), toy(16, 9)
    first = train_transformer(train, val, params(max_steps=6), tmp_path / "a", None, tmp_path / "ck")
    again = train_transformer(train, val, params(max_steps=6), tmp_path / "a", None, tmp_path / "ck")
    assert again["resumed_from_step"] == first["steps"] == 6  # same run: picks up where it ended
    other = params(max_steps=6, lr=1e-3)
    with caplog.at_level(logging.WARNING):
        stale = train_transformer(train, val, other, tmp_path / "b", None, tmp_path / "ck")
    fresh = train_transformer(train, val, other, tmp_path / "c", None, tmp_path / "ck_fresh")
    assert "ignoring checkpoint" in caplog.text
    assert stale["resumed_from_step"] == 0
    assert (stale["accuracy"], stale["f1_macro"]) == (fresh["accuracy"], fresh["f1_macro"])


def test_a_torn_or_foreign_checkpoint_is_never_resumed(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "scratch"
    assert resume_point(folder, "run-a") is None
    for step, state in ((3, '{"global_step": 3}'), (6, '{"global_st')):  # 6: killed mid-save
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (folder / "checkpoint-9").mkdir()  # killed before its trainer state was written
    assert resume_point(folder, "run-a") == folder / "checkpoint-3"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-3", "fingerprint"]
    with caplog.at_level(logging.WARNING):
        assert resume_point(folder, "run-b") is None
    assert "ignoring checkpoint" in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == ["fingerprint"]


def test_save_load_round_trip_gives_the_same_probabilities(tmp_path: Path) -> None:
    texts = [*toy(20, 10)["text"].tolist(), "the movie was " * 30]
    tok = train_bpe(texts, 256)
    spec = TextSpec(30, "head_tail")  # not a multiple of 8: batches are padded to 32
    torch.manual_seed(0)
    model = SequenceClassifier(scratch_encoder(tok.get_vocab_size(), 0, 32, 1, 2, 30, 0.1), 3, 0.1)
    expected = predict_proba_ids(model, encode(tok, texts, spec), 0, 8, torch.device("cpu"))
    save_folder(model, tok, spec, tmp_path / "m")
    got = Predictor(tmp_path / "m", torch.device("cpu")).predict_proba(texts)
    assert np.allclose(got, expected, atol=1e-6) and np.allclose(got.sum(axis=1), 1.0)


def test_long_texts_keep_head_and_tail() -> None:
    tok = train_bpe(["alpha beta gamma delta"] * 3, 256)
    ids = encode(tok, [" ".join(["alpha"] * 20 + ["delta"] * 20)], TextSpec(10, "head_tail"))[0]
    words = [tok.id_to_token(int(i)) for i in ids]
    assert len(ids) == 10 and words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert words[1:3] == ["▁alpha"] * 2 and words[3:9] == ["▁delta"] * 6


def test_optimize_keeps_int8_only_within_the_accuracy_budget(
        trained: tuple[Path, dict, pd.DataFrame], tmp_path: Path) -> None:
    folder, _, val = trained
    trials: list = []
    p = params().model_copy(update={"optimize": params().optimize.model_copy(
        update={"prune": True})})
    report = optimize_transformer(toy(96, 1), val, p, folder, tmp_path / "opt",
                                  on_trial=lambda i, prm, m: trials.append((i, prm, m)))
    assert [t["candidate"] for t in report["trials"]] == ["fp32", "int8", "pruned"]
    assert len(trials) == 3
    base, int8, _ = report["trials"]
    assert report["chosen"] in {"fp32", "int8", "pruned"} and report["decision"]
    if report["chosen"] == "int8":
        assert base["accuracy"] - int8["accuracy"] <= p.optimize.max_accuracy_drop
    json.dumps(report)
    assert read_meta(tmp_path / "opt")["optimize"]["chosen"] == report["chosen"]
    quant = tmp_path / "int8"
    shutil.copytree(folder, quant)
    info = json.loads((quant / "classifier.json").read_text())
    (quant / "classifier.json").write_text(json.dumps({**info, "quantize": "dynamic_int8"}))
    clf = load_classifier(quant)
    proba = clf.predict_proba(val["text"].tolist())
    assert np.allclose(proba.sum(axis=1), 1.0) and clf.classes_ == ["neg", "pos"]
    assert "Quantized" in type(clf.predictor.model.head).__name__ or \
        "quantized" in type(clf.predictor.model.head).__module__


def test_mlflow_pyfunc_round_trip(trained: tuple[Path, dict, pd.DataFrame],
                                  tmp_path: Path) -> None:
    import mlflow.pyfunc

    from textloop.pipeline.pyfunc import MODEL_CODE

    folder, _, val = trained
    texts = ["<b>A great</b> film", "terrible plot", *val["text"].tolist()[:6]]
    expected = NormalizingClassifier(folder).predict_proba(texts)
    mlflow.pyfunc.save_model(str(tmp_path / "pyfunc"), python_model=str(MODEL_CODE),
                             artifacts={"model_dir": str(folder)}, pip_requirements=["torch"])
    out = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc")).predict(pd.DataFrame({"text": texts}))
    assert np.allclose(out[["proba_neg", "proba_pos"]].to_numpy(), expected, atol=1e-6)
    assert out["label"].tolist()[:2] == ["pos", "neg"]
