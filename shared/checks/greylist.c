/*
 * greylist.c — greylisting (Maraboli DM22, RFC 6647): a recipient is
 * refused with a temporary error (451 4.7.1) the first time a client
 * offers it a message from a sender; a real MTA retries later and is let
 * through, while much of the spam sent by software that never retries is
 * not.
 *
 * At RCPT, the triplet (client, sender, recipient) is looked up in the
 * state store (keys and values: greylist.h):
 *   new      never seen (or its retry window passed): recorded, 451 4.7.1
 *            "Greylisted, please try again in N seconds" (N = delay);
 *   early    seen less than delay ago: 451 4.7.1 with the time left;
 *   passed   retried after delay and within retry_window: let through,
 *            remembered for lifetime, counted for the client's auto-allow;
 *   known    passed before: let through, its lifetime renewed;
 *   allowed  the client is allowed by hand (rampartctl greylist allow: its
 *            address, network, or SPF domain) or automatically, after
 *            auto_allow_after triplets of it passed (remembered for
 *            lifetime, renewed on use): let through without a triplet.
 *
 * The client is its network (ipv4_prefix, ipv6_prefix), as postgrey
 * does, so that a retry from another address of the same network passes.
 * Big senders retry from another address of a pool that spans networks,
 * and classic greylisting makes them wait again and again.  So, with
 * key_on_spf, a client whose sender domain passed SPF (check spf, before
 * this one) is keyed on that domain instead ("spf:example.org"): any
 * server the domain authorises may do the retry.  The price: a domain
 * whose SPF record authorises everybody lets any host of the Internet
 * retry for it; that domain is still greylisted per triplet, but once it
 * is auto-allowed, it is allowed from anywhere (auto_allow_after = 0
 * turns auto-allowing off).  A network that is auto-allowed stays so
 * whatever the sender's SPF says.
 *
 * Sender and recipient are compared in canonical form (greylist.h):
 * case, +subaddress, BATV tags, SRS0 hashes and VERP numbers do not make
 * a new triplet, so a mailing list is not greylisted at each message.
 * The null sender (bounces) is greylisted too, as "<>".
 *
 * Not greylisted: clients on the local allow list (ctx->client_allowed),
 * authenticated clients, and, with skip_dnswl, clients a DNS allow list
 * lists (check dnsbl before this one).  Put the check after relay and
 * users, so that refused recipients make no triplets.
 *
 * Times are the wall clock of the host that writes them (the servers of
 * a pair sharing Redis should run NTP); the entries expire by the store.
 * When the store fails, failure_mode applies: tempfail (451 4.3.0, the
 * default) or continue (let the mail through); either way it is logged
 * (greylist.error) and counted:
 * rampart_greylist_total{result="new|early|passed|known|allowed|skipped|error"}.
 */
#include "greylist.h"
#include "check.h"
#include "../mail/state.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/net.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#define P(f) offsetof(struct greylist_params, f)

