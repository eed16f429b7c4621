/*
 * spf.h — the SPF check's evaluation (RFC 7208), for callers other than
 * the chain: tests, the RFC 7208 test-suite runner, later checks that
 * need a result name.  The check itself is check_spf (registry name
 * "spf"); see spf.c for what it does and its parameters.
 */
#ifndef RAMPART_SPF_H
#define RAMPART_SPF_H

#include "check.h"

/* One evaluation: who connected and what they said. */
struct spf_request {
	const char *ip;             /* the client's address, IPv4 or IPv6 text */
	const char *mailfrom;       /* MAIL FROM without <>; "" for the null sender */
	const char *helo;           /* HELO/EHLO argument; "" if none */
};

struct spf_outcome {
	enum auth_spf result;       /* never AUTH_SPF_UNCHECKED */
	char identity[16];          /* "mailfrom" or "helo": the identity the result is for */
	char domain[256];           /* the domain checked ("" if there was none) */
	char sender[320];           /* the checked identity as an address (postmaster@helo ...) */
	char explanation[512];      /* fail: the domain's explanation (exp=, RFC 7208 6.2) or the
				     * configured default, macros expanded; else "" */
	char problem[200];          /* temperror, permerror, none: what went wrong, for the logs */
	unsigned terms;             /* DNS-querying mechanisms and modifiers (limit 10) */
	unsigned voids;             /* void lookups (limit max_void_lookups) */
	unsigned queries;           /* DNS queries made */
	long long ms;               /* time taken, queueing included */
};

struct spf_check;               /* what check_spf.init returns */
extern const struct check_def check_spf;

typedef void (*spf_done_fn)(void *arg, const struct spf_outcome *o);
/* Evaluate rq on the check's worker threads; done runs later from the
 * event loop (never inside spf_evaluate), exactly once, unless the check
 * is freed first (then it never runs).  The request's strings are copied. */
void spf_evaluate(struct spf_check *c, const struct spf_request *rq, spf_done_fn done, void *arg);

/* "pass", "fail", ... ("none" for AUTH_SPF_UNCHECKED too). */
const char *spf_result_name(enum auth_spf r);

/* The value of a Received-SPF header (RFC 7208 9.1) for an outcome:
 * result, comment, and the key-value pairs client-ip, envelope-from,
 * helo, receiver, identity (and problem for the error results). */
void spf_received_spf(const struct spf_outcome *o, const struct spf_request *rq, const char *receiver,
		      char *out, size_t outlen);

#endif
