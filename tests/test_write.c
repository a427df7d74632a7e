/* test_write.c - the writers (issue 4): dtype conversion against values PyTorch 1.13 gave, the
 * .pth pickle and zip layout against docs/FORMAT.md (the golden 302-byte data.pkl of §11, the
 * _metadata pickle of §4.2, the record layout of §2.3 with and without ZIP64), the safetensors
 * header against the reference serializer's rules, tensor streaming of strided views, and the
 * safe output file: no overwrite without force, never an input, nothing left after a failure
 * (a cancelled write, a file size limit). End-to-end checks with torch are in test_extract.py. */
#include "check.h"
#include "internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <math.h>
#include <zlib.h>

/* ckpt_open reads local headers lazily; the byte-layout checks below want every entry placed. */
static void place_all(ckpt_file *f)
{
    ckpt_error err;
    for (size_t i = 0; i < f->zip.n_entries; i++)
        CHECK_OK(ckpt__zip_place(f->map, f->size, &f->zip.entries[i], &err), err);
}

static char g_dir[64];

static const char *tmp_path(const char *name)
{
    static char buf[8][256];
    static int slot;
    char *p = buf[slot++ % 8];
    snprintf(p, 256, "%s/%s", g_dir, name);
    return p;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

/* Files in g_dir whose name contains s. */
static int count_files(const char *s)
{
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strstr(e->d_name, s) != NULL;
    if (d)
        closedir(d);
    return n;
}

static size_t unhex(const char *hex, uint8_t *out)
{
    size_t n = 0;
    for (const char *p = hex; p[0] && p[1]; p += 2) {
        unsigned v;
        sscanf(p, "%2x", &v);
        out[n++] = (uint8_t)v;
    }
    return n;
}

/* ---- hand-made tensors ---------------------------------------------------------------- */

typedef struct fake {
    ckpt_storage storage;
    ckpt_tensor tensor;
    ckpt_value value;
    int64_t shape[4], stride[4];
} fake;

static void make_tensor(fake *f, ckpt_dtype dt, const void *data, uint64_t nbytes, int ndim,
                        const int64_t *shape, const int64_t *stride, int64_t offset)
{
    memset(f, 0, sizeof *f);
    f->storage.key = "s";
    f->storage.dtype = dt;
    f->storage.nbytes = nbytes;
    f->storage.data = data;
    int64_t numel = 1;
    for (int k = 0; k < ndim; k++) {
        f->shape[k] = shape[k];
        f->stride[k] = stride[k];
        numel *= shape[k];
    }
    f->tensor.dtype = dt;
    f->tensor.ndim = ndim;
    f->tensor.shape = f->shape;
    f->tensor.stride = f->stride;
    f->tensor.offset = offset;
    f->tensor.numel = numel;
    f->tensor.storage = &f->storage;
    f->value.type = CKPT_T_TENSOR;
    f->value.u.tensor = &f->tensor;
}

static ckpt_sd_entry entry(const char *key, fake *f)
{
    ckpt_sd_entry e = {key, &f->value, true, f->tensor.dtype, f->tensor.ndim, f->shape};
    return e;
}

/* ---- conversion ---------------------------------------------------------------------- */

/* float32 bits -> x.half(), x.bfloat16() of a contiguous tensor, from PyTorch 1.13.1. */
static const uint32_t conv_f32[][3] = {
    {0x00000000, 0x0000, 0x0000}, {0x80000000, 0x8000, 0x8000}, {0x3f800000, 0x3c00, 0x3f80},
    {0x7f800000, 0x7c00, 0x7f80}, {0xff800000, 0xfc00, 0xff80}, {0x7fc00000, 0x7e00, 0xffff},
    {0xffc12345, 0xfe00, 0xffff}, {0x7f800001, 0x7e00, 0xffff}, {0x00000001, 0x0000, 0x0000},
    {0x33000000, 0x0000, 0x3300}, {0x33000001, 0x0001, 0x3300}, {0x337fffff, 0x0001, 0x3380},
    {0x38800000, 0x0400, 0x3880}, {0x387fffff, 0x0400, 0x3880}, {0x387fe000, 0x0400, 0x3880},
    {0x477fe000, 0x7bff, 0x4780}, {0x477fefff, 0x7bff, 0x4780}, {0x477ff000, 0x7c00, 0x4780},
    {0x3f801000, 0x3c00, 0x3f80}, {0x3f803000, 0x3c02, 0x3f80}, {0x3f808000, 0x3c04, 0x3f80},
    {0x3f818000, 0x3c0c, 0x3f82}, {0x3f807fff, 0x3c04, 0x3f80}, {0x7f7fffff, 0x7c00, 0x7f80},
    {0x00800000, 0x0000, 0x0080}, {0x007fffff, 0x0000, 0x0080}, {0xc0490fdb, 0xc248, 0xc049},
};

/* float16 bits -> x.float(), x.bfloat16(), from PyTorch 1.13.1. */
static const uint32_t conv_f16[][3] = {
    {0x0000, 0x00000000, 0x0000}, {0x8000, 0x80000000, 0x8000}, {0x0001, 0x33800000, 0x3380},
    {0x03ff, 0x387fc000, 0x3880}, {0x0400, 0x38800000, 0x3880}, {0x3c00, 0x3f800000, 0x3f80},
    {0x7bff, 0x477fe000, 0x4780}, {0x7c00, 0x7f800000, 0x7f80}, {0xfc00, 0xff800000, 0xff80},
    {0x7c01, 0x7fc02000, 0x7fc0}, {0xfe01, 0xffc02000, 0x7fc0}, {0x7d00, 0x7fe00000, 0x7fc0},
    {0xc000, 0xc0000000, 0xc000},
};

static void test_convert(void)
{
    ckpt_error err = {0};
    size_t n = sizeof conv_f32 / sizeof conv_f32[0];
    uint32_t in[32];
    uint16_t h[32], b[32];
    for (size_t i = 0; i < n; i++)
        in[i] = conv_f32[i][0];
    CHECK_OK(ckpt_convert(CKPT_DT_FLOAT16, h, CKPT_DT_FLOAT32, in, n, &err), err);
    CHECK_OK(ckpt_convert(CKPT_DT_BFLOAT16, b, CKPT_DT_FLOAT32, in, n, &err), err);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ_INT(h[i], conv_f32[i][1]);
        CHECK_EQ_INT(b[i], conv_f32[i][2]);
    }
    n = sizeof conv_f16 / sizeof conv_f16[0];
    uint16_t hin[16];
    uint32_t f[16];
    for (size_t i = 0; i < n; i++)
        hin[i] = (uint16_t)conv_f16[i][0];
    CHECK_OK(ckpt_convert(CKPT_DT_FLOAT32, f, CKPT_DT_FLOAT16, hin, n, &err), err);
    CHECK_OK(ckpt_convert(CKPT_DT_BFLOAT16, b, CKPT_DT_FLOAT16, hin, n, &err), err);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ_INT(f[i], conv_f16[i][1]);
        CHECK_EQ_INT(b[i], conv_f16[i][2]);
    }
    /* float64 -> bfloat16: torch's vector kernel takes blocks of 16 (NaN 0xFFFF), the rest is
     * scalar (0x7FC0); 1 + 2^-8 + 2^-40 rounds through float32 to a tie, then to even */
    double d[18];
    for (int i = 0; i < 18; i++)
        d[i] = (double)NAN;
    d[1] = 1.0 + 0x1p-8 + 0x1p-40;
    CHECK_OK(ckpt_convert(CKPT_DT_BFLOAT16, b, CKPT_DT_FLOAT64, d, 18, &err), err);
    CHECK_EQ_INT(b[0], 0xffff);
    CHECK_EQ_INT(b[1], 0x3f80);
    CHECK_EQ_INT(b[15], 0xffff);
    CHECK_EQ_INT(b[16], 0x7fc0);
    CHECK_EQ_INT(b[17], 0x7fc0);
    CHECK(ckpt_convert(CKPT_DT_INT64, f, CKPT_DT_FLOAT32, in, 1, &err) == CKPT_EINVAL);
    CHECK(ckpt_dtype_is_float(CKPT_DT_BFLOAT16) && !ckpt_dtype_is_float(CKPT_DT_INT64));
}

