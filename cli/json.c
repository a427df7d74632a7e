/*
 * json.c - parsed values as the JSON nodes of `ckpt inspect --json` (schema in docs/CLI.md).
 *
 * Every node is an object with "type" (ckpt_type_name) and its content. Strings that are not
 * valid UTF-8 (a pickle may hold lone surrogates) get U+FFFD for each bad byte, since JSON text
 * must be Unicode. A container that holds itself is written once and then as {"type": "cycle"}.
 */
#include "cli.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CLI_JSON_HEX_BYTES 64 /* bytes values: the first 64 bytes in hex, and the length */
/* Bytes charged to the output limit per node, besides its strings: what "type", the braces
 * and jansson's own record of the node take. */
#define CLI_JSON_NODE_BYTES 64

json_t *cli_json_str(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    cli_sb sb = {0};
    for (size_t i = 0; i < n;) {
        size_t len = cli_utf8_len((const unsigned char *)s + i, n - i);
        if (len) {
            sb_putn(&sb, s + i, len);
            i += len;
        } else {
            sb_puts(&sb, "\xef\xbf\xbd"); /* U+FFFD */
            i++;
        }
    }
    j = json_stringn(sb_str(&sb), sb.len);
    sb_free(&sb);
    return j;
}

static json_t *json_cstr(const char *s) { return cli_json_str(s, strlen(s)); }

json_t *cli_json_dims(const int64_t *d, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(d[i]));
    return a;
}

void cli_json_tensor_fields(json_t *o, const ckpt_tensor *t)
{
    const char *dt = ckpt_dtype_name(t->dtype);
    json_object_set_new(o, "dtype", json_string(dt ? dt : "unknown"));
    json_object_set_new(o, "shape", cli_json_dims(t->shape, t->ndim));
    json_object_set_new(o, "stride", cli_json_dims(t->stride, t->ndim));
    json_object_set_new(o, "storage_offset", json_integer(t->offset));
    const char *key = t->storage ? ckpt_storage_key(t->storage) : NULL;
    json_object_set_new(o, "storage", key ? json_cstr(key) : json_null());
    json_object_set_new(o, "nbytes", json_integer((json_int_t)ckpt_tensor_nbytes(t)));
    json_object_set_new(o, "requires_grad", json_boolean(t->requires_grad));
    json_object_set_new(o, "parameter", json_boolean(t->is_parameter));
}

static json_t *json_float(double x)
{
    if (isnan(x))
        return json_string("nan");
    if (isinf(x))
        return json_string(x < 0 ? "-inf" : "inf");
    return json_real(x);
}

static json_t *node(const char *type)
{
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    return o;
}

static json_t *value_at(cli_walk *w, const ckpt_value *v, const char *comp, size_t n);

/* o[key] = the node of v, met under path component comp. */
static bool set_child(cli_walk *w, json_t *o, const char *key, const ckpt_value *v,
                      const char *comp, size_t n)
{
    if (!v) {
        json_object_set_new(o, key, json_null());
        return true;
    }
    json_t *c = value_at(w, v, comp, n);
    if (!c)
        return false;
    json_object_set_new(o, key, c);
    return true;
}

static bool seq_items(cli_walk *w, json_t *o, const ckpt_value *v)
{
    json_t *a = json_array();
    json_object_set_new(o, "items", a);
    for (size_t i = 0; i < v->u.seq.len; i++) {
        char comp[24];
        int n = snprintf(comp, sizeof comp, "%zu", i);
        json_t *c = value_at(w, v->u.seq.items[i], comp, (size_t)n);
        if (!c)
            return false;
        json_array_append_new(a, c);
    }
    return true;
}

