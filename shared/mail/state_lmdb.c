/*
 * state_lmdb.c — the embedded backend of the state store: one LMDB file
 * that the processes of one host share (see state.h).
 *
 * An entry's value is its expiry (8 bytes, wall-clock ms in host order,
 * 0: none) followed by the bytes.  The environment is opened with
 * MDB_NOSUBDIR (the file plus FILE-lock), MDB_NOTLS (a read transaction
 * belongs to its handle, not to a thread: one read transaction is reset
 * and renewed for every read) and, with lmdb_sync = periodic, MDB_NOSYNC
 * with a flush timer (a write costs no fsync; a host crash may lose the
 * last interval or damage the file, which the next open moves aside).  Writers of all processes are serialised by LMDB's
 * process-shared robust mutex (a writer that dies is recovered);
 * mdb_reader_check() at open and at every purge frees reader slots of
 * dead processes.  Each operation runs in its own transaction during the
 * call (a write may wait for another process's write); only the callback
 * is deferred.  A file LMDB does not recognise is moved aside at open
 * (it holds only soft state) and a fresh one made.
 *
 * LMDB forbids opening one file twice in one process: a process opens
 * one store per file and shares it.
 */
#include "state_backend.h"
#include "../util/alloc.h"
#include "../util/fs.h"
#include "../util/log.h"

#include <event2/event.h>
#include <lmdb.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define HDR 8                           /* expiry before the bytes */
#define ERROR_LOG_EVERY_MS 10000
#define PURGE_AGAIN_MS 100              /* a run that stopped early goes on */
#define SCAN_EXAMINE_EXTRA 4096         /* expired entries a scan may skip beyond its limit */

struct lmdb_be {
	struct state *st;
	MDB_env *env;
	MDB_dbi dbi;
	MDB_txn *rtxn;                  /* reset between reads, NULL if none */
	char *path;
	bool periodic;
	bool dirty;                     /* written since the last flush */
	long long purge_interval;
	size_t purge_batch;
	struct event *sync_ev, *purge_ev;
	char purge_pos[512];            /* where the next purge run begins */
	size_t purge_pos_len;
	long long last_error_log;
};

struct ent {
	long long exp;
	const char *data;
	size_t len;
};

static bool decode(const MDB_val *v, struct ent *e)
{
	if (v->mv_size < HDR)
		return false;
	uint64_t x;
	memcpy(&x, v->mv_data, HDR);
	e->exp = (long long)x;
	e->data = (const char *)v->mv_data + HDR;
	e->len = v->mv_size - HDR;
	return true;
}

static bool live(const struct ent *e, long long now)
{
	return e->exp == 0 || e->exp > now;
}

static int put(MDB_txn *txn, MDB_dbi dbi, MDB_val *k, long long exp, const void *p, size_t n)
{
	MDB_val v = { n + HDR, NULL };
	int rc = mdb_put(txn, dbi, k, &v, MDB_RESERVE);
	if (rc)
		return rc;
	uint64_t x = (uint64_t)exp;
	memcpy(v.mv_data, &x, HDR);
	if (n)
		memcpy((char *)v.mv_data + HDR, p, n);
	return 0;
}

/* The request failed with an LMDB error: say so, and log it (at most
 * every ERROR_LOG_EVERY_MS: a full file fails every write). */
static void fail(struct lmdb_be *be, struct state_req *req, const char *what, int rc)
{
	if (rc == MDB_MAP_FULL)
		state_req_fail(req, "lmdb: %s: state file full (raise lmdb_map_size)", what);
	else
		state_req_fail(req, "lmdb: %s: %s", what, mdb_strerror(rc));
	long long now = state_mono_ms();
	if (!be->last_error_log || now - be->last_error_log >= ERROR_LOG_EVERY_MS) {
		be->last_error_log = now;
		log_error(NULL, NULL, "state_lmdb_error", "path=%s op=%s reason=%s", be->path,
			  state_op_name(req->op), req->reason);
	}
}

/* Another process grew the file beyond our map: adopt its size. */
static void map_resized(struct lmdb_be *be)
{
	if (be->rtxn) {
		mdb_txn_abort(be->rtxn);
		be->rtxn = NULL;
	}
	mdb_env_set_mapsize(be->env, 0);
}

