/* Keeps values in zmm16, zmm31 and the opmask k3 across raw nanosleep syscalls in a loop that
 * never leaves inline assembly (no library code can touch them), writing '.' each round and
 * 'X' then exiting if a value changed. */
#include <stdint.h>
#include <stdio.h>
#include <time.h>
int main(void) {
    static uint64_t pat[8] __attribute__((aligned(64))) = {
        0x0123456789abcdefull, 0xfedcba9876543210ull, 0x1111222233334444ull, 0x5555666677778888ull,
        0x99990000aaaabbbbull, 0xccccddddeeeeffffull, 0x0f0f0f0f0f0f0f0full, 0xf0f0f0f0f0f0f0f0ull};
    static uint64_t pat2[8] __attribute__((aligned(64))) = {1, 2, 3, 4, 5, 6, 7, 8};
    static struct timespec ts = {0, 20 * 1000 * 1000};
    static const char dot = '.', bad = 'X';
    __asm__ volatile(
        "vmovdqu64 (%[p]), %%zmm16\n"
        "vmovdqu64 (%[q]), %%zmm31\n"
        "mov $0xa5, %%eax\n"
        "kmovq %%rax, %%k3\n"
        "1:\n"
        "mov $35, %%eax\n"          /* nanosleep(&ts, NULL) */
        "mov %[ts], %%rdi\n"
        "xor %%esi, %%esi\n"
        "syscall\n"
        "vpcmpeqq (%[p]), %%zmm16, %%k1\n"
        "kmovq %%k1, %%rax\n"
        "cmp $0xff, %%rax\n"
        "jne 2f\n"
        "vpcmpeqq (%[q]), %%zmm31, %%k1\n"
        "kmovq %%k1, %%rax\n"
        "cmp $0xff, %%rax\n"
        "jne 2f\n"
        "kmovq %%k3, %%rax\n"
        "cmp $0xa5, %%rax\n"
        "jne 2f\n"
        "mov $1, %%eax\n"           /* write(1, &dot, 1) */
        "mov $1, %%edi\n"
        "mov %[dot], %%rsi\n"
        "mov $1, %%edx\n"
        "syscall\n"
        "jmp 1b\n"
        "2:\n"
        "mov $1, %%eax\n"
        "mov $1, %%edi\n"
        "mov %[bad], %%rsi\n"
        "mov $1, %%edx\n"
        "syscall\n"
        :
        : [p] "r"(pat), [q] "r"(pat2), [ts] "r"(&ts), [dot] "r"(&dot), [bad] "r"(&bad)
        : "rax", "rdi", "rsi", "rdx", "rcx", "r11", "memory", "k1", "k3", "xmm16", "xmm31");
    return 1;
}