/* ---- streaming ----------------------------------------------------------------------- */

typedef struct collect {
    uint8_t buf[4096];
    size_t len;
    int calls;
} collect;

static int collect_chunk(void *ud, const void *data, size_t n, ckpt_error *err)
{
    (void)err;
    collect *c = ud;
    if (c->len + n <= sizeof c->buf)
        memcpy(c->buf + c->len, data, n);
    c->len += n;
    c->calls++;
    return CKPT_OK;
}

static void test_stream(void)
{
    ckpt_error err = {0};
    float base[12];
    for (int i = 0; i < 12; i++)
        base[i] = (float)i;
    fake t;
    /* base.view(3, 4).t(): element (i, j) is base[j * 4 + i] */
    make_tensor(&t, CKPT_DT_FLOAT32, base, sizeof base, 2, (int64_t[]){4, 3},
                (int64_t[]){1, 4}, 0);
    collect c = {0};
    CHECK_OK(ckpt_tensor_stream(&t.tensor, CKPT_DT_FLOAT32, collect_chunk, &c, &err), err);
    CHECK_EQ_INT(c.len, 48);
    const float *got = (const float *)(const void *)c.buf;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            CHECK(got[i * 3 + j] == base[j * 4 + i]);
    /* base[5].expand(2, 3) and a stride-3 slice with an offset, converted to float16 */
    make_tensor(&t, CKPT_DT_FLOAT32, base, sizeof base, 2, (int64_t[]){2, 3}, (int64_t[]){0, 0},
                5);
    memset(&c, 0, sizeof c);
    CHECK_OK(ckpt_tensor_stream(&t.tensor, CKPT_DT_FLOAT16, collect_chunk, &c, &err), err);
    CHECK_EQ_INT(c.len, 12);
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(((const uint16_t *)(const void *)c.buf)[i], 0x4500); /* 5.0 */
    make_tensor(&t, CKPT_DT_FLOAT32, base, sizeof base, 1, (int64_t[]){3}, (int64_t[]){3}, 1);
    memset(&c, 0, sizeof c);
    CHECK_OK(ckpt_tensor_stream(&t.tensor, CKPT_DT_FLOAT32, collect_chunk, &c, &err), err);
    CHECK_EQ_INT(c.len, 12);
    CHECK(got[0] == 1.0f && got[1] == 4.0f && got[2] == 7.0f);
    /* an empty tensor makes no call; int64 cannot become float16 */
    make_tensor(&t, CKPT_DT_FLOAT32, base, 0, 2, (int64_t[]){0, 3}, (int64_t[]){3, 1}, 0);
    memset(&c, 0, sizeof c);
    CHECK_OK(ckpt_tensor_stream(&t.tensor, CKPT_DT_FLOAT16, collect_chunk, &c, &err), err);
    CHECK_EQ_INT(c.calls, 0);
    int64_t iv = 3;
    make_tensor(&t, CKPT_DT_INT64, &iv, 8, 0, NULL, NULL, 0);
    CHECK(ckpt_tensor_stream(&t.tensor, CKPT_DT_FLOAT16, collect_chunk, &c, &err) ==
          CKPT_EINVAL);
}

