/*
 * test_dovecot_auth.c — the Dovecot auth-client protocol (shared/mail/
 * dovecot_auth) against a scripted server on a UNIX socket in the same
 * event loop: OK and FAIL, temporary failures, a handshake without PLAIN,
 * garbage, a server that closes or never answers, no socket at all.  (The
 * integration tests run it against a real Dovecot.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "mail/dovecot_auth.h"
#include "testutil.h"

struct srv {
	struct event_base *base;
	struct evconnlistener *l;
	struct bufferevent *conn;
	char path[PATH_MAX];
	const char *handshake;          /* sent at once */
	const char *answer;             /* to each AUTH: "%s" is its id; NULL: silence */
	const char *nul_tail;           /* non-NULL: a NUL byte and this follow the answer */
	bool close_on_auth;
	char last_auth[1024];
	int conns;
};

static void srv_read(struct bufferevent *bev, void *arg)
{
	struct srv *s = arg;
	char *line;
	size_t n;
	while ((line = evbuffer_readln(bufferevent_get_input(bev), &n, EVBUFFER_EOL_LF))) {
		if (strncmp(line, "AUTH\t", 5) == 0) {
			snprintf(s->last_auth, sizeof(s->last_auth), "%s", line);
			if (s->close_on_auth) {
				bufferevent_free(bev);
				s->conn = NULL;
				free(line);
				return;
			}
			if (s->answer) {
				char id[16];
				snprintf(id, sizeof(id), "%.*s", (int)strcspn(line + 5, "\t"), line + 5);
				char out[512];
				snprintf(out, sizeof(out), s->answer, id);
				bufferevent_write(bev, out, strlen(out));
				if (s->nul_tail) {
					bufferevent_write(bev, "", 1);
					bufferevent_write(bev, s->nul_tail, strlen(s->nul_tail));
				}
			}
		}
		free(line);
	}
}

static void srv_event(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	struct srv *s = arg;
	bufferevent_free(bev);
	s->conn = NULL;
}

static void srv_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg)
{
	(void)l; (void)sa; (void)len;
	struct srv *s = arg;
	s->conns++;
	s->conn = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(s->conn, srv_read, NULL, srv_event, s);
	bufferevent_enable(s->conn, EV_READ);
	bufferevent_write(s->conn, s->handshake, strlen(s->handshake));
}

#define GOOD_HANDSHAKE "VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nSPID\t1\nCUID\t1\nCOOKIE\tabc\nDONE\n"

struct fx {
	char dir[PATH_MAX];
	int logfd;
	struct srv s;
	struct dovecot_auth *d;
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	assert_int_equal(tu_mkdtemp(f->dir, sizeof(f->dir), "dovecot"), 0);
	char log[PATH_MAX + 16];
	snprintf(log, sizeof(log), "%s/log", f->dir);
	f->logfd = tu_log_open(log);
	f->s.base = event_base_new();
	snprintf(f->s.path, sizeof(f->s.path), "%s/auth-client", f->dir);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->s.path);
	f->s.l = evconnlistener_new_bind(f->s.base, srv_accept, &f->s, LEV_OPT_CLOSE_ON_FREE, 16, (struct sockaddr *)&sa,
					 sizeof(sa));
	assert_non_null(f->s.l);
	f->s.handshake = GOOD_HANDSHAKE;
	f->d = dovecot_auth_new(f->s.base, f->s.path, 300);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	dovecot_auth_free(f->d);
	if (f->s.conn)
		bufferevent_free(f->s.conn);
	evconnlistener_free(f->s.l);
	event_base_free(f->s.base);
	tu_log_close(f->logfd);
	tu_rmtree(f->dir);
	free(f);
	return 0;
}

struct res {
	bool done;
	enum dovecot_result r;
	char reason[200];
};

static void done(void *arg, enum dovecot_result r, const char *reason)
{
	struct res *x = arg;
	assert_false(x->done);
	x->done = true;
	x->r = r;
	snprintf(x->reason, sizeof(x->reason), "%s", reason);
}

static struct res check(struct fx *f, const char *user, const char *pw)
{
	struct res x = { 0 };
	dovecot_auth_check(f->d, user, pw, "192.0.2.7", done, &x);
	assert_false(x.done);
	long long end = tu_mono_ms() + 3000;
	while (!x.done && tu_mono_ms() < end)
		event_base_loop(f->s.base, EVLOOP_ONCE);
	assert_true(x.done);
	return x;
}

