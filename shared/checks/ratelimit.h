/*
 * ratelimit.h — the rules and canonical keys of the rate-limit check
 * (ratelimit.c), shared with the spam-trap check (traps.c, same address
 * and client keys) and with `rampartctl ratelimit`, which explains a
 * bucket with the rule the running check applies to it.
 *
 * A rule is KIND:COUNT/PERIOD, a token bucket that holds COUNT tokens and
 * refills COUNT per PERIOD, stored under "rl:KIND:VALUE" with VALUE in
 * canonical form:
 *   client         the client address: 192.0.2.7, 2001:db8::1 (IPv4-mapped
 *                  IPv6 as IPv4)
 *   network        the client's network: 192.0.2.0/24, 2001:db8::/64
 *   sender         the envelope sender, lower case, +subaddress removed
 *   sender_domain  its domain, lower case
 *   login          the authenticated identity, lower case
 *   recipient      (also "rcpt") one recipient address, as sender
 *   client_rcpt    the client address, counting recipients
 */
#ifndef RAMPART_RATELIMIT_H
#define RAMPART_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/config.h"

enum rl_kind {
	RL_CLIENT, RL_NETWORK, RL_SENDER, RL_SENDER_DOMAIN, RL_LOGIN,   /* a token per message, at MAIL */
	RL_RECIPIENT, RL_CLIENT_RCPT,                                   /* a token per recipient, at RCPT */
	RL_NKINDS
};

struct rl_rule {
	enum rl_kind kind;
	long long count;            /* burst, and tokens per period */
	long long period_ms;
};

/* [check.ratelimit] */
struct ratelimit_params {
	struct strlist rules;
	long long ipv4_prefix;
	long long ipv6_prefix;
	char *subaddress_separator;
	bool authenticated;
	bool sender_spf_pass;
	int failure_mode;           /* 0 tempfail, 1 continue */
};

extern const struct param_set ratelimit_params_set;

const char *rl_kind_name(enum rl_kind k);
/* "client", ..., "rcpt" for recipient; false if unknown. */
bool rl_kind_parse(const char *s, size_t len, enum rl_kind *out);
/* "client:100/1h"; false + why. */
bool rl_rule_parse(const char *text, struct rl_rule *out, char *why, size_t whylen);
/* The rules of a bound parameter set, one per kind at most: rules[kind]
 * (count 0: no rule).  false + why. */
bool rl_rules_load(const struct ratelimit_params *p, struct rl_rule rules[RL_NKINDS], char *why, size_t whylen);
/* "1h", "30s", "90m", "1500ms". */
void rl_period_text(long long ms, char *out, size_t outlen);

/* Canonical forms (false: nothing to key on, e.g. not an address). */
bool rl_canon_ip(const char *ip, char *out, size_t outlen);
bool rl_canon_network(const char *ip, int v4prefix, int v6prefix, char *out, size_t outlen);
/* Lower case; the local part cut at the first of the separator
 * characters (seps NULL or "": not cut).  An address without '@' (or
 * with an empty local part after the cut) keeps its local part whole. */
bool rl_canon_addr(const char *addr, const char *seps, char *out, size_t outlen);
bool rl_canon_domain(const char *addr_or_domain, char *out, size_t outlen);
/* The canonical value for kind from the raw text a client gave. */
bool rl_canon(enum rl_kind kind, const char *raw, const struct ratelimit_params *p, char *out, size_t outlen);

#endif
