/*
 * test_ratelimit.c — the stateful checks "ratelimit" and "traps" through
 * the chain with an event loop, against both state backends: LMDB in a
 * temporary directory and a private redis-server the suite starts on
 * loopback.
 *
 * ratelimit: a burst then 451 4.7.1 with the time to wait, refill as time
 * passes, canonical keys (case, +subaddress), network keying (IPv4 /24,
 * IPv6 /64, IPv4-mapped), every kind (client, network, sender,
 * sender_domain, login, recipient, client_rcpt), a refused transaction
 * costing nothing, the skips (allow list, authenticated, null sender,
 * sender_spf_pass), bad rules, and the failure modes with Redis stopped
 * or no store (tempfail by default, continue when configured; logged and
 * counted).
 * traps: a trap recipient blocks its client for block_time (550 5.1.1,
 * then 554 5.7.1 at every phase and on new connections), other clients
 * unaffected, expiry, @domain and +subaddress traps, action discard
 * (invisible within the transaction, the message dropped), exempt
 * clients, and the failure modes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "mail/envelope.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/metrics.h"

#define REDIS_PASSWORD "rl-test-pw"

/* ---- the suite: a temporary directory and a redis-server ------------------ */

struct suite {
	char dir[256];
	char pwfile[300];
	int logfd;
	struct tu_redis r;
	bool redis_up;
	int seq;
};

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int suite_setup(void **state)
{
	struct suite *s = xcalloc(1, sizeof(*s));
	if (tu_mkdtemp(s->dir, sizeof(s->dir), "ratelimit") != 0)
		return -1;
	snprintf(s->pwfile, sizeof(s->pwfile), "%s/redis.pw", s->dir);
	FILE *f = fopen(s->pwfile, "w");
	if (!f)
		return -1;
	fputs(REDIS_PASSWORD "\n", f);
	fclose(f);
	char logpath[300];
	snprintf(logpath, sizeof(logpath), "%s/log", s->dir);
	s->logfd = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	log_init("mx", "mx");
	log_set_fd(s->logfd);
	if (!tu_redis_start(&s->r, s->dir, REDIS_PASSWORD, false)) {
		fprintf(stderr, "redis-server did not start (is the Debian package redis-server installed?)\n");
		return -1;
	}
	s->redis_up = true;
	*state = s;
	return 0;
}

static int suite_teardown(void **state)
{
	struct suite *s = *state;
	if (s->redis_up)
		tu_redis_stop(&s->r);
	log_set_fd(2);
	close(s->logfd);
	tu_rmtree(s->dir);
	free(s);
	return 0;
}

static void redis_stop(struct suite *s)
{
	tu_redis_stop(&s->r);
	s->redis_up = false;
}

static void redis_restart(struct suite *s)
{
	if (!tu_redis_start(&s->r, s->dir, REDIS_PASSWORD, true))
		fail_msg("redis-server did not restart");
	s->redis_up = true;
}

/* ---- fixture: one store, one chain, one session --------------------------- */

struct fx {
	struct suite *s;
	int backend;
	struct event_base *base;
	struct metrics *metrics;
	struct state_config scfg;
	bool bound;
	struct state *st;
	struct config *cfg;
	struct chain *chain;
	struct envelope *e;
	struct check_ctx ctx;
	struct check_env env;
	int ndone;
	struct verdict v;
};