/* ---- the .pth writer ----------------------------------------------------------------- */

/* docs/FORMAT.md §11: OrderedDict(weight=arange(6.).reshape(2,3), bias=tensor([1.,2.])). */
static const char golden_pkl[] =
    "800263636f6c6c656374696f6e730a4f726465726564446963740a295228580600000077656967687463746f7263"
    "682e5f7574696c730a5f72656275696c645f74656e736f725f76320a2828580700000073746f7261676563746f72"
    "63680a466c6f617453746f726167650a58010000003058030000006370754b0674514b004b024b03864b034b0186"
    "8963636f6c6c656374696f6e730a4f726465726564446963740a2952745258040000006269617363746f7263682e"
    "5f7574696c730a5f72656275696c645f74656e736f725f76320a2828580700000073746f7261676563746f726368"
    "0a466c6f617453746f726167650a58010000003158030000006370754b0274514b004b02854b01858963636f6c6c"
    "656374696f6e730a4f726465726564446963740a29527452752e";

static const float two_w[6] = {0, 1, 2, 3, 4, 5}, two_b[2] = {1, 2};

static void two_sd(fake *w, fake *b, ckpt_sd_entry *e, ckpt_sd *sd)
{
    make_tensor(w, CKPT_DT_FLOAT32, two_w, sizeof two_w, 2, (int64_t[]){2, 3},
                (int64_t[]){3, 1}, 0);
    make_tensor(b, CKPT_DT_FLOAT32, two_b, sizeof two_b, 1, (int64_t[]){2}, (int64_t[]){1}, 0);
    e[0] = entry("weight", w);
    e[1] = entry("bias", b);
    memset(sd, 0, sizeof *sd);
    sd->entries = e;
    sd->n_entries = 2;
    sd->prefix = "";
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static void test_pth_golden(void)
{
    ckpt_error err = {0};
    fake w, b;
    ckpt_sd_entry e[2];
    ckpt_sd sd;
    two_sd(&w, &b, e, &sd);
    const char *out = tmp_path("two.pt");
    ckpt_write_report *rep = NULL;
    CHECK_OK(ckpt_write_pth(out, &sd, NULL, &rep, &err), err);
    CHECK(rep && rep->n_tensors == 2 && rep->n_records == 2 && rep->data_bytes == 32);
    ckpt_write_report_free(rep);

    ckpt_file *f = NULL;
    CHECK_OK(ckpt_open(out, NULL, &f, &err), err);
    place_all(f);
    if (!f)
        return;
    static const char *const names[] = {"two/data.pkl", "two/byteorder", "two/data/0",
                                        "two/data/1", "two/version"};
    CHECK_EQ_INT(f->zip.n_entries, 5);
    for (size_t i = 0; i < f->zip.n_entries && i < 5; i++) {
        const ckpt__zip_entry *z = &f->zip.entries[i];
        CHECK_EQ_STR(z->name, names[i]);
        CHECK_EQ_INT(z->data_offset % 64, 0);
        CHECK_EQ_INT(z->method, 0);
        CHECK_EQ_INT(z->flags, 0x0808);
        CHECK_EQ_INT(z->crc32, crc32(0, f->map + z->data_offset, (uInt)z->usize));
    }
    uint8_t gold[400];
    size_t glen = unhex(golden_pkl, gold);
    CHECK_EQ_INT(glen, 302);
    const ckpt__zip_entry *pkl = ckpt__zip_find(&f->zip, "two/data.pkl");
    CHECK(pkl && pkl->usize == glen && !memcmp(f->map + pkl->data_offset, gold, glen));
    const ckpt__zip_entry *v = ckpt__zip_find(&f->zip, "two/version");
    CHECK(v && v->usize == 2 && !memcmp(f->map + v->data_offset, "3\n", 2));
    const ckpt__zip_entry *bo = ckpt__zip_find(&f->zip, "two/byteorder");
    CHECK(bo && bo->usize == 6 && !memcmp(f->map + bo->data_offset, "little", 6));
    const ckpt__zip_entry *d0 = ckpt__zip_find(&f->zip, "two/data/0");
    CHECK(d0 && d0->usize == 24 && !memcmp(f->map + d0->data_offset, two_w, 24));

    /* §2.3: first local header, its FB padding, descriptor; the three end records */
    const uint8_t *m = f->map;
    CHECK_EQ_INT(rd32(m), 0x04034B50);
    CHECK_EQ_INT(rd16(m + 6), 0x0808);
    CHECK_EQ_INT(rd32(m + 14), 0); /* crc and sizes are in the descriptor */
    CHECK_EQ_INT(rd16(m + 26), 12);
    CHECK_EQ_INT(rd16(m + 28), 4 + 18); /* start = 0+30+12+4 = 46, pad 18 -> data at 64 */
    CHECK_EQ_INT(rd16(m + 42), 0x4246);
    CHECK_EQ_INT(rd16(m + 44), 18);
    CHECK(m[46] == 'Z' && m[63] == 'Z');
    CHECK_EQ_INT(rd32(m + 64 + 302), 0x08074B50);
    CHECK_EQ_INT(rd32(m + 64 + 302 + 8), 302);
    uint64_t sz = f->size;
    CHECK_EQ_INT(rd32(m + sz - 22), 0x06054B50);
    CHECK_EQ_INT(rd32(m + sz - 42), 0x07064B50);
    CHECK_EQ_INT(rd32(m + sz - 98), 0x06064B50);
    CHECK_EQ_INT(rd16(m + sz - 22 + 10), 5);
    ckpt_close(f);

    /* the root follows the output's name as torch.save's does */
    two_sd(&w, &b, e, &sd);
    CHECK_OK(ckpt_write_pth(tmp_path("ckpt.pth.tar"), &sd, NULL, NULL, &err), err);
    CHECK_OK(ckpt_open(tmp_path("ckpt.pth.tar"), NULL, &f, &err), err);
    CHECK(f && !strcmp(ckpt_file_zip_root(f), "ckpt.pth"));
    ckpt_close(f);
    CHECK_OK(ckpt_write_pth(tmp_path("\xc3\xbc" "ber.pt"), &sd, NULL, NULL, &err), err);
    CHECK_OK(ckpt_open(tmp_path("\xc3\xbc" "ber.pt"), NULL, &f, &err), err);
    CHECK(f && !strcmp(ckpt_file_zip_root(f), "archive"));
    ckpt_close(f);
}

static void test_pth_metadata_and_sharing(void)
{
    ckpt_error err = {0};
    fake w, b, w2;
    ckpt_sd_entry e[3];
    ckpt_sd sd;
    two_sd(&w, &b, e, &sd);
    /* a third entry: the same view of weight's storage again (tied weights) */
    w2 = w;
    w2.tensor.shape = w2.shape;
    w2.tensor.stride = w2.stride;
    w2.tensor.storage = &w.storage;
    w2.value.u.tensor = &w2.tensor;
    e[2] = entry("tied", &w2);
    sd.n_entries = 3;
    ckpt_sd_meta meta[2] = {{"", 1}, {"bn", 2}};
    sd.has_metadata = true;
    sd.meta = meta;
    sd.n_meta = 2;
    ckpt_write_report *rep = NULL;
    CHECK_OK(ckpt_write_pth(tmp_path("meta.pt"), &sd, NULL, &rep, &err), err);
    CHECK(rep && rep->n_records == 2 && rep->n_shared == 1);
    if (rep && rep->n_shared == 1) {
        CHECK_EQ_STR(rep->shared[0].key, "tied");
        CHECK_EQ_STR(rep->shared[0].with, "weight");
    }
    ckpt_write_report_free(rep);
    ckpt_file *f = NULL;
    CHECK_OK(ckpt_open(tmp_path("meta.pt"), NULL, &f, &err), err);
    if (!f)
        return;
    const ckpt__zip_entry *pkl = ckpt__zip_find(&f->zip, "meta/data.pkl");
    /* §4.2 after the entries' SETITEMS: BUILD with {'_metadata': OrderedDict(...)} */
    static const char tail[] = "u}X\x09\0\0\0_metadataccollections\nOrderedDict\n)R("
                               "X\0\0\0\0}X\x07\0\0\0versionK\x01s"
                               "X\x02\0\0\0bn}X\x07\0\0\0versionK\x02s"
                               "usb.";
    size_t tl = sizeof tail - 1;
    CHECK(pkl && pkl->usize > tl &&
          !memcmp(f->map + pkl->data_offset + pkl->usize - tl, tail, tl));
    /* the tied entry names storage "0" again: one record for both */
    CHECK(ckpt__zip_find(&f->zip, "meta/data/2") == NULL);
    const ckpt_value *tied = ckpt_dict_get(ckpt_root(f), "tied");
    const ckpt_value *wv = ckpt_dict_get(ckpt_root(f), "weight");
    CHECK(tied && wv && tied->u.tensor->storage == wv->u.tensor->storage);
    ckpt_close(f);

    /* a dtype PyTorch 1.13 cannot store, and a value that is not a tensor */
    uint16_t u16[2] = {1, 2};
    fake u;
    make_tensor(&u, CKPT_DT_UINT16, u16, 4, 1, (int64_t[]){2}, (int64_t[]){1}, 0);
    e[0] = entry("u", &u);
    sd.n_entries = 1;
    sd.has_metadata = false;
    CHECK(ckpt_write_pth(tmp_path("u16.pt"), &sd, NULL, NULL, &err) == CKPT_EUNSUPPORTED);
    CHECK(strstr(err.message, "'u'") != NULL);
    ckpt_value nt = {0};
    nt.type = CKPT_T_INT;
    e[0].value = &nt;
    CHECK(ckpt_write_pth(tmp_path("int.pt"), &sd, NULL, NULL, &err) == CKPT_EINVAL);
    CHECK(access(tmp_path("u16.pt"), F_OK) != 0 && access(tmp_path("int.pt"), F_OK) != 0);
}

/* CRC-32s of records of every length class the folding code distinguishes, against zlib's. */
static void test_pth_crc(void)
{
    ckpt_error err = {0};
    static const size_t lens[] = {1, 15, 16, 63, 64, 65, 79, 127, 128, 200, 4109, (1u << 20) + 7};
    enum { N = sizeof lens / sizeof lens[0] };
    static uint8_t bytes[(1u << 20) + 64];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof bytes; i++) {
        x = x * 1103515245u + 12345u;
        bytes[i] = (uint8_t)(x >> 16);
    }
    fake t[N];
    ckpt_sd_entry e[N];
    char keys[N][8];
    for (size_t i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], "t%zu", i);
        /* each starts at another offset of the buffer: unaligned loads too */
        make_tensor(&t[i], CKPT_DT_UINT8, bytes + i, lens[i], 1, (int64_t[]){(int64_t)lens[i]},
                    (int64_t[]){1}, 0);
        e[i] = entry(keys[i], &t[i]);
    }
    ckpt_sd sd = {0};
    sd.entries = e;
    sd.n_entries = N;
    sd.prefix = "";
    CHECK_OK(ckpt_write_pth(tmp_path("crc.pt"), &sd, NULL, NULL, &err), err);
    ckpt_file *f = NULL;
    CHECK_OK(ckpt_open(tmp_path("crc.pt"), NULL, &f, &err), err);
    for (size_t i = 0; f && i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "crc/data/%zu", i);
        const ckpt__zip_entry *z = ckpt__zip_find(&f->zip, name);
        CHECK(z && z->usize == lens[i]);
        if (z)
            CHECK_EQ_INT(z->crc32, crc32(0, bytes + i, (uInt)lens[i]));
    }
    ckpt_close(f);
}

