/*
 * empty_section.c - a mutex locked and unlocked with nothing in between.
 *
 * Such a critical section changes no state; it only waits while another
 * thread holds the mutex (Redis's io-threads park this way while the main
 * thread holds theirs). Whether and how often a thread passes through one is
 * often timing alone: Redis's io-thread spins up to a million times on an
 * atomic counter before it takes the mutex once. Ordering those passes would
 * make the replicas depend on that timing, and they are not needed: an empty
 * section is done for real in every replica (it still waits for the holder)
 * and not logged.
 *
 * A section is empty when the instruction right after the lock call puts the
 * same mutex in the first argument register and the next one calls
 * pthread_mutex_unlock, as compilers emit `lock(m); unlock(m);`. The mutex is
 * checked, not assumed: a callee-saved register the caller passes it from is
 * read from the caller's registers as they were at the lock call (the entry
 * stub, lock_entry.S, hands them over), a rip-relative address is computed.
 * The callee is read from the caller's GOT, directly or through its PLT stub:
 * with lazy binding, a site whose unlock is not bound yet is not an empty
 * section until it is, the same in every replica.
 *
 * The code bytes read are the caller's own, right after a call that returns
 * there, and what its PLT stub and GOT slot address: all mapped.
 */
#include <string.h>

#include "shim.h"

/* Sites known not to be empty sections, by hash of the return address. */
#define NOT_EMPTY_SLOTS 1024u
static uintptr_t not_empty[NOT_EMPTY_SLOTS];

static unsigned slot_of(uintptr_t site)
{
    return (unsigned)((site * 0x9E3779B97F4A7C15ull) >> 54) & (NOT_EMPTY_SLOTS - 1);
}

static int32_t rel32(const uint8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

/* The caller's value of register `reg` (x86 numbering) if it is callee-saved. */
static int saved_reg(const struct us_callee_saved *s, unsigned reg, uintptr_t *value)
{
    switch (reg) {
    case 3: *value = s->rbx; return 1;
    case 5: *value = s->rbp; return 1;
    case 12: *value = s->r12; return 1;
    case 13: *value = s->r13; return 1;
    case 14: *value = s->r14; return 1;
    case 15: *value = s->r15; return 1;
    default: return 0;
    }
}

/*
 * If the instruction at p sets %rdi from a callee-saved register or an
 * address computed from one or from %rip, its length and the value %rdi
 * gets; 0 for any other instruction. Forms: mov %reg,%rdi (89 /r or 8b /r),
 * lea disp(%reg),%rdi, lea disp(%rip),%rdi, all with REX.W.
 */
static unsigned rdi_load(const uint8_t *p, const struct us_callee_saved *s, uintptr_t *value)
{
    uint8_t rex = p[0];
    if ((rex & 0xfa) != 0x48) /* REX.W, optionally R and B; never X (no index) */
        return 0;
    unsigned modrm = p[2], mod = modrm >> 6;
    unsigned reg = ((modrm >> 3) & 7) | ((rex & 4) << 1), rm = (modrm & 7) | ((rex & 1) << 3);
    if (p[1] == 0x89 && mod == 3 && rm == 7)
        return saved_reg(s, reg, value) ? 3 : 0;
    if (p[1] == 0x8b && mod == 3 && reg == 7)
        return saved_reg(s, rm, value) ? 3 : 0;
    if (p[1] != 0x8d || reg != 7)
        return 0;
    if (mod == 0 && (modrm & 7) == 5) { /* rip-relative */
        *value = (uintptr_t)(p + 7) + (intptr_t)rel32(p + 3);
        return 7;
    }
    if (mod != 1 && mod != 2)
        return 0;
    unsigned len = 3;
    if ((modrm & 7) == 4) { /* a SIB byte: only "base alone" (r12 needs one) */
        if (p[3] != 0x24)
            return 0;
        len = 4;
    }
    uintptr_t base;
    if (!saved_reg(s, rm, &base))
        return 0;
    intptr_t disp = mod == 1 ? (int8_t)p[len] : rel32(p + len);
    *value = base + (uintptr_t)disp;
    return len + (mod == 1 ? 1 : 4);
}

/* The GOT slot a PLT stub jumps through (endbr64 and bnd optional), or NULL. */
static const void *const *plt_slot(const uint8_t *p)
{
    if (p[0] == 0xf3 && p[1] == 0x0f && p[2] == 0x1e && p[3] == 0xfa)
        p += 4;
    if (p[0] == 0xf2)
        p++;
    if (p[0] != 0xff || p[1] != 0x25)
        return NULL;
    return (const void *const *)(p + 6 + rel32(p + 2));
}

/* Where the call or jump at p goes through a GOT slot: the slot, or NULL if
 * p is no call or jump of a form we know. *direct: a call straight to code. */
static const void *const *call_slot(const uint8_t *p, const uint8_t **direct)
{
    *direct = NULL;
    if (p[0] == 0xe8 || p[0] == 0xe9) { /* call/jmp rel32, to a PLT stub or the function */
        *direct = p + 5 + rel32(p + 1);
        return plt_slot(*direct);
    }
    if (p[0] == 0xff && (p[1] == 0x15 || p[1] == 0x25)) /* call/jmp *slot(%rip) (-fno-plt) */
        return (const void *const *)(p + 6 + rel32(p + 2));
    return NULL;
}

int us_empty_section(uintptr_t site, const void *mutex, const struct us_callee_saved *saved,
                     const void *unlock)
{
    unsigned slot = slot_of(site);
    if (__atomic_load_n(&not_empty[slot], __ATOMIC_RELAXED) == site)
        return 0;
    const uint8_t *p = (const uint8_t *)site;
    uintptr_t rdi;
    unsigned len = rdi_load(p, saved, &rdi);
    const uint8_t *direct;
    const void *const *got = len ? call_slot(p + len, &direct) : NULL;
    if (!got && !(len && direct == unlock)) {
        __atomic_store_n(&not_empty[slot], site, __ATOMIC_RELAXED);
        return 0;
    }
    /* The form matches: whether the callee is unlock (a lazy binding may
     * not be resolved yet) and the mutex this one are asked every time. */
    if (rdi != (uintptr_t)mutex)
        return 0;
    return direct == unlock || (got && __atomic_load_n(got, __ATOMIC_RELAXED) == unlock);
}
