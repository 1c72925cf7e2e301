#!/usr/bin/python3
"""Read ackpt checkpoints in Python, without ackpt or LibTorch.

ackpt writes safetensors files, plain (``*.safetensors``) or cut into
independent zstd frames with a seek table (``*.safetensors.zst``), with a
state tree and checksums in the header's ``__metadata__`` (docs/FORMAT.md).
This module reads both layouts, checks every checksum and returns the
tensors as numpy arrays (or torch tensors) and the saved state as nested
dicts and lists::

    import ackpt_reader

    with ackpt_reader.open("checkpoints/model_240.safetensors.zst") as ckpt:
        print(ckpt.metadata["ackpt.index"], ckpt.version, len(ckpt.infos))
        w = ckpt.tensor("module_interface_state/tok.weight")   # one tensor
        state = ckpt.state()          # {"module_interface_state": {...}, ...}
        step = state["trainer_backend_state"]["global_step_completed"]
        ckpt.verify()                 # every checksum; raises CorruptionError

Requirements: Python 3.8+, numpy, xxhash (python3-xxhash; checksums) and,
for compressed files, zstandard (python3-zstandard). torch is optional.

Values:

* Tensors are numpy arrays of the file's dtype and shape (little-endian,
  C order), or torch tensors with ``as_torch=True``.
* ``BF16`` has no numpy dtype. By default (``bf16="uint16"``) it is returned
  as an ``np.uint16`` array holding the raw bfloat16 bits (lossless; turn it
  into float32 with ``(a.astype(np.uint32) << 16).view(np.float32)``);
  ``bf16="float32"`` returns that float32 array directly (exact, since every
  bfloat16 is a float32). With ``as_torch=True`` it is a ``torch.bfloat16``
  tensor.
* ``F8_E4M3`` / ``F8_E5M2`` are returned as ``np.uint8`` raw bits (numpy has
  no float8), or as ``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` with
  ``as_torch=True`` on torch >= 2.1.
* The state tree: dict nodes are Python dicts (insertion order kept), lists
  are lists, and leaves are tensors, ``int``, ``float`` (``nan``/``inf``
  included), ``bool`` and ``str``.
* A plain safetensors file not written by ackpt ("foreign": no
  ``ackpt.version``) has no tree and no checksums: ``state()`` returns a flat
  dict of its tensors by name, in data order.

Checks: opening a file runs the structural checks of docs/FORMAT.md
section 10 (seek table, header length, JSON, dtypes, shapes, offsets) and
verifies the header checksum; reading a tensor verifies its XXH3-64 and the
XXH64 checksums of the zstd frames it decodes (unless
``verify_checksums=False``); ``verify()`` checks every checksum in the file
while holding at most one frame (or 16 MiB) in memory. Failures raise
``CorruptionError`` (a damaged or truncated file) or ``UnsupportedError``
(an unknown dtype, an ackpt format version other than 1 to 3, a codec other
than ``bytegroup1``), both
subclasses of ``AckptError``, with the path and what is wrong.

Format versions: ``__metadata__["ackpt.version"]`` ``"1"``, ``"2"`` and
``"3"`` are read. Version 2 puts the header region of a compressed file in its
own first zstd frame; version 3 (``ackpt.codec`` ``"bytegroup1"``, written by
``Compression::kZstdByteGrouped`` / ``kAuto``) may store data frames as
byte-grouped frames (docs/FORMAT.md section 14), which this reader decodes
with numpy and zstandard. This reader never assumes where frames start or how
large they are, it follows the seek table.

Incremental checkpoints (docs/FORMAT.md section 15) hold only the tensors
that changed; ``__metadata__["ackpt.refs"]`` names, for each other tensor,
the file in the same directory that holds it and its XXH3-64. Opening such a
file opens each referenced file's header and checks that it holds the
tensor with that checksum (``CorruptionError`` otherwise, e.g. when the base
was deleted); ``tensor()``, ``tensors()`` and ``state()`` read referenced
tensors from there, ``verify()`` checks those files too, and
``references`` maps each referenced tensor's name to its file.

Command line: ``python3 ackpt_reader.py FILE... [--verify] [--json]`` lists
the tensors of each file (and with ``--verify`` checks every checksum);
exit status 0, or 1 if a file is unreadable or corrupt.
"""

import builtins
import bisect
import json
import math
import os
import struct
import sys

import numpy as np

__all__ = [
    "open",
    "Checkpoint",
    "TensorInfo",
    "AckptError",
    "CorruptionError",
    "UnsupportedError",
    "SUPPORTED_VERSIONS",
]
__version__ = "1.0"

# Format versions this reader understands (__metadata__["ackpt.version"]).
SUPPORTED_VERSIONS = ("1", "2", "3")

