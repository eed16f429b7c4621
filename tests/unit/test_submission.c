/*
 * test_submission.c — the submission stage's defences, against both state
 * backends (LMDB and a real redis-server): the authenticator
 * (shared/mail/authn: passwords, the brute-force counters, the cache, the
 * store failing) and the checks quota (hard quotas and holds) and
 * sender_login (sender ownership).
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
#include <unistd.h>

#include <event2/event.h>

#include "testutil.h"
#include "testutil_checks.h"
#include "checks/chain.h"
#include "checks/check.h"
#include "mail/authn.h"
#include "mail/envelope.h"
#include "mail/passdb.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/metrics.h"

#define REDIS_PASSWORD "sub-test-pw"

static int suite_setup(void **state)
{
	return tu_state_suite_setup(state, "submission", REDIS_PASSWORD);
}

/* An accounts file in the suite's directory: alice (password "alice-pw")
 * and the application billing ("app-pw", senders listed). */
static const char *accounts(struct tu_state_suite *s)
{
	static char path[400];
	snprintf(path, sizeof(path), "%s/accounts", s->dir);
	if (access(path, F_OK) == 0)
		return path;
	char why[256];
	char *a = passdb_hash("alice-pw", "sha512", why, sizeof(why));
	char *b = passdb_hash("app-pw", "sha512", why, sizeof(why));
	assert_non_null(a);
	assert_non_null(b);
	char *text = xasprintf("alice@example.test:%s\nbilling:%s:app senders=invoices@example.test,@billing.example.test\n",
			       a, b);
	tu_write_file(path, text);
	free(text);
	free(a);
	free(b);
	return path;
}

/* ---- authn ----------------------------------------------------------------- */

struct answer {
	bool done;
	struct authn_outcome o;
	long long took_ms;
	long long t0;
};

static void answered(void *arg, const struct authn_outcome *o)
{
	struct answer *a = arg;
	a->done = true;
	a->o = *o;
	a->took_ms = tu_mono_ms() - a->t0;
}

static struct answer check_pw(struct tu_state_fx *f, struct authn *an, const char *ip, const char *user, const char *pw)
{
	struct answer a = { .t0 = tu_mono_ms() };
	authn_check(an, "S1", ip, user, pw, answered, &a);
	assert_false(a.done);                   /* never before authn_check returns */
	long long deadline = tu_mono_ms() + 10000;
	while (!a.done && tu_mono_ms() < deadline)
		event_base_loop(f->c.base, EVLOOP_ONCE);
	assert_true(a.done);
	return a;
}

static struct authn *authn_for(struct tu_state_fx *f, bool fail_open, long long cache_ttl_ms)
{
	struct authn_opts o = {
		.accounts_file = accounts(f->s), .workers = 2, .delay_after = 2, .max_failures = 4,
		.failure_delay_ms = 200, .lockout_ms = 60000, .fail_open = fail_open,
		.cache_ttl_ms = cache_ttl_ms, .cache_size = 100,
	};
	char why[512] = "";
	struct authn *an = authn_new(&o, f->c.base, f->st, f->c.metrics, why, sizeof(why));
	if (!an)
		fail_msg("authn_new: %s", why);
	return an;
}

