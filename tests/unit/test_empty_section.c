/*
 * test_empty_section.c - which lock call sites open an empty critical
 * section (src/shim/empty_section.c).
 *
 * The decoder only reads code bytes, so most cases are machine code written
 * into a buffer: the bytes after the lock call, a PLT stub and the GOT slot
 * it jumps through, as a linker lays them out. Each case has a buffer of its
 * own (static): the decoder remembers sites it found not to be empty.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "shim.h"

static int fake_unlock_fn, other_fn; /* stand-ins: only their addresses count */
#define UNLOCK ((const void *)&fake_unlock_fn)
#define OTHER ((const void *)&other_fn)

enum { SITE = 0, PLT = 64, GOT = 128 };

struct code {
    uint8_t b[192] __attribute__((aligned(16)));
    size_t n; /* bytes written at the site */
};

static void emit(struct code *c, const void *bytes, size_t len)
{
    memcpy(c->b + SITE + c->n, bytes, len);
    c->n += len;
}

static void emit_rel32(struct code *c, uint8_t op, size_t target)
{
    int32_t rel = (int32_t)((intptr_t)target - (intptr_t)(SITE + c->n + 5));
    c->b[SITE + c->n] = op;
    memcpy(c->b + SITE + c->n + 1, &rel, 4);
    c->n += 5;
}

/* A PLT stub at PLT (jmp *GOT(%rip), after an endbr64 and bnd if ibt), its
 * slot holding `callee`. */
static void plt(struct code *c, const void *callee, int ibt)
{
    size_t at = PLT;
    if (ibt) {
        memcpy(c->b + at, "\xf3\x0f\x1e\xfa\xf2", 5);
        at += 5;
    }
    int32_t disp = (int32_t)(GOT - (at + 6));
    c->b[at] = 0xff;
    c->b[at + 1] = 0x25;
    memcpy(c->b + at + 2, &disp, 4);
    memcpy(c->b + GOT, &callee, sizeof(callee));
}

static int empty(struct code *c, const void *mutex, const struct us_callee_saved *regs)
{
    return us_empty_section((uintptr_t)(c->b + SITE), mutex, regs, UNLOCK);
}

static char mutex[40];

static void test_mov_from_callee_saved(void **state)
{
    (void)state;
    static struct code c;
    struct us_callee_saved regs = {.r15 = (uintptr_t)mutex};
    emit(&c, "\x4c\x89\xff", 3); /* mov %r15,%rdi (Redis's IOThreadMain) */
    emit_rel32(&c, 0xe8, PLT);   /* call pthread_mutex_unlock@plt */
    plt(&c, UNLOCK, 0);
    assert_true(empty(&c, mutex, &regs));
    regs.r15 = (uintptr_t)mutex + 8; /* the unlock would release another mutex */
    assert_false(empty(&c, mutex, &regs));

    static struct code d;
    struct us_callee_saved rbx = {.rbx = (uintptr_t)mutex};
    emit(&d, "\x48\x8b\xfb", 3); /* mov %rbx,%rdi, the 8b form */
    emit_rel32(&d, 0xe8, PLT);
    plt(&d, UNLOCK, 0);
    assert_true(empty(&d, mutex, &rbx));
}

static void test_lea_forms(void **state)
{
    (void)state;
    static struct code c;
    struct us_callee_saved regs = {0};
    int32_t disp = (int32_t)((intptr_t)mutex - (intptr_t)(c.b + SITE + 7));
    emit(&c, "\x48\x8d\x3d", 3); /* lea disp(%rip),%rdi: a global mutex */
    emit(&c, &disp, 4);
    emit_rel32(&c, 0xe8, PLT);
    plt(&c, UNLOCK, 0);
    assert_true(empty(&c, mutex, &regs));

    static struct code d;
    struct us_callee_saved r12 = {.r12 = (uintptr_t)mutex - 0x10};
    emit(&d, "\x49\x8d\x7c\x24\x10", 5); /* lea 0x10(%r12),%rdi: a mutex in a struct */
    emit_rel32(&d, 0xe8, PLT);
    plt(&d, UNLOCK, 0);
    assert_true(empty(&d, mutex, &r12));
}

