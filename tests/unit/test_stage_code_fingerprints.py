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


_IMPORTS: dict[str, set[str]] = {}  # module -> own imports: an appended comment changes none


def _changed(modules: dict[str, Path], name: str, tmp_path: Path) -> list[str]:
    """The stages whose fingerprint an edit of module `name` changes."""
    after = _edited(modules, name, tmp_path)
    return [s for s in STAGES if stage_fingerprint(s, after, _IMPORTS)
            != stage_fingerprint(s, modules, _IMPORTS)]


def test_editing_shards_steps_reruns_shard_and_not_the_stages_that_read_the_shards(
        tmp_path: Path) -> None:
    modules = own_modules()
    assert _changed(modules, "tasks.shard.shard_parts", tmp_path) == ["shard"]
    assert _changed(modules, "tasks.shard.neardup", tmp_path) == ["label", "shard"]  # the split rule
    assert _changed(modules, "tasks.shard", tmp_path) == ["label", "shard"]


def test_editing_the_split_files_contract_reruns_every_stage_that_reads_the_shards(
        tmp_path: Path) -> None:
    changed = _changed(own_modules(), "textloop.core.splits", tmp_path)
    assert changed == ["label", "shard", "train", "optimize", "evaluate"]


def test_train_optimize_and_evaluate_run_the_split_contract_not_shards_steps() -> None:
    for stage in ("train", "optimize", "evaluate"):
        modules = stage_modules(stage)
        assert "textloop.core.splits" in modules
        assert not [m for m in modules if m.startswith(("tasks.shard", "tasks.label"))], stage
        assert "tasks.clean.clean_parts" not in modules  # a model redacts; it never cleans


def test_editing_a_stages_steps_reruns_only_the_stages_that_run_them(tmp_path: Path) -> None:
    """Stage packages whose modules other stages run keep their steps out of __init__.py, and the
    rules several stages apply live in textloop.core, so each stage's own steps rerun it alone."""
    modules = own_modules()
    assert _changed(modules, "tasks.clean.clean_parts", tmp_path) == ["clean"]
    assert _changed(modules, "tasks.label.trust_plan", tmp_path) == ["label"]
    assert _changed(modules, "tasks.label", tmp_path) == ["label"]
    assert _changed(modules, "tasks.ingest.ingest_plan", tmp_path) == ["ingest"]
    assert _changed(modules, "tasks.clean.redact", tmp_path) == [
        "clean", "label", "train", "optimize", "evaluate"]  # every model redacts what it scores
    assert _changed(modules, "textloop.core.label_values", tmp_path) == ["ingest"]
    assert _changed(modules, "textloop.core.quarantine", tmp_path) == ["clean", "label", "shard"]


def test_a_local_named_like_another_stage_is_not_a_call_of_that_stage() -> None:
    """`sources = project.path(...)` in ingest and `clean = pd.read_parquet(...)` in label are
    locals: ingest does not run the sources stage's code, label not clean's plan."""
    assert "textloop.pipeline.code_deps" not in stage_modules("ingest")
    assert "tasks.clean.clean_parts" not in stage_modules("label")


def test_free_names_leave_out_parameters_locals_and_imports() -> None:
    import ast

    from textloop.pipeline.code_deps import free_names

    tree = ast.parse("def f(a):\n    import os\n    b = g(a)\n    def h(c):\n        return k(b, c)\n"
                     "    return os.sep, train, [x for x in b]\n")
    assert free_names(tree.body[0]) == {"g", "k", "train"}
