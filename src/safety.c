/*
 * safety.c - classify the globals a pickle names (ckpt_classify_global).
 *
 * A pickle can name any importable Python object; torch.load(weights_only=False) imports and
 * calls what it names, so the names alone tell whether loading a file in Python would run code.
 * Four kinds:
 *
 *   WEIGHTS    on PyTorch 2.6's weights_only allowlist (torch/_weights_only_unpickler.py,
 *              _get_allowed_globals): rebuild functions, storage and tensor classes, dtypes,
 *              qschemes, OrderedDict, Counter, torch.Size, torch.device, _codecs.encode, set...
 *   DATA       classes whose construction from pickled arguments cannot run code: numpy
 *              scalars and arrays, argparse.Namespace, datetime, pathlib, dtype aliases...
 *   DANGEROUS  known to run code or touch the system: os.system, builtins.eval, subprocess.*,
 *              runpy, pickle.loads, socket, profilers, idlelib, torch internals that exec...
 *              (the advisories behind picklescan's _unsafe_globals, and more).
 *   UNKNOWN    everything else: importing it may run arbitrary module code.
 *
 * One table, sorted by module (strcmp order), each row a space-separated list of names of one
 * kind, or "*" for the whole module and its submodules. A few families are rules in code rather
 * than rows: storage and tensor classes in any torch module, numpy.dtypes.*DType, and any
 * global that is itself a module (torch._utils), which a pickle only names to rewrite it.
 */
#include "ckpt.h"

#include <stdbool.h>
#include <string.h>

#define W CKPT_GLOBAL_WEIGHTS
#define D CKPT_GLOBAL_DATA
#define X CKPT_GLOBAL_DANGEROUS

/* Longest module or qualified name we try prefixes of; longer names are still classified by
 * exact lookups and module wildcards, just not by their qualname prefixes. */
#define SAFETY_MAX_NAME 256

typedef struct safety_rule {
    const char *module;
    ckpt_global_kind kind;
    const char *names; /* space-separated, or "*": every name in the module and submodules */
} safety_rule;

