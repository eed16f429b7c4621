/*
 * test_dns.c — the resolver against a local data file in a temporary
 * directory.  Nothing here reads the host's resolver configuration; the
 * only "server" is a UDP socket on 127.0.0.1 that never answers, used to
 * see whether queries leave (and to make one time out).  Waiting queries
 * (dns_query_wait) run on threads while the test's thread runs the loop.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "util/dns.h"
#include "util/log.h"

#define TLSA_HEX "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static const char LOCAL_DATA[] =
	"# a lab zone\n"
	"\n"
	"example.test. 300 IN MX 20 mx2.example.test.\n"
	"example.test. 300 IN MX 10 mx1.example.test.\n"
	"example.test. 300 IN TXT \"v=spf1 ip4:192.0.2.0/24 \" \"include:_spf.example.test -all\"\n"
	"example.test. 300 IN A 192.0.2.10\n"
	"   # an indented comment\n"
	"mx1.example.test. 300 IN A 192.0.2.1\n"
	"mx1.example.test. 300 IN AAAA 2001:db8::1\n"
	"mx2.example.test 300 IN A 192.0.2.2\n"
	"10.2.0.192.in-addr.arpa. 300 IN PTR example.test.\n"
	"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN PTR mx1.example.test.\n"
	"nullmx.example.test. 600 IN MX 0 .\n"
	"alias.example.test. 300 IN CNAME mx1.example.test.\n"
	"odd.example.test. 300 IN PTR a\\032b\\.c.example.test.\n"
	"_25._tcp.mx1.example.test. 300 IN TLSA 3 1 1 " TLSA_HEX "\n"
	"mx1.example.test. 300 IN SSHFP 1 1 0123456789abcdef0123456789abcdef01234567\n"
	"  long.example.test. 300 IN TXT \"one\" \"two\" \"three\"  \r\n";

struct fixture {
	char dir[64];
	char data[128];
	char bad[128];
	char resolv[128];
	struct event_base *base;
	int trap;                       /* UDP socket on 127.0.0.1 */
	int trap_port;
	char trap_fwd[64];              /* "127.0.0.1@port" */
};

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	if (!fx)
		return -1;
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/rampart-test-dns-XXXXXX");
	if (!mkdtemp(fx->dir))
		return -1;
	snprintf(fx->data, sizeof(fx->data), "%s/local.zone", fx->dir);
	snprintf(fx->bad, sizeof(fx->bad), "%s/bad.zone", fx->dir);
	snprintf(fx->resolv, sizeof(fx->resolv), "%s/resolv.conf", fx->dir);
	write_file(fx->data, LOCAL_DATA);
	write_file(fx->bad, "# ok so far\nexample.test. 300 IN A 192.0.2.1\nexample.test. 300 IN A not-an-address\n");
	write_file(fx->resolv, "# never queried by these tests\nnameserver 127.0.0.1\n");
	fx->base = event_base_new();
	if (!fx->base)
		return -1;

	fx->trap = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	if (fx->trap < 0 || bind(fx->trap, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
	    getsockname(fx->trap, (struct sockaddr *)&sin, &sl) != 0)
		return -1;
	fx->trap_port = ntohs(sin.sin_port);
	snprintf(fx->trap_fwd, sizeof(fx->trap_fwd), "127.0.0.1@%d", fx->trap_port);
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	unlink(fx->data);
	unlink(fx->bad);
	unlink(fx->resolv);
	rmdir(fx->dir);
	close(fx->trap);
	event_base_free(fx->base);
	free(fx);
	return 0;
}

/* Datagrams the trap got (drained). */
static int trap_count(struct fixture *fx, int wait_ms)
{
	int n = 0;
	struct pollfd p = { .fd = fx->trap, .events = POLLIN };
	while (poll(&p, 1, n ? 0 : wait_ms) > 0) {
		char buf[1500];
		if (recv(fx->trap, buf, sizeof(buf), 0) < 0)
			break;
		n++;
	}
	return n;
}

