/*
 * test_route.c — MX routing and smarthost lists against a resolver fed
 * from a local data file in a temporary directory.  No host DNS: the only
 * "server" is a UDP socket on 127.0.0.1 that never answers, which the
 * timeout tests use as the forwarder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "mail/route.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/dns.h"
#include "util/log.h"
#include "util/net.h"
#include "testutil.h"

#define NDOMAINS 50     /* d0.test .. d49.test, one MX each */
#define NMANY 30        /* many.test has this many MX hosts */

static const char LOCAL_DATA[] =
	"# two preferences, several hosts each; a2 has A and AAAA\n"
	"multi.test. 300 IN MX 10 a1.multi.test.\n"
	"multi.test. 300 IN MX 10 a2.multi.test.\n"
	"multi.test. 300 IN MX 10 a3.multi.test.\n"
	"multi.test. 300 IN MX 20 b1.multi.test.\n"
	"multi.test. 300 IN MX 20 b2.multi.test.\n"
	"a1.multi.test. 300 IN A 192.0.2.11\n"
	"a2.multi.test. 120 IN A 192.0.2.12\n"
	"a2.multi.test. 300 IN AAAA 2001:db8::12\n"
	"a3.multi.test. 300 IN A 192.0.2.13\n"
	"b1.multi.test. 300 IN A 192.0.2.21\n"
	"b2.multi.test. 300 IN A 192.0.2.22\n"
	"# one MX with both families\n"
	"dual.test. 300 IN MX 10 mx.dual.test.\n"
	"mx.dual.test. 300 IN A 192.0.2.31\n"
	"mx.dual.test. 300 IN AAAA 2001:db8::31\n"
	"# no MX: the domain's own address\n"
	"implicit.test. 300 IN A 192.0.2.41\n"
	"implicit.test. 300 IN TXT \"v=spf1 -all\"\n"
	"# neither MX nor address\n"
	"noaddr.test. 300 IN TXT \"nothing here\"\n"
	"nullmx.test. 300 IN MX 0 .\n"
	"# the best MX has no address (NODATA), the next does not exist, the third works\n"
	"partial.test. 300 IN MX 5 dead.partial.test.\n"
	"partial.test. 300 IN MX 10 gone.partial.test.\n"
	"partial.test. 300 IN MX 20 live.partial.test.\n"
	"dead.partial.test. 300 IN TXT \"no address\"\n"
	"live.partial.test. 300 IN A 192.0.2.51\n"
	"# no MX host resolves\n"
	"allbad.test. 300 IN MX 10 dead.allbad.test.\n"
	"allbad.test. 300 IN MX 20 gone.allbad.test.\n"
	"dead.allbad.test. 300 IN TXT \"no address\"\n"
	"# two MX names, one address: tried once\n"
	"same.test. 300 IN MX 10 x.same.test.\n"
	"same.test. 300 IN MX 20 y.same.test.\n"
	"x.same.test. 300 IN A 192.0.2.61\n"
	"y.same.test. 300 IN A 192.0.2.61\n"
	"# MX through ourselves\n"
	"loop.test. 300 IN MX 10 me.rampart.test.\n"
	"loop.test. 300 IN MX 20 other.loop.test.\n"
	"backup.test. 300 IN MX 10 primary.backup.test.\n"
	"backup.test. 300 IN MX 20 me.rampart.test.\n"
	"backup.test. 300 IN MX 30 tertiary.backup.test.\n"
	"primary.backup.test. 300 IN A 192.0.2.71\n"
	"tertiary.backup.test. 300 IN A 192.0.2.73\n"
	"me.rampart.test. 300 IN A 192.0.2.1\n"
	"other.loop.test. 300 IN A 192.0.2.72\n"
	"# MX hosts away from the local data (only the timeout resolver asks)\n"
	"tempmx.test. 300 IN MX 10 host.elsewhere.example.\n"
	"halftemp.test. 300 IN MX 10 host.elsewhere.example.\n"
	"halftemp.test. 300 IN MX 20 ok.halftemp.test.\n"
	"ok.halftemp.test. 300 IN A 192.0.2.81\n"
	"# smarthosts\n"
	"relay.test. 300 IN A 192.0.2.91\n"
	"relay.test. 300 IN AAAA 2001:db8::91\n"
	"relay2.test. 300 IN A 192.0.2.92\n"
	"v6only.test. 300 IN MX 10 mx.v6only.test.\n"
	"mx.v6only.test. 300 IN AAAA 2001:db8::93\n";

