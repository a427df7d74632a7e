/*
 * detect.c - what kind of file this is, from its first bytes (docs/FORMAT.md §1), and whether an
 * opened zip is a torch checkpoint or some other zip (TorchScript, numpy .npz).
 *
 * Signatures recognised, in the order they are tried:
 *
 *   1. the formats ckpt reads, by exact magic:
 *        50 4B 03 04 ("PK\3\4") at 0                          zip (torch >= 1.6)
 *        the legacy magic number 0x1950a86a20f9469cfc6c, pickled alone: torch checks its value,
 *        so every protocol torch.save(pickle_protocol=N) writes counts:
 *          80 02 8A 0A 6C FC 9C 46 F9 20 6A A8 50 19 2E          protocol 2 (the default), 3
 *          80 04 95 <u64 frame length> 8A 0A ... 2E            protocols 4 and 5
 *          "L119547037146038801333356L\n."                     protocols 0 and 1
 *        u64 LE N, 2 <= N <= min(size - 8, 100 MB), '{' at 8  safetensors
 *   2. files that are not checkpoints, by magic: Git LFS pointer, numpy .npy, tar (torch 0.1.x),
 *      empty zip, PNG, JPEG, GIF, gzip, 7z, bzip2, xz, zstd, HDF5, GGUF, then text: HTML, XML,
 *      JSON;
 *   3. a bare pickle: PROTO (80 0x..05) and a valid opcode, or a protocol 0/1 stream whose first
 *      opcode can start a pickle, with its argument well formed and a valid opcode after it.
 *
 * The order matters: several magics begin with bytes that are also pickle opcodes (PNG and HDF5
 * with NEWFALSE 0x89, zstd with MARK '(', a safetensors length byte 0x88 is NEWTRUE), so every
 * exact magic is tried before the loose pickle test.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>

/* LONG1 of the legacy magic number, then STOP; and its protocol 0 spelling. */
#define CKPT__LEGACY_LONG1 "\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e"
#define CKPT__LEGACY_TEXT "L119547037146038801333356L\n."
#define CKPT__ST_MAX_HEADER 100000000ull /* safetensors' own MAX_HEADER_SIZE */
#define DETECT_MAX_TEXT_LEAD 1024        /* whitespace skipped before "<html", "{", ... */
#define DETECT_MAX_LINE 256              /* longest line argument of a protocol 0 opcode */

/* ---- magics of files that are not checkpoints --------------------------------------------- */

typedef struct magic {
    const char *bytes;
    size_t len;
    size_t at;
    const char *message;
} magic;

#define M(s, at, msg) {s, sizeof(s) - 1, at, msg}
static const magic magics[] = {
    M("version https://git-lfs.github.com/spec/", 0,
      "this is a Git LFS pointer, not the weights: run 'git lfs pull'"),
    M("\x93NUMPY", 0, "this is a numpy .npy file, not a torch checkpoint"),
    M("ustar", 257, "this is a torch 0.1.x tar checkpoint, which ckpt does not read"),
    M("PK\x05\x06", 0, "this is an empty zip archive, not a checkpoint"),
    M("\x89PNG\r\n\x1a\n", 0, "this is a PNG file, not a checkpoint"),
    M("\xff\xd8\xff", 0, "this is a JPEG file, not a checkpoint"),
    M("GIF87a", 0, "this is a GIF file, not a checkpoint"),
    M("GIF89a", 0, "this is a GIF file, not a checkpoint"),
    M("\x1f\x8b", 0, "this is a gzip file, not a checkpoint"),
    M("7z\xbc\xaf\x27\x1c", 0, "this is a 7z file, not a checkpoint"),
    M("BZh", 0, "this is a bzip2 file, not a checkpoint"),
    M("\xfd" "7zXZ\x00", 0, "this is an xz file, not a checkpoint"),
    M("\x28\xb5\x2f\xfd", 0, "this is a zstd file, not a checkpoint"),
    M("\x89HDF\r\n\x1a\n", 0, "this is an HDF5 (Keras .h5) file, not a checkpoint"),
    M("GGUF", 0, "this is a GGUF file, not a checkpoint"),
};
#undef M

static bool has_at(const uint8_t *map, uint64_t size, uint64_t at, const char *s, size_t n)
{
    return at <= size && size - at >= n && memcmp(map + at, s, n) == 0;
}

static bool has_at_nocase(const uint8_t *map, uint64_t size, uint64_t at, const char *s)
{
    size_t n = strlen(s);
    if (at > size || size - at < n)
        return false;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = map[at + i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c - 'A' + 'a');
        if (c != (uint8_t)s[i])
            return false;
    }
    return true;
}

