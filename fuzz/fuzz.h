/* fuzz.h - what the harnesses that need a file share: the library opens paths, so an input is
 * written to an in-memory file (memfd) and opened as /proc/self/fd/N -- a regular file, no
 * disk, one per process, rewritten for every input. */
#ifndef CKPT_FUZZ_H
#define CKPT_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* fuzz_memfile(0, ...) and fuzz_memfile(1, ...) are two distinct files (the round trip needs an
 * input and a template). Aborts if the system refuses: a harness that cannot run must not pass. */
static inline const char *fuzz_memfile(int slot, const uint8_t *data, size_t size)
{
    static int fd[2] = {-1, -1};
    static char path[2][64];
    if (fd[slot] < 0) {
        fd[slot] = memfd_create(slot ? "fuzz-input-1" : "fuzz-input-0", 0);
        if (fd[slot] < 0) {
            perror("fuzz: memfd_create");
            abort();
        }
        snprintf(path[slot], sizeof path[slot], "/proc/self/fd/%d", fd[slot]);
    }
    if (ftruncate(fd[slot], 0) != 0) {
        perror("fuzz: ftruncate");
        abort();
    }
    for (size_t done = 0; done < size;) {
        ssize_t n = pwrite(fd[slot], data + done, size - done, (off_t)done);
        if (n <= 0) {
            perror("fuzz: pwrite");
            abort();
        }
        done += (size_t)n;
    }
    return path[slot];
}

/* A message on stderr, then abort: libFuzzer saves the input as a crash. */
static inline void fuzz_fail(const char *harness, const char *what, const char *detail)
{
    fprintf(stderr, "%s: %s%s%s\n", harness, what, detail ? ": " : "", detail ? detail : "");
    abort();
}

#endif
