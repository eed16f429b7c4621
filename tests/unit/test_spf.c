/*
 * test_spf.c — unit tests of the spf check (shared/checks/spf.c) run
 * through the chain, with DNS from a dns_local_data file (local_only):
 * each result (pass, fail, softfail, neutral, none, temperror, permerror)
 * for clients in 192.0.2.0/24 and 2001:db8::/32, loopback clients judged
 * like any other, the void-lookup and 10-term limits, the explanation, the
 * Received-SPF header, the action table and its reply codes, the HELO
 * identity, skipped clients, ctx->auth, configuration errors, and the
 * worker-thread path: a resolver that never answers leaves the event loop
 * running (a timer keeps ticking) until the timeout gives temperror.
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "checks/spf.h"
#include "mail/envelope.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/dns.h"
#include "util/log.h"
#include "util/metrics.h"

static const char ZONE[] =
	"pass.test.       300 IN TXT \"v=spf1 ip4:192.0.2.0/25 ip6:2001:db8::/48 -all\"\n"
	"fail.test.       300 IN TXT \"v=spf1 -all\"\n"
	"softfail.test.   300 IN TXT \"v=spf1 ~all\"\n"
	"neutral.test.    300 IN TXT \"v=spf1 ?all\"\n"
	"none.test.       300 IN A 192.0.2.1\n"
	"none.test.       300 IN TXT \"not an SPF record\"\n"
	/* a TXT answer that does not decode: the resolver's temporary error */
	"temp.test.       300 IN TXT \\# 1 05\n"
	"perm.test.       300 IN TXT \"v=spf1 foo:bar.test -all\"\n"
	"twice.test.      300 IN TXT \"v=spf1 -all\"\n"
	"twice.test.      300 IN TXT \"v=spf1 +all\"\n"
	"mx.test.         300 IN TXT \"v=spf1 mx -all\"\n"
	"mx.test.         300 IN MX 10 mail.mx.test.\n"
	"mail.mx.test.    300 IN A 192.0.2.10\n"
	"mail.mx.test.    300 IN AAAA 2001:db8::10\n"
	"exp.test.        300 IN TXT \"v=spf1 -all exp=why.exp.test\"\n"
	"why.exp.test.    300 IN TXT \"%{i} may not send for %{d}\"\n"
	/* three void lookups before the match */
	"void3.test.      300 IN TXT \"v=spf1 a:nx1.test a:nx2.test a:nx3.test ip4:192.0.2.0/24 -all\"\n"
	"void2.test.      300 IN TXT \"v=spf1 a:nx1.test a:nx2.test ip4:192.0.2.0/24 -all\"\n"
	/* eleven terms that query the DNS (each include one) */
	"many.test.       300 IN TXT \"v=spf1 include:i1.test include:i2.test include:i3.test include:i4.test "
	"include:i5.test include:i6.test include:i7.test include:i8.test include:i9.test include:i10.test "
	"include:i11.test -all\"\n"
	"i1.test. 300 IN TXT \"v=spf1 -all\"\n" "i2.test. 300 IN TXT \"v=spf1 -all\"\n"
	"i3.test. 300 IN TXT \"v=spf1 -all\"\n" "i4.test. 300 IN TXT \"v=spf1 -all\"\n"
	"i5.test. 300 IN TXT \"v=spf1 -all\"\n" "i6.test. 300 IN TXT \"v=spf1 -all\"\n"
	"i7.test. 300 IN TXT \"v=spf1 -all\"\n" "i8.test. 300 IN TXT \"v=spf1 -all\"\n"
	"i9.test. 300 IN TXT \"v=spf1 -all\"\n" "i10.test. 300 IN TXT \"v=spf1 -all\"\n"
	"i11.test. 300 IN TXT \"v=spf1 +all\"\n"
	"helo.test.       300 IN TXT \"v=spf1 a -all\"\n"
	"helo.test.       300 IN A 192.0.2.20\n"
	"badhelo.test.    300 IN TXT \"v=spf1 -all\"\n";

struct fx {
	char dir[512];
	char zone[600];
	char logpath[600];
	int logfd;
	struct tu_chain_fx c;           /* its DNS server that never answers: the slow resolver's */
	struct envelope *e;
	struct check_ctx ctx;
	int ticks;
};

