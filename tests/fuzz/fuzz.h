/*
 * fuzz.h — what the libFuzzer targets in tests/fuzz share: log lines at
 * every level are formatted (so a bad format argument is found) and
 * written to /dev/null; a listening unix socket in a temporary directory
 * removed at exit.
 */
#ifndef RAMPART_FUZZ_H
#define RAMPART_FUZZ_H

#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "util/log.h"
#include "util/net.h"

static inline void fuzz_quiet_logs(void)
{
	static int fd = -1;
	if (fd >= 0)
		return;
	signal(SIGPIPE, SIG_IGN);
	fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	log_init("fuzz", NULL);
	log_set_fd(fd);
	log_set_level(LL_DEBUG);
}

static char fuzz_sock_dir[64], fuzz_sock_path[128];

static inline void fuzz_sock_remove(void)
{
	unlink(fuzz_sock_path);
	rmdir(fuzz_sock_dir);
}

/* A listening unix socket (non-blocking) in a new temporary directory;
 * its path, for a client to connect to, in fuzz_sock_path.  One per
 * process; a failure ends the run. */
static inline int fuzz_unix_listen(void)
{
	snprintf(fuzz_sock_dir, sizeof(fuzz_sock_dir), "/tmp/rampart-fuzz.XXXXXX");
	if (!mkdtemp(fuzz_sock_dir)) {
		perror("fuzz: mkdtemp");
		abort();
	}
	snprintf(fuzz_sock_path, sizeof(fuzz_sock_path), "%s/sock", fuzz_sock_dir);
	atexit(fuzz_sock_remove);
	struct endpoint ep = { .is_unix = true };
	snprintf(ep.host, sizeof(ep.host), "%s", fuzz_sock_path);
	char why[256];
	int fd = net_listen(&ep, 64, why, sizeof(why));
	if (fd < 0) {
		fprintf(stderr, "fuzz: %s\n", why);
		abort();
	}
	return fd;
}

#endif
