/*
 * state_redis.c — the Redis backend of the state store (see state.h): the
 * servers of a pair share one Redis, through hiredis's asynchronous API
 * on the process's libevent loop.
 *
 * One connection: connect, AUTH (with a password), SELECT (db other than
 * 0), PING; ready when PING answers.  Commands are pipelined and replies
 * come in order, so the oldest command in flight carries the deadline
 * (redis_timeout from when it was sent, the connect included): when it
 * passes, the connection is dropped, every command in flight fails, and
 * the store reconnects with backoff (100 ms doubling to 5 s, jittered).
 * While the connection is not ready operations fail at once with the
 * reason — except during the first attempt after open, when they wait in
 * the pipeline.  Each change of connection state is logged once
 * (state_redis_up, state_redis_down), never per operation.
 *
 * The compound operations are Lua scripts, run by EVALSHA (EVAL when the
 * server does not know them yet), so the servers of a pair stay
 * consistent: incr (expiry set on creation), the token bucket (on the
 * Redis server's clock, TIME), a scan page (SCAN MATCH COUNT with GET
 * and PTTL of each key; the scan cursor is "SCANCURSOR:SKIP", SKIP the
 * keys of that page already returned) and many counters at once (every
 * key checked before any moves).
 *
 * The event-loop glue is ours rather than hiredis/adapters/libevent.h,
 * which registers the write event for every command and the read event
 * again after every reply (four epoll_ctl and a second epoll_wait per
 * command).  Here the read event is persistent, and a command issued by
 * an operation's call is written at once; the write event serves only a
 * full socket, the connect, and commands issued inside hiredis callbacks.
 * Requests that fail during such a write are deferred like the others.
 */
#include "state_backend.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/net.h"

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <openssl/evp.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define SCAN_PAGES 16                   /* SCAN calls per scan request */
#define SECRET_MAX 1024

/* Counter: refuses a value that is not an integer; expiry only when the
 * key is created. */
static const char incr_lua[] =
	"local cur = redis.call('GET', KEYS[1])\n"
	"if cur and cur ~= '0' and not string.match(cur, '^%-?[1-9]%d*$') then\n"
	"  return redis.error_reply('value is not a counter')\n"
	"end\n"
	"local v = redis.call('INCRBY', KEYS[1], ARGV[1])\n"
	"if not cur and tonumber(ARGV[2]) > 0 then\n"
	"  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
	"end\n"
	"return v\n";

/* Many counters: every key is checked (a counter in the form INCRBY
 * takes, and no overflow of its total move, a key given twice moving
 * twice, with a margin: Lua's numbers are doubles) before any moves, so
 * a refused request changes nothing.  ARGV: by, expiry of new keys. */
static const char mincr_lua[] =
	"local by, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
	"local new, sum = {}, {}\n"
	"for i, k in ipairs(KEYS) do\n"
	"  if sum[k] == nil then\n"
	"    local cur = redis.call('GET', k)\n"
	"    if cur and cur ~= '0' and not string.match(cur, '^%-?[1-9]%d*$') then\n"
	"      return redis.error_reply('key ' .. (i - 1) .. ': value is not a counter')\n"
	"    end\n"
	"    new[k] = not cur\n"
	"    sum[k] = tonumber(cur or '0')\n"
	"  end\n"
	"  sum[k] = sum[k] + by\n"
	"  if math.abs(sum[k]) > 9.2e18 then\n"
	"    return redis.error_reply('key ' .. (i - 1) .. ': counter overflow')\n"
	"  end\n"
	"end\n"
	"for i, k in ipairs(KEYS) do\n"
	"  redis.call('INCRBY', k, ARGV[1])\n"
	"  if new[k] and ttl > 0 then\n"
	"    redis.call('PEXPIRE', k, ARGV[2])\n"
	"    new[k] = false\n"
	"  end\n"
	"end\n"
	"return #KEYS\n";

/* Token bucket: the arithmetic of state_bucket_step() (state.c), on the
 * server's clock.  ARGV: rate, burst, cost, longest expiry. */
