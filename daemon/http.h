/*
 * http: the read-only web dashboard (`exaqd --http ADDR:PORT`, docs/http.md).
 *
 * libmicrohttpd serves it from its own threads (one per connection) with its own read-only
 * SQLite connection to exaq.db (WAL, so readers never block the writer). The loop thread never
 * waits on it: the only loop-side entry point is http_tick(), which builds a small document of
 * the running attempts' progress and hands it over with pthread_mutex_trylock (a busy lock
 * just means the next tick tries again). Nothing here changes the store or the model.
 */
#ifndef EXAQ_HTTP_H
#define EXAQ_HTTP_H

#include <stddef.h>

struct daemon;
struct http;

struct http_opts {
    const char *addr;       /* "ADDR:PORT", "PORT" or "[V6]:PORT"; 127.0.0.1 when no ADDR */
    const char *token_file; /* NULL: no token (refused for a non-loopback address) */
};

/* Checks addr and reads the token file (before daemonizing, so errors reach the terminal).
 * Returns 0, or -1 with a message in err. */
int http_check_opts(const struct http_opts *o, char *err, size_t errlen);

/* Starts the server for home/exaq.db. Returns 0 and sets *out, or -1 with a message. */
int http_start(const struct http_opts *o, const char *home, struct http **out, char *err,
               size_t errlen);
/* Loop thread: publishes the running attempts' progress (never blocks). NULL is fine. */
void http_tick(struct http *h, struct daemon *d);
/* The port actually bound (useful with port 0). */
int http_port(const struct http *h);
/* Ends every stream, stops the threads and closes the database. NULL is fine. */
void http_stop(struct http *h);

#endif
