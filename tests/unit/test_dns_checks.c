/*
 * test_dns_checks.c — the checks that ask DNS, through the chain, with the
 * shared resolver answering from local data.
 *
 * dnsbl: weights and threshold, answer filters, allow lists (negative
 * weights), IPv6 and IPv4-mapped clients, the actions (reject, tempfail,
 * tag with a header), the local allow list, a list that never answers
 * (timeout: counted as not listed), and bad list entries.
 * hygiene: reverse DNS (confirmed, mismatch, none) and require_rdns, HELO
 * syntax, FQDN and "not us", the sender domain (MX, A only, NXDOMAIN, no
 * records, null MX, DNS failure).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil_checks.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "mail/envelope.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/dns.h"
#include "util/log.h"
#include "util/metrics.h"

static const char zone[] =
	/* 192.0.2.10: on bl (+2) and on the allow list wl (-5) */
	"10.2.0.192.bl.example. 300 IN A 127.0.0.2\n"
	"10.2.0.192.wl.example. 300 IN A 127.0.10.1\n"
	/* 192.0.2.11: on bl only */
	"11.2.0.192.bl.example. 300 IN A 127.0.0.3\n"
	/* 192.0.2.12: bl2 answers a code its filter does not count */
	"12.2.0.192.bl2.example. 300 IN A 127.0.0.9\n"
	/* 192.0.2.13: bl answers outside 127/8 (a wildcard or error page) */
	"13.2.0.192.bl.example. 300 IN A 10.0.0.1\n"
	/* 192.0.2.14: on bl and bl2 (filter passes): 2 + 1 */
	"14.2.0.192.bl.example. 300 IN A 127.0.0.2\n"
	"14.2.0.192.bl2.example. 300 IN A 127.0.0.4\n"
	/* 2001:db8::1 */
	"1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example. 300 IN A 127.0.0.2\n"
	/* reverse DNS: 192.0.2.20 confirmed, .21 a PTR that lies, .22 none */
	"20.2.0.192.in-addr.arpa. 300 IN PTR mail.good.example.\n"
	"mail.good.example. 300 IN A 192.0.2.20\n"
	"21.2.0.192.in-addr.arpa. 300 IN PTR liar.example.\n"
	"liar.example. 300 IN A 192.0.2.99\n"
	/* sender domains */
	"good.example. 300 IN MX 10 mail.good.example.\n"
	"aonly.example. 300 IN A 192.0.2.30\n"
	"nullmx.example. 300 IN MX 0 .\n"
	"empty.example. 300 IN TXT \"v=spf1 -all\"\n";

static const char sites[] = "sites = bl.example=127.0.0.[2..11]*2, bl2.example=127.0.0.[2;4..5], wl.example*-5\n";

struct fx {
	char dir[512];
	char zone_path[600];
	struct tu_chain_fx c;
	struct envelope *e;
	struct check_ctx ctx;
};

static int setup(void **state)
{
	struct fx *f = xcalloc(1, sizeof(*f));
	if (tu_mkdtemp(f->dir, sizeof(f->dir), "dnsbl") != 0)
		return -1;
	snprintf(f->zone_path, sizeof(f->zone_path), "%s/zone", f->dir);
	tu_write_file(f->zone_path, zone);
	log_init("mx", "mx");
	log_set_level(LL_ERROR);
	if (!tu_chain_fx_init(&f->c, true))
		return -1;
	tu_chain_fx_dns(&f->c, f->zone_path, false, 0);
	f->e = tu_session_new(&f->ctx, NULL, NULL, NULL);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	tu_chain_fx_free(&f->c, &f->ctx);
	envelope_free(f->e);
	tu_rmtree(f->dir);
	free(f);
	return 0;
}

static void use(struct fx *f, const char *conf)
{
	tu_chain_use(&f->c, conf, "lists dnsbl hygiene");
}

