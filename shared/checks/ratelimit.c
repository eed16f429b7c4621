/*
 * ratelimit.c — rate limits (Maraboli DM11, DM34): token buckets in the
 * shared state store, keyed on the client address or network, the
 * envelope sender or its domain, the authenticated login, and the
 * recipient.
 *
 * Each rule KIND:COUNT/PERIOD of [check.ratelimit] rules is a bucket of
 * COUNT tokens refilled at COUNT per PERIOD (so COUNT at once after a
 * quiet PERIOD, then a steady COUNT per PERIOD), stored under
 * "rl:KIND:VALUE" with VALUE in canonical form (ratelimit.h): lower case,
 * +subaddress removed, networks by ipv4_prefix/ipv6_prefix.  One rule per
 * kind.
 *
 * What costs a token: a transaction (MAIL) for client, network, sender,
 * sender_domain and login — a message, however many recipients, and a
 * connection that sends nothing costs nothing (concurrency and connection
 * rates are the limits check's); a recipient (RCPT) for recipient and
 * client_rcpt.  The buckets of a phase are first only looked at, and
 * tokens are taken from all of them only when none is empty: a refused
 * transaction costs nothing, and a sender over its limit does not use up
 * its client's tokens with every retry.
 *
 * Over a limit: 451 4.7.1 "Rate limit exceeded for KIND VALUE (COUNT per
 * PERIOD); try again in N seconds" — always a 4xx: a real MTA comes back
 * later, and nothing is lost.  At RCPT only that recipient is refused.
 *
 * Not limited: clients on the local allow list (ctx->client_allowed), and
 * authenticated clients except by the login rule (all rules with
 * authenticated = yes).  With sender_spf_pass = yes the sender rules count
 * only senders whose domain passed SPF (check spf before this one), so
 * nobody can use up another domain's allowance by forging its addresses.
 * Put the check after relay and users, so that refused recipients are not
 * counted and do not create buckets.
 *
 * When the store fails, failure_mode applies: tempfail (451 4.3.0, the
 * default) or continue; either way it is logged (ratelimit.error) and
 * counted: rampart_ratelimit_total{kind,result="allowed|limited|error"}.
 */
#include "ratelimit.h"
#include "check.h"
#include "../util/net.h"
#include "../mail/state.h"
#include "../util/alloc.h"
#include "../util/log.h"
#include "../util/metrics.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define P(f) offsetof(struct ratelimit_params, f)

static const struct param_def ratelimit_param_defs[] = {
	{ "rules", PT_LIST, "", 0, 0, NULL, P(rules),
	  "token buckets KIND:COUNT/PERIOD, at most one per KIND (client, network, sender, sender_domain, login: "
	  "messages, counted at MAIL; recipient or rcpt, client_rcpt: recipients, counted at RCPT), "
	  "e.g. client:100/1h network:300/1h sender:200/1d rcpt:50/1m" },
	{ "ipv4_prefix", PT_INT, "24", 8, 32, NULL, P(ipv4_prefix), "network rule: IPv4 prefix length" },
	{ "ipv6_prefix", PT_INT, "64", 16, 128, NULL, P(ipv6_prefix), "network rule: IPv6 prefix length" },
	{ "subaddress_separator", PT_STR, "+", 0, 8, NULL, P(subaddress_separator),
	  "characters that start a subaddress (user+tag@): removed from sender and recipient keys (empty: none)" },
	{ "authenticated", PT_BOOL, "no", 0, 0, NULL, P(authenticated),
	  "limit authenticated clients by every rule too (otherwise only by the login rule)" },
	{ "sender_spf_pass", PT_BOOL, "no", 0, 0, NULL, P(sender_spf_pass),
	  "sender and sender_domain rules count only senders whose domain passed SPF (run check spf first)" },
	{ "failure_mode", PT_ENUM, "tempfail", 0, 0, "tempfail|continue", P(failure_mode),
	  "when the state store fails: tempfail (451 4.3.0) or continue (let the mail through); logged and counted" },
	PARAM_END
};