/* ---- collecting answers -------------------------------------------------- */

#define MAXRR 8

struct answer {
	bool done;
	enum dns_status status;
	size_t n;
	struct {
		int type;
		unsigned ttl;
		int pref;
		char text[256];
	} rr[MAXRR];
};

struct waiter {
	struct event_base *base;
	int outstanding;
	bool in_query;          /* set around dns_query() calls */
	bool called_inside;     /* a callback ran inside dns_query() */
};

struct req {
	struct waiter *w;
	struct answer a;
};

static void on_answer(void *arg, const struct dns_result *r)
{
	struct req *q = arg;
	if (q->w->in_query)
		q->w->called_inside = true;
	assert_false(q->a.done);
	q->a.done = true;
	q->a.status = r->status;
	q->a.n = r->n;
	assert_true(r->n <= MAXRR);
	for (size_t i = 0; i < r->n; i++) {
		q->a.rr[i].type = r->rr[i].type;
		q->a.rr[i].ttl = r->rr[i].ttl;
		q->a.rr[i].pref = r->rr[i].pref;
		snprintf(q->a.rr[i].text, sizeof(q->a.rr[i].text), "%s", r->rr[i].text);
	}
	if (--q->w->outstanding == 0)
		event_base_loopbreak(q->w->base);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	event_base_loopbreak(arg);
}

/* Run the loop until every started query has answered, or seconds pass. */
static void wait_all(struct waiter *w, int seconds)
{
	struct event *guard = evtimer_new(w->base, on_guard, w->base);
	struct timeval tv = { seconds, 0 };
	evtimer_add(guard, &tv);
	if (w->outstanding > 0)
		event_base_dispatch(w->base);
	event_free(guard);
	assert_int_equal(w->outstanding, 0);
}

static void start(struct dns *d, struct waiter *w, struct req *q, const char *name, int type)
{
	memset(q, 0, sizeof(*q));
	q->w = w;
	w->in_query = true;
	bool ok = dns_query(d, name, type, on_answer, q);
	w->in_query = false;
	assert_true(ok);
	assert_false(q->a.done);       /* never from inside dns_query() */
	w->outstanding++;
}

/* One query, waited for. */
static struct answer ask(struct dns *d, struct event_base *base, const char *name, int type)
{
	struct waiter w = { .base = base };
	struct req q;
	start(d, &w, &q, name, type);
	wait_all(&w, 10);
	assert_false(w.called_inside);
	return q.a;
}

static struct dns *local_resolver(struct fixture *fx, bool with_trap)
{
	struct dns_opts o = { .local_data = fx->data, .local_only = true, .timeout_ms = 5000 };
	const char *fwd[] = { fx->trap_fwd, NULL };
	char why[256] = "";
	struct dns *d = dns_new_fwd(fx->base, &o, with_trap ? fwd : NULL, why, sizeof(why));
	if (!d)
		fail_msg("dns_new: %s", why);
	return d;
}

/* ---- tests ---------------------------------------------------------------- */

static void test_a_aaaa(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);

	struct answer a = ask(d, fx->base, "mx1.example.test", 1);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.n, 1);
	assert_int_equal(a.rr[0].type, 1);
	assert_int_equal(a.rr[0].ttl, 300);
	assert_string_equal(a.rr[0].text, "192.0.2.1");

	a = ask(d, fx->base, "mx1.example.test.", 28);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.n, 1);
	assert_int_equal(a.rr[0].type, 28);
	assert_string_equal(a.rr[0].text, "2001:db8::1");

	/* A name given without its final dot in the data file. */
	a = ask(d, fx->base, "mx2.example.test", 1);
	assert_int_equal(a.status, DNS_OK);
	assert_string_equal(a.rr[0].text, "192.0.2.2");
	dns_free(d);
}

static int by_pref(const void *x, const void *y)
{
	const int *a = x, *b = y;
	return *a - *b;
}

