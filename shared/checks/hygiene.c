/*
 * hygiene.c — HELO and sender hygiene (Maraboli DM17), and the client's
 * reverse DNS for the checks after it.
 *
 * CONNECT: the client's PTR name is looked up, and that name's addresses;
 * ctx->rdns says whether the name leads back to the client (confirmed),
 * not (mismatch), there is no PTR (none) or DNS failed (tempfail), and
 * ctx->client_ptr holds the name.  With require_rdns = confirmed (or
 * ptr), clients without it get 450 4.7.25 (RFC 8601's code: temporary,
 * since DNS may be fixed or be failing).  Off by default: plenty of
 * legitimate senders have poor reverse DNS.
 *
 * HELO: the name must be a syntactically valid host name or address
 * literal (501 5.5.2), fully qualified when helo_fqdn is on (504 5.5.2),
 * and must not claim to be this server (550 5.7.1: our host name or one
 * of our local domains).
 *
 * MAIL: the sender's domain must be able to receive replies: an MX, or
 * else an A or AAAA record.  A domain that does not exist or has none of
 * these gets 550 5.1.8; a null MX (RFC 7505) 550 5.7.27; a DNS failure
 * 451 4.1.8 (never a 5xx for a temporary fault).  The null sender is not
 * checked.
 *
 * Clients on the local allow list (check "lists") and authenticated
 * clients skip the HELO and sender checks.  Lookups run through the
 * process's resolver with a deadline (timeout).
 */
#include "check.h"
#include "../util/alloc.h"
#include "../util/dns.h"
#include "../util/log.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <event2/event.h>

#define PTR_NAMES_MAX 3          /* PTR names whose addresses are checked */

struct hygiene_params {
	int require_rdns;           /* 0 no, 1 ptr, 2 confirmed */
	bool helo_syntax;
	bool helo_fqdn;
	bool helo_not_us;
	bool sender_domain;
	long long timeout;
};

#define HP(f) offsetof(struct hygiene_params, f)
static const struct param_def hygiene_param_defs[] = {
	{ "require_rdns", PT_ENUM, "no", 0, 0, "no|ptr|confirmed", HP(require_rdns),
	  "clients without a PTR name (ptr), or whose PTR name does not resolve back to them (confirmed), get 450 4.7.25" },
	{ "helo_syntax", PT_BOOL, "yes", 0, 0, NULL, HP(helo_syntax),
	  "refuse a HELO that is neither a host name nor an address literal (501 5.5.2)" },
	{ "helo_fqdn", PT_BOOL, "yes", 0, 0, NULL, HP(helo_fqdn),
	  "refuse a HELO name that is not fully qualified (504 5.5.2)" },
	{ "helo_not_us", PT_BOOL, "yes", 0, 0, NULL, HP(helo_not_us),
	  "refuse a HELO claiming to be this server or one of its local domains (550 5.7.1)" },
	{ "sender_domain", PT_BOOL, "yes", 0, 0, NULL, HP(sender_domain),
	  "refuse senders whose domain has no MX, A or AAAA record (550 5.1.8; null MX 550 5.7.27; DNS failure 451 4.1.8)" },
	{ "timeout", PT_TIME, "5s", 100, 60000, NULL, HP(timeout), "longest wait for one DNS step" },
	PARAM_END
};

static const struct param_set hygiene_params_set = {
	"check.hygiene", "HELO and sender hygiene, reverse DNS of clients", hygiene_param_defs,
	sizeof(struct hygiene_params)
};

struct hygiene {
	const struct hygiene_params *p;
	struct dns *dns;
	struct event_base *base;
	const char *hostname;
	const struct strlist *local_domains;
};

static void hygiene_free(void *inst)
{
	free(inst);
}

static void *hygiene_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	(void)why; (void)whylen;
	struct hygiene *h = xcalloc(1, sizeof(*h));
	h->p = params;
	h->dns = env->dns;
	h->base = env->base;
	h->hostname = env->hostname;
	h->local_domains = env->local_domains;
	return h;
}

/* ---- names ---------------------------------------------------------------- */

