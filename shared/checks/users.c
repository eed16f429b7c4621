/*
 * users.c — recipient validation (Maraboli DM19): a recipient in a local
 * domain who is not in the user list is refused at RCPT time with
 * 550 5.1.1, so no bounce is ever sent to a forged sender (backscatter).
 * The list is the one rampart-store publishes; it is re-read when the
 * file changes.  Recipients outside the local domains are left to the
 * relay check.
 */
#include "check.h"
#include "../mail/userlist.h"
#include "../util/alloc.h"
#include "../util/log.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct users_params {
	char *users_file;
};

static const struct param_def users_param_defs[] = {
	{ "users_file", PT_STR, "", 1, 0, NULL, offsetof(struct users_params, users_file),
	  "list of valid addresses, one per line (the store's published list)" },
	PARAM_END
};

static const struct param_set users_params_set = {
	"check.users", "recipient validation against the user list", users_param_defs, sizeof(struct users_params)
};

struct users {
	struct userlist *list;
	const struct strlist *local_domains;
};

static void *users_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct users_params *p = params;
	struct userlist *l = userlist_load(p->users_file, why, whylen);
	if (!l)
		return NULL;
	struct users *u = xcalloc(1, sizeof(*u));
	u->list = l;
	u->local_domains = env->local_domains;
	return u;
}

static void users_free(void *inst)
{
	struct users *u = inst;
	userlist_free(u->list);
	free(u);
}

static void users_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct users *u = inst;
	const char *rcpt = ctx->env->rcpts[ctx->env->nrcpt - 1].addr;
	const char *at = strrchr(rcpt, '@');
	if (!at) {      /* bare postmaster: always valid (RFC 5321 4.5.1) */
		check_continue(call);
		return;
	}
	if (!u->local_domains || !strlist_contains(u->local_domains, at + 1)) {
		check_continue(call);
		return;
	}
	char why[512];
	if (!userlist_refresh(&u->list, why, sizeof(why)))
		log_warn(ctx->sid, ctx->qid, "users.reload_failed", "error=%s", why);
	if (userlist_find(u->list, rcpt, NULL)) {
		check_continue(call);
		return;
	}
	/* postmaster@ a local domain is always accepted. */
	if ((size_t)(at - rcpt) == 10 && strncasecmp(rcpt, "postmaster", 10) == 0) {
		check_continue(call);
		return;
	}
	check_reject(call, 550, "5.1.1", "<%s>: Recipient address rejected: User unknown", rcpt);
}

const struct check_def check_users = {
	.name = "users",
	.doc = "refuse unknown local recipients at RCPT time (no backscatter)",
	.params = &users_params_set,
	.init = users_init,
	.free = users_free,
	.hooks = { [PHASE_RCPT] = users_rcpt },
};
