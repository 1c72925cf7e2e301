#!/usr/bin/python3
"""An independent reader for ackpt checkpoints, written from docs/FORMAT.md.

It uses only the standard library (struct, json) plus torch, xxhash and,
when installed, zstandard -- never ackpt or the `safetensors` package -- so it
checks that files written by ackpt are what the spec says they are.

  read_safetensors.py check FILE [--expect pattern] [--zst ZST] [--chunk-size N]
      Parses and validates an UNCOMPRESSED ackpt checkpoint: the header layout,
      every tensor's XXH3-64, the header checksum and the state tree.
      --expect pattern  also compares every value with the state that
                        tests/interop_test.cc writes (see expected_pattern_state).
      --zst ZST         also parses ZST's seek table, decompresses its frames
                        with the zstandard module and compares the result with
                        FILE byte for byte (skipped if zstandard is missing).
      --chunk-size N    with --zst: every frame but the last holds N bytes.
      --same-as FULL    also compares every value with those of FULL (another
                        checkpoint: e.g. a full save of the state an
                        incremental FILE references).
      References (ackpt.refs, docs/FORMAT.md section 15) are resolved: each
      referenced tensor is read from its holder, a plain or (with zstandard)
      compressed ackpt file in FILE's directory, and checked against the
      referenced XXH3-64.
  read_safetensors.py write FILE
      Writes a plain (foreign, non-ackpt) safetensors file of torch values that
      tests/interop_test.cc loads with ackpt::ReadStateDict.

Exits 0 when everything matches; otherwise prints what is wrong and exits 1.
"""

import argparse
import json
import math
import os
import struct
import sys

try:
    import torch
    import xxhash
except ImportError as e:  # the C++ test skips itself when these are missing
    print("read_safetensors.py: missing Python module: %s" % e, file=sys.stderr)
    sys.exit(3)

MAX_HEADER_BYTES = 100_000_000
MAX_FRAME_BYTES = 0x40000000
MAX_EXPANSION = 65536
MAX_FRAMES = 0x8000000
ZSTD_FRAME_MAGIC = 0xFD2FB528
SEEKABLE_SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_FOOTER_MAGIC = 0x8F92EAB1
MAX_TREE_DEPTH = 256

# safetensors dtype name -> (torch dtype, element size in bytes)
DTYPES = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "I16": (torch.int16, 2),
    "I32": (torch.int32, 4),
    "I64": (torch.int64, 8),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "F32": (torch.float32, 4),
    "F64": (torch.float64, 8),
}
DTYPE_NAMES = {v[0]: k for k, v in DTYPES.items()}

ACKPT_KEYS = ["ackpt.version", "ackpt.tree", "ackpt.xxh3", "ackpt.header_xxh3"]


class Mismatch(Exception):
    pass


def fail(msg):
    raise Mismatch(msg)


def expect(cond, msg):
    if not cond:
        fail(msg)


def hex64(v):
    return "%016x" % v


def is_hex64(s):
    return isinstance(s, str) and len(s) == 16 and all(c in "0123456789abcdef" for c in s)


def no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        fail("JSON object has duplicate keys: %r" % keys)
    return dict(pairs)  # insertion-ordered


def escape_key(key):
    return key.replace("%", "%25").replace("/", "%2F")


# ---------------------------------------------------------------------------
# The plain safetensors stream
# ---------------------------------------------------------------------------