/* A text file's kind, after a UTF-8 byte order mark and leading whitespace; NULL if none. */
static const char *text_kind(const uint8_t *map, uint64_t size)
{
    uint64_t i = has_at(map, size, 0, "\xef\xbb\xbf", 3) ? 3 : 0;
    while (i < size && i < DETECT_MAX_TEXT_LEAD &&
           (map[i] == ' ' || map[i] == '\t' || map[i] == '\r' || map[i] == '\n'))
        i++;
    if (i >= size)
        return NULL;
    static const char *const html[] = {"<!doctype html", "<html", "<head", "<body"};
    for (size_t k = 0; k < sizeof html / sizeof html[0]; k++)
        if (has_at_nocase(map, size, i, html[k]))
            return "this is an HTML page, not a checkpoint (did the download fail?)";
    if (has_at_nocase(map, size, i, "<?xml"))
        return "this is an XML file, not a checkpoint";
    if (map[i] == '{')
        return "this is a JSON file, not a checkpoint";
    if (map[i] == '[' && i + 1 < size && strchr("{[\"-0123456789] \t\r\n", map[i + 1]))
        return "this is a JSON file, not a checkpoint";
    return NULL;
}

/* ---- pickles ------------------------------------------------------------------------------ */

/* Does the file start with the pickled legacy magic number, in any protocol? */
static bool legacy_magic(const uint8_t *map, uint64_t size)
{
    uint64_t i = 0;
    if (size >= 2 && map[0] == 0x80 && map[1] >= 2 && map[1] <= 5) {
        i = 2;
        if (i < size && map[i] == 0x95) /* FRAME and its u64 length */
            i += 9;
        return has_at(map, size, i, CKPT__LEGACY_LONG1, sizeof CKPT__LEGACY_LONG1 - 1);
    }
    return has_at(map, size, 0, CKPT__LEGACY_TEXT, sizeof CKPT__LEGACY_TEXT - 1);
}

/* Every opcode of protocols 0 to 5. */
static bool is_opcode(uint8_t c)
{
    static const char ops[] = "(.012FIJKLMNPQRSTUVXabcdeghijlopqrstu})]GBC";
    return (c >= 0x80 && c <= 0x98) || (c != 0 && strchr(ops, c) != NULL);
}

/* The end of the '\n'-terminated line at map[at], or 0 if there is none within a line's length.
 * `ok` says which bytes the line may hold. */
static uint64_t line_end(const uint8_t *map, uint64_t size, uint64_t at, bool (*ok)(uint8_t))
{
    for (uint64_t i = at; i < size && i - at <= DETECT_MAX_LINE; i++) {
        if (map[i] == '\n')
            return i > at ? i : 0;
        if (!ok(map[i]))
            return 0;
    }
    return 0;
}

static bool ident_char(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.';
}

static bool int_char(uint8_t c)
{
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == 'L';
}

static bool float_char(uint8_t c)
{
    return (c >= '0' && c <= '9') || (c != 0 && strchr("+-.eEinfaINFA", c));
}

static bool text_char(uint8_t c)
{
    return c >= 0x20 || c == '\t';
}

