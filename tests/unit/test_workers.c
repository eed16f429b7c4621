/*
 * test_workers.c — the worker-thread pool (shared/util/workers.c): jobs
 * run off the loop thread on their worker's state, each comes back once
 * on the loop thread, collected before it is done, never from within
 * submit; one worker hands them back in order; max_waiting refuses and
 * workers_return answers through the loop; per-worker init/fini (and an
 * init that fails); workers_free with jobs queued, running or finished
 * (discarded, or run first with drain; workers_stopping seen by a running
 * job); a done that frees the pool while others of its batch wait.
 * LeakSanitizer (the ASan build) checks that nothing is left behind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "util/alloc.h"
#include "util/workers.h"

#define MAX_STATES 8

struct tctx {
	struct event_base *base;
	struct workers *pool;
	pthread_t loop;                 /* the test's (and the loop's) thread */
	int states[MAX_STATES];         /* what init handed out: &states[i] */
	int ninit, nfini;
	bool init_off_loop;
	int fail_at;                    /* init fails for this worker (-1: none) */
	int nrun;                       /* atomics: workers write them */
	int nstarted;
	int ncollect, ndone, ndiscard;
	int order[64];
	bool free_in_done;              /* the first done frees the pool */
	bool gate;                      /* run waits while it is closed (atomic) */
	long long sleep_us;             /* each run */
	bool until_stopping;            /* run waits for workers_stopping */
	bool saw_stopping;
};

struct tjob {
	struct workers_job link;
	struct tctx *t;
	int id;
	void *state;                    /* the worker state it ran on */
	bool ran, off_loop, collected, refused;
};

static void *t_init(void *owner, size_t i, char *why, size_t whylen)
{
	struct tctx *t = owner;
	if (!pthread_equal(pthread_self(), t->loop))
		t->init_off_loop = true;
	if ((int)i == t->fail_at) {
		snprintf(why, whylen, "no state %zu", i);
		return NULL;
	}
	t->ninit++;
	return &t->states[i];
}

static void t_fini(void *owner, void *state)
{
	struct tctx *t = owner;
	assert_ptr_equal(state, &t->states[t->nfini]);
	t->nfini++;
}

static void t_run(void *owner, void *state, struct workers_job *job)
{
	struct tctx *t = owner;
	struct tjob *j = (struct tjob *)job;
	j->state = state;
	j->off_loop = !pthread_equal(pthread_self(), t->loop);
	__atomic_add_fetch(&t->nstarted, 1, __ATOMIC_SEQ_CST);
	while (!__atomic_load_n(&t->gate, __ATOMIC_SEQ_CST))
		usleep(1000);
	if (t->sleep_us)
		usleep((useconds_t)t->sleep_us);
	if (t->until_stopping) {
		for (int k = 0; k < 10000 && !workers_stopping(t->pool); k++)
			usleep(1000);
		t->saw_stopping = workers_stopping(t->pool);
	}
	j->ran = true;
	__atomic_add_fetch(&t->nrun, 1, __ATOMIC_SEQ_CST);
}

static void t_collect(void *owner, struct workers_job *job)
{
	struct tctx *t = owner;
	struct tjob *j = (struct tjob *)job;
	assert_true(pthread_equal(pthread_self(), t->loop));
	assert_false(j->collected);
	j->collected = true;
	t->ncollect++;
}

static void t_done(struct workers_job *job)
{
	struct tjob *j = (struct tjob *)job;
	struct tctx *t = j->t;
	assert_true(pthread_equal(pthread_self(), t->loop));
	assert_true(j->collected);
	assert_true(j->ran != j->refused);
	if (j->ran)
		assert_true(j->off_loop);
	if (t->ndone < 64)
		t->order[t->ndone] = j->id;
	t->ndone++;
	free(j);
	if (t->free_in_done && t->pool) {
		workers_free(t->pool);
		t->pool = NULL;
	}
}

static void t_discard(struct workers_job *job)
{
	struct tjob *j = (struct tjob *)job;
	j->t->ndiscard++;
	free(j);
}

static const struct workers_def plain = {
	.init = t_init, .fini = t_fini, .run = t_run, .collect = t_collect, .done = t_done, .discard = t_discard,
};

static const struct workers_def bounded = {
	.max_waiting = 4,
	.init = t_init, .fini = t_fini, .run = t_run, .collect = t_collect, .done = t_done, .discard = t_discard,
};

static const struct workers_def draining = {
	.drain = true,
	.init = t_init, .fini = t_fini, .run = t_run, .collect = t_collect, .done = t_done, .discard = t_discard,
};

