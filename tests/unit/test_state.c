/*
 * test_state.c — the state store against both backends (LMDB, and a real
 * redis-server the suite starts on loopback): get/set/del, expiry and the
 * LMDB purge, counters and token buckets (also from two processes at
 * once), prefix scans, bounds, the callback contract, Redis stopped,
 * frozen and refusing the password, reconnection, metrics, batched gets
 * (mget), and the median latency of get and take (printed, not
 * asserted).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <lmdb.h>

#include "mail/state.h"
#include "util/alloc.h"
#include "util/config.h"
#include "util/log.h"
#include "util/metrics.h"

#define REDIS_PASSWORD "s3cret-test"

struct suite {
	char dir[256];
	char sock[300];
	char pwfile[300];
	char logpath[300];
	int logfd;
	int port;
	pid_t redis;
	struct tu_redis r;
	int seq;
};

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- the redis-server (tests/unit/testutil.c) ------------------------------ */

static void start_redis(struct suite *s, bool same_port)
{
	s->r.port = s->port;
	if (!tu_redis_start(&s->r, s->dir, REDIS_PASSWORD, same_port))
		fail_msg("redis-server did not start (is the Debian package redis-server installed?)");
	s->port = s->r.port;
	s->redis = s->r.pid;
}

static void stop_redis(struct suite *s)
{
	s->r.pid = s->redis;
	tu_redis_stop(&s->r);
	s->redis = -1;
}

static int suite_setup(void **state)
{
	struct suite *s = xcalloc(1, sizeof(*s));
	if (tu_mkdtemp(s->dir, sizeof(s->dir), "state") != 0)
		return -1;
	snprintf(s->sock, sizeof(s->sock), "%s/redis.sock", s->dir);
	snprintf(s->pwfile, sizeof(s->pwfile), "%s/redis.pw", s->dir);
	snprintf(s->logpath, sizeof(s->logpath), "%s/log", s->dir);
	FILE *f = fopen(s->pwfile, "w");
	if (!f)
		return -1;
	fputs(REDIS_PASSWORD "\n", f);
	fclose(f);
	s->logfd = open(s->logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	log_init("test", "test_state");
	log_set_fd(s->logfd);
	start_redis(s, false);
	*state = s;
	return 0;
}

static int suite_teardown(void **state)
{
	struct suite *s = *state;
	stop_redis(s);
	log_set_fd(2);
	close(s->logfd);
	tu_rmtree(s->dir);
	free(s);
	return 0;
}

/* ---- fixture: one store ---------------------------------------------------- */

struct fx {
	struct suite *s;
	int backend;
	struct event_base *base;
	struct state_config cfg;
	bool bound;
	struct state *st;
	char lmdb_path[300];
	char prefix[32];
	struct metrics *metrics;
};

/* Configure (from a [state] section, as a stage would) without opening. */
static void fx_config(struct fx *f, struct suite *s, int backend, const char *extra)
{
	memset(f, 0, sizeof(*f));
	f->s = s;
	f->backend = backend;
	s->seq++;
	snprintf(f->prefix, sizeof(f->prefix), "t%d:", s->seq);
	snprintf(f->lmdb_path, sizeof(f->lmdb_path), "%s/t%d.lmdb", s->dir, s->seq);
	/* The suite's defaults, for every key extra does not set itself
	 * (rampart.conf refuses a key given twice). */
	if (!extra)
		extra = "";
	char port[16];
	snprintf(port, sizeof(port), "127.0.0.1:%d", s->port);
	const char *defaults[][2] = {
		{ "backend", backend == STATE_BACKEND_REDIS ? "redis" : "lmdb" },
		{ "lmdb_path", f->lmdb_path },
		{ "redis_server", port },
		{ "redis_password_file", s->pwfile },
		{ "redis_db", "3" },
		{ "redis_timeout", "500ms" },
		{ "key_prefix", f->prefix },
	};
	char *text = xasprintf("[state]\n%s", extra);
	for (size_t i = 0; i < sizeof(defaults) / sizeof(defaults[0]); i++) {
		char *k = xasprintf("%s =", defaults[i][0]);
		if (!strstr(extra, k)) {
			char *t = xasprintf("%s%s = %s\n", text, defaults[i][0], defaults[i][1]);
			free(text);
			text = t;
		}
		free(k);
	}
	struct config_error err;
	struct config *c = config_parse_string("test.conf", text, &err);
	if (!c)
		fail_msg("%s", err.msg);
	bool ok = config_bind(c, "state", &state_param_set, &f->cfg, &err);
	if (!ok)
		fail_msg("%s", err.msg);
	f->bound = true;
	config_free(c);
	free(text);
	f->cfg.state_dir = s->dir;
}

static void fx_open_only(struct fx *f)
{
	char why[256];
	f->base = event_base_new();
	f->st = state_open(&f->cfg, f->base, why, sizeof(why));
	if (!f->st)
		fail_msg("state_open: %s", why);
}

static void wait_up(struct fx *f, int max_ms)
{
	long long deadline = mono_ms() + max_ms;
	char why[256];
	while (!state_up(f->st, why, sizeof(why)) && mono_ms() < deadline)
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
	if (!state_up(f->st, why, sizeof(why)))
		fail_msg("store not up after %d ms: %s", max_ms, why);
}

static void fx_open(struct fx *f, struct suite *s, int backend, const char *extra)
{
	fx_config(f, s, backend, extra);
	fx_open_only(f);
	wait_up(f, 5000);
}

static void fx_close(struct fx *f)
{
	if (f->st)
		state_close(f->st);
	f->st = NULL;
	if (f->base)
		event_base_free(f->base);
	f->base = NULL;
	if (f->metrics)
		metrics_free(f->metrics);
	f->metrics = NULL;
	if (f->bound)
		config_release(&state_param_set, &f->cfg);
	f->bound = false;
}

/* Run the loop for ms. */
static void run_for(struct fx *f, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	event_base_loopexit(f->base, &tv);
	event_base_dispatch(f->base);
}

/* ---- results ------------------------------------------------------------- */

struct ent {
	char key[STATE_KEY_MAX + 1];
	char value[64];
	size_t vlen;
	long long ttl;
};

/* One answer of an mget, copied. */
struct val {
	enum state_status status;
	char *value;            /* NULL when not found */
	size_t vlen;
};

struct res {
	int calls;
	bool in_call;           /* the operation's function has not returned yet */
	bool early;             /* the callback ran before it returned */
	enum state_status status;
	char reason[256];
	char value[STATE_VALUE_MAX + 1];
	size_t vlen;
	long long counter;
	bool allowed;
	double tokens;
	long long retry;
	struct ent *ents;
	size_t nents;
	char cursor[STATE_KEY_MAX + 64];
	char key[STATE_KEY_MAX + 1];
	struct val *vals;       /* mget */
	size_t nvals;
	long long t0, elapsed_ns;
};

static void vals_free(struct res *x)
{
	for (size_t i = 0; i < x->nvals; i++)
		free(x->vals[i].value);
	free(x->vals);
	x->vals = NULL;
	x->nvals = 0;
}

static void res_cb(void *arg, const struct state_result *r)
{
	struct res *x = arg;
	x->calls++;
	if (x->in_call)
		x->early = true;
	x->elapsed_ns = mono_ns() - x->t0;
	x->status = r->status;
	snprintf(x->reason, sizeof(x->reason), "%s", r->reason);
	x->vlen = r->vlen;
	if (r->value && r->vlen <= STATE_VALUE_MAX)
		memcpy(x->value, r->value, r->vlen);
	x->value[r->vlen <= STATE_VALUE_MAX ? r->vlen : 0] = '\0';
	x->counter = r->counter;
	x->allowed = r->allowed;
	x->tokens = r->tokens;
	x->retry = r->retry_after_ms;
	snprintf(x->cursor, sizeof(x->cursor), "%s", r->cursor ? r->cursor : "");
	free(x->ents);
	x->ents = NULL;
	x->nents = r->nentries;
	if (r->nentries) {
		x->ents = xcalloc(r->nentries, sizeof(*x->ents));
		for (size_t i = 0; i < r->nentries; i++) {
			snprintf(x->ents[i].key, sizeof(x->ents[i].key), "%s", r->entries[i].key);
			snprintf(x->ents[i].value, sizeof(x->ents[i].value), "%.*s",
				 (int)(r->entries[i].vlen < 63 ? r->entries[i].vlen : 63), r->entries[i].value);
			x->ents[i].vlen = r->entries[i].vlen;
			x->ents[i].ttl = r->entries[i].ttl_ms;
			/* the value is NUL-terminated */
			assert_int_equal(r->entries[i].value[r->entries[i].vlen], '\0');
		}
	}
	if (r->status == STATE_OK && r->op == STATE_OP_GET)
		assert_int_equal(r->value[r->vlen], '\0');
	snprintf(x->key, sizeof(x->key), "%s", r->key ? r->key : "(null)");
	vals_free(x);
	if (r->op == STATE_OP_MGET && r->status == STATE_OK) {
		assert_non_null(r->values);
		assert_true(r->nvalues >= 1 && r->nvalues <= STATE_MGET_MAX);
	} else {
		/* values only with an answered mget */
		assert_null(r->values);
		assert_int_equal(r->nvalues, 0);
	}
	if (r->nvalues) {
		x->vals = xcalloc(r->nvalues, sizeof(*x->vals));
		x->nvals = r->nvalues;
		for (size_t i = 0; i < r->nvalues; i++) {
			const struct state_value *v = &r->values[i];
			x->vals[i].status = v->status;
			x->vals[i].vlen = v->vlen;
			if (v->status == STATE_OK) {
				assert_non_null(v->value);
				assert_true(v->vlen <= STATE_VALUE_MAX);
				/* the value is NUL-terminated */
				assert_int_equal(v->value[v->vlen], '\0');
				x->vals[i].value = xmalloc(v->vlen + 1);
				memcpy(x->vals[i].value, v->value, v->vlen + 1);
			} else {
				assert_int_equal(v->status, STATE_NOTFOUND);
				assert_null(v->value);
				assert_int_equal(v->vlen, 0);
			}
		}
	}
}

static void res_begin(struct res *x)
{
	free(x->ents);
	vals_free(x);
	memset(x, 0, sizeof(*x));
	x->in_call = true;
	x->t0 = mono_ns();
}

static void res_wait(struct fx *f, struct res *x)
{
	x->in_call = false;
	long long deadline = mono_ms() + 5000;
	while (!x->calls && mono_ms() < deadline)
		event_base_loop(f->base, EVLOOP_ONCE);
	assert_int_equal(x->calls, 1);
	assert_false(x->early);
}

static void res_free(struct res *x)
{
	free(x->ents);
	x->ents = NULL;
	vals_free(x);
}

static struct res *get(struct fx *f, struct res *x, const char *key)
{
	res_begin(x);
	assert_non_null(state_get(f->st, key, res_cb, x));
	res_wait(f, x);
	return x;
}

static struct res *set(struct fx *f, struct res *x, const char *key, const void *v, size_t n, long long ttl)
{
	res_begin(x);
	assert_non_null(state_set(f->st, key, v, n, ttl, res_cb, x));
	res_wait(f, x);
	return x;
}

static struct res *sets(struct fx *f, struct res *x, const char *key, const char *v, long long ttl)
{
	return set(f, x, key, v, strlen(v), ttl);
}

static struct res *del(struct fx *f, struct res *x, const char *key)
{
	res_begin(x);
	assert_non_null(state_del(f->st, key, res_cb, x));
	res_wait(f, x);
	return x;
}

static struct res *incr(struct fx *f, struct res *x, const char *key, long long by, long long ttl)
{
	res_begin(x);
	assert_non_null(state_incr(f->st, key, by, ttl, res_cb, x));
	res_wait(f, x);
	return x;
}

static struct res *take(struct fx *f, struct res *x, const char *key, double rate, double burst, double cost)
{
	res_begin(x);
	assert_non_null(state_take(f->st, key, rate, burst, cost, res_cb, x));
	res_wait(f, x);
	return x;
}

static struct res *scan(struct fx *f, struct res *x, const char *prefix, const char *cursor, size_t limit)
{
	res_begin(x);
	assert_non_null(state_scan(f->st, prefix, cursor, limit, res_cb, x));
	res_wait(f, x);
	return x;
}

static struct res *mget(struct fx *f, struct res *x, const char *const *keys, size_t n)
{
	res_begin(x);
	assert_non_null(state_mget(f->st, keys, n, res_cb, x));
	assert_int_equal(x->calls, 0);
	res_wait(f, x);
	return x;
}

static struct res *mincr(struct fx *f, struct res *x, const char *const *keys, size_t n, long long by, long long ttl)
{
	res_begin(x);
	assert_non_null(state_mincr(f->st, keys, n, by, ttl, res_cb, x));
	assert_int_equal(x->calls, 0);
	res_wait(f, x);
	return x;
}

#define assert_status(x, s) do { \
	if ((x)->status != (s)) \
		fail_msg("status %s, expected %s (%s)", state_status_name((x)->status), state_status_name(s), (x)->reason); \
} while (0)

