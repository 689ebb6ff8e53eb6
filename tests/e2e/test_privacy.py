"""Privacy: redaction (each kind, positive and negative), the clean report's counts, what the
prediction log keeps (redact_log, log_text: false), the retention purge, tombstones in ingest,
and `forget` in-process (prediction log, feedback, queue, versioned tombstones, the record of
which registered versions trained on the text)."""

from __future__ import annotations

import datetime as dt
import hashlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from tasks.clean.redact import redact
from textloop.core.text import text_hash

ALL = ["email", "phone", "url", "ip", "credit_card", "iban", "mention"]
POSITIVE = [  # (text, kind, expected redacted text)
    ("write to jane.doe@example.com today", "email", "write to <EMAIL> today"),
    ("call +1 415-555-2671 now", "phone", "call <PHONE> now"),
    ("call 020 7946 0958 now", "phone", "call <PHONE> now"),
    ("see https://t.co/abc123 lol", "url", "see <URL> lol"),
    ("visit www.example.org please", "url", "visit <URL> please"),
    ("server 192.168.1.20 is down", "ip", "server <IP> is down"),
    ("v6 at 2001:db8::1 ok", "ip", "v6 at <IP> ok"),
    ("card 4111 1111 1111 1111 ok", "credit_card", "card <CREDIT_CARD> ok"),
    ("iban DE89370400440532013000 ok", "iban", "iban <IBAN> ok"),
    ("iban DE89 3704 0044 0532 0130 00 ok", "iban", "iban <IBAN> ok"),
    ("@bob_smith that was great", "mention", "<MENTION> that was great"),
    ("thanks @Ann!", "mention", "thanks <MENTION>!"),
]
NEGATIVE = [  # nothing here is personal data of any kind
    "meeting on 2023-01-15 at 10:30",     # a date and a time are not phone numbers
    "born 15/01/1990, 12.03.2024",        # nor are other date formats
    "upgraded to version 1.2.3.4",        # a version string is not an IP
    "running v2.0.1.3 since monday",
    "python 3.11.7 is out",
    "card 4111 1111 1111 1112 (bad checksum)",  # fails Luhn
    "score was 3-2 after 90 mins",
    "price 1.99, e.g. i.e. etc.",
    "iban DE00370400440532013000 is wrong",      # bad IBAN checksum
    "no at sign here, just text",
    "flight #1641 delayed again",         # a flight number is not a phone number
    "self-driving car :: reasoning",      # '::' is not an IPv6 address here
    "mail jane.doe at home",              # 'jane.do' is not a URL
]


@pytest.mark.parametrize(("text", "kind", "expected"), POSITIVE)
def test_each_kind_is_replaced_by_its_placeholder(text, kind, expected):
    out, counts = redact(text, ALL)
    assert out == expected
    assert dict(counts) == {kind: 1}
    assert redact(text, [k for k in ALL if k != kind]) == (text, {})  # only configured kinds


@pytest.mark.parametrize("text", NEGATIVE)
def test_non_personal_text_is_left_alone(text):
    assert redact(text, ALL) == (text, {})


def test_overlaps_keep_the_email_and_unknown_kinds_are_refused():
    out, counts = redact("mail a.b@mail.example.com or @joe", ALL)
    assert out == "mail <EMAIL> or <MENTION>"  # the domain is not also a URL
    assert dict(counts) == {"email": 1, "mention": 1}
    with pytest.raises(ValueError, match="unknown redaction kind"):
        redact("x", ["passport"])


def test_redaction_never_touches_the_network(monkeypatch):
    import socket

    def refuse(*_a, **_k):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    assert redact("x@unseen-domain-example.co.uk", ["email"])[0] == "<EMAIL>"


