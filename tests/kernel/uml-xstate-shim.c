/*
 * LD_PRELOAD shim for /usr/bin/linux.uml (Debian, kernel 6.1) on hosts whose XSAVE area is
 * larger than UML's buffer (AMX: ~11 KiB). The host kernel answers PTRACE_SETREGSET
 * NT_X86_XSTATE with EFAULT unless the buffer is exactly the full host size, so UML's init
 * dies with "ptrace set fp regs failed, errno = 14" before running init.
 *
 * Fix: GETREGSET reads the full area and hands UML the prefix it asked for; SETREGSET pads
 * UML's prefix to the full size and clears the XSAVE header bits of every component that
 * lies beyond UML's buffer (the host kernel then puts those in their init state). UML never
 * used those components anyway. Calls with a full-size buffer pass through unchanged.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifndef NT_X86_XSTATE
#define NT_X86_XSTATE 0x202
#endif

#define BIG 65536
static unsigned char full[BIG];
typedef long (*ptrace_fn)(int, pid_t, void *, void *);

/* Standard-format XSAVE offsets/sizes from CPUID leaf 0xD (components 2..31). */
static int comp_end(int i)
{
    unsigned int eax, ebx, ecx, edx;
    __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(0xD), "c"(i));
    if (eax == 0)
        return 0;
    return (int)(ebx + eax);
}

long ptrace(enum __ptrace_request req, ...)
{
    static ptrace_fn real;
    va_list ap;
    va_start(ap, req);
    pid_t pid = va_arg(ap, pid_t);
    void *addr = va_arg(ap, void *);
    void *data = va_arg(ap, void *);
    va_end(ap);
    if (!real)
        real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");

    if ((req == PTRACE_GETREGSET || req == PTRACE_SETREGSET) &&
        (uintptr_t)addr == NT_X86_XSTATE && data != NULL) {
        struct iovec *uiov = data;
        struct iovec kiov = {full, BIG};
        memset(full, 0, BIG);
        long rc = real(PTRACE_GETREGSET, pid, addr, &kiov);
        if (rc < 0)
            return rc;
        size_t host = kiov.iov_len;
        if (uiov->iov_len >= host)
            return real(req, pid, addr, data);
        if (req == PTRACE_GETREGSET) {
            memcpy(uiov->iov_base, full, uiov->iov_len);
            return 0;
        }
        memcpy(full, uiov->iov_base, uiov->iov_len);
        if (uiov->iov_len >= 520) {
            uint64_t bv;
            memcpy(&bv, full + 512, sizeof bv);
            for (int i = 2; i < 64; i++)
                if ((bv >> i) & 1) {
                    int end = i < 32 ? comp_end(i) : 0;
                    if (end == 0 || (size_t)end > uiov->iov_len)
                        bv &= ~((uint64_t)1 << i);
                }
            memcpy(full + 512, &bv, sizeof bv);
        }
        kiov.iov_base = full;
        kiov.iov_len = host;
        return real(PTRACE_SETREGSET, pid, addr, &kiov);
    }
    return real(req, pid, addr, data);
}