/* Both backends run every test. */
#define BOTH(name) \
	static void name##_lmdb(void **s) { name(*s, STATE_BACKEND_LMDB); } \
	static void name##_redis(void **s) { name(*s, STATE_BACKEND_REDIS); }
#define BOTH_TESTS(name) cmocka_unit_test(name##_lmdb), cmocka_unit_test(name##_redis)

/* ---- tests --------------------------------------------------------------- */

static void basic(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	assert_status(get(&f, &x, "a"), STATE_NOTFOUND);
	assert_status(sets(&f, &x, "a", "hello", 0), STATE_OK);
	assert_status(get(&f, &x, "a"), STATE_OK);
	assert_int_equal(x.vlen, 5);
	assert_string_equal(x.value, "hello");
	assert_status(sets(&f, &x, "a", "again", 0), STATE_OK);
	assert_string_equal(get(&f, &x, "a")->value, "again");
	/* binary-safe, empty values */
	assert_status(set(&f, &x, "bin", "x\0y\r\n", 5, 0), STATE_OK);
	get(&f, &x, "bin");
	assert_int_equal(x.vlen, 5);
	assert_memory_equal(x.value, "x\0y\r\n", 5);
	assert_status(set(&f, &x, "empty", NULL, 0, 0), STATE_OK);
	assert_status(get(&f, &x, "empty"), STATE_OK);
	assert_int_equal(x.vlen, 0);
	/* UTF-8 keys are fine */
	assert_status(sets(&f, &x, "grey:192.0.2.1:j\xc3\xb6rg@example.test", "1", 0), STATE_OK);
	assert_status(get(&f, &x, "grey:192.0.2.1:j\xc3\xb6rg@example.test"), STATE_OK);
	assert_status(del(&f, &x, "a"), STATE_OK);
	assert_status(del(&f, &x, "a"), STATE_NOTFOUND);
	assert_status(get(&f, &x, "a"), STATE_NOTFOUND);
	assert_string_equal(state_backend_name(f.st), backend == STATE_BACKEND_REDIS ? "redis" : "lmdb");
	res_free(&x);
	fx_close(&f);
}
BOTH(basic)

static void expiry(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	assert_status(sets(&f, &x, "e", "soon", 1000), STATE_OK);
	assert_status(sets(&f, &x, "p", "stays", 0), STATE_OK);
	assert_status(sets(&f, &x, "r", "was temporary", 300), STATE_OK);
	assert_status(sets(&f, &x, "r", "now permanent", 0), STATE_OK);   /* set replaces the expiry */
	assert_int_equal(incr(&f, &x, "c", 1, 1000)->counter, 1);
	assert_status(get(&f, &x, "e"), STATE_OK);
	scan(&f, &x, "e", NULL, 10);
	assert_int_equal(x.nents, 1);
	assert_true(x.ents[0].ttl > 0 && x.ents[0].ttl <= 1000);
	run_for(&f, 600);
	/* a later incr keeps the expiry set at creation */
	assert_int_equal(incr(&f, &x, "c", 1, 1000)->counter, 2);
	assert_int_equal(incr(&f, &x, "c", 1, 60000)->counter, 3);
	run_for(&f, 550);
	assert_status(get(&f, &x, "e"), STATE_NOTFOUND);
	assert_status(get(&f, &x, "c"), STATE_NOTFOUND);
	assert_status(del(&f, &x, "e"), STATE_NOTFOUND);
	assert_int_equal(incr(&f, &x, "c", 1, 0)->counter, 1);      /* a fresh counter */
	assert_string_equal(get(&f, &x, "p")->value, "stays");
	assert_string_equal(get(&f, &x, "r")->value, "now permanent");
	scan(&f, &x, "", NULL, 100);
	assert_int_equal(x.nents, 3);                                /* p, r, c */
	for (size_t i = 0; i < x.nents; i++)
		assert_int_equal(x.ents[i].ttl, -1);
	res_free(&x);
	fx_close(&f);
}
BOTH(expiry)

/* LMDB removes expired entries by itself, in bounded runs. */
static void test_lmdb_purge(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, STATE_BACKEND_LMDB, "lmdb_purge_interval = 100ms\nlmdb_purge_batch = 10\n");
	char key[32];
	for (int i = 0; i < 50; i++) {
		snprintf(key, sizeof(key), "tmp%02d", i);
		assert_status(sets(&f, &x, key, "x", 200), STATE_OK);
	}
	for (int i = 0; i < 5; i++) {
		snprintf(key, sizeof(key), "keep%d", i);
		assert_status(sets(&f, &x, key, "y", 0), STATE_OK);
	}
	run_for(&f, 2000);
	char path[300];
	snprintf(path, sizeof(path), "%s", f.lmdb_path);
	fx_close(&f);
	/* count what is really in the file (no store has it open now) */
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_stat ms;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR | MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
	assert_int_equal(mdb_stat(txn, dbi, &ms), 0);
	mdb_txn_abort(txn);
	mdb_env_close(env);
	assert_int_equal(ms.ms_entries, 5);
	res_free(&x);
}

