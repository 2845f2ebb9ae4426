/* fault.h - allocation-failure injection for the fault tests (sanitizer
 * builds only; see tests/fault/README.md). */
#ifndef AV_DAEMON_FAULT_H
#define AV_DAEMON_FAULT_H

/* fault_setup installs a counting allocator when AGENTVAULT_FAULT_FILE names
 * a control file (a build with AV_FAULT_INJECTION only; elsewhere it does
 * nothing). Call it before any other libagentvault function. Returns 0, or
 * -1 after printing a one-line reason when the file is unusable. */
int fault_setup(void);

#endif