/* The resolver: local data only, or (slow) forwarding what is not local
 * data to the trap, with a short timeout. */
static void use_dns(struct fx *f, bool slow)
{
	tu_chain_fx_dns(&f->c, f->zone, slow, slow ? 300 : 5000);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (!f || tu_mkdtemp(f->dir, sizeof(f->dir), "spf") != 0)
		return -1;
	snprintf(f->zone, sizeof(f->zone), "%s/zone", f->dir);
	snprintf(f->logpath, sizeof(f->logpath), "%s/log", f->dir);
	tu_write_file(f->zone, ZONE);
	f->logfd = tu_log_open(f->logpath);
	if (f->logfd < 0)
		return -1;
	if (!tu_chain_fx_init(&f->c, true))
		return -1;
	use_dns(f, false);

	f->e = tu_session_new(&f->ctx, "192.0.2.7", "alice@pass.test", "client.example");
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	tu_chain_fx_free(&f->c, &f->ctx);
	envelope_free(f->e);
	tu_log_close(f->logfd);
	tu_rmtree(f->dir);
	free(f);
	return 0;
}

/* ---- helpers ------------------------------------------------------------- */

static struct chain *build(struct fx *f, const char *conf, char *why, size_t whylen)
{
	tu_config_set(&f->c.cfg, conf);
	return tu_chain_new(f->c.cfg, "spf", &f->c.env, why, whylen);
}

static void use_chain(struct fx *f, const char *conf)
{
	tu_chain_use(&f->c, conf, "spf");
}

/* MAIL FROM:<sender> from client ip: run the MAIL phase to its answer. */
static struct verdict mail(struct fx *f, const char *ip, const char *sender)
{
	f->e->client.addr = pool_strdup(f->e->pool, ip);
	f->e->sender = pool_strdup(f->e->pool, sender);
	check_ctx_clear_headers(&f->ctx);
	return tu_chain_verdict(f->c.chain, PHASE_MAIL, &f->ctx, f->c.base);
}

static const char *header(struct fx *f, const char *name)
{
	return tu_added_header(&f->ctx, name);
}

/* The result the header reports, which is the first word of its value. */
static void assert_result(struct fx *f, const char *result)
{
	const char *h = header(f, "Received-SPF");
	assert_non_null(h);
	size_t n = strlen(result);
	if (strncmp(h, result, n) != 0 || h[n] != ' ')
		fail_msg("Received-SPF: %s (expected %s)", h, result);
}

/* ---- results ------------------------------------------------------------- */

static void test_results_ipv4(void **state)
{
	struct fx *f = *state;
	/* every result continues, so the header tells it */
	use_chain(f, "[check.spf]\nfail = continue\nsoftfail = continue\ntemperror = continue\n"
		     "permerror = continue\n");
	struct { const char *ip, *sender, *result; enum auth_spf a; } cases[] = {
		{ "192.0.2.7", "alice@pass.test", "pass", AUTH_SPF_PASS },
		{ "192.0.2.200", "alice@pass.test", "fail", AUTH_SPF_FAIL },
		{ "192.0.2.7", "bob@fail.test", "fail", AUTH_SPF_FAIL },
		{ "192.0.2.7", "bob@softfail.test", "softfail", AUTH_SPF_SOFTFAIL },
		{ "192.0.2.7", "bob@neutral.test", "neutral", AUTH_SPF_NEUTRAL },
		{ "192.0.2.7", "bob@none.test", "none", AUTH_SPF_NONE },
		{ "192.0.2.7", "bob@nowhere.test", "none", AUTH_SPF_NONE },
		{ "192.0.2.7", "bob@temp.test", "temperror", AUTH_SPF_TEMPERROR },
		{ "192.0.2.7", "bob@perm.test", "permerror", AUTH_SPF_PERMERROR },
		{ "192.0.2.7", "bob@twice.test", "permerror", AUTH_SPF_PERMERROR },
		{ "192.0.2.10", "bob@mx.test", "pass", AUTH_SPF_PASS },
		{ "192.0.2.11", "bob@mx.test", "fail", AUTH_SPF_FAIL },
		{ "192.0.2.7", "bob@localhost", "none", AUTH_SPF_NONE },        /* not a usable domain */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct verdict v = mail(f, cases[i].ip, cases[i].sender);
		assert_int_equal(v.kind, V_CONTINUE);
		assert_result(f, cases[i].result);
		assert_int_equal(f->ctx.auth.spf, cases[i].a);
		assert_string_equal(f->ctx.auth.spf_identity, "mailfrom");
		assert_string_equal(f->ctx.auth.spf_domain, strchr(cases[i].sender, '@') + 1);
	}
}