static void tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static void setup_ctx(struct tctx *t)
{
	memset(t, 0, sizeof(*t));
	t->loop = pthread_self();
	t->fail_at = -1;
	t->gate = true;
	t->base = event_base_new();
	assert_non_null(t->base);
}

static void start(struct tctx *t, size_t nthreads, const struct workers_def *def)
{
	char why[200] = "";
	t->pool = workers_new(t->base, nthreads, def, t, why, sizeof(why));
	if (!t->pool)
		fail_msg("workers_new: %s", why);
}

static struct tjob *new_job(struct tctx *t, int id)
{
	struct tjob *j = xcalloc(1, sizeof(*j));
	j->t = t;
	j->id = id;
	return j;
}

/* Runs the loop (a timer keeps it turning) until n jobs are done, 10 s at most. */
static void loop_until_done(struct tctx *t, int n)
{
	struct event *ev = event_new(t->base, -1, EV_PERSIST, tick, NULL);
	struct timeval tv = { 0, 20000 };
	event_add(ev, &tv);
	for (int k = 0; k < 500 && t->ndone < n; k++)
		event_base_loop(t->base, EVLOOP_ONCE);
	event_free(ev);
	assert_int_equal(t->ndone, n);
}

/* Waits (without the loop) until n runs have begun. */
static void wait_started(struct tctx *t, int n)
{
	for (int k = 0; k < 10000 && __atomic_load_n(&t->nstarted, __ATOMIC_SEQ_CST) < n; k++)
		usleep(1000);
	assert_true(__atomic_load_n(&t->nstarted, __ATOMIC_SEQ_CST) >= n);
}

static void wait_ran(struct tctx *t, int n)
{
	for (int k = 0; k < 10000 && __atomic_load_n(&t->nrun, __ATOMIC_SEQ_CST) < n; k++)
		usleep(1000);
	assert_true(__atomic_load_n(&t->nrun, __ATOMIC_SEQ_CST) >= n);
}

static void test_run_and_done(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	t.sleep_us = 500;
	start(&t, 3, &plain);
	assert_int_equal(t.ninit, 3);
	assert_false(t.init_off_loop);
	struct tjob *jobs[50];
	for (int i = 0; i < 50; i++) {
		jobs[i] = new_job(&t, i);
		assert_true(workers_submit(t.pool, &jobs[i]->link));
	}
	wait_ran(&t, 50);
	assert_int_equal(t.ndone, 0);       /* only ever from the loop */
	loop_until_done(&t, 50);
	assert_int_equal(t.ncollect, 50);
	/* each exactly once */
	int seen[50] = { 0 };
	for (int i = 0; i < 50; i++)
		seen[t.order[i]]++;
	for (int i = 0; i < 50; i++)
		assert_int_equal(seen[i], 1);
	workers_free(t.pool);
	assert_int_equal(t.nfini, 3);
	assert_int_equal(t.ndiscard, 0);
	event_base_free(t.base);
}

/* Each job ran on a state init made; one worker hands them back in order. */
static void *seen_state;
static void check_state(struct workers_job *job)
{
	struct tjob *j = (struct tjob *)job;
	seen_state = j->state;
	t_done(job);
}

static void test_one_worker_in_order(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	struct workers_def def = plain;
	def.done = check_state;
	start(&t, 1, &def);
	for (int i = 0; i < 20; i++) {
		assert_true(workers_submit(t.pool, &new_job(&t, i)->link));
		if (i % 7 == 0)
			event_base_loop(t.base, EVLOOP_NONBLOCK);
	}
	loop_until_done(&t, 20);
	for (int i = 0; i < 20; i++)
		assert_int_equal(t.order[i], i);
	assert_ptr_equal(seen_state, &t.states[0]);
	workers_free(t.pool);
	assert_int_equal(t.nfini, 1);
	event_base_free(t.base);
}