static void counters(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	assert_int_equal(incr(&f, &x, "n", 1, 0)->counter, 1);
	assert_int_equal(incr(&f, &x, "n", 5, 0)->counter, 6);
	assert_int_equal(incr(&f, &x, "n", -10, 0)->counter, -4);
	assert_string_equal(get(&f, &x, "n")->value, "-4");
	sets(&f, &x, "s", "abc", 0);
	assert_status(incr(&f, &x, "s", 1, 0), STATE_ERROR);
	assert_non_null(strstr(x.reason, "not a counter"));
	assert_string_equal(get(&f, &x, "s")->value, "abc");     /* untouched */
	sets(&f, &x, "big", "9223372036854775807", 0);
	assert_status(incr(&f, &x, "big", 1, 0), STATE_ERROR);
	assert_string_equal(get(&f, &x, "big")->value, "9223372036854775807");
	sets(&f, &x, "ten", "10", 0);
	assert_int_equal(incr(&f, &x, "ten", 0, 0)->counter, 10);
	res_free(&x);
	fx_close(&f);
}
BOTH(counters)

/* One child: N increments and M bucket takes, one after another. */
static int child_work(struct fx *f, int n_incr, int n_take)
{
	f->base = event_base_new();
	char why[256];
	f->st = state_open(&f->cfg, f->base, why, sizeof(why));
	if (!f->st)
		return 2;
	long long deadline = mono_ms() + 5000;
	while (!state_up(f->st, NULL, 0) && mono_ms() < deadline)
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
	struct res x = { 0 };
	for (int i = 0; i < n_incr + n_take; i++) {
		res_begin(&x);
		if (i < n_incr)
			state_incr(f->st, "cnt", 1, 0, res_cb, &x);
		else
			state_take(f->st, "bucket", 0.001, 100, 1, res_cb, &x);
		x.in_call = false;
		long long d = mono_ms() + 5000;
		while (!x.calls && mono_ms() < d)
			event_base_loop(f->base, EVLOOP_ONCE);
		if (x.calls != 1 || x.status != STATE_OK)
			return 3;
		if (i >= n_incr && x.allowed) {
			res_begin(&x);
			state_incr(f->st, "allowed", 1, 0, res_cb, &x);
			x.in_call = false;
			while (!x.calls && mono_ms() < d)
				event_base_loop(f->base, EVLOOP_ONCE);
			if (x.calls != 1 || x.status != STATE_OK)
				return 4;
		}
	}
	return 0;
}

/* Two processes, each its own store on the same file (or Redis): the
 * counts add up exactly and the bucket gives out exactly its burst. */