static void fx_open(struct fx *f, struct suite *s, int backend)
{
	memset(f, 0, sizeof(*f));
	f->s = s;
	f->backend = backend;
	s->seq++;
	char *text = xasprintf("[state]\nbackend = %s\nlmdb_path = %s/t%d.lmdb\nredis_server = 127.0.0.1:%d\n"
			       "redis_password_file = %s\nredis_db = 2\nredis_timeout = 500ms\nkey_prefix = t%d:\n",
			       backend == STATE_BACKEND_REDIS ? "redis" : "lmdb", s->dir, s->seq, s->r.port, s->pwfile,
			       s->seq);
	struct config_error err;
	struct config *c = config_parse_string("state.conf", text, &err);
	if (!c)
		fail_msg("%s", err.msg);
	if (!config_bind(c, "state", &state_param_set, &f->scfg, &err))
		fail_msg("%s", err.msg);
	f->bound = true;
	config_free(c);
	free(text);
	f->scfg.state_dir = s->dir;
	f->base = event_base_new();
	f->metrics = metrics_new("mx", "mx");
	char why[256];
	f->st = state_open(&f->scfg, f->base, why, sizeof(why));
	if (!f->st)
		fail_msg("state_open: %s", why);
	long long deadline = mono_ms() + 5000;
	while (!state_up(f->st, why, sizeof(why)) && mono_ms() < deadline)
		event_base_loop(f->base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
	if (!state_up(f->st, why, sizeof(why)))
		fail_msg("store not up: %s", why);
	f->env.stage = "mx";
	f->env.instance = "mx";
	f->env.hostname = "mx.example.test";
	f->env.metrics = f->metrics;
	f->env.base = f->base;
	f->env.state = f->st;
	f->e = envelope_new();
	f->ctx.sid = "S1";
	f->ctx.client = &f->e->client;
	f->ctx.pool = f->e->pool;
}

static void fx_close(struct fx *f)
{
	chain_free(f->chain);
	config_free(f->cfg);
	envelope_free(f->e);
	if (f->st)
		state_close(f->st);
	metrics_free(f->metrics);
	event_base_free(f->base);
	if (f->bound)
		config_release(&state_param_set, &f->scfg);
	memset(f, 0, sizeof(*f));
}

/* The chain of checks (space-separated names) with a configuration. */
static bool try_use(struct fx *f, const char *checks, const char *conf, char *why, size_t whylen)
{
	struct config_error err = { "" };
	chain_free(f->chain);
	f->chain = NULL;
	config_free(f->cfg);
	f->cfg = config_parse_string("rampart.conf", conf, &err);
	if (!f->cfg)
		fail_msg("config: %s", err.msg);
	char buf[200], *words[8], *save = NULL;
	size_t n = 0;
	snprintf(buf, sizeof(buf), "%s", checks);
	for (char *w = strtok_r(buf, " ", &save); w && n < 8; w = strtok_r(NULL, " ", &save))
		words[n++] = w;
	struct strlist names = { n, words };
	f->chain = chain_new(f->cfg, &names, &f->env, why, whylen);
	return f->chain != NULL;
}

static void use(struct fx *f, const char *checks, const char *conf)
{
	char why[512] = "";
	if (!try_use(f, checks, conf, why, sizeof(why)))
		fail_msg("chain: %s", why);
}

static void on_done(void *arg, const struct verdict *v)
{
	struct fx *f = arg;
	f->ndone++;
	f->v = *v;
}

static struct verdict run(struct fx *f, enum check_phase phase)
{
	f->ndone = 0;
	chain_run(f->chain, phase, &f->ctx, on_done, f);
	long long deadline = mono_ms() + 5000;
	while (f->ndone == 0 && mono_ms() < deadline)
		event_base_loop(f->base, EVLOOP_ONCE);
	assert_int_equal(f->ndone, 1);
	return f->v;
}

static void run_for(struct fx *f, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	event_base_loopexit(f->base, &tv);
	event_base_dispatch(f->base);
}

/* A session: a new client (CONNECT), a transaction (MAIL), recipients. */
static struct verdict connect_as(struct fx *f, const char *ip)
{
	f->e->client.addr = pool_strdup(f->e->pool, ip);
	f->e->client.login = NULL;
	f->ctx.env = NULL;
	return run(f, PHASE_CONNECT);
}

static struct verdict mail(struct fx *f, const char *sender)
{
	f->e->sender = pool_strdup(f->e->pool, sender);
	f->e->nrcpt = 0;
	f->ctx.env = f->e;
	struct verdict v = run(f, PHASE_MAIL);
	return v;
}

static struct verdict rcpt(struct fx *f, const char *addr)
{
	envelope_add_rcpt(f->e, addr);
	struct verdict v = run(f, PHASE_RCPT);
	if (v.kind == V_REJECT || v.kind == V_TEMPFAIL)
		f->e->nrcpt--;      /* as the server does: a refused recipient is gone */
	return v;
}

/* One message from ip: CONNECT and MAIL; the MAIL verdict. */
static struct verdict message_from(struct fx *f, const char *ip, const char *sender)
{
	struct verdict v = connect_as(f, ip);
	assert_int_equal(v.kind, V_CONTINUE);
	return mail(f, sender);
}

static bool metric_has(struct fx *f, const char *line)
{
	struct buf b = BUF_INIT;
	metrics_render(f->metrics, &b);
	bool ok = strstr(buf_cstr(&b), line) != NULL;
	if (!ok)
		print_message("no '%s' in metrics:\n%s\n", line, buf_cstr(&b));
	buf_free(&b);
	return ok;
}

struct got {
	bool done;
	enum state_status status;
	char value[256];
	double tokens;
};

static void got_cb(void *arg, const struct state_result *r)
{
	struct got *g = arg;
	g->done = true;
	g->status = r->status;
	if (r->status == STATE_OK && r->op == STATE_OP_GET)
		snprintf(g->value, sizeof(g->value), "%.*s", (int)r->vlen, r->value);
	g->tokens = r->tokens;
}

/* The store's entry for key: STATE_OK and its value, or STATE_NOTFOUND. */
static enum state_status store_get(struct fx *f, const char *key, char *value, size_t vlen)
{
	struct got g = { 0 };
	state_get(f->st, key, got_cb, &g);
	while (!g.done)
		event_base_loop(f->base, EVLOOP_ONCE);
	if (value)
		snprintf(value, vlen, "%s", g.value);
	return g.status;
}

/* Tokens in a bucket now (a take of nothing). */
static double store_tokens(struct fx *f, const char *key, double rate, double burst)
{
	struct got g = { 0 };
	state_take(f->st, key, rate, burst, 0, got_cb, &g);
	while (!g.done)
		event_base_loop(f->base, EVLOOP_ONCE);
	assert_int_equal(g.status, STATE_OK);
	return g.tokens;
}

static bool log_has(struct fx *f, const char *what)
{
	char path[300];
	snprintf(path, sizeof(path), "%s/log", f->s->dir);
	FILE *fp = fopen(path, "r");
	if (!fp)
		return false;
	char line[4096];
	bool found = false;
	while (!found && fgets(line, sizeof(line), fp))
		found = strstr(line, what) != NULL;
	fclose(fp);
	return found;
}

static void assert_limited(struct verdict v, const char *text)
{
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.1");
	if (!strstr(v.reason, text))
		fail_msg("reason '%s' lacks '%s'", v.reason, text);
	assert_string_equal(v.check, "ratelimit");
}

/* Seconds in "...; try again in N second(s)". */
static long retry_secs(const struct verdict *v)
{
	const char *p = strstr(v->reason, "try again in ");
	assert_non_null(p);
	return strtol(p + 13, NULL, 10);
}

/* Each test runs once per backend. */
#define BOTH(name) \
	static void name##_lmdb(void **state) { name(*state, STATE_BACKEND_LMDB); } \
	static void name##_redis(void **state) { name(*state, STATE_BACKEND_REDIS); }
#define BOTH_TESTS(name) cmocka_unit_test(name##_lmdb), cmocka_unit_test(name##_redis)

/* ---- ratelimit ------------------------------------------------------------ */

static void burst_then_limited(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:3/1h\n");
	for (int i = 0; i < 3; i++)
		assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	struct verdict v = message_from(&f, "192.0.2.7", "a@example.org");
	assert_limited(v, "Rate limit exceeded for client 192.0.2.7 (3 per 1h); try again in ");
	/* one token comes back every 20 minutes */
	long secs = retry_secs(&v);
	assert_true(secs > 1190 && secs <= 1200);
	/* recipients are not counted by a message rule; another client has its own bucket */
	assert_int_equal(message_from(&f, "192.0.2.8", "a@example.org").kind, V_CONTINUE);
	for (int i = 0; i < 5; i++)
		assert_int_equal(rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* the bucket in the store */
	char val[64];
	assert_int_equal(store_get(&f, "rl:client:192.0.2.7", val, sizeof(val)), STATE_OK);
	assert_true(strtod(val, NULL) < 0.01);
	assert_true(metric_has(&f, "rampart_ratelimit_total{stage=\"mx\",instance=\"mx\",kind=\"client\",result=\"allowed\"} 4\n"));
	assert_true(metric_has(&f, "rampart_ratelimit_total{stage=\"mx\",instance=\"mx\",kind=\"client\",result=\"limited\"} 1\n"));
	assert_true(metric_has(&f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"ratelimit\",verdict=\"tempfail\"} 1\n"));
	assert_true(log_has(&f, "\"event\":\"ratelimit.limited\""));
	fx_close(&f);
}
BOTH(burst_then_limited)

static void refill(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:2/1s\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	struct verdict v = mail(&f, "a@example.org");
	assert_limited(v, "(2 per 1s); try again in 1 second");
	/* 2 per second: after 600 ms one token (1.2) is back, not two */
	run_for(&f, 600);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	/* after a quiet second, the whole burst */
	run_for(&f, 1100);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	fx_close(&f);
}
BOTH(refill)

static void canonical_keys(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:2/1h rcpt:1/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "Alice+news@Example.ORG").kind, V_CONTINUE);
	assert_int_equal(message_from(&f, "192.0.2.9", "alice@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "192.0.2.10", "ALICE+other@EXAMPLE.ORG"),
		       "Rate limit exceeded for sender alice@example.org (2 per 1h)");
	assert_int_equal(store_get(&f, "rl:sender:alice@example.org", NULL, 0), STATE_OK);
	/* another local part is another sender */
	assert_int_equal(mail(&f, "alice2@example.org").kind, V_CONTINUE);
	/* recipients alike, per RCPT; the refusal is that recipient's only */
	assert_int_equal(rcpt(&f, "Bob+a@Example.test").kind, V_CONTINUE);
	struct verdict v = rcpt(&f, "bob@example.test");
	assert_limited(v, "Rate limit exceeded for recipient bob@example.test (1 per 1h)");
	assert_int_equal(rcpt(&f, "carol@example.test").kind, V_CONTINUE);
	assert_int_equal(f.e->nrcpt, 2);
	assert_int_equal(store_get(&f, "rl:recipient:bob@example.test", NULL, 0), STATE_OK);
	fx_close(&f);

	/* another separator, and none */
	fx_open(&f, s, backend);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:1/1h\nsubaddress_separator = -+\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "bob-list@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "Bob+x@example.org"), "sender bob@example.org");
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:1/1h\nsubaddress_separator =\n");
	assert_int_equal(mail(&f, "carl+x@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "carl@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "CARL+X@example.org"), "sender carl+x@example.org");
	fx_close(&f);
}
BOTH(canonical_keys)

static void network_keying(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = network:2/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(message_from(&f, "192.0.2.8", "b@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "192.0.2.200", "c@example.org"),
		       "Rate limit exceeded for network 192.0.2.0/24 (2 per 1h)");
	/* IPv4-mapped IPv6 is the IPv4 client */
	assert_limited(message_from(&f, "::ffff:192.0.2.9", "c@example.org"), "network 192.0.2.0/24");
	assert_int_equal(message_from(&f, "192.0.3.1", "c@example.org").kind, V_CONTINUE);
	/* IPv6 by /64 */
	assert_int_equal(message_from(&f, "2001:db8:1:2::1", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(message_from(&f, "2001:DB8:1:2:ffff::9", "a@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "2001:db8:1:2:1:2:3:4", "a@example.org"), "network 2001:db8:1:2::/64");
	assert_int_equal(message_from(&f, "2001:db8:1:3::1", "a@example.org").kind, V_CONTINUE);
	/* other prefixes */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = network:1/1h\nipv4_prefix = 16\nipv6_prefix = 48\n");
	assert_int_equal(message_from(&f, "198.51.1.1", "a@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "198.51.200.1", "a@example.org"), "network 198.51.0.0/16");
	assert_int_equal(message_from(&f, "2001:db8:5:1::1", "a@example.org").kind, V_CONTINUE);
	assert_limited(message_from(&f, "2001:db8:5:ff::1", "a@example.org"), "network 2001:db8:5::/48");
	fx_close(&f);
}
BOTH(network_keying)

static void each_kind(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	/* sender_domain: any sender of the domain; the null sender is not counted */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender_domain:2/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@Example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "b@example.ORG.").kind, V_CONTINUE);
	assert_limited(mail(&f, "c@example.org"), "Rate limit exceeded for sender_domain example.org (2 per 1h)");
	assert_int_equal(mail(&f, "c@example.net").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "").kind, V_CONTINUE);

	/* login: only authenticated clients, whatever the other rules */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = login:2/1h client:1/1h\n");
	connect_as(&f, "192.0.2.20");
	f.e->client.login = pool_strdup(f.e->pool, "Carol");
	assert_int_equal(mail(&f, "carol@example.test").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "carol@example.test").kind, V_CONTINUE);
	assert_limited(mail(&f, "carol@example.test"), "Rate limit exceeded for login carol (2 per 1h)");
	f.e->client.login = pool_strdup(f.e->pool, "dave");
	assert_int_equal(mail(&f, "dave@example.test").kind, V_CONTINUE);
	/* the same address unauthenticated: the client rule, not login */
	f.e->client.login = NULL;
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "x@example.org"), "client 192.0.2.20");

	/* client_rcpt: recipients per client, across transactions */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client_rcpt:3/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.30", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "a@example.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "b@example.test").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "c@example.test").kind, V_CONTINUE);
	assert_limited(rcpt(&f, "d@example.test"), "Rate limit exceeded for client_rcpt 192.0.2.30 (3 per 1h)");
	assert_int_equal(message_from(&f, "192.0.2.31", "a@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "d@example.test").kind, V_CONTINUE);
	assert_true(metric_has(&f, "kind=\"client_rcpt\",result=\"limited\"} 1\n"));
	assert_true(metric_has(&f, "kind=\"login\",result=\"allowed\"} 3\n"));
	assert_true(metric_has(&f, "kind=\"sender_domain\",result=\"limited\"} 1\n"));
	fx_close(&f);
}
BOTH(each_kind)

/* A transaction one bucket refuses takes nothing from the others. */
static void refused_costs_nothing(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:5/1h sender:1/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	for (int i = 0; i < 3; i++)
		assert_limited(mail(&f, "a@example.org"), "sender a@example.org (1 per 1h)");
	double t = store_tokens(&f, "rl:client:192.0.2.7", 5.0 / 3600, 5);
	assert_true(t > 3.99 && t < 4.01);
	for (int i = 0; i < 4; i++) {
		char snd[64];
		snprintf(snd, sizeof(snd), "s%d@example.org", i);
		assert_int_equal(mail(&f, snd).kind, V_CONTINUE);
	}
	/* both empty: the longest wait is told (the sender's hour, not the client's 12 minutes) */
	struct verdict v = mail(&f, "a@example.org");
	assert_limited(v, "sender a@example.org");
	assert_true(retry_secs(&v) > 3500);
	assert_limited(mail(&f, "new@example.org"), "client 192.0.2.7 (5 per 1h); try again in 72");
	fx_close(&f);
}
BOTH(refused_costs_nothing)

static void skips(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:1/1h rcpt:1/1h\n");
	/* the local allow list */
	connect_as(&f, "192.0.2.7");
	f.ctx.client_allowed = true;
	for (int i = 0; i < 3; i++) {
		assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
		assert_int_equal(rcpt(&f, "bob@example.test").kind, V_CONTINUE);
	}
	/* connect clears the allow-list fact: the same client is limited now */
	connect_as(&f, "192.0.2.7");
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	/* authenticated: skipped ... */
	connect_as(&f, "192.0.2.7");
	f.e->client.login = pool_strdup(f.e->pool, "alice");
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "carol@example.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "carol@example.test").kind, V_CONTINUE);
	/* ... unless authenticated = yes */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:1/1h rcpt:1/1h\nauthenticated = yes\n");
	assert_limited(mail(&f, "a@example.org"), "client 192.0.2.7");
	/* no client address: nothing to key on */
	connect_as(&f, "");
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	/* no rules: the check does nothing */
	use(&f, "ratelimit", "");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);

	/* sender_spf_pass: only senders whose domain passed SPF are counted */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = sender:1/1h sender_domain:1/1h\nsender_spf_pass = yes\n");
	connect_as(&f, "192.0.2.40");
	f.ctx.auth.spf = AUTH_SPF_FAIL;
	snprintf(f.ctx.auth.spf_domain, sizeof(f.ctx.auth.spf_domain), "victim.example");
	for (int i = 0; i < 3; i++)
		assert_int_equal(mail(&f, "ceo@victim.example").kind, V_CONTINUE);
	f.ctx.auth.spf = AUTH_SPF_PASS;
	snprintf(f.ctx.auth.spf_domain, sizeof(f.ctx.auth.spf_domain), "Victim.Example");
	assert_int_equal(mail(&f, "ceo@victim.example").kind, V_CONTINUE);
	assert_limited(mail(&f, "ceo@victim.example"), "victim.example");
	fx_close(&f);
}
BOTH(skips)