static void test_pth_zip64(void)
{
    ckpt_error err = {0};
    fake w, b;
    ckpt_sd_entry e[2];
    ckpt_sd sd;
    two_sd(&w, &b, e, &sd);
    ckpt_write_options o = {0};
    o.zip64_from = 16; /* sizes and offsets from 16 on: ZIP64 for all but byteorder's size */
    CHECK_OK(ckpt_write_pth(tmp_path("z64.pt"), &sd, &o, NULL, &err), err);
    size_t len = 0;
    uint8_t *m = check_slurp(tmp_path("z64.pt"), &len);
    ckpt_file *f = NULL;
    CHECK_OK(ckpt_open(tmp_path("z64.pt"), NULL, &f, &err), err);
    place_all(f);
    if (!f || !m) {
        free(m);
        ckpt_close(f);
        return;
    }
    const ckpt_value *wv = ckpt_dict_get(ckpt_root(f), "weight");
    float out[6] = {0};
    CHECK(wv && ckpt_tensor_read(wv->u.tensor, CKPT_DT_FLOAT32, out, sizeof out, &err) == 0);
    CHECK(!memcmp(out, two_w, sizeof out));
    /* data.pkl (302 bytes at offset 0): a ZIP64 field with the size and a 0, no offset */
    CHECK_EQ_INT(rd16(m + 28), 20 + 4 + 62); /* start = 30+12+4+20 = 66 -> pad 62 */
    CHECK_EQ_INT(rd16(m + 42), 0x0001);
    CHECK_EQ_INT(rd16(m + 44), 16);
    CHECK_EQ_INT(rd32(m + 46), 302);
    CHECK_EQ_INT(rd32(m + 54), 0);
    CHECK_EQ_INT(rd16(m + 62), 0x4246);
    /* its descriptor has 64-bit sizes: 24 bytes */
    const ckpt__zip_entry *pkl = ckpt__zip_find(&f->zip, "z64/data.pkl");
    CHECK(pkl != NULL);
    if (pkl) {
        const uint8_t *d = m + pkl->data_offset + 302;
        CHECK_EQ_INT(rd32(d), 0x08074B50);
        CHECK_EQ_INT(rd32(d + 8), 302);
        CHECK_EQ_INT(rd32(d + 12), 0);
        CHECK_EQ_INT(rd32(d + 16), 302);
        CHECK_EQ_INT(rd32(d + 24), 0x04034B50); /* the next local header follows */
    }
    /* the end record points to the ZIP64 records */
    CHECK_EQ_INT(rd32(m + len - 22 + 16), 0xFFFFFFFF);
    CHECK_EQ_INT(rd32(m + len - 22 + 12), 0xFFFFFFFF);
    for (size_t i = 0; i < f->zip.n_entries; i++)
        CHECK_EQ_INT(f->zip.entries[i].data_offset % 64, 0);
    ckpt_close(f);
    free(m);
}