struct fixture {
	char dir[128];
	char data[192];
	struct event_base *base;
	int trap;               /* UDP socket on 127.0.0.1 that never answers */
	char trap_fwd[64];      /* "127.0.0.1@port" */
};

static int setup(void **state)
{
	struct fixture *fx = calloc(1, sizeof(*fx));
	if (!fx || tu_mkdtemp(fx->dir, sizeof(fx->dir), "test-route") != 0)
		return -1;
	snprintf(fx->data, sizeof(fx->data), "%s/local.zone", fx->dir);
	FILE *f = fopen(fx->data, "w");
	if (!f)
		return -1;
	fputs(LOCAL_DATA, f);
	for (int i = 0; i < NDOMAINS; i++) {
		fprintf(f, "d%d.test. 300 IN MX 10 mx.d%d.test.\n", i, i);
		fprintf(f, "mx.d%d.test. 300 IN A 198.51.100.%d\n", i, i + 1);
	}
	for (int i = 0; i < NMANY; i++) {
		fprintf(f, "many.test. 300 IN MX %d h%02d.many.test.\n", 10 + i, i);
		fprintf(f, "h%02d.many.test. 300 IN A 203.0.113.%d\n", i, i + 1);
	}
	if (fclose(f) != 0)
		return -1;
	fx->base = event_base_new();
	if (!fx->base)
		return -1;
	fx->trap = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	if (fx->trap < 0 || bind(fx->trap, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
	    getsockname(fx->trap, (struct sockaddr *)&sin, &sl) != 0)
		return -1;
	snprintf(fx->trap_fwd, sizeof(fx->trap_fwd), "127.0.0.1@%d", ntohs(sin.sin_port));
	*state = fx;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *fx = *state;
	tu_rmtree(fx->dir);
	close(fx->trap);
	event_base_free(fx->base);
	free(fx);
	return 0;
}

/* Local data only: unknown names are NXDOMAIN, nothing leaves. */
static struct dns *local_dns(struct fixture *fx)
{
	struct dns_opts o = { .local_data = fx->data, .local_only = true, .timeout_ms = 5000 };
	char why[256] = "";
	struct dns *d = dns_new(fx->base, &o, why, sizeof(why));
	if (!d)
		fail_msg("dns_new: %s", why);
	return d;
}

/* Local data, everything else forwarded to the silent trap: 300 ms timeouts. */
static struct dns *trap_dns(struct fixture *fx)
{
	struct dns_opts o = { .local_data = fx->data, .timeout_ms = 300 };
	const char *fwd[] = { fx->trap_fwd, NULL };
	char why[256] = "";
	struct dns *d = dns_new_fwd(fx->base, &o, fwd, why, sizeof(why));
	if (!d)
		fail_msg("dns_new_fwd: %s", why);
	return d;
}

/* ---- collecting outcomes ------------------------------------------------- */

struct waiter {
	struct event_base *base;
	int outstanding;
	bool starting;          /* set around route_lookup() calls */
	bool called_inside;     /* a callback ran inside one */
};

struct got {
	struct waiter *w;
	int calls;
	struct route_result r;
};

static void on_route(void *arg, const struct route_result *r)
{
	struct got *g = arg;
	if (g->w->starting)
		g->w->called_inside = true;
	g->calls++;
	if (g->calls == 1)
		route_result_copy(&g->r, r);
	if (--g->w->outstanding == 0)
		event_base_loopbreak(g->w->base);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	event_base_loopbreak(arg);
}

static void wait_all(struct waiter *w, int seconds)
{
	struct event *guard = evtimer_new(w->base, on_guard, w->base);
	struct timeval tv = { seconds, 0 };
	evtimer_add(guard, &tv);
	if (w->outstanding > 0)
		event_base_dispatch(w->base);
	event_free(guard);
	assert_int_equal(w->outstanding, 0);
	assert_false(w->called_inside);
}

static struct route_lookup *start(struct fixture *fx, struct dns *d, struct waiter *w,
				  struct got *g, const char *domain, const struct route_opts *o)
{
	memset(g, 0, sizeof(*g));
	g->w = w;
	w->starting = true;
	struct route_lookup *l = route_lookup(fx->base, d, domain, 25, o, on_route, g);
	w->starting = false;
	assert_non_null(l);
	assert_int_equal(g->calls, 0);
	w->outstanding++;
	return l;
}

/* One lookup, waited for; the caller clears g->r. */
static void route(struct fixture *fx, struct dns *d, struct got *g, const char *domain,
		  const struct route_opts *o)
{
	struct waiter w = { .base = fx->base };
	start(fx, d, &w, g, domain, o);
	wait_all(&w, 10);
	assert_int_equal(g->calls, 1);
}

static void expect_fail(struct fixture *fx, struct dns *d, const char *domain,
			const struct route_opts *o, int code, const char *enh)
{
	struct got g;
	route(fx, d, &g, domain, o);
	if (g.r.code != code || strcmp(g.r.enh, enh) != 0)
		fail_msg("%s: got %d %s \"%s\", wanted %d %s", domain, g.r.code, g.r.enh, g.r.text,
			 code, enh);
	assert_int_equal(g.r.n, 0);
	assert_null(g.r.hops);
	assert_non_null(strstr(g.r.text, domain));
	route_result_clear(&g.r);
}

static int hop_index(const struct route_result *r, const char *addr)
{
	for (size_t i = 0; i < r->n; i++)
		if (strcmp(r->hops[i].addr, addr) == 0)
			return (int)i;
	return -1;
}

/* Run the loop briefly until *live drops to 0 (cancelled lookups drain). */
static void drain(struct fixture *fx, unsigned *live)
{
	for (int i = 0; i < 400 && *live; i++) {
		event_base_loop(fx->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
		if (*live)
			usleep(5000);
	}
	assert_int_equal(*live, 0);
}

/* ---- tests ----------------------------------------------------------------- */

/* Preference order, and equal preferences spread over several orders. */
static void test_mx_order_and_spreading(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	char orders10[50][64], orders20[50][64];
	int distinct10 = 0, distinct20 = 0;
	for (int run = 0; run < 50; run++) {
		struct got g;
		route(fx, d, &g, "multi.test", NULL);
		const struct route_result *r = &g.r;
		assert_int_equal(r->code, 0);
		assert_int_equal(r->via, ROUTE_VIA_MX);
		assert_int_equal(r->n, 6);
		assert_int_equal(r->ttl, 120);
		/* pref 10 first (4 addresses over 3 hosts), then pref 20 */
		for (size_t i = 0; i < 4; i++)
			assert_int_equal(r->hops[i].pref, 10);
		for (size_t i = 4; i < 6; i++)
			assert_int_equal(r->hops[i].pref, 20);
		for (size_t i = 0; i < r->n; i++) {
			assert_int_equal(r->hops[i].port, 25);
			assert_false(r->hops[i].secure);
		}
		/* a2: its A right before its AAAA */
		int v4 = hop_index(r, "192.0.2.12"), v6 = hop_index(r, "2001:db8::12");
		assert_true(v4 >= 0 && v6 == v4 + 1);
		assert_string_equal(r->hops[v4].host, "a2.multi.test");
		assert_string_equal(r->hops[v6].host, "a2.multi.test");

		char o10[64] = "", o20[64] = "";
		for (size_t i = 0; i < r->n; i++) {
			char *o = r->hops[i].pref == 10 ? o10 : o20;
			char tag[8];
			snprintf(tag, sizeof(tag), "%.2s ", r->hops[i].host);
			if (!strstr(o, tag))
				snprintf(o + strlen(o), 64 - strlen(o), "%s", tag);
		}
		assert_int_equal(strlen(o10), 9);
		assert_int_equal(strlen(o20), 6);
		bool seen = false;
		for (int k = 0; k < distinct10; k++)
			seen = seen || strcmp(orders10[k], o10) == 0;
		if (!seen)
			strcpy(orders10[distinct10++], o10);
		seen = false;
		for (int k = 0; k < distinct20; k++)
			seen = seen || strcmp(orders20[k], o20) == 0;
		if (!seen)
			strcpy(orders20[distinct20++], o20);
		route_result_clear(&g.r);
	}
	if (distinct10 < 2 || distinct20 < 2)
		fail_msg("equal preferences not spread: %d orders at 10, %d at 20", distinct10,
			 distinct20);
	dns_free(d);
}

static void test_mx_host_a_and_aaaa(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	struct got g;

	route(fx, d, &g, "dual.test", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.n, 2);
	assert_string_equal(g.r.hops[0].host, "mx.dual.test");
	assert_string_equal(g.r.hops[0].addr, "192.0.2.31");
	assert_string_equal(g.r.hops[1].host, "mx.dual.test");
	assert_string_equal(g.r.hops[1].addr, "2001:db8::31");
	assert_int_equal(g.r.hops[0].pref, 10);
	route_result_clear(&g.r);

	/* A final dot is the same domain; IPv6 first when asked. */
	struct route_opts o = { .family = ROUTE_IPV6_FIRST };
	route(fx, d, &g, "dual.test.", &o);
	assert_int_equal(g.r.n, 2);
	assert_string_equal(g.r.hops[0].addr, "2001:db8::31");
	assert_string_equal(g.r.hops[1].addr, "192.0.2.31");
	route_result_clear(&g.r);

	o.family = ROUTE_IPV4_ONLY;
	route(fx, d, &g, "dual.test", &o);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].addr, "192.0.2.31");
	route_result_clear(&g.r);

	o.family = ROUTE_IPV6_ONLY;
	route(fx, d, &g, "dual.test", &o);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].addr, "2001:db8::31");
	route_result_clear(&g.r);

	/* An MX with only AAAA, under IPv4 only: no usable address. */
	o.family = ROUTE_IPV4_ONLY;
	expect_fail(fx, d, "v6only.test", &o, 550, "5.4.4");
	dns_free(d);
}

