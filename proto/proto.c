/*
 * proto: parser, encoder and framer for the messages of proto.def.
 *
 * This is the only module that touches cJSON trees of protocol frames. Input comes from
 * untrusted peers: every failure is an error code and message, never an assert.
 */
#include "proto/proto.h"
#include "proto/vocab.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

enum proto_ftype {
    PROTO_F_STR,
    PROTO_F_INT,
    PROTO_F_NUM,
    PROTO_F_BOOL,
    PROTO_F_JSON,
    PROTO_F_METRICS,
    PROTO_F_STRS,
};

#define REQ 1
#define OPT 0

struct proto_field {
    const char *name;
    enum proto_ftype type;
    int required;
    size_t off;     /* offset of the value inside struct proto_msg */
    size_t has_off; /* offset of the has_ flag */
};

/* Field tables, one per message. */
#define MSG(name, wire, from) static const struct proto_field fields_##name[] = {
#define RPL(name, wire)       static const struct proto_field fields_##name[] = {
#define F(msg, type, field, req)                                                                   \
    { #field, PROTO_F_##type, req, offsetof(struct proto_msg, u.msg.field),                        \
      offsetof(struct proto_msg, u.msg.has_##field) },
#define END(name)                                                                                  \
    {                                                                                              \
        NULL, 0, 0, 0, 0                                                                           \
    }                                                                                              \
    }                                                                                              \
    ;
#include "proto/proto.def"
#undef MSG
#undef RPL
#undef F
#undef END

struct proto_def {
    const char *wire;
    enum proto_kind kind;
    const char *from;
    const struct proto_field *fields;
};

static const struct proto_def defs[PROTO_T__COUNT] = {
#define MSG(name, wire, from) [PROTO_T_##name] = { wire, PROTO_KIND_MSG, #from, fields_##name },
#define RPL(name, wire)       [PROTO_T_##name] = { wire, PROTO_KIND_REPLY, "DAEMON", fields_##name },
#define F(msg, type, field, req)
#define END(name)
#include "proto/proto.def"
#undef MSG
#undef RPL
#undef F
#undef END
};

static const char *err_names[PROTO_E__COUNT] = {
    [PROTO_E_OK] = "ok",
    [PROTO_E_PARSE] = "parse",
    [PROTO_E_VERSION] = "version",
    [PROTO_E_UNKNOWN_OP] = "unknown_op",
    [PROTO_E_TOO_LONG] = "too_long",
    [PROTO_E_INVALID] = "invalid",
    [PROTO_E_NOT_FOUND] = "not_found",
    [PROTO_E_STATE] = "state",
    [PROTO_E_INTERNAL] = "internal",
    [PROTO_E_SHUTDOWN] = "shutdown",
    [PROTO_E_DENIED] = "denied",
};

const char *proto_err_name(enum proto_err e)
{
    if ((int)e < 0 || e >= PROTO_E__COUNT)
        return "internal";
    return err_names[e];
}

const char *proto_type_wire(enum proto_type t)
{
    return defs[t].wire;
}

void proto_msg_init(struct proto_msg *m, enum proto_type type)
{
    memset(m, 0, sizeof(*m));
    m->type = type;
    m->kind = defs[type].kind;
    m->ok = true;
}

#define FIELD_PTR(m, f) ((char *)(m) + (f)->off)
#define HAS_PTR(m, f)   ((bool *)((char *)(m) + (f)->has_off))

void proto_metrics_release(struct proto_metrics *mt)
{
    for (size_t i = 0; i < mt->n; i++)
        free(mt->names[i]);
    free(mt->names);
    free(mt->values);
    memset(mt, 0, sizeof(*mt));
}

static void strs_release(struct proto_strs *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof(*s));
}

void proto_msg_release(struct proto_msg *m)
{
    if ((int)m->type >= 0 && m->type < PROTO_T__COUNT) {
        for (const struct proto_field *f = defs[m->type].fields; f->name; f++) {
            char *p = FIELD_PTR(m, f);
            switch (f->type) {
            case PROTO_F_STR:
            case PROTO_F_JSON:
                free(*(char **)p);
                break;
            case PROTO_F_METRICS:
                proto_metrics_release((struct proto_metrics *)p);
                break;
            case PROTO_F_STRS:
                strs_release((struct proto_strs *)p);
                break;
            default:
                break;
            }
        }
    }
    free(m->err);
    free(m->errmsg);
    enum proto_type t = m->type;
    memset(m, 0, sizeof(*m));
    m->type = t;
}

void proto_set_str(char **field, bool *has, const char *value)
{
    free(*field);
    *field = value ? xstrdup(value) : NULL;
    *has = value != NULL;
}