static void two_processes(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_config(&f, s, backend, NULL);
	enum { N = 1000, M = 80 };
	pid_t kids[2];
	for (int i = 0; i < 2; i++) {
		kids[i] = fork();
		assert_true(kids[i] >= 0);
		if (kids[i] == 0)
			_exit(child_work(&f, N, M));     /* no cleanup: LMDB and the loop belong to this child */
	}
	for (int i = 0; i < 2; i++) {
		int st;
		assert_int_equal(waitpid(kids[i], &st, 0), kids[i]);
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
	fx_open_only(&f);
	wait_up(&f, 5000);
	assert_string_equal(get(&f, &x, "cnt")->value, "2000");
	assert_string_equal(get(&f, &x, "allowed")->value, "100");
	res_free(&x);
	fx_close(&f);
}
BOTH(two_processes)

static void buckets(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	/* burst 5, 10 per second */
	for (int i = 0; i < 5; i++) {
		take(&f, &x, "b1", 10, 5, 1);
		assert_status(&x, STATE_OK);
		assert_true(x.allowed);
		assert_true(x.tokens > 3.9 - i && x.tokens < 4.5 - i);
		assert_int_equal(x.retry, 0);
	}
	take(&f, &x, "b1", 10, 5, 1);
	assert_false(x.allowed);
	assert_true(x.retry >= 1 && x.retry <= 100);
	long long wait = x.retry;
	/* looking costs nothing */
	take(&f, &x, "b1", 10, 5, 0);
	assert_true(x.allowed);
	assert_true(x.tokens < 1);
	run_for(&f, (int)wait + 30);
	take(&f, &x, "b1", 10, 5, 1);
	assert_true(x.allowed);
	/* more than the burst: never */
	take(&f, &x, "b1", 10, 5, 6);
	assert_false(x.allowed);
	assert_int_equal(x.retry, -1);
	/* the stored form */
	get(&f, &x, "b1");
	double t;
	long long ts;
	assert_int_equal(sscanf(x.value, "%lf %lld", &t, &ts), 2);
	assert_true(ts > 1600000000000LL);

	/* 2 per second, burst 1: retry-after is when the token is back */
	take(&f, &x, "b2", 2, 1, 1);
	assert_true(x.allowed);
	take(&f, &x, "b2", 2, 1, 1);
	assert_false(x.allowed);
	assert_true(x.retry > 400 && x.retry <= 500);
	run_for(&f, 250);
	take(&f, &x, "b2", 2, 1, 1);
	assert_false(x.allowed);
	assert_true(x.retry > 150 && x.retry <= 260);
	run_for(&f, (int)x.retry + 20);
	take(&f, &x, "b2", 2, 1, 1);
	assert_true(x.allowed);
	/* a refill never exceeds the burst */
	take(&f, &x, "b3", 1000, 3, 0);
	assert_true(x.tokens == 3);
	run_for(&f, 50);
	take(&f, &x, "b3", 1000, 3, 2);
	assert_true(x.allowed);
	assert_true(x.tokens <= 1.0 + 1e-6);
	/* a peek at a missing bucket creates nothing */
	take(&f, &x, "b4", 1, 10, 0);
	assert_true(x.allowed);
	assert_true(x.tokens == 10);
	assert_status(get(&f, &x, "b4"), STATE_NOTFOUND);
	/* bad parameters, and a key that is no bucket */
	assert_status(take(&f, &x, "b5", 0, 1, 1), STATE_ERROR);
	assert_status(take(&f, &x, "b5", 1, -1, 1), STATE_ERROR);
	assert_status(take(&f, &x, "b5", 1, 1, -1), STATE_ERROR);
	assert_status(take(&f, &x, "b5", 1, 1, __builtin_nan("")), STATE_ERROR);
	sets(&f, &x, "notabucket", "hello", 0);
	assert_status(take(&f, &x, "notabucket", 1, 1, 1), STATE_ERROR);
	assert_non_null(strstr(x.reason, "not a token bucket"));
	res_free(&x);
	fx_close(&f);
}
BOTH(buckets)

static int has_key(const struct ent *e, size_t n, const char *key)
{
	int c = 0;
	for (size_t i = 0; i < n; i++)
		c += strcmp(e[i].key, key) == 0;
	return c;
}

static void scans(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	char key[64], val[64];
	for (int i = 0; i < 25; i++) {
		snprintf(key, sizeof(key), "scan:a:%02d", i);
		snprintf(val, sizeof(val), "v%d", i);
		sets(&f, &x, key, val, 0);
	}
	for (int i = 0; i < 5; i++) {
		snprintf(key, sizeof(key), "scan:b:%d", i);
		sets(&f, &x, key, "b", 0);
	}
	for (int i = 0; i < 3; i++) {
		snprintf(key, sizeof(key), "scan:a:gone%d", i);
		sets(&f, &x, key, "gone", 1);
	}
	sets(&f, &x, "scan:t", "ttl", 60000);
	run_for(&f, 30);
	/* page through 7 at a time */
	struct ent seen[64];
	size_t nseen = 0;
	char cursor[600] = "";
	int rounds = 0;
	do {
		scan(&f, &x, "scan:a:", cursor, 7);
		assert_status(&x, STATE_OK);
		assert_true(x.nents <= 7);
		for (size_t i = 0; i < x.nents; i++) {
			assert_int_equal(strncmp(x.ents[i].key, "scan:a:", 7), 0);
			assert_null(strstr(x.ents[i].key, "gone"));
			if (!has_key(seen, nseen, x.ents[i].key)) {
				assert_true(nseen < 64);
				seen[nseen++] = x.ents[i];
			}
		}
		snprintf(cursor, sizeof(cursor), "%s", x.cursor);
		assert_true(++rounds < 100);
	} while (*cursor);
	assert_int_equal(nseen, 25);
	for (int i = 0; i < 25; i++) {
		snprintf(key, sizeof(key), "scan:a:%02d", i);
		snprintf(val, sizeof(val), "v%d", i);
		assert_int_equal(has_key(seen, nseen, key), 1);
		for (size_t j = 0; j < nseen; j++)
			if (strcmp(seen[j].key, key) == 0) {
				assert_string_equal(seen[j].value, val);
				assert_int_equal(seen[j].ttl, -1);
			}
	}
	/* one call for everything */
	scan(&f, &x, "", NULL, 1000);
	assert_int_equal(x.nents, 31);
	assert_string_equal(x.cursor, "");
	assert_int_equal(has_key(x.ents, x.nents, "scan:b:3"), 1);
	scan(&f, &x, "scan:t", NULL, 10);
	assert_int_equal(x.nents, 1);
	assert_true(x.ents[0].ttl > 59000 && x.ents[0].ttl <= 60000);
	scan(&f, &x, "nomatch", NULL, 10);
	assert_status(&x, STATE_OK);
	assert_int_equal(x.nents, 0);
	assert_string_equal(x.cursor, "");
	/* glob characters in the prefix are literal (Redis MATCH) */
	sets(&f, &x, "g*[x]?\\:1", "1", 0);
	sets(&f, &x, "g*[x]?\\:2", "2", 0);
	sets(&f, &x, "gzzz", "3", 0);
	sets(&f, &x, "gx]?\\:3", "4", 0);
	scan(&f, &x, "g*[x]?\\:", NULL, 10);
	assert_int_equal(x.nents, 2);
	/* bounds */
	assert_status(scan(&f, &x, "", NULL, 0), STATE_ERROR);
	assert_status(scan(&f, &x, "", NULL, STATE_SCAN_MAX + 1), STATE_ERROR);
	assert_status(scan(&f, &x, "scan:", "zz\x01", 10), STATE_ERROR);
	if (backend == STATE_BACKEND_REDIS)
		assert_status(scan(&f, &x, "scan:", "abc", 10), STATE_ERROR);
	else
		assert_status(scan(&f, &x, "scan:a:", "other", 10), STATE_ERROR);
	res_free(&x);
	fx_close(&f);
}
BOTH(scans)

static void bounds(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	char key[STATE_KEY_MAX + 2];
	memset(key, 'k', sizeof(key));
	key[STATE_KEY_MAX] = '\0';
	assert_status(sets(&f, &x, key, "longest", 0), STATE_OK);
	assert_string_equal(get(&f, &x, key)->value, "longest");
	scan(&f, &x, "kkkk", NULL, 10);
	assert_int_equal(x.nents, 1);
	assert_int_equal(strlen(x.ents[0].key), STATE_KEY_MAX);
	key[STATE_KEY_MAX] = 'k';
	key[STATE_KEY_MAX + 1] = '\0';
	assert_status(sets(&f, &x, key, "too long", 0), STATE_ERROR);
	assert_non_null(strstr(x.reason, "key too long"));
	assert_status(get(&f, &x, key), STATE_ERROR);
	assert_status(incr(&f, &x, key, 1, 0), STATE_ERROR);
	assert_status(take(&f, &x, key, 1, 1, 1), STATE_ERROR);
	assert_status(del(&f, &x, key), STATE_ERROR);
	assert_status(scan(&f, &x, key, NULL, 1), STATE_ERROR);
	assert_status(sets(&f, &x, "", "empty key", 0), STATE_ERROR);
	assert_status(sets(&f, &x, "line\nbreak", "x", 0), STATE_ERROR);
	assert_status(sets(&f, &x, "tab\tkey", "x", 0), STATE_ERROR);
	char *big = xmalloc(STATE_VALUE_MAX + 1);
	memset(big, 'v', STATE_VALUE_MAX + 1);
	assert_status(set(&f, &x, "big", big, STATE_VALUE_MAX, 0), STATE_OK);
	assert_int_equal(get(&f, &x, "big")->vlen, STATE_VALUE_MAX);
	assert_memory_equal(x.value, big, STATE_VALUE_MAX);
	assert_status(set(&f, &x, "big", big, STATE_VALUE_MAX + 1, 0), STATE_ERROR);
	assert_non_null(strstr(x.reason, "value too long"));
	assert_int_equal(get(&f, &x, "big")->vlen, STATE_VALUE_MAX);         /* unchanged */
	free(big);
	assert_status(sets(&f, &x, "ttl", "x", -1), STATE_ERROR);
	assert_status(sets(&f, &x, "ttl", "x", STATE_TTL_MAX + 1), STATE_ERROR);
	assert_status(incr(&f, &x, "ttl", 1, -5), STATE_ERROR);
	res_free(&x);
	fx_close(&f);
}
BOTH(bounds)

/* ---- the callback contract ----------------------------------------------- */

struct chain {
	struct fx *f;
	int left, done;
	bool early;
	bool in_call;
};

static void chain_cb(void *arg, const struct state_result *r)
{
	struct chain *c = arg;
	if (c->in_call)
		c->early = true;
	if (r->status != STATE_OK)
		fail_msg("chained op failed: %s", r->reason);
	c->done++;
	if (--c->left > 0) {
		c->in_call = true;
		state_incr(c->f->st, "chain", 1, 0, chain_cb, c);
		c->in_call = false;
	}
}

static void never_cb(void *arg, const struct state_result *r)
{
	(void)r;
	(*(int *)arg)++;
}

static void contract(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	/* a refused operation is reported from the loop too */
	res_begin(&x);
	assert_non_null(state_get(f.st, "", res_cb, &x));
	assert_int_equal(x.calls, 0);
	res_wait(&f, &x);
	assert_status(&x, STATE_ERROR);
	/* callbacks may start operations; they never run inside the call */
	struct chain c = { &f, 200, 0, false, true };
	state_incr(f.st, "chain", 1, 0, chain_cb, &c);
	c.in_call = false;
	long long deadline = mono_ms() + 10000;
	while (c.left > 0 && mono_ms() < deadline)
		event_base_loop(f.base, EVLOOP_ONCE);
	assert_int_equal(c.done, 200);
	assert_false(c.early);
	assert_string_equal(get(&f, &x, "chain")->value, "200");
	/* cancelled: the callback never runs, the operation may */
	int called = 0;
	struct state_req *r1 = state_set(f.st, "cancelled", "1", 1, 0, never_cb, &called);
	struct state_req *r2 = state_get(f.st, "chain", never_cb, &called);
	struct state_req *r3 = state_get(f.st, "", never_cb, &called);
	state_cancel(r1);
	state_cancel(r2);
	state_cancel(r3);
	run_for(&f, 100);
	assert_int_equal(called, 0);
	/* nobody listening */
	assert_null(state_set(f.st, "quiet", "q", 1, 0, NULL, NULL));
	assert_string_equal(get(&f, &x, "quiet")->value, "q");
	/* pending at close: told "store closed", inside state_close */
	res_begin(&x);
	state_get(f.st, "quiet", res_cb, &x);
	x.in_call = false;
	state_close(f.st);
	f.st = NULL;
	assert_int_equal(x.calls, 1);
	assert_true(x.status == STATE_OK || strstr(x.reason, "closed"));
	res_free(&x);
	fx_close(&f);
}
BOTH(contract)

/* ---- mget ---------------------------------------------------------------- */

static void assert_value(const struct res *x, size_t i, enum state_status st, const void *v, size_t n)
{
	if (i >= x->nvals)
		fail_msg("value %zu of %zu", i, x->nvals);
	if (x->vals[i].status != st)
		fail_msg("value %zu: status %s, expected %s", i, state_status_name(x->vals[i].status),
			 state_status_name(st));
	if (st != STATE_OK)
		return;
	if (x->vals[i].vlen != n)
		fail_msg("value %zu: %zu bytes, expected %zu", i, x->vals[i].vlen, n);
	if (n)
		assert_memory_equal(x->vals[i].value, v, n);
}

#define assert_reason(x, text) do { \
	if (!strstr((x)->reason, (text))) \
		fail_msg("reason \"%s\" lacks \"%s\"", (x)->reason, (text)); \
} while (0)