static const char take_lua[] =
	"local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])\n"
	"local maxttl = tonumber(ARGV[4])\n"
	"local t = redis.call('TIME')\n"
	"local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
	"local s = redis.call('GET', KEYS[1])\n"
	"local tokens, ts = burst, now\n"
	"if s then\n"
	"  local a, b = string.match(s, '^(%S+) (%d+)$')\n"
	"  tokens, ts = tonumber(a), tonumber(b)\n"
	"  if not tokens or not ts then return redis.error_reply('value is not a token bucket') end\n"
	"end\n"
	"if now > ts then tokens = tokens + (now - ts) * rate / 1000 end\n"
	"if tokens > burst then tokens = burst end\n"
	"if tokens < 0 then tokens = 0 end\n"
	"local allowed, retry = 0, 0\n"
	"if tokens + 1e-9 >= cost then\n"
	"  tokens = tokens - cost\n"
	"  if tokens < 0 then tokens = 0 end\n"
	"  allowed = 1\n"
	"elseif cost > burst then\n"
	"  retry = -1\n"
	"else\n"
	"  retry = math.min(math.ceil((cost - tokens) * 1000 / rate), maxttl)\n"
	"end\n"
	"local full = math.min(math.ceil((burst - tokens) * 1000 / rate) + 1000, maxttl)\n"
	"local text = string.format('%.6f', tokens)\n"
	"if cost > 0 or s then\n"
	"  redis.call('SET', KEYS[1], text .. ' ' .. string.format('%d', now), 'PX', full)\n"
	"end\n"
	"return {allowed, text, retry}\n";

/* One scan request: up to ARGV[6] SCAN pages from cursor ARGV[1],
 * skipping the first ARGV[2] keys of the first page, until ARGV[5]
 * entries.  Returns {cursor, skip, {key, value, pttl, ...}}. */
static const char scan_lua[] =
	"local cursor, skip = ARGV[1], tonumber(ARGV[2])\n"
	"local pat, count, room, pages = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])\n"
	"local out, n = {}, 0\n"
	"for p = 1, pages do\n"
	"  local r = redis.call('SCAN', cursor, 'MATCH', pat, 'COUNT', count)\n"
	"  local keys = r[2]\n"
	"  local i = skip + 1\n"
	"  while i <= #keys and n < room do\n"
	"    local k = keys[i]\n"
	"    local v = redis.pcall('GET', k)\n"
	"    if type(v) == 'string' then\n"
	"      out[#out + 1] = k\n"
	"      out[#out + 1] = v\n"
	"      out[#out + 1] = redis.call('PTTL', k)\n"
	"      n = n + 1\n"
	"    end\n"
	"    i = i + 1\n"
	"  end\n"
	"  if i <= #keys then return {cursor, i - 1, out} end\n"
	"  cursor, skip = r[1], 0\n"
	"  if cursor == '0' or n >= room then break end\n"
	"end\n"
	"return {cursor, 0, out}\n";

enum rconn { R_DOWN, R_CONNECTING, R_UP };
enum rkind { K_AUTH, K_SELECT, K_PING, K_USER };

struct redis_be;

/* A command in flight. */
struct rcmd {
	struct rcmd *prev, *next;
	struct redis_be *be;
	enum rkind kind;
	struct state_req *req;          /* K_USER */
	long long deadline;             /* monotonic ms */
	bool eval;                      /* the script goes as EVAL (NOSCRIPT seen) */
	char scan_cursor[24];           /* scan: where to go on */
	long long scan_skip;
};

struct redis_be {
	struct state *st;
	struct event_base *base;
	struct endpoint ep;
	char server[300];               /* as configured, for logs */
	char *username, *password;
	long long db, timeout;
	size_t max_pending;
	redisAsyncContext *ac;          /* NULL while down */
	enum rconn conn;
	bool tcp_up;                    /* the connect completed */
	bool early;                     /* first attempt since open: operations wait for it */
	int logged;                     /* last state logged: 0 none, 1 up, -1 down */
	unsigned failures;              /* attempts since the last success */
	char last_error[256];
	struct event *retry_ev, *timer_ev;
	bool direct;                    /* the caller writes the command at once */
	int in_flush;                   /* inside such a write: defer callbacks */
	struct rcmd *head, *tail;       /* in flight, oldest first */
	size_t npending;                /* operations in flight */
	uint64_t rng;
	char sha_incr[41], sha_take[41], sha_scan[41], sha_mincr[41];
	struct metric *m_up;
};

static void connect_now(struct redis_be *be);

static void sha1_hex(const char *text, char out[41])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	if (!EVP_Digest(text, strlen(text), md, &n, EVP_sha1(), NULL) || n != 20)
		log_fatal(NULL, NULL, "state_redis_sha1", "reason=%s", "SHA-1 unavailable");
	for (unsigned i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
}

/* ---- in-flight list and deadline ----------------------------------------- */

static void link_cmd(struct redis_be *be, struct rcmd *c)
{
	c->next = NULL;
	c->prev = be->tail;
	if (be->tail)
		be->tail->next = c;
	else
		be->head = c;
	be->tail = c;
}

static void unlink_cmd(struct redis_be *be, struct rcmd *c)
{
	if (c->prev)
		c->prev->next = c->next;
	else if (be->head == c)
		be->head = c->next;
	if (c->next)
		c->next->prev = c->prev;
	else if (be->tail == c)
		be->tail = c->prev;
	c->prev = c->next = NULL;
}