static uint64_t le(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Does a protocol 0/1 stream start here? Its first opcode must be one that can start a pickle
 * (MARK, an empty container, or a value; not PUT/GET/POP, which need a stack or memo), its
 * argument well formed, and the byte after it another opcode. */
static bool old_pickle(const uint8_t *map, uint64_t size)
{
    uint64_t next; /* offset of the second opcode */
    uint64_t e, n;
    switch (map[0]) {
    case '(': case ']': case '}': case ')': case 'N': case 0x88: case 0x89:
        next = 1;
        break;
    case 'K': next = 2; break;
    case 'M': next = 3; break;
    case 'J': next = 5; break;
    case 'G': next = 9; break;
    case 'U':
        if (size < 2)
            return false;
        next = 2 + (uint64_t)map[1];
        break;
    case 'T': case 'X':
        if (size < 5 || (n = le(map + 1, 4)) > size - 5)
            return false;
        next = 5 + n;
        break;
    case 'I': case 'L':
        if (!(e = line_end(map, size, 1, int_char)))
            return false;
        next = e + 1;
        break;
    case 'F':
        if (!(e = line_end(map, size, 1, float_char)))
            return false;
        next = e + 1;
        break;
    case 'S':
        /* A quoted repr: 'abc' or "abc". */
        if (!(e = line_end(map, size, 1, text_char)) || e < 3 ||
            (map[1] != '\'' && map[1] != '"') || map[e - 1] != map[1])
            return false;
        next = e + 1;
        break;
    case 'V':
        if (!(e = line_end(map, size, 1, text_char)))
            return false;
        next = e + 1;
        break;
    case 'c':
        /* GLOBAL "module\nname\n" */
        if (!(e = line_end(map, size, 1, ident_char)) ||
            !(e = line_end(map, size, e + 1, ident_char)))
            return false;
        next = e + 1;
        break;
    default:
        return false;
    }
    return next < size && is_opcode(map[next]);
}

static bool is_pickle(const uint8_t *map, uint64_t size)
{
    if (map[0] == 0x80) /* PROTO n */
        return size >= 2 && map[1] <= 5 && (size == 2 || is_opcode(map[2]));
    return old_pickle(map, size);
}

/* ---- the sniffer -------------------------------------------------------------------------- */

ckpt__kind ckpt__detect(const uint8_t *map, uint64_t size, ckpt_error *err)
{
    if (size == 0) {
        CKPT_FAIL(err, CKPT_EFORMAT, "the file is empty");
        return CKPT__KIND_OTHER;
    }
    if (has_at(map, size, 0, "PK\x03\x04", 4))
        return CKPT__KIND_ZIP;
    if (legacy_magic(map, size))
        return CKPT__KIND_LEGACY;
    if (size >= 9 && map[8] == '{') {
        uint64_t n = le(map, 8);
        if (n >= 2 && n <= CKPT__ST_MAX_HEADER) {
            if (n <= size - 8)
                return CKPT__KIND_SAFETENSORS;
            CKPT_CORRUPT(err, "this is a truncated safetensors file (a header of %" PRIu64
                         " bytes in a file of %" PRIu64 ")",
                         n, size);
            return CKPT__KIND_OTHER;
        }
    }
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++) {
        if (has_at(map, size, magics[i].at, magics[i].bytes, magics[i].len)) {
            CKPT_FAIL(err, CKPT_EFORMAT, "%s", magics[i].message);
            return CKPT__KIND_OTHER;
        }
    }
    const char *text = text_kind(map, size);
    if (text) {
        CKPT_FAIL(err, CKPT_EFORMAT, "%s", text);
        return CKPT__KIND_OTHER;
    }
    if (is_pickle(map, size))
        return CKPT__KIND_PICKLE;

    char hex[4 * 3] = "";
    size_t o = 0;
    for (uint64_t i = 0; i < size && i < 4; i++)
        o += (size_t)snprintf(hex + o, sizeof hex - o, "%s%02x", i ? " " : "", map[i]);
    CKPT_FAIL(err, CKPT_EFORMAT, "not a PyTorch checkpoint (unrecognised first bytes '%s')", hex);
    return CKPT__KIND_OTHER;
}

/* ---- kinds of zip ------------------------------------------------------------------------- */

/* ASCII-only case folding, as miniz's MZ_TOLOWER: the C library's would follow the locale. */
static bool eq_nocase(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y - 'A' + 'a');
        if (x != y)
            return false;
    }
    return true;
}

/* Is there an entry "<root>/<record>", compared as torch's miniz compares (ASCII case folded)?
 * A linear pass: this runs once per open, and root may be as long as a name. */
static bool has_record(const ckpt__zip *z, const char *root, size_t root_len, const char *record)
{
    for (size_t i = 0; i < z->n_entries; i++) {
        const char *name = z->entries[i].name;
        size_t rec_len = strlen(record);
        if (strlen(name) == root_len + 1 + rec_len && eq_nocase(name, root, root_len) &&
            name[root_len] == '/' && eq_nocase(name + root_len + 1, record, rec_len))
            return true;
    }
    return false;
}

static bool ends_with_nocase(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && eq_nocase(s + n - k, suffix, k);
}

const char *ckpt__zip_kind_message(const ckpt__zip *z)
{
    if (z->n_entries == 0)
        return "this is an empty zip archive, not a checkpoint";
    const char *first = z->entries[0].name;
    const char *slash = strchr(first, '/');
    if (slash) {
        size_t root_len = (size_t)(slash - first);
        /* TorchScript archives hold data.pkl too, and read as its modules (torchscript.c);
         * the first ones (torch < 1.4 writers) had model.json and no data.pkl. */
        if (has_record(z, first, root_len, "data.pkl"))
            return NULL;
        if (has_record(z, first, root_len, "constants.pkl"))
            return "this is a TorchScript archive of an old layout (no data.pkl): load it with "
                   "torch.jit.load, or save model.state_dict() instead";
    }
    bool npz = true;
    for (size_t i = 0; i < z->n_entries && npz; i++)
        npz = ends_with_nocase(z->entries[i].name, ".npy");
    if (npz)
        return "this is a numpy .npz archive, not a torch checkpoint";
    if (!slash)
        return "zip: file in archive is not in a subdirectory";
    return "this is a zip archive without data.pkl, not a torch checkpoint";
}