static void test_results_ipv6(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.spf]\nfail = continue\n");
	mail(f, "2001:db8::7", "alice@pass.test");
	assert_result(f, "pass");
	tu_assert_contains(header(f, "Received-SPF"), "client-ip=\"2001:db8::7\";");
	mail(f, "2001:db8:1::7", "alice@pass.test");
	assert_result(f, "fail");
	mail(f, "2001:db8::10", "bob@mx.test");
	assert_result(f, "pass");
	mail(f, "2001:db8::11", "bob@mx.test");
	assert_result(f, "fail");
	mail(f, "2001:db8::7", "bob@softfail.test");
	assert_result(f, "softfail");
	/* an IPv4 client on an IPv6 socket is an IPv4 client */
	mail(f, "::ffff:192.0.2.7", "alice@pass.test");
	assert_result(f, "pass");
}

/* libspf2 passes 127/8 and ::1 whatever the record; the check does not. */
static void test_loopback_is_not_special(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.spf]\nfail = continue\n");
	mail(f, "127.0.0.1", "bob@fail.test");
	assert_result(f, "fail");
	mail(f, "::1", "bob@fail.test");
	assert_result(f, "fail");
}

static void test_void_lookup_limit(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.spf]\npermerror = continue\n");
	mail(f, "192.0.2.7", "bob@void2.test");
	assert_result(f, "pass");                       /* two: allowed */
	mail(f, "192.0.2.7", "bob@void3.test");
	assert_result(f, "permerror");                  /* the third stops it */
	tu_assert_contains(header(f, "Received-SPF"), "void DNS lookups");
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_PERMERROR);
	/* the limit is a parameter */
	use_chain(f, "[check.spf]\nmax_void_lookups = 3\n");
	mail(f, "192.0.2.7", "bob@void3.test");
	assert_result(f, "pass");
	use_chain(f, "[check.spf]\nmax_void_lookups = 0\npermerror = continue\n");
	mail(f, "192.0.2.7", "bob@void2.test");
	assert_result(f, "permerror");
}

static void test_term_limit(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.spf]\npermerror = continue\n");
	/* eleven includes: libspf2 alone counts each include afresh */
	mail(f, "192.0.2.7", "bob@many.test");
	assert_result(f, "permerror");
	tu_assert_contains(header(f, "Received-SPF"), "more than 10 DNS-querying mechanisms");
}

static void test_explanation(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	struct verdict v = mail(f, "192.0.2.7", "bob@exp.test");
	assert_int_equal(v.kind, V_REJECT);
	tu_assert_contains(v.reason, "192.0.2.7 may not send for exp.test");
	/* without exp=: the configured default, macros expanded */
	v = mail(f, "192.0.2.9", "bob@fail.test");
	tu_assert_contains(v.reason, "192.0.2.9 is not allowed to send mail for fail.test");
	use_chain(f, "[check.spf]\nexplanation = See https://example.test/spf?d=%{d}\n");
	v = mail(f, "192.0.2.9", "bob@fail.test");
	tu_assert_contains(v.reason, "See https://example.test/spf?d=fail.test");
}

/* ---- the header, the identity, ctx->auth --------------------------------- */

