/* safetensors: read-only, memory-mapped access to .safetensors files, with every header
 * field validated; and an atomic writer for F32 tensors (used by `lorad merge`).
 *
 * File layout: u64 little-endian header length N, N bytes of JSON header
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *  "__metadata__": {"k": "v"}}, then the data section; offsets are relative to it. */
#ifndef LORAD_SAFETENSORS_H
#define LORAD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

typedef enum {
    ST_F32, ST_F16, ST_BF16, ST_F64,
    ST_I8, ST_U8, ST_I16, ST_U16, ST_I32, ST_U32, ST_I64, ST_U64, ST_BOOL,
    ST_F8_E4M3, ST_F8_E5M2
} st_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    const char *name;            /* owned by the file object */
    st_dtype dtype;
    int ndim;                    /* 0 (scalar) .. ST_MAX_DIMS */
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;               /* product of shape (1 for a scalar) */
    const void *data;            /* inside the read-only mapping (may be unaligned); NULL
                                    when the file was opened unmapped */
    uint64_t offset;             /* of the data in the file */
    size_t nbytes;
} st_tensor;

typedef struct safetensors safetensors;

/* Maps path read-only and validates the header: length vs file size, JSON shape of
 * every entry, known dtype, shape product × dtype size == byte range, ranges inside the
 * data section, no two ranges overlapping, no duplicate names.
 * Returns a new object the caller frees with safetensors_close; on error returns NULL
 * and fills err with a message naming the file (and tensor). Thread-safe (no shared state). */
safetensors *safetensors_open(const char *path, lr_error *err);

/* The same checks, but the file is not mapped: only its header is read, the file stays
 * open, and tensors are read with st_tensor_read_f32 (pread into the destination). For a
 * file read once, whole, right after it is opened (an adapter): it costs one copy per
 * tensor, without a mapping's page-table setup, first-touch faults (two levels of them on
 * a VM with shadow page tables: 8 ms of a 19.6 MB adapter's 17 ms load on the 2-vCPU
 * guest) and TLB shootdown at unmap; and a file truncated meanwhile gives an error, not
 * SIGBUS. Tensors' data pointers are NULL. */
safetensors *safetensors_open_unmapped(const char *path, lr_error *err);

/* Unmaps (or closes) and frees; accepts NULL. Tensor pointers obtained from the file become invalid. */
void safetensors_close(safetensors *st);

const char *safetensors_path(const safetensors *st);
int safetensors_count(const safetensors *st);
/* Tensors in header order; i in [0, count). Borrowed pointer, valid until close. */
const st_tensor *safetensors_at(const safetensors *st, int i);
/* Tensor by exact name, or NULL. Borrowed pointer, valid until close. */
const st_tensor *safetensors_find(const safetensors *st, const char *name);
/* Value of a "__metadata__" string entry, or NULL. Borrowed. */
const char *safetensors_metadata(const safetensors *st, const char *key);

const char *st_dtype_name(st_dtype t);  /* "F32", "BF16", ... */
size_t st_dtype_size(st_dtype t);       /* bytes per element */

/* Converts t (F32, F16 or BF16) to numel floats in dst. Other dtypes: LR_ENOTSUP with a
 * message naming the tensor and dtype. Does not check for NaN/Inf. */
int st_tensor_to_f32(const st_tensor *t, float *dst, lr_error *err);

/* st_tensor_to_f32 for a tensor of st, mapped or not: unmapped, F32 data is read straight
 * into dst and F16/BF16 through a small buffer. A read that fails or ends early (the file
 * shrank since it was opened) is LR_EIO naming the file and tensor. Thread-safe for
 * different tensors or destinations. */
int st_tensor_read_f32(const safetensors *st, const st_tensor *t, float *dst, lr_error *err);

/* Scalar conversions, exposed for tests and other modules. */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t b);

/* One tensor to write: row-major data borrowed from the caller, F32 floats or, with bf16
 * set, BF16 (uint16_t upper halves of F32). */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
    int bf16;
} st_write_tensor;

/* Writes a safetensors file (F32 and BF16 tensors) atomically: to "path.tmp.<pid>", fsync, rename over
 * path, fsync the directory. metadata may be NULL or a NULL-terminated list of
 * key, value, key, value, ... strings. Tensors are written in the order given, each
 * aligned to 8 bytes in the data section. On error nothing is left at path. */
int safetensors_write(const char *path, const st_write_tensor *tensors, int n,
                      const char *const *metadata, lr_error *err);

#endif