/* Run a phase for a client and wait (the loop runs) for its verdict. */
static struct verdict run(struct fx *f, enum check_phase phase, const char *client)
{
	f->e->client.addr = pool_strdup(f->e->pool, client);
	return tu_chain_verdict(f->c.chain, phase, &f->ctx, f->c.base);
}

static void test_scores_filters_and_allow_lists(void **state)
{
	struct fx *f = *state;
	char conf[512];
	snprintf(conf, sizeof(conf), "[check.dnsbl]\n%sthreshold = 2\n", sites);
	use(f, conf);

	struct verdict v = run(f, PHASE_CONNECT, "192.0.2.11");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	assert_string_equal(v.enh, "5.7.1");
	assert_string_equal(v.reason, "Service unavailable; client [192.0.2.11] blocked using bl.example(+2)");
	assert_int_equal(f->ctx.dnsbl_score, 2);

	/* on a block list and an allow list: -3, and marked DNSWL */
	v = run(f, PHASE_CONNECT, "192.0.2.10");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.dnsbl_score, -3);
	assert_true(f->ctx.dnswl);
	assert_non_null(strstr(f->ctx.dnsbl_listed, "wl.example(-5)"));

	/* answers the filters do not count */
	v = run(f, PHASE_CONNECT, "192.0.2.12");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.dnsbl_score, 0);
	assert_false(f->ctx.dnswl);
	v = run(f, PHASE_CONNECT, "192.0.2.13");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.dnsbl_score, 0);

	/* two lists add up */
	v = run(f, PHASE_CONNECT, "192.0.2.14");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(f->ctx.dnsbl_score, 3);
	assert_non_null(strstr(v.reason, "bl.example(+2) bl2.example(+1)") ? v.reason : strstr(v.reason, "bl2.example(+1) bl.example(+2)"));

	/* not listed anywhere */
	v = run(f, PHASE_CONNECT, "203.0.113.5");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.dnsbl_score, 0);

	/* IPv6 by nibbles, IPv4-mapped as IPv4 */
	v = run(f, PHASE_CONNECT, "2001:db8::1");
	assert_int_equal(v.kind, V_REJECT);
	v = run(f, PHASE_CONNECT, "::ffff:192.0.2.11");
	assert_int_equal(v.kind, V_REJECT);
	assert_true(tu_metric_has(f->c.metrics, "rampart_dnsbl_hits_total{stage=\"mx\",instance=\"mx\",list=\"bl.example\"} 5\n"));
}

static void test_actions(void **state)
{
	struct fx *f = *state;
	char conf[512];
	snprintf(conf, sizeof(conf), "[check.dnsbl]\n%sthreshold = 2\naction = tempfail\n", sites);
	use(f, conf);
	struct verdict v = run(f, PHASE_CONNECT, "192.0.2.11");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 421);
	assert_string_equal(v.enh, "4.7.1");

	snprintf(conf, sizeof(conf), "[check.dnsbl]\n%sthreshold = 2\naction = tag\n", sites);
	use(f, conf);
	v = run(f, PHASE_CONNECT, "192.0.2.11");
	assert_int_equal(v.kind, V_CONTINUE);
	v = run(f, PHASE_MESSAGE, "192.0.2.11");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.nadd, 1);
	assert_string_equal(f->ctx.add[0].name, "X-Rampart-DNSBL");
	assert_string_equal(f->ctx.add[0].value, "score=2; threshold=2; listed=bl.example(+2)");

	/* a client on the local allow list is not looked up */
	snprintf(conf, sizeof(conf), "[check.lists]\nallow_clients = 192.0.2.0/28\n[check.dnsbl]\n%sthreshold = 2\n",
		 sites);
	use(f, conf);
	f->ctx.client_allowed = false;
	v = run(f, PHASE_CONNECT, "192.0.2.11");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_true(f->ctx.client_allowed);
	assert_int_equal(f->ctx.dnsbl_score, 0);
	f->ctx.client_allowed = false;
}