static bool dict_items(cli_walk *w, json_t *o, const ckpt_value *v)
{
    json_t *a = json_array();
    json_object_set_new(o, "items", a);
    for (size_t i = 0; i < v->u.dict.len; i++) {
        const ckpt_value *k = v->u.dict.keys[i];
        json_t *item = json_object();
        json_array_append_new(a, item);
        cli_sb comp = {0};
        cli_key_str(&comp, k);
        bool ok = cli_walk_charge(w, comp.len + CLI_JSON_NODE_BYTES);
        if (ok && k->type == CKPT_T_STR)
            json_object_set_new(item, "key", cli_json_str(k->u.str.data, k->u.str.len));
        else if (ok)
            ok = set_child(w, item, "key_node", k, "__key__", 7);
        ok = ok && set_child(w, item, "value", v->u.dict.vals[i], sb_str(&comp), comp.len);
        sb_free(&comp);
        if (!ok)
            return false;
    }
    if (v->u.dict.attrs && !set_child(w, o, "attrs", v->u.dict.attrs, "__attrs__", 9))
        return false;
    return true;
}

static json_t *container(cli_walk *w, const ckpt_value *v, const char *comp, size_t n)
{
    cli_enter e = cli_walk_enter_at(w, v, comp, n);
    if (e == CLI_CYCLE)
        return node("cycle");
    if (e == CLI_LIMIT)
        return NULL;
    if (e == CLI_SHARED) {
        json_t *ref = cli_walk_ref_json(w, v), *o = json_object();
        size_t bytes = 0;
        for (size_t i = 0; i < json_array_size(ref); i++)
            bytes += json_string_length(json_array_get(ref, i)) + 3;
        json_object_set_new(o, "ref", ref);
        if (!cli_walk_charge(w, bytes)) {
            json_decref(o);
            return NULL;
        }
        return o;
    }
    json_t *o = node(ckpt_type_name(v->type));
    if (v->class_name)
        json_object_set_new(o, "class", json_cstr(v->class_name));
    bool ok = true;
    switch (v->type) {
    case CKPT_T_SET:
        json_object_set_new(o, "frozen", json_boolean(v->flags & CKPT_VF_FROZEN));
        ok = seq_items(w, o, v);
        break;
    case CKPT_T_TUPLE:
    case CKPT_T_LIST: ok = seq_items(w, o, v); break;
    case CKPT_T_DICT: ok = dict_items(w, o, v); break;
    case CKPT_T_OBJECT: {
        cli_sb scratch = {0};
        const char *cls = cli_class_of(v, &scratch);
        if (!v->class_name)
            json_object_set_new(o, "class", cls ? json_cstr(cls) : json_null());
        sb_free(&scratch);
        if (!cls && !set_child(w, o, "callable", v->u.obj.callable, "__callable__", 12))
            ok = false;
        json_object_set_new(o, "newobj", json_boolean(v->u.obj.newobj));
        ok = ok && set_child(w, o, "args", v->u.obj.args, "__args__", 8) &&
             set_child(w, o, "state", v->u.obj.state, "__state__", 9) &&
             set_child(w, o, "items", v->u.obj.items, "__items__", 9) &&
             set_child(w, o, "list", v->u.obj.list, "__list__", 8);
        break;
    }
    default: break;
    }
    cli_walk_leave(w);
    if (!ok) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *cli_json_value(cli_walk *w, const ckpt_value *v)
{
    return value_at(w, v, "", 0);
}

static json_t *value_at(cli_walk *w, const ckpt_value *v, const char *comp, size_t comp_len)
{
    if (cli_is_container(v))
        return container(w, v, comp, comp_len);
    size_t bytes = CLI_JSON_NODE_BYTES;
    if (v->type == CKPT_T_STR)
        bytes += v->u.str.len; /* most strings need no escapes */
    else if (v->type == CKPT_T_BIGINT)
        bytes += v->u.str.len * 3; /* decimal digits */
    if (!cli_walk_charge(w, bytes))
        return NULL;
    json_t *o = node(ckpt_type_name(v->type));
    if (v->class_name)
        json_object_set_new(o, "class", json_cstr(v->class_name));
    switch (v->type) {
    case CKPT_T_NONE: break;
    case CKPT_T_BOOL: json_object_set_new(o, "value", json_boolean(v->u.b)); break;
    case CKPT_T_INT: json_object_set_new(o, "value", json_integer(v->u.i)); break;
    case CKPT_T_BIGINT: {
        cli_sb sb = {0};
        cli_fmt_bigint(&sb, (const unsigned char *)v->u.str.data, v->u.str.len);
        json_object_set_new(o, "value", json_string(sb_str(&sb)));
        sb_free(&sb);
        break;
    }
    case CKPT_T_FLOAT: json_object_set_new(o, "value", json_float(v->u.f)); break;
    case CKPT_T_COMPLEX:
        json_object_set_new(o, "real", json_float(v->u.c.re));
        json_object_set_new(o, "imag", json_float(v->u.c.im));
        break;
    case CKPT_T_STR:
        json_object_set_new(o, "value", cli_json_str(v->u.str.data, v->u.str.len));
        break;
    case CKPT_T_BYTES: {
        static const char hexd[] = "0123456789abcdef";
        size_t n = v->u.str.len < CLI_JSON_HEX_BYTES ? v->u.str.len : CLI_JSON_HEX_BYTES;
        char hex[2 * CLI_JSON_HEX_BYTES + 1];
        for (size_t i = 0; i < n; i++) {
            unsigned char b = (unsigned char)v->u.str.data[i];
            hex[2 * i] = hexd[b >> 4];
            hex[2 * i + 1] = hexd[b & 15];
        }
        hex[2 * n] = '\0';
        json_object_set_new(o, "len", json_integer((json_int_t)v->u.str.len));
        json_object_set_new(o, "hex", json_string(hex));
        break;
    }
    case CKPT_T_GLOBAL: {
        const char *m = v->u.global.module ? v->u.global.module : "";
        const char *n = v->u.global.name ? v->u.global.name : "";
        json_object_set_new(o, "module", json_cstr(m));
        json_object_set_new(o, "name", json_cstr(n));
        break;
    }
    case CKPT_T_TENSOR: cli_json_tensor_fields(o, v->u.tensor); break;
    case CKPT_T_STORAGE: {
        const ckpt_storage *s = v->u.storage;
        const char *dt = ckpt_dtype_name(ckpt_storage_dtype(s));
        const char *key = ckpt_storage_key(s);
        json_object_set_new(o, "dtype", json_string(dt ? dt : "unknown"));
        json_object_set_new(o, "storage", key ? json_cstr(key) : json_null());
        json_object_set_new(o, "nbytes", json_integer((json_int_t)ckpt_storage_nbytes(s)));
        break;
    }
    default: break;
    }
    return o;
}

/* jansson writes reals with "%.17g" (0.1 as 0.10000000000000001); this writer gives them
 * Python's shortest repr, which reads back as the same double, and leaves strings to jansson. */
static bool dump(cli_sb *sb, json_t *j)
{
    switch (json_typeof(j)) {
    case JSON_OBJECT: {
        const char *key;
        json_t *val;
        bool first = true;
        sb_putc(sb, '{');
        json_object_foreach(j, key, val) {
            if (!first)
                sb_putc(sb, ',');
            first = false;
            json_t *k = json_string(key);
            bool ok = k && dump(sb, k);
            json_decref(k);
            if (!ok)
                return false;
            sb_putc(sb, ':');
            if (!dump(sb, val))
                return false;
        }
        sb_putc(sb, '}');
        return true;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *val;
        sb_putc(sb, '[');
        json_array_foreach(j, i, val) {
            if (i)
                sb_putc(sb, ',');
            if (!dump(sb, val))
                return false;
        }
        sb_putc(sb, ']');
        return true;
    }
    case JSON_STRING: {
        char *s = json_dumps(j, JSON_ENCODE_ANY);
        if (!s)
            return false;
        sb_puts(sb, s);
        free(s);
        return true;
    }
    case JSON_INTEGER: sb_printf(sb, "%" JSON_INTEGER_FORMAT, json_integer_value(j)); return true;
    case JSON_REAL: cli_fmt_float(sb, json_real_value(j)); return true;
    case JSON_TRUE: sb_puts(sb, "true"); return true;
    case JSON_FALSE: sb_puts(sb, "false"); return true;
    case JSON_NULL: sb_puts(sb, "null"); return true;
    }
    return false;
}

bool cli_json_dump(cli_sb *sb, json_t *doc)
{
    return dump(sb, doc);
}

json_t *cli_json_cstr(const char *s)
{
    return s ? cli_json_str(s, strlen(s)) : json_null();
}

json_t *cli_json_strs(const char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, cli_json_cstr(v[i]));
    return a;
}
