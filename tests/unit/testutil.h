/*
 * testutil.h — helpers the unit tests share: a private temporary
 * directory per test, removed with everything in it afterwards.
 */
#ifndef RAMPART_TESTUTIL_H
#define RAMPART_TESTUTIL_H

#include <stddef.h>

/* mkdtemp() under $TMPDIR (or /tmp) named rampart-TAG-XXXXXX into out;
 * 0 on success, -1 on failure. */
int tu_mkdtemp(char *out, size_t outlen, const char *tag);
/* rm -rf dir (no symlinks followed). */
void tu_rmtree(const char *dir);

#endif