class Checkpoint:
    """A parsed and validated uncompressed ackpt checkpoint."""

    def __init__(self, data, path):
        self.path = path
        self.data = data
        expect(sys.byteorder == "little", "this checker assumes a little-endian host")
        expect(len(data) >= 8, "file of %d bytes has no 8-byte header length" % len(data))
        expect(struct.unpack_from("<I", data, 0)[0] != ZSTD_FRAME_MAGIC,
               "file starts with the zstd frame magic: it is compressed, not plain")
        (n,) = struct.unpack_from("<Q", data, 0)
        expect(n <= MAX_HEADER_BYTES, "header length %d exceeds 100,000,000" % n)
        expect(8 + n <= len(data), "header length %d runs past the %d-byte file" % (n, len(data)))
        expect((8 + n) % 8 == 0, "8 + header length (%d) is not a multiple of 8" % (8 + n))
        self.header_len = n
        self.data_start = 8 + n
        self.region = data[:8 + n]
        text = data[8:8 + n]
        body = text.rstrip(b" ")
        expect(len(text) - len(body) < 8, "more than 7 bytes of padding")
        expect(body.endswith(b"}"), "JSON header does not end with '}' followed by spaces")
        try:
            header = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            fail("JSON header does not parse: %s" % e)
        expect(isinstance(header, dict), "JSON header is not an object")
        # Compact: no whitespace outside strings, so re-encoding compactly must
        # give back the same bytes (both escape the same characters).
        canonical = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        expect(canonical == body, "JSON header is not compact:\n  file:      %r\n  canonical: %r"
               % (body[:200], canonical[:200]))
        keys = list(header)
        expect(keys and keys[0] == "__metadata__", "__metadata__ is not the first key")
        self.metadata = header["__metadata__"]
        expect(isinstance(self.metadata, dict), "__metadata__ is not an object")
        for k, v in self.metadata.items():
            expect(isinstance(v, str), "__metadata__[%r] is not a string" % k)

        # Tensor entries, in header order, which ackpt makes the data order.
        self.tensors = []  # (name, dtype name, shape, begin, end)
        data_bytes = len(data) - self.data_start
        offset = 0
        last_esize = 8
        for name in keys[1:]:
            entry = header[name]
            what = "tensor %r" % name
            expect(name != "", "empty tensor name")
            expect(isinstance(entry, dict) and list(entry) == ["dtype", "shape", "data_offsets"],
                   "%s is not {dtype, shape, data_offsets} in that order: %r" % (what, entry))
            dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
            expect(dtype in DTYPES, "%s has unknown dtype %r" % (what, dtype))
            expect(isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape),
                   "%s has a bad shape %r" % (what, shape))
            expect(isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs),
                   "%s has bad data_offsets %r" % (what, offs))
            begin, end = offs
            expect(begin == offset, "%s starts at %d, expected %d (contiguous, in header order)"
                   % (what, begin, offset))
            esize = DTYPES[dtype][1]
            numel = math.prod(shape)
            expect(end - begin == numel * esize, "%s: %s x %r is %d bytes but data_offsets span %d"
                   % (what, dtype, shape, numel * esize, end - begin))
            expect(esize <= last_esize, "%s: element size %d after a smaller one (%d); ackpt orders "
                   "tensors by element size, largest first" % (what, esize, last_esize))
            expect((self.data_start + begin) % esize == 0, "%s is not aligned to its element size" % what)
            last_esize = esize
            offset = end
            self.tensors.append((name, dtype, shape, begin, end))
        expect(offset == data_bytes, "tensors cover %d bytes but the data section has %d"
               % (offset, data_bytes))
        self.refs = self._references()

    # ---- references (incremental checkpoints, section 15) ----------------------

    def _references(self):
        """{tensor name: (holder file, hex64)} from ackpt.refs."""
        text = self.metadata.get("ackpt.refs")
        if text is None:
            return {}
        try:
            by_file = json.loads(text, object_pairs_hook=no_duplicates)
        except ValueError as e:
            fail("ackpt.refs does not parse: %s" % e)
        expect(isinstance(by_file, dict), "ackpt.refs is not a JSON object")
        expect(json.dumps(by_file, separators=(",", ":"), ensure_ascii=False) == text,
               "ackpt.refs is not compact JSON")
        expect(list(by_file) == sorted(by_file, key=lambda k: k.encode("utf-8")),
               "ackpt.refs files are not in byte order")
        held = {t[0] for t in self.tensors}
        refs = {}
        for f, names in by_file.items():
            expect(f not in ("", ".", "..") and "/" not in f and "\0" not in f,
                   "ackpt.refs names %r, not a file name" % f)
            expect(isinstance(names, dict), "ackpt.refs[%r] is not an object" % f)
            expect(list(names) == sorted(names, key=lambda k: k.encode("utf-8")),
                   "ackpt.refs[%r] names are not in byte order" % f)
            for name, h in names.items():
                expect(is_hex64(h), "reference %r has checksum %r, not hex64" % (name, h))
                expect(name not in held, "tensor %r is both held and referenced" % name)
                expect(name not in refs, "tensor %r is referenced twice" % name)
                refs[name] = (f, h)
        return refs

    def holder(self, f):
        """The checkpoint in this file's directory that holds referenced tensors."""
        cache = self.__dict__.setdefault("_holders", {})
        if f not in cache:
            path = os.path.join(os.path.dirname(self.path) or ".", f)
            expect(os.path.exists(path), "referenced file %s does not exist" % path)
            raw = open(path, "rb").read()
            if len(raw) >= 4 and struct.unpack_from("<I", raw, 0)[0] == ZSTD_FRAME_MAGIC:
                try:
                    import zstandard
                except ImportError:
                    fail("referenced file %s is compressed and zstandard is missing" % path)
                raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
            h = Checkpoint(raw, path)
            h.check_ackpt_metadata()
            cache[f] = h
        return cache[f]

    def referenced_tensor(self, name):
        f, h = self.refs[name]
        holder = self.holder(f)
        expect(name not in holder.refs, "%s references %r in %s, which references it again "
               "(references never chain)" % (self.path, name, f))
        actual = hex64(xxhash.xxh3_64_intdigest(holder.tensor_bytes(name)))
        expect(actual == h, "referenced tensor %r: XXH3-64 in %s is %s but ackpt.refs says %s"
               % (name, f, actual, h))
        return holder.tensor(name)

    def tensor_bytes(self, name):
        for n, _, _, b, e in self.tensors:
            if n == name:
                return self.data[self.data_start + b:self.data_start + e]
        fail("no tensor %r" % name)

    def tensor(self, name):
        if name in self.refs:
            return self.referenced_tensor(name)
        for n, dtype, shape, b, e in self.tensors:
            if n == name:
                tdtype = DTYPES[dtype][0]
                if e == b:
                    return torch.empty(shape, dtype=tdtype)
                raw = bytearray(self.data[self.data_start + b:self.data_start + e])
                return torch.frombuffer(raw, dtype=tdtype).reshape(shape)
        fail("no tensor %r" % name)

    # ---- ackpt's metadata ---------------------------------------------------

    def check_ackpt_metadata(self):
        m = self.metadata
        keys = list(m)
        expect(m.get("format") == "pt", "__metadata__.format is %r, not 'pt'" % m.get("format"))
        expect(m.get("ackpt.version") in ("1", "2"),
               "ackpt.version is %r, not '1' or '2'" % m.get("ackpt.version"))
        # "format", user keys, ackpt's internal keys (e.g. ackpt.index), each
        # group in byte order, then the four fixed ackpt keys.
        def by_bytes(ks):
            return sorted(ks, key=lambda k: k.encode("utf-8"))
        user = [k for k in keys if k != "format" and not k.startswith("ackpt.")]
        internal = [k for k in keys if k.startswith("ackpt.") and k not in ACKPT_KEYS]
        expect(keys == ["format"] + by_bytes(user) + by_bytes(internal) + ACKPT_KEYS,
               "unexpected __metadata__ key order: %r" % keys)
        self.check_header_checksum()
        self.check_tensor_checksums()

    def check_header_checksum(self):
        stored = self.metadata["ackpt.header_xxh3"]
        expect(is_hex64(stored), "ackpt.header_xxh3 %r is not 16 lowercase hex digits" % stored)
        field = b'"ackpt.header_xxh3":"' + stored.encode() + b'"'
        count = self.region.count(field)
        expect(count == 1, "header checksum field occurs %d times, not once" % count)
        zeroed = self.region.replace(field, b'"ackpt.header_xxh3":"' + b"0" * 16 + b'"')
        actual = xxhash.xxh3_64_intdigest(zeroed)
        expect(actual == int(stored, 16), "header checksum mismatch: stored %s, computed %s"
               % (stored, hex64(actual)))

    def check_tensor_checksums(self):
        try:
            sums = json.loads(self.metadata["ackpt.xxh3"], object_pairs_hook=no_duplicates)
        except ValueError as e:
            fail("ackpt.xxh3 does not parse: %s" % e)
        expect(isinstance(sums, dict), "ackpt.xxh3 is not a JSON object")
        names = [t[0] for t in self.tensors]
        expect(list(sums) == names, "ackpt.xxh3 keys %r differ from the tensors %r (data order)"
               % (list(sums), names))
        expect(json.dumps(sums, separators=(",", ":"), ensure_ascii=False) == self.metadata["ackpt.xxh3"],
               "ackpt.xxh3 is not compact JSON")
        for name in names:
            expect(is_hex64(sums[name]), "checksum %r of %r is not 16 lowercase hex" % (sums[name], name))
            actual = hex64(xxhash.xxh3_64_intdigest(self.tensor_bytes(name)))
            expect(actual == sums[name], "tensor %r: XXH3-64 is %s but ackpt.xxh3 says %s"
                   % (name, actual, sums[name]))

    # ---- the state tree -------------------------------------------------------

    def decode_tree(self):
        text = self.metadata["ackpt.tree"]
        try:
            root = json.loads(text)  # key order inside nodes never matters: one key each
        except ValueError as e:
            fail("ackpt.tree does not parse: %s" % e)
        used = []
        expect(isinstance(root, dict) and list(root) == ["d"], "tree root is not a dict node")
        tree = self._node(root, "", 0, used)
        names = [t[0] for t in self.tensors]
        expect(len(used) == len(set(used)), "a tensor is referenced twice in the tree")
        expect(sorted(used) == sorted(names + list(self.refs)),
               "tree references %r but the file holds %r and references %r"
               % (sorted(used), sorted(names), sorted(self.refs)))
        used = [n for n in used if n not in self.refs]
        # Tensors are numbered in tree order; the file orders them by element
        # size (largest first), stably, so within one element size tree order holds.
        esize = {t[0]: DTYPES[t[1]][1] for t in self.tensors}
        expect(sorted(used, key=lambda n: -esize[n]) == names,
               "data order is not the stable sort of tree order by element size")
        return tree

    def _node(self, node, path, depth, used):
        where = path or "the root"
        expect(depth <= MAX_TREE_DEPTH, "tree deeper than %d at %s" % (MAX_TREE_DEPTH, where))
        expect(isinstance(node, dict) and len(node) == 1, "node at %s is not a one-key object" % where)
        ((tag, v),) = node.items()
        if tag == "T":
            expect(isinstance(v, str), "tensor reference at %s is not a string" % where)
            expect(v == path, "tensor at path %r is named %r" % (path, v))
            used.append(v)
            return ("T", self.tensor(v), v)
        if tag == "i":
            expect(type(v) is int and -2**63 <= v < 2**63, "int node at %s holds %r" % (where, v))
            return ("i", v)
        if tag == "f":
            if isinstance(v, str):
                expect(v in ("nan", "inf", "-inf"), "double node at %s holds string %r" % (where, v))
                return ("f", float(v))
            expect(type(v) in (int, float), "double node at %s holds %r" % (where, v))
            return ("f", float(v))
        if tag == "b":
            expect(type(v) is bool, "bool node at %s holds %r" % (where, v))
            return ("b", v)
        if tag == "s":
            expect(isinstance(v, str), "string node at %s holds %r" % (where, v))
            return ("s", v)
        if tag == "l":
            expect(isinstance(v, list), "list node at %s is not an array" % where)
            return ("l", [self._node(e, join(path, str(i)), depth + 1, used) for i, e in enumerate(v)])
        if tag == "d":
            expect(isinstance(v, list), "dict node at %s is not an array" % where)
            items, seen = [], set()
            for item in v:
                expect(isinstance(item, list) and len(item) == 2 and isinstance(item[0], str),
                       "dict item at %s is not a [key, node] pair: %r" % (where, item))
                key = item[0]
                expect(key != "" and key not in seen, "empty or duplicate key %r at %s" % (key, where))
                seen.add(key)
                items.append((key, self._node(item[1], join(path, escape_key(key)), depth + 1, used)))
            return ("d", items)
        fail("unknown node tag %r at %s" % (tag, where))


