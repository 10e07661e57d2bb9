/* qvl.c - command-line front end: argument parsing and printing only. */
#include "qvl.h"
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        fprintf(stderr, "usage: qvl <command> [options]\n");
        return argc < 2 ? 2 : 0;
    }
    fprintf(stderr, "qvl: unknown command '%s'\n", argv[1]);
    return 2;
}
