"""`textloop predict` reads, scores and writes a file in chunks (bounded memory): a CSV, TSV or
JSONL input scored in many chunks gives exactly the output of one chunk, byte for byte, also
when a column's type or a JSONL key shows only in a later chunk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from textloop.core.layout import Project
from textloop.pipeline.batch_predict import predict_stream

CLASSES = ["neg", "pos"]


def _score(texts: list[str]) -> np.ndarray:
    """A stand-in model: deterministic probabilities from the text."""
    p = np.array([(len(t) % 7) / 7 for t in texts], dtype=float)
    return np.column_stack([1 - p, p]) if len(texts) else np.zeros((0, 2))


def _project(root: Path, rows: int) -> Project:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "params.yaml").write_text("{}\n")
    (root / "textloop.yaml").write_text(f"backend:\n  partition_rows: {rows}\n")
    return Project(root)


def _rows(n: int = 40) -> list[dict]:
    rows = []
    for i in range(n):
        rows.append({"id": str(i), "text": f"review {i} " + "good " * (i % 5),
                     "score": str(i * 3), "ratio": f"{i / 4}", "label": CLASSES[i % 2]})
    rows[3]["text"] = "a quoted, multi-line\nreview with \"quotes\""
    rows[5]["text"] = "   "  # empty after normalisation: no prediction
    rows[8]["score"] = ""  # a missing number
    rows[-1]["score"] = "n/a"  # only the last chunk shows the column is text
    return rows


def _run(project: Project, src: Path, dest: Path) -> tuple[dict, dict | None]:
    return predict_stream(project, src, dest, "text", "label", _score, CLASSES, {}, "7")


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
@pytest.mark.parametrize("out_suffix", [".csv", ".jsonl", ".parquet"])
def test_a_delimited_file_scored_in_chunks_equals_one_chunk(tmp_path, suffix, out_suffix):
    src = tmp_path / f"in{suffix}"
    pd.DataFrame(_rows()).to_csv(src, index=False, sep="\t" if suffix == ".tsv" else ",")
    one = _run(_project(tmp_path / "one", 10_000), src, tmp_path / f"one{out_suffix}")
    many = _run(_project(tmp_path / "many", 7), src, tmp_path / f"many{out_suffix}")
    assert many == one and one[0]["rows"] == 40 and one[0]["predicted"] == 39
    if out_suffix == ".parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "many.parquet"),
                                      pd.read_parquet(tmp_path / "one.parquet"))
    else:
        assert (tmp_path / f"many{out_suffix}").read_bytes() == (
            tmp_path / f"one{out_suffix}").read_bytes()


def test_a_jsonl_file_scored_in_chunks_equals_one_chunk_with_late_keys(tmp_path):
    rows = _rows()
    rows[-2]["extra"] = "only here"  # a key the first chunks never saw
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(10, "")  # blank lines are skipped
    src.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    for out_suffix in (".jsonl", ".csv"):
        one = _run(_project(tmp_path / "one", 10_000), src, tmp_path / f"one{out_suffix}")
        many = _run(_project(tmp_path / "many", 4), src, tmp_path / f"many{out_suffix}")
        assert many == one
        assert (tmp_path / f"many{out_suffix}").read_bytes() == (
            tmp_path / f"one{out_suffix}").read_bytes()
    got = [json.loads(x) for x in (tmp_path / "many.jsonl").read_text().splitlines()]
    assert len(got) == 40 and got[0]["extra"] is None and got[-2]["extra"] == "only here"


def test_chunks_give_the_frame_the_whole_file_read_gives(tmp_path):
    from tasks.predict import restore_types
    from textloop.core.tables import iter_table, read_table

    src = tmp_path / "in.csv"
    pd.DataFrame(_rows()).to_csv(src, index=False)
    whole = read_table(src)[0]
    chunks = pd.concat(list(iter_table(src, 6)), ignore_index=True)
    pd.testing.assert_frame_equal(chunks, whole)
    assert restore_types(whole, ["text"], src)["ratio"].dtype == float


def test_a_bad_row_in_a_later_chunk_names_its_line(tmp_path):
    from textloop.core.errors import UserError

    src = tmp_path / "in.jsonl"
    lines = [json.dumps(r) for r in _rows()]
    lines[30] = "{not json"
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match="row 31"):
        _run(_project(tmp_path / "p", 4), src, tmp_path / "o.jsonl")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_chunked_output_is_the_output_of_the_whole_file_read_at_once(tmp_path, suffix):
    from tasks.predict import restore_types, run_predict
    from textloop.core.config import TextConfig
    from textloop.core.tables import read_table, write_table

    src = tmp_path / f"in{suffix}"
    if suffix == ".csv":
        pd.DataFrame(_rows()).to_csv(src, index=False)
    else:
        src.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    df = restore_types(read_table(src)[0], ["text"], src)
    whole, _ = run_predict(df, "text", CLASSES, _score, TextConfig(), {}, "7")
    write_table(whole, tmp_path / f"whole{suffix}")
    _run(_project(tmp_path / "many", 6), src, tmp_path / f"many{suffix}")
    assert (tmp_path / f"many{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