/* ---- the safetensors writer ---------------------------------------------------------- */

static void test_safetensors(void)
{
    ckpt_error err = {0};
    fake w, b, nbt;
    ckpt_sd_entry e[3];
    ckpt_sd sd;
    two_sd(&w, &b, e, &sd);
    int64_t seven = 7;
    make_tensor(&nbt, CKPT_DT_INT64, &seven, 8, 0, NULL, NULL, 0);
    e[2] = entry("nbt", &nbt);
    sd.n_entries = 3;
    const char *md[] = {"format", "pt", "source", "x.pth", NULL};
    ckpt_write_options o = {0};
    o.metadata = md;
    CHECK_OK(ckpt_write_safetensors(tmp_path("two.safetensors"), &sd, &o, NULL, &err), err);
    size_t len = 0;
    uint8_t *m = check_slurp(tmp_path("two.safetensors"), &len);
    if (!m)
        return;
    /* the reference's order: I64 before F32, then by name; compact JSON padded to 8 */
    static const char hdr[] =
        "{\"__metadata__\":{\"format\":\"pt\",\"source\":\"x.pth\"},"
        "\"nbt\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
        "\"bias\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]},"
        "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[16,40]}}";
    size_t hl = sizeof hdr - 1, padded = (hl + 7) / 8 * 8;
    CHECK_EQ_INT(rd32(m), padded);
    CHECK_EQ_INT(rd32(m + 4), 0);
    CHECK(len == 8 + padded + 40);
    CHECK(!memcmp(m + 8, hdr, hl));
    for (size_t i = hl; i < padded; i++)
        CHECK(m[8 + i] == ' ');
    CHECK(!memcmp(m + 8 + padded, &seven, 8));
    CHECK(!memcmp(m + 8 + padded + 8, two_b, 8));
    CHECK(!memcmp(m + 8 + padded + 16, two_w, 24));
    free(m);

    /* tied weights become copies, reported; the copy reads back */
    fake t2 = w;
    t2.tensor.shape = t2.shape;
    t2.tensor.stride = t2.stride;
    t2.value.u.tensor = &t2.tensor;
    e[2] = entry("tied", &t2);
    ckpt_write_report *rep = NULL;
    CHECK_OK(ckpt_write_safetensors(tmp_path("tied.safetensors"), &sd, NULL, &rep, &err), err);
    CHECK(rep && rep->n_shared == 1);
    if (rep && rep->n_shared == 1) {
        CHECK_EQ_STR(rep->shared[0].key, "tied");
        CHECK_EQ_STR(rep->shared[0].with, "weight");
    }
    ckpt_write_report_free(rep);
    ckpt_file *f = NULL;
    CHECK_OK(ckpt_open(tmp_path("tied.safetensors"), NULL, &f, &err), err);
    const ckpt_value *tv = f ? ckpt_dict_get(ckpt_root(f), "tied") : NULL;
    float out[6] = {0};
    CHECK(tv && ckpt_tensor_read(tv->u.tensor, CKPT_DT_FLOAT32, out, sizeof out, &err) == 0 &&
          !memcmp(out, two_w, sizeof out));
    ckpt_close(f);

    /* complex128 has no safetensors dtype */
    double z[2] = {1, 2};
    fake c;
    make_tensor(&c, CKPT_DT_COMPLEX128, z, 16, 1, (int64_t[]){1}, (int64_t[]){1}, 0);
    e[0] = entry("z", &c);
    sd.n_entries = 1;
    CHECK(ckpt_write_safetensors(tmp_path("z.safetensors"), &sd, NULL, NULL, &err) ==
          CKPT_EUNSUPPORTED);
    CHECK(access(tmp_path("z.safetensors"), F_OK) != 0);
}

