/* demo.c - the random-weight demo model used by `qvl run` when no model is given. */
#include "common.h"

qvl_status qvl_demo_model_write(const char *dir, char *err, size_t err_len) {
    qvl_errf(err, err_len, "%s: demo model generation is not available yet", dir);
    return QVL_E_UNSUPPORTED;
}