static void add_timer(struct event *ev, long long ms)
{
	if (ms < 0)
		ms = 0;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	evtimer_add(ev, &tv);
}

/* The timer follows the oldest command; it is re-armed lazily when it
 * fires for a command that has been answered since. */
static void arm_timer(struct redis_be *be)
{
	if (be->head && !evtimer_pending(be->timer_ev, NULL))
		add_timer(be->timer_ev, be->head->deadline - state_mono_ms());
}

/* ---- event-loop glue (see the top of the file) ---------------------------- */

struct glue {
	struct redis_be *be;
	redisAsyncContext *ac;
	struct event *rev, *wev;
	bool reading;
	bool want_write;
};

static void glue_read(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct glue *g = arg;
	redisAsyncHandleRead(g->ac);
}

static void glue_write(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct glue *g = arg;
	redisAsyncHandleWrite(g->ac);
}

static void glue_add_read(void *arg)
{
	struct glue *g = arg;
	if (!g->reading) {
		event_add(g->rev, NULL);
		g->reading = true;
	}
}

static void glue_del_read(void *arg)
{
	struct glue *g = arg;
	if (g->reading) {
		event_del(g->rev);
		g->reading = false;
	}
}

static void glue_add_write(void *arg)
{
	struct glue *g = arg;
	g->want_write = true;
	if (!g->be->direct)
		event_add(g->wev, NULL);
}

static void glue_del_write(void *arg)
{
	struct glue *g = arg;
	g->want_write = false;
	event_del(g->wev);
}

static void glue_cleanup(void *arg)
{
	struct glue *g = arg;
	event_free(g->rev);
	event_free(g->wev);
	free(g);
}

static void glue_attach(struct redis_be *be, redisAsyncContext *ac)
{
	struct glue *g = xcalloc(1, sizeof(*g));
	g->be = be;
	g->ac = ac;
	g->rev = event_new(be->base, ac->c.fd, EV_READ | EV_PERSIST, glue_read, g);
	g->wev = event_new(be->base, ac->c.fd, EV_WRITE, glue_write, g);
	ac->ev.data = g;
	ac->ev.addRead = glue_add_read;
	ac->ev.delRead = glue_del_read;
	ac->ev.addWrite = glue_add_write;
	ac->ev.delWrite = glue_del_write;
	ac->ev.cleanup = glue_cleanup;
	glue_add_read(g);
	glue_add_write(g);          /* the connect completes as writable */
}

/* Write what the last command queued, from an operation's call (not
 * inside a hiredis callback).  A failed write frees the context: the
 * requests it fails are deferred (in_flush). */
static void flush(struct redis_be *be)
{
	struct glue *g = be->ac->ev.data;
	if (!g->want_write)
		return;
	be->in_flush++;
	redisAsyncHandleWrite(be->ac);      /* a partial write registers the write event */
	be->in_flush--;
}

/* ---- connection state ---------------------------------------------------- */

static void schedule_retry(struct redis_be *be)
{
	unsigned shift = be->failures > 1 ? be->failures - 1 : 0;
	long long ms = BACKOFF_MIN_MS << (shift > 6 ? 6 : shift);
	if (ms > BACKOFF_MAX_MS)
		ms = BACKOFF_MAX_MS;
	be->rng ^= be->rng << 13;
	be->rng ^= be->rng >> 7;
	be->rng ^= be->rng << 17;
	ms = ms * (80 + (long long)(be->rng % 41)) / 100;          /* ±20% */
	add_timer(be->retry_ev, ms);
}

/* The connection is gone (or never came): forget it, say so once, and
 * try again later.  The caller frees the context if hiredis does not. */
static void went_down(struct redis_be *be, const char *reason)
{
	be->ac = NULL;
	be->conn = R_DOWN;
	be->tcp_up = false;
	be->early = false;
	snprintf(be->last_error, sizeof(be->last_error), "%s", reason && *reason ? reason : "connection lost");
	if (be->logged != -1) {
		be->logged = -1;
		log_warn(NULL, NULL, "state_redis_down", "server=%s reason=%s", be->server, be->last_error);
		if (be->m_up)
			metric_set(be->m_up, "backend=\"redis\"", 0);
	}
	be->failures++;
	if (!state_closing(be->st))
		schedule_retry(be);
}

/* Drop the current connection ourselves: commands in flight fail with
 * the reason (hiredis calls them back with no reply). */
