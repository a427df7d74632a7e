/*
 * fuzz_zip.c - libFuzzer harness for the zip reader (src/zip.c) and the format sniffer
 * (src/detect.c): sniff the input, open it as a zip, look every entry up by name and read it.
 *
 * Build and run from the repository root (a seed corpus: any zips, e.g. tests/data/vectors):
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Iinclude -Isrc \
 *       fuzz/fuzz_zip.c src/zip.c src/detect.c src/arena.c src/error.c -lz -o fuzz_zip
 *   mkdir -p fuzz/corpus-zip && cp tests/data/vectors/two.pt fuzz/corpus-zip/
 *   ./fuzz_zip -max_len=65536 -max_total_time=300 fuzz/corpus-zip
 *
 * The input buffer is exactly `size` bytes, so AddressSanitizer reports any read past it.
 */
#include "internal.h"

#define FUZZ_MAX_INFLATE (16u << 20) /* per entry: enough for a bomb to hit the limit */
#define FUZZ_MAX_ARENA (256u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_error err = {0};
    if (ckpt__detect(data, size, &err) == CKPT__KIND_OTHER && !err.message[0])
        __builtin_trap(); /* a refusal always says why */

    ckpt__alloc a;
    ckpt__alloc_init(&a, NULL);
    ckpt__arena *ar = ckpt__arena_new(&a, FUZZ_MAX_ARENA);
    if (!ar)
        return 0;
    ckpt__zip z;
    memset(&err, 0, sizeof err);
    if (ckpt__zip_open(ar, data, size, &z, &err) != CKPT_OK) {
        if (!err.message[0] || z.n_entries != 0)
            __builtin_trap();
        ckpt__arena_free(ar);
        return 0;
    }
    (void)ckpt__zip_kind_message(&z);
    for (size_t i = 0; i < z.n_entries; i++) {
        const ckpt__zip_entry *e = &z.entries[i];
        const ckpt__zip_entry *found = ckpt__zip_find(&z, e->name);
        if (!found || found > e) /* the first of its name wins */
            __builtin_trap();
        if (e->data_offset > size || e->csize > size - e->data_offset)
            __builtin_trap();
        const uint8_t *p;
        void *owned;
        if (ckpt__zip_read(data, size, e, &a, FUZZ_MAX_INFLATE, &p, &owned, &err) == CKPT_OK) {
            if (!p)
                __builtin_trap();
            /* Touch both ends, so ASan checks the extent the reader promised. */
            volatile uint8_t sink = 0;
            if (e->usize)
                sink ^= p[0] ^ p[e->usize - 1];
            (void)sink;
            ckpt__free(&a, owned, (size_t)e->usize);
        } else if (!err.message[0]) {
            __builtin_trap();
        }
    }
    ckpt__arena_free(ar);
    return 0;
}