def join(prefix, component):
    return component if prefix == "" else prefix + "/" + component


# ---------------------------------------------------------------------------
# Expected values (mirrors tests/test_util.h PatternTensor and interop_test.cc)
# ---------------------------------------------------------------------------


def pattern(shape, dtype, seed):
    n = math.prod(shape)
    t = torch.arange(n, dtype=torch.int64).mul(7).add(seed).remainder(251).sub(100)
    if dtype == torch.bool:
        return t.remainder(2).eq(1).reshape(shape)
    if dtype.is_floating_point:
        return t.to(torch.float64).div(8).to(dtype).reshape(shape)
    if dtype == torch.uint8:
        return t.add(100).to(dtype).reshape(shape)
    return t.to(dtype).reshape(shape)


def P(dtype, shape, seed):
    return ("P", DTYPES[dtype][0], list(shape), seed)


def D(*items):
    return ("d", list(items))


def expected_pattern_state():
    """The state interop_test.cc's PatternState() writes, item for item."""
    return D(
        ("model", D(
            ("f32", P("F32", [4, 5], 1)),
            ("f64", P("F64", [3], 2)),
            ("f16", P("F16", [2, 3], 3)),
            ("bf16", P("BF16", [7], 4)),
            ("i64", P("I64", [2, 2], 5)),
            ("i32", P("I32", [5], 6)),
            ("i16", P("I16", [3, 1], 7)),
            ("i8", P("I8", [9], 8)),
            ("u8", P("U8", [4, 4], 9)),
            ("bool", P("BOOL", [10], 10)),
            ("scalar", P("F32", [], 11)),
            ("empty", P("F32", [0, 3], 12)),
            ("big", P("F32", [300, 257], 13)),
            ("na\u00efve", P("BF16", [2, 2], 14)),
        )),
        ("weird/key%", P("I32", [2], 15)),
        ("optimizer", D(
            ("step", ("i", 1234)),
            ("lr", ("f", 3e-4)),
            ("neg", ("i", -7)),
            ("max", ("i", 2**63 - 1)),
            ("min", ("i", -2**63)),
            ("amsgrad", ("b", True)),
            ("off", ("b", False)),
            ("name", ("s", 'adam "\u00fc" \\ \n\t')),
            ("nan", ("f", float("nan"))),
            ("inf", ("f", float("inf"))),
            ("ninf", ("f", float("-inf"))),
            ("neg_zero", ("f", -0.0)),
            ("whole", ("f", 2.0)),
            ("third", ("f", 1.0 / 3.0)),
            ("sum", ("f", 0.1 + 0.2)),
            ("denormal", ("f", 5e-324)),
            ("huge", ("f", 1e300)),
            ("betas", ("l", [("f", 0.9), ("f", 0.999)])),
            ("state", ("l", [
                D(("exp_avg", P("F32", [4, 5], 16)), ("step", ("i", 3))),
                D(),
            ])),
        )),
        ("empty_dict", D()),
        ("empty_list", ("l", [])),
    )