static void drop(struct redis_be *be, const char *reason)
{
	redisAsyncContext *ac = be->ac;
	if (!ac)
		return;
	went_down(be, reason);
	redisAsyncFree(ac);         /* deferred by hiredis when inside its callback */
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct redis_be *be = arg;
	if (!be->head)
		return;
	if (be->head->deadline > state_mono_ms()) {
		arm_timer(be);
		return;
	}
	char why[128];
	snprintf(why, sizeof(why), "no answer within %lld ms (%s)", be->timeout,
		 be->tcp_up ? "command" : "connect");
	drop(be, why);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct redis_be *be = arg;
	if (!be->ac)
		connect_now(be);
}

static const char *kind_name(enum rkind k)
{
	return k == K_AUTH ? "AUTH" : k == K_SELECT ? "SELECT" : k == K_PING ? "PING" : "command";
}

static void handshake_reply(struct redis_be *be, redisAsyncContext *ac, struct rcmd *c, redisReply *r)
{
	if (ac != be->ac)
		return;
	if (r->type == REDIS_REPLY_ERROR) {
		char why[256];
		snprintf(why, sizeof(why), "%s failed: %s", kind_name(c->kind), r->str ? r->str : "");
		drop(be, why);
		return;
	}
	if (c->kind != K_PING)
		return;
	be->conn = R_UP;
	be->failures = 0;
	be->last_error[0] = '\0';
	if (be->logged != 1) {
		be->logged = 1;
		log_info(NULL, NULL, "state_redis_up", "server=%s db=%lld", be->server, be->db);
		if (be->m_up)
			metric_set(be->m_up, "backend=\"redis\"", 1);
	}
}

/* ---- replies ------------------------------------------------------------- */

static bool is_str(const redisReply *r)
{
	return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

static void scan_reply(struct state_req *req, const redisReply *r)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || !is_str(r->element[0]) ||
	    r->element[1]->type != REDIS_REPLY_INTEGER || r->element[2]->type != REDIS_REPLY_ARRAY ||
	    r->element[2]->elements % 3 != 0 || r->element[2]->elements / 3 > req->limit) {
		state_req_fail(req, "redis: unexpected scan reply");
		return;
	}
	struct pool *pool = state_req_pool(req);
	const redisReply *list = r->element[2];
	size_t n = 0;
	struct state_entry *ents = pool_alloc(pool, (list->elements / 3 + 1) * sizeof(*ents));
	for (size_t i = 0; i + 2 < list->elements; i += 3) {
		const redisReply *k = list->element[i], *v = list->element[i + 1], *t = list->element[i + 2];
		if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || t->type != REDIS_REPLY_INTEGER ||
		    k->len < req->plen || memcmp(k->str, req->key, req->plen) != 0 || v->len > STATE_VALUE_MAX)
			continue;
		ents[n].key = k->str + req->plen;
		ents[n].value = v->str;
		ents[n].vlen = v->len;
		ents[n].ttl_ms = t->integer >= 0 ? t->integer : -1;
		n++;
	}
	const char *cur = r->element[0]->str;
	long long skip = r->element[1]->integer;
	req->res.cursor = strcmp(cur, "0") == 0 && skip == 0 ? "" : pool_asprintf(pool, "%s:%lld", cur, skip);
	req->res.entries = ents;
	req->res.nentries = n;
	req->res.status = STATE_OK;
}

/* MGET: one element per key, NIL or the value.  The values point into
 * the reply, which hiredis frees after on_reply() has delivered. */
static void mget_reply(struct state_req *req, const redisReply *r)
{
	if (r->type != REDIS_REPLY_ARRAY || r->elements != req->nkeys) {
		state_req_fail(req, "redis: unexpected reply (type %d, %zu elements for %zu keys) to mget", r->type,
			       r->type == REDIS_REPLY_ARRAY ? r->elements : (size_t)0, req->nkeys);
		return;
	}
	struct state_value *vals = pool_alloc(state_req_pool(req), req->nkeys * sizeof(*vals));
	for (size_t i = 0; i < req->nkeys; i++) {
		const redisReply *e = r->element[i];
		if (e->type == REDIS_REPLY_NIL) {
			vals[i].status = STATE_NOTFOUND;
			continue;
		}
		if (e->type != REDIS_REPLY_STRING) {
			state_req_fail(req, "redis: unexpected reply (type %d) to mget for key %zu", e->type, i);
			return;
		}
		if (e->len > STATE_VALUE_MAX) {
			state_req_fail(req, "redis: value too long (%zu bytes) for key %zu", e->len, i);
			return;
		}
		vals[i].status = STATE_OK;
		vals[i].value = e->str;
		vals[i].vlen = e->len;
	}
	req->res.values = vals;
	req->res.nvalues = req->nkeys;
	req->res.status = STATE_OK;
}