static void bad_rules(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	char why[512];
	const char *bad[][2] = {
		{ "rules = client:100\n", "expected KIND:COUNT/PERIOD" },
		{ "rules = host:1/1h\n", "unknown kind 'host'" },
		{ "rules = client:0/1h\n", "COUNT must be" },
		{ "rules = client:x/1h\n", "COUNT must be" },
		{ "rules = client:10/1x\n", "PERIOD" },
		{ "rules = client:10/10ms\n", "PERIOD" },
		{ "rules = client:1/1h client:10/1d\n", "a second rule for client" },
		{ "rules = rcpt:1/1h recipient:2/1h\n", "a second rule for recipient" },
		{ "ipv4_prefix = 33\n", "ipv4_prefix" },
		{ "failure_mode = pass\n", "failure_mode" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char conf[256];
		snprintf(conf, sizeof(conf), "[check.ratelimit]\n%s", bad[i][0]);
		why[0] = '\0';
		assert_false(try_use(&f, "ratelimit", conf, why, sizeof(why)));
		if (!strstr(why, bad[i][1]))
			fail_msg("'%s': '%s' lacks '%s'", bad[i][0], why, bad[i][1]);
	}
	/* good ones, every kind and period form */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:100/1h, network:300/1h sender:200/1d "
	    "sender_domain:1000/1d rcpt:50/1m login:10/90s client_rcpt:5/500ms\n");
	fx_close(&f);
}
BOTH(bad_rules)

