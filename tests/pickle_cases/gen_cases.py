#!/usr/bin/python3
"""gen_cases.py - writes cases.h, the table of pickles that tests/test_pickle.c evaluates.

Each case is a pickle (from Python's pickle module, torch.save, tests/data/vectors, or
assembled opcode by opcode for forms no writer at hand produces) and what it must evaluate to,
rendered in the text form that render() in test_pickle.c prints for a ckpt_value.

The expected value comes from Python, never from ckpt: the pickle is loaded with Python's own
Unpickler, whose find_class returns stand-ins instead of importing (a call records itself, as
ckpt's CKPT_T_OBJECT does) and real builtins/numpy for what ckpt decodes. The tensor rebuild
functions are stand-ins written from docs/FORMAT.md §4.1; every torch.save case is checked
against torch.load of the same bytes, and every plain case against the object pickled.

Run with Debian's Python (torch 1.13, numpy 1.24); it writes to the path given, or to stdout:
    /usr/bin/python3 tests/pickle_cases/gen_cases.py tests/pickle_cases/cases.h
The output is the same on every run: torch's generator is seeded, and the script runs itself
again under PYTHONHASHSEED=0 because a pickled set or frozenset of strings lists its members
in hash order.
"""
import argparse
import codecs
import collections
import copyreg
import io
import os
import pickle
import struct
import sys
import textwrap
import zipfile

if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") != "0":
    os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, PYTHONHASHSEED="0"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "vectors")

# ---- the reference unpickler -----------------------------------------------------------------

NAMES = {}  # id(global stand-in or real object) -> "module.name"


class Obj:
    """What ckpt makes of a call it does not understand."""

    def __init__(self, fn, args, newobj):
        self.fn, self.args, self.newobj = fn, tuple(args), newobj
        self.state = self.items = self.list = None

    def __setstate__(self, state):  # BUILD
        self.state = state

    def __setitem__(self, k, v):  # SETITEM(S)
        if self.items is None:
            self.items = {}
        self.items[k] = v

    def append(self, x):  # APPEND(S), ADDITEMS
        if self.list is None:
            self.list = []
        self.list.append(x)

    add = append

    def extend(self, xs):
        for x in xs:
            self.append(x)


class StubMeta(type):
    def __call__(cls, *args):  # REDUCE, INST with arguments
        return Obj(cls, args, False)


def _stub_new(cls, *args, **kwargs):  # NEWOBJ, NEWOBJ_EX: kwargs become one more argument
    return Obj(cls, args + ((kwargs,) if kwargs else ()), True)


STUBS = {}


def stub(module, name):
    if (module, name) not in STUBS:
        cls = StubMeta(name, (), {"__new__": _stub_new})
        STUBS[(module, name)] = cls
        NAMES[id(cls)] = module + "." + name
    return STUBS[(module, name)]


class ROrderedDict(collections.OrderedDict):
    pass


class RDefaultDict(collections.defaultdict):
    pass


class RCounter(collections.Counter):
    pass


class SizeRef(tuple):
    pass


class TensorRef:
    def __init__(self, dtype, shape, stride, offset, key, rg, param=False, cls=None):
        self.dtype, self.shape, self.stride, self.offset = dtype, shape, stride, offset
        self.key, self.rg, self.param, self.cls = key, rg, param, cls


class StorageRef:
    def __init__(self, key, dtype, nbytes):
        self.key, self.dtype, self.nbytes = key, dtype, nbytes


class Corrupt(Exception):
    pass


class Unsupported(Exception):
    pass


class Limit(Exception):
    pass


# docs/FORMAT.md §3.2: storage class -> (dtype, element size)
STORAGES = {
    "DoubleStorage": ("float64", 8), "FloatStorage": ("float32", 4), "HalfStorage": ("float16", 2),
    "BFloat16Storage": ("bfloat16", 2), "LongStorage": ("int64", 8), "IntStorage": ("int32", 4),
    "ShortStorage": ("int16", 2), "CharStorage": ("int8", 1), "ByteStorage": ("uint8", 1),
    "BoolStorage": ("bool", 1), "ComplexFloatStorage": ("complex64", 8),
    "ComplexDoubleStorage": ("complex128", 16), "UntypedStorage": ("untyped", 1),
}
DTYPES = {"float8_e4m3fn": 1, "float8_e5m2": 1, "bfloat16": 2, "float32": 4, "uint16": 2}


