/* image.c - JPEG and PNG to the RGB pixels of Pillow 9.4's Image.open(path).convert("RGB").
 *
 * JPEG goes through the system libjpeg-turbo set up as Pillow's JpegDecode.c sets it up: a
 * suspending source, the library's defaults (JDCT_ISLOW, fancy upsampling), out_color_space
 * GRAYSCALE / RGB / CMYK for 1 / 3 / 4 components. Pillow opens a 4-component JPEG as "CMYK;I"
 * (Adobe's inverted CMYK) and converts it with cmyk2rgb. Running out of data before the last
 * row is "image file is truncated", as in Pillow; running out after it (no EOI) is not.
 *
 * PNG goes through libpng's progressive reader with no transformations, so the rows are the
 * raw samples Pillow's own decoder sees; the conversions are Pillow's unpackers followed by
 * convert("RGB"). Pillow reads the header with its own Python code, and its rules are not
 * libpng's, so the chunks up to the first IDAT are walked here, Pillow's way:
 *     8-byte signature 89 50 4E 47 0D 0A 1A 0A
 *     chunks: u32 length (big-endian), 4-character type, data, u32 CRC-32 of type + data
 *     before the first IDAT, in any order: IHDR (13 bytes: u32 width, u32 height, bit depth,
 *     colour type, compression, filter, interlace), PLTE for palette images, anything else
 *     then IDAT chunks holding one zlib stream of filtered rows, then anything up to IEND
 * Every chunk before the first IDAT must be complete with a correct CRC (Pillow's
 * ChunkStream.crc). libpng is then handed the header as Pillow understood it (its IHDR and
 * palette, nothing else) followed by the file's IDAT chunks. IDAT CRCs are not checked, as
 * Pillow does not check them; an image is complete when its last row is, and after that only
 * what Pillow's load_end still reads can make it fail.
 */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jerror.h>
#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

#define PNG_MAX_CHUNK 0x7fffffffu /* a PNG length field above this is invalid */