static void mgets(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	char *big = xmalloc(STATE_VALUE_MAX);
	for (int i = 0; i < STATE_VALUE_MAX; i++)
		big[i] = (char)('a' + i % 26);
	big[1000] = '\0';
	assert_status(sets(&f, &x, "m:a", "alpha", 0), STATE_OK);
	assert_status(set(&f, &x, "m:bin", "x\0y\r\n", 5, 0), STATE_OK);
	assert_status(set(&f, &x, "m:big", big, STATE_VALUE_MAX, 0), STATE_OK);
	assert_status(set(&f, &x, "m:empty", NULL, 0, 0), STATE_OK);
	assert_status(sets(&f, &x, "m:ttl", "for a minute", 60000), STATE_OK);
	assert_status(sets(&f, &x, "m:exp", "short-lived", 300), STATE_OK);
	const char *exp[] = { "m:exp" };
	assert_status(mget(&f, &x, exp, 1), STATE_OK);
	assert_value(&x, 0, STATE_OK, "short-lived", 11);
	run_for(&f, 450);
	/* present, missing, expired, repeated, in the order asked; the
	 * caller's keys are read during the call only */
	char keys[9][32] = { "m:a", "m:missing", "m:bin", "m:exp", "m:big", "m:empty", "m:a", "m:ttl", "m:none" };
	const char *kp[9];
	for (int i = 0; i < 9; i++)
		kp[i] = keys[i];
	res_begin(&x);
	assert_non_null(state_mget(f.st, kp, 9, res_cb, &x));
	assert_int_equal(x.calls, 0);
	for (int i = 0; i < 9; i++)
		snprintf(keys[i], sizeof(keys[i]), "scribbled%d", i);
	res_wait(&f, &x);
	assert_status(&x, STATE_OK);
	assert_string_equal(x.reason, "");
	assert_string_equal(x.key, "m:a");
	assert_int_equal(x.nvals, 9);
	assert_value(&x, 0, STATE_OK, "alpha", 5);
	assert_value(&x, 1, STATE_NOTFOUND, NULL, 0);
	assert_value(&x, 2, STATE_OK, "x\0y\r\n", 5);
	assert_value(&x, 3, STATE_NOTFOUND, NULL, 0);
	assert_value(&x, 4, STATE_OK, big, STATE_VALUE_MAX);
	assert_value(&x, 5, STATE_OK, "", 0);
	assert_value(&x, 6, STATE_OK, "alpha", 5);
	assert_value(&x, 7, STATE_OK, "for a minute", 12);
	assert_value(&x, 8, STATE_NOTFOUND, NULL, 0);
	/* one key; nothing there at all */
	const char *one[] = { "m:bin" }, *none[] = { "m:x", "m:y" };
	assert_status(mget(&f, &x, one, 1), STATE_OK);
	assert_int_equal(x.nvals, 1);
	assert_value(&x, 0, STATE_OK, "x\0y\r\n", 5);
	assert_status(mget(&f, &x, none, 2), STATE_OK);
	assert_int_equal(x.nvals, 2);
	assert_string_equal(x.key, "m:x");
	assert_value(&x, 0, STATE_NOTFOUND, NULL, 0);
	assert_value(&x, 1, STATE_NOTFOUND, NULL, 0);
	/* the answers follow writes */
	assert_status(del(&f, &x, "m:a"), STATE_OK);
	assert_status(sets(&f, &x, "m:none", "now", 0), STATE_OK);
	const char *after[] = { "m:a", "m:none" };
	mget(&f, &x, after, 2);
	assert_value(&x, 0, STATE_NOTFOUND, NULL, 0);
	assert_value(&x, 1, STATE_OK, "now", 3);

	/* key_prefix: a store without one, on the same data, sees the keys
	 * under this store's prefix */
	char path[300], prefix[32];
	snprintf(path, sizeof(path), "%s", f.lmdb_path);
	snprintf(prefix, sizeof(prefix), "%s", f.prefix);
	fx_close(&f);
	char *extra = xasprintf("lmdb_path = %s\nkey_prefix =\n", path);
	fx_open(&f, s, backend, extra);
	free(extra);
	char full[64];
	snprintf(full, sizeof(full), "%sm:bin", prefix);
	const char *bare[] = { "m:bin", full };
	mget(&f, &x, bare, 2);
	assert_status(&x, STATE_OK);
	assert_value(&x, 0, STATE_NOTFOUND, NULL, 0);
	assert_value(&x, 1, STATE_OK, "x\0y\r\n", 5);
	assert_status(sets(&f, &x, "m:bin", "unprefixed", 0), STATE_OK);
	mget(&f, &x, bare, 2);
	assert_value(&x, 0, STATE_OK, "unprefixed", 10);
	assert_value(&x, 1, STATE_OK, "x\0y\r\n", 5);
	assert_status(del(&f, &x, "m:bin"), STATE_OK);
	fx_close(&f);
	/* and the prefixed store does not see the unprefixed key */
	extra = xasprintf("lmdb_path = %s\nkey_prefix = %s\n", path, prefix);
	fx_open(&f, s, backend, extra);
	free(extra);
	assert_status(sets(&f, &x, "m:bin", "mine", 0), STATE_OK);
	snprintf(full, sizeof(full), "%sm:bin", prefix);
	const char *mine[] = { "m:bin", full };
	mget(&f, &x, mine, 2);
	assert_value(&x, 0, STATE_OK, "mine", 4);
	assert_value(&x, 1, STATE_NOTFOUND, NULL, 0);
	free(big);
	res_free(&x);
	fx_close(&f);
}
BOTH(mgets)

static void mget_bounds(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_config(&f, s, backend, NULL);
	f.metrics = metrics_new("mx", "mx");
	f.cfg.metrics = f.metrics;
	fx_open_only(&f);
	wait_up(&f, 5000);
	/* a bad count or key fails the whole request, from the loop */
	const char *ks[] = { "a", "b", "c", "d\x01", "e" };
	assert_status(mget(&f, &x, ks, 0), STATE_ERROR);
	assert_reason(&x, "key count out of range (0, 1..4096)");
	assert_status(mget(&f, &x, ks, 3), STATE_OK);
	assert_status(mget(&f, &x, ks, 5), STATE_ERROR);
	assert_string_equal(x.reason, "key 3: control characters in key");
	struct metric *ops = metrics_counter(f.metrics, "rampart_state_operations_total", NULL);
	struct metric *errs = metrics_counter(f.metrics, "rampart_state_errors_total", NULL);
	const char *labels = backend == STATE_BACKEND_REDIS ? "backend=\"redis\",op=\"mget\"" : "backend=\"lmdb\",op=\"mget\"";
	assert_true(metric_get(ops, labels) == 3);
	assert_true(metric_get(errs, labels) == 2);
	const char *ctl[] = { "line\nbreak", "b" };
	assert_status(mget(&f, &x, ctl, 2), STATE_ERROR);
	assert_string_equal(x.reason, "key 0: control characters in key");
	const char *del_char[] = { "a", "b\x7f" };
	assert_status(mget(&f, &x, del_char, 2), STATE_ERROR);
	assert_string_equal(x.reason, "key 1: control characters in key");
	const char *empty[] = { "a", "", "c" };
	assert_status(mget(&f, &x, empty, 3), STATE_ERROR);
	assert_string_equal(x.reason, "key 1: empty key");
	const char *nul[] = { "a", NULL };
	assert_status(mget(&f, &x, nul, 2), STATE_ERROR);
	assert_string_equal(x.reason, "key 1: no key");
	assert_status(mget(&f, &x, NULL, 1), STATE_ERROR);
	assert_reason(&x, "no keys");
	char longest[STATE_KEY_MAX + 2];
	memset(longest, 'k', sizeof(longest));
	longest[STATE_KEY_MAX + 1] = '\0';
	const char *toolong[] = { "a", "b", longest };
	assert_status(mget(&f, &x, toolong, 3), STATE_ERROR);
	assert_reason(&x, "key 2: key too long (481 bytes, at most 480)");
	longest[STATE_KEY_MAX] = '\0';
	assert_status(sets(&f, &x, longest, "longest", 0), STATE_OK);
	mget(&f, &x, toolong, 3);
	assert_status(&x, STATE_OK);
	assert_value(&x, 2, STATE_OK, "longest", 7);

	/* STATE_MGET_MAX keys of the longest length, one in 16 there */
	char **many = xcalloc(STATE_MGET_MAX + 1, sizeof(*many));
	for (int i = 0; i <= STATE_MGET_MAX; i++) {
		many[i] = xmalloc(STATE_KEY_MAX + 1);
		memset(many[i], 'p', STATE_KEY_MAX);
		many[i][STATE_KEY_MAX] = '\0';
		char head[16];
		int n = snprintf(head, sizeof(head), "many:%04d:", i);
		memcpy(many[i], head, (size_t)n);
	}
	char val[32];
	for (int i = 0; i < STATE_MGET_MAX; i += 16) {
		snprintf(val, sizeof(val), "v%d", i);
		assert_status(sets(&f, &x, many[i], val, 0), STATE_OK);
	}
	assert_status(mget(&f, &x, (const char *const *)many, STATE_MGET_MAX + 1), STATE_ERROR);
	assert_reason(&x, "key count out of range (4097, 1..4096)");
	mget(&f, &x, (const char *const *)many, STATE_MGET_MAX);
	assert_status(&x, STATE_OK);
	assert_int_equal(x.nvals, STATE_MGET_MAX);
	assert_string_equal(x.key, many[0]);
	for (int i = 0; i < STATE_MGET_MAX; i++) {
		snprintf(val, sizeof(val), "v%d", i);
		assert_value(&x, (size_t)i, i % 16 ? STATE_NOTFOUND : STATE_OK, val, strlen(val));
	}
	for (int i = 0; i <= STATE_MGET_MAX; i++)
		free(many[i]);
	free(many);

	/* nobody listening; cancelled */
	const char *one[] = { "a" };
	assert_null(state_mget(f.st, one, 1, NULL, NULL));
	int called = 0;
	state_cancel(state_mget(f.st, one, 1, never_cb, &called));
	state_cancel(state_mget(f.st, one, 0, never_cb, &called));
	run_for(&f, 100);
	assert_int_equal(called, 0);
	/* pending at close: told inside state_close, values or an error */
	res_begin(&x);
	state_mget(f.st, ks, 3, res_cb, &x);
	x.in_call = false;
	state_close(f.st);
	f.st = NULL;
	assert_int_equal(x.calls, 1);
	assert_true(x.status == STATE_OK || strstr(x.reason, "closed"));
	res_free(&x);
	fx_close(&f);
}
BOTH(mget_bounds)

