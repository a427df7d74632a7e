"""
_capi.py - the parts of include/ckpt.h the Python module uses, declared for ctypes.

Every structure here repeats a C declaration field for field, in order; a change to one of
them in ckpt.h must be made here too (tests/test_python.py reads every kind of field through
these, so a layout that drifts fails there). Finding the library:

  1. $CKPT_LIBRARY, the path of libckpt.so (a build tree: build/libckpt.so);
  2. the library `cmake --install` put beside this package (_install.py, written at install
     time, holds its path relative to this folder);
  3. ctypes.util.find_library("ckpt"): the linker's search path (ldconfig).
"""

import ctypes
import ctypes.util
import os

c_char_pp = ctypes.POINTER(ctypes.c_char_p)
c_int64_p = ctypes.POINTER(ctypes.c_int64)
c_size = ctypes.c_size_t


class Error(ctypes.Structure):  # ckpt_error
    _fields_ = [("status", ctypes.c_int), ("message", ctypes.c_char * 512),
                ("src_file", ctypes.c_char_p), ("src_line", ctypes.c_int)]


class Value(ctypes.Structure):  # ckpt_value
    pass


ValueP = ctypes.POINTER(Value)
ValuePP = ctypes.POINTER(ValueP)


class Tensor(ctypes.Structure):  # ckpt_tensor
    _fields_ = [("dtype", ctypes.c_int), ("ndim", ctypes.c_int), ("shape", c_int64_p),
                ("stride", c_int64_p), ("offset", ctypes.c_int64), ("numel", ctypes.c_int64),
                ("storage", ctypes.c_void_p), ("requires_grad", ctypes.c_bool),
                ("is_parameter", ctypes.c_bool)]


TensorP = ctypes.POINTER(Tensor)


class _Complex(ctypes.Structure):
    _fields_ = [("re", ctypes.c_double), ("im", ctypes.c_double)]


class _Str(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("len", c_size)]


class _Seq(ctypes.Structure):
    _fields_ = [("items", ValuePP), ("len", c_size), ("cap", c_size)]


class _Dict(ctypes.Structure):
    _fields_ = [("keys", ValuePP), ("vals", ValuePP), ("len", c_size), ("cap", c_size),
                ("attrs", ValueP), ("index", ctypes.c_void_p)]


class _Global(ctypes.Structure):
    _fields_ = [("module", ctypes.c_char_p), ("name", ctypes.c_char_p)]


class _Obj(ctypes.Structure):
    _fields_ = [("callable", ValueP), ("args", ValueP), ("state", ValueP), ("items", ValueP),
                ("list", ValueP), ("newobj", ctypes.c_bool)]


class _ValueUnion(ctypes.Union):
    _fields_ = [("b", ctypes.c_bool), ("i", ctypes.c_int64), ("f", ctypes.c_double),
                ("c", _Complex), ("str", _Str), ("seq", _Seq), ("dict", _Dict),
                ("glob", _Global), ("obj", _Obj), ("tensor", TensorP),
                ("storage", ctypes.c_void_p)]


Value._fields_ = [("type", ctypes.c_int), ("flags", ctypes.c_uint32),
                  ("class_name", ctypes.c_char_p), ("u", _ValueUnion)]

# ckpt_type
(T_NONE, T_BOOL, T_INT, T_BIGINT, T_FLOAT, T_COMPLEX, T_STR, T_BYTES, T_TUPLE, T_LIST, T_SET,
 T_DICT, T_GLOBAL, T_OBJECT, T_TENSOR, T_STORAGE) = range(16)
VF_FROZEN = 2


