/*
 * traps.c — spam traps (Maraboli DM27): addresses nobody uses, published
 * where only address harvesters find them.  A client that names one as a
 * recipient is a spammer's, and is blocked for block_time.
 *
 * addresses lists the traps: local@domain, or @domain for every address
 * of a domain.  A recipient matches in lower case, also with its
 * +subaddress removed (trap+x@ is trap@).  The hit is stored in the state
 * store as "trap:IP" (the client address, canonical as the rate limits
 * key it) with expiry block_time, so the block holds across connections,
 * processes and, with Redis, both servers of a pair.  A blocked client
 * gets 554 5.7.1 at its greeting and at every later phase (XCLIENT and
 * long sessions: HELO, MAIL, RCPT, DATA) until the block expires.
 *
 * The trap recipient itself (action):
 *   reject   550 5.1.1 "User unknown", the reply any address that does
 *            not exist gets (check users): the trap looks like what it is,
 *            an address nobody reads, and tells the spammer nothing more.
 *            The default.  The block starts at once: the rest of the
 *            session is refused.
 *   discard  the recipient is accepted (the users check after this one is
 *            skipped for it), the transaction goes on as if nothing
 *            happened, and the message is dropped whole at the end of
 *            DATA (250, logged): nothing of it reaches the other
 *            recipients, and the trap stays invisible.  The block starts
 *            with the next transaction.  Best in queue mode: in proxy mode
 *            the next hop sees the trap recipient and refuses it.
 * Put the check before users (traps are not users) and early in the list.
 *
 * Clients on the local allow list and authenticated clients are never
 * blocked: naming a trap gets them 550 5.1.1 only.
 *
 * When the store fails, failure_mode applies: tempfail (451 4.3.0, 421 at
 * the greeting) or continue (the block is not enforced or not recorded;
 * a trap recipient still gets its action); either way it is logged
 * (traps.error) and counted: rampart_traps_total{result="hit|blocked|exempt|error"}.
 */
#include "ratelimit.h"
#include "check.h"
#include "../mail/state.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TRAPS 10000

struct traps_params {
	struct strlist addresses;
	long long block_time;
	int action;                 /* 0 reject, 1 discard */
	char *subaddress_separator;
	int failure_mode;           /* 0 tempfail, 1 continue */
};

static const struct param_def traps_param_defs[] = {
	{ "addresses", PT_LIST, "", 0, 0, NULL, offsetof(struct traps_params, addresses),
	  "spam-trap addresses: local@domain, or @domain for a whole domain" },
	{ "block_time", PT_TIME, "1h", 1000, 366LL * 86400000, NULL, offsetof(struct traps_params, block_time),
	  "how long a client that wrote to a trap stays blocked (554 5.7.1)" },
	{ "action", PT_ENUM, "reject", 0, 0, "reject|discard", offsetof(struct traps_params, action),
	  "the trap recipient: reject (550 5.1.1 User unknown, as any unknown address) or discard "
	  "(accepted, and the whole message dropped at the end of DATA: the trap stays invisible)" },
	{ "subaddress_separator", PT_STR, "+", 0, 8, NULL, offsetof(struct traps_params, subaddress_separator),
	  "characters that start a subaddress: trap+x@ matches trap@ (empty: none)" },
	{ "failure_mode", PT_ENUM, "tempfail", 0, 0, "tempfail|continue", offsetof(struct traps_params, failure_mode),
	  "when the state store fails: tempfail (451 4.3.0) or continue; logged and counted" },
	PARAM_END
};

static const struct param_set traps_params_set = {
	"check.traps", "spam traps: clients that write to a trap address are blocked for a while",
	traps_param_defs, sizeof(struct traps_params)
};

struct traps {
	const struct traps_params *p;
	struct state *st;
	char **addrs;               /* lower case; "@domain" for a domain */
	size_t n;
	struct metric *m_total;
};

static void traps_free(void *inst)
{
	struct traps *t = inst;
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++)
		free(t->addrs[i]);
	free(t->addrs);
	free(t);
}

static void *traps_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct traps_params *p = params;
	if (p->addresses.n > MAX_TRAPS) {
		snprintf(why, whylen, "addresses: %zu, at most %d", p->addresses.n, MAX_TRAPS);
		return NULL;
	}
	struct traps *t = xcalloc(1, sizeof(*t));
	t->p = p;
	t->st = env->state;
	t->addrs = xcalloc(p->addresses.n ? p->addresses.n : 1, sizeof(char *));
	for (size_t i = 0; i < p->addresses.n; i++) {
		const char *a = p->addresses.v[i];
		const char *at = strrchr(a, '@');
		char c[300];
		if (!at || !at[1] || strchr(at + 1, '@') || !rl_canon_addr(a, NULL, c, sizeof(c))) {
			snprintf(why, whylen, "addresses: '%s': expected local@domain or @domain", a);
			traps_free(t);
			return NULL;
		}
		t->addrs[t->n++] = xstrdup(c);
	}
	if (env->metrics)
		t->m_total = metrics_counter(env->metrics, "rampart_traps_total",
					     "Spam traps: hit (a client named a trap and is blocked), blocked (a blocked "
					     "client refused), exempt (an allowed or authenticated client named a trap), "
					     "error (the state store failed; failure_mode applied).");
	return t;
}

