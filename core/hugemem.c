/* huge_alloc, huge_free: see hugemem.h. */
#include "hugemem.h"

#include <sys/mman.h>

void *huge_alloc(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, bytes, MADV_HUGEPAGE);   /* a hint; failure leaves 4 KiB pages */
    return p;
}

void huge_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes);
}