static const uint8_t PNG_SIGNATURE[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

static uint64_t max_pixels_of(const ckpt_image_options *opt)
{
    return opt && opt->max_pixels ? opt->max_pixels : CKPT_IMAGE_MAX_PIXELS;
}

/* Messages of libjpeg and libpng start with a capital and may end with a full stop. */
static void tidy_message(char *m)
{
    size_t n = strlen(m);
    while (n && (m[n - 1] == '.' || m[n - 1] == ' '))
        m[--n] = '\0';
    if (m[0] >= 'A' && m[0] <= 'Z' && !(m[1] >= 'A' && m[1] <= 'Z'))
        m[0] = (char)(m[0] - 'A' + 'a');
}

/* ---- JPEG --------------------------------------------------------------------------------- */

typedef struct jpeg_job {
    struct jpeg_decompress_struct cinfo;
    struct jpeg_error_mgr jerr;
    struct jpeg_source_mgr src;
    struct jpeg_progress_mgr progress;
    jmp_buf jmp;
    bool created;
    bool too_many_scans;
    int status; /* of a JPEG_FAILED */
    char message[JMSG_LENGTH_MAX];
    const uint8_t *data;
    size_t size;
    uint64_t max_pixels;
    uint8_t *pixels; /* the result, width * height * 3 */
    uint8_t *row;    /* one decoded row for 1- and 4-component images */
    size_t width, height; /* of the image decoded; a later SOF may change cinfo's */
    ckpt_image *out;
    ckpt_error *err;
} jpeg_job;

static void jpeg_on_error(j_common_ptr c)
{
    jpeg_job *j = c->client_data;
    (*c->err->format_message)(c, j->message);
    longjmp(j->jmp, 1);
}

static void jpeg_on_output(j_common_ptr c)
{
    (void)c; /* warnings are ignored, as Pillow ignores them */
}

/* Every file's data was handed over at once, so a request for more is a truncated file:
 * returning FALSE suspends the decoder, which is what Pillow's source does at end of file. */
static boolean jpeg_src_fill(j_decompress_ptr c)
{
    (void)c;
    return FALSE;
}

static void jpeg_src_noop(j_decompress_ptr c)
{
    (void)c;
}

static void jpeg_src_skip(j_decompress_ptr c, long n)
{
    struct jpeg_source_mgr *s = c->src;
    if (n <= 0)
        return;
    if ((unsigned long)n > s->bytes_in_buffer) {
        s->next_input_byte += s->bytes_in_buffer;
        s->bytes_in_buffer = 0;
    } else {
        s->next_input_byte += n;
        s->bytes_in_buffer -= (size_t)n;
    }
}

/* A progressive file of many scans is decoded whole by jpeg_start_decompress; each scan costs
 * a pass over the image, so a hostile file could take minutes (libjpeg-turbo's own advice). */
static void jpeg_on_progress(j_common_ptr c)
{
    jpeg_job *j = c->client_data;
    if (c->is_decompressor &&
        ((j_decompress_ptr)c)->input_scan_number > CKPT_IMAGE_MAX_JPEG_SCANS) {
        j->too_many_scans = true;
        longjmp(j->jmp, 1);
    }
}

/* Pillow's cmyk2rgb on the inverted samples of "CMYK;I". */
static void cmyk_row(const uint8_t *in, uint8_t *out, size_t width)
{
    for (size_t x = 0; x < width; x++, in += 4, out += 3) {
        int nk = in[3]; /* 255 - k, and k = 255 - sample */
        for (int c = 0; c < 3; c++) {
            int v = 255 - in[c];
            int t = v * nk + 128;
            int m = ((t >> 8) + t) >> 8; /* MULDIV255 */
            int r = nk - m;
            out[c] = (uint8_t)(r < 0 ? 0 : r > 255 ? 255 : r);
        }
    }
}

enum { JPEG_DONE, JPEG_TRUNCATED, JPEG_FAILED, JPEG_LONGJMP };

/* Holds the setjmp; nothing it keeps in local variables is read after a longjmp. */
static int jpeg_run(jpeg_job *j)
{
    struct jpeg_decompress_struct *ci = &j->cinfo;
    if (setjmp(j->jmp))
        return JPEG_LONGJMP;

    ci->err = jpeg_std_error(&j->jerr);
    j->jerr.error_exit = jpeg_on_error;
    j->jerr.output_message = jpeg_on_output;
    ci->client_data = j;
    jpeg_create_decompress(ci);
    j->created = true;
    /* Bounds the coefficient buffers of progressive and multi-scan files (at most 4
     * components of 2-byte coefficients per pixel, plus block padding); libjpeg fails
     * cleanly past it instead of asking for a backing store. Pillow sets no bound, but its
     * pixel limit implies this one for any image that is not absurdly narrow. */
    uint64_t mem = j->max_pixels < (uint64_t)LONG_MAX / 32 ? j->max_pixels * 16 + (64u << 20)
                                                            : (uint64_t)LONG_MAX;
    ci->mem->max_memory_to_use = (long)mem;

    j->src.init_source = jpeg_src_noop;
    j->src.fill_input_buffer = jpeg_src_fill;
    j->src.skip_input_data = jpeg_src_skip;
    j->src.resync_to_restart = jpeg_resync_to_restart;
    j->src.term_source = jpeg_src_noop;
    j->src.next_input_byte = j->data;
    j->src.bytes_in_buffer = j->size;
    ci->src = &j->src;
    j->progress.progress_monitor = jpeg_on_progress;
    ci->progress = &j->progress;

    /* Pillow's loop: a tables-only datastream may precede the image. */
    int rc;
    do
        rc = jpeg_read_header(ci, FALSE);
    while (rc == JPEG_HEADER_TABLES_ONLY);
    if (rc == JPEG_SUSPENDED)
        return JPEG_TRUNCATED;

    uint64_t pixels = (uint64_t)ci->image_width * ci->image_height;
    if (pixels > j->max_pixels) {
        j->status = CKPT_FAIL(j->err, CKPT_ELIMIT,
                  "jpeg: image of %ux%u pixels is over the limit of %llu pixels (Pillow "
                  "refuses it as a decompression bomb)",
                  (unsigned)ci->image_width, (unsigned)ci->image_height,
                  (unsigned long long)j->max_pixels);
        return JPEG_FAILED;
    }
    switch (ci->num_components) {
    case 1:
        ci->out_color_space = JCS_GRAYSCALE;
        j->out->mode = "L";
        break;
    case 3:
        ci->out_color_space = JCS_RGB;
        j->out->mode = "RGB";
        break;
    case 4:
        ci->out_color_space = JCS_CMYK;
        j->out->mode = "CMYK";
        break;
    default:
        j->status = CKPT_FAIL(j->err, CKPT_EUNSUPPORTED, "jpeg: cannot handle %d-layer images",
                  ci->num_components);
        return JPEG_FAILED;
    }

    size_t width = ci->image_width, height = ci->image_height;
    int comps = ci->num_components;
    j->width = width;
    j->height = height;
    j->pixels = malloc(width * height * 3); /* <= max_pixels * 3: no overflow */
    j->row = malloc(width * 4);
    if (!j->pixels || !j->row) {
        j->status = CKPT_NOMEM(j->err);
        return JPEG_FAILED;
    }

    if (!jpeg_start_decompress(ci))
        return JPEG_TRUNCATED;
    if (ci->output_width != width || ci->output_height != height ||
        ci->output_components != comps) {
        j->status = CKPT_FAIL(j->err, CKPT_EUNSUPPORTED, "jpeg: unexpected output geometry");
        return JPEG_FAILED;
    }
    while (ci->output_scanline < height) {
        size_t y = ci->output_scanline;
        uint8_t *dst = j->pixels + y * width * 3;
        JSAMPROW row = comps == 3 ? dst : j->row;
        if (jpeg_read_scanlines(ci, &row, 1) != 1)
            return JPEG_TRUNCATED;
        if (comps == 1) {
            for (size_t x = 0; x < width; x++)
                dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = j->row[x];
        } else if (comps == 4) {
            cmyk_row(j->row, dst, width);
        }
    }
    /* Suspending here means the EOI marker is missing after the last row: Pillow keeps the
     * image ("FIXME: add strictness mode test" in JpegDecode.c), so do we. */
    (void)jpeg_finish_decompress(ci);
    return JPEG_DONE;
}

static int decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels, ckpt_image *out,
                       ckpt_error *err)
{
    jpeg_job *j = calloc(1, sizeof *j);
    if (!j)
        return CKPT_NOMEM(err);
    j->data = data;
    j->size = size;
    j->max_pixels = max_pixels;
    j->out = out;
    j->err = err;

    int rc = jpeg_run(j), status = CKPT_OK;
    if (rc == JPEG_DONE) {
        out->width = (int)j->width;
        out->height = (int)j->height;
        out->pixels = j->pixels;
        out->format = "jpeg";
        j->pixels = NULL;
    } else if (rc == JPEG_TRUNCATED) {
        status = CKPT_CORRUPT(err, "jpeg: image file is truncated");
    } else if (rc == JPEG_FAILED) {
        status = j->status;
    } else if (j->too_many_scans) {
        status = CKPT_FAIL(err, CKPT_ELIMIT, "jpeg: more than %d progressive scans",
                           CKPT_IMAGE_MAX_JPEG_SCANS);
    } else {
        tidy_message(j->message);
        switch (j->jerr.msg_code) {
        case JERR_OUT_OF_MEMORY:
            status = CKPT_FAIL(err, CKPT_ENOMEM, "jpeg: %s", j->message);
            break;
        case JERR_BAD_PRECISION:
        case JERR_CONVERSION_NOTIMPL:
        case JERR_NOT_COMPILED:
        case JERR_NOTIMPL:
        case JERR_SOF_UNSUPPORTED:
            status = CKPT_FAIL(err, CKPT_EUNSUPPORTED, "jpeg: %s", j->message);
            break;
        default:
            status = CKPT_CORRUPT(err, "jpeg: %s", j->message);
        }
    }
    if (j->created)
        jpeg_destroy_decompress(&j->cinfo);
    free(j->row);
    free(j->pixels);
    free(j);
    if (status != CKPT_OK)
        out->mode = NULL;
    return status;
}

