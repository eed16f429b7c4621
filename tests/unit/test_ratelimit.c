/*
 * test_ratelimit.c — the stateful checks "ratelimit" and "traps" through
 * the chain with an event loop, against both state backends: LMDB in a
 * temporary directory and a private redis-server the suite starts on
 * loopback.
 *
 * ratelimit: a burst then 451 4.7.1 with the time to wait, refill as time
 * passes, canonical keys (case, +subaddress), network keying (IPv4 /24,
 * IPv6 /64, IPv4-mapped), every kind (client, network, sender,
 * sender_domain, login, recipient, client_rcpt), a refused transaction
 * costing nothing, the skips (allow list, authenticated, null sender,
 * sender_spf_pass), bad rules, and the failure modes with Redis stopped
 * or no store (tempfail by default, continue when configured; logged and
 * counted).
 * traps: a trap recipient blocks its client for block_time (550 5.1.1,
 * then 554 5.7.1 at every phase and on new connections), other clients
 * unaffected, expiry, @domain and +subaddress traps, action discard
 * (invisible within the transaction, the message dropped), exempt
 * clients, and the failure modes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil_checks.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "mail/envelope.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/metrics.h"

#define REDIS_PASSWORD "rl-test-pw"

/* ---- the suite and the fixture (testutil_checks.h) ------------------------ */

static int suite_setup(void **state)
{
	return tu_state_suite_setup(state, "ratelimit", REDIS_PASSWORD);
}

/* The chain of checks (space-separated names) with a configuration. */
static bool try_use(struct tu_state_fx *f, const char *checks, const char *conf, char *why, size_t whylen)
{
	return tu_chain_try(&f->c, conf, checks, why, whylen);
}

static void use(struct tu_state_fx *f, const char *checks, const char *conf)
{
	char why[512] = "";
	if (!try_use(f, checks, conf, why, sizeof(why)))
		fail_msg("chain: %s", why);
}

/* A session: a new client (CONNECT), a transaction (MAIL), recipients. */
static struct verdict connect_as(struct tu_state_fx *f, const char *ip)
{
	f->e->client.addr = pool_strdup(f->e->pool, ip);
	f->e->client.login = NULL;
	f->ctx.env = NULL;
	return tu_state_run(f, PHASE_CONNECT);
}

static struct verdict mail(struct tu_state_fx *f, const char *sender)
{
	f->e->sender = pool_strdup(f->e->pool, sender);
	f->e->nrcpt = 0;
	f->ctx.env = f->e;
	struct verdict v = tu_state_run(f, PHASE_MAIL);
	return v;
}

/* One message from ip: CONNECT and MAIL; the MAIL verdict. */
static struct verdict message_from(struct tu_state_fx *f, const char *ip, const char *sender)
{
	struct verdict v = connect_as(f, ip);
	assert_int_equal(v.kind, V_CONTINUE);
	return mail(f, sender);
}

static void assert_limited(struct verdict v, const char *text)
{
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.1");
	if (!strstr(v.reason, text))
		fail_msg("reason '%s' lacks '%s'", v.reason, text);
	assert_string_equal(v.check, "ratelimit");
}

/* Seconds in "...; try again in N second(s)". */
static long retry_secs(const struct verdict *v)
{
	const char *p = strstr(v->reason, "try again in ");
	assert_non_null(p);
	return strtol(p + 13, NULL, 10);
}

/* ---- ratelimit ------------------------------------------------------------ */