static void user_reply(struct state_req *req, const redisReply *r)
{
	if (r->type == REDIS_REPLY_ERROR) {
		state_req_fail(req, "redis: %s", r->str ? r->str : "error");
		return;
	}
	switch (req->op) {
	case STATE_OP_GET:
		if (r->type == REDIS_REPLY_NIL) {
			req->res.status = STATE_NOTFOUND;
			return;
		}
		if (r->type != REDIS_REPLY_STRING)
			break;
		if (r->len > STATE_VALUE_MAX) {
			state_req_fail(req, "redis: value too long (%zu bytes)", r->len);
			return;
		}
		req->res.value = r->str;
		req->res.vlen = r->len;
		req->res.status = STATE_OK;
		return;
	case STATE_OP_SET:
		if (r->type != REDIS_REPLY_STATUS)
			break;
		req->res.status = STATE_OK;
		return;
	case STATE_OP_DEL:
		if (r->type != REDIS_REPLY_INTEGER)
			break;
		req->res.status = r->integer > 0 ? STATE_OK : STATE_NOTFOUND;
		return;
	case STATE_OP_INCR:
		if (r->type != REDIS_REPLY_INTEGER)
			break;
		req->res.counter = r->integer;
		req->res.status = STATE_OK;
		return;
	case STATE_OP_TAKE: {
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_INTEGER ||
		    r->element[1]->type != REDIS_REPLY_STRING || r->element[2]->type != REDIS_REPLY_INTEGER)
			break;
		char *end;
		double tokens = strtod(r->element[1]->str, &end);
		if (*end)
			break;
		req->res.allowed = r->element[0]->integer == 1;
		req->res.tokens = tokens;
		req->res.retry_after_ms = r->element[2]->integer;
		req->res.status = STATE_OK;
		return;
	}
	case STATE_OP_SCAN:
		scan_reply(req, r);
		return;
	case STATE_OP_MGET:
		mget_reply(req, r);
		return;
	case STATE_OP_MINCR:
		if (r->type != REDIS_REPLY_INTEGER || r->integer != (long long)req->nkeys)
			break;
		req->res.status = STATE_OK;
		return;
	}
	state_req_fail(req, "redis: unexpected reply (type %d) to %s", r->type, state_op_name(req->op));
}

static bool send_user(struct redis_be *be, struct rcmd *c);

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
	struct rcmd *c = priv;
	struct redis_be *be = c->be;
	redisReply *r = reply;
	unlink_cmd(be, c);
	if (c->kind == K_USER)
		be->npending--;
	if (!r) {
		/* The connection is gone: dropped by us (the reason is
		 * recorded), failed, or closed by the server. */
		const char *why = ac->c.err ? ac->c.errstr : be->last_error[0] ? be->last_error : "connection lost";
		char reason[256];
		snprintf(reason, sizeof(reason), "%s", why);
		if (ac == be->ac)
			went_down(be, reason);      /* hiredis frees ac */
		if (c->req) {
			state_req_fail(c->req, "redis: %s", state_closing(be->st) ? "store closed" : reason);
			if (be->in_flush)
				state_req_defer(c->req);
			else
				state_req_deliver(c->req);
		}
		free(c);
		return;
	}
	if (c->kind != K_USER) {
		handshake_reply(be, ac, c, r);
		free(c);
		return;
	}
	struct state_req *req = c->req;
	if (r->type == REDIS_REPLY_ERROR && !c->eval && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0 &&
	    (req->op == STATE_OP_INCR || req->op == STATE_OP_TAKE || req->op == STATE_OP_SCAN ||
	     req->op == STATE_OP_MINCR)) {
		c->eval = true;
		if (ac == be->ac && send_user(be, c)) {
			be->npending++;
			return;
		}
		state_req_fail(req, "redis: %s", be->last_error[0] ? be->last_error : "connection lost");
	} else
		user_reply(req, r);
	state_req_deliver(req);
	free(c);
}

/* ---- commands ------------------------------------------------------------ */

static void on_connect(const redisAsyncContext *ac, int status)
{
	struct redis_be *be = ac->data;
	if (ac != be->ac)
		return;
	if (status != REDIS_OK) {
		went_down(be, ac->c.err ? ac->c.errstr : "connect failed");       /* hiredis frees ac */
		return;
	}
	be->tcp_up = true;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
	(void)status;
	struct redis_be *be = ac->data;
	if (ac != be->ac)
		return;
	went_down(be, ac->c.err ? ac->c.errstr : "connection closed");
}

static bool send_argv(struct redis_be *be, struct rcmd *c, int argc, const char **argv, const size_t *len)
{
	if (!be->ac || redisAsyncCommandArgv(be->ac, on_reply, c, argc, argv, len) != REDIS_OK)
		return false;
	c->deadline = state_mono_ms() + be->timeout;
	link_cmd(be, c);
	arm_timer(be);
	return true;
}

