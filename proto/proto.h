/*
 * proto: the exaq wire protocol (newline-delimited JSON over a Unix stream socket).
 *
 * Every message is declared once in proto.def. From that list this header builds the message
 * enum and one plain C struct per message; proto.c builds the field tables, the parser (every
 * field type-checked, unknown fields rejected) and the encoder. cJSON trees never leave
 * proto.c: callers see only these structs and encoded lines.
 *
 * The framer splits a byte stream into lines with a hard maximum length.
 */
#ifndef EXAQ_PROTO_H
#define EXAQ_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/util.h"

/* Bump if anything in proto.def changes. */
#define PROTO_VERSION 2
/* Longest frame accepted (bytes, newline excluded). Replies may be larger: see docs. */
#define PROTO_MAX_LINE  (1u << 20)
#define PROTO_MAX_REPLY (64u << 20)

struct proto_metrics {
    size_t n;
    char **names;
    double *values;
};

struct proto_strs {
    size_t n;
    char **v;
};

#define PROTO_CT_STR     char *
#define PROTO_CT_INT     int64_t
#define PROTO_CT_NUM     double
#define PROTO_CT_BOOL    bool
#define PROTO_CT_JSON    char *
#define PROTO_CT_METRICS struct proto_metrics
#define PROTO_CT_STRS    struct proto_strs

/* One struct per message: struct pm_<name> { <type> field; bool has_field; ... }. */
#define MSG(name, wire, from) struct pm_##name {
#define RPL(name, wire)       struct pm_##name {
#define F(msg, type, field, req)                                                                   \
    PROTO_CT_##type field;                                                                         \
    bool has_##field;
#define END(name)                                                                                  \
    char _unused;                                                                                  \
    }                                                                                              \
    ;
#include "proto/proto.def"
#undef MSG
#undef RPL
#undef F
#undef END

enum proto_type {
#define MSG(name, wire, from) PROTO_T_##name,
#define RPL(name, wire)       PROTO_T_##name,
#define F(msg, type, field, req)
#define END(name)
#include "proto/proto.def"
#undef MSG
#undef RPL
#undef F
#undef END
    PROTO_T__COUNT
};

enum proto_kind {
    PROTO_KIND_MSG,   /* has "op" */
    PROTO_KIND_REPLY, /* has "re" and "ok" */
};

/* Error codes carried in {"ok":false,"err":CODE}; proto_err_name() gives CODE. */
enum proto_err {
    PROTO_E_OK = 0,
    PROTO_E_PARSE = 1,  /* not JSON, not an object, bad field type */
    PROTO_E_VERSION,    /* protocol version mismatch */
    PROTO_E_UNKNOWN_OP, /* unknown op */
    PROTO_E_TOO_LONG,   /* line longer than PROTO_MAX_LINE */
    PROTO_E_INVALID,    /* request understood but its content is invalid (lanes file...) */
    PROTO_E_NOT_FOUND,  /* no such sweep / lane / stage */
    PROTO_E_STATE,      /* not possible in the current state */
    PROTO_E_INTERNAL,   /* daemon-side failure */
    PROTO_E_SHUTDOWN,   /* daemon is shutting down */
    PROTO_E_DENIED,     /* peer not allowed */
    PROTO_E__COUNT
};
const char *proto_err_name(enum proto_err e);

/* A decoded frame. For a reply, ok tells success; on failure err/errmsg are set and the union
 * is unused. All strings are owned by the message; proto_msg_release() frees them. */
struct proto_msg {
    enum proto_type type;
    enum proto_kind kind;
    bool ok;
    char *err;    /* reply error code name, when !ok */
    char *errmsg; /* reply error message, when !ok */
    union {
#define MSG(name, wire, from) struct pm_##name name;
#define RPL(name, wire)       struct pm_##name name;
#define F(msg, type, field, req)
#define END(name)
#include "proto/proto.def"
#undef MSG
#undef RPL
#undef F
#undef END
    } u;
};

/* Zeroes m and sets its type (and kind). */
void proto_msg_init(struct proto_msg *m, enum proto_type type);
void proto_msg_release(struct proto_msg *m);
const char *proto_type_wire(enum proto_type t);

/*
 * Parses one frame (without its newline). expect_kind selects whether "op" (a message) or "re"
 * (a reply) identifies the frame. Returns 0, or a positive enum proto_err with a message in
 * err. On failure *m is released and zeroed.
 */
int proto_parse(const char *line, size_t len, enum proto_kind expect_kind, struct proto_msg *m,
                char *err, size_t errlen);

/* Encodes m as one line including the trailing newline. Returns a new string. Fields whose
 * has_ flag is false are omitted. A JSON field must hold valid JSON text. */
char *proto_encode(const struct proto_msg *m);
/* Encodes an error reply to request wire name `re` (may be NULL when unknown). */
char *proto_encode_error(const char *re, enum proto_err code, const char *msg);

/* Setters that copy (and set has_). */
void proto_set_str(char **field, bool *has, const char *value);
void proto_metrics_add(struct proto_metrics *m, const char *name, double value);
void proto_metrics_release(struct proto_metrics *m);
void proto_strs_add(struct proto_strs *s, const char *v);

/* ---- framing ---- */
struct proto_framer {
    struct buf buf;
    size_t max_line;
    bool discarding; /* inside an over-long line: drop bytes until the next newline */
};
void proto_framer_init(struct proto_framer *f, size_t max_line);
void proto_framer_release(struct proto_framer *f);
/*
 * Feeds bytes. For every complete line, calls on_line(arg, line, len) (line is NUL-terminated,
 * newline stripped, empty lines skipped). For an over-long line calls on_line with line NULL
 * once, then drops its bytes. Stops early and returns the callback's value when it returns
 * non-zero; returns 0 otherwise.
 */
int proto_framer_feed(struct proto_framer *f, const char *data, size_t len,
                      int (*on_line)(void *arg, const char *line, size_t len), void *arg);

/* Writes docs-style listing of every message (for `make lint`): one line per field. */
char *proto_describe(void);

#endif