static void test_received_spf_header(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	mail(f, "192.0.2.7", "alice@pass.test");
	assert_string_equal(header(f, "Received-SPF"),
			    "pass (mx.example.test: domain of alice@pass.test designates 192.0.2.7 as permitted "
			    "sender) client-ip=192.0.2.7; envelope-from=\"alice@pass.test\"; helo=client.example; "
			    "receiver=mx.example.test; identity=mailfrom;");
	assert_null(header(f, "X-Rampart-SPF"));
	/* odd bytes from the client are quoted or replaced, never raw */
	f->ctx.helo = "bad\"helo\r\n";
	mail(f, "192.0.2.7", "we\"ird@pass.test");
	const char *h = header(f, "Received-SPF");
	tu_assert_contains(h, "envelope-from=\"we\\\"ird@pass.test\";");
	tu_assert_contains(h, "helo=\"bad\\\"helo??\";");
	assert_null(strpbrk(h, "\r\n"));
	f->ctx.helo = "client.example";
	/* errors say what the problem was */
	use_chain(f, "[check.spf]\ntemperror = continue\n");
	mail(f, "192.0.2.7", "bob@temp.test");
	tu_assert_contains(header(f, "Received-SPF"), "problem=\"DNS error looking up the SPF record of temp.test\";");
	/* no header when asked */
	use_chain(f, "[check.spf]\nheader = no\n");
	mail(f, "192.0.2.7", "alice@pass.test");
	assert_null(header(f, "Received-SPF"));
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_PASS);
	/* the function other front-ends use */
	struct spf_outcome o = { .result = AUTH_SPF_NONE, .identity = "helo", .sender = "postmaster@h.test" };
	struct spf_request rq = { "2001:db8::1", "", "h.test" };
	char out[600];
	spf_received_spf(&o, &rq, "mx.test", out, sizeof(out));
	assert_string_equal(out, "none (mx.test: domain of postmaster@h.test does not designate permitted sender "
			    "hosts) client-ip=\"2001:db8::1\"; envelope-from=\"\"; helo=h.test; receiver=mx.test; "
			    "identity=helo;");
}

static void test_null_sender_uses_helo(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	f->ctx.helo = "helo.test";
	struct verdict v = mail(f, "192.0.2.20", "");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_result(f, "pass");
	assert_string_equal(f->ctx.auth.spf_identity, "helo");
	assert_string_equal(f->ctx.auth.spf_domain, "helo.test");
	tu_assert_contains(header(f, "Received-SPF"), "identity=helo;");
	v = mail(f, "192.0.2.21", "");
	assert_int_equal(v.kind, V_REJECT);
	tu_assert_contains(v.reason, "SPF fail for helo.test from 192.0.2.21 (helo)");
	/* a HELO that is no domain: none */
	f->ctx.helo = "[192.0.2.21]";
	v = mail(f, "192.0.2.21", "");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_result(f, "none");
	f->ctx.helo = "client.example";
}

static void test_check_helo_first(void **state)
{
	struct fx *f = *state;
	f->ctx.helo = "badhelo.test";
	use_chain(f, "");
	struct verdict v = mail(f, "192.0.2.7", "alice@pass.test");
	assert_int_equal(v.kind, V_CONTINUE);           /* off: MAIL FROM decides */
	assert_string_equal(f->ctx.auth.spf_identity, "mailfrom");
	use_chain(f, "[check.spf]\ncheck_helo = yes\n");
	v = mail(f, "192.0.2.7", "alice@pass.test");
	assert_int_equal(v.kind, V_REJECT);             /* a HELO fail decides */
	assert_string_equal(f->ctx.auth.spf_identity, "helo");
	assert_string_equal(f->ctx.auth.spf_domain, "badhelo.test");
	f->ctx.helo = "helo.test";                      /* HELO passes: MAIL FROM decides */
	v = mail(f, "192.0.2.20", "bob@fail.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_string_equal(f->ctx.auth.spf_identity, "mailfrom");
	v = mail(f, "192.0.2.20", "alice@pass.test");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(f->ctx.auth.spf_identity, "mailfrom");
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_PASS);
	f->ctx.helo = "client.example";
}

static void test_skipped_clients(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.spf]\nskip_networks = 198.51.100.0/24, 2001:db8:5::/48\n");
	struct verdict v = mail(f, "198.51.100.9", "bob@fail.test");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_UNCHECKED);
	assert_null(header(f, "Received-SPF"));
	v = mail(f, "2001:db8:5::9", "bob@fail.test");
	assert_int_equal(v.kind, V_CONTINUE);
	f->e->client.login = pool_strdup(f->e->pool, "alice");
	v = mail(f, "192.0.2.9", "bob@fail.test");
	assert_int_equal(v.kind, V_CONTINUE);           /* authenticated */
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_UNCHECKED);
	use_chain(f, "[check.spf]\nskip_authenticated = no\n");
	v = mail(f, "192.0.2.9", "bob@fail.test");
	assert_int_equal(v.kind, V_REJECT);
	f->e->client.login = NULL;
	/* a stale result of the last transaction does not survive */
	use_chain(f, "[check.spf]\nskip_networks = 198.51.100.0/24\n");
	mail(f, "192.0.2.7", "alice@pass.test");
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_PASS);
	mail(f, "198.51.100.9", "alice@pass.test");
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_UNCHECKED);
	assert_string_equal(f->ctx.auth.spf_domain, "");
	/* no client address (a front-end that does not know it) */
	v = mail(f, "", "bob@fail.test");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_UNCHECKED);
}