const struct param_set ratelimit_params_set = {
	"check.ratelimit", "rate limits: token buckets per client, network, sender, sender domain, login, recipient",
	ratelimit_param_defs, sizeof(struct ratelimit_params)
};

/* ---- rules and canonical keys ------------------------------------------ */

static const char *const kind_names[RL_NKINDS] = {
	"client", "network", "sender", "sender_domain", "login", "recipient", "client_rcpt"
};

const char *rl_kind_name(enum rl_kind k)
{
	return (unsigned)k < RL_NKINDS ? kind_names[k] : "?";
}

bool rl_kind_parse(const char *s, size_t len, enum rl_kind *out)
{
	for (int k = 0; k < RL_NKINDS; k++)
		if (strlen(kind_names[k]) == len && strncasecmp(s, kind_names[k], len) == 0) {
			*out = (enum rl_kind)k;
			return true;
		}
	if (len == 4 && strncasecmp(s, "rcpt", 4) == 0) {
		*out = RL_RECIPIENT;
		return true;
	}
	return false;
}

void rl_period_text(long long ms, char *out, size_t outlen)
{
	if (ms > 0 && ms % 86400000 == 0)
		snprintf(out, outlen, "%lldd", ms / 86400000);
	else if (ms > 0 && ms % 3600000 == 0)
		snprintf(out, outlen, "%lldh", ms / 3600000);
	else if (ms > 0 && ms % 60000 == 0)
		snprintf(out, outlen, "%lldm", ms / 60000);
	else if (ms > 0 && ms % 1000 == 0)
		snprintf(out, outlen, "%llds", ms / 1000);
	else
		snprintf(out, outlen, "%lldms", ms);
}

bool rl_rule_parse(const char *text, struct rl_rule *out, char *why, size_t whylen)
{
	static const struct param_def period = { "period", PT_TIME, NULL, 100, 366LL * 86400000, NULL, 0, "" };
	const char *colon = strchr(text, ':');
	const char *slash = colon ? strchr(colon, '/') : NULL;
	if (!colon || !slash) {
		set_why(why, whylen, "'%s': expected KIND:COUNT/PERIOD, e.g. client:100/1h", text);
		return false;
	}
	if (!rl_kind_parse(text, (size_t)(colon - text), &out->kind)) {
		set_why(why, whylen, "'%s': unknown kind '%.*s' (client, network, sender, sender_domain, login, "
			"recipient or rcpt, client_rcpt)", text, (int)(colon - text), text);
		return false;
	}
	char *end;
	errno = 0;
	long long n = strtoll(colon + 1, &end, 10);
	if (end == colon + 1 || end != slash || errno || n < 1 || n > 1000000000) {
		set_why(why, whylen, "'%s': COUNT must be a number from 1 to 1000000000", text);
		return false;
	}
	char pwhy[200];
	long long ms = 0;
	if (!config_parse_value(&period, slash + 1, &ms, pwhy, sizeof(pwhy))) {
		set_why(why, whylen, "'%s': PERIOD: %s (e.g. 30s, 5m, 1h, 1d)", text, pwhy);
		return false;
	}
	if ((double)n * 1000.0 / (double)ms > 1e9) {
		set_why(why, whylen, "'%s': more than 10^9 per second", text);
		return false;
	}
	out->count = n;
	out->period_ms = ms;
	return true;
}

bool rl_rules_load(const struct ratelimit_params *p, struct rl_rule rules[RL_NKINDS], char *why, size_t whylen)
{
	memset(rules, 0, sizeof(struct rl_rule) * RL_NKINDS);
	for (size_t i = 0; i < p->rules.n; i++) {
		struct rl_rule r;
		char rwhy[300];
		if (!rl_rule_parse(p->rules.v[i], &r, rwhy, sizeof(rwhy))) {
			set_why(why, whylen, "rules: %s", rwhy);
			return false;
		}
		if (rules[r.kind].count) {
			set_why(why, whylen, "rules: '%s': a second rule for %s (one bucket per kind)", p->rules.v[i],
				rl_kind_name(r.kind));
			return false;
		}
		rules[r.kind] = r;
	}
	return true;
}

