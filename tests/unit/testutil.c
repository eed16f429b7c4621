/*
 * testutil.c — shared unit-test helpers (see testutil.h).
 */
#include "testutil.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

int tu_mkdtemp(char *out, size_t outlen, const char *tag)
{
	const char *tmp = getenv("TMPDIR");
	if ((size_t)snprintf(out, outlen, "%s/rampart-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", tag) >= outlen)
		return -1;
	return mkdtemp(out) ? 0 : -1;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void tu_rmtree(const char *dir)
{
	nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}
