/*
 * state.c — the state store's interface (see state.h): parameters,
 * validation of requests, dispatch to the LMDB or Redis backend, the
 * deferred completion of callbacks, and the metrics of both backends.
 */
#include "state.h"
#include "state_backend.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"

#include <event2/event.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define C(f) offsetof(struct state_config, f)

static const struct param_def state_param_defs[] = {
	{ "backend", PT_ENUM, "lmdb", 0, 0, "lmdb|redis", C(backend),
	  "where shared state lives: lmdb (embedded, one host) or redis (shared by the servers of a pair)" },
	{ "lmdb_path", PT_STR, "", 0, 4000, NULL, C(lmdb_path), "LMDB file (default: state_dir/state.lmdb)" },
	{ "lmdb_map_size", PT_SIZE, "256m", 1LL << 20, 1LL << 40, NULL, C(lmdb_map_size),
	  "largest size the LMDB file may grow to" },
	{ "lmdb_sync", PT_ENUM, "periodic", 0, 0, "periodic|commit", C(lmdb_sync),
	  "periodic: flush to disk every lmdb_sync_interval (fast; a host crash may lose recent writes or damage the file, "
	  "which is then moved aside: soft state); commit: flush every write (durable, slow)" },
	{ "lmdb_sync_interval", PT_TIME, "1s", 10, 3600000, NULL, C(lmdb_sync_interval),
	  "how often written state is flushed to disk (lmdb_sync = periodic)" },
	{ "lmdb_purge_interval", PT_TIME, "60s", 100, 86400000, NULL, C(lmdb_purge_interval),
	  "how often expired entries are removed from the LMDB file" },
	{ "lmdb_purge_batch", PT_INT, "1000", 10, 1000000, NULL, C(lmdb_purge_batch),
	  "most entries one purge run examines (a run that stops early goes on soon after)" },
	{ "redis_server", PT_STR, "127.0.0.1:6379", 1, 300, NULL, C(redis_server),
	  "Redis server: host:port, [v6]:port or unix:/path (prefer an address: a name is resolved at each connect)" },
	{ "redis_username", PT_STR, "", 0, 128, NULL, C(redis_username),
	  "Redis ACL user for AUTH (empty: the password alone)" },
	{ "redis_password_file", PT_STR, "", 0, 4000, NULL, C(redis_password_file),
	  "file holding the Redis password (empty: no AUTH)" },
	{ "redis_db", PT_INT, "0", 0, 1000000, NULL, C(redis_db), "Redis database index (SELECT)" },
	{ "redis_timeout", PT_TIME, "1s", 10, 60000, NULL, C(redis_timeout),
	  "deadline of a Redis connect and of every command" },
	{ "redis_max_pending", PT_INT, "1000", 1, 1000000, NULL, C(redis_max_pending),
	  "most Redis commands in flight; more fail at once" },
	{ "key_prefix", PT_STR, "rampart:", 0, STATE_PREFIX_MAX, NULL, C(key_prefix),
	  "prepended to every key (sites or stages sharing one store)" },
	PARAM_END
};

const struct param_set state_param_set = {
	"state", "shared state store (greylisting, rate limits, counters)", state_param_defs,
	sizeof(struct state_config)
};

#define NOPS (STATE_OP_MINCR + 1)

struct state {
	const struct state_backend_ops *ops;
	void *be;
	struct event_base *base;
	char *prefix;
	size_t plen;
	/* Completion queue: requests whose callbacks run from the loop. */
	struct state_req *done_head, *done_tail;
	struct event *done_ev;
	int in_callback;
	bool closing;
	/* Metrics (NULL: none). */
	struct metric *m_ops, *m_errors;
	char *labels[NOPS];
};

static const char *op_names[NOPS] = { "get", "set", "del", "incr", "take", "scan", "mget", "mincr" };

const char *state_op_name(enum state_op op)
{
	return (unsigned)op < NOPS ? op_names[op] : "?";
}

const char *state_status_name(enum state_status s)
{
	switch (s) {
	case STATE_OK: return "ok";
	case STATE_NOTFOUND: return "not found";
	case STATE_ERROR: return "error";
	}
	return "?";
}

const char *state_backend_name(const struct state *st)
{
	return st->ops->name;
}

bool state_up(const struct state *st, char *why, size_t whylen)
{
	set_why(why, whylen, "%s", "");
	return st->ops->up(st->be, why, whylen);
}

bool state_closing(const struct state *st)
{
	return st->closing;
}

/* ---- helpers ------------------------------------------------------------- */