/* ---- mincr --------------------------------------------------------------- */

static void assert_counter(struct fx *f, const char *key, const char *want)
{
	struct res x = { 0 };
	get(f, &x, key);
	if (!want) {
		if (x.status != STATE_NOTFOUND)
			fail_msg("%s: %s, expected nothing", key, x.status == STATE_OK ? x.value : x.reason);
		return;
	}
	if (x.status != STATE_OK || strcmp(x.value, want) != 0)
		fail_msg("%s: %s, expected %s", key, x.status == STATE_OK ? x.value : state_status_name(x.status), want);
}

static void mincrs(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	assert_status(sets(&f, &x, "c:a", "5", 0), STATE_OK);
	/* existing, missing, repeated: each moves by its count */
	const char *k1[] = { "c:a", "c:b", "c:a" };
	assert_status(mincr(&f, &x, k1, 3, 3, 0), STATE_OK);
	assert_string_equal(x.reason, "");
	assert_counter(&f, "c:a", "11");
	assert_counter(&f, "c:b", "3");
	/* expiry for the keys it creates only */
	const char *k2[] = { "c:new", "c:a" };
	assert_status(mincr(&f, &x, k2, 2, 1, 300), STATE_OK);
	assert_counter(&f, "c:new", "1");
	run_for(&f, 450);
	assert_counter(&f, "c:new", NULL);
	assert_counter(&f, "c:a", "12");
	/* down again (untraining) */
	const char *k3[] = { "c:a", "c:b" };
	assert_status(mincr(&f, &x, k3, 2, -3, 0), STATE_OK);
	assert_counter(&f, "c:a", "9");
	assert_counter(&f, "c:b", "0");
	/* all or none: a value that is not a counter, an overflow */
	assert_status(sets(&f, &x, "c:text", "hello", 0), STATE_OK);
	const char *k4[] = { "c:a", "c:text", "c:b" };
	assert_status(mincr(&f, &x, k4, 3, 1, 0), STATE_ERROR);
	assert_reason(&x, "key 1: value is not a counter");
	assert_counter(&f, "c:a", "9");
	assert_counter(&f, "c:b", "0");
	assert_counter(&f, "c:text", "hello");
	assert_status(sets(&f, &x, "c:max", "9223372036854775807", 0), STATE_OK);
	const char *k5[] = { "c:b", "c:fresh", "c:max" };
	assert_status(mincr(&f, &x, k5, 3, 1, 0), STATE_ERROR);
	assert_reason(&x, "key 2: counter overflow");
	assert_counter(&f, "c:b", "0");
	assert_counter(&f, "c:fresh", NULL);
	assert_counter(&f, "c:max", "9223372036854775807");
	/* a key given twice moves twice, and its total is what overflows */
	const char *k7[] = { "c:b", "c:twice", "c:twice" };
	assert_status(mincr(&f, &x, k7, 3, 5000000000000000000LL, 0), STATE_ERROR);
	assert_reason(&x, "key 2: counter overflow");
	assert_counter(&f, "c:b", "0");
	assert_counter(&f, "c:twice", NULL);
	/* a counter is in the form INCRBY takes: "007" and "-0" are not */
	assert_status(sets(&f, &x, "c:zeros", "007", 0), STATE_OK);
	assert_status(sets(&f, &x, "c:minus0", "-0", 0), STATE_OK);
	const char *k8[] = { "c:b", "c:zeros" }, *k9[] = { "c:minus0" };
	assert_status(mincr(&f, &x, k8, 2, 1, 0), STATE_ERROR);
	assert_reason(&x, "key 1: value is not a counter");
	assert_status(mincr(&f, &x, k9, 1, 1, 0), STATE_ERROR);
	assert_status(incr(&f, &x, "c:zeros", 1, 0), STATE_ERROR);
	assert_reason(&x, "value is not a counter");
	assert_counter(&f, "c:b", "0");
	assert_counter(&f, "c:zeros", "007");
	/* bad requests fail whole, with the index of the bad key */
	const char *k6[] = { "c:a", "bad\nkey" };
	assert_status(mincr(&f, &x, k6, 2, 1, 0), STATE_ERROR);
	assert_reason(&x, "key 1:");
	assert_status(mincr(&f, &x, k3, 0, 1, 0), STATE_ERROR);
	assert_reason(&x, "key count out of range");
	assert_status(mincr(&f, &x, k3, 2, 1, -1), STATE_ERROR);
	assert_reason(&x, "expiry out of range");
	assert_counter(&f, "c:a", "9");
	/* the most keys at once, and one more */
	char **many = xcalloc(STATE_MGET_MAX + 1, sizeof(*many));
	for (size_t i = 0; i <= STATE_MGET_MAX; i++)
		many[i] = xasprintf("c:many:%zu", i);
	assert_status(mincr(&f, &x, (const char *const *)many, STATE_MGET_MAX + 1, 1, 0), STATE_ERROR);
	assert_status(mincr(&f, &x, (const char *const *)many, STATE_MGET_MAX, 2, 0), STATE_OK);
	assert_status(mget(&f, &x, (const char *const *)many, STATE_MGET_MAX), STATE_OK);
	for (size_t i = 0; i < STATE_MGET_MAX; i++)
		assert_value(&x, i, STATE_OK, "2", 1);
	assert_counter(&f, many[STATE_MGET_MAX], NULL);
	for (size_t i = 0; i <= STATE_MGET_MAX; i++)
		free(many[i]);
	free(many);
	res_free(&x);
	fx_close(&f);
}
BOTH(mincrs)

/* An entry LMDB cannot decode fails the whole mget. */
static void test_lmdb_mget_malformed(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, STATE_BACKEND_LMDB, NULL);
	assert_status(sets(&f, &x, "ok", "1", 0), STATE_OK);
	char path[300], prefix[32];
	snprintf(path, sizeof(path), "%s", f.lmdb_path);
	snprintf(prefix, sizeof(prefix), "%s", f.prefix);
	fx_close(&f);
	/* no store has the file open now */
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	char bad[64];
	snprintf(bad, sizeof(bad), "%sbad", prefix);
	MDB_val k = { strlen(bad), bad }, v = { 3, "abc" };     /* shorter than its expiry */
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_open(env, path, MDB_NOSUBDIR, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
	assert_int_equal(mdb_dbi_open(txn, NULL, 0, &dbi), 0);
	assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	char *extra = xasprintf("lmdb_path = %s\nkey_prefix = %s\n", path, prefix);
	fx_open(&f, s, STATE_BACKEND_LMDB, extra);
	free(extra);
	const char *keys[] = { "ok", "missing", "bad" };
	assert_status(mget(&f, &x, keys, 3), STATE_ERROR);
	assert_reason(&x, "lmdb: malformed entry (key 2)");
	assert_int_equal(x.nvals, 0);
	assert_status(mget(&f, &x, keys, 2), STATE_OK);
	assert_value(&x, 0, STATE_OK, "1", 1);
	assert_value(&x, 1, STATE_NOTFOUND, NULL, 0);
	res_free(&x);
	fx_close(&f);
}

/* One command to the suite's server, in db 3 as the stores use it; the
 * test fails unless it is accepted. */
