/*
 * quota.c — hard quotas per authenticated account (Maraboli DM34), the
 * defence against a leaked password turning into a spam outbreak.
 *
 * Each quota is a token bucket in the state store, per login (in lower
 * case): messages_per_hour (a message costs 1 at MAIL), recipients_per_day
 * (1 per recipient at RCPT), bytes_per_day (the message's size at the end
 * of DATA); 0 turns one off.  An account that exceeds a quota gets
 * 451 4.7.1 and, with hold = yes (the default), is put on hold: the key
 * "hold:LOGIN" (no expiry) records why and when, every later MAIL from the
 * account gets 451 4.7.1 "account on hold" (its mail waits at the client,
 * nothing is lost), the hold is logged (quota.hold) and counted
 * (rampart_quota_holds_total, an alert), and only an administrator lifts
 * it: `rampartctl user release LOGIN` (`rampartctl user show LOGIN` shows
 * the buckets and the hold).
 *
 * Mail without a login is not this check's business (the rate limits of
 * check ratelimit are).  When the store fails, failure_mode applies:
 * tempfail (451 4.3.0, the default) or continue; logged and counted.
 */
#include "check.h"
#include "../mail/state.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"

#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct quota_params {
	long long messages_per_hour;
	long long recipients_per_day;
	long long bytes_per_day;
	bool hold;
	int failure_mode;           /* 0 tempfail, 1 continue */
};

#define P(f) offsetof(struct quota_params, f)
static const struct param_def quota_param_defs[] = {
	{ "messages_per_hour", PT_INT, "0", 0, 100000000, NULL, P(messages_per_hour),
	  "messages one account may send per hour (0: no quota)" },
	{ "recipients_per_day", PT_INT, "0", 0, 1000000000, NULL, P(recipients_per_day),
	  "recipients one account may send to per day (0: no quota)" },
	{ "bytes_per_day", PT_SIZE, "0", 0, 1LL << 50, NULL, P(bytes_per_day),
	  "bytes one account may send per day (0: no quota)" },
	{ "hold", PT_BOOL, "yes", 0, 0, NULL, P(hold),
	  "an account over a quota is put on hold until rampartctl user release (otherwise it only waits for its bucket)" },
	{ "failure_mode", PT_ENUM, "tempfail", 0, 0, "tempfail|continue", P(failure_mode),
	  "when the state store fails: tempfail (451 4.3.0) or continue; logged and counted" },
	PARAM_END
};

static const struct param_set quota_params_set = {
	"check.quota", "hard quotas per authenticated account (messages, recipients, bytes), with automatic hold",
	quota_param_defs, sizeof(struct quota_params)
};

struct quota {
	const struct quota_params *p;
	struct state *st;
	struct metric *m_holds, *m_total;
};

enum qkind { Q_MESSAGES, Q_RECIPIENTS, Q_BYTES };
static const char *const qnames[] = { "messages", "recipients", "bytes" };

static void *quota_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	(void)why; (void)whylen;
	struct quota *q = xcalloc(1, sizeof(*q));
	q->p = params;
	q->st = env->state;
	if (env->metrics) {
		q->m_holds = metrics_counter(env->metrics, "rampart_quota_holds_total",
					     "Accounts put on hold for exceeding a quota (each one needs rampartctl user release).");
		q->m_total = metrics_counter(env->metrics, "rampart_quota_total",
					     "Quota decisions: allowed, exceeded, held (mail from an account on hold), error.");
	}
	return q;
}

static void quota_free(void *inst)
{
	free(inst);
}

static void count(struct quota *q, const char *result)
{
	if (q->m_total) {
		char l[64];
		snprintf(l, sizeof(l), "result=\"%s\"", result);
		metric_inc(q->m_total, l);
	}
}

struct qcall {
	struct quota *q;
	struct check_ctx *ctx;
	struct check_call *call;
	enum qkind kind;
	char login[256];
	char key[320];
	char hold_key[320];
	char reason[200];
};

static bool login_of(const struct check_ctx *ctx, char *out, size_t outlen)
{
	const char *l = ctx->client ? ctx->client->login : NULL;
	if (!l || !*l)
		return false;
	size_t i = 0;
	for (; l[i] && i < outlen - 1; i++)
		out[i] = (char)tolower((unsigned char)l[i]);
	out[i] = '\0';
	return true;
}

static struct qcall *qcall_new(struct quota *q, struct check_ctx *ctx, struct check_call *call, enum qkind kind)
{
	struct qcall *c = xcalloc(1, sizeof(*c));
	c->q = q;
	c->ctx = ctx;
	c->call = call;
	c->kind = kind;
	login_of(ctx, c->login, sizeof(c->login));
	snprintf(c->key, sizeof(c->key), "quota:%s:%s", qnames[kind], c->login);
	snprintf(c->hold_key, sizeof(c->hold_key), "hold:%s", c->login);
	return c;
}