static void test_not_empty(void **state)
{
    (void)state;
    struct us_callee_saved regs = {.r15 = (uintptr_t)mutex, .rbx = (uintptr_t)mutex};

    static struct code c;
    emit(&c, "\x48\x89\xc7", 3); /* mov %rax,%rdi: rax did not survive the lock call */
    emit_rel32(&c, 0xe8, PLT);
    plt(&c, UNLOCK, 0);
    assert_false(empty(&c, mutex, &regs));

    static struct code d;
    emit(&d, "\x4c\x89\xff", 3);
    emit(&d, "\xc6\x05\x00\x10\x00\x00\x01", 7); /* movb $1,x(%rip): a store inside */
    emit_rel32(&d, 0xe8, PLT);
    plt(&d, UNLOCK, 0);
    assert_false(empty(&d, mutex, &regs));

    static struct code e;
    emit(&e, "\x4c\x89\xff", 3);
    emit_rel32(&e, 0xe8, PLT);
    plt(&e, OTHER, 0); /* some other function of the same shape */
    assert_false(empty(&e, mutex, &regs));

    static struct code f;
    emit(&f, "\x4c\x89\xff", 3);
    emit_rel32(&f, 0xe8, PLT); /* a call straight to code that is no PLT stub */
    memcpy(f.b + PLT, "\x55\x48\x89\xe5", 4); /* push %rbp; mov %rsp,%rbp */
    assert_false(empty(&f, mutex, &regs));
    assert_false(empty(&f, mutex, &regs)); /* again, from the cache */
}

static void test_unbound_slot_of_another_name(void **state)
{
    (void)state;
    struct us_callee_saved regs = {.r13 = (uintptr_t)mutex};
    static struct code c;
    emit(&c, "\x4c\x89\xef", 3); /* mov %r13,%rdi */
    emit_rel32(&c, 0xe8, PLT);
    plt(&c, c.b + PLT + 6, 0); /* unbound: the slot points back into the stub */
    assert_false(empty(&c, mutex, &regs)); /* no relocation names it unlock */
    const void *bound = UNLOCK;
    memcpy(c.b + GOT, &bound, sizeof(bound));
    assert_false(empty(&c, mutex, &regs)); /* decided once, from the code */
}

/*
 * Real code, as the compiler made it: this test program is linked with lazy
 * binding, and its own pthread_mutex_lock (below, ahead of libc's) asks the
 * decoder at the first lock of each function, before that function's
 * unlock has ever been called, so its GOT slot is not bound yet and only the
 * relocations name it.
 */
static int (*libc_lock)(pthread_mutex_t *);
static int verdict = -1;
static pthread_mutex_t real_mutex = PTHREAD_MUTEX_INITIALIZER;
static long counter;

int pthread_mutex_lock(pthread_mutex_t *m)
{
    if (verdict < 0) {
        uintptr_t v = (uintptr_t)m; /* whichever callee-saved register holds it */
        struct us_callee_saved all = {v, v, v, v, v, v};
        verdict = us_empty_section((uintptr_t)__builtin_return_address(0), m, &all,
                                   dlsym(RTLD_NEXT, "pthread_mutex_unlock"));
    }
    return libc_lock(m);
}

__attribute__((noinline)) static void pass_through(pthread_mutex_t *m)
{
    pthread_mutex_lock(m);
    pthread_mutex_unlock(m);
}

__attribute__((noinline)) static void count(pthread_mutex_t *m)
{
    pthread_mutex_lock(m);
    counter++;
    pthread_mutex_unlock(m);
}

