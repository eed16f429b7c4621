/*
 * workers.h — a fixed pool of worker threads for work the event loop must
 * not wait for (a library that waits on its DNS hook, CPU-heavy signing):
 * a job runs on a worker thread and comes back to the loop thread through
 * an eventfd watched by the loop.  The loop never waits.
 *
 * A job is the caller's structure with a struct workers_job as its first
 * member; the pool never allocates or frees one, it hands jobs to the
 * hooks of its struct workers_def:
 *   init/fini  each worker's own state (a library handle used by one
 *              thread at a time): made for every worker on the thread of
 *              workers_new before any worker starts, released after they
 *              have all ended; run gets its worker's state;
 *   run        on a worker thread; jobs are taken in submission order;
 *   collect    on the loop thread, for each job of a batch that came back,
 *              oldest first, before any done of the batch: bookkeeping of
 *              the owner (metrics), while the owner is surely alive;
 *   done       on the loop thread, oldest first: the job is the callee's.
 *              A done may free the pool (and its owner): after the first
 *              done of a batch the pool is not touched again;
 *   discard    at workers_free, for each job not handed back (still queued,
 *              or finished and not yet delivered): free it.
 * Oldest first is the order the jobs finished in (with one worker, the
 * order they were submitted in).
 *
 * Bounds and shutdown: with max_waiting, no more than that many jobs are
 * between workers_submit and their done (workers_submit refuses the next;
 * the caller answers it itself, through the loop all the same, with
 * workers_return).  workers_free stops the workers: a running job
 * finishes (it can see workers_stopping() and end early); jobs still
 * queued are left (discarded) or, with drain, run first; then every job
 * not handed back is discarded.
 *
 * workers_submit, workers_return and workers_free are called from the
 * loop thread; workers_stopping from anywhere.
 */
#ifndef RAMPART_WORKERS_H
#define RAMPART_WORKERS_H

#include <stdbool.h>
#include <stddef.h>

struct event_base;
struct workers;

struct workers_job {
	struct workers_job *next;       /* the pool's */
};

struct workers_def {
	const char *name;               /* prefixes the pool's own errors ("NAME: ..."); NULL: none */
	size_t max_waiting;             /* jobs submitted and not yet done; 0: no bound */
	bool drain;                     /* workers_free runs the queued jobs first */
	/* optional; NULL, with why written, fails workers_new */
	void *(*init)(void *owner, size_t i, char *why, size_t whylen);
	void (*fini)(void *owner, void *state);                 /* optional */
	void (*run)(void *owner, void *state, struct workers_job *job);
	void (*collect)(void *owner, struct workers_job *job);  /* optional */
	void (*done)(struct workers_job *job);
	void (*discard)(struct workers_job *job);
};

/* nthreads >= 1 workers running def's hooks for owner, their completions
 * on base's loop; NULL with why written on failure (init failed, or no
 * loop, eventfd or thread), every state made so far released. */
struct workers *workers_new(struct event_base *base, size_t nthreads, const struct workers_def *def,
			    void *owner, char *why, size_t whylen);
/* Queues job for a worker.  False (job not taken) when max_waiting jobs
 * are waiting already. */
bool workers_submit(struct workers *w, struct workers_job *job);
/* Hands job back through the loop without running it (collect and done
 * run for it later, never within this call): the answer to a refused
 * job, filled in by the caller. */
void workers_return(struct workers *w, struct workers_job *job);
/* workers_free has begun: a long job may end early. */
bool workers_stopping(struct workers *w);
/* Stops and joins the workers, discards what was not handed back, then
 * fini for every state.  NULL is fine. */
void workers_free(struct workers *w);

#endif