static void redis_raw(struct suite *s, int argc, const char *const *argv, const size_t *len)
{
	char *buf = NULL;
	size_t blen = 0;
	FILE *m = open_memstream(&buf, &blen);
	fprintf(m, "*2\r\n$4\r\nAUTH\r\n$%zu\r\n%s\r\n", strlen(REDIS_PASSWORD), REDIS_PASSWORD);
	fprintf(m, "*2\r\n$6\r\nSELECT\r\n$1\r\n3\r\n");
	fprintf(m, "*%d\r\n", argc);
	for (int i = 0; i < argc; i++) {
		fprintf(m, "$%zu\r\n", len[i]);
		fwrite(argv[i], 1, len[i], m);
		fputs("\r\n", m);
	}
	fclose(m);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { 2, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(write(fd, buf, blen), (ssize_t)blen);
	free(buf);
	/* three one-line answers */
	char in[256];
	size_t n = 0;
	int lines = 0;
	while (lines < 3 && n < sizeof(in) - 1) {
		ssize_t r = read(fd, in + n, sizeof(in) - 1 - n);
		assert_true(r > 0);
		for (ssize_t i = 0; i < r; i++)
			lines += in[n + (size_t)i] == '\n';
		n += (size_t)r;
	}
	in[n] = '\0';
	close(fd);
	if (strchr(in, '-'))
		fail_msg("redis refused: %s", in);
}

/* Redis: a stored value too long for the store fails the mget; Redis
 * stopped and frozen fail it as they fail a get. */
static void test_redis_mget(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, STATE_BACKEND_REDIS, NULL);
	assert_status(sets(&f, &x, "k", "v", 0), STATE_OK);
	char key[64];
	snprintf(key, sizeof(key), "%shuge", f.prefix);
	char *huge = xmalloc(STATE_VALUE_MAX + 1);
	memset(huge, 'h', STATE_VALUE_MAX + 1);
	const char *argv[] = { "SET", key, huge };
	size_t len[] = { 3, strlen(key), STATE_VALUE_MAX + 1 };
	redis_raw(s, 3, argv, len);
	free(huge);
	const char *keys[] = { "k", "nothing", "huge" };
	assert_status(mget(&f, &x, keys, 3), STATE_ERROR);
	assert_reason(&x, "redis: value too long (4097 bytes) for key 2");
	assert_status(mget(&f, &x, keys, 2), STATE_OK);
	assert_value(&x, 0, STATE_OK, "v", 1);
	assert_value(&x, 1, STATE_NOTFOUND, NULL, 0);

	/* stopped: the first mget notices, the next ones fail at once */
	stop_redis(s);
	mget(&f, &x, keys, 2);
	assert_status(&x, STATE_ERROR);
	assert_true(x.elapsed_ns < 1000000000LL);
	assert_int_equal(strncmp(x.reason, "redis: ", 7), 0);
	for (int i = 0; i < 5; i++) {
		mget(&f, &x, keys, 2);
		assert_status(&x, STATE_ERROR);
		assert_true(x.elapsed_ns < 100000000LL);
		assert_reason(&x, "unavailable");
		run_for(&f, 50);
	}
	start_redis(s, true);
	wait_up(&f, 15000);
	/* the server came back empty (no persistence) */
	assert_status(sets(&f, &x, "k", "back", 0), STATE_OK);
	mget(&f, &x, keys, 2);
	assert_status(&x, STATE_OK);
	assert_value(&x, 0, STATE_OK, "back", 4);

	/* frozen: the deadline ends the wait, of the mget and of a get
	 * behind it */
	kill(s->redis, SIGSTOP);
	struct res y = { 0 };
	res_begin(&x);
	state_mget(f.st, keys, 2, res_cb, &x);
	x.in_call = false;
	get(&f, &y, "k");
	assert_status(&y, STATE_ERROR);
	assert_int_equal(x.calls, 1);
	assert_status(&x, STATE_ERROR);
	assert_reason(&x, "no answer within 500 ms");
	assert_int_equal(x.nvals, 0);
	kill(s->redis, SIGCONT);
	wait_up(&f, 15000);
	mget(&f, &x, keys, 2);
	assert_status(&x, STATE_OK);
	assert_value(&x, 0, STATE_OK, "back", 4);
	res_free(&x);
	res_free(&y);
	fx_close(&f);
}

/* ---- Redis failures ------------------------------------------------------ */

static int count_in_log(struct suite *s, off_t from, const char *needle)
{
	FILE *fp = fopen(s->logpath, "r");
	assert_non_null(fp);
	fseeko(fp, from, SEEK_SET);
	char line[4096];
	int n = 0;
	while (fgets(line, sizeof(line), fp))
		n += strstr(line, needle) != NULL;
	fclose(fp);
	return n;
}

static off_t log_size(struct suite *s)
{
	struct stat sb;
	return stat(s->logpath, &sb) == 0 ? sb.st_size : 0;
}

static void test_redis_down_and_back(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	off_t mark = log_size(s);
	fx_open(&f, s, STATE_BACKEND_REDIS, NULL);
	assert_status(sets(&f, &x, "k", "v", 0), STATE_OK);
	stop_redis(s);
	/* the first operation notices, the next ones fail at once */
	get(&f, &x, "k");
	assert_status(&x, STATE_ERROR);
	assert_true(x.elapsed_ns < 1000000000LL);
	assert_int_equal(strncmp(x.reason, "redis: ", 7), 0);
	for (int i = 0; i < 20; i++) {
		take(&f, &x, "b", 1, 1, 1);
		assert_status(&x, STATE_ERROR);
		assert_true(x.elapsed_ns < 100000000LL);
		assert_non_null(strstr(x.reason, "unavailable"));
		run_for(&f, 50);            /* reconnect attempts go on meanwhile */
	}
	char why[256];
	assert_false(state_up(f.st, why, sizeof(why)));
	assert_true(*why);
	/* logged once, not per operation or per attempt */
	assert_int_equal(count_in_log(s, mark, "\"state_redis_down\""), 1);
	start_redis(s, true);
	wait_up(&f, 15000);
	assert_status(sets(&f, &x, "k", "back", 0), STATE_OK);
	assert_string_equal(get(&f, &x, "k")->value, "back");
	assert_int_equal(take(&f, &x, "b", 1, 1, 1)->allowed, true);
	assert_int_equal(count_in_log(s, mark, "\"state_redis_up\""), 2);
	assert_int_equal(count_in_log(s, mark, "\"state_redis_down\""), 1);
	res_free(&x);
	fx_close(&f);
}

/* A server that accepts but does not answer: the deadline ends each wait. */
static void test_redis_frozen(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, STATE_BACKEND_REDIS, NULL);
	assert_status(sets(&f, &x, "k", "v", 0), STATE_OK);
	kill(s->redis, SIGSTOP);
	/* several in flight: all fail together at the deadline */
	struct res y = { 0 };
	res_begin(&y);
	state_incr(f.st, "n", 1, 0, res_cb, &y);
	get(&f, &x, "k");
	assert_status(&x, STATE_ERROR);
	assert_non_null(strstr(x.reason, "no answer within 500 ms"));
	assert_true(x.elapsed_ns >= 400000000LL && x.elapsed_ns < 2000000000LL);
	assert_int_equal(y.calls, 1);
	assert_status(&y, STATE_ERROR);
	get(&f, &x, "k");
	assert_status(&x, STATE_ERROR);
	assert_true(x.elapsed_ns < 100000000LL);
	run_for(&f, 300);
	kill(s->redis, SIGCONT);
	wait_up(&f, 15000);
	assert_string_equal(get(&f, &x, "k")->value, "v");
	res_free(&x);
	res_free(&y);
	fx_close(&f);
}

/* A loop that stalls past redis_timeout (a long synchronous pass) is no
 * Redis timeout: the answer that arrived meanwhile is taken, and the
 * connection stays. */
static void test_redis_stalled_loop(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, STATE_BACKEND_REDIS, NULL);
	assert_status(sets(&f, &x, "k", "v", 0), STATE_OK);
	res_begin(&x);
	assert_non_null(state_get(f.st, "k", res_cb, &x));
	usleep(800 * 1000);                     /* the loop does not run: 800 ms > redis_timeout */
	res_wait(&f, &x);
	assert_status(&x, STATE_OK);
	assert_string_equal(x.value, "v");
	assert_true(state_up(f.st, NULL, 0));
	assert_string_equal(get(&f, &x, "k")->value, "v");
	res_free(&x);
	fx_close(&f);
}

static void test_redis_auth_and_unix(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	/* wrong password: the store opens, operations fail, the reason says why */
	char wrong[300];
	snprintf(wrong, sizeof(wrong), "%s/wrong.pw", s->dir);
	FILE *fp = fopen(wrong, "w");
	fputs("not-the-password\n", fp);
	fclose(fp);
	char *extra = xasprintf("redis_password_file = %s\n", wrong);
	fx_config(&f, s, STATE_BACKEND_REDIS, extra);
	free(extra);
	fx_open_only(&f);
	get(&f, &x, "k");
	assert_status(&x, STATE_ERROR);
	run_for(&f, 200);
	char why[256];
	assert_false(state_up(f.st, why, sizeof(why)));
	assert_non_null(strstr(why, "AUTH failed"));
	fx_close(&f);
	/* no password */
	fx_config(&f, s, STATE_BACKEND_REDIS, "redis_password_file =\n");
	fx_open_only(&f);
	get(&f, &x, "k");
	assert_status(&x, STATE_ERROR);
	assert_non_null(strstr(x.reason, "NOAUTH"));
	fx_close(&f);
	/* an unreadable password file stops start-up */
	fx_config(&f, s, STATE_BACKEND_REDIS, "redis_password_file = /nonexistent/pw\n");
	f.base = event_base_new();
	assert_null(state_open(&f.cfg, f.base, why, sizeof(why)));
	assert_non_null(strstr(why, "/nonexistent/pw"));
	fx_close(&f);
	/* a bad server address too */
	fx_config(&f, s, STATE_BACKEND_REDIS, "redis_server = 127.0.0.1:notaport\n");
	f.base = event_base_new();
	assert_null(state_open(&f.cfg, f.base, why, sizeof(why)));
	fx_close(&f);
	/* nobody listening at open: operations fail, quickly */
	fx_config(&f, s, STATE_BACKEND_REDIS, "redis_server = 127.0.0.1:1\n");
	fx_open_only(&f);
	get(&f, &x, "k");
	assert_status(&x, STATE_ERROR);
	assert_true(x.elapsed_ns < 1000000000LL);
	fx_close(&f);
	/* unix socket, another db */
	extra = xasprintf("redis_server = unix:%s\nredis_db = 5\n", s->sock);
	fx_open(&f, s, STATE_BACKEND_REDIS, extra);
	free(extra);
	assert_status(sets(&f, &x, "u", "unix", 0), STATE_OK);
	assert_string_equal(get(&f, &x, "u")->value, "unix");
	fx_close(&f);
	res_free(&x);
}