/* RFC 1123 host name: labels of letters, digits, inner hyphens (and '_',
 * which real HELO names carry), 1..63 each, 253 in all, trailing dot ok. */
static bool host_name_valid(const char *n)
{
	size_t len = strlen(n), label = 0;
	if (!len || len > 254 || n[0] == '.')
		return false;
	if (n[len - 1] == '.')
		len--;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)n[i];
		if (c == '.') {
			if (!label || n[i - 1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!isalnum(c) && c != '-' && c != '_')
			return false;
		if (c == '-' && !label)
			return false;
		if (++label > 63)
			return false;
	}
	return label && n[len - 1] != '-';
}

/* "[192.0.2.1]" or "[IPv6:2001:db8::1]". */
static bool address_literal(const char *n)
{
	size_t len = strlen(n);
	if (len < 3 || n[0] != '[' || n[len - 1] != ']' || len > 60)
		return false;
	char a[64];
	memcpy(a, n + 1, len - 2);
	a[len - 2] = '\0';
	unsigned char bin[16];
	if (strncasecmp(a, "IPv6:", 5) == 0)
		return inet_pton(AF_INET6, a + 5, bin) == 1;
	return inet_pton(AF_INET, a, bin) == 1;
}

/* The same address, written either way. */
static bool same_ip(const char *a, const char *b)
{
	unsigned char x[16], y[16];
	if (inet_pton(AF_INET, a, x) == 1)
		return inet_pton(AF_INET, b, y) == 1 && memcmp(x, y, 4) == 0;
	if (inet_pton(AF_INET6, a, x) == 1)
		return inet_pton(AF_INET6, b, y) == 1 && memcmp(x, y, 16) == 0;
	return false;
}

/* ---- a sequence of DNS steps with a deadline ------------------------------ */

struct job;
typedef void (*job_step)(struct job *j, const struct dns_result *r);

struct job {
	struct hygiene *h;
	struct check_ctx *ctx;
	struct check_call *call;
	struct event *timer;
	job_step step;
	int out;                    /* queries out */
	/* reverse DNS */
	char ip[64];
	char names[PTR_NAMES_MAX][256];
	size_t nnames, checked;
	bool confirmed, failed;
	/* sender domain */
	char domain[256];
	int phase;                  /* 0 MX, 1 A, 2 AAAA */
	bool any_addr;
};

static void job_end(struct job *j)
{
	if (j->out)
		dns_cancel(j->h->dns, j);
	if (j->timer)
		event_free(j->timer);
	free(j);
}

static void on_dns(void *arg, const struct dns_result *r)
{
	struct job *j = arg;
	j->out--;
	j->step(j, r);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct job *j = arg;
	struct dns_result r = { .status = DNS_TEMPFAIL };
	log_warn(j->ctx->sid, j->ctx->qid, "hygiene.timeout", "client=%s domain=%s timeout_ms=%lld", j->ip, j->domain,
		 j->h->p->timeout);
	dns_cancel(j->h->dns, j);
	j->out = 0;
	j->step(j, &r);
}

/* Query; false (and nothing out) if it could not start. */
static bool ask(struct job *j, const char *name, int type, job_step next)
{
	j->step = next;
	if (!dns_query(j->h->dns, name, type, on_dns, j))
		return false;
	j->out++;
	if (j->h->base) {
		if (!j->timer)
			j->timer = evtimer_new(j->h->base, on_deadline, j);
		struct timeval tv = { (time_t)(j->h->p->timeout / 1000), (suseconds_t)(j->h->p->timeout % 1000) * 1000 };
		evtimer_add(j->timer, &tv);
	}
	return true;
}

static struct job *job_new(struct hygiene *h, struct check_ctx *ctx, struct check_call *call)
{
	struct job *j = xcalloc(1, sizeof(*j));
	j->h = h;
	j->ctx = ctx;
	j->call = call;
	if (ctx->client && ctx->client->addr)
		snprintf(j->ip, sizeof(j->ip), "%s", ctx->client->addr);
	return j;
}

