/*
 * state.h — the shared state store of the defences: a small key-value
 * interface with expiry, atomic counters and token buckets (greylisting,
 * rate limits, connection counters, spam-trap blocks).
 *
 * Two backends behind one interface (DESIGN.md §1, "per-stage server
 * pairs"):
 *   lmdb   embedded, the default: one file (state_dir/state.lmdb) that the
 *          processes of one host share safely;
 *   redis  through hiredis, for the servers of a pair sharing one Redis.
 *
 * Asynchronous, for checks driven by a libevent loop.  Every operation
 * takes a callback that runs exactly once, always from the event loop and
 * never before the operation's function has returned — also when the
 * operation is refused at once (bad key, Redis down).  The LMDB backend
 * does its work during the call and defers only the callback; Redis
 * answers when the reply comes.  A callback may start new operations.
 * state_cancel() stops a callback from running (its arguments are gone);
 * the operation itself may still take effect.
 *
 * Failures are reported, never hidden: when the store cannot answer
 * (Redis down, timed out, LMDB error) the callback gets STATE_ERROR with
 * a reason, and the caller applies its failure mode.  While Redis is down
 * operations fail at once (no queueing behind a dead connection), the
 * store reconnects by itself with backoff, and logs each change of
 * connection state once.
 *
 * Keys are 1..STATE_KEY_MAX bytes without control characters (they are
 * C strings); values are 0..STATE_VALUE_MAX arbitrary bytes.  Every key
 * is stored under the configured key_prefix.  Expiry (ttl_ms > 0) is
 * kept with the value: an expired entry is invisible to every operation;
 * LMDB removes expired entries in a bounded purge it schedules itself,
 * Redis expires them natively.
 *
 * Clocks.  Expiry and token buckets use wall-clock milliseconds.  LMDB
 * uses the host's clock (all its processes share it).  Redis uses the
 * Redis server's clock (TIME, inside the scripts), so the servers of a
 * pair that share one Redis share one clock whatever their own clocks
 * say.  A clock that steps back never adds tokens.
 */
#ifndef RAMPART_STATE_H
#define RAMPART_STATE_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/config.h"

struct event_base;
struct metrics;

#define STATE_KEY_MAX 480               /* bytes, after which a key is refused */
#define STATE_PREFIX_MAX 31             /* key_prefix length */
#define STATE_VALUE_MAX 4096            /* bytes */
#define STATE_TTL_MAX (10LL * 366 * 86400 * 1000)   /* ms */
#define STATE_SCAN_MAX 1000             /* entries per scan call */
#define STATE_MGET_MAX 4096             /* keys per state_mget and state_mincr */

enum state_backend { STATE_BACKEND_LMDB, STATE_BACKEND_REDIS };
enum state_lmdb_sync { STATE_SYNC_PERIODIC, STATE_SYNC_COMMIT };

/* Parameters (state_param_set); the last two fields are not parameters
 * and are set by the caller after config_bind(). */
struct state_config {
	int backend;                    /* enum state_backend */
	char *lmdb_path;                /* "": state_dir/state.lmdb */
	long long lmdb_map_size;        /* bytes */
	int lmdb_sync;                  /* enum state_lmdb_sync */
	long long lmdb_sync_interval;   /* ms */
	long long lmdb_purge_interval;  /* ms */
	long long lmdb_purge_batch;     /* entries examined per purge run */
	char *redis_server;             /* host:port, [v6]:port or unix:/path */
	char *redis_username;           /* "": AUTH with the password only */
	char *redis_password_file;      /* "": no AUTH */
	long long redis_db;
	long long redis_timeout;        /* ms: connect and command deadline */
	long long redis_max_pending;    /* commands in flight */
	char *key_prefix;
	/* Not parameters. */
	const char *state_dir;          /* home of the default LMDB file */
	struct metrics *metrics;        /* NULL: none; must outlive the store */
};

extern const struct param_set state_param_set;

enum state_status { STATE_OK, STATE_NOTFOUND, STATE_ERROR };
enum state_op {
	STATE_OP_GET, STATE_OP_SET, STATE_OP_DEL, STATE_OP_INCR, STATE_OP_TAKE, STATE_OP_SCAN, STATE_OP_MGET,
	STATE_OP_MINCR
};

/* One entry of a scan. */
struct state_entry {
	const char *key;                /* without key_prefix */
	const char *value;              /* NUL-terminated copy (NUL not counted) */
	size_t vlen;
	long long ttl_ms;               /* time left, -1: no expiry */
};

/* One key's answer in a state_mget. */
struct state_value {
	enum state_status status;       /* STATE_OK (value set) or STATE_NOTFOUND */
	const char *value;              /* NUL-terminated copy, NUL not counted; NULL when not found */
	size_t vlen;
};

/* What a callback gets; everything it points to lives until the callback
 * returns. */
