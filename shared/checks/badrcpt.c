/*
 * badrcpt.c — the bad-recipient throttle (Maraboli DM36): a client that
 * keeps naming recipients we refuse (a dictionary attack, a list of dead
 * addresses) is slowed down, then sent away.
 *
 * The chain counts the recipients refused for good (5xx) in the session
 * (ctx->rcpt_refused; a 4xx such as greylisting does not count).  Once delay_after of them have been refused, every
 * further RCPT waits delay before it is looked at; once disconnect_after
 * have been refused, the next RCPT gets 421 4.7.0 and the connection is
 * closed.  Put it first among the RCPT checks.  Clients on the local allow
 * list and authenticated clients are not throttled.
 */
#include "check.h"
#include "../util/alloc.h"
#include "../util/log.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <event2/event.h>

struct badrcpt_params {
	long long delay_after;
	long long delay;
	long long disconnect_after;
};

static const struct param_def badrcpt_param_defs[] = {
	{ "delay_after", PT_INT, "3", 1, 100000, NULL, offsetof(struct badrcpt_params, delay_after),
	  "refused recipients in a session before each further RCPT is delayed" },
	{ "delay", PT_TIME, "2s", 0, 60000, NULL, offsetof(struct badrcpt_params, delay),
	  "how long each further RCPT waits" },
	{ "disconnect_after", PT_INT, "10", 1, 100000, NULL, offsetof(struct badrcpt_params, disconnect_after),
	  "refused recipients in a session before the client is sent away (421 4.7.0)" },
	PARAM_END
};

static const struct param_set badrcpt_params_set = {
	"check.badrcpt", "slow down, then disconnect, clients that name too many refused recipients",
	badrcpt_param_defs, sizeof(struct badrcpt_params)
};

struct badrcpt {
	const struct badrcpt_params *p;
	struct event_base *base;
};

static void *badrcpt_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct badrcpt_params *p = params;
	if (p->disconnect_after < p->delay_after) {
		snprintf(why, whylen, "disconnect_after (%lld) is below delay_after (%lld)", p->disconnect_after,
			 p->delay_after);
		return NULL;
	}
	struct badrcpt *b = xcalloc(1, sizeof(*b));
	b->p = p;
	b->base = env->base;
	return b;
}

static void badrcpt_free(void *inst)
{
	free(inst);
}

static void resume(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	check_continue(arg);
}

static void badrcpt_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct badrcpt *b = inst;
	unsigned n = ctx->rcpt_refused;
	if (ctx->client_allowed || (ctx->client && ctx->client->login && *ctx->client->login) ||
	    n < (unsigned)b->p->delay_after) {
		check_continue(call);
		return;
	}
	if (n >= (unsigned)b->p->disconnect_after) {
		check_reject(call, 421, "4.7.0", "Too many refused recipients (%u), closing connection", n);
		return;
	}
	if (!b->base || b->p->delay <= 0) {
		check_continue(call);
		return;
	}
	log_info(ctx->sid, ctx->qid, "badrcpt.delay", "refused=%u delay_ms=%lld", n, b->p->delay);
	struct timeval tv = { (time_t)(b->p->delay / 1000), (suseconds_t)(b->p->delay % 1000) * 1000 };
	if (event_base_once(b->base, -1, EV_TIMEOUT, resume, call, &tv) < 0)
		check_continue(call);
}

const struct check_def check_badrcpt = {
	.name = "badrcpt",
	.doc = "bad-recipient throttle: delay, then disconnect, clients naming too many refused recipients",
	.params = &badrcpt_params_set,
	.init = badrcpt_init,
	.free = badrcpt_free,
	.hooks = { [PHASE_RCPT] = badrcpt_rcpt },
};
