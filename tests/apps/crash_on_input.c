/*
 * crash_on_input.c - a program with a bug: it dereferences NULL when its
 * input starts with 'x', and prints "ok" otherwise.
 *
 * Under understudy the backup, replaying the same input, crashes the same
 * way: understudy must call it a deterministic crash and exit with the
 * program's signal instead of failing over again and again.
 */
#include <unistd.h>

int main(void)
{
    char buf[64];
    ssize_t n = read(0, buf, sizeof(buf));
    if (n > 0 && buf[0] == 'x') {
        volatile int *p = 0;
        *p = 1;
    }
    return write(1, "ok\n", 3) == 3 ? 0 : 1;
}
