/*
 * test_bayes_db.c — the classifier's counts in the state store
 * (shared/mail/bayes_db.c), on LMDB and on a real redis-server: learning
 * and unlearning move the token and message counts, a lookup reads them
 * back (unknown tokens 0), across several multi-get batches, and a
 * message learned from its tokens scores on its side afterwards.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "testutil.h"
#include "testutil_checks.h"
#include "mail/bayes.h"
#include "mail/bayes_db.h"
#include "mail/state.h"
#include "util/alloc.h"

#define REDIS_PASSWORD "bayes-test-pw"

static int suite_setup(void **state)
{
	return tu_state_suite_setup(state, "bayes_db", REDIS_PASSWORD);
}

struct wait {
	bool done, ok;
	long long nspam, nham;
};

static void looked(void *arg, bool ok, long long nspam, long long nham, const char *why)
{
	struct wait *w = arg;
	(void)why;
	w->done = true;
	w->ok = ok;
	w->nspam = nspam;
	w->nham = nham;
}

static void run_until(struct tu_state_fx *f, struct wait *w)
{
	long long end = tu_mono_ms() + 10000;
	while (!w->done && tu_mono_ms() < end)
		event_base_loop(f->c.base, EVLOOP_ONCE);
	assert_true(w->done);
}

static void learn(struct tu_state_fx *f, char **toks, size_t n, bool spam, int by)
{
	char why[256];
	if (!tu_bayes_learn(f, toks, n, spam, by, why, sizeof(why)))
		fail_msg("learning failed: %s", why);
}

static struct wait lookup(struct tu_state_fx *f, struct bayes_token *t, size_t n)
{
	struct wait w = { 0 };
	bayes_db_lookup(f->st, t, n, looked, &w);
	run_until(f, &w);
	return w;
}

static void counts(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	char *spam1[] = { "cheap", "pills", "url:pharma.example" };
	char *spam2[] = { "cheap", "winner" };
	char *ham1[] = { "meeting", "cheap", "skip:s 30" };
	learn(&f, spam1, 3, true, 1);
	learn(&f, spam2, 2, true, 1);
	learn(&f, ham1, 3, false, 1);
	struct bayes_token t[] = { { "cheap", 9, 9, 0 }, { "pills", 0, 0, 0 }, { "meeting", 0, 0, 0 },
				   { "skip:s 30", 0, 0, 0 }, { "never-seen", 5, 5, 0 } };
	struct wait w = lookup(&f, t, 5);
	assert_true(w.ok);
	assert_int_equal(w.nspam, 2);
	assert_int_equal(w.nham, 1);
	assert_int_equal(t[0].spam, 2);
	assert_int_equal(t[0].ham, 1);
	assert_int_equal(t[1].spam, 1);
	assert_int_equal(t[2].ham, 1);
	assert_int_equal(t[3].ham, 1);
	assert_int_equal(t[4].spam, 0);         /* unknown: 0, whatever it held before */
	assert_int_equal(t[4].ham, 0);
	/* unlearning takes it back */
	learn(&f, spam2, 2, true, -1);
	w = lookup(&f, t, 5);
	assert_int_equal(w.nspam, 1);
	assert_int_equal(t[0].spam, 1);
	/* no tokens at all: the totals still come */
	w = lookup(&f, NULL, 0);
	assert_true(w.ok);
	assert_int_equal(w.nspam, 1);
	assert_int_equal(w.nham, 1);
	/* a counter the store refuses to move: the message is not learned,
	 * none of its counts move, and the caller hears why */
	tu_state_set(&f, "bayes:s:broken", "x");
	char *bad[] = { "pills", "broken" };
	char why[256];
	assert_false(tu_bayes_learn(&f, bad, 2, true, 1, why, sizeof(why)));
	assert_non_null(strstr(why, "bayes:s:broken: value is not a counter"));
	w = lookup(&f, t, 5);
	assert_int_equal(w.nspam, 1);
	assert_int_equal(t[1].spam, 1);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(counts)

/* More tokens than one multi-get, and than one multi-increment, takes;
 * then a message learned from its tokens scores as what it was learned
 * as. */
static void batches_and_scores(struct tu_state_suite *s, int backend)
{
	struct tu_state_fx f;
	tu_state_fx_open(&f, s, backend, "");
	size_t n = STATE_MGET_MAX + 500;       /* > BAYES_DB_BATCH too */
	char **toks = xcalloc(n, sizeof(*toks));
	struct bayes_token *t = xcalloc(n, sizeof(*t));
	for (size_t i = 0; i < n; i++) {
		toks[i] = xasprintf("tok%05zu", i);
		t[i].tok = toks[i];
	}
	learn(&f, toks, n, true, 1);
	learn(&f, toks + n / 2, n - n / 2, false, 1);
	struct wait w = lookup(&f, t, n);
	assert_true(w.ok);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(t[i].spam, 1);
		assert_int_equal(t[i].ham, i >= n / 2 ? 1 : 0);
	}
	for (size_t i = 0; i < n; i++)
		free(toks[i]);
	free(toks);
	free(t);

	const char *train[2] = { "Subject: cheap pills\r\n\r\nbuy cheap pills now at http://pharma.example/\r\n",
				 "Subject: meeting notes\r\n\r\nthe agenda for the meeting is attached\r\n" };
	for (int k = 0; k < 2; k++) {
		struct tu_toks c;
		tu_toks_of(&c, train[k], strlen(train[k]));
		for (int rep = 0; rep < 5; rep++)
			learn(&f, c.t, c.n, k == 0, 1);
		tu_toks_free(&c);
	}
	const char *probe = "Subject: cheap pills\r\n\r\ncheap pills at http://pharma.example/ today\r\n";
	struct tu_toks c;
	tu_toks_of(&c, probe, strlen(probe));
	struct bayes_token pt[TU_TOKS_MAX];
	for (size_t i = 0; i < c.n; i++)
		pt[i] = (struct bayes_token){ c.t[i], 0, 0, 0 };
	w = lookup(&f, pt, c.n);
	assert_true(w.ok);
	assert_int_equal(w.nspam, 6);          /* the big one and five */
	assert_int_equal(w.nham, 6);
	struct bayes_result r;
	bayes_score(pt, c.n, w.nspam, w.nham, NULL, &r);
	assert_true(r.score > 0.9);
	tu_toks_free(&c);
	tu_state_fx_close(&f);
}
TU_STATE_BACKENDS(batches_and_scores)

int main(void)
{
	const struct CMUnitTest tests[] = {
		TU_STATE_TESTS(counts),
		TU_STATE_TESTS(batches_and_scores),
	};
	return cmocka_run_group_tests(tests, suite_setup, tu_state_suite_teardown);
}