static void test_implicit_mx(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	struct got g;
	route(fx, d, &g, "implicit.test", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.via, ROUTE_VIA_IMPLICIT_MX);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].host, "implicit.test");
	assert_string_equal(g.r.hops[0].addr, "192.0.2.41");
	assert_int_equal(g.r.hops[0].pref, 0);
	assert_int_equal(g.r.ttl, 300);
	route_result_clear(&g.r);

	/* Neither MX nor address. */
	expect_fail(fx, d, "noaddr.test", NULL, 550, "5.1.2");
	dns_free(d);
}

static void test_null_mx(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	expect_fail(fx, d, "nullmx.test", NULL, 556, "5.1.10");
	dns_free(d);
}

static void test_nxdomain(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	expect_fail(fx, d, "nothere.test", NULL, 550, "5.1.2");
	dns_free(d);
}

static void test_bad_domains(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	expect_fail(fx, d, "exa..mple.test", NULL, 550, "5.1.2");
	expect_fail(fx, d, "has space.test", NULL, 550, "5.1.2");
	expect_fail(fx, d, "b\xc3\xbc" "cher.test", NULL, 550, "5.1.2");
	expect_fail(fx, d, "", NULL, 550, "5.1.2");
	char longlabel[80];
	memset(longlabel, 'a', 64);
	strcpy(longlabel + 64, ".test");
	expect_fail(fx, d, longlabel, NULL, 550, "5.1.2");
	dns_free(d);
}

