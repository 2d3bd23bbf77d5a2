"""`ernie-cl validate` (and `train` before any heavy work): one stderr line naming the file, the key
path and what was expected, exit code 2; success exit code 0. Ends with a fuzz test that feeds
random malformed schedule files to the command and accepts nothing but those two outcomes."""

from __future__ import annotations

import contextlib
import copy
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ernie_cl.cli import main
from ernie_cl.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "ernie-cl: error: "
GOOD: dict[str, Any] = {
    "name": "good",
    "seed": 1,
    "model": "tiny",
    "deepspeed": "zero0",
    "corpus": {"source": "bundled", "eval_fraction": 0.1},
    "tokenizer": {"vocab_size": 500, "lowercase": True},
    "training": {"batch_size": 4, "seq_len": 64, "lr": 1.0e-3, "betas": [0.9, 0.98]},
    "tasks": {"knowledge_masking": {"iterations": 30, "options": {"mask_prob": 0.15}},
              "capitalization": {"iterations": 20}},
    "stages": [{"name": "a", "tasks": ["knowledge_masking"]},
               {"name": "b", "tasks": ["knowledge_masking", "capitalization"], "balancing": {"method": "dwa"}}],
}
EXPLICIT: dict[str, Any] = {
    "allocation": "explicit",
    "stages": [{"name": "a", "tasks": {"knowledge_masking": 10}},
               {"name": "b", "tasks": {"knowledge_masking": 5, "capitalization": 7}}],
}


