/* peft_common: the checks both PEFT harnesses make on one load against the tiny base.
 * Included by fuzz_peft_config.c and fuzz_peft_weights.c only. */
#ifndef LORAD_FUZZ_PEFT_COMMON_H
#define LORAD_FUZZ_PEFT_COMMON_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/peft.h"
#include "core/model.h"
#include "fuzz/fuzzutil.h"
#include "tests/testutil.h"

#define FUZZ_PEFT_MAX_RANK 64

static int all_finite(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return 0;
    return 1;
}

/* Loads dir against base (and alone), and checks what peft.h promises: a refusal names the
 * adapter; an adapter has ranks within max_rank, A/B of the base's shapes, finite values,
 * a finite scale within the documented range, consistent counts, a description. */
static void peft_check_load(const char *dir, const model_config *base)
{
    peft_options opt = peft_options_default();
    opt.max_rank = FUZZ_PEFT_MAX_RANK;
    lr_error err = {0};
    peft_adapter *a = peft_load(dir, base, &opt, &err);
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "%s\n", a ? "loaded" : err.msg);
    if (!a) {
        fuzz_check_error(err.code, &err);
        FUZZ_CHECK(strncmp(err.msg, "adapter '", 9) == 0, "message does not name the adapter: "
                   "'%s'", err.msg);
        return;
    }
    FUZZ_CHECK(isfinite(a->alpha), "lora_alpha %g", (double)a->alpha);
    FUZZ_CHECK(a->w && a->w->n_layers == base->n_layers, "n_layers %d", a->w ? a->w->n_layers : -1);
    int n = 0, max_r = 0;
    unsigned mask = 0;
    size_t bytes = 0;
    for (int l = 0; l < a->w->n_layers; l++)
        for (int p = 0; p < PROJ_COUNT; p++) {
            const lora_matrix *m = lora_weights_get(a->w, l, (model_proj)p);
            if (!m->r)
                continue;
            int out, in;
            model_config_proj_shape(base, (model_proj)p, &out, &in);
            FUZZ_CHECK(m->r > 0 && m->r <= FUZZ_PEFT_MAX_RANK, "layer %d %s rank %d", l,
                       model_proj_name((model_proj)p), m->r);
            FUZZ_CHECK(isfinite(m->scale) && fabsf(m->scale) <= 1e5f, "layer %d %s scale %g",
                       l, model_proj_name((model_proj)p), (double)m->scale);
            FUZZ_CHECK(all_finite(m->a, (size_t)m->r * (size_t)in) &&
                       all_finite(m->bt, (size_t)m->r * (size_t)out), "layer %d %s: non-finite "
                       "A or B accepted", l, model_proj_name((model_proj)p));
            bytes += sizeof(float) * (size_t)m->r * (size_t)(in + out);
            max_r = m->r > max_r ? m->r : max_r;
            mask |= 1u << p;
            n++;
        }
    FUZZ_CHECK(n == a->n_matrices, "%d matrices, n_matrices %d", n, a->n_matrices);
    FUZZ_CHECK(mask == a->proj_mask, "proj_mask %#x, present %#x", a->proj_mask, mask);
    FUZZ_CHECK(max_r == a->w->max_rank, "max_rank %d, largest %d", a->w->max_rank, max_r);
    FUZZ_CHECK(bytes == a->w->bytes, "bytes %zu, sum %zu", a->w->bytes, bytes);
    json_t *d = peft_describe(a);
    FUZZ_CHECK(d && json_integer_value(json_object_get(d, "matrices")) == n,
               "describe failed or disagrees");
    json_decref(d);

    /* Whatever loads against a base is self-consistent alone (lorad inspect) too. */
    lr_error err2 = {0};
    peft_adapter *alone = peft_load(dir, NULL, &opt, &err2);
    FUZZ_CHECK(alone != NULL, "loads against the base but not alone: %s", err2.msg);
    FUZZ_CHECK(alone->n_matrices == n, "alone: %d matrices, with base %d", alone->n_matrices,
               n);
    peft_free(alone);
    peft_free(a);
}

/* The tiny base's config (written once into the scratch directory). */
static const model_config *peft_base(void)
{
    static model_config cfg;
    static int made;
    if (!made) {
        char dir[512];
        fuzz_path(dir, sizeof dir, "peft-base");
        testutil_write_tiny_model(dir);
        lr_error err = {0};
        if (model_config_load(dir, &cfg, &err)) {
            fprintf(stderr, "fuzz: %s\n", err.msg);
            abort();
        }
        made = 1;
    }
    return &cfg;
}

#endif
