/*
 * chain.c — the check chain runner (see chain.h), and the small helpers
 * every check uses (check_done, verdict names, headers to add).
 */
#include "chain.h"
#include "../mail/header.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct chain_item {
	const struct check_def *def;
	void *params;               /* bound parameters (def->params->size bytes) */
	void *inst;
};

struct chain {
	struct chain_item *items;
	size_t n;
	struct check_call *calls;   /* in progress (freed by chain_free when a shutdown cut them) */
	struct metric *evals, *verdicts;
};

struct check_call {
	struct chain *chain;
	struct check_call *older, *newer;  /* chain.calls */
	enum check_phase phase;
	struct check_ctx *ctx;
	chain_done_fn done;
	void *arg;
	size_t next;                /* index of the next check to run */
	bool running;               /* inside the hook call */
	bool answered;
	struct verdict v;
};

static const char *verdict_names[] = { "continue", "accept", "tempfail", "reject", "discard", "quarantine" };
static const char *phase_names[] = { "connect", "helo", "mail", "rcpt", "data", "headers", "message" };

const char *verdict_name(enum verdict_kind k) { return verdict_names[k]; }
const char *phase_name(enum check_phase p) { return phase_names[p]; }

void check_ctx_add_header(struct check_ctx *ctx, const char *name, const char *value)
{
	if (ctx->nadd == ctx->add_cap) {
		ctx->add_cap = ctx->add_cap ? ctx->add_cap * 2 : 4;
		ctx->add = xrealloc(ctx->add, ctx->add_cap * sizeof(*ctx->add));
	}
	ctx->add[ctx->nadd].name = xstrdup(name);
	ctx->add[ctx->nadd].value = xstrdup(value);
	ctx->nadd++;
}

void check_ctx_remove_header(struct check_ctx *ctx, const char *name, unsigned index)
{
	for (size_t i = 0; i < ctx->ndel; i++)
		if (ctx->del[i].index == index && strcasecmp(ctx->del[i].name, name) == 0)
			return;
	if (ctx->ndel == ctx->del_cap) {
		ctx->del_cap = ctx->del_cap ? ctx->del_cap * 2 : 4;
		ctx->del = xrealloc(ctx->del, ctx->del_cap * sizeof(*ctx->del));
	}
	ctx->del[ctx->ndel].name = xstrdup(name);
	ctx->del[ctx->ndel].index = index;
	ctx->ndel++;
}

void check_ctx_remove_all(struct check_ctx *ctx, const char *name)
{
	unsigned idx = 0;
	struct hdr_field f;
	for (size_t pos = 0; ctx->data && hdr_next(ctx->data, ctx->header_bytes, &pos, &f);)
		if (hdr_is(&f, name))
			check_ctx_remove_header(ctx, name, ++idx);
}

void check_ctx_clear_headers(struct check_ctx *ctx)
{
	for (size_t i = 0; i < ctx->nadd; i++) {
		free(ctx->add[i].name);
		free(ctx->add[i].value);
	}
	for (size_t i = 0; i < ctx->ndel; i++)
		free(ctx->del[i].name);
	free(ctx->add);
	free(ctx->del);
	ctx->add = NULL;
	ctx->del = NULL;
	ctx->nadd = ctx->add_cap = ctx->ndel = ctx->del_cap = 0;
}

