/*
 * lists.c — local block and allow lists (Maraboli DM18).
 *
 * CONNECT: a client in block_clients gets 554 5.7.1; a client in
 * allow_clients is marked allowed for the session (ctx->client_allowed:
 * greylisting, DNSBL and rate limits let it through) and the other connect
 * checks are skipped.  HELO: a name in block_helo gets 550 5.7.1.  MAIL: a
 * sender in block_senders gets 550 5.7.1.  RCPT: a recipient in
 * block_recipients gets 550 5.7.1 (that recipient only).  Block lists win
 * over the allow list.
 *
 * Address lists hold whole addresses (user@example.org), domains
 * (example.org: that domain only) or domain suffixes (.example.org: any
 * domain below it); matching is case-insensitive.  Networks are CIDR
 * (192.0.2.0/24, 2001:db8::/32, or a single address); every entry is
 * checked at start-up and a bad one is named.
 */
#include "check.h"
#include "../util/alloc.h"
#include "../util/net.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct lists_params {
	struct strlist allow_clients;
	struct strlist block_clients;
	struct strlist block_helo;
	struct strlist block_senders;
	struct strlist block_recipients;
};

#define LP(f) offsetof(struct lists_params, f)
static const struct param_def lists_param_defs[] = {
	{ "allow_clients", PT_LIST, "", 0, 0, NULL, LP(allow_clients),
	  "client networks (CIDR) trusted as senders: greylisting, DNSBL and rate limits let them through" },
	{ "block_clients", PT_LIST, "", 0, 0, NULL, LP(block_clients),
	  "client networks (CIDR) refused at connect (554 5.7.1)" },
	{ "block_helo", PT_LIST, "", 0, 0, NULL, LP(block_helo),
	  "HELO names refused (name, or .suffix for any name below it)" },
	{ "block_senders", PT_LIST, "", 0, 0, NULL, LP(block_senders),
	  "envelope senders refused at MAIL (address, domain, or .suffix)" },
	{ "block_recipients", PT_LIST, "", 0, 0, NULL, LP(block_recipients),
	  "recipients refused at RCPT (address, domain, or .suffix)" },
	PARAM_END
};

static const struct param_set lists_params_set = {
	"check.lists", "local block and allow lists of clients, HELO names, senders and recipients",
	lists_param_defs, sizeof(struct lists_params)
};

struct lists {
	const struct lists_params *p;
	struct cidr *allow, *block;
	size_t nallow, nblock;
};

static bool parse_nets(const struct strlist *l, const char *name, struct cidr **out, size_t *n, char *why,
		       size_t whylen)
{
	*out = xcalloc(l->n ? l->n : 1, sizeof(**out));
	*n = l->n;
	for (size_t i = 0; i < l->n; i++)
		if (!cidr_parse(l->v[i], &(*out)[i])) {
			snprintf(why, whylen, "%s: '%s' is not a network (expected e.g. 192.0.2.0/24 or 2001:db8::/32)",
				 name, l->v[i]);
			return false;
		}
	return true;
}

/* An entry of an address list: user@domain, domain or .suffix. */
static bool entry_valid(const char *e)
{
	const char *at = strchr(e, '@');
	const char *dom = at ? at + 1 : e[0] == '.' ? e + 1 : e;
	if (at && (at == e || strchr(at + 1, '@')))
		return false;
	if (!*dom || strlen(e) > 320)
		return false;
	for (const char *p = dom; *p; p++)
		if (*p == ' ' || *p == '@' || *p == ',' || (unsigned char)*p < 0x21)
			return false;
	return true;
}

static bool check_entries(const struct strlist *l, const char *name, char *why, size_t whylen)
{
	for (size_t i = 0; i < l->n; i++)
		if (!entry_valid(l->v[i])) {
			snprintf(why, whylen, "%s: '%s' is not an address, a domain or a .suffix", name, l->v[i]);
			return false;
		}
	return true;
}