/* ---- PNG ---------------------------------------------------------------------------------- */

/* Adam7: where each pass starts and how far apart its pixels are. */
static const uint8_t ADAM7_X0[7] = {0, 4, 0, 2, 0, 1, 0};
static const uint8_t ADAM7_Y0[7] = {0, 0, 4, 0, 2, 0, 1};
static const uint8_t ADAM7_DX[7] = {8, 8, 4, 4, 2, 2, 1};
static const uint8_t ADAM7_DY[7] = {8, 8, 8, 4, 4, 2, 2};

typedef struct png_job {
    png_structp png;
    png_infop info;
    const uint8_t *data;
    size_t size;
    uint64_t max_pixels;
    /* From the walk of the chunks. */
    const uint8_t *ihdr;  /* the 13 bytes of the IHDR in force at the first IDAT */
    const uint8_t *plte;  /* the PLTE Pillow uses, or NULL */
    size_t plte_len;
    size_t first_idat;   /* offset of the first IDAT chunk */
    bool animated;       /* Pillow's is_animated: an APNG of more than one frame */
    size_t chunk_end;    /* end of the chunk being fed to libpng */
    size_t image_end;    /* end of the chunk in which the last row was completed */
    /* From IHDR, through libpng. */
    uint32_t width, height;
    int bit_depth, color_type;
    int passes;
    uint32_t pass_cols[7], pass_rows[7];
    uint64_t rows_expected, rows_done;
    uint8_t palette[256 * 3];
    uint8_t *pixels;
    const char *mode;
    int status; /* set by a callback before it raises an error of its own */
    char message[256];
} png_job;

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Pillow's is_cid: four word characters. */
static bool is_chunk_type(const uint8_t *t)
{
    for (int i = 0; i < 4; i++)
        if (!((t[i] >= 'A' && t[i] <= 'Z') || (t[i] >= 'a' && t[i] <= 'z') ||
              (t[i] >= '0' && t[i] <= '9') || t[i] == '_'))
            return false;
    return true;
}

