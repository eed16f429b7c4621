/*
 * test_spam.c — the check "spam" (shared/checks/spam.c) on the chain,
 * against both state backends: untrained (rules alone, "bayes=untrained"),
 * trained (the classifier's points, BAYES_NN in the tests list), the
 * thresholds (tag with X-Spam-Flag and the subject tag, quarantine,
 * reject), the message's own X-Spam-* fields removed, autolearn moving
 * the counts, the store down (continue with the rules, or tempfail), the
 * DNS lists (which names of the links are looked up), and bad
 * configurations.
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

#include <event2/event.h>

#include "testutil.h"
#include "testutil_checks.h"
#include "checks/chain.h"
#include "checks/check.h"
#include "mail/bayes.h"
#include "mail/bayes_db.h"
#include "mail/envelope.h"
#include "mail/state.h"
#include "util/alloc.h"

#define REDIS_PASSWORD "spam-test-pw"

static int suite_setup(void **state)
{
	return tu_state_suite_setup(state, "spam", REDIS_PASSWORD);
}

static const char *SPAM_MSG =
	"X-Spam-Status: No, forged by the sender\r\n"
	"X-Spam-Flag: NO\r\n"
	"Subject: cheap pills today\r\n"
	"From: deals@pharma.example\r\n"
	"\r\n"
	"Buy cheap pills now at http://pharma.example/buy\r\n";
static const char *HAM_MSG =
	"Subject: meeting agenda\r\n"
	"From: alice@example.test\r\n"
	"\r\n"
	"The agenda for the meeting is attached.\r\n";

static struct verdict run_msg(struct tu_state_fx *f, const char *msg)
{
	check_ctx_clear_headers(&f->ctx);
	f->ctx.data = msg;
	f->ctx.len = strlen(msg);
	f->ctx.header_bytes = strstr(msg, "\r\n\r\n") + 4 - msg;
	return tu_state_run(f, PHASE_MESSAGE);
}

static void learn(struct tu_state_fx *f, const char *msg, bool spam, int times)
{
	struct tu_toks l;
	tu_toks_of(&l, msg, strlen(msg));
	char why[256];
	for (int i = 0; i < times; i++)
		if (!tu_bayes_learn(f, l.t, l.n, spam, 1, why, sizeof(why)))
			fail_msg("learning failed: %s", why);
	tu_toks_free(&l);
}

/* The spam check with two rules of its own and extra settings, in f's chain. */
static void use_conf(struct tu_state_fx *f, struct tu_state_suite *s, const char *extra)
{
	char rules[PATH_MAX + 16];
	snprintf(rules, sizeof(rules), "%s/spam-rules", s->dir);
	tu_write_file(rules, "body PILLS /cheap\\s+pills/i 2.0 cheap pills\nheader:From PHARMA /pharma/ 0.5\n");
	char *c = xasprintf("[check.spam]\nrules_file = %s\n%s", rules, extra);
	tu_chain_use(&f->c, c, "spam");
	free(c);
}

