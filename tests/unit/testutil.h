/*
 * testutil.h — helpers the unit tests share: a private temporary
 * directory per test, removed with everything in it afterwards; files,
 * programs and the log; a private redis-server.  testutil_checks.h has
 * the fixtures of the tests of checks run through the chain.
 */
#ifndef RAMPART_TESTUTIL_H
#define RAMPART_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>

/* mkdtemp() under $TMPDIR (or /tmp) named rampart-TAG-XXXXXX into out;
 * 0 on success, -1 on failure. */
int tu_mkdtemp(char *out, size_t outlen, const char *tag);
/* rm -rf dir (no symlinks followed). */
void tu_rmtree(const char *dir);
/* tu_rmtree(dir), unless RAMPART_TEST_KEEP is set: then dir is kept and
 * named on stderr. */
void tu_rmtree_unless_kept(const char *dir);

/* CLOCK_MONOTONIC in milliseconds. */
long long tu_mono_ms(void);

/* Create (or truncate) path with len bytes of data, or with text; the
 * test fails if that fails. */
void tu_write_bytes(const char *path, const void *data, size_t len);
void tu_write_file(const char *path, const char *text);
/* The whole file, NUL-terminated (its length in *lenp when lenp is not
 * NULL), to free; NULL if it cannot be opened. */
char *tu_read_file(const char *path, size_t *lenp);
/* A line of the file contains what (false when there is no file). */
bool tu_file_has(const char *path, const char *what);

/* Run the program argv[0] (a path) with its standard output and error
 * into the file out; its exit status, -1 if it did not exit. */
int tu_run_prog(const char *out, char *const argv[]);

/* The process's log (util/log.h) as stage and instance "mx", its JSON
 * lines into path (created or truncated); the descriptor, -1 if path
 * cannot be opened (then the log is left alone).  tu_log_close sends the
 * log back to stderr and closes fd. */
int tu_log_open(const char *path);
void tu_log_close(int fd);

/* Fail unless hay (NULL fails) contains needle. */
void tu_assert_contains(const char *hay, const char *needle);

/* libopendkim 2.11.0~beta2 (Debian 12) never releases the key of an
 * ed25519 signature (dkim_free() misses the ed25519 crypto structure;
 * fixed upstream in OpenDKIM PR #321).  mail/dkim_sign.c frees the
 * structure itself, but the reference to the parsed key it held stays
 * taken: those keys, made only by ed25519_key_copy, are suppressed under
 * LeakSanitizer (a few objects per key, not per signature).  The full
 * unwinder is needed to see that frame under OpenSSL's allocations.  Once
 * at file scope in a test program that signs or verifies with ed25519:
 * the sanitizers' hooks are the program's own. */
#define TU_LSAN_ALLOW_ED25519_KEY_LEAK()                                          \
	const char *__asan_default_options(void);                               \
	const char *__lsan_default_suppressions(void);                          \
	const char *__asan_default_options(void)                                \
	{                                                                       \
		return "fast_unwind_on_malloc=0:malloc_context_size=30";        \
	}                                                                       \
	const char *__lsan_default_suppressions(void)                           \
	{                                                                       \
		return "leak:ed25519_key_copy\n";                               \
	}

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
