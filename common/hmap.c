/*
 * hmap: see hmap.h.
 */
#include "common/hmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

void hmap_init(struct hmap *m)
{
    memset(m, 0, sizeof(*m));
}

void hmap_release(struct hmap *m)
{
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    hmap_init(m);
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

static size_t slot_of(const struct hmap *m, const char *key)
{
    size_t i = (size_t)fnv1a(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key))
        i = (i + 1) & (m->cap - 1);
    return i;
}

void *hmap_get(const struct hmap *m, const char *key)
{
    size_t i;
    if (!m->cap)
        return NULL;
    i = slot_of(m, key);
    return m->keys[i] ? m->vals[i] : NULL;
}

static void grow(struct hmap *m)
{
    struct hmap bigger;
    bigger.cap = m->cap ? m->cap * 2 : 16;
    bigger.n = 0;
    bigger.keys = xcalloc(bigger.cap, sizeof(char *));
    bigger.vals = xcalloc(bigger.cap, sizeof(void *));
    for (size_t i = 0; i < m->cap; i++) {
        if (m->keys[i]) {
            size_t j = slot_of(&bigger, m->keys[i]);
            bigger.keys[j] = m->keys[i];
            bigger.vals[j] = m->vals[i];
            bigger.n++;
        }
    }
    free(m->keys);
    free(m->vals);
    *m = bigger;
}

void *hmap_put(struct hmap *m, const char *key, void *val)
{
    size_t i;
    void *old;
    if ((m->n + 1) * 4 > m->cap * 3)
        grow(m);
    i = slot_of(m, key);
    if (m->keys[i]) {
        old = m->vals[i];
        m->vals[i] = val;
        return old;
    }
    m->keys[i] = xstrdup(key);
    m->vals[i] = val;
    m->n++;
    return NULL;
}