static void test_mx_without_address_skipped(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	struct got g;
	route(fx, d, &g, "partial.test", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].host, "live.partial.test");
	assert_string_equal(g.r.hops[0].addr, "192.0.2.51");
	assert_int_equal(g.r.hops[0].pref, 20);
	route_result_clear(&g.r);

	/* Two MX names for one address: one hop, at the better preference. */
	route(fx, d, &g, "same.test", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].host, "x.same.test");
	route_result_clear(&g.r);
	dns_free(d);
}

static void test_all_mx_unresolvable(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	expect_fail(fx, d, "allbad.test", NULL, 550, "5.4.4");
	dns_free(d);
}

static void test_timeouts(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = trap_dns(fx);

	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	/* The MX query itself times out. */
	expect_fail(fx, d, "slow.example.org", NULL, 451, "4.4.3");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	assert_true(ms >= 250 && ms < 5000);

	/* The only MX host times out. */
	expect_fail(fx, d, "tempmx.test", NULL, 451, "4.4.3");

	/* The best MX host times out, the backup answers: used. */
	struct got g;
	route(fx, d, &g, "halftemp.test", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].host, "ok.halftemp.test");
	route_result_clear(&g.r);
	dns_free(d);
}

static void test_address_literal(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	struct got g;
	route(fx, d, &g, "[192.0.2.99]", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.via, ROUTE_VIA_LITERAL);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].addr, "192.0.2.99");
	assert_string_equal(g.r.hops[0].host, "[192.0.2.99]");
	assert_int_equal(g.r.hops[0].port, 25);
	route_result_clear(&g.r);

	route(fx, d, &g, "[IPv6:2001:DB8::99]", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].addr, "2001:db8::99");
	route_result_clear(&g.r);

	expect_fail(fx, d, "[192.0.2.300]", NULL, 550, "5.1.2");
	expect_fail(fx, d, "[IPv6:192.0.2.1]", NULL, 550, "5.1.2");
	expect_fail(fx, d, "[mail.example]", NULL, 550, "5.1.2");
	struct route_opts o = { .family = ROUTE_IPV4_ONLY };
	expect_fail(fx, d, "[IPv6:2001:db8::99]", &o, 550, "5.4.4");
	dns_free(d);
}

