"""
ckpt - read PyTorch checkpoints from Python without running them, and without torch.

A thin layer over libckpt (ctypes; numpy is the only dependency). Nothing in a file is ever
executed: a pickled call is shown as a ckpt.Object naming what it would have called.

    import ckpt
    sd = ckpt.load_state_dict("rsp-resnet-50-ckpt.pth")   # {"conv1.weight": ndarray, ...}
    print(ckpt.check("rsp-resnet-50-ckpt.pth")["ok"])

    with ckpt.open("model.pt") as f:                       # the tree `ckpt inspect` shows
        w = f["model"]["fc.weight"].numpy()

The library is found through $CKPT_LIBRARY (the path of libckpt.so, e.g. a build tree's
build/libckpt.so), else beside this package where `cmake --install` put it, else on the
linker's search path. Arrays read from a contiguous tensor are read-only views of the mapped
file (no copy), which stays mapped as long as such an array is alive, even after close().
"""

import ctypes
import os
import sys

import numpy as np

from . import _capi as C

__all__ = ["Error", "File", "Tensor", "Storage", "Global", "Object", "Dict", "Cycle", "open",
           "load_state_dict", "check", "scan", "LIBRARY_PATH"]

LIBRARY_PATH = C.LIBRARY_PATH
_lib = C.lib


class Error(Exception):
    """A libckpt call failed: .status is the code's name ("ECORRUPT", ...), .code its value,
    .message the library's one-line message; str() prefixes the file's path."""

    def __init__(self, status, message, code=None, path=None):
        super().__init__("%s%s (%s)" % ("" if path is None else "%s: " % os.fsdecode(path),
                                       message, status))
        self.status = status
        self.message = message
        self.code = code


def _s(b):
    """A C string from the library as str. Pickled strings may hold lone surrogates."""
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return b.decode("utf-8", "surrogatepass" if _surrogates_ok(b) else "replace")


def _surrogates_ok(b):
    try:
        b.decode("utf-8", "surrogatepass")
        return True
    except UnicodeDecodeError:
        return False


def _raise(rc, err, path=None):
    name = _s(_lib.ckpt_status_name(rc))
    raise Error(name, _s(err.message) or name, rc, path)


def _path(p):
    return os.fsencode(p)


# ---- the open file ----------------------------------------------------------------------------

class _Handle:
    """Owns one ckpt_file. Tensors and zero-copy arrays hold it, so the mapping outlives
    File.close() for as long as one of them needs it."""

    def __init__(self, ptr):
        self.ptr = ptr
        self.closed = False

    def __del__(self, _close=_lib.ckpt_close):  # bound now: _lib may be gone at exit
        if self.ptr:
            _close(self.ptr)
            self.ptr = None


def _open_handle(path):
    f = ctypes.c_void_p()
    err = C.Error()
    rc = _lib.ckpt_open(_path(path), None, ctypes.byref(f), ctypes.byref(err))
    if rc != 0:
        _raise(rc, err, path)
    return _Handle(f)


class Global:
    """A name a pickle refers to (torch.float16, a class), never imported."""

    __slots__ = ("module", "name")

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __eq__(self, other):
        return isinstance(other, Global) and (self.module, self.name) == (other.module,
                                                                          other.name)

    def __hash__(self):
        return hash((self.module, self.name))

    def __repr__(self):
        return "<ckpt.Global %s.%s>" % (self.module, self.name)


class Object:
    """What a REDUCE/NEWOBJ/INST/OBJ would have built, recorded and never executed: name is
    "module.name" of the callable when it is a plain global (else None, see .callable)."""

    __slots__ = ("name", "callable", "args", "state", "items", "list", "newobj")

    def __repr__(self):
        return "<ckpt.Object %s%s>" % (self.name or repr(self.callable),
                                       "" if self.args is None else repr(self.args))


