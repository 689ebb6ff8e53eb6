"""The registered model is self-contained: a signature, strict input validation, and a load +
predict in an interpreter where textloop is not importable."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import textwrap
import venv
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tasks.train.fit import train_model
from tests.support.fixtures import mlflow_sandbox
from textloop.core.config import Params
from textloop.core.model import read_meta
from textloop.pipeline.pyfunc import ModelInputError, log_pyfunc, to_texts

POS = ["great movie, loved it", "wonderful acting and great fun", "I loved the story",
       "fun and wonderful film", "a great great film", "loved every wonderful minute"]
NEG = ["terrible movie, hated it", "awful acting and boring", "I hated the story",
       "boring and awful film", "a terrible terrible film", "hated every boring minute"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A baseline trained by tasks.train.baseline, logged with log_pyfunc: (model URI, artifact folder)."""
    tmp = tmp_path_factory.mktemp("bundle")
    df = pd.DataFrame({"text": POS + NEG, "label": ["pos"] * 6 + ["neg"] * 6})
    params = Params.model_validate({"train": {"tfidf": {"min_df": 1}}})
    train_model(df, df, params, tmp / "model")
    with mlflow_sandbox(tmp / "mlflow"), mlflow.start_run(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        info = log_pyfunc(tmp / "model", read_meta(tmp / "model"), {"labels": ["neg", "pos"]})
        local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp / "dl")))
        yield info.model_uri, local


def test_signature_and_dict_input(logged: tuple[str, Path]) -> None:
    """{"text": [a, b]} is two rows (not the score of the word "text")."""
    _uri, local = logged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = mlflow.pyfunc.load_model(str(local))
    sig = model.metadata.signature
    assert sig.inputs.input_names() == ["text"]
    assert sig.outputs.input_names() == ["label", "confidence", "proba_neg", "proba_pos"]
    out = model.predict({"text": ["loved it, great fun", "hated it, boring"]})
    assert list(out["label"]) == ["pos", "neg"]


@pytest.mark.parametrize("bad", [[None, "x"], ["ok", 5], {"txt": ["a"]},
                                 pd.DataFrame({"body": ["a"]}), 3.5])
def test_non_text_input_is_refused(bad: object) -> None:
    """None, numbers, a frame without `text`: a clear error, never the string "None" scored."""
    with pytest.raises(ModelInputError):
        to_texts(bad)


def test_loads_without_textloop_installed(logged: tuple[str, Path], tmp_path: Path) -> None:
    """A fresh venv that sees the third-party packages but not textloop loads and predicts."""
    env = tmp_path / "env"
    venv.create(env, with_pip=False)
    site = next((env / "lib").glob("python3*/site-packages"))
    # a plain path entry: packages importable, but .pth hooks there (textloop's editable
    # finder) are not run, so textloop and tasks stay unimportable
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    script = textwrap.dedent(f"""
        import importlib.util, warnings
        assert importlib.util.find_spec("textloop") is None, "textloop must not be importable"
        import mlflow.pyfunc
        warnings.simplefilter("ignore")
        m = mlflow.pyfunc.load_model({str(logged[1])!r})
        out = m.predict({{"text": ["loved it, great fun", "hated it, boring"]}})
        print(",".join(out["label"]))
    """)
    proc = subprocess.run([str(env / "bin" / "python"), "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={"PATH": "/usr/bin:/bin", "MLFLOW_DISABLE_TELEMETRY": "true",
                               "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "pos,neg"
    assert sys.prefix != str(env)


def test_empty_frame_is_zero_texts() -> None:
    """A 0-row frame is 0 texts, not an error (batch predict on an empty file)."""
    assert to_texts(pd.DataFrame({"text": []})) == []


@pytest.mark.e2e
def test_mlflow_models_serve_answers(logged: tuple[str, Path], tmp_path: Path) -> None:
    """`mlflow models serve` on the logged model answers /invocations with labels per text."""
    import contextlib
    import os
    import time

    import httpx

    from tests.support.fixtures import free_ports

    port = free_ports(1)[0]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",  # its uvicorn: this venv's
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", str(logged[1]), "-p",
           str(port), "-h", "127.0.0.1", "--env-manager", "local"]
    with (tmp_path / "serve.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 120, None
        while answer is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/invocations", timeout=10,
                                    json={"dataframe_split": {"columns": ["text"], "data": [
                                        ["loved it, great fun"], ["hated it, boring"]]}})
            except httpx.TransportError:  # not listening yet: poll again (bounded)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.5)
        assert answer is not None, (tmp_path / "serve.log").read_text()[-2000:]
        assert answer.status_code == 200, answer.text[:500]
        rows = answer.json()["predictions"]
        assert [r["label"] for r in rows] == ["pos", "neg"]
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