static void scores(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	use_conf(&f, s, "");
	/* untrained: the rules alone */
	struct verdict v = run_msg(&f, SPAM_MSG);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(tu_added_header(&f.ctx, "X-Spam-Score"), "2.5");
	assert_string_equal(tu_added_header(&f.ctx, "X-Spam-Status"),
			    "No, score=2.5 required=5.0 tests=PILLS,PHARMA bayes=untrained");
	assert_null(tu_added_header(&f.ctx, "X-Spam-Flag"));
	/* the message's own fields go */
	assert_int_equal(f.ctx.ndel, 2);
	/* trained: the classifier's points come in */
	learn(&f, SPAM_MSG, true, 5);
	learn(&f, HAM_MSG, false, 5);
	v = run_msg(&f, SPAM_MSG);
	assert_int_equal(v.kind, V_CONTINUE);
	const char *st = tu_added_header(&f.ctx, "X-Spam-Status");
	assert_non_null(st);
	assert_true(strncmp(st, "Yes, score=7.", 13) == 0 || strncmp(st, "Yes, score=8.", 13) == 0);
	assert_non_null(strstr(st, "tests=PILLS,PHARMA,BAYES_99 bayes="));
	assert_string_equal(tu_added_header(&f.ctx, "X-Spam-Flag"), "YES");
	assert_string_equal(tu_added_header(&f.ctx, "Subject"), "[SPAM] cheap pills today");
	v = run_msg(&f, HAM_MSG);
	assert_int_equal(v.kind, V_CONTINUE);
	st = tu_added_header(&f.ctx, "X-Spam-Status");
	assert_true(strncmp(st, "No, score=-5.", 13) == 0);
	assert_null(tu_added_header(&f.ctx, "Subject"));
	/* quarantine and reject */
	use_conf(&f, s, "quarantine_score = 6\n");
	v = run_msg(&f, SPAM_MSG);
	assert_int_equal(v.kind, V_QUARANTINE);
	assert_true(strncmp(v.reason, "spam (score ", 12) == 0 && atof(v.reason + 12) >= 7.9);
	use_conf(&f, s, "quarantine_score = 6\nreject_score = 7\n");
	v = run_msg(&f, SPAM_MSG);
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	assert_string_equal(v.enh, "5.7.1");
	assert_non_null(strstr(v.reason, "Message rejected as spam (score"));
	assert_true(tu_metric_has(f.c.metrics, "action=\"reject\"} 1\n"));
	assert_true(tu_file_has(s->logpath, "\"event\":\"spam.result\""));
	/* autolearn: a message at the spam end is learned */
	use_conf(&f, s, "autolearn = yes\nautolearn_spam = 7\n");
	run_msg(&f, SPAM_MSG);
	tu_state_run_for(&f, 300);
	char val[64];
	assert_int_equal(tu_state_get(&f, "bayes:n:s", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "6");
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(scores)

/* The store down: the rules alone decide (logged), or 451 with
 * failure_action = tempfail. */
static void store_down(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_REDIS, "");
	use_conf(&f, s, "");
	tu_state_redis_stop(s);
	struct verdict v = run_msg(&f, SPAM_MSG);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_non_null(strstr(tu_added_header(&f.ctx, "X-Spam-Status"), "bayes=unavailable"));
	assert_true(tu_file_has(s->logpath, "\"event\":\"spam.bayes_unavailable\""));
	use_conf(&f, s, "failure_action = tempfail\n");
	v = run_msg(&f, SPAM_MSG);
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	tu_state_redis_restart(s);
	tu_state_wait_up(&f, 10000);
	tu_state_fx_close(&f);
}

/* DNS lists: the original client's address and the link domains, their
 * weights added once per list; a list that does not answer in time
 * counts nothing. */
static void dns_lists(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_LMDB, "");
	char zone[PATH_MAX + 16];
	snprintf(zone, sizeof(zone), "%s/zone", s->dir);
	f.e->client.addr = pool_strdup(f.e->pool, "192.0.2.7");        /* the original client (XFORWARD) */
	char *z = xstrdup("7.2.0.192.bl.example.test. 300 IN A 127.0.0.2\n"
			  "pharma.example.uribl.example.test. 300 IN A 127.0.0.4\n");
	tu_write_file(zone, z);
	free(z);
	tu_chain_fx_dns(&f.c, zone, false, 1000);
	use_conf(&f, s, "bayes = no\ndnsbl_sites = bl.example.test*3 other.example.test*9\n"
		"uribl_sites = uribl.example.test=127.0.0.4*2\n");
	struct verdict v = run_msg(&f, SPAM_MSG);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(tu_added_header(&f.ctx, "X-Spam-Status"),
			    "Yes, score=7.5 required=5.0 tests=PILLS,PHARMA,DNSBL(bl.example.test),URIBL(uribl.example.test)");
	v = run_msg(&f, HAM_MSG);
	assert_string_equal(tu_added_header(&f.ctx, "X-Spam-Status"),
			    "No, score=3.0 required=5.0 tests=DNSBL(bl.example.test)");
	/* lists that never answer: nothing counts, after dns_timeout */
	tu_chain_fx_dead_dns(&f.c);
	tu_chain_fx_dns(&f.c, zone, true, 5000);
	use_conf(&f, s, "bayes = no\ndns_timeout = 300ms\nuribl_sites = slow.example.net*2\n");
	long long t0 = tu_mono_ms();
	v = run_msg(&f, SPAM_MSG);
	long long took = tu_mono_ms() - t0;
	assert_true(took >= 250 && took < 3000);
	assert_string_equal(tu_added_header(&f.ctx, "X-Spam-Status"), "No, score=2.5 required=5.0 tests=PILLS,PHARMA");
	assert_true(tu_file_has(s->logpath, "\"event\":\"spam.dns_timeout\""));
	/* a bad site */
	char why[600] = "";
	assert_false(tu_chain_try(&f.c, "[check.spam]\ndnsbl_sites = bl.example.test=127.0.0.x\n", "spam", why,
				  sizeof(why)));
	assert_non_null(strstr(why, "dnsbl_sites: 'bl.example.test=127.0.0.x': expected DOMAIN[=FILTER][*WEIGHT]"));
	tu_state_fx_close(&f);
}

