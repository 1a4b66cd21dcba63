/* blas_select_kernels: see blas.h. */
#include "blas.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "log.h"

const char *blas_kernels(void)
{
    return openblas_get_corename();
}

void blas_select_kernels(char **argv)
{
    if (getenv("OPENBLAS_CORETYPE"))
        return;
    const char *core = openblas_get_corename();
    if (!core || (strcasecmp(core, "Prescott") != 0 && strcasecmp(core, "Core2") != 0 &&
                  strcasecmp(core, "Nehalem") != 0 && strcasecmp(core, "Sandybridge") != 0))
        return;
    const char *want = NULL;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want || strcasecmp(core, want) == 0)
        return;
    log_info("OpenBLAS chose %s kernels for this CPU; re-executing with OPENBLAS_CORETYPE=%s",
             core, want);
    setenv("OPENBLAS_CORETYPE", want, 1);
    execv("/proc/self/exe", argv);
    log_warn("could not re-execute with OPENBLAS_CORETYPE=%s; GEMMs will be slow", want);
}