class Dict(dict):
    """A pickled dict, OrderedDict, defaultdict or Counter, keys in insertion order.
    class_name is the Python class when it is not dict; attrs is the BUILD state of an
    OrderedDict (a state dict's {"_metadata": ...}) or None."""

    class_name = None
    attrs = None


class Cycle:
    """A container that is one it is inside of (a self-referencing memo)."""

    __slots__ = ()

    def __repr__(self):
        return "<ckpt.Cycle>"


class _Unhashable:
    """A dict key or set item Python could not hash (only a hostile file makes one)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return "<ckpt unhashable %r>" % (self.value,)


class Storage:
    """A storage referenced outside a tensor."""

    __slots__ = ("key", "dtype", "nbytes")

    def __repr__(self):
        return "<ckpt.Storage %s %s, %d bytes>" % (self.key, self.dtype, self.nbytes)


# torch name -> numpy dtype, little-endian as every file ckpt reads
_NP = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "int64": "<i8", "int32": "<i4",
       "int16": "<i2", "int8": "i1", "uint8": "u1", "bool": "?", "complex64": "<c8",
       "complex128": "<c16", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8"}
_DT_FLOAT32 = 0  # CKPT_DT_FLOAT32


class Tensor:
    """A tensor of an opened file, as `ckpt inspect` shows it. Its elements are read only when
    asked for, with numpy() (or np.asarray(t))."""

    __slots__ = ("_h", "_t", "dtype", "shape", "stride", "storage_offset", "storage",
                 "nbytes", "requires_grad", "parameter")

    def __init__(self, handle, tp):
        t = tp.contents
        self._h, self._t = handle, tp
        self.dtype = _s(_lib.ckpt_dtype_name(t.dtype)) or "unknown"
        self.shape = tuple(t.shape[i] for i in range(t.ndim))
        self.stride = tuple(t.stride[i] for i in range(t.ndim))
        self.storage_offset = t.offset
        self.storage = _s(_lib.ckpt_storage_key(t.storage)) if t.storage else None
        self.nbytes = _lib.ckpt_tensor_nbytes(tp)
        self.requires_grad = bool(t.requires_grad)
        self.parameter = bool(t.is_parameter)

    def __repr__(self):
        return "<ckpt.Tensor %s %s>" % (self.dtype, list(self.shape))

    def __array__(self, dtype=None, copy=None):
        return self.numpy(dtype)

    def numpy(self, dtype=None):
        """The elements as a numpy array of the tensor's shape. Contiguous: a read-only view
        of the file's bytes, no copy. Otherwise a row-major copy (ckpt_tensor_read). bfloat16,
        which numpy lacks, widens exactly to float32, as does any real dtype with
        dtype="float32"; float8, complex32 and quantized tensors raise Error (EUNSUPPORTED)."""
        if self._h.closed:
            raise Error("EINVAL", "the file is closed")
        want = None if dtype is None else np.dtype(dtype)
        if self.dtype == "bfloat16" and want is None:
            want = np.dtype("float32")
        if want is not None and want == np.dtype("float32") and self.dtype != "float32":
            return self._copy(_DT_FLOAT32, np.dtype("<f4"))
        npdt = _NP.get(self.dtype)
        if npdt is None:
            raise Error("EUNSUPPORTED", "numpy has no dtype for '%s'" % self.dtype)
        arr = self._view(np.dtype(npdt))
        if arr is None:
            arr = self._copy(self._t.contents.dtype, np.dtype(npdt))
        return arr if want is None or want == arr.dtype else arr.astype(want)

    def _view(self, npdt):
        if self._t.contents.numel == 0:
            return np.empty(self.shape, dtype=npdt)
        if not _lib.ckpt_tensor_is_contiguous(self._t):
            return None
        ptr = ctypes.c_void_p()
        err = C.Error()
        rc = _lib.ckpt_tensor_data(self._t, ctypes.byref(ptr), ctypes.byref(err))
        if rc != 0:
            _raise(rc, err)
        buf = (ctypes.c_char * self.nbytes).from_address(ptr.value)
        buf._ckpt_handle = self._h  # the mapping lives as long as the array
        return np.frombuffer(memoryview(buf).toreadonly(), dtype=npdt).reshape(self.shape)

    def _copy(self, to, npdt):
        out = np.empty(self.shape, dtype=npdt)
        err = C.Error()
        rc = _lib.ckpt_tensor_read(self._t, to, out.ctypes.data_as(ctypes.c_void_p),
                                   out.nbytes, ctypes.byref(err))
        if rc != 0:
            _raise(rc, err)
        return out


class _Builder:
    """Turns ckpt_values into Python objects. The same value met twice is the same object;
    a container met inside itself is a Cycle."""

    def __init__(self, handle):
        self.h = handle
        self.done = {}
        self.busy = set()

    def build(self, vp):
        if not vp:
            return None
        addr = ctypes.addressof(vp.contents)
        if addr in self.done:
            return self.done[addr]
        if addr in self.busy:
            return Cycle()
        self.busy.add(addr)
        try:
            out = self._build(vp.contents)
        finally:
            self.busy.discard(addr)
        self.done[addr] = out
        return out

    def _items(self, seq):
        return [self.build(seq.items[i]) for i in range(seq.len)]

    def _build(self, v):
        t, u = v.type, v.u
        if t == C.T_NONE:
            return None
        if t == C.T_BOOL:
            return bool(u.b)
        if t == C.T_INT:
            return u.i
        if t == C.T_BIGINT:
            return int.from_bytes(ctypes.string_at(u.str.data, u.str.len), "little",
                                  signed=True)
        if t == C.T_FLOAT:
            return u.f
        if t == C.T_COMPLEX:
            return complex(u.c.re, u.c.im)
        if t == C.T_STR:
            return _s(ctypes.string_at(u.str.data, u.str.len))
        if t == C.T_BYTES:
            return ctypes.string_at(u.str.data, u.str.len)
        if t == C.T_TUPLE:
            return tuple(self._items(u.seq))
        if t == C.T_LIST:
            return self._items(u.seq)
        if t == C.T_SET:
            items = [_hashable(x) for x in self._items(u.seq)]
            return frozenset(items) if v.flags & C.VF_FROZEN else set(items)
        if t == C.T_DICT:
            d = Dict()
            d.class_name = _s(v.class_name)
            for i in range(u.dict.len):
                d[_hashable(self.build(u.dict.keys[i]))] = self.build(u.dict.vals[i])
            d.attrs = self.build(u.dict.attrs) if u.dict.attrs else None
            return d
        if t == C.T_GLOBAL:
            return Global(_s(u.glob.module), _s(u.glob.name))
        if t == C.T_OBJECT:
            o = Object()
            o.callable = self.build(u.obj.callable)
            o.name = ("%s.%s" % (o.callable.module, o.callable.name)
                      if isinstance(o.callable, Global) else None)
            o.args = self.build(u.obj.args)
            o.state = self.build(u.obj.state)
            o.items = self.build(u.obj.items)
            o.list = self.build(u.obj.list)
            o.newobj = bool(u.obj.newobj)
            return o
        if t == C.T_TENSOR:
            return Tensor(self.h, u.tensor)
        if t == C.T_STORAGE:
            s = Storage()
            s.key = _s(_lib.ckpt_storage_key(u.storage))
            s.dtype = _s(_lib.ckpt_dtype_name(_lib.ckpt_storage_dtype(u.storage)))
            s.nbytes = _lib.ckpt_storage_nbytes(u.storage)
            return s
        raise Error("EUNSUPPORTED", "value of unknown type %d" % t)


def _hashable(x):
    try:
        hash(x)
        return x
    except TypeError:
        return _Unhashable(x)


def _global_refs(refs, n):
    return [{"name": "%s.%s" % (_s(g.module), _s(g.name)), "module": _s(g.module),
             "kind": _s(_lib.ckpt_global_kind_name(g.kind)), "where": _s(g.where),
             "offset": g.offset, "count": g.count, "torch_load": bool(g.torch_load)}
            for g in (refs[i] for i in range(n))]


_WALK_MIN_ITEMS = 1 << 17      # cli.h's CLI_MIN_ITEMS
_WALK_ITEMS_PER_DISTINCT = 4   # and CLI_ITEMS_PER_DISTINCT


class File:
    """An opened checkpoint. .root is the unpickled object as `ckpt inspect` shows it (dicts,
    lists, tuples, scalars, str/bytes, Global, Object, Tensor, Storage); f[key] is
    f.root[key]. .format is "zip", "torchscript", "legacy", "pickle" or "safetensors"; .globals
    lists every global the file's pickles name, classified as `ckpt scan` does."""

    def __init__(self, path):
        self.path = path
        self._h = _open_handle(path)
        p = self._h.ptr
        self.format = _s(_lib.ckpt_format_name(_lib.ckpt_file_format(p)))
        self.size = _lib.ckpt_file_size(p)
        refs = ctypes.POINTER(C.GlobalRef)()
        n = _lib.ckpt_globals(p, ctypes.byref(refs))
        self.globals = _global_refs(refs, n)
        self.root = _build_tree(self._h, _lib.ckpt_root(p))

    def __getitem__(self, key):
        return self.root[key]

    def tensors(self):
        """(path, Tensor) for every tensor reachable through dicts, lists and tuples, depth
        first; path holds dict keys and list/tuple indexes, as `ckpt tensors` lists them (a
        tensor reachable by two paths is listed twice). Raises Error (ELIMIT) when shared
        references expand the walk past the CLI's budget: a few times the distinct items."""
        containers = (dict, list, tuple)
        distinct, stack = set(), [self.root]
        while stack:   # the budget: every item counted once
            v = stack.pop()
            if isinstance(v, containers) and id(v) not in distinct:
                distinct.add(id(v))
                stack.extend(v.values() if isinstance(v, dict) else v)
        budget = max(_WALK_MIN_ITEMS, _WALK_ITEMS_PER_DISTINCT * len(distinct))
        out, on_path, count = [], set(), [0]

        def walk(v, path):
            count[0] += 1
            if count[0] > budget:
                raise Error("ELIMIT", "shared references expand the tree past %d items" % budget)
            if isinstance(v, Tensor):
                out.append((path, v))
            elif isinstance(v, containers) and id(v) not in on_path:
                on_path.add(id(v))
                items = v.items() if isinstance(v, dict) else enumerate(v)
                for k, x in items:
                    walk(x, path + (k,))
                on_path.discard(id(v))
        _deep(walk, self.root, ())
        return out

    def close(self):
        """Done with the file: its tensors can no longer be read. The mapping goes away once
        no array viewing it is alive."""
        if self._h is not None:
            self._h.closed = True
            self._h = None
            self.root = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "<ckpt.File %r %s%s>" % (self.path, self.format,
                                        " closed" if self._h is None else "")