long long state_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long state_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool state_parse_counter(const char *p, size_t n, long long *out)
{
	size_t i = 0;
	bool neg = false;
	if (n && p[0] == '-') {
		neg = true;
		i = 1;
	}
	if (i == n || n > 20)
		return false;
	/* the form Redis's INCRBY takes: no leading zeros, no "-0" */
	if (p[i] == '0' && (n - i > 1 || neg))
		return false;
	long long v = 0;
	for (; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return false;
		int d = p[i] - '0';
		if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, neg ? -d : d, &v))
			return false;
	}
	*out = v;
	return true;
}

bool state_parse_bucket(const char *p, size_t n, double *tokens, long long *ts)
{
	char tmp[96];
	if (n == 0 || n >= sizeof(tmp))
		return false;
	memcpy(tmp, p, n);
	tmp[n] = '\0';
	char *sp = strchr(tmp, ' ');
	if (!sp)
		return false;
	*sp = '\0';
	char *end;
	errno = 0;
	double t = strtod(tmp, &end);
	if (end == tmp || *end || errno || !__builtin_isfinite(t))
		return false;
	long long v;
	if (!state_parse_counter(sp + 1, strlen(sp + 1), &v) || v < 0)
		return false;
	*tokens = t;
	*ts = v;
	return true;
}

/* ceil(x) as milliseconds, within [0, STATE_TTL_MAX] (no libm). */
static long long ceil_ms(double x)
{
	if (!(x > 0))
		return 0;
	if (x >= (double)STATE_TTL_MAX)
		return STATE_TTL_MAX;
	long long i = (long long)x;
	return (double)i < x ? i + 1 : i;
}

/* Must agree with the Redis script in state_redis.c. */
long long state_bucket_step(double rate, double burst, double cost, bool exists, double *tokens, long long *ts,
			    long long now, bool *allowed, long long *retry_after_ms)
{
	if (!exists) {
		*tokens = burst;
		*ts = now;
	}
	if (now > *ts)
		*tokens += (double)(now - *ts) * rate / 1000.0;
	if (*tokens > burst)
		*tokens = burst;
	if (*tokens < 0)
		*tokens = 0;
	*ts = now;
	*allowed = false;
	*retry_after_ms = 0;
	if (*tokens + 1e-9 >= cost) {
		*tokens -= cost;
		if (*tokens < 0)
			*tokens = 0;
		*allowed = true;
	} else if (cost > burst) {
		*retry_after_ms = -1;
	} else {
		*retry_after_ms = ceil_ms((cost - *tokens) * 1000.0 / rate);
	}
	long long full = ceil_ms((burst - *tokens) * 1000.0 / rate) + 1000;
	return full > STATE_TTL_MAX ? STATE_TTL_MAX : full;
}

/* ---- requests ------------------------------------------------------------ */

struct pool *state_req_pool(struct state_req *req)
{
	if (!req->pool)
		req->pool = pool_new(0);
	return req->pool;
}

void state_req_fail(struct state_req *req, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(req->reason, sizeof(req->reason), fmt, ap);
	va_end(ap);
	req->res.status = STATE_ERROR;
	req->res.reason = req->reason;
}

static void req_free(struct state_req *req)
{
	pool_free(req->pool);
	free(req);
}

void state_req_deliver(struct state_req *req)
{
	struct state *st = req->st;
	if (st->m_ops) {
		metric_inc(st->m_ops, st->labels[req->op]);
		if (req->res.status == STATE_ERROR)
			metric_inc(st->m_errors, st->labels[req->op]);
	}
	if (req->cb) {
		state_cb cb = req->cb;
		req->cb = NULL;
		st->in_callback++;
		cb(req->arg, &req->res);
		st->in_callback--;
	}
	req_free(req);
}

static void run_done(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct state *st = arg;
	/* Only what is queued now: requests that callbacks start wait for
	 * the next turn of the loop, so I/O is never starved. */
	struct state_req *list = st->done_head;
	st->done_head = st->done_tail = NULL;
	while (list) {
		struct state_req *req = list;
		list = req->next;
		state_req_deliver(req);
	}
}

void state_req_defer(struct state_req *req)
{
	struct state *st = req->st;
	req->next = NULL;
	if (st->done_tail)
		st->done_tail->next = req;
	else
		st->done_head = req;
	st->done_tail = req;
	if (!st->closing && !evtimer_pending(st->done_ev, NULL)) {
		static const struct timeval zero = { 0, 0 };
		evtimer_add(st->done_ev, &zero);
	}
}

void state_cancel(struct state_req *req)
{
	if (req)
		req->cb = NULL;
}