void proto_metrics_add(struct proto_metrics *mt, const char *name, double value)
{
    for (size_t i = 0; i < mt->n; i++) {
        if (!strcmp(mt->names[i], name)) {
            mt->values[i] = value;
            return;
        }
    }
    mt->names = xrealloc(mt->names, (mt->n + 1) * sizeof(char *));
    mt->values = xrealloc(mt->values, (mt->n + 1) * sizeof(double));
    mt->names[mt->n] = xstrdup(name);
    mt->values[mt->n] = value;
    mt->n++;
}

void proto_strs_add(struct proto_strs *s, const char *v)
{
    s->v = xrealloc(s->v, (s->n + 1) * sizeof(char *));
    s->v[s->n++] = xstrdup(v);
}

/* ===== parsing ===== */

static int perr(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int perr(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    if (err && errlen) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int find_type(const char *wire, enum proto_kind kind)
{
    for (int t = 0; t < PROTO_T__COUNT; t++)
        if (defs[t].kind == kind && !strcmp(defs[t].wire, wire))
            return t;
    return -1;
}

static const struct proto_field *find_field(enum proto_type t, const char *name)
{
    for (const struct proto_field *f = defs[t].fields; f->name; f++)
        if (!strcmp(f->name, name))
            return f;
    return NULL;
}

/* Integers must be whole numbers within the exactly representable range of a double. */
static int json_int(const cJSON *j, int64_t *out)
{
    double d;
    if (!cJSON_IsNumber(j))
        return -1;
    d = j->valuedouble;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0)
        return -1;
    *out = (int64_t)d;
    return 0;
}

static int parse_field(struct proto_msg *m, const struct proto_field *f, const cJSON *j, char *err,
                       size_t errlen)
{
    char *p = FIELD_PTR(m, f);
    switch (f->type) {
    case PROTO_F_STR:
        if (!cJSON_IsString(j))
            return perr(err, errlen, PROTO_E_PARSE, "field '%s' must be a string", f->name);
        *(char **)p = xstrdup(j->valuestring);
        break;
    case PROTO_F_INT:
        if (json_int(j, (int64_t *)p) < 0)
            return perr(err, errlen, PROTO_E_PARSE, "field '%s' must be an integer", f->name);
        break;
    case PROTO_F_NUM:
        if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble))
            return perr(err, errlen, PROTO_E_PARSE, "field '%s' must be a number", f->name);
        *(double *)p = j->valuedouble;
        break;
    case PROTO_F_BOOL:
        if (!cJSON_IsBool(j))
            return perr(err, errlen, PROTO_E_PARSE, "field '%s' must be true or false", f->name);
        *(bool *)p = cJSON_IsTrue(j);
        break;
    case PROTO_F_JSON: {
        char *s = cJSON_PrintUnformatted(j);
        if (!s)
            return perr(err, errlen, PROTO_E_INTERNAL, "cannot print field '%s'", f->name);
        *(char **)p = xstrdup(s);
        cJSON_free(s);
        break;
    }
    case PROTO_F_METRICS: {
        struct proto_metrics *mt = (struct proto_metrics *)p;
        const cJSON *c;
        if (!cJSON_IsObject(j))
            return perr(err, errlen, PROTO_E_PARSE, "field '%s' must be an object of numbers",
                        f->name);
        cJSON_ArrayForEach(c, j)
        {
            if (!c->string || !cJSON_IsNumber(c) || !isfinite(c->valuedouble))
                return perr(err, errlen, PROTO_E_PARSE,
                            "field '%s': metric '%s' must be a finite number", f->name,
                            c->string ? c->string : "?");
            if (!vocab_metric_name_ok(c->string))
                return perr(err, errlen, PROTO_E_PARSE, "field '%s': " VOCAB_METRIC_NAME_RULE,
                            f->name);
            proto_metrics_add(mt, c->string, c->valuedouble);
        }
        break;
    }
    case PROTO_F_STRS: {
        struct proto_strs *s = (struct proto_strs *)p;
        const cJSON *c;
        if (!cJSON_IsArray(j))
            return perr(err, errlen, PROTO_E_PARSE, "field '%s' must be a list of strings",
                        f->name);
        cJSON_ArrayForEach(c, j)
        {
            if (!cJSON_IsString(c))
                return perr(err, errlen, PROTO_E_PARSE, "field '%s' must be a list of strings",
                            f->name);
            proto_strs_add(s, c->valuestring);
        }
        break;
    }
    }
    *HAS_PTR(m, f) = true;
    return 0;
}