/* ---- the safe output file ------------------------------------------------------------ */

static int cancel_at_second(void *ud, uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
    return ++*(int *)ud >= 2;
}

static void test_safe_file(void)
{
    ckpt_error err = {0};
    fake w, b;
    ckpt_sd_entry e[2];
    ckpt_sd sd;
    two_sd(&w, &b, e, &sd);

    /* an existing output: refused without force (untouched), replaced with it */
    const char *out = tmp_path("exists.pt");
    write_file(out, "precious");
    CHECK(ckpt_write_pth(out, &sd, NULL, NULL, &err) == CKPT_EEXIST);
    size_t len = 0;
    uint8_t *m = check_slurp(out, &len);
    CHECK(m && len == 8 && !memcmp(m, "precious", 8));
    free(m);
    ckpt_write_options o = {0};
    o.force = true;
    CHECK_OK(ckpt_write_pth(out, &sd, &o, NULL, &err), err);
    m = check_slurp(out, &len);
    CHECK(m && len > 8 && m[0] == 'P');
    free(m);

    /* never an input: by path, another spelling, a hard link; even with force */
    const char *in = tmp_path("input.pt");
    write_file(in, "input bytes");
    const char *inputs[] = {in, NULL};
    o.inputs = inputs;
    CHECK(ckpt_write_pth(in, &sd, &o, NULL, &err) == CKPT_EINVAL);
    char other[300];
    snprintf(other, sizeof other, "%s/./input.pt", g_dir);
    CHECK(ckpt_write_pth(other, &sd, &o, NULL, &err) == CKPT_EINVAL);
    CHECK(link(in, tmp_path("hardlink.pt")) == 0);
    CHECK(ckpt_write_pth(tmp_path("hardlink.pt"), &sd, &o, NULL, &err) == CKPT_EINVAL);
    m = check_slurp(in, &len);
    CHECK(m && len == 11 && !memcmp(m, "input bytes", 11));
    free(m);

    /* a cancelled write leaves nothing, not even the temporary file */
    int calls = 0;
    ckpt_write_options c = {0};
    c.progress = cancel_at_second;
    c.progress_ud = &calls;
    CHECK(ckpt_write_pth(tmp_path("cancel.pt"), &sd, &c, NULL, &err) == CKPT_EIO);
    CHECK(strstr(err.message, "cancelled") != NULL);
    CHECK(access(tmp_path("cancel.pt"), F_OK) != 0);
    CHECK_EQ_INT(count_files(".ckpt-tmp-"), 0);

    /* a folder that does not exist */
    CHECK(ckpt_write_pth(tmp_path("nope/x.pt"), &sd, NULL, NULL, &err) == CKPT_EIO);

    /* the temporary file is in the output's folder and named after it */
    ckpt__write_file *wf = NULL;
    CHECK_OK(ckpt__write_open(tmp_path("t.bin"), NULL, &wf, &err), err);
    if (wf) {
        const char *tp = ckpt__write_temp_path(wf);
        CHECK(strstr(tp, "/.t.bin.ckpt-tmp-") != NULL && access(tp, F_OK) == 0);
        char keep[300];
        snprintf(keep, sizeof keep, "%s", tp);
        CHECK_OK(ckpt__write_bytes(wf, "abc", 3, &err), err);
        ckpt__write_abort(wf);
        CHECK(access(keep, F_OK) != 0 && access(tmp_path("t.bin"), F_OK) != 0);
    }

    /* a file size limit (what a full disk looks like to write): in a child, SIGXFSZ ignored
     * so that write fails with EFBIG; once through write, once through the reservation */
    for (int reserve = 0; reserve < 2; reserve++) {
        pid_t pid = fork();
        if (pid == 0) {
            signal(SIGXFSZ, SIG_IGN);
            struct rlimit rl = {100000, 100000};
            setrlimit(RLIMIT_FSIZE, &rl);
            ckpt__write_file *x = NULL;
            ckpt_error e2 = {0};
            if (ckpt__write_open(tmp_path("big.bin"), NULL, &x, &e2))
                _exit(3);
            static uint8_t chunk[1 << 16];
            int rc = reserve ? ckpt__write_expect(x, 1u << 20, &e2) : CKPT_OK;
            for (int i = 0; i < 16 && !rc; i++)
                rc = ckpt__write_bytes(x, chunk, sizeof chunk, &e2);
            if (!rc)
                rc = ckpt__write_commit(x, &e2);
            else
                ckpt__write_abort(x);
            _exit(rc == CKPT_EIO && strstr(e2.message, "too large") ? 0 : 4);
        }
        int st = 0;
        waitpid(pid, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        CHECK(access(tmp_path("big.bin"), F_OK) != 0);
        CHECK_EQ_INT(count_files(".ckpt-tmp-"), 0);
    }

    CHECK_EQ_INT(ckpt_write_format_for_path("a/b.SafeTensors"), CKPT_WRITE_SAFETENSORS);
    CHECK_EQ_INT(ckpt_write_format_for_path("b.pt"), CKPT_WRITE_PTH);
    CHECK_EQ_INT(ckpt_write_format_for_path("b.npz"), -1);
    CHECK_EQ_STR(ckpt_write_format_name(CKPT_WRITE_SAFETENSORS), "safetensors");
}

static void remove_dir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

/* ckpt_tensor_read copies a mapped tensor with pread(2) (file.c ckpt__file_read). Its bytes
 * must equal the mapping's, and a file cut short after it was opened must give an error, not
 * a SIGBUS from touching mapped pages past the new end. */
static void test_read_shrunk(void)
{
    ckpt_error err = {0};
    enum { N = 4096 };
    static float vals[N];
    for (int i = 0; i < N; i++)
        vals[i] = (float)i * 0.25f - 17.0f;
    fake w;
    make_tensor(&w, CKPT_DT_FLOAT32, vals, sizeof vals, 2, (int64_t[]){64, 64},
                (int64_t[]){64, 1}, 0);
    ckpt_sd_entry e[1] = {entry("weight", &w)};
    ckpt_sd sd = {0};
    sd.entries = e;
    sd.n_entries = 1;
    sd.prefix = "";
    const char *path = tmp_path("shrunk.pt");
    CHECK_OK(ckpt_write_pth(path, &sd, NULL, NULL, &err), err);
    ckpt_file *f = NULL;
    CHECK_OK(ckpt_open(path, NULL, &f, &err), err);
    const ckpt_value *wv = f ? ckpt_dict_get(ckpt_root(f), "weight") : NULL;
    const void *data = NULL;
    CHECK(wv && ckpt_tensor_data(wv->u.tensor, &data, &err) == CKPT_OK);
    if (!wv || !data) {
        ckpt_close(f);
        return;
    }
    static float out[N];
    CHECK_OK(ckpt_tensor_read(wv->u.tensor, CKPT_DT_FLOAT32, out, sizeof out, &err), err);
    CHECK(!memcmp(out, vals, sizeof vals) && !memcmp(data, vals, sizeof vals));
    /* cut the file inside the tensor's bytes, a page past their start */
    off_t at = (off_t)((const uint8_t *)data - f->map) + 5000;
    CHECK(truncate(path, at) == 0);
    memset(out, 0, sizeof out);
    CHECK(ckpt_tensor_read(wv->u.tensor, CKPT_DT_FLOAT32, out, sizeof out, &err) == CKPT_EIO);
    CHECK(strstr(err.message, "changed while being read") != NULL);
    ckpt_close(f);
}

int main(void)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/ckpt-test-write-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_convert();
    test_stream();
    test_pth_golden();
    test_pth_metadata_and_sharing();
    test_pth_crc();
    test_pth_zip64();
    test_safetensors();
    test_safe_file();
    test_read_shrunk();
    remove_dir(g_dir);
    return check_exit();
}
