/* A container process for the agent tests: `sleeper` waits forever; `sleeper cat F...` prints
 * each file as `<name>=<content>` (name: the last path component). */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "cat") == 0) {
        for (int i = 2; i < argc; i++) {
            const char *name = strrchr(argv[i], '/');
            name = name ? name + 1 : argv[i];
            FILE *f = fopen(argv[i], "r");
            if (!f) {
                printf("%s=<missing>\n", name);
                continue;
            }
            char buf[256];
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            buf[n] = 0;
            printf("%s=%s", name, buf);
            if (n == 0 || buf[n - 1] != '\n')
                printf("\n");
            fclose(f);
        }
        return 0;
    }
    for (;;)
        pause();
}