static int rtxn_begin(struct lmdb_be *be, MDB_txn **out)
{
	int rc = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		if (be->rtxn) {
			rc = mdb_txn_renew(be->rtxn);
			if (rc) {
				mdb_txn_abort(be->rtxn);
				be->rtxn = NULL;
			}
		} else {
			rc = mdb_txn_begin(be->env, NULL, MDB_RDONLY, &be->rtxn);
			if (rc)
				be->rtxn = NULL;
		}
		if (rc != MDB_MAP_RESIZED)
			break;
		map_resized(be);
	}
	*out = be->rtxn;
	return rc;
}

static int wtxn_begin(struct lmdb_be *be, MDB_txn **out)
{
	int rc = mdb_txn_begin(be->env, NULL, 0, out);
	if (rc == MDB_MAP_RESIZED) {
		map_resized(be);
		rc = mdb_txn_begin(be->env, NULL, 0, out);
	}
	return rc;
}

static int wtxn_commit(struct lmdb_be *be, MDB_txn *txn)
{
	int rc = mdb_txn_commit(txn);
	if (rc == 0)
		be->dirty = true;
	return rc;
}

/* ---- operations ---------------------------------------------------------- */

static void op_get(struct lmdb_be *be, struct state_req *req)
{
	MDB_txn *txn;
	int rc = rtxn_begin(be, &txn);
	if (rc) {
		fail(be, req, "read", rc);
		return;
	}
	MDB_val k = { req->klen, req->key }, v;
	rc = mdb_get(txn, be->dbi, &k, &v);
	struct ent e;
	if (rc == MDB_NOTFOUND)
		req->res.status = STATE_NOTFOUND;
	else if (rc)
		fail(be, req, "read", rc);
	else if (!decode(&v, &e))
		state_req_fail(req, "lmdb: malformed entry");
	else if (!live(&e, state_now_ms()))
		req->res.status = STATE_NOTFOUND;
	else {
		char *copy = pool_alloc(state_req_pool(req), e.len + 1);
		memcpy(copy, e.data, e.len);
		req->res.value = copy;
		req->res.vlen = e.len;
		req->res.status = STATE_OK;
	}
	mdb_txn_reset(txn);
}

/* All the keys in one read transaction: one snapshot, one clock. */
static void op_mget(struct lmdb_be *be, struct state_req *req)
{
	MDB_txn *txn;
	int rc = rtxn_begin(be, &txn);
	if (rc) {
		fail(be, req, "read", rc);
		return;
	}
	struct pool *pool = state_req_pool(req);
	struct state_value *vals = pool_alloc(pool, req->nkeys * sizeof(*vals));
	long long now = state_now_ms();
	for (size_t i = 0; i < req->nkeys; i++) {
		MDB_val k = { req->klens[i], req->keys[i] }, v;
		rc = mdb_get(txn, be->dbi, &k, &v);
		struct ent e;
		if (rc == MDB_NOTFOUND) {
			vals[i].status = STATE_NOTFOUND;
			continue;
		}
		if (rc) {
			mdb_txn_reset(txn);
			fail(be, req, "read", rc);
			return;
		}
		if (!decode(&v, &e)) {
			mdb_txn_reset(txn);
			state_req_fail(req, "lmdb: malformed entry (key %zu)", i);
			return;
		}
		if (!live(&e, now)) {
			vals[i].status = STATE_NOTFOUND;
			continue;
		}
		char *copy = pool_alloc(pool, e.len + 1);
		memcpy(copy, e.data, e.len);
		vals[i].status = STATE_OK;
		vals[i].value = copy;
		vals[i].vlen = e.len;
	}
	mdb_txn_reset(txn);
	req->res.values = vals;
	req->res.nvalues = req->nkeys;
	req->res.status = STATE_OK;
}

static void op_set(struct lmdb_be *be, struct state_req *req)
{
	MDB_txn *txn;
	int rc = wtxn_begin(be, &txn);
	if (rc) {
		fail(be, req, "write", rc);
		return;
	}
	MDB_val k = { req->klen, req->key };
	long long exp = req->ttl_ms ? state_now_ms() + req->ttl_ms : 0;
	rc = put(txn, be->dbi, &k, exp, req->value, req->vlen);
	if (rc) {
		mdb_txn_abort(txn);
		fail(be, req, "write", rc);
		return;
	}
	rc = wtxn_commit(be, txn);
	if (rc)
		fail(be, req, "commit", rc);
	else
		req->res.status = STATE_OK;
}