class GlobalRef(ctypes.Structure):  # ckpt_global_ref
    _fields_ = [("module", ctypes.c_char_p), ("name", ctypes.c_char_p), ("kind", ctypes.c_int),
                ("where", ctypes.c_char_p), ("offset", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("torch_load", ctypes.c_bool)]


class ScanResult(ctypes.Structure):  # ckpt_scan_result
    _fields_ = [("format", ctypes.c_char_p), ("globals", ctypes.POINTER(GlobalRef)),
                ("n_globals", c_size), ("parse_error", ctypes.c_char_p),
                ("safe", ctypes.c_bool), ("internal", ctypes.c_void_p),
                ("notes", ctypes.POINTER(ctypes.c_char_p)), ("n_notes", c_size)]


class SdEntry(ctypes.Structure):  # ckpt_sd_entry
    _fields_ = [("key", ctypes.c_char_p), ("value", ValueP), ("is_tensor", ctypes.c_bool),
                ("dtype", ctypes.c_int), ("ndim", ctypes.c_int), ("shape", c_int64_p)]


class SdMeta(ctypes.Structure):  # ckpt_sd_meta
    _fields_ = [("module", ctypes.c_char_p), ("version", ctypes.c_int64)]


class Sd(ctypes.Structure):  # ckpt_sd
    _fields_ = [("entries", ctypes.POINTER(SdEntry)), ("n_entries", c_size),
                ("has_metadata", ctypes.c_bool), ("meta", ctypes.POINTER(SdMeta)),
                ("n_meta", c_size), ("prefix", ctypes.c_char_p), ("internal", ctypes.c_void_p)]


class SdMismatch(ctypes.Structure):  # ckpt_sd_mismatch
    _fields_ = [("key", ctypes.c_char_p), ("checkpoint", ctypes.POINTER(SdEntry)),
                ("model", ctypes.POINTER(SdEntry))]


class SdVerdict(ctypes.Structure):  # ckpt_sd_verdict
    _fields_ = [("ok", ctypes.c_bool), ("missing", c_char_pp), ("n_missing", c_size),
                ("unexpected", c_char_pp), ("n_unexpected", c_size),
                ("mismatch", ctypes.POINTER(SdMismatch)), ("n_mismatch", c_size),
                ("errors", c_char_pp), ("n_errors", c_size), ("message", ctypes.c_char_p),
                ("n_loaded", c_size), ("n_filled", c_size), ("internal", ctypes.c_void_p)]


class SdCheckOptions(ctypes.Structure):  # ckpt_sd_check_options
    _fields_ = [("arch", ctypes.c_char_p), ("num_classes", ctypes.c_int64),
                ("against", ctypes.c_void_p), ("against_key", ctypes.c_char_p),
                ("key", ctypes.c_char_p), ("strip_prefix", ctypes.c_char_p),
                ("scan_values", ctypes.c_bool), ("file_name", ctypes.c_char_p),
                ("explain", ctypes.c_bool)]


class SdCandidate(ctypes.Structure):  # ckpt_sd_candidate
    _fields_ = [("path", c_char_pp), ("path_len", c_size), ("path_str", ctypes.c_char_p),
                ("dict", ValueP), ("n_tensors", c_size), ("n_entries", c_size),
                ("prefix", ctypes.c_char_p), ("arch", ctypes.c_void_p), ("matched", c_size),
                ("expected", c_size)]


class SdWarning(ctypes.Structure):  # ckpt_sd_warning
    _fields_ = [("code", ctypes.c_char_p), ("message", ctypes.c_char_p)]


class SdKeyPair(ctypes.Structure):  # ckpt_sd_key_pair
    _fields_ = [("model_key", ctypes.c_char_p), ("file_key", ctypes.c_char_p)]


class SdLeftOut(ctypes.Structure):  # ckpt_sd_left_out
    _fields_ = [("file_key", ctypes.c_char_p), ("why", ctypes.c_char_p)]


class SdReport(ctypes.Structure):  # ckpt_sd_report
    _fields_ = [("candidates", ctypes.POINTER(SdCandidate)), ("n_candidates", c_size),
                ("chosen", ctypes.POINTER(SdCandidate)), ("sd", ctypes.POINTER(Sd)),
                ("prefix", ctypes.c_char_p), ("arch", ctypes.c_void_p),
                ("num_classes", ctypes.c_int64), ("model", ctypes.c_void_p),
                ("verdict", ctypes.POINTER(SdVerdict)),
                ("whole_file", ctypes.POINTER(SdVerdict)),
                ("key_map", ctypes.POINTER(SdKeyPair)), ("n_key_map", c_size),
                ("left_out", ctypes.POINTER(SdLeftOut)), ("n_left_out", c_size),
                ("n_tensors", c_size), ("n_parameters", ctypes.c_int64),
                ("warnings", ctypes.POINTER(SdWarning)), ("n_warnings", c_size),
                ("python", ctypes.c_char_p), ("internal", ctypes.c_void_p),
                ("naming", ctypes.c_char_p), ("verdict_kind", ctypes.c_char_p),
                ("alternatives", ctypes.POINTER(SdCandidate)), ("n_alternatives", c_size),
                ("alternative_kinds", c_char_pp),
                ("renames", ctypes.POINTER(SdKeyPair)), ("n_renames", c_size),
                ("backbone", ctypes.c_bool), ("backbone_aside", c_size),
                ("sequential_head", ctypes.c_bool)]


def _library_path():
    env = os.environ.get("CKPT_LIBRARY")
    if env:
        return env
    try:
        from . import _install  # written by `cmake --install`
        return os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                             _install.LIBRARY))
    except ImportError:
        pass
    return ctypes.util.find_library("ckpt")


