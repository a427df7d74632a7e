/*
 * test_arch.c - the ResNet tables against PyTorch.
 *
 * Expected values: key and parameter counts from docs/ARCHITECTURES.md's table (measured with
 * PyTorch), and for every architecture at 1000 and 7 classes the SHA-256 of two listings made by
 * torchvision 0.14.1 / torch 1.13 (Debian), with this snippet:
 *
 *     m = getattr(torchvision.models, name)(num_classes=nc); sd = m.state_dict()
 *     keys = "".join("%s %s %s\n" % (k, str(v.dtype)[6:], ",".join(map(str, v.shape)))
 *                    for k, v in sd.items())
 *     meta = "".join("%s %d\n" % (k, v["version"]) for k, v in sd._metadata.items())
 *     sum(p.numel() for p in m.parameters())
 *
 * so key order, dtypes, shapes and the _metadata module list are checked exactly.
 *
 * The judge (ckpt_sd_judge) is tested here too, on state dicts built by hand: the expected
 * texts are what PyTorch 1.13 printed for the same dicts loaded into
 *
 *     class M(nn.Module):
 *         def __init__(s):
 *             super().__init__(); s.p = nn.Parameter(torch.tensor(1.0)); s.bn = nn.BatchNorm1d(2)
 */
#include "ckpt.h"
#include "check.h"

#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct ref {
    const char *name;
    int64_t num_classes;
    size_t n_keys, n_meta;
    int64_t params;
    const char *keys_sha256;
    const char *meta_sha256;
} ref;