static void test_mx(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);

	struct answer a = ask(d, fx->base, "example.test", 15);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.n, 2);
	int prefs[2] = { a.rr[0].pref, a.rr[1].pref };
	qsort(prefs, 2, sizeof(int), by_pref);
	assert_int_equal(prefs[0], 10);
	assert_int_equal(prefs[1], 20);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(a.rr[i].type, 15);
		if (a.rr[i].pref == 10)
			assert_string_equal(a.rr[i].text, "mx1.example.test");
		else
			assert_string_equal(a.rr[i].text, "mx2.example.test");
	}

	/* Null MX (RFC 7505): the root. */
	a = ask(d, fx->base, "nullmx.example.test", 15);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.n, 1);
	assert_int_equal(a.rr[0].pref, 0);
	assert_int_equal(a.rr[0].ttl, 600);
	assert_string_equal(a.rr[0].text, ".");
	dns_free(d);
}

static void test_txt(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	struct answer a = ask(d, fx->base, "example.test", 16);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.n, 1);
	assert_int_equal(a.rr[0].type, 16);
	assert_string_equal(a.rr[0].text, "v=spf1 ip4:192.0.2.0/24 include:_spf.example.test -all");

	a = ask(d, fx->base, "long.example.test", 16);
	assert_int_equal(a.status, DNS_OK);
	assert_string_equal(a.rr[0].text, "onetwothree");
	dns_free(d);
}

static void test_ptr_cname_tlsa(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	char rev[128];

	assert_true(dns_reverse_name("192.0.2.10", rev, sizeof(rev)));
	struct answer a = ask(d, fx->base, rev, 12);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.n, 1);
	assert_int_equal(a.rr[0].type, 12);
	assert_string_equal(a.rr[0].text, "example.test");

	assert_true(dns_reverse_name("2001:db8::1", rev, sizeof(rev)));
	a = ask(d, fx->base, rev, 12);
	assert_int_equal(a.status, DNS_OK);
	assert_string_equal(a.rr[0].text, "mx1.example.test");

	/* Labels with a space and a dot inside come back escaped. */
	a = ask(d, fx->base, "odd.example.test", 12);
	assert_int_equal(a.status, DNS_OK);
	assert_string_equal(a.rr[0].text, "a\\032b\\.c.example.test");

	a = ask(d, fx->base, "alias.example.test", 5);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.rr[0].type, 5);
	assert_string_equal(a.rr[0].text, "mx1.example.test");

	/* unbound does not follow a local CNAME for other types. */
	a = ask(d, fx->base, "alias.example.test", 1);
	assert_int_equal(a.status, DNS_NODATA);

	a = ask(d, fx->base, "_25._tcp.mx1.example.test", 52);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.rr[0].type, 52);
	assert_string_equal(a.rr[0].text, "3 1 1 " TLSA_HEX);

	/* Other types in the generic form (SSHFP here). */
	a = ask(d, fx->base, "mx1.example.test", 44);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.rr[0].type, 44);
	assert_string_equal(a.rr[0].text, "\\# 22 0101" "0123456789abcdef0123456789abcdef01234567");
	dns_free(d);
}

static void test_nxdomain_nodata(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, true);

	struct answer a = ask(d, fx->base, "nothere.example.test", 1);
	assert_int_equal(a.status, DNS_NXDOMAIN);
	assert_int_equal(a.n, 0);
	a = ask(d, fx->base, "www.example.org", 15);
	assert_int_equal(a.status, DNS_NXDOMAIN);
	a = ask(d, fx->base, "example.test", 28);   /* the name exists, not the type */
	assert_int_equal(a.status, DNS_NODATA);
	assert_int_equal(a.n, 0);

	/* local_only: the forwarder was set but nothing was sent to it. */
	assert_int_equal(trap_count(fx, 200), 0);
	dns_free(d);
}