/* Sorted by module with strcmp (test_safety checks it). Several rows may share a module. */
static const safety_rule rules[] = {
    {"_aix_support", X, "*"},
    {"_codecs", W, "encode"},
    {"_ctypes", X, "*"},
    {"_functools", X, "partial reduce"},
    {"_io", X, "FileIO open open_code"},
    {"_operator", X, "attrgetter itemgetter methodcaller"},
    {"_osx_support", X, "*"},
    {"_pickle", X, "*"},
    {"_posixsubprocess", X, "*"},
    {"_pyrepl", X, "*"},
    {"_socket", X, "*"},
    {"_ssl", X, "*"},
    {"_thread", X, "*"},
    {"_winapi", X, "*"},
    {"_winreg", X, "*"},
    {"aiohttp", X, "*"},
    {"argparse", D, "Namespace"},
    {"asyncio", X, "*"},
    {"bdb", X, "*"},
    {"builtins", W, "bytearray complex set"},
    {"builtins", D, "bool bytes dict float frozenset int list object range slice str tuple"},
    {"builtins", X, "__import__ apply breakpoint compile delattr eval exec execfile exit getattr "
                    "globals help input locals open quit raw_input reload setattr vars"},
    {"cPickle", X, "*"},
    {"cProfile", X, "*"},
    {"cloudpickle", X, "*"},
    {"code", X, "*"},
    {"codeop", X, "*"},
    {"collections", W, "Counter OrderedDict"},
    {"collections", D, "defaultdict deque"},
    {"commands", X, "*"},
    {"concurrent", X, "*"},
    {"copyreg", D, "__newobj__ __newobj_ex__ _reconstructor"},
    {"ctypes", X, "*"},
    {"datetime", D, "date datetime time timedelta timezone"},
    {"decimal", D, "Decimal"},
    {"dill", X, "*"},
    {"distutils", X, "*"},
    {"doctest", X, "*"},
    {"ensurepip", X, "*"},
    {"fractions", D, "Fraction"},
    {"ftplib", X, "*"},
    {"functools", X, "partial partialmethod reduce"},
    {"glob", X, "*"},
    {"http", X, "*"},
    {"httplib", X, "*"},
    {"idlelib", X, "*"},
    {"imaplib", X, "*"},
    {"imp", X, "*"},
    {"importlib", X, "*"},
    {"io", X, "FileIO open open_code"},
    {"joblib", X, "*"},
    {"lib2to3", X, "*"},
    {"logging", X, "FileHandler"},
    {"logging.config", X, "*"},
    {"logging.handlers", X, "*"},
    {"marshal", X, "*"},
    {"msvcrt", X, "*"},
    {"multiprocessing", X, "*"},
    {"nntplib", X, "*"},
    {"nt", X, "*"},
    {"numpy", D, "dtype ndarray"},
    {"numpy", X, "fromfile genfromtxt load loadtxt save savetxt savez"},
    {"numpy._core.multiarray", D, "_reconstruct scalar"},
    {"numpy._core.numeric", D, "_frombuffer"},
    {"numpy.core.multiarray", D, "_reconstruct scalar"},
    {"numpy.core.numeric", D, "_frombuffer"},
    {"numpy.ctypeslib", X, "*"},
    {"numpy.distutils", X, "*"},
    {"numpy.f2py", X, "*"},
    {"numpy.lib._npyio_impl", X, "*"},
    {"numpy.lib.format", X, "*"},
    {"numpy.lib.npyio", X, "*"},
    {"numpy.testing", X, "*"},
    {"operator", X, "attrgetter itemgetter methodcaller"},
    {"os", X, "*"},
    {"pandas", X, "read_pickle"},
    {"pandas.io.pickle", X, "*"},
    {"pathlib", D, "Path PosixPath PurePath PurePosixPath PureWindowsPath WindowsPath"},
    {"pdb", X, "*"},
    {"pickle", X, "*"},
    {"pip", X, "*"},
    {"pkg_resources", X, "*"},
    {"pkgutil", X, "*"},
    {"platform", X, "popen"},
    {"popen2", X, "*"},
    {"poplib", X, "*"},
    {"posix", X, "*"},
    {"profile", X, "*"},
    {"pty", X, "*"},
    {"pydoc", X, "*"},
    {"requests", X, "*"},
    {"runpy", X, "*"},
    {"setuptools", X, "*"},
    {"shelve", X, "*"},
    {"shutil", X, "*"},
    {"signal", X, "*"},
    {"site", X, "*"},
    {"smtplib", X, "*"},
    {"socket", X, "*"},
    {"socketserver", X, "*"},
    {"ssl", X, "*"},
    {"subprocess", X, "*"},
    {"sys", X, "*"},
    {"telnetlib", X, "*"},
    {"tempfile", X, "*"},
    {"test", X, "*"},
    {"threading", X, "*"},
    {"timeit", X, "*"},
    /* str(dtype) for every dtype torch 2.6 allowlists: the storage map, _new_dtypes(),
     * uint1..7 and int1..7. */
    {"torch", W, "Size Tensor device "
                 "bfloat16 bits16 bits1x8 bits2x4 bits4x2 bits8 bool complex128 complex32 "
                 "complex64 float16 float32 float64 float8_e4m3fn float8_e4m3fnuz float8_e5m2 "
                 "float8_e5m2fnuz int1 int16 int2 int3 int32 int4 int5 int6 int64 int7 int8 "
                 "qint32 qint8 quint2x4 quint4x2 quint8 uint1 uint16 uint2 uint3 uint32 uint4 "
                 "uint5 uint6 uint64 uint7 uint8 "
                 "per_channel_affine per_channel_affine_float_qparams per_channel_symmetric "
                 "per_tensor_affine per_tensor_symmetric"},
    /* Harmless constants that are not on the 2.6 list: dtype aliases (a dtype pickles under
     * its canonical name), later dtypes, layouts and memory formats. */
    {"torch", D, "cdouble cfloat chalf double float half int long short "
                 "float4_e2m1fn_x2 float8_e8m0fnu "
                 "_mkldnn jagged sparse_bsc sparse_bsr sparse_coo sparse_csc sparse_csr strided "
                 "channels_last channels_last_3d contiguous_format preserve_format"},
    {"torch", X, "load"},
    {"torch._dynamo", X, "*"},
    {"torch._inductor", X, "*"},
    {"torch._tensor", W, "_rebuild_from_type_v2"},
    {"torch._utils", W, "_rebuild_device_tensor_from_cpu_tensor _rebuild_device_tensor_from_numpy "
                        "_rebuild_meta_tensor_no_storage _rebuild_nested_tensor _rebuild_parameter "
                        "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_csr_tensor "
                        "_rebuild_sparse_tensor _rebuild_tensor _rebuild_tensor_v2 "
                        "_rebuild_tensor_v3 _rebuild_wrapper_subclass"},
    {"torch.distributed.rpc", X, "*"},
    {"torch.fx.experimental.symbolic_shapes", X, "*"},
    {"torch.hub", X, "*"},
    {"torch.jit", X, "load"},
    {"torch.jit.unsupported_tensor_ops", X, "*"},
    {"torch.nn.parameter", W, "Parameter"},
    {"torch.package", X, "*"},
    {"torch.serialization", W, "_get_layout"},
    {"torch.serialization", X, "_legacy_load _load load"},
    {"torch.storage", W, "TypedStorage UntypedStorage"},
    {"torch.storage", X, "_load_from_bytes"}, /* torch.load of bytes inside the pickle */
    {"torch.testing._internal", X, "*"},
    {"torch.torch_version", D, "TorchVersion"},
    {"torch.utils._config_module", X, "*"},
    {"torch.utils.bottleneck", X, "*"},
    {"torch.utils.collect_env", X, "*"},
    {"torch.utils.cpp_extension", X, "*"},
    {"torch.utils.data.datapipes.utils.decoder", X, "*"},
    {"trace", X, "*"},
    {"types", D, "SimpleNamespace"},
    {"types", X, "CodeType FunctionType LambdaType MethodType ModuleType"},
    {"urllib", X, "*"},
    {"urllib2", X, "*"},
    {"urllib3", X, "*"},
    {"uuid", D, "UUID"},
    {"uuid", X, "_get_command_stdout"},
    {"venv", X, "*"},
    {"webbrowser", X, "*"},
    {"winreg", X, "*"},
    {"xmlrpc", X, "*"},
    {"yaml", X, "full_load full_load_all load load_all unsafe_load unsafe_load_all"},
    {"zipimport", X, "*"},
};