static const struct param_def greylist_param_defs[] = {
	{ "delay", PT_TIME, "5m", 0, 86400000, NULL, P(delay),
	  "how long a new triplet (client, sender, recipient) waits before its retry is let through" },
	{ "retry_window", PT_TIME, "2d", 1000, 30LL * 86400000, NULL, P(retry_window),
	  "how long a new triplet is remembered while it waits for its retry (more than delay)" },
	{ "lifetime", PT_TIME, "35d", 1000, 366LL * 86400000, NULL, P(lifetime),
	  "how long a triplet that passed, and an auto-allowed client, are remembered (renewed on use)" },
	{ "auto_allow_after", PT_INT, "5", 0, 1000000, NULL, P(auto_allow_after),
	  "triplets of one client that must pass before the client is no longer greylisted (0: never)" },
	{ "ipv4_prefix", PT_INT, "24", 8, 32, NULL, P(ipv4_prefix), "IPv4 prefix length of a client's network" },
	{ "ipv6_prefix", PT_INT, "64", 16, 128, NULL, P(ipv6_prefix), "IPv6 prefix length of a client's network" },
	{ "key_on_spf", PT_BOOL, "yes", 0, 0, NULL, P(key_on_spf),
	  "when SPF passed (check spf before this one), key on the authorised domain instead of the network, "
	  "so that a retry from any server of the domain passes" },
	{ "skip_dnswl", PT_BOOL, "yes", 0, 0, NULL, P(skip_dnswl),
	  "do not greylist clients a DNS allow list lists (check dnsbl before this one)" },
	{ "subaddress_separator", PT_STR, "+", 0, 8, NULL, P(subaddress_separator),
	  "characters that start a subaddress (user+tag@), removed from senders and recipients (empty: none)" },
	{ "failure_mode", PT_ENUM, "tempfail", 0, 0, "tempfail|continue", P(failure_mode),
	  "when the state store fails: tempfail (451 4.3.0) or continue (let the mail through); logged and counted" },
	PARAM_END
};

const struct param_set greylist_params_set = {
	"check.greylist", "greylisting of (client network or SPF domain, sender, recipient) triplets",
	greylist_param_defs, sizeof(struct greylist_params)
};

/* ---- keys --------------------------------------------------------------- */

bool gl_net_key(const char *ip, const struct greylist_params *p, char *out, size_t outlen)
{
	char net[80];
	if (!ip || !*ip || !net_prefix(ip, (int)p->ipv4_prefix, (int)p->ipv6_prefix, net, sizeof(net)))
		return false;
	return (size_t)snprintf(out, outlen, "net:%s", net) < outlen;
}

bool gl_ip_key(const char *ip, char *out, size_t outlen)
{
	char a[64];
	if (!ip || !*ip || !net_canon_ip(ip, a, sizeof(a)))
		return false;
	return (size_t)snprintf(out, outlen, "ip:%s", a) < outlen;
}

bool gl_domain_key(const char *domain, char *out, size_t outlen)
{
	if (!domain)
		return false;
	size_t n = strlen(domain);
	while (n && domain[n - 1] == '.')
		n--;
	if (n == 0 || n > 253 || n + 5 > outlen)
		return false;
	memcpy(out, "spf:", 4);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)domain[i];
		if (c <= 0x20 || c == 0x7f || c == '|' || c == '%' || c == '@')
			return false;
		out[4 + i] = (char)tolower(c);
	}
	out[4 + n] = '\0';
	return true;
}

/* SRS0=HHH=TT=domain=local: the hash and time stamp change every day. */
static size_t srs0(const char *l, size_t n, char *out, size_t outlen)
{
	if (n < 5 || strncmp(l, "srs0", 4) != 0 || !strchr("=+-", l[4]))
		return 0;
	const char *p = l + 5, *end = l + n;
	for (int field = 0; field < 2; field++) {
		const char *eq = memchr(p, '=', (size_t)(end - p));
		if (!eq)
			return 0;
		p = eq + 1;
	}
	if (p >= end)
		return 0;
	return (size_t)snprintf(out, outlen, "srs0=%.*s", (int)(end - p), p);
}

/* BATV: prvs=TAG=local, msprvs1=TAG=local, btv1==TAG==local. */
static const char *batv(const char *l, size_t n, size_t *rest)
{
	static const char *const tags[] = { "prvs=", "msprvs1=", "btv1=" };
	for (size_t i = 0; i < 3; i++) {
		size_t tl = strlen(tags[i]);
		if (n <= tl || strncmp(l, tags[i], tl) != 0)
			continue;
		const char *p = l + tl, *end = l + n;
		while (p < end && *p == '=')
			p++;
		const char *eq = memchr(p, '=', (size_t)(end - p));
		if (!eq || eq == p)
			return NULL;
		p = eq;
		while (p < end && *p == '=')
			p++;
		if (p == end)
			return NULL;
		*rest = (size_t)(end - p);
		return p;
	}
	return NULL;
}