static void test_many_at_once(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	struct waiter w = { .base = fx->base };
	struct req q[4];
	start(d, &w, &q[0], "mx1.example.test", 1);
	start(d, &w, &q[1], "example.test", 15);
	start(d, &w, &q[2], "nothere.example.test", 16);
	start(d, &w, &q[3], "example.test", 16);
	wait_all(&w, 10);
	assert_false(w.called_inside);
	assert_int_equal(q[0].a.status, DNS_OK);
	assert_int_equal(q[1].a.status, DNS_OK);
	assert_int_equal(q[1].a.n, 2);
	assert_int_equal(q[2].a.status, DNS_NXDOMAIN);
	assert_int_equal(q[3].a.status, DNS_OK);
	dns_free(d);
}

/* A callback that starts the next query: MX, then A of the best exchange. */
struct chain {
	struct dns *d;
	struct waiter *w;
	struct req a;
	bool mx_seen;
};

static void on_mx_then_a(void *arg, const struct dns_result *r)
{
	struct chain *c = arg;
	c->mx_seen = true;
	assert_int_equal(r->status, DNS_OK);
	const struct dns_rr *best = NULL;
	for (size_t i = 0; i < r->n; i++)
		if (!best || r->rr[i].pref < best->pref)
			best = &r->rr[i];
	assert_non_null(best);
	start(c->d, c->w, &c->a, best->text, 1);
	c->w->outstanding--;
}

static void test_query_from_callback(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	struct waiter w = { .base = fx->base };
	struct chain c = { .d = d, .w = &w };
	assert_true(dns_query(d, "example.test", 15, on_mx_then_a, &c));
	w.outstanding = 1;
	wait_all(&w, 10);
	assert_true(c.mx_seen);
	assert_true(c.a.a.done);
	assert_int_equal(c.a.a.status, DNS_OK);
	assert_string_equal(c.a.a.rr[0].text, "192.0.2.1");
	dns_free(d);
}

/* A callback that frees the resolver while another query is under way. */
struct freer {
	struct dns *d;
	int calls;
};

static void on_free_resolver(void *arg, const struct dns_result *r)
{
	(void)r;
	struct freer *f = arg;
	f->calls++;
	dns_free(f->d);
	f->d = NULL;
}

