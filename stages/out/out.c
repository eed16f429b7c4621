/*
 * rampart-out — stage F, the only stage that talks to the Internet, and
 * the anti-loss relay applications hand their mail to.
 *
 * Queue mode always: a message is fsync'd before the 250 and from then on
 * delivered or bounced, never lost.  Delivery goes to a smarthost list
 * (next_hops) when one is configured, otherwise by the recipient domain's
 * MX records (shared/mail/route.c) through the process's resolver.
 * It may reach: its listen sockets, its spool, DNS, and any Internet MX
 * or the configured smarthosts.
 */
#include "mail/route.h"
#include "mail/stage.h"
#include "util/alloc.h"
#include "util/log.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct out_config {
	struct server_config srv;
	int mx_family;
	long long smtp_port;
};

#define P(f) offsetof(struct out_config, f)
static const struct param_def out_params[] = {
	{ "mx_address_family", PT_ENUM, "ipv4-first", 0, 0, "ipv4-first|ipv6-first|ipv4-only|ipv6-only", P(mx_family),
	  "which addresses of an MX host to try first (or only)" },
	{ "smtp_port", PT_INT, "25", 1, 65535, NULL, P(smtp_port),
	  "port of the MX hosts found by DNS (25; labs and tests use another)" },
	PARAM_END
};

struct out {
	struct event_base *base;
	struct dns *dns;
	const struct server_config *sc;
	struct route_opts ropts;
	int port;
};

static void *out_init(const void *config, const struct stage_env *env, char *why, size_t whylen)
{
	const struct out_config *c = config;
	if (c->srv.mode != MODE_QUEUE) {
		snprintf(why, whylen, "mode: the outgoing stage works in queue mode only (it must never lose mail)");
		return NULL;
	}
	struct out *o = xcalloc(1, sizeof(*o));
	o->base = env->base;
	o->dns = env->dns;
	o->sc = &c->srv;
	o->ropts.family = (enum route_family)c->mx_family;
	o->ropts.self_names = NULL;
	o->port = (int)c->smtp_port;
	return o;
}

static bool out_validate(const void *config, const struct global_config *g, char *why, size_t whylen)
{
	(void)g;
	const struct out_config *c = config;
	if (c->srv.mode != MODE_QUEUE) {
		snprintf(why, whylen, "mode: the outgoing stage works in queue mode only (it must never lose mail)");
		return false;
	}
	return true;
}

static void out_free(void *state)
{
	free(state);
}

/* -- routing -- */

struct route_req {
	void (*done)(void *arg, const struct strlist *hops, const struct smtp_reply *err);
	void *arg;
};

static void routed(void *arg, const struct route_result *r)
{
	struct route_req *q = arg;
	if (r->code) {
		struct smtp_reply err = { .code = r->code };
		snprintf(err.enh, sizeof(err.enh), "%s", r->enh);
		snprintf(err.text, sizeof(err.text), "%s", r->text);
		q->done(q->arg, NULL, &err);
	} else {
		struct strlist hops = { 0 };
		route_result_hops(r, &hops);
		q->done(q->arg, &hops, NULL);
		strlist_free(&hops);
	}
	free(q);
}

static void out_route(void *state, const char *domain,
		      void (*done)(void *arg, const struct strlist *hops, const struct smtp_reply *err), void *arg)
{
	struct out *o = state;
	struct route_req *q = xcalloc(1, sizeof(*q));
	q->done = done;
	q->arg = arg;
	route_lookup(o->base, o->dns, domain, o->port, &o->ropts, routed, q);
}

/* A smarthost list (next_hops) replaces MX routing. */
static bool out_route_all(void *state)
{
	struct out *o = state;
	return o->sc->next_hops.n > 0;
}

const struct stage_def out_stage = {
	.name = "out",
	.doc = "stage F: outgoing mail to the Internet or a smarthost (the anti-loss relay)",
	.params = out_params,
	.config_size = sizeof(struct out_config),
	.lmtp = false,
	.init = out_init,
	.free = out_free,
	.validate = out_validate,
	.route = out_route,
	.route_all = out_route_all,
};