/* ---- the action table ----------------------------------------------------- */

static void test_default_actions(void **state)
{
	struct fx *f = *state;
	use_chain(f, "");
	struct verdict v = mail(f, "192.0.2.7", "bob@fail.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.7.23");
	assert_string_equal(v.check, "spf");
	tu_assert_contains(v.reason, "SPF fail for fail.test from 192.0.2.7 (mailfrom): ");
	assert_result(f, "fail");                       /* the header is added all the same */
	v = mail(f, "192.0.2.7", "bob@temp.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.24");
	tu_assert_contains(v.reason, "SPF temperror for temp.test from 192.0.2.7");
	v = mail(f, "192.0.2.7", "bob@softfail.test");  /* tag */
	assert_int_equal(v.kind, V_CONTINUE);
	tu_assert_contains(header(f, "X-Rampart-SPF"), "softfail (mx.example.test: domain of transitioning");
	v = mail(f, "192.0.2.7", "bob@perm.test");      /* tag */
	assert_int_equal(v.kind, V_CONTINUE);
	tu_assert_contains(header(f, "X-Rampart-SPF"), "permerror (");
	for (const char **s = (const char *[]){ "alice@pass.test", "bob@neutral.test", "bob@none.test", NULL }; *s; s++) {
		v = mail(f, "192.0.2.7", *s);
		assert_int_equal(v.kind, V_CONTINUE);
		assert_null(header(f, "X-Rampart-SPF"));
	}
	/* the chain's log line carries the details */
	char *log = tu_read_file(f->logpath, NULL);
	assert_non_null(log);
	tu_assert_contains(log, "\"check\":\"spf\"");
	tu_assert_contains(log, "\"reason\":\"SPF fail for fail.test from 192.0.2.7 (mailfrom): 192.0.2.7 is not allowed");
	tu_assert_contains(log, "\"event\":\"spf.result\"");
	free(log);
	char *m = NULL;
	struct buf b = BUF_INIT;
	metrics_render(f->c.metrics, &b);
	m = buf_steal(&b, NULL);
	tu_assert_contains(m, "result=\"fail\"} 1");
	free(m);
}

static void test_configured_actions(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.spf]\npass = tag\nfail = tempfail\nsoftfail = reject\nneutral = reject\n"
		     "none = tempfail\ntemperror = continue\npermerror = reject\n");
	struct verdict v = mail(f, "192.0.2.7", "alice@pass.test");
	assert_int_equal(v.kind, V_CONTINUE);
	tu_assert_contains(header(f, "X-Rampart-SPF"), "pass (");
	v = mail(f, "192.0.2.7", "bob@fail.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.23");
	v = mail(f, "192.0.2.7", "bob@softfail.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.7.23");
	v = mail(f, "192.0.2.7", "bob@neutral.test");
	assert_int_equal(v.kind, V_REJECT);
	v = mail(f, "192.0.2.7", "bob@none.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	v = mail(f, "192.0.2.7", "bob@temp.test");
	assert_int_equal(v.kind, V_CONTINUE);
	v = mail(f, "192.0.2.7", "bob@perm.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.7.24");
	tu_assert_contains(v.reason, "unknown mechanism");
}

static void test_config_errors(void **state)
{
	struct fx *f = *state;
	char why[512];
	assert_null(build(f, "[check.spf]\nfail = bounce\n", why, sizeof(why)));
	tu_assert_contains(why, "fail");
	assert_null(build(f, "[check.spf]\nskip_networks = 192.0.2.0/33\n", why, sizeof(why)));
	tu_assert_contains(why, "skip_networks");
	assert_null(build(f, "[check.spf]\nexplanation = %{x}\n", why, sizeof(why)));
	tu_assert_contains(why, "explanation");
	assert_null(build(f, "[check.spf]\nthreads = 0\n", why, sizeof(why)));
	f->c.env.base = NULL;
	assert_null(build(f, "", why, sizeof(why)));
	tu_assert_contains(why, "event loop");
	f->c.env.base = f->c.base;
}

