/*
 * fuzz_scan.c - libFuzzer harness for `ckpt scan` (src/scan.c): ckpt_scan on arbitrary bytes.
 *
 * Any input may be refused, none may crash, hang or read out of bounds. A result must be well
 * formed (every global named, its kind valid, `safe` exactly "no unknown or dangerous global"),
 * and the scanner must see at least what the loader sees: when ckpt_open reads the same bytes
 * and finds a global the scanner calls unsafe-worthy, the scan may not say "safe".
 *
 *   CC=clang cmake -S . -B build-fuzz -DCKPT_FUZZ=ON -DBUILD_TESTING=OFF
 *   cmake --build build-fuzz --target fuzz_scan && fuzz/run.sh build-fuzz scan 600
 */
#define _GNU_SOURCE
#include "fuzz.h"
#include "internal.h"

#define FUZZ_MAX_DEPTH 64
#define FUZZ_MAX_ALLOC (256u << 20)
#define FUZZ_MAX_INFLATE (16u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool is_unsafe(ckpt_global_kind k)
{
    return k == CKPT_GLOBAL_UNKNOWN || k == CKPT_GLOBAL_DANGEROUS;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_memfile(0, data, size);
    ckpt_options opt = {.max_depth = FUZZ_MAX_DEPTH, .max_alloc = FUZZ_MAX_ALLOC,
                        .max_inflate = FUZZ_MAX_INFLATE};
    ckpt_error err = {0};
    ckpt_scan_result *r;
    if (ckpt_scan(path, &opt, &r, &err) != CKPT_OK) {
        if (r || !err.message[0])
            fuzz_fail("fuzz_scan", "refused without a message, or left a result", NULL);
        r = NULL;
    } else {
        if (!r->format)
            fuzz_fail("fuzz_scan", "no format", NULL);
        bool safe = true;
        for (size_t k = 0; k < r->n_globals; k++) {
            const ckpt_global_ref *g = &r->globals[k];
            if (!g->module || !g->name || !g->where || g->count < 1 ||
                g->kind > CKPT_GLOBAL_DANGEROUS || g->offset > size)
                fuzz_fail("fuzz_scan", "malformed global", g->name);
            safe &= !is_unsafe(g->kind);
        }
        if (safe != r->safe)
            fuzz_fail("fuzz_scan", "'safe' disagrees with the globals", NULL);
    }

    /* What the loader finds, the scanner must report too. */
    ckpt_file *f;
    if (ckpt_open(path, &opt, &f, &err) == CKPT_OK) {
        const ckpt_global_ref *g;
        size_t n = ckpt_globals(f, &g);
        for (size_t k = 0; k < n; k++) {
            if (!is_unsafe(g[k].kind))
                continue;
            if (!r)
                fuzz_fail("fuzz_scan", "ckpt_open found an unsafe global, ckpt_scan refused",
                          g[k].name);
            if (r->safe)
                fuzz_fail("fuzz_scan", "ckpt_open found an unsafe global, ckpt_scan says safe",
                          g[k].name);
        }
        ckpt_close(f);
    }
    ckpt_scan_free(r);
    return 0;
}