def test_clean_counts_replacements_per_kind_and_dedups_on_redacted_text():
    from tasks.clean.clean_parts import clean_frame

    raw = pd.DataFrame({
        "row_id": ["a", "b", "c", "d"], "label": ["pos", "pos", "neg", "neg"],
        "text": ["love it @ann https://t.co/x", "love it @bob https://t.co/y",
                 "mail me: x@example.com", "plain text"],
        "source": "file", "role": "data", "confidence": 1.0, "origin": "f.csv"})
    kept, quarantined, report = clean_frame(raw, redact=["url", "mention", "email", "phone"])
    assert report["redaction"]["replacements"] == {"url": 2, "mention": 2, "email": 1, "phone": 0}
    assert report["redaction"]["rows_changed"] == 3
    assert kept["text"].tolist() == ["love it <MENTION> <URL>", "mail me: <EMAIL>", "plain text"]
    assert quarantined["reason"].tolist() == ["duplicate_text"]  # same text once redacted
    assert report["rows_out"] + report["rows_quarantined"] == 4
    _, _, plain = clean_frame(raw)  # default: nothing redacted, as before
    assert plain["redaction"]["replacements"] == {} and plain["rows_out"] == 4


def test_text_hash_is_sha256_of_the_normalised_text():
    expected = hashlib.sha256(b"hello world").hexdigest()
    assert text_hash("hello world") == expected
    assert text_hash("  hello\u200b   world\n") == expected


def test_ingest_drops_tombstoned_texts_from_every_source_and_counts_them(tmp_path):
    from tasks.feedback import append_batch
    from tasks.ingest import ingest
    from tasks.ingest.tombstones import add_tombstones, read_tombstones
    from textloop.core.config import IngestConfig

    src = tmp_path / "d.csv"
    pd.DataFrame({"text": ["keep me", "erase me", "also fine"],
                  "label": ["a", "b", "a"]}).to_csv(src, index=False)
    fb = tmp_path / "fb"
    append_batch(fb, pd.DataFrame({"text": ["erase  me"], "label": ["a"]}))
    assert add_tombstones(tmp_path / "stones", [text_hash("erase me")]) == 1
    assert add_tombstones(tmp_path / "stones", [text_hash("erase me")]) == 0  # listed once
    stones = set(read_tombstones(tmp_path / "stones")["text_hash"])
    raw, report = ingest(IngestConfig(source=str(src)), tmp_path, fb, tombstones=stones)
    assert sorted(raw["text"]) == ["also fine", "keep me"]
    assert report["erasure"] == {"rows_read": 4, "rows_kept": 2, "rows_erased": 2,
                                 "quarantined_by_reason": {"erased": 2},
                                 "erased_by_source": {"file": 1, "feedback": 1}}
    assert report["rows"] == 2


# --- serving: what the prediction log keeps ------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny real model folder (served without MLflow: injected into the app)."""
    from tests.support import fixtures as testing

    tmp = tmp_path_factory.mktemp("privacy")
    testing.train_tiny(testing.synthetic(200, seed=3), tmp / "m1")
    return tmp


def _serve(tmp, name: str, **serve: object) -> tuple[list[dict], sa.Engine]:
    """Predict two texts through the real app (in-process, model injected) with these serve
    settings; returns the prediction-log rows and the engine."""
    from fastapi.testclient import TestClient

    from textloop.core.config import Params
    from textloop.loop import db
    from textloop.pipeline.models import NormalizingClassifier
    from textloop.serve.app import create_app
    from textloop.serve.champion import ChampionWatcher, LoadedModel
    from textloop.serve.settings import ServeSettings

    clf = NormalizingClassifier(tmp / "m1")
    model = LoadedModel("tiny", "1", clf, tuple(clf.classes_))
    watcher = ChampionWatcher("tiny", resolver=lambda *_: ("1", None, {}), loader=lambda *_: model)
    settings = ServeSettings(model_name="tiny", db_url=db.default_url(tmp / name), token="t",
                             params=Params.model_validate({"serve": serve}))
    app = create_app(settings, watcher=watcher)
    with TestClient(app) as client:
        r = client.post("/predict", json={"texts": ["great film, mail me at ann@example.com",
                                                    "dull  plot @bob"]})
        assert r.status_code == 200
    engine = app.state.engine
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(sa.select(db.predictions)
                                              .order_by(db.predictions.c.text_hash)).mappings()]
    return rows, engine