/* Walk the chunks up to the first IDAT the way Pillow's PngImageFile._open does: every chunk
 * complete with a correct CRC; the last IHDR counts (Pillow's ChunkStream takes them in any
 * order), a PLTE counts only after the IHDR of a palette image, and the last one wins. */
static int png_walk(png_job *j, ckpt_error *err)
{
    const uint8_t *p = j->data;
    size_t pos = 8;
    bool fctl = false, palette = false;
    int actl = 0; /* valid acTL chunks seen */
    uint32_t frames = 0;
    for (;;) {
        if (j->size - pos < 8)
            return CKPT_CORRUPT(err, "png: image file is truncated");
        uint32_t len = be32(p + pos);
        const uint8_t *type = p + pos + 4;
        if (!is_chunk_type(type))
            return CKPT_CORRUPT(err, "png: broken chunk type at offset %zu", pos + 4);
        if (memcmp(type, "IDAT", 4) == 0) {
            if (!j->ihdr)
                return CKPT_CORRUPT(err, "png: no 'IHDR' chunk before the image data");
            j->first_idat = pos;
            /* Pillow adds the default image as a frame when no fcTL precedes IDAT. */
            j->animated = actl == 1 && frames + (fctl ? 0 : 1) > 1;
            return CKPT_OK;
        }
        if (memcmp(type, "IEND", 4) == 0)
            return CKPT_CORRUPT(err, "png: no image data before 'IEND'");
        if (len > PNG_MAX_CHUNK)
            return CKPT_CORRUPT(err, "png: chunk '%.4s' has an invalid length", (const char *)type);
        if (j->size - pos - 8 < (uint64_t)len + 4)
            return CKPT_CORRUPT(err, "png: image file is truncated");
        const uint8_t *body = p + pos + 8;
        if (memcmp(type, "IHDR", 4) == 0) {
            if (len < 13)
                return CKPT_CORRUPT(err, "png: truncated 'IHDR' chunk");
            if (body[11] != 0)
                return CKPT_CORRUPT(err, "png: unknown filter category %d", body[11]);
            j->ihdr = body;
            palette = body[9] == 3;
        }
        uLong crc = crc32(crc32(0L, Z_NULL, 0), type, 4);
        /* zlib's crc32 takes a uInt length; len < 2^31 fits. */
        crc = crc32(crc, body, (uInt)len);
        if ((uint32_t)crc != be32(body + len))
            return CKPT_CORRUPT(err, "png: bad checksum in chunk '%.4s'", (const char *)type);
        if (memcmp(type, "PLTE", 4) == 0 && palette) {
            if (len > 256 * 3)
                return CKPT_CORRUPT(err, "png: palette of more than 256 entries");
            j->plte = body;
            j->plte_len = len;
        } else if (memcmp(type, "acTL", 4) == 0 && len >= 8) {
            uint32_t n = be32(body);
            actl += n != 0 && n <= 0x80000000u;
            frames = n;
        } else if (memcmp(type, "fcTL", 4) == 0) {
            fctl = true;
        }
        pos += (size_t)len + 12;
    }
}

