/*
 * fuzz_write.c - libFuzzer harness for the writers (src/write.c, write_pth.c, write_st.c): a
 * round trip. Open the input, locate its state dict as `ckpt extract` does (ckpt_sd_check),
 * write its tensors as .pth and as .safetensors, reopen each output and compare: the same keys
 * (in the same order for .pth), dtypes and shapes, and the same bytes bit for bit. Any
 * disagreement aborts. With the last input byte odd, floating tensors are also written
 * converted to float16, and compared with ckpt_convert of the original.
 *
 * Outputs go to a folder in /dev/shm (or $TMPDIR) made once per process and removed at exit.
 *
 *   CC=clang cmake -S . -B build-fuzz -DCKPT_FUZZ=ON -DBUILD_TESTING=OFF
 *   cmake --build build-fuzz --target fuzz_write && fuzz/run.sh build-fuzz write 600
 */
#define _GNU_SOURCE
#include "fuzz.h"
#include "internal.h"

#include <sys/stat.h>

#define FUZZ_MAX_DEPTH 64
#define FUZZ_MAX_ALLOC (256u << 20)
#define FUZZ_MAX_TOTAL (4u << 20) /* tensor bytes: inputs whose views expand further are skipped */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256], out_pth[300], out_st[300];
static uint8_t buf_a[FUZZ_MAX_TOTAL], buf_b[FUZZ_MAX_TOTAL], buf_c[FUZZ_MAX_TOTAL];

static void cleanup(void)
{
    unlink(out_pth);
    unlink(out_st);
    rmdir(dir);
}

static void make_dir(void)
{
    if (dir[0])
        return;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ckpt-fuzz-write-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(dir)) {
        perror("fuzz_write: mkdtemp");
        abort();
    }
    snprintf(out_pth, sizeof out_pth, "%s/out.pth", dir);
    snprintf(out_st, sizeof out_st, "%s/out.safetensors", dir);
    atexit(cleanup);
}

static void fail(const char *what, const char *key)
{
    fuzz_fail("fuzz_write", what, key);
}

/* t's elements, contiguous, in its own dtype. */
static size_t read_exact(const ckpt_tensor *t, uint8_t *buf, const char *key)
{
    ckpt_error err = {0};
    if (ckpt_tensor_read(t, t->dtype, buf, FUZZ_MAX_TOTAL, &err) != CKPT_OK)
        fail("cannot read a tensor back", key);
    return (size_t)ckpt_tensor_nbytes(t);
}

static void compare(const ckpt_sd_entry *a, const ckpt_value *bv, bool convert)
{
    if (!bv || bv->type != CKPT_T_TENSOR)
        fail("a tensor is missing from the output", a->key);
    const ckpt_tensor *ta = a->value->u.tensor, *tb = bv->u.tensor;
    bool conv = convert && ckpt_dtype_is_float(ta->dtype);
    if (tb->dtype != (conv ? CKPT_DT_FLOAT16 : ta->dtype) || tb->ndim != ta->ndim)
        fail("dtype or rank differs", a->key);
    for (int k = 0; k < ta->ndim; k++)
        if (ta->shape[k] != tb->shape[k])
            fail("shape differs", a->key);
    ckpt_error err = {0};
    size_t na = read_exact(ta, buf_a, a->key), nb = read_exact(tb, buf_b, a->key);
    if (conv) {
        size_t n = (size_t)ta->numel;
        if (ckpt_convert(CKPT_DT_FLOAT16, buf_c, ta->dtype, buf_a, n, &err) != CKPT_OK)
            fail("ckpt_convert refused a float tensor", a->key);
        memcpy(buf_a, buf_c, n * 2);
        na = n * 2;
    }
    if (na != nb || memcmp(buf_a, buf_b, na) != 0)
        fail("bytes differ after the round trip", a->key);
}

static void round_trip(const ckpt_sd *sd, ckpt_write_format fmt, bool convert)
{
    const char *out = fmt == CKPT_WRITE_PTH ? out_pth : out_st;
    ckpt_write_options o = {.format = fmt, .force = true, .convert = convert,
                            .dtype = CKPT_DT_FLOAT16};
    ckpt_error err = {0};
    if (ckpt_write_sd(out, sd, &o, NULL, &err) != CKPT_OK) {
        if (!err.message[0])
            fail("write failed without a message", NULL);
        if (err.status != CKPT_EUNSUPPORTED && err.status != CKPT_ELIMIT &&
            err.status != CKPT_EINVAL) /* a name the format cannot hold */
            fail("write failed on a readable state dict", err.message);
        return;
    }
    ckpt_file *g;
    if (ckpt_open(out, NULL, &g, &err) != CKPT_OK)
        fail("cannot reopen the output", err.message);
    const ckpt_value *root = ckpt_root(g);
    size_t n = 0;
    for (size_t k = 0; k < sd->n_entries; k++) {
        const ckpt_value *bv = ckpt_dict_get(root, sd->entries[k].key);
        if (fmt == CKPT_WRITE_PTH && (k >= root->u.dict.len || bv != root->u.dict.vals[k]))
            fail(".pth output is not in the state dict's order", sd->entries[k].key);
        compare(&sd->entries[k], bv, convert);
        n++;
    }
    if (ckpt_value_len(root) != n)
        fail("the output holds more entries than were written", NULL);
    ckpt_close(g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    make_dir();
    const char *path = fuzz_memfile(0, data, size);
    ckpt_options opt = {.max_depth = FUZZ_MAX_DEPTH, .max_alloc = FUZZ_MAX_ALLOC};
    ckpt_error err = {0};
    ckpt_file *f;
    if (ckpt_open(path, &opt, &f, &err) != CKPT_OK)
        return 0;
    ckpt_sd_check_options co = {0};
    ckpt_sd_report *r = NULL;
    if (ckpt_sd_check(f, &co, &r, &err) != CKPT_OK) {
        if (!err.message[0])
            fail("ckpt_sd_check failed without a message", NULL);
        ckpt_close(f);
        return 0;
    }
    /* The tensors of the state dict, as `ckpt extract` keeps them. */
    ckpt_sd sd = *r->sd;
    sd.entries = malloc((sd.n_entries ? sd.n_entries : 1) * sizeof *sd.entries);
    if (!sd.entries)
        abort();
    sd.n_entries = 0;
    uint64_t total = 0;
    for (size_t k = 0; k < r->sd->n_entries; k++) {
        const ckpt_sd_entry *e = &r->sd->entries[k];
        if (!e->is_tensor || e->value->type != CKPT_T_TENSOR)
            continue;
        uint64_t nb = ckpt_tensor_nbytes(e->value->u.tensor);
        if (nb > FUZZ_MAX_TOTAL || (total += nb) > FUZZ_MAX_TOTAL)
            goto done;
        /* A tensor whose bytes cannot be read (inflate error, ...) makes the writers fail:
         * only readable state dicts must survive the round trip. */
        if (ckpt_tensor_read(e->value->u.tensor, e->value->u.tensor->dtype, buf_a, sizeof buf_a,
                             &err) != CKPT_OK)
            goto done;
        sd.entries[sd.n_entries++] = *e;
    }
    bool convert = size && (data[size - 1] & 1);
    round_trip(&sd, CKPT_WRITE_PTH, false);
    round_trip(&sd, CKPT_WRITE_SAFETENSORS, false);
    if (convert) {
        round_trip(&sd, CKPT_WRITE_PTH, true);
        round_trip(&sd, CKPT_WRITE_SAFETENSORS, true);
    }
done:
    free(sd.entries);
    ckpt_sd_report_free(r);
    ckpt_close(f);
    return 0;
}