def tensor_bytes(t):
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def compare(actual, want, path):
    where = path or "the root"
    if want[0] == "P":
        _, dtype, shape, seed = want
        expect(actual[0] == "T", "%s: expected a tensor, found %r" % (where, actual[0]))
        t = actual[1]
        expect(t.dtype == dtype, "%s: dtype %s, expected %s" % (where, t.dtype, dtype))
        expect(list(t.shape) == shape, "%s: shape %r, expected %r" % (where, list(t.shape), shape))
        e = pattern(shape, dtype, seed)
        expect(torch.equal(t, e), "%s: values differ:\n  got      %s\n  expected %s" % (where, t, e))
        expect(tensor_bytes(t) == tensor_bytes(e), "%s: bytes differ" % where)
        return
    expect(actual[0] == want[0], "%s: node kind %r, expected %r" % (where, actual[0], want[0]))
    kind = want[0]
    if kind == "d":
        got_keys = [k for k, _ in actual[1]]
        want_keys = [k for k, _ in want[1]]
        expect(got_keys == want_keys, "%s: keys %r, expected %r" % (where, got_keys, want_keys))
        for (k, a), (_, w) in zip(actual[1], want[1]):
            compare(a, w, join(path, escape_key(k)))
    elif kind == "l":
        expect(len(actual[1]) == len(want[1]), "%s: list of %d, expected %d"
               % (where, len(actual[1]), len(want[1])))
        for i, (a, w) in enumerate(zip(actual[1], want[1])):
            compare(a, w, join(path, str(i)))
    elif kind == "f":
        # bitwise: NaN == NaN, -0.0 != 0.0
        expect(struct.pack("<d", actual[1]) == struct.pack("<d", want[1]),
               "%s: double %r, expected %r" % (where, actual[1], want[1]))
    else:
        expect(type(actual[1]) is type(want[1]) and actual[1] == want[1],
               "%s: %r, expected %r" % (where, actual[1], want[1]))


