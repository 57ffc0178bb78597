/*
 * libFuzzer target: the protocol framer, JSON parser and every message parser, as exaqd and
 * exaq-worker see untrusted input. Each input is fed to a framer in random-size chunks; every
 * complete line is parsed both as a message and as a reply, and what parses is re-encoded and
 * must parse again to the same type.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int on_line(void *arg, const char *line, size_t len)
{
    struct proto_msg m, m2;
    char err[256];
    (void)arg;
    if (!line)
        return 0;
    for (int k = 0; k < 2; k++) {
        enum proto_kind kind = k ? PROTO_KIND_REPLY : PROTO_KIND_MSG;
        if (proto_parse(line, len, kind, &m, err, sizeof(err)) == 0) {
            if (m.ok) {
                char *enc = proto_encode(&m);
                if (proto_parse(enc, strlen(enc) - 1, kind, &m2, err, sizeof(err)) != 0 ||
                    m2.type != m.type)
                    abort();
                proto_msg_release(&m2);
                free(enc);
            }
            proto_msg_release(&m);
        }
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct proto_framer f;
    size_t off = 0, step = size ? (size_t)data[0] % 17 + 1 : 1;
    if (size > 1 << 16)
        return 0;
    proto_framer_init(&f, 4096);
    while (off < size) {
        size_t n = size - off < step ? size - off : step;
        proto_framer_feed(&f, (const char *)data + off, n, on_line, NULL);
        off += n;
    }
    proto_framer_feed(&f, "\n", 1, on_line, NULL);
    proto_framer_release(&f);
    return 0;
}
