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

/* A private redis-server for the tests of the state store and of the
 * checks that use it: on 127.0.0.1 at a free port (or the same port
 * again with same_port, after tu_redis_stop), with a unix socket and
 * password, no persistence, its files in dir; killed with the test
 * process if that dies.  tu_redis_start() returns false if redis-server
 * (Debian package redis-server) would not start. */
#include <stdbool.h>
#include <sys/types.h>
struct tu_redis {
	char dir[256];
	char sock[300];
	char password[64];
	int port;
	pid_t pid;
};
bool tu_redis_start(struct tu_redis *r, const char *dir, const char *password, bool same_port);
void tu_redis_stop(struct tu_redis *r);
/* The server answers PING on its port (NOAUTH counts as an answer). */
bool tu_redis_answers(int port);
int tu_free_port(void);

#endif