/* 16 bytes of address (IPv4 in the first 4), family; IPv4-mapped IPv6 as IPv4. */
bool rl_canon_ip(const char *ip, char *out, size_t outlen)
{
	return net_canon_ip(ip, out, outlen);
}

bool rl_canon_network(const char *ip, int v4prefix, int v6prefix, char *out, size_t outlen)
{
	return net_prefix(ip, v4prefix, v6prefix, out, outlen);
}

static bool lower_copy(const char *s, size_t n, char *out, size_t outlen)
{
	if (n == 0 || n >= outlen)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			return false;
		out[i] = (char)tolower(c);
	}
	out[n] = '\0';
	return true;
}

bool rl_canon_addr(const char *addr, const char *seps, char *out, size_t outlen)
{
	if (!addr || !*addr)
		return false;
	const char *at = strrchr(addr, '@');
	size_t local = at ? (size_t)(at - addr) : strlen(addr);
	size_t cut = seps && *seps ? strcspn(addr, seps) : local;
	if (cut >= local || cut == 0) {
		return lower_copy(addr, strlen(addr), out, outlen);
	}
	/* local part up to the separator, then "@domain" */
	size_t rest = at ? strlen(at) : 0;
	if (cut + rest >= outlen || !lower_copy(addr, cut, out, outlen))
		return false;
	return !at || lower_copy(at, rest, out + cut, outlen - cut);
}

bool rl_canon_domain(const char *s, char *out, size_t outlen)
{
	if (!s)
		return false;
	const char *at = strrchr(s, '@');
	const char *d = at ? at + 1 : s;
	size_t n = strlen(d);
	while (n && d[n - 1] == '.')
		n--;
	return lower_copy(d, n, out, outlen);
}

bool rl_canon(enum rl_kind kind, const char *raw, const struct ratelimit_params *p, char *out, size_t outlen)
{
	switch (kind) {
	case RL_CLIENT:
	case RL_CLIENT_RCPT:
		return rl_canon_ip(raw, out, outlen);
	case RL_NETWORK:
		return rl_canon_network(raw, (int)p->ipv4_prefix, (int)p->ipv6_prefix, out, outlen);
	case RL_SENDER:
	case RL_RECIPIENT:
		return rl_canon_addr(raw, p->subaddress_separator, out, outlen);
	case RL_SENDER_DOMAIN:
		return raw && strchr(raw, '@') && rl_canon_domain(raw, out, outlen);
	case RL_LOGIN:
		return raw && lower_copy(raw, strlen(raw), out, outlen);
	case RL_NKINDS:
		break;
	}
	return false;
}

/* ---- the check -------------------------------------------------------- */

struct ratelimit {
	const struct ratelimit_params *p;
	struct state *st;
	struct rl_rule rules[RL_NKINDS];
	struct metric *m_total;
};

static void *ratelimit_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct ratelimit_params *p = params;
	struct ratelimit *rl = xcalloc(1, sizeof(*rl));
	rl->p = p;
	rl->st = env->state;
	if (!rl_rules_load(p, rl->rules, why, whylen)) {
		free(rl);
		return NULL;
	}
	if (env->metrics)
		rl->m_total = metrics_counter(env->metrics, "rampart_ratelimit_total",
					      "Rate-limit decisions by kind of bucket: allowed, limited, or error "
					      "(the state store failed; failure_mode applied).");
	return rl;
}

static void ratelimit_free(void *inst)
{
	free(inst);
}

/* One bucket of one decision. */
struct rl_run;
struct rl_item {
	struct rl_run *run;
	enum rl_kind kind;
	char value[300];
	char key[STATE_KEY_MAX + 1];
	enum state_status status;
	char reason[200];
	bool allowed;
	double tokens;
	long long retry_ms;
};

/* The buckets of a phase: looked at (cost 0), then taken (cost 1). */
struct rl_run {
	struct ratelimit *rl;
	struct check_ctx *ctx;
	struct check_call *call;
	bool taking;
	size_t n, out;
	struct rl_item items[RL_NKINDS];
};