/* A chunk for libpng, with its CRC. */
static size_t png_put_chunk(uint8_t *out, const char *type, const uint8_t *data, uint32_t len)
{
    out[0] = (uint8_t)(len >> 24);
    out[1] = (uint8_t)(len >> 16);
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    memcpy(out + 4, type, 4);
    memcpy(out + 8, data, len);
    uint32_t crc = (uint32_t)crc32(crc32(0L, Z_NULL, 0), out + 4, len + 4);
    out[8 + len] = (uint8_t)(crc >> 24);
    out[9 + len] = (uint8_t)(crc >> 16);
    out[10 + len] = (uint8_t)(crc >> 8);
    out[11 + len] = (uint8_t)crc;
    return 12 + (size_t)len;
}

static void png_on_error(png_structp png, png_const_charp msg)
{
    png_job *j = png_get_error_ptr(png);
    snprintf(j->message, sizeof j->message, "%s", msg ? msg : "error");
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg)
{
    (void)png;
    (void)msg;
}

static void png_on_info(png_structp png, png_infop info)
{
    png_job *j = png_get_progressive_ptr(png);
    if (j->pixels) /* libpng calls this again for some damaged files */
        png_error(png, "a second image header");
    png_uint_32 w, h;
    int bd, ct, interlace;
    png_get_IHDR(png, info, &w, &h, &bd, &ct, &interlace, NULL, NULL);
    if ((uint64_t)w * h > j->max_pixels) {
        j->status = CKPT_ELIMIT;
        snprintf(j->message, sizeof j->message,
                 "image of %ux%u pixels is over the limit of %llu pixels (Pillow refuses it "
                 "as a decompression bomb)",
                 (unsigned)w, (unsigned)h, (unsigned long long)j->max_pixels);
        png_longjmp(png, 1);
    }
    j->width = w;
    j->height = h;
    j->bit_depth = bd;
    j->color_type = ct;
    switch (ct) {
    case PNG_COLOR_TYPE_GRAY: j->mode = bd == 1 ? "1" : bd == 16 ? "I" : "L"; break;
    case PNG_COLOR_TYPE_RGB: j->mode = "RGB"; break;
    case PNG_COLOR_TYPE_PALETTE: j->mode = "P"; break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: j->mode = bd == 16 ? "RGBA" : "LA"; break;
    case PNG_COLOR_TYPE_RGB_ALPHA: j->mode = "RGBA"; break;
    default: png_error(png, "unknown color type");
    }

    j->passes = interlace == PNG_INTERLACE_ADAM7 ? 7 : 1;
    j->rows_expected = 0;
    for (int p = 0; p < j->passes; p++) {
        uint32_t x0 = j->passes == 7 ? ADAM7_X0[p] : 0, dx = j->passes == 7 ? ADAM7_DX[p] : 1;
        uint32_t y0 = j->passes == 7 ? ADAM7_Y0[p] : 0, dy = j->passes == 7 ? ADAM7_DY[p] : 1;
        j->pass_cols[p] = w > x0 ? (w - x0 + dx - 1) / dx : 0;
        j->pass_rows[p] = h > y0 ? (h - y0 + dy - 1) / dy : 0;
        if (j->pass_cols[p] && j->pass_rows[p])
            j->rows_expected += j->pass_rows[p];
    }
    j->pixels = malloc((size_t)w * h * 3); /* <= max_pixels * 3 */
    if (!j->pixels) {
        j->status = CKPT_ENOMEM;
        png_error(png, "out of memory");
    }
    png_start_read_image(png);
}

/* Sample i of a row packed at bd < 8 bits, most significant bits first. */
static unsigned packed(const uint8_t *row, size_t i, int bd)
{
    size_t bit = i * (size_t)bd;
    return (row[bit >> 3] >> (8 - bd - (int)(bit & 7))) & ((1u << bd) - 1);
}