/* ---- the store fails ------------------------------------------------------ */

static void ratelimit_store_down(void **state)
{
	struct suite *s = *state;
	struct fx f;
	fx_open(&f, s, STATE_BACKEND_REDIS);
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:5/1h rcpt:5/1h\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "a@example.org").kind, V_CONTINUE);
	redis_stop(s);
	/* the default: tempfail, never a silent pass */
	struct verdict v = mail(&f, "a@example.org");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.3.0");
	assert_non_null(strstr(v.reason, "Temporary failure checking rate limits"));
	v = rcpt(&f, "bob@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_true(metric_has(&f, "kind=\"client\",result=\"error\"} 1\n"));
	assert_true(metric_has(&f, "kind=\"recipient\",result=\"error\"} 1\n"));
	assert_true(log_has(&f, "\"event\":\"ratelimit.error\""));
	assert_true(log_has(&f, "\"failure_mode\":\"tempfail\""));
	/* continue: the mail goes on, still logged and counted */
	use(&f, "ratelimit", "[check.ratelimit]\nrules = client:5/1h sender:5/1h\nfailure_mode = continue\n");
	v = mail(&f, "a@example.org");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_true(metric_has(&f, "kind=\"client\",result=\"error\"} 2\n"));
	assert_true(metric_has(&f, "kind=\"sender\",result=\"error\"} 1\n"));
	assert_true(log_has(&f, "\"failure_mode\":\"continue\""));
	redis_restart(s);
	/* back: the store reconnects by itself */
	long long deadline = mono_ms() + 10000;
	char why[256];
	while (!state_up(f.st, why, sizeof(why)) && mono_ms() < deadline)
		run_for(&f, 50);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_true(metric_has(&f, "kind=\"client\",result=\"allowed\"} 2\n"));
	fx_close(&f);
}

