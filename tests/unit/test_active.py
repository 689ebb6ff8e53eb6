"""Active learning and the /label service on tiny synthetic data: the batch is ordered by
informativeness, de-duplicated and diverse; double annotation, Cohen's kappa, undo; answers land
in the loop DB and, after export, in the feedback store; the /label API end to end (in-process)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from tasks.feedback import append_batch, read_store
from tasks.label.active import informativeness, select_batch, strategy_for
from tasks.label.annotate import agreement, answers_needed, is_double, outcome
from tests.support.fixtures import StubWatcher
from textloop.core.config import Params
from textloop.loop import db, label_store
from textloop.loop.active_queue import (
    QUEUE_COLUMNS,
    people_labels,
    rank_items,
    read_queue,
    text_hash,
    write_queue,
)
from textloop.loop.retrain_policy import export_feedback

TOKEN = "label-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_informativeness_values():
    proba = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(informativeness(proba, "uncertainty"), [0.1, 0.6, 2 / 3])
    np.testing.assert_allclose(informativeness(proba, "margin"), [0.2, 0.95, 1.0])
    np.testing.assert_allclose(informativeness(proba, "entropy")[2], np.log(3))
    assert informativeness(proba, "entropy")[0] < informativeness(proba, "entropy")[1]
    r1, r2 = informativeness(proba, "random", seed=3), informativeness(proba, "random", seed=3)
    np.testing.assert_array_equal(r1, r2)
    with pytest.raises(ValueError, match="unknown strategy"):
        informativeness(proba, "bogus")  # type: ignore[arg-type]


def test_batch_is_ordered_by_uncertainty_and_deduplicated():
    texts = ["a sure thing", "coin flip", "coin  flip\u200b", "slightly unsure", "coin flip", "fairly sure"]
    p_pos = np.array([0.99, 0.50, 0.51, 0.70, 0.52, 0.90])
    batch = select_batch(texts, np.c_[1 - p_pos, p_pos], 4, "uncertainty", diversity=False)
    # "coin  flip" + a zero-width space and the second "coin flip" normalise to the first copy: only the best stays
    assert batch["position"].tolist() == [1, 3, 5, 0]
    assert batch["rank"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(batch["score"], [0.5, 0.3, 0.1, 0.01])


def test_diversity_spreads_the_batch_over_clusters():
    """20 near-copies of one confusing text (most uncertain) and 4 other topics: without
    diversity the batch is all copies; with it, one row per cluster, still by uncertainty."""
    rng = np.random.default_rng(0)
    copies = [f"the plot was fine but the acting version {i}" for i in range(20)]
    others = [f"{topic} review number {i}" for topic in ("music", "camera", "length", "price")
              for i in range(5)]
    texts = copies + others
    p = np.r_[0.5 + rng.uniform(0, 0.02, 20), 0.6 + rng.uniform(0, 0.2, 20)]
    centers = np.repeat(np.eye(5) * 10, [20, 5, 5, 5, 5], axis=0)
    feats = centers + rng.normal(0, 0.1, centers.shape)
    plain = select_batch(texts, np.c_[1 - p, p], 5, "uncertainty", diversity=False)
    assert set(plain["position"]) <= set(range(20))
    diverse = select_batch(texts, np.c_[1 - p, p], 5, "uncertainty", features=feats,
                           candidates_per_pick=8)
    clusters = {int(np.argmax(centers[i])) for i in diverse["position"]}
    assert clusters == {0, 1, 2, 3, 4}
    assert diverse["score"].is_monotonic_decreasing
    assert int(diverse["position"].iloc[0]) == int(plain["position"].iloc[0])  # the top stays
    # the model-free features (tf-idf + SVD of the candidates) separate the topics as well
    auto = select_batch(texts, np.c_[1 - p, p], 5, "uncertainty", candidates_per_pick=8)
    assert sum(int(i) < 20 for i in auto["position"]) <= 2


def test_kappa_on_a_known_table():
    """50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15: p_o = 0.7, p_e = 0.5,
    kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4."""
    pairs = pd.DataFrame({"first": ["y"] * 25 + ["n"] * 25,
                          "second": ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15})
    got = agreement(pairs)
    assert got["items"] == 50
    assert got["observed"] == pytest.approx(0.7)
    assert got["kappa"] == pytest.approx(0.4)
    assert agreement(pairs.iloc[:0])["kappa"] is None
    assert agreement(pd.DataFrame({"first": ["y", "y"], "second": ["y", "y"]}))["kappa"] is None


def test_double_annotation_rules():
    ids = [f"pool:{i}" for i in range(2000)]
    share = np.mean([is_double(i, 0.25) for i in ids])
    assert 0.22 < share < 0.28
    assert not any(is_double(i, 0.0) for i in ids) and all(is_double(i, 1.0) for i in ids)
    assert answers_needed("pool:1", 1.0) == 2 and answers_needed("pool:1", 0.0) == 1
    assert outcome(["a"], 2) == "waiting"
    assert outcome(["a", "a"], 2) == "agreed"
    assert outcome(["a", "b"], 2) == "disagreement"


class FakeModel:
    """P(pos) from the text's number: 'text 51' -> 0.51."""

    classes_ = ("neg", "pos")

    def predict_proba(self, texts):
        p = np.array([int(t.split()[-1]) / 100 for t in texts])
        return np.c_[1 - p, p]


