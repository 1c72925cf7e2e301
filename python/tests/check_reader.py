#!/usr/bin/python3
"""Checks python/ackpt_reader.py against checkpoints the C++ side wrote.

tests/python_reader_test.cc runs it:

  check_reader.py check EXPECT.json FILE...
      Every FILE (plain or .zst) must read back as the state EXPECT.json
      describes (tensors as dtype, shape and hex bytes; doubles as hex bits),
      verify(), and give the same values through every output form (numpy,
      bf16 as float32, torch if installed). Each FILE is also re-framed here
      into irregular zstd frames (the header region in its own first frame,
      odd frame sizes) and, with ackpt.version "2" and a recomputed header
      checksum, read again: the reader must follow the seek table, never a
      fixed chunk size.
  check_reader.py corrupt FILE...
      Every FILE is damaged: opening, reading or verifying it must raise
      ackpt_reader.CorruptionError; prints the message.

Exit status 0 when all is as expected, 1 otherwise.
"""

import json
import os
import struct
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import xxhash  # noqa: E402
import zstandard  # noqa: E402

import ackpt_reader  # noqa: E402

NUMPY = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32",
         "I64": "int64", "F16": "float16", "BF16": "uint16", "F32": "float32", "F64": "float64"}


class Mismatch(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise Mismatch(msg)


def tensor_bytes(t):
    if isinstance(t, np.ndarray):
        return np.ascontiguousarray(t).tobytes()
    import torch
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def compare(got, exp, path, form):
    where = "%s (%s)" % (path or "the root", form)
    ((tag, v),) = exp.items()
    if tag == "T":
        if form == "torch":
            import torch
            expect(isinstance(got, torch.Tensor), "%s: not a torch tensor: %r" % (where, type(got)))
            want = {"BOOL": "torch.bool", "U8": "torch.uint8", "I8": "torch.int8",
                    "I16": "torch.int16", "I32": "torch.int32", "I64": "torch.int64",
                    "F16": "torch.float16", "BF16": "torch.bfloat16", "F32": "torch.float32",
                    "F64": "torch.float64"}[v["dtype"]]
            expect(str(got.dtype) == want, "%s: dtype %s, expected %s" % (where, got.dtype, want))
            expect(list(got.shape) == v["shape"], "%s: shape %r" % (where, list(got.shape)))
            expect(tensor_bytes(got) == bytes.fromhex(v["hex"]), "%s: bytes differ" % where)
            return
        expect(isinstance(got, np.ndarray), "%s: not an ndarray: %r" % (where, type(got)))
        expect(list(got.shape) == v["shape"], "%s: shape %r, expected %r"
               % (where, list(got.shape), v["shape"]))
        raw = bytes.fromhex(v["hex"])
        if form == "bf16-float32" and v["dtype"] == "BF16":
            expect(got.dtype == np.float32, "%s: dtype %s, expected float32" % (where, got.dtype))
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            expect(got.tobytes() == bits.astype("<u4").tobytes(), "%s: bf16 -> float32 differs"
                   % where)
            return
        expect(got.dtype == np.dtype(NUMPY[v["dtype"]]), "%s: dtype %s, expected %s"
               % (where, got.dtype, NUMPY[v["dtype"]]))
        expect(tensor_bytes(got) == raw, "%s: bytes differ" % where)
        return
    if tag == "d":
        expect(isinstance(got, dict), "%s: %r is not a dict" % (where, type(got)))
        expect(list(got) == [k for k, _ in v], "%s: keys %r, expected %r"
               % (where, list(got), [k for k, _ in v]))
        for k, child in v:
            compare(got[k], child, (path + "/" if path else "") + k, form)
    elif tag == "l":
        expect(isinstance(got, list) and len(got) == len(v), "%s: %r is not a list of %d"
               % (where, type(got), len(v)))
        for i, child in enumerate(v):
            compare(got[i], child, "%s/%d" % (path, i), form)
    elif tag == "f":
        expect(type(got) is float, "%s: %r is not a float" % (where, got))
        bits = "%016x" % struct.unpack("<Q", struct.pack("<d", got))[0]
        # NaN keeps no payload (docs/FORMAT.md section 6): any NaN matches a NaN.
        if got != got:
            expect(v != v or int(v, 16) & 0x7FF0000000000000 == 0x7FF0000000000000,
                   "%s: NaN, expected bits %s" % (where, v))
        else:
            expect(bits == v, "%s: double bits %s, expected %s" % (where, bits, v))
    else:
        want_type = {"i": int, "b": bool, "s": str}[tag]
        expect(type(got) is want_type and got == v, "%s: %r, expected %r" % (where, got, v))


def check_file(path, exp):
    forms = [("numpy", {}), ("bf16-float32", {"bf16": "float32"})]
    try:
        import torch  # noqa: F401
        forms.append(("torch", {"as_torch": True}))
    except ImportError:
        print("torch not installed: skipping as_torch=True")
    for form, kwargs in forms:
        with ackpt_reader.open(path, **kwargs) as ckpt:
            expect(ckpt.is_ackpt, "%s: not recognized as an ackpt file" % path)
            expect(ckpt.metadata.get("epoch") == exp["metadata"]["epoch"], "user metadata")
            expect(ckpt.names == exp["data_order"], "%s: tensor names %r, expected %r"
                   % (path, ckpt.names, exp["data_order"]))
            compare(ckpt.state(), exp["tree"], "", form)
            # One tensor alone, through the frames that hold it.
            name = exp["data_order"][-1]
            ckpt.tensor(name)
            report = ckpt.verify()
            expect(report["tensors"] == len(exp["data_order"]), "verify() report %r" % report)
    return ckpt


def reframe(path, version, out):
    """Rewrites `path` (plain or .zst) as irregular zstd frames: the header
    region alone in the first frame, then frames of 1000, 70000, 3 and 50000
    bytes in turn; with `version` set in ackpt.version (same length) and the
    header checksum recomputed."""
    with ackpt_reader.open(path) as ckpt:
        plain = ckpt._read_logical(0, ckpt.logical_bytes)
        hb = ckpt.header_bytes
        meta = ckpt.metadata
    region = bytearray(plain[:hb])
    old = b'"ackpt.version":"%s"' % ckpt.version.encode()
    expect(region.count(old) == 1, "ackpt.version field not found once")
    region = region.replace(old, b'"ackpt.version":"%s"' % version.encode())
    field = b'"ackpt.header_xxh3":"%s"' % meta["ackpt.header_xxh3"].encode()
    zeroed = region.replace(field, b'"ackpt.header_xxh3":"' + b"0" * 16 + b'"')
    h = b"%016x" % xxhash.xxh3_64_intdigest(bytes(zeroed))
    region = zeroed.replace(b'"ackpt.header_xxh3":"' + b"0" * 16 + b'"',
                            b'"ackpt.header_xxh3":"' + h + b'"')
    stream = bytes(region) + plain[hb:]
    sizes, pos, cycle = [hb], hb, [1000, 70000, 3, 50000]
    while pos < len(stream):
        n = min(cycle[len(sizes) % len(cycle)], len(stream) - pos)
        sizes.append(n)
        pos += n
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True)
    frames, entries, pos = [], [], 0
    for n in sizes:
        chunk = stream[pos:pos + n]
        f = cctx.compress(chunk)
        frames.append(f)
        entries.append(struct.pack("<III", len(f), n, xxhash.xxh64_intdigest(chunk) & 0xFFFFFFFF))
        pos += n
    table = b"".join(entries) + struct.pack("<IBI", len(sizes), 0x80, 0x8F92EAB1)
    with open(out, "wb") as f:
        f.write(b"".join(frames))
        f.write(struct.pack("<II", 0x184D2A5E, len(table)))
        f.write(table)
    return len(sizes)