/* A list that never answers: after the timeout it counts nothing, the
 * others still count, and the failure is counted. */
static void test_dead_list_times_out(void **state)
{
	struct fx *f = *state;
	tu_chain_fx_dns(&f->c, f->zone_path, true, 30000);
	/* dead.example is not in the local data: its query goes to the DNS
	 * server that never answers */
	use(f, "[check.dnsbl]\nsites = bl.example*2, dead.example*5\nthreshold = 2\ntimeout = 300ms\n");
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct verdict v = run(f, PHASE_CONNECT, "192.0.2.11");
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	assert_true(ms >= 250 && ms < 3000);
	assert_int_equal(v.kind, V_REJECT);             /* bl.example still counts */
	assert_int_equal(f->ctx.dnsbl_score, 2);
	assert_true(tu_metric_has(f->c.metrics, "rampart_dnsbl_errors_total{stage=\"mx\",instance=\"mx\",list=\"dead.example\"} 1\n"));
}

static void test_bad_entries(void **state)
{
	struct fx *f = *state;
	static const char *const bad[] = {
		"bl.example=127.0.0.[5..2]", "bl.example=127.0.0", "bl.example*0", "bl.example*x",
		"=127.0.0.2", "bl.example=127.0.0.256", "bl/example", "bl.example=127.0.0.[2;3",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char conf[256], why[512] = "";
		snprintf(conf, sizeof(conf), "[check.dnsbl]\nsites = %s\n", bad[i]);
		struct config_error err = { "" };
		struct config *cfg = config_parse_string("rampart.conf", conf, &err);
		assert_non_null(cfg);
		char *words[] = { "dnsbl" };
		struct strlist names = { 1, words };
		struct chain *c = chain_new(cfg, &names, &f->c.env, why, sizeof(why));
		if (c || !strstr(why, "check dnsbl: sites: '"))
			fail_msg("'%s' accepted or bad message: %s", bad[i], why);
		config_free(cfg);
	}
}

/* ---- hygiene -------------------------------------------------------------- */

static void test_reverse_dns(void **state)
{
	struct fx *f = *state;
	use(f, "");
	assert_int_equal(run(f, PHASE_CONNECT, "192.0.2.20").kind, V_CONTINUE);
	assert_int_equal(f->ctx.rdns, RDNS_CONFIRMED);
	assert_string_equal(f->ctx.client_ptr, "mail.good.example");
	assert_int_equal(run(f, PHASE_CONNECT, "192.0.2.21").kind, V_CONTINUE);
	assert_int_equal(f->ctx.rdns, RDNS_MISMATCH);
	assert_string_equal(f->ctx.client_ptr, "liar.example");
	assert_int_equal(run(f, PHASE_CONNECT, "192.0.2.22").kind, V_CONTINUE);
	assert_int_equal(f->ctx.rdns, RDNS_NONE);
	assert_string_equal(f->ctx.client_ptr, "");

	use(f, "[check.hygiene]\nrequire_rdns = confirmed\n");
	struct verdict v = run(f, PHASE_CONNECT, "192.0.2.21");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 450);
	assert_string_equal(v.enh, "4.7.25");
	assert_non_null(strstr(v.reason, "does not resolve back"));
	assert_int_equal(run(f, PHASE_CONNECT, "192.0.2.20").kind, V_CONTINUE);
	use(f, "[check.hygiene]\nrequire_rdns = ptr\n");
	assert_int_equal(run(f, PHASE_CONNECT, "192.0.2.21").kind, V_CONTINUE);   /* a PTR is enough */
	assert_int_equal(run(f, PHASE_CONNECT, "192.0.2.22").kind, V_TEMPFAIL);
}

static struct verdict helo(struct fx *f, const char *name)
{
	f->ctx.helo = name;
	return run(f, PHASE_HELO, "203.0.113.5");
}