static void burst_then_limited(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:3/1h\n");
	for (int i = 0; i < 3; i++)
		assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	struct verdict v = message_from(&f, "192.0.2.7", "a@example.org");
	assert_limited(v, "Rate limit exceeded for client 192.0.2.7 (3 per 1h); try again in ");
	/* one token comes back every 20 minutes */
	long secs = retry_secs(&v);
	assert_true(secs > 1190 && secs <= 1200);
	/* recipients are not counted by a message rule; another client has its own bucket */
	assert_int_equal(message_from(&f, "192.0.2.8", "a@example.org").kind, V_CONTINUE);
	for (int i = 0; i < 5; i++)
		assert_int_equal(tu_state_rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* the bucket in the store */
	char val[64];
	assert_int_equal(tu_state_get(&f, "rl:client:192.0.2.7", val, sizeof(val)), STATE_OK);
	assert_true(strtod(val, NULL) < 0.01);
	assert_true(tu_metric_has(f.c.metrics, "rampart_ratelimit_total{stage=\"mx\",instance=\"mx\",kind=\"client\",result=\"allowed\"} 4\n"));
	assert_true(tu_metric_has(f.c.metrics, "rampart_ratelimit_total{stage=\"mx\",instance=\"mx\",kind=\"client\",result=\"limited\"} 1\n"));
	assert_true(tu_metric_has(f.c.metrics, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"ratelimit\",verdict=\"tempfail\"} 1\n"));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"ratelimit.limited\""));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(burst_then_limited)

static void refill(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:2/1s\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	struct verdict v = mail(&f, "a@example.org");
	assert_limited(v, "(2 per 1s); try again in 1 second");
	/* 2 per second: after 600 ms one token (1.2) is back, not two */
	tu_state_run_for(&f, 600);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	/* after a quiet second, the whole burst */
	tu_state_run_for(&f, 1100);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(refill)

static void canonical_keys(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:2/1h rcpt:1/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "Alice+news@Example.ORG").kind, V_CONTINUE);
	assert_int_equal(message_from(&f, "192.0.2.9", "alice@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "192.0.2.10", "ALICE+other@EXAMPLE.ORG"),
		       "Rate limit exceeded for sender alice@example.org (2 per 1h)");
	assert_int_equal(tu_state_get(&f, "rl:sender:alice@example.org", NULL, 0), STATE_OK);
	/* another local part is another sender */
	assert_int_equal(mail(&f, "alice2@example.org").kind, V_CONTINUE);
	/* recipients alike, per RCPT; the refusal is that recipient's only */
	assert_int_equal(tu_state_rcpt(&f, "Bob+a@Example.test").kind, V_CONTINUE);
	struct verdict v = tu_state_rcpt(&f, "bob@example.test");
	assert_limited(v, "Rate limit exceeded for recipient bob@example.test (1 per 1h)");
	assert_int_equal(tu_state_rcpt(&f, "carol@example.test").kind, V_CONTINUE);
	assert_int_equal(f.e->nrcpt, 2);
	assert_int_equal(tu_state_get(&f, "rl:recipient:bob@example.test", NULL, 0), STATE_OK);
	tu_state_fx_close(&f);

	/* another separator, and none */
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:1/1h\nsubaddress_separator = -+\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "bob-list@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "Bob+x@example.org"), "sender bob@example.org");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:1/1h\nsubaddress_separator =\n");
	assert_int_equal(mail(&f, "carl+x@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "carl@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "CARL+X@example.org"), "sender carl+x@example.org");
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(canonical_keys)