def compare_trees(a, b, path):
    """Two decoded trees: the same structure, values and tensor bytes."""
    where = path or "the root"
    expect(a[0] == b[0], "%s: node kind %r vs %r" % (where, a[0], b[0]))
    if a[0] == "T":
        expect(a[1].dtype == b[1].dtype and list(a[1].shape) == list(b[1].shape),
               "%s: %s %r vs %s %r" % (where, a[1].dtype, list(a[1].shape), b[1].dtype, list(b[1].shape)))
        expect(tensor_bytes(a[1]) == tensor_bytes(b[1]), "%s: tensor bytes differ" % where)
    elif a[0] == "d":
        expect([k for k, _ in a[1]] == [k for k, _ in b[1]], "%s: keys differ" % where)
        for (k, x), (_, y) in zip(a[1], b[1]):
            compare_trees(x, y, join(path, escape_key(k)))
    elif a[0] == "l":
        expect(len(a[1]) == len(b[1]), "%s: list lengths differ" % where)
        for i, (x, y) in enumerate(zip(a[1], b[1])):
            compare_trees(x, y, join(path, str(i)))
    elif a[0] == "f":
        expect(struct.pack("<d", a[1]) == struct.pack("<d", b[1]), "%s: %r vs %r" % (where, a[1], b[1]))
    else:
        expect(a[1] == b[1], "%s: %r vs %r" % (where, a[1], b[1]))