/* No store at all (a stage that failed to give one): the failure mode. */
static void no_store(void **state)
{
	struct fx f;
	fx_open(&f, *state, STATE_BACKEND_LMDB);
	f.env.state = NULL;
	use(&f, "ratelimit traps", "[check.ratelimit]\nrules = client:5/1h\n[check.traps]\naddresses = trap@example.test\n");
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_TEMPFAIL);
	assert_int_equal(f.v.code, 421);
	struct verdict v = mail(&f, "a@example.org");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	use(&f, "ratelimit traps", "[check.ratelimit]\nrules = client:5/1h\nfailure_mode = continue\n"
	    "[check.traps]\naddresses = trap@example.test\nfailure_mode = continue\n");
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "a@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "trap@example.test").kind, V_REJECT);
	/* connect (both chains), mail and the trap recipient */
	assert_true(metric_has(&f, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"error\"} 4\n"));
	assert_true(metric_has(&f, "rampart_ratelimit_total{stage=\"mx\",instance=\"mx\",kind=\"client\",result=\"error\"} 2\n"));
	assert_true(log_has(&f, "no state store"));
	fx_close(&f);
}

/* ---- traps ---------------------------------------------------------------- */

static void trap_blocks_client(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test, @spamtrap.example.test\nblock_time = 1s\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* the trap looks like any unknown address */
	struct verdict v = rcpt(&f, "Trap@Example.TEST");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_string_equal(v.enh, "5.1.1");
	assert_string_equal(v.reason, "<Trap@Example.TEST>: Recipient address rejected: User unknown");
	char val[128];
	assert_int_equal(store_get(&f, "trap:192.0.2.7", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "Trap@Example.TEST");
	/* blocked from now on: the rest of the session ... */
	v = rcpt(&f, "bob@example.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	assert_string_equal(v.enh, "5.7.1");
	assert_string_equal(v.reason, "Service unavailable; client [192.0.2.7] blocked for sending to a spam trap");
	assert_int_equal(run(&f, PHASE_DATA).kind, V_REJECT);
	assert_int_equal(run(&f, PHASE_HELO).kind, V_REJECT);
	assert_int_equal(mail(&f, "x@example.org").kind, V_REJECT);
	/* ... and new connections */
	v = connect_as(&f, "192.0.2.7");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	/* other clients (even next door) are not */
	assert_int_equal(message_from(&f, "192.0.2.8", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* a whole trap domain, and a subaddress of a trap */
	assert_int_equal(rcpt(&f, "anyone@SpamTrap.example.test").kind, V_REJECT);
	assert_int_equal(connect_as(&f, "192.0.2.8").kind, V_REJECT);
	assert_int_equal(message_from(&f, "192.0.2.9", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "trap+tag@example.test").kind, V_REJECT);
	assert_int_equal(connect_as(&f, "192.0.2.9").kind, V_REJECT);
	/* not traps */
	assert_int_equal(message_from(&f, "192.0.2.10", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "trapper@example.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "trap@sub.spamtrap.example.test").kind, V_CONTINUE);
	/* the block expires after block_time */
	run_for(&f, 1200);
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	assert_true(metric_has(&f, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"hit\"} 3\n"));
	assert_true(metric_has(&f, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"blocked\"} 7\n"));
	assert_true(log_has(&f, "\"event\":\"traps.hit\""));
	fx_close(&f);
}
BOTH(trap_blocks_client)

static void trap_discard(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\naction = discard\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	/* accepted, as if nothing happened, for the rest of the transaction */
	struct verdict v = rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_DISCARD);
	assert_int_equal(f.e->nrcpt, 2);
	assert_int_equal(rcpt(&f, "bob@example.test").kind, V_CONTINUE);
	assert_int_equal(run(&f, PHASE_DATA).kind, V_CONTINUE);
	/* the message is dropped whole */
	v = run(&f, PHASE_MESSAGE);
	assert_int_equal(v.kind, V_DISCARD);
	assert_non_null(strstr(v.reason, "spam trap <trap@example.test>"));
	/* the next transaction is refused */
	v = mail(&f, "x@example.org");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 554);
	/* mail without a trap is not discarded */
	assert_int_equal(message_from(&f, "192.0.2.8", "x@example.org").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(run(&f, PHASE_MESSAGE).kind, V_CONTINUE);
	fx_close(&f);
}
BOTH(trap_discard)

static void trap_exempt(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\naction = discard\n");
	/* allowed and authenticated clients: refused recipient, no block, no discard */
	connect_as(&f, "192.0.2.7");
	f.ctx.client_allowed = true;
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	struct verdict v = rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	f.e->client.login = pool_strdup(f.e->pool, "alice");
	assert_int_equal(mail(&f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(&f, "trap@example.test").kind, V_REJECT);
	f.e->client.login = NULL;
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	assert_int_equal(store_get(&f, "trap:192.0.2.7", NULL, 0), STATE_NOTFOUND);
	assert_true(metric_has(&f, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"exempt\"} 2\n"));
	/* bad entries */
	char why[512] = "";
	assert_false(try_use(&f, "traps", "[check.traps]\naddresses = trap\n", why, sizeof(why)));
	assert_non_null(strstr(why, "expected local@domain or @domain"));
	assert_false(try_use(&f, "traps", "[check.traps]\naddresses = trap@\n", why, sizeof(why)));
	assert_false(try_use(&f, "traps", "[check.traps]\nblock_time = 10ms\n", why, sizeof(why)));
	fx_close(&f);
}
BOTH(trap_exempt)

static void traps_store_down(void **state)
{
	struct suite *s = *state;
	struct fx f;
	fx_open(&f, s, STATE_BACKEND_REDIS);
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\n");
	assert_int_equal(message_from(&f, "192.0.2.7", "x@example.org").kind, V_CONTINUE);
	redis_stop(s);
	/* tempfail: 421 at the greeting, 451 later, the trap recipient too */
	struct verdict v = rcpt(&f, "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.3.0");
	v = rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	v = connect_as(&f, "192.0.2.7");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 421);
	/* continue: not blocked, the trap still refused */
	use(&f, "traps", "[check.traps]\naddresses = trap@example.test\nfailure_mode = continue\n");
	assert_int_equal(connect_as(&f, "192.0.2.7").kind, V_CONTINUE);
	assert_int_equal(mail(&f, "x@example.org").kind, V_CONTINUE);
	v = rcpt(&f, "trap@example.test");
	assert_int_equal(v.kind, V_REJECT);
	assert_int_equal(v.code, 550);
	assert_true(metric_has(&f, "rampart_traps_total{stage=\"mx\",instance=\"mx\",result=\"error\"} 6\n"));
	assert_true(log_has(&f, "\"event\":\"traps.error\""));
	redis_restart(s);
	fx_close(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		BOTH_TESTS(burst_then_limited),
		BOTH_TESTS(refill),
		BOTH_TESTS(canonical_keys),
		BOTH_TESTS(network_keying),
		BOTH_TESTS(each_kind),
		BOTH_TESTS(refused_costs_nothing),
		BOTH_TESTS(skips),
		BOTH_TESTS(bad_rules),
		cmocka_unit_test(ratelimit_store_down),
		cmocka_unit_test(no_store),
		BOTH_TESTS(trap_blocks_client),
		BOTH_TESTS(trap_discard),
		BOTH_TESTS(trap_exempt),
		cmocka_unit_test(traps_store_down),
	};
	return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