static const ref refs[] = {
    {"resnet18", 1000, 122, 68, 11689512,
     "aa2c95d5d6406d01d874e3891117952c332f9b8866298ccc975cc3595c33fd70",
     "0c3e1025488284b3962f34f3553fe996cbe1349b01280c980e9bc26933db5215"},
    {"resnet34", 1000, 218, 116, 21797672,
     "669a0c3a625a1daca34f3bcd34d8bcea470ea5b5635521665ae3a9b7f05dcb29",
     "155ab125e467ffe63dcd7b534afb17684088a6cfa58c9d20e9369caf2226dc54"},
    {"resnet50", 1000, 320, 151, 25557032,
     "d6418aacff8b01d060bde6e09dd34df47ae65bca442c1b9aea9179709efa4bb0",
     "3e074a63fa866de8bfed4ab15154a8b585fd30cc9e3b1d9d4058f94534ff4997"},
    {"resnet101", 1000, 626, 287, 44549160,
     "cec841f6e5ef9686290315032ebd9682f9e92c4a40cc474c330f4573822d129a",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
    {"resnet152", 1000, 932, 423, 60192808,
     "986c552b1b34525385ef5524abb636b46fba28f08dc3ce459987c87998bbbb3c",
     "441442f796c9db88175e593a59ce4b7adcc19d8f850b9a6defe420f9be7af147"},
    {"resnext50_32x4d", 1000, 320, 151, 25028904,
     "a742f6f2f0e44a5ac9cfced1706ad9599313236502b2270934c7338a7c050354",
     "3e074a63fa866de8bfed4ab15154a8b585fd30cc9e3b1d9d4058f94534ff4997"},
    {"resnext101_32x8d", 1000, 626, 287, 88791336,
     "1c65dd0017390510a3f166cbb221cc0cfce66de35f0a5b0825c84e4273358351",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
    {"resnext101_64x4d", 1000, 626, 287, 83455272,
     "1772d396cbbe9a7c552a4e871f908c4f62f18fba702ca7206fb655ccb476dc16",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
    {"wide_resnet50_2", 1000, 320, 151, 68883240,
     "9e6f07fe7a2c1c8504bd37b4e866f26e9442bd13bd332284b7755d38cd03f1af",
     "3e074a63fa866de8bfed4ab15154a8b585fd30cc9e3b1d9d4058f94534ff4997"},
    {"wide_resnet101_2", 1000, 626, 287, 126886696,
     "e3a87c07a64e39aed5a66a6fbfa9e570975d9241a957bb2008f53914f4ed493e",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
    {"resnet18", 7, 122, 68, 11180103,
     "12139a747ab0408d5448ca0200bbe63b260cc7d29fc692dde900210ea41d43f2",
     "0c3e1025488284b3962f34f3553fe996cbe1349b01280c980e9bc26933db5215"},
    {"resnet34", 7, 218, 116, 21288263,
     "ff935c6d98db184c546964a59f8e0da21c0ca88e594a8348a40b4b4568dee280",
     "155ab125e467ffe63dcd7b534afb17684088a6cfa58c9d20e9369caf2226dc54"},
    {"resnet50", 7, 320, 151, 23522375,
     "e20f25eb88a2cca22307b619687bba82edb1ddf0aa5bdc212936c5efb1c7d7d9",
     "3e074a63fa866de8bfed4ab15154a8b585fd30cc9e3b1d9d4058f94534ff4997"},
    {"resnet101", 7, 626, 287, 42514503,
     "074547692b035ea4961ccc13cac43eb32e4a42438f4ccf2e7dcc61f3512c32ef",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
    {"resnet152", 7, 932, 423, 58158151,
     "38205a758582120084a539851e6164cbbf80b1fe1def0c19af41deb4d07164ec",
     "441442f796c9db88175e593a59ce4b7adcc19d8f850b9a6defe420f9be7af147"},
    {"resnext50_32x4d", 7, 320, 151, 22994247,
     "8a1208ec31019d4821df1fbd0f40f9623eb1af8b23577bd9f1df32f1441da048",
     "3e074a63fa866de8bfed4ab15154a8b585fd30cc9e3b1d9d4058f94534ff4997"},
    {"resnext101_32x8d", 7, 626, 287, 86756679,
     "8334d0c27f87e0020cf7519d5467d9658eb6e2086a50d579c9877a7d1ad09f3d",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
    {"resnext101_64x4d", 7, 626, 287, 81420615,
     "33110d88a837f9534f0bcc35232ac2e8843006fcd51e2aa2382091a501b76b68",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
    {"wide_resnet50_2", 7, 320, 151, 66848583,
     "2627397bcdc3576947836b4f61d60a350b9e178740f5b00914fe2dd1757d2c81",
     "3e074a63fa866de8bfed4ab15154a8b585fd30cc9e3b1d9d4058f94534ff4997"},
    {"wide_resnet101_2", 7, 626, 287, 124852039,
     "bcbea9ef4a7420186549c35cd2a4acdc44ed1f71637e756d66e0de8cc6a301a1",
     "da11e522c92d5435021defb8d92d7434c5be8c29620feda0d7becc00d15d0b7e"},
};

/* docs/ARCHITECTURES.md §1's table (num_classes=1000). */
static const struct {
    const char *name;
    size_t keys;
    int64_t params;
} table[] = {
    {"resnet18", 122, 11689512},          {"resnet34", 218, 21797672},
    {"resnet50", 320, 25557032},          {"resnet101", 626, 44549160},
    {"resnet152", 932, 60192808},         {"resnext50_32x4d", 320, 25028904},
    {"resnext101_32x8d", 626, 88791336},  {"resnext101_64x4d", 626, 83455272},
    {"wide_resnet50_2", 320, 68883240},   {"wide_resnet101_2", 626, 126886696},
};

typedef struct hasher {
    struct sha256_ctx ctx;
} hasher;

static void hash_str(hasher *h, const char *s)
{
    sha256_update(&h->ctx, strlen(s), (const uint8_t *)s);
}

static void hash_hex(hasher *h, char out[65])
{
    uint8_t d[SHA256_DIGEST_SIZE];
    sha256_digest(&h->ctx, sizeof d, d);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

static void keys_sha256(const ckpt_sd_model *m, char out[65])
{
    hasher h;
    sha256_init(&h.ctx);
    for (size_t i = 0; i < m->sd.n_entries; i++) {
        const ckpt_sd_entry *e = &m->sd.entries[i];
        char buf[64];
        hash_str(&h, e->key);
        hash_str(&h, " ");
        hash_str(&h, ckpt_dtype_name(e->dtype));
        hash_str(&h, " ");
        for (int d = 0; d < e->ndim; d++) {
            snprintf(buf, sizeof buf, d ? ",%lld" : "%lld", (long long)e->shape[d]);
            hash_str(&h, buf);
        }
        hash_str(&h, "\n");
    }
    hash_hex(&h, out);
}

static void meta_sha256(const ckpt_sd_model *m, char out[65])
{
    hasher h;
    sha256_init(&h.ctx);
    for (size_t i = 0; i < m->sd.n_meta; i++) {
        char buf[64];
        hash_str(&h, m->sd.meta[i].module);
        snprintf(buf, sizeof buf, " %lld\n", (long long)m->sd.meta[i].version);
        hash_str(&h, buf);
    }
    hash_hex(&h, out);
}

static void test_refs(void)
{
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) {
        const ref *r = &refs[i];
        const ckpt_arch *a = ckpt_arch_by_name(r->name);
        CHECK(a != NULL);
        if (!a)
            continue;
        ckpt_sd_model *m = NULL;
        ckpt_error err = {0};
        CHECK_OK(ckpt_arch_model(a, r->num_classes, &m, &err), err);
        if (!m)
            continue;
        char hex[65];
        CHECK_EQ_INT(m->sd.n_entries, r->n_keys);
        CHECK_EQ_INT(m->sd.n_meta, r->n_meta);
        CHECK_EQ_INT(ckpt_arch_parameters(a, r->num_classes), r->params);
        keys_sha256(m, hex);
        if (strcmp(hex, r->keys_sha256) != 0)
            fprintf(stderr, "%s(num_classes=%lld): key listing differs\n", r->name,
                    (long long)r->num_classes);
        CHECK_EQ_STR(hex, r->keys_sha256);
        meta_sha256(m, hex);
        CHECK_EQ_STR(hex, r->meta_sha256);
        CHECK_EQ_STR(m->class_name, "ResNet");
        CHECK(m->sd.has_metadata);
        CHECK_EQ_INT(m->num_classes, r->num_classes);

        /* parameters counted from the entries: everything but BatchNorm buffers */
        int64_t params = 0;
        size_t covered = 0;
        for (size_t j = 0; j < m->sd.n_entries; j++) {
            const ckpt_sd_entry *e = &m->sd.entries[j];
            const char *dot = strrchr(e->key, '.');
            const char *leaf = dot ? dot + 1 : e->key;
            if (!strcmp(leaf, "running_mean") || !strcmp(leaf, "running_var") ||
                !strcmp(leaf, "num_batches_tracked"))
                continue;
            int64_t n = 1;
            for (int d = 0; d < e->ndim; d++)
                n *= e->shape[d];
            params += n;
        }
        CHECK_EQ_INT(params, r->params);
        /* module structure: entries partitioned by modules in order; BN flags */
        for (size_t j = 0; j < m->n_modules; j++) {
            const ckpt_sd_module *mod = &m->modules[j];
            CHECK_EQ_INT(mod->first, covered);
            covered += mod->count;
            if (mod->batchnorm) {
                CHECK_EQ_INT(mod->count, 5);
                CHECK_EQ_INT(mod->version, 2);
            } else {
                CHECK_EQ_INT(mod->version, 1);
            }
            if (j > 0) {
                const char *pp = m->modules[mod->parent].path;
                CHECK(mod->parent < j);
                CHECK(strncmp(mod->path, pp, strlen(pp)) == 0);
            }
        }
        CHECK_EQ_INT(covered, m->sd.n_entries);
        ckpt_sd_model_free(m);
    }
}

static int no_weight(void *ud, const char *key, const int64_t *shape, int ndim, float *out,
                     ckpt_error *err)
{
    (void)ud, (void)key, (void)shape, (void)ndim, (void)out;
    err->status = CKPT_EMISMATCH;
    return CKPT_EMISMATCH;
}

static void test_table(void)
{
    /* the ten ResNets first, then the other families */
    CHECK(ckpt_arch_count() >= 10);
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        const ckpt_arch *a = ckpt_arch_by_name(table[i].name);
        CHECK(a != NULL);
        if (!a)
            continue;
        CHECK_EQ_STR(ckpt_arch_name(ckpt_arch_at(i)), table[i].name);
        CHECK(ckpt_arch_at(i) == a);
        CHECK_EQ_STR(ckpt_arch_family(a), "resnet");
        CHECK(ckpt_arch_runnable(a));
        CHECK_EQ_STR(ckpt_arch_head(a, false), "fc.weight");
        CHECK_EQ_STR(ckpt_arch_head(a, true), "fc.bias");
        CHECK_EQ_INT(ckpt_arch_parameters(a, 1000), table[i].params);
        ckpt_sd_model *m = NULL;
        ckpt_error err = {0};
        CHECK_OK(ckpt_arch_model(a, 1000, &m, &err), err);
        if (m)
            CHECK_EQ_INT(m->sd.n_entries, table[i].keys);
        ckpt_sd_model_free(m);
    }
    CHECK(ckpt_arch_at(ckpt_arch_count()) == NULL);
    CHECK(ckpt_arch_name(NULL) == NULL);
    CHECK(ckpt_arch_by_name("resnet51") == NULL);
    CHECK(ckpt_arch_by_name(NULL) == NULL);

    /* docs/ARCHITECTURES.md §1: resnet50 = 161 parameters + 106 running statistics
     * + 53 num_batches_tracked; fc.weight is [num_classes, 512 * expansion]. */
    const ckpt_arch *r50 = ckpt_arch_by_name("resnet50");
    ckpt_sd_model *m = NULL;
    ckpt_error err = {0};
    CHECK_OK(ckpt_arch_model(r50, 51, &m, &err), err);
    if (m) {
        size_t nbt = 0, stats = 0;
        for (size_t j = 0; j < m->sd.n_entries; j++) {
            const char *k = m->sd.entries[j].key;
            size_t n = strlen(k);
            if (n > 19 && !strcmp(k + n - 19, "num_batches_tracked")) {
                nbt++;
                CHECK_EQ_INT(m->sd.entries[j].ndim, 0);
                CHECK_EQ_INT(m->sd.entries[j].dtype, CKPT_DT_INT64);
            } else if (strstr(k, "running_")) {
                stats++;
            }
        }
        CHECK_EQ_INT(nbt, 53);
        CHECK_EQ_INT(stats, 106);
        const ckpt_sd_entry *fcw = &m->sd.entries[m->sd.n_entries - 2];
        CHECK_EQ_STR(fcw->key, "fc.weight");
        CHECK_EQ_INT(fcw->shape[0], 51);
        CHECK_EQ_INT(fcw->shape[1], 2048);
        /* the class count read back from the head, with and without a weight of that width */
        CHECK_EQ_INT(ckpt_arch_classes(r50, &m->sd), 51);
        CHECK_EQ_INT(ckpt_arch_classes(ckpt_arch_by_name("resnet18"), &m->sd), 51);
        ckpt_sd_model_free(m);
    }
    /* block widths, read from the layout (conv2 of a stage's first block is [w, w/groups,
     * 3, 3]) */
    static const struct {
        const char *arch, *key;
        int64_t out, in;
    } widths[] = {
        {"resnext101_32x8d", "layer1.0.conv2.weight", 256, 8},
        {"resnext101_64x4d", "layer1.0.conv2.weight", 256, 4},
        {"wide_resnet50_2", "layer4.0.conv2.weight", 1024, 1024},
    };
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++) {
        CHECK_OK(ckpt_arch_model(ckpt_arch_by_name(widths[i].arch), 10, &m, &err), err);
        const ckpt_sd_entry *e = NULL;
        for (size_t j = 0; m && j < m->sd.n_entries && !e; j++)
            if (!strcmp(m->sd.entries[j].key, widths[i].key))
                e = &m->sd.entries[j];
        CHECK(e != NULL);
        if (e) {
            CHECK_EQ_INT(e->shape[0], widths[i].out);
            CHECK_EQ_INT(e->shape[1], widths[i].in);
        }
        ckpt_sd_model_free(m);
    }
    CHECK_EQ_INT(ckpt_arch_features(ckpt_arch_by_name("resnet18")), 512);
    CHECK_EQ_INT(ckpt_arch_features(ckpt_arch_by_name("resnet50")), 2048);

    /* the check-only VGG family: torchvision's published size of vgg11 (num_params in its
     * weights' meta), the head where torchvision has it, no network builder */
    const ckpt_arch *vgg = ckpt_arch_by_name("vgg11");
    CHECK(vgg != NULL);
    if (vgg) {
        CHECK_EQ_STR(ckpt_arch_family(vgg), "vgg");
        CHECK(!ckpt_arch_runnable(vgg));
        CHECK_EQ_INT(ckpt_arch_parameters(vgg, 1000), 132863336);
        CHECK_EQ_STR(ckpt_arch_head(vgg, false), "classifier.6.weight");
        CHECK_OK(ckpt_arch_model(vgg, 7, &m, &err), err);
        if (m) {
            CHECK_EQ_STR(m->class_name, "VGG");
            CHECK_EQ_INT(m->sd.n_entries, 22);
            CHECK_EQ_INT(ckpt_arch_classes(vgg, &m->sd), 7);
        }
        ckpt_sd_model_free(m);
        ckpt_model *run = NULL;
        CHECK_EQ_INT(ckpt_model_new(vgg, 7, no_weight, NULL, NULL, &run, &err),
                     CKPT_EUNSUPPORTED);
        CHECK(run == NULL);
    }

    CHECK_EQ_INT(ckpt_arch_model(r50, 0, &m, &err), CKPT_EINVAL);
    CHECK(m == NULL);
    CHECK_EQ_INT(ckpt_arch_model(NULL, 10, &m, &err), CKPT_EINVAL);
}


/* ---- the judge, on hand-made state dicts ---------------------------------------------------- */

static const int64_t dim2[] = {2}, dim3[] = {3}, dim0[] = {0}, dim11[] = {1, 1};

static ckpt_sd_entry tensor_entry(const char *key, ckpt_dtype dt, int ndim, const int64_t *shape)
{
    ckpt_sd_entry e = {key, NULL, true, dt, ndim, shape};
    return e;
}

/* M's state_dict(): p, then bn's weight, bias, running_mean, running_var, num_batches_tracked. */
static ckpt_sd_entry m_entries[6];
static ckpt_sd_meta m_meta[2] = {{"", 1}, {"bn", 2}};

static ckpt_sd_model *model_m(void)
{
    m_entries[0] = tensor_entry("p", CKPT_DT_FLOAT32, 0, NULL);
    m_entries[1] = tensor_entry("bn.weight", CKPT_DT_FLOAT32, 1, dim2);
    m_entries[2] = tensor_entry("bn.bias", CKPT_DT_FLOAT32, 1, dim2);
    m_entries[3] = tensor_entry("bn.running_mean", CKPT_DT_FLOAT32, 1, dim2);
    m_entries[4] = tensor_entry("bn.running_var", CKPT_DT_FLOAT32, 1, dim2);
    m_entries[5] = tensor_entry("bn.num_batches_tracked", CKPT_DT_INT64, 0, NULL);
    ckpt_sd tmpl = {m_entries, 6, true, m_meta, 2, "", NULL};
    ckpt_sd_model *m = NULL;
    ckpt_error err = {0};
    CHECK_OK(ckpt_sd_model_from_template(&tmpl, "M", &m, &err), err);
    return m;
}

static ckpt_sd_verdict *judge(const ckpt_sd_model *m, ckpt_sd_entry *e, size_t n, bool has_meta,
                              ckpt_sd_meta *meta, size_t n_meta)
{
    ckpt_sd sd = {e, n, has_meta, meta, n_meta, "", NULL};
    ckpt_sd_verdict *v = NULL;
    ckpt_error err = {0};
    CHECK_OK(ckpt_sd_judge(m, &sd, &v, &err), err);
    return v;
}

static void test_judge(void)
{
    ckpt_sd_model *m = model_m();
    if (!m)
        return;
    CHECK_EQ_INT(m->n_modules, 2);
    CHECK(m->modules[1].batchnorm);
    CHECK_EQ_INT(m->modules[1].count, 5);

    /* the dict itself: loads */
    ckpt_sd_entry e[12];
    memcpy(e, m_entries, sizeof m_entries);
    ckpt_sd_verdict *v = judge(m, e, 6, true, m_meta, 2);
    CHECK(v && v->ok && v->message == NULL && v->n_loaded == 6);
    ckpt_sd_verdict_free(v);

    /* no num_batches_tracked: fine without _metadata, or with one that lacks 'bn' or says
     * version 1; missing with version 2 */
    v = judge(m, e, 5, false, NULL, 0);
    CHECK(v && v->ok && v->n_filled == 1);
    ckpt_sd_verdict_free(v);
    ckpt_sd_meta root_only[1] = {{"", 1}}, bn1[1] = {{"bn", 1}};
    v = judge(m, e, 5, true, root_only, 1);
    CHECK(v && v->ok);
    ckpt_sd_verdict_free(v);
    v = judge(m, e, 5, true, bn1, 1);
    CHECK(v && v->ok);
    ckpt_sd_verdict_free(v);
    v = judge(m, e, 5, true, m_meta, 2);
    if (v) {
        CHECK(!v->ok);
        CHECK_EQ_STR(v->message, "Error(s) in loading state_dict for M:\n\tMissing key(s) in "
                                 "state_dict: \"bn.num_batches_tracked\". ");
        CHECK_EQ_INT(v->n_missing, 1);
    }
    ckpt_sd_verdict_free(v);

    /* 1-D for the 0-dim p: any non-empty length loads (PyTorch takes input[0]); empty raises
     * IndexError; 2-D is a size mismatch */
    e[0] = tensor_entry("p", CKPT_DT_FLOAT32, 1, dim2);
    v = judge(m, e, 6, true, m_meta, 2);
    CHECK(v && v->ok);
    ckpt_sd_verdict_free(v);
    e[0] = tensor_entry("p", CKPT_DT_FLOAT32, 1, dim0);
    v = judge(m, e, 6, true, m_meta, 2);
    if (v) {
        CHECK(!v->ok);
        CHECK_EQ_STR(v->message,
                     "IndexError: index 0 is out of bounds for dimension 0 with size 0");
    }
    ckpt_sd_verdict_free(v);
    e[0] = tensor_entry("p", CKPT_DT_FLOAT32, 2, dim11);
    v = judge(m, e, 6, true, m_meta, 2);
    if (v)
        CHECK_EQ_STR(v->message, "Error(s) in loading state_dict for M:\n\tsize mismatch for p: "
                                 "copying a param with shape torch.Size([1, 1]) from checkpoint, "
                                 "the shape in current model is torch.Size([]).");
    ckpt_sd_verdict_free(v);

    /* everything at once, in PyTorch's order:
     *   sd2 = OrderedDict(sd); sd2['p'] = 3; sd2['bn.weight'] = torch.zeros(3); sd2['zz'] = 1
     *   sd2['bn'] = 1; sd2['bn.weight.x'] = 1; sd2['bn._extra_state'] = 1; del sd2['bn.bias'] */
    ckpt_value one = {.type = CKPT_T_INT, .u.i = 1}, three = {.type = CKPT_T_INT, .u.i = 3};
    size_t n = 0;
    e[n] = tensor_entry("p", CKPT_DT_FLOAT32, 0, NULL);
    e[n].is_tensor = false;
    e[n++].value = &three;
    e[n++] = tensor_entry("bn.weight", CKPT_DT_FLOAT32, 1, dim3);
    e[n++] = m_entries[3];
    e[n++] = m_entries[4];
    e[n++] = m_entries[5];
    const char *extra[] = {"zz", "bn", "bn.weight.x", "bn._extra_state"};
    for (int i = 0; i < 4; i++) {
        e[n] = tensor_entry(extra[i], CKPT_DT_FLOAT32, 0, NULL);
        e[n].is_tensor = false;
        e[n++].value = &one;
    }
    v = judge(m, e, n, false, NULL, 0);
    if (v) {
        CHECK_EQ_STR(v->message,
                     "Error(s) in loading state_dict for M:\n\tMissing key(s) in state_dict: "
                     "\"bn.bias\". \n\tUnexpected key(s) in state_dict: \"zz\", "
                     "\"bn._extra_state\". \n\tWhile copying the parameter named \"p\", "
                     "expected torch.Tensor or Tensor-like object from checkpoint but received "
                     "<class 'int'>\n\tsize mismatch for bn.weight: copying a param with shape "
                     "torch.Size([3]) from checkpoint, the shape in current model is "
                     "torch.Size([2]).");
        CHECK_EQ_INT(v->n_missing, 1);
        CHECK_EQ_INT(v->n_unexpected, 2);
        CHECK_EQ_INT(v->n_mismatch, 1);
        CHECK_EQ_INT(v->n_errors, 2);
        CHECK_EQ_INT(v->n_loaded, 3);
    }
    ckpt_sd_verdict_free(v);
    ckpt_sd_model_free(m);

    /* an architecture model judged against its own state dict: loads, nothing filled */
    ckpt_sd_model *r = NULL;
    ckpt_error err = {0};
    CHECK_OK(ckpt_arch_model(ckpt_arch_by_name("resnet18"), 10, &r, &err), err);
    if (r) {
        v = judge(r, r->sd.entries, r->sd.n_entries, true, r->sd.meta, r->sd.n_meta);
        CHECK(v && v->ok && v->n_loaded == 122 && v->n_filled == 0);
        ckpt_sd_verdict_free(v);
        ckpt_sd_model_free(r);
    }
}

/* ---- the words only when asked for ------------------------------------------------------- */

/* A safetensors file of one float32 tensor "head.w" [2] that no architecture knows. */
static const char *write_unknown(char *path, size_t size)
{
    static const char hdr[] = "{\"head.w\":{\"dtype\":\"F32\",\"shape\":[2],"
                              "\"data_offsets\":[0,8]}}";
    size_t n = sizeof hdr - 1, padded = (n + 7) / 8 * 8;
    snprintf(path, size, "/tmp/ckpt-test-arch-%ld.safetensors", (long)getpid());
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return NULL;
    unsigned char len[8] = {0};
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(padded >> (8 * i));
    float data[2] = {1.0f, 2.0f};
    fwrite(len, 1, 8, fp);
    fwrite(hdr, 1, n, fp);
    for (size_t i = n; i < padded; i++)
        fputc(' ', fp);
    fwrite(data, sizeof data[0], 2, fp);
    return fclose(fp) == 0 ? path : NULL;
}

static void test_explain(void)
{
    char path[256];
    CHECK(write_unknown(path, sizeof path) != NULL);
    ckpt_file *f = NULL;
    ckpt_error err = {0};
    CHECK_OK(ckpt_open(path, NULL, &f, &err), err);
    if (!f)
        return;
    /* without explain: the verdict's inputs, no words */
    ckpt_sd_report *r = NULL;
    ckpt_sd_check_options o = {0};
    CHECK_OK(ckpt_sd_check(f, &o, &r, &err), err);
    if (r) {
        CHECK(r->model == NULL && r->verdict == NULL);
        /* what the file is does not wait for the words */
        CHECK(r->verdict_kind && !strcmp(r->verdict_kind, "unknown"));
        CHECK(!r->backbone && !r->sequential_head && r->n_renames == 0);
        CHECK_EQ_INT(r->n_warnings, 0);
        CHECK(r->python == NULL);
        /* added later, once; library words name no command-line option */
        CHECK_OK(ckpt_sd_explain(r, &err), err);
        CHECK(r->python != NULL);
        size_t n = r->n_warnings;
        bool unknown = false;
        for (size_t i = 0; i < n; i++) {
            unknown |= !strcmp(r->warnings[i].code, "arch_unknown");
            CHECK(strstr(r->warnings[i].message, "--") == NULL);
        }
        CHECK(unknown);
        CHECK_OK(ckpt_sd_explain(r, &err), err);
        CHECK_EQ_INT(r->n_warnings, n);
        ckpt_sd_report_free(r);
    }
    /* with explain: the same words at once */
    o.explain = true;
    CHECK_OK(ckpt_sd_check(f, &o, &r, &err), err);
    if (r) {
        CHECK(r->python != NULL && r->n_warnings > 0);
        ckpt_sd_report_free(r);
    }
    ckpt_close(f);
    unlink(path);
}

int main(void)
{
    test_table();
    test_refs();
    test_judge();
    test_explain();
    return check_exit();
}
