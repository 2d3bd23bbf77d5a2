"""Schedule validation: one-line errors naming file, key path and fix; every shipped file loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ernie_cl.config.budgets import allocate_budgets
from ernie_cl.config.schedule import load_model_config, load_schedule
from ernie_cl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
GOOD = {
    "tasks": {"knowledge_masking": {"iterations": 30}, "capitalization": {"iterations": 20}},
    "stages": [{"name": "a", "tasks": ["knowledge_masking"]}, {"name": "b", "tasks": ["knowledge_masking", "capitalization"]}],
}


def write(tmp_path, data) -> Path:
    path = tmp_path / "schedule.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def error_of(tmp_path, data) -> str:
    with pytest.raises(ConfigError) as info:
        load_schedule(write(tmp_path, data))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", sorted((ROOT / "schedules").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_schedule_validates(path):
    schedule = load_schedule(path)
    load_model_config(schedule.model, path.parent)
    assert sum(s.steps for s in allocate_budgets(schedule)) > 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "model").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_model_config_loads(path):
    cfg = load_model_config(str(path))
    if "pretrained" in cfg:  # a pretrained encoder's sizes are in its own config.json
        cfg = json.loads((Path(cfg["pretrained"]) / "config.json").read_text())
    assert cfg["hidden_size"] % cfg["num_attention_heads"] == 0


def test_good_schedule_loads(tmp_path):
    schedule = load_schedule(write(tmp_path, GOOD))
    assert schedule.task_names() == ["knowledge_masking", "capitalization"]


def test_training_compile_is_off_by_default_and_a_resume_may_switch_it(tmp_path):
    from ernie_cl.training.trainer import config_changes

    assert load_schedule(write(tmp_path, GOOD)).training.compile is False
    compiled = load_schedule(write(tmp_path, {**GOOD, "training": {"compile": True}}))
    assert compiled.training.compile is True
    before = {"schedule": load_schedule(write(tmp_path, GOOD)).model_dump(mode="json")}
    after = {"schedule": compiled.model_dump(mode="json")}
    assert config_changes(before, after) == []  # how the backbone runs, not what it computes
    changed = {"schedule": load_schedule(write(tmp_path, {**GOOD, "training": {"lr": 1e-3}})).model_dump(mode="json")}
    assert config_changes(before, changed) == ["schedule.training.lr: 0.0005 -> 0.001"]
    assert "training.compile" in error_of(tmp_path, {**GOOD, "training": {"compile": "sometimes"}})


def test_fast_dropout_is_on_by_default_and_a_resume_may_switch_it(tmp_path):
    from ernie_cl.training.trainer import config_changes

    assert load_schedule(write(tmp_path, GOOD)).training.fast_dropout is True
    torch_masks = load_schedule(write(tmp_path, {**GOOD, "training": {"fast_dropout": False}}))
    before = {"schedule": load_schedule(write(tmp_path, GOOD)).model_dump(mode="json")}
    assert config_changes(before, {"schedule": torch_masks.model_dump(mode="json")}) == []  # which kernel draws the masks
    assert "training.fast_dropout" in error_of(tmp_path, {**GOOD, "training": {"fast_dropout": "maybe"}})


def test_fill_chunks_is_on_by_default_and_a_checkpoint_from_before_it_ran_without_it(tmp_path):
    from ernie_cl.training.trainer import config_changes

    assert load_schedule(write(tmp_path, GOOD)).training.fill_chunks is True
    whole = load_schedule(write(tmp_path, {**GOOD, "training": {"fill_chunks": False}})).model_dump(mode="json")
    filled = load_schedule(write(tmp_path, GOOD)).model_dump(mode="json")
    older = {"schedule": {**whole, "training": {k: v for k, v in whole["training"].items() if k != "fill_chunks"}}}
    assert config_changes(older, {"schedule": whole}) == []  # the key is new; older runs kept sentences whole
    assert config_changes(older, {"schedule": filled}) == ["schedule.training.fill_chunks: false -> true"]
    assert config_changes({"schedule": whole}, {"schedule": filled}) == ["schedule.training.fill_chunks: false -> true"]


def test_config_files_are_compared_by_content_not_location():
    """A checkout moved elsewhere (compare writes absolute config paths) still resumes; a changed
    DeepSpeed config does not, and a checkpoint written before the content was recorded is not refused."""
    from ernie_cl.training.trainer import config_changes

    def identity(root: str, ds: dict) -> dict:
        return {"schedule": {"model": f"{root}/configs/model/tiny.yaml", "deepspeed": f"{root}/configs/deepspeed/zero0.json",
                             "training": {"lr": 0.001}}, "model": {"hidden_size": 64}, "deepspeed": ds}

    zero0 = {"zero_optimization": {"stage": 0}}
    assert config_changes(identity("/work/a", zero0), identity("/srv/b", zero0)) == []
    assert config_changes(identity("/work/a", zero0), identity("/work/a", {"zero_optimization": {"stage": 2}})) == [
        "deepspeed.zero_optimization.stage: 0 -> 2"]
    older = identity("/work/a", zero0)
    del older["deepspeed"]
    assert config_changes(older, identity("/srv/b", zero0)) == []


def test_unknown_top_level_key_suggests_the_close_match(tmp_path):
    msg = error_of(tmp_path, {**GOOD, "stagse": []})
    assert "schedule.yaml" in msg and "stagse: unknown key" in msg and "did you mean 'stages'" in msg


def test_unknown_nested_key_names_its_path(tmp_path):
    msg = error_of(tmp_path, {**GOOD, "training": {"bach_size": 8}})
    assert "training.bach_size: unknown key; did you mean 'batch_size'?" in msg


def test_wrong_type_names_the_key(tmp_path):
    msg = error_of(tmp_path, {**GOOD, "training": {"lr": "fast"}})
    assert "training.lr" in msg and "number" in msg


def test_non_positive_budget_is_refused(tmp_path):
    msg = error_of(tmp_path, {**GOOD, "tasks": {"knowledge_masking": {"iterations": 0}, "capitalization": {"iterations": 5}}})
    assert "tasks.knowledge_masking.iterations" in msg and "greater than 0" in msg


def test_stage_without_tasks_is_refused(tmp_path):
    msg = error_of(tmp_path, {**GOOD, "stages": [{"name": "a", "tasks": []}]})
    assert "stages[0].tasks" in msg and "at least one task" in msg


def test_duplicate_stage_names_are_refused(tmp_path):
    stages = [{"name": "a", "tasks": ["knowledge_masking"]}, {"name": "a", "tasks": ["capitalization"]}]
    assert "duplicate stage name(s) a" in error_of(tmp_path, {**GOOD, "stages": stages})


def test_unknown_task_lists_the_known_ones(tmp_path):
    stages = [{"name": "a", "tasks": ["knowledge_maskin"]}]
    msg = error_of(tmp_path, {"tasks": {"knowledge_maskin": {"iterations": 3}}, "stages": stages})
    assert "unknown task 'knowledge_maskin'" in msg and "did you mean 'knowledge_masking'" in msg
    assert "known tasks:" in msg and "capitalization" in msg


def test_task_without_total_budget_is_refused_for_ernie2_allocation(tmp_path):
    msg = error_of(tmp_path, {"stages": [{"name": "a", "tasks": ["capitalization"]}]})
    assert "tasks.capitalization.iterations" in msg


def test_configured_task_used_in_no_stage_is_refused(tmp_path):
    data = {**GOOD, "stages": [{"name": "a", "tasks": ["knowledge_masking"]}]}
    assert "tasks.capitalization: configured but used in no stage" in error_of(tmp_path, data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_schedule(tmp_path / "nope.yaml")
    assert "not valid YAML" in error_of(tmp_path, "stages: [a, b\n  - : :")
    assert "must be a YAML mapping" in error_of(tmp_path, "- just\n- a list\n")


def test_model_config_with_indivisible_heads_is_refused(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("model_type: bert\nhidden_size: 100\nnum_attention_heads: 3\n")
    with pytest.raises(ConfigError, match="not divisible"):
        load_model_config(str(path))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "ernie_cl.cli", *args], capture_output=True, text=True, cwd=ROOT)


def test_cli_reports_a_bad_schedule_in_one_line_with_exit_code_2(tmp_path):
    bad = write(tmp_path, {**GOOD, "stages": [{"name": "a", "tasks": ["nope"]}], "tasks": {}})
    for command in (["validate", str(bad)], ["train", str(bad), "--run-dir", str(tmp_path / "run")],
                    ["validate", str(tmp_path / "missing.yaml")]):
        result = run_cli(*command)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ernie-cl: error: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cli_lists_registered_tasks_one_a_line():
    result = run_cli("tasks")
    assert result.returncode == 0
    names = result.stdout.split()
    assert {"knowledge_masking", "capitalization"} <= set(names)


def test_cli_unknown_task_name_lists_known_tasks():
    result = run_cli("tasks", "nope")
    assert result.returncode == 2 and "known tasks:" in result.stderr and "Traceback" not in result.stderr


def test_reuse_heap_is_on_by_default_and_a_resume_may_switch_it(tmp_path):
    from ernie_cl.training.trainer import config_changes

    assert load_schedule(write(tmp_path, GOOD)).training.reuse_heap is True
    released = load_schedule(write(tmp_path, {**GOOD, "training": {"reuse_heap": False}})).model_dump(mode="json")
    current = load_schedule(write(tmp_path, GOOD)).model_dump(mode="json")
    older = {"schedule": {**current, "training": {k: v for k, v in current["training"].items() if k != "reuse_heap"}}}
    assert config_changes({"schedule": current}, {"schedule": released}) == []  # where tensors lie, not what is computed
    assert config_changes(older, {"schedule": current}) == []  # checkpoints from before the key resume
    assert "training.reuse_heap" in error_of(tmp_path, {**GOOD, "training": {"reuse_heap": "lots"}})