struct state_result {
	enum state_status status;
	enum state_op op;
	const char *key;                /* the key (scan: the prefix; mget: the first key), without key_prefix */
	const char *reason;             /* STATE_ERROR: what failed; "" otherwise */
	/* get: the value (NUL-terminated, NUL not counted) */
	const char *value;
	size_t vlen;
	/* incr: the new value */
	long long counter;
	/* take */
	bool allowed;                   /* the cost was taken */
	double tokens;                  /* tokens left */
	long long retry_after_ms;       /* denied: when the cost will be there; -1: never (cost > burst) */
	/* scan */
	const struct state_entry *entries;
	size_t nentries;
	const char *cursor;             /* pass to the next scan call; "" when the scan is complete */
	/* mget: one per key, in the order of the keys */
	const struct state_value *values;
	size_t nvalues;
};

typedef void (*state_cb)(void *arg, const struct state_result *r);

struct state;
struct state_req;

/* Open the store: the LMDB file (created if needed; an unreadable,
 * corrupt file is moved aside and reported) or the Redis client (it
 * connects in the background: operations issued during the first
 * connection attempt wait for it, bounded by redis_timeout).  NULL and
 * why on a bad configuration or an LMDB file that cannot be opened.
 * A store is used from the thread of its event loop only, and a process
 * opens an LMDB file once (LMDB forbids two handles on one file in one
 * process): the stage opens the store and its checks share it. */
struct state *state_open(const struct state_config *cfg, struct event_base *base, char *why, size_t whylen);
/* Close: callbacks still pending run inside with STATE_ERROR "store
 * closed" (cancel those whose arguments are gone first).  Not from inside
 * one of the store's callbacks. */
void state_close(struct state *st);

const char *state_backend_name(const struct state *st);
/* LMDB: always; Redis: connected and ready.  why: the last error. */
bool state_up(const struct state *st, char *why, size_t whylen);
const char *state_status_name(enum state_status s);
const char *state_op_name(enum state_op op);

/*
 * The operations.  Each returns a handle for state_cancel(), valid until
 * the callback runs (NULL if cb is NULL: nobody is told the outcome).
 */
/* STATE_OK with the value, or STATE_NOTFOUND. */
struct state_req *state_get(struct state *st, const char *key, state_cb cb, void *arg);
/* Store value with expiry ttl_ms (0: none), replacing value and expiry. */
struct state_req *state_set(struct state *st, const char *key, const void *value, size_t vlen, long long ttl_ms,
			    state_cb cb, void *arg);
/* STATE_OK if the key existed, else STATE_NOTFOUND. */
struct state_req *state_del(struct state *st, const char *key, state_cb cb, void *arg);
/* Add by (may be negative) to a counter (stored as decimal text);
 * a missing key starts at 0 with expiry ttl_ms (0: none); an existing one
 * keeps its expiry.  counter = the new value.  A value that is not a
 * counter, or an overflow, is STATE_ERROR. */
struct state_req *state_incr(struct state *st, const char *key, long long by, long long ttl_ms, state_cb cb,
			     void *arg);
/* Token bucket, atomically: the bucket holds up to burst tokens and
 * refills at rate tokens per second; a missing bucket is full.  Takes
 * cost tokens if there are that many (allowed), else takes nothing and
 * says when there will be (retry_after_ms).  cost 0 only looks.  The
 * bucket is stored as text "TOKENS TIME_MS" and expires once it would be
 * full again.  rate and burst > 0, 0 <= cost. */
struct state_req *state_take(struct state *st, const char *key, double rate, double burst, double cost,
			     state_cb cb, void *arg);
/* Many gets, one callback: n (1..STATE_MGET_MAX) keys, each checked as
 * for state_get, read only during the call.  STATE_OK when the store
 * answered, with values[i] the answer for keys[i] (STATE_OK with the
 * value, or STATE_NOTFOUND); STATE_ERROR when it could not (values NULL,
 * nvalues 0), also when n or any key is bad (reason "key I: ...", I the
 * index in keys).  LMDB reads all the keys in one read transaction,
 * Redis in one MGET; a malformed or over-long stored value fails the
 * whole request. */
struct state_req *state_mget(struct state *st, const char *const *keys, size_t n, state_cb cb, void *arg);
/* Many counters, one callback: add by to each of n (1..STATE_MGET_MAX)
 * keys, as state_incr does to one (a missing key starts at 0 with expiry
 * ttl_ms), all or none: STATE_OK when every counter moved, STATE_ERROR
 * when none did (a key that is bad, or holds something other than a
 * counter, or would overflow, fails the whole request: reason "key I:
 * ...").  A key given twice moves twice.  LMDB makes it one write
 * transaction, Redis one script: for training, which moves hundreds of
 * counters a message. */
struct state_req *state_mincr(struct state *st, const char *const *keys, size_t n, long long by, long long ttl_ms,
			      state_cb cb, void *arg);
/* Administration: up to limit (1..STATE_SCAN_MAX) live entries whose key
 * begins with prefix ("" for all), resuming at cursor (NULL or "" to
 * begin).  Bounded work per call: fewer entries than limit with a
 * non-empty cursor only means "go on".  Redis may return an entry twice
 * when keys change during the scan (SCAN semantics). */
struct state_req *state_scan(struct state *st, const char *prefix, const char *cursor, size_t limit, state_cb cb,
			     void *arg);

void state_cancel(struct state_req *req);

#endif
