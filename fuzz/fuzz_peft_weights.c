/* fuzz_peft_weights: any bytes as adapter_model.safetensors, beside a fixed
 * adapter_config.json (r 4, alpha 8, rank_pattern down_proj 2, all seven projections),
 * loaded against the tiny base. Checks of peft_common.h: a refusal names the adapter; an
 * accepted adapter has exactly the base's shapes, finite values and consistent counts. */
#include <stdio.h>

#include "fuzz/peft_common.h"

static const char config[] =
    "{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"base_model_name_or_path\": "
    "\"tiny\", \"r\": 4, \"lora_alpha\": 8, \"rank_pattern\": {\"down_proj\": 2}, "
    "\"target_modules\": [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", "
    "\"up_proj\", \"down_proj\"], \"bias\": \"none\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[512];
    const model_config *base = peft_base();
    if (!dir[0]) {
        fuzz_path(dir, sizeof dir, "peft-weights");
        fuzz_write(dir, "adapter_config.json", config, sizeof config - 1);
    }
    fuzz_write(dir, "adapter_model.safetensors", data, size);
    peft_check_load(dir, base);
    return 0;
}