# ---------------------------------------------------------------------------
# The compressed layout (zstd seekable format)
# ---------------------------------------------------------------------------


def check_compressed(zst_path, plain, chunk_size):
    try:
        import zstandard
    except ImportError:
        print("zstandard module not installed: skipping the compressed-file check")
        return
    data = open(zst_path, "rb").read()
    expect(len(data) >= 17, "compressed file too small")
    expect(struct.unpack_from("<I", data, 0)[0] == ZSTD_FRAME_MAGIC, "compressed file lacks the zstd magic")
    num_frames, descriptor, magic = struct.unpack_from("<IBI", data, len(data) - 9)
    expect(magic == SEEKABLE_FOOTER_MAGIC, "seek table footer magic is %#x" % magic)
    expect(descriptor == 0x80, "seek table descriptor is %#x, expected 0x80 (checksums)" % descriptor)
    expect(0 < num_frames <= MAX_FRAMES, "frame count %d" % num_frames)
    table_bytes = 8 + 12 * num_frames + 9
    expect(table_bytes <= len(data), "seek table larger than the file")
    tstart = len(data) - table_bytes
    skip_magic, frame_size = struct.unpack_from("<II", data, tstart)
    expect(skip_magic == SEEKABLE_SKIPPABLE_MAGIC, "skippable frame magic is %#x" % skip_magic)
    expect(frame_size == table_bytes - 8, "skippable frame size %d, expected %d" % (frame_size, table_bytes - 8))
    dctx = zstandard.ZstdDecompressor()
    out = bytearray()
    pos = 0
    for i in range(num_frames):
        csize, dsize, checksum = struct.unpack_from("<III", data, tstart + 8 + 12 * i)
        expect(csize > 0, "frame %d has compressed size 0" % i)
        expect(dsize <= MAX_FRAME_BYTES and dsize <= csize * MAX_EXPANSION, "frame %d size %d" % (i, dsize))
        # Format version 2: frame 0 is the header region (8 + N bytes of the
        # plain stream), then the data section in chunk_size frames.
        header_region = 8 + struct.unpack_from("<Q", plain, 0)[0]
        if i == 0:
            expect(dsize == header_region, "frame 0 holds %d bytes, not the %d-byte header region"
                   % (dsize, header_region))
        elif chunk_size:
            if i + 1 < num_frames:
                expect(dsize == chunk_size, "frame %d holds %d bytes, not chunk_size %d" % (i, dsize, chunk_size))
            else:
                expect(0 < dsize <= chunk_size, "last frame holds %d bytes" % dsize)
        frame = data[pos:pos + csize]
        expect(struct.unpack_from("<I", frame, 0)[0] == ZSTD_FRAME_MAGIC, "frame %d lacks the zstd magic" % i)
        params = zstandard.get_frame_parameters(frame)
        expect(params.content_size == dsize, "frame %d header says %d bytes, seek table %d"
               % (i, params.content_size, dsize))
        expect(params.has_checksum, "frame %d has no content checksum" % i)
        raw = dctx.decompress(frame)
        expect(len(raw) == dsize, "frame %d decompressed to %d bytes, expected %d" % (i, len(raw), dsize))
        got = xxhash.xxh64_intdigest(raw) & 0xFFFFFFFF
        expect(got == checksum, "frame %d checksum %#x, seek table %#x" % (i, got, checksum))
        out += raw
        pos += csize
    expect(pos == tstart, "frames cover %d bytes but %d precede the seek table" % (pos, tstart))
    expect(bytes(out) == plain, "decompressed frames differ from the plain file")
    # What `zstd -d` does: decode every frame in turn, skipping the skippable one.
    whole = dctx.stream_reader(data, read_across_frames=True).read()
    expect(whole == plain, "streaming decompression differs from the plain file")
    print("compressed: %d frames, %d -> %d bytes, identical to the plain file"
          % (num_frames, len(data), len(out)))