static void send_internal(struct redis_be *be, enum rkind kind)
{
	struct rcmd *c = xcalloc(1, sizeof(*c));
	c->be = be;
	c->kind = kind;
	const char *argv[3];
	size_t len[3];
	int argc = 0;
	char db[24];
	if (kind == K_AUTH) {
		argv[argc++] = "AUTH";
		if (be->username)
			argv[argc++] = be->username;
		argv[argc++] = be->password;
	} else if (kind == K_SELECT) {
		snprintf(db, sizeof(db), "%lld", be->db);
		argv[argc++] = "SELECT";
		argv[argc++] = db;
	} else
		argv[argc++] = "PING";
	for (int i = 0; i < argc; i++)
		len[i] = strlen(argv[i]);
	if (!send_argv(be, c, argc, argv, len))
		free(c);            /* the connection failed: it reports itself */
}

/* A glob pattern matching keys that begin with p[0..n). */
static void glob_prefix(char *out, size_t outlen, const char *p, size_t n)
{
	size_t j = 0;
	for (size_t i = 0; i < n && j + 3 < outlen; i++) {
		if (strchr("*?[]\\", p[i]))
			out[j++] = '\\';
		out[j++] = p[i];
	}
	out[j++] = '*';
	out[j] = '\0';
}

/* A command over a request's keys (MGET, the many-counters script): up to
 * STATE_MGET_MAX keys and a few fixed arguments around them, too many for
 * the fixed arrays of send_user(); hiredis copies them into its buffer. */
static bool send_keys(struct redis_be *be, struct rcmd *c, const char *const *head, size_t nhead,
		      const char *const *tail, size_t ntail)
{
	struct state_req *req = c->req;
	size_t argc = nhead + req->nkeys + ntail;
	const char **argv = xmalloc(argc * sizeof(*argv));
	size_t *len = xmalloc(argc * sizeof(*len));
	size_t j = 0;
	for (size_t i = 0; i < nhead; i++, j++)
		argv[j] = head[i], len[j] = strlen(head[i]);
	for (size_t i = 0; i < req->nkeys; i++, j++)
		argv[j] = req->keys[i], len[j] = req->klens[i];
	for (size_t i = 0; i < ntail; i++, j++)
		argv[j] = tail[i], len[j] = strlen(tail[i]);
	bool sent = send_argv(be, c, (int)argc, argv, len);
	free(argv);
	free(len);
	return sent;
}

static bool send_user(struct redis_be *be, struct rcmd *c)
{
	struct state_req *req = c->req;
	const char *argv[10];
	size_t len[10];
	int argc = 0;
	char a[6][40];
	char pattern[2 * (STATE_PREFIX_MAX + STATE_KEY_MAX) + 4];
#define ARG(p, n) (argv[argc] = (p), len[argc] = (n), argc++)
#define ARGS(s) ARG((s), strlen(s))
#define SCRIPT(text, sha) (c->eval ? (ARGS("EVAL"), ARGS(text)) : (ARGS("EVALSHA"), ARGS(sha)))
	switch (req->op) {
	case STATE_OP_GET:
		ARGS("GET");
		ARG(req->key, req->klen);
		break;
	case STATE_OP_SET:
		ARGS("SET");
		ARG(req->key, req->klen);
		ARG(req->value, req->vlen);
		if (req->ttl_ms) {
			ARGS("PX");
			snprintf(a[0], sizeof(a[0]), "%lld", req->ttl_ms);
			ARGS(a[0]);
		}
		break;
	case STATE_OP_DEL:
		ARGS("DEL");
		ARG(req->key, req->klen);
		break;
	case STATE_OP_INCR:
		SCRIPT(incr_lua, be->sha_incr);
		ARGS("1");
		ARG(req->key, req->klen);
		snprintf(a[0], sizeof(a[0]), "%lld", req->by);
		snprintf(a[1], sizeof(a[1]), "%lld", req->ttl_ms);
		ARGS(a[0]);
		ARGS(a[1]);
		break;
	case STATE_OP_TAKE:
		SCRIPT(take_lua, be->sha_take);
		ARGS("1");
		ARG(req->key, req->klen);
		snprintf(a[0], sizeof(a[0]), "%.17g", req->rate);
		snprintf(a[1], sizeof(a[1]), "%.17g", req->burst);
		snprintf(a[2], sizeof(a[2]), "%.17g", req->cost);
		snprintf(a[3], sizeof(a[3]), "%lld", STATE_TTL_MAX);
		for (int i = 0; i < 4; i++)
			ARGS(a[i]);
		break;
	case STATE_OP_SCAN: {
		SCRIPT(scan_lua, be->sha_scan);
		ARGS("0");
		ARGS(c->scan_cursor);
		snprintf(a[0], sizeof(a[0]), "%lld", c->scan_skip);
		ARGS(a[0]);
		glob_prefix(pattern, sizeof(pattern), req->key, req->klen);
		ARGS(pattern);
		size_t count = req->limit < 100 ? 100 : req->limit;
		snprintf(a[1], sizeof(a[1]), "%zu", count);
		snprintf(a[2], sizeof(a[2]), "%zu", req->limit);
		snprintf(a[3], sizeof(a[3]), "%d", SCAN_PAGES);
		for (int i = 1; i < 4; i++)
			ARGS(a[i]);
		break;
	}
	case STATE_OP_MGET: {
		static const char *const mget[] = { "MGET" };
		return send_keys(be, c, mget, 1, NULL, 0);
	}
	case STATE_OP_MINCR: {
		snprintf(a[0], sizeof(a[0]), "%zu", req->nkeys);
		snprintf(a[1], sizeof(a[1]), "%lld", req->by);
		snprintf(a[2], sizeof(a[2]), "%lld", req->ttl_ms);
		const char *head[] = { c->eval ? "EVAL" : "EVALSHA", c->eval ? mincr_lua : be->sha_mincr, a[0] };
		const char *tail[] = { a[1], a[2] };
		return send_keys(be, c, head, 3, tail, 2);
	}
	}
#undef SCRIPT
#undef ARGS
#undef ARG
	return send_argv(be, c, argc, argv, len);
}