static void failed(struct qcall *c, const struct state_result *r)
{
	log_warn(c->ctx->sid, c->ctx->qid, "quota.error", "op=%s key=%s reason=%s failure_mode=%s login=%s",
		 state_op_name(r->op), r->key, r->reason, c->q->p->failure_mode ? "continue" : "tempfail", c->login);
	count(c->q, "error");
	if (c->q->p->failure_mode)
		check_continue(c->call);
	else
		check_reject(c->call, 451, "4.3.0", "Temporary local problem checking the account's quota; try again later");
	free(c);
}

static void held(void *arg, const struct state_result *r)
{
	struct qcall *c = arg;
	if (r->status == STATE_ERROR) {
		failed(c, r);
		return;
	}
	check_reject(c->call, 451, "4.7.1", "Quota exceeded (%s); account %s is on hold, ask the postmaster", c->reason,
		     c->login);
	free(c);
}

static void exceeded(struct qcall *c, long long limit, const char *per)
{
	struct quota *q = c->q;
	snprintf(c->reason, sizeof(c->reason), "%lld %s per %s", limit, qnames[c->kind], per);
	count(q, "exceeded");
	if (!q->p->hold) {
		check_reject(c->call, 451, "4.7.1", "Quota exceeded for %s (%s); try again later", c->login, c->reason);
		free(c);
		return;
	}
	if (q->m_holds)
		metric_inc(q->m_holds, NULL);
	log_warn(c->ctx->sid, c->ctx->qid, "quota.hold", "login=%s quota=%s client=%s", c->login, c->reason,
		 c->ctx->client ? c->ctx->client->addr : "");
	char v[300];
	int n = snprintf(v, sizeof(v), "%s since %lld", c->reason, (long long)time(NULL));
	state_set(q->st, c->hold_key, v, (size_t)n, 0, held, c);
}

static void taken(void *arg, const struct state_result *r)
{
	struct qcall *c = arg;
	if (r->status == STATE_ERROR) {
		failed(c, r);
		return;
	}
	if (!r->allowed) {
		const struct quota_params *p = c->q->p;
		long long limit = c->kind == Q_MESSAGES ? p->messages_per_hour
				  : c->kind == Q_RECIPIENTS ? p->recipients_per_day : p->bytes_per_day;
		exceeded(c, limit, c->kind == Q_MESSAGES ? "hour" : "day");
		return;
	}
	count(c->q, "allowed");
	check_continue(c->call);
	free(c);
}

/* Take cost from the account's bucket of kind. */
static void take(struct qcall *c, double cost)
{
	const struct quota_params *p = c->q->p;
	long long limit = c->kind == Q_MESSAGES ? p->messages_per_hour
			  : c->kind == Q_RECIPIENTS ? p->recipients_per_day : p->bytes_per_day;
	double period = c->kind == Q_MESSAGES ? 3600.0 : 86400.0;
	if (limit <= 0) {
		check_continue(c->call);
		free(c);
		return;
	}
	state_take(c->q->st, c->key, (double)limit / period, (double)limit, cost, taken, c);
}

static void hold_looked(void *arg, const struct state_result *r)
{
	struct qcall *c = arg;
	if (r->status == STATE_ERROR) {
		failed(c, r);
		return;
	}
	if (r->status == STATE_OK) {
		count(c->q, "held");
		check_reject(c->call, 451, "4.7.1", "Account %s is on hold (%s); ask the postmaster", c->login,
			     r->value ? r->value : "");
		free(c);
		return;
	}
	take(c, 1);
}

static bool skip(struct quota *q, struct check_ctx *ctx, struct check_call *call)
{
	char l[256];
	if (!login_of(ctx, l, sizeof(l))) {
		check_continue(call);
		return true;
	}
	if (!q->st) {
		struct state_result r = { .status = STATE_ERROR, .op = STATE_OP_GET, .key = "", .reason = "no state store" };
		failed(qcall_new(q, ctx, call, Q_MESSAGES), &r);
		return true;
	}
	return false;
}

static void quota_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct quota *q = inst;
	if (skip(q, ctx, call))
		return;
	struct qcall *c = qcall_new(q, ctx, call, Q_MESSAGES);
	state_get(q->st, c->hold_key, hold_looked, c);
}

static void quota_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct quota *q = inst;
	if (skip(q, ctx, call))
		return;
	take(qcall_new(q, ctx, call, Q_RECIPIENTS), 1);
}

static void quota_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct quota *q = inst;
	if (skip(q, ctx, call))
		return;
	take(qcall_new(q, ctx, call, Q_BYTES), (double)ctx->len);
}

const struct check_def check_quota = {
	.name = "quota",
	.doc = "hard quotas per authenticated account; an account over one is put on hold",
	.params = &quota_params_set,
	.init = quota_init,
	.free = quota_free,
	.hooks = { [PHASE_MAIL] = quota_mail, [PHASE_RCPT] = quota_rcpt, [PHASE_MESSAGE] = quota_message },
	.needs_state = true,
};
