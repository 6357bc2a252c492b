/*
 * lock_entry.S - pthread_mutex_lock's entry point.
 *
 * Whether a lock opens an empty critical section (empty_section.c) depends
 * on the caller's callee-saved registers, which still hold what it will pass
 * to pthread_mutex_unlock: this stub pushes them, as an array, and calls
 * us_mutex_lock_from(mutex, registers, return address) in sync.c. The C side
 * preserves them itself (they are callee-saved), so nothing is popped.
 */
	.text
	.p2align 4
	.globl pthread_mutex_lock
	.type pthread_mutex_lock,@function
pthread_mutex_lock:
	.cfi_startproc
	pushq %rbx
	.cfi_adjust_cfa_offset 8
	pushq %rbp
	.cfi_adjust_cfa_offset 8
	pushq %r12
	.cfi_adjust_cfa_offset 8
	pushq %r13
	.cfi_adjust_cfa_offset 8
	pushq %r14
	.cfi_adjust_cfa_offset 8
	pushq %r15
	.cfi_adjust_cfa_offset 8
	movq %rsp, %rsi		/* struct us_callee_saved: r15, r14, r13, r12, rbp, rbx */
	movq 48(%rsp), %rdx	/* the call site */
	subq $8, %rsp		/* the call below needs a 16-byte aligned stack */
	.cfi_adjust_cfa_offset 8
	call us_mutex_lock_from
	addq $56, %rsp
	.cfi_adjust_cfa_offset -56
	ret
	.cfi_endproc
	.size pthread_mutex_lock, .-pthread_mutex_lock

	.hidden us_mutex_lock_from
	.section .note.GNU-stack,"",@progbits
