"""A stage's code fingerprint covers its own home and what it really runs: label scores with the
champion (pseudo-labels, model labeling functions) but never runs the deploy gate or the
evaluation metrics, so editing them leaves label's fingerprint as it was."""

from __future__ import annotations

from pathlib import Path

from textloop.pipeline.code_deps import own_modules, stage_fingerprint, stage_modules

STAGES = ["ingest", "clean", "label", "shard", "train", "optimize", "evaluate"]


def _edited(modules: dict[str, Path], name: str, tmp_path: Path) -> dict[str, Path]:
    """The module table with `name`'s source replaced by an edited copy."""
    copy = tmp_path / f"{name}.py"
    copy.write_text(modules[name].read_text() + "\n# an edit\n")
    return {**modules, name: copy}


def test_label_loads_the_champion_without_deploy_or_evaluate_code() -> None:
    label = stage_modules("label")
    assert "textloop.pipeline.champion_lookup" in label  # the champion it scores with
    assert "textloop.pipeline.pyfunc" in label  # the flavor that loads it
    assert not [m for m in label if m.startswith(("tasks.deploy", "tasks.evaluate"))]
    assert "textloop.pipeline.registry" not in label


def test_editing_the_deploy_gate_does_not_rerun_label(tmp_path: Path) -> None:
    modules = own_modules()
    after = _edited(modules, "tasks.deploy", tmp_path)
    changed = [s for s in STAGES
               if stage_fingerprint(s, after) != stage_fingerprint(s, modules)]
    assert "label" not in changed
    assert changed == []  # the gate runs after the DVC stages (the deploy step), in none of them


def test_editing_the_champion_lookup_reruns_label(tmp_path: Path) -> None:
    modules = own_modules()
    after = _edited(modules, "textloop.pipeline.champion_lookup", tmp_path)
    assert stage_fingerprint("label", after) != stage_fingerprint("label", modules)
