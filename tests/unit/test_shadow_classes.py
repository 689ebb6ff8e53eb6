"""A shadow challenger with a class the champion lacks: feedback for that class is accepted, and
the live comparison is made on the classes both know, saying so."""

from __future__ import annotations

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient

from tasks.monitor.shadow_rule import compare, decide, shared_classes
from textloop.core.config import Params, ShadowConfig
from textloop.serve.app import create_app
from textloop.serve.champion import ChampionWatcher, LoadedModel
from textloop.serve.settings import ServeSettings

TOKEN = "shadow-classes"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _pairs() -> pd.DataFrame:
    """40 paired requests with feedback: 30 pos/neg (each version right on 27), 10 'mixed' (only
    the challenger knows it, and gets 8 of them)."""
    truth = ["pos"] * 15 + ["neg"] * 15 + ["mixed"] * 10
    champ = truth[:27] + ["pos"] * 3 + ["pos"] * 10
    chal = truth[:27] + ["pos"] * 3 + ["mixed"] * 8 + ["neg"] * 2
    return pd.DataFrame({"id": [f"p{i}" for i in range(40)], "champion_label": champ,
                         "champion_confidence": 0.8, "challenger_label": chal,
                         "challenger_confidence": 0.8, "true_label": truth})


def test_the_live_comparison_uses_only_the_classes_both_know_and_says_so() -> None:
    shared = shared_classes(["neg", "pos"], ["mixed", "neg", "pos"])
    assert shared == ["neg", "pos"]
    assert shared_classes(["neg", "pos"], ["pos", "neg"]) is None  # same set: no restriction
    cmp = compare(_pairs(), shared)
    assert (cmp.n_feedback, cmp.n_feedback_excluded) == (30, 10)
    assert cmp.champion_accuracy == cmp.challenger_accuracy == 0.9
    action, reason = decide(cmp, ShadowConfig(min_requests=40, min_feedback=30))
    assert action == "promote"
    assert "compared on the classes both know (neg, pos): 10 feedback rows for other classes " \
           "left out" in reason
    unrestricted = compare(_pairs())  # every feedback row: the champion is wrong on all 'mixed'
    assert unrestricted.champion_accuracy == 27 / 40


def _watcher(alias: str, version: str, classes: tuple[str, ...]) -> ChampionWatcher:
    class Fixed:
        classes_ = classes

        def predict_proba(self, texts):
            return np.tile(np.eye(len(classes))[0], (len(texts), 1))

    return ChampionWatcher("m", alias, resolver=lambda n, a: (version, None, {}),
                           loader=lambda *a: LoadedModel("m", version, Fixed(), classes))


def test_feedback_for_a_class_only_the_live_challenger_knows_is_accepted(tmp_path) -> None:
    from textloop.serve.shadow_scoring import ChallengerWatcher

    chal = ChallengerWatcher("m", "challenger", resolver=lambda n, a: ("2", None, {}),
                             loader=_watcher("challenger", "2", ("mixed", "neg", "pos"))._load)
    settings = ServeSettings(model_name="m", db_url=f"sqlite:///{tmp_path / 's.db'}",
                             token=TOKEN, params=Params.model_validate(
                                 {"deploy": {"mode": "shadow"}}))
    app = create_app(settings, watcher=_watcher("champion", "1", ("neg", "pos")),
                     challenger=chal)
    with TestClient(app) as client:
        ok = client.post("/feedback", headers=AUTH, json={"text": "so-so film", "label": "mixed"})
        assert ok.status_code == 200 and ok.json() == {"stored": 1}
        bad = client.post("/feedback", headers=AUTH, json={"text": "x y", "label": "other"})
        assert bad.status_code == 422
        assert "['neg', 'pos', 'mixed']" in bad.json()["detail"]