def main(argv):
    mode = argv[1]
    if mode == "check":
        exp = json.load(open(argv[2]))
        tmp = tempfile.mkdtemp()
        for path in argv[3:]:
            check_file(path, exp)
            with ackpt_reader.open(path) as c:
                grouped = sum(1 for f in c._frames
                              if c._pread(f.coffset, 4) == ackpt_reader.GROUPED_FRAME_MAGIC)
                if c.version == "3":
                    # Written by kZstdByteGrouped: its data frames are byte-grouped.
                    expect(c.metadata.get("ackpt.codec") == "bytegroup1", "ackpt.codec")
                    expect(grouped > 0, "%s: version 3 without byte-grouped frames" % path)
                    print("byte-grouped frames: %d of %d" % (grouped, c.num_frames))
                else:
                    expect(grouped == 0, "%s: byte-grouped frames in version %s" % (path, c.version))
                codec = c.metadata.get("ackpt.codec")
            # Version 3 keeps its codec key when re-framed; without it, a
            # version-3 file is refused (a codec this reader does not know).
            versions = ("1", "2", "3") if codec else ("1", "2")
            for version in versions:
                out = os.path.join(tmp, "reframed_v%s.safetensors.zst" % version)
                n = reframe(path, version, out)
                with ackpt_reader.open(out) as c:
                    expect(c.version == version and c.num_frames == n, "reframed file: %r" % c)
                check_file(out, exp)
            if not codec:
                out = os.path.join(tmp, "reframed_v3.safetensors.zst")
                reframe(path, "3", out)
                try:
                    ackpt_reader.open(out)
                    raise Mismatch("version 3 without ackpt.codec was accepted")
                except ackpt_reader.UnsupportedError:
                    pass
            # An unknown format version is refused, not guessed at.
            out = os.path.join(tmp, "reframed_v4.safetensors.zst")
            reframe(path, "4", out)
            try:
                ackpt_reader.open(out)
                raise Mismatch("ackpt.version 4 was accepted")
            except ackpt_reader.UnsupportedError:
                pass
            print("OK %s (and re-framed into irregular frames, versions %s)"
                  % (path, ", ".join(versions)))
        return 0
    if mode == "corrupt":
        for path in argv[2:]:
            try:
                with ackpt_reader.open(path) as ckpt:
                    ckpt.state()
                    ckpt.verify()
            except ackpt_reader.CorruptionError as e:
                print("RAISED %s" % e)
                continue
            print("NOT DETECTED %s" % path)
            return 1
        return 0
    print("unknown mode %r" % mode)
    return 2


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except Mismatch as e:
        print("MISMATCH: %s" % e)
        sys.exit(1)