struct chain *chain_new_defs(const struct config *cfg, const struct check_def *const *defs, size_t n,
			     const struct check_env *env, char *why, size_t whylen)
{
	struct chain *c = xcalloc(1, sizeof(*c));
	c->items = xcalloc(n ? n : 1, sizeof(*c->items));
	if (env->metrics) {
		c->evals = metrics_counter(env->metrics, "rampart_check_evaluations_total",
					   "Check hook evaluations, by check and phase.");
		c->verdicts = metrics_counter(env->metrics, "rampart_check_verdicts_total",
					      "Check verdicts other than continue, by check and verdict.");
	}
	for (size_t i = 0; i < n; i++) {
		const struct check_def *d = defs[i];
		struct chain_item *it = &c->items[c->n++];
		it->def = d;
		if (d->params) {
			/* [check.NAME.INSTANCE] (this instance's own settings)
			 * replaces [check.NAME] (everyone's) when present. */
			char section[160];
			chain_check_section(cfg, d->name, env->instance, section, sizeof(section));
			it->params = xcalloc(1, d->params->size);
			struct config_error err;
			if (!config_bind(cfg, section, d->params, it->params, &err)) {
				snprintf(why, whylen, "%s", err.msg);
				chain_free(c);
				return NULL;
			}
		}
		char iwhy[256] = "";
		it->inst = d->init ? d->init(it->params, env, iwhy, sizeof(iwhy)) : NULL;
		if (d->init && !it->inst) {
			snprintf(why, whylen, "check %s: %s", d->name, iwhy);
			chain_free(c);
			return NULL;
		}
	}
	return c;
}

void chain_check_section(const struct config *cfg, const char *name, const char *instance, char *out,
			 size_t outlen)
{
	snprintf(out, outlen, "check.%s.%s", name, instance ? instance : "");
	if (!instance || !cfg || !config_has_section(cfg, out))
		snprintf(out, outlen, "check.%s", name);
}

struct chain *chain_new(const struct config *cfg, const struct strlist *names,
			const struct check_env *env, char *why, size_t whylen)
{
	const struct check_def **defs = xcalloc(names->n ? names->n : 1, sizeof(*defs));
	for (size_t i = 0; i < names->n; i++) {
		defs[i] = check_find(names->v[i]);
		if (!defs[i]) {
			char known[256] = "";
			for (size_t k = 0; check_registry[k]; k++)
				snprintf(known + strlen(known), sizeof(known) - strlen(known), "%s%s", k ? ", " : "",
					 check_registry[k]->name);
			snprintf(why, whylen, "unknown check '%s' (known: %s)", names->v[i], known);
			free(defs);
			return NULL;
		}
	}
	struct chain *c = chain_new_defs(cfg, defs, names->n, env, why, whylen);
	free(defs);
	return c;
}

void chain_free(struct chain *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++) {
		struct chain_item *it = &c->items[i];
		if (it->inst && it->def->free)
			it->def->free(it->inst);
		if (it->params) {
			config_release(it->def->params, it->params);
			free(it->params);
		}
	}
	/* A shutdown cut these (their checks were stopped; no answer will
	 * come): nothing is told, they only go. */
	while (c->calls) {
		struct check_call *call = c->calls;
		c->calls = call->older;
		free(call);
	}
	free(c->items);
	free(c);
}

void chain_stop(struct chain *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++) {
		struct chain_item *it = &c->items[i];
		if (it->inst && it->def->stop)
			it->def->stop(it->inst);
	}
}

static void finish(struct check_call *call)
{
	chain_done_fn done = call->done;
	void *arg = call->arg;
	struct verdict v = call->v;
	/* refused for good only: a 4xx (greylisting, a rate limit) is no
	 * sign of a dictionary attack */
	if (call->phase == PHASE_RCPT && v.kind == V_REJECT)
		call->ctx->rcpt_refused++;
	struct chain *c = call->chain;
	if (call->newer)
		call->newer->older = call->older;
	else
		c->calls = call->older;
	if (call->older)
		call->older->newer = call->newer;
	free(call);
	done(arg, &v);
}

/* Log and count a verdict; true if the phase goes on to the next check. */
static bool decided(struct check_call *call)
{
	struct chain *c = call->chain;
	const struct chain_item *it = &c->items[call->next - 1];
	if (call->v.kind == V_CONTINUE)
		return true;
	call->v.check = it->def->name;
	const char *vn = verdict_names[call->v.kind];
	log_info(call->ctx->sid, call->ctx->qid, "check.verdict",
		 "check=%s phase=%s verdict=%s code=%d enh=%s reason=%s client=%s",
		 it->def->name, phase_names[call->phase], vn, call->v.code, call->v.enh,
		 call->v.reason, call->ctx->client ? call->ctx->client->addr : "");
	if (c->verdicts) {
		char labels[160];
		snprintf(labels, sizeof(labels), "check=\"%s\",verdict=\"%s\"", it->def->name, vn);
		metric_inc(c->verdicts, labels);
	}
	return false;
}

