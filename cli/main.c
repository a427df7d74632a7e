/*
 * main.c - `ckpt`: the table of subcommands (from commands.h) and dispatch, `ckpt help`,
 * `ckpt --version`; the exit status checks that stdout was really written (git's run_builtin).
 */
#include "cli.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define CLI__ENTRY(name, usage, summary) {#name, cmd_##name, usage, summary, cmd_##name##_help},
static const cli_command commands[] = {CKPT_CLI_COMMANDS(CLI__ENTRY)};
#undef CLI__ENTRY

#define N_COMMANDS (sizeof commands / sizeof commands[0])

static const cli_command *find_command(const char *name)
{
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    }
    return NULL;
}

static void print_overview(FILE *to)
{
    fputs("usage: ckpt [--version] [--help] COMMAND [ARGS]\n\n"
          "Read PyTorch checkpoints (.pt, .pth, .bin, .ckpt) without running them.\n\n"
          "commands:\n",
          to);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(to, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fputs("\nRun 'ckpt help COMMAND' for a command's options and examples.\n\n", to);
    fputs(cli_exit_status_text, to);
}

/* The one statement of what the exit status means (docs/CLI.md "Exit status" is the same
 * table, and test_readme.py checks that they agree); every --help points here. */
const char cli_exit_status_text[] =
    "Exit status:\n"
    "  0  success\n"
    "  1  a finding: scan found an unknown or dangerous global; check: the strict load would\n"
    "     fail; diff: the files differ; extract, run: refused because the strict load would\n"
    "     fail, nothing written or run; run --repeat: outputs differed between runs\n"
    "  2  an error: the file is unreadable or invalid, the command line is wrong, stdout could\n"
    "     not be written; check, extract, run: no architecture matches and no --against;\n"
    "     run: an image could not be read (the others are still classified and printed).\n"
    "     stdout is then empty (run: but for the images read) and stderr holds one line\n"
    "     'ckpt: error: FILE: what is wrong'\n";

const char cmd_help_help[] = "Examples:\n"
                             "  ckpt help\n"
                             "  ckpt help inspect\n";

int cmd_help(int argc, char **argv, const cli_command *self)
{
    const char *pos[1];
    int npos;
    int rc = cli_parse_args(self, argc, argv, (const cli_opt[]){{0}}, pos, 0, 1, &npos);
    if (rc >= 0)
        return rc;
    if (npos == 0) {
        print_overview(stdout);
        return CLI_EXIT_OK;
    }
    const cli_command *c = find_command(pos[0]);
    if (!c)
        return cli_usage_error(self, "'%s' is not a ckpt command", pos[0]);
    cli_print_help(c, stdout);
    return CLI_EXIT_OK;
}

/* The command's status, unless stdout could not be written: then 2 (a full disk must not
 * look like success). */
static int finish(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "ckpt: error: cannot write to standard output: %s\n", strerror(errno));
        return CLI_EXIT_ERROR;
    }
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        print_overview(stderr);
        return CLI_EXIT_ERROR;
    }
    const char *name = argv[1];
    if (strcmp(name, "--version") == 0 || strcmp(name, "-V") == 0) {
        printf("ckpt %s\n", CKPT_VERSION_STRING);
        return finish(CLI_EXIT_OK);
    }
    if (strcmp(name, "--help") == 0 || strcmp(name, "-h") == 0) {
        print_overview(stdout);
        return finish(CLI_EXIT_OK);
    }
    if (name[0] == '-') {
        fprintf(stderr, "ckpt: error: unknown option '%s'\n"
                        "usage: ckpt [--version] [--help] COMMAND [ARGS]\n", name);
        return CLI_EXIT_ERROR;
    }
    const cli_command *c = find_command(name);
    if (!c) {
        fprintf(stderr, "ckpt: error: '%s' is not a ckpt command; see 'ckpt help'\n", name);
        return CLI_EXIT_ERROR;
    }
    return finish(c->fn(argc - 1, argv + 1, c));
}
