/*
 * pkg: submission packages (libzip) and the model checks that come before them.
 *
 * Everything here blocks (directory walks, safetensors headers, copies, zips): call it from a
 * uv_queue_work body, never from the loop thread. It touches no daemon state: the caller
 * passes plain strings and gets a JSON document back.
 *
 * Layout written under out_dir (normally <home>/sweeps/<id>/submissions):
 *   topN/model/<file>...        hard links to the lane's model files (copies across devices)
 *   submit_topN.zip             entries model/<file>, stored (not deflated)
 * Both are built under temporary names (topN.tmp-<pid>-<n>, submit_topN.zip.tmp-<pid>-<n>) and
 * renamed into place only when complete and within the limits. Slots above the number packaged and
 * leftovers of earlier runs are removed, so no stale fourth zip survives a repackage.
 */
#ifndef EXAQ_PKG_H
#define EXAQ_PKG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A lane that may be packaged, in rank order. Strings are borrowed. */
struct pkg_cand {
    const char *lane;
    const char *model_dir;
};

struct pkg_request {
    const char *out_dir;  /* the submissions dir; created when missing */
    bool need_tok_config; /* the base model has tokenizer_config.json: require it too */
    int top;              /* how many packages to write */
    double max_zip_gb;    /* 1 GB = 1e9 bytes */
    double max_unzipped_gb;
    const struct pkg_cand *cands;
    int ncands;
    const char *error; /* when set, nothing is packaged and the document says why */
};

/*
 * Whether a zip entry name is acceptable: not empty, not absolute, no empty, "." or ".."
 * component, no backslash, no control characters, at most 4096 bytes.
 */
bool pkg_entry_name_ok(const char *name);

/*
 * Checks a model dir: it is a directory of regular files (symlinks to files inside the dir
 * are followed; symlinks that resolve outside it, symlinked directories and special files are
 * refused) whose names pass pkg_entry_name_ok; the sum of file sizes is
 * at most max_unzipped_gb (checked first); config.json parses as a JSON object; tokenizer.json
 * (and tokenizer_config.json when need_tok_config) exists; at least one *.safetensors exists
 * and every one has a valid header (common/st.h); an index file's shards resolve.
 * Returns 0 with *files (sorted relative names; free with pkg_files_free) and *total bytes, or
 * -1 with *reason set to a new string.
 */
int pkg_check_model(const char *dir, bool need_tok_config, double max_unzipped_gb, char ***files,
                    size_t *nfiles, int64_t *total, char **reason);
void pkg_files_free(char **files, size_t n);

/*
 * Writes zip_path (directly; the caller picks a temporary name) with one stored entry
 * "model/<name>" per file of src_dir, then reopens it with consistency checks. Returns 0 with
 * *zip_bytes, or -1 with *err set to a new string (the file is removed).
 */
int pkg_write_zip(const char *src_dir, char *const *files, size_t n, const char *zip_path,
                  int64_t *zip_bytes, char **err);

/*
 * Packages the first req->top candidates that pass the checks (a candidate that fails is
 * skipped with its reason and the next one takes its place). Returns the package document, a
 * new JSON string:
 *   {"dir": OUT, "top": N, "packaged": K, "error": "..."?,
 *    "lanes": [{"lane": ID, "ok": true, "top": 1, "zip": PATH, "model_dir": PATH,
 *               "zip_bytes": N, "unzipped_bytes": N, "files": N},
 *              {"lane": ID, "ok": false, "reason": "..."}]}
 * Only examined candidates are listed.
 */
char *pkg_run(const struct pkg_request *req);

/* Whether dir has tokenizer_config.json (blocking stat). */
bool pkg_has_tok_config(const char *dir);

#endif