def _queue(tmp_path: Path, n: int = 6) -> pd.DataFrame:
    """An active queue of n pool items and one traffic item, ranked by the fake model."""
    cands = pd.DataFrame({
        "item_id": [f"pool:r{i}" for i in range(n)] + ["traffic:p1"],
        "origin": ["pool"] * n + ["traffic"],
        "text": [f"text {51 + 7 * i}" for i in range(n)] + ["served text 52"],
        "row_id": [f"r{i}" for i in range(n)] + [""], "prediction_id": [""] * n + ["p1"],
        "reason": ["no_label"] * n + ["served"]})
    cfg = Params().label.active.model_copy(update={"diversity": False})
    return write_queue(tmp_path / "active.csv", rank_items(cands, FakeModel(), n + 1,
                                                         "uncertainty", cfg))


def test_rank_items_writes_the_queue_most_uncertain_first(tmp_path):
    q = _queue(tmp_path)
    assert list(q.columns) == QUEUE_COLUMNS
    assert q["item_id"].tolist()[:3] == ["pool:r0", "traffic:p1", "pool:r1"]
    assert q["guess"].iloc[0] == "pos" and q["confidence"].iloc[0] == pytest.approx(0.51)
    assert q["text_hash"].iloc[0] == hashlib.sha256(b"text 51").hexdigest()
    back = read_queue(tmp_path / "active.csv")
    assert back["item_id"].tolist() == q["item_id"].tolist()


@pytest.fixture
def engine(tmp_path):
    return db.open_db(f"sqlite:///{tmp_path / 'loop.db'}")


def test_answers_land_in_the_db_and_after_export_in_the_store(tmp_path, engine):
    queue = read_queue(Path(_queue(tmp_path).pipe(lambda _: tmp_path / "active.csv")))
    items = queue.to_dict("records")
    for item, label in zip(items[:3], ["pos", "neg", "pos"]):
        assert label_store.answer(engine, item, "ann", label, 0.0)["status"] == "agreed"
    answers = label_store.read_answers(engine)
    assert answers[["item_id", "origin", "label", "annotator"]].values.tolist() == [
        [items[0]["item_id"], items[0]["origin"], "pos", "ann"],
        [items[1]["item_id"], items[1]["origin"], "neg", "ann"],
        [items[2]["item_id"], items[2]["origin"], "pos", "ann"]]
    assert answers["text_hash"].tolist() == [text_hash(i["text"]) for i in items[:3]]
    with pytest.raises(label_store.LabelConflict):
        label_store.answer(engine, items[0], "ann", "neg", 0.0)
    assert label_store.undo_last(engine, "ann") == {"item_id": items[2]["item_id"], "label": "pos"}
    pending = db.pending_feedback(engine)
    assert pending["text"].tolist() == [items[0]["text"], items[1]["text"]]
    assert pending["source"].tolist() == ["label", "label"]
    traffic = next(i for i in items[:2] if i["origin"] == "traffic")
    assert pending.set_index("text").loc[traffic["text"], "prediction_id"] == "p1"
    store = tmp_path / "store"
    n, _path = export_feedback(engine, lambda rows: append_batch(store, rows, "serve"))
    assert n == 2 and db.pending_feedback(engine).empty
    stored = read_store(store)
    assert sorted(text_hash(t) for t in stored["text"]) == sorted(answers["text_hash"][:2])
    assert dict(zip(stored["text"], stored["label"])) == {items[0]["text"]: "pos",
                                                          items[1]["text"]: "neg"}
    with pytest.raises(label_store.LabelConflict, match="exported"):
        label_store.undo_last(engine, "ann")