static void authn_passwords_and_lockout(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	struct authn *an = authn_for(&f, false, 0);
	assert_int_equal(check_pw(&f, an, "192.0.2.1", "alice@example.test", "alice-pw").o.result, AUTHN_OK);
	assert_int_equal(check_pw(&f, an, "192.0.2.1", "ALICE@example.test", "alice-pw").o.result, AUTHN_OK);
	struct answer a = check_pw(&f, an, "192.0.2.1", "billing", "app-pw");
	assert_int_equal(a.o.result, AUTHN_OK);
	assert_true(a.o.app);
	/* failures: the first two at once, then slowed, then locked out */
	a = check_pw(&f, an, "192.0.2.9", "alice@example.test", "guess1");
	assert_int_equal(a.o.result, AUTHN_BAD);
	assert_string_equal(a.o.reason, "wrong password");
	assert_true(a.took_ms < 150);
	a = check_pw(&f, an, "192.0.2.9", "nobody@example.test", "guess2");
	assert_int_equal(a.o.result, AUTHN_BAD);
	assert_string_equal(a.o.reason, "no such account");
	assert_true(a.took_ms >= 190);          /* the client's second failure */
	check_pw(&f, an, "192.0.2.9", "alice@example.test", "guess3");
	check_pw(&f, an, "192.0.2.9", "alice@example.test", "guess4");
	a = check_pw(&f, an, "192.0.2.9", "alice@example.test", "alice-pw");
	assert_int_equal(a.o.result, AUTHN_LOCKED_OUT);
	/* per account too: a fourth failure for alice, from elsewhere, and
	 * alice is cooling off from every address */
	assert_int_equal(check_pw(&f, an, "203.0.113.7", "alice@example.test", "guess5").o.result, AUTHN_BAD);
	assert_int_equal(check_pw(&f, an, "198.51.100.1", "alice@example.test", "alice-pw").o.result, AUTHN_LOCKED_OUT);
	/* another account from another address is not */
	assert_int_equal(check_pw(&f, an, "198.51.100.1", "billing", "app-pw").o.result, AUTHN_OK);
	char v[64];
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.9", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "4");
	assert_int_equal(tu_state_get(&f, "authfail:user:alice@example.test", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "4");
	assert_true(tu_metric_has(f.c.metrics, "result=\"locked_out\"} 2\n"));
	/* an IPv6 client is counted by its /64 */
	assert_int_equal(check_pw(&f, an, "2001:db8:0:1::5", "billing", "x").o.result, AUTHN_BAD);
	assert_int_equal(check_pw(&f, an, "2001:db8:0:1::6", "billing", "y").o.result, AUTHN_BAD);
	assert_int_equal(tu_state_get(&f, "authfail:ip:2001:db8:0:1::/64", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "2");
	assert_true(tu_file_has(s->logpath, "\"event\":\"auth.lockout\""));
	authn_free(an);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(authn_passwords_and_lockout)

/* Guesses made in parallel: each is counted in flight before its check,
 * so no more than max_failures (4) of them are checked, whatever the
 * timing, and the rest, waiting for those, find them failed: locked out.
 * A good password leaves the counters as they were; an unknown name is
 * checked against a real account's hash (the same cost). */
static void authn_parallel_guesses(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	struct authn *an = authn_for(&f, false, 0);
	assert_int_equal(check_pw(&f, an, "192.0.2.60", "alice@example.test", "wrong").o.result, AUTHN_BAD);
	assert_int_equal(check_pw(&f, an, "192.0.2.60", "alice@example.test", "alice-pw").o.result, AUTHN_OK);
	char v[64];
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.60", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "1");
	assert_int_equal(tu_state_get(&f, "authfail:user:alice@example.test", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "1");

	struct answer a[8];
	long long t0 = tu_mono_ms();
	for (int i = 0; i < 8; i++) {
		a[i] = (struct answer){ .t0 = t0 };
		authn_check(an, "S1", "192.0.2.50", "billing", "guess", answered, &a[i]);
	}
	long long deadline = tu_mono_ms() + 10000;
	int done = 0;
	while (done < 8 && tu_mono_ms() < deadline) {
		event_base_loop(f.c.base, EVLOOP_ONCE);
		done = 0;
		for (int i = 0; i < 8; i++)
			done += a[i].done;
	}
	assert_int_equal(done, 8);
	int bad = 0, locked = 0;
	for (int i = 0; i < 8; i++) {
		bad += a[i].o.result == AUTHN_BAD;
		locked += a[i].o.result == AUTHN_LOCKED_OUT;
	}
	assert_int_equal(bad, 4);
	assert_int_equal(locked, 4);
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.50", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "4");            /* failures; the refused ones were never checked */
	assert_int_equal(tu_state_get(&f, "authfail:user:billing", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "4");
	assert_int_equal(tu_state_get(&f, "authpend:ip:192.0.2.50", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "0");            /* nothing in flight any more */
	assert_int_equal(tu_state_get(&f, "authpend:user:billing", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "0");

	const char *decoy = passdb_decoy(authn_accounts(an));
	assert_non_null(decoy);
	assert_true(strncmp(decoy, "$6$", 3) == 0);     /* the file's method, not a default */
	authn_free(an);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(authn_parallel_guesses)

static void run_answers(struct tu_state_fx *f, struct answer *a, int n)
{
	long long deadline = tu_mono_ms() + 15000;
	int done = 0;
	while (done < n && tu_mono_ms() < deadline) {
		event_base_loop(f->c.base, EVLOOP_ONCE);
		done = 0;
		for (int i = 0; i < n; i++)
			done += a[i].done;
	}
	assert_int_equal(done, n);
}

/* An application opening more connections at once than max_failures (4),
 * with no cache: every login checks the password, and every one succeeds
 * (those without room wait for the checks in flight); the counters end
 * as they began.  Then good and bad passwords in parallel from one
 * address: no more than 4 guesses are checked, and nothing tempfails. */
static void authn_parallel_logins(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	struct authn *an = authn_for(&f, false, 0);
	enum { N = 12 };
	struct answer a[N];
	for (int i = 0; i < N; i++) {
		a[i] = (struct answer){ .t0 = tu_mono_ms() };
		authn_check(an, "S1", "192.0.2.70", "billing", "app-pw", answered, &a[i]);
	}
	run_answers(&f, a, N);
	for (int i = 0; i < N; i++)
		if (a[i].o.result != AUTHN_OK)
			fail_msg("login %d: %d (%s)", i, a[i].o.result, a[i].o.reason);
	assert_true(tu_metric_value(f.c.metrics, "rampart_auth_waits_total") >= N - 4);
	char v[64];
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.70", v, sizeof(v)), STATE_NOTFOUND);
	assert_int_equal(tu_state_get(&f, "authfail:user:billing", v, sizeof(v)), STATE_NOTFOUND);
	assert_int_equal(tu_state_get(&f, "authpend:ip:192.0.2.70", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "0");
	assert_int_equal(tu_state_get(&f, "authpend:user:billing", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "0");

	struct answer b[N];
	for (int i = 0; i < N; i++) {
		b[i] = (struct answer){ .t0 = tu_mono_ms() };
		authn_check(an, "S2", "192.0.2.71", "alice@example.test", i % 4 == 0 ? "alice-pw" : "guess", answered,
			    &b[i]);
	}
	run_answers(&f, b, N);
	int bad = 0;
	for (int i = 0; i < N; i++) {
		bad += b[i].o.result == AUTHN_BAD;
		if (i % 4 != 0)
			assert_int_not_equal(b[i].o.result, AUTHN_OK);
		if (b[i].o.result == AUTHN_TEMPFAIL)
			fail_msg("attempt %d: tempfail (%s)", i, b[i].o.reason);
	}
	assert_int_equal(bad, 4);
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.71", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "4");
	assert_int_equal(tu_state_get(&f, "authpend:ip:192.0.2.71", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "0");
	assert_int_equal(tu_state_get(&f, "authpend:user:alice@example.test", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "0");
	authn_free(an);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(authn_parallel_logins)

/* The in-flight count: full of others' checks, a login waits for them
 * busy_wait_ms, then tempfails and leaves the count as it found it; a
 * count below 1 with this attempt in it is a lost count, waited out;
 * a failure the store would not count is owed, and counted once it can. */
static void authn_in_flight_and_owed(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	struct authn_opts o = {
		.accounts_file = accounts(f.s), .workers = 2, .delay_after = 5, .max_failures = 4,
		.failure_delay_ms = 200, .lockout_ms = 60000, .busy_wait_ms = 300,
	};
	char why[512] = "";
	struct authn *an = authn_new(&o, f.c.base, f.st, f.c.metrics, why, sizeof(why));
	assert_non_null(an);
	tu_state_set(&f, "authpend:ip:192.0.2.80", "4");
	struct answer a = check_pw(&f, an, "192.0.2.80", "billing", "app-pw");
	assert_int_equal(a.o.result, AUTHN_TEMPFAIL);
	assert_non_null(strstr(a.o.reason, "still in progress"));
	assert_true(a.took_ms >= 290);
	char v[64];
	assert_int_equal(tu_state_get(&f, "authpend:ip:192.0.2.80", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "4");
	/* a lost count (-1, as a decrement of a key gone leaves it for a
	 * moment): waited out, then the login goes through */
	double waits = tu_metric_value(f.c.metrics, "rampart_auth_waits_total");
	tu_state_set(&f, "authpend:user:billing", "-1");
	a = check_pw(&f, an, "192.0.2.81", "billing", "app-pw");
	assert_int_equal(a.o.result, AUTHN_TEMPFAIL);      /* -1 for good: never trusted */
	assert_true(tu_metric_value(f.c.metrics, "rampart_auth_waits_total") > waits);
	assert_int_equal(tu_state_get(&f, "authpend:user:billing", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "-1");
	tu_state_set(&f, "authpend:user:billing", "0");
	assert_int_equal(check_pw(&f, an, "192.0.2.81", "billing", "app-pw").o.result, AUTHN_OK);
	/* the account's failure counter holds something else: the failure is
	 * owed, and counted (on both counters) once the store takes it */
	tu_state_set(&f, "authfail:user:alice@example.test", "x");
	a = check_pw(&f, an, "192.0.2.82", "alice@example.test", "guess");
	assert_int_equal(a.o.result, AUTHN_BAD);
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.82", v, sizeof(v)), STATE_NOTFOUND);
	authn_tick(an);
	tu_state_run_for(&f, 100);
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.82", v, sizeof(v)), STATE_NOTFOUND);
	tu_state_set(&f, "authfail:user:alice@example.test", "1");
	authn_tick(an);
	tu_state_run_for(&f, 100);
	assert_int_equal(tu_state_get(&f, "authfail:ip:192.0.2.82", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "1");
	assert_int_equal(tu_state_get(&f, "authfail:user:alice@example.test", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "2");
	assert_int_equal(tu_state_get(&f, "authpend:ip:192.0.2.82", v, sizeof(v)), STATE_OK);
	assert_string_equal(v, "0");
	authn_free(an);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(authn_in_flight_and_owed)

static void authn_cache(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	struct authn *an = authn_for(&f, false, 60000);
	assert_int_equal(check_pw(&f, an, "192.0.2.1", "billing", "app-pw").o.result, AUTHN_OK);
	struct answer a = check_pw(&f, an, "192.0.2.1", "billing", "app-pw");
	assert_int_equal(a.o.result, AUTHN_OK);
	assert_string_equal(a.o.reason, "password matches (cached)");
	assert_true(a.o.app);
	/* a wrong password is never taken from the cache */
	a = check_pw(&f, an, "192.0.2.1", "billing", "app-pwX");
	assert_int_equal(a.o.result, AUTHN_BAD);
	/* a new password (a new hash) does not match the cached one */
	char why[256];
	char *h = passdb_hash("new-pw", "sha512", why, sizeof(why));
	assert_true(passdb_update(accounts(s), "billing", h, NULL, false, false, why, sizeof(why)));
	free(h);
	tu_state_run_for(&f, 1000);             /* a new mtime; the loop runs meanwhile */
	authn_tick(an);
	assert_int_equal(check_pw(&f, an, "192.0.2.1", "billing", "app-pw").o.result, AUTHN_BAD);
	assert_int_equal(check_pw(&f, an, "192.0.2.1", "billing", "new-pw").o.result, AUTHN_OK);
	/* a locked account: refused, cached or not */
	assert_true(passdb_update(accounts(s), "billing", NULL, NULL, false, false, why, sizeof(why)));
	const struct passdb_account *acc = passdb_find(authn_accounts(an), "billing");
	char *locked = xasprintf("!%s", acc->hash);
	assert_true(passdb_update(accounts(s), "billing", locked, NULL, false, false, why, sizeof(why)));
	free(locked);
	tu_state_run_for(&f, 1000);
	authn_tick(an);
	a = check_pw(&f, an, "192.0.2.1", "billing", "new-pw");
	assert_int_equal(a.o.result, AUTHN_BAD);
	assert_string_equal(a.o.reason, "account locked");
	unlink(accounts(s));                    /* the next test writes it afresh */
	authn_free(an);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(authn_cache)

/* The store down: tempfail by default (never a silent pass), or the
 * password checked uncounted with fail_open; logged and counted. */
static void authn_store_down(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_REDIS, "");
	struct authn *an = authn_for(&f, false, 0);
	struct authn *open_an = authn_for(&f, true, 0);
	tu_state_redis_stop(s);
	struct answer a = check_pw(&f, an, "192.0.2.1", "alice@example.test", "alice-pw");
	assert_int_equal(a.o.result, AUTHN_TEMPFAIL);
	assert_non_null(strstr(a.o.reason, "state store"));
	assert_int_equal(check_pw(&f, open_an, "192.0.2.1", "alice@example.test", "alice-pw").o.result, AUTHN_OK);
	assert_int_equal(check_pw(&f, open_an, "192.0.2.1", "alice@example.test", "bad").o.result, AUTHN_BAD);
	assert_true(tu_file_has(s->logpath, "\"event\":\"auth.store_error\""));
	assert_true(tu_metric_has(f.c.metrics, "rampart_auth_store_errors_total"));
	tu_state_redis_restart(s);
	tu_state_wait_up(&f, 10000);
	assert_int_equal(check_pw(&f, an, "192.0.2.1", "alice@example.test", "alice-pw").o.result, AUTHN_OK);
	authn_free(an);
	authn_free(open_an);
	tu_state_fx_close(&f);
}

/* ---- check quota ------------------------------------------------------------ */

static struct verdict mail_as(struct tu_state_fx *f, const char *login, const char *sender)
{
	f->e->client.addr = pool_strdup(f->e->pool, "192.0.2.5");
	f->e->client.login = login ? pool_strdup(f->e->pool, login) : NULL;
	f->e->sender = pool_strdup(f->e->pool, sender);
	f->e->nrcpt = 0;
	f->ctx.env = f->e;
	return tu_state_run(f, PHASE_MAIL);
}

static void quota_hold(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	tu_chain_use(&f.c, "[check.quota]\nmessages_per_hour = 2\nrecipients_per_day = 3\n", "quota");
	assert_int_equal(mail_as(&f, "Alice@example.test", "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(mail_as(&f, "alice@example.test", "alice@example.test").kind, V_CONTINUE);
	struct verdict v = mail_as(&f, "alice@example.test", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.1");
	assert_non_null(strstr(v.reason, "2 messages per hour"));
	assert_non_null(strstr(v.reason, "on hold"));
	char val[200];
	assert_int_equal(tu_state_get(&f, "hold:alice@example.test", val, sizeof(val)), STATE_OK);
	assert_non_null(strstr(val, "2 messages per hour since "));
	v = mail_as(&f, "alice@example.test", "alice@example.test");
	assert_int_equal(v.code, 451);
	assert_non_null(strstr(v.reason, "Account alice@example.test is on hold"));
	/* mail without a login is not this check's business */
	assert_int_equal(mail_as(&f, NULL, "x@example.org").kind, V_CONTINUE);
	/* recipients: another account, the fourth recipient holds it */
	assert_int_equal(mail_as(&f, "bob@example.test", "bob@example.test").kind, V_CONTINUE);
	for (int i = 0; i < 3; i++)
		assert_int_equal(tu_state_rcpt(&f, "r@example.org").kind, V_CONTINUE);
	v = tu_state_rcpt(&f, "r@example.org");
	assert_int_equal(v.code, 451);
	assert_non_null(strstr(v.reason, "3 recipients per day"));
	assert_true(tu_metric_has(f.c.metrics, "rampart_quota_holds_total{stage=\"mx\",instance=\"mx\"} 2\n"));
	assert_true(tu_file_has(s->logpath, "\"event\":\"quota.hold\",\"login\":\"bob@example.test\""));
	/* hold = no: only the bucket */
	tu_chain_use(&f.c, "[check.quota]\nmessages_per_hour = 1\nhold = no\n", "quota");
	assert_int_equal(mail_as(&f, "carol@example.test", "carol@example.test").kind, V_CONTINUE);
	v = mail_as(&f, "carol@example.test", "carol@example.test");
	assert_int_equal(v.code, 451);
	assert_non_null(strstr(v.reason, "try again later"));
	assert_int_equal(tu_state_get(&f, "hold:carol@example.test", NULL, 0), STATE_NOTFOUND);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(quota_hold)

static void quota_store_down(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_REDIS, "");
	tu_chain_use(&f.c, "[check.quota]\nmessages_per_hour = 10\n", "quota");
	tu_state_redis_stop(s);
	struct verdict v = mail_as(&f, "alice@example.test", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_string_equal(v.enh, "4.3.0");
	tu_chain_use(&f.c, "[check.quota]\nmessages_per_hour = 10\nfailure_mode = continue\n", "quota");
	assert_int_equal(mail_as(&f, "alice@example.test", "alice@example.test").kind, V_CONTINUE);
	assert_true(tu_file_has(s->logpath, "\"event\":\"quota.error\""));
	assert_true(tu_metric_has(f.c.metrics, "result=\"error\"} 2\n"));
	tu_state_redis_restart(s);
	tu_state_wait_up(&f, 10000);
	tu_state_fx_close(&f);
}

/* ---- check sender_login ------------------------------------------------------ */

static void sender_ownership(void **state)
{
	struct tu_state_suite *s = *state;
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, STATE_BACKEND_LMDB, "");
	char conf[600];
	snprintf(conf, sizeof(conf), "[check.sender_login]\naccounts_file = %s\n", accounts(s));
	tu_chain_use(&f.c, conf, "sender_login");
	assert_int_equal(mail_as(&f, "alice@example.test", "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(mail_as(&f, "alice@example.test", "alice+x@Example.Test").kind, V_CONTINUE);
	assert_int_equal(mail_as(&f, "alice@example.test", "").kind, V_CONTINUE);
	struct verdict v = mail_as(&f, "alice@example.test", "bob@example.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 553);
	assert_string_equal(v.enh, "5.7.1");
	assert_string_equal(v.reason, "<bob@example.test>: Sender address rejected: not owned by user alice@example.test");
	/* a login the file does not list (Dovecot's): its own address only */
	assert_int_equal(mail_as(&f, "carol@example.test", "carol@example.test").kind, V_CONTINUE);
	v = mail_as(&f, "carol@example.test", "alice@example.test");
	assert_int_equal(v.code, 553);
	assert_non_null(strstr(v.reason, "not owned by user carol@example.test"));
	v = mail_as(&f, "someapp", "someapp@example.test");
	assert_int_equal(v.code, 553);
	assert_non_null(strstr(v.reason, "someapp owns no sender addresses"));
	assert_int_equal(mail_as(&f, NULL, "anyone@example.org").kind, V_CONTINUE);
	assert_int_equal(mail_as(&f, "someapp", "").kind, V_CONTINUE);    /* a bounce: anyone's */
	assert_int_equal(mail_as(&f, "billing", "x@billing.example.test").kind, V_CONTINUE);
	assert_int_equal(mail_as(&f, "billing", "billing@example.test").code, 553);
	/* the From header field */
	static const char ok[] = "From: \"Alice\" <alice@example.test>\r\nSubject: x\r\n\r\nbody\r\n";
	static const char bad[] = "From: alice@example.test, \"Bob\" <bob@example.test>\r\nSubject: x\r\n\r\nbody\r\n";
	static const char broken[] = "From: \"Alice <alice@example.test>\r\n\r\nbody\r\n";
	static const char empty[] = "From: undisclosed:;\r\n\r\nbody\r\n";
	static const char none[] = "Subject: no From field\r\n\r\nbody\r\n";
	mail_as(&f, "alice@example.test", "alice@example.test");
	const char *msgs[] = { ok, none, empty, bad, broken };
	const int want[] = { 0, 0, 553, 553, 553 };
	for (int i = 0; i < 5; i++) {
		f.ctx.data = msgs[i];
		f.ctx.len = strlen(msgs[i]);
		f.ctx.header_bytes = strstr(msgs[i], "\r\n\r\n") + 4 - msgs[i];
		v = tu_state_run(&f, PHASE_HEADERS);
		assert_int_equal(v.kind == V_CONTINUE ? 0 : v.code, want[i]);
	}
	assert_string_equal(v.reason, "Message rejected: malformed From header field");
	f.ctx.data = bad;
	f.ctx.len = strlen(bad);
	f.ctx.header_bytes = strstr(bad, "\r\n\r\n") + 4 - bad;
	v = tu_state_run(&f, PHASE_HEADERS);
	assert_string_equal(v.reason, "From: <bob@example.test>: header address not owned by user alice@example.test");
	/* a NUL in the address, or a second address after the angle-addr,
	 * must not hide the address a reader sees (found in review) */
	static const char nul[] = "From: <\0ceo@bank.example>\r\n\r\nbody\r\n";
	static const char two[] = "From: <alice@example.test> <ceo@bank.example>\r\n\r\nbody\r\n";
	f.ctx.data = nul;
	f.ctx.len = sizeof(nul) - 1;
	f.ctx.header_bytes = 29;        /* "From: <\0ceo@bank.example>\r\n\r\n" */
	v = tu_state_run(&f, PHASE_HEADERS);
	assert_int_equal(v.code, 553);
	assert_string_equal(v.reason, "Message rejected: malformed From header field");
	f.ctx.data = two;
	f.ctx.len = strlen(two);
	f.ctx.header_bytes = strstr(two, "\r\n\r\n") + 4 - two;
	v = tu_state_run(&f, PHASE_HEADERS);
	assert_int_equal(v.code, 553);
	assert_string_equal(v.reason, "Message rejected: malformed From header field");
	f.ctx.data = NULL;
	/* unauthenticated = reject */
	snprintf(conf, sizeof(conf), "[check.sender_login]\naccounts_file = %s\nunauthenticated = reject\n", accounts(s));
	tu_chain_use(&f.c, conf, "sender_login");
	assert_int_equal(mail_as(&f, NULL, "anyone@example.org").code, 553);
	/* a missing accounts file stops the chain from being built */
	char why[512] = "";
	assert_false(tu_chain_try(&f.c, "[check.sender_login]\naccounts_file = /nonexistent/accounts\n", "sender_login",
				  why, sizeof(why)));
	assert_non_null(strstr(why, "accounts_file"));
	assert_non_null(strstr(why, "cannot read"));
	tu_state_fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_STATE_TESTS(authn_passwords_and_lockout),
		TU_STATE_TESTS(authn_parallel_guesses),
		TU_STATE_TESTS(authn_parallel_logins),
		TU_STATE_TESTS(authn_in_flight_and_owed),
		TU_STATE_TESTS(authn_cache),
		cmocka_unit_test(authn_store_down),
		TU_STATE_TESTS(quota_hold),
		cmocka_unit_test(quota_store_down),
		cmocka_unit_test(sender_ownership),
	};
	return cmocka_run_group_tests(tests, suite_setup, tu_state_suite_teardown);
}