static void op_del(struct lmdb_be *be, struct state_req *req)
{
	MDB_txn *txn;
	int rc = wtxn_begin(be, &txn);
	if (rc) {
		fail(be, req, "write", rc);
		return;
	}
	MDB_val k = { req->klen, req->key }, v;
	rc = mdb_get(txn, be->dbi, &k, &v);
	if (rc == MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		req->res.status = STATE_NOTFOUND;
		return;
	}
	struct ent e;
	bool was_live = rc == 0 && decode(&v, &e) && live(&e, state_now_ms());
	if (rc == 0)
		rc = mdb_del(txn, be->dbi, &k, NULL);
	if (rc) {
		mdb_txn_abort(txn);
		fail(be, req, "delete", rc);
		return;
	}
	rc = wtxn_commit(be, txn);
	if (rc)
		fail(be, req, "commit", rc);
	else
		req->res.status = was_live ? STATE_OK : STATE_NOTFOUND;
}

/* Read the live entry of a key inside a write transaction: 1 live,
 * 0 absent or expired, -1 error (request failed). */
static int read_live(struct lmdb_be *be, struct state_req *req, MDB_txn *txn, const char *key, size_t klen,
		     long long now, const char *which, struct ent *e)
{
	MDB_val k = { klen, (void *)key }, v;
	int rc = mdb_get(txn, be->dbi, &k, &v);
	if (rc == MDB_NOTFOUND)
		return 0;
	if (rc) {
		fail(be, req, "read", rc);
		return -1;
	}
	if (!decode(&v, e)) {
		state_req_fail(req, "%slmdb: malformed entry", which);
		return -1;
	}
	return live(e, now) ? 1 : 0;
}

/* Add req->by to one counter inside a write transaction (a missing one
 * starts at 0 with expiry req->ttl_ms); false with the request failed,
 * its reason after which ("" or "key I: "). */
static bool counter_add(struct lmdb_be *be, struct state_req *req, MDB_txn *txn, const char *key, size_t klen,
			long long now, const char *which, long long *out)
{
	long long v = 0, exp;
	struct ent e;
	int have = read_live(be, req, txn, key, klen, now, which, &e);
	if (have < 0)
		return false;
	if (have) {
		if (!state_parse_counter(e.data, e.len, &v)) {
			state_req_fail(req, "%svalue is not a counter", which);
			return false;
		}
		exp = e.exp;
	} else
		exp = req->ttl_ms ? now + req->ttl_ms : 0;
	if (__builtin_add_overflow(v, req->by, &v)) {
		state_req_fail(req, "%scounter overflow", which);
		return false;
	}
	char text[24];
	int n = snprintf(text, sizeof(text), "%lld", v);
	MDB_val k = { klen, (void *)key };
	int rc = put(txn, be->dbi, &k, exp, text, (size_t)n);
	if (rc) {
		fail(be, req, "write", rc);
		return false;
	}
	*out = v;
	return true;
}

/* Counters in one write transaction: all move, or none.  counter: the
 * last one's new value.  A failure names the key's index when there are
 * several. */
static void add_counters(struct lmdb_be *be, struct state_req *req, char *const *keys, const size_t *klens,
			 size_t n)
{
	MDB_txn *txn;
	int rc = wtxn_begin(be, &txn);
	if (rc) {
		fail(be, req, "write", rc);
		return;
	}
	long long now = state_now_ms(), v = 0;
	char which[32] = "";
	for (size_t i = 0; i < n; i++) {
		if (req->op == STATE_OP_MINCR)
			snprintf(which, sizeof(which), "key %zu: ", i);
		if (!counter_add(be, req, txn, keys[i], klens[i], now, which, &v)) {
			mdb_txn_abort(txn);
			return;
		}
	}
	rc = wtxn_commit(be, txn);
	if (rc) {
		fail(be, req, "commit", rc);
		return;
	}
	req->res.status = STATE_OK;
	req->res.counter = v;
}

static void op_incr(struct lmdb_be *be, struct state_req *req)
{
	char *key = req->key;
	add_counters(be, req, &key, &req->klen, 1);
}

static void op_mincr(struct lmdb_be *be, struct state_req *req)
{
	add_counters(be, req, req->keys, req->klens, req->nkeys);
}

