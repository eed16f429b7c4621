/*
 * test_greylist.c — the greylisting check through the chain with an
 * event loop, against both state backends: LMDB in a temporary directory
 * and a private redis-server the suite starts on loopback.
 *
 * A new triplet gets 451 4.7.1, a retry before the delay too, a retry
 * after it passes and is known from then on; the retry window and the
 * lifetime (renewed on use) expire entries; another recipient, sender or
 * network is another triplet, another address of the same network is
 * not (IPv4 /24, IPv6 /64, IPv4-mapped); auto-allow after N passed
 * triplets (and never with 0); keying on the SPF-authorised domain lets
 * a retry from another network pass where network keying does not;
 * skips (local allow list, authenticated, DNSWL and skip_dnswl = no);
 * canonical senders and recipients (case, +subaddress, BATV, SRS0, VERP
 * numbers, the null sender, long addresses); manual allows of an
 * address, a network and an SPF domain; bad parameters; and the failure
 * modes with Redis stopped, writes failing (Redis over maxmemory) or no store
 * (tempfail by default, continue when configured; logged and counted).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "checks/greylist.h"
#include "mail/envelope.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/metrics.h"

#define REDIS_PASSWORD "gl-test-pw"

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
	if (tu_mkdtemp(s->dir, sizeof(s->dir), "greylist") != 0)
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

/* ---- fixture: one store, one chain, one session --------------------------- */

