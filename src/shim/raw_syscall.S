/*
 * raw_syscall.S - the only syscall instructions of the shim.
 *
 * Syscall User Dispatch lets syscalls from one address range through and
 * traps every other one: this section is that range. Everything the shim asks
 * of the kernel goes through us_raw_syscall; signal frames the shim sets up
 * return through us_sigreturn.
 */
	.section .text.us_exempt,"ax",@progbits
	.p2align 4
	.globl us_exempt_start
	.hidden us_exempt_start
us_exempt_start:

/* long us_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) */
	.globl us_raw_syscall
	.hidden us_raw_syscall
	.type us_raw_syscall,@function
us_raw_syscall:
	movq %rdi, %rax
	movq %rsi, %rdi
	movq %rdx, %rsi
	movq %rcx, %rdx
	movq %r8, %r10
	movq %r9, %r8
	movq 8(%rsp), %r9
	syscall
	ret
	.size us_raw_syscall, .-us_raw_syscall

/* sa_restorer of every handler the shim installs */
	.globl us_sigreturn
	.hidden us_sigreturn
	.type us_sigreturn,@function
us_sigreturn:
	movq $15, %rax
	syscall
	hlt
	.size us_sigreturn, .-us_sigreturn

/*
 * Trapped clone/clone3 are re-issued from here (the SIGSYS handler points
 * the interrupted context at this stub, with the resume address in r9, a
 * register glibc's clone wrappers neither pass nor need). Parent and child
 * both go back to the instruction after the trapped syscall.
 */
	.globl us_clone_stub
	.hidden us_clone_stub
	.type us_clone_stub,@function
us_clone_stub:
	syscall
	jmp *%r9
	.size us_clone_stub, .-us_clone_stub

/*
 * Same for a fork-like clone, except that both processes first call
 * us_fork_done(result) (the child leaves the log, the parent logs the pid)
 * with every register preserved: the code after glibc's inline syscall
 * expects them intact.
 */
	.globl us_fork_stub
	.hidden us_fork_stub
	.type us_fork_stub,@function
us_fork_stub:
	syscall
	subq $128, %rsp          /* step over the red zone */
	pushq %rdi
	pushq %rsi
	pushq %rdx
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %rax
	pushq %rbx
	movq %rsp, %rbx
	andq $-16, %rsp
	movq %rax, %rdi
	call us_fork_done
	movq %rbx, %rsp
	popq %rbx
	popq %rax
	popq %r10
	popq %r9
	popq %r8
	popq %rdx
	popq %rsi
	popq %rdi
	addq $128, %rsp
	jmp *%r9
	.size us_fork_stub, .-us_fork_stub

	.globl us_exempt_end
	.hidden us_exempt_end
us_exempt_end:
	.section .note.GNU-stack,"",@progbits