/* "SCANCURSOR:SKIP" ("" to begin). */
static bool parse_cursor(const char *s, struct rcmd *c)
{
	if (!*s) {
		snprintf(c->scan_cursor, sizeof(c->scan_cursor), "0");
		c->scan_skip = 0;
		return true;
	}
	const char *colon = strchr(s, ':');
	size_t n = colon ? (size_t)(colon - s) : 0;
	if (!colon || n == 0 || n >= sizeof(c->scan_cursor) || strspn(s, "0123456789") != n)
		return false;
	long long skip;
	if (!state_parse_counter(colon + 1, strlen(colon + 1), &skip) || skip < 0 || skip > 1000000)
		return false;
	memcpy(c->scan_cursor, s, n);
	c->scan_cursor[n] = '\0';
	c->scan_skip = skip;
	return true;
}

static void redis_start(void *arg, struct state_req *req)
{
	struct redis_be *be = arg;
	if (!be->ac || (be->conn != R_UP && !be->early)) {
		state_req_fail(req, "redis: unavailable: %s", be->last_error[0] ? be->last_error : "connecting");
		state_req_defer(req);
		return;
	}
	if (be->npending >= be->max_pending) {
		state_req_fail(req, "redis: too many commands in flight (%zu)", be->npending);
		state_req_defer(req);
		return;
	}
	struct rcmd *c = xcalloc(1, sizeof(*c));
	c->be = be;
	c->kind = K_USER;
	c->req = req;
	if (req->op == STATE_OP_SCAN && !parse_cursor(req->cursor, c)) {
		free(c);
		state_req_fail(req, "bad cursor");
		state_req_defer(req);
		return;
	}
	/* Write at once unless inside a hiredis callback (where hiredis
	 * may not free the context) or before the connection is ready. */
	bool direct = be->conn == R_UP && !(be->ac->c.flags & REDIS_IN_CALLBACK);
	be->direct = direct;
	bool sent = send_user(be, c);
	be->direct = false;
	if (!sent) {
		free(c);
		state_req_fail(req, "redis: command not sent: %s",
			       be->ac && be->ac->c.err ? be->ac->c.errstr : "connection closing");
		state_req_defer(req);
		return;
	}
	be->npending++;
	if (direct)
		flush(be);
}

/* ---- connect ------------------------------------------------------------- */

static void connect_now(struct redis_be *be)
{
	redisAsyncContext *ac = be->ep.is_unix ? redisAsyncConnectUnix(be->ep.host)
					       : redisAsyncConnect(be->ep.host, be->ep.port);
	if (!ac) {
		went_down(be, "out of memory");
		return;
	}
	if (ac->c.err) {
		char why[160];
		snprintf(why, sizeof(why), "%s", ac->c.errstr);
		redisAsyncFree(ac);
		went_down(be, why);
		return;
	}
	ac->data = be;
	glue_attach(be, ac);
	if (!be->ep.is_unix)
		redisEnableKeepAlive(&ac->c);
	redisAsyncSetConnectCallback(ac, on_connect);
	redisAsyncSetDisconnectCallback(ac, on_disconnect);
	be->ac = ac;
	be->conn = R_CONNECTING;
	be->tcp_up = false;
	if (be->password)
		send_internal(be, K_AUTH);
	if (be->db)
		send_internal(be, K_SELECT);
	send_internal(be, K_PING);
}

