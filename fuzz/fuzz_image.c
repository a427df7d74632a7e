/*
 * fuzz_image.c - libFuzzer harness for image decoding (src/image.c), resampling and
 * preprocessing (src/preprocess.c), and the .npy reader (src/npy.c).
 *
 * Any input may be refused, none may crash, hang, leak or read out of bounds. A decoded image
 * is resized and preprocessed with sizes taken from the input, and the results checked for
 * what the API promises (dimensions, finite floats). An input starting with numpy's magic also
 * goes to the .npy reader.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
 *       -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE -Iinclude -Isrc fuzz/fuzz_image.c \
 *       src/image.c src/preprocess.c src/npy.c src/error.c -ljpeg -lpng -lz -lm -o fuzz_image
 *   ./fuzz_image -jobs=1 -max_len=65536 -max_total_time=300 corpus-image/
 * (a seed corpus: small JPEGs and PNGs of every kind, e.g. the images test_preprocess.py makes).
 * fuzz/replay.c runs it over a saved corpus without libFuzzer.
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#define FUZZ_MAX_PIXELS (1u << 20) /* small, so that declared sizes hit the limit quickly */
#define FUZZ_MAX_CROP 48

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_fail(const char *what)
{
    fprintf(stderr, "fuzz_image: %s\n", what);
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ckpt_error err;
    if (size >= 6 && memcmp(data, "\x93NUMPY", 6) == 0) {
        ckpt_npy a;
        if (ckpt_npy_decode(data, size, &a, &err) == CKPT_OK) {
            int64_t n = 1;
            for (int i = 0; i < a.ndim; i++)
                n *= a.shape[i];
            if (n != a.numel || (uint64_t)n * 4 > size)
                fuzz_fail("npy: numel does not match the shape or the input");
            ckpt_npy_free(&a);
        } else if (a.data) {
            fuzz_fail("npy: data left after a failure");
        }
        return 0;
    }

    ckpt_image_options opt = {.max_pixels = FUZZ_MAX_PIXELS};
    ckpt_image img;
    err.message[0] = '\0';
    if (ckpt_image_decode(data, size, &opt, &img, &err) != CKPT_OK) {
        if (img.pixels || !err.message[0])
            fuzz_fail("decode: failed without a message, or left pixels");
        return 0;
    }
    if (img.width < 1 || img.height < 1 || (uint64_t)img.width * img.height > FUZZ_MAX_PIXELS ||
        !img.format || !img.mode)
        fuzz_fail("decode: bad image record");

    /* Sizes from the last bytes, so the fuzzer can steer them. */
    uint8_t a = size > 0 ? data[size - 1] : 0, b = size > 1 ? data[size - 2] : 0;
    ckpt_image small;
    if (ckpt_image_resize(&img, 1 + a % 64, 1 + b % 64, &small, &err) != CKPT_OK)
        fuzz_fail("resize: failed on a valid image");
    if (small.width != 1 + a % 64 || small.height != 1 + b % 64)
        fuzz_fail("resize: wrong size");
    ckpt_image_free(&small);

    static float out[3 * FUZZ_MAX_CROP * FUZZ_MAX_CROP];
    int resize = a % 4 == 0 ? 0 : 1 + b % 300, crop = 1 + a % FUZZ_MAX_CROP;
    if (ckpt_image_preprocess(&img, resize, crop, out, sizeof out, &err) != CKPT_OK)
        fuzz_fail("preprocess: failed on a valid image");
    for (int i = 0; i < 3 * crop * crop; i++)
        if (!isfinite(out[i]) || out[i] < -2.2f || out[i] > 2.7f)
            fuzz_fail("preprocess: value outside the normalised range");
    ckpt_image_free(&img);
    return 0;
}