static void count(struct traps *t, const char *result)
{
	if (!t->m_total)
		return;
	char l[64];
	snprintf(l, sizeof(l), "result=\"%s\"", result);
	metric_inc(t->m_total, l);
}

static bool listed(const struct traps *t, const char *c)
{
	for (size_t i = 0; i < t->n; i++)
		if (strcmp(t->addrs[i], c) == 0)
			return true;
	return false;
}

static bool is_trap(const struct traps *t, const char *rcpt)
{
	char c[300];
	if (!t->n || !rl_canon_addr(rcpt, NULL, c, sizeof(c)))
		return false;
	if (listed(t, c))
		return true;
	const char *at = strrchr(c, '@');
	if (at && listed(t, at))
		return true;
	char s[300];
	return rl_canon_addr(rcpt, t->p->subaddress_separator, s, sizeof(s)) && strcmp(s, c) != 0 && listed(t, s);
}

/* The transaction already holds a trap recipient (action discard). */
static bool txn_hit(const struct traps *t, const struct check_ctx *ctx)
{
	if (!ctx->env)
		return false;
	for (size_t i = 0; i < ctx->env->nrcpt; i++)
		if (is_trap(t, ctx->env->rcpts[i].addr))
			return true;
	return false;
}

static bool exempt(const struct check_ctx *ctx)
{
	return ctx->client_allowed || (ctx->client && ctx->client->login && *ctx->client->login);
}

struct lookup {
	struct traps *t;
	struct check_ctx *ctx;
	struct check_call *call;
	enum check_phase phase;
	char ip[64];
	char key[80];
	char rcpt[300];
};

static void failed(struct lookup *lk, const char *op, const char *reason)
{
	struct traps *t = lk->t;
	log_warn(lk->ctx->sid, lk->ctx->qid, "traps.error", "op=%s key=%s reason=%s failure_mode=%s client=%s", op,
		 lk->key, reason, t->p->failure_mode ? "continue" : "tempfail", lk->ip);
	count(t, "error");
}

static void tempfail(struct check_call *call, enum check_phase phase)
{
	check_reject(call, phase == PHASE_CONNECT ? 421 : 451, "4.3.0",
		     "Temporary local problem checking the client; try again later");
}

/* What the trap recipient gets. */
static void trap_action(struct traps *t, struct check_call *call, const char *rcpt, bool discard)
{
	if (discard) {
		struct verdict v = { .kind = V_DISCARD };
		snprintf(v.reason, sizeof(v.reason), "spam trap <%s>", rcpt);
		check_done(call, &v);
		return;
	}
	(void)t;
	check_reject(call, 550, "5.1.1", "<%s>: Recipient address rejected: User unknown", rcpt);
}

static void on_block(void *arg, const struct state_result *r)
{
	struct lookup *lk = arg;
	struct traps *t = lk->t;
	struct check_call *call = lk->call;
	enum check_phase phase = lk->phase;
	if (r->status == STATE_ERROR) {
		failed(lk, "get", r->reason);
		bool go = t->p->failure_mode == 1;
		free(lk);
		if (go)
			check_continue(call);
		else
			tempfail(call, phase);
		return;
	}
	if (r->status == STATE_NOTFOUND) {
		free(lk);
		check_continue(call);
		return;
	}
	count(t, "blocked");
	log_info(lk->ctx->sid, lk->ctx->qid, "traps.blocked", "client=%s phase=%s trap=%.*s", lk->ip,
		 phase_name(phase), (int)(r->vlen < 256 ? r->vlen : 256), r->value);
	char ip[64];
	snprintf(ip, sizeof(ip), "%s", lk->ip);
	free(lk);
	check_reject(call, 554, "5.7.1", "Service unavailable; client [%s] blocked for sending to a spam trap", ip);
}