/* One row of raw samples to RGB, as Pillow's unpacker for the PNG mode and convert("RGB"). */
static void png_convert(const png_job *j, const uint8_t *row, size_t n, uint8_t *dst,
                        size_t step)
{
    int bd = j->bit_depth;
    for (size_t i = 0; i < n; i++, dst += step) {
        unsigned r, g, b;
        switch (j->color_type) {
        case PNG_COLOR_TYPE_GRAY:
            if (bd == 16) { /* "I;16B" -> "I", then i2rgb saturates at 255 */
                unsigned v = (unsigned)row[2 * i] << 8 | row[2 * i + 1];
                r = v > 255 ? 255 : v;
            } else if (bd == 8) {
                r = row[i];
            } else { /* "1", "L;2", "L;4" scale to 0..255 */
                unsigned v = packed(row, i, bd);
                r = bd == 1 ? v * 255 : bd == 2 ? v * 0x55 : v * 0x11;
            }
            g = b = r;
            break;
        case PNG_COLOR_TYPE_RGB: /* "RGB;16B" keeps the high bytes */
            if (bd == 16) {
                r = row[6 * i], g = row[6 * i + 2], b = row[6 * i + 4];
            } else {
                r = row[3 * i], g = row[3 * i + 1], b = row[3 * i + 2];
            }
            break;
        case PNG_COLOR_TYPE_PALETTE: {
            unsigned k = bd == 8 ? row[i] : packed(row, i, bd);
            r = j->palette[3 * k], g = j->palette[3 * k + 1], b = j->palette[3 * k + 2];
            break;
        }
        case PNG_COLOR_TYPE_GRAY_ALPHA: /* "LA", or "LA;16B" -> "RGBA": alpha dropped */
            r = g = b = bd == 16 ? row[4 * i] : row[2 * i];
            break;
        default: /* RGBA: "RGBA" or "RGBA;16B", alpha dropped */
            if (bd == 16) {
                r = row[8 * i], g = row[8 * i + 2], b = row[8 * i + 4];
            } else {
                r = row[4 * i], g = row[4 * i + 1], b = row[4 * i + 2];
            }
            break;
        }
        dst[0] = (uint8_t)r;
        dst[1] = (uint8_t)g;
        dst[2] = (uint8_t)b;
    }
}

static void png_on_row(png_structp png, png_bytep row, png_uint_32 row_num, int pass)
{
    png_job *j = png_get_progressive_ptr(png);
    if (!row)
        return;
    if (pass < 0 || pass >= j->passes || row_num >= j->pass_rows[pass] || !j->pass_cols[pass])
        png_error(png, "row outside the image");
    bool adam7 = j->passes == 7;
    size_t y = adam7 ? ADAM7_Y0[pass] + (size_t)row_num * ADAM7_DY[pass] : row_num;
    size_t x0 = adam7 ? ADAM7_X0[pass] : 0, dx = adam7 ? ADAM7_DX[pass] : 1;
    uint8_t *dst = j->pixels + (y * j->width + x0) * 3;
    png_convert(j, row, j->pass_cols[pass], dst, dx * 3);
    j->rows_done++;
}

static void png_on_end(png_structp png, png_infop info)
{
    (void)png;
    (void)info;
}

/* What Pillow's PngImageFile.load_end does once the last row is decoded: it skips the rest of
 * that IDAT chunk and its CRC, then reads chunks up to IEND. A header it cannot read ends the
 * walk quietly, but a chunk whose data is cut short raises "Truncated File Read". */
static bool png_tail_complete(const png_job *j)
{
    const uint8_t *p = j->data;
    size_t pos = j->image_end;
    for (;;) {
        if (pos > j->size || j->size - pos < 8 || !is_chunk_type(p + pos + 4))
            return true;
        const uint8_t *type = p + pos + 4;
        if (memcmp(type, "IEND", 4) == 0 || (j->animated && memcmp(type, "fcTL", 4) == 0))
            return true;
        uint64_t len = be32(p + pos);
        if (j->size - pos - 8 < len)
            return false;
        pos += 8 + (size_t)len + 4;
    }
}

/* Holds the setjmp; returns 0 when libpng returned, 1 when it raised an error. The file is fed
 * a chunk at a time so that the chunk in which the last row completes is known. */