static void test_ok_and_fail(void **state)
{
	struct fx *f = *state;
	f->s.answer = "OK\t%s\tuser=alice@example.test\n";
	struct res x = check(f, "alice@example.test", "pw");
	assert_int_equal(x.r, DOVECOT_OK);
	/* PLAIN, secured, the client address, the credentials in base64 */
	assert_non_null(strstr(f->s.last_auth, "\tPLAIN\tservice=smtp\tsecured\tnologin\trip=192.0.2.7\tresp="));
	assert_non_null(strstr(f->s.last_auth, "resp=AGFsaWNlQGV4YW1wbGUudGVzdABwdw=="));
	f->s.answer = "FAIL\t%s\tuser=alice@example.test\treason=bad password\n";
	x = check(f, "alice@example.test", "nope");
	assert_int_equal(x.r, DOVECOT_FAIL);
	assert_string_equal(x.reason, "dovecot: FAIL: bad password");
	f->s.answer = "FAIL\t%s\tuser=alice@example.test\tcode=temp_fail\n";
	assert_int_equal(check(f, "alice@example.test", "pw").r, DOVECOT_TEMPFAIL);
	f->s.answer = "FAIL\t%s\ttemp\n";
	assert_int_equal(check(f, "alice@example.test", "pw").r, DOVECOT_TEMPFAIL);
	assert_int_equal(f->s.conns, 1);        /* one connection for all of them */
}

static void test_broken_servers(void **state)
{
	struct fx *f = *state;
	/* no PLAIN offered: the connection is given up, the check is temporary */
	f->s.handshake = "VERSION\t1\t2\nMECH\tLOGIN\nDONE\n";
	f->s.answer = "OK\t%s\n";
	struct res x = check(f, "a", "b");
	assert_int_equal(x.r, DOVECOT_TEMPFAIL);
	assert_non_null(strstr(x.reason, "unexpected answer"));
	char log[PATH_MAX + 16];
	snprintf(log, sizeof(log), "%s/log", f->dir);
	assert_true(tu_file_has(log, "\"event\":\"dovecot.connection_lost\""));
	/* another major version */
	f->s.handshake = "VERSION\t2\t0\nMECH\tPLAIN\nDONE\n";
	assert_int_equal(check(f, "a", "b").r, DOVECOT_TEMPFAIL);
	/* garbage after the handshake */
	f->s.handshake = GOOD_HANDSHAKE;
	f->s.answer = "WHAT\n";
	assert_int_equal(check(f, "a", "b").r, DOVECOT_TEMPFAIL);
	/* a NUL in an answer: "OK<TAB>id<NUL>..." is not an OK (found by
	 * fuzz_dovecot_auth: the line was read as a C string) */
	f->s.answer = "OK\t%s";
	f->s.nul_tail = "\tuser=a\n";
	x = check(f, "a", "b");
	assert_int_equal(x.r, DOVECOT_TEMPFAIL);
	assert_non_null(strstr(x.reason, "unexpected answer"));
	f->s.nul_tail = NULL;
	/* an id written another way is not ours: "02", "+2", " 2", a
	 * negative number that wraps around to it (found by the fuzzer) */
	f->s.answer = "OK\t0%s\n";
	assert_int_equal(check(f, "a", "b").r, DOVECOT_TEMPFAIL);
	f->s.answer = "OK\t+%s\n";
	assert_int_equal(check(f, "a", "b").r, DOVECOT_TEMPFAIL);
	f->s.answer = "OK\t %s\n";
	assert_int_equal(check(f, "a", "b").r, DOVECOT_TEMPFAIL);
	/* closed on AUTH */
	f->s.answer = NULL;
	f->s.close_on_auth = true;
	x = check(f, "a", "b");
	assert_int_equal(x.r, DOVECOT_TEMPFAIL);
	assert_non_null(strstr(x.reason, "closed by dovecot"));
	/* silence: the deadline */
	f->s.close_on_auth = false;
	long long t0 = tu_mono_ms();
	x = check(f, "a", "b");
	assert_int_equal(x.r, DOVECOT_TEMPFAIL);
	assert_string_equal(x.reason, "dovecot auth: no answer in time");
	assert_true(tu_mono_ms() - t0 >= 290);
	/* and it recovers with a working server */
	f->s.answer = "OK\t%s\n";
	assert_int_equal(check(f, "a", "b").r, DOVECOT_OK);
}

static void test_no_socket(void **state)
{
	struct fx *f = *state;
	char path[PATH_MAX + 16];
	snprintf(path, sizeof(path), "%s/nonexistent", f->dir);
	struct dovecot_auth *d = dovecot_auth_new(f->s.base, path, 300);
	struct res x = { 0 };
	dovecot_auth_check(d, "a", "b", NULL, done, &x);
	assert_false(x.done);
	long long end = tu_mono_ms() + 3000;
	while (!x.done && tu_mono_ms() < end)
		event_base_loop(f->s.base, EVLOOP_ONCE);
	assert_true(x.done);
	assert_int_equal(x.r, DOVECOT_TEMPFAIL);
	/* pending checks at free: answered, temporary */
	struct res y = { 0 };
	f->s.answer = NULL;
	dovecot_auth_check(f->d, "a", "b", NULL, done, &y);
	dovecot_auth_free(d);
	dovecot_auth_free(f->d);
	f->d = NULL;
	assert_true(y.done);
	assert_int_equal(y.r, DOVECOT_TEMPFAIL);
	assert_string_equal(y.reason, "dovecot auth: shutting down");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ok_and_fail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_broken_servers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_socket, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
