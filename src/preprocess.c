/* preprocess.c - torchvision's evaluation transforms on an RGB image, bit for bit:
 * Resize(S) with Pillow 9.4's BILINEAR resample, CenterCrop(C) with torchvision 0.14's zero
 * padding, ToTensor (float32 v / 255) and Normalize (float32 (x - mean) / std).
 *
 * The resample is Pillow's Resample.c (docs/PREPROCESSING.md): per axis, double coefficients of a
 * triangle filter stretched by the downscale factor, normalised, rounded to 22-bit fixed point;
 * a horizontal pass over only the source rows the vertical pass reads, stored as uint8; then
 * the vertical pass. Every output pixel depends only on its own coefficients, so computing just
 * the pixels a crop keeps gives the same bytes as Pillow computing them all.
 */
#include "internal.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>

#define PRECISION_BITS 22 /* Pillow: 32 - 8 - 2 */

/* One axis of a resample: for each output index in the window, the first input index, how
 * many inputs it reads, and that many fixed-point weights (ksize slots per output). */
typedef struct axis {
    int ksize;
    int *bounds;
    int32_t *k;
} axis;

static void axis_free(axis *a)
{
    free(a->bounds);
    free(a->k);
}

static double bilinear_filter(double x)
{
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return 1.0 - x;
    return 0.0;
}

/* Pillow's precompute_coeffs and normalize_coeffs_8bpc for outputs first .. first + count - 1
 * of an in_size -> out_size resample of the whole axis. The expressions keep Pillow's order of
 * operations: the last bit of a weight depends on it. */
static int axis_make(int in_size, int out_size, int first, int count, axis *a, ckpt_error *err)
{
    memset(a, 0, sizeof *a);
    /* The box reaches Resample.c as C floats (0, 0, w, h): in1 - in0 is a float. */
    float in0 = 0.0f, in1 = (float)in_size;
    double scale = (double)(in1 - in0) / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale; /* the bilinear filter's support is 1 */
    double ksize_d = ceil(support) * 2 + 1;
    if (ksize_d > INT_MAX / 8)
        return CKPT_FAIL(err, CKPT_ELIMIT, "resize: a scale factor of %g is too large", scale);
    int ksize = (int)ksize_d;
    size_t nk, nb;
    if (ckpt__mul_overflow((size_t)count, (size_t)ksize, &nk) ||
        ckpt__mul_overflow(nk, sizeof(int32_t), &nk) ||
        ckpt__mul_overflow((size_t)count, 2 * sizeof(int), &nb))
        return CKPT_FAIL(err, CKPT_ELIMIT, "resize: too many coefficients");
    a->ksize = ksize;
    a->bounds = malloc(nb ? nb : 1);
    a->k = malloc(nk ? nk : 1);
    double *w = malloc((size_t)ksize * sizeof *w);
    if (!a->bounds || !a->k || !w) {
        free(w);
        axis_free(a);
        return CKPT_NOMEM(err);
    }
    for (int i = 0; i < count; i++) {
        int xx = first + i;
        double center = in0 + (xx + 0.5) * scale;
        double ww = 0.0;
        double ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        if (xmax < 0)
            xmax = 0;
        if (xmax > ksize) /* cannot happen: 2 * support + 1 inputs at most */
            xmax = ksize;
        for (int x = 0; x < xmax; x++) {
            double v = bilinear_filter((x + xmin - center + 0.5) * ss);
            w[x] = v;
            ww += v;
        }
        for (int x = 0; x < xmax; x++)
            if (ww != 0.0)
                w[x] /= ww;
        int32_t *k = a->k + (size_t)i * ksize;
        for (int x = 0; x < xmax; x++)
            k[x] = w[x] < 0 ? (int32_t)(-0.5 + w[x] * (1 << PRECISION_BITS))
                            : (int32_t)(0.5 + w[x] * (1 << PRECISION_BITS));
        a->bounds[2 * i] = xmin;
        a->bounds[2 * i + 1] = xmax;
    }
    free(w);
    return CKPT_OK;
}

static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* The accumulators are Pillow's 32-bit ints. They cannot overflow: the weights are >= 0 and
 * their rounded sum is below 2^23 (a weight rounds up by at most 0.5 and only when it is at
 * least 0.5), so 255 * 2^23 + 2^21 < 2^31. */
static void pass_horizontal(const uint8_t *src, size_t src_stride, int rows, const axis *h,
                            int count, uint8_t *dst)
{
    for (int y = 0; y < rows; y++) {
        const uint8_t *s = src + (size_t)y * src_stride;
        uint8_t *d = dst + (size_t)y * count * 3;
        for (int i = 0; i < count; i++) {
            const uint8_t *p = s + (size_t)h->bounds[2 * i] * 3;
            const int32_t *k = h->k + (size_t)i * h->ksize;
            int n = h->bounds[2 * i + 1];
            int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
            for (int x = 0; x < n; x++, p += 3) {
                s0 += p[0] * k[x];
                s1 += p[1] * k[x];
                s2 += p[2] * k[x];
            }
            d[3 * i] = clip8(s0);
            d[3 * i + 1] = clip8(s1);
            d[3 * i + 2] = clip8(s2);
        }
    }
}

