/*
 * scheme.c - naming schemes: other spellings of a family's keys (family.h's ckpt__naming).
 *
 * locate.c hands every candidate dict to ckpt__scheme_apply. When one naming of some family
 * renames more than half of its keys, and no two keys then collide, the candidate is fitted
 * under the renamed keys: a new dict, in the file's order, with the same values and no
 * _metadata (what the printed Python builds: a plain dict comprehension). The file's own keys
 * come back into the report's key map through ckpt__scheme_finish, and the printed lines
 * apply the naming's own Python twin (ckpt__scheme_python).
 */
#include "family.h"
#include "sd_int.h"

#define SCHEME_MAX_KEY 512  /* bytes of a renamed key; a longer one is not of the scheme */

static const ckpt__family *const families[] = {
#define CKPT__SCHEME_FAMILY(name) &ckpt__family_##name,
    CKPT__FAMILIES(CKPT__SCHEME_FAMILY)
#undef CKPT__SCHEME_FAMILY
};

/* Keys of d (all str) that nm renames. */
static size_t renamed_keys(const ckpt__naming *nm, const ckpt_value *d)
{
    char buf[SCHEME_MAX_KEY];
    size_t hits = 0;
    for (size_t i = 0; i < d->u.dict.len; i++)
        hits += nm->rename(d->u.dict.keys[i]->u.str.data, buf, sizeof buf);
    return hits;
}

int ckpt__scheme_apply(ckpt__arena *ar, ckpt__cand *k, ckpt_error *err)
{
    const ckpt_value *d = k->pub.dict;
    size_t n = d->u.dict.len, best_hits = 0;
    const ckpt__naming *best = NULL;
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++)
        for (size_t j = 0; j < families[f]->n_namings; j++) {
            size_t hits = renamed_keys(&families[f]->namings[j], d);
            if (2 * hits > n && hits > best_hits) {
                best = &families[f]->namings[j];
                best_hits = hits;
            }
        }
    if (!best)
        return CKPT_OK;
    ckpt_value *nd = ckpt__value_new(ar, CKPT_T_DICT);
    const char **file_keys = ckpt__arena_alloc(ar, n * sizeof *file_keys);
    if (!nd || !file_keys)
        return ckpt__arena_error(ar, err);
    char buf[SCHEME_MAX_KEY];
    for (size_t i = 0; i < n; i++) {
        ckpt_value *key = d->u.dict.keys[i];
        file_keys[i] = key->u.str.data;
        if (best->rename(key->u.str.data, buf, sizeof buf) &&
            !(key = ckpt__value_str(ar, CKPT_T_STR, buf, strlen(buf))))
            return ckpt__arena_error(ar, err);
        int rc = ckpt__dict_set(ar, nd, key, d->u.dict.vals[i], err);
        if (rc)
            return rc;
    }
    if (nd->u.dict.len != n) /* two keys became one: not this scheme's file */
        return CKPT_OK;
    k->pub.dict = nd;
    k->naming = best;
    k->file_keys = file_keys;
    return CKPT_OK;
}

int ckpt__scheme_finish(ckpt__arena *ar, ckpt_sd_report *r, const ckpt__cand *k,
                        ckpt_error *err)
{
    if (!k->naming)
        return CKPT_OK;
    const ckpt_value *d = k->pub.dict;
    ckpt__strmap m;
    if (!ckpt__strmap_init(ar, &m, d->u.dict.len))
        return ckpt__arena_error(ar, err);
    for (size_t i = 0; i < d->u.dict.len; i++)
        ckpt__strmap_add(&m, d->u.dict.keys[i]->u.str.data, i);
    /* key_map() made both arrays in the report's arena for us to fill: writable */
    ckpt_sd_key_pair *map = (ckpt_sd_key_pair *)r->key_map;
    ckpt_sd_left_out *out = (ckpt_sd_left_out *)r->left_out;
    for (size_t i = 0; i < r->n_key_map; i++)
        map[i].file_key = k->file_keys[ckpt__strmap_get(&m, map[i].file_key)];
    for (size_t i = 0; i < r->n_left_out; i++)
        out[i].file_key = k->file_keys[ckpt__strmap_get(&m, out[i].file_key)];
    r->naming = k->naming->name;
    return CKPT_OK;
}

void ckpt__scheme_python(ckpt__strbuf *b, const ckpt__cand *k)
{
    if (!k->naming)
        return;
    ckpt__sb_add(b, k->naming->python);
    ckpt__sb_add(b, "sd = {torchvision_key(k) or k: v for k, v in sd.items()}\n");
}

const char *ckpt__scheme_what(const ckpt__cand *k)
{
    return k->naming ? k->naming->what : NULL;
}