static char *read_secret(const char *path, char *why, size_t whylen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		set_why(why, whylen, "redis_password_file %s: %s", path, strerror(errno));
		return NULL;
	}
	char buf[SECRET_MAX + 2];
	size_t n = 0;
	for (;;) {
		ssize_t r = read(fd, buf + n, sizeof(buf) - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			set_why(why, whylen, "redis_password_file %s: %s", path, strerror(errno));
			close(fd);
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n == sizeof(buf) - 1)
			break;
	}
	close(fd);
	char *res = NULL;
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		n--;
	buf[n] = '\0';
	if (n > SECRET_MAX)
		set_why(why, whylen, "redis_password_file %s: longer than %d bytes", path, SECRET_MAX);
	else if (n == 0)
		set_why(why, whylen, "redis_password_file %s: empty", path);
	else if (strlen(buf) != n || strpbrk(buf, "\r\n"))
		set_why(why, whylen, "redis_password_file %s: one line of text expected", path);
	else
		res = xstrdup(buf);
	explicit_bzero(buf, sizeof(buf));
	return res;
}

static void redis_free(struct redis_be *be)
{
	if (be->retry_ev)
		event_free(be->retry_ev);
	if (be->timer_ev)
		event_free(be->timer_ev);
	if (be->password) {
		explicit_bzero(be->password, strlen(be->password));
		free(be->password);
	}
	free(be->username);
	free(be);
}

static void *redis_open(struct state *st, const struct state_config *cfg, struct event_base *base, char *why,
			size_t whylen)
{
	struct redis_be *be = xcalloc(1, sizeof(*be));
	be->st = st;
	be->base = base;
	const char *server = cfg->redis_server && *cfg->redis_server ? cfg->redis_server : "127.0.0.1:6379";
	char ewhy[200];
	if (!endpoint_parse(server, 6379, &be->ep, ewhy, sizeof(ewhy))) {
		set_why(why, whylen, "redis_server %s: %s", server, ewhy);
		free(be);
		return NULL;
	}
	if (be->ep.is_unix && strlen(be->ep.host) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		set_why(why, whylen, "redis_server %s: socket path too long", server);
		free(be);
		return NULL;
	}
	snprintf(be->server, sizeof(be->server), "%s", server);
	if (cfg->redis_password_file && *cfg->redis_password_file) {
		be->password = read_secret(cfg->redis_password_file, why, whylen);
		if (!be->password) {
			free(be);
			return NULL;
		}
	}
	if (cfg->redis_username && *cfg->redis_username) {
		if (!be->password) {
			set_why(why, whylen, "redis_username needs redis_password_file");
			redis_free(be);
			return NULL;
		}
		be->username = xstrdup(cfg->redis_username);
	}
	be->db = cfg->redis_db;
	be->timeout = cfg->redis_timeout > 0 ? cfg->redis_timeout : 1000;
	be->max_pending = cfg->redis_max_pending > 0 ? (size_t)cfg->redis_max_pending : 1000;
	be->early = true;
	be->rng = (uint64_t)state_mono_ms() * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)be;
	if (!be->rng)
		be->rng = 1;
	sha1_hex(incr_lua, be->sha_incr);
	sha1_hex(take_lua, be->sha_take);
	sha1_hex(scan_lua, be->sha_scan);
	sha1_hex(mincr_lua, be->sha_mincr);
	be->retry_ev = evtimer_new(base, on_retry, be);
	be->timer_ev = evtimer_new(base, on_timer, be);
	if (cfg->metrics) {
		be->m_up = metrics_gauge(cfg->metrics, "rampart_state_up", "1 if the state store answers");
		metric_set(be->m_up, "backend=\"redis\"", 0);
	}
	connect_now(be);
	return be;
}

static void redis_close(void *arg)
{
	struct redis_be *be = arg;
	redisAsyncContext *ac = be->ac;
	be->ac = NULL;
	be->conn = R_DOWN;
	if (ac)
		redisAsyncFree(ac);         /* requests in flight fail: "store closed" */
	while (be->head) {              /* none expected: hiredis answered them all */
		struct rcmd *c = be->head;
		unlink_cmd(be, c);
		if (c->req) {
			state_req_fail(c->req, "redis: store closed");
			state_req_deliver(c->req);
		}
		free(c);
	}
	redis_free(be);
}

static bool redis_up(const void *arg, char *why, size_t whylen)
{
	const struct redis_be *be = arg;
	if (be->conn == R_UP)
		return true;
	set_why(why, whylen, "%s", be->last_error[0] ? be->last_error : "connecting");
	return false;
}

const struct state_backend_ops state_redis_ops = {
	.name = "redis",
	.open = redis_open,
	.close = redis_close,
	.up = redis_up,
	.start = redis_start,
};
