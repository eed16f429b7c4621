/*
 * test_greylist.c — the greylisting check through the chain with an
 * event loop, against both state backends: LMDB in a temporary directory
 * and a private redis-server the suite starts on loopback.
 *
 * A new triplet gets 451 4.7.1, a retry before the delay too, a retry
 * after it passes and is known from then on; the retry window and the
 * lifetime (renewed on use) expire entries; another recipient, sender or
 * network is another triplet, another address of the same network is
 * not (IPv4 /24, IPv6 /64, IPv4-mapped); auto-allow after N passed
 * triplets (and never with 0); keying on the SPF-authorised domain lets
 * a retry from another network pass where network keying does not;
 * skips (local allow list, authenticated, DNSWL and skip_dnswl = no);
 * canonical senders and recipients (case, +subaddress, BATV, SRS0, VERP
 * numbers, the null sender, long addresses); manual allows of an
 * address, a network and an SPF domain; bad parameters; and the failure
 * modes with Redis stopped, writes failing (Redis over maxmemory) or no store
 * (tempfail by default, continue when configured; logged and counted).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil_checks.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "checks/greylist.h"
#include "mail/envelope.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/metrics.h"

#define REDIS_PASSWORD "gl-test-pw"

/* ---- the suite and the fixture (testutil_checks.h) ------------------------ */

static int suite_setup(void **state)
{
	return tu_state_suite_setup(state, "greylist", REDIS_PASSWORD);
}

static bool try_use(struct tu_state_fx *f, const char *conf, char *why, size_t whylen)
{
	return tu_chain_try(&f->c, conf, "greylist", why, whylen);
}

/* The greylist check with [check.greylist] settings (lines). */
static void use(struct tu_state_fx *f, const char *settings)
{
	char why[512] = "", conf[1024];
	snprintf(conf, sizeof(conf), "[check.greylist]\n%s", settings);
	if (!try_use(f, conf, why, sizeof(why)))
		fail_msg("chain: %s", why);
}

/* A new client: CONNECT (which clears the session facts) as ip. */
static void connect_as(struct tu_state_fx *f, const char *ip)
{
	f->e->client.addr = pool_strdup(f->e->pool, ip);
	f->e->client.login = NULL;
	f->ctx.env = NULL;
	f->ctx.auth.spf = AUTH_SPF_UNCHECKED;
	f->ctx.auth.spf_domain[0] = '\0';
	assert_int_equal(tu_state_run(f, PHASE_CONNECT).kind, V_CONTINUE);
}

static void mail(struct tu_state_fx *f, const char *sender)
{
	f->e->sender = pool_strdup(f->e->pool, sender);
	f->e->nrcpt = 0;
	f->ctx.env = f->e;
	assert_int_equal(tu_state_run(f, PHASE_MAIL).kind, V_CONTINUE);
}

/* One attempt: a session from ip, MAIL sender, RCPT to; the RCPT verdict. */
static struct verdict attempt(struct tu_state_fx *f, const char *ip, const char *sender, const char *to)
{
	connect_as(f, ip);
	mail(f, sender);
	return tu_state_rcpt(f, to);
}

/* The same with SPF's verdict on the sender domain (check spf, before). */
static struct verdict attempt_spf(struct tu_state_fx *f, const char *ip, enum auth_spf spf, const char *domain,
				  const char *sender, const char *to)
{
	connect_as(f, ip);
	mail(f, sender);
	f->ctx.auth.spf = spf;
	snprintf(f->ctx.auth.spf_domain, sizeof(f->ctx.auth.spf_domain), "%s", domain);
	return tu_state_rcpt(f, to);
}

static void assert_greylisted(struct verdict v, long secs)
{
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.1");
	char want[96];
	snprintf(want, sizeof(want), "Greylisted, please try again in %ld second%s", secs, secs == 1 ? "" : "s");
	assert_string_equal(v.reason, want);
	assert_string_equal(v.check, "greylist");
}

#define assert_passes(v) assert_int_equal((v).kind, V_CONTINUE)

static bool metric_result(struct tu_state_fx *f, const char *result, int n)
{
	char line[200];
	snprintf(line, sizeof(line), "rampart_greylist_total{stage=\"mx\",instance=\"mx\",result=\"%s\"} %d\n", result, n);
	return tu_metric_has(f->c.metrics, line);
}

