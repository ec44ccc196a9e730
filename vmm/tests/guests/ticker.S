/* A test guest that never ends by itself: prints '.' on the serial port, spins a while, repeats
 * (64-bit entry). The control-channel tests pause, resume and stop it. */
        .text
        .code64
        .globl _start
_start:
        movw $0x3f8, %dx
1:      movb $'.', %al
        outb %al, %dx
        movl $100000, %ecx
2:      decl %ecx
        jnz 2b
        jmp 1b