/* ---- configuration, LMDB file handling, metrics -------------------------- */

static void test_config(void **state)
{
	struct suite *s = *state;
	struct state_config cfg;
	struct config_error err;
	struct config *c = config_parse_string("t.conf", "[state]\n", &err);
	assert_true(config_bind(c, "state", &state_param_set, &cfg, &err));
	assert_int_equal(cfg.backend, STATE_BACKEND_LMDB);
	assert_string_equal(cfg.lmdb_path, "");
	assert_int_equal(cfg.lmdb_map_size, 256LL << 20);
	assert_int_equal(cfg.redis_timeout, 1000);
	assert_string_equal(cfg.key_prefix, "rampart:");
	assert_string_equal(cfg.redis_server, "127.0.0.1:6379");
	config_release(&state_param_set, &cfg);
	config_free(c);
	c = config_parse_string("t.conf", "[state]\nbackend = memcached\n", &err);
	assert_false(config_bind(c, "state", &state_param_set, &cfg, &err));
	assert_non_null(strstr(err.msg, "t.conf:2"));
	config_free(c);
	c = config_parse_string("t.conf", "[state]\nkey_prefix = 0123456789012345678901234567890123\n", &err);
	assert_false(config_bind(c, "state", &state_param_set, &cfg, &err));
	config_free(c);
	/* the default file lives in state_dir */
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/statedir/sub", s->dir);
	c = config_parse_string("t.conf", "[state]\n", &err);
	assert_true(config_bind(c, "state", &state_param_set, &cfg, &err));
	cfg.state_dir = dir;
	struct event_base *base = event_base_new();
	char why[256];
	struct state *st = state_open(&cfg, base, why, sizeof(why));
	assert_non_null(st);
	state_close(st);
	char path[400];
	snprintf(path, sizeof(path), "%s/state.lmdb", dir);
	assert_int_equal(access(path, R_OK), 0);
	/* no path at all */
	cfg.state_dir = NULL;
	assert_null(state_open(&cfg, base, why, sizeof(why)));
	event_base_free(base);
	config_release(&state_param_set, &cfg);
	config_free(c);
}

static void test_lmdb_corrupt_moved_aside(void **state)
{
	struct suite *s = *state;
	struct fx f;
	struct res x = { 0 };
	fx_config(&f, s, STATE_BACKEND_LMDB, NULL);
	FILE *fp = fopen(f.lmdb_path, "w");
	for (int i = 0; i < 2000; i++)
		fputs("this is not an LMDB file. ", fp);
	fclose(fp);
	fx_open_only(&f);
	assert_status(sets(&f, &x, "k", "v", 0), STATE_OK);
	assert_string_equal(get(&f, &x, "k")->value, "v");
	char pattern[400];
	snprintf(pattern, sizeof(pattern), "%s.corrupt-*", f.lmdb_path);
	glob_t g;
	assert_int_equal(glob(pattern, 0, NULL, &g), 0);
	assert_int_equal(g.gl_pathc, 1);
	globfree(&g);
	res_free(&x);
	fx_close(&f);
}

static void metrics_counted(struct suite *s, int backend)
{
	struct fx f;
	struct res x = { 0 };
	fx_config(&f, s, backend, NULL);
	f.metrics = metrics_new("mx", "mx");
	f.cfg.metrics = f.metrics;
	fx_open_only(&f);
	wait_up(&f, 5000);
	get(&f, &x, "nothing");
	get(&f, &x, "nothing");
	get(&f, &x, "");
	struct metric *ops = metrics_counter(f.metrics, "rampart_state_operations_total", NULL);
	struct metric *errs = metrics_counter(f.metrics, "rampart_state_errors_total", NULL);
	const char *labels = backend == STATE_BACKEND_REDIS ? "backend=\"redis\",op=\"get\"" : "backend=\"lmdb\",op=\"get\"";
	assert_true(metric_get(ops, labels) == 3);
	assert_true(metric_get(errs, labels) == 1);
	if (backend == STATE_BACKEND_REDIS)
		assert_true(metric_get(metrics_gauge(f.metrics, "rampart_state_up", NULL), "backend=\"redis\"") == 1);
	res_free(&x);
	fx_close(&f);
}
BOTH(metrics_counted)

/* ---- latency (informational) --------------------------------------------- */

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;
	return x < y ? -1 : x > y;
}

/* Context for the Redis figures: a bare PING round trip over loopback
 * on this host, blocking, no event loop. */
static long long ping_median_ns(struct suite *s, int n)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { 2, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	char b[128];
	const char auth[] = "AUTH " REDIS_PASSWORD "\r\n";
	assert_int_equal(write(fd, auth, sizeof(auth) - 1), (ssize_t)sizeof(auth) - 1);
	assert_true(read(fd, b, sizeof(b)) > 0);
	long long *t = xcalloc((size_t)n, sizeof(long long));
	for (int i = 0; i < n; i++) {
		long long t0 = mono_ns();
		assert_int_equal(write(fd, "PING\r\n", 6), 6);
		assert_int_equal(read(fd, b, sizeof(b)), 7);
		t[i] = mono_ns() - t0;
	}
	close(fd);
	qsort(t, (size_t)n, sizeof(long long), cmp_ll);
	long long m = t[n / 2];
	free(t);
	return m;
}

static void latency(struct suite *s, int backend)
{
	enum { N = 10000 };
	struct fx f;
	struct res x = { 0 };
	fx_open(&f, s, backend, NULL);
	sets(&f, &x, "grey:192.0.2.0/24:sender@example.test:rcpt@example.org", "1700000000000 pass", 0);
	long long *get_ns = xcalloc(N, sizeof(long long)), *take_ns = xcalloc(N, sizeof(long long));
	for (int i = 0; i < N; i++) {
		get(&f, &x, "grey:192.0.2.0/24:sender@example.test:rcpt@example.org");
		assert_status(&x, STATE_OK);
		get_ns[i] = x.elapsed_ns;
	}
	for (int i = 0; i < N; i++) {
		take(&f, &x, "rate:192.0.2.1", 1e6, 1e9, 1);
		assert_true(x.allowed);
		take_ns[i] = x.elapsed_ns;
	}
	qsort(get_ns, N, sizeof(long long), cmp_ll);
	qsort(take_ns, N, sizeof(long long), cmp_ll);
	print_message("latency %-5s get:  median %6.1f us  p99 %7.1f us  (%d ops)\n", state_backend_name(f.st),
		      get_ns[N / 2] / 1000.0, get_ns[N * 99 / 100] / 1000.0, N);
	print_message("latency %-5s take: median %6.1f us  p99 %7.1f us  (%d ops)\n", state_backend_name(f.st),
		      take_ns[N / 2] / 1000.0, take_ns[N * 99 / 100] / 1000.0, N);
	if (backend == STATE_BACKEND_REDIS)
		print_message("latency redis baseline: bare blocking PING round trip median %6.1f us\n",
			      ping_median_ns(s, N) / 1000.0);
	free(get_ns);
	free(take_ns);
	res_free(&x);
	fx_close(&f);
}
BOTH(latency)

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		BOTH_TESTS(basic),
		BOTH_TESTS(expiry),
		cmocka_unit_test(test_lmdb_purge),
		BOTH_TESTS(counters),
		BOTH_TESTS(two_processes),
		BOTH_TESTS(buckets),
		BOTH_TESTS(scans),
		BOTH_TESTS(bounds),
		BOTH_TESTS(contract),
		BOTH_TESTS(metrics_counted),
		BOTH_TESTS(mgets),
		BOTH_TESTS(mget_bounds),
		BOTH_TESTS(mincrs),
		cmocka_unit_test(test_lmdb_mget_malformed),
		cmocka_unit_test(test_redis_mget),
		cmocka_unit_test(test_redis_down_and_back),
		cmocka_unit_test(test_redis_frozen),
		cmocka_unit_test(test_redis_stalled_loop),
		cmocka_unit_test(test_redis_auth_and_unix),
		cmocka_unit_test(test_config),
		cmocka_unit_test(test_lmdb_corrupt_moved_aside),
		BOTH_TESTS(latency),
	};
	return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
