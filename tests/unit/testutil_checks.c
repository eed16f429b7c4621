/*
 * testutil_checks.c — the fixtures of the tests of checks run through the
 * chain (see testutil_checks.h).
 */
#include "testutil_checks.h"

#include <stdarg.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "mail/bayes.h"
#include "mail/bayes_db.h"
#include "mail/envelope.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/dns.h"
#include "util/log.h"
#include "util/metrics.h"

void tu_check_env_init(struct check_env *env, struct metrics *metrics, struct event_base *base)
{
	env->stage = "mx";
	env->instance = "mx";
	env->hostname = "mx.example.test";
	env->metrics = metrics;
	env->base = base;
}

struct envelope *tu_session_new(struct check_ctx *ctx, const char *client, const char *sender, const char *helo)
{
	struct envelope *e = envelope_new();
	if (client)
		e->client.addr = pool_strdup(e->pool, client);
	if (sender)
		e->sender = pool_strdup(e->pool, sender);
	ctx->sid = "S1";
	ctx->qid = "Q1";
	ctx->client = &e->client;
	if (helo)
		ctx->helo = helo;
	ctx->env = e;
	ctx->declared_size = -1;
	ctx->pool = e->pool;
	return e;
}

/* ---- the chain ----------------------------------------------------------- */

void tu_config_set(struct config **cfg, const char *conf)
{
	struct config_error err = { "" };
	config_free(*cfg);
	*cfg = config_parse_string("rampart.conf", conf, &err);
	if (!*cfg)
		fail_msg("config: %s", err.msg);
}

struct chain *tu_chain_new(const struct config *cfg, const char *names, const struct check_env *env, char *why,
			   size_t whylen)
{
	char *copy = xstrdup(names);
	char *words[16];
	struct strlist list = { 0, words };
	for (char *save = NULL, *w = strtok_r(copy, ", ", &save); w; w = strtok_r(NULL, ", ", &save)) {
		if (list.n == sizeof(words) / sizeof(words[0]))
			fail_msg("more than 16 checks in '%s'", names);
		words[list.n++] = w;
	}
	why[0] = '\0';
	struct chain *c = chain_new(cfg, &list, env, why, whylen);
	free(copy);
	return c;
}

struct verdicts {
	int n;
	struct verdict last;
};

static void on_verdict(void *arg, const struct verdict *v)
{
	struct verdicts *got = arg;
	got->n++;
	got->last = *v;
}

struct verdict tu_chain_verdict(struct chain *chain, enum check_phase phase, struct check_ctx *ctx,
				struct event_base *base)
{
	struct verdicts got = { 0 };
	chain_run(chain, phase, ctx, on_verdict, &got);
	long long deadline = tu_mono_ms() + 30000;
	while (base && got.n == 0 && tu_mono_ms() < deadline)
		event_base_loop(base, EVLOOP_ONCE);
	assert_int_equal(got.n, 1);
	return got.last;
}

bool tu_metric_has(struct metrics *m, const char *line)
{
	struct buf b = BUF_INIT;
	metrics_render(m, &b);
	bool ok = strstr(buf_cstr(&b), line) != NULL;
	if (!ok)
		print_message("no '%s' in metrics:\n%s\n", line, buf_cstr(&b));
	buf_free(&b);
	return ok;
}

double tu_metric_value(struct metrics *m, const char *series)
{
	struct buf b = BUF_INIT;
	metrics_render(m, &b);
	double v = -1;
	size_t n = strlen(series);
	for (const char *p = buf_cstr(&b); p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
		if (strncmp(p, series, n) == 0 && (p[n] == ' ' || (p[n] == '{' && !strchr(series, '{')))) {
			const char *q = p[n] == ' ' ? p + n : strchr(p + n, '}');
			if (q && (q = strchr(q, ' ')) != NULL) {
				v = strtod(q + 1, NULL);
				break;
			}
		}
	buf_free(&b);
	return v;
}

/* ---- a chain and what it runs in ----------------------------------------- */

static int dead_dns_server(char *fwd, size_t fwdlen)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 || getsockname(fd, (struct sockaddr *)&sin, &sl) != 0) {
		close(fd);
		return -1;
	}
	snprintf(fwd, fwdlen, "127.0.0.1@%d", ntohs(sin.sin_port));
	return fd;
}

bool tu_chain_fx_init(struct tu_chain_fx *c, bool dead_dns)
{
	memset(c, 0, sizeof(*c));
	c->dead_dns = dead_dns ? dead_dns_server(c->dead_fwd, sizeof(c->dead_fwd)) : -1;
	c->base = event_base_new();
	c->metrics = metrics_new("mx", "mx");
	tu_check_env_init(&c->env, c->metrics, c->base);
	return c->base && (!dead_dns || c->dead_dns >= 0);
}