/* ---- CONNECT: reverse DNS ------------------------------------------------ */

static void rdns_done(struct job *j, int result)
{
	struct check_ctx *ctx = j->ctx;
	struct check_call *call = j->call;
	const struct hygiene_params *p = j->h->p;
	ctx->rdns = result;
	snprintf(ctx->client_ptr, sizeof(ctx->client_ptr), "%s", j->nnames ? j->names[0] : "");
	char ip[64];
	snprintf(ip, sizeof(ip), "%s", j->ip);
	job_end(j);
	log_info(ctx->sid, NULL, "hygiene.rdns", "client=%s ptr=%s result=%s", ip, ctx->client_ptr,
		 result == RDNS_CONFIRMED ? "confirmed" : result == RDNS_MISMATCH ? "mismatch" :
		 result == RDNS_NONE ? "none" : "tempfail");
	if ((p->require_rdns == 1 && (result == RDNS_NONE || result == RDNS_TEMPFAIL)) ||
	    (p->require_rdns == 2 && result != RDNS_CONFIRMED)) {
		check_reject(call, 450, "4.7.25", "Client host rejected: cannot find your hostname, [%s]%s", ip,
			     result == RDNS_MISMATCH ? " (its PTR name does not resolve back to it)" : "");
		return;
	}
	check_continue(call);
}

static void rdns_forward(struct job *j);

static void rdns_forward_answer(struct job *j, const struct dns_result *r)
{
	if (r->status == DNS_OK) {
		for (size_t i = 0; i < r->n; i++)
			if ((r->rr[i].type == 1 || r->rr[i].type == 28) && same_ip(r->rr[i].text, j->ip))
				j->confirmed = true;
	} else if (r->status == DNS_TEMPFAIL || r->status == DNS_BOGUS) {
		j->failed = true;
	}
	if (j->confirmed) {
		rdns_done(j, RDNS_CONFIRMED);
		return;
	}
	rdns_forward(j);
}

/* Next PTR name: its A (IPv4 client) or AAAA (IPv6) records. */
static void rdns_forward(struct job *j)
{
	while (j->checked < j->nnames) {
		const char *name = j->names[j->checked++];
		unsigned char b[16];
		int type = inet_pton(AF_INET, j->ip, b) == 1 ? 1 : 28;
		if (ask(j, name, type, rdns_forward_answer))
			return;
	}
	rdns_done(j, j->failed ? RDNS_TEMPFAIL : RDNS_MISMATCH);
}

static void rdns_ptr_answer(struct job *j, const struct dns_result *r)
{
	if (r->status == DNS_TEMPFAIL || r->status == DNS_BOGUS) {
		rdns_done(j, RDNS_TEMPFAIL);
		return;
	}
	for (size_t i = 0; r->status == DNS_OK && i < r->n && j->nnames < PTR_NAMES_MAX; i++)
		if (r->rr[i].type == 12 && host_name_valid(r->rr[i].text))
			snprintf(j->names[j->nnames++], sizeof(j->names[0]), "%s", r->rr[i].text);
	if (!j->nnames) {
		rdns_done(j, RDNS_NONE);
		return;
	}
	rdns_forward(j);
}

static void hygiene_connect(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct hygiene *h = inst;
	char rev[128];
	if (!h->dns || ctx->client_allowed || !ctx->client || !ctx->client->addr ||
	    !dns_reverse_name(ctx->client->addr, rev, sizeof(rev))) {
		check_continue(call);
		return;
	}
	struct job *j = job_new(h, ctx, call);
	if (!ask(j, rev, 12, rdns_ptr_answer))
		rdns_done(j, RDNS_TEMPFAIL);
}

/* ---- HELO ------------------------------------------------------------------ */

static bool exempt(const struct check_ctx *ctx)
{
	return ctx->client_allowed || (ctx->client && ctx->client->login && *ctx->client->login);
}