/* src row r is input row row0 + r of the vertical pass. */
static void pass_vertical(const uint8_t *src, size_t src_stride, int row0, const axis *v,
                          int count, int width, uint8_t *dst)
{
    for (int j = 0; j < count; j++) {
        const int32_t *k = v->k + (size_t)j * v->ksize;
        int n = v->bounds[2 * j + 1];
        uint8_t *d = dst + (size_t)j * width * 3;
        if (n == 0) { /* no input row: Pillow's sum is just the rounding term */
            memset(d, clip8(1 << (PRECISION_BITS - 1)), (size_t)width * 3);
            continue;
        }
        const uint8_t *s = src + (size_t)(v->bounds[2 * j] - row0) * src_stride;
        for (int x = 0; x < width * 3; x++) {
            int32_t acc = 1 << (PRECISION_BITS - 1);
            const uint8_t *p = s + x;
            for (int y = 0; y < n; y++, p += src_stride)
                acc += *p * k[y];
            d[x] = clip8(acc);
        }
    }
}

/* Pixels [x0, x0 + ww) x [y0, y0 + wh) of Pillow's resize of src (sw x sh) to dw x dh, into
 * dst (ww * 3 bytes a row). */
static int resample_window(const uint8_t *src, int sw, int sh, int dw, int dh, int x0, int y0,
                           int ww, int wh, uint8_t *dst, ckpt_error *err)
{
    bool need_h = dw != sw, need_v = dh != sh;
    axis h = {0}, v = {0};
    uint8_t *tmp = NULL;
    int rc = CKPT_OK;
    int row0 = y0, row_end = y0 + wh; /* input rows of the vertical pass that are read */
    if (need_v) {
        if ((rc = axis_make(sh, dh, y0, wh, &v, err)) != CKPT_OK)
            return rc;
        row0 = INT_MAX;
        row_end = 0;
        for (int j = 0; j < wh; j++) {
            int a = v.bounds[2 * j], b = a + v.bounds[2 * j + 1];
            if (v.bounds[2 * j + 1] == 0)
                continue;
            row0 = a < row0 ? a : row0;
            row_end = b > row_end ? b : row_end;
        }
        if (row0 > row_end)
            row0 = row_end = 0;
    }
    int rows = row_end - row0;
    const uint8_t *mid = src + (size_t)row0 * sw * 3 + (size_t)x0 * 3;
    size_t mid_stride = (size_t)sw * 3;
    if (need_h) {
        if ((rc = axis_make(sw, dw, x0, ww, &h, err)) != CKPT_OK)
            goto out;
        size_t n;
        if (ckpt__mul_overflow((size_t)rows, (size_t)ww * 3, &n)) {
            rc = CKPT_FAIL(err, CKPT_ELIMIT, "resize: intermediate image too large");
            goto out;
        }
        tmp = malloc(n ? n : 1);
        if (!tmp) {
            rc = CKPT_NOMEM(err);
            goto out;
        }
        pass_horizontal(src + (size_t)row0 * sw * 3, (size_t)sw * 3, rows, &h, ww, tmp);
        mid = tmp;
        mid_stride = (size_t)ww * 3;
    }
    if (need_v) {
        pass_vertical(mid, mid_stride, row0, &v, wh, ww, dst);
    } else {
        for (int j = 0; j < wh; j++)
            memcpy(dst + (size_t)j * ww * 3, mid + (size_t)j * mid_stride, (size_t)ww * 3);
    }
out:
    free(tmp);
    axis_free(&h);
    axis_free(&v);
    return rc;
}

static bool image_ok(const ckpt_image *img)
{
    return img && img->pixels && img->width > 0 && img->height > 0 &&
           (uint64_t)img->width * (uint64_t)img->height <= (uint64_t)SIZE_MAX / 3;
}

int ckpt_image_resized_size(int width, int height, int size, int *out_width, int *out_height,
                            ckpt_error *err)
{
    if (width <= 0 || height <= 0)
        return CKPT_FAIL(err, CKPT_EINVAL, "resize: image of %dx%d pixels", width, height);
    if (size <= 0 || size > CKPT_IMAGE_MAX_SIDE)
        return CKPT_FAIL(err, CKPT_EINVAL, "resize: size %d is not in 1..%d", size,
                         CKPT_IMAGE_MAX_SIDE);
    int s = width <= height ? width : height, l = width <= height ? height : width;
    /* Python: int(size * long / short), a true division of exact integers in double. */
    double nl = (double)((int64_t)size * l) / (double)s;
    if (nl >= (double)INT_MAX)
        return CKPT_FAIL(err, CKPT_ELIMIT, "resize: a %dx%d image resized to %d would be too long",
                         width, height, size);
    int new_long = (int)nl;
    *out_width = width <= height ? size : new_long;
    *out_height = width <= height ? new_long : size;
    return CKPT_OK;
}