static void test_free_from_callback(void **state)
{
	struct fixture *fx = *state;
	struct freer f = { .d = local_resolver(fx, false) };
	assert_true(dns_query(f.d, "mx1.example.test", 1, on_free_resolver, &f));
	assert_true(dns_query(f.d, "mx2.example.test", 1, on_free_resolver, &f));
	for (int i = 0; i < 200 && f.calls == 0; i++) {
		event_base_loop(fx->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		usleep(5000);
	}
	assert_int_equal(f.calls, 1);
	for (int i = 0; i < 10; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
	assert_int_equal(f.calls, 1);
}

static void on_never(void *arg, const struct dns_result *r)
{
	(void)r;
	*(int *)arg += 1;
}

static void test_free_with_pending(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	int calls = 0;
	assert_true(dns_query(d, "mx1.example.test", 1, on_never, &calls));
	assert_true(dns_query(d, "example.test", 15, on_never, &calls));
	dns_free(d);
	for (int i = 0; i < 10; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
	assert_int_equal(calls, 0);
	dns_free(NULL);
}

static void test_timeout(void **state)
{
	struct fixture *fx = *state;
	/* Not local_only: unknown names go to the forwarder, which is the
	 * silent trap on 127.0.0.1. */
	struct dns_opts o = { .local_data = fx->data, .timeout_ms = 300 };
	const char *fwd[] = { fx->trap_fwd, NULL };
	char why[256] = "";
	struct dns *d = dns_new_fwd(fx->base, &o, fwd, why, sizeof(why));
	assert_non_null(d);
	trap_count(fx, 0);

	/* Local data still answers at once. */
	struct answer a = ask(d, fx->base, "mx1.example.test", 1);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(trap_count(fx, 0), 0);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	a = ask(d, fx->base, "elsewhere.example.org", 1);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	assert_int_equal(a.status, DNS_TEMPFAIL);
	assert_true(ms >= 250);
	assert_true(ms < 5000);
	assert_true(trap_count(fx, 100) >= 1);  /* the query did go out, to loopback */
	dns_free(d);
	trap_count(fx, 50);
}

/* Deadlines so short that answers and timeouts cross: an answer that
 * arrives as its query times out, or is cancelled, is delivered at most
 * once and never after the query is gone (ASan checks the second). */
static void test_timeouts_cross_answers(void **state)
{
	struct fixture *fx = *state;
	struct dns_opts o = { .local_data = fx->data, .local_only = true, .timeout_ms = 1 };
	char why[256] = "";
	struct dns *d = dns_new(fx->base, &o, why, sizeof(why));
	assert_non_null(d);
	enum { N = 300 };
	struct req *q = calloc(N, sizeof(*q));
	struct waiter w = { .base = fx->base };
	size_t ok = 0, tempfail = 0;
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++)
			start(d, &w, &q[i], i % 2 ? "mx1.example.test" : "example.test", 1);
		/* a third cancelled at once: never called back */
		for (int i = 0; i < N; i += 3) {
			dns_cancel(d, &q[i]);
			w.outstanding--;
		}
		wait_all(&w, 20);
		for (int i = 0; i < N; i++) {
			if (i % 3 == 0) {
				assert_false(q[i].a.done);
				continue;
			}
			assert_true(q[i].a.done);
			assert_true(q[i].a.status == DNS_OK || q[i].a.status == DNS_TEMPFAIL);
			ok += q[i].a.status == DNS_OK;
			tempfail += q[i].a.status == DNS_TEMPFAIL;
		}
		/* stragglers of the cancelled ones must not call back later */
		for (int k = 0; k < 20; k++)
			event_base_loop(fx->base, EVLOOP_NONBLOCK);
		for (int i = 0; i < N; i += 3)
			assert_false(q[i].a.done);
	}
	print_message("answers %zu, timeouts %zu (1 ms deadline)\n", ok, tempfail);
	free(q);
	dns_free(d);
}

static void test_bad_local_data(void **state)
{
	struct fixture *fx = *state;
	char why[512] = "";
	struct dns_opts o = { .local_data = fx->bad, .local_only = true };
	assert_null(dns_new(fx->base, &o, why, sizeof(why)));
	char want[160];
	snprintf(want, sizeof(want), "%s:3:", fx->bad);
	if (!strstr(why, want))
		fail_msg("why=\"%s\", wanted \"%s\"", why, want);
	assert_non_null(strstr(why, "not-an-address"));

	char missing[160];
	snprintf(missing, sizeof(missing), "%s/missing.zone", fx->dir);
	o.local_data = missing;
	why[0] = '\0';
	assert_null(dns_new(fx->base, &o, why, sizeof(why)));
	assert_non_null(strstr(why, missing));

	/* A missing resolv.conf, named in the reason. */
	struct dns_opts o2 = { .resolv_conf = missing };
	why[0] = '\0';
	assert_null(dns_new(fx->base, &o2, why, sizeof(why)));
	assert_non_null(strstr(why, missing));

	const char *badfwd[] = { "not an address", NULL };
	why[0] = '\0';
	assert_null(dns_new_fwd(fx->base, &o2, badfwd, why, sizeof(why)));
	assert_non_null(strstr(why, "not an address"));
}

static void test_resolv_conf(void **state)
{
	struct fixture *fx = *state;
	/* A resolv.conf of our own; only local data is asked for, so its
	 * server is never used. */
	struct dns_opts o = { .local_data = fx->data, .resolv_conf = fx->resolv };
	char why[256] = "";
	struct dns *d = dns_new(fx->base, &o, why, sizeof(why));
	if (!d)
		fail_msg("dns_new: %s", why);
	struct answer a = ask(d, fx->base, "example.test", 15);
	assert_int_equal(a.status, DNS_OK);
	assert_int_equal(a.n, 2);
	dns_free(d);
}

static void test_bad_queries(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	int calls = 0;
	assert_false(dns_query(d, "", 1, on_never, &calls));
	assert_false(dns_query(d, NULL, 1, on_never, &calls));
	assert_false(dns_query(d, "example.test", 0, on_never, &calls));
	char longname[300];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_false(dns_query(d, longname, 1, on_never, &calls));
	for (int i = 0; i < 5; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
	assert_int_equal(calls, 0);
	dns_free(d);
}

static void test_reverse_name(void **state)
{
	(void)state;
	char out[128];
	assert_true(dns_reverse_name("192.0.2.1", out, sizeof(out)));
	assert_string_equal(out, "1.2.0.192.in-addr.arpa");
	assert_true(dns_reverse_name("10.0.0.254", out, sizeof(out)));
	assert_string_equal(out, "254.0.0.10.in-addr.arpa");
	assert_true(dns_reverse_name("2001:db8::1", out, sizeof(out)));
	assert_string_equal(out, "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa");
	assert_true(dns_reverse_name("2001:DB8:ABCD:12::f0", out, sizeof(out)));
	assert_string_equal(out, "0.f.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.1.0.0.d.c.b.a.8.b.d.0.1.0.0.2.ip6.arpa");
	assert_false(dns_reverse_name("example.test", out, sizeof(out)));
	assert_false(dns_reverse_name("192.0.2", out, sizeof(out)));
	assert_false(dns_reverse_name("", out, sizeof(out)));
	assert_false(dns_reverse_name("192.0.2.1", out, 10));      /* too small */
	assert_string_equal(out, "");
	assert_true(dns_reverse_name("192.0.2.1", out, 23));       /* exactly enough */
}

/* ---- waiting queries (dns_query_wait, worker threads) -------------------- */

struct wjob {
	struct dns *d;
	const char *name;
	int type;
	long long timeout_ms;
	bool ok;
	struct dns_result res;
	long ms;
	int finished;
};

static void *wait_main(void *arg)
{
	struct wjob *j = arg;
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	j->ok = dns_query_wait(j->d, j->name, j->type, j->timeout_ms, &j->res);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	j->ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	__atomic_store_n(&j->finished, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void on_nothing(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what; (void)arg;
}

/* Each job waits on a thread of its own while this thread runs the loop. */
static void run_waits(struct event_base *base, struct wjob *jobs, size_t n)
{
	pthread_t th[16];
	assert_true(n <= 16);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(pthread_create(&th[i], NULL, wait_main, &jobs[i]), 0);
	struct event *tick = event_new(base, -1, EV_PERSIST, on_nothing, NULL);
	struct timeval tv = { 0, 10000 };
	event_add(tick, &tv);
	for (;;) {
		size_t done = 0;
		for (size_t i = 0; i < n; i++)
			done += (size_t)__atomic_load_n(&jobs[i].finished, __ATOMIC_ACQUIRE);
		if (done == n)
			break;
		event_base_loop(base, EVLOOP_ONCE);
	}
	event_free(tick);
	for (size_t i = 0; i < n; i++)
		pthread_join(th[i], NULL);
}

static void test_wait_from_threads(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	struct wjob j[] = {
		{ .d = d, .name = "mx1.example.test", .type = 1 },
		{ .d = d, .name = "example.test", .type = 15 },
		{ .d = d, .name = "nothing.example.test", .type = 1 },
		{ .d = d, .name = "mx2.example.test", .type = 16 },
		{ .d = d, .name = "long.example.test", .type = 16 },
		{ .d = d, .name = "mx1.example.test", .type = 28 },
	};
	run_waits(fx->base, j, sizeof(j) / sizeof(j[0]));
	for (size_t i = 0; i < sizeof(j) / sizeof(j[0]); i++)
		assert_true(j[i].ok);
	assert_int_equal(j[0].res.status, DNS_OK);
	assert_int_equal(j[0].res.n, 1);
	assert_string_equal(j[0].res.rr[0].text, "192.0.2.1");
	assert_int_equal(j[1].res.status, DNS_OK);
	assert_int_equal(j[1].res.n, 2);
	assert_int_equal(j[2].res.status, DNS_NXDOMAIN);
	assert_int_equal(j[3].res.status, DNS_NODATA);
	assert_int_equal(j[4].res.status, DNS_OK);
	assert_string_equal(j[4].res.rr[0].text, "onetwothree");
	assert_int_equal(j[4].res.rr[0].len, 11);
	assert_int_equal(j[5].res.status, DNS_OK);
	assert_string_equal(j[5].res.rr[0].text, "2001:db8::1");
	for (size_t i = 0; i < sizeof(j) / sizeof(j[0]); i++)
		dns_result_free(&j[i].res);
	dns_free(d);
}

static void test_wait_timeout(void **state)
{
	struct fixture *fx = *state;
	struct dns_opts o = { .local_data = fx->data, .timeout_ms = 300 };
	const char *fwd[] = { fx->trap_fwd, NULL };
	char why[256] = "";
	struct dns *d = dns_new_fwd(fx->base, &o, fwd, why, sizeof(why));
	assert_non_null(d);
	struct wjob j[] = {
		{ .d = d, .name = "elsewhere.example.org", .type = 1 },                 /* the resolver's 300 ms */
		{ .d = d, .name = "other.example.org", .type = 1, .timeout_ms = 100 },  /* its own, shorter */
		{ .d = d, .name = "mx1.example.test", .type = 1, .timeout_ms = 100 },   /* local: at once */
	};
	run_waits(fx->base, j, 3);
	assert_true(j[0].ok);
	assert_int_equal(j[0].res.status, DNS_TEMPFAIL);
	assert_true(j[0].ms >= 250 && j[0].ms < 3000);
	assert_int_equal(j[1].res.status, DNS_TEMPFAIL);
	assert_true(j[1].ms >= 80 && j[1].ms < 250);
	assert_int_equal(j[2].res.status, DNS_OK);
	for (size_t i = 0; i < 3; i++)
		dns_result_free(&j[i].res);
	/* answers that come after their waiter gave up are dropped */
	for (int i = 0; i < 20; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
	dns_free(d);
	trap_count(fx, 50);
}

/* On the loop's own thread it would wait for itself: refused at once. */
static void test_wait_on_loop_thread(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_resolver(fx, false);
	struct dns_result r;
	assert_false(dns_query_wait(d, "mx1.example.test", 1, 0, &r));
	assert_int_equal(r.status, DNS_TEMPFAIL);
	assert_int_equal(r.n, 0);
	dns_result_free(&r);
	dns_free(d);
}

static void test_status_name(void **state)
{
	(void)state;
	assert_string_equal(dns_status_name(DNS_OK), "ok");
	assert_string_equal(dns_status_name(DNS_NXDOMAIN), "nxdomain");
	assert_string_equal(dns_status_name(DNS_NODATA), "nodata");
	assert_string_equal(dns_status_name(DNS_TEMPFAIL), "tempfail");
	assert_string_equal(dns_status_name(DNS_BOGUS), "bogus");
}

int main(void)
{
	log_init("test", "test_dns");
	log_set_level(LL_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_aaaa),
		cmocka_unit_test(test_mx),
		cmocka_unit_test(test_txt),
		cmocka_unit_test(test_ptr_cname_tlsa),
		cmocka_unit_test(test_nxdomain_nodata),
		cmocka_unit_test(test_many_at_once),
		cmocka_unit_test(test_query_from_callback),
		cmocka_unit_test(test_free_from_callback),
		cmocka_unit_test(test_free_with_pending),
		cmocka_unit_test(test_timeout),
		cmocka_unit_test(test_timeouts_cross_answers),
		cmocka_unit_test(test_bad_local_data),
		cmocka_unit_test(test_resolv_conf),
		cmocka_unit_test(test_bad_queries),
		cmocka_unit_test(test_reverse_name),
		cmocka_unit_test(test_status_name),
		cmocka_unit_test(test_wait_from_threads),
		cmocka_unit_test(test_wait_timeout),
		cmocka_unit_test(test_wait_on_loop_thread),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