static int png_run(png_job *j)
{
    if (setjmp(png_jmpbuf(j->png)))
        return 1;
    png_set_benign_errors(j->png, 1);
    png_set_crc_action(j->png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE); /* as Pillow, for IDAT */
    png_set_user_limits(j->png, PNG_MAX_CHUNK, PNG_MAX_CHUNK);        /* max_pixels rules */
    png_set_check_for_invalid_index(j->png, 0);                      /* the palette has 2^bd */
    png_set_progressive_read_fn(j->png, j, png_on_info, png_on_row, png_on_end);
    png_bytep data = (png_bytep)(uintptr_t)j->data;
    /* libpng gets the header Pillow decodes by: the IHDR in force (with the compression method
     * Pillow does not look at set to 0, and any interlace method taken as Adam7, as Pillow takes
     * it) and the palette as Pillow builds it. The other chunks before IDAT do not change the
     * pixels and Pillow skips the unknown ones, critical or not, so libpng does not see them. */
    uint8_t head[8 + 25 + 12 + 3 * 256];
    size_t n = 8;
    memcpy(head, PNG_SIGNATURE, 8);
    uint8_t ihdr[13];
    memcpy(ihdr, j->ihdr, 13);
    ihdr[10] = 0;
    ihdr[12] = ihdr[12] != 0;
    n += png_put_chunk(head + n, "IHDR", ihdr, 13);
    if (ihdr[9] == PNG_COLOR_TYPE_PALETTE) {
        int bd = ihdr[8];
        uint32_t entries = bd == 1 || bd == 2 || bd == 4 ? 1u << bd : 256;
        n += png_put_chunk(head + n, "PLTE", j->palette, entries * 3);
    }
    png_process_data(j->png, j->info, head, n);
    j->chunk_end = j->first_idat;
    while (j->chunk_end < j->size) {
        size_t pos = j->chunk_end;
        n = j->size - pos;
        /* Pillow's load_read ends the image data at the first chunk that is not IDAT. */
        if (n >= 8 && memcmp(data + pos + 4, "IDAT", 4) != 0)
            break;
        if (n >= 8 && (uint64_t)be32(data + pos) + 12 < n)
            n = (size_t)be32(data + pos) + 12;
        j->chunk_end = pos + n; /* <= size */
        if (n > 8 && be32(data + pos) > PNG_MAX_CHUNK && memcmp(data + pos + 4, "IDAT", 4) == 0) {
            /* Pillow reads such an IDAT to the end of the file; libpng refuses the length
             * itself. Past the end of the file either way, so give libpng a legal one. */
            png_byte fake[8] = {0x7f, 0xff, 0xff, 0xff, 'I', 'D', 'A', 'T'};
            png_process_data(j->png, j->info, fake, 8);
            png_process_data(j->png, j->info, data + pos + 8, n - 8);
        } else {
            png_process_data(j->png, j->info, data + pos, n);
        }
        if (j->rows_expected && j->rows_done == j->rows_expected) {
            j->image_end = j->chunk_end;
            break;
        }
    }
    return 0;
}

static int decode_png(const uint8_t *data, size_t size, uint64_t max_pixels, ckpt_image *out,
                      ckpt_error *err)
{
    png_job *j = calloc(1, sizeof *j);
    if (!j)
        return CKPT_NOMEM(err);
    j->data = data;
    j->size = size;
    j->max_pixels = max_pixels;
    int status = png_walk(j, err);
    if (status != CKPT_OK)
        goto done;
    /* Pillow's ImagingPaletteNew starts from a grey ramp and putpalette overwrites the entries
     * the file has, so an index past them (or any index, with no PLTE) is grey, not an error. */
    for (int i = 0; i < 256; i++)
        j->palette[3 * i] = j->palette[3 * i + 1] = j->palette[3 * i + 2] = (uint8_t)i;
    if (j->plte)
        memcpy(j->palette, j->plte, j->plte_len / 3 * 3);
    j->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, j, png_on_error, png_on_warning);
    j->info = j->png ? png_create_info_struct(j->png) : NULL;
    if (!j->info) {
        status = CKPT_NOMEM(err);
        goto done;
    }
    int raised = png_run(j);
    bool complete = j->pixels && j->rows_done == j->rows_expected;
    if (complete && raised)
        j->image_end = j->chunk_end;
    if (raised && j->status) {
        status = CKPT_FAIL(err, j->status, "png: %s", j->message);
    } else if (complete && !png_tail_complete(j)) {
        status = CKPT_CORRUPT(err, "png: image file is truncated");
    } else if (complete) {
        /* An error after the last row is in data Pillow never decodes. */
        out->width = (int)j->width;
        out->height = (int)j->height;
        out->pixels = j->pixels;
        out->format = "png";
        out->mode = j->mode;
        j->pixels = NULL;
    } else if (raised) {
        tidy_message(j->message);
        status = CKPT_CORRUPT(err, "png: %s", j->message);
    } else {
        status = CKPT_CORRUPT(err, "png: image file is truncated");
    }
