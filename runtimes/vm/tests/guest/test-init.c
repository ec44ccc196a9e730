/* A tiny PID 1 for the UML engine tests (built by the test with gcc -static): prints a marker
 * on the console, the NICs with their MACs, then waits for /dev/ubdb, mounts it as erofs and
 * prints its hello.txt; then sleeps forever (PID 1 must not exit). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    printf("UNICRI-TEST-INIT-UP\n");
    DIR *d = opendir("/sys/class/net");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[256], mac[64] = "";
        snprintf(p, sizeof p, "/sys/class/net/%s/address", e->d_name);
        FILE *f = fopen(p, "r");
        if (f) { if (fgets(mac, sizeof mac, f)) mac[strcspn(mac, "\n")] = 0; fclose(f); }
        printf("NIC %s %s\n", e->d_name, mac);
    }
    if (d) closedir(d);
    fflush(stdout);
    mkdir("/mnt", 0755);
    for (int i = 0; i < 1200; i++) {
        if (access("/dev/ubdb", F_OK) == 0) {
            if (mount("/dev/ubdb", "/mnt", "erofs", MS_RDONLY, NULL) == 0) {
                char buf[256] = "";
                FILE *f = fopen("/mnt/hello.txt", "r");
                if (f) { if (!fgets(buf, sizeof buf, f)) buf[0] = 0; fclose(f); }
                buf[strcspn(buf, "\n")] = 0;
                printf("IMAGE-CONTENT %s\n", buf);
                umount("/mnt");
                printf("IMAGE-UNMOUNTED\n");
            } else {
                printf("IMAGE-MOUNT-FAILED %s\n", strerror(errno));
            }
            fflush(stdout);
            break;
        }
        usleep(50000);
    }
    for (;;) pause();
}