static void test_compiled_code(void **state)
{
    (void)state;
    libc_lock = (int (*)(pthread_mutex_t *))dlsym(RTLD_NEXT, "pthread_mutex_lock");
    assert_non_null(libc_lock);
    verdict = -1;
    pass_through(&real_mutex);
    assert_int_equal(verdict, 1);
    verdict = -1;
    count(&real_mutex);
    assert_int_equal(verdict, 0);
    assert_int_equal(counter, 1);
}

static void test_call_and_jump_forms(void **state)
{
    (void)state;
    struct us_callee_saved regs = {.rbp = (uintptr_t)mutex};

    static struct code c; /* endbr64 + bnd jmp in the PLT (-z ibtplt) */
    emit(&c, "\x48\x89\xef", 3); /* mov %rbp,%rdi */
    emit_rel32(&c, 0xe8, PLT);
    plt(&c, UNLOCK, 1);
    assert_true(empty(&c, mutex, &regs));

    static struct code d; /* a tail call: jmp pthread_mutex_unlock@plt */
    emit(&d, "\x48\x89\xef", 3);
    emit_rel32(&d, 0xe9, PLT);
    plt(&d, UNLOCK, 0);
    assert_true(empty(&d, mutex, &regs));

    static struct code e; /* -fno-plt: call *slot(%rip) */
    emit(&e, "\x48\x89\xef", 3);
    int32_t disp = (int32_t)(GOT - (SITE + e.n + 6));
    emit(&e, "\xff\x15", 2);
    emit(&e, &disp, 4);
    const void *u = UNLOCK;
    memcpy(e.b + GOT, &u, sizeof(u));
    assert_true(empty(&e, mutex, &regs));
}

/* Tail calls after an epilogue: only restores from the thread's own frame
 * that leave %rdi as it is may come between the lock and the jump. */
static void test_epilogues(void **state)
{
    (void)state;
    struct us_callee_saved regs = {.rbx = (uintptr_t)mutex};

    static struct code c; /* -O2: add $8,%rsp; pop %rbx; pop %rbp; pop %r12 */
    emit(&c, "\x48\x89\xdf", 3); /* mov %rbx,%rdi */
    emit(&c, "\x48\x83\xc4\x08\x5b\x5d\x41\x5c", 8);
    emit_rel32(&c, 0xe9, PLT);
    plt(&c, UNLOCK, 0);
    assert_true(empty(&c, mutex, &regs));

    static struct code d; /* frame pointers (-fno-omit-frame-pointer) */
    emit(&d, "\x48\x89\xdf", 3);
    emit(&d, "\x48\x8b\x5d\xf8\x4c\x8b\x64\x24\x10\xc9", 10); /* mov -8(%rbp),%rbx; mov 16(%rsp),%r12; leave */
    emit_rel32(&d, 0xe9, PLT);
    plt(&d, UNLOCK, 0);
    assert_true(empty(&d, mutex, &regs));

    static struct code e; /* mov -8(%rbp),%rdi: the unlock's argument is another */
    emit(&e, "\x48\x89\xdf", 3);
    emit(&e, "\x48\x8b\x7d\xf8\xc9", 5);
    emit_rel32(&e, 0xe9, PLT);
    plt(&e, UNLOCK, 0);
    assert_false(empty(&e, mutex, &regs));

    static struct code f; /* pop %rdi */
    emit(&f, "\x48\x89\xdf\x5f", 4);
    emit_rel32(&f, 0xe9, PLT);
    plt(&f, UNLOCK, 0);
    assert_false(empty(&f, mutex, &regs));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mov_from_callee_saved),
        cmocka_unit_test(test_lea_forms),
        cmocka_unit_test(test_not_empty),
        cmocka_unit_test(test_unbound_slot_of_another_name),
        cmocka_unit_test(test_compiled_code),
        cmocka_unit_test(test_call_and_jump_forms),
        cmocka_unit_test(test_epilogues),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
