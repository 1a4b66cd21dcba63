/* blas: makes sure OpenBLAS runs the kernels this CPU can run.
 * Debian 12's OpenBLAS (0.3.21) does not recognise some newer CPUs (e.g. Sapphire/Emerald
 * Rapids) and falls back to its generic "Prescott" SSE3 kernels, 5x slower. OpenBLAS
 * picks its kernels when the library loads, before main, so the only fix from inside the
 * program is to set OPENBLAS_CORETYPE and execute itself again. */
#ifndef LORAD_BLAS_H
#define LORAD_BLAS_H

/* Call first thing in main. If OPENBLAS_CORETYPE is unset and OpenBLAS chose generic
 * kernels although the CPU has AVX-512 (→ SkylakeX) or AVX2+FMA (→ Haswell), sets the
 * variable and re-executes /proc/self/exe with the same argv (returns only if that is
 * not needed or fails). A user-set OPENBLAS_CORETYPE is always respected. */
void blas_select_kernels(char **argv);

/* The kernel family OpenBLAS is using, e.g. "SkylakeX" (borrowed string). */
const char *blas_kernels(void);

#endif
