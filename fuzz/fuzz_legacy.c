/*
 * fuzz_legacy.c - libFuzzer harness for the legacy format (src/file.c: open_legacy, the
 * persistent ids, view storages and the storage resolver).
 *
 * The first byte chooses how the rest is used. Even: the rest is a whole file. Odd: the rest
 * follows the three small pickles torch.save(_use_new_zipfile_serialization=False) starts
 * with (magic number, protocol 1001, sys_info), so that mutations land in the object pickle,
 * the storage key list and the blobs rather than in the magic number. An opened file has every
 * storage resolved (both ends touched, so ASan checks the extent) and every tensor of the
 * object graph read; a contiguous tensor's bytes in place must equal its copy.
 *
 *   CC=clang cmake -S . -B build-fuzz -DCKPT_FUZZ=ON -DBUILD_TESTING=OFF
 *   cmake --build build-fuzz --target fuzz_legacy && fuzz/run.sh build-fuzz legacy 600
 */
#define _GNU_SOURCE
#include "fuzz.h"
#include "internal.h"

#define FUZZ_MAX_DEPTH 64
#define FUZZ_MAX_ALLOC (256u << 20)
#define FUZZ_MAX_READ (1u << 20) /* tensors larger than this (broadcast views) are not copied */
#define FUZZ_WALK_NODES 20000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2), then 1001, then torch's sys_info. */
static const uint8_t prefix[] = {
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e, 0x80,
    0x02, 0x4d, 0xe9, 0x03, 0x2e, 0x80, 0x02, 0x7d, 0x71, 0x00, 0x28, 0x58, 0x10, 0x00, 0x00, 0x00,
    0x70, 0x72, 0x6f, 0x74, 0x6f, 0x63, 0x6f, 0x6c, 0x5f, 0x76, 0x65, 0x72, 0x73, 0x69, 0x6f, 0x6e,
    0x71, 0x01, 0x4d, 0xe9, 0x03, 0x58, 0x0d, 0x00, 0x00, 0x00, 0x6c, 0x69, 0x74, 0x74, 0x6c, 0x65,
    0x5f, 0x65, 0x6e, 0x64, 0x69, 0x61, 0x6e, 0x71, 0x02, 0x88, 0x58, 0x0a, 0x00, 0x00, 0x00, 0x74,
    0x79, 0x70, 0x65, 0x5f, 0x73, 0x69, 0x7a, 0x65, 0x73, 0x71, 0x03, 0x7d, 0x71, 0x04, 0x28, 0x58,
    0x05, 0x00, 0x00, 0x00, 0x73, 0x68, 0x6f, 0x72, 0x74, 0x71, 0x05, 0x4b, 0x02, 0x58, 0x03, 0x00,
    0x00, 0x00, 0x69, 0x6e, 0x74, 0x71, 0x06, 0x4b, 0x04, 0x58, 0x04, 0x00, 0x00, 0x00, 0x6c, 0x6f,
    0x6e, 0x67, 0x71, 0x07, 0x4b, 0x04, 0x75, 0x75, 0x2e,
};

static uint8_t copy_a[FUZZ_MAX_READ];

static void check_tensor(const ckpt_tensor *t)
{
    uint64_t nbytes = ckpt_tensor_nbytes(t);
    if (nbytes > FUZZ_MAX_READ)
        return;
    ckpt_error err = {0};
    if (ckpt_tensor_read(t, t->dtype, copy_a, sizeof copy_a, &err) != CKPT_OK) {
        if (!err.message[0])
            fuzz_fail("fuzz_legacy", "tensor read failed without a message", NULL);
        return;
    }
    const void *p;
    if (ckpt_tensor_is_contiguous(t) && ckpt_tensor_data(t, &p, &err) == CKPT_OK && nbytes &&
        memcmp(p, copy_a, (size_t)nbytes) != 0)
        fuzz_fail("fuzz_legacy", "a contiguous tensor's bytes differ from its copy", NULL);
}

/* Every tensor reachable from root, with an explicit stack and a node budget (a memo can make
 * the graph cyclic or exponentially shared). */
static void walk(const ckpt_value *root)
{
    static const ckpt_value *stack[FUZZ_WALK_NODES];
    size_t n = 0, visited = 0;
    stack[n++] = root;
    while (n && visited++ < FUZZ_WALK_NODES) {
        const ckpt_value *v = stack[--n];
        if (!v)
            fuzz_fail("fuzz_legacy", "NULL value in the graph", NULL);
#define PUSH(x)                                                                                \
    do {                                                                                       \
        if (n < FUZZ_WALK_NODES)                                                               \
            stack[n++] = (x);                                                                  \
    } while (0)
        switch (v->type) {
        case CKPT_T_TENSOR:
            check_tensor(v->u.tensor);
            break;
        case CKPT_T_TUPLE:
        case CKPT_T_LIST:
        case CKPT_T_SET:
            for (size_t k = 0; k < v->u.seq.len; k++)
                PUSH(v->u.seq.items[k]);
            break;
        case CKPT_T_DICT:
            for (size_t k = 0; k < v->u.dict.len; k++)
                PUSH(v->u.dict.vals[k]);
            break;
        case CKPT_T_OBJECT:
            if (v->u.obj.args)
                PUSH(v->u.obj.args);
            if (v->u.obj.state)
                PUSH(v->u.obj.state);
            if (v->u.obj.items)
                PUSH(v->u.obj.items);
            if (v->u.obj.list)
                PUSH(v->u.obj.list);
            break;
        default:
            break;
        }
#undef PUSH
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *path;
    if (data[0] & 1) {
        static uint8_t buf[sizeof prefix + (1u << 20)];
        if (size - 1 > sizeof buf - (sizeof prefix))
            return 0;
        memcpy(buf, prefix, sizeof prefix);
        memcpy(buf + sizeof prefix, data + 1, size - 1);
        path = fuzz_memfile(0, buf, sizeof prefix + size - 1);
    } else {
        path = fuzz_memfile(0, data + 1, size - 1);
    }
    ckpt_options opt = {.max_depth = FUZZ_MAX_DEPTH, .max_alloc = FUZZ_MAX_ALLOC};
    ckpt_error err = {0};
    ckpt_file *f;
    if (ckpt_open(path, &opt, &f, &err) != CKPT_OK) {
        if (f || !err.message[0])
            fuzz_fail("fuzz_legacy", "refused without a message, or left a file", NULL);
        return 0;
    }
    for (size_t k = 0; k < f->n_storages; k++) {
        ckpt_storage *s = f->storages[k];
        const uint8_t *p;
        if (ckpt__storage_bytes(s, &p, &err) != CKPT_OK)
            continue;
        if (s->nbytes) {
            volatile uint8_t sink = p[0] ^ p[s->nbytes - 1];
            (void)sink;
        }
    }
    walk(ckpt_root(f));
    ckpt_close(f);
    return 0;
}