# Limits of docs/FORMAT.md (src/format/constants.h).
MAX_HEADER_BYTES = 100_000_000
MAX_FRAME_BYTES = 0x40000000
MAX_EXPANSION = 65536
MAX_FRAMES = 0x8000000
MAX_TREE_DEPTH = 256
ZSTD_FRAME_MAGIC = 0xFD2FB528
SEEKABLE_SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_FOOTER_MAGIC = 0x8F92EAB1
# Byte-grouped frames (format version 3, docs/FORMAT.md section 14).
GROUPED_FRAME_MAGIC = b"AKBG"
GROUPED_FRAME_VERSION = 1
CODEC_BYTE_GROUPED = "bytegroup1"
READ_BLOCK = 16 << 20

# safetensors dtype name -> (numpy dtype of the stored bytes, element size)
_DTYPES = {
    "BOOL": (np.dtype(np.bool_), 1),
    "U8": (np.dtype(np.uint8), 1),
    "I8": (np.dtype(np.int8), 1),
    "I16": (np.dtype("<i2"), 2),
    "I32": (np.dtype("<i4"), 4),
    "I64": (np.dtype("<i8"), 8),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # raw bits: numpy has no bfloat16
    "F32": (np.dtype("<f4"), 4),
    "F64": (np.dtype("<f8"), 8),
    "F8_E4M3": (np.dtype(np.uint8), 1),  # raw bits
    "F8_E5M2": (np.dtype(np.uint8), 1),
}

_ACKPT_KEYS = ("ackpt.version", "ackpt.tree", "ackpt.xxh3", "ackpt.header_xxh3")


class AckptError(Exception):
    """Base class of the errors this module raises."""


class CorruptionError(AckptError):
    """The file is malformed, truncated or fails a checksum."""


class UnsupportedError(AckptError):
    """The file is valid but uses something this reader does not support."""


class TensorInfo:
    """One tensor's header entry: name, dtype, shape, byte range and checksum."""

    __slots__ = ("name", "dtype", "shape", "begin", "end", "xxh3")

    def __init__(self, name, dtype, shape, begin, end):
        self.name = name        # flattened tree path, e.g. "optimizer/state/0/exp_avg"
        self.dtype = dtype      # safetensors dtype name, e.g. "F32"
        self.shape = shape      # tuple of ints; () for a scalar
        self.begin = begin      # data_offsets, relative to the start of the tensor data
        self.end = end
        self.xxh3 = None        # stored XXH3-64 as 16 hex digits (ackpt files), else None

    @property
    def nbytes(self):
        return self.end - self.begin

    def __repr__(self):
        return "TensorInfo(%r, %s, %r, %d bytes)" % (self.name, self.dtype, self.shape, self.nbytes)


def open(path, *, verify_checksums=True, as_torch=False, bf16="uint16"):  # noqa: A001
    """Opens and validates the checkpoint at `path`; returns a Checkpoint.

    verify_checksums: check tensor and frame checksums when reading (default
        True); the header checksum is always checked.
    as_torch: return torch tensors instead of numpy arrays (needs torch).
    bf16: "uint16" (raw bits, default) or "float32" (exact conversion) for
        BF16 tensors returned as numpy arrays.
    """
    return Checkpoint(path, verify_checksums=verify_checksums, as_torch=as_torch, bf16=bf16)


def _xxhash():
    try:
        import xxhash
    except ImportError:
        raise AckptError("checking checksums needs the xxhash module (Debian: python3-xxhash; "
                         "pip: xxhash), or open with verify_checksums=False") from None
    return xxhash


def _zstandard(path):
    try:
        import zstandard
    except ImportError:
        raise AckptError("%s is compressed: reading it needs the zstandard module (Debian: "
                         "python3-zstandard; pip: zstandard)" % path) from None
    return zstandard


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError("duplicate key %r" % k)
        out[k] = v
    return out


def _is_hex64(s):
    return isinstance(s, str) and len(s) == 16 and all(c in "0123456789abcdef" for c in s)


def _is_uint(v):
    return type(v) is int and v >= 0


class _Frame:
    __slots__ = ("csize", "dsize", "checksum", "coffset", "doffset")

    def __init__(self, csize, dsize, checksum, coffset, doffset):
        self.csize, self.dsize, self.checksum = csize, dsize, checksum
        self.coffset, self.doffset = coffset, doffset