void tu_chain_fx_dead_dns(struct tu_chain_fx *c)
{
	if (c->dead_dns < 0)
		c->dead_dns = dead_dns_server(c->dead_fwd, sizeof(c->dead_fwd));
	assert_true(c->dead_dns >= 0);
}

void tu_chain_fx_dns(struct tu_chain_fx *c, const char *zone, bool slow, int timeout_ms)
{
	char why[512];
	dns_free(c->dns);
	struct dns_opts o = { .local_data = zone, .local_only = !slow, .timeout_ms = timeout_ms };
	const char *fwd[] = { c->dead_fwd, NULL };
	c->dns = slow ? dns_new_fwd(c->base, &o, fwd, why, sizeof(why)) : dns_new(c->base, &o, why, sizeof(why));
	if (!c->dns)
		fail_msg("dns: %s", why);
	c->env.dns = c->dns;
}

void tu_chain_fx_free(struct tu_chain_fx *c, struct check_ctx *ctx)
{
	chain_free(c->chain);
	config_free(c->cfg);
	if (ctx)
		check_ctx_clear_headers(ctx);
	dns_free(c->dns);
	metrics_free(c->metrics);
	if (c->base)
		event_base_free(c->base);
	if (c->dead_dns >= 0)
		close(c->dead_dns);
	memset(c, 0, sizeof(*c));
	c->dead_dns = -1;
}

bool tu_chain_try(struct tu_chain_fx *c, const char *conf, const char *names, char *why, size_t whylen)
{
	chain_free(c->chain);
	c->chain = NULL;
	tu_config_set(&c->cfg, conf);
	c->chain = tu_chain_new(c->cfg, names, &c->env, why, whylen);
	return c->chain != NULL;
}

void tu_chain_use(struct tu_chain_fx *c, const char *conf, const char *names)
{
	char why[512];
	if (!tu_chain_try(c, conf, names, why, sizeof(why)))
		fail_msg("chain: %s", why);
}

/* ---- the state store and a redis-server ---------------------------------- */

int tu_state_suite_setup(void **state, const char *tag, const char *redis_password)
{
	struct tu_state_suite *s = xcalloc(1, sizeof(*s));
	if (tu_mkdtemp(s->dir, sizeof(s->dir), tag) != 0)
		return -1;
	snprintf(s->pwfile, sizeof(s->pwfile), "%s/redis.pw", s->dir);
	char *pw = xasprintf("%s\n", redis_password);
	tu_write_file(s->pwfile, pw);
	free(pw);
	snprintf(s->logpath, sizeof(s->logpath), "%s/log", s->dir);
	s->logfd = tu_log_open(s->logpath);
	if (!tu_redis_start(&s->r, s->dir, redis_password, false)) {
		fprintf(stderr, "redis-server did not start (is the Debian package redis-server installed?)\n");
		return -1;
	}
	s->redis_up = true;
	*state = s;
	return 0;
}

int tu_state_suite_teardown(void **state)
{
	struct tu_state_suite *s = *state;
	if (s->redis_up)
		tu_redis_stop(&s->r);
	tu_log_close(s->logfd);
	tu_rmtree(s->dir);
	free(s);
	return 0;
}

void tu_state_redis_stop(struct tu_state_suite *s)
{
	tu_redis_stop(&s->r);
	s->redis_up = false;
}

void tu_state_redis_restart(struct tu_state_suite *s)
{
	char password[sizeof(s->r.password)];
	snprintf(password, sizeof(password), "%s", s->r.password);      /* tu_redis_start writes r.password */
	if (!tu_redis_start(&s->r, s->dir, password, true))
		fail_msg("redis-server did not restart");
	s->redis_up = true;
}

