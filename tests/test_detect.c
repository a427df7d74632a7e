/* test_detect.c - format sniffing (src/detect.c): a table of first bytes for every kind, the
 * corpus files whose kind their magic numbers give, and the kinds of zip archive. */
#include "check.h"
#include "internal.h"

#include <dirent.h>

#define S(lit) lit, sizeof(lit) - 1

#define LEGACY "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e"
#define UNRECOGNISED(hex) "not a PyTorch checkpoint (unrecognised first bytes '" hex "')"
#define NOT_CKPT(kind) "this is a " kind " file, not a checkpoint"

static const struct {
    const char *what;
    const char *bytes;
    size_t len;
    ckpt__kind kind;
    int status;          /* for CKPT__KIND_OTHER */
    const char *message; /* for CKPT__KIND_OTHER: the whole message */
} cases[] = {
    {"empty", S(""), CKPT__KIND_OTHER, CKPT_EFORMAT, "the file is empty"},
    {"zip", S("PK\3\4\0\0\x08\x08"), CKPT__KIND_ZIP, 0, NULL},
    {"zip header only", S("PK\3\4"), CKPT__KIND_ZIP, 0, NULL},
    {"legacy", S(LEGACY "\x80\x02M\xe9\x03."), CKPT__KIND_LEGACY, 0, NULL},
    {"legacy magic alone", S(LEGACY), CKPT__KIND_LEGACY, 0, NULL},
    /* The magic number as torch.save(..., pickle_protocol=N) writes it (torch 1.13). */
    {"legacy p0", S("L119547037146038801333356L\n.I1001\n.(dp0\n"), CKPT__KIND_LEGACY, 0, NULL},
    {"legacy p1", S("L119547037146038801333356L\n.M\xe9\x03.}q\x00(X"), CKPT__KIND_LEGACY, 0,
     NULL},
    {"legacy p3", S("\x80\x03\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e\x80\x03M"),
     CKPT__KIND_LEGACY, 0, NULL},
    {"legacy p4", S("\x80\x04\x95\x0d\0\0\0\0\0\0\0\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"
                    "\x50\x19\x2e\x80\x04\x95"),
     CKPT__KIND_LEGACY, 0, NULL},
    {"legacy p5", S("\x80\x05\x95\x0d\0\0\0\0\0\0\0\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8"
                    "\x50\x19\x2e"),
     CKPT__KIND_LEGACY, 0, NULL},
    /* Another number, or the magic without its STOP: pickles, not legacy files. */
    {"other long1", S("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2f."),
     CKPT__KIND_PICKLE, 0, NULL},
    {"legacy p0 no stop", S("L119547037146038801333356L\nI1\n."), CKPT__KIND_PICKLE, 0, NULL},
    /* A cut legacy magic is still a protocol 2 pickle (PROTO, LONG1 ...). */
    {"legacy magic cut", S("\x80\x02\x8a\x0a\x6c\xfc"), CKPT__KIND_PICKLE, 0, NULL},

    /* safetensors: u64 header length, then '{' */
    {"safetensors", S("\x02\0\0\0\0\0\0\0{}"), CKPT__KIND_SAFETENSORS, 0, NULL},
    {"safetensors padded", S("\x04\0\0\0\0\0\0\0{}  "), CKPT__KIND_SAFETENSORS, 0, NULL},
    {"safetensors truncated", S("\x40\0\0\0\0\0\0\0{\"a\":"), CKPT__KIND_OTHER, CKPT_ECORRUPT,
     "this is a truncated safetensors file (a header of 64 bytes in a file of 13)"},
    {"safetensors at the limit", S("\x00\xe1\xf5\x05\0\0\0\0{}"), CKPT__KIND_OTHER,
     CKPT_ECORRUPT,
     "this is a truncated safetensors file (a header of 100000000 bytes in a file of 10)"},
    {"safetensors length 1", S("\x01\0\0\0\0\0\0\0{"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     UNRECOGNISED("01 00 00 00")},
    {"safetensors over 100 MB", S("\x01\xe1\xf5\x05\0\0\0\0{}"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     UNRECOGNISED("01 e1 f5 05")},
    {"safetensors no brace", S("\x02\0\0\0\0\0\0\0[]"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     UNRECOGNISED("02 00 00 00")},

    /* files that are not checkpoints */
    {"lfs", S("version https://git-lfs.github.com/spec/v1\noid sha256:4d7a\nsize 102\n"),
     CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is a Git LFS pointer, not the weights: run 'git lfs pull'"},
    {"html", S("<!DOCTYPE html>\n<html><head>"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is an HTML page, not a checkpoint (did the download fail?)"},
    {"html lower, spaces", S("\r\n  \t<!doctype HTML>"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is an HTML page, not a checkpoint (did the download fail?)"},
    {"html tag", S("<HTML lang=\"en\">"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is an HTML page, not a checkpoint (did the download fail?)"},
    {"html bom", S("\xef\xbb\xbf<html>"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is an HTML page, not a checkpoint (did the download fail?)"},
    {"xml", S("<?xml version=\"1.0\"?><Error>"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is an XML file, not a checkpoint"},
    {"json", S("{\"architectures\": [\"ResNet\"]}"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is a JSON file, not a checkpoint"},
    {"json spaces", S("\n  {\"a\": 1}"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is a JSON file, not a checkpoint"},
    {"json array", S("[{\"a\": 1}]"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is a JSON file, not a checkpoint"},
    {"npy", S("\x93NUMPY\x01\x00v\x00{'descr': '<f4'"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is a numpy .npy file, not a torch checkpoint"},
    {"empty zip", S("PK\5\6\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"), CKPT__KIND_OTHER,
     CKPT_EFORMAT, "this is an empty zip archive, not a checkpoint"},
    {"png", S("\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("PNG")},
    {"jpeg", S("\xff\xd8\xff\xe0\0\x10JFIF\0"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("JPEG")},
    {"gif", S("GIF89a\x01\0\x01\0"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("GIF")},
    {"gzip", S("\x1f\x8b\x08\0\0\0\0\0"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("gzip")},
    {"7z", S("7z\xbc\xaf\x27\x1c\0\x04"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("7z")},
    {"bzip2", S("BZh91AY&SY"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("bzip2")},
    {"xz", S("\xfd" "7zXZ\0\0\x04"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is an xz file, not a checkpoint"},
    {"zstd", S("\x28\xb5\x2f\xfd\x04\x58"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("zstd")},
    {"hdf5", S("\x89HDF\r\n\x1a\n\0\0\0\0"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     "this is an HDF5 (Keras .h5) file, not a checkpoint"},
    {"gguf", S("GGUF\x03\0\0\0"), CKPT__KIND_OTHER, CKPT_EFORMAT, NOT_CKPT("GGUF")},
    {"elf", S("\x7f" "ELF\2\1\1\0"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("7f 45 4c 46")},
    {"one byte", S("\0"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("00")},
    {"abc", S("abc"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("61 62 63")},

    /* pickles with a PROTO opcode */
    {"proto 2", S("\x80\x02}q\x00."), CKPT__KIND_PICKLE, 0, NULL},
    {"proto 4", S("\x80\x04\x95\x05\0\0\0\0\0\0\0N."), CKPT__KIND_PICKLE, 0, NULL},
    {"proto 5", S("\x80\x05N."), CKPT__KIND_PICKLE, 0, NULL},
    {"proto 0 header", S("\x80\x00N."), CKPT__KIND_PICKLE, 0, NULL},
    {"proto 2 cut", S("\x80\x02"), CKPT__KIND_PICKLE, 0, NULL},
    {"proto 6", S("\x80\x06N."), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("80 06 4e 2e")},
    {"proto then junk", S("\x80\x02\x00\x01"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     UNRECOGNISED("80 02 00 01")},
    {"proto byte alone", S("\x80"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("80")},

    /* protocol 0 and 1 pickles, as Python writes them */
    {"p0 dict", S("(dp0\nVa\np1\nI1\ns."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 list", S("(lp0\nI1\naI2\na."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 global", S("cos\nsystem\n(S'ls'\ntR."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 dotted global", S("ctorch._utils\n_rebuild_tensor_v2\n(t."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 int", S("I42\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 negative int", S("I-7\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 bool", S("I01\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 long", S("L12345678901234567890L\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 float", S("F0.5\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 nan", S("Fnan\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 none", S("N."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 string", S("S'os'\np0\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 string dq", S("S\"it's\"\np0\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 unicode", S("Vos\np0\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p0 tuple", S("(I1\nI2\ntp0\n."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 empty list", S("]q\x00."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 empty dict", S("}q\x00."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 empty tuple", S(")."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 binint1", S("K\x05."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 binint2", S("M\x01\x02."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 binint", S("J\x01\x02\x03\x04."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 binfloat", S("G?\xf0\0\0\0\0\0\0."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 short binstring", S("U\x02osq\x00."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 binstring", S("T\x02\0\0\0osq\x00."), CKPT__KIND_PICKLE, 0, NULL},
    {"p1 binunicode", S("X\x02\0\0\0osq\x00."), CKPT__KIND_PICKLE, 0, NULL},
    {"newtrue", S("\x88."), CKPT__KIND_PICKLE, 0, NULL},

    /* text and binaries that begin with an opcode's byte but are no pickle */
    {"bad global name", S("cmod\n\xf8\n"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     UNRECOGNISED("63 6d 6f 64")},
    {"global with space", S("clear all\nvariables\n"), CKPT__KIND_OTHER, CKPT_EFORMAT,
     UNRECOGNISED("63 6c 65 61")},
    {"text I", S("Introduction\n"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("49 6e 74 72")},
    {"text S", S("Some text\n"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("53 6f 6d 65")},
    {"text L", S("Lorem ipsum\n"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("4c 6f 72 65")},
    {"text F", S("Foo\n"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("46 6f 6f 0a")},
    {"int without newline", S("I42"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("49 34 32")},
    {"lone none", S("N"), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("4e")},
    {"binunicode too long", S("X\xff\0\0\0os."), CKPT__KIND_OTHER, CKPT_EFORMAT,
     UNRECOGNISED("58 ff 00 00")},
    {"put first", S("p0\n."), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("70 30 0a 2e")},
    {"get first", S("g0\n."), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("67 30 0a 2e")},
    {"pop first", S("0."), CKPT__KIND_OTHER, CKPT_EFORMAT, UNRECOGNISED("30 2e")},
};

static void test_table(void)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        /* An exactly sized copy: ASan catches a look past the end. */
        uint8_t *map = malloc(cases[i].len ? cases[i].len : 1);
        memcpy(map, cases[i].bytes, cases[i].len);
        ckpt_error err = {0};
        ckpt__kind k = ckpt__detect(map, cases[i].len, &err);
        if (k != cases[i].kind)
            fprintf(stderr, "case '%s': kind %d, expected %d (%s)\n", cases[i].what, (int)k,
                    (int)cases[i].kind, err.message);
        CHECK_EQ_INT(k, cases[i].kind);
        if (cases[i].kind == CKPT__KIND_OTHER && k == CKPT__KIND_OTHER) {
            CHECK_EQ_INT(err.status, cases[i].status);
            CHECK_EQ_STR(err.message, cases[i].message);
        }
        /* Without an error record, the same answer. */
        CHECK_EQ_INT(ckpt__detect(map, cases[i].len, NULL), cases[i].kind);
        free(map);
    }
}

/* A tar header: "ustar" at offset 257. */
static void test_tar_header(void)
{
    uint8_t *map = calloc(1024, 1);
    memcpy(map, "sys_info", 8);
    memcpy(map + 257, "ustar\0" "00", 8);
    ckpt_error err = {0};
    CHECK_EQ_INT(ckpt__detect(map, 1024, &err), CKPT__KIND_OTHER);
    CHECK_EQ_STR(err.message, "this is a torch 0.1.x tar checkpoint, which ckpt does not read");
    /* A file too short to reach offset 257 is not a tar. */
    CHECK_EQ_INT(ckpt__detect(map, 260, &err), CKPT__KIND_OTHER);
    CHECK_EQ_STR(err.message, UNRECOGNISED("73 79 73 5f"));
    free(map);
}

/* A safetensors file whose header length starts with 0x88 (NEWTRUE) or 0x80 0x02 (PROTO 2):
 * the exact safetensors test must win over the pickle one. */
static void test_safetensors_like_pickle(void)
{
    static const uint8_t lead[][2] = {{0x88, 0x02}, {0x80, 0x02}};
    for (size_t i = 0; i < 2; i++) {
        size_t n = (size_t)lead[i][0] | ((size_t)lead[i][1] << 8);
        uint8_t *map = malloc(8 + n);
        memset(map, ' ', 8 + n);
        memset(map, 0, 8);
        map[0] = lead[i][0], map[1] = lead[i][1];
        map[8] = '{', map[9] = '}';
        CHECK_EQ_INT(ckpt__detect(map, 8 + n, NULL), CKPT__KIND_SAFETENSORS);
        free(map);
    }
}

/* ---- corpus files ------------------------------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The kind each corpus file must get, from its magic number (named files) or what the corpus
 * README says the folder holds (the rest). NULL message: not refused. */
static const struct {
    const char *file;
    ckpt__kind kind;
    const char *message;
} named[] = {
    {"corpus/picklescan/bad_pytorch.pt", CKPT__KIND_OTHER, NOT_CKPT("PNG")},
    {"corpus/picklescan/malicious1.7z", CKPT__KIND_OTHER, NOT_CKPT("7z")},
    {"corpus/picklescan/not_a_pickle.bin", CKPT__KIND_OTHER, UNRECOGNISED("63 6d 6f 64")},
    {"corpus/picklescan/int_array.npy", CKPT__KIND_OTHER,
     "this is a numpy .npy file, not a torch checkpoint"},
    {"corpus/picklescan/object_array.npy", CKPT__KIND_OTHER,
     "this is a numpy .npy file, not a torch checkpoint"},
    {"corpus/picklescan/dns_exfiltration.npy", CKPT__KIND_OTHER,
     "this is a numpy .npy file, not a torch checkpoint"},
    {"corpus/picklescan/pytorch_model.bin", CKPT__KIND_LEGACY, NULL},
    {"corpus/picklescan/new_pytorch_model.bin", CKPT__KIND_ZIP, NULL},
    /* PROTO 2 then a GLOBAL: a pickle that only mentions the legacy magic later on. */
    {"corpus/picklescan/pytorch_magic_bypass.pt", CKPT__KIND_PICKLE, NULL},
    {"corpus/picklescan/GHSA-jgw4-cr84-mqxg.bin", CKPT__KIND_PICKLE, NULL},
    {"corpus/burn_reader/broken.pt", CKPT__KIND_OTHER, UNRECOGNISED("61 62 63")},
    {"corpus/burn_reader/simple_legacy.pt", CKPT__KIND_LEGACY, NULL},
    {"corpus/burn_reader/legacy_shared_storage.pt", CKPT__KIND_LEGACY, NULL},
    {"vectors/tar_legacy.pt", CKPT__KIND_OTHER,
     "this is a torch 0.1.x tar checkpoint, which ckpt does not read"},
    {"vectors/two_legacy.pt", CKPT__KIND_LEGACY, NULL},
    {"vectors/module_sd_legacy.pt", CKPT__KIND_LEGACY, NULL},
    {"vectors/views_legacy.pt", CKPT__KIND_LEGACY, NULL},
    {"vectors/two.pt", CKPT__KIND_ZIP, NULL},
};

static void check_file(const char *rel, ckpt__kind kind, const char *message)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", check_data_dir(), rel);
    size_t len;
    uint8_t *map = check_slurp(path, &len);
    CHECK(map != NULL);
    if (!map) {
        fprintf(stderr, "cannot read %s\n", path);
        return;
    }
    ckpt_error err = {0};
    ckpt__kind k = ckpt__detect(map, len, &err);
    if (k != kind)
        fprintf(stderr, "%s: kind %d, expected %d (%s)\n", rel, (int)k, (int)kind,
                k == CKPT__KIND_OTHER ? err.message : "");
    CHECK_EQ_INT(k, kind);
    if (message && k == CKPT__KIND_OTHER) {
        CHECK_EQ_INT(err.status, CKPT_EFORMAT);
        CHECK_EQ_STR(err.message, message);
    }
    free(map);
}

static void test_corpus(void)
{
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        check_file(named[i].file, named[i].kind, named[i].message);

    /* Whole folders: every pickle in picklescan's tests, every zip and safetensors file. */
    static const char *const dirs[] = {"corpus/picklescan", "corpus/burn_pytorch_tests",
                                       "corpus/burn_reader", "corpus/candle", "corpus/modelscan",
                                       "corpus/safetensors"};
    int n = 0;
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", check_data_dir(), dirs[d]);
        DIR *dir = opendir(path);
        CHECK(dir != NULL);
        if (!dir)
            continue;
        struct dirent *de;
        while ((de = readdir(dir))) {
            const char *name = de->d_name;
            char rel[1024];
            snprintf(rel, sizeof rel, "%s/%s", dirs[d], name);
            if (ends_with(name, ".pkl") || ends_with(name, ".pickle"))
                check_file(rel, CKPT__KIND_PICKLE, NULL), n++;
            else if (ends_with(name, ".zip") || ends_with(name, ".npz"))
                check_file(rel, CKPT__KIND_ZIP, NULL), n++;
            else if (ends_with(name, ".safetensors"))
                check_file(rel, CKPT__KIND_SAFETENSORS, NULL), n++;
            else if ((ends_with(name, ".pt") || ends_with(name, ".pth")) &&
                     strcmp(dirs[d], "corpus/picklescan") != 0 &&
                     strstr(name, "legacy") == NULL && strcmp(name, "broken.pt") != 0)
                check_file(rel, CKPT__KIND_ZIP, NULL), n++; /* written by torch >= 1.6 */
        }
        closedir(dir);
    }
    CHECK(n > 100);
}

/* The fixtures torch wrote (tests/gen_fixtures.py), in every pickle protocol: the format each
 * must get is in its .expected.json. */
static void test_fixtures(void)
{
    const char *dirname = getenv("CKPT_FIXTURES");
    DIR *dir = dirname ? opendir(dirname) : NULL;
    if (!dir) {
        printf("no fixtures (CKPT_FIXTURES); skipped\n");
        return;
    }
    int n = 0;
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (!ends_with(de->d_name, ".expected.json"))
            continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dirname, de->d_name);
        size_t len;
        char *json = (char *)check_slurp(path, &len);
        if (!json)
            continue;
        json = realloc(json, len + 1);
        json[len] = 0;
        ckpt__kind want = CKPT__KIND_OTHER;
        if (strstr(json, "\"format\": \"zip\""))
            want = CKPT__KIND_ZIP;
        else if (strstr(json, "\"format\": \"legacy\""))
            want = CKPT__KIND_LEGACY;
        free(json);
        if (want == CKPT__KIND_OTHER)
            continue;
        snprintf(path, sizeof path, "%s/%.*s.pt", dirname,
                 (int)(strlen(de->d_name) - strlen(".expected.json")), de->d_name);
        uint8_t *map = check_slurp(path, &len);
        if (!map)
            continue;
        ckpt_error err = {0};
        ckpt__kind k = ckpt__detect(map, len, &err);
        if (k != want)
            fprintf(stderr, "%s: kind %d, expected %d\n", path, (int)k, (int)want);
        CHECK_EQ_INT(k, want);
        free(map);
        n++;
    }
    closedir(dir);
    printf("%d fixtures sniffed\n", n);
}

/* ---- kinds of zip ------------------------------------------------------------------------- */

static const char *kind_of(const char *const *names, size_t n)
{
    ckpt__zip_entry *es = calloc(n ? n : 1, sizeof *es);
    for (size_t i = 0; i < n; i++)
        es[i].name = names[i];
    ckpt__zip z = {.entries = es, .n_entries = n}; /* no index: lookups scan */
    const char *m = ckpt__zip_kind_message(&z);
    free(es);
    return m;
}

#define KIND(...)                                                                              \
    kind_of((const char *const[]){__VA_ARGS__},                                                \
            sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *))

static void test_zip_kinds(void)
{
    /* torch.save (1.13, 2.x) */
    CHECK(KIND("two/data.pkl", "two/data/0", "two/data/1", "two/version") == NULL);
    CHECK(KIND("archive/data.pkl", "archive/.format_version", "archive/byteorder",
               "archive/data/0", "archive/version") == NULL);
    /* torch looks names up ignoring case (docs/FORMAT.md §2.2) */
    CHECK(KIND("Foo.Bar/DATA.PKL", "Foo.Bar/version") == NULL);
    CHECK(KIND("foo/x", "FOO/data.pkl", "foo/version") == NULL);
    /* torch.jit.save of a Linear in torch 1.13: these records, in this order */
    CHECK(KIND("jit/data/0", "jit/data/1", "jit/data.pkl",
                      "jit/code/__torch__/torch/nn/modules/linear.py",
                      "jit/code/__torch__/torch/nn/modules/linear.py.debug_pkl",
                      "jit/constants.pkl", "jit/version") == NULL); /* torchscript.c reads it */
    /* the layout before data.pkl (torch < 1.4): model.json and tensors/ */
    CHECK_EQ_STR(KIND("jit/model.json", "jit/tensors/0", "jit/constants.pkl", "jit/version"),
                 "this is a TorchScript archive of an old layout (no data.pkl): load it with "
                 "torch.jit.load, or save model.state_dict() instead");
    CHECK_EQ_STR(KIND("a.npy", "b.npy"), "this is a numpy .npz archive, not a torch checkpoint");
    CHECK_EQ_STR(KIND("data.pkl"), "zip: file in archive is not in a subdirectory");
    CHECK_EQ_STR(KIND("data.pkl", "x/data.pkl"), "zip: file in archive is not in a subdirectory");
    CHECK_EQ_STR(KIND("model/config.pkl"),
                 "this is a zip archive without data.pkl, not a torch checkpoint");
    /* data.pkl under another folder than the first entry's */
    CHECK_EQ_STR(KIND("a/version", "b/data.pkl"),
                 "this is a zip archive without data.pkl, not a torch checkpoint");
    CHECK_EQ_STR(KIND("a/data.pkl.bak", "a/xdata.pkl"),
                 "this is a zip archive without data.pkl, not a torch checkpoint");
    CHECK(kind_of(NULL, 0) != NULL);
}

/* The same on archives opened by zip.c. */
static void test_zip_kinds_files(void)
{
    static const struct {
        const char *file;
        const char *message;
    } files[] = {
        {"vectors/two.pt", NULL},
        {"vectors/cwriter_2x_layout.pt", NULL},
        {"corpus/picklescan/int_arrays.npz",
         "this is a numpy .npz archive, not a torch checkpoint"},
        {"corpus/picklescan/object_arrays_compressed.npz",
         "this is a numpy .npz archive, not a torch checkpoint"},
        {"corpus/picklescan/malicious1.zip", "zip: file in archive is not in a subdirectory"},
        {"corpus/picklescan/malicious1_0x1.zip",
         "this is a zip archive without data.pkl, not a torch checkpoint"},
    };
    ckpt__alloc a;
    ckpt__alloc_init(&a, NULL);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", check_data_dir(), files[i].file);
        size_t len;
        uint8_t *map = check_slurp(path, &len);
        CHECK(map != NULL);
        if (!map)
            continue;
        ckpt__arena *ar = ckpt__arena_new(&a, 0);
        ckpt__zip z;
        ckpt_error err = {0};
        CHECK_OK(ckpt__zip_open(ar, map, len, &z, &err), err);
        const char *m = ckpt__zip_kind_message(&z);
        if (files[i].message)
            CHECK_EQ_STR(m, files[i].message);
        else
            CHECK(m == NULL);
        ckpt__arena_free(ar);
        free(map);
    }
}

int main(void)
{
    test_table();
    test_tar_header();
    test_safetensors_like_pickle();
    test_corpus();
    test_fixtures();
    test_zip_kinds();
    test_zip_kinds_files();
    return check_exit();
}