def run(*argv: str) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:  # argparse usage errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def write(tmp_path: Path, data: Any, name: str = "schedule.yaml") -> Path:
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def with_changes(base: dict[str, Any] = GOOD, **changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    data.update(copy.deepcopy(changes))
    return data


def error_line(tmp_path: Path, data: Any, *, command: str = "validate") -> str:
    """The one stderr line of a refused schedule, checked for exit code 2 and no traceback."""
    path = write(tmp_path, data)
    code, out, err = run(command, str(path))
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and "Traceback" not in err, err
    assert out == ""
    return lines[0][len(PREFIX):]


# --- success -------------------------------------------------------------------------------------
def test_a_good_schedule_validates_with_exit_code_0_and_its_budgets(tmp_path):
    code, out, err = run("validate", str(write(tmp_path, GOOD)))
    assert (code, err) == (0, "")
    # 3 stage-units of 30 and 20: knowledge_masking 20 + 10, capitalization all 20 in stage b
    assert "valid; 2 stage(s), 40 optimizer steps" in out
    assert "a: knowledge_masking=20 (20 steps)" in out and "b: knowledge_masking=10, capitalization=20" in out


@pytest.mark.parametrize("path", sorted((ROOT / "schedules").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_schedule_passes_validate(path):
    code, out, err = run("validate", str(path))
    assert (code, err) == (0, "") and out.startswith(f"{path}: valid; ")


def test_explicit_budgets_with_a_matching_total_are_accepted(tmp_path):
    data = with_changes(EXPLICIT, tasks={"knowledge_masking": {"iterations": 15}})
    code, out, err = run("validate", str(write(tmp_path, data)))
    assert (code, err) == (0, "") and "17 optimizer steps" in out  # stage b: 5 + 7 fused into 7 steps


def test_validate_reads_no_corpus_and_builds_no_model(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("validate must not do heavy work")

    import ernie_cl.corpus.loader
    import ernie_cl.model.encoder
    import ernie_cl.data.tokenizer

    monkeypatch.setattr(ernie_cl.corpus.loader, "load_corpus", forbidden)
    monkeypatch.setattr(ernie_cl.model.encoder, "build_backbone", forbidden)
    monkeypatch.setattr(ernie_cl.data.tokenizer, "train_wordpiece", forbidden)
    assert run("validate", str(ROOT / "schedules" / "demo.yaml"))[0] == 0


# --- unknown keys and wrong types ----------------------------------------------------------------
@pytest.mark.parametrize("data, expected", [
    (with_changes(stagse=[]), "stagse: unknown key; did you mean 'stages'?"),
    (with_changes(training={"bach_size": 8}), "training.bach_size: unknown key; did you mean 'batch_size'?"),
    (with_changes(tasks={"knowledge_masking": {"iteration": 30}, "capitalization": {"iterations": 20}}),
     "tasks.knowledge_masking.iteration: unknown key; did you mean 'iterations'?"),
    (with_changes(stages=[{"name": "a", "taks": ["knowledge_masking"]}]), "stages[0].taks: unknown key; did you mean 'tasks'?"),
], ids=["top", "nested", "under-a-task", "in-a-stage"])
def test_unknown_key_names_its_path_and_the_close_match(tmp_path, data, expected):
    message = error_line(tmp_path, data)
    assert message.startswith(f"{tmp_path / 'schedule.yaml'}: {expected}")


@pytest.mark.parametrize("change, expected", [
    ({"training": {"batch_size": "many"}}, "training.batch_size: expected an integer, got 'many'"),
    ({"training": {"seq_len": 64.5}}, "training.seq_len: expected an integer, got 64.5"),
    ({"training": {"lr": "fast"}}, "training.lr: expected a number, got 'fast'"),
    ({"training": {"lr": float("inf")}}, "training.lr: expected a finite number, got inf"),
    ({"training": {"betas": [0.9, 1.5]}}, "training.betas[1]: expected a value less than 1, got 1.5"),
    ({"corpus": {"phrases": "yes"}}, "corpus.phrases: expected true or false, got 'yes'"),
    ({"corpus": {"source": "txts"}}, "corpus.source: expected one of bundled, wiki, txt, jsonl, hf, lines, bundled_plus, got 'txts' "
                                     "(did you mean 'txt'?)"),
    ({"stages": {"name": "a"}}, "stages: expected a list, got {'name': 'a'}"),
    ({"stages": ["knowledge_masking"]}, "stages[0]: expected a mapping, got 'knowledge_masking'"),
    ({"stages": [{"name": "a", "tasks": "knowledge_masking"}]},
     "stages[0].tasks: expected a list of task names or a mapping {task: iterations in this stage}, got 'knowledge_masking'"),
    ({"stages": [{"name": "a", "tasks": ["knowledge_masking", 5]}]}, "stages[0].tasks[1]: expected a string, got 5"),
    ({"seed": -1}, "seed: expected a value at least 0, got -1"),
    ({"tasks": {1: {"iterations": 3}}}, "tasks.1 (the key): expected a string, got 1"),
], ids=lambda v: str(v)[:30])
def test_wrong_type_names_the_key_what_was_expected_and_the_value(tmp_path, change, expected):
    assert error_line(tmp_path, with_changes(**change)).endswith(f": {expected}")


def test_true_is_not_silently_an_iteration_count(tmp_path):
    data = with_changes(tasks={"knowledge_masking": {"iterations": True}, "capitalization": {"iterations": 20}})
    assert error_line(tmp_path, data).endswith("tasks.knowledge_masking.iterations: expected an integer, got True")


# --- budgets and stages --------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -5])
def test_non_positive_total_budget_is_refused(tmp_path, value):
    data = with_changes(tasks={"knowledge_masking": {"iterations": value}, "capitalization": {"iterations": 20}})
    assert error_line(tmp_path, data).endswith(f"tasks.knowledge_masking.iterations: expected a value greater than 0, got {value}")


def test_non_positive_stage_budget_is_refused(tmp_path):
    data = copy.deepcopy(EXPLICIT)
    data["stages"][1]["tasks"]["capitalization"] = 0
    assert error_line(tmp_path, data).endswith("stages[1].tasks.capitalization: expected a value greater than 0, got 0")


def test_budget_too_small_to_spread_over_its_stages_is_refused_with_its_key(tmp_path):
    data = with_changes(tasks={"knowledge_masking": {"iterations": 1}, "capitalization": {"iterations": 20}})
    assert error_line(tmp_path, data).endswith(
        "tasks.knowledge_masking.iterations: 1 iteration(s) are too few to spread over the 2 stages task "
        "'knowledge_masking' runs in; give it at least 2")


@pytest.mark.parametrize("stage, expected", [
    ({"name": "a", "tasks": []}, "stages[0].tasks: expected at least one task"),
    ({"name": "a"}, "stages[0].tasks: required key is missing; add it"),
    ({"name": "", "tasks": ["knowledge_masking"]}, "stages[0].name: expected a non-empty string, got ''"),
])
def test_stage_without_tasks_or_name_is_refused(tmp_path, stage, expected):
    data = with_changes(stages=[stage], tasks={"knowledge_masking": {"iterations": 3}})
    assert error_line(tmp_path, data).endswith(expected)


def test_no_stages_at_all_is_refused(tmp_path):
    assert error_line(tmp_path, {"tasks": {}}).endswith(
        "stages: required key is missing; add it like [{name: first, tasks: [knowledge_masking]}]")
    assert error_line(tmp_path, with_changes(stages=[])).endswith("stages: expected at least 1 item(s), got []")


def test_a_task_listed_twice_in_a_stage_is_refused(tmp_path):
    data = with_changes(stages=[{"name": "a", "tasks": ["knowledge_masking", "capitalization", "knowledge_masking"]}])
    assert error_line(tmp_path, data).endswith(
        "stages[0].tasks[2]: task 'knowledge_masking' is listed twice in this stage (also [0])")


def test_duplicate_stage_names_point_at_the_second_one(tmp_path):
    data = with_changes(stages=[{"name": "a", "tasks": ["knowledge_masking"]}, {"name": "a", "tasks": ["capitalization"]}])
    assert error_line(tmp_path, data).endswith(
        "stages[1].name: duplicate stage name(s) a; stages[0] has the same name; give every stage its own name")


def test_budget_for_a_task_in_no_stage_is_an_error(tmp_path):
    data = with_changes(stages=[{"name": "a", "tasks": ["knowledge_masking"]}])
    assert error_line(tmp_path, data).endswith(
        "tasks.capitalization: configured but used in no stage; add it to a stage or remove it")


def test_explicit_total_that_disagrees_with_the_stage_budgets_is_an_error(tmp_path):
    data = with_changes(EXPLICIT, tasks={"capitalization": {"iterations": 30}})
    assert error_line(tmp_path, data).endswith(
        "tasks.capitalization.iterations: 30 disagrees with the 7 iteration(s) that the explicit stage budgets give "
        "task 'capitalization'; remove tasks.capitalization.iterations (the stage mappings are the budgets) or make them agree")


def test_stage_task_without_a_total_budget_under_ernie2_names_the_missing_key(tmp_path):
    data = with_changes(tasks={"knowledge_masking": {"iterations": 30}})
    assert error_line(tmp_path, data).endswith(
        "tasks.capitalization.iterations: task 'capitalization' runs in stages[1] and needs tasks.capitalization.iterations "
        "(its total budget) for allocation 'ernie2'")


def test_allocation_and_stage_form_must_agree(tmp_path):
    assert error_line(tmp_path, with_changes(allocation="explicit")).endswith(
        "stages[0].tasks: allocation 'explicit' needs every stage's tasks as a mapping {task: iterations in this stage}, not a list")
    assert "stages[0].tasks: allocation 'ernie2' takes stage tasks as a list" in error_line(
        tmp_path, with_changes(EXPLICIT, allocation="ernie2"))


# --- task names, task options and balancing ------------------------------------------------------
def test_unknown_task_in_a_stage_list_suggests_the_close_match(tmp_path):
    data = with_changes(stages=[{"name": "a", "tasks": ["knowledge_masking", "capitalisation"]}])
    message = error_line(tmp_path, data)
    assert "stages[0].tasks[1]: unknown task 'capitalisation' (did you mean 'capitalization'?); known tasks: " in message
    assert message.endswith("sentence_reordering, token_document_relation")


def test_unknown_task_in_a_stage_mapping_and_in_the_tasks_section(tmp_path):
    data = copy.deepcopy(EXPLICIT)
    data["stages"][1]["tasks"] = {"knowledge_masking": 5, "capitalisation": 7}
    assert "stages[1].tasks.capitalisation: unknown task 'capitalisation' (did you mean 'capitalization'?)" in error_line(tmp_path, data)
    data = with_changes(tasks={"knowledge_masking": {"iterations": 30}, "capitalisation": {"iterations": 20},
                               "capitalization": {"iterations": 20}})
    assert "tasks.capitalisation: unknown task 'capitalisation' (did you mean 'capitalization'?)" in error_line(tmp_path, data)


def test_unknown_and_invalid_task_options_are_refused(tmp_path):
    data = with_changes(tasks={"knowledge_masking": {"iterations": 30, "options": {"mask_prop": 0.2}},
                               "capitalization": {"iterations": 20}})
    assert error_line(tmp_path, data).endswith(
        "tasks.knowledge_masking.options.mask_prop: unknown option (did you mean 'mask_prob'?); known options of "
        "knowledge_masking: levels, mask_prob, mask_token_prob, random_token_prob")
    data = with_changes(tasks={"knowledge_masking": {"iterations": 30, "options": {"mask_prob": 2}},
                               "capitalization": {"iterations": 20}})
    assert error_line(tmp_path, data).endswith(
        "tasks.knowledge_masking.options.mask_prob: option mask_prob must be a number in [0, 1], got 2")


def test_capitalization_with_a_cased_tokenizer_is_refused_before_training(tmp_path):
    data = with_changes(tokenizer={"lowercase": False})
    assert "tasks.capitalization: task 'capitalization' needs a lowercasing (uncased) tokenizer" in error_line(tmp_path, data)


@pytest.mark.parametrize("balancing, expected", [
    ({"method": "uncertanty"}, "stages[1].balancing.method: unknown method 'uncertanty' (did you mean 'uncertainty'?); "
                               "known: fixed, uncertainty, dwa, gradnorm, dtp"),
    ({"method": "dwa", "windw": 5}, "stages[1].balancing.windw: unknown option 'windw' (did you mean 'window'?)"),
    ({"method": "dwa", "window": 0}, "stages[1].balancing.window: option 'window' must be"),
    ({"method": "fixed", "weights": {"sentence_distance": 2}},
     "stages[1].balancing.weights.sentence_distance: weights for task 'sentence_distance' not in this stage"),
    ("dwa", "stages[1].balancing: expected a mapping, got 'dwa'"),
])
def test_bad_balancing_names_its_key(tmp_path, balancing, expected):
    data = with_changes()
    data["stages"][1]["balancing"] = balancing
    assert f": {expected}" in error_line(tmp_path, data)


# --- model configs that do not fit --------------------------------------------------------------
def model_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "model.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_hidden_size_not_divisible_by_heads_names_the_model_file(tmp_path):
    model = model_file(tmp_path, "model_type: bert\nhidden_size: 100\nnum_attention_heads: 3\nnum_hidden_layers: 1\n")
    message = error_line(tmp_path, with_changes(model=model))
    assert message == (f"{model}: hidden_size: 100 is not divisible by num_attention_heads (3); use a multiple of it, "
                       f"e.g. 99 (the model config that {tmp_path / 'schedule.yaml'} names)")


def test_heads_left_at_the_transformers_default_are_checked_too(tmp_path):
    model = model_file(tmp_path, "model_type: bert\nhidden_size: 100\n")  # BERT's default: 12 heads
    assert f"{model}: hidden_size: 100 is not divisible by num_attention_heads (12)" in error_line(tmp_path, with_changes(model=model))


def test_seq_len_longer_than_the_position_table_is_refused(tmp_path):
    message = error_line(tmp_path, with_changes(training={"seq_len": 1024}))
    assert message == (f"{tmp_path / 'schedule.yaml'}: training.seq_len: 1024 is longer than the model's position table "
                       f"(512 positions, max_position_embeddings of {ROOT / 'configs' / 'model' / 'tiny.yaml'}); "
                       "use training.seq_len <= 512")


def test_roberta_reserves_the_padding_positions(tmp_path):
    model = model_file(tmp_path, "model_type: roberta\nhidden_size: 64\nnum_attention_heads: 2\nmax_position_embeddings: 128\n")
    ok = with_changes(model=model, training={"seq_len": 127})  # [PAD] is id 0 in our tokenizer: 128 - 1 positions
    assert run("validate", str(write(tmp_path, ok)))[0] == 0
    assert "training.seq_len: 128 is longer than the model's position table (127 positions" in error_line(
        tmp_path, with_changes(model=model, training={"seq_len": 128}))


@pytest.mark.parametrize("text, expected", [
    ("model_type: bret\n", "model_type: unknown model type 'bret' (did you mean 'bert'?)"),
    ("model_type: bert\nhidden_size: big\n", "hidden_size: expected a positive integer, got 'big'"),
    ("hidden_size: 64\n", "give 'model_type' (e.g. bert, roberta, ernie) or 'pretrained: LOCAL_DIR'"),
    ("model_type: [bert\n", "not valid YAML at line 2, column 1"),
    ("pretrained: /nowhere/model\n", "pretrained: '/nowhere/model' is not a local Hugging Face model folder"),
])
def test_broken_model_config_is_one_line_naming_the_model_file(tmp_path, text, expected):
    model = model_file(tmp_path, text)
    assert error_line(tmp_path, with_changes(model=model)).startswith(f"{model}: {expected}")


def test_missing_model_and_deepspeed_configs_name_the_schedule_key(tmp_path):
    assert error_line(tmp_path, with_changes(model="nosuch")).endswith(
        "schedule.yaml: model: model config 'nosuch' not found; give a file path or one of: base, minilm, small, tiny")
    assert "schedule.yaml: deepspeed: deepspeed config 'zero9' not found" in error_line(tmp_path, with_changes(deepspeed="zero9"))


def test_missing_corpus_path_is_found_by_validate(tmp_path):
    data = with_changes(corpus={"source": "txt", "path": str(tmp_path / "nowhere")})
    assert error_line(tmp_path, data).endswith(
        f"corpus.path: '{tmp_path / 'nowhere'}' does not exist; give an existing folder for source 'txt'")
    data = with_changes(corpus={"source": "jsonl"})
    assert error_line(tmp_path, data).endswith("corpus.path: source 'jsonl' needs a path; add corpus.path")


# --- the file itself ----------------------------------------------------------------------------
@pytest.mark.parametrize("content, expected", [
    ("", "the file is empty; a schedule must be a YAML mapping with at least 'stages' (see schedules/demo.yaml)"),
    ("# only a comment\n", "the file is empty"),
    ("- just\n- a list\n", "a schedule must be a YAML mapping with at least 'stages', not a list"),
    ("42\n", "a schedule must be a YAML mapping with at least 'stages', not a number"),
    ("stages: [a, b\n  - : :\n", "not valid YAML at line 2, column 5: expected ',' or ']', but got ':' (while parsing a flow sequence)"),
    ("stages:\n\t- a\n", "not valid YAML at line 2, column 1: found character '\\t' that cannot start any token"),
    (b"stages: \xff\xfe\n", "not UTF-8 text (byte 0xff at offset 8); save the schedule as UTF-8"),
    ("tasks:\n  knowledge_masking: {iterations: 3}\n  knowledge_masking: {iterations: 4}\n",
     "tasks.knowledge_masking: duplicate key at line 3 (first at line 2); keep one of them"),
    ("stages: !!python/object:os.system {}\n", "not valid YAML at line 1, column 9: could not determine a constructor"),
], ids=["empty", "comment", "list", "scalar", "syntax", "tab", "utf8", "duplicate-key", "python-tag"])
def test_malformed_file_is_one_line_with_file_and_position(tmp_path, content, expected):
    assert error_line(tmp_path, content).startswith(f"{tmp_path / 'schedule.yaml'}: {expected}")


def test_missing_file_and_a_folder_are_refused_with_exit_code_2(tmp_path):
    code, _, err = run("validate", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == f"{PREFIX}schedule file '{tmp_path / 'nope.yaml'}' not found; pass the path of a YAML schedule (see schedules/)\n"
    code, _, err = run("validate", str(tmp_path))
    assert code == 2 and err == f"{PREFIX}schedule file '{tmp_path}' is a folder; pass the path of a YAML schedule (see schedules/)\n"


def test_a_line_break_in_a_user_value_does_not_break_the_one_line_rule(tmp_path):
    data = with_changes(stages=[{"name": "a\nb", "tasks": ["knowledge_masking"]}, {"name": "a\nb", "tasks": ["capitalization"]}])
    assert "duplicate stage name(s) a\\nb" in error_line(tmp_path, data)
    assert "'bad\\u2028key': unknown key" in error_line(tmp_path, with_changes(**{"bad\u2028key": 1}))


# --- the command around it ----------------------------------------------------------------------
def test_train_refuses_a_bad_config_before_any_heavy_work(tmp_path):
    path = write(tmp_path, with_changes(training={"seq_len": 1024}))
    code, _, err = run("train", str(path), "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err.startswith(f"{PREFIX}{path}: training.seq_len: 1024 is longer") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing was created: the check ran before train()


def test_debug_shows_the_traceback_instead(tmp_path):
    path = write(tmp_path, with_changes(training={"seq_len": 1024}))
    for argv in (["--debug", "validate", str(path)], ["validate", str(path), "--debug"]):
        with pytest.raises(ConfigError, match="training.seq_len: 1024"):
            main(argv)


@pytest.mark.parametrize("argv, expected", [
    (["validate"], "the following arguments are required: schedule (see `ernie-cl validate --help`)"),
    (["validate", "a.yaml", "--bogus"], "unrecognized arguments: --bogus (see `ernie-cl --help`)"),
    (["nonsense"], "argument COMMAND: invalid choice: 'nonsense'"),
])
def test_usage_errors_are_one_line_with_exit_code_2(argv, expected):
    code, out, err = run(*argv)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(f"{PREFIX}{expected}"), err


def test_the_installed_command_reports_in_one_line_and_exit_code_2(tmp_path):
    path = write(tmp_path, with_changes(training={"bach_size": 8}))
    result = subprocess.run([sys.executable, "-m", "ernie_cl.cli", "validate", str(path)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"{PREFIX}{path}: training.bach_size: unknown key; did you mean 'batch_size'?\n"


# --- fuzz: random malformed schedule files -------------------------------------------------------
KEYS = ["name", "seed", "model", "deepspeed", "corpus", "tokenizer", "training", "allocation", "tasks", "stages",
        "iterations", "options", "tasks", "balancing", "method", "weights", "window", "source", "path", "seq_len",
        "batch_size", "lr", "betas", "knowledge_masking", "capitalization", "sentence_distance", "levels", "mask_prob"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(), st.text(max_size=12),
                    st.sampled_from(["tiny", "zero0", "explicit", "ernie2", "dwa", "bundled", "txt", "knowledge_masking",
                                     "capitalization", "0", "-1", "1e-3", ".inf", "", "\u2028", "ü\n"]))
KEY = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.none(), st.booleans())
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEY, inner, max_size=4)),
                      max_leaves=10)


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, prefix + (index,))
    return found


@st.composite
def mutated(draw) -> Any:
    """A valid schedule (ernie2 or explicit) with 1-4 random edits: replace, delete or add at a random key path."""
    data = copy.deepcopy(draw(st.sampled_from([GOOD, with_changes(EXPLICIT, tasks={"knowledge_masking": {"iterations": 15}})])))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(data)))
        if not path:
            return draw(VALUES)
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(KEY)] = draw(VALUES)
        else:
            parent.insert(draw(st.integers(0, len(parent))), draw(VALUES))
    return data