static void count(struct ratelimit *rl, enum rl_kind k, const char *result)
{
	if (!rl->m_total)
		return;
	char l[96];
	snprintf(l, sizeof(l), "kind=\"%s\",result=\"%s\"", rl_kind_name(k), result);
	metric_inc(rl->m_total, l);
}

static void issue(struct rl_run *run);

/* The store failed for some bucket: the failure mode. */
static void failed(struct rl_run *run)
{
	struct ratelimit *rl = run->rl;
	struct check_ctx *ctx = run->ctx;
	struct check_call *call = run->call;
	for (size_t i = 0; i < run->n; i++) {
		struct rl_item *it = &run->items[i];
		if (it->status != STATE_ERROR)
			continue;
		log_warn(ctx->sid, ctx->qid, "ratelimit.error", "kind=%s key=%s reason=%s failure_mode=%s client=%s",
			 rl_kind_name(it->kind), it->key, it->reason, rl->p->failure_mode ? "continue" : "tempfail",
			 ctx->client && ctx->client->addr ? ctx->client->addr : "");
		count(rl, it->kind, "error");
	}
	free(run);
	if (rl->p->failure_mode == 1)
		check_continue(call);
	else
		check_reject(call, 451, "4.3.0", "Temporary failure checking rate limits; try again later");
}

static void decide(struct rl_run *run)
{
	struct ratelimit *rl = run->rl;
	for (size_t i = 0; i < run->n; i++)
		if (run->items[i].status == STATE_ERROR) {
			failed(run);
			return;
		}
	/* Over a limit: the bucket that needs the longest wait decides. */
	struct rl_item *worst = NULL;
	for (size_t i = 0; i < run->n; i++) {
		struct rl_item *it = &run->items[i];
		const struct rl_rule *r = &rl->rules[it->kind];
		bool limited = run->taking ? !it->allowed : it->tokens + 1e-9 < 1.0;
		if (!limited) {
			if (run->taking)
				count(rl, it->kind, "allowed");
			continue;
		}
		if (!run->taking) {
			/* (1 - tokens) at count per period */
			double ms = (1.0 - it->tokens) * (double)r->period_ms / (double)r->count;
			it->retry_ms = (long long)ms + 1;
		}
		if (it->retry_ms < 0)
			it->retry_ms = r->period_ms;
		count(rl, it->kind, "limited");
		char per[32];
		rl_period_text(r->period_ms, per, sizeof(per));
		log_info(run->ctx->sid, run->ctx->qid, "ratelimit.limited",
			 "kind=%s key=%s count=%lld period=%s tokens=%.3f retry_ms=%lld client=%s",
			 rl_kind_name(it->kind), it->key, r->count, per, it->tokens, it->retry_ms,
			 run->ctx->client && run->ctx->client->addr ? run->ctx->client->addr : "");
		if (!worst || it->retry_ms > worst->retry_ms)
			worst = it;
	}
	if (worst) {
		const struct rl_rule *r = &rl->rules[worst->kind];
		char per[32];
		rl_period_text(r->period_ms, per, sizeof(per));
		long long secs = (worst->retry_ms + 999) / 1000;
		if (secs < 1)
			secs = 1;
		struct check_call *call = run->call;
		char kind[32], value[300];
		snprintf(kind, sizeof(kind), "%s", rl_kind_name(worst->kind));
		snprintf(value, sizeof(value), "%s", worst->value);
		long long cnt = r->count;
		free(run);
		check_reject(call, 451, "4.7.1", "Rate limit exceeded for %s %s (%lld per %s); try again in %lld second%s",
			     kind, value, cnt, per, secs, secs == 1 ? "" : "s");
		return;
	}
	if (!run->taking) {
		run->taking = true;
		issue(run);
		return;
	}
	struct check_call *call = run->call;
	free(run);
	check_continue(call);
}

static void on_bucket(void *arg, const struct state_result *r)
{
	struct rl_item *it = arg;
	struct rl_run *run = it->run;
	it->status = r->status;
	snprintf(it->reason, sizeof(it->reason), "%s", r->status == STATE_ERROR ? r->reason : "");
	it->allowed = r->allowed;
	it->tokens = r->tokens;
	it->retry_ms = r->retry_after_ms;
	if (--run->out == 0)
		decide(run);
}