static void hygiene_helo(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct hygiene *h = inst;
	const struct hygiene_params *p = h->p;
	const char *n = ctx->helo ? ctx->helo : "";
	if (exempt(ctx)) {
		check_continue(call);
		return;
	}
	bool literal = address_literal(n);
	if (p->helo_syntax && !literal && !host_name_valid(n)) {
		check_reject(call, 501, "5.5.2", "<%.100s>: Helo command rejected: Invalid name", n);
		return;
	}
	if (p->helo_fqdn && !literal && !strchr(n, '.')) {
		check_reject(call, 504, "5.5.2", "<%.100s>: Helo command rejected: need fully-qualified hostname", n);
		return;
	}
	if (p->helo_not_us && !literal) {
		size_t nl = strlen(n);
		char name[256];
		snprintf(name, sizeof(name), "%.*s", (int)(nl && n[nl - 1] == '.' ? nl - 1 : nl), n);
		if ((h->hostname && strcasecmp(name, h->hostname) == 0) ||
		    (h->local_domains && strlist_contains(h->local_domains, name))) {
			check_reject(call, 550, "5.7.1", "<%.100s>: Helo command rejected: you are not me", n);
			return;
		}
	}
	check_continue(call);
}

/* ---- MAIL: the sender's domain ---------------------------------------------- */

static void sender_done(struct job *j, int code, const char *enh, const char *why)
{
	struct check_call *call = j->call;
	char sender[300];
	snprintf(sender, sizeof(sender), "%s", j->ctx->env && j->ctx->env->sender ? j->ctx->env->sender : "");
	job_end(j);
	if (!code)
		check_continue(call);
	else
		check_reject(call, code, enh, "<%s>: Sender address rejected: %s", sender, why);
}

static void sender_next(struct job *j);

static void sender_answer(struct job *j, const struct dns_result *r)
{
	if (r->status == DNS_TEMPFAIL || r->status == DNS_BOGUS) {
		sender_done(j, 451, "4.1.8", "Domain lookup failed, try again later");
		return;
	}
	if (r->status == DNS_NXDOMAIN) {
		sender_done(j, 550, "5.1.8", "Domain not found");
		return;
	}
	if (j->phase == 0 && r->status == DNS_OK) {
		for (size_t i = 0; i < r->n; i++)
			if (r->rr[i].type == 15) {
				if (r->n == 1 && strcmp(r->rr[i].text, ".") == 0) {
					sender_done(j, 550, "5.7.27", "Domain does not accept mail (null MX)");
					return;
				}
				sender_done(j, 0, NULL, NULL);
				return;
			}
	}
	if (j->phase > 0 && r->status == DNS_OK && r->n)
		j->any_addr = true;
	if (j->any_addr) {
		sender_done(j, 0, NULL, NULL);
		return;
	}
	j->phase++;
	sender_next(j);
}

static void sender_next(struct job *j)
{
	static const int types[] = { 15, 1, 28 };
	if (j->phase > 2) {
		sender_done(j, 550, "5.1.8", "Domain has no MX, A or AAAA record");
		return;
	}
	if (!ask(j, j->domain, types[j->phase], sender_answer))
		sender_done(j, 451, "4.1.8", "Domain lookup failed, try again later");
}

static void hygiene_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct hygiene *h = inst;
	const char *s = ctx->env ? ctx->env->sender : NULL;
	const char *at = s ? strrchr(s, '@') : NULL;
	if (!h->p->sender_domain || !h->dns || exempt(ctx) || !at || !at[1] || at[1] == '[') {
		check_continue(call);
		return;
	}
	struct job *j = job_new(h, ctx, call);
	snprintf(j->domain, sizeof(j->domain), "%s", at + 1);
	sender_next(j);
}

const struct check_def check_hygiene = {
	.name = "hygiene",
	.doc = "HELO and sender hygiene: HELO syntax, FQDN, not us; sender domain resolves; client reverse DNS",
	.params = &hygiene_params_set,
	.init = hygiene_init,
	.free = hygiene_free,
	.hooks = {
		[PHASE_CONNECT] = hygiene_connect,
		[PHASE_HELO] = hygiene_helo,
		[PHASE_MAIL] = hygiene_mail,
	},
};