done:
    if (j->png)
        png_destroy_read_struct(&j->png, j->info ? &j->info : NULL, NULL);
    free(j->pixels);
    free(j);
    return status;
}

/* ---- entry points ------------------------------------------------------------------------- */

/* Name the image formats people meet, so the message can say what the file is. */
static int refuse_other(const uint8_t *p, size_t n, ckpt_error *err)
{
    static const struct {
        size_t off, len;
        const char *magic, *what;
    } kinds[] = {
        {0, 6, "GIF87a", "a GIF image"},
        {0, 6, "GIF89a", "a GIF image"},
        {0, 2, "BM", "a BMP image"},
        {0, 4, "II*\0", "a TIFF image"},
        {0, 4, "MM\0*", "a TIFF image"},
        {8, 4, "WEBP", "a WebP image"},
        {4, 8, "ftypavif", "an AVIF image"},
        {4, 8, "ftypheic", "a HEIC image"},
        {4, 8, "ftypheix", "a HEIC image"},
        {4, 8, "ftypmif1", "a HEIF image"},
        {0, 4, "8BPS", "a Photoshop image"},
        {0, 2, "\xff\x0a", "a JPEG XL image"},
        {0, 8, "\0\0\0\x0cJXL ", "a JPEG XL image"},
        {0, 4, "\0\0\0\x0cjP  ", "a JPEG 2000 image"},
        {0, 5, "<?xml", "an XML file (an SVG image?)"},
        {0, 4, "<svg", "an SVG image"},
    };
    if (n == 0)
        return CKPT_FAIL(err, CKPT_EFORMAT, "an empty file, not an image");
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (n >= kinds[i].off + kinds[i].len &&
            memcmp(p + kinds[i].off, kinds[i].magic, kinds[i].len) == 0)
            return CKPT_FAIL(err, CKPT_EUNSUPPORTED,
                             "%s, which ckpt does not read (convert it to PNG or JPEG)",
                             kinds[i].what);
    return CKPT_FAIL(err, CKPT_EFORMAT, "not a JPEG or PNG image");
}

int ckpt_image_decode(const void *data, size_t size, const ckpt_image_options *opt,
                      ckpt_image *out, ckpt_error *err)
{
    if (!out)
        return CKPT_FAIL(err, CKPT_EINVAL, "no image to fill");
    memset(out, 0, sizeof *out);
    if (!data && size)
        return CKPT_FAIL(err, CKPT_EINVAL, "no data");
    const uint8_t *p = data;
    uint64_t max_pixels = max_pixels_of(opt);
    /* The same tests as Pillow's _accept functions. */
    if (size >= 3 && p[0] == 0xff && p[1] == 0xd8 && p[2] == 0xff)
        return decode_jpeg(p, size, max_pixels, out, err);
    if (size >= 8 && memcmp(p, PNG_SIGNATURE, 8) == 0)
        return decode_png(p, size, max_pixels, out, err);
    return refuse_other(p, size, err);
}

int ckpt_image_load(const char *path, const ckpt_image_options *opt, ckpt_image *out,
                    ckpt_error *err)
{
    if (!out)
        return CKPT_FAIL(err, CKPT_EINVAL, "no image to fill");
    memset(out, 0, sizeof *out);
    int fd = -1;
    uint64_t fsize = 0;
    int rc0 = ckpt__open_regular(path, &fd, &fsize, err);
    if (rc0)
        return rc0;
    if (fsize > CKPT_IMAGE_MAX_FILE) {
        close(fd);
        return CKPT_FAIL(err, CKPT_ELIMIT, "image file of %llu bytes is over the limit of %llu",
                         (unsigned long long)fsize, (unsigned long long)CKPT_IMAGE_MAX_FILE);
    }
    size_t cap = (size_t)fsize, len = 0;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) {
        close(fd);
        return CKPT_NOMEM(err);
    }
    while (len < cap) {
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            free(buf);
            return CKPT_FAIL(err, CKPT_EIO, "cannot read: %s", strerror(e));
        }
        if (n == 0)
            break; /* the file shrank: decode what is there */
        len += (size_t)n;
    }
    close(fd);
    int rc = ckpt_image_decode(buf, len, opt, out, err);
    free(buf);
    return rc;
}

void ckpt_image_free(ckpt_image *img)
{
    if (!img)
        return;
    free(img->pixels);
    memset(img, 0, sizeof *img);
}