def test_double_annotation_agreement_and_review(tmp_path, engine):
    queue = read_queue(Path(_queue(tmp_path).pipe(lambda _: tmp_path / "active.csv")))
    items = queue.to_dict("records")
    first = label_store.next_item(queue, label_store.read_answers(engine), "ann", 1.0, set())
    assert first["item_id"] == items[0]["item_id"]
    assert label_store.answer(engine, items[0], "ann", "pos", 1.0)["status"] == "waiting"
    # the same annotator moves on; a second annotator gets the waiting item first
    assert label_store.next_item(queue, label_store.read_answers(engine), "ann", 1.0,
                              set())["item_id"] == items[1]["item_id"]
    assert label_store.next_item(queue, label_store.read_answers(engine), "bob", 1.0,
                              set())["item_id"] == items[0]["item_id"]
    assert label_store.answer(engine, items[0], "bob", "pos", 1.0)["status"] == "agreed"
    label_store.answer(engine, items[1], "ann", "pos", 1.0)
    assert label_store.answer(engine, items[1], "bob", "neg", 1.0)["status"] == "disagreement"
    answers = label_store.read_answers(engine)
    assert db.pending_feedback(engine)["text"].tolist() == [items[0]["text"]]  # not the dispute
    review = label_store.review_list(answers, queue)
    assert review == [{"item_id": items[1]["item_id"], "text": items[1]["text"],
                       "origin": items[1]["origin"], "labels": {"ann": "pos", "bob": "neg"}}]
    prog = label_store.progress(queue, answers, "bob")
    assert prog["settled"] == 2 and prog["review"] == 1 and prog["mine"] == 2
    assert prog["by_annotator"] == {"ann": 2, "bob": 2}
    assert prog["agreement"]["items"] == 2 and prog["agreement"]["observed"] == 0.5
    assert label_store.next_item(queue, answers, "bob", 1.0, {items[2]["item_id"]})["item_id"] == \
        items[3]["item_id"]



def test_label_api_answer_undo_and_progress(tmp_path, monkeypatch):
    from textloop.serve import dashboard
    from textloop.serve.app import create_app
    from textloop.serve.settings import ServeSettings

    (tmp_path / "data/03_labeled").mkdir(parents=True)
    _queue(tmp_path / "data/03_labeled")
    settings = ServeSettings(model_name="m", db_url=f"sqlite:///{tmp_path / 'serve.db'}",
                             token=TOKEN, params=Params(), project_root=tmp_path,
                             state=tmp_path / ".textloop")
    with TestClient(create_app(settings, watcher=StubWatcher())) as client:
        assert client.get("/api/label/next", params={"annotator": "ann"}).status_code == 401
        assert "<title>textloop labeling</title>" in client.get("/label").text
        state = client.get("/api/label/next", params={"annotator": "ann"}, headers=AUTH).json()
        assert state["classes"] == ["neg", "pos"] and state["item"]["item_id"] == "pool:r0"
        assert state["progress"] == {"items": 7, "settled": 0, "mine": 0, "by_annotator": {},
                                     "review": 0, "agreement": {"items": 0, "observed": None,
                                                                "kappa": None}}
        bad = client.post("/api/label/answer", headers=AUTH,
                          json={"annotator": "ann", "item_id": "pool:r0", "label": "meh"})
        assert bad.status_code == 422
        assert client.post("/api/label/answer", headers=AUTH, json={
            "annotator": "ann", "item_id": "nope", "label": "pos"}).status_code == 404
        got = client.post("/api/label/answer", headers=AUTH,
                          json={"annotator": "ann", "item_id": "pool:r0", "label": "pos"}).json()
        assert got["answer"]["status"] == "agreed" and got["item"]["item_id"] == "traffic:p1"
        assert got["progress"]["mine"] == 1 and got["progress"]["settled"] == 1
        skipped = client.get("/api/label/next", headers=AUTH,
                             params={"annotator": "ann", "skip": "traffic:p1"}).json()
        assert skipped["item"]["item_id"] == "pool:r1"
        undone = client.post("/api/label/undo", headers=AUTH, json={"annotator": "ann"}).json()
        assert undone["undone"] == {"item_id": "pool:r0", "label": "pos"}
        assert undone["progress"]["mine"] == 0 and undone["item"]["item_id"] == "pool:r0"
        assert client.get("/api/label/review", headers=AUTH).json()["items"] == []
        (tmp_path / "metrics").mkdir()
        (tmp_path / "metrics/label.json").write_text('{"rows_trusted": 40, "rows_queued": 7}')
        versions = [{"version": v, "aliases": [], "metric": "accuracy", "score": acc,
                     "created": "", "tags": {"train_rows": rows, "test_accuracy": str(acc)}}
                    for v, rows, acc in (("1", "900", 0.8), ("2", "1200", 0.85))]
        monkeypatch.setattr(dashboard, "registry_versions", lambda name: versions)
        page = client.get("/dashboard").text
        assert "learning curve: accuracy vs labeled rows" in page and "1200 (v2)" in page
        assert '<td id="label-count-labeled">40</td>' in page
        assert '<td id="label-count-active_queue">7</td>' in page
        assert '<td class="text">text 51</td>' in page  # the active queue's first item