static void network_keying(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = network:2/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(message_from(&f, "192.0.2.8", "b@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "192.0.2.200", "c@example.org"),
		       "Rate limit exceeded for network 192.0.2.0/24 (2 per 1h)");
	/* IPv4-mapped IPv6 is the IPv4 client */
	assert_limited(message_from(&f, "::ffff:192.0.2.9", "c@example.org"), "network 192.0.2.0/24");
	assert_int_equal(message_from(&f, "192.0.3.1", "c@example.org").kind, V_CONTINUE);
	/* IPv6 by /64 */
	assert_int_equal(message_from(&f, "2001:db8:1:2::1", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(message_from(&f, "2001:DB8:1:2:ffff::9", "a@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "2001:db8:1:2:1:2:3:4", "a@example.org"), "network 2001:db8:1:2::/64");
	assert_int_equal(message_from(&f, "2001:db8:1:3::1", "a@example.org").kind, V_CONTINUE);
	/* other prefixes */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = network:1/1h\nipv4_prefix = 16\nipv6_prefix = 48\n");
	assert_int_equal(message_from(&f, "198.51.1.1", "a@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "198.51.200.1", "a@example.org"), "network 198.51.0.0/16");
	assert_int_equal(message_from(&f, "2001:db8:5:1::1", "a@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "2001:db8:5:ff::1", "a@example.org"), "network 2001:db8:5::/48");
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(network_keying)

static void each_kind(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	/* sender_domain: any sender of the domain; the null sender is not counted */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender_domain:2/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@Example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "b@example.ORG.").kind, V_CONTINUE);
	assert_limited(mail(&f, "c@example.org"), "Rate limit exceeded for sender_domain example.org (2 per 1h)");
	assert_int_equal(mail(&f, "c@example.net").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "").kind, V_CONTINUE);

	/* login: only authenticated clients, whatever the other rules */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = login:2/1h client:1/1h\n");
	connect_as(&f, "192.0.2.20");
	f.e->client.login = pool_strdup(f.e->pool, "Carol");
	assert_int_equal(mail(&f, "carol@example.test").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "carol@example.test").kind, V_CONTINUE);
	assert_limited(mail(&f, "carol@example.test"), "Rate limit exceeded for login carol (2 per 1h)");
	f.e->client.login = pool_strdup(f.e->pool, "dave");
	assert_int_equal(mail(&f, "dave@example.test").kind, V_CONTINUE);
	/* the same address unauthenticated: the client rule, not login */
	f.e->client.login = NULL;
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "x@example.org"), "client 192.0.2.20");

	/* client_rcpt: recipients per client, across transactions */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client_rcpt:3/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.30", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "a@example.test").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "b@example.test").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "c@example.test").kind, V_CONTINUE);
	assert_limited(tu_state_rcpt(&f, "d@example.test"), "Rate limit exceeded for client_rcpt 192.0.2.30 (3 per 1h)");
	assert_int_equal(message_from(&f, "192.0.2.31", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "d@example.test").kind, V_CONTINUE);
	assert_true(tu_metric_has(f.c.metrics, "kind=\"client_rcpt\",result=\"limited\"} 1\n"));
	assert_true(tu_metric_has(f.c.metrics, "kind=\"login\",result=\"allowed\"} 3\n"));
	assert_true(tu_metric_has(f.c.metrics, "kind=\"sender_domain\",result=\"limited\"} 1\n"));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(each_kind)

/* A transaction one bucket refuses takes nothing from the others. */
static void refused_costs_nothing(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:5/1h sender:1/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	for (int i = 0; i < 3; i++)
		assert_limited(mail(&f, "a@example.org"), "sender a@example.org (1 per 1h)");
	double t = tu_state_tokens(&f, "rl:client:192.0.2.7", 5.0 / 3600, 5);
	assert_true(t > 3.99 && t < 4.01);
	for (int i = 0; i < 4; i++) {
		char snd[64];
		snprintf(snd, sizeof(snd), "s%d@example.org", i);
		assert_int_equal(mail(&f, snd).kind, V_CONTINUE);
	}
	/* both empty: the longest wait is told (the sender's hour, not the client's 12 minutes) */
	struct verdict v = mail(&f, "a@example.org");
	assert_limited(v, "sender a@example.org");
	assert_true(retry_secs(&v) > 3500);
	assert_limited(mail(&f, "new@example.org"), "client 192.0.2.7 (5 per 1h); try again in 72");
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(refused_costs_nothing)

static void skips(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:1/1h rcpt:1/1h\n");
	/* the local allow list */
	connect_as(&f, "192.0.2.7");
	f.ctx.client_allowed = true;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
		assert_int_equal(tu_state_rcpt(&f, "bob@example.test").kind, V_CONTINUE);
	}
	/* connect clears the allow-list fact: the same client is limited now */
	connect_as(&f, "192.0.2.7");
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	/* authenticated: skipped ... */
	connect_as(&f, "192.0.2.7");
	f.e->client.login = pool_strdup(f.e->pool, "alice");
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "carol@example.test").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "carol@example.test").kind, V_CONTINUE);
	/* ... unless authenticated = yes */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:1/1h rcpt:1/1h\nauthenticated = yes\n");
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	/* no client address: nothing to key on */
	connect_as(&f, "");
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	/* no rules: the check does nothing */
	use(&f, "ratelimit", "");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);

	/* sender_spf_pass: only senders whose domain passed SPF are counted */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:1/1h sender_domain:1/1h\nsender_spf_pass = yes\n");
	connect_as(&f, "192.0.2.40");
	f.ctx.auth.spf = AUTH_SPF_FAIL;
	snprintf(f.ctx.auth.spf_domain, sizeof(f.ctx.auth.spf_domain), "victim.example");
	for (int i = 0; i < 3; i++)
		assert_int_equal(mail(&f, "ceo@victim.example").kind, V_CONTINUE);
	f.ctx.auth.spf = AUTH_SPF_PASS;
	snprintf(f.ctx.auth.spf_domain, sizeof(f.ctx.auth.spf_domain), "Victim.Example");
	assert_int_equal(mail(&f, "ceo@victim.example").kind, V_CONTINUE);
	assert_limited(mail(&f, "ceo@victim.example"), "victim.example");
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(skips)

static void bad_rules(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	char why[512];
	const char *bad[][2] = {
		{ "rules = client:100\n", "expected KIND:COUNT/PERIOD" },
		{ "rules = host:1/1h\n", "unknown kind 'host'" },
		{ "rules = client:0/1h\n", "COUNT must be" },
		{ "rules = client:x/1h\n", "COUNT must be" },
		{ "rules = client:10/1x\n", "PERIOD" },
		{ "rules = client:10/10ms\n", "PERIOD" },
		{ "rules = client:1/1h client:10/1d\n", "a second rule for client" },
		{ "rules = rcpt:1/1h recipient:2/1h\n", "a second rule for recipient" },
		{ "ipv4_prefix = 33\n", "ipv4_prefix" },
		{ "failure_mode = pass\n", "failure_mode" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char conf[256];
		snprintf(conf, sizeof(conf), "[check.ratelimit]\n%s", bad[i][0]);
		why[0] = '\0';
		assert_false(try_use(&f, "ratelimit", conf, why, sizeof(why)));
		if (!strstr(why, bad[i][1]))
			fail_msg("'%s': '%s' lacks '%s'", bad[i][0], why, bad[i][1]);
	}
	/* good ones, every kind and period form */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:100/1h, network:300/1h sender:200/1d "
	    "sender_domain:1000/1d rcpt:50/1m login:10/90s client_rcpt:5/500ms\n");
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(bad_rules)

/* ---- the store fails ------------------------------------------------------ */

static void ratelimit_store_down(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_REDIS, "");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:5/1h rcpt:5/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	tu_state_redis_stop(s);
	/* the default: tempfail, never a silent pass */
	struct verdict v = mail(&f, "a@example.org");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.3.0");
	assert_non_null(strstr(v.reason, "Temporary failure checking rate limits"));
	v = tu_state_rcpt(&f, "bob@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_true(tu_metric_has(f.c.metrics, "kind=\"client\",result=\"error\"} 1\n"));
	assert_true(tu_metric_has(f.c.metrics, "kind=\"recipient\",result=\"error\"} 1\n"));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"ratelimit.error\""));
	assert_true(tu_file_has(f.s->logpath, "\"failure_mode\":\"tempfail\""));
	/* continue: the mail goes on, still logged and counted */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:5/1h sender:5/1h\nfailure_mode = continue\n");
	v = mail(&f, "a@example.org");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_true(tu_metric_has(f.c.metrics, "kind=\"client\",result=\"error\"} 2\n"));
	assert_true(tu_metric_has(f.c.metrics, "kind=\"sender\",result=\"error\"} 1\n"));
	assert_true(tu_file_has(f.s->logpath, "\"failure_mode\":\"continue\""));
	tu_state_redis_restart(s);
	/* back: the store reconnects by itself */
	tu_state_wait_up(&f, 10000);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_true(tu_metric_has(f.c.metrics, "kind=\"client\",result=\"allowed\"} 2\n"));
	tu_state_fx_close(&f);
}