static bool wordch(char c)
{
	return isalnum((unsigned char)c) || c == '_';
}

void gl_canon_addr(const char *addr, bool sender, const char *seps, char *out, size_t outlen)
{
	if (outlen == 0)
		return;
	if (!addr || !*addr) {
		snprintf(out, outlen, "<>");
		return;
	}
	/* lower case, the domain without a trailing dot */
	char a[1024];
	size_t n = 0;
	for (; addr[n] && n < sizeof(a) - 1; n++)
		a[n] = (char)tolower((unsigned char)addr[n]);
	a[n] = '\0';
	char *at = strrchr(a, '@');
	size_t local = at ? (size_t)(at - a) : n;
	while (at && n > local + 1 && a[n - 1] == '.')
		a[--n] = '\0';
	const char *dom = at ? at : "";

	char l[1024];
	snprintf(l, sizeof(l), "%.*s", (int)local, a);
	size_t ln = local;
	if (sender) {
		size_t rest;
		const char *r = batv(l, ln, &rest);
		if (r) {
			memmove(l, r, rest);
			l[rest] = '\0';
			ln = rest;
		}
		char s[1024];
		size_t sn = srs0(l, ln, s, sizeof(s));
		if (sn && sn < sizeof(s)) {
			memcpy(l, s, sn + 1);
			ln = sn;
		}
	}
	if (seps && *seps) {
		size_t cut = strcspn(l, seps);
		if (cut > 0 && cut < ln)
			l[ln = cut] = '\0';
	}
	/* VERP and the like: a number standing alone is any number */
	char v[1024];
	size_t vn = 0;
	for (size_t i = 0; i < ln && vn < sizeof(v) - 1;) {
		if (sender && isdigit((unsigned char)l[i]) && (i == 0 || !wordch(l[i - 1]))) {
			size_t j = i;
			while (j < ln && isdigit((unsigned char)l[j]))
				j++;
			if (j == ln || !wordch(l[j])) {
				v[vn++] = '#';
				i = j;
				continue;
			}
		}
		v[vn++] = l[i++];
	}
	v[vn] = '\0';

	/* %-encode what would make the key ambiguous or invalid */
	char e[3200];
	size_t en = 0;
	char whole[2100];
	snprintf(whole, sizeof(whole), "%s%s", v, dom);
	for (const char *p = whole; *p && en < sizeof(e) - 4; p++) {
		unsigned char c = (unsigned char)*p;
		if (c <= 0x20 || c == 0x7f || c == '%' || c == '|')
			en += (size_t)snprintf(e + en, sizeof(e) - en, "%%%02X", c);
		else
			e[en++] = (char)c;
	}
	e[en] = '\0';
	if (en <= GL_ADDR_MAX) {
		snprintf(out, outlen, "%s", e);
		return;
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	if (!EVP_Digest(e, en, md, &mdlen, EVP_sha256(), NULL) || mdlen < 16) {
		snprintf(out, outlen, "%.*s", GL_ADDR_MAX, e);
		return;
	}
	char hex[40];
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	snprintf(out, outlen, "#%s", hex);
}

bool gl_triplet_parse(const char *value, struct gl_triplet *t)
{
	char end;
	if (!value || sscanf(value, "%lld %lld %lld%c", &t->first_ms, &t->passed_ms, &t->seen_ms, &end) != 3)
		return false;
	return t->first_ms > 0 && t->passed_ms >= 0 && t->seen_ms > 0;
}

void gl_triplet_format(const struct gl_triplet *t, char *out, size_t outlen)
{
	snprintf(out, outlen, "%lld %lld %lld", t->first_ms, t->passed_ms, t->seen_ms);
}

/* ---- the check ------------------------------------------------------------ */

struct greylist {
	const struct greylist_params *p;
	struct state *st;
	struct metric *m_total;
};

static void *greylist_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct greylist_params *p = params;
	if (p->retry_window <= p->delay) {
		set_why(why, whylen, "retry_window (%lldms) must be longer than delay (%lldms)", p->retry_window,
			p->delay);
		return NULL;
	}
	if (p->lifetime < p->delay) {
		set_why(why, whylen, "lifetime (%lldms) is shorter than delay (%lldms)", p->lifetime, p->delay);
		return NULL;
	}
	struct greylist *g = xcalloc(1, sizeof(*g));
	g->p = p;
	g->st = env->state;
	if (env->metrics)
		g->m_total = metrics_counter(env->metrics, "rampart_greylist_total",
					     "Greylisting decisions per recipient: new, early (retried too soon), passed, "
					     "known, allowed (by hand or auto-allowed), skipped, error (the state store "
					     "failed; failure_mode applied).");
	return g;
}