/* ---- the cycle ------------------------------------------------------------- */

static void first_early_passed_known(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "delay = 1s\n");
	/* first attempt, and a retry too soon */
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	const char *key = "gl:t:net:192.0.2.0/24|a@example.org|alice@example.test";
	char val[256];
	assert_int_equal(tu_state_get(&f, key, val, sizeof(val)), STATE_OK);
	struct gl_triplet t;
	assert_true(gl_triplet_parse(val, &t));
	assert_int_equal(t.passed_ms, 0);
	tu_state_run_for(&f, 300);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	/* another recipient, another sender: new triplets, in the same session too */
	assert_greylisted(tu_state_rcpt(&f, "bob@example.test"), 1);
	mail(&f, "b@example.org");
	assert_greylisted(tu_state_rcpt(&f, "alice@example.test"), 1);
	/* after the delay the retry passes, from any address of the network */
	tu_state_run_for(&f, 1100);
	assert_passes(attempt(&f, "192.0.2.200", "a@example.org", "alice@example.test"));
	assert_int_equal(tu_state_get(&f, key, val, sizeof(val)), STATE_OK);
	assert_true(gl_triplet_parse(val, &t));
	assert_true(t.passed_ms >= t.first_ms + 1000);
	/* known from then on */
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	assert_passes(attempt(&f, "::ffff:192.0.2.8", "a@example.org", "alice@example.test"));
	/* the recipient in the same transaction as a known one is still new */
	assert_passes(tu_state_rcpt(&f, "bob@example.test"));
	assert_greylisted(tu_state_rcpt(&f, "carol@example.test"), 1);
	assert_int_equal(f.e->nrcpt, 2);
	/* another network is another client */
	assert_greylisted(attempt(&f, "192.0.3.7", "a@example.org", "alice@example.test"), 1);

	assert_true(metric_result(&f, "new", 5));
	assert_true(metric_result(&f, "early", 1));
	assert_true(metric_result(&f, "passed", 2));
	assert_true(metric_result(&f, "known", 2));
	assert_true(tu_metric_has(f.c.metrics, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"greylist\",verdict=\"tempfail\"} 6\n"));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"greylist.new\",\"key\":\"gl:t:net:192.0.2.0/24|a@example.org|alice@example.test\""));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"greylist.early\""));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"greylist.passed\""));
	assert_true(tu_file_has(f.s->logpath, "\"check\":\"greylist\",\"phase\":\"rcpt\",\"verdict\":\"tempfail\",\"code\":451"));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(first_early_passed_known)

static void defaults_and_ipv6(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	/* the defaults: five minutes */
	use(&f, "");
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 300);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 300);
	/* IPv6 by /64, other prefixes */
	use(&f, "delay = 300ms\n");
	assert_greylisted(attempt(&f, "2001:db8:1:2::1", "a@example.org", "alice@example.test"), 1);
	assert_int_equal(tu_state_get(&f, "gl:t:net:2001:db8:1:2::/64|a@example.org|alice@example.test", NULL, 0), STATE_OK);
	tu_state_run_for(&f, 400);
	assert_passes(attempt(&f, "2001:DB8:1:2:ffff::9", "a@example.org", "alice@example.test"));
	assert_greylisted(attempt(&f, "2001:db8:1:3::1", "a@example.org", "alice@example.test"), 1);
	use(&f, "delay = 300ms\nipv4_prefix = 32\nipv6_prefix = 48\n");
	assert_greylisted(attempt(&f, "198.51.100.1", "a@example.org", "alice@example.test"), 1);
	assert_greylisted(attempt(&f, "2001:db8:1:2::1", "a@example.org", "alice@example.test"), 1);
	assert_int_equal(tu_state_get(&f, "gl:t:net:2001:db8:1::/48|a@example.org|alice@example.test", NULL, 0), STATE_OK);
	tu_state_run_for(&f, 400);
	assert_greylisted(attempt(&f, "198.51.100.2", "a@example.org", "alice@example.test"), 1);
	assert_passes(attempt(&f, "198.51.100.1", "a@example.org", "alice@example.test"));
	assert_passes(attempt(&f, "2001:db8:1:ff::1", "a@example.org", "alice@example.test"));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(defaults_and_ipv6)