/* URIBL names of a link: the shortest first (its last two labels, then
 * three), at most three per link, each once per message: a link with a
 * deep host does not use up max_uri_domains before the next link. */
static void uribl_names(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_LMDB, "");
	char zone[PATH_MAX + 16];
	snprintf(zone, sizeof(zone), "%s/zone-names", s->dir);
	tu_write_file(zone, "spam.example.uribl.example.test. 300 IN A 127.0.0.4\n"
		      "x.example.two.example.test. 300 IN A 127.0.0.2\n"
		      "i.j.x.example.three.example.test. 300 IN A 127.0.0.2\n"
		      "h.i.j.x.example.four.example.test. 300 IN A 127.0.0.2\n"
		      "a.b.c.d.e.f.g.h.i.j.x.example.full.example.test. 300 IN A 127.0.0.2\n");
	tu_chain_fx_dns(&f.c, zone, false, 1000);
	use_conf(&f, s, "bayes = no\nmax_uri_domains = 4\n"
		 "uribl_sites = uribl.example.test=127.0.0.4*2 two.example.test three.example.test "
		 "four.example.test full.example.test\n");
	static const char msg[] =
		"Subject: hello\r\n"
		"From: someone@example.net\r\n"
		"\r\n"
		"See http://a.b.c.d.e.f.g.h.i.j.x.example/ and http://j.x.example/again\r\n"
		"and then http://www.spam.example/buy\r\n";
	struct verdict v = run_msg(&f, msg);
	assert_int_equal(v.kind, V_CONTINUE);
	/* x.example, j.x.example, i.j.x.example (j.x.example again is no new
	 * name), then spam.example: 4; never h.i.j.x.example nor the full host */
	assert_string_equal(tu_added_header(&f.ctx, "X-Spam-Status"),
			    "No, score=4.0 required=5.0 tests=URIBL(uribl.example.test),URIBL(two.example.test),"
			    "URIBL(three.example.test)");
	tu_state_fx_close(&f);
}

static void bad_config(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_LMDB, "");
	char why[600] = "";
	assert_false(tu_chain_try(&f.c, "[check.spam]\nrules_file = /nonexistent/rules\n", "spam", why, sizeof(why)));
	assert_non_null(strstr(why, "rules_file: /nonexistent/rules: No such file"));
	assert_false(tu_chain_try(&f.c, "[check.spam]\ntag_score = lots\n", "spam", why, sizeof(why)));
	assert_non_null(strstr(why, "tag_score: expected a number"));
	assert_false(tu_chain_try(&f.c, "[check.spam]\nautolearn = yes\nautolearn_spam = 1\nautolearn_ham = 2\n", "spam",
				  why, sizeof(why)));
	assert_non_null(strstr(why, "autolearn_ham (2) must be below autolearn_spam (1)"));
	tu_state_fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_STATE_TESTS(scores),
		cmocka_unit_test(store_down),
		cmocka_unit_test(dns_lists),
		cmocka_unit_test(uribl_names),
		cmocka_unit_test(bad_config),
	};
	return cmocka_run_group_tests(tests, suite_setup, tu_state_suite_teardown);
}