void tu_state_fx_open(struct tu_state_fx *f, struct tu_state_suite *s, int backend, const char *extra)
{
	memset(f, 0, sizeof(*f));
	f->s = s;
	s->seq++;
	char *text = xasprintf("[state]\nbackend = %s\nlmdb_path = %s/t%d.lmdb\nredis_server = 127.0.0.1:%d\n"
			       "redis_password_file = %s\nredis_db = 2\nredis_timeout = 500ms\nkey_prefix = t%d:\n%s",
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
	if (!tu_chain_fx_init(&f->c, false))
		fail_msg("no event loop");
	char why[256];
	f->st = state_open(&f->scfg, f->c.base, why, sizeof(why));
	if (!f->st)
		fail_msg("state_open: %s", why);
	long long deadline = tu_mono_ms() + 5000;
	while (!state_up(f->st, why, sizeof(why)) && tu_mono_ms() < deadline)
		event_base_loop(f->c.base, EVLOOP_ONCE | EVLOOP_NONBLOCK), usleep(1000);
	if (!state_up(f->st, why, sizeof(why)))
		fail_msg("store not up: %s", why);
	f->c.env.state = f->st;
	f->e = envelope_new();
	f->ctx.sid = "S1";
	f->ctx.client = &f->e->client;
	f->ctx.pool = f->e->pool;
}

void tu_state_fx_close(struct tu_state_fx *f)
{
	chain_free(f->c.chain);         /* before the store it may use */
	f->c.chain = NULL;
	envelope_free(f->e);
	if (f->st)
		state_close(f->st);
	tu_chain_fx_free(&f->c, &f->ctx);      /* with the headers the checks asked for */
	if (f->bound)
		config_release(&state_param_set, &f->scfg);
	memset(f, 0, sizeof(*f));
}

struct verdict tu_state_run(struct tu_state_fx *f, enum check_phase phase)
{
	f->v = tu_chain_verdict(f->c.chain, phase, &f->ctx, f->c.base);
	return f->v;
}

struct verdict tu_state_rcpt(struct tu_state_fx *f, const char *addr)
{
	envelope_add_rcpt(f->e, addr);
	struct verdict v = tu_state_run(f, PHASE_RCPT);
	if (v.kind == V_REJECT || v.kind == V_TEMPFAIL)
		f->e->nrcpt--;      /* as the server does: a refused recipient is gone */
	return v;
}

void tu_state_run_for(struct tu_state_fx *f, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	event_base_loopexit(f->c.base, &tv);
	event_base_dispatch(f->c.base);
}

void tu_state_wait_up(struct tu_state_fx *f, int ms)
{
	long long deadline = tu_mono_ms() + ms;
	char why[256];
	while (!state_up(f->st, why, sizeof(why)) && tu_mono_ms() < deadline)
		tu_state_run_for(f, 50);
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

static void got_wait(struct tu_state_fx *f, struct got *g)
{
	while (!g->done)
		event_base_loop(f->c.base, EVLOOP_ONCE);
}

enum state_status tu_state_get(struct tu_state_fx *f, const char *key, char *value, size_t vlen)
{
	struct got g = { 0 };
	state_get(f->st, key, got_cb, &g);
	got_wait(f, &g);
	if (value)
		snprintf(value, vlen, "%s", g.value);
	return g.status;
}

void tu_state_set(struct tu_state_fx *f, const char *key, const char *value)
{
	struct got g = { 0 };
	state_set(f->st, key, value, strlen(value), 0, got_cb, &g);
	got_wait(f, &g);
	assert_int_equal(g.status, STATE_OK);
}

double tu_state_tokens(struct tu_state_fx *f, const char *key, double rate, double burst)
{
	struct got g = { 0 };
	state_take(f->st, key, rate, burst, 0, got_cb, &g);
	got_wait(f, &g);
	assert_int_equal(g.status, STATE_OK);
	return g.tokens;
}

static void add_tok(void *arg, const char *tok, size_t len)
{
	struct tu_toks *l = arg;
	if (l->n < TU_TOKS_MAX)
		l->t[l->n++] = xmemdup(tok, len + 1);
}

void tu_toks_of(struct tu_toks *l, const char *msg, size_t len)
{
	l->n = 0;
	bayes_tokens(msg, len, NULL, add_tok, l);
}

void tu_toks_free(struct tu_toks *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->t[i]);
	l->n = 0;
}

struct learned {
	bool done, ok;
	char why[256];
};

static void learned_cb(void *arg, bool ok, const char *why)
{
	struct learned *w = arg;
	w->done = true;
	w->ok = ok;
	snprintf(w->why, sizeof(w->why), "%s", why);
}

bool tu_bayes_learn(struct tu_state_fx *f, char *const *toks, size_t n, bool spam, int by, char *why, size_t whylen)
{
	struct learned w = { 0 };
	bayes_db_learn(f->st, toks, n, spam, by, learned_cb, &w);
	assert_false(w.done);
	long long end = tu_mono_ms() + 10000;
	while (!w.done && tu_mono_ms() < end)
		event_base_loop(f->c.base, EVLOOP_ONCE);
	if (!w.done)
		fail_msg("learning did not finish in 10 s");
	if (why)
		snprintf(why, whylen, "%s", w.why);
	return w.ok;
}

const char *tu_added_header(const struct check_ctx *ctx, const char *name)
{
	const char *found = NULL;
	for (size_t i = 0; i < ctx->nadd; i++)
		if (strcmp(ctx->add[i].name, name) == 0) {
			if (found)
				fail_msg("header %s added twice", name);
			found = ctx->add[i].value;
		}
	return found;
}
