/* run.c - not written yet (being implemented). */
#include <stdio.h>
#include "run.h"
int cmd_run(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fputs("agentvault: run is not available in this build\n", stderr);
    return 2;
}