#define N_RULES (sizeof rules / sizeof rules[0])

/* Storage classes (torch._storage_classes) live in torch and torch.cuda; torch.load accepts
 * them from any module, so any torch module is taken. Tensor classes: torch._tensor_classes. */
static const char storage_names[] =
    "BFloat16Storage BoolStorage ByteStorage CharStorage ComplexDoubleStorage "
    "ComplexFloatStorage DoubleStorage FloatStorage HalfStorage IntStorage LongStorage "
    "QInt32Storage QInt8Storage QUInt2x4Storage QUInt4x2Storage QUInt8Storage ShortStorage "
    "UntypedStorage";
static const char tensor_names[] =
    "BFloat16Tensor BoolTensor ByteTensor CharTensor DoubleTensor FloatTensor HalfTensor "
    "IntTensor LongTensor ShortTensor";
static const char tensor_modules[] = "torch torch.cuda torch.cuda.sparse torch.sparse";

/* strcmp of a[0..alen) (no NUL needed) against the NUL-terminated b. */
static int cmp_n(const char *a, size_t alen, const char *b)
{
    size_t i;
    for (i = 0; i < alen && b[i]; i++) {
        if (a[i] != b[i])
            return (unsigned char)a[i] < (unsigned char)b[i] ? -1 : 1;
    }
    if (i < alen)
        return 1;
    return b[i] ? -1 : 0;
}

/* Index of the first rule whose module is >= module[0..len). */
static size_t lower_bound(const char *module, size_t len)
{
    size_t lo = 0, hi = N_RULES;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cmp_n(module, len, rules[mid].module) > 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Is name[0..len) one of the words of the space-separated list? */
static bool in_list(const char *list, const char *name, size_t len)
{
    const char *p = list;
    while (*p) {
        const char *end = strchr(p, ' ');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == len && memcmp(p, name, len) == 0)
            return true;
        if (!end)
            break;
        p = end + 1;
    }
    return false;
}