def _load():
    path = _library_path()
    if not path:
        raise ImportError("ckpt: libckpt.so not found: set CKPT_LIBRARY to its path "
                          "(a build tree's build/libckpt.so) or install it")
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise ImportError("ckpt: cannot load '%s': %s" % (path, e)) from None
    P, V = ctypes.POINTER, ctypes.c_void_p
    err = P(Error)
    sigs = {
        "ckpt_status_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ckpt_dtype_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ckpt_dtype_size": (c_size, [ctypes.c_int]),
        "ckpt_format_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ckpt_global_kind_name": (ctypes.c_char_p, [ctypes.c_int]),
        "ckpt_open": (ctypes.c_int, [ctypes.c_char_p, V, P(V), err]),
        "ckpt_close": (None, [V]),
        "ckpt_file_format": (ctypes.c_int, [V]),
        "ckpt_file_size": (ctypes.c_uint64, [V]),
        "ckpt_root": (ValueP, [V]),
        "ckpt_globals": (c_size, [V, P(P(GlobalRef))]),
        "ckpt_storage_key": (ctypes.c_char_p, [V]),
        "ckpt_storage_nbytes": (ctypes.c_uint64, [V]),
        "ckpt_storage_dtype": (ctypes.c_int, [V]),
        "ckpt_tensor_nbytes": (ctypes.c_uint64, [TensorP]),
        "ckpt_tensor_is_contiguous": (ctypes.c_bool, [TensorP]),
        "ckpt_tensor_data": (ctypes.c_int, [TensorP, P(V), err]),
        "ckpt_tensor_read": (ctypes.c_int, [TensorP, ctypes.c_int, V, c_size, err]),
        "ckpt_scan": (ctypes.c_int, [ctypes.c_char_p, V, P(P(ScanResult)), err]),
        "ckpt_scan_free": (None, [P(ScanResult)]),
        "ckpt_sd_check": (ctypes.c_int, [V, P(SdCheckOptions), P(P(SdReport)), err]),
        "ckpt_sd_report_free": (None, [P(SdReport)]),
        "ckpt_arch_name": (ctypes.c_char_p, [V]),
        "ckpt_arch_count": (c_size, []),
        "ckpt_arch_at": (V, [c_size]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args
    return lib, path


lib, LIBRARY_PATH = _load()
