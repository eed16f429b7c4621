/*
 * relay.c — relay control (Maraboli DM7): no open relay.
 *
 * At RCPT, a recipient in one of the stage's local domains is always
 * accepted here (whether the user exists is another check's business);
 * any other recipient only for clients in relay_networks or, when
 * allow_authenticated is on, for an authenticated client.  Everything else
 * gets 554 5.7.1 "Relay access denied".
 */
#include "check.h"
#include "../util/alloc.h"
#include "../util/net.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct relay_params {
	struct strlist relay_networks;
	bool allow_authenticated;
};

static const struct param_def relay_param_defs[] = {
	{ "relay_networks", PT_LIST, "", 0, 0, NULL, offsetof(struct relay_params, relay_networks),
	  "client networks (CIDR) allowed to relay to any domain" },
	{ "allow_authenticated", PT_BOOL, "yes", 0, 0, NULL, offsetof(struct relay_params, allow_authenticated),
	  "authenticated clients may relay to any domain" },
	PARAM_END
};

static const struct param_set relay_params_set = {
	"check.relay", "relay control: which recipients and clients may use this stage", relay_param_defs,
	sizeof(struct relay_params)
};

struct relay {
	const struct relay_params *p;
	const struct strlist *local_domains;
};

static void *relay_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	(void)why; (void)whylen;
	struct relay *r = xcalloc(1, sizeof(*r));
	r->p = params;
	r->local_domains = env->local_domains;
	for (size_t i = 0; i < r->p->relay_networks.n; i++) {
		struct cidr c;
		if (!cidr_parse(r->p->relay_networks.v[i], &c)) {
			snprintf(why, whylen, "relay_networks: '%s' is not a network (expected e.g. 192.0.2.0/24)",
				 r->p->relay_networks.v[i]);
			free(r);
			return NULL;
		}
	}
	return r;
}

static void relay_free(void *inst)
{
	free(inst);
}

/* The domain of an address; "" for a bare "postmaster". */
static const char *addr_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

static bool is_local(const struct relay *r, const char *addr)
{
	const char *d = addr_domain(addr);
	if (!*d)
		return strcasecmp(addr, "postmaster") == 0;
	return r->local_domains && strlist_contains(r->local_domains, d);
}

static void relay_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct relay *r = inst;
	const char *rcpt = ctx->env->rcpts[ctx->env->nrcpt - 1].addr;
	if (is_local(r, rcpt)) {
		check_continue(call);
		return;
	}
	if (r->p->relay_networks.n && cidr_list_match(&r->p->relay_networks, ctx->client->addr)) {
		check_continue(call);
		return;
	}
	if (r->p->allow_authenticated && ctx->client->login && *ctx->client->login) {
		check_continue(call);
		return;
	}
	check_reject(call, 554, "5.7.1", "<%s>: Relay access denied", rcpt);
}

const struct check_def check_relay = {
	.name = "relay",
	.doc = "no open relay: accept only local domains unless the client may relay",
	.params = &relay_params_set,
	.init = relay_init,
	.free = relay_free,
	.hooks = { [PHASE_RCPT] = relay_rcpt },
};