static void test_helo(void **state)
{
	struct fx *f = *state;
	char *doms[] = { "example.test" };
	struct strlist local = { 1, doms };
	f->c.env.local_domains = &local;
	use(f, "");
	assert_int_equal(helo(f, "client.example.org").kind, V_CONTINUE);
	assert_int_equal(helo(f, "client.example.org.").kind, V_CONTINUE);
	assert_int_equal(helo(f, "[192.0.2.1]").kind, V_CONTINUE);
	assert_int_equal(helo(f, "[IPv6:2001:db8::1]").kind, V_CONTINUE);
	struct verdict v = helo(f, "bad..name");
	assert_int_equal(v.code, 501);
	assert_string_equal(v.enh, "5.5.2");
	assert_int_equal(helo(f, "-lead.example").code, 501);
	assert_int_equal(helo(f, "[192.0.2.300]").code, 501);
	assert_int_equal(helo(f, "spaces in it").code, 501);
	v = helo(f, "localhost");
	assert_int_equal(v.code, 504);
	assert_non_null(strstr(v.reason, "fully-qualified"));
	v = helo(f, "MX.Example.Test");           /* our host name */
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.7.1");
	assert_int_equal(helo(f, "example.test").code, 550);   /* a local domain */
	/* allowed clients are not held to it */
	f->ctx.client_allowed = true;
	f->e->client.addr = pool_strdup(f->e->pool, "203.0.113.5");
	f->ctx.helo = "localhost";
	assert_int_equal(tu_chain_verdict(f->c.chain, PHASE_HELO, &f->ctx, NULL).kind, V_CONTINUE);
	f->ctx.client_allowed = false;
	/* each rule can be turned off */
	use(f, "[check.hygiene]\nhelo_fqdn = no\nhelo_not_us = no\n");
	assert_int_equal(helo(f, "localhost").kind, V_CONTINUE);
	assert_int_equal(helo(f, "mx.example.test").kind, V_CONTINUE);
	f->c.env.local_domains = NULL;
}

static struct verdict mail_from(struct fx *f, const char *sender)
{
	f->e->sender = pool_strdup(f->e->pool, sender);
	return run(f, PHASE_MAIL, "203.0.113.5");
}

static void test_sender_domain(void **state)
{
	struct fx *f = *state;
	use(f, "");
	assert_int_equal(mail_from(f, "a@good.example").kind, V_CONTINUE);      /* MX */
	assert_int_equal(mail_from(f, "a@aonly.example").kind, V_CONTINUE);     /* A, no MX */
	assert_int_equal(mail_from(f, "").kind, V_CONTINUE);                    /* null sender */
	assert_int_equal(mail_from(f, "a@[192.0.2.1]").kind, V_CONTINUE);       /* address literal */
	struct verdict v = mail_from(f, "a@nx.example");
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.1.8");
	assert_string_equal(v.reason, "<a@nx.example>: Sender address rejected: Domain not found");
	v = mail_from(f, "a@empty.example");
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.1.8");
	assert_non_null(strstr(v.reason, "no MX, A or AAAA"));
	v = mail_from(f, "a@nullmx.example");
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.7.27");
	use(f, "[check.hygiene]\nsender_domain = no\n");
	assert_int_equal(mail_from(f, "a@nx.example").kind, V_CONTINUE);
}

/* DNS that does not answer: a temporary refusal, never a 5xx. */
static void test_sender_domain_dns_failure(void **state)
{
	struct fx *f = *state;
	tu_chain_fx_dns(&f->c, f->zone_path, true, 30000);
	use(f, "[check.hygiene]\ntimeout = 300ms\n");
	struct verdict v = mail_from(f, "a@elsewhere.example");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.1.8");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_scores_filters_and_allow_lists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_actions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dead_list_times_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_entries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reverse_dns, setup, teardown),
		cmocka_unit_test_setup_teardown(test_helo, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sender_domain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sender_domain_dns_failure, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
