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
 * pthread_mutex_unlock, as compilers emit `lock(m); unlock(m);` (or jumps to
 * it after popping saved registers: a function that ends that way). The mutex is
 * checked, not assumed: a callee-saved register the caller passes it from is
 * read from the caller's registers as they were at the lock call (the entry
 * stub, lock_entry.S, hands them over), a rip-relative address is computed.
 * The callee is read from the caller's GOT slot, directly or through its PLT
 * stub. A slot not bound yet (lazy binding: it points back into its own
 * module's PLT) is named by the module's relocations instead, so that the
 * decision never depends on whether some thread happened to call
 * pthread_mutex_unlock through that PLT already (which differs between
 * replicas).
 *
 * The code bytes read are the caller's own, right after a call that returns
 * there, and what its PLT stub and GOT slot address: all mapped.
 */
#include <dlfcn.h>
#include <link.h>
#include <string.h>

#include "shim.h"

/* Sites known not to be empty sections, and sites known to be in the empty
 * form calling pthread_mutex_unlock (the mutex is still compared every
 * time), by hash of the return address. */
#define SITE_SLOTS 1024u
static uintptr_t not_empty[SITE_SLOTS], calls_unlock[SITE_SLOTS];

static unsigned slot_of(uintptr_t site)
{
    return (unsigned)((site * 0x9E3779B97F4A7C15ull) >> 54) & (SITE_SLOTS - 1);
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

/* The length of a load `mov disp8(%rbp|%rsp),%reg` at p into a register
 * other than %rdi and %rsp (a callee-saved register restored from the
 * thread's own frame), or 0. */
static unsigned frame_load(const uint8_t *p)
{
    if ((p[0] != 0x48 && p[0] != 0x4c) || p[1] != 0x8b || (p[2] >> 6) != 1)
        return 0;
    unsigned reg = (p[2] >> 3) & 7;
    if (p[0] == 0x48 && (reg == 7 || reg == 4))
        return 0;
    if ((p[2] & 7) == 5)
        return 4; /* disp8(%rbp) */
    if ((p[2] & 7) == 4 && p[3] == 0x24)
        return 5; /* disp8(%rsp) */
    return 0;
}

/* The length of a function's epilogue at p that leaves %rdi and shared
 * memory alone, up to a tail jump: pops of registers other than %rdi, loads
 * of saved registers from the frame (both read the thread's own stack),
 * `leave` and `add $imm8,%rsp`. Frame-pointer builds end as
 * `mov -8(%rbp),%rbx; leave; jmp unlock`. */
static unsigned epilogue(const uint8_t *p)
{
    unsigned n = 0;
    for (int k = 0; k < 8; k++) {
        unsigned load = frame_load(p + n);
        if (load)
            n += load;
        else if (p[n] >= 0x58 && p[n] < 0x5f && p[n] != 0x5c)
            n += 1; /* pop of a register but %rsp and %rdi */
        else if (p[n] == 0x41 && p[n + 1] >= 0x58 && p[n + 1] <= 0x5f)
            n += 2; /* pop %r8..%r15 */
        else if (p[n] == 0x48 && p[n + 1] == 0x83 && p[n + 2] == 0xc4)
            n += 4; /* add $imm8,%rsp */
        else if (p[n] == 0xc9)
            n += 1; /* leave */
        else
            break;
    }
    int tail_jump = p[n] == 0xe9 || (p[n] == 0xff && p[n + 1] == 0x25);
    return tail_jump ? n : 0;
}

/* Where the call or jump at p goes through a GOT slot: the slot, or NULL if
 * p is no call or jump of a form we know. *direct: a call straight to code. */
static const void *const *call_slot(const uint8_t *p, const uint8_t **direct)
{
    *direct = NULL;
    p += epilogue(p); /* a tail call: lock(m); return unlock(m); */
    if (p[0] == 0xe8 || p[0] == 0xe9) { /* call/jmp rel32, to a PLT stub or the function */
        *direct = p + 5 + rel32(p + 1);
        return plt_slot(*direct);
    }
    if (p[0] == 0xff && (p[1] == 0x15 || p[1] == 0x25)) /* call/jmp *slot(%rip) (-fno-plt) */
        return (const void *const *)(p + 6 + rel32(p + 2));
    return NULL;
}

/* What a lazily bound GOT slot will be bound to, from the relocations of
 * the module that holds it (dl_iterate_phdr). */
struct slot_query {
    uintptr_t slot, value;
    int unbound; /* the slot's value points into its own module */
    const char *name;
};

static int in_module(const struct dl_phdr_info *info, uintptr_t a)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && a >= lo && a - lo < ph->p_memsz)
            return 1;
    }
    return 0;
}