def test_redact_log_and_log_text_false(model_dir):
    texts = {text_hash("great film, mail me at ann@example.com"): "great film, mail me at <EMAIL>",
             text_hash("dull plot @bob"): "dull  plot <MENTION>"}
    rows, _ = _serve(model_dir, "redacted", redact_log=["email", "mention"])
    assert {r["text_hash"]: r["text"] for r in rows} == texts  # hash of the text as served
    rows, _ = _serve(model_dir, "hash-only", log_text=False, redact_log=["email"])
    assert {r["text_hash"] for r in rows} == set(texts)
    assert [r["text"] for r in rows] == [None, None]
    assert all(r["label"] and r["probas"] for r in rows)


def test_retention_purges_old_texts_keeps_hash_label_and_records_it(model_dir):
    from textloop.loop import db
    from textloop.loop.privacy import purge_texts

    rows, engine = _serve(model_dir, "retention")
    old = db.utcnow() - dt.timedelta(days=40)
    with engine.begin() as conn:
        conn.execute(db.predictions.update().where(db.predictions.c.id == rows[0]["id"])
                     .values(created_at=old))
    out = purge_texts(engine, 30)
    assert out["rows_purged"] == 1
    assert purge_texts(engine, None) == {"retention_days": None, "rows_purged": 0}
    with engine.connect() as conn:
        after = {r["id"]: r for r in conn.execute(sa.select(db.predictions)).mappings()}
        purges = conn.execute(sa.select(db.purges)).mappings().all()
    assert after[rows[0]["id"]]["text"] is None
    for col in ("text_hash", "label", "probas", "model_version", "confidence"):
        assert after[rows[0]["id"]][col] == rows[0][col]
    assert after[rows[1]["id"]]["text"] == rows[1]["text"]  # recent: kept
    assert [(p["rows_purged"], p["retention_days"]) for p in purges] == [(1, 30.0)]
    assert purge_texts(engine, 30)["rows_purged"] == 0  # nothing left to purge


# --- forget, in-process ----------------------------------------------------------------------


def _dvc_project(root):
    """A git + DVC folder with the default params.yaml (forget versions the tombstones)."""
    import shutil

    from tests.support.e2e_project import REPO

    root.mkdir()
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    from textloop.core.layout import Project

    return Project(root)


def test_forget_removes_rows_versions_tombstones_and_names_the_trained_versions(model_dir,
                                                                                tmp_path):
    from tasks.deploy import row_hashes
    from tests.support import fixtures as testing
    from textloop.loop import db
    from textloop.loop.privacy import forget, targets
    from textloop.pipeline import registry as reg

    secret, other = "dull  plot @bob", "great film, mail me at ann@example.com"
    rows, engine = _serve(model_dir, "forget")
    db.insert_feedback(engine, [
        {"prediction_id": r["id"], "text": r["text"], "label": "neg", "source": "api"}
        for r in rows])
    project = _dvc_project(tmp_path / "proj")
    p = project.params()
    queue = project.path(p.paths.label_queue)
    queue.parent.mkdir(parents=True)
    pd.DataFrame({"row_id": ["1", "2"], "text": ["dull plot @bob", "fine"], "label": ""}
                 ).to_csv(queue, index=False)
    with testing.mlflow_sandbox(project.layout.root):  # the project's own MLflow store
        # two registered versions, the first trained on the text (train_rows.npy as deploy
        # stores it: hashes of the cleaned training texts)
        meta = {"kind": "sklearn", "classes": ["neg", "pos"]}
        versions = [reg.register("tiny-forget", model_dir / "m1", meta, row_hashes(texts),
                                 _run_id(), {}, {}).version
                    for texts in (["z", "dull plot @bob"], ["y"])]
        out = forget(project, targets(texts=[secret]), engine=engine)
        again = forget(project, targets(hashes=[text_hash(secret)]), engine=engine)
    (record,) = out["erased"]
    assert record["text_hash"] == text_hash(secret)
    assert (record["predictions_removed"], record["feedback_removed"]) == (1, 1)
    assert record["queue_removed"] == 1
    assert [v["version"] for v in record["trained_versions"]] == [str(versions[0])]
    with engine.connect() as conn:
        left = conn.execute(sa.select(db.predictions.c.text_hash)).scalars().all()
        fb_left = conn.execute(sa.select(db.feedback.c.text)).scalars().all()
        stored = conn.execute(sa.select(db.erasures).order_by(db.erasures.c.id)).mappings().all()
    assert left == [text_hash(other)] and fb_left == [other]
    assert [s["text_hash"] for s in stored] == [text_hash(secret)] * 2
    assert [v["version"] for v in stored[0]["trained_versions"]] == [str(versions[0])]
    assert pd.read_csv(queue)["text"].tolist() == ["fine"]
    stones = project.path(p.paths.tombstones)
    assert (stones.parent / f"{stones.name}.dvc").is_file()  # a new DVC version of the list
    assert (stones / "tombstones.csv").read_text().count(text_hash(secret)) == 1
    assert again["new_tombstones"] == 0  # forgetting twice adds nothing
    assert again["erased"][0]["predictions_removed"] == 0


