"""One rule for a valid text, held by the model contract itself: the registered model loaded
by a plain MLflow client refuses an empty text exactly where `textloop predict` gives no
prediction (`empty_text`) and the API answers 422."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest

from tests.support.fixtures import mlflow_sandbox, register_champion, synthetic, train_tiny

EMPTY = ["", "   ", "\u200b", "<br/>"]  # blank, whitespace, invisible, empty after clean


@pytest.fixture
def registered(tmp_path):
    with mlflow_sandbox(tmp_path / "mlflow"):
        folder = train_tiny(synthetic(200, seed=1), tmp_path / "model")
        register_champion(folder, "contract")
        yield mlflow.pyfunc.load_model("models:/contract@champion")


@pytest.mark.parametrize("text", EMPTY)
def test_plain_mlflow_client_refuses_an_empty_text(registered, text):
    with pytest.raises(Exception, match="empty_text") as caught:
        registered.predict(pd.DataFrame({"text": ["a good film", text]}))
    assert "row 1" in str(caught.value)


def test_plain_mlflow_client_still_answers_valid_texts(registered):
    out = registered.predict(pd.DataFrame({"text": ["a good film", "an awful plot"]}))
    assert list(out["label"]) == ["pos", "neg"]


def test_predict_rows_the_model_refuses_are_the_empty_text_rows():
    from tasks.predict import plan_rows
    from textloop.core.config import TextConfig
    from textloop.core.model import empty_text

    clean = {"strip_html": True}
    plan = plan_rows([*EMPTY, "a good film"], TextConfig(), clean)
    assert plan.reasons == ["empty_text"] * len(EMPTY) + [None]
    assert [empty_text(t, clean) for t in [*EMPTY, "a good film"]] == [True] * len(EMPTY) + [False]
