/* compat.c - TEMPORARY: a weak copy of a small public function the server needs and that
 * include/qvl.h does not offer yet. It reaches into src/ctx.h, which server code otherwise never
 * does. When libqvl exports qvl_ctx_set_image_opts (declaration and implementation proposed in
 * the server's report), the library's strong definition wins and this file can be deleted. */
#include "ctx.h"
#include "server.h"

#include <string.h>

/* Set the image budget used by later qvl_ctx_eval calls on c (zero fields: from the model).
 * NULL c is a no-op; NULL o restores the model defaults. */
__attribute__((weak)) void qvl_ctx_set_image_opts(qvl_ctx *c, const qvl_image_opts *o) {
    if (!c)
        return;
    if (o)
        c->image = *o;
    else
        memset(&c->image, 0, sizeof c->image);
}