static void issue(struct rl_run *run)
{
	struct ratelimit *rl = run->rl;
	run->out = run->n;
	/* Callbacks never run inside state_take(): out cannot reach 0 early. */
	for (size_t i = 0; i < run->n; i++) {
		struct rl_item *it = &run->items[i];
		const struct rl_rule *r = &rl->rules[it->kind];
		double rate = (double)r->count * 1000.0 / (double)r->period_ms;
		state_take(rl->st, it->key, rate, (double)r->count, run->taking ? 1.0 : 0.0, on_bucket, it);
	}
}

static void add_item(struct rl_run *run, enum rl_kind k, const char *raw)
{
	struct ratelimit *rl = run->rl;
	if (!rl->rules[k].count)
		return;
	struct rl_item *it = &run->items[run->n];
	char value[sizeof(it->value)];
	if (!rl_canon(k, raw, rl->p, value, sizeof(value)))
		return;
	if (snprintf(it->key, sizeof(it->key), "rl:%s:%s", rl_kind_name(k), value) >= (int)sizeof(it->key))
		return;
	memcpy(it->value, value, sizeof(value));
	it->run = run;
	it->kind = k;
	run->n++;
}

static void ratelimit_phase(struct ratelimit *rl, struct check_ctx *ctx, struct check_call *call, bool rcpt)
{
	if (ctx->client_allowed || !ctx->client) {
		check_continue(call);
		return;
	}
	bool authed = ctx->client->login && *ctx->client->login;
	bool all = !authed || rl->p->authenticated;
	struct rl_run *run = xcalloc(1, sizeof(*run));
	run->rl = rl;
	run->ctx = ctx;
	run->call = call;
	const char *ip = ctx->client->addr;
	if (!rcpt) {
		const char *sender = ctx->env ? ctx->env->sender : NULL;
		if (all) {
			add_item(run, RL_CLIENT, ip);
			add_item(run, RL_NETWORK, ip);
			bool sender_ok = sender && *sender;
			if (sender_ok && rl->p->sender_spf_pass) {
				char d[300];
				sender_ok = ctx->auth.spf == AUTH_SPF_PASS && rl_canon_domain(sender, d, sizeof(d)) &&
					    strcasecmp(d, ctx->auth.spf_domain) == 0;
			}
			if (sender_ok) {
				add_item(run, RL_SENDER, sender);
				add_item(run, RL_SENDER_DOMAIN, sender);
			}
		}
		if (authed)
			add_item(run, RL_LOGIN, ctx->client->login);
	} else if (all && ctx->env && ctx->env->nrcpt) {
		add_item(run, RL_RECIPIENT, ctx->env->rcpts[ctx->env->nrcpt - 1].addr);
		add_item(run, RL_CLIENT_RCPT, ip);
	}
	if (!run->n) {
		free(run);
		check_continue(call);
		return;
	}
	if (!rl->st) {
		for (size_t i = 0; i < run->n; i++) {
			run->items[i].status = STATE_ERROR;
			snprintf(run->items[i].reason, sizeof(run->items[i].reason), "no state store");
		}
		failed(run);
		return;
	}
	/* One bucket: nothing to keep in step, take at once. */
	run->taking = run->n == 1;
	issue(run);
}

static void ratelimit_mail(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	ratelimit_phase(inst, ctx, call, false);
}

static void ratelimit_rcpt(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	ratelimit_phase(inst, ctx, call, true);
}

const struct check_def check_ratelimit = {
	.name = "ratelimit",
	.doc = "rate limits: token buckets per client, network, sender, sender domain, login and recipient (451 4.7.1)",
	.params = &ratelimit_params_set,
	.init = ratelimit_init,
	.free = ratelimit_free,
	.hooks = {
		[PHASE_MAIL] = ratelimit_mail,
		[PHASE_RCPT] = ratelimit_rcpt,
	},
	.needs_state = true,
};