class Checkpoint:
    """An open ackpt (or plain safetensors) checkpoint file. See the module doc."""

    def __init__(self, path, *, verify_checksums=True, as_torch=False, bf16="uint16",
                 _resolve_references=True):
        if bf16 not in ("uint16", "float32"):
            raise ValueError("bf16 must be 'uint16' or 'float32', got %r" % (bf16,))
        if as_torch:
            try:
                import torch  # noqa: F401
            except ImportError:
                raise AckptError("as_torch=True needs torch") from None
        self.path = os.fspath(path)
        self.verify_checksums = verify_checksums
        self.as_torch = as_torch
        self.bf16 = bf16
        try:
            self._file = builtins.open(self.path, "rb")
        except FileNotFoundError:
            raise AckptError("'%s': no such file" % self.path) from None
        except OSError as e:
            raise AckptError("'%s': %s" % (self.path, e.strerror or e)) from None
        self._frame_cache = {}
        self._holders = {}  # referenced file name -> Checkpoint
        self.references = {}  # referenced tensor name -> file name
        try:
            self._open()
            if _resolve_references:
                self._resolve_references()
        except BaseException:
            self.close()
            raise

    # ---- public API ---------------------------------------------------------

    #: True if the file is zstd-compressed (seekable frames), False if plain.
    compressed = False
    #: Bytes on disk, and of the plain safetensors stream.
    file_bytes = 0
    logical_bytes = 0
    #: Bytes of the header region (8-byte length + JSON + padding).
    header_bytes = 0

    @property
    def num_frames(self):
        """Number of zstd frames (0 for a plain file)."""
        return len(self._frames)

    @property
    def is_ackpt(self):
        """True when ackpt wrote the file (it has a state tree and checksums)."""
        return self.version is not None

    @property
    def names(self):
        """Names of the tensors this file holds, in data order, then the
        referenced ones (incremental checkpoints), by name."""
        return [t.name for t in self.infos] + sorted(self.references)

    def tensor(self, name):
        """One tensor by name, reading only the bytes (or frames) that hold it
        (a referenced tensor: in the file that holds it)."""
        if name in self.references:
            return self._holders[self.references[name]].tensor(name)
        info = self._by_name.get(name)
        if info is None:
            raise KeyError("no tensor %r in '%s'" % (name, self.path))
        return self._convert(info, self._read_tensor_bytes(info))

    def tensors(self, names=None):
        """A dict name -> tensor (all tensors in `names` order, held ones in
        data order first by default)."""
        return {n: self.tensor(n) for n in (self.names if names is None else names)}

    def state(self):
        """The saved state: nested dicts/lists of tensors and scalars."""
        tensors = self.tensors()
        if not self.is_ackpt:
            return tensors
        return self._build(self._tree, tensors)

    def verify(self):
        """Checks every checksum in the file; raises CorruptionError on the first
        failure. Returns {"tensors": n, "frames": f, "logical_bytes": L}."""
        xxhash = _xxhash()
        hashers = [xxhash.xxh3_64() for _ in self.infos]
        order = sorted(range(len(self.infos)), key=lambda i: self.infos[i].begin)
        if self.compressed:
            # Decode every frame once, in order, feeding each tensor's hash.
            pos_tensor = 0
            for i, f in enumerate(self._frames):
                raw = self._decode_frame(i, check=True, cache=False)
                start, end = f.doffset, f.doffset + f.dsize
                while pos_tensor < len(order):
                    t = self.infos[order[pos_tensor]]
                    tb, te = self.header_bytes + t.begin, self.header_bytes + t.end
                    lo, hi = max(start, tb), min(end, te)
                    if lo < hi:
                        hashers[order[pos_tensor]].update(raw[lo - start:hi - start])
                    if te <= end:
                        pos_tensor += 1
                    else:
                        break
        else:
            for i in order:
                t = self.infos[i]
                off = self.header_bytes + t.begin
                while off < self.header_bytes + t.end:
                    n = min(READ_BLOCK, self.header_bytes + t.end - off)
                    hashers[i].update(self._pread(off, n))
                    off += n
        for t, h in zip(self.infos, hashers):
            if t.xxh3 is not None and h.hexdigest() != t.xxh3:
                self._corrupt("checksum mismatch in tensor '%s' (XXH3-64 %s, stored %s)"
                              % (t.name, h.hexdigest(), t.xxh3))
        for holder in self._holders.values():
            holder.verify()
        return {"tensors": len(self.infos), "frames": len(self._frames),
                "logical_bytes": self.logical_bytes, "references": len(self.references)}

    def close(self):
        self._file.close()
        self._frame_cache.clear()
        for holder in self._holders.values():
            holder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<ackpt_reader.Checkpoint %r: %s, %d tensors, version %s>" % (
            self.path, "zstd" if self.compressed else "plain", len(self.infos), self.version)

    # ---- opening ------------------------------------------------------------

    def _corrupt(self, what):
        raise CorruptionError("'%s': %s" % (self.path, what))

    def _open(self):
        self._file.seek(0, os.SEEK_END)
        self.file_bytes = self._file.tell()
        self._frames = []
        self.version = None  # known once the header is read
        self._layout = []
        head = self._pread(0, min(4, self.file_bytes))
        self.compressed = len(head) == 4 and struct.unpack("<I", head)[0] == ZSTD_FRAME_MAGIC
        if self.compressed:
            self._read_seek_table()
            self.logical_bytes = sum(f.dsize for f in self._frames)
        else:
            self.logical_bytes = self.file_bytes
        L = self.logical_bytes
        if L < 8:
            self._corrupt("too small to hold a safetensors header (%d bytes)" % L)
        (n,) = struct.unpack("<Q", self._read_logical(0, 8))
        if n > MAX_HEADER_BYTES:
            self._corrupt("header length %d exceeds the 100 MB limit" % n)
        if n > L - 8:
            self._corrupt("header length %d exceeds the %d-byte stream (truncated file?)" % (n, L))
        region = self._read_logical(0, 8 + n)
        self.header_bytes = 8 + n
        data_bytes = L - self.header_bytes
        try:
            header = json.loads(region[8:].decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            self._corrupt("the JSON header does not parse: %s" % e)
        if not isinstance(header, dict):
            self._corrupt("the JSON header is not an object")
        meta = header.pop("__metadata__", {})
        if not isinstance(meta, dict):
            self._corrupt("__metadata__ is not an object")
        version = meta.get("ackpt.version")
        if version is not None:
            if version not in SUPPORTED_VERSIONS:
                raise UnsupportedError("'%s': ackpt format version %r is not supported (this "
                                       "reader reads %s)" % (self.path, version,
                                                             ", ".join(SUPPORTED_VERSIONS)))
            # Checked before anything else in the header is trusted, so any
            # damage to an ackpt header reads as corruption.
            self._check_header_checksum(region, meta)
        for k, v in meta.items():
            if not isinstance(v, str):
                self._corrupt("__metadata__[%r] is not a string" % k)
        self.metadata = meta
        self.version = version

        infos = []
        for name, e in header.items():
            what = "tensor '%s'" % name
            if not isinstance(e, dict):
                self._corrupt("%s: header entry is not an object" % what)
            dtype, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
            if not isinstance(dtype, str):
                self._corrupt("%s: dtype is not a string" % what)
            if not (isinstance(shape, list) and all(_is_uint(d) for d in shape)):
                self._corrupt("%s: shape %r is not a list of non-negative integers" % (what, shape))
            if not (isinstance(offs, list) and len(offs) == 2 and all(_is_uint(o) for o in offs)):
                self._corrupt("%s: data_offsets %r are not two non-negative integers" % (what, offs))
            if dtype not in _DTYPES:
                raise UnsupportedError("'%s': %s has dtype %r, which this reader does not support"
                                       % (self.path, what, dtype))
            begin, end = offs
            if not begin <= end <= data_bytes:
                self._corrupt("%s: data_offsets [%d, %d] outside the %d bytes of tensor data"
                              % (what, begin, end, data_bytes))
            numel = math.prod(shape)
            if numel * _DTYPES[dtype][1] != end - begin:
                self._corrupt("%s: %s %r needs %d bytes but data_offsets span %d"
                              % (what, dtype, shape, numel * _DTYPES[dtype][1], end - begin))
            infos.append(TensorInfo(name, dtype, tuple(shape), begin, end))
        infos.sort(key=lambda t: (t.begin, t.end))
        pos = 0
        for t in infos:
            if t.begin != pos:
                self._corrupt("tensor '%s' starts at %d, expected %d (tensors must tile the data "
                              "section)" % (t.name, t.begin, pos))
            pos = t.end
        if pos != data_bytes:
            self._corrupt("tensors cover %d bytes but the data section holds %d" % (pos, data_bytes))
        self.infos = infos
        self._by_name = {t.name: t for t in infos}
        if version is not None and int(version) >= 3:
            codec = meta.get("ackpt.codec")
            if codec != CODEC_BYTE_GROUPED:
                raise UnsupportedError("'%s': format version %s with codec %r (this reader reads %r)"
                                       % (self.path, version, codec, CODEC_BYTE_GROUPED))
            # Byte-grouped frames are cut by the tensors: (begin, end, element
            # size) in logical-stream offsets, in data order.
            self._layout = [(self.header_bytes + t.begin, self.header_bytes + t.end,
                             _DTYPES[t.dtype][1]) for t in infos if t.nbytes]
            self._layout_ends = [e for _, e, _ in self._layout]

        if version is None:
            bad = [k for k in meta if k.startswith("ackpt.")]
            if bad:
                self._corrupt("__metadata__ has %r but no ackpt.version (damaged key?)" % bad[0])
            self._tree = None
            return
        for key in ("ackpt.tree", "ackpt.xxh3"):
            if key not in meta:
                self._corrupt("%s is missing from __metadata__" % key)
        try:
            sums = json.loads(meta["ackpt.xxh3"], object_pairs_hook=_no_duplicates)
        except ValueError as e:
            self._corrupt("ackpt.xxh3 does not parse: %s" % e)
        if not isinstance(sums, dict) or set(sums) != set(self._by_name) or len(sums) != len(infos):
            self._corrupt("ackpt.xxh3 does not hold exactly one checksum per tensor")
        for name, h in sums.items():
            if not _is_hex64(h):
                self._corrupt("ackpt.xxh3 of tensor '%s' is %r, not 16 lowercase hex digits"
                              % (name, h))
            self._by_name[name].xxh3 = h
        self._ref_sums = {}
        self._parse_references(meta)
        try:
            self._tree = json.loads(meta["ackpt.tree"])
        except ValueError as e:
            self._corrupt("ackpt.tree does not parse: %s" % e)
        self._check_tree()

    def _check_header_checksum(self, region, meta):
        stored = meta.get("ackpt.header_xxh3")
        if not _is_hex64(stored):
            self._corrupt("ackpt.header_xxh3 %r is not 16 lowercase hex digits" % (stored,))
        field = b'"ackpt.header_xxh3":"' + stored.encode() + b'"'
        count = region.count(field)
        if count != 1:
            self._corrupt("the header checksum field occurs %d times, not once" % count)
        zeroed = region.replace(field, b'"ackpt.header_xxh3":"' + b"0" * 16 + b'"')
        actual = "%016x" % _xxhash().xxh3_64_intdigest(zeroed)
        if actual != stored:
            self._corrupt("header checksum mismatch (stored %s, computed %s)" % (stored, actual))

    def _read_seek_table(self):
        size = self.file_bytes
        if size < 17:
            self._corrupt("a compressed file needs at least 17 bytes, got %d" % size)
        nframes, desc, magic = struct.unpack("<IBI", self._pread(size - 9, 9))
        if magic != SEEKABLE_FOOTER_MAGIC:
            self._corrupt("no zstd seek table (footer magic %#010x)" % magic)
        if desc & 0x7C:
            self._corrupt("seek table descriptor %#04x has reserved bits set" % desc)
        if nframes > MAX_FRAMES:
            self._corrupt("seek table claims %d frames" % nframes)
        esize = 12 if desc & 0x80 else 8
        table = 8 + esize * nframes + 9
        if table > size:
            self._corrupt("seek table of %d bytes is larger than the file" % table)
        tstart = size - table
        raw = self._pread(tstart, table)
        skip, fsize = struct.unpack_from("<II", raw, 0)
        if skip != SEEKABLE_SKIPPABLE_MAGIC or fsize != table - 8:
            self._corrupt("seek table frame header is damaged")
        self._has_frame_checksums = esize == 12
        coff = doff = 0
        for i in range(nframes):
            if esize == 12:
                csize, dsize, checksum = struct.unpack_from("<III", raw, 8 + 12 * i)
            else:
                (csize, dsize), checksum = struct.unpack_from("<II", raw, 8 + 8 * i), None
            if csize == 0:
                self._corrupt("frame %d has compressed size 0" % i)
            if dsize > MAX_FRAME_BYTES or dsize > csize * MAX_EXPANSION:
                self._corrupt("frame %d claims %d decompressed bytes from %d" % (i, dsize, csize))
            self._frames.append(_Frame(csize, dsize, checksum, coff, doff))
            coff += csize
            doff += dsize
        if coff != tstart:
            self._corrupt("frames cover %d bytes but %d precede the seek table" % (coff, tstart))
        self._frame_starts = [f.doffset for f in self._frames]

    def _parse_references(self, meta):
        text = meta.get("ackpt.refs")
        if text is None:
            return
        try:
            by_file = json.loads(text, object_pairs_hook=_no_duplicates)
        except ValueError as e:
            self._corrupt("ackpt.refs does not parse: %s" % e)
        if not isinstance(by_file, dict):
            self._corrupt("ackpt.refs is not an object")
        for f, names in by_file.items():
            if f in ("", ".", "..") or "/" in f or "\0" in f:
                self._corrupt("ackpt.refs names %r, not a file name" % f)
            if not isinstance(names, dict):
                self._corrupt("ackpt.refs[%r] is not an object" % f)
            for name, h in names.items():
                if not _is_hex64(h):
                    self._corrupt("reference %r has checksum %r, not 16 lowercase hex digits"
                                  % (name, h))
                if name in self._by_name or name in self.references:
                    self._corrupt("tensor %r is referenced twice or also held" % name)
                self.references[name] = f
                self._ref_sums[name] = h

    def _resolve_references(self):
        """Opens every referenced file and checks it holds the tensor itself
        with the referenced checksum."""
        for name, f in sorted(self.references.items()):
            holder = self._holders.get(f)
            if holder is None:
                p = os.path.join(os.path.dirname(self.path), f)
                try:
                    holder = Checkpoint(p, verify_checksums=self.verify_checksums,
                                        as_torch=self.as_torch, bf16=self.bf16,
                                        _resolve_references=False)
                except AckptError as e:
                    self._corrupt("tensor '%s' is held by '%s', which cannot be read: %s"
                                  % (name, p, e))
                self._holders[f] = holder
            info = holder._by_name.get(name)
            if info is None or info.xxh3 != self._ref_sums[name]:
                self._corrupt("tensor '%s' is held by '%s', which %s" % (
                    name, holder.path, "does not hold it" if info is None else
                    "holds it with checksum %s, not %s" % (info.xxh3, self._ref_sums[name])))

    def _check_tree(self):
        root = self._tree
        if not (isinstance(root, dict) and list(root) == ["d"]):
            self._corrupt("ackpt.tree: the root is not a dict node")
        used = set()
        stack = [(root, "", 0)]
        while stack:
            node, where, depth = stack.pop()
            w = where or "the root"
            if depth > MAX_TREE_DEPTH:
                self._corrupt("ackpt.tree is deeper than %d at %s" % (MAX_TREE_DEPTH, w))
            if not (isinstance(node, dict) and len(node) == 1):
                self._corrupt("ackpt.tree: node at %s is not a one-member object" % w)
            ((tag, v),) = node.items()
            if tag == "T":
                if not isinstance(v, str) or (v not in self._by_name and v not in self.references):
                    self._corrupt("ackpt.tree: %s refers to tensor %r, which the header lacks"
                                  % (w, v))
                if v in used:
                    self._corrupt("ackpt.tree: tensor %r is referenced twice" % v)
                used.add(v)
            elif tag == "i":
                if type(v) is not int or not -2**63 <= v < 2**63:
                    self._corrupt("ackpt.tree: int node at %s holds %r" % (w, v))
            elif tag == "f":
                if not (type(v) in (int, float) or v in ("nan", "inf", "-inf")):
                    self._corrupt("ackpt.tree: double node at %s holds %r" % (w, v))
            elif tag == "b":
                if type(v) is not bool:
                    self._corrupt("ackpt.tree: bool node at %s holds %r" % (w, v))
            elif tag == "s":
                if not isinstance(v, str):
                    self._corrupt("ackpt.tree: string node at %s holds %r" % (w, v))
            elif tag == "l":
                if not isinstance(v, list):
                    self._corrupt("ackpt.tree: list node at %s is not an array" % w)
                for i, c in enumerate(v):
                    stack.append((c, "%s/%d" % (where, i) if where else str(i), depth + 1))
            elif tag == "d":
                if not isinstance(v, list):
                    self._corrupt("ackpt.tree: dict node at %s is not an array" % w)
                seen = set()
                for item in v:
                    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                            and item[0] and item[0] not in seen):
                        self._corrupt(("ackpt.tree: bad dict item at %s: %r" % (w, item))[:300])
                    seen.add(item[0])
                    stack.append((item[1], "%s/%s" % (where, item[0]) if where else item[0],
                                  depth + 1))
            else:
                self._corrupt("ackpt.tree: unknown node tag %r at %s" % (tag, w))
        if len(used) != len(self.infos) + len(self.references):
            missing = sorted((set(self._by_name) | set(self.references)) - used)
            self._corrupt("ackpt.tree does not reference tensor(s) %r" % missing[:5])

    # ---- reading ------------------------------------------------------------

    def _info(self, name):
        info = self._by_name.get(name)
        if info is None:
            raise KeyError("no tensor %r in '%s'" % (name, self.path))
        return info

    def _pread(self, offset, n):
        self._file.seek(offset)
        data = self._file.read(n)
        if len(data) != n:
            self._corrupt("short read: %d of %d bytes at offset %d" % (len(data), n, offset))
        return data

    def _decode_frame(self, i, check, cache=True):
        if i in self._frame_cache:
            return self._frame_cache[i]
        f = self._frames[i]
        zstandard = _zstandard(self.path)
        comp = self._pread(f.coffset, f.csize)
        which = "frame %d" % i
        if i > 0 and self.version == "3" and comp[:4] == GROUPED_FRAME_MAGIC:
            raw = self._decode_grouped(which, f, comp)
            if check and f.checksum is not None and f.checksum != struct.unpack("<I", comp[-4:])[0]:
                self._corrupt("%s does not match its seek-table checksum" % which)
            return self._cache(i, raw, cache)
        try:
            content = zstandard.frame_content_size(comp)
        except zstandard.ZstdError:
            self._corrupt("%s is not a zstd frame" % which)
        if content != -1 and content != f.dsize:
            self._corrupt("%s holds %d bytes but the seek table says %d" % (which, content, f.dsize))
        try:
            # allow_extra_data=False: a frame must span exactly its compressed
            # size. libzstd checks the frame's own content checksum.
            raw = zstandard.ZstdDecompressor().decompress(comp, max_output_size=f.dsize,
                                                          allow_extra_data=False)
        except zstandard.ZstdError as e:
            self._corrupt("%s: %s" % (which, e))
        if len(raw) != f.dsize:
            self._corrupt("%s decompressed to %d bytes, expected %d" % (which, len(raw), f.dsize))
        if check and f.checksum is not None:
            got = _xxhash().xxh64_intdigest(raw) & 0xFFFFFFFF
            if got != f.checksum:
                self._corrupt("%s does not match its seek-table checksum" % which)
        return self._cache(i, raw, cache)

    def _cache(self, i, raw, cache):
        if cache:
            # Small tensors share frames: keep the two most recent ones.
            if len(self._frame_cache) >= 2:
                self._frame_cache.pop(next(iter(self._frame_cache)))
            self._frame_cache[i] = raw
        return raw

    def _segments(self, offset, n):
        """[(size, element size)] of logical bytes [offset, offset + n): runs inside
        one tensor, or outside every tensor (element size 1)."""
        out, pos, end = [], offset, offset + n
        j = bisect.bisect_right(self._layout_ends, offset)
        while j < len(self._layout) and self._layout[j][0] < end and pos < end:
            b, e, k = self._layout[j]
            if b > pos:
                out.append([b - pos, 1])
                pos = b
            e = min(e, end)
            if e > pos:
                out.append([e - pos, k if k in (2, 4, 8) else 1])
                pos = e
            j += 1
        if pos < end:
            out.append([end - pos, 1])
        merged = []
        for size, k in out:  # adjacent ungrouped bytes form one segment
            if merged and k == 1 and merged[-1][1] == 1:
                merged[-1][0] += size
            else:
                merged.append([size, k])
        return merged

    def _decode_grouped(self, which, f, comp):
        """Decodes a byte-grouped frame (docs/FORMAT.md section 14) to its f.dsize
        original bytes, checking every size before decoding and its checksum."""
        which += " (byte-grouped)"
        segs = self._segments(f.doffset, f.dsize)
        elems, rest = {8: 0, 4: 0, 2: 0}, 0
        for size, k in segs:
            if k in elems:
                elems[k] += size // k
                rest += size % k
            else:
                rest += size
        sizes = []
        for k in (8, 4, 2):
            sizes += [elems[k]] * k if elems[k] else []
        if rest:
            sizes.append(rest)
        if len(comp) < 14:
            self._corrupt("%s: only %d bytes" % (which, len(comp)))
        _, version, nstreams, n = struct.unpack_from("<4sBBI", comp, 0)
        if version != GROUPED_FRAME_VERSION:
            raise UnsupportedError("'%s': %s: frame version %d" % (self.path, which, version))
        if nstreams != len(sizes):
            self._corrupt("%s: has %d streams, its tensors make %d" % (which, nstreams, len(sizes)))
        if n != f.dsize:
            self._corrupt("%s: holds %d bytes but the seek table says %d" % (which, n, f.dsize))
        pos = 10 + 5 * nstreams
        if pos + 4 > len(comp):
            self._corrupt("%s: its stream table runs past its end" % which)
        descs = [struct.unpack_from("<BI", comp, 10 + 5 * s) for s in range(nstreams)]
        if pos + sum(sz for _, sz in descs) + 4 != len(comp):
            self._corrupt("%s: its stream sizes do not add up to its %d bytes" % (which, len(comp)))
        streams = []
        for s, (mode, sz) in enumerate(descs):
            data = comp[pos:pos + sz]
            pos += sz
            if mode == 0:
                if sz != sizes[s]:
                    self._corrupt("%s: stream %d stores %d bytes raw, expected %d"
                                  % (which, s, sz, sizes[s]))
                streams.append(data)
            elif mode == 1:
                zstandard = _zstandard(self.path)
                try:
                    content = zstandard.frame_content_size(data)
                    if content != sizes[s]:
                        self._corrupt("%s: stream %d is not a zstd frame of %d bytes"
                                      % (which, s, sizes[s]))
                    raw = zstandard.ZstdDecompressor().decompress(
                        data, max_output_size=sizes[s], allow_extra_data=False)
                except zstandard.ZstdError as e:
                    self._corrupt("%s: stream %d: %s" % (which, s, e))
                if len(raw) != sizes[s]:
                    self._corrupt("%s: stream %d decompressed to the wrong size" % (which, s))
                streams.append(raw)
            else:
                self._corrupt("%s: stream %d has unknown mode %d" % (which, s, mode))
        # Planes back to elements: k planes of m bytes are an (k, m) array
        # whose transpose, read row by row, is the m elements in order.
        elements, si = {}, 0
        for k in (8, 4, 2):
            if elems[k]:
                planes = np.frombuffer(b"".join(streams[si:si + k]), dtype=np.uint8)
                elements[k] = np.ascontiguousarray(planes.reshape(k, elems[k]).T).tobytes()
                si += k
        rest_bytes = streams[si] if rest else b""
        out, at, taken, rpos = bytearray(f.dsize), 0, {8: 0, 4: 0, 2: 0}, 0
        for size, k in segs:
            tail = size
            if k in elements:
                whole = size // k * k
                out[at:at + whole] = elements[k][taken[k]:taken[k] + whole]
                taken[k] += whole
                at += whole
                tail = size - whole
            if tail:
                out[at:at + tail] = rest_bytes[rpos:rpos + tail]
                rpos += tail
                at += tail
        (stored,) = struct.unpack("<I", comp[-4:])
        if _xxhash().xxh64_intdigest(out) & 0xFFFFFFFF != stored:
            self._corrupt("%s: content checksum mismatch" % which)
        return bytes(out)

    def _read_logical(self, offset, n):
        """Bytes [offset, offset + n) of the plain stream."""
        if not self.compressed:
            return self._pread(offset, n)
        out = bytearray(n)
        self._fill(offset, memoryview(out), check=self.verify_checksums)
        return bytes(out)

    def _fill(self, offset, dst, check):
        n = len(dst)
        if n == 0:
            return
        i = bisect.bisect_right(self._frame_starts, offset) - 1
        pos = offset
        while pos < offset + n:
            f = self._frames[i]
            raw = self._decode_frame(i, check)
            lo = pos - f.doffset
            take = min(f.dsize - lo, offset + n - pos)
            dst[pos - offset:pos - offset + take] = raw[lo:lo + take]
            pos += take
            i += 1

    def _read_tensor_bytes(self, t):
        buf = bytearray(t.nbytes)
        start = self.header_bytes + t.begin
        if self.compressed:
            self._fill(start, memoryview(buf), check=self.verify_checksums)
        else:
            self._file.seek(start)
            if self._file.readinto(buf) != t.nbytes:
                self._corrupt("tensor '%s' is truncated" % t.name)
        if self.verify_checksums and t.xxh3 is not None:
            got = "%016x" % _xxhash().xxh3_64_intdigest(bytes(buf))
            if got != t.xxh3:
                self._corrupt("checksum mismatch in tensor '%s' (XXH3-64 %s, stored %s)"
                              % (t.name, got, t.xxh3))
        return buf

    def _convert(self, t, buf):
        dtype = _DTYPES[t.dtype][0]
        arr = np.frombuffer(buf, dtype=dtype) if len(buf) else np.empty(0, dtype=dtype)
        arr = arr.reshape(t.shape)
        if self.as_torch:
            return _to_torch(arr, t.dtype, self.path, t.name)
        if t.dtype == "BF16" and self.bf16 == "float32":
            return (arr.astype(np.uint32) << 16).view(np.float32)
        return arr

    def _build(self, node, tensors):
        ((tag, v),) = node.items()
        if tag == "d":
            return {k: self._build(c, tensors) for k, c in v}
        if tag == "l":
            return [self._build(c, tensors) for c in v]
        if tag == "T":
            return tensors[v]
        if tag == "f":
            return float(v)  # also "nan", "inf", "-inf"
        return v  # "i", "b", "s"


