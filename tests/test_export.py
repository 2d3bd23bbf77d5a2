"""``ernie-cl export``: a checkpoint written by 2 processes under ZeRO-3 becomes a Hugging Face folder
that AutoModel / AutoTokenizer load offline in a fresh process with the toolkit's hidden states for
task id 0, that the fill-mask pipeline runs on, and that pre-training continues from."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from test_distributed import FINAL, ROOT, shared_cache, train, write_schedule

TEXTS = ["The river flows through the old city.", "In 1900, the museum opened near Paris"]
FRESH_PROCESS = """
import json, sys, torch
from transformers import AutoModel, AutoTokenizer, pipeline
folder, out, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder).eval()
batch = tokenizer(texts, padding=True, return_tensors="pt")
with torch.no_grad():
    hidden = model(**batch).last_hidden_state
masked = f"the river {tokenizer.mask_token} through the old city."
fill = pipeline("fill-mask", model=folder, tokenizer=folder)(masked, top_k=5)
torch.save({"batch": dict(batch), "hidden": hidden, "model_class": type(model).__name__,
            "masked": dict(tokenizer([masked], return_tensors="pt"))}, out + "/hidden.pt")
json.dump([{"token": int(c["token"]), "score": float(c["score"])} for c in fill], open(out + "/fill.json", "w"))
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ernie_cl.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("export")
    paths = {"schedule": write_schedule(folder, "zero3", checkpoint_every=0), "cache": shared_cache(tmp_path_factory),
             "run": folder / "run", "out": folder / "hf"}
    result = train(paths["schedule"], paths["run"], paths["cache"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (paths["run"] / "checkpoints" / FINAL / "mp_rank_00_model_states.pt").exists()  # ZeRO-3: shards only
    result = cli("export", str(paths["run"]), "--out", str(paths["out"]), "--cache-dir", str(paths["cache"]))
    assert result.returncode == 0, result.stderr[-3000:]
    return paths


def test_export_folder_holds_config_weights_tokenizer_and_side_file(exported):
    names = {p.name for p in exported["out"].iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "ernie_cl_extras.safetensors", "ernie_cl.json"} <= names
    config = json.loads((exported["out"] / "config.json").read_text())
    assert config["architectures"] == ["BertForMaskedLM"] and config["tie_word_embeddings"] is False
    side = json.loads((exported["out"] / "ernie_cl.json").read_text())
    assert side["tasks"] == ["knowledge_masking", "capitalization"] and side["folded_task"] == "knowledge_masking"


def test_automodel_in_a_fresh_process_gives_the_toolkits_hidden_states_and_fills_masks(exported, tmp_path):
    from ernie_cl.evaluation.downstream import load_encoder

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(exported["out"]), str(tmp_path), json.dumps(TEXTS)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    got = torch.load(tmp_path / "hidden.pt", weights_only=True)
    assert got["model_class"] == "BertModel"
    encoder, _, _ = load_encoder(exported["run"], cache_dir=exported["cache"], device="cpu")
    batch, mask = got["batch"], got["batch"]["attention_mask"].bool()
    with torch.no_grad():
        ours = encoder.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], [0])
        other_task = encoder.encode(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], [1])
    assert (ours - got["hidden"])[mask].abs().max() < 1e-5
    assert (other_task - got["hidden"])[mask].abs().max() > 1e-3  # control: the task embedding matters

    # the pipeline's best fill is the toolkit's knowledge-masking head's best, with its probability
    masked = got["masked"]
    position = int((masked["input_ids"][0] == _mask_id(exported["out"])).nonzero()[0])
    with torch.no_grad():
        hidden = encoder.encode(masked["input_ids"], masked["attention_mask"], masked["token_type_ids"], [0])
        probs = torch.softmax(encoder.heads["knowledge_masking"](hidden[0, position]), -1)
    fill = json.loads((tmp_path / "fill.json").read_text())
    assert len(fill) == 5
    assert fill[0]["token"] == int(probs.argmax())
    assert abs(fill[0]["score"] - float(probs.max())) < 1e-3


def _mask_id(folder: Path) -> int:
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    return vocab["[MASK]"]


def test_pretraining_continues_from_an_export_with_its_task_embeddings_and_heads(exported, tmp_path):
    """A run started from the export evaluates, before its first step, as the exported run did at its end."""
    (tmp_path / "from_export.yaml").write_text(yaml.safe_dump({"pretrained": str(exported["out"])}))
    schedule = yaml.safe_load(exported["schedule"].read_text())
    schedule.update(model="from_export.yaml", deepspeed="zero0")
    schedule["tasks"] = {"knowledge_masking": {"iterations": 3}, "capitalization": {"iterations": 1}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(schedule))
    result = train(tmp_path / "s.yaml", tmp_path / "run", exported["cache"], nproc=1)
    assert result.returncode == 0, result.stderr[-3000:]
    before = json.loads((tmp_path / "run" / "summary.json").read_text())["init_eval"]
    source_end = json.loads((exported["run"] / "summary.json").read_text())["stages"][-1]["eval"]
    for task in ("knowledge_masking", "capitalization"):
        assert before[task]["loss"] == pytest.approx(source_end[task]["loss"], abs=1e-4)
        assert before[task]["metric"] == pytest.approx(source_end[task]["metric"], abs=1e-9)


def test_export_errors_are_one_line_with_exit_code_2(exported, tmp_path):
    missing = cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "a"))
    damaged_folder = tmp_path / "damaged"
    shutil.copytree(exported["run"] / "checkpoints" / FINAL, damaged_folder)
    shard = damaged_folder / "zero_pp_rank_0_mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    damaged = cli("export", str(damaged_folder), "--out", str(tmp_path / "b"))
    taken = cli("export", str(exported["run"]), "--out", str(exported["out"]))
    for result, words in ((missing, "does not exist"), (damaged, "bytes"), (taken, "not an empty folder")):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ernie-cl: error: ") and words in lines[0], lines
