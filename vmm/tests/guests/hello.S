/* A tiny x86_64 test guest for unicri's VMM: prints a line on the 8250 serial port (0x3f8) and
 * pulses the i8042 reset line (0xfe to port 0x64), which ends the VM cleanly.
 *
 * One source, two entries:
 *  - `pvh_start` (32-bit protected mode, paging off), named by the Xen PVH ELF note
 *    (XEN_ELFNOTE_PHYS32_ENTRY = 18): the VMM enters it through PVH, with ebx = hvm_start_info;
 *  - `_start` (64-bit long mode, identity-mapped), the ELF entry: used when the note is absent
 *    (assembled with -DNO_PVH).
 * The PVH path also checks the hvm_start_info magic and reports it. With -DWAIT the guest
 * halts after its line instead of resetting (the benchmark reads the VMM's memory, then kills it).
 */
#ifndef NO_PVH
        .section .note.Xen, "a", @note
        .align 4
        .long 4                 /* namesz: "Xen\0" */
        .long 4                 /* descsz */
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long pvh_start
#endif

        .text
        .code32
        .globl pvh_start
pvh_start:
        cmpl $0x336ec578, (%ebx)        /* hvm_start_info.magic */
        jne 1f
        movl $msg_pvh, %esi
        jmp print32
1:      movl $msg_bad, %esi
print32:
        movw $0x3f8, %dx
2:      lodsb
        testb %al, %al
        jz 3f
        outb %al, %dx
        jmp 2b
3:
#ifdef WAIT
        cli                     /* -DWAIT: stay alive (halted, no exits) until killed */
8:      hlt
        jmp 8b
#endif
        movb $0xfe, %al
        outb %al, $0x64
4:      hlt
        jmp 4b

        .code64
        .globl _start
_start:
        leaq msg_64(%rip), %rsi
        movw $0x3f8, %dx
5:      lodsb
        testb %al, %al
        jz 6f
        outb %al, %dx
        jmp 5b
6:
#ifdef WAIT
        cli
9:      hlt
        jmp 9b
#endif
        movb $0xfe, %al
        outb %al, $0x64
7:      hlt
        jmp 7b

        .section .rodata
msg_pvh: .asciz "hello from a PVH guest\n"
msg_bad: .asciz "bad hvm_start_info magic\n"
msg_64:  .asciz "hello from a 64-bit guest\n"