static struct state_req *req_new(struct state *st, enum state_op op, state_cb cb, void *arg)
{
	struct state_req *req = xmalloc(sizeof(*req));
	/* Everything but the key buffer, which req_key() fills. */
	memset(req, 0, offsetof(struct state_req, key));
	req->key[0] = '\0';
	memset(&req->klen, 0, sizeof(*req) - offsetof(struct state_req, klen));
	req->st = st;
	req->cb = cb;
	req->arg = arg;
	req->op = op;
	req->plen = st->plen;
	req->res.op = op;
	req->res.reason = "";
	req->res.key = "";
	req->res.cursor = "";
	return req;
}

static bool key_chars_ok(const char *k, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)k[i] < 0x20 || k[i] == 0x7f)
			return false;
	return true;
}

/* Why key is not acceptable (in buf or a constant), NULL if it is; its
 * length in *len.  A scan prefix may be empty. */
static const char *key_refused(const char *key, bool empty_ok, size_t *len, char *buf, size_t buflen)
{
	if (!key)
		return "no key";
	size_t n = strlen(key);
	*len = n;
	if (n > STATE_KEY_MAX) {
		snprintf(buf, buflen, "key too long (%zu bytes, at most %d)", n, STATE_KEY_MAX);
		return buf;
	}
	if (n == 0 && !empty_ok)
		return "empty key";
	if (!key_chars_ok(key, n))
		return "control characters in key";
	return NULL;
}

/* Copy key_prefix + key into the request; false (request failed) if
 * the key is not acceptable. */
static bool req_key(struct state_req *req, const char *key, bool empty_ok)
{
	char buf[80];
	size_t n = 0;
	const char *why = key_refused(key, empty_ok, &n, buf, sizeof(buf));
	if (why) {
		state_req_fail(req, "%s", why);
		return false;
	}
	memcpy(req->key, req->st->prefix, req->plen);
	memcpy(req->key + req->plen, key, n);
	req->klen = req->plen + n;
	req->key[req->klen] = '\0';
	req->res.key = req->key + req->plen;
	return true;
}

/* Copy key_prefix + each key into the request's pool (the first also to
 * req->key, for res.key); false (request failed) on a bad count or key. */
static bool req_keys(struct state_req *req, const char *const *keys, size_t n)
{
	if (n == 0 || n > STATE_MGET_MAX) {
		state_req_fail(req, "key count out of range (%zu, 1..%d)", n, STATE_MGET_MAX);
		return false;
	}
	if (!keys) {
		state_req_fail(req, "no keys");
		return false;
	}
	struct pool *pool = state_req_pool(req);
	req->keys = pool_alloc(pool, n * sizeof(*req->keys));
	req->klens = pool_alloc(pool, n * sizeof(*req->klens));
	char buf[80];
	for (size_t i = 0; i < n; i++) {
		size_t len = 0;
		const char *why = key_refused(keys[i], false, &len, buf, sizeof(buf));
		if (why) {
			state_req_fail(req, "key %zu: %s", i, why);
			return false;
		}
		char *k = pool_alloc(pool, req->plen + len + 1);
		memcpy(k, req->st->prefix, req->plen);
		memcpy(k + req->plen, keys[i], len + 1);
		req->keys[i] = k;
		req->klens[i] = req->plen + len;
	}
	req->nkeys = n;
	return req_key(req, keys[0], false);
}

static bool ttl_ok(struct state_req *req, long long ttl_ms)
{
	if (ttl_ms < 0 || ttl_ms > STATE_TTL_MAX) {
		state_req_fail(req, "expiry out of range (%lld ms)", ttl_ms);
		return false;
	}
	return true;
}

/* Hand a valid request to the backend, or finish a refused one. */
static struct state_req *submit(struct state_req *req, bool valid)
{
	state_cb cb = req->cb;
	if (!valid)
		state_req_defer(req);
	else if (req->st->closing) {
		state_req_fail(req, "store closed");
		state_req_defer(req);
	} else
		req->st->ops->start(req->st->be, req);
	return cb ? req : NULL;
}

struct state_req *state_get(struct state *st, const char *key, state_cb cb, void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_GET, cb, arg);
	return submit(req, req_key(req, key, false));
}

struct state_req *state_mget(struct state *st, const char *const *keys, size_t n, state_cb cb, void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_MGET, cb, arg);
	return submit(req, req_keys(req, keys, n));
}

struct state_req *state_mincr(struct state *st, const char *const *keys, size_t n, long long by, long long ttl_ms,
			      state_cb cb, void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_MINCR, cb, arg);
	bool ok = req_keys(req, keys, n) && ttl_ok(req, ttl_ms);
	req->by = by;
	req->ttl_ms = ttl_ms;
	return submit(req, ok);
}