static void greylist_free(void *inst)
{
	free(inst);
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void count(struct greylist *g, const char *result)
{
	if (!g->m_total)
		return;
	char l[64];
	snprintf(l, sizeof(l), "result=\"%s\"", result);
	metric_inc(g->m_total, l);
}

/* The entries read for one recipient. */
enum { Q_TRIPLET, Q_AUTO, Q_AUTO_NET, Q_MAN_IP, Q_MAN_NET, Q_MAN_SPF, NQ };
/* The entries written after the decision. */
enum { W_TRIPLET, W_AUTO, W_AUTO_NET, NW };

struct gl_run;

struct gl_op {
	struct gl_run *run;
	bool used;
	bool critical;              /* a write the decision stands on */
	char key[STATE_KEY_MAX + 1];
	enum state_status status;
	char value[64];
	long long counter;
	char reason[200];
};

struct gl_run {
	struct greylist *g;
	struct check_ctx *ctx;
	struct check_call *call;
	char client[GL_CLIENT_MAX];
	char triplet[STATE_KEY_MAX + 1];
	struct gl_op q[NQ], w[NW];
	size_t out;
	/* the decision, once the reads are in */
	const char *result;
	bool refuse;
	long long wait_s;
};

static void op_done(void *arg, const struct state_result *r);

static void use_op(struct gl_run *run, struct gl_op *o, const char *prefix, const char *client)
{
	if (!client || !*client ||
	    (size_t)snprintf(o->key, sizeof(o->key), "%s%s", prefix, client) >= sizeof(o->key))
		return;
	o->run = run;
	o->used = true;
}

static const char *client_addr(const struct check_ctx *ctx)
{
	return ctx->client && ctx->client->addr ? ctx->client->addr : "";
}

/* The store failed: the failure mode, logged (the first failed operation,
 * and how many failed) and counted once. */
static void failed(struct gl_run *run, struct gl_op *ops, size_t n)
{
	struct greylist *g = run->g;
	struct check_ctx *ctx = run->ctx;
	struct check_call *call = run->call;
	const struct gl_op *first = NULL;
	unsigned nfailed = 0;
	for (size_t i = 0; i < n; i++)
		if (ops[i].used && ops[i].status == STATE_ERROR && nfailed++ == 0)
			first = &ops[i];
	if (first)
		log_warn(ctx->sid, ctx->qid, "greylist.error", "key=%s reason=%s failed_ops=%u failure_mode=%s client=%s",
			 first->key, first->reason, nfailed, g->p->failure_mode ? "continue" : "tempfail",
			 client_addr(ctx));
	count(g, "error");
	free(run);
	if (g->p->failure_mode == 1)
		check_continue(call);
	else
		check_reject(call, 451, "4.3.0", "Temporary failure checking greylisting; try again later");
}

/* The writes are done: the verdict. */
static void finish(struct gl_run *run)
{
	struct greylist *g = run->g;
	struct check_ctx *ctx = run->ctx;
	bool critical = false, other = false;
	for (size_t i = 0; i < NW; i++)
		if (run->w[i].used && run->w[i].status == STATE_ERROR) {
			if (run->w[i].critical)
				critical = true;
			else
				other = true;
		}
	if (critical) {
		failed(run, run->w, NW);
		return;
	}
	if (other) {
		/* renewing or counting failed: the decision stands */
		for (size_t i = 0; i < NW; i++)
			if (run->w[i].used && run->w[i].status == STATE_ERROR)
				log_warn(ctx->sid, ctx->qid, "greylist.error", "key=%s reason=%s failure_mode=%s client=%s",
					 run->w[i].key, run->w[i].reason, "none (a renewal or count only)",
					 client_addr(ctx));
		count(g, "error");
	}
	if (run->w[W_AUTO].used && run->w[W_AUTO].status == STATE_OK && g->p->auto_allow_after > 0 &&
	    run->w[W_AUTO].counter == g->p->auto_allow_after)
		log_info(ctx->sid, ctx->qid, "greylist.auto_allowed", "client_key=%s passed=%lld lifetime_ms=%lld",
			 run->client, run->w[W_AUTO].counter, g->p->lifetime);
	count(g, run->result);
	struct check_call *call = run->call;
	bool refuse = run->refuse;
	long long secs = run->wait_s;
	free(run);
	if (refuse)
		check_reject(call, 451, "4.7.1", "Greylisted, please try again in %lld second%s", secs,
			     secs == 1 ? "" : "s");
	else
		check_continue(call);
}

static void issue_writes(struct gl_run *run)
{
	struct greylist *g = run->g;
	run->out = 0;
	for (size_t i = 0; i < NW; i++)
		if (run->w[i].used)
			run->out++;
	if (!run->out) {
		finish(run);
		return;
	}
	/* Callbacks never run inside the calls: out cannot reach 0 early. */
	for (size_t i = 0; i < NW; i++) {
		struct gl_op *o = &run->w[i];
		if (!o->used)
			continue;
		if (i == W_AUTO && o->value[0] == '\0')
			state_incr(g->st, o->key, 1, g->p->lifetime, op_done, o);
		else
			state_set(g->st, o->key, o->value, strlen(o->value), i == W_TRIPLET && run->refuse ?
				  g->p->retry_window : g->p->lifetime, op_done, o);
	}
}

static long long auto_count(const struct gl_op *o)
{
	if (!o->used || o->status != STATE_OK)
		return 0;
	char *end;
	errno = 0;
	long long v = strtoll(o->value, &end, 10);
	return errno || end == o->value ? 0 : v;
}

/* Every read is in: decide, then write what the decision needs. */
static void decide(struct gl_run *run)
{
	struct greylist *g = run->g;
	struct check_ctx *ctx = run->ctx;
	for (size_t i = 0; i < NQ; i++)
		if (run->q[i].used && run->q[i].status == STATE_ERROR) {
			failed(run, run->q, NQ);
			return;
		}
	const char *ip = client_addr(ctx);
	long long now = now_ms();
	/* allowed by hand */
	for (size_t i = Q_MAN_IP; i <= Q_MAN_SPF; i++)
		if (run->q[i].used && run->q[i].status == STATE_OK) {
			run->result = "allowed";
			log_debug(ctx->sid, ctx->qid, "greylist.allowed", "key=%s how=%s client=%s", run->q[i].key,
				  "manual", ip);
			finish(run);
			return;
		}
	/* auto-allowed: its lifetime renewed */
	long long n = g->p->auto_allow_after;
	bool allowed = false;
	for (size_t i = Q_AUTO; i <= Q_AUTO_NET; i++) {
		long long c = auto_count(&run->q[i]);
		if (n > 0 && c >= n) {
			allowed = true;
			struct gl_op *w = &run->w[i == Q_AUTO ? W_AUTO : W_AUTO_NET];
			use_op(run, w, "", run->q[i].key);
			snprintf(w->value, sizeof(w->value), "%lld", c);
			log_debug(ctx->sid, ctx->qid, "greylist.allowed", "key=%s how=%s passed=%lld client=%s",
				  run->q[i].key, "auto", c, ip);
		}
	}
	if (allowed) {
		run->result = "allowed";
		issue_writes(run);
		return;
	}
	struct gl_op *t = &run->q[Q_TRIPLET];
	struct gl_triplet tv = { 0 };
	bool found = t->status == STATE_OK;
	if (found && !gl_triplet_parse(t->value, &tv)) {
		log_warn(ctx->sid, ctx->qid, "greylist.bad_entry", "key=%s value=%s", t->key, t->value);
		found = false;
	}
	struct gl_op *w = &run->w[W_TRIPLET];
	if (!found) {
		run->result = "new";
		run->refuse = true;
		run->wait_s = (g->p->delay + 999) / 1000;
		use_op(run, w, "", run->triplet);
		w->critical = true;
		struct gl_triplet nt = { now, 0, now };
		gl_triplet_format(&nt, w->value, sizeof(w->value));
		log_info(ctx->sid, ctx->qid, "greylist.new", "key=%s delay_ms=%lld retry_window_ms=%lld client=%s",
			 run->triplet, g->p->delay, g->p->retry_window, ip);
	} else if (tv.passed_ms == 0 && now - tv.first_ms < g->p->delay) {
		run->result = "early";
		run->refuse = true;
		run->wait_s = (g->p->delay - (now - tv.first_ms) + 999) / 1000;
		log_info(ctx->sid, ctx->qid, "greylist.early", "key=%s age_ms=%lld wait_s=%lld client=%s",
			 run->triplet, now - tv.first_ms, run->wait_s, ip);
	} else if (tv.passed_ms == 0) {
		run->result = "passed";
		use_op(run, w, "", run->triplet);
		w->critical = true;
		struct gl_triplet nt = { tv.first_ms, now, now };
		gl_triplet_format(&nt, w->value, sizeof(w->value));
		if (n > 0)
			use_op(run, &run->w[W_AUTO], GL_AUTO, run->client);     /* value "": an increment */
		log_info(ctx->sid, ctx->qid, "greylist.passed", "key=%s age_ms=%lld client=%s", run->triplet,
			 now - tv.first_ms, ip);
	} else {
		run->result = "known";
		/* renewed now and then, not at every recipient */
		long long renew = g->p->lifetime / 4 < 3600000 ? g->p->lifetime / 4 : 3600000;
		if (now - tv.seen_ms >= renew || now < tv.seen_ms) {
			use_op(run, w, "", run->triplet);
			struct gl_triplet nt = { tv.first_ms, tv.passed_ms, now };
			gl_triplet_format(&nt, w->value, sizeof(w->value));
		}
		log_debug(ctx->sid, ctx->qid, "greylist.known", "key=%s renewed=%s client=%s", run->triplet,
			  w->used ? "yes" : "no", ip);
	}
	if (run->refuse && run->wait_s < 1)
		run->wait_s = 1;
	issue_writes(run);
}

static void op_done(void *arg, const struct state_result *r)
{
	struct gl_op *o = arg;
	struct gl_run *run = o->run;
	o->status = r->status;
	snprintf(o->reason, sizeof(o->reason), "%s", r->status == STATE_ERROR && r->reason ? r->reason : "");
	if (r->op == STATE_OP_GET && r->status == STATE_OK)
		snprintf(o->value, sizeof(o->value), "%.*s", (int)(r->vlen < sizeof(o->value) ? r->vlen :
								   sizeof(o->value) - 1), r->value);
	if (r->op == STATE_OP_INCR)
		o->counter = r->counter;
	if (--run->out)
		return;
	if (r->op == STATE_OP_GET)
		decide(run);
	else
		finish(run);
}

static void skipped(struct greylist *g, struct check_ctx *ctx, struct check_call *call, const char *why)
{
	log_debug(ctx->sid, ctx->qid, "greylist.skipped", "reason=%s client=%s", why, client_addr(ctx));
	count(g, "skipped");
	check_continue(call);
}

static void greylist_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct greylist *g = inst;
	const struct greylist_params *p = g->p;
	if (ctx->client_allowed) {
		skipped(g, ctx, call, "allow list");
		return;
	}
	if (ctx->client && ctx->client->login && *ctx->client->login) {
		skipped(g, ctx, call, "authenticated");
		return;
	}
	if (p->skip_dnswl && ctx->dnswl) {
		skipped(g, ctx, call, "dnswl");
		return;
	}
	if (!ctx->env || !ctx->env->nrcpt) {
		skipped(g, ctx, call, "no recipient");
		return;
	}
	struct gl_run *run = xcalloc(1, sizeof(*run));
	run->g = g;
	run->ctx = ctx;
	run->call = call;
	const char *ip = client_addr(ctx);
	char net[GL_CLIENT_MAX] = "", spf[GL_CLIENT_MAX] = "", ipk[GL_CLIENT_MAX] = "";
	gl_net_key(ip, p, net, sizeof(net));
	gl_ip_key(ip, ipk, sizeof(ipk));
	if (ctx->auth.spf == AUTH_SPF_PASS)
		gl_domain_key(ctx->auth.spf_domain, spf, sizeof(spf));
	snprintf(run->client, sizeof(run->client), "%s", p->key_on_spf && *spf ? spf : net);
	if (!*run->client) {
		free(run);
		skipped(g, ctx, call, "no client address");
		return;
	}
	char sender[GL_ADDR_MAX + 1], rcpt[GL_ADDR_MAX + 1];
	gl_canon_addr(ctx->env->sender, true, p->subaddress_separator, sender, sizeof(sender));
	gl_canon_addr(ctx->env->rcpts[ctx->env->nrcpt - 1].addr, false, p->subaddress_separator, rcpt, sizeof(rcpt));
	snprintf(run->triplet, sizeof(run->triplet), GL_TRIPLET "%s|%s|%s", run->client, sender, rcpt);

	use_op(run, &run->q[Q_TRIPLET], "", run->triplet);
	use_op(run, &run->q[Q_AUTO], GL_AUTO, run->client);
	if (strcmp(run->client, net) != 0)
		use_op(run, &run->q[Q_AUTO_NET], GL_AUTO, net);
	use_op(run, &run->q[Q_MAN_IP], GL_MANUAL, ipk);
	use_op(run, &run->q[Q_MAN_NET], GL_MANUAL, net);
	use_op(run, &run->q[Q_MAN_SPF], GL_MANUAL, spf);
	if (!g->st) {
		for (size_t i = 0; i < NQ; i++) {
			run->q[i].status = STATE_ERROR;
			snprintf(run->q[i].reason, sizeof(run->q[i].reason), "no state store");
		}
		failed(run, run->q, NQ);
		return;
	}
	for (size_t i = 0; i < NQ; i++)
		if (run->q[i].used)
			run->out++;
	/* Callbacks never run inside state_get(): out cannot reach 0 early. */
	for (size_t i = 0; i < NQ; i++)
		if (run->q[i].used)
			state_get(g->st, run->q[i].key, op_done, &run->q[i]);
}

const struct check_def check_greylist = {
	.name = "greylist",
	.doc = "greylisting: 451 4.7.1 for a new (client network or SPF domain, sender, recipient) until it retries",
	.params = &greylist_params_set,
	.init = greylist_init,
	.free = greylist_free,
	.hooks = { [PHASE_RCPT] = greylist_rcpt },
	.needs_state = true,
};