static void test_bound_and_return(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	t.gate = false;
	start(&t, 1, &bounded);
	for (int i = 0; i < 4; i++)
		assert_true(workers_submit(t.pool, &new_job(&t, i)->link));
	struct tjob *over = new_job(&t, 4);
	assert_false(workers_submit(t.pool, &over->link));
	over->refused = true;
	workers_return(t.pool, &over->link);
	assert_int_equal(t.ndone, 0);       /* through the loop, not within the call */
	/* the returned job counts too while it waits for the loop */
	struct tjob *again = new_job(&t, 5);
	assert_false(workers_submit(t.pool, &again->link));
	loop_until_done(&t, 1);
	assert_int_equal(t.order[0], 4);
	assert_int_equal(t.nrun, 0);
	assert_false(workers_submit(t.pool, &again->link));     /* still 4 waiting */
	__atomic_store_n(&t.gate, true, __ATOMIC_SEQ_CST);
	loop_until_done(&t, 5);
	for (int i = 1; i < 5; i++)
		assert_int_equal(t.order[i], i - 1);
	/* room again once they are done */
	assert_true(workers_submit(t.pool, &again->link));
	loop_until_done(&t, 6);
	assert_int_equal(t.order[5], 5);
	workers_free(t.pool);
	assert_int_equal(t.ndiscard, 0);
	event_base_free(t.base);
}

/* Freed with jobs running, queued and finished-not-delivered: the running
 * ones finish, nothing else runs, everything is discarded. */
static void test_free_pending(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	t.sleep_us = 2000;
	start(&t, 2, &plain);
	for (int i = 0; i < 100; i++)
		assert_true(workers_submit(t.pool, &new_job(&t, i)->link));
	wait_ran(&t, 2);
	workers_free(t.pool);
	int ran = __atomic_load_n(&t.nrun, __ATOMIC_SEQ_CST);
	assert_true(ran >= 2 && ran < 100);
	assert_int_equal(t.ndone, 0);
	assert_int_equal(t.ndiscard, 100);
	assert_int_equal(t.nfini, 2);
	/* nothing comes back after the pool is gone */
	event_base_loop(t.base, EVLOOP_NONBLOCK);
	assert_int_equal(t.ndone, 0);
	event_base_free(t.base);
}

/* With drain, the queued jobs run before the workers stop. */
static void test_free_drain(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	t.sleep_us = 1000;
	start(&t, 2, &draining);
	for (int i = 0; i < 20; i++)
		assert_true(workers_submit(t.pool, &new_job(&t, i)->link));
	workers_free(t.pool);
	assert_int_equal(t.nrun, 20);
	assert_int_equal(t.ndone, 0);
	assert_int_equal(t.ndiscard, 20);
	event_base_free(t.base);
}

/* A long job sees workers_stopping() and ends; the queued one never runs. */
static void test_stopping(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	t.until_stopping = true;
	start(&t, 1, &plain);
	assert_false(workers_stopping(t.pool));
	assert_true(workers_submit(t.pool, &new_job(&t, 0)->link));
	assert_true(workers_submit(t.pool, &new_job(&t, 1)->link));
	wait_started(&t, 1);
	workers_free(t.pool);
	assert_true(t.saw_stopping);
	assert_int_equal(t.nrun, 1);
	assert_int_equal(t.ndiscard, 2);
	event_base_free(t.base);
}

/* The first done of a batch frees the pool; the rest of the batch is
 * still handed over, and the pool is not touched (ASan would tell). */
static void test_done_frees_pool(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	t.free_in_done = true;
	start(&t, 1, &plain);
	for (int i = 0; i < 3; i++)
		assert_true(workers_submit(t.pool, &new_job(&t, i)->link));
	wait_ran(&t, 3);
	loop_until_done(&t, 3);
	assert_null(t.pool);
	assert_int_equal(t.ncollect, 3);
	assert_int_equal(t.ndiscard, 0);
	assert_int_equal(t.nfini, 1);
	event_base_free(t.base);
}

static void test_init_fails(void **state)
{
	(void)state;
	struct tctx t;
	setup_ctx(&t);
	t.fail_at = 2;
	char why[200] = "";
	assert_null(workers_new(t.base, 4, &plain, &t, why, sizeof(why)));
	assert_string_equal(why, "no state 2");
	assert_int_equal(t.ninit, 2);
	assert_int_equal(t.nfini, 2);           /* what was made is released */
	event_base_free(t.base);

	setup_ctx(&t);
	struct workers_def named = plain;
	named.name = "test";
	assert_null(workers_new(NULL, 3, &named, &t, why, sizeof(why)));
	assert_string_equal(why, "test: no event loop for the worker threads");
	assert_int_equal(t.nfini, 3);
	event_base_free(t.base);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_run_and_done),
		cmocka_unit_test(test_one_worker_in_order),
		cmocka_unit_test(test_bound_and_return),
		cmocka_unit_test(test_free_pending),
		cmocka_unit_test(test_free_drain),
		cmocka_unit_test(test_stopping),
		cmocka_unit_test(test_done_frees_pool),
		cmocka_unit_test(test_init_fails),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
