"""The low-rank delta study (docs/BENCHMARKS.md, "Low-rank deltas"): how much of a real
fine-tune's delta a rank-r factorisation keeps, and llama.cpp's own LoRA path as the stand-in
for an in-graph low-rank delta (y = W x + B (A x)).

  lowrank_lora.py svd BASE_HF EXPERT_HF OUT_PREFIX R[,R...]
      prints the share of ||D||^2 (D = W_expert - W_base, per linear weight) kept at each rank,
      and writes OUT_PREFIX-rR-hf: the expert with every linear weight W_base + D_r (norms and
      embeddings as the expert has them), for llama-perplexity --kl-divergence
  lowrank_lora.py lora BASE_HF EXPERT_HF R OUT.gguf
      the same rank-R factors as a llama.cpp LoRA adapter (F16), for `--lora`
  lowrank_lora.py random CONFIG_JSON R SEED OUT.gguf
      a LoRA adapter of random rank-R factors over every linear weight of a model of that
      config: the shapes of a rank-R delta, to time, not to judge

Hugging Face folders hold one F32 model.safetensors (switchyard to-hf). Only numpy is needed.
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

# Hugging Face linear weight -> llama.cpp's name in blk.N
LINEAR = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        if v["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {v['dtype']}, expected F32 (switchyard to-hf)")
        a, b = v["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=np.float32).reshape(v["shape"])
    return out


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_lora_gguf(path, arch, tensors):
    """A GGUF v3 LoRA adapter: tensors maps name -> F16 array in numpy order (ne reversed)."""
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    kv = [("general.architecture", 8, s(arch)), ("general.type", 8, s("adapter")),
          ("adapter.type", 8, s("lora")), ("adapter.lora.alpha", 6, struct.pack("<f", 0.0))]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, ty, val in kv:
        out += s(key) + struct.pack("<I", ty) + val
    offset, datas = 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float16)
        out += s(name) + struct.pack("<I", a.ndim) + b"".join(struct.pack("<Q", d) for d in reversed(a.shape))
        out += struct.pack("<IQ", 1, offset)  # type 1 = F16
        datas.append(a.tobytes())
        offset += (len(datas[-1]) + 31) // 32 * 32
    out += b"\0" * ((32 - len(out) % 32) % 32)
    with open(path + ".tmp", "wb") as f:
        f.write(out)
        for d in datas:
            f.write(d + b"\0" * ((32 - len(d) % 32) % 32))
    os.replace(path + ".tmp", path)


def rope_permute(w, n_head):
    """llama.cpp's row order of q/k projections (its converter interleaves each head's halves)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def linear_weights(config):
    for layer in range(config["num_hidden_layers"]):
        for hf, gg in LINEAR.items():
            yield layer, f"model.layers.{layer}.{hf}.weight", f"blk.{layer}.{gg}.weight"


def svd_of_delta(base, expert, name):
    d = expert[name].astype(np.float64) - base[name].astype(np.float64)
    return np.linalg.svd(d, full_matrices=False)


def svd_study(base_dir, expert_dir, prefix, ranks):
    config = json.load(open(os.path.join(base_dir, "config.json")))
    base = read_safetensors(os.path.join(base_dir, "model.safetensors"))
    expert = read_safetensors(os.path.join(expert_dir, "model.safetensors"))
    probe = [1, 4, 8, 16, 32, 64, 128, 256]
    kept, per_kind, approx = {}, {}, {r: {} for r in ranks}
    for _, name, gguf in linear_weights(config):
        u, sv, vt = svd_of_delta(base, expert, name)
        e = sv ** 2
        kind = gguf.split(".")[2]
        for r in probe:
            for key in ("all", kind):
                k, t = kept.get((key, r), (0.0, 0.0))
                kept[(key, r)] = (k + e[:r].sum(), t + e.sum())
        for r in ranks:
            approx[r][name] = (base[name].astype(np.float64) + (u[:, :r] * sv[:r]) @ vt[:r]).astype(np.float32)
    others = [n for n in base if n not in approx[ranks[0]] and not np.array_equal(base[n], expert[n])]
    print(f"changed tensors that are not linear weights (kept whole): {len(others)}")
    print("share of ||D||^2 kept at rank r:")
    for key in ["all"] + sorted({k for k, _ in kept} - {"all"}):
        print(f"  {key:12s} " + "  ".join(f"r={r}: {kept[(key, r)][0] / kept[(key, r)][1]:.3f}" for r in probe))
    for r in ranks:
        out = f"{prefix}-r{r}-hf"
        os.makedirs(out, exist_ok=True)
        for f in os.listdir(expert_dir):
            if f != "model.safetensors":
                shutil.copy(os.path.join(expert_dir, f), out)
        tensors = dict(expert)
        tensors.update(approx[r])
        write_safetensors(os.path.join(out, "model.safetensors"), tensors)
        print("wrote", out)


def lora_tensors(config, rank, make):
    """make(name, gguf) -> (a [r, n_in], b [n_out, r]) in Hugging Face row order."""
    heads, kv_heads = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    tensors = {}
    for _, name, gguf in linear_weights(config):
        a, b = make(name, gguf)
        if gguf.endswith("attn_q.weight"):
            b = rope_permute(b, heads)
        elif gguf.endswith("attn_k.weight"):
            b = rope_permute(b, kv_heads)
        tensors[gguf + ".lora_a"] = a
        tensors[gguf + ".lora_b"] = b
    return tensors


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "svd" and len(sys.argv) == 6:
        svd_study(sys.argv[2], sys.argv[3], sys.argv[4], [int(r) for r in sys.argv[5].split(",")])
    elif cmd == "lora" and len(sys.argv) == 6:
        base_dir, expert_dir, rank, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
        config = json.load(open(os.path.join(base_dir, "config.json")))
        base = read_safetensors(os.path.join(base_dir, "model.safetensors"))
        expert = read_safetensors(os.path.join(expert_dir, "model.safetensors"))

        def make(name, _):
            # the singular values split evenly between the factors: both stay well inside F16's
            # normal range (a small fine-tune's B = U S alone would underflow to subnormals)
            u, sv, vt = svd_of_delta(base, expert, name)
            root = np.sqrt(sv[:rank])
            return vt[:rank] * root[:, None], u[:, :rank] * root
        write_lora_gguf(out, "llama", lora_tensors(config, rank, make))
    elif cmd == "random" and len(sys.argv) == 6:
        config = json.load(open(sys.argv[2]))
        rank, rng, out = int(sys.argv[3]), np.random.default_rng(int(sys.argv[4])), sys.argv[5]
        hidden, ff = config["hidden_size"], config["intermediate_size"]
        kv = hidden // config["num_attention_heads"] * config.get("num_key_value_heads", config["num_attention_heads"])
        shape = {"attn_q": (hidden, hidden), "attn_k": (kv, hidden), "attn_v": (kv, hidden),
                 "attn_output": (hidden, hidden), "ffn_gate": (ff, hidden), "ffn_up": (ff, hidden),
                 "ffn_down": (hidden, ff)}

        def make(_, gguf):
            n_out, n_in = shape[gguf.split(".")[2]]
            return (rng.standard_normal((rank, n_in)) * 1e-3, rng.standard_normal((n_out, rank)) * 1e-3)
        write_lora_gguf(out, "llama", lora_tensors(config, rank, make))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
