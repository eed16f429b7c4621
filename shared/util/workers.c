/*
 * workers.c — a fixed pool of worker threads whose jobs come back to the
 * event loop thread through an eventfd (workers.h).
 *
 * One mutex guards the queue (todo, a FIFO), the finished jobs (done, a
 * stack: newest first, reversed when the loop takes them), the count of
 * jobs not yet handed back and the stop flag.  A worker takes the oldest
 * queued job, runs it without the lock, pushes it on done and writes the
 * eventfd; the loop's event takes the whole stack at once.
 */
#include "workers.h"
#include "alloc.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <event2/event.h>

struct worker {
	struct workers *pool;
	pthread_t th;
	void *state;
};

struct workers {
	const struct workers_def *def;
	void *owner;
	struct worker *w;
	size_t nthreads;
	size_t ninit;                   /* states made */
	size_t nstarted;                /* threads started */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct workers_job *todo, **todo_tail, *done;
	size_t waiting;                 /* submitted or returned, not yet collected */
	bool stop;
	int efd;
	struct event *ev;
};

/* With the lock held: a finished job for the loop.  Only the first of a
 * batch wakes it: on_done takes the whole list, under the lock, after
 * reading the eventfd, so a job pushed after that finds the list empty
 * and wakes it again. */
static void push_done(struct workers *p, struct workers_job *j)
{
	bool wake = p->done == NULL;
	j->next = p->done;
	p->done = j;
	if (wake) {
		uint64_t one = 1;
		ssize_t wr = write(p->efd, &one, sizeof(one));
		(void)wr;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct workers *p = w->pool;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		while (!p->todo && !p->stop)
			pthread_cond_wait(&p->cv, &p->mu);
		if (p->stop && (!p->def->drain || !p->todo))
			break;
		struct workers_job *j = p->todo;
		p->todo = j->next;
		if (!p->todo)
			p->todo_tail = &p->todo;
		pthread_mutex_unlock(&p->mu);
		p->def->run(p->owner, w->state, j);
		pthread_mutex_lock(&p->mu);
		push_done(p, j);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

/* From the loop: collect every finished job, then hand them over, oldest
 * first. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct workers *p = arg;
	uint64_t v;
	ssize_t rd = read(fd, &v, sizeof(v));
	(void)rd;
	pthread_mutex_lock(&p->mu);
	struct workers_job *list = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->mu);
	struct workers_job *rev = NULL;
	size_t n = 0;
	while (list) {
		struct workers_job *next = list->next;
		list->next = rev;
		rev = list;
		list = next;
		if (p->def->collect)
			p->def->collect(p->owner, rev);
		n++;
	}
	pthread_mutex_lock(&p->mu);
	p->waiting -= n;
	pthread_mutex_unlock(&p->mu);
	/* From here on p is not touched: a done may free the pool. */
	void (*done)(struct workers_job *) = p->def->done;
	while (rev) {
		struct workers_job *j = rev;
		rev = j->next;
		done(j);
	}
}

static void fail(const struct workers_def *def, char *why, size_t whylen, const char *what, const char *detail)
{
	snprintf(why, whylen, "%s%s%s%s%s", def->name ? def->name : "", def->name ? ": " : "", what,
		 detail ? ": " : "", detail ? detail : "");
}

struct workers *workers_new(struct event_base *base, size_t nthreads, const struct workers_def *def,
			    void *owner, char *why, size_t whylen)
{
	struct workers *p = xcalloc(1, sizeof(*p));
	p->def = def;
	p->owner = owner;
	p->efd = -1;
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->cv, NULL);
	p->todo_tail = &p->todo;
	p->nthreads = nthreads;
	p->w = xcalloc(nthreads ? nthreads : 1, sizeof(*p->w));
	for (size_t i = 0; i < nthreads; i++) {
		p->w[i].pool = p;
		if (def->init) {
			p->w[i].state = def->init(owner, i, why, whylen);
			if (!p->w[i].state) {
				workers_free(p);
				return NULL;
			}
		}
		p->ninit++;
	}
	if (!base || !nthreads) {
		fail(def, why, whylen, !base ? "no event loop for the worker threads" : "no worker threads", NULL);
		workers_free(p);
		return NULL;
	}
	p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (p->efd < 0) {
		fail(def, why, whylen, "cannot create an eventfd", strerror(errno));
		workers_free(p);
		return NULL;
	}
	p->ev = event_new(base, p->efd, EV_READ | EV_PERSIST, on_done, p);
	if (!p->ev || event_add(p->ev, NULL) != 0) {
		fail(def, why, whylen, "cannot watch the eventfd", NULL);
		workers_free(p);
		return NULL;
	}
	for (size_t i = 0; i < nthreads; i++) {
		if (pthread_create(&p->w[i].th, NULL, worker_main, &p->w[i]) != 0) {
			fail(def, why, whylen, "cannot start a worker thread", NULL);
			workers_free(p);
			return NULL;
		}
		p->nstarted++;
		if (def->name) {        /* top -H, perf: which pool a thread is */
			char tn[16];
			snprintf(tn, sizeof(tn), "%s", def->name);
			pthread_setname_np(p->w[i].th, tn);
		}
	}
	return p;
}

bool workers_submit(struct workers *p, struct workers_job *job)
{
	pthread_mutex_lock(&p->mu);
	if (p->def->max_waiting && p->waiting >= p->def->max_waiting) {
		pthread_mutex_unlock(&p->mu);
		return false;
	}
	p->waiting++;
	job->next = NULL;
	*p->todo_tail = job;
	p->todo_tail = &job->next;
	pthread_mutex_unlock(&p->mu);
	/* after the unlock: the worker it wakes does not block on the
	 * mutex the loop still holds (the pool goes only by workers_free,
	 * on this thread) */
	pthread_cond_signal(&p->cv);
	return true;
}

void workers_return(struct workers *p, struct workers_job *job)
{
	pthread_mutex_lock(&p->mu);
	p->waiting++;
	push_done(p, job);
	pthread_mutex_unlock(&p->mu);
}

bool workers_stopping(struct workers *p)
{
	pthread_mutex_lock(&p->mu);
	bool stop = p->stop;
	pthread_mutex_unlock(&p->mu);
	return stop;
}

static void discard_list(struct workers *p, struct workers_job *j)
{
	while (j) {
		struct workers_job *next = j->next;
		p->def->discard(j);
		j = next;
	}
}

void workers_free(struct workers *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->cv);
	pthread_mutex_unlock(&p->mu);
	for (size_t i = 0; i < p->nstarted; i++)
		pthread_join(p->w[i].th, NULL);
	/* What was not handed back belongs to users that are gone (a pool is
	 * freed only when nobody waits on it). */
	discard_list(p, p->todo);
	discard_list(p, p->done);
	for (size_t i = 0; p->def->fini && i < p->ninit; i++)
		p->def->fini(p->owner, p->w[i].state);
	free(p->w);
	if (p->ev)
		event_free(p->ev);
	if (p->efd >= 0)
		close(p->efd);
	pthread_mutex_destroy(&p->mu);
	pthread_cond_destroy(&p->cv);
	free(p);
}