def _as_file(data: Any) -> bytes:
    try:
        return yaml.safe_dump(data, allow_unicode=True, sort_keys=False).encode("utf-8")
    except (yaml.YAMLError, RecursionError, UnicodeEncodeError):
        return repr(data).encode("utf-8", "surrogatepass")


FILES = st.one_of(
    mutated().map(_as_file),
    VALUES.map(_as_file),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=200),
    st.lists(st.sampled_from(["stages:", "  - name: a", "    tasks: [knowledge_masking]", "tasks:", "  knowledge_masking:",
                              "    iterations: 3", "training: {seq_len: 9999}", "\t", "- x", "{", "]", ": :", "&a [*a]",
                              "<<: {a: 1}", "!!binary aGk=", "key: 'unterminated"]), max_size=10).map(
        lambda lines: "\n".join(lines).encode("utf-8")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=FILES)
def test_random_malformed_schedules_give_success_or_one_error_line(tmp_path, content):
    path = tmp_path / "fuzzed.yaml"
    path.write_bytes(content)
    code, out, err = run("validate", str(path))
    assert "Traceback" not in err
    if code == 0:
        assert err == "" and out.startswith(f"{path}: valid; ")
    else:
        lines = err.splitlines()
        assert code == 2 and out == "", err
        assert len(lines) == 1 and lines[0].startswith(f"{PREFIX}"), err