def test_label_counts_read_the_report_defensively():
    from textloop.cli.label_commands import status_lines
    from textloop.pipeline.labelstats import counts_from_report, learning_curve

    report = {"rows_in": 10, "rows_trusted": 6, "rows_queued": 4,
              "weak": {"rows": 3, "coverage": 0.5}, "rows_pseudo": 2,
              "label_issues": {"policy": "flag", "issues": 1}}
    assert counts_from_report(report, 5) == {"labeled": 6, "weak": 3, "pseudo": 2, "queued": 4,
                                             "suspected_error": 1, "active_queue": 5}
    older = counts_from_report({"rows_trusted": 6, "rows_queued": 4, "weak": "n/a"}, None)
    assert older == {"labeled": 6, "weak": None, "pseudo": None, "queued": 4,
                     "suspected_error": None, "active_queue": None}
    curve = learning_curve([("1", {"train_rows": "900", "test_accuracy": "0.8"}),
                            ("3", {"test_accuracy": "0.9"}),
                            ("2", {"train_rows": "1200", "test_accuracy": "0.85"})])
    assert curve == [{"version": "1", "labeled_rows": 900, "accuracy": 0.8},
                     {"version": "2", "labeled_rows": 1200, "accuracy": 0.85}]
    lines = status_lines({"label_counts": older, "learning_curve": curve})
    assert lines == [("labels: labeled 6, weak –, pseudo –, queued 4, suspected-error –, "
                     "active-queue –"),
                     ("learning curve (labeled rows -> test accuracy): v1 900 -> 0.8000, "
                     "v2 1200 -> 0.8500")]


def test_balance_shares_the_batch_among_predicted_classes():
    """The 8 most uncertain rows all lean positive; balanced picks take 2 of each class."""
    p_pos = np.array([0.51, 0.52, 0.53, 0.54, 0.55, 0.56, 0.57, 0.58, 0.30, 0.20, 0.10, 0.05])
    texts = [f"row {i}" for i in range(12)]
    plain = select_batch(texts, np.c_[1 - p_pos, p_pos], 4, "uncertainty", diversity=False)
    assert plain["position"].tolist() == [0, 1, 2, 3]
    balanced = select_batch(texts, np.c_[1 - p_pos, p_pos], 4, "uncertainty", diversity=False,
                            balance=True)
    assert balanced["position"].tolist() == [0, 1, 8, 9]  # still most uncertain first
    one_class = select_batch(texts[:8], np.c_[1 - p_pos[:8], p_pos[:8]], 4, "uncertainty",
                             diversity=False, balance=True)
    assert one_class["position"].tolist() == [0, 1, 2, 3]  # nothing to balance against


def test_warm_up_picks_randomly_until_enough_people_labels(tmp_path):
    assert strategy_for("uncertainty", 399, 400) == "random"
    assert strategy_for("uncertainty", 400, 400) == "uncertainty"
    assert strategy_for("margin", 0, 0) == "margin"  # 0: no warm-up
    path = tmp_path / "labeled.parquet"
    assert people_labels(path) == 0  # before the first label stage
    pd.DataFrame({"row_id": list("abcde"), "label_origin": ["gold", "feedback", "weak", "pseudo",
                                                            "gold"]}).to_parquet(path)
    assert people_labels(path) == 3  # machine labels (weak, pseudo) are not people's
    pd.DataFrame({"row_id": list("ab")}).to_parquet(path)  # predates label_origin
    assert people_labels(path) == 2