/* Run checks from call->next on, until one answers later or objects. */
static void advance(struct check_call *call)
{
	struct chain *c = call->chain;
	memset(&call->v, 0, sizeof(call->v));
	while (call->next < c->n) {
		struct chain_item *it = &c->items[call->next++];
		check_hook_fn fn = it->def->hooks[call->phase];
		if (!fn)
			continue;
		if (c->evals) {
			char labels[160];
			snprintf(labels, sizeof(labels), "check=\"%s\",phase=\"%s\"", it->def->name,
				 phase_names[call->phase]);
			metric_inc(c->evals, labels);
		}
		call->answered = false;
		call->running = true;
		memset(&call->v, 0, sizeof(call->v));
		fn(it->inst, call->ctx, call);
		call->running = false;
		if (!call->answered)
			return;     /* asynchronous: check_done() resumes */
		if (!decided(call))
			break;
	}
	if (call->v.kind == V_ACCEPT)
		call->v.kind = V_CONTINUE;   /* the phase passed */
	finish(call);
}

void chain_run(struct chain *c, enum check_phase phase, struct check_ctx *ctx, chain_done_fn done, void *arg)
{
	/* A new client (a connection, or XCLIENT naming another one): the
	 * facts checks left about the previous one go. */
	if (phase == PHASE_CONNECT) {
		ctx->client_allowed = false;
		ctx->rdns = RDNS_UNCHECKED;
		ctx->rcpt_refused = 0;
		ctx->client_ptr[0] = '\0';
		ctx->dnsbl_score = 0;
		ctx->dnswl = false;
		ctx->dnsbl_listed[0] = '\0';
	}
	/* A new transaction: no DKIM results yet (the dkim check fills them
	 * at end of message; the spf check clears and fills its own at MAIL). */
	if (phase == PHASE_MAIL) {
		ctx->auth.dkim = AUTH_DKIM_UNCHECKED;
		ctx->auth.ndkim = 0;
	}
	struct check_call *call = xcalloc(1, sizeof(*call));
	call->chain = c;
	call->phase = phase;
	call->ctx = ctx;
	call->done = done;
	call->arg = arg;
	call->older = c->calls;
	if (call->older)
		call->older->newer = call;
	c->calls = call;
	advance(call);
}

void check_done(struct check_call *call, const struct verdict *v)
{
	if (call->answered)
		log_panic(call->ctx->sid, call->ctx->qid, "check.double_answer", "phase=%s", phase_names[call->phase]);
	call->v = *v;
	/* A verdict's kind decides its class: a tempfail is never a 5xx. */
	if (call->v.kind == V_TEMPFAIL && (call->v.code < 400 || call->v.code > 499))
		call->v.code = 451;
	if (call->v.kind == V_REJECT && (call->v.code < 500 || call->v.code > 599))
		call->v.code = 550;
	call->answered = true;
	if (call->running)
		return;         /* advance() goes on */
	/* Answered later, from the event loop. */
	if (decided(call)) {
		advance(call);
		return;
	}
	if (call->v.kind == V_ACCEPT)
		call->v.kind = V_CONTINUE;
	finish(call);
}

void check_continue(struct check_call *call)
{
	struct verdict v = { .kind = V_CONTINUE };
	check_done(call, &v);
}

void check_reject(struct check_call *call, int code, const char *enh, const char *fmt, ...)
{
	struct verdict v = { .kind = code >= 500 ? V_REJECT : V_TEMPFAIL, .code = code };
	snprintf(v.enh, sizeof(v.enh), "%s", enh);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v.reason, sizeof(v.reason), fmt, ap);
	va_end(ap);
	check_done(call, &v);
}