/* ---- the worker threads --------------------------------------------------- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct fx *f = arg;
	f->ticks++;
}

/* A resolver that never answers: the evaluation waits on a worker thread,
 * the loop goes on (the timer ticks), and the timeout ends it. */
static void test_slow_dns_does_not_block_the_loop(void **state)
{
	struct fx *f = *state;
	use_dns(f, true);
	use_chain(f, "[check.spf]\ntimeout = 700ms\n");
	struct event *tick = event_new(f->c.base, -1, EV_PERSIST, on_tick, f);
	struct timeval tv = { 0, 20000 };
	event_add(tick, &tv);
	long long t0 = tu_mono_ms();
	struct verdict v = mail(f, "192.0.2.7", "bob@slow.example");
	long long took = tu_mono_ms() - t0;
	event_free(tick);
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.24");
	assert_int_equal(f->ctx.auth.spf, AUTH_SPF_TEMPERROR);
	assert_true(took >= 250);                       /* one query's timeout at least */
	assert_true(took < 3000);
	if (f->ticks < 8)
		fail_msg("the loop ticked %d times in %lld ms", f->ticks, took);
	/* local data still answers at once */
	v = mail(f, "192.0.2.7", "alice@pass.test");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_result(f, "pass");
}

static void on_outcome(void *arg, const struct spf_outcome *o)
{
	int *n = arg;
	(*n)++;
	assert_true(o->result != AUTH_SPF_UNCHECKED);
}

/* Many at once through spf_evaluate; then a check freed with evaluations
 * still running: no callback, nothing leaked, and it does not hang. */
static void test_many_and_free_while_running(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.spf]\nthreads = 3\n");
	char why[256];
	struct config_error err;
	struct config *cfg = config_parse_string("x", "[check.spf]\nthreads = 3\n", &err);
	void *params = xcalloc(1, check_spf.params->size);
	assert_true(config_bind(cfg, "check.spf", check_spf.params, params, &err));
	struct spf_check *c = check_spf.init(params, &f->c.env, why, sizeof(why));
	assert_non_null(c);
	int n = 0;
	for (int i = 0; i < 50; i++) {
		struct spf_request rq = { i % 2 ? "192.0.2.7" : "2001:db8::7", "alice@pass.test", "x.test" };
		spf_evaluate(c, &rq, on_outcome, &n);
	}
	assert_int_equal(n, 0);                         /* never inside spf_evaluate */
	while (n < 50)
		event_base_loop(f->c.base, EVLOOP_ONCE);
	check_spf.free(c);

	use_dns(f, true);
	c = check_spf.init(params, &f->c.env, why, sizeof(why));
	assert_non_null(c);
	n = 0;
	for (int i = 0; i < 5; i++) {
		struct spf_request rq = { "192.0.2.7", "bob@slow.example", "" };
		spf_evaluate(c, &rq, on_outcome, &n);
	}
	long long t0 = tu_mono_ms();
	check_spf.free(c);
	assert_true(tu_mono_ms() - t0 < 2000);
	event_base_loop(f->c.base, EVLOOP_NONBLOCK);
	assert_int_equal(n, 0);
	config_release(check_spf.params, params);
	free(params);
	config_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_results_ipv4, setup, teardown),
		cmocka_unit_test_setup_teardown(test_results_ipv6, setup, teardown),
		cmocka_unit_test_setup_teardown(test_loopback_is_not_special, setup, teardown),
		cmocka_unit_test_setup_teardown(test_void_lookup_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_term_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_explanation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_received_spf_header, setup, teardown),
		cmocka_unit_test_setup_teardown(test_null_sender_uses_helo, setup, teardown),
		cmocka_unit_test_setup_teardown(test_check_helo_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_skipped_clients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_default_actions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_configured_actions, setup, teardown),
		cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
		cmocka_unit_test_setup_teardown(test_slow_dns_does_not_block_the_loop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_and_free_while_running, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