/* No store at all (a stage that failed to give one): the failure mode. */
static void no_store(void **state)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, *state, STATE_BACKEND_LMDB, "");
	f.c.env.state = NULL;
	use(&f, "ratelimit traps", "[check.ratelimit]\nrules = client:5/1h\n[check.traps]\naddresses = trap@example.test\n");
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_TEMPFAIL);
	assert_int_equal(f.v.code, 421);
	struct verdict v = mail(&f, "a@example.org");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	use(&f, "ratelimit traps", "[check.ratelimit]\nrules = client:5/1h\nfailure_mode = continue\n"
	    "[check.traps]\naddresses = trap@example.test\nfailure_mode = continue\n");
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "trap@example.test").kind, V_REJECT);
	/* connect (both chains), mail and the trap recipient */
	assert_true(tu_metric_has(f.c.metrics, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"error\"} 4\n"));
	assert_true(tu_metric_has(f.c.metrics, "rampart_ratelimit_total{stage=\"mx\",instance=\"mx\",kind=\"client\",result=\"error\"} 2\n"));
	assert_true(tu_file_has(f.s->logpath, "no state store"));
	tu_state_fx_close(&f);
}

/* ---- traps ---------------------------------------------------------------- */

static void trap_blocks_client(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test, @spamtrap.example.test\nblock_time = 1s\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* the trap looks like any unknown address */
	struct verdict v = tu_state_rcpt(&f, "Trap@Example.TEST");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.1.1");
	assert_string_equal(v.reason, "<Trap@Example.TEST>: Recipient address rejected: User unknown");
	char val[128];
	assert_int_equal(tu_state_get(&f, "trap:192.0.2.7", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "Trap@Example.TEST");
	/* blocked from now on: the rest of the session ... */
	v = tu_state_rcpt(&f, "bob@example.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	assert_string_equal(v.enh, "5.7.1");
	assert_string_equal(v.reason, "Service unavailable; client [192.0.2.7] blocked for sending to a spam trap");
	assert_int_equal(tu_state_run(&f, PHASE_DATA).kind, V_REJECT);
	assert_int_equal(tu_state_run(&f, PHASE_HELO).kind, V_REJECT);
	assert_int_equal(mail(&f, "x@example.org").kind, V_REJECT);
	/* ... and new connections */
	v = connect_as(&f, "192.0.2.7");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	/* other clients (even next door) are not */
	assert_int_equal(message_from(&f, "192.0.2.8", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* a whole trap domain, and a subaddress of a trap */
	assert_int_equal(tu_state_rcpt(&f, "anyone@SpamTrap.example.test").kind, V_REJECT);
	assert_int_equal(connect_as(&f, "192.0.2.8").kind, V_REJECT);
	assert_int_equal(message_from(&f, "192.0.2.9", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "trap+tag@example.test").kind, V_REJECT);
	assert_int_equal(connect_as(&f, "192.0.2.9").kind, V_REJECT);
	/* not traps */
	assert_int_equal(message_from(&f, "192.0.2.10", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "trapper@example.test").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "trap@sub.spamtrap.example.test").kind, V_CONTINUE);
	/* the block expires after block_time */
	tu_state_run_for(&f, 1200);
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	assert_true(tu_metric_has(f.c.metrics, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"hit\"} 3\n"));
	assert_true(tu_metric_has(f.c.metrics, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"blocked\"} 7\n"));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"traps.hit\""));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(trap_blocks_client)

static void trap_discard(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\naction = discard\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* accepted, as if nothing happened, for the rest of the transaction */
	struct verdict v = tu_state_rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_DISCARD);
	assert_int_equal(f.e->nrcpt, 2);
	assert_int_equal(tu_state_rcpt(&f, "bob@example.test").kind, V_CONTINUE);
	assert_int_equal(tu_state_run(&f, PHASE_DATA).kind, V_CONTINUE);
	/* the message is dropped whole */
	v = tu_state_run(&f, PHASE_MESSAGE);
	assert_int_equal(v.kind, V_DISCARD);
	assert_non_null(strstr(v.reason, "spam trap <trap@example.test>"));
	/* the next transaction is refused */
	v = mail(&f, "x@example.org");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	/* mail without a trap is not discarded */
	assert_int_equal(message_from(&f, "192.0.2.8", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(tu_state_run(&f, PHASE_MESSAGE).kind, V_CONTINUE);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(trap_discard)

static void trap_exempt(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\naction = discard\n");
	/* allowed and authenticated clients: refused recipient, no block, no discard */
	connect_as(&f, "192.0.2.7");
	f.ctx.client_allowed = true;
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	struct verdict v = tu_state_rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	f.e->client.login = pool_strdup(f.e->pool, "alice");
	assert_int_equal(mail(&f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(tu_state_rcpt(&f, "trap@example.test").kind, V_REJECT);
	f.e->client.login = NULL;
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	assert_int_equal(tu_state_get(&f, "trap:192.0.2.7", NULL, 0), STATE_NOTFOUND);
	assert_true(tu_metric_has(f.c.metrics, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"exempt\"} 2\n"));
	/* bad entries */
	char why[512] = "";
	assert_false(try_use(&f, "traps", "[check.traps]\naddresses = trap\n", why, sizeof(why)));
	assert_non_null(strstr(why, "expected local@domain or @domain"));
	assert_false(try_use(&f, "traps", "[check.traps]\naddresses = trap@\n", why, sizeof(why)));
	assert_false(try_use(&f, "traps", "[check.traps]\nblock_time = 10ms\n", why, sizeof(why)));
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(trap_exempt)

static void traps_store_down(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_REDIS, "");
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "x@example.org").kind, V_CONTINUE);
	tu_state_redis_stop(s);
	/* tempfail: 421 at the greeting, 451 later, the trap recipient too */
	struct verdict v = tu_state_rcpt(&f, "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.3.0");
	v = tu_state_rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	v = connect_as(&f, "192.0.2.7");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 421);
	/* continue: not blocked, the trap still refused */
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\nfailure_mode = continue\n");
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	v = tu_state_rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_true(tu_metric_has(f.c.metrics, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"error\"} 6\n"));
	assert_true(tu_file_has(f.s->logpath, "\"event\":\"traps.error\""));
	tu_state_redis_restart(s);
	tu_state_fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_STATE_TESTS(burst_then_limited),
		TU_STATE_TESTS(refill),
		TU_STATE_TESTS(canonical_keys),
		TU_STATE_TESTS(network_keying),
		TU_STATE_TESTS(each_kind),
		TU_STATE_TESTS(refused_costs_nothing),
		TU_STATE_TESTS(skips),
		TU_STATE_TESTS(bad_rules),
		cmocka_unit_test(ratelimit_store_down),
		cmocka_unit_test(no_store),
		TU_STATE_TESTS(trap_blocks_client),
		TU_STATE_TESTS(trap_discard),
		TU_STATE_TESTS(trap_exempt),
		cmocka_unit_test(traps_store_down),
	};
	return cmocka_run_group_tests(tests, suite_setup, tu_state_suite_teardown);
}
