/*
 * queue.h — the durable spool of a stage (DESIGN.md §3, queue mode).
 *
 * A message is accepted into the queue only when its file and the
 * directory entry are on stable storage: queue_submit() writes the file and
 * hands it to a commit thread that makes whole batches durable with one
 * sync, then calls the submitter back in the event loop.  Only then may the
 * SMTP server answer 250.
 *
 * Layout under the spool directory:
 *     tmp/       files being written (removed at start-up)
 *     active/    accepted messages, due or waiting for retry
 *     hold/      messages put on hold by an administrator
 *     corrupt/   unreadable queue files, moved aside and logged
 *     failed/    messages with a permanently failed recipient, kept until a
 *                delivery status notification has been sent (later: DSN)
 *     quarantine/ messages a check quarantined: kept with the reason, never
 *                delivered unless an administrator releases them
 * A queue file holds the envelope (with one status per recipient, updated
 * in place and synced after each delivery attempt, so a recipient that was
 * delivered is never delivered again) followed by the message bytes and an
 * end marker (a truncated file is detected as corrupt).  Retry bookkeeping
 * (attempts, next try, last error) is updated in place too.
 *
 * Delivery: the queue calls the stage's deliver function for each due
 * message (at most max_active at once); the deliverer records a result per
 * recipient with queue_item_result() and ends with queue_item_done(),
 * after which the queue updates the file, schedules a retry with
 * exponential backoff for recipients still pending, or removes the file
 * when every recipient is done or failed.  Recipients still pending past
 * the maximum lifetime are failed with "expired".
 *
 * Threads: every function except the offline ones below is called from the
 * event loop thread of base; callbacks (submit and deliver) run there too.
 * The commit thread only does file I/O and reports back through an eventfd
 * watched by base, so the queue needs no evthread_use_pthreads() itself
 * (a daemon that enables it anyway is fine).  The file format, the
 * locking rules and the flush mechanism are described in queue.c.
 */
#ifndef RAMPART_QUEUE_H
#define RAMPART_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>

#include "envelope.h"

struct event_base;
struct queue;
struct queue_item;

struct queue_opts {
	const char *dir;            /* spool directory (created if missing) */
	long long retry_min_ms;     /* first retry delay (default 60 s) */
	long long retry_max_ms;     /* backoff ceiling (default 1 h) */
	long long lifetime_ms;      /* maximum queue lifetime (default 5 d) */
	unsigned max_active;        /* deliveries at once (default 20) */
	unsigned batch_max;         /* commit batch ceiling (default 256) */
	const char *log_id;         /* stage instance, for logs */
	long long rescan_ms;        /* periodic rescan of active/ (default 30 s) */
	/* Test hook, NULL in production: the commit thread calls it before
	 * each step of making a message durable ("open", "write", "rename",
	 * "sync"); a non-zero errno value (ENOSPC, EIO, ...) makes that step
	 * fail as if its system call had.  Called from the commit thread. */
	int (*fault)(void *arg, const char *step);
	void *fault_arg;
};

/* Called once the message is durable (ok=true, qid set) or when writing it
 * failed (ok=false: the caller answers 4xx; nothing was accepted, qid is
 * the id that was tried, for logs).  With a base the callback always runs
 * later from the event loop; offline (base NULL) queue_submit() writes and
 * syncs synchronously and calls back before it returns. */
typedef void (*queue_submit_cb)(void *arg, bool ok, const char *qid);

/* Called for each due message, with the queue file flock()ed (rampartctl
 * reports "busy" meanwhile).  The deliverer owns the item until
 * queue_item_done(), which may be called from within deliver() or later.
 * It must deliver only to recipients whose state in the envelope is
 * RCPT_PENDING: recipients already done (D) or failed (F) are in the
 * envelope too and are never to be delivered again; results for them are
 * ignored. */
typedef void (*queue_deliver_fn)(void *arg, struct queue_item *it);

/* Open (create) the spool, remove stale tmp/ files, recover active/ (moving
 * corrupt files to corrupt/ with a log line).  base may be NULL for
 * offline use (rampartctl): then no commit thread and no scheduler.
 * Returns NULL with a reason in why on failure. */
struct queue *queue_open(struct event_base *base, const struct queue_opts *opts, char *why,
			 size_t whylen);
/* Waits for pending commits (their callbacks run from here).  Deliveries
 * still out are abandoned: lock released, file untouched, so they are
 * delivered again after a restart; the items must not be used after it. */
void queue_close(struct queue *q);

/* Start working the queue: deliver() is called for due messages. */
void queue_start(struct queue *q, queue_deliver_fn deliver, void *arg);
/* Hand out no more messages (shutdown); deliveries out keep going. */
void queue_pause(struct queue *q);
/* Deliveries out now. */
size_t queue_active(const struct queue *q);
/* Make every deferred message due now (SIGUSR1, rampartctl queue flush):
 * rescans active/ first (picking up released or offline-flushed files). */
void queue_flush_now(struct queue *q);

