/*
 * dkim_verify.h — DKIM verification (RFC 6376, ed25519 RFC 8463) of
 * incoming mail, for callers other than the chain: tests, front-ends
 * that need the Authentication-Results value.  The check itself is
 * check_dkim (registry name "dkim"); see dkim_verify.c for what it does
 * and its parameters.
 */
#ifndef RAMPART_DKIM_VERIFY_H
#define RAMPART_DKIM_VERIFY_H

#include "check.h"

/* What one verification found. */
struct dkim_outcome {
	enum auth_dkim summary;         /* as check_auth.dkim: NONE when unsigned */
	unsigned nsigs;                 /* results in sigs */
	struct auth_dkim_sig sigs[AUTH_DKIM_MAX];
	unsigned bits[AUTH_DKIM_MAX];   /* key size of each passed signature (0: unknown) */
	unsigned skipped;               /* signatures past max_signatures, not verified */
	bool truncated;                 /* the body was hashed only up to max_body */
	char problem[200];              /* a message-wide failure, for the logs ("" if none) */
	unsigned queries;               /* key lookups made */
	long long ms;                   /* time taken, queueing included */
};

struct dkim_check;                      /* what check_dkim.init returns */
extern const struct check_def check_dkim;

typedef void (*dkim_done_fn)(void *arg, const struct dkim_outcome *o);
/* Verify msg (a whole message: header, empty line, body; CRLF line ends)
 * on the check's worker threads; done runs later from the event loop
 * (never inside dkim_verify_message), exactly once, unless the check is
 * freed first (then it never runs).  msg is not copied: it must stay
 * unchanged until done runs. */
void dkim_verify_message(struct dkim_check *c, const char *msg, size_t len, dkim_done_fn done, void *arg);

/* "none", "pass", "fail", "neutral", "temperror", "permerror" (UNCHECKED: "none"). */
const char *dkim_result_name(enum auth_dkim r);

/* The value of an Authentication-Results header (RFC 8601) for auth:
 * authserv-id, then "spf=RESULT smtp.mailfrom=DOMAIN" (or smtp.helo)
 * when SPF was evaluated, then one "dkim=RESULT [reason=...] header.d=
 * header.s= header.a= header.b=" per signature (pass with a comment
 * giving the key size from bits, which may be NULL), or "dkim=none"
 * when unsigned, nothing for DKIM when auth->dkim is UNCHECKED; "none"
 * alone when there is nothing to report.  Results are folded one a line
 * (CRLF TAB); values are quoted as RFC 8601 needs; out is bounded (whole
 * results that do not fit are left out). */
void dkim_auth_results(const struct check_auth *auth, const unsigned *bits, const char *authserv_id,
		       char *out, size_t outlen);

#endif
