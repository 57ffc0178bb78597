/*
 * st: safetensors files and model directories: validated mmap reading, lookup by name across
 * shards, and atomic (optionally sharded) writing in the layout the reference writer produces.
 *
 * Reading validates every rule of the format (spec section 2): header length against the file
 * size and the 100,000,000-byte limit, a UTF-8 JSON object starting with '{', known dtypes,
 * non-negative integer shapes without overflow, offsets sorted and contiguous from 0 with no
 * holes or overlaps, END - BEGIN == numel * size, 8 + N + last END == file size, string-only
 * __metadata__, no duplicate names. Any violation is an error string naming the file, never a
 * crash (tests/fuzz/safetensors_fuzz.c). Tensor data is used in place from the mapping; a tensor
 * whose bytes are not aligned to its element size is copied once so every `data` pointer is
 * aligned.
 *
 * Errors: functions return 0 or a negative errno-style code and, when err is not NULL, set *err
 * to a new string (free() it) such as
 *   "model.safetensors: tensor 'x' data_offsets [8,16] overlap the previous tensor 'w'".
 */
#ifndef EXAQ_ST_H
#define EXAQ_ST_H

#include <stddef.h>
#include <stdint.h>

enum st_dtype {
    ST_BOOL = 0,
    ST_U8,
    ST_I8,
    ST_I16,
    ST_U16,
    ST_F16,
    ST_BF16,
    ST_I32,
    ST_U32,
    ST_F32,
    ST_F64,
    ST_I64,
    ST_U64,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_DTYPE_COUNT,
};

#define ST_MAX_DIMS   8
#define ST_MAX_HEADER 100000000ull

/* "BF16" etc.; "?" for out-of-range values. */
const char *st_dtype_name(enum st_dtype dt);
/* 0 and *out set, or -1 for an unknown name. */
int st_dtype_parse(const char *s, enum st_dtype *out);
size_t st_dtype_size(enum st_dtype dt);

struct st_file;

struct st_tensor {
    const char *name; /* owned by the file */
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    size_t nbytes;
    const void *data; /* aligned to st_dtype_size(dtype); valid until the file is freed */
    const struct st_file *file;
};

/* Maps and validates one file. */
int st_file_open(struct st_file **out, const char *path, char **err);
/* Validates an in-memory image; buf is borrowed and must outlive the file. `label` names the
 * source in error messages (e.g. the file name). */
int st_file_parse(struct st_file **out, const void *buf, size_t len, const char *label, char **err);
void st_file_free(struct st_file *f);
int st_file_count(const struct st_file *f);
/* Tensors in file (data) order. */
const struct st_tensor *st_file_tensor(const struct st_file *f, int i);
const struct st_tensor *st_file_find(const struct st_file *f, const char *name);
/* __metadata__ value, or NULL. */
const char *st_file_metadata(const struct st_file *f, const char *key);

/*
 * A model directory: `model.safetensors.index.json` + its shards (the index is validated: every
 * weight_map file must exist and hold the tensor mapped to it), else `model.safetensors`, else
 * every `*.safetensors` in the directory (a name in two files is an error). `path` may also be
 * a single .safetensors file.
 */
struct st_dir;
int st_dir_open(struct st_dir **out, const char *path, char **err);
void st_dir_free(struct st_dir *d);
int st_dir_count(const struct st_dir *d);
/* Tensors sorted by name. */
const struct st_tensor *st_dir_tensor(const struct st_dir *d, int i);
const struct st_tensor *st_dir_find(const struct st_dir *d, const char *name);
int st_dir_nfiles(const struct st_dir *d);

/* Converts any tensor to fp32 (integers and BOOL by value). out has numel floats. */
void st_tensor_to_f32(const struct st_tensor *t, float *out);

/* ---- writing ------------------------------------------------------------------------- */

struct st_wtensor {
    const char *name;
    enum st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data; /* numel * size bytes, or NULL to have the fill callback produce them */
    const void *user; /* opaque, for the fill callback (the writer may copy the struct) */
};

/* Produces the bytes of tensor t into dst (nbytes long). Returns 0, or a negative code and
 * sets *err (new string). */
typedef int (*st_fill_fn)(void *arg, const struct st_wtensor *t, void *dst, size_t nbytes,
                          char **err);

/* Bytes of one tensor's data; 0 with *ok = 0 on a bad shape or overflow. */
uint64_t st_wtensor_nbytes(const struct st_wtensor *t, int *ok);

/*
 * Writes one file: header {"__metadata__":{"format":"pt"}, ...} padded with spaces to a
 * multiple of 8, tensors ordered by descending element size then name, data written to
 * path.tmp-<pid> and renamed over path after fsync. fill may be NULL when every data is set.
 */
int st_write_file(const char *path, const struct st_wtensor *ts, int n, st_fill_fn fill, void *arg,
                  char **err);

/*
 * Writes the weights of a model directory (which must exist). When max_shard_bytes is 0 or the
 * tensors fit, one `model.safetensors`; otherwise `model-%05d-of-%05d.safetensors` shards filled
 * greedily in the given order (a tensor larger than the limit gets a shard of its own) plus
 * `model.safetensors.index.json` (total_size = sum of tensor bytes, weight_map sorted). Stale
 * model.safetensors / index / model-*-of-*.safetensors files are removed first.
 */
int st_write_dir(const char *dir, const struct st_wtensor *ts, int n, uint64_t max_shard_bytes,
                 st_fill_fn fill, void *arg, char **err);

#endif