def _run_id() -> str:
    """A finished MLflow run to log a version under."""
    import mlflow

    with mlflow.start_run() as run:
        pass
    return run.info.run_id


def test_row_hashes_are_those_deploy_stores():
    from tasks.deploy import row_hashes, row_hashes_per_row

    assert np.isin(row_hashes_per_row(["a  b"]), row_hashes(["a b"])).all()


@pytest.mark.parametrize(("args", "message"), [
    (["forget"], "nothing to forget"),
    (["forget", "--hash", "abc"], "not a text hash"),
    (["forget", "--text", " \u200b "], "an empty text cannot be erased"),
    (["forget", "--file", "missing.csv"], "missing.csv: no such file"),
])
def test_forget_cli_mistakes_are_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from textloop.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_forget_file_forms(tmp_path):
    from textloop.core.errors import UserError
    from textloop.loop.privacy import read_targets

    (tmp_path / "t.txt").write_text("first text\n\nsecond  text\n", encoding="utf-8")
    assert read_targets(tmp_path / "t.txt") == {text_hash("first text"): "first text",
                                                text_hash("second text"): "second  text"}
    pd.DataFrame({"text_hash": [text_hash("x")]}).to_csv(tmp_path / "h.csv", index=False)
    assert read_targets(tmp_path / "h.csv") == {text_hash("x"): None}
    pd.DataFrame({"text_hash": ["nothex"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(UserError, match=r"bad.csv.*row 1.*text_hash.*not a text hash"):
        read_targets(tmp_path / "bad.csv")


def test_a_model_trained_with_redaction_redacts_what_it_is_served(model_dir, tmp_path):
    import json
    import shutil

    from tasks.clean.redact import model_meta
    from textloop.pipeline.models import NormalizingClassifier
    from textloop.pipeline.pyfunc import pip_requirements

    folder = tmp_path / "m"
    shutil.copytree(model_dir / "m1", folder)
    meta_file = folder / "textloop_model.json"
    meta = json.loads(meta_file.read_text())
    assert model_meta([]) == {}  # no redaction: metadata (and model hashes) as before
    meta_file.write_text(json.dumps({**meta, **model_meta(["email"])}))
    clf = NormalizingClassifier(folder)
    assert clf._normalize("write  x@example.com great") == "write <EMAIL> great"
    a, b = clf.predict_proba(["x@example.com great", "someone.else@example.org great"])
    assert a.tolist() == b.tolist()
    assert any(r.startswith("presidio-analyzer==") for r in pip_requirements("sklearn", True))
    assert not any(r.startswith("presidio") for r in pip_requirements("sklearn"))


def test_redaction_kinds_are_checked_in_the_config():
    from pydantic import ValidationError

    from textloop.core.config import Params

    ok = Params.model_validate({"clean": {"redact": ["email", "url"]},
                                "serve": {"redact_log": ["ip"], "retention_days": None}})
    assert ok.clean.redact == ["email", "url"] and ok.serve.retention_days is None
    for bad in ({"clean": {"redact": ["passport"]}}, {"serve": {"redact_log": "email"}},
                {"serve": {"retention_days": 0}}):
        with pytest.raises(ValidationError):
            Params.model_validate(bad)