int proto_parse(const char *line, size_t len, enum proto_kind expect_kind, struct proto_msg *m,
                char *err, size_t errlen)
{
    cJSON *root = NULL;
    const cJSON *c;
    const char *disc = expect_kind == PROTO_KIND_MSG ? "op" : "re";
    int rc = 0, t;
    int64_t v;
    bool ok = true;

    memset(m, 0, sizeof(*m));
    m->type = PROTO_T__COUNT;
    if (len > PROTO_MAX_REPLY)
        return perr(err, errlen, PROTO_E_TOO_LONG, "frame of %zu bytes is too long", len);
    root = cJSON_ParseWithLength(line, len);
    if (!root)
        return perr(err, errlen, PROTO_E_PARSE, "frame is not valid JSON");
    if (!cJSON_IsObject(root)) {
        rc = perr(err, errlen, PROTO_E_PARSE, "frame must be a JSON object");
        goto out;
    }
    c = cJSON_GetObjectItemCaseSensitive(root, "v");
    if (!c || json_int(c, &v) < 0) {
        rc = perr(err, errlen, PROTO_E_PARSE, "frame lacks the protocol version \"v\"");
        goto out;
    }
    if (v != PROTO_VERSION) {
        rc = perr(err, errlen, PROTO_E_VERSION, "protocol version %lld, this side speaks %d",
                  (long long)v, PROTO_VERSION);
        goto out;
    }
    c = cJSON_GetObjectItemCaseSensitive(root, disc);
    if (!c || !cJSON_IsString(c)) {
        rc = perr(err, errlen, PROTO_E_PARSE, "frame lacks a string \"%s\"", disc);
        goto out;
    }
    t = find_type(c->valuestring, expect_kind);
    if (t < 0) {
        rc = perr(err, errlen, PROTO_E_UNKNOWN_OP, "unknown %s '%.64s'", disc, c->valuestring);
        goto out;
    }
    proto_msg_init(m, (enum proto_type)t);
    if (expect_kind == PROTO_KIND_REPLY) {
        c = cJSON_GetObjectItemCaseSensitive(root, "ok");
        if (!c || !cJSON_IsBool(c)) {
            rc = perr(err, errlen, PROTO_E_PARSE, "reply lacks a boolean \"ok\"");
            goto out;
        }
        ok = cJSON_IsTrue(c);
        m->ok = ok;
    }
    cJSON_ArrayForEach(c, root)
    {
        const struct proto_field *f;
        if (!c->string) {
            rc = perr(err, errlen, PROTO_E_PARSE, "member without a name");
            goto out;
        }
        if (!strcmp(c->string, "v") || !strcmp(c->string, disc) ||
            (expect_kind == PROTO_KIND_REPLY && !strcmp(c->string, "ok")))
            continue;
        if (!ok) {
            if (!strcmp(c->string, "err") && cJSON_IsString(c) && !m->err) {
                m->err = xstrdup(c->valuestring);
                continue;
            }
            if (!strcmp(c->string, "msg") && cJSON_IsString(c) && !m->errmsg) {
                m->errmsg = xstrdup(c->valuestring);
                continue;
            }
            rc = perr(err, errlen, PROTO_E_PARSE, "unexpected field '%.64s' in an error reply",
                      c->string);
            goto out;
        }
        f = find_field(m->type, c->string);
        if (!f) {
            rc = perr(err, errlen, PROTO_E_PARSE, "unknown field '%.64s' in '%s'", c->string,
                      defs[m->type].wire);
            goto out;
        }
        if (*HAS_PTR(m, f)) {
            rc = perr(err, errlen, PROTO_E_PARSE, "duplicate field '%s'", f->name);
            goto out;
        }
        rc = parse_field(m, f, c, err, errlen);
        if (rc)
            goto out;
    }
    if (!ok) {
        if (!m->err || !m->errmsg)
            rc = perr(err, errlen, PROTO_E_PARSE, "error reply lacks \"err\" or \"msg\"");
        goto out;
    }
    for (const struct proto_field *f = defs[m->type].fields; f->name; f++) {
        if (f->required && !*HAS_PTR(m, f)) {
            rc = perr(err, errlen, PROTO_E_PARSE, "'%s' lacks required field '%s'",
                      defs[m->type].wire, f->name);
            goto out;
        }
    }
out:
    cJSON_Delete(root);
    if (rc && m->type != PROTO_T__COUNT) {
        proto_msg_release(m);
        memset(m, 0, sizeof(*m));
    }
    if (rc)
        m->type = PROTO_T__COUNT;
    return rc;
}

/* ===== encoding ===== */