static void lists_free(void *inst)
{
	struct lists *l = inst;
	if (!l)
		return;
	free(l->allow);
	free(l->block);
	free(l);
}

static void *lists_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	(void)env;
	struct lists *l = xcalloc(1, sizeof(*l));
	l->p = params;
	if (!parse_nets(&l->p->allow_clients, "allow_clients", &l->allow, &l->nallow, why, whylen) ||
	    !parse_nets(&l->p->block_clients, "block_clients", &l->block, &l->nblock, why, whylen) ||
	    !check_entries(&l->p->block_helo, "block_helo", why, whylen) ||
	    !check_entries(&l->p->block_senders, "block_senders", why, whylen) ||
	    !check_entries(&l->p->block_recipients, "block_recipients", why, whylen)) {
		lists_free(l);
		return NULL;
	}
	return l;
}

static bool nets_match(const struct cidr *v, size_t n, const char *ip)
{
	for (size_t i = 0; ip && i < n; i++)
		if (cidr_match(&v[i], ip))
			return true;
	return false;
}

/* name (a domain) matches entry "domain" exactly or ".suffix" below it. */
static bool domain_match(const char *entry, const char *name)
{
	size_t el = strlen(entry), nl = strlen(name);
	if (nl && name[nl - 1] == '.')
		nl--;
	if (entry[0] == '.')
		return nl > el && strncasecmp(name + nl - el, entry, el) == 0;
	return nl == el && strncasecmp(name, entry, el) == 0;
}

/* addr (local@domain, or a bare name) against an address list. */
static const char *list_match(const struct strlist *l, const char *addr)
{
	const char *at = strrchr(addr, '@');
	const char *dom = at ? at + 1 : addr;
	for (size_t i = 0; i < l->n; i++) {
		const char *e = l->v[i];
		if (strchr(e, '@') ? strcasecmp(e, addr) == 0 : domain_match(e, dom))
			return e;
	}
	return NULL;
}

static void lists_connect(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct lists *l = inst;
	const char *ip = ctx->client ? ctx->client->addr : NULL;
	if (nets_match(l->block, l->nblock, ip)) {
		check_reject(call, 554, "5.7.1", "Access denied: client %s is on the local block list", ip);
		return;
	}
	if (nets_match(l->allow, l->nallow, ip)) {
		ctx->client_allowed = true;
		struct verdict v = { .kind = V_ACCEPT };
		snprintf(v.reason, sizeof(v.reason), "client %s is on the local allow list", ip);
		check_done(call, &v);
		return;
	}
	check_continue(call);
}

static void lists_helo(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct lists *l = inst;
	if (ctx->helo && *ctx->helo && list_match(&l->p->block_helo, ctx->helo)) {
		check_reject(call, 550, "5.7.1", "HELO %s is on the local block list", ctx->helo);
		return;
	}
	check_continue(call);
}

static void lists_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct lists *l = inst;
	const char *s = ctx->env ? ctx->env->sender : NULL;
	if (s && *s && list_match(&l->p->block_senders, s)) {
		check_reject(call, 550, "5.7.1", "<%s>: sender is on the local block list", s);
		return;
	}
	check_continue(call);
}

static void lists_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct lists *l = inst;
	const char *r = ctx->env->rcpts[ctx->env->nrcpt - 1].addr;
	if (list_match(&l->p->block_recipients, r)) {
		check_reject(call, 550, "5.7.1", "<%s>: recipient is on the local block list", r);
		return;
	}
	check_continue(call);
}

const struct check_def check_lists = {
	.name = "lists",
	.doc = "local block and allow lists: client networks, HELO names, senders, recipients",
	.params = &lists_params_set,
	.init = lists_init,
	.free = lists_free,
	.hooks = {
		[PHASE_CONNECT] = lists_connect,
		[PHASE_HELO] = lists_helo,
		[PHASE_MAIL] = lists_mail,
		[PHASE_RCPT] = lists_rcpt,
	},
};