def _tensor(storage, offset, size, stride, rg, dtype=None):
    """docs/FORMAT.md §4.1 and §5: a view, checked to lie inside its storage."""
    if not isinstance(storage, StorageRef):
        raise Corrupt("not a storage")
    if dtype is None:
        if storage.dtype == "untyped":
            raise Corrupt("v2 on an untyped storage")
        dtype = storage.dtype
    if len(size) > 64:
        raise Limit("too many dimensions")
    if len(size) != len(stride) or any(type(x) is not int or x < 0 for x in
                                       (offset,) + tuple(size) + tuple(stride)):
        raise Corrupt("bad size or stride")
    numel = 1
    for s in size:
        numel *= s
    if numel >= 2**63:
        raise Corrupt("numel overflow")
    elsize = dict(STORAGES.values()).get(dtype) or DTYPES[dtype]
    if numel and (offset + sum((s - 1) * st for s, st in zip(size, stride)) + 1) * elsize > \
            storage.nbytes:
        raise Corrupt("out of bounds")
    return TensorRef(dtype, list(size), list(stride), offset, storage.key, rg)


def rebuild_tensor(storage, offset, size, stride):
    return _tensor(storage, offset, size, stride, False)


def rebuild_tensor_v2(storage, offset, size, stride, rg, hooks, metadata=None):
    return _tensor(storage, offset, size, stride, rg)


def rebuild_tensor_v3(storage, offset, size, stride, rg, hooks, dtype, metadata=None):
    name = NAMES[id(dtype)]
    if not name.startswith("torch.") or name[6:] not in DTYPES:
        raise Unsupported(name)
    return _tensor(storage, offset, size, stride, rg, name[6:])


def _param(data, rg):
    if not isinstance(data, TensorRef):
        raise Corrupt("not a tensor")
    return TensorRef(data.dtype, data.shape, data.stride, data.offset, data.key, rg, True, data.cls)


def rebuild_parameter(data, rg, hooks):
    return _param(data, rg)


def rebuild_parameter_with_state(data, rg, hooks, state):
    return _param(data, rg)


def rebuild_from_type_v2(func, cls, args, state):
    t = func(*args)
    if not isinstance(t, TensorRef):  # ckpt keeps the whole call when it is not a tensor
        return Obj(rebuild_from_type_v2, (func, cls, args, state), False)
    name = NAMES.get(id(cls))
    if isinstance(t, TensorRef) and name != "torch.Tensor":
        param = t.param or name == "torch.nn.parameter.Parameter"
        t = TensorRef(t.dtype, t.shape, t.stride, t.offset, t.key, t.rg, param,
                      None if name == "torch.nn.parameter.Parameter" else name)
    return t


NP_CODES = {"f8", "f4", "f2", "i8", "i4", "i2", "i1", "u8", "u4", "u2", "u1", "b1", "c8", "c16"}


def ref_scalar(dtype, *rest):
    """numpy's scalar() for the dtypes ckpt decodes; a recorded call for the others."""
    if len(rest) == 1 and isinstance(dtype, np.dtype) and dtype.str[1:] in NP_CODES:
        raw = rest[0].encode("latin1") if isinstance(rest[0], str) else rest[0]
        if len(raw) != dtype.itemsize:
            raise Corrupt("wrong size")
        return np.core.multiarray.scalar(dtype, raw)
    return Obj(ref_scalar, (dtype,) + rest, False)


def ref_encode(s, *enc):
    """codecs.encode for the encodings bytes are pickled with; a recorded call otherwise."""
    if not enc or enc[0].lower() in ("latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1",
                                     "l1", "utf-8", "utf8", "utf_8"):
        return codecs.encode(s, *enc)
    return Obj(ref_encode, (s,) + enc, False)


REAL = {
    ("collections", "OrderedDict"): ROrderedDict,
    ("collections", "defaultdict"): RDefaultDict,
    ("collections", "Counter"): RCounter,
    ("builtins", "dict"): dict,
    ("builtins", "list"): list,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): ref_encode,
    ("torch", "Size"): lambda *a: SizeRef(*a),
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): rebuild_from_type_v2,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): ref_scalar,
    ("numpy.core.multiarray", "_reconstruct"): np.core.multiarray._reconstruct,
}
for (m, n), o in REAL.items():
    NAMES.setdefault(id(o), m + "." + n)


class RefUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        return REAL.get((module, name)) or stub(module, name)

    def persistent_load(self, pid):
        """The same rule as test_pickle.c's persistent_load."""
        if (type(pid) is tuple and len(pid) >= 5 and pid[0] == "storage" and
                type(pid[2]) is str and type(pid[4]) is int):
            dtype, size = STORAGES[NAMES[id(pid[1])].rsplit(".", 1)[1]]
            return StorageRef(pid[2], dtype, pid[4] * size)
        return ("persistent", pid)


def ref_load(data):
    return RefUnpickler(io.BytesIO(data), encoding="latin1").load()


# ---- rendering: the same text as render() in test_pickle.c ----------------------------------


