/* error.c - status names and the error record every failing call fills. */
#include "internal.h"

#include <stdio.h>

const char *ckpt_status_name(int status)
{
    switch (status) {
#define CKPT__STATUS_NAME(name, value, text)                                                   \
    case value:                                                                                \
        return #name;
        CKPT_STATUS_MAP(CKPT__STATUS_NAME)
#undef CKPT__STATUS_NAME
    }
    return "unknown";
}

const char *ckpt_status_str(int status)
{
    switch (status) {
#define CKPT__STATUS_TEXT(name, value, text)                                                   \
    case value:                                                                                \
        return text;
        CKPT_STATUS_MAP(CKPT__STATUS_TEXT)
#undef CKPT__STATUS_TEXT
    }
    return "unknown status";
}

int ckpt__error_set(ckpt_error *err, int status, const char *src_file, int src_line,
                    const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        /* One line, always, with no control bytes: a message quoting names from a hostile file
         * must neither break the CLI's one-line format nor drive a terminal. */
        for (char *p = err->message; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = (*p == '\n' || *p == '\r' || *p == '\t') ? ' ' : '?';
        err->status = status;
        err->src_file = src_file;
        err->src_line = src_line;
    }
    return status;
}
