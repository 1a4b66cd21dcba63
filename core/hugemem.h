/* hugemem: large anonymous memory for weights — the base's (model.c), an adapter's
 * (lora.c), a merged W' (variant.c) — and for the KV cache's slabs (kv_cache.c), asking
 * for transparent huge pages. Decode streams these once per step: with 4 KiB pages, TLB
 * misses made a step streaming W' 5-10% slower than one streaming the base, and a 64-row
 * step's attention nearly twice as slow (THP is "madvise" on Debian, so it must be asked
 * for). */
#ifndef LORAD_HUGEMEM_H
#define LORAD_HUGEMEM_H

#include <stddef.h>

/* bytes (> 0) of zeroed memory, private to the process, backed as it is first written;
 * NULL when it cannot be mapped. Huge pages are a hint: where the kernel declines, the
 * memory is the same, in 4 KiB pages. Give it back with huge_free(p, bytes). */
void *huge_alloc(size_t bytes);
void huge_free(void *p, size_t bytes);

#endif
