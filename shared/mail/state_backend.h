/*
 * state_backend.h — private interface between the state store (state.c)
 * and its backends (state_lmdb.c, state_redis.c).  Not for other modules.
 *
 * state.c validates a request, fills a struct state_req and hands it to
 * the backend's start().  The backend fills req->res (with the helpers
 * below) and finishes the request exactly once: state_req_defer() when it
 * is still inside start() (the callback then runs from the event loop),
 * or state_req_deliver() from its own event callbacks.
 */
#ifndef RAMPART_STATE_BACKEND_H
#define RAMPART_STATE_BACKEND_H

#include "state.h"

#include <stdarg.h>

struct pool;

struct state_req {
	struct state *st;
	state_cb cb;                    /* NULL: cancelled or nobody listens */
	void *arg;
	enum state_op op;
	struct state_req *next;         /* completion queue */
	/* The request.  key = key_prefix + key (scan: + prefix; mget: + the
	 * first key). */
	char key[STATE_PREFIX_MAX + STATE_KEY_MAX + 1];
	size_t klen;
	size_t plen;                    /* strlen(key_prefix) */
	const char *value;              /* set: valid during start() only */
	size_t vlen;
	long long ttl_ms;               /* set, incr, mincr */
	long long by;                   /* incr, mincr */
	double rate, burst, cost;       /* take */
	const char *cursor;             /* scan: valid during start() only */
	size_t limit;                   /* scan */
	char **keys;                    /* mget, mincr: key_prefix + each key (pool) */
	size_t *klens;                  /* mget, mincr (pool) */
	size_t nkeys;                   /* mget, mincr */
	/* The result. */
	struct state_result res;
	char reason[256];
	struct pool *pool;              /* backend memory that lives as long as the request */
};

struct state_backend_ops {
	const char *name;
	void *(*open)(struct state *st, const struct state_config *cfg, struct event_base *base, char *why,
		      size_t whylen);
	/* Finish every request still in the backend (state_req_deliver with
	 * an error), then free. */
	void (*close)(void *be);
	bool (*up)(const void *be, char *why, size_t whylen);
	void (*start)(void *be, struct state_req *req);
};

extern const struct state_backend_ops state_lmdb_ops;
extern const struct state_backend_ops state_redis_ops;

/* Finish a request: the callback runs from the event loop (defer) or now
 * (deliver, only from the backend's own event callbacks); then the
 * request is freed. */
void state_req_defer(struct state_req *req);
void state_req_deliver(struct state_req *req);
/* Set the result to an error with a reason. */
void state_req_fail(struct state_req *req, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The pool of a request (created on first use). */
struct pool *state_req_pool(struct state_req *req);
/* True once state_close() has begun. */
bool state_closing(const struct state *st);

/* Helpers the backends share. */
long long state_now_ms(void);           /* wall clock */
long long state_mono_ms(void);          /* monotonic */
/* Strict decimal long long ("-12"), as Redis's INCRBY reads it: false on
 * anything else ("007", "-0", "+1", " 1"), or overflow. */
bool state_parse_counter(const char *p, size_t n, long long *out);
/* Parse "TOKENS TIME_MS" bucket text. */
bool state_parse_bucket(const char *p, size_t n, double *tokens, long long *ts);
/* The token-bucket arithmetic both backends use (the Redis script does
 * the same): refill from ts to now, take cost if possible.  Returns the
 * bucket's new expiry in ms from now. */
long long state_bucket_step(double rate, double burst, double cost, bool exists, double *tokens, long long *ts,
			    long long now, bool *allowed, long long *retry_after_ms);

#endif
