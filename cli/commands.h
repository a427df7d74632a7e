/*
 * commands.h - the subcommands of `ckpt`, one line each (git's cmd_struct list).
 *
 * X(name, usage, summary). Adding a command is one line here plus cli/cmd_NAME.c defining
 *     int cmd_NAME(int argc, char **argv, const cli_command *self);   (argv[0] is "NAME")
 *     const char cmd_NAME_help[];   (what `ckpt NAME --help` prints after the usage line)
 * The order here is the order of `ckpt help`.
 */
#ifndef CKPT_CLI_COMMANDS_H
#define CKPT_CLI_COMMANDS_H

#define CKPT_CLI_COMMANDS(X)                                                                   \
    X(inspect, "ckpt inspect FILE... [--depth N] [--json] [--max-output BYTES]",                  \
      "show what a checkpoint holds, as a tree")                                               \
    X(tensors, "ckpt tensors FILE... [--json] [--sha256] [--max-output BYTES] "                  \
               "[--max-expanded BYTES]",                                                       \
      "list every tensor with its path, dtype and shape")                                      \
    X(scan, "ckpt scan FILE... [-r] [--json|--jsonl] [--shard I/N]",                          \
      "list the globals a file names and whether loading it in Python would run code")         \
    X(check, "ckpt check FILE... [--arch NAME] [--num-classes N] [--against TEMPLATE] "         \
             "[--key PATH] [--strip-prefix P] [--json]",                                       \
      "say whether model.load_state_dict(sd, strict=True) would succeed, and why not")         \
    X(diff, "ckpt diff A B [--key-a PATH] [--key-b PATH] [--atol X] [--json] "               \
            "[--max-expanded BYTES]",                                                          \
      "compare two checkpoints' state dicts tensor by tensor")                                 \
    X(extract, "ckpt extract FILE -o OUT [--dtype D] [--format F] [--key PATH] "            \
               "[--strip-prefix P] [--arch NAME] [--against T] [--no-check] [--force] [--json] " \
               "[--max-expanded BYTES]",                                                     \
      "write the weights alone as a clean .pth or .safetensors file")                          \
    X(run, "ckpt run FILE IMAGE|DIR... [--arch NAME] [--topk K] [--labels FILE] [--json] "       \
           "[--logits] [--features] [--resize S] [--crop C] [--threads N] [--repeat N]",     \
      "classify images with the checkpoint's ResNet, as torchvision would")                   \
    X(help, "ckpt help [COMMAND]", "show the commands, or one command's help")

#endif
