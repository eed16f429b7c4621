/*
 * fuzz.h — what the libFuzzer targets in tests/fuzz share: log lines at
 * every level are formatted (so a bad format argument is found) and
 * written to /dev/null.
 */
#ifndef RAMPART_FUZZ_H
#define RAMPART_FUZZ_H

#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "util/log.h"

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

#endif