def _to_torch(arr, dtype, path, name):
    import torch
    if dtype == "BF16":
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        tdt = getattr(torch, "float8_e4m3fn" if dtype == "F8_E4M3" else "float8_e5m2", None)
        if tdt is None:
            raise UnsupportedError("'%s': tensor '%s' is %s, which torch %s lacks"
                                   % (path, name, dtype, torch.__version__))
        return torch.from_numpy(arr.copy()).view(tdt)
    return torch.from_numpy(arr)


def _main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="ackpt_reader.py",
                                 description="List (and verify) ackpt checkpoint files.")
    ap.add_argument("files", nargs="+", metavar="FILE")
    ap.add_argument("--verify", action="store_true", help="check every checksum")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    status = 0
    for path in args.files:
        try:
            with open(path) as ckpt:
                report = ckpt.verify() if args.verify else None
                if args.json:
                    print(json.dumps({
                        "path": path, "compressed": ckpt.compressed, "version": ckpt.version,
                        "file_bytes": ckpt.file_bytes, "logical_bytes": ckpt.logical_bytes,
                        "frames": ckpt.num_frames, "verified": report is not None,
                        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape),
                                     "bytes": t.nbytes} for t in ckpt.infos],
                        "references": ckpt.references}))
                else:
                    print("%s: %s, %d tensors, %d bytes (%d uncompressed)%s"
                          % (path, "zstd" if ckpt.compressed else "plain", len(ckpt.infos),
                             ckpt.file_bytes, ckpt.logical_bytes,
                             ", checksums OK" if report else ""))
                    for t in ckpt.infos:
                        print("  %-48s %-7s %-20s %d" % (t.name, t.dtype, list(t.shape), t.nbytes))
                    for name, f in sorted(ckpt.references.items()):
                        print("  %-48s referenced in %s" % (name, f))
        except AckptError as e:
            print("ERROR %s" % e, file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