static void windows_expire(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "delay = 300ms\nretry_window = 1s\nlifetime = 2s\n");
	/* not retried within the window: forgotten, new again */
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	tu_state_run_for(&f, 1200);
	assert_int_equal(tu_state_get(&f, "gl:t:net:192.0.2.0/24|a@example.org|alice@example.test", NULL, 0),
			 STATE_NOTFOUND);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	tu_state_run_for(&f, 400);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	/* used within its lifetime: renewed (every lifetime/4 at most) */
	tu_state_run_for(&f, 1500);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	tu_state_run_for(&f, 1500);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	/* unused for its lifetime: forgotten */
	tu_state_run_for(&f, 2300);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(windows_expire)

/* ---- auto-allow ------------------------------------------------------------ */

static void auto_allow(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "delay = 300ms\nauto_allow_after = 2\n");
	/* two recipients greylisted, then both pass: two triplets */
	connect_as(&f, "192.0.2.7");
	mail(&f, "a@example.org");
	assert_greylisted(tu_state_rcpt(&f, "alice@example.test"), 1);
	assert_greylisted(tu_state_rcpt(&f, "bob@example.test"), 1);
	tu_state_run_for(&f, 400);
	mail(&f, "a@example.org");
	assert_passes(tu_state_rcpt(&f, "alice@example.test"));
	char val[64];
	assert_int_equal(tu_state_get(&f, "gl:a:net:192.0.2.0/24", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "1");
	/* a known triplet does not count again */
	mail(&f, "a@example.org");
	assert_passes(tu_state_rcpt(&f, "alice@example.test"));
	assert_int_equal(tu_state_get(&f, "gl:a:net:192.0.2.0/24", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "1");
	assert_passes(tu_state_rcpt(&f, "bob@example.test"));
	assert_int_equal(tu_state_get(&f, "gl:a:net:192.0.2.0/24", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "2");
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"greylist.auto_allowed\",\"client_key\":\"net:192.0.2.0/24\""));
	/* auto-allowed: new triplets pass at once, and leave no entry */
	assert_passes(attempt(&f, "192.0.2.99", "new@example.net", "carol@example.test"));
	assert_int_equal(tu_state_get(&f, "gl:t:net:192.0.2.0/24|new@example.net|carol@example.test", NULL, 0),
			 STATE_NOTFOUND);
	/* ... also when SPF keys the client on a domain: the network has proved itself */
	assert_passes(attempt_spf(&f, "192.0.2.50", AUTH_SPF_PASS, "other.example", "x@other.example",
				  "alice@example.test"));
	/* other networks are not */
	assert_greylisted(attempt(&f, "192.0.3.7", "a@example.org", "alice@example.test"), 1);
	assert_true(metric_result(&f, "allowed", 2));
	assert_true(metric_result(&f, "passed", 2));

	/* 0: never */
	use(&f, "delay = 300ms\nauto_allow_after = 0\n");
	connect_as(&f, "203.0.113.7");
	mail(&f, "a@example.org");
	for (int i = 0; i < 3; i++) {
		char to[64];
		snprintf(to, sizeof(to), "u%d@example.test", i);
		assert_greylisted(tu_state_rcpt(&f, to), 1);
	}
	tu_state_run_for(&f, 400);
	mail(&f, "a@example.org");
	for (int i = 0; i < 3; i++) {
		char to[64];
		snprintf(to, sizeof(to), "u%d@example.test", i);
		assert_passes(tu_state_rcpt(&f, to));
	}
	assert_greylisted(tu_state_rcpt(&f, "u9@example.test"), 1);
	assert_int_equal(tu_state_get(&f, "gl:a:net:203.0.113.0/24", NULL, 0), STATE_NOTFOUND);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(auto_allow)

/* ---- keying on SPF --------------------------------------------------------- */

static void spf_keying(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "delay = 300ms\n");
	/* A big sender: first attempt from one network of its pool, the
	 * retry from another; SPF passes for both. */
	assert_greylisted(attempt_spf(&f, "192.0.2.10", AUTH_SPF_PASS, "BigMail.example.", "News@BigMail.example",
				      "alice@example.test"), 1);
	assert_int_equal(tu_state_get(&f, "gl:t:spf:bigmail.example|news@bigmail.example|alice@example.test", NULL, 0),
			 STATE_OK);
	tu_state_run_for(&f, 400);
	assert_passes(attempt_spf(&f, "198.51.100.20", AUTH_SPF_PASS, "bigmail.example", "news@bigmail.example",
				  "alice@example.test"));
	assert_passes(attempt_spf(&f, "2001:db8::77", AUTH_SPF_PASS, "bigmail.example", "news@bigmail.example",
				  "alice@example.test"));
	/* without an SPF pass the same sender is keyed on the network */
	assert_greylisted(attempt_spf(&f, "198.51.100.20", AUTH_SPF_SOFTFAIL, "bigmail.example",
				      "news@bigmail.example", "alice@example.test"), 1);
	assert_greylisted(attempt_spf(&f, "198.51.100.20", AUTH_SPF_NEUTRAL, "bigmail.example",
				      "news@bigmail.example", "alice@example.test"), 1);
	assert_greylisted(attempt(&f, "203.0.113.5", "news@bigmail.example", "alice@example.test"), 1);

	/* the classic way (key_on_spf = no): the retry from the other network is a new triplet */
	use(&f, "delay = 300ms\nkey_on_spf = no\n");
	assert_greylisted(attempt_spf(&f, "192.0.2.10", AUTH_SPF_PASS, "pool.example", "news@pool.example",
				      "alice@example.test"), 1);
	tu_state_run_for(&f, 400);
	assert_greylisted(attempt_spf(&f, "198.51.100.20", AUTH_SPF_PASS, "pool.example", "news@pool.example",
				      "alice@example.test"), 1);
	assert_passes(attempt_spf(&f, "192.0.2.11", AUTH_SPF_PASS, "pool.example", "news@pool.example",
				  "alice@example.test"));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(spf_keying)

/* ---- skips and manual allows ----------------------------------------------- */

static void skips(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "delay = 5m\n");
	/* the local allow list */
	connect_as(&f, "192.0.2.7");
	f.ctx.client_allowed = true;
	mail(&f, "a@example.org");
	assert_passes(tu_state_rcpt(&f, "alice@example.test"));
	/* authenticated */
	connect_as(&f, "192.0.2.7");
	f.e->client.login = pool_strdup(f.e->pool, "alice");
	mail(&f, "alice@example.test");
	assert_passes(tu_state_rcpt(&f, "bob@example.org"));
	/* on a DNS allow list */
	connect_as(&f, "192.0.2.7");
	f.ctx.dnswl = true;
	mail(&f, "a@example.org");
	assert_passes(tu_state_rcpt(&f, "alice@example.test"));
	assert_true(metric_result(&f, "skipped", 3));
	assert_int_equal(tu_state_get(&f, "gl:t:net:192.0.2.0/24|a@example.org|alice@example.test", NULL, 0),
			 STATE_NOTFOUND);
	/* ... unless skip_dnswl = no */
	use(&f, "delay = 5m\nskip_dnswl = no\n");
	f.ctx.dnswl = true;
	assert_greylisted(tu_state_rcpt(&f, "alice@example.test"), 300);
	/* no client address and no SPF domain: nothing to key on */
	assert_passes(attempt(&f, "", "a@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "skipped", 4));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(skips)

static void manual_allow(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "delay = 5m\n");
	tu_state_set(&f, "gl:m:ip:192.0.2.50", "1700000000000");
	tu_state_set(&f, "gl:m:net:198.51.100.0/24", "1700000000000");
	tu_state_set(&f, "gl:m:spf:friend.example", "1700000000000");
	tu_state_set(&f, "gl:m:ip:2001:db8::5", "1700000000000");
	/* an address, not its neighbours */
	assert_passes(attempt(&f, "192.0.2.50", "a@example.org", "alice@example.test"));
	assert_passes(attempt(&f, "::ffff:192.0.2.50", "a@example.org", "alice@example.test"));
	assert_greylisted(attempt(&f, "192.0.2.51", "a@example.org", "alice@example.test"), 300);
	assert_passes(attempt(&f, "2001:db8:0:0::5", "a@example.org", "alice@example.test"));
	/* a network */
	assert_passes(attempt(&f, "198.51.100.7", "a@example.org", "alice@example.test"));
	/* a domain: when SPF passes for it, from anywhere, whatever the keying */
	assert_passes(attempt_spf(&f, "203.0.113.1", AUTH_SPF_PASS, "friend.example", "x@friend.example",
				  "alice@example.test"));
	assert_greylisted(attempt_spf(&f, "203.0.113.1", AUTH_SPF_FAIL, "friend.example", "x@friend.example",
				      "alice@example.test"), 300);
	use(&f, "delay = 5m\nkey_on_spf = no\n");
	assert_passes(attempt_spf(&f, "203.0.113.2", AUTH_SPF_PASS, "friend.example", "x@friend.example",
				  "alice@example.test"));
	assert_true(metric_result(&f, "allowed", 6));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(manual_allow)

/* ---- canonical addresses --------------------------------------------------- */

static void canonical_through_the_chain(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "delay = 300ms\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "Alice+News@Example.ORG", "Bob+Lists@Example.TEST"), 1);
	assert_greylisted(attempt(&f, "192.0.2.7", "prvs=1234abcdef=bounce@lists.example", "bob@example.test"), 1);
	assert_greylisted(attempt(&f, "192.0.2.7", "", "bob@example.test"), 1);
	assert_int_equal(tu_state_get(&f, "gl:t:net:192.0.2.0/24|<>|bob@example.test", NULL, 0), STATE_OK);
	tu_state_run_for(&f, 400);
	assert_passes(attempt(&f, "192.0.2.7", "alice@example.org", "bob@example.test"));
	/* another BATV tag of the same sender, and the null sender again */
	assert_passes(attempt(&f, "192.0.2.7", "prvs=9876fedcba=bounce@lists.example", "BOB@example.test"));
	assert_passes(attempt(&f, "192.0.2.7", "", "bob@example.test"));
	/* another subaddress separator */
	use(&f, "delay = 300ms\nsubaddress_separator = -\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "owner-list@example.net", "bob@example.test"), 1);
	assert_int_equal(tu_state_get(&f, "gl:t:net:192.0.2.0/24|owner@example.net|bob@example.test", NULL, 0), STATE_OK);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(canonical_through_the_chain)

static void test_canonical_forms(void **state)
{
	(void)state;
	const char *cases[][3] = {
		/* address, as a sender, as a recipient */
		{ "Alice@Example.ORG", "alice@example.org", "alice@example.org" },
		{ "alice+news@example.org.", "alice@example.org", "alice@example.org" },
		{ "", "<>", "<>" },
		{ "+tag@example.org", "+tag@example.org", "+tag@example.org" },
		{ "prvs=1234abcdef=Bounce@Lists.example", "bounce@lists.example", "prvs=1234abcdef=bounce@lists.example" },
		{ "msprvs1=17abcd=bounces-123@mail.example", "bounces-#@mail.example", "msprvs1=17abcd=bounces-123@mail.example" },
		{ "btv1==0123abcd==user@example.org", "user@example.org", "btv1==0123abcd==user@example.org" },
		{ "SRS0=HHH=TT=orig.example=joe@fwd.example", "srs0=orig.example=joe@fwd.example",
		  "srs0=hhh=tt=orig.example=joe@fwd.example" },
		{ "bounce-12345-alice=example.com@list.example", "bounce-#-alice=example.com@list.example",
		  "bounce-12345-alice=example.com@list.example" },
		{ "user123@example.org", "user123@example.org", "user123@example.org" },
		{ "2024.07.news@example.org", "#.#.news@example.org", "2024.07.news@example.org" },
		{ "\"odd|name 100%\"@example.org", "\"odd%7Cname%20#%25\"@example.org", "\"odd%7Cname%20100%25\"@example.org" },
		{ "postmaster", "postmaster", "postmaster" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[GL_ADDR_MAX + 1];
		gl_canon_addr(cases[i][0], true, "+", out, sizeof(out));
		if (strcmp(out, cases[i][1]) != 0)
			fail_msg("sender '%s': '%s', expected '%s'", cases[i][0], out, cases[i][1]);
		gl_canon_addr(cases[i][0], false, "+", out, sizeof(out));
		if (strcmp(out, cases[i][2]) != 0)
			fail_msg("recipient '%s': '%s', expected '%s'", cases[i][0], out, cases[i][2]);
	}
	/* long addresses: a hash, stable, different per address */
	char lng[400], a[GL_ADDR_MAX + 1], b[GL_ADDR_MAX + 1];
	memset(lng, 'x', 200);
	snprintf(lng + 200, sizeof(lng) - 200, "@example.org");
	gl_canon_addr(lng, false, "+", a, sizeof(a));
	assert_int_equal(strlen(a), 33);
	assert_int_equal(a[0], '#');
	lng[0] = 'X';
	gl_canon_addr(lng, false, "+", b, sizeof(b));
	assert_string_equal(a, b);
	lng[1] = 'y';
	gl_canon_addr(lng, false, "+", b, sizeof(b));
	assert_string_not_equal(a, b);
	/* client keys */
	struct greylist_params p = { .ipv4_prefix = 24, .ipv6_prefix = 64 };
	char k[GL_CLIENT_MAX];
	assert_true(gl_net_key("192.0.2.77", &p, k, sizeof(k)));
	assert_string_equal(k, "net:192.0.2.0/24");
	assert_true(gl_net_key("::ffff:192.0.2.77", &p, k, sizeof(k)));
	assert_string_equal(k, "net:192.0.2.0/24");
	assert_true(gl_net_key("2001:DB8:a:b:c::1", &p, k, sizeof(k)));
	assert_string_equal(k, "net:2001:db8:a:b::/64");
	assert_false(gl_net_key("", &p, k, sizeof(k)));
	assert_false(gl_net_key("mail.example.org", &p, k, sizeof(k)));
	assert_true(gl_ip_key("::ffff:192.0.2.77", k, sizeof(k)));
	assert_string_equal(k, "ip:192.0.2.77");
	assert_true(gl_domain_key("Example.ORG.", k, sizeof(k)));
	assert_string_equal(k, "spf:example.org");
	assert_false(gl_domain_key("", k, sizeof(k)));
	assert_false(gl_domain_key("a|b.example", k, sizeof(k)));
	/* values */
	struct gl_triplet t;
	assert_true(gl_triplet_parse("1700000000000 0 1700000000000", &t));
	assert_int_equal(t.passed_ms, 0);
	assert_false(gl_triplet_parse("1700000000000 0", &t));
	assert_false(gl_triplet_parse("1700000000000 0 1700000000000 x", &t));
	assert_false(gl_triplet_parse("garbage", &t));
}

/* ---- configuration --------------------------------------------------------- */

static void test_bad_parameters(void **state)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, *state, STATE_BACKEND_LMDB, "");
	const char *bad[][2] = {
		{ "delay = 10m\nretry_window = 5m\n", "retry_window (300000ms) must be longer than delay (600000ms)" },
		{ "delay = 2d\n", "delay" },
		{ "retry_window = 100ms\n", "retry_window" },
		{ "lifetime = 1s\ndelay = 2s\n", "lifetime" },
		{ "auto_allow_after = -1\n", "auto_allow_after" },
		{ "ipv4_prefix = 33\n", "ipv4_prefix" },
		{ "failure_mode = pass\n", "failure_mode" },
		{ "greylist_time = 5m\n", "greylist_time" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char conf[256], why[512] = "";
		snprintf(conf, sizeof(conf), "[check.greylist]\n%s", bad[i][0]);
		assert_false(try_use(&f, conf, why, sizeof(why)));
		if (!strstr(why, bad[i][1]))
			fail_msg("'%s': '%s' lacks '%s'", bad[i][0], why, bad[i][1]);
	}
	use(&f, "delay = 0\nretry_window = 1s\nlifetime = 366d\nauto_allow_after = 1000000\n");
	/* delay 0: the first attempt is still refused (the retry shows an MTA) */
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	tu_state_fx_close(&f);
}

/* ---- the store fails ------------------------------------------------------- */

static void test_store_down(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_REDIS, "");
	use(&f, "delay = 5m\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 300);
	tu_state_redis_stop(s);
	/* the default: tempfail, never a silent pass */
	struct verdict v = tu_state_rcpt(&f, "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.3.0");
	assert_string_equal(v.reason, "Temporary failure checking greylisting; try again later");
	assert_true(metric_result(&f, "error", 1));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"greylist.error\""));
	assert_true(tu_file_has(f.s->logpath, "\"failure_mode\":\"tempfail\""));
	/* continue: through, still logged and counted */
	use(&f, "delay = 5m\nfailure_mode = continue\n");
	assert_passes(tu_state_rcpt(&f, "alice@example.test"));
	assert_passes(tu_state_rcpt(&f, "bob@example.test"));
	assert_true(metric_result(&f, "error", 3));
	assert_true(tu_file_has(f.s->logpath, "\"failure_mode\":\"continue\""));
	/* back: the store reconnects by itself (this Redis kept nothing: new again) */
	tu_state_redis_restart(s);
	tu_state_wait_up(&f, 10000);
	assert_greylisted(tu_state_rcpt(&f, "alice@example.test"), 300);
	tu_state_fx_close(&f);
}

/* A command to the suite's redis-server (inline protocol, after AUTH);
 * true if it answered +OK. */
static bool redis_cmd(struct tu_state_suite *s, const char *cmd)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->r.port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { 2, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char req[256], rep[256];
	snprintf(req, sizeof(req), "AUTH %s\r\n%s\r\n", REDIS_PASSWORD, cmd);
	bool ok = false;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && write(fd, req, strlen(req)) == (ssize_t)strlen(req)) {
		size_t n = 0;
		while (n < sizeof(rep) - 1) {
			ssize_t k = read(fd, rep + n, sizeof(rep) - 1 - n);
			if (k <= 0)
				break;
			n += (size_t)k;
			rep[n] = '\0';
			if (strstr(rep, "\r\n") && strstr(strstr(rep, "\r\n") + 2, "\r\n"))
				break;
		}
		rep[n] = '\0';
		ok = strcmp(rep, "+OK\r\n+OK\r\n") == 0;
	}
	close(fd);
	return ok;
}

/* Reads work, writes fail (Redis over its maxmemory refuses them): a new
 * triplet that cannot be recorded gets the failure mode; a renewal or a
 * count that fails only costs a log line and a count. */
static void test_writes_fail(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_REDIS, "");
	use(&f, "delay = 0\nretry_window = 1s\nlifetime = 1s\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	assert_greylisted(attempt(&f, "192.0.2.7", "b@example.org", "alice@example.test"), 1);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	tu_state_run_for(&f, 300);
	assert_true(redis_cmd(s, "CONFIG SET maxmemory 1"));
	/* known, its renewal due (lifetime/4) and refused: through */
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "known", 1));
	assert_true(metric_result(&f, "error", 1));
	/* new, and not recorded: tempfail, or continue */
	struct verdict v = attempt(&f, "192.0.2.7", "c@example.org", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_string_equal(v.enh, "4.3.0");
	assert_true(metric_result(&f, "error", 2));
	/* passing, and not recorded: the failure mode too */
	v = attempt(&f, "192.0.2.7", "b@example.org", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_true(metric_result(&f, "error", 3));
	use(&f, "delay = 0\nretry_window = 1s\nlifetime = 1s\nfailure_mode = continue\n");
	assert_passes(attempt(&f, "192.0.2.7", "c@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "error", 4));
	assert_true(metric_result(&f, "new", 2));
	assert_true(redis_cmd(s, "CONFIG SET maxmemory 0"));
	assert_true(tu_file_has(f.s->logpath, "a renewal or count only"));
	assert_true(tu_file_has(f.s->logpath, "OOM"));
	/* writable again */
	assert_greylisted(attempt(&f, "192.0.2.7", "c@example.org", "alice@example.test"), 1);
	tu_state_fx_close(&f);
}

static void test_no_store(void **state)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, *state, STATE_BACKEND_LMDB, "");
	f.c.env.state = NULL;
	use(&f, "");
	struct verdict v = attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_string_equal(v.enh, "4.3.0");
	use(&f, "failure_mode = continue\n");
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "error", 2));
	assert_true(tu_file_has(f.s->logpath, "no state store"));
	tu_state_fx_close(&f);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);       /* writes to a stopped redis-server */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_canonical_forms),
		TU_STATE_TESTS(first_early_passed_known),
		TU_STATE_TESTS(defaults_and_ipv6),
		TU_STATE_TESTS(windows_expire),
		TU_STATE_TESTS(auto_allow),
		TU_STATE_TESTS(spf_keying),
		TU_STATE_TESTS(skips),
		TU_STATE_TESTS(manual_allow),
		TU_STATE_TESTS(canonical_through_the_chain),
		cmocka_unit_test(test_bad_parameters),
		cmocka_unit_test(test_store_down),
		cmocka_unit_test(test_writes_fail),
		cmocka_unit_test(test_no_store),
	};
	return cmocka_run_group_tests(tests, suite_setup, tu_state_suite_teardown);
}