def _deep(fn, *args):
    """fn(*args) with room to recurse: containers nest up to CKPT_DEFAULT_MAX_DEPTH (1000)
    deep, a few Python frames each."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10000))
    try:
        return fn(*args)
    finally:
        sys.setrecursionlimit(limit)


def _build_tree(handle, root):
    return _deep(_Builder(handle).build, root)


def open(path):  # noqa: A001 - ckpt.open mirrors the library's ckpt_open
    """Open and parse a checkpoint (zip or legacy torch.save, bare pickle, safetensors)."""
    return File(path)


# ---- check and load_state_dict -----------------------------------------------------------------

def _cstrs(p, n):
    return [_s(p[i]) for i in range(n)]


class _Checked:
    """ckpt_sd_check's report for a file, freed with the object."""

    def __init__(self, path, arch, num_classes, key, strip_prefix, against, full):
        self.path = path
        self.h = _open_handle(path)
        self.t = _open_handle(against) if against is not None else None
        self._keep = [None if x is None else os.fsencode(x)
                      for x in (arch, key, strip_prefix, path)]
        o = C.SdCheckOptions()
        o.arch, o.key, o.strip_prefix, o.file_name = self._keep
        o.num_classes = num_classes or 0
        o.against = self.t.ptr if self.t else None
        o.scan_values = o.explain = full
        self.r = ctypes.POINTER(C.SdReport)()
        err = C.Error()
        rc = _lib.ckpt_sd_check(self.h.ptr, ctypes.byref(o), ctypes.byref(self.r),
                                ctypes.byref(err))
        if rc != 0:
            _raise(rc, err, path)

    def __del__(self, _free=_lib.ckpt_sd_report_free):
        if getattr(self, "r", None):
            _free(self.r)
            self.r = None

    def no_model(self):
        """The error `ckpt check` gives when nothing was recognised and there is no template."""
        c = self.r.contents.chosen.contents
        where = "'%s'" % _s(c.path_str) if c.path_len else "the state dict"
        return Error("EMISMATCH", "%s (%d tensor%s) matches none of the %d known architectures: "
                     "pass arch=NAME, or against= a checkpoint of the model"
                     % (where, c.n_tensors, "" if c.n_tensors == 1 else "s",
                        _lib.ckpt_arch_count()), path=self.path)