static void op_take(struct lmdb_be *be, struct state_req *req)
{
	MDB_txn *txn;
	int rc = wtxn_begin(be, &txn);
	if (rc) {
		fail(be, req, "write", rc);
		return;
	}
	long long now = state_now_ms(), ts = 0;
	double tokens = 0;
	struct ent e;
	int have = read_live(be, req, txn, req->key, req->klen, now, "", &e);
	if (have < 0)
		goto abort;
	if (have && !state_parse_bucket(e.data, e.len, &tokens, &ts)) {
		state_req_fail(req, "value is not a token bucket");
		goto abort;
	}
	bool allowed;
	long long retry;
	long long expire = state_bucket_step(req->rate, req->burst, req->cost, have, &tokens, &ts, now, &allowed,
					     &retry);
	char text[96];
	int n = snprintf(text, sizeof(text), "%.6f %lld", tokens, ts);
	tokens = strtod(text, NULL);        /* what is stored, as Redis answers */
	if (req->cost > 0 || have) {
		MDB_val k = { req->klen, req->key };
		rc = put(txn, be->dbi, &k, now + expire, text, (size_t)n);
		if (rc) {
			fail(be, req, "write", rc);
			goto abort;
		}
		rc = wtxn_commit(be, txn);
		if (rc) {
			fail(be, req, "commit", rc);
			return;
		}
	} else
		mdb_txn_abort(txn);
	req->res.status = STATE_OK;
	req->res.allowed = allowed;
	req->res.tokens = tokens;
	req->res.retry_after_ms = retry;
	return;
abort:
	mdb_txn_abort(txn);
}

