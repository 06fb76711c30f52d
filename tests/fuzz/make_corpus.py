#!/usr/bin/env python3
"""Writes the seed corpora under corpus/<target>/: small valid files plus hand-made corrupt ones.
Run from anywhere; the output is committed (it is tiny), so this only documents how it was made."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# ---- .npy
def npy(descr, shape, payload, fortran=False, version=1, pad=True):
    tup = "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
    d = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }" % (descr, "True" if fortran else "False", tup)
    pre = 10 if version == 1 else 12
    total = pre + len(d) + 1
    if pad: total = (total + 63) // 64 * 64
    hl = total - pre
    head = b"\x93NUMPY" + bytes([version, 0]) + (struct.pack("<H", hl) if version == 1 else struct.pack("<I", hl))
    return head + (d + " " * (hl - len(d) - 1) + "\n").encode() + payload

put("npy", "f4_2x3", npy("<f4", (2, 3), struct.pack("<6f", *range(6))))
put("npy", "f8_3", npy("<f8", (3,), struct.pack("<3d", 1, 2, 3)))
put("npy", "f4_be_fortran_2x2", npy(">f4", (2, 2), struct.pack(">4f", 1, 2, 3, 4), fortran=True))
put("npy", "f8_v2_scalar", npy("<f8", (), struct.pack("<d", 7), version=2))
put("npy", "f4_v3_empty_0x5", npy("<f4", (0, 5), b"", version=3))
put("npy", "bad_truncated", npy("<f4", (4,), struct.pack("<3f", 1, 2, 3)))
put("npy", "bad_trailing", npy("<f4", (1,), struct.pack("<2f", 1, 2)))
put("npy", "bad_dtype_i4", npy("<i4", (1,), struct.pack("<i", 1)))
put("npy", "bad_overflow_shape", npy("<f8", (2**62, 8), b""))
put("npy", "bad_huge_extent", npy("<f4", (99999999999999999999,), b""))
put("npy", "bad_header_len", b"\x93NUMPY\x01\x00\xff\xff{'descr'")
put("npy", "bad_magic", b"\x92NUMPY\x01\x00\x00\x00")

# ---- safetensors projection set
def safetensors(meta, tensors):
    header, blobs, off = {}, [], 0
    if meta is not None: header["__metadata__"] = meta
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(blob)]}
        off += len(blob); blobs.append(blob)
    js = json.dumps(header).encode()
    js += b" " * ((8 - (8 + len(js)) % 8) % 8)
    return struct.pack("<Q", len(js)) + js + b"".join(blobs)

def meta(layers=1, kv=1, d=2, **kw):
    m = {"aqua.format": "projection_set", "aqua.format_version": "1", "aqua.layers": str(layers),
         "aqua.kv_heads": str(kv), "aqua.d": str(d), "aqua.group_size": "1", "aqua.source": "queries",
         "aqua.centered": "false", "aqua.vectors_seen": "10", "model": "seed"}
    m.update(kw); return m

eye2 = struct.pack("<4f", 1, 0, 0, 1)
sv2 = struct.pack("<2d", 2, 1)
def heads(layers, kv, basis=eye2, sv=sv2, d=2):
    t = []
    for l in range(layers):
        for h in range(kv):
            t.append(("layers.%d.kv_heads.%d.basis" % (l, h), "F32", (d, d), basis))
            t.append(("layers.%d.kv_heads.%d.singular_values" % (l, h), "F64", (d,), sv))
    return t
put("projection", "valid_1x1_d2", safetensors(meta(), heads(1, 1)))
put("projection", "valid_2x2_d2", safetensors(meta(2, 2), heads(2, 2)))
put("projection", "valid_d1", safetensors(meta(d=1), heads(1, 1, struct.pack("<f", -1), struct.pack("<d", 3), 1)))
put("projection", "bad_not_orthogonal", safetensors(meta(), heads(1, 1, struct.pack("<4f", 1, 1, 0, 1))))
put("projection", "bad_increasing_sv", safetensors(meta(), heads(1, 1, eye2, struct.pack("<2d", 1, 2))))
put("projection", "bad_missing_tensor", safetensors(meta(1, 2), heads(1, 1)))
put("projection", "bad_huge_layers", safetensors(meta(1048576, 1048576), heads(1, 1)))
put("projection", "bad_dtype", safetensors(meta(), [("layers.0.kv_heads.0.basis", "F64", (2, 2), struct.pack("<4d", 1, 0, 0, 1)),
                                                     ("layers.0.kv_heads.0.singular_values", "F64", (2,), sv2)]))
put("projection", "bad_overflow_shape", safetensors(None, [("x", "F64", (2**62, 8), b"")]))
put("projection", "bad_header_len", struct.pack("<Q", 2**63) + b"{}")
put("projection", "bad_truncated", safetensors(meta(), heads(1, 1))[:-5])

# ---- llama2.c checkpoint
def checkpoint(dim=2, hidden=2, layers=1, heads_=1, kv=1, vocab=3, seq=2, value=0.5, trunc=0, extra=b""):
    hd = dim // heads_; kvd = kv * hd; v = abs(vocab)
    n = v*dim + layers*(dim + 2*dim*dim + 2*kvd*dim + dim + 3*hidden*dim) + dim + 2*seq*(hd//2)
    if vocab < 0: n += v*dim
    b = struct.pack("<7i", dim, hidden, layers, heads_, kv, vocab, seq) + struct.pack("<%df" % n, *([value]*n)) + extra
    return b[:len(b) - trunc]
put("checkpoint", "valid_shared", checkpoint())
put("checkpoint", "valid_unshared_gqa", checkpoint(dim=4, heads_=2, kv=1, vocab=-3))
put("checkpoint", "bad_truncated", checkpoint(trunc=3))
put("checkpoint", "bad_trailing", checkpoint(extra=b"\0\0\0\0"))
put("checkpoint", "bad_nan", checkpoint(value=float("nan")))
put("checkpoint", "bad_header_huge", struct.pack("<7i", 65536, 1048576, 1024, 2, 1, -(2**31), 1048576))
put("checkpoint", "bad_odd_head", struct.pack("<7i", 3, 2, 1, 1, 1, 3, 2))
put("checkpoint", "bad_short", b"\1\0\0\0")

# ---- tokenizer (first byte: the model's vocab_size)
def tokenizer(pieces, maxlen=None, scores=None):
    maxlen = maxlen if maxlen is not None else max(1, max(len(p) for p in pieces))
    b = struct.pack("<i", maxlen)
    for i, p in enumerate(pieces):
        b += struct.pack("<fi", (scores or [float(-i)] * len(pieces))[i], len(p)) + p
    return b
base = [b"<unk>", b"<s>", b"</s>"] + [("<0x%02X>" % i).encode() for i in range(3)] + [b" ", b"O", b"n", b"On", b" On", b"ce"]
put("tokenizer", "valid_12", bytes([len(base)]) + tokenizer(base))
put("tokenizer", "valid_3", bytes([3]) + tokenizer(base[:3]))
put("tokenizer", "bad_vocab_mismatch", bytes([5]) + tokenizer(base))
put("tokenizer", "bad_truncated", bytes([len(base)]) + tokenizer(base)[:-2])
put("tokenizer", "bad_length", bytes([3]) + struct.pack("<i", 4) + struct.pack("<fi", 0, 100) + b"x" * 24)
put("tokenizer", "bad_maxlen", bytes([3]) + struct.pack("<i", -1))
put("tokenizer", "bad_nan_score", bytes([3]) + tokenizer(base[:3], scores=[float("nan")] * 3))
