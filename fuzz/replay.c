/* replay: a main for the fuzz harnesses without libFuzzer — feeds every file named on the
 * command line (directories: every file in them, in name order) to LLVMFuzzerTestOneInput
 * once. `make check` runs each harness over fuzz/corpus/<target> and fuzz/regressions/<target>
 * so that every input that once found a bug stays fixed, with no clang and no long runs. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz/fuzzutil.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int replay_file(const char *path)
{
    size_t n = 0;
    char *data = fuzz_read(path, &n);
    if (!data) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        return -1;
    }
    /* a private copy of exactly n bytes, so ASan sees reads past the end */
    uint8_t *copy = malloc(n ? n : 1);
    if (!copy) {
        free(data);
        return -1;
    }
    memcpy(copy, data, n);
    free(data);
    LLVMFuzzerTestOneInput(copy, n);
    free(copy);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    int files = 0, bad = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) != 0) {
            continue;   /* a target without regressions has no directory */
        }
        if (!S_ISDIR(st.st_mode)) {
            bad += replay_file(argv[i]) != 0;
            files++;
            continue;
        }
        struct dirent **list;
        int n = scandir(argv[i], &list, NULL, by_name);
        for (int k = 0; k < n; k++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/%s", argv[i], list[k]->d_name);
            if (list[k]->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
                bad += replay_file(path) != 0;
                files++;
            }
            free(list[k]);
        }
        free(n >= 0 ? list : NULL);
    }
    printf("%s: %d inputs replayed, %d unreadable\n", argv[0], files, bad);
    return bad ? 1 : 0;
}
