/*
 * test_chain.c — unit tests of the check chain (shared/checks/chain.c) and
 * of the relay, limits and users checks run through it: order and
 * first-objection-wins, accept, asynchronous answers (stored call and a
 * libevent timer), headers to add, configuration errors, the verdicts of
 * each check, and the log lines and metrics the chain writes.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "testutil_checks.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "checks/chain.h"
#include "checks/check.h"
#include "mail/envelope.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/config.h"
#include "util/log.h"
#include "util/metrics.h"

/* ---- fixture ------------------------------------------------------------- */

enum act {
	A_CONT, A_ACCEPT, A_REJECT, A_TEMPFAIL, A_DISCARD, A_QUARANTINE,
	A_REJECT_NOCODE, A_TEMPFAIL_NOCODE, A_TEMPFAIL_421, A_HEADER, A_ASYNC,
};

struct tinst {
	char name[16];
	enum act act[PHASE_COUNT];
	int calls;
};

#define MAX_INST 8

struct fx {
	char dir[512];
	char confpath[600];
	char logpath[600];
	int logfd;
	char *doms[2];
	struct strlist local_domains;
	struct check_env env;
	struct metrics *metrics;
	struct config *cfg;
	struct chain *chain;
	struct envelope *e;
	struct check_ctx ctx;
	/* test-only checks */
	struct tinst *inst[MAX_INST];
	size_t ninst;
	int nfreed;
	char trace[256];
	struct check_call *pending;
	/* chain results */
	int ndone;
	struct verdict v;
};

static struct fx *g_fx;        /* the running test's fixture, for the test checks */

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	if (tu_mkdtemp(f->dir, sizeof(f->dir), "chain") != 0)
		return -1;
	snprintf(f->confpath, sizeof(f->confpath), "%s/rampart.conf", f->dir);
	snprintf(f->logpath, sizeof(f->logpath), "%s/log", f->dir);
	f->logfd = tu_log_open(f->logpath);
	if (f->logfd < 0)
		return -1;

	f->doms[0] = "example.test";
	f->doms[1] = "Local.Test";
	f->local_domains.n = 2;
	f->local_domains.v = f->doms;
	f->metrics = metrics_new("mx", "mx");
	tu_check_env_init(&f->env, f->metrics, NULL);
	f->env.local_domains = &f->local_domains;
	f->env.max_message_size = 5000;
	f->env.max_recipients = 3;

	f->e = tu_session_new(&f->ctx, "203.0.113.5", "sender@remote.test", "client.remote.test");
	g_fx = f;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	assert_null(f->pending);            /* every asynchronous call was answered */
	chain_free(f->chain);
	config_free(f->cfg);
	check_ctx_clear_headers(&f->ctx);
	envelope_free(f->e);
	metrics_free(f->metrics);
	tu_log_close(f->logfd);
	tu_rmtree(f->dir);
	g_fx = NULL;
	free(f);
	return 0;
}

/* ---- helpers ------------------------------------------------------------- */

/* rampart.conf in the test directory, parsed (text may be ""). */
static void load_config(struct fx *f, const char *text)
{
	tu_write_file(f->confpath, text);
	struct config_error err = { "" };
	config_free(f->cfg);
	f->cfg = config_parse_file(f->confpath, &err);
	if (!f->cfg)
		fail_msg("config: %s", err.msg);
}

/* chain_new over a comma-separated list of check names; why set on failure. */
static struct chain *build(struct fx *f, const char *csv, char *why, size_t whylen)
{
	return tu_chain_new(f->cfg, csv, &f->env, why, whylen);
}

static void use_chain(struct fx *f, const char *conf, const char *csv)
{
	char why[512];
	load_config(f, conf);
	f->chain = build(f, csv, why, sizeof(why));
	if (!f->chain)
		fail_msg("chain_new: %s", why);
}

static void on_done(void *arg, const struct verdict *v)
{
	struct fx *f = arg;
	f->ndone++;
	f->v = *v;
}

/* Run a phase whose checks all answer at once. */
static struct verdict run(struct fx *f, enum check_phase phase)
{
	return tu_chain_verdict(f->chain, phase, &f->ctx, NULL);
}

/* RCPT addr; a refused recipient is taken off the envelope again, as the
 * SMTP server does. */
static struct verdict rcpt(struct fx *f, const char *addr)
{
	envelope_add_rcpt(f->e, addr);
	struct verdict v = run(f, PHASE_RCPT);
	if (v.kind != V_CONTINUE)
		f->e->nrcpt--;
	return v;
}

static void set_client(struct fx *f, const char *addr, const char *login)
{
	f->e->client.addr = pool_strdup(f->e->pool, addr);
	f->e->client.login = login ? pool_strdup(f->e->pool, login) : NULL;
}

static void assert_verdict(struct verdict v, enum verdict_kind kind, int code, const char *enh,
			   const char *reason_part)
{
	assert_int_equal(v.kind, kind);
	if (kind == V_CONTINUE)
		return;
	assert_int_equal(v.code, code);
	if (enh)
		assert_string_equal(v.enh, enh);
	if (reason_part && !strstr(v.reason, reason_part))
		fail_msg("reason '%s' lacks '%s'", v.reason, reason_part);
}

static char *render_metrics(struct fx *f)
{
	struct buf b = BUF_INIT;
	metrics_render(f->metrics, &b);
	return buf_steal(&b, NULL);
}

static void assert_metric(struct fx *f, const char *line)
{
	char *m = render_metrics(f);
	if (!strstr(m, line)) {
		print_error("metrics:\n%s\n", m);
		free(m);
		fail_msg("missing metric line: %s", line);
	}
	free(m);
}

static void assert_no_metric(struct fx *f, const char *part)
{
	char *m = render_metrics(f);
	bool found = strstr(m, part) != NULL;
	free(m);
	if (found)
		fail_msg("unexpected metric: %s", part);
}

static bool log_has(struct fx *f, const char *part)
{
	char *s = tu_read_file(f->logpath, NULL);
	assert_non_null(s);
	bool found = strstr(s, part) != NULL;
	free(s);
	return found;
}

/* ---- test-only checks ------------------------------------------------------ */