# ---------------------------------------------------------------------------
# Writing a foreign safetensors file
# ---------------------------------------------------------------------------


def foreign_tensors():
    """(name, tensor) in data order; interop_test.cc checks the same list."""
    special = torch.tensor([0.5, -0.0, float("inf"), float("-inf"), float("nan")], dtype=torch.float32)
    return [
        ("mask", pattern([3], torch.bool, 21)),  # 3 bytes first: later tensors are unaligned
        ("embed.weight", pattern([4, 3], torch.float32, 22)),
        ("layers.0/attn.bias", pattern([5], torch.bfloat16, 23)),
        ("step", pattern([], torch.int64, 24)),
        ("ids", pattern([2, 3], torch.int32, 25)),
        ("half", pattern([3], torch.float16, 26)),
        ("double", pattern([2], torch.float64, 27)),
        ("small", pattern([6], torch.int8, 28)),
        ("short", pattern([2], torch.int16, 29)),
        ("bytes", pattern([4], torch.uint8, 30)),
        ("nothing", pattern([2, 0], torch.float32, 31)),
        ("special", special),
    ]


def write_foreign(path):
    entries = []
    blobs = []
    offset = 0
    for name, t in foreign_tensors():
        b = tensor_bytes(t)
        entries.append((name, {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                               "data_offsets": [offset, offset + len(b)]}))
        blobs.append(b)
        offset += len(b)
    # Header key order differs from data order: readers must go by the offsets.
    header = {"__metadata__": {"format": "pt", "source": "read_safetensors.py"}}
    for name, entry in reversed(entries):
        header[name] = entry
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    print("wrote %s: %d tensors, %d data bytes" % (path, len(entries), offset))


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check")
    c.add_argument("file")
    c.add_argument("--expect", choices=["pattern"])
    c.add_argument("--zst")
    c.add_argument("--chunk-size", type=int, default=0)
    c.add_argument("--same-as")
    w = sub.add_parser("write")
    w.add_argument("file")
    args = ap.parse_args()
    try:
        if args.cmd == "write":
            write_foreign(args.file)
            return 0
        plain = open(args.file, "rb").read()
        ckpt = Checkpoint(plain, args.file)
        ckpt.check_ackpt_metadata()
        tree = ckpt.decode_tree()
        if args.expect == "pattern":
            compare(tree, expected_pattern_state(), "")
        if args.zst:
            check_compressed(args.zst, plain, args.chunk_size)
        if args.same_as:
            other = Checkpoint(open(args.same_as, "rb").read(), args.same_as)
            other.check_ackpt_metadata()
            compare_trees(tree, other.decode_tree(), "")
        print("OK %s: %d tensors, %d references, header %d bytes, data %d bytes%s"
              % (args.file, len(ckpt.tensors), len(ckpt.refs), ckpt.data_start,
                 len(plain) - ckpt.data_start,
                 ", values as expected" if args.expect or args.same_as else ""))
        return 0
    except Mismatch as e:
        print("MISMATCH in %s: %s" % (args.file, e), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
