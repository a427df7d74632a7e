/*
 * test_safety.c - ckpt_classify_global, table-driven.
 *
 * Expected kinds come from outside the code under test: WEIGHTS rows are PyTorch 2.6's
 * _get_allowed_globals() (torch/_weights_only_unpickler.py); DANGEROUS rows are the globals
 * the malicious files of tests/data/corpus name (listed with `python3 -m pickletools`), each
 * tagged with its file. The last parts run ckpt_scan on those files
 * and check that every one is reported unsafe with a dangerous global, and run the `ckpt`
 * binary (CKPT_BIN) for the exit statuses and lines of `scan` and `inspect` that users rely on.
 */
#include "ckpt.h"
#include "check.h"

#include <stdlib.h>
#include <sys/wait.h>

int ckpt__safety_check_table(void); /* src/safety.c */

#define W CKPT_GLOBAL_WEIGHTS
#define D CKPT_GLOBAL_DATA
#define U CKPT_GLOBAL_UNKNOWN
#define X CKPT_GLOBAL_DANGEROUS

typedef struct case_ {
    const char *module, *name;
    ckpt_global_kind kind;
} case_;

static const case_ cases[] = {
    /* torch 2.6 _get_allowed_globals(): the fixed entries */
    {"collections", "OrderedDict", W},
    {"collections", "Counter", W},
    {"torch.nn.parameter", "Parameter", W},
    {"torch.serialization", "_get_layout", W},
    {"torch", "Size", W},
    {"torch", "Tensor", W},
    {"torch", "device", W},
    {"_codecs", "encode", W},
    {"builtins", "bytearray", W},
    {"builtins", "set", W},
    {"builtins", "complex", W},
    {"__builtin__", "set", W}, /* Python 2 spelling */
    /* dtypes: str(t) of the storage map, _new_dtypes(), uint1..7, int1..7 */
    {"torch", "float32", W},
    {"torch", "float16", W},
    {"torch", "bfloat16", W},
    {"torch", "bool", W},
    {"torch", "complex32", W},
    {"torch", "quint4x2", W},
    {"torch", "float8_e4m3fn", W},
    {"torch", "float8_e5m2fnuz", W},
    {"torch", "bits16", W},
    {"torch", "uint64", W},
    {"torch", "uint3", W},
    {"torch", "int7", W},
    /* tensor and storage classes */
    {"torch", "FloatTensor", W},
    {"torch.cuda", "HalfTensor", W},
    {"torch.sparse", "FloatTensor", W},
    {"torch", "FloatStorage", W},
    {"torch", "BFloat16Storage", W},
    {"torch", "QUInt4x2Storage", W},
    {"torch.cuda", "FloatStorage", W},
    {"torch.storage", "UntypedStorage", W},
    {"torch.storage", "TypedStorage", W},
    {"torch", "UntypedStorage", W},
    /* qschemes */
    {"torch", "per_tensor_affine", W},
    {"torch", "per_channel_affine_float_qparams", W},
    /* rebuild functions */
    {"torch._utils", "_rebuild_tensor", W},
    {"torch._utils", "_rebuild_tensor_v2", W},
    {"torch._utils", "_rebuild_tensor_v3", W},
    {"torch._utils", "_rebuild_parameter", W},
    {"torch._utils", "_rebuild_parameter_with_state", W},
    {"torch._utils", "_rebuild_qtensor", W},
    {"torch._utils", "_rebuild_sparse_tensor", W},
    {"torch._utils", "_rebuild_meta_tensor_no_storage", W},
    {"torch._utils", "_rebuild_wrapper_subclass", W},
    {"torch._utils", "_rebuild_device_tensor_from_numpy", W},
    {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor", W},
    {"torch._tensor", "_rebuild_from_type_v2", W},

    /* harmless data (docs/FORMAT.md §4.3): refused by weights_only, cannot run code */
    {"numpy.core.multiarray", "scalar", D},
    {"numpy._core.multiarray", "scalar", D},
    {"numpy.core.multiarray", "_reconstruct", D},
    {"numpy", "dtype", D},
    {"numpy", "ndarray", D},
    {"numpy.dtypes", "Float64DType", D},
    {"argparse", "Namespace", D},
    {"builtins", "slice", D},
    {"builtins", "frozenset", D},
    {"collections", "defaultdict", D},
    {"datetime", "datetime", D},
    {"pathlib", "PosixPath", D},
    {"torch", "float", D},
    {"torch", "strided", D},
    {"torch", "channels_last", D},

    /* neither */
    {"__main__", "MyModel", U},
    {"torch.nn.modules.linear", "Linear", U},
    {"collections", "OrderedDict.fromkeys", U}, /* a method of an allowed class is not */
    {"numpy.dtypes", "Float64DType.foo", U},
    {"builtins", "type", U},
    {"", "x", U},
    {"torch", "", U},
    {"ostrich", "system", U}, /* "os" is not a prefix of "ostrich" */

    /* dangerous: the malicious corpus (file in the comment) */
    {"os", "system", X},                       /* malicious11, malicious23 */
    {"posix", "system", X},                    /* malicious2_*, modelscan unsafe_zip_pytorch */
    {"nt", "system", X},
    {"os.path", "join", X},                    /* submodule of a dangerous module */
    {"builtins", "eval", X},                   /* malicious1_v3 */
    {"__builtin__", "eval", X},                /* malicious1_v0 */
    {"__builtin__", "apply", X},               /* malicious0 */
    {"__builtin__", "globals", X},             /* malicious0 */
    {"builtins", "exec", X},                   /* broken_model */
    {"builtins", "__import__", X},             /* malicious12 */
    {"builtins", "getattr", X},
    {"builtins", "open", X},
    {"builtins", "compile", X},
    {"operator", "attrgetter", X},             /* malicious12 */
    {"operator", "methodcaller", X},           /* GHSA-84r2 */
    {"_operator", "attrgetter", X},            /* GHSA-46h3 */
    {"_operator", "methodcaller", X},          /* GHSA-955r */
    {"pickle", "loads", X},                    /* malicious13a */
    {"_pickle", "loads", X},                   /* malicious13b */
    {"runpy", "_run_code", X},                 /* malicious14 */
    {"bdb", "Bdb", X},                         /* malicious15a */
    {"bdb", "Bdb.run", X},                     /* malicious15b */
    {"pip", "main", X},                        /* malicious16 */
    {"torch._inductor.codecache", "compile_file", X}, /* malicious17 */
    {"pydoc", "pipepager", X},                 /* malicious18 */
    {"pydoc", "locate", X},                    /* GHSA-84r2 */
    {"functools", "partial", X},               /* malicious19 */
    {"torch.serialization", "load", X},        /* malicious19 */
    {"venv", "create", X},                     /* malicious20 */
    {"timeit", "timeit", X},                   /* malicious21 */
    {"numpy.testing._private.utils", "runstring", X}, /* malicious22 */
    {"httplib", "HTTPSConnection", X},         /* malicious3 */
    {"requests.api", "get", X},                /* malicious4, malicious6 */
    {"aiohttp.client", "ClientSession", X},    /* malicious5 */
    {"socket", "create_connection", X},        /* malicious7 */
    {"subprocess", "run", X},                  /* malicious8 */
    {"sys", "exit", X},                        /* malicious9 */
    {"urllib.request", "urlopen", X},          /* urllib_request_urlopen */
    {"types", "CodeType", X},                  /* types_CodeType */
    {"_io", "FileIO", X},                      /* io_FileIO */
    {"logging", "FileHandler", X},             /* logging_FileHandler */
    {"ssl", "get_server_certificate", X},      /* dns_exfiltration.npy */
    {"cloudpickle.cloudpickle", "subimport", X}, /* cloudpickle_codeinjection */
    {"cloudpickle.cloudpickle", "_make_function", X},
    {"torch", "_utils", X},                    /* sys_module_override_sploit: a module */
    {"numpy", "core", X},
    {"idlelib.pyshell", "ModifiedInterpreter.runcode", X},   /* GHSA-3gf5 */
    {"idlelib.debugobj", "ObjectTreeItem.SetText", X},       /* GHSA-3vg9 */
    {"ctypes", "CDLL", X},                                   /* GHSA-4675 */
    {"cProfile", "run", X},                                  /* GHSA-49gj */
    {"torch.utils.bottleneck.__main__", "run_cprofile", X},  /* GHSA-4r9r */
    {"torch.utils.bottleneck.__main__", "run_autograd_prof", X}, /* GHSA-4whj */
    {"trace", "Trace.run", X},                               /* GHSA-5qwp */
    {"profile", "Profile.runctx", X},                        /* GHSA-6vqj */
    {"idlelib.autocomplete", "AutoComplete.get_entity", X},  /* GHSA-6w4w */
    {"profile", "run", X},                                   /* GHSA-7wx9 */
    {"torch._dynamo.guards", "GuardBuilder.get", X},         /* GHSA-86cj */
    {"idlelib.calltip", "Calltip.fetch_tip", X},             /* GHSA-8r4j */
    {"cProfile", "runctx", X},                               /* GHSA-9w88 */
    {"code", "InteractiveInterpreter.runcode", X},           /* GHSA-cj3c */
    {"torch.fx.experimental.symbolic_shapes", "ShapeEnv.evaluate_guards_expression", X},
    {"lib2to3.pgen2.grammar", "Grammar.loads", X},           /* GHSA-f54q */
    {"torch.utils.collect_env", "run", X},                   /* GHSA-f745 */
    {"doctest", "debug_script", X},                          /* GHSA-fqq6 */
    {"_aix_support", "_read_cmd_output", X},                 /* GHSA-g38g */
    {"imaplib", "IMAP4_stream", X},                          /* GHSA-g38g */
    {"_osx_support", "_read_output", X},                     /* GHSA-g38g */
    {"_pyrepl.pager", "pipe_pager", X},                      /* GHSA-g38g */
    {"test.support.script_helper", "assert_python_ok", X},   /* GHSA-g38g */
    {"uuid", "_get_command_stdout", X},                      /* GHSA-g38g */
    {"torch.utils.data.datapipes.utils.decoder", "basichandlers", X}, /* GHSA-h3qp */
    {"asyncio.unix_events", "_UnixSubprocessTransport._start", X},    /* GHSA-jgw4 */
    {"distutils.file_util", "write_file", X},                /* GHSA-m273 */
    {"idlelib.run", "Executive.runcode", X},                 /* GHSA-m869 */
    {"lib2to3.pgen2.pgen", "ParserGenerator.make_label", X}, /* GHSA-p9w7 */
    {"numpy.f2py.crackfortran", "getlincoef", X},            /* GHSA-r8g5 */
    {"pty", "spawn", X},                                     /* GHSA-vqmv */
    {"torch.jit.unsupported_tensor_ops", "execWrapper", X},  /* GHSA-vr7h */
    {"torch.utils._config_module", "ConfigModule.load_config", X}, /* GHSA-vv6j */
    {"pkgutil", "resolve_name", X},                          /* GHSA-vvpj */
    {"ensurepip", "_run_pip", X},                            /* GHSA-xp4f */
    {"torch", "load", X},
    /* a method of a class the table lists: dangerous when the class is (pickle resolves
     * "FileHandler.emit" by getattr on the class), no better than unknown when it is data */
    {"logging", "FileHandler.emit", X},
    {"_io", "FileIO.readall", X},
    {"types", "CodeType.replace", X},
    {"argparse", "Namespace.__init__", U},
    {"builtins", "dict.fromkeys", U},
    {"torch.storage", "_load_from_bytes", X},
    {"torch.hub", "load", X},
    {"marshal", "loads", X},
    {"shutil", "rmtree", X},
    {"webbrowser", "open", X},
};

/* Malicious corpus files and a dangerous global each must be reported with. */
static const struct {
    const char *file;
    const char *global;
} corpus[] = {
    {"modelscan/unsafe_zip_pytorch.pt", "posix.system"},
    {"picklescan/malicious0.pkl", "builtins.eval"},
    {"picklescan/malicious1_v0.pkl", "builtins.eval"},
    {"picklescan/malicious1_v3.pkl", "builtins.eval"},
    {"picklescan/malicious1_v4.pkl", "builtins.eval"},
    {"picklescan/malicious1.zip", "builtins.eval"},
    {"picklescan/malicious2_v0.pkl", "posix.system"},
    {"picklescan/malicious3.pkl", "httplib.HTTPSConnection"},
    {"picklescan/malicious7.pkl", "socket.create_connection"},
    {"picklescan/malicious8.pkl", "subprocess.run"},
    {"picklescan/malicious9.pkl", "sys.exit"},
    {"picklescan/malicious10.pkl", "builtins.exec"},
    {"picklescan/malicious11.pkl", "os.system"},
    {"picklescan/malicious13a.pkl", "pickle.loads"},
    {"picklescan/malicious14.pkl", "runpy._run_code"},
    {"picklescan/malicious19.pkl", "functools.partial"},
    {"picklescan/malicious22.pkl", "numpy.testing._private.utils.runstring"},
    {"picklescan/pytorch_magic_bypass.pt", "posix.system"},
    {"picklescan/sys_module_override_sploit.pkl", "torch._utils"},
    {"picklescan/type-confusion-exploit.pkl", "os.system"},
    {"picklescan/keyerror-exploit.pkl", "os.system"},
    {"picklescan/malicious-invalid-bytes.pkl", "os.system"},
    {"picklescan/GHSA-cj3c-v495-4xqh.pkl", "code.InteractiveInterpreter.runcode"},
    {"picklescan/GHSA-vvpj-8cmc-gx39.pkl", "pkgutil.resolve_name"},
    {"picklescan/GHSA-jgw4-cr84-mqxg.bin", "asyncio.unix_events._UnixSubprocessTransport._start"},
    {"picklescan/types_CodeType.pkl", "types.CodeType"},
    {"picklescan/io_FileIO.pkl", "_io.FileIO"},
};

static void check_corpus(const char *data)
{
    char path[4096];
    for (size_t i = 0; i < sizeof corpus / sizeof corpus[0]; i++) {
        snprintf(path, sizeof path, "%s/corpus/%s", data, corpus[i].file);
        ckpt_scan_result *r = NULL;
        ckpt_error err = {0};
        int st = ckpt_scan(path, NULL, &r, &err);
        CHECK_OK(st, err);
        if (st != CKPT_OK) {
            fprintf(stderr, "  (file %s)\n", corpus[i].file);
            continue;
        }
        bool found = false;
        for (size_t g = 0; g < r->n_globals; g++) {
            char full[512];
            snprintf(full, sizeof full, "%s.%s", r->globals[g].module, r->globals[g].name);
            if (strcmp(full, corpus[i].global) == 0) {
                found = true;
                CHECK_EQ_STR(ckpt_global_kind_name(r->globals[g].kind), "dangerous");
            }
        }
        if (!found)
            fprintf(stderr, "%s: '%s' not among its %zu globals\n", corpus[i].file,
                    corpus[i].global, r->n_globals);
        CHECK(found);
        CHECK(!r->safe);
        ckpt_scan_free(r);
    }
}

/* Plain state dicts (only OrderedDict, torch._utils._rebuild_tensor_v2 and storage classes):
 * ckpt_scan_result.safe must say so, as the malicious files above must not. */
static const char *const clean_files[] = {
    "corpus/picklescan/pytorch_model.bin", /* OrderedDict, _rebuild_tensor_v2, FloatStorage */
    "vectors/two.pt",
    "vectors/views.pt",
};

static void check_safe_flag(const char *data)
{
    char path[4096];
    for (size_t i = 0; i < sizeof clean_files / sizeof clean_files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", data, clean_files[i]);
        ckpt_scan_result *r = NULL;
        ckpt_error err = {0};
        int st = ckpt_scan(path, NULL, &r, &err);
        CHECK_OK(st, err);
        if (st != CKPT_OK)
            continue;
        if (!r->safe)
            fprintf(stderr, "%s: not safe\n", clean_files[i]);
        CHECK(r->safe);
        CHECK(r->parse_error == NULL);
        ckpt_scan_free(r);
    }
}

/* Run a shell command; its stdout (up to 64 KB) and exit status. stderr is dropped. */
static int run(const char *cmd, char *out, size_t outsize)
{
    FILE *p = popen(cmd, "r");
    size_t n = 0;
    if (!p)
        return -1;
    while (n + 1 < outsize) {
        size_t k = fread(out + n, 1, outsize - 1 - n, p);
        if (k == 0)
            break;
        n += k;
    }
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static const struct {
    const char *args;     /* after the binary; paths relative to tests/data */
    int status;
    const char *stdout_has[4];
} cli_cases[] = {
    /* posix.system in a zip checkpoint (modelscan's test file) */
    {"scan corpus/modelscan/unsafe_zip_pytorch.pt", 1,
     {"dangerous  posix.system", "weights    collections.OrderedDict", "unsafe: 1 dangerous"}},
    {"scan --json corpus/picklescan/malicious1_v0.pkl", 1,
     {"\"name\":\"builtins.eval\"", "\"kind\":\"dangerous\"", "\"safe\":false"}},
    /* a plain HF state dict: OrderedDict, _rebuild_tensor_v2, FloatStorage */
    {"scan corpus/picklescan/pytorch_model.bin", 0, {"safe: only weights and data globals"}},
    {"scan --json corpus/picklescan/pytorch_model.bin", 0, {"\"safe\":true", "\"parse_error\":null"}},
    /* docs/FORMAT.md §10: checkpoint.pt holds epoch 5, numpy f8 scalar bytes 00..00 ec 3f (0.875),
     * Namespace(lr=0.1, epochs=10, arch='resnet18'), device('cuda', 0), torch.float16, 2**40 */
    {"inspect vectors/checkpoint.pt", 0,
     {"= 0.875\n", "= argparse.Namespace(lr=0.1, epochs=10, arch='resnet18')\n",
      "= torch.device('cuda', 0)\n", "= 1099511627776\n"}},
    {"inspect vectors/checkpoint.pt", 0,
     {"OrderedDict of 7 tensors, 17 parameters, 72 B (float32, int64)", "= torch.float16\n",
      "= torch.Size([2, 3])\n", "= {1, 2}\n"}},
    {"inspect --json vectors/checkpoint.pt", 0,
     {"{\"key\":\"lr\",\"value\":{\"type\":\"float\",\"value\":0.1}}",
      "\"class\":\"numpy.float64\",\"value\":0.875}", "\"type\":\"bytes\",\"len\":3,\"hex\":\"616263\""}},
    {"tensors vectors/views.pt", 0, {"slice ", "offset 2\n", "stride [1, 4]\n"}},
    {"inspect corpus/picklescan/bad_pytorch.pt", 2, {""}},
    {"scan corpus/picklescan/int_array.npy", 2, {""}},
    {"inspect --depth -1 vectors/checkpoint.pt", 2, {""}},
    {"frobnicate", 2, {""}},
    {"--version", 0, {"ckpt " CKPT_VERSION_STRING "\n"}},
};

static void check_cli(const char *bin, const char *data)
{
    static char out[1 << 16];
    char cmd[4096];
    for (size_t i = 0; i < sizeof cli_cases / sizeof cli_cases[0]; i++) {
        /* cd so that the relative paths in args work; CKPT paths have no single quotes */
        snprintf(cmd, sizeof cmd, "cd '%s' && '%s' %s 2>/dev/null", data, bin, cli_cases[i].args);
        int st = run(cmd, out, sizeof out);
        if (st != cli_cases[i].status)
            fprintf(stderr, "ckpt %s:\n", cli_cases[i].args);
        CHECK_EQ_INT(st, cli_cases[i].status);
        if (cli_cases[i].status == 2) {
            if (out[0])
                fprintf(stderr, "ckpt %s: stdout not empty on error: %.200s\n", cli_cases[i].args, out);
            CHECK(out[0] == '\0');
            continue;
        }
        for (size_t k = 0; k < 4 && cli_cases[i].stdout_has[k]; k++) {
            bool has = strstr(out, cli_cases[i].stdout_has[k]) != NULL;
            if (!has)
                fprintf(stderr, "ckpt %s: stdout lacks \"%s\":\n%.2000s\n", cli_cases[i].args,
                        cli_cases[i].stdout_has[k], out);
            CHECK(has);
        }
    }
}

int main(void)
{
    CHECK_EQ_INT(ckpt__safety_check_table(), -1);

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const case_ *c = &cases[i];
        ckpt_global_kind got = ckpt_classify_global(c->module, c->name);
        if (got != c->kind)
            fprintf(stderr, "'%s' '%s': ", c->module, c->name);
        CHECK_EQ_STR(ckpt_global_kind_name(got), ckpt_global_kind_name(c->kind));
    }
    CHECK_EQ_INT(ckpt_classify_global(NULL, "x"), U);
    CHECK_EQ_INT(ckpt_classify_global("os", NULL), U);

    CHECK_EQ_STR(ckpt_global_kind_name(CKPT_GLOBAL_WEIGHTS), "weights");
    CHECK_EQ_STR(ckpt_global_kind_name(CKPT_GLOBAL_DATA), "data");
    CHECK_EQ_STR(ckpt_global_kind_name(CKPT_GLOBAL_UNKNOWN), "unknown");
    CHECK_EQ_STR(ckpt_global_kind_name(CKPT_GLOBAL_DANGEROUS), "dangerous");

    const char *bin = getenv("CKPT_BIN");
    check_corpus(check_data_dir());
    check_safe_flag(check_data_dir());
    if (bin)
        check_cli(bin, check_data_dir());
    else
        fprintf(stderr, "CKPT_BIN not set: command-line checks skipped\n");
    return check_exit();
}