static const char *reloc_name(const ElfW(Rela) *r, size_t bytes, uintptr_t offset,
                              const ElfW(Sym) *symtab, const char *strtab)
{
    for (size_t i = 0; r && i < bytes / sizeof(*r); i++)
        if (r[i].r_offset == offset && ELF64_R_SYM(r[i].r_info))
            return strtab + symtab[ELF64_R_SYM(r[i].r_info)].st_name;
    return NULL;
}

static int name_slot(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    struct slot_query *q = data;
    if (!in_module(info, q->slot))
        return 0;
    q->unbound = in_module(info, q->value);
    const ElfW(Dyn) *dyn = NULL;
    for (int i = 0; i < info->dlpi_phnum; i++)
        if (info->dlpi_phdr[i].p_type == PT_DYNAMIC)
            dyn = (const ElfW(Dyn) *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
    if (!q->unbound || !dyn)
        return 1;
    /* glibc relocates these in place; an offset below the base is not yet */
#define AT(v) ((v) < info->dlpi_addr ? (v) + info->dlpi_addr : (v))
    uintptr_t jmprel = 0, pltrelsz = 0, rela = 0, relasz = 0, symtab = 0, strtab = 0;
    for (; dyn->d_tag != DT_NULL; dyn++) {
        switch (dyn->d_tag) {
        case DT_JMPREL: jmprel = AT(dyn->d_un.d_ptr); break;
        case DT_PLTRELSZ: pltrelsz = dyn->d_un.d_val; break;
        case DT_RELA: rela = AT(dyn->d_un.d_ptr); break;
        case DT_RELASZ: relasz = dyn->d_un.d_val; break;
        case DT_SYMTAB: symtab = AT(dyn->d_un.d_ptr); break;
        case DT_STRTAB: strtab = AT(dyn->d_un.d_ptr); break;
        }
    }
#undef AT
    if (!symtab || !strtab)
        return 1;
    uintptr_t offset = q->slot - info->dlpi_addr;
    q->name = reloc_name((const ElfW(Rela) *)jmprel, pltrelsz, offset,
                         (const ElfW(Sym) *)symtab, (const char *)strtab);
    if (!q->name)
        q->name = reloc_name((const ElfW(Rela) *)rela, relasz, offset,
                             (const ElfW(Sym) *)symtab, (const char *)strtab);
    return 1;
}

/* Whether the GOT slot is, or will be once bound, pthread_mutex_unlock's. */
static int slot_is_unlock(const void *const *got, const void *unlock)
{
    const void *v = __atomic_load_n(got, __ATOMIC_RELAXED);
    if (v == unlock)
        return 1;
    struct slot_query q = {(uintptr_t)got, (uintptr_t)v, 0, NULL};
    dl_iterate_phdr(name_slot, &q);
    /* bound lazily, it will be bound as the global scope binds the name
     * (unless the program or a library before libc defines it too) */
    return q.unbound && q.name && strcmp(q.name, "pthread_mutex_unlock") == 0 &&
           dlsym(RTLD_DEFAULT, "pthread_mutex_unlock") == unlock;
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
    if (len && __atomic_load_n(&calls_unlock[slot], __ATOMIC_RELAXED) == site)
        return rdi == (uintptr_t)mutex;
    const uint8_t *direct;
    const void *const *got = len ? call_slot(p + len, &direct) : NULL;
    if (!(len && direct == unlock) && !(got && slot_is_unlock(got, unlock))) {
        __atomic_store_n(&not_empty[slot], site, __ATOMIC_RELAXED);
        return 0;
    }
    __atomic_store_n(&calls_unlock[slot], site, __ATOMIC_RELAXED);
    return rdi == (uintptr_t)mutex;
}