def esc(b):
    return "".join(chr(c) if 0x20 <= c < 0x7F and c not in b"\\'" else "\\x%02x" % c for c in b)


def fmt_float(f):
    return "%.17g" % f


def gname(x):
    if id(x) in NAMES:
        return NAMES[id(x)]
    return x.__module__ + "." + x.__qualname__


NP_DTYPES = {"f8": "float64", "f4": "float32", "f2": "float16", "i8": "int64", "i4": "int32",
             "i2": "int16", "i1": "int8", "u8": "uint64", "u4": "uint32", "u2": "uint16",
             "u1": "uint8", "b1": "bool", "c8": "complex64", "c16": "complex128"}


def render(x, proto=2, keys=True):
    def r(v):
        return render(v, proto, keys)

    def join(items):
        return ", ".join(r(i) for i in items)

    t = type(x)
    if x is None:
        return "None"
    if t is bool:
        return str(x)
    if t is int:
        return str(x)
    if t is float:
        return fmt_float(x)
    if t is complex:
        return "complex(%s, %s)" % (fmt_float(x.real), fmt_float(x.imag))
    if t is str:
        fixed = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in x)
        return "'" + esc(fixed.encode()) + "'"
    if t is bytes:
        return "b'" + esc(x) + "'"
    if t is bytearray:
        return "<builtins.bytearray>b'" + esc(bytes(x)) + "'"
    if isinstance(x, np.generic):
        return "<numpy.%s>%s" % (t.__name__, r(x.item()))
    if t is np.ndarray and x.dtype.str[1:] in NP_DTYPES:   # a tensor to ckpt (issue 8)
        return "<numpy.ndarray>tensor(%s, [%s], [%s], 0, %s, False, False)" % (
            NP_DTYPES[x.dtype.str[1:]], ", ".join(map(str, x.shape)),
            ", ".join(str(st // x.itemsize) for st in x.strides), "'numpy'" if keys else "?")
    if isinstance(x, (SizeRef, torch.Size)):
        return "<torch.Size>(" + join(x) + ")"
    if t is tuple:
        return "(" + join(x) + ")"
    if t is list:
        return "[" + join(x) + "]"
    if t in (set, frozenset):
        return ("set{" if t is set else "frozenset{") + ", ".join(sorted(r(i) for i in x)) + "}"
    if isinstance(x, dict) and t in (dict, collections.OrderedDict, ROrderedDict,
                                     collections.defaultdict, RDefaultDict,
                                     collections.Counter, RCounter):
        cls = ("" if t is dict else
               "<collections.OrderedDict>" if isinstance(x, collections.OrderedDict) else
               "<collections.defaultdict>" if isinstance(x, collections.defaultdict) else
               "<collections.Counter>")
        s = cls + "{" + ", ".join("%s: %s" % (r(k), r(v)) for k, v in x.items()) + "}"
        attrs = getattr(x, "__dict__", None)
        if attrs:
            s += "@{" + ", ".join("%s: %s" % (r(k), r(v)) for k, v in attrs.items()) + "}"
        return s
    if isinstance(x, TensorRef):
        return "%stensor(%s, [%s], [%s], %d, %s, %s, %s)" % (
            "<%s>" % x.cls if x.cls else "", x.dtype, ", ".join(map(str, x.shape)),
            ", ".join(map(str, x.stride)), x.offset, "'%s'" % x.key if keys else "?", x.rg,
            x.param)
    if isinstance(x, torch.Tensor):
        return "tensor(%s, [%s], [%s], %d, ?, %s, %s)" % (
            str(x.dtype)[6:], ", ".join(map(str, x.shape)), ", ".join(map(str, x.stride())),
            x.storage_offset(), x.requires_grad, isinstance(x, torch.nn.Parameter))
    if isinstance(x, StorageRef):
        return "storage('%s', %s, %d)" % (x.key, x.dtype, x.nbytes)
    if isinstance(x, Obj):
        return obj_text(x.fn, x.args, x.newobj, x.state, x.items, x.list, r)
    if isinstance(x, type) or callable(x) and hasattr(x, "__qualname__") or id(x) in NAMES:
        return "@" + gname(x)
    # any other object: what its __reduce_ex__ gives the pickler
    rv = x.__reduce_ex__(proto)
    if isinstance(rv, str):  # pickled as a global, like torch.float16
        return "@%s.%s" % (pickle.whichmodule(x, rv), rv)
    rv = tuple(rv) + (None,) * (5 - len(rv))
    fn, args, state, li, di = rv
    newobj = False
    if fn is copyreg.__newobj__:
        fn, args, newobj = args[0], args[1:], True
    elif fn is copyreg.__newobj_ex__:
        fn, args, kw = args
        args, newobj = tuple(args) + ((kw,) if kw else ()), True
    return obj_text(fn, args, newobj, state, dict(di) if di else None,
                    list(li) if li else None, r)


def obj_text(fn, args, newobj, state, items, lst, r):
    cls = "<%s>" % gname(fn) if (isinstance(fn, type) or id(fn) in NAMES or
                                  hasattr(fn, "__qualname__")) else ""
    s = "%s%s(%s, %s)" % (cls, "new" if newobj else "call", r(fn), r(tuple(args)))
    if state is not None:
        s += ".state(" + r(state) + ")"
    if items:
        s += ".items" + r(items)
    if lst:
        s += ".list" + r(lst)
    return s


# ---- a small assembler for pickles no writer here produces -------------------------------------


def G(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def U(s):
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def I(i):
    return b"J" + struct.pack("<i", i)


def T(*parts):
    return b"(" + b"".join(parts) + b"t"


def R(fn, *args):
    return fn + T(*args) + b"R"


def PID(cls, key, numel):
    return T(U("storage"), G("torch", cls), U(key), U("cpu"), I(numel)) + b"Q"


OD = G("collections", "OrderedDict") + b")R"
NONE, TRUE, FALSE = b"N", b"\x88", b"\x89"


def P2(body):
    return b"\x80\x02" + body + b"."


def V2(storage, offset, size, stride, rg=FALSE, extra=b""):
    return R(G("torch._utils", "_rebuild_tensor_v2"), storage, I(offset), T(*map(I, size)),
             T(*map(I, stride)), rg, OD, extra)


def V3(storage, offset, size, stride, dtype):
    return R(G("torch._utils", "_rebuild_tensor_v3"), storage, I(offset), T(*map(I, size)),
             T(*map(I, stride)), FALSE, OD, G("torch", dtype))


# ---- the cases ---------------------------------------------------------------------------------

CASES = []  # (name, comment, bytes, expected)


def add(name, comment, data, expected):
    CASES.append((name, comment, data, expected))


def expect(data, proto=2):
    try:
        return render(ref_load(data), proto)
    except (Corrupt, UnicodeEncodeError):  # Python's load fails: ckpt's is corrupt
        return "!ECORRUPT"
    except Unsupported:
        return "!EUNSUPPORTED"
    except Limit:
        return "!ELIMIT"


def plain(name, expr, protos=(0, 2, 4, 5), value=None):
    """pickle.dumps(expr); Python's value for it is expr itself, or `value` for a Reduce."""
    obj = eval(expr)
    for proto in protos:
        data = pickle.dumps(obj, protocol=proto)
        want = expect(data, proto)
        real = render(eval(value) if value else obj, proto)
        assert want == real, (name, proto, want, real)
        add("%s_p%d" % (name, proto), "pickle.dumps(%s, protocol=%d)" % (expr, proto), data, want)


def hand(name, comment, data, protos_note=""):
    add(name, comment, data, expect(data))


def torch_case(name, expr, proto=2):
    obj = eval(expr)
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=proto)
    z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    data = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
    want = expect(data, proto)
    buf.seek(0)
    real = render(torch.load(buf), proto, keys=False)
    assert render(ref_load(data), proto, keys=False) == real, (name, real)
    add(name, "data.pkl of torch.save(%s, pickle_protocol=%d)" % (expr, proto), data, want)


def vector(name, path):
    z = zipfile.ZipFile(path)
    data = z.read([n for n in z.namelist() if n.endswith("data.pkl")][0])
    real = render(torch.load(path), 2, keys=False)
    assert render(ref_load(data), 2, keys=False) == real, (name, real)
    add(name, "data.pkl of tests/data/vectors/%s" % os.path.basename(path), data, expect(data))


class Kw:  # pickled with NEWOBJ_EX at protocol 4
    def __init__(self, a, b):
        self.a, self.b = a, b

    def __getnewargs_ex__(self):
        return (self.a,), {"b": self.b}


class Reduce:  # pickles as any call we ask for
    def __init__(self, fn, args):
        self.rv = (fn, args)

    def __reduce__(self):
        return self.rv


def od_meta():
    od = collections.OrderedDict([("fc.weight", 1), ("fc.bias", 2)])
    od._metadata = collections.OrderedDict([("", {"version": 1}), ("fc", {"version": 1})])
    return od


def make_model_sd():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                            torch.nn.Linear(2, 3))
    return m.state_dict()


def make_train_ckpt():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    m(torch.ones(1, 3)).sum().backward()
    opt.step()
    return {"epoch": 5, "arch": "lin", "state_dict": m.state_dict(), "optimizer": opt.state_dict(),
            "best_acc": np.float64(0.75), "args": argparse.Namespace(lr=0.1, arch="lin"),
            "device": torch.device("cpu"), "size": torch.Size([2, 3]), "raw": b"\x00\xff",
            "tags": {1, 2}, "z": 1 + 2j}


def make_views():
    base = torch.arange(12.0)
    return {"base": base, "slice": base[2:6], "t": base.view(3, 4).t(),
            "exp": torch.ones(1, 3).expand(4, 3), "scalar": torch.tensor(3.5),
            "empty": torch.empty(0), "empty2": torch.empty(0, 3), "same": base,
            "half": torch.zeros(2, dtype=torch.float16), "bf16": torch.ones(2, dtype=torch.bfloat16),
            "bool": torch.tensor([True, False]), "u8": torch.tensor([1, 2], dtype=torch.uint8),
            "i8": torch.tensor([-1], dtype=torch.int8), "i16": torch.tensor([3], dtype=torch.int16),
            "i32": torch.tensor([4], dtype=torch.int32), "f64": torch.tensor([0.5], dtype=torch.float64),
            "c64": torch.tensor([1 + 2j], dtype=torch.complex64),
            "c128": torch.tensor([1 - 2j], dtype=torch.complex128)}


def main():
    # scalars and ints of every size (INT/BININT*/LONG/LONG1/LONG4, NONE, bools, floats)
    plain("ints", "[0, 1, -1, 255, 256, 65535, 65536, -2**31, 2**31 - 1, 2**31, 2**63 - 1, "
                  "-2**63, 2**63, -2**63 - 1, 2**64, 10**40, -10**40]", (0, 1, 2, 4))
    plain("bigint", "2**2100 + 7", (0, 2))          # LONG4 at protocol 2
    plain("negbigint", "-(2**2100)", (2,))
    plain("consts", "(None, True, False)", (0, 1, 2))
    plain("floats", "[0.5, -1.25e-300, 1e308, float('inf'), float('-inf'), float('nan'), "
                    "3.141592653589793, 0.1]", (0, 1, 2))
    plain("strs", r"['', 'abc', 'caf\u00e9', '\u20ac', '\U0001f600', 'a\\b\nc\r\x00\x1a', "
                  r"'quote\'\"', 'x' * 300]", (0, 1, 2, 4, 5))
    plain("surrogate", r"'a\ud800b'", (0, 2, 4))
    plain("bytes", "[b'', b'abc', bytes(range(256)), b'y' * 300]", (0, 2, 3, 4))
    plain("bytearray", "bytearray(b'ab\\xff')", (0, 2, 3, 5))
    plain("tuples", "((), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), ((),))", (0, 1, 2))
    plain("lists", "[[], [1], [[[]]], list(range(1100))]", (0, 1, 2))
    plain("dicts", "[{}, {'a': 1}, {(1, 2): 'tk', 3: None}, {i: i for i in range(1100)}]", (0, 1, 2))
    plain("sets", "[set(), {1, 2, 3}, frozenset(), frozenset({'a', 'b'}), set(range(1100))]",
          (0, 2, 4))
    plain("complex", "[complex(1.5, -2), 1j]", (0, 2))
    plain("shared", "(lambda l: [l, l, {'k': l}])([1, 'x'])", (0, 2, 4))
    plain("longmemo", "(lambda l: l + l)([str(i) for i in range(300)])", (2,))  # LONG_BINPUT/GET
    plain("nested", "(lambda f: f(f, 60))(lambda f, n: [f(f, n - 1)] if n else [])", (2,))
    plain("od", "collections.OrderedDict([('a', 1), ('b', [2])])", (0, 2, 4, 5))
    plain("odmeta", "od_meta()", (0, 2, 4))
    plain("defaultdict", "collections.defaultdict(list, {'a': [1]})", (0, 2, 4))
    plain("counter", "collections.Counter({'x': 3, 'y': 1})", (0, 2, 4))
    plain("namespace", "argparse.Namespace(lr=0.1, arch='resnet50')", (0, 1, 2, 4, 5))
    plain("newobj_ex", "Kw(1, 'two')", (4,))
    plain("numpy", "[np.float64(0.99), np.float32(0.5), np.float16(1.5), np.int64(-7), "
                   "np.int32(-8), np.int16(300), np.int8(-9), np.uint8(200), np.uint16(60000), "
                   "np.uint32(4000000000), np.uint64(2**64 - 1), np.bool_(True), "
                   "np.complex64(1 + 2j), np.complex128(3 - 4j)]", (0, 2, 4))
    plain("npbig", "Reduce(np.core.multiarray.scalar, (np.dtype('>f8'), struct.pack('>d', 1.5)))",
          (2,), "np.float64(1.5)")
    plain("npbig_i", "Reduce(np.core.multiarray.scalar, (np.dtype('>i4'), struct.pack('>i', -3)))",
          (2,), "np.int32(-3)")
    plain("npdtype", "np.dtype('f8')", (2,))
    plain("ndarray", "np.arange(3.0)", (2,))
    plain("npobj", "Reduce(np.core.multiarray.scalar, (np.dtype('f16'), bytes(16)))", (2,))
    hand("np_badsize", "numpy scalar of dtype f8 from 4 bytes",
         P2(R(G("numpy.core.multiarray", "scalar"),
              R(G("numpy", "dtype"), U("f8"), FALSE, TRUE) + T(I(3), U("<"), NONE, NONE, NONE,
                                                                I(-1), I(-1), I(0)) + b"b",
              b"C\x04abcd")))
    plain("reduce_set", "Reduce(set, ([3, 1],))", (2,), "{3, 1}")
    plain("reduce_bytes", "Reduce(bytes, ([104, 105],))", (2,), "b'hi'")
    plain("reduce_dict", "Reduce(dict, ([('a', 1), ('b', 2)],))", (2,), "{'a': 1, 'b': 2}")
    plain("reduce_cplx", "Reduce(complex, (2,))", (2,), "complex(2)")
    plain("reduce_odpairs", "Reduce(collections.OrderedDict, ((('z', 1), ['y', 2]),))", (2,),
          "collections.OrderedDict([('z', 1), ('y', 2)])")
    plain("os_system", "Reduce(os.system, ('echo hacked',))", (0, 2, 4))
    plain("eval", "Reduce(eval, ('1+1',))", (2,))
    plain("size", "torch.Size([2, 3])", (2,))
    plain("device", "torch.device('cuda', 0)", (2,))

    # forms only Python 2 (or a hand) writes
    hand("py2_text", "protocol 0 as Python 2 wrote it: STRING with escapes, INT bools, LONG, FLOAT",
         b"(dp0\nS'a'\np1\nI01\nsS'b'\np2\nI00\nsS'c'\np3\nI42\nsS'd'\np4\n"
         b"L123456789012345678901234567890L\nsS'e'\np5\nF1.5\nsS'f'\np6\n"
         b"S'caf\\xe9 \\'q\\' \\n \\101\\t\\\\ \\z'\np7\nsS\"dq\"\np8\ng8\ns.")
    hand("py2_bin", "BINSTRING and SHORT_BINSTRING (Python 2 str, latin-1)",
         b"\x80\x02U\x03abcq\x00T\x04\x00\x00\x00\xe9\xe8xyq\x01h\x00\x87q\x02.")
    hand("py2_set", "__builtin__.set([1, 2]) as Python 2 pickles it",
         b"\x80\x02c__builtin__\nset\nq\x00]q\x01(K\x01K\x02e\x85q\x02Rq\x03.")
    hand("py2_copyreg", "copy_reg._reconstructor (old-style reduce) with a BUILD dict",
         b"ccopy_reg\n_reconstructor\np0\n(c__main__\nFoo\np1\nc__builtin__\nobject\np2\nNtp3\n"
         b"Rp4\n(dp5\nS'x'\np6\nI1\nsb.")
    hand("inst_noargs", "INST without arguments (cls.__new__(cls)), then BUILD",
         b"(i__main__\nFoo\np0\n(dp1\nS'x'\np2\nI1\nsb.")
    hand("inst_args", "INST with arguments: Bar(1, 2)", b"(I1\nI2\ni__main__\nBar\n.")
    hand("obj", "OBJ: Baz(1) and Baz.__new__(Baz)",
         b"\x80\x01((c__main__\nBaz\nK\x01o(c__main__\nBaz\not.")
    hand("persid", "PERSID text id", b"Pkey1\n.")
    hand("binpersid", "BINPERSID of a tuple that is not a storage", b"\x80\x02X\x01\x00\x00\x00kK\x07\x86Q.")
    hand("dup_pop", "DUP, POP, POP_MARK, and POP of an empty mark (discards the mark)",
         b"\x80\x02K\x012\x86K\x090K\x07(K\x01K\x021(0\x86.")
    hand("int_forms", "INT text forms: sign, hex, blanks, +1 as a bool",
         b"(I-5\nI0x1f\nI 42 \nI+1\nI007\nL-0x10L\nt.")
    hand("float_forms", "FLOAT text forms", b"(F1e-5\nFinf\nFnan\nF-2.5\nFINFINITY\nt.")
    hand("unicode_esc", "UNICODE raw-unicode-escape: \\u, \\U, an escaped backslash",
         b"(V\\u20ac\\U0001f600\nVa\\\\u0041\nV\xe9\nt.")
    hand("unicode8", "BINUNICODE8 and BINBYTES8",
         b"\x80\x04\x8d\x02\x00\x00\x00\x00\x00\x00\x00hi\x8e\x01\x00\x00\x00\x00\x00\x00\x00z\x86.")
    hand("frame", "FRAME, MEMOIZE, STACK_GLOBAL, SHORT_BINUNICODE",
         b"\x80\x04\x95\x1f\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrderedDict"
         b"\x94\x93\x94)R\x94.")
    hand("additems", "EMPTY_SET, ADDITEMS, FROZENSET", b"\x80\x04\x8f(K\x01K\x02\x90(K\x03\x91\x86.")
    hand("build_slots", "BUILD with a (dict, slotstate) state on an OrderedDict",
         P2(OD + T(b"}" + U("a") + I(1) + b"s", b"}" + U("b") + I(2) + b"s") + b"b"))
    hand("build_obj_items", "SETITEMS and APPENDS on an object",
         P2(R(G("collections", "deque")) + b"(" + U("k") + I(1) + b"u(" + I(5) + b"e"))
    hand("build_none", "BUILD with a None state is ignored", P2(I(3) + NONE + b"b"))
    hand("defaultdict_pairs", "defaultdict(list, [('a', 1)])",
         P2(R(G("collections", "defaultdict"), G("builtins", "list"),
              b"]" + T(U("a"), I(1)) + b"a")))
    hand("codecs_utf8", "_codecs.encode(str, 'utf-8') and an unknown encoding",
         P2(T(R(G("_codecs", "encode"), U("\u20ac"), U("utf-8")),
              R(G("_codecs", "encode"), U("a"), U("rot13")))))
    hand("codecs_bad", "_codecs.encode(str, 'latin1') with a character above U+00FF",
         P2(R(G("_codecs", "encode"), U("\u20ac"), U("latin1"))))

    # tensors: hand-assembled forms (torch 2.x writers, refusals)
    st = PID("FloatStorage", "0", 6)
    hand("t_v2", "_rebuild_tensor_v2, 2x3 float32 view", P2(V2(st, 0, (2, 3), (3, 1))))
    hand("t_v2_meta", "_rebuild_tensor_v2 with the 7th metadata argument",
         P2(V2(st, 1, (5,), (1,), TRUE, b"}")))
    hand("t_v1", "_rebuild_tensor (4 arguments)",
         P2(R(G("torch._utils", "_rebuild_tensor"), st, I(2), T(I(2)), T(I(2)))))
    hand("t_v3", "_rebuild_tensor_v3 on an UntypedStorage, float8_e4m3fn",
         P2(V3(PID("UntypedStorage", "u", 6), 0, (2, 3), (3, 1), "float8_e4m3fn")))
    hand("t_v3_bf16", "_rebuild_tensor_v3 on an UntypedStorage, bfloat16",
         P2(V3(PID("UntypedStorage", "u", 6), 1, (2,), (1,), "bfloat16")))
    hand("t_v3_bad", "_rebuild_tensor_v3, 3 bfloat16 elements in 6 bytes from offset 1",
         P2(V3(PID("UntypedStorage", "u", 6), 1, (3,), (1,), "bfloat16")))
    hand("t_v3_unknown", "_rebuild_tensor_v3 with a dtype ckpt does not know",
         P2(V3(PID("UntypedStorage", "u", 6), 0, (1,), (1,), "float4_e2m1fn_x2")))
    hand("t_v2_untyped", "_rebuild_tensor_v2 on an UntypedStorage",
         P2(V2(PID("UntypedStorage", "u", 6), 0, (1,), (1,))))
    hand("t_oob_offset", "offset 1 + 6 elements in a 6-element storage", P2(V2(st, 1, (2, 3), (3, 1))))
    hand("t_oob_stride", "size (2, 3) stride (4, 1) needs 7 elements", P2(V2(st, 0, (2, 3), (4, 1))))
    hand("t_exp", "stride 0 (expand) fits", P2(V2(st, 0, (4, 3), (0, 1))))
    hand("t_empty_far", "an empty tensor far past the end is not checked",
         P2(V2(st, 1000, (0, 3), (3, 1))))
    hand("t_neg_size", "a negative size", P2(V2(st, 0, (-1,), (1,))))
    hand("t_neg_stride", "a negative stride", P2(V2(st, 5, (2,), (-1,))))
    hand("t_mismatch", "2 sizes, 1 stride", P2(V2(st, 0, (2, 3), (1,))))
    hand("t_numel_ovf", "numel above 2^63",
         P2(R(G("torch._utils", "_rebuild_tensor_v2"), st, I(0),
              T(b"\x8a\x08" + struct.pack("<q", 2**62), I(4)), T(I(1), I(1)), FALSE, OD)))
    hand("t_span_ovf", "(size - 1) * stride above 2^64",
         P2(R(G("torch._utils", "_rebuild_tensor_v2"), st, I(0), T(I(5)),
              T(b"\x8a\x08" + struct.pack("<q", 2**62)), FALSE, OD)))
    hand("t_dims", "65 dimensions", P2(V2(st, 0, (1,) * 65, (1,) * 65)))
    hand("t_param_state", "_rebuild_parameter_with_state",
         P2(R(G("torch._utils", "_rebuild_parameter_with_state"), V2(st, 0, (6,), (1,)), TRUE, OD,
              b"}")))
    hand("t_param_shared", "[t, _rebuild_parameter(t, True, OrderedDict())] with t memoized",
         P2(b"(" + V2(st, 0, (6,), (1,)) + b"q\x00" +
            R(G("torch._utils", "_rebuild_parameter"), b"h\x00", TRUE, OD) + b"l"))
    hand("t_from_type", "_rebuild_from_type_v2 of a plain torch.Tensor",
         P2(R(G("torch._tensor", "_rebuild_from_type_v2"), G("torch._utils", "_rebuild_tensor_v2"),
              G("torch", "Tensor"), T(st, I(0), T(I(3)), T(I(2)), FALSE, OD), b"}")))
    hand("t_from_type_sub", "_rebuild_from_type_v2 of a tensor subclass",
         P2(R(G("torch._tensor", "_rebuild_from_type_v2"), G("torch._utils", "_rebuild_tensor_v2"),
              G("mylib", "MyTensor"), T(st, I(0), T(I(3)), T(I(2)), FALSE, OD), b"}")))
    hand("t_from_type_param", "_rebuild_from_type_v2 as a Parameter",
         P2(R(G("torch._tensor", "_rebuild_from_type_v2"), G("torch._utils", "_rebuild_tensor_v2"),
              G("torch.nn.parameter", "Parameter"), T(st, I(0), T(I(3)), T(I(2)), FALSE, OD),
              b"}")))
    hand("t_from_type_obj", "_rebuild_from_type_v2 of something that is not a tensor",
         P2(R(G("torch._tensor", "_rebuild_from_type_v2"), G("mylib", "make"),
              G("mylib", "Thing"), T(I(1)), b"}")))
    hand("t_storage_alone", "a storage outside any tensor", P2(st))

    # torch.save output (checked against torch.load)
    torch_case("torch_sd", "make_model_sd()")
    torch_case("torch_views", "make_views()")
    torch_case("torch_param", "[torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.zeros(1), "
                              "requires_grad=False)]")
    torch_case("torch_train", "make_train_ckpt()")
    torch_case("torch_train_p4", "make_train_ckpt()", proto=4)
    for v in ("checkpoint.pt", "views.pt", "module_sd.pt", "two.pt", "cwriter_2x_layout.pt"):
        vector("vec_" + v.split(".")[0], os.path.join(VECTORS, v))
    emit()


def c_bytes(b, indent="     "):
    out, line = [], '"'
    for c in b:
        ch = chr(c)
        piece = ch if (0x20 <= c < 0x7F and ch not in '\\"?') else "\\%03o" % c
        if len(line) + len(piece) > 92:
            out.append(line + '"')
            line = '"'
        line += piece
    out.append(line + '"')
    return ("\n" + indent).join(out)


def emit():
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and sys.argv[1].startswith("-")
                             and sys.argv[1] != "-"):
        sys.exit("usage: gen_cases.py [OUT]   (default, or -: stdout)")
    out = io.StringIO()
    w = out.write
    w("/* cases.h - generated by gen_cases.py (run it with /usr/bin/python3); do not edit.\n"
      " * Each case: a pickle and the rendering of what Python's Unpickler makes of it, with\n"
      " * stand-ins for every import (see gen_cases.py); \"!ESTATUS\" means it must fail so. */\n")
    w("static const struct pickle_case {\n    const char *name;\n    const char *data;\n"
      "    size_t len;\n    const char *expected;\n} pickle_cases[] = {\n")
    for name, comment, data, want in CASES:
        lines = textwrap.wrap(comment.replace("*/", "* /"), 92) or [""]
        w("    /* " + "\n     * ".join(lines) + " */\n")
        w('    {"%s",\n     %s,\n     %d,\n     %s},\n' % (name, c_bytes(data), len(data),
                                                         c_bytes(want.encode())))
    w("};\n")
    if len(sys.argv) == 2 and sys.argv[1] != "-":
        with open(sys.argv[1], "w") as f:
            f.write(out.getvalue())
    else:
        sys.stdout.write(out.getvalue())


if __name__ == "__main__":
    main()