def _verdict_counts(v):
    return {"loaded": v.n_loaded, "missing": v.n_missing, "unexpected": v.n_unexpected}


def _shape(e):
    return [e.shape[i] for i in range(e.ndim)]


def check(path, arch=None, num_classes=None, key=None, strip_prefix=None, against=None):
    """Would `model.load_state_dict(sd, strict=True)` succeed? The document of
    `ckpt check --json` (docs/CHECK.md) as a dict: ok, arch, num_classes, prefix, missing,
    unexpected, size_mismatch, errors, error_text, key_map, left_out, candidates, warnings,
    python, ... The options are check's: arch ("resnet50"; None: recognise it), num_classes,
    key ("model/ema"), strip_prefix ("" strips nothing), against (a template checkpoint's
    path). Raises Error (EMISMATCH) when no known architecture matches and against is None."""
    c = _Checked(path, arch, num_classes, key, strip_prefix, against, True)
    r = c.r.contents
    if not r.verdict:
        raise c.no_model()
    v = r.verdict.contents
    chosen = r.chosen.contents
    arch_name = _s(_lib.ckpt_arch_name(r.arch)) if r.arch else None
    warnings = []
    for w in (r.warnings[i] for i in range(r.n_warnings)):
        msg, code = _s(w.message), _s(w.code)
        if code == "other_candidates":
            msg += " (choose one with key=PATH)"
        elif code == "arch_unknown":
            msg += " with against=TEMPLATE"
        warnings.append({"code": code, "message": msg})
    cands = []
    for i in range(r.n_candidates):
        k = r.candidates[i]
        cands.append({"path": _cstrs(k.path, k.path_len), "tensors": k.n_tensors,
                      "entries": k.n_entries, "prefix": _s(k.prefix),
                      "arch": _s(_lib.ckpt_arch_name(k.arch)) if k.arch else None,
                      "matched": k.matched, "expected": k.expected,
                      "chosen": ctypes.addressof(k) == ctypes.addressof(chosen)})
    return {
        "file": os.fspath(path) if not isinstance(path, bytes) else _s(path),
        "state_dict_path": _cstrs(chosen.path, chosen.path_len),
        "prefix": _s(r.prefix),
        "naming": _s(r.naming),
        "arch": arch_name,
        "num_classes": r.num_classes if r.arch else None,
        "against": None if against is None else os.fspath(against),
        "ok": bool(v.ok),
        "verdict_kind": _s(r.verdict_kind),
        "alternatives": [{"path": _cstrs(a.path, a.path_len), "prefix": _s(a.prefix),
                          "kind": _s(r.alternative_kinds[i]),
                          "arch": _s(_lib.ckpt_arch_name(a.arch)) if a.arch else None}
                         for i, a in ((i, r.alternatives[i]) for i in range(r.n_alternatives))],
        "missing": _cstrs(v.missing, v.n_missing),
        "unexpected": _cstrs(v.unexpected, v.n_unexpected),
        "size_mismatch": [{"key": _s(m.key), "checkpoint": _shape(m.checkpoint.contents),
                           "model": _shape(m.model.contents)}
                          for m in (v.mismatch[i] for i in range(v.n_mismatch))],
        "errors": _cstrs(v.errors, v.n_errors),
        "error_text": _s(v.message),
        "tensors": r.n_tensors,
        "parameters": r.n_parameters,
        "loaded": v.n_loaded,
        "whole_file": _verdict_counts(r.whole_file.contents) if r.whole_file else None,
        "key_map": [[_s(p.model_key), _s(p.file_key)]
                    for p in (r.key_map[i] for i in range(r.n_key_map))],
        "renames": [[_s(p.model_key), _s(p.file_key)]
                    for p in (r.renames[i] for i in range(r.n_renames))],
        "left_out": [{"key": _s(x.file_key), "why": _s(x.why)}
                     for x in (r.left_out[i] for i in range(r.n_left_out))],
        "candidates": cands,
        "warnings": warnings,
        "python": _s(r.python),
    }


