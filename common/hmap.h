/*
 * hmap: a string-keyed hash map of borrowed values (open addressing, linear probing, FNV-1a).
 * Keys are copied; values are the caller's. Deletion is not needed by its users and is not
 * supported.
 */
#ifndef EXAQ_HMAP_H
#define EXAQ_HMAP_H

#include <stddef.h>

struct hmap {
    char **keys;
    void **vals;
    size_t cap; /* power of two, or 0 */
    size_t n;
};

void hmap_init(struct hmap *m);
void hmap_release(struct hmap *m); /* frees keys, not values */
void *hmap_get(const struct hmap *m, const char *key);
/* Inserts or replaces; returns the previous value or NULL. */
void *hmap_put(struct hmap *m, const char *key, void *val);
/* Iteration: for (size_t i = 0; i < m->cap; i++) if (m->keys[i]) ... */

#endif
