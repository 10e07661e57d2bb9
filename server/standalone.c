/* standalone.c - the `qvl-server` executable: the same server as `qvl serve`, for tests and for
 * deployments that want a separate binary. */
#include "server.h"

int main(int argc, char **argv) {
    return qvl_cli_serve(argc - 1, argv + 1);
}
