/*
 * fuzz_cli.c - libFuzzer harness for the command line: argument parsing and dispatch of every
 * subcommand (cli/main.c, cli/common.c's cli_parse_args, each cmd_*.c's option checks).
 *
 * The input is split at NUL bytes into arguments and run as `ckpt ARG...` in a folder of its
 * own holding small valid files (cli_files.h, made by gen_seeds.py): a.pt (a state dict),
 * b.pt (the same wrapped in {'state_dict': ...} with a module. prefix), c.safetensors, d.pt
 * (legacy), i.png, l.txt. The files are rewritten and anything else removed before each input,
 * so runs are independent. An argument with a '/' or starting with ".." ends the input
 * unrun: outputs (`extract -o`) stay in the folder. None of these files is a ResNet, so `run`
 * and `check --arch` stop at the verdict rather than run a network. Any exit status is fine;
 * a crash, a sanitizer report, a hang or a status other than 0, 1, 2 is not.
 *
 *   CC=clang cmake -S . -B build-fuzz -DCKPT_FUZZ=ON -DBUILD_TESTING=OFF
 *   cmake --build build-fuzz --target fuzz_cli && fuzz/run.sh build-fuzz cli 600
 */
#define _GNU_SOURCE
#include "fuzz.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

/* cli/main.c, with its main() renamed, for the command table and dispatch. */
int ckpt_cli_main(int argc, char **argv);
#define main ckpt_cli_main
#include "../cli/main.c"
#undef main

#include "cli_files.h"

#define FUZZ_MAX_ARGS 32

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[256];

static void cleanup(void)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.' || (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")))
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(dir);
}

static void setup(void)
{
    if (dir[0])
        return;
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/ckpt-fuzz-cli-XXXXXX", base ? base : "/tmp");
    if (!mkdtemp(dir) || chdir(dir) != 0) {
        perror("fuzz_cli: temporary folder");
        abort();
    }
    atexit(cleanup);
}

/* The folder as the input should find it: exactly the fixed files, unchanged. */
static void reset_files(void)
{
    DIR *d = opendir(".");
    if (!d)
        abort();
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") &&
            unlinkat(dirfd(d), e->d_name, 0) != 0)
            unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
    closedir(d);
    for (size_t k = 0; k < sizeof cli_files / sizeof cli_files[0]; k++) {
        FILE *f = fopen(cli_files[k].name, "wb");
        if (!f || fwrite(cli_files[k].data, 1, cli_files[k].size, f) != cli_files[k].size ||
            fclose(f) != 0) {
            perror("fuzz_cli: writing the fixed files");
            abort();
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char buf[4096];
    if (size >= sizeof buf)
        return 0;
    setup();
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *argv[FUZZ_MAX_ARGS + 2];
    int argc = 0;
    argv[argc++] = "ckpt";
    for (size_t pos = 0; pos <= size && argc <= FUZZ_MAX_ARGS; pos += strlen(buf + pos) + 1) {
        char *a = buf + pos;
        if (strchr(a, '/') || strncmp(a, "..", 2) == 0)
            return 0;
        argv[argc++] = a;
    }
    argv[argc] = NULL;
    reset_files();
    fflush(stdout);
    int rc = ckpt_cli_main(argc, argv);
    if (rc < 0 || rc > 2)
        fuzz_fail("fuzz_cli", "exit status outside 0..2", argv[1]);
    return 0;
}