/* Accept a message.  The envelope and data are copied before return. */
void queue_submit(struct queue *q, const struct envelope *env, const char *data, size_t len,
		  queue_submit_cb cb, void *arg);
/* Accept a message into quarantine/, as durably as queue_submit(), with
 * the reason as its last error; it is not delivered (queue_release()
 * moves it to active/). */
void queue_quarantine(struct queue *q, const struct envelope *env, const char *data, size_t len, const char *reason,
		      queue_submit_cb cb, void *arg);

/* Item access for deliverers. */
const char *queue_item_id(const struct queue_item *it);
struct envelope *queue_item_envelope(struct queue_item *it);   /* rcpt states current */
const char *queue_item_data(struct queue_item *it, size_t *len); /* message bytes */
unsigned queue_item_attempts(const struct queue_item *it);
/* Whether the sender was warned that the message is delayed (a delay DSN
 * was queued).  set_warned is saved with the attempt's results, so the
 * warning goes out once. */
bool queue_item_warned(const struct queue_item *it);
void queue_item_set_warned(struct queue_item *it);
/* Record the outcome of one recipient (index into the envelope's rcpts):
 * code 2xx -> done, 5xx -> failed, anything else (4xx, 0 for a
 * connection-level fault) -> stays pending for retry. */
void queue_item_result(struct queue_item *it, size_t rcpt_index, int code, const char *reply);
/* The sender has been told (a DSN is queued) about a failed recipient:
 * RCPT_FAILED becomes RCPT_BOUNCED, and the message no longer needs to be
 * kept in failed/ for it. */
void queue_item_bounced(struct queue_item *it, size_t rcpt_index);
/* Whole-message temporary failure (connection refused, timeout, ...):
 * every pending recipient gets this reply and stays pending. */
void queue_item_defer(struct queue_item *it, const char *reason);
void queue_item_done(struct queue *q, struct queue_item *it);
/* Give a message back untried (its destination is busy): its delivery
 * slot and file lock are released, nothing is recorded, no attempt is
 * counted, and it is not handed out again until queue_item_unpark() makes
 * it due, which the deliverer must call (the item stays valid until
 * then or queue_close()).  A message deleted or held meanwhile is dropped
 * from memory when it comes due. */
void queue_item_park(struct queue *q, struct queue_item *it);
void queue_item_unpark(struct queue *q, struct queue_item *it);

/* Statistics for /metrics.  accepted counts messages, corrupt counts files
 * moved to corrupt/, delivered/deferred/failed count recipient outcomes per
 * attempt (failed includes expired, which counts lifetime expiries), syncs
 * counts fsync/fdatasync/syncfs calls. */
struct queue_stats {
	size_t messages;            /* in active/ */
	size_t held;
	size_t quarantined_msgs;    /* messages in quarantine/ */
	size_t failed_msgs;         /* in failed/: a recipient failed, no DSN sent yet */
	time_t oldest;              /* arrival of the oldest message, 0 if none */
	unsigned long long accepted, delivered, deferred, failed, expired, corrupt;
	unsigned long long quarantined;
	unsigned long long syncs;   /* sync calls made by the commit thread */
};
void queue_get_stats(struct queue *q, struct queue_stats *st);

/* CRC-32C (Castagnoli) as the queue files use it; exposed for tests. */
uint32_t queue_crc32c(const void *p, size_t n);

/* ---- offline administration (rampartctl), safe while the daemon runs ----
 *
 * qids are checked with id_valid() before any path is built.  delete, hold,
 * release and flush take the file's lock with LOCK_NB: a message out for
 * delivery is reported "busy: ..." in why (flush skips it).  release also
 * makes the message due at once.  list and show read without locking. */

struct queue_entry {
	char qid[64];
	const char *where;          /* "active", "hold", "corrupt", "failed" or "quarantine" */
	time_t arrival;
	time_t next_try;
	unsigned attempts;
	size_t size;
	char sender[512];
	size_t nrcpt, npending;
	char last_error[512];
};
typedef void (*queue_list_cb)(void *arg, const struct queue_entry *e);
int queue_list(const char *dir, queue_list_cb cb, void *arg);       /* count or -1 */
/* Full details: envelope with per-recipient state, last replies, retry
 * times; false if no such message. */
bool queue_show(const char *dir, const char *qid, FILE *out);
bool queue_delete(const char *dir, const char *qid, char *why, size_t whylen);
bool queue_hold(const char *dir, const char *qid, char *why, size_t whylen);
/* From hold/ or quarantine/ back to active/, due now. */
bool queue_release(const char *dir, const char *qid, char *why, size_t whylen);
/* Recipients that failed become pending again (attempts start over); the
 * message returns to active/ (from failed/ or hold/) and is due now. */
bool queue_requeue(const char *dir, const char *qid, char *why, size_t whylen);
/* Make all (or one) deferred messages due now; the daemon picks them up on
 * its next scan or at once when signalled.  Returns how many were made due
 * (messages out for delivery are skipped), -1 for a bad qid, a qid not in
 * active/, or a missing spool. */
int queue_flush(const char *dir, const char *qid);

#endif
