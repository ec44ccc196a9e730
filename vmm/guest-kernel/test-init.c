/* The init of vmm/tests/linux_boot.rs's initramfs (built there with `gcc -static`): checks what
 * a container guest agent relies on in the guest kernel, prints one line per check on the
 * console, then reboots (with `reboot=k` the kernel pulses the i8042 reset line: the VMM's
 * VmExit::Reset).
 *
 *   UNICRI-GUEST-INIT
 *   check <name> ok|FAIL <detail>
 *   net: <interfaces>
 *   UNICRI-GUEST-DONE <failures>
 *
 * Run as an ordinary process (not pid 1) it mounts nothing and does not reboot, so it can be
 * tried on the host. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif

static int out = 1;
static int failures;

static void say(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1)
        n = sizeof buf - 1;
    if (n > 0)
        (void)!write(out, buf, n);
}

static void check(const char *name, int ok, const char *detail) {
    if (!ok)
        failures++;
    say("check %s %s %s\n", name, ok ? "ok" : "FAIL", detail);
}

/* Reads a small file into buf (NUL-terminated); returns the length or -1. */
static int slurp(const char *path, char *buf, int size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int n = 0, r;
    while (n < size - 1 && (r = read(fd, buf + n, size - 1 - n)) > 0)
        n += r;
    close(fd);
    buf[n] = 0;
    return n;
}

static int word_in(const char *text, const char *word) {
    size_t len = strlen(word);
    for (const char *p = text; (p = strstr(p, word)); p += len) {
        int start = p == text || p[-1] == ' ' || p[-1] == '\t' || p[-1] == '\n';
        int end = p[len] == 0 || p[len] == ' ' || p[len] == '\n';
        if (start && end)
            return 1;
    }
    return 0;
}

/* Loads the smallest cgroup device program (allow everything): what runc does for a cgroup v2
 * container's device rules. Returns its fd or -1. */
static int load_device_filter(void) {
    struct bpf_insn prog[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = 1},
        {.code = BPF_JMP | BPF_EXIT},
    };
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insns = (unsigned long)prog;
    attr.insn_cnt = sizeof prog / sizeof prog[0];
    attr.license = (unsigned long)"Apache";
    return syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
}

int main(void) {
    int pid1 = getpid() == 1;
    char buf[4096];

    if (pid1) {
        mkdir("/proc", 0555);
        mkdir("/sys", 0555);
        mkdir("/dev", 0755);
        mount("proc", "/proc", "proc", 0, NULL);
        mount("sysfs", "/sys", "sysfs", 0, NULL);
        mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
        int fd = open("/dev/console", O_WRONLY | O_CLOEXEC);
        if (fd >= 0)
            out = fd;
    }
    say("UNICRI-GUEST-INIT\n");

    struct utsname u;
    if (uname(&u) == 0)
        say("kernel %s %s\n", u.release, u.machine);

    if (slurp("/proc/filesystems", buf, sizeof buf) < 0)
        buf[0] = 0;
    static const char *const fs[] = {"erofs", "overlay", "ext4", "tmpfs", "devtmpfs", "cgroup2"};
    for (unsigned i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "fs-%s", fs[i]);
        check(name, word_in(buf, fs[i]), "(/proc/filesystems)");
    }

    int s = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    check("af-vsock", s >= 0, s >= 0 ? "socket(AF_VSOCK)" : strerror(errno));
    if (s >= 0)
        close(s);
    s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    check("af-unix", s >= 0, s >= 0 ? "socket(AF_UNIX)" : strerror(errno));
    if (s >= 0)
        close(s);
    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    check("af-inet", s >= 0, s >= 0 ? "socket(AF_INET)" : strerror(errno));
    if (s >= 0)
        close(s);

    int ns = unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID);
    check("namespaces", ns == 0, ns == 0 ? "unshare(mnt uts ipc net pid)" : strerror(errno));

    if (!pid1) {
        int prog = load_device_filter();
        check("bpf-prog-load", prog >= 0,
              prog >= 0 ? "BPF_PROG_TYPE_CGROUP_DEVICE" : strerror(errno));
    }

    if (pid1) {
        int m = mount("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL);
        if (m == 0 && slurp("/sys/fs/cgroup/cgroup.controllers", buf, sizeof buf) >= 0) {
            buf[strcspn(buf, "\n")] = 0;
            int all = word_in(buf, "memory") && word_in(buf, "cpu") && word_in(buf, "pids") &&
                      word_in(buf, "cpuset");
            check("cgroup2", all, buf);
        } else {
            check("cgroup2", 0, strerror(errno));
        }

        int prog = load_device_filter();
        if (prog < 0) {
            check("cgroup-device-bpf", 0, strerror(errno));
        } else {
            union bpf_attr attr;
            memset(&attr, 0, sizeof attr);
            attr.target_fd = open("/sys/fs/cgroup", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            attr.attach_bpf_fd = prog;
            attr.attach_type = BPF_CGROUP_DEVICE;
            attr.attach_flags = BPF_F_ALLOW_MULTI;
            int a = syscall(SYS_bpf, BPF_PROG_ATTACH, &attr, sizeof attr);
            check("cgroup-device-bpf", a == 0, a == 0 ? "BPF_PROG_ATTACH" : strerror(errno));
        }

        /* the test attaches one virtio-blk drive whose first bytes are a marker */
        int fd = open("/dev/vda", O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char head[33] = {0};
            int n = read(fd, head, 32);
            close(fd);
            head[n > 0 ? strcspn(head, "\n") : 0] = 0;
            check("virtio-blk", n == 32, head);
        } else {
            check("virtio-blk", 0, strerror(errno));
        }
    }

    /* informational: a virtio-net device shows up as eth0 (the test attaches none) */
    DIR *d = opendir("/sys/class/net");
    if (d) {
        struct dirent *e;
        say("net:");
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                say(" %s", e->d_name);
        say("\n");
        closedir(d);
    }

    say("UNICRI-GUEST-DONE %d\n", failures);
    if (pid1) {
        sync();
        reboot(RB_AUTOBOOT);
        for (;;)
            pause();
    }
    return failures != 0;
}
