/*
 * limits.c — message size and recipient count limits (Maraboli DM8, DM9).
 *
 * MAIL with a declared SIZE over the limit: 552 5.3.4.  A recipient beyond
 * the recipient limit: 452 4.5.3 (RFC 5321 4.5.3.1.10: the client sends
 * the rest in another transaction).  A message over the limit at the end:
 * 552 5.3.4.  A limit of 0 means the stage's own bound.
 */
#include "check.h"
#include "../util/alloc.h"

#include <stddef.h>
#include <stdlib.h>

struct limits_params {
	long long message_size_limit;
	long long recipient_limit;
};

static const struct param_def limits_param_defs[] = {
	{ "message_size_limit", PT_SIZE, "0", 0, 1LL << 40, NULL, offsetof(struct limits_params, message_size_limit),
	  "largest message accepted (0: the stage's max_message_size)" },
	{ "recipient_limit", PT_INT, "0", 0, 1000000, NULL, offsetof(struct limits_params, recipient_limit),
	  "most recipients per message (0: the stage's max_recipients)" },
	PARAM_END
};

static const struct param_set limits_params_set = {
	"check.limits", "message size and recipient limits", limits_param_defs, sizeof(struct limits_params)
};

struct limits {
	long long max_size;
	size_t max_rcpt;
};

static void *limits_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	(void)why; (void)whylen;
	const struct limits_params *p = params;
	struct limits *l = xcalloc(1, sizeof(*l));
	l->max_size = p->message_size_limit ? p->message_size_limit : env->max_message_size;
	l->max_rcpt = p->recipient_limit ? (size_t)p->recipient_limit : env->max_recipients;
	return l;
}

static void limits_free(void *inst)
{
	free(inst);
}

static void limits_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct limits *l = inst;
	if (l->max_size > 0 && ctx->declared_size > l->max_size)
		check_reject(call, 552, "5.3.4", "Message size exceeds fixed maximum message size (%lld)", l->max_size);
	else
		check_continue(call);
}

static void limits_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct limits *l = inst;
	if (l->max_rcpt && ctx->env->nrcpt > l->max_rcpt)
		check_reject(call, 452, "4.5.3", "Too many recipients (limit %zu)", l->max_rcpt);
	else
		check_continue(call);
}

static void limits_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct limits *l = inst;
	if (l->max_size > 0 && (long long)ctx->len > l->max_size)
		check_reject(call, 552, "5.3.4", "Message size exceeds fixed maximum message size (%lld)", l->max_size);
	else
		check_continue(call);
}

const struct check_def check_limits = {
	.name = "limits",
	.doc = "message size and recipient count limits",
	.params = &limits_params_set,
	.init = limits_init,
	.free = limits_free,
	.hooks = { [PHASE_MAIL] = limits_mail, [PHASE_RCPT] = limits_rcpt, [PHASE_MESSAGE] = limits_message },
};