int ckpt_image_resize(const ckpt_image *in, int width, int height, ckpt_image *out,
                      ckpt_error *err)
{
    if (!out)
        return CKPT_FAIL(err, CKPT_EINVAL, "resize: no output image");
    memset(out, 0, sizeof *out);
    if (!image_ok(in))
        return CKPT_FAIL(err, CKPT_EINVAL, "resize: not an image");
    if (width <= 0 || height <= 0)
        return CKPT_FAIL(err, CKPT_EINVAL, "resize: size %dx%d", width, height);
    if ((uint64_t)width * (uint64_t)height > CKPT_IMAGE_MAX_PIXELS)
        return CKPT_FAIL(err, CKPT_ELIMIT, "resize: %dx%d is over the limit of %llu pixels",
                         width, height, (unsigned long long)CKPT_IMAGE_MAX_PIXELS);
    uint8_t *px = malloc((size_t)width * height * 3);
    if (!px)
        return CKPT_NOMEM(err);
    int rc = resample_window(in->pixels, in->width, in->height, width, height, 0, 0, width,
                             height, px, err);
    if (rc != CKPT_OK) {
        free(px);
        return rc;
    }
    out->width = width;
    out->height = height;
    out->pixels = px;
    return CKPT_OK;
}

/* Where torchvision 0.14's center_crop puts the crop along one axis of n pixels, in the
 * image's coordinates: negative when the axis is padded ((crop - n) // 2 zeros before it). */
static int64_t crop_offset(int n, int crop)
{
    if (crop > n)
        return -(int64_t)((crop - n) / 2);
    /* int(round((n - crop) / 2.0)): Python rounds half to even. */
    int d = n - crop, q = d / 2;
    if ((d & 1) && (q & 1))
        q++;
    return q;
}

int ckpt_image_preprocess(const ckpt_image *img, int resize, int crop, float *out,
                          size_t out_size, ckpt_error *err)
{
    if (!image_ok(img))
        return CKPT_FAIL(err, CKPT_EINVAL, "preprocess: not an image");
    if (crop <= 0 || crop > CKPT_IMAGE_MAX_SIDE)
        return CKPT_FAIL(err, CKPT_EINVAL, "preprocess: crop %d is not in 1..%d", crop,
                         CKPT_IMAGE_MAX_SIDE);
    if (resize < 0)
        return CKPT_FAIL(err, CKPT_EINVAL, "preprocess: resize %d is negative", resize);
    size_t plane = (size_t)crop * (size_t)crop;
    if (!out || out_size / sizeof(float) / 3 < plane)
        return CKPT_FAIL(err, CKPT_EINVAL, "preprocess: output buffer of %zu bytes is smaller "
                         "than 3x%dx%d floats", out_size, crop, crop);

    int rw = img->width, rh = img->height;
    if (resize > 0) {
        int rc = ckpt_image_resized_size(img->width, img->height, resize, &rw, &rh, err);
        if (rc != CKPT_OK)
            return rc;
    }
    int64_t offx = crop_offset(rw, crop), offy = crop_offset(rh, crop);
    /* The part of the crop inside the resized image; the rest is padding. */
    int x0 = (int)(offx > 0 ? offx : 0), y0 = (int)(offy > 0 ? offy : 0);
    int x1 = (int)(offx + crop < rw ? offx + crop : rw);
    int y1 = (int)(offy + crop < rh ? offy + crop : rh);
    int ww = x1 - x0, wh = y1 - y0;
    uint8_t *win = malloc((size_t)ww * wh * 3); /* ww, wh <= crop */
    if (!win)
        return CKPT_NOMEM(err);
    int rc = resample_window(img->pixels, img->width, img->height, rw, rh, x0, y0, ww, wh, win,
                             err);
    if (rc != CKPT_OK) {
        free(win);
        return rc;
    }

    /* torchvision builds float32 tensors from Python floats: double literals rounded to float,
     * not float literals (the two can differ in the last bit). */
    const float mean[3] = {(float)0.485, (float)0.456, (float)0.406};
    const float std[3] = {(float)0.229, (float)0.224, (float)0.225};
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++)
            lut[c][v] = ((float)v / 255.0f - mean[c]) / std[c];

    for (int c = 0; c < 3; c++) {
        float *o = out + (size_t)c * plane;
        for (int y = 0; y < crop; y++) {
            int64_t sy = offy + y;
            bool row_in = sy >= y0 && sy < y1;
            const uint8_t *r = row_in ? win + (size_t)(sy - y0) * ww * 3 + c : NULL;
            for (int x = 0; x < crop; x++) {
                int64_t sx = offx + x;
                bool in = row_in && sx >= x0 && sx < x1;
                o[(size_t)y * crop + x] = lut[c][in ? r[(size_t)(sx - x0) * 3] : 0];
            }
        }
    }
    free(win);
    return CKPT_OK;
}
