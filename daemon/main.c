/* main.c - the agentvault daemon (skeleton; being written). */
#include <stdio.h>
#include <agentvault/agentvault.h>

int main(void)
{
    printf("agentvault %s\n", av_version_string());
    return 0;
}