static void test_self_mx(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	char *names[] = { "mx.other.test", "ME.rampart.test." };
	struct strlist self = { 2, names };
	struct route_opts o = { .self_names = &self, .log_id = "Q1" };

	/* We are the best MX: nowhere to go. */
	expect_fail(fx, d, "loop.test", &o, 554, "5.4.6");

	/* We are a backup: only the better MX is a candidate. */
	struct got g;
	route(fx, d, &g, "backup.test", &o);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.n, 1);
	assert_string_equal(g.r.hops[0].host, "primary.backup.test");
	route_result_clear(&g.r);

	/* Without the option, all three. */
	route(fx, d, &g, "backup.test", NULL);
	assert_int_equal(g.r.n, 3);
	route_result_clear(&g.r);
	dns_free(d);
}

static void test_hop_cap(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	struct got g;
	route(fx, d, &g, "many.test", NULL);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.n, ROUTE_MAX_HOPS_DEFAULT);
	for (size_t i = 0; i < g.r.n; i++)
		assert_int_equal(g.r.hops[i].pref, 10 + (int)i);
	route_result_clear(&g.r);

	struct route_opts o = { .max_hops = 3 };
	route(fx, d, &g, "multi.test", &o);
	assert_int_equal(g.r.n, 3);
	for (size_t i = 0; i < g.r.n; i++)
		assert_int_equal(g.r.hops[i].pref, 10);
	route_result_clear(&g.r);
	dns_free(d);
}