static void op_scan(struct lmdb_be *be, struct state_req *req)
{
	struct pool *pool = state_req_pool(req);
	char start[STATE_PREFIX_MAX + STATE_KEY_MAX + 64];
	size_t slen = req->klen;
	memcpy(start, req->key, req->klen);
	if (*req->cursor) {
		size_t clen = strlen(req->cursor);
		/* the cursor is the last key returned: it begins with the prefix */
		if (req->plen + clen > sizeof(start) || clen < req->klen - req->plen ||
		    memcmp(req->cursor, req->key + req->plen, req->klen - req->plen) != 0) {
			state_req_fail(req, "bad cursor");
			return;
		}
		memcpy(start + req->plen, req->cursor, clen);
		slen = req->plen + clen;
	}
	MDB_txn *txn;
	int rc = rtxn_begin(be, &txn);
	if (rc) {
		fail(be, req, "read", rc);
		return;
	}
	MDB_cursor *cur;
	rc = mdb_cursor_open(txn, be->dbi, &cur);
	if (rc) {
		mdb_txn_reset(txn);
		fail(be, req, "read", rc);
		return;
	}
	struct state_entry *ents = pool_alloc(pool, req->limit * sizeof(*ents));
	size_t n = 0, examined = 0, max_examined = req->limit + SCAN_EXAMINE_EXTRA;
	long long now = state_now_ms();
	MDB_val k = { slen, start }, v;
	rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	if (rc == 0 && *req->cursor && k.mv_size == slen && memcmp(k.mv_data, start, slen) == 0)
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	const char *last = NULL;
	size_t last_len = 0;
	bool complete = false;
	for (;;) {
		if (rc == MDB_NOTFOUND) {
			complete = true;
			break;
		}
		if (rc) {
			mdb_cursor_close(cur);
			mdb_txn_reset(txn);
			fail(be, req, "scan", rc);
			return;
		}
		if (k.mv_size < req->klen || memcmp(k.mv_data, req->key, req->klen) != 0) {
			complete = true;
			break;
		}
		if (n == req->limit || examined == max_examined)
			break;
		examined++;
		struct ent e;
		if (decode(&v, &e) && live(&e, now)) {
			struct state_entry *se = &ents[n++];
			se->key = pool_strndup(pool, (const char *)k.mv_data + req->plen, k.mv_size - req->plen);
			char *val = pool_alloc(pool, e.len + 1);
			memcpy(val, e.data, e.len);
			se->value = val;
			se->vlen = e.len;
			se->ttl_ms = e.exp ? e.exp - now : -1;
		}
		last = k.mv_data;
		last_len = k.mv_size;
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	req->res.cursor = complete || !last ? "" : pool_strndup(pool, last + req->plen, last_len - req->plen);
	mdb_cursor_close(cur);
	mdb_txn_reset(txn);
	req->res.entries = ents;
	req->res.nentries = n;
	req->res.status = STATE_OK;
}

static void lmdb_start(void *arg, struct state_req *req)
{
	struct lmdb_be *be = arg;
	switch (req->op) {
	case STATE_OP_GET: op_get(be, req); break;
	case STATE_OP_SET: op_set(be, req); break;
	case STATE_OP_DEL: op_del(be, req); break;
	case STATE_OP_INCR: op_incr(be, req); break;
	case STATE_OP_TAKE: op_take(be, req); break;
	case STATE_OP_SCAN: op_scan(be, req); break;
	case STATE_OP_MGET: op_mget(be, req); break;
	case STATE_OP_MINCR: op_mincr(be, req); break;
	}
	state_req_defer(req);
}

/* ---- housekeeping -------------------------------------------------------- */

static void on_sync(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct lmdb_be *be = arg;
	if (!be->dirty)
		return;
	be->dirty = false;
	int rc = mdb_env_sync(be->env, 1);
	if (rc)
		log_error(NULL, NULL, "state_lmdb_sync_failed", "path=%s reason=%s", be->path, mdb_strerror(rc));
}

static void schedule_purge(struct lmdb_be *be, long long ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
	evtimer_add(be->purge_ev, &tv);
}

/* Remove expired entries: at most purge_batch examined per run, going on
 * from where the last run stopped. */
static void on_purge(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct lmdb_be *be = arg;
	int dead = 0;
	if (mdb_reader_check(be->env, &dead) == 0 && dead > 0)
		log_info(NULL, NULL, "state_lmdb_stale_readers", "path=%s cleared=%d", be->path, dead);
	MDB_txn *txn;
	MDB_cursor *cur;
	int rc = wtxn_begin(be, &txn);
	if (rc) {
		log_error(NULL, NULL, "state_lmdb_purge_failed", "path=%s reason=%s", be->path, mdb_strerror(rc));
		schedule_purge(be, be->purge_interval);
		return;
	}
	rc = mdb_cursor_open(txn, be->dbi, &cur);
	if (rc) {
		mdb_txn_abort(txn);
		log_error(NULL, NULL, "state_lmdb_purge_failed", "path=%s reason=%s", be->path, mdb_strerror(rc));
		schedule_purge(be, be->purge_interval);
		return;
	}
	MDB_val k = { be->purge_pos_len, be->purge_pos }, v;
	rc = mdb_cursor_get(cur, &k, &v, be->purge_pos_len ? MDB_SET_RANGE : MDB_FIRST);
	long long now = state_now_ms();
	size_t examined = 0, removed = 0;
	while (rc == 0 && examined < be->purge_batch) {
		examined++;
		struct ent e;
		if (decode(&v, &e) && !live(&e, now)) {
			rc = mdb_cursor_del(cur, 0);
			if (rc)
				break;
			removed++;
		}
		rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
	}
	bool more = rc == 0;
	if (more && k.mv_size <= sizeof(be->purge_pos)) {
		memcpy(be->purge_pos, k.mv_data, k.mv_size);
		be->purge_pos_len = k.mv_size;
	} else
		be->purge_pos_len = 0;
	mdb_cursor_close(cur);
	if (rc && rc != MDB_NOTFOUND) {
		mdb_txn_abort(txn);
		log_error(NULL, NULL, "state_lmdb_purge_failed", "path=%s reason=%s", be->path, mdb_strerror(rc));
		schedule_purge(be, be->purge_interval);
		return;
	}
	if (removed) {
		rc = wtxn_commit(be, txn);
		if (rc)
			log_error(NULL, NULL, "state_lmdb_purge_failed", "path=%s reason=%s", be->path,
				  mdb_strerror(rc));
		else
			log_debug(NULL, NULL, "state_lmdb_purged", "path=%s examined=%zu removed=%zu", be->path,
				  examined, removed);
	} else
		mdb_txn_abort(txn);
	schedule_purge(be, more && PURGE_AGAIN_MS < be->purge_interval ? PURGE_AGAIN_MS : be->purge_interval);
}

/* ---- open and close ------------------------------------------------------ */

static int env_open(struct lmdb_be *be, long long map_size)
{
	int rc = mdb_env_create(&be->env);
	if (rc)
		return rc;
	unsigned flags = MDB_NOSUBDIR | MDB_NOTLS | (be->periodic ? MDB_NOSYNC : 0);
	rc = mdb_env_set_mapsize(be->env, (size_t)map_size);
	if (!rc)
		rc = mdb_env_open(be->env, be->path, flags, 0640);
	if (!rc) {
		int dead = 0;
		mdb_reader_check(be->env, &dead);
		MDB_txn *txn;
		rc = mdb_txn_begin(be->env, NULL, 0, &txn);
		if (!rc) {
			rc = mdb_dbi_open(txn, NULL, 0, &be->dbi);
			if (rc)
				mdb_txn_abort(txn);
			else
				rc = mdb_txn_commit(txn);
		}
	}
	if (!rc && mdb_env_get_maxkeysize(be->env) < STATE_PREFIX_MAX + STATE_KEY_MAX)
		rc = EINVAL;
	if (rc) {
		mdb_env_close(be->env);
		be->env = NULL;
	}
	return rc;
}

static void lmdb_close(void *arg);

static void *lmdb_open(struct state *st, const struct state_config *cfg, struct event_base *base, char *why,
		       size_t whylen)
{
	struct lmdb_be *be = xcalloc(1, sizeof(*be));
	be->st = st;
	if (cfg->lmdb_path && *cfg->lmdb_path)
		be->path = xstrdup(cfg->lmdb_path);
	else if (cfg->state_dir && *cfg->state_dir)
		be->path = xasprintf("%s/state.lmdb", cfg->state_dir);
	else {
		set_why(why, whylen, "lmdb: no lmdb_path and no state_dir");
		free(be);
		return NULL;
	}
	be->periodic = cfg->lmdb_sync == STATE_SYNC_PERIODIC;
	be->purge_interval = cfg->lmdb_purge_interval > 0 ? cfg->lmdb_purge_interval : 60000;
	be->purge_batch = cfg->lmdb_purge_batch > 0 ? (size_t)cfg->lmdb_purge_batch : 1000;
	long long map_size = cfg->lmdb_map_size > 0 ? cfg->lmdb_map_size : 256LL << 20;

	char *dir = xstrdup(be->path);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir) {
		*slash = '\0';
		if (fs_mkdir_p(dir, 0750) != 0) {
			set_why(why, whylen, "lmdb: %s: %s", dir, strerror(errno));
			free(dir);
			free(be->path);
			free(be);
			return NULL;
		}
	}
	free(dir);

	int rc = env_open(be, map_size);
	if (rc == MDB_INVALID || rc == MDB_CORRUPTED) {
		/* Soft state: keep the daemon going on a fresh file, keep the
		 * old one for a look. */
		char *aside = xasprintf("%s.corrupt-%lld", be->path, (long long)time(NULL));
		if (rename(be->path, aside) == 0) {
			log_warn(NULL, NULL, "state_lmdb_moved_aside", "path=%s moved_to=%s reason=%s", be->path, aside,
				 mdb_strerror(rc));
			rc = env_open(be, map_size);
		}
		free(aside);
	}
	if (rc) {
		set_why(why, whylen, "lmdb: %s: %s", be->path, mdb_strerror(rc));
		free(be->path);
		free(be);
		return NULL;
	}
	if (be->periodic) {
		be->sync_ev = event_new(base, -1, EV_PERSIST, on_sync, be);
		long long ms = cfg->lmdb_sync_interval > 0 ? cfg->lmdb_sync_interval : 1000;
		struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
		event_add(be->sync_ev, &tv);
	}
	be->purge_ev = evtimer_new(base, on_purge, be);
	schedule_purge(be, be->purge_interval);
	log_debug(NULL, NULL, "state_lmdb_open", "path=%s map_size=%lld", be->path, map_size);
	return be;
}

static void lmdb_close(void *arg)
{
	struct lmdb_be *be = arg;
	if (be->sync_ev)
		event_free(be->sync_ev);
	if (be->purge_ev)
		event_free(be->purge_ev);
	if (be->rtxn)
		mdb_txn_abort(be->rtxn);
	if (be->dirty)
		mdb_env_sync(be->env, 1);
	mdb_env_close(be->env);
	free(be->path);
	free(be);
}

static bool lmdb_up(const void *arg, char *why, size_t whylen)
{
	(void)arg; (void)why; (void)whylen;
	return true;
}

const struct state_backend_ops state_lmdb_ops = {
	.name = "lmdb",
	.open = lmdb_open,
	.close = lmdb_close,
	.up = lmdb_up,
	.start = lmdb_start,
};