struct state_req *state_set(struct state *st, const char *key, const void *value, size_t vlen, long long ttl_ms,
			    state_cb cb, void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_SET, cb, arg);
	bool ok = req_key(req, key, false) && ttl_ok(req, ttl_ms);
	if (ok && vlen > STATE_VALUE_MAX) {
		state_req_fail(req, "value too long (%zu bytes, at most %d)", vlen, STATE_VALUE_MAX);
		ok = false;
	}
	if (ok && !value && vlen) {
		state_req_fail(req, "no value");
		ok = false;
	}
	req->value = value ? value : "";
	req->vlen = vlen;
	req->ttl_ms = ttl_ms;
	return submit(req, ok);
}

struct state_req *state_del(struct state *st, const char *key, state_cb cb, void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_DEL, cb, arg);
	return submit(req, req_key(req, key, false));
}

struct state_req *state_incr(struct state *st, const char *key, long long by, long long ttl_ms, state_cb cb,
			     void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_INCR, cb, arg);
	bool ok = req_key(req, key, false) && ttl_ok(req, ttl_ms);
	req->by = by;
	req->ttl_ms = ttl_ms;
	return submit(req, ok);
}

struct state_req *state_take(struct state *st, const char *key, double rate, double burst, double cost,
			     state_cb cb, void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_TAKE, cb, arg);
	bool ok = req_key(req, key, false);
	/* (written so that NaN fails too) */
	if (ok && (!(rate > 0 && rate <= 1e9) || !(burst > 0 && burst <= 1e12) || !(cost >= 0 && cost <= 1e12))) {
		state_req_fail(req, "bad bucket (rate %g, burst %g, cost %g)", rate, burst, cost);
		ok = false;
	}
	req->rate = rate;
	req->burst = burst;
	req->cost = cost;
	return submit(req, ok);
}

struct state_req *state_scan(struct state *st, const char *prefix, const char *cursor, size_t limit, state_cb cb,
			     void *arg)
{
	struct state_req *req = req_new(st, STATE_OP_SCAN, cb, arg);
	bool ok = req_key(req, prefix ? prefix : "", true);
	if (ok && (limit == 0 || limit > STATE_SCAN_MAX)) {
		state_req_fail(req, "scan limit out of range (%zu, 1..%d)", limit, STATE_SCAN_MAX);
		ok = false;
	}
	if (ok && cursor && (strlen(cursor) > STATE_KEY_MAX + 32 || !key_chars_ok(cursor, strlen(cursor)))) {
		state_req_fail(req, "bad cursor");
		ok = false;
	}
	req->cursor = cursor ? cursor : "";
	req->limit = limit;
	return submit(req, ok);
}

/* ---- open and close ------------------------------------------------------ */

struct state *state_open(const struct state_config *cfg, struct event_base *base, char *why, size_t whylen)
{
	const char *prefix = cfg->key_prefix ? cfg->key_prefix : "";
	if (strlen(prefix) > STATE_PREFIX_MAX || !key_chars_ok(prefix, strlen(prefix))) {
		set_why(why, whylen, "key_prefix: at most %d characters, no control characters", STATE_PREFIX_MAX);
		return NULL;
	}
	struct state *st = xcalloc(1, sizeof(*st));
	st->ops = cfg->backend == STATE_BACKEND_REDIS ? &state_redis_ops : &state_lmdb_ops;
	st->base = base;
	st->prefix = xstrdup(prefix);
	st->plen = strlen(prefix);
	st->done_ev = evtimer_new(base, run_done, st);
	if (cfg->metrics) {
		st->m_ops = metrics_counter(cfg->metrics, "rampart_state_operations_total",
					    "state store operations by backend and operation");
		st->m_errors = metrics_counter(cfg->metrics, "rampart_state_errors_total",
					       "state store operations that failed (store unreachable, timed out, refused)");
		for (int i = 0; i < NOPS; i++)
			st->labels[i] = xasprintf("backend=\"%s\",op=\"%s\"", st->ops->name, op_names[i]);
	}
	st->be = st->ops->open(st, cfg, base, why, whylen);
	if (!st->be) {
		event_free(st->done_ev);
		for (int i = 0; i < NOPS; i++)
			free(st->labels[i]);
		free(st->prefix);
		free(st);
		return NULL;
	}
	return st;
}

void state_close(struct state *st)
{
	if (!st)
		return;
	if (st->in_callback)
		log_panic(NULL, NULL, "state_close_in_callback", "backend=%s", st->ops->name);
	st->closing = true;
	st->ops->close(st->be);
	/* Finished requests still queued, and any a callback starts now. */
	while (st->done_head) {
		struct state_req *req = st->done_head;
		st->done_head = req->next;
		if (!st->done_head)
			st->done_tail = NULL;
		state_req_deliver(req);
	}
	event_free(st->done_ev);
	for (int i = 0; i < NOPS; i++)
		free(st->labels[i]);
	free(st->prefix);
	free(st);
}