static void test_cancel(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	unsigned live = 0;
	struct route_opts o = { .live = &live };
	struct waiter w = { .base = fx->base };
	struct got g[4];

	/* Cancelled at once (MX query under way), a little later (MX or host
	 * queries under way), an address literal (nothing under way); one
	 * lookup left to run beside them. */
	route_cancel(start(fx, d, &w, &g[0], "multi.test", &o));
	struct route_lookup *l1 = start(fx, d, &w, &g[1], "dual.test", &o);
	struct route_lookup *keep = start(fx, d, &w, &g[2], "implicit.test", &o);
	route_cancel(start(fx, d, &w, &g[3], "[192.0.2.1]", &o));
	assert_int_equal(live, 3);      /* the literal one is gone already */
	w.outstanding = 1;              /* only "implicit.test" answers */
	for (int i = 0; i < 3; i++)
		event_base_loop(fx->base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
	route_cancel(l1);
	(void)keep;
	wait_all(&w, 10);
	drain(fx, &live);
	for (int i = 0; i < 10; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
	assert_int_equal(g[0].calls, 0);
	assert_int_equal(g[1].calls, 0);
	assert_int_equal(g[2].calls, 1);
	assert_int_equal(g[3].calls, 0);
	assert_int_equal(g[2].r.code, 0);
	route_result_clear(&g[2].r);
	route_cancel(NULL);
	dns_free(d);
}

/* Cancelled with queries certain to be in flight: the MX answer is local,
 * the host lookups go to the silent forwarder and hang until the 300 ms
 * resolver timeout; another lookup hangs on its MX query. */
static void test_cancel_in_flight(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = trap_dns(fx);
	unsigned live = 0;
	struct route_opts o = { .live = &live };
	struct waiter w = { .base = fx->base };
	struct got g[2];
	struct route_lookup *l0 = start(fx, d, &w, &g[0], "tempmx.test", &o);
	struct route_lookup *l1 = start(fx, d, &w, &g[1], "slow.example.org", &o);
	struct event *guard = evtimer_new(fx->base, on_guard, fx->base);
	struct timeval tv = { 0, 100 * 1000 };
	evtimer_add(guard, &tv);
	event_base_dispatch(fx->base);          /* 100 ms: MX answered, hosts pending */
	event_free(guard);
	assert_int_equal(g[0].calls + g[1].calls, 0);
	assert_int_equal(live, 2);
	route_cancel(l0);
	route_cancel(l1);
	route_cancel(l1);                       /* twice is harmless */
	assert_int_equal(live, 2);              /* still owed answers */
	drain(fx, &live);                       /* freed when the timeouts come */
	assert_int_equal(g[0].calls + g[1].calls, 0);
	dns_free(d);
}

/* Cancelling from inside the lookup's own callback is harmless. */
struct self_cancel {
	struct route_lookup *l;
	int calls;
	struct event_base *base;
};

static void on_route_cancel_self(void *arg, const struct route_result *r)
{
	struct self_cancel *s = arg;
	assert_int_equal(r->code, 0);
	s->calls++;
	route_cancel(s->l);
	event_base_loopbreak(s->base);
}

static void test_cancel_in_callback(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	unsigned live = 0;
	struct route_opts o = { .live = &live };
	struct self_cancel s = { .base = fx->base };
	s.l = route_lookup(fx->base, d, "dual.test", 25, &o, on_route_cancel_self, &s);
	event_base_dispatch(fx->base);
	assert_int_equal(s.calls, 1);
	assert_int_equal(live, 0);
	dns_free(d);
}

static void test_concurrent(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	unsigned live = 0;
	struct route_opts o = { .live = &live };
	enum { N = 100 };
	struct got *g = xcalloc(N, sizeof(*g));
	struct waiter w = { .base = fx->base };
	static const char *const others[] = { "multi.test", "dual.test", "implicit.test",
					      "nullmx.test", "nothere.test", "partial.test",
					      "allbad.test", "[192.0.2.7]" };
	char name[64];
	for (int i = 0; i < N; i++) {
		const char *dom = name;
		if (i < 2 * NDOMAINS && i % 2 == 0)
			snprintf(name, sizeof(name), "d%d.test", i / 2);
		else
			dom = others[(i / 2) % 8];
		start(fx, d, &w, &g[i], dom, &o);
	}
	assert_int_equal(live, N);
	wait_all(&w, 20);
	assert_int_equal(live, 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(g[i].calls, 1);
		const struct route_result *r = &g[i].r;
		if (i % 2 == 0) {
			snprintf(name, sizeof(name), "198.51.100.%d", i / 2 + 1);
			assert_int_equal(r->code, 0);
			assert_int_equal(r->n, 1);
			assert_string_equal(r->hops[0].addr, name);
			snprintf(name, sizeof(name), "mx.d%d.test", i / 2);
			assert_string_equal(r->hops[0].host, name);
		} else {
			switch ((i / 2) % 8) {
			case 0: assert_int_equal(r->n, 6); break;
			case 1: assert_int_equal(r->n, 2); break;
			case 2: assert_int_equal(r->n, 1); break;
			case 3: assert_int_equal(r->code, 556); break;
			case 4: assert_int_equal(r->code, 550); break;
			case 5: assert_int_equal(r->n, 1); break;
			case 6: assert_string_equal(r->enh, "5.4.4"); break;
			case 7: assert_string_equal(r->hops[0].addr, "192.0.2.7"); break;
			}
		}
		route_result_clear(&g[i].r);
	}
	free(g);
	dns_free(d);
}

static void test_smarthosts(void **state)
{
	struct fixture *fx = *state;
	struct dns *d = local_dns(fx);
	struct endpoint ep[5];
	memset(ep, 0, sizeof(ep));
	snprintf(ep[0].host, sizeof(ep[0].host), "relay.test");
	ep[0].port = 587;
	ep[1].is_unix = true;
	snprintf(ep[1].host, sizeof(ep[1].host), "/run/relay.sock");
	snprintf(ep[2].host, sizeof(ep[2].host), "nothere.test");
	ep[2].port = 25;
	snprintf(ep[3].host, sizeof(ep[3].host), "2001:db8::200");
	ep[3].port = 2525;
	snprintf(ep[4].host, sizeof(ep[4].host), "relay2.test");
	ep[4].port = 465;

	struct waiter w = { .base = fx->base };
	struct got g = { .w = &w };
	w.starting = true;
	route_smarthosts(fx->base, d, "example.net", ep, 5, NULL, on_route, &g);
	w.starting = false;
	w.outstanding = 1;
	wait_all(&w, 10);
	assert_int_equal(g.calls, 1);
	assert_int_equal(g.r.code, 0);
	assert_int_equal(g.r.via, ROUTE_VIA_SMARTHOST);
	assert_int_equal(g.r.n, 4);
	assert_string_equal(g.r.hops[0].addr, "192.0.2.91");
	assert_int_equal(g.r.hops[0].port, 587);
	assert_string_equal(g.r.hops[1].addr, "2001:db8::91");
	assert_string_equal(g.r.hops[2].addr, "2001:db8::200");
	assert_int_equal(g.r.hops[2].port, 2525);
	assert_string_equal(g.r.hops[3].addr, "192.0.2.92");
	assert_string_equal(g.r.hops[3].host, "relay2.test");
	assert_int_equal(g.r.hops[3].port, 465);

	/* As next hops for the SMTP client, appended. */
	struct strlist sl = { 0, NULL };
	sl.v = xcalloc(1, sizeof(*sl.v));
	sl.v[sl.n++] = xstrdup("first:25");
	route_result_hops(&g.r, &sl);
	assert_int_equal(sl.n, 5);
	assert_string_equal(sl.v[0], "first:25");
	assert_string_equal(sl.v[1], "192.0.2.91:587");
	assert_string_equal(sl.v[2], "[2001:db8::91]:587");
	assert_string_equal(sl.v[3], "[2001:db8::200]:2525");
	assert_string_equal(sl.v[4], "192.0.2.92:465");
	strlist_free(&sl);
	route_result_clear(&g.r);

	/* Nothing resolves: deferred, never bounced. */
	memset(&g, 0, sizeof(g));
	g.w = &w;
	route_smarthosts(fx->base, d, "example.net", &ep[2], 1, NULL, on_route, &g);
	w.outstanding = 1;
	wait_all(&w, 10);
	assert_int_equal(g.r.code, 451);
	assert_string_equal(g.r.enh, "4.4.4");
	route_result_clear(&g.r);

	memset(&g, 0, sizeof(g));
	g.w = &w;
	w.starting = true;
	route_smarthosts(fx->base, d, "example.net", &ep[1], 1, NULL, on_route, &g);
	w.starting = false;
	w.outstanding = 1;
	wait_all(&w, 10);
	assert_int_equal(g.r.code, 451);
	assert_string_equal(g.r.enh, "4.3.5");
	route_result_clear(&g.r);
	dns_free(d);
}

static void test_result_helpers(void **state)
{
	(void)state;
	struct route_hop hops[2];
	memset(hops, 0, sizeof(hops));
	snprintf(hops[0].addr, sizeof(hops[0].addr), "192.0.2.1");
	hops[0].port = 25;
	snprintf(hops[1].addr, sizeof(hops[1].addr), "::1");
	hops[1].port = 10025;
	struct route_result r = { .code = 0, .n = 2, .hops = hops, .ttl = 60 };
	struct route_result c;
	route_result_copy(&c, &r);
	assert_ptr_not_equal(c.hops, hops);
	assert_int_equal(c.n, 2);
	assert_int_equal(c.ttl, 60);
	assert_string_equal(c.hops[1].addr, "::1");

	struct strlist sl = { 0, NULL };
	route_result_hops(&c, &sl);
	assert_int_equal(sl.n, 2);
	assert_string_equal(sl.v[0], "192.0.2.1:25");
	assert_string_equal(sl.v[1], "[::1]:10025");
	strlist_free(&sl);

	struct route_result none = { .code = 451 };
	route_result_hops(&none, &sl);
	assert_int_equal(sl.n, 0);
	route_result_clear(&c);
	assert_null(c.hops);
	route_result_clear(NULL);
}

int main(void)
{
	log_init("test", "test_route");
	log_set_level(LL_ERROR);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_mx_order_and_spreading),
		cmocka_unit_test(test_mx_host_a_and_aaaa),
		cmocka_unit_test(test_implicit_mx),
		cmocka_unit_test(test_null_mx),
		cmocka_unit_test(test_nxdomain),
		cmocka_unit_test(test_bad_domains),
		cmocka_unit_test(test_mx_without_address_skipped),
		cmocka_unit_test(test_all_mx_unresolvable),
		cmocka_unit_test(test_timeouts),
		cmocka_unit_test(test_address_literal),
		cmocka_unit_test(test_self_mx),
		cmocka_unit_test(test_hop_cap),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_cancel_in_flight),
		cmocka_unit_test(test_cancel_in_callback),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_smarthosts),
		cmocka_unit_test(test_result_helpers),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