static cJSON *encode_field(const struct proto_msg *m, const struct proto_field *f)
{
    const char *p = (const char *)m + f->off;
    switch (f->type) {
    case PROTO_F_STR:
        return cJSON_CreateString(*(char *const *)p ? *(char *const *)p : "");
    case PROTO_F_INT:
        return cJSON_CreateNumber((double)*(const int64_t *)p);
    case PROTO_F_NUM:
        return cJSON_CreateNumber(*(const double *)p);
    case PROTO_F_BOOL:
        return cJSON_CreateBool(*(const bool *)p);
    case PROTO_F_JSON: {
        const char *s = *(char *const *)p;
        cJSON *j = s ? cJSON_Parse(s) : NULL;
        return j ? j : cJSON_CreateNull();
    }
    case PROTO_F_METRICS: {
        const struct proto_metrics *mt = (const struct proto_metrics *)p;
        cJSON *o = cJSON_CreateObject();
        for (size_t i = 0; i < mt->n; i++)
            cJSON_AddNumberToObject(o, mt->names[i], mt->values[i]);
        return o;
    }
    case PROTO_F_STRS: {
        const struct proto_strs *s = (const struct proto_strs *)p;
        cJSON *a = cJSON_CreateArray();
        for (size_t i = 0; i < s->n; i++)
            cJSON_AddItemToArray(a, cJSON_CreateString(s->v[i]));
        return a;
    }
    }
    return cJSON_CreateNull();
}

static char *print_line(cJSON *root)
{
    char *s = cJSON_PrintUnformatted(root);
    char *line;
    if (!s)
        EXAQ_BUG("cannot print a protocol frame");
    line = xasprintf("%s\n", s);
    cJSON_free(s);
    cJSON_Delete(root);
    return line;
}

char *proto_encode(const struct proto_msg *m)
{
    cJSON *root = cJSON_CreateObject();
    const struct proto_def *d = &defs[m->type];
    cJSON_AddNumberToObject(root, "v", PROTO_VERSION);
    if (d->kind == PROTO_KIND_MSG) {
        cJSON_AddStringToObject(root, "op", d->wire);
    } else {
        cJSON_AddStringToObject(root, "re", d->wire);
        cJSON_AddBoolToObject(root, "ok", true);
    }
    for (const struct proto_field *f = d->fields; f->name; f++)
        if (*(const bool *)((const char *)m + f->has_off))
            cJSON_AddItemToObject(root, f->name, encode_field(m, f));
    return print_line(root);
}

char *proto_encode_error(const char *re, enum proto_err code, const char *msg)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddNumberToObject(root, "v", PROTO_VERSION);
    cJSON_AddStringToObject(root, "re", re ? re : "");
    cJSON_AddBoolToObject(root, "ok", false);
    cJSON_AddStringToObject(root, "err", proto_err_name(code));
    cJSON_AddStringToObject(root, "msg", msg ? msg : "");
    return print_line(root);
}

/* ===== framing ===== */

void proto_framer_init(struct proto_framer *f, size_t max_line)
{
    buf_init(&f->buf);
    f->max_line = max_line;
    f->discarding = false;
}

void proto_framer_release(struct proto_framer *f)
{
    buf_release(&f->buf);
}

int proto_framer_feed(struct proto_framer *f, const char *data, size_t len,
                      int (*on_line)(void *arg, const char *line, size_t len), void *arg)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t chunk = nl ? (size_t)(nl - data) : len;
        int rc;

        if (f->discarding) {
            if (nl)
                f->discarding = false;
        } else if (f->buf.len + chunk > f->max_line) {
            buf_release(&f->buf);
            f->discarding = !nl;
            rc = on_line(arg, NULL, 0);
            if (rc)
                return rc;
        } else {
            buf_append(&f->buf, data, chunk);
            if (nl) {
                size_t n = f->buf.len;
                /* Take the line out first: the callback may feed or release the framer. */
                char *line = buf_steal(&f->buf);
                rc = 0;
                if (n > 0 && !(n == 1 && line[0] == '\r'))
                    rc = on_line(arg, line, n);
                free(line);
                if (rc)
                    return rc;
            }
        }
        if (!nl)
            break;
        len -= chunk + 1;
        data = nl + 1;
    }
    return 0;
}

/* ===== description (docs/protocol.md is checked against this) ===== */

char *proto_describe(void)
{
    static const char *tnames[] = { "string", "integer", "number", "bool",
                                    "json",   "metrics", "strings" };
    struct buf b;
    buf_init(&b);
    for (int t = 0; t < PROTO_T__COUNT; t++) {
        const struct proto_def *d = &defs[t];
        buf_printf(&b, "%s %s (from %s)\n", d->kind == PROTO_KIND_MSG ? "op" : "re", d->wire,
                   d->from);
        for (const struct proto_field *f = d->fields; f->name; f++)
            buf_printf(&b, "  %s %s %s\n", f->name, tnames[f->type],
                       f->required ? "required" : "optional");
    }
    return buf_steal(&b);
}