def load_state_dict(path, arch=None, num_classes=None, key=None, strip_prefix=None,
                    against=None):
    """The located weights as {model key: numpy array}, found and renamed as `ckpt check`
    does: the key map's model keys ("layer1.0.conv1.weight") in the model's order, each with
    the tensor of the file key it comes from ("module.layer1.0.conv1.weight"); keys the map
    leaves out (a momentum encoder, a loss buffer, ...) are not in it. When no known
    architecture matches (and against is None), every tensor of the chosen dict, under its
    key with the wrapper prefix removed. The options are check()'s. Loading into a model that
    does not match still fails in load_state_dict: check() says why beforehand."""
    c = _Checked(path, arch, num_classes, key, strip_prefix, against, False)
    r = c.r.contents
    b = _Builder(c.h)
    if r.verdict:
        d = r.chosen.contents.dict.contents.u.dict
        by_key = {}  # the last value of a file key, as Python's dict keeps it
        for i in range(d.len):
            by_key[ctypes.string_at(d.keys[i].contents.u.str.data)] = d.vals[i]
        pairs = [(p.model_key, by_key[p.file_key])
                 for p in (r.key_map[i] for i in range(r.n_key_map))]
    else:
        sd = r.sd.contents
        pairs = [(e.key, e.value) for e in (sd.entries[i] for i in range(sd.n_entries))
                 if e.is_tensor]
    return {_s(k): b.build(vp).numpy() for k, vp in pairs}


# ---- scan -------------------------------------------------------------------------------------

def scan(path):
    """Every global the file's pickles name, classified, as `ckpt scan --json`: {"format",
    "globals": [{"name", "module", "kind", "where", "offset", "count", "torch_load"}], "safe",
    "parse_error", "notes"}. kind is "weights", "data", "unknown" or "dangerous"; safe is true when every
    global is weights or data and the pickles could be read to the end. Reads files ckpt.open
    refuses as long as they hold pickles; nothing in them runs."""
    out = ctypes.POINTER(C.ScanResult)()
    err = C.Error()
    rc = _lib.ckpt_scan(_path(path), None, ctypes.byref(out), ctypes.byref(err))
    if rc != 0:
        _raise(rc, err, path)
    try:
        r = out.contents
        return {"format": _s(r.format), "globals": _global_refs(r.globals, r.n_globals),
                "safe": bool(r.safe) and r.parse_error is None,
                "parse_error": _s(r.parse_error),
                "notes": [_s(r.notes[i]) for i in range(r.n_notes)]}
    finally:
        _lib.ckpt_scan_free(out)
