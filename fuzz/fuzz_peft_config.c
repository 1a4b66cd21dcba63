/* fuzz_peft_config: any bytes as adapter_config.json, beside a valid
 * adapter_model.safetensors (r 4 on all seven projections of the tiny base). Checks of
 * peft_common.h: a refusal names the adapter; an accepted adapter is consistent, with every
 * scale finite and in range (the lora_alpha / alpha_pattern overflow found by the first
 * fuzzing pass is refused). */
#include <stdio.h>

#include "fuzz/peft_common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static char dir[512];
    const model_config *base = peft_base();
    if (!dir[0]) {
        fuzz_path(dir, sizeof dir, "peft-config");
        testutil_write_tiny_adapter(dir, 4, 8.0, 0x7f, 11, 0, "tiny");
    }
    fuzz_write(dir, "adapter_config.json", data, size);
    peft_check_load(dir, base);
    return 0;
}