struct fx {
	struct suite *s;
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

/* extra: more [state] settings. */
static void fx_open_with(struct fx *f, struct suite *s, int backend, const char *extra)
{
	memset(f, 0, sizeof(*f));
	f->s = s;
	s->seq++;
	char *text = xasprintf("[state]\nbackend = %s\nlmdb_path = %s/t%d.lmdb\nredis_server = 127.0.0.1:%d\n"
			       "redis_password_file = %s\nredis_db = 3\nredis_timeout = 500ms\nkey_prefix = g%d:\n%s",
			       backend == STATE_BACKEND_REDIS ? "redis" : "lmdb", s->dir, s->seq, s->r.port, s->pwfile,
			       s->seq, extra);
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

static void fx_open(struct fx *f, struct suite *s, int backend)
{
	fx_open_with(f, s, backend, "");
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

static bool try_use(struct fx *f, const char *conf, char *why, size_t whylen)
{
	struct config_error err = { "" };
	chain_free(f->chain);
	f->chain = NULL;
	config_free(f->cfg);
	f->cfg = config_parse_string("rampart.conf", conf, &err);
	if (!f->cfg)
		fail_msg("config: %s", err.msg);
	char *words[] = { "greylist" };
	struct strlist names = { 1, words };
	f->chain = chain_new(f->cfg, &names, &f->env, why, whylen);
	return f->chain != NULL;
}

/* The greylist check with [check.greylist] settings (lines). */
static void use(struct fx *f, const char *settings)
{
	char why[512] = "", conf[1024];
	snprintf(conf, sizeof(conf), "[check.greylist]\n%s", settings);
	if (!try_use(f, conf, why, sizeof(why)))
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

/* A new client: CONNECT (which clears the session facts) as ip. */
static void connect_as(struct fx *f, const char *ip)
{
	f->e->client.addr = pool_strdup(f->e->pool, ip);
	f->e->client.login = NULL;
	f->ctx.env = NULL;
	f->ctx.auth.spf = AUTH_SPF_UNCHECKED;
	f->ctx.auth.spf_domain[0] = '\0';
	assert_int_equal(run(f, PHASE_CONNECT).kind, V_CONTINUE);
}

static void mail(struct fx *f, const char *sender)
{
	f->e->sender = pool_strdup(f->e->pool, sender);
	f->e->nrcpt = 0;
	f->ctx.env = f->e;
	assert_int_equal(run(f, PHASE_MAIL).kind, V_CONTINUE);
}

static struct verdict rcpt(struct fx *f, const char *addr)
{
	envelope_add_rcpt(f->e, addr);
	struct verdict v = run(f, PHASE_RCPT);
	if (v.kind == V_REJECT || v.kind == V_TEMPFAIL)
		f->e->nrcpt--;      /* as the server does: a refused recipient is gone */
	return v;
}

/* One attempt: a session from ip, MAIL sender, RCPT to; the RCPT verdict. */
static struct verdict attempt(struct fx *f, const char *ip, const char *sender, const char *to)
{
	connect_as(f, ip);
	mail(f, sender);
	return rcpt(f, to);
}

/* The same with SPF's verdict on the sender domain (check spf, before). */
static struct verdict attempt_spf(struct fx *f, const char *ip, enum auth_spf spf, const char *domain,
				  const char *sender, const char *to)
{
	connect_as(f, ip);
	mail(f, sender);
	f->ctx.auth.spf = spf;
	snprintf(f->ctx.auth.spf_domain, sizeof(f->ctx.auth.spf_domain), "%s", domain);
	return rcpt(f, to);
}

static void assert_greylisted(struct verdict v, long secs)
{
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.7.1");
	char want[96];
	snprintf(want, sizeof(want), "Greylisted, please try again in %ld second%s", secs, secs == 1 ? "" : "s");
	assert_string_equal(v.reason, want);
	assert_string_equal(v.check, "greylist");
}

#define assert_passes(v) assert_int_equal((v).kind, V_CONTINUE)

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

static bool metric_result(struct fx *f, const char *result, int n)
{
	char line[200];
	snprintf(line, sizeof(line), "rampart_greylist_total{stage=\"mx\",instance=\"mx\",result=\"%s\"} %d\n", result, n);
	return metric_has(f, line);
}

struct got {
	bool done;
	enum state_status status;
	char value[256];
};

static void got_cb(void *arg, const struct state_result *r)
{
	struct got *g = arg;
	g->done = true;
	g->status = r->status;
	if (r->status == STATE_OK && r->op == STATE_OP_GET)
		snprintf(g->value, sizeof(g->value), "%.*s", (int)r->vlen, r->value);
}

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

static void store_set(struct fx *f, const char *key, const char *value)
{
	struct got g = { 0 };
	state_set(f->st, key, value, strlen(value), 0, got_cb, &g);
	while (!g.done)
		event_base_loop(f->base, EVLOOP_ONCE);
	assert_int_equal(g.status, STATE_OK);
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

/* Each test runs once per backend. */
#define BOTH(name) \
	static void name##_lmdb(void **state) { name(*state, STATE_BACKEND_LMDB); } \
	static void name##_redis(void **state) { name(*state, STATE_BACKEND_REDIS); }
#define BOTH_TESTS(name) cmocka_unit_test(name##_lmdb), cmocka_unit_test(name##_redis)

/* ---- the cycle ------------------------------------------------------------- */

static void first_early_passed_known(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "delay = 1s\n");
	/* first attempt, and a retry too soon */
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	const char *key = "gl:t:net:192.0.2.0/24|a@example.org|alice@example.test";
	char val[256];
	assert_int_equal(store_get(&f, key, val, sizeof(val)), STATE_OK);
	struct gl_triplet t;
	assert_true(gl_triplet_parse(val, &t));
	assert_int_equal(t.passed_ms, 0);
	run_for(&f, 300);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	/* another recipient, another sender: new triplets, in the same session too */
	assert_greylisted(rcpt(&f, "bob@example.test"), 1);
	mail(&f, "b@example.org");
	assert_greylisted(rcpt(&f, "alice@example.test"), 1);
	/* after the delay the retry passes, from any address of the network */
	run_for(&f, 1100);
	assert_passes(attempt(&f, "192.0.2.200", "a@example.org", "alice@example.test"));
	assert_int_equal(store_get(&f, key, val, sizeof(val)), STATE_OK);
	assert_true(gl_triplet_parse(val, &t));
	assert_true(t.passed_ms >= t.first_ms + 1000);
	/* known from then on */
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	assert_passes(attempt(&f, "::ffff:192.0.2.8", "a@example.org", "alice@example.test"));
	/* the recipient in the same transaction as a known one is still new */
	assert_passes(rcpt(&f, "bob@example.test"));
	assert_greylisted(rcpt(&f, "carol@example.test"), 1);
	assert_int_equal(f.e->nrcpt, 2);
	/* another network is another client */
	assert_greylisted(attempt(&f, "192.0.3.7", "a@example.org", "alice@example.test"), 1);

	assert_true(metric_result(&f, "new", 5));
	assert_true(metric_result(&f, "early", 1));
	assert_true(metric_result(&f, "passed", 2));
	assert_true(metric_result(&f, "known", 2));
	assert_true(metric_has(&f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"greylist\",verdict=\"tempfail\"} 6\n"));
	assert_true(log_has(&f, "\"event\":\"greylist.new\",\"key\":\"gl:t:net:192.0.2.0/24|a@example.org|alice@example.test\""));
	assert_true(log_has(&f, "\"event\":\"greylist.early\""));
	assert_true(log_has(&f, "\"event\":\"greylist.passed\""));
	assert_true(log_has(&f, "\"check\":\"greylist\",\"phase\":\"rcpt\",\"verdict\":\"tempfail\",\"code\":451"));
	fx_close(&f);
}
BOTH(first_early_passed_known)

static void defaults_and_ipv6(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	/* the defaults: five minutes */
	use(&f, "");
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 300);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 300);
	/* IPv6 by /64, other prefixes */
	use(&f, "delay = 300ms\n");
	assert_greylisted(attempt(&f, "2001:db8:1:2::1", "a@example.org", "alice@example.test"), 1);
	assert_int_equal(store_get(&f, "gl:t:net:2001:db8:1:2::/64|a@example.org|alice@example.test", NULL, 0), STATE_OK);
	run_for(&f, 400);
	assert_passes(attempt(&f, "2001:DB8:1:2:ffff::9", "a@example.org", "alice@example.test"));
	assert_greylisted(attempt(&f, "2001:db8:1:3::1", "a@example.org", "alice@example.test"), 1);
	use(&f, "delay = 300ms\nipv4_prefix = 32\nipv6_prefix = 48\n");
	assert_greylisted(attempt(&f, "198.51.100.1", "a@example.org", "alice@example.test"), 1);
	assert_greylisted(attempt(&f, "2001:db8:1:2::1", "a@example.org", "alice@example.test"), 1);
	assert_int_equal(store_get(&f, "gl:t:net:2001:db8:1::/48|a@example.org|alice@example.test", NULL, 0), STATE_OK);
	run_for(&f, 400);
	assert_greylisted(attempt(&f, "198.51.100.2", "a@example.org", "alice@example.test"), 1);
	assert_passes(attempt(&f, "198.51.100.1", "a@example.org", "alice@example.test"));
	assert_passes(attempt(&f, "2001:db8:1:ff::1", "a@example.org", "alice@example.test"));
	fx_close(&f);
}
BOTH(defaults_and_ipv6)

static void windows_expire(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "delay = 300ms\nretry_window = 1s\nlifetime = 2s\n");
	/* not retried within the window: forgotten, new again */
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	run_for(&f, 1200);
	assert_int_equal(store_get(&f, "gl:t:net:192.0.2.0/24|a@example.org|alice@example.test", NULL, 0),
			 STATE_NOTFOUND);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	run_for(&f, 400);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	/* used within its lifetime: renewed (every lifetime/4 at most) */
	run_for(&f, 1500);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	run_for(&f, 1500);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	/* unused for its lifetime: forgotten */
	run_for(&f, 2300);
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	fx_close(&f);
}
BOTH(windows_expire)

/* ---- auto-allow ------------------------------------------------------------ */

static void auto_allow(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "delay = 300ms\nauto_allow_after = 2\n");
	/* two recipients greylisted, then both pass: two triplets */
	connect_as(&f, "192.0.2.7");
	mail(&f, "a@example.org");
	assert_greylisted(rcpt(&f, "alice@example.test"), 1);
	assert_greylisted(rcpt(&f, "bob@example.test"), 1);
	run_for(&f, 400);
	mail(&f, "a@example.org");
	assert_passes(rcpt(&f, "alice@example.test"));
	char val[64];
	assert_int_equal(store_get(&f, "gl:a:net:192.0.2.0/24", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "1");
	/* a known triplet does not count again */
	mail(&f, "a@example.org");
	assert_passes(rcpt(&f, "alice@example.test"));
	assert_int_equal(store_get(&f, "gl:a:net:192.0.2.0/24", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "1");
	assert_passes(rcpt(&f, "bob@example.test"));
	assert_int_equal(store_get(&f, "gl:a:net:192.0.2.0/24", val, sizeof(val)), STATE_OK);
	assert_string_equal(val, "2");
	assert_true(log_has(&f, "\"event\":\"greylist.auto_allowed\",\"client_key\":\"net:192.0.2.0/24\""));
	/* auto-allowed: new triplets pass at once, and leave no entry */
	assert_passes(attempt(&f, "192.0.2.99", "new@example.net", "carol@example.test"));
	assert_int_equal(store_get(&f, "gl:t:net:192.0.2.0/24|new@example.net|carol@example.test", NULL, 0),
			 STATE_NOTFOUND);
	/* ... also when SPF keys the client on a domain: the network has proved itself */
	assert_passes(attempt_spf(&f, "192.0.2.50", AUTH_SPF_PASS, "other.example", "x@other.example",
				  "alice@example.test"));
	/* other networks are not */
	assert_greylisted(attempt(&f, "192.0.3.7", "a@example.org", "alice@example.test"), 1);
	assert_true(metric_result(&f, "allowed", 2));
	assert_true(metric_result(&f, "passed", 2));

	/* 0: never */
	use(&f, "delay = 300ms\nauto_allow_after = 0\n");
	connect_as(&f, "203.0.113.7");
	mail(&f, "a@example.org");
	for (int i = 0; i < 3; i++) {
		char to[64];
		snprintf(to, sizeof(to), "u%d@example.test", i);
		assert_greylisted(rcpt(&f, to), 1);
	}
	run_for(&f, 400);
	mail(&f, "a@example.org");
	for (int i = 0; i < 3; i++) {
		char to[64];
		snprintf(to, sizeof(to), "u%d@example.test", i);
		assert_passes(rcpt(&f, to));
	}
	assert_greylisted(rcpt(&f, "u9@example.test"), 1);
	assert_int_equal(store_get(&f, "gl:a:net:203.0.113.0/24", NULL, 0), STATE_NOTFOUND);
	fx_close(&f);
}
BOTH(auto_allow)

/* ---- keying on SPF --------------------------------------------------------- */

static void spf_keying(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "delay = 300ms\n");
	/* A big sender: first attempt from one network of its pool, the
	 * retry from another; SPF passes for both. */
	assert_greylisted(attempt_spf(&f, "192.0.2.10", AUTH_SPF_PASS, "BigMail.example.", "News@BigMail.example",
				      "alice@example.test"), 1);
	assert_int_equal(store_get(&f, "gl:t:spf:bigmail.example|news@bigmail.example|alice@example.test", NULL, 0),
			 STATE_OK);
	run_for(&f, 400);
	assert_passes(attempt_spf(&f, "198.51.100.20", AUTH_SPF_PASS, "bigmail.example", "news@bigmail.example",
				  "alice@example.test"));
	assert_passes(attempt_spf(&f, "2001:db8::77", AUTH_SPF_PASS, "bigmail.example", "news@bigmail.example",
				  "alice@example.test"));
	/* without an SPF pass the same sender is keyed on the network */
	assert_greylisted(attempt_spf(&f, "198.51.100.20", AUTH_SPF_SOFTFAIL, "bigmail.example",
				      "news@bigmail.example", "alice@example.test"), 1);
	assert_greylisted(attempt_spf(&f, "198.51.100.20", AUTH_SPF_NEUTRAL, "bigmail.example",
				      "news@bigmail.example", "alice@example.test"), 1);
	assert_greylisted(attempt(&f, "203.0.113.5", "news@bigmail.example", "alice@example.test"), 1);

	/* the classic way (key_on_spf = no): the retry from the other network is a new triplet */
	use(&f, "delay = 300ms\nkey_on_spf = no\n");
	assert_greylisted(attempt_spf(&f, "192.0.2.10", AUTH_SPF_PASS, "pool.example", "news@pool.example",
				      "alice@example.test"), 1);
	run_for(&f, 400);
	assert_greylisted(attempt_spf(&f, "198.51.100.20", AUTH_SPF_PASS, "pool.example", "news@pool.example",
				      "alice@example.test"), 1);
	assert_passes(attempt_spf(&f, "192.0.2.11", AUTH_SPF_PASS, "pool.example", "news@pool.example",
				  "alice@example.test"));
	fx_close(&f);
}
BOTH(spf_keying)

/* ---- skips and manual allows ----------------------------------------------- */

static void skips(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "delay = 5m\n");
	/* the local allow list */
	connect_as(&f, "192.0.2.7");
	f.ctx.client_allowed = true;
	mail(&f, "a@example.org");
	assert_passes(rcpt(&f, "alice@example.test"));
	/* authenticated */
	connect_as(&f, "192.0.2.7");
	f.e->client.login = pool_strdup(f.e->pool, "alice");
	mail(&f, "alice@example.test");
	assert_passes(rcpt(&f, "bob@example.org"));
	/* on a DNS allow list */
	connect_as(&f, "192.0.2.7");
	f.ctx.dnswl = true;
	mail(&f, "a@example.org");
	assert_passes(rcpt(&f, "alice@example.test"));
	assert_true(metric_result(&f, "skipped", 3));
	assert_int_equal(store_get(&f, "gl:t:net:192.0.2.0/24|a@example.org|alice@example.test", NULL, 0),
			 STATE_NOTFOUND);
	/* ... unless skip_dnswl = no */
	use(&f, "delay = 5m\nskip_dnswl = no\n");
	f.ctx.dnswl = true;
	assert_greylisted(rcpt(&f, "alice@example.test"), 300);
	/* no client address and no SPF domain: nothing to key on */
	assert_passes(attempt(&f, "", "a@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "skipped", 4));
	fx_close(&f);
}
BOTH(skips)

static void manual_allow(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "delay = 5m\n");
	store_set(&f, "gl:m:ip:192.0.2.50", "1700000000000");
	store_set(&f, "gl:m:net:198.51.100.0/24", "1700000000000");
	store_set(&f, "gl:m:spf:friend.example", "1700000000000");
	store_set(&f, "gl:m:ip:2001:db8::5", "1700000000000");
	/* an address, not its neighbours */
	assert_passes(attempt(&f, "192.0.2.50", "a@example.org", "alice@example.test"));
	assert_passes(attempt(&f, "::ffff:192.0.2.50", "a@example.org", "alice@example.test"));
	assert_greylisted(attempt(&f, "192.0.2.51", "a@example.org", "alice@example.test"), 300);
	assert_passes(attempt(&f, "2001:db8:0:0::5", "a@example.org", "alice@example.test"));
	/* a network */
	assert_passes(attempt(&f, "198.51.100.7", "a@example.org", "alice@example.test"));
	/* a domain: when SPF passes for it, from anywhere, whatever the keying */
	assert_passes(attempt_spf(&f, "203.0.113.1", AUTH_SPF_PASS, "friend.example", "x@friend.example",
				  "alice@example.test"));
	assert_greylisted(attempt_spf(&f, "203.0.113.1", AUTH_SPF_FAIL, "friend.example", "x@friend.example",
				      "alice@example.test"), 300);
	use(&f, "delay = 5m\nkey_on_spf = no\n");
	assert_passes(attempt_spf(&f, "203.0.113.2", AUTH_SPF_PASS, "friend.example", "x@friend.example",
				  "alice@example.test"));
	assert_true(metric_result(&f, "allowed", 6));
	fx_close(&f);
}
BOTH(manual_allow)

/* ---- canonical addresses --------------------------------------------------- */

static void canonical_through_the_chain(struct suite *s, int backend)
{
	struct fx f;
	fx_open(&f, s, backend);
	use(&f, "delay = 300ms\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "Alice+News@Example.ORG", "Bob+Lists@Example.TEST"), 1);
	assert_greylisted(attempt(&f, "192.0.2.7", "prvs=1234abcdef=bounce@lists.example", "bob@example.test"), 1);
	assert_greylisted(attempt(&f, "192.0.2.7", "", "bob@example.test"), 1);
	assert_int_equal(store_get(&f, "gl:t:net:192.0.2.0/24|<>|bob@example.test", NULL, 0), STATE_OK);
	run_for(&f, 400);
	assert_passes(attempt(&f, "192.0.2.7", "alice@example.org", "bob@example.test"));
	/* another BATV tag of the same sender, and the null sender again */
	assert_passes(attempt(&f, "192.0.2.7", "prvs=9876fedcba=bounce@lists.example", "BOB@example.test"));
	assert_passes(attempt(&f, "192.0.2.7", "", "bob@example.test"));
	/* another subaddress separator */
	use(&f, "delay = 300ms\nsubaddress_separator = -\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "owner-list@example.net", "bob@example.test"), 1);
	assert_int_equal(store_get(&f, "gl:t:net:192.0.2.0/24|owner@example.net|bob@example.test", NULL, 0), STATE_OK);
	fx_close(&f);
}
BOTH(canonical_through_the_chain)

static void test_canonical_forms(void **state)
{
	(void)state;
	const char *cases[][3] = {
		/* address, as a sender, as a recipient */
		{ "Alice@Example.ORG", "alice@example.org", "alice@example.org" },
		{ "alice+news@example.org.", "alice@example.org", "alice@example.org" },
		{ "", "<>", "<>" },
		{ "+tag@example.org", "+tag@example.org", "+tag@example.org" },
		{ "prvs=1234abcdef=Bounce@Lists.example", "bounce@lists.example", "prvs=1234abcdef=bounce@lists.example" },
		{ "msprvs1=17abcd=bounces-123@mail.example", "bounces-#@mail.example", "msprvs1=17abcd=bounces-123@mail.example" },
		{ "btv1==0123abcd==user@example.org", "user@example.org", "btv1==0123abcd==user@example.org" },
		{ "SRS0=HHH=TT=orig.example=joe@fwd.example", "srs0=orig.example=joe@fwd.example",
		  "srs0=hhh=tt=orig.example=joe@fwd.example" },
		{ "bounce-12345-alice=example.com@list.example", "bounce-#-alice=example.com@list.example",
		  "bounce-12345-alice=example.com@list.example" },
		{ "user123@example.org", "user123@example.org", "user123@example.org" },
		{ "2024.07.news@example.org", "#.#.news@example.org", "2024.07.news@example.org" },
		{ "\"odd|name 100%\"@example.org", "\"odd%7Cname%20#%25\"@example.org", "\"odd%7Cname%20100%25\"@example.org" },
		{ "postmaster", "postmaster", "postmaster" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[GL_ADDR_MAX + 1];
		gl_canon_addr(cases[i][0], true, "+", out, sizeof(out));
		if (strcmp(out, cases[i][1]) != 0)
			fail_msg("sender '%s': '%s', expected '%s'", cases[i][0], out, cases[i][1]);
		gl_canon_addr(cases[i][0], false, "+", out, sizeof(out));
		if (strcmp(out, cases[i][2]) != 0)
			fail_msg("recipient '%s': '%s', expected '%s'", cases[i][0], out, cases[i][2]);
	}
	/* long addresses: a hash, stable, different per address */
	char lng[400], a[GL_ADDR_MAX + 1], b[GL_ADDR_MAX + 1];
	memset(lng, 'x', 200);
	snprintf(lng + 200, sizeof(lng) - 200, "@example.org");
	gl_canon_addr(lng, false, "+", a, sizeof(a));
	assert_int_equal(strlen(a), 33);
	assert_int_equal(a[0], '#');
	lng[0] = 'X';
	gl_canon_addr(lng, false, "+", b, sizeof(b));
	assert_string_equal(a, b);
	lng[1] = 'y';
	gl_canon_addr(lng, false, "+", b, sizeof(b));
	assert_string_not_equal(a, b);
	/* client keys */
	struct greylist_params p = { .ipv4_prefix = 24, .ipv6_prefix = 64 };
	char k[GL_CLIENT_MAX];
	assert_true(gl_net_key("192.0.2.77", &p, k, sizeof(k)));
	assert_string_equal(k, "net:192.0.2.0/24");
	assert_true(gl_net_key("::ffff:192.0.2.77", &p, k, sizeof(k)));
	assert_string_equal(k, "net:192.0.2.0/24");
	assert_true(gl_net_key("2001:DB8:a:b:c::1", &p, k, sizeof(k)));
	assert_string_equal(k, "net:2001:db8:a:b::/64");
	assert_false(gl_net_key("", &p, k, sizeof(k)));
	assert_false(gl_net_key("mail.example.org", &p, k, sizeof(k)));
	assert_true(gl_ip_key("::ffff:192.0.2.77", k, sizeof(k)));
	assert_string_equal(k, "ip:192.0.2.77");
	assert_true(gl_domain_key("Example.ORG.", k, sizeof(k)));
	assert_string_equal(k, "spf:example.org");
	assert_false(gl_domain_key("", k, sizeof(k)));
	assert_false(gl_domain_key("a|b.example", k, sizeof(k)));
	/* values */
	struct gl_triplet t;
	assert_true(gl_triplet_parse("1700000000000 0 1700000000000", &t));
	assert_int_equal(t.passed_ms, 0);
	assert_false(gl_triplet_parse("1700000000000 0", &t));
	assert_false(gl_triplet_parse("1700000000000 0 1700000000000 x", &t));
	assert_false(gl_triplet_parse("garbage", &t));
}

/* ---- configuration --------------------------------------------------------- */

static void test_bad_parameters(void **state)
{
	struct fx f;
	fx_open(&f, *state, STATE_BACKEND_LMDB);
	const char *bad[][2] = {
		{ "delay = 10m\nretry_window = 5m\n", "retry_window (300000ms) must be longer than delay (600000ms)" },
		{ "delay = 2d\n", "delay" },
		{ "retry_window = 100ms\n", "retry_window" },
		{ "lifetime = 1s\ndelay = 2s\n", "lifetime" },
		{ "auto_allow_after = -1\n", "auto_allow_after" },
		{ "ipv4_prefix = 33\n", "ipv4_prefix" },
		{ "failure_mode = pass\n", "failure_mode" },
		{ "greylist_time = 5m\n", "greylist_time" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char conf[256], why[512] = "";
		snprintf(conf, sizeof(conf), "[check.greylist]\n%s", bad[i][0]);
		assert_false(try_use(&f, conf, why, sizeof(why)));
		if (!strstr(why, bad[i][1]))
			fail_msg("'%s': '%s' lacks '%s'", bad[i][0], why, bad[i][1]);
	}
	use(&f, "delay = 0\nretry_window = 1s\nlifetime = 366d\nauto_allow_after = 1000000\n");
	/* delay 0: the first attempt is still refused (the retry shows an MTA) */
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	fx_close(&f);
}

/* ---- the store fails ------------------------------------------------------- */

static void test_store_down(void **state)
{
	struct suite *s = *state;
	struct fx f;
	fx_open(&f, s, STATE_BACKEND_REDIS);
	use(&f, "delay = 5m\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 300);
	tu_redis_stop(&s->r);
	s->redis_up = false;
	/* the default: tempfail, never a silent pass */
	struct verdict v = rcpt(&f, "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_int_equal(v.code, 451);
	assert_string_equal(v.enh, "4.3.0");
	assert_string_equal(v.reason, "Temporary failure checking greylisting; try again later");
	assert_true(metric_result(&f, "error", 1));
	assert_true(log_has(&f, "\"event\":\"greylist.error\""));
	assert_true(log_has(&f, "\"failure_mode\":\"tempfail\""));
	/* continue: through, still logged and counted */
	use(&f, "delay = 5m\nfailure_mode = continue\n");
	assert_passes(rcpt(&f, "alice@example.test"));
	assert_passes(rcpt(&f, "bob@example.test"));
	assert_true(metric_result(&f, "error", 3));
	assert_true(log_has(&f, "\"failure_mode\":\"continue\""));
	/* back: the store reconnects by itself (this Redis kept nothing: new again) */
	if (!tu_redis_start(&s->r, s->dir, REDIS_PASSWORD, true))
		fail_msg("redis-server did not restart");
	s->redis_up = true;
	long long deadline = mono_ms() + 10000;
	char why[256];
	while (!state_up(f.st, why, sizeof(why)) && mono_ms() < deadline)
		run_for(&f, 50);
	assert_greylisted(rcpt(&f, "alice@example.test"), 300);
	fx_close(&f);
}

/* A command to the suite's redis-server (inline protocol, after AUTH);
 * true if it answered +OK. */
static bool redis_cmd(struct suite *s, const char *cmd)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)s->r.port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { 2, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char req[256], rep[256];
	snprintf(req, sizeof(req), "AUTH %s\r\n%s\r\n", REDIS_PASSWORD, cmd);
	bool ok = false;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && write(fd, req, strlen(req)) == (ssize_t)strlen(req)) {
		size_t n = 0;
		while (n < sizeof(rep) - 1) {
			ssize_t k = read(fd, rep + n, sizeof(rep) - 1 - n);
			if (k <= 0)
				break;
			n += (size_t)k;
			rep[n] = '\0';
			if (strstr(rep, "\r\n") && strstr(strstr(rep, "\r\n") + 2, "\r\n"))
				break;
		}
		rep[n] = '\0';
		ok = strcmp(rep, "+OK\r\n+OK\r\n") == 0;
	}
	close(fd);
	return ok;
}

/* Reads work, writes fail (Redis over its maxmemory refuses them): a new
 * triplet that cannot be recorded gets the failure mode; a renewal or a
 * count that fails only costs a log line and a count. */
static void test_writes_fail(void **state)
{
	struct suite *s = *state;
	struct fx f;
	fx_open(&f, s, STATE_BACKEND_REDIS);
	use(&f, "delay = 0\nretry_window = 1s\nlifetime = 1s\n");
	assert_greylisted(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"), 1);
	assert_greylisted(attempt(&f, "192.0.2.7", "b@example.org", "alice@example.test"), 1);
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	run_for(&f, 300);
	assert_true(redis_cmd(s, "CONFIG SET maxmemory 1"));
	/* known, its renewal due (lifetime/4) and refused: through */
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "known", 1));
	assert_true(metric_result(&f, "error", 1));
	/* new, and not recorded: tempfail, or continue */
	struct verdict v = attempt(&f, "192.0.2.7", "c@example.org", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_string_equal(v.enh, "4.3.0");
	assert_true(metric_result(&f, "error", 2));
	/* passing, and not recorded: the failure mode too */
	v = attempt(&f, "192.0.2.7", "b@example.org", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_true(metric_result(&f, "error", 3));
	use(&f, "delay = 0\nretry_window = 1s\nlifetime = 1s\nfailure_mode = continue\n");
	assert_passes(attempt(&f, "192.0.2.7", "c@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "error", 4));
	assert_true(metric_result(&f, "new", 2));
	assert_true(redis_cmd(s, "CONFIG SET maxmemory 0"));
	assert_true(log_has(&f, "a renewal or count only"));
	assert_true(log_has(&f, "OOM"));
	/* writable again */
	assert_greylisted(attempt(&f, "192.0.2.7", "c@example.org", "alice@example.test"), 1);
	fx_close(&f);
}

static void test_no_store(void **state)
{
	struct fx f;
	fx_open(&f, *state, STATE_BACKEND_LMDB);
	f.env.state = NULL;
	use(&f, "");
	struct verdict v = attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test");
	assert_int_equal(v.kind, V_TEMPFAIL);
	assert_string_equal(v.enh, "4.3.0");
	use(&f, "failure_mode = continue\n");
	assert_passes(attempt(&f, "192.0.2.7", "a@example.org", "alice@example.test"));
	assert_true(metric_result(&f, "error", 2));
	assert_true(log_has(&f, "no state store"));
	fx_close(&f);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);       /* writes to a stopped redis-server */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_canonical_forms),
		BOTH_TESTS(first_early_passed_known),
		BOTH_TESTS(defaults_and_ipv6),
		BOTH_TESTS(windows_expire),
		BOTH_TESTS(auto_allow),
		BOTH_TESTS(spf_keying),
		BOTH_TESTS(skips),
		BOTH_TESTS(manual_allow),
		BOTH_TESTS(canonical_through_the_chain),
		cmocka_unit_test(test_bad_parameters),
		cmocka_unit_test(test_store_down),
		cmocka_unit_test(test_writes_fail),
		cmocka_unit_test(test_no_store),
	};
	return cmocka_run_group_tests(tests, suite_setup, suite_teardown);
}