/* The kind of (module[0..mlen), name[0..nlen)) from the table; name "*" asks for a wildcard
 * row. False when no row names it. */
static bool lookup(const char *module, size_t mlen, const char *name, size_t nlen,
                   ckpt_global_kind *kind)
{
    bool wildcard = nlen == 1 && name[0] == '*';
    for (size_t i = lower_bound(module, mlen);
         i < N_RULES && cmp_n(module, mlen, rules[i].module) == 0; i++) {
        bool hit = wildcard ? strcmp(rules[i].names, "*") == 0
                            : in_list(rules[i].names, name, nlen);
        if (hit) {
            *kind = rules[i].kind;
            return true;
        }
    }
    return false;
}

/* A module of the table, or a package of one: "torch._utils", "numpy.core". */
static bool is_known_module(const char *full, size_t len)
{
    size_t i = lower_bound(full, len);
    if (i >= N_RULES || strncmp(rules[i].module, full, len) != 0)
        return false;
    return rules[i].module[len] == '\0' || rules[i].module[len] == '.';
}

const char *ckpt_global_kind_name(ckpt_global_kind k)
{
    switch (k) {
    case CKPT_GLOBAL_WEIGHTS: return "weights";
    case CKPT_GLOBAL_DATA: return "data";
    case CKPT_GLOBAL_UNKNOWN: return "unknown";
    case CKPT_GLOBAL_DANGEROUS: return "dangerous";
    }
    return "unknown";
}

ckpt_global_kind ckpt_classify_global(const char *module, const char *name)
{
    ckpt_global_kind kind;
    if (!module || !name || !*module || !*name)
        return CKPT_GLOBAL_UNKNOWN;
    /* Python 2 spellings, in case a caller did not normalise (pickle's IMPORT_MAPPING). */
    if (strcmp(module, "__builtin__") == 0)
        module = "builtins";
    else if (strcmp(module, "copy_reg") == 0)
        module = "copyreg";
    size_t mlen = strlen(module), nlen = strlen(name);

    if (lookup(module, mlen, name, nlen, &kind))
        return kind;

    /* A method of a dangerous class is dangerous: "code.InteractiveInterpreter.runcode". */
    for (size_t i = 0; i < nlen; i++) {
        if (name[i] == '.' && lookup(module, mlen, name, i, &kind) &&
            kind == CKPT_GLOBAL_DANGEROUS)
            return kind;
    }

    /* "os.*" covers os.path.join too: try the module and each of its packages. */
    for (size_t len = mlen; len > 0; len--) {
        if ((len == mlen || module[len] == '.') && lookup(module, len, "*", 1, &kind))
            return kind;
    }

    /* The global is a module object ("torch" + "_utils"): BUILD on it rewrites the module,
     * which is how a pickle turns an allowlisted name into eval. */
    char full[SAFETY_MAX_NAME];
    if (mlen + 1 + nlen < sizeof full) {
        memcpy(full, module, mlen);
        full[mlen] = '.';
        memcpy(full + mlen + 1, name, nlen + 1);
        if (is_known_module(full, mlen + 1 + nlen))
            return CKPT_GLOBAL_DANGEROUS;
    }

    if ((strcmp(module, "torch") == 0 || strncmp(module, "torch.", 6) == 0) &&
        in_list(storage_names, name, nlen))
        return CKPT_GLOBAL_WEIGHTS;
    if (in_list(tensor_modules, module, mlen) && in_list(tensor_names, name, nlen))
        return CKPT_GLOBAL_WEIGHTS;
    if (strcmp(module, "numpy.dtypes") == 0 && nlen > 5 && strcmp(name + nlen - 5, "DType") == 0 &&
        !strchr(name, '.'))
        return CKPT_GLOBAL_DATA;
    return CKPT_GLOBAL_UNKNOWN;
}

/* For test_safety: the index of the first rule out of order, or -1 when the table is sorted. */
int ckpt__safety_check_table(void);
int ckpt__safety_check_table(void)
{
    for (size_t i = 1; i < N_RULES; i++) {
        if (strcmp(rules[i - 1].module, rules[i].module) > 0)
            return (int)i;
    }
    return -1;
}