static void on_recorded(void *arg, const struct state_result *r)
{
	struct lookup *lk = arg;
	struct traps *t = lk->t;
	struct check_call *call = lk->call;
	char rcpt[300];
	snprintf(rcpt, sizeof(rcpt), "%s", lk->rcpt);
	if (r->status != STATE_OK) {
		failed(lk, "set", r->reason);
		bool go = t->p->failure_mode == 1;
		free(lk);
		if (go)
			trap_action(t, call, rcpt, t->p->action == 1);
		else
			tempfail(call, PHASE_RCPT);
		return;
	}
	count(t, "hit");
	log_warn(lk->ctx->sid, lk->ctx->qid, "traps.hit", "client=%s trap=%s block_ms=%lld action=%s", lk->ip, rcpt,
		 t->p->block_time, t->p->action ? "discard" : "reject");
	free(lk);
	trap_action(t, call, rcpt, t->p->action == 1);
}

static struct lookup *lookup_new(struct traps *t, struct check_ctx *ctx, struct check_call *call,
				 enum check_phase phase)
{
	char ip[64];
	if (!ctx->client || !rl_canon_ip(ctx->client->addr, ip, sizeof(ip)))
		return NULL;
	struct lookup *lk = xcalloc(1, sizeof(*lk));
	lk->t = t;
	lk->ctx = ctx;
	lk->call = call;
	lk->phase = phase;
	snprintf(lk->ip, sizeof(lk->ip), "%s", ip);
	snprintf(lk->key, sizeof(lk->key), "trap:%s", ip);
	return lk;
}

/* Is the client blocked? */
static void check_block(struct traps *t, struct check_ctx *ctx, struct check_call *call, enum check_phase phase)
{
	if (!t->n || exempt(ctx) || (t->p->action == 1 && (phase == PHASE_RCPT || phase == PHASE_DATA) &&
				     txn_hit(t, ctx))) {
		check_continue(call);
		return;
	}
	struct lookup *lk = lookup_new(t, ctx, call, phase);
	if (!lk) {
		check_continue(call);
		return;
	}
	if (!t->st) {
		struct state_result r = { .status = STATE_ERROR, .reason = "no state store" };
		on_block(lk, &r);
		return;
	}
	state_get(t->st, lk->key, on_block, lk);
}

static void traps_connect(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	check_block(inst, ctx, call, PHASE_CONNECT);
}

static void traps_helo(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	check_block(inst, ctx, call, PHASE_HELO);
}

static void traps_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	check_block(inst, ctx, call, PHASE_MAIL);
}

static void traps_data(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	check_block(inst, ctx, call, PHASE_DATA);
}

static void traps_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct traps *t = inst;
	const char *rcpt = ctx->env && ctx->env->nrcpt ? ctx->env->rcpts[ctx->env->nrcpt - 1].addr : NULL;
	if (!rcpt || !is_trap(t, rcpt)) {
		check_block(t, ctx, call, PHASE_RCPT);
		return;
	}
	struct lookup *lk = exempt(ctx) ? NULL : lookup_new(t, ctx, call, PHASE_RCPT);
	if (!lk) {
		/* Never blocked; and no discard: their mail is trusted. */
		count(t, "exempt");
		log_info(ctx->sid, ctx->qid, "traps.exempt", "client=%s trap=%s login=%s allowed=%s",
			 ctx->client && ctx->client->addr ? ctx->client->addr : "", rcpt,
			 ctx->client && ctx->client->login ? ctx->client->login : "", ctx->client_allowed ? "yes" : "no");
		trap_action(t, call, rcpt, false);
		return;
	}
	snprintf(lk->rcpt, sizeof(lk->rcpt), "%s", rcpt);
	if (!t->st) {
		struct state_result r = { .status = STATE_ERROR, .reason = "no state store" };
		on_recorded(lk, &r);
		return;
	}
	state_set(t->st, lk->key, lk->rcpt, strlen(lk->rcpt), t->p->block_time, on_recorded, lk);
}

/* action discard: the message went to a trap; nobody gets it. */
static void traps_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct traps *t = inst;
	if (t->p->action != 1 || exempt(ctx) || !ctx->env) {
		check_continue(call);
		return;
	}
	for (size_t i = 0; i < ctx->env->nrcpt; i++)
		if (is_trap(t, ctx->env->rcpts[i].addr)) {
			struct verdict v = { .kind = V_DISCARD };
			snprintf(v.reason, sizeof(v.reason), "sent to spam trap <%s>", ctx->env->rcpts[i].addr);
			check_done(call, &v);
			return;
		}
	check_continue(call);
}

const struct check_def check_traps = {
	.name = "traps",
	.doc = "spam traps: a client that writes to a trap address is blocked for block_time (554 5.7.1)",
	.params = &traps_params_set,
	.init = traps_init,
	.free = traps_free,
	.hooks = {
		[PHASE_CONNECT] = traps_connect,
		[PHASE_HELO] = traps_helo,
		[PHASE_MAIL] = traps_mail,
		[PHASE_RCPT] = traps_rcpt,
		[PHASE_DATA] = traps_data,
		[PHASE_MESSAGE] = traps_message,
	},
	.needs_state = true,
};