static struct tinst *tinst_new(const char *name)
{
	struct tinst *t = xcalloc(1, sizeof(*t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	assert_true(g_fx->ninst < MAX_INST);
	g_fx->inst[g_fx->ninst++] = t;
	return t;
}

static void tinst_free(void *inst)
{
	g_fx->nfreed++;
	free(inst);
}

static void t_hook(void *inst, struct check_ctx *ctx, struct check_call *call, enum check_phase phase)
{
	struct tinst *t = inst;
	struct fx *f = g_fx;
	/* the hook sees the context it was given */
	assert_ptr_equal(ctx, &f->ctx);
	t->calls++;
	size_t used = strlen(f->trace);
	snprintf(f->trace + used, sizeof(f->trace) - used, "%s ", t->name);
	struct verdict v = { .kind = V_CONTINUE };
	switch (t->act[phase]) {
	case A_CONT:
		check_continue(call);
		return;
	case A_ACCEPT:
		v.kind = V_ACCEPT;
		snprintf(v.reason, sizeof(v.reason), "%s vouches", t->name);
		check_done(call, &v);
		return;
	case A_REJECT:
		check_reject(call, 550, "5.7.0", "%s says no", t->name);
		return;
	case A_TEMPFAIL:
		check_reject(call, 451, "4.7.1", "%s says later", t->name);
		return;
	case A_TEMPFAIL_421:
		check_reject(call, 421, "4.7.0", "%s closes", t->name);
		return;
	case A_DISCARD:
		v.kind = V_DISCARD;
		snprintf(v.reason, sizeof(v.reason), "%s drops it", t->name);
		check_done(call, &v);
		return;
	case A_QUARANTINE:
		v.kind = V_QUARANTINE;
		snprintf(v.reason, sizeof(v.reason), "%s holds it", t->name);
		check_done(call, &v);
		return;
	case A_REJECT_NOCODE:
		v.kind = V_REJECT;
		check_done(call, &v);
		return;
	case A_TEMPFAIL_NOCODE:
		v.kind = V_TEMPFAIL;
		check_done(call, &v);
		return;
	case A_HEADER: {
		char name[32], value[32];
		snprintf(name, sizeof(name), "X-Test-%s", t->name);
		snprintf(value, sizeof(value), "%s-value", t->name);
		check_ctx_add_header(ctx, name, value);
		check_continue(call);
		return;
	}
	case A_ASYNC:
		assert_null(f->pending);
		f->pending = call;      /* answered later */
		return;
	}
}

/* Hooks are not told their phase: one wrapper per phase. */
#define PHASE_HOOK(P, fn) \
	static void fn(void *inst, struct check_ctx *ctx, struct check_call *call) { t_hook(inst, ctx, call, P); }
PHASE_HOOK(PHASE_CONNECT, h_connect)
PHASE_HOOK(PHASE_HELO, h_helo)
PHASE_HOOK(PHASE_MAIL, h_mail)
PHASE_HOOK(PHASE_RCPT, h_rcpt)
PHASE_HOOK(PHASE_DATA, h_data)
PHASE_HOOK(PHASE_MESSAGE, h_message)
#define ALL_HOOKS { h_connect, h_helo, h_mail, h_rcpt, h_data, h_message }

#define TEST_CHECK(N)                                                                              \
	static void *init_##N(const void *p, const struct check_env *env, char *why, size_t whylen) \
	{                                                                                          \
		(void)p;                                                                           \
		(void)why;                                                                         \
		(void)whylen;                                                                      \
		assert_ptr_equal(env, &g_fx->env);                                                 \
		return tinst_new(#N);                                                              \
	}                                                                                          \
	static const struct check_def def_##N = {                                                  \
		.name = #N, .doc = "test check " #N, .init = init_##N, .free = tinst_free,        \
		.hooks = ALL_HOOKS,                                                                \
	}

TEST_CHECK(a);
TEST_CHECK(b);
TEST_CHECK(c);

/* A check with no hooks at all: never evaluated. */
static const struct check_def def_quiet = { .name = "quiet", .doc = "no hooks" };

/* A check whose init fails. */
static void *init_broken(const void *p, const struct check_env *env, char *why, size_t whylen)
{
	(void)p;
	(void)env;
	snprintf(why, whylen, "backend missing");
	return NULL;
}
static const struct check_def def_broken = { .name = "broken", .doc = "init fails", .init = init_broken };

/* A check with a parameter, to see [check.NAME] bound for any def. */
struct weight_params {
	long long weight;
};
static const struct param_def weight_defs[] = {
	{ "weight", PT_INT, "5", 1, 10, NULL, offsetof(struct weight_params, weight), "how much" },
	PARAM_END
};
static const struct param_set weight_set = { "check.weighted", "test", weight_defs, sizeof(struct weight_params) };
static long long seen_weight;
static void *init_weighted(const void *p, const struct check_env *env, char *why, size_t whylen)
{
	(void)env;
	(void)why;
	(void)whylen;
	seen_weight = ((const struct weight_params *)p)->weight;
	return tinst_new("weighted");
}
static const struct check_def def_weighted = {
	.name = "weighted", .doc = "has a parameter", .params = &weight_set, .init = init_weighted,
	.free = tinst_free, .hooks = { [PHASE_RCPT] = h_rcpt },
};

static void use_defs(struct fx *f, const struct check_def *const *defs, size_t n)
{
	char why[512] = "";
	if (!f->cfg)
		load_config(f, "");
	f->chain = chain_new_defs(f->cfg, defs, n, &f->env, why, sizeof(why));
	if (!f->chain)
		fail_msg("chain_new_defs: %s", why);
	size_t with_init = 0;
	for (size_t i = 0; i < n; i++)
		with_init += defs[i]->init != NULL;
	assert_int_equal(f->ninst, with_init);
}

static const struct check_def *const abc[] = { &def_a, &def_b, &def_c };

/* ---- chain: order, objections, accept ---------------------------------- */

static void test_order_all_continue(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	struct verdict v = rcpt(f, "x@example.test");
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(f->trace, "a b c ");
	/* evaluations are counted per check and phase; no verdict for continue */
	assert_metric(f, "rampart_check_evaluations_total{stage=\"mx\",instance=\"mx\",check=\"b\",phase=\"rcpt\"} 1\n");
	assert_no_metric(f, "verdict=\"continue\"");
	assert_false(log_has(f, "check.verdict"));
}

static void test_first_objection_wins(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[1]->act[PHASE_RCPT] = A_REJECT;
	f->inst[2]->act[PHASE_RCPT] = A_TEMPFAIL;
	struct verdict v = rcpt(f, "x@example.test");
	assert_verdict(v, V_REJECT, 550, "5.7.0", "b says no");
	assert_string_equal(f->trace, "a b ");
	assert_int_equal(f->inst[2]->calls, 0);
	assert_metric(f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"b\",verdict=\"reject\"} 1\n");
	assert_no_metric(f, "check=\"c\"");
	/* one JSON log line for the decision: check, phase, verdict, reason */
	assert_true(log_has(f, "\"event\":\"check.verdict\",\"check\":\"b\",\"phase\":\"rcpt\",\"verdict\":\"reject\",\"code\":550,\"enh\":\"5.7.0\",\"reason\":\"b says no\",\"client\":\"203.0.113.5\""));

	/* the first objection is the one that counts, whatever comes after */
	f->inst[1]->act[PHASE_RCPT] = A_CONT;
	f->trace[0] = '\0';
	v = rcpt(f, "y@example.test");
	assert_verdict(v, V_TEMPFAIL, 451, "4.7.1", "c says later");
	assert_string_equal(f->trace, "a b c ");
}

static void test_accept_ends_phase_with_success(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[0]->act[PHASE_RCPT] = A_ACCEPT;
	f->inst[1]->act[PHASE_RCPT] = A_REJECT;
	struct verdict v = rcpt(f, "x@example.test");
	assert_int_equal(v.kind, V_CONTINUE);     /* the phase passed */
	assert_string_equal(f->trace, "a ");
	assert_int_equal(f->e->nrcpt, 1);
	assert_metric(f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"a\",verdict=\"accept\"} 1\n");
	/* accept ends only that phase: the next phase runs every check */
	f->trace[0] = '\0';
	v = run(f, PHASE_DATA);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(f->trace, "a b c ");
}

static void test_discard_and_quarantine(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[1]->act[PHASE_RCPT] = A_DISCARD;
	struct verdict v = rcpt(f, "x@example.test");
	assert_int_equal(v.kind, V_DISCARD);
	assert_string_equal(v.reason, "b drops it");
	assert_string_equal(f->trace, "a b ");
	f->inst[1]->act[PHASE_RCPT] = A_CONT;
	f->inst[2]->act[PHASE_RCPT] = A_QUARANTINE;
	v = rcpt(f, "x@example.test");
	assert_int_equal(v.kind, V_QUARANTINE);
	assert_metric(f, "check=\"b\",verdict=\"discard\"} 1\n");
	assert_metric(f, "check=\"c\",verdict=\"quarantine\"} 1\n");
}

static void test_default_codes(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[0]->act[PHASE_RCPT] = A_REJECT_NOCODE;
	assert_verdict(rcpt(f, "x@example.test"), V_REJECT, 550, NULL, NULL);
	f->inst[0]->act[PHASE_RCPT] = A_TEMPFAIL_NOCODE;
	assert_verdict(rcpt(f, "x@example.test"), V_TEMPFAIL, 451, NULL, NULL);
	/* check_reject picks the kind from the code */
	f->inst[0]->act[PHASE_RCPT] = A_TEMPFAIL_421;
	assert_verdict(rcpt(f, "x@example.test"), V_TEMPFAIL, 421, "4.7.0", "a closes");
	assert_string_equal(verdict_name(V_QUARANTINE), "quarantine");
	assert_string_equal(phase_name(PHASE_MESSAGE), "message");
}

static void test_checks_without_hook_are_skipped(void **state)
{
	struct fx *f = *state;
	static const struct check_def *const defs[] = { &def_quiet, &def_a, &def_quiet, &def_b };
	use_defs(f, defs, 4);
	struct verdict v = run(f, PHASE_HELO);
	assert_int_equal(v.kind, V_CONTINUE);
	assert_string_equal(f->trace, "a b ");
	assert_no_metric(f, "check=\"quiet\"");
	assert_metric(f, "check=\"a\",phase=\"helo\"} 1\n");
}

static void test_empty_chain(void **state)
{
	struct fx *f = *state;
	load_config(f, "");
	char why[256] = "";
	f->chain = chain_new_defs(f->cfg, NULL, 0, &f->env, why, sizeof(why));
	assert_non_null(f->chain);
	assert_int_equal(run(f, PHASE_CONNECT).kind, V_CONTINUE);
	struct strlist none = { 0, NULL };
	struct chain *c2 = chain_new(f->cfg, &none, &f->env, why, sizeof(why));
	assert_non_null(c2);
	f->ndone = 0;
	chain_run(c2, PHASE_MESSAGE, &f->ctx, on_done, f);
	assert_int_equal(f->ndone, 1);
	assert_int_equal(f->v.kind, V_CONTINUE);
	chain_free(c2);
}

static void test_no_metrics_registry(void **state)
{
	struct fx *f = *state;
	f->env.metrics = NULL;
	use_defs(f, abc, 3);
	f->inst[2]->act[PHASE_RCPT] = A_REJECT;
	assert_verdict(rcpt(f, "x@example.test"), V_REJECT, 550, "5.7.0", "c says no");
	assert_no_metric(f, "rampart_check_");
	/* no client: the log line says "" rather than crashing */
	f->ctx.client = NULL;
	assert_verdict(rcpt(f, "x@example.test"), V_REJECT, 550, "5.7.0", "c says no");
	f->ctx.client = &f->e->client;
}

/* ---- chain: asynchronous checks ----------------------------------------- */

static void answer(struct fx *f, enum verdict_kind kind, int code, const char *reason)
{
	struct verdict v = { .kind = kind, .code = code };
	snprintf(v.enh, sizeof(v.enh), "%s", code >= 500 ? "5.7.1" : code ? "4.7.1" : "");
	snprintf(v.reason, sizeof(v.reason), "%s", reason);
	struct check_call *call = f->pending;
	assert_non_null(call);
	f->pending = NULL;
	check_done(call, &v);
}

static void test_async_continue_resumes(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[1]->act[PHASE_RCPT] = A_ASYNC;
	envelope_add_rcpt(f->e, "x@example.test");
	f->ndone = 0;
	chain_run(f->chain, PHASE_RCPT, &f->ctx, on_done, f);
	/* chain_run returned with the phase undecided */
	assert_int_equal(f->ndone, 0);
	assert_non_null(f->pending);
	assert_string_equal(f->trace, "a b ");
	answer(f, V_CONTINUE, 0, "");
	assert_int_equal(f->ndone, 1);
	assert_int_equal(f->v.kind, V_CONTINUE);
	assert_string_equal(f->trace, "a b c ");
}

static void test_async_reject_stops(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[1]->act[PHASE_RCPT] = A_ASYNC;
	envelope_add_rcpt(f->e, "x@example.test");
	f->ndone = 0;
	chain_run(f->chain, PHASE_RCPT, &f->ctx, on_done, f);
	assert_int_equal(f->ndone, 0);
	answer(f, V_REJECT, 0, "too late for b");   /* code 0: the default 550 */
	assert_int_equal(f->ndone, 1);
	assert_verdict(f->v, V_REJECT, 550, "", "too late for b");
	assert_string_equal(f->trace, "a b ");
	assert_metric(f, "check=\"b\",verdict=\"reject\"} 1\n");
	assert_true(log_has(f, "\"check\":\"b\",\"phase\":\"rcpt\",\"verdict\":\"reject\""));
}

static void test_async_accept_ends_phase(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[0]->act[PHASE_RCPT] = A_ASYNC;
	f->inst[1]->act[PHASE_RCPT] = A_REJECT;
	envelope_add_rcpt(f->e, "x@example.test");
	f->ndone = 0;
	chain_run(f->chain, PHASE_RCPT, &f->ctx, on_done, f);
	assert_int_equal(f->ndone, 0);
	answer(f, V_ACCEPT, 0, "known good");
	assert_int_equal(f->ndone, 1);
	assert_int_equal(f->v.kind, V_CONTINUE);
	assert_string_equal(f->trace, "a ");
	assert_metric(f, "check=\"a\",verdict=\"accept\"} 1\n");
}

static void test_async_last_check(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[2]->act[PHASE_RCPT] = A_ASYNC;
	envelope_add_rcpt(f->e, "x@example.test");
	f->ndone = 0;
	chain_run(f->chain, PHASE_RCPT, &f->ctx, on_done, f);
	assert_int_equal(f->ndone, 0);
	answer(f, V_CONTINUE, 0, "");
	assert_int_equal(f->ndone, 1);
	assert_int_equal(f->v.kind, V_CONTINUE);
	assert_string_equal(f->trace, "a b c ");
}

/* Answers from the event loop, as a DNS or Redis lookup would. */
struct later {
	struct fx *f;
	struct event_base *base;
	enum verdict_kind kind;
	int code;
	int fired;
};

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct later *l = arg;
	l->fired++;
	answer(l->f, l->kind, l->code, "from the loop");
	/* if the chain went on to another asynchronous check, answer it next */
	if (l->f->pending) {
		l->kind = V_TEMPFAIL;
		l->code = 0;
		struct timeval tv = { 0, 1000 };
		assert_int_equal(event_base_once(l->base, -1, EV_TIMEOUT, on_timer, l, &tv), 0);
	}
}

static void test_async_from_event_loop(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[0]->act[PHASE_RCPT] = A_ASYNC;
	f->inst[2]->act[PHASE_RCPT] = A_ASYNC;
	struct event_base *base = event_base_new();
	assert_non_null(base);
	struct later l = { f, base, V_CONTINUE, 0, 0 };
	envelope_add_rcpt(f->e, "x@example.test");
	f->ndone = 0;
	chain_run(f->chain, PHASE_RCPT, &f->ctx, on_done, f);
	assert_int_equal(f->ndone, 0);
	struct timeval tv = { 0, 1000 };
	assert_int_equal(event_base_once(base, -1, EV_TIMEOUT, on_timer, &l, &tv), 0);
	assert_int_equal(event_base_dispatch(base), 1);     /* ran until nothing was left */
	event_base_free(base);
	assert_int_equal(l.fired, 2);
	assert_int_equal(f->ndone, 1);
	assert_verdict(f->v, V_TEMPFAIL, 451, "", "from the loop");   /* code 0: the default 451 */
	assert_string_equal(f->trace, "a b c ");
	assert_metric(f, "check=\"c\",verdict=\"tempfail\"} 1\n");
}

/* ---- chain: headers to add ---------------------------------------------- */

static void test_add_header(void **state)
{
	struct fx *f = *state;
	use_defs(f, abc, 3);
	f->inst[0]->act[PHASE_DATA] = A_HEADER;
	f->inst[1]->act[PHASE_DATA] = A_ASYNC;
	f->inst[2]->act[PHASE_DATA] = A_HEADER;
	f->ndone = 0;
	chain_run(f->chain, PHASE_DATA, &f->ctx, on_done, f);
	answer(f, V_CONTINUE, 0, "");
	assert_int_equal(f->ndone, 1);
	assert_int_equal(f->ctx.nadd, 2);
	assert_string_equal(f->ctx.add[0].name, "X-Test-a");
	assert_string_equal(f->ctx.add[0].value, "a-value");
	assert_string_equal(f->ctx.add[1].name, "X-Test-c");
	assert_string_equal(f->ctx.add[1].value, "c-value");
	/* the collection grows, keeps order, and owns copies */
	char name[32], value[32];
	for (int i = 0; i < 20; i++) {
		snprintf(name, sizeof(name), "X-N%d", i);
		snprintf(value, sizeof(value), "v%d", i);
		check_ctx_add_header(&f->ctx, name, value);
	}
	strcpy(name, "scribbled");
	assert_int_equal(f->ctx.nadd, 22);
	assert_true(f->ctx.add_cap >= 22);
	assert_string_equal(f->ctx.add[21].name, "X-N19");
	assert_string_equal(f->ctx.add[21].value, "v19");
	assert_string_equal(f->ctx.add[2].name, "X-N0");
}

/* Removals are collected once each, and cleared with the additions. */
static void test_remove_header(void **state)
{
	struct fx *f = *state;
	char name[32];
	check_ctx_add_header(&f->ctx, "X-Added", "1");
	for (unsigned i = 1; i <= 6; i++) {
		snprintf(name, sizeof(name), "Authentication-Results");
		check_ctx_remove_header(&f->ctx, name, i);
		strcpy(name, "scribbled");
	}
	check_ctx_remove_header(&f->ctx, "authentication-results", 3);  /* the same field again */
	check_ctx_remove_header(&f->ctx, "Received", 3);
	assert_int_equal(f->ctx.ndel, 7);
	assert_true(f->ctx.del_cap >= 7);
	assert_string_equal(f->ctx.del[5].name, "Authentication-Results");
	assert_int_equal(f->ctx.del[5].index, 6);
	assert_string_equal(f->ctx.del[6].name, "Received");
	assert_int_equal(f->ctx.del[6].index, 3);
	check_ctx_clear_headers(&f->ctx);
	assert_int_equal(f->ctx.ndel, 0);
	assert_int_equal(f->ctx.nadd, 0);
	assert_null(f->ctx.del);
	assert_null(f->ctx.add);
}

/* ---- chain construction ------------------------------------------------- */

static void test_unknown_check(void **state)
{
	struct fx *f = *state;
	char why[256];
	load_config(f, "");
	assert_null(build(f, "relay, nosuch, limits", why, sizeof(why)));
	/* the message names every check there is, in registry order */
	struct buf want = BUF_INIT;
	buf_puts(&want, "unknown check 'nosuch' (known: ");
	for (size_t i = 0; check_registry[i]; i++)
		buf_printf(&want, "%s%s", i ? ", " : "", check_registry[i]->name);
	buf_puts(&want, ")");
	assert_string_equal(why, buf_cstr(&want));
	assert_true(strncmp(why, "unknown check 'nosuch' (known: relay, limits, users", 51) == 0);
	buf_free(&want);
	assert_non_null(check_find("users"));
	assert_null(check_find("Relay"));
	for (size_t i = 0; check_registry[i]; i++)
		assert_ptr_equal(check_find(check_registry[i]->name), check_registry[i]);
}

static void test_init_failure(void **state)
{
	struct fx *f = *state;
	static const struct check_def *const defs[] = { &def_a, &def_b, &def_broken, &def_c };
	char why[256] = "";
	load_config(f, "");
	assert_null(chain_new_defs(f->cfg, defs, 4, &f->env, why, sizeof(why)));
	assert_string_equal(why, "check broken: backend missing");
	/* the checks built before it were freed; the one after never built */
	assert_int_equal(f->ninst, 2);
	assert_int_equal(f->nfreed, 2);
}

static void test_param_error_names_file_line(void **state)
{
	struct fx *f = *state;
	char why[512], want[700];

	/* a bad value */
	load_config(f, "# rampart\n[check.limits]\nmessage_size_limit = 10m\nrecipient_limit = many\n");
	assert_null(build(f, "relay, limits", why, sizeof(why)));
	snprintf(want, sizeof(want), "%s:4: [check.limits] recipient_limit:", f->confpath);
	if (strncmp(why, want, strlen(want)) != 0)
		fail_msg("why: %s (want %s...)", why, want);

	/* out of bounds */
	load_config(f, "[check.limits]\nrecipient_limit = 2000000\n");
	assert_null(build(f, "limits", why, sizeof(why)));
	snprintf(want, sizeof(want), "%s:2: [check.limits] recipient_limit:", f->confpath);
	assert_non_null(strstr(why, want));

	/* an unknown key */
	load_config(f, "[check.relay]\n\nrelay_netwrks = 10.0.0.0/8\n");
	assert_null(build(f, "relay", why, sizeof(why)));
	snprintf(want, sizeof(want), "%s:3: [check.relay] unknown key 'relay_netwrks'", f->confpath);
	assert_non_null(strstr(why, want));

	/* a required parameter missing */
	load_config(f, "");
	assert_null(build(f, "users", why, sizeof(why)));
	assert_non_null(strstr(why, "[check.users] users_file: required but not set"));

	/* the same binding for a def that is not in the registry */
	static const struct check_def *const defs[] = { &def_a, &def_weighted };
	load_config(f, "[check.weighted]\nweight = 11\n");
	assert_null(chain_new_defs(f->cfg, defs, 2, &f->env, why, sizeof(why)));
	snprintf(want, sizeof(want), "%s:2: [check.weighted] weight:", f->confpath);
	assert_non_null(strstr(why, want));
	assert_int_equal(f->nfreed, 1);     /* a was built and freed again */
}

static void test_params_bound(void **state)
{
	struct fx *f = *state;
	static const struct check_def *const defs[] = { &def_weighted };
	load_config(f, "[check.weighted]\nweight = 7\n");
	use_defs(f, defs, 1);
	assert_int_equal(seen_weight, 7);
	chain_free(f->chain);
	f->chain = NULL;
	f->ninst = 0;
	load_config(f, "[check.other]\nkey = 1\n");     /* other sections do not matter */
	use_defs(f, defs, 1);
	assert_int_equal(seen_weight, 5);              /* the default */
}

static void test_real_checks_order(void **state)
{
	struct fx *f = *state;
	/* both checks object to the second recipient: the first listed wins */
	use_chain(f, "[check.limits]\nrecipient_limit = 1\n", "limits, relay");
	assert_int_equal(rcpt(f, "a@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "b@elsewhere.test"), V_TEMPFAIL, 452, "4.5.3", "Too many recipients");
	assert_metric(f, "check=\"relay\",phase=\"rcpt\"} 1\n");   /* only for the first */
	chain_free(f->chain);
	metrics_free(f->metrics);
	f->env.metrics = f->metrics = metrics_new("mx", "mx");
	f->chain = build(f, "relay, limits", (char[256]){ 0 }, 256);
	assert_non_null(f->chain);
	assert_verdict(rcpt(f, "b@elsewhere.test"), V_REJECT, 554, "5.7.1", "Relay access denied");
	assert_no_metric(f, "check=\"limits\"");             /* never asked */
	assert_verdict(rcpt(f, "c@example.test"), V_TEMPFAIL, 452, "4.5.3", NULL);
	assert_metric(f, "check=\"relay\",phase=\"rcpt\"} 2\n");
	assert_metric(f, "check=\"limits\",phase=\"rcpt\"} 1\n");
}

/* ---- relay -------------------------------------------------------------- */

static void test_relay_local_domains(void **state)
{
	struct fx *f = *state;
	use_chain(f, "", "relay");
	assert_int_equal(rcpt(f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "Bob@EXAMPLE.TEST").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "carol@local.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "postmaster").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "PostMaster").kind, V_CONTINUE);
	assert_int_equal(f->e->nrcpt, 5);
}

static void test_relay_denied(void **state)
{
	struct fx *f = *state;
	use_chain(f, "", "relay");
	struct verdict v = rcpt(f, "victim@elsewhere.test");
	assert_verdict(v, V_REJECT, 554, "5.7.1", "Relay access denied");
	assert_string_equal(v.reason, "<victim@elsewhere.test>: Relay access denied");
	/* a subdomain of a local domain is not local; nor is another bare name */
	assert_verdict(rcpt(f, "x@sub.example.test"), V_REJECT, 554, "5.7.1", NULL);
	assert_verdict(rcpt(f, "x@example.test.evil.test"), V_REJECT, 554, "5.7.1", NULL);
	assert_verdict(rcpt(f, "abuse"), V_REJECT, 554, "5.7.1", NULL);
	assert_int_equal(f->e->nrcpt, 0);
	/* the chain counts refused recipients for the session (badrcpt) */
	assert_int_equal(f->ctx.rcpt_refused, 4);
	assert_int_equal(rcpt(f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(f->ctx.rcpt_refused, 4);
	run(f, PHASE_CONNECT);
	assert_int_equal(f->ctx.rcpt_refused, 0);
	assert_true(log_has(f, "\"check\":\"relay\",\"phase\":\"rcpt\",\"verdict\":\"reject\",\"code\":554,\"enh\":\"5.7.1\",\"reason\":\"<victim@elsewhere.test>: Relay access denied\""));
}

static void test_relay_networks(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.relay]\nrelay_networks = 192.0.2.0/24, 2001:db8::/32 198.51.100.7\n", "relay");
	set_client(f, "192.0.2.77", NULL);
	assert_int_equal(rcpt(f, "x@elsewhere.test").kind, V_CONTINUE);
	set_client(f, "::ffff:192.0.2.9", NULL);
	assert_int_equal(rcpt(f, "x@elsewhere.test").kind, V_CONTINUE);
	set_client(f, "2001:db8:1::25", NULL);
	assert_int_equal(rcpt(f, "x@elsewhere.test").kind, V_CONTINUE);
	set_client(f, "198.51.100.7", NULL);
	assert_int_equal(rcpt(f, "x@elsewhere.test").kind, V_CONTINUE);
	set_client(f, "198.51.100.8", NULL);
	assert_verdict(rcpt(f, "x@elsewhere.test"), V_REJECT, 554, "5.7.1", "Relay access denied");
	set_client(f, "192.0.3.1", NULL);
	assert_verdict(rcpt(f, "x@elsewhere.test"), V_REJECT, 554, "5.7.1", NULL);
	set_client(f, "", NULL);          /* unknown client address */
	assert_verdict(rcpt(f, "x@elsewhere.test"), V_REJECT, 554, "5.7.1", NULL);
}

static void test_relay_authenticated(void **state)
{
	struct fx *f = *state;
	use_chain(f, "", "relay");          /* allow_authenticated defaults to yes */
	set_client(f, "203.0.113.5", "alice");
	assert_int_equal(rcpt(f, "x@elsewhere.test").kind, V_CONTINUE);
	set_client(f, "203.0.113.5", "");
	assert_verdict(rcpt(f, "x@elsewhere.test"), V_REJECT, 554, "5.7.1", NULL);
	chain_free(f->chain);
	f->chain = NULL;
	use_chain(f, "[check.relay]\nallow_authenticated = no\n", "relay");
	set_client(f, "203.0.113.5", "alice");
	assert_verdict(rcpt(f, "x@elsewhere.test"), V_REJECT, 554, "5.7.1", NULL);
	assert_int_equal(rcpt(f, "x@example.test").kind, V_CONTINUE);
}

static void test_relay_bad_cidr(void **state)
{
	struct fx *f = *state;
	char why[512];
	static const char *bad[] = { "192.0.2.0/33", "not-a-net", "192.0.2.0/", "2001:db8::/129" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char conf[256], want[256];
		snprintf(conf, sizeof(conf), "[check.relay]\nrelay_networks = 10.0.0.0/8, %s\n", bad[i]);
		load_config(f, conf);
		assert_null(build(f, "relay", why, sizeof(why)));
		snprintf(want, sizeof(want), "check relay: relay_networks: '%s' is not a network", bad[i]);
		if (strncmp(why, want, strlen(want)) != 0)
			fail_msg("why: %s (want %s)", why, want);
	}
}

/* ---- lists -------------------------------------------------------------- */

static const char lists_conf[] =
	"[check.lists]\n"
	"allow_clients = 192.0.2.0/24, 2001:db8:1::/48\n"
	"block_clients = 192.0.2.66, 198.51.100.0/24\n"
	"block_helo = bad.example, .spam.example\n"
	"block_senders = spammer@remote.test, junk.example .bulk.example\n"
	"block_recipients = trap@example.test, old.example.test\n";

static void test_lists_clients(void **state)
{
	struct fx *f = *state;
	use_chain(f, lists_conf, "lists,relay");
	/* blocked, even inside an allowed network: block wins */
	set_client(f, "198.51.100.9", NULL);
	assert_verdict(run(f, PHASE_CONNECT), V_REJECT, 554, "5.7.1", "198.51.100.9 is on the local block list");
	set_client(f, "192.0.2.66", NULL);
	assert_verdict(run(f, PHASE_CONNECT), V_REJECT, 554, "5.7.1", NULL);
	assert_false(f->ctx.client_allowed);
	/* allowed: the session is marked, the connect phase ends */
	set_client(f, "192.0.2.10", NULL);
	assert_int_equal(run(f, PHASE_CONNECT).kind, V_CONTINUE);   /* the phase passed */
	assert_true(f->ctx.client_allowed);
	assert_metric(f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"lists\",verdict=\"accept\"} 1\n");
	f->ctx.client_allowed = false;
	set_client(f, "2001:db8:1:2::25", NULL);
	assert_int_equal(run(f, PHASE_CONNECT).kind, V_CONTINUE);
	assert_true(f->ctx.client_allowed);
	f->ctx.client_allowed = false;
	/* neither */
	set_client(f, "203.0.113.5", NULL);
	assert_int_equal(run(f, PHASE_CONNECT).kind, V_CONTINUE);
	assert_false(f->ctx.client_allowed);
	assert_true(log_has(f, "\"check\":\"lists\",\"phase\":\"connect\",\"verdict\":\"reject\""));
}

static void test_lists_helo_senders_recipients(void **state)
{
	struct fx *f = *state;
	use_chain(f, lists_conf, "lists");
	f->ctx.helo = "BAD.example";
	assert_verdict(run(f, PHASE_HELO), V_REJECT, 550, "5.7.1", "HELO BAD.example");
	f->ctx.helo = "mx.spam.example";
	assert_verdict(run(f, PHASE_HELO), V_REJECT, 550, "5.7.1", NULL);
	f->ctx.helo = "spam.example";          /* .suffix: below it only */
	assert_int_equal(run(f, PHASE_HELO).kind, V_CONTINUE);
	f->ctx.helo = "good.example";
	assert_int_equal(run(f, PHASE_HELO).kind, V_CONTINUE);

	static const char *const blocked[] = { "Spammer@Remote.Test", "x@junk.example", "y@a.bulk.example" };
	for (size_t i = 0; i < 3; i++) {
		f->e->sender = pool_strdup(f->e->pool, blocked[i]);
		assert_verdict(run(f, PHASE_MAIL), V_REJECT, 550, "5.7.1", "sender is on the local block list");
	}
	static const char *const fine[] = { "other@remote.test", "x@bulk.example", "x@junk.example.org", "" };
	for (size_t i = 0; i < 4; i++) {
		f->e->sender = pool_strdup(f->e->pool, fine[i]);
		assert_int_equal(run(f, PHASE_MAIL).kind, V_CONTINUE);
	}
	assert_verdict(rcpt(f, "TRAP@example.test"), V_REJECT, 550, "5.7.1", "recipient is on the local block list");
	assert_verdict(rcpt(f, "anyone@old.example.test"), V_REJECT, 550, "5.7.1", NULL);
	assert_int_equal(rcpt(f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(f->e->nrcpt, 1);
}

static void test_lists_bad_entries(void **state)
{
	struct fx *f = *state;
	char why[512];
	static const struct { const char *conf, *want; } bad[] = {
		{ "[check.lists]\nallow_clients = 192.0.2.0/33\n", "check lists: allow_clients: '192.0.2.0/33' is not a network" },
		{ "[check.lists]\nblock_clients = example.org\n", "check lists: block_clients: 'example.org' is not a network" },
		{ "[check.lists]\nblock_senders = a@b@c\n", "check lists: block_senders: 'a@b@c' is not an address" },
		{ "[check.lists]\nblock_recipients = @example.org\n", "check lists: block_recipients: '@example.org' is not" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		load_config(f, bad[i].conf);
		assert_null(build(f, "lists", why, sizeof(why)));
		if (strncmp(why, bad[i].want, strlen(bad[i].want)) != 0)
			fail_msg("why: %s (want %s)", why, bad[i].want);
	}
}

/* ---- headers ------------------------------------------------------------ */

static const char header_rules[] =
	"# header rules\n"
	"\n"
	"/^X-Ok:/ accept\n"
	"/^Subject:.*viagra/i reject Spam subject\n"
	"/^X-Mailer: BadMailer/ tempfail\n"
	"/^X-Trap:/ discard\n"
	"/^X-Q:/ quarantine held for review\n"
	"/^X-Path: \\/tmp\\// tag slash in a pattern\n";

/* Run the end of message over a message whose header section is hdrs. */
static struct verdict message_with(struct fx *f, const char *hdrs)
{
	static char msg[4096];
	snprintf(msg, sizeof(msg), "%s\r\nBody viagra text.\r\n", hdrs);
	f->ctx.data = msg;
	f->ctx.len = strlen(msg);
	f->ctx.header_bytes = strlen(hdrs) + 2;
	return run(f, PHASE_HEADERS);
}

static void use_rules(struct fx *f, const char *rules)
{
	char path[700], conf[800];
	snprintf(path, sizeof(path), "%s/header-rules", f->dir);
	tu_write_file(path, rules);
	snprintf(conf, sizeof(conf), "[check.headers]\nrules_file = %s\n", path);
	use_chain(f, conf, "headers");
}

static void test_headers_rules(void **state)
{
	struct fx *f = *state;
	use_rules(f, header_rules);
	/* folded: unfolded before matching; caseless flag */
	struct verdict v = message_with(f, "From: a@example.org\r\nSubject: buy\r\n VIAGRA now\r\n");
	assert_verdict(v, V_REJECT, 550, "5.7.1", "Spam subject");
	assert_string_equal(v.reason, "Spam subject");
	v = message_with(f, "X-Mailer: BadMailer 1.0\r\nSubject: hi\r\n");
	assert_verdict(v, V_TEMPFAIL, 451, "4.7.1", NULL);
	assert_int_equal(message_with(f, "X-Trap: yes\r\n").kind, V_DISCARD);
	v = message_with(f, "X-Q: 1\r\n");
	assert_int_equal(v.kind, V_QUARANTINE);
	assert_non_null(strstr(v.reason, "header-rules:7 matched \"X-Q: 1\": held for review"));
	/* accept: no further rule for this message */
	assert_int_equal(message_with(f, "X-Ok: 1\r\nSubject: viagra\r\n").kind, V_CONTINUE);
	/* no rule matches: the body is not looked at */
	assert_int_equal(message_with(f, "Subject: hello\r\nFrom: b@example.org\r\n").kind, V_CONTINUE);
	/* tag: through, with a header naming the rule */
	assert_int_equal(message_with(f, "X-Path: /tmp/x\r\n").kind, V_CONTINUE);
	assert_int_equal(f->ctx.nadd, 1);
	assert_string_equal(f->ctx.add[0].name, "X-Rampart-Header-Rule");
	assert_non_null(strstr(f->ctx.add[0].value, "header-rules:8; slash in a pattern"));
	assert_true(log_has(f, "\"check\":\"headers\",\"phase\":\"headers\",\"verdict\":\"reject\""));
}

static void test_headers_bad_rules(void **state)
{
	struct fx *f = *state;
	static const struct { const char *rules, *want; } bad[] = {
		{ "# ok\n/a/ reject\n/b( reject\n", "header-rules:3: the pattern has no closing '/'" },
		{ "/(unclosed/ reject\n", "header-rules:1: bad pattern at offset" },
		{ "/a/ bounce\n", "header-rules:1: unknown action 'bounce'" },
		{ "/a/q reject\n", "header-rules:1: unknown flag 'q'" },
		{ "Subject: x reject\n", "header-rules:1: expected /PATTERN/FLAGS ACTION [TEXT]" },
	};
	char path[700], conf[800], why[512];
	snprintf(path, sizeof(path), "%s/header-rules", f->dir);
	snprintf(conf, sizeof(conf), "[check.headers]\nrules_file = %s\n", path);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		tu_write_file(path, bad[i].rules);
		load_config(f, conf);
		assert_null(build(f, "headers", why, sizeof(why)));
		if (!strstr(why, bad[i].want) || strncmp(why, "check headers: ", 15) != 0)
			fail_msg("why: %s (want %s)", why, bad[i].want);
	}
	snprintf(conf, sizeof(conf), "[check.headers]\nrules_file = %s/none\n", f->dir);
	load_config(f, conf);
	assert_null(build(f, "headers", why, sizeof(why)));
	assert_non_null(strstr(why, "No such file"));
}

/* A pattern with catastrophic backtracking meets the match limit: the
 * rule does not match, the stage goes on, a warning is logged. */
static void test_headers_match_limit(void **state)
{
	struct fx *f = *state;
	use_rules(f, "/^Subject: (a+)+$/ reject\n");
	char hdr[200];
	snprintf(hdr, sizeof(hdr), "Subject: %s!\r\n", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	assert_int_equal(message_with(f, hdr).kind, V_CONTINUE);
	assert_true(log_has(f, "headers.match_error"));
}

/* ---- limits ------------------------------------------------------------- */

static void test_limits_declared_size(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.limits]\nmessage_size_limit = 1k\n", "limits");
	f->ctx.declared_size = 1025;
	assert_verdict(run(f, PHASE_MAIL), V_REJECT, 552, "5.3.4", "(1024)");
	f->ctx.declared_size = 1024;
	assert_int_equal(run(f, PHASE_MAIL).kind, V_CONTINUE);
	f->ctx.declared_size = -1;          /* no SIZE= */
	assert_int_equal(run(f, PHASE_MAIL).kind, V_CONTINUE);
}

static void test_limits_recipients(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.limits]\nrecipient_limit = 2\n", "limits");
	assert_int_equal(rcpt(f, "a@example.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "b@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "c@example.test"), V_TEMPFAIL, 452, "4.5.3", "Too many recipients (limit 2)");
	assert_verdict(rcpt(f, "d@example.test"), V_TEMPFAIL, 452, "4.5.3", NULL);
	assert_int_equal(f->e->nrcpt, 2);
	assert_metric(f, "check=\"limits\",verdict=\"tempfail\"} 2\n");
}

static void test_limits_message_size(void **state)
{
	struct fx *f = *state;
	use_chain(f, "[check.limits]\nmessage_size_limit = 2k\n", "limits");
	char *msg = xmalloc(4096);
	memset(msg, 'x', 4096);
	f->ctx.data = msg;
	f->ctx.len = 2049;
	assert_verdict(run(f, PHASE_MESSAGE), V_REJECT, 552, "5.3.4", "(2048)");
	f->ctx.len = 2048;
	assert_int_equal(run(f, PHASE_MESSAGE).kind, V_CONTINUE);
	/* the stage limit is not what counts when the check has its own */
	f->ctx.len = 4096;
	assert_verdict(run(f, PHASE_MESSAGE), V_REJECT, 552, "5.3.4", NULL);
	f->ctx.data = NULL;
	free(msg);
}

static void test_limits_fall_back_to_stage(void **state)
{
	struct fx *f = *state;
	/* 0 (the default) means the stage's bounds: 5000 bytes, 3 recipients */
	use_chain(f, "[check.limits]\nmessage_size_limit = 0\n", "limits");
	f->ctx.declared_size = 5001;
	assert_verdict(run(f, PHASE_MAIL), V_REJECT, 552, "5.3.4", "(5000)");
	f->ctx.declared_size = 5000;
	assert_int_equal(run(f, PHASE_MAIL).kind, V_CONTINUE);
	for (int i = 0; i < 3; i++)
		assert_int_equal(rcpt(f, "a@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "d@example.test"), V_TEMPFAIL, 452, "4.5.3", "(limit 3)");
	f->ctx.len = 5001;
	assert_verdict(run(f, PHASE_MESSAGE), V_REJECT, 552, "5.3.4", NULL);
	f->ctx.len = 5000;
	assert_int_equal(run(f, PHASE_MESSAGE).kind, V_CONTINUE);

	/* no limit anywhere: nothing is refused */
	chain_free(f->chain);
	f->chain = NULL;
	f->env.max_message_size = 0;
	f->env.max_recipients = 0;
	use_chain(f, "", "limits");
	f->ctx.declared_size = 1LL << 40;
	assert_int_equal(run(f, PHASE_MAIL).kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "e@example.test").kind, V_CONTINUE);
}

/* ---- users -------------------------------------------------------------- */

static void use_users(struct fx *f, const char *list)
{
	char path[700], conf[900];
	snprintf(path, sizeof(path), "%s/users", f->dir);
	tu_write_file(path, list);
	snprintf(conf, sizeof(conf), "[check.users]\nusers_file = %s\n", path);
	use_chain(f, conf, "users");
}

/* Wait until time(NULL) moves on: the list is looked at once a second. */
static void next_second(void)
{
	time_t t0 = time(NULL);
	while (time(NULL) == t0) {
		struct timespec ts = { 0, 20 * 1000 * 1000 };
		nanosleep(&ts, NULL);
	}
}

static void rewrite_users(struct fx *f, const char *list, time_t mtime)
{
	char path[700];
	snprintf(path, sizeof(path), "%s/users", f->dir);
	tu_write_file(path, list);
	struct timespec ts[2] = { { mtime, 0 }, { mtime, 0 } };
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void test_users_unknown_and_known(void **state)
{
	struct fx *f = *state;
	use_users(f, "# users\nalice@example.test\nBob@Local.Test 10m\n\n");
	struct verdict v = rcpt(f, "carol@example.test");
	assert_verdict(v, V_REJECT, 550, "5.1.1", "User unknown");
	assert_string_equal(v.reason, "<carol@example.test>: Recipient address rejected: User unknown");
	assert_int_equal(rcpt(f, "alice@example.test").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "ALICE@Example.Test").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "bob@local.test").kind, V_CONTINUE);
	/* a user of one local domain is not a user of the other */
	assert_verdict(rcpt(f, "bob@example.test"), V_REJECT, 550, "5.1.1", NULL);
	/* not a local domain: the relay check's business */
	assert_int_equal(rcpt(f, "carol@elsewhere.test").kind, V_CONTINUE);
	/* postmaster, bare or at a local domain, always passes */
	assert_int_equal(rcpt(f, "postmaster").kind, V_CONTINUE);
	assert_int_equal(rcpt(f, "Postmaster@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "postmasters@example.test"), V_REJECT, 550, "5.1.1", NULL);
	assert_verdict(rcpt(f, "xpostmaster@example.test"), V_REJECT, 550, "5.1.1", NULL);
}

static void test_users_bad_list(void **state)
{
	struct fx *f = *state;
	char path[700], conf[900], why[512], want[800];
	snprintf(path, sizeof(path), "%s/users", f->dir);
	tu_write_file(path, "alice@example.test\nno-at-sign\n");
	snprintf(conf, sizeof(conf), "[check.users]\nusers_file = %s\n", path);
	load_config(f, conf);
	assert_null(build(f, "users", why, sizeof(why)));
	snprintf(want, sizeof(want), "check users: %s:2: expected 'user@domain [quota]'", path);
	if (strncmp(why, want, strlen(want)) != 0)
		fail_msg("why: %s", why);
	snprintf(conf, sizeof(conf), "[check.users]\nusers_file = %s/missing\n", f->dir);
	load_config(f, conf);
	assert_null(build(f, "users", why, sizeof(why)));
	assert_non_null(strstr(why, "missing: cannot read"));
}

static void test_users_reload(void **state)
{
	struct fx *f = *state;
	time_t t = time(NULL);
	use_users(f, "alice@example.test\n");
	assert_verdict(rcpt(f, "carol@example.test"), V_REJECT, 550, "5.1.1", NULL);

	/* carol added, alice removed */
	rewrite_users(f, "carol@example.test\n", t + 100);
	next_second();
	assert_int_equal(rcpt(f, "carol@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "alice@example.test"), V_REJECT, 550, "5.1.1", NULL);

	/* a broken list is refused: the last good one stays, with a warning */
	rewrite_users(f, "carol@example.test\ndave\n", t + 200);
	next_second();
	assert_int_equal(rcpt(f, "carol@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "dave@example.test"), V_REJECT, 550, "5.1.1", NULL);
	assert_true(log_has(f, "\"event\":\"users.reload_failed\""));
	assert_true(log_has(f, "users:2: expected 'user@domain [quota]'"));

	/* the file gone: still the last good list */
	char path[700];
	snprintf(path, sizeof(path), "%s/users", f->dir);
	assert_int_equal(unlink(path), 0);
	next_second();
	assert_int_equal(rcpt(f, "carol@example.test").kind, V_CONTINUE);

	/* repaired */
	rewrite_users(f, "dave@example.test\n", t + 300);
	next_second();
	assert_int_equal(rcpt(f, "dave@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "carol@example.test"), V_REJECT, 550, "5.1.1", NULL);
}

/* ---- metrics ------------------------------------------------------------ */

static void test_metrics_counters(void **state)
{
	struct fx *f = *state;
	char path[700], conf[900];
	snprintf(path, sizeof(path), "%s/users", f->dir);
	tu_write_file(path, "alice@example.test\n");
	snprintf(conf, sizeof(conf), "[check.users]\nusers_file = %s\n[check.limits]\nrecipient_limit = 2\n", path);
	use_chain(f, conf, "relay, users, limits");
	assert_int_equal(rcpt(f, "alice@example.test").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "x@elsewhere.test"), V_REJECT, 554, "5.7.1", NULL);
	assert_verdict(rcpt(f, "bob@example.test"), V_REJECT, 550, "5.1.1", NULL);
	assert_verdict(rcpt(f, "bob@example.test"), V_REJECT, 550, "5.1.1", NULL);
	assert_int_equal(rcpt(f, "postmaster").kind, V_CONTINUE);
	assert_verdict(rcpt(f, "alice@example.test"), V_TEMPFAIL, 452, "4.5.3", NULL);

	assert_metric(f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"relay\",verdict=\"reject\"} 1\n");
	assert_metric(f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"users\",verdict=\"reject\"} 2\n");
	assert_metric(f, "rampart_check_verdicts_total{stage=\"mx\",instance=\"mx\",check=\"limits\",verdict=\"tempfail\"} 1\n");
	assert_metric(f, "rampart_check_evaluations_total{stage=\"mx\",instance=\"mx\",check=\"relay\",phase=\"rcpt\"} 6\n");
	assert_metric(f, "rampart_check_evaluations_total{stage=\"mx\",instance=\"mx\",check=\"users\",phase=\"rcpt\"} 5\n");
	assert_metric(f, "rampart_check_evaluations_total{stage=\"mx\",instance=\"mx\",check=\"limits\",phase=\"rcpt\"} 3\n");
	assert_metric(f, "# TYPE rampart_check_verdicts_total counter\n");
	assert_no_metric(f, "verdict=\"continue\"");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_order_all_continue, setup, teardown),
		cmocka_unit_test_setup_teardown(test_first_objection_wins, setup, teardown),
		cmocka_unit_test_setup_teardown(test_accept_ends_phase_with_success, setup, teardown),
		cmocka_unit_test_setup_teardown(test_discard_and_quarantine, setup, teardown),
		cmocka_unit_test_setup_teardown(test_default_codes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checks_without_hook_are_skipped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_empty_chain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_metrics_registry, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async_continue_resumes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async_reject_stops, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async_accept_ends_phase, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async_last_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_async_from_event_loop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_add_header, setup, teardown),
		cmocka_unit_test_setup_teardown(test_remove_header, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_check, setup, teardown),
		cmocka_unit_test_setup_teardown(test_init_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_param_error_names_file_line, setup, teardown),
		cmocka_unit_test_setup_teardown(test_params_bound, setup, teardown),
		cmocka_unit_test_setup_teardown(test_real_checks_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_relay_local_domains, setup, teardown),
		cmocka_unit_test_setup_teardown(test_relay_denied, setup, teardown),
		cmocka_unit_test_setup_teardown(test_relay_networks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_relay_authenticated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_relay_bad_cidr, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lists_clients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lists_helo_senders_recipients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lists_bad_entries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_headers_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_headers_bad_rules, setup, teardown),
		cmocka_unit_test_setup_teardown(test_headers_match_limit, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits_declared_size, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits_recipients, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits_message_size, setup, teardown),
		cmocka_unit_test_setup_teardown(test_limits_fall_back_to_stage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_users_unknown_and_known, setup, teardown),
		cmocka_unit_test_setup_teardown(test_users_bad_list, setup, teardown),
		cmocka_unit_test_setup_teardown(test_users_reload, setup, teardown),
		cmocka_unit_test_setup_teardown(test_metrics_counters, setup, teardown),
	};
	return cmocka_run_group_tests_name("chain", tests, NULL, NULL);
}
