/*
 * address.h — bounded parsing of SMTP paths and parameters (RFC 5321
 * 4.1.2, RFC 6531 for UTF-8 local parts and domains).
 *
 * Parsers never write past their output bounds and reject rather than
 * guess: source routes are accepted and stripped (RFC 5321 C), quoted
 * local parts are kept quoted, a local part is at most 64 octets, a domain
 * at most 255, a path at most 256.  Address literals [1.2.3.4] and
 * [IPv6:...] are accepted as domains.
 */
#ifndef RAMPART_ADDRESS_H
#define RAMPART_ADDRESS_H

#include <stdbool.h>
#include <stddef.h>

#define ADDR_MAX 256        /* RFC 5321 4.5.3.1.3 path, without brackets */

#define SMTP_PARAM_VALUE_MAX 512

struct smtp_param {
	char key[32];           /* upper-cased: "SIZE", "BODY", ... */
	char value[SMTP_PARAM_VALUE_MAX];      /* "" when the parameter has no value */
};

#define SMTP_PARAMS_MAX 16

struct smtp_path {
	char addr[ADDR_MAX + 1];    /* "local@domain", or "" for the null path <> */
	char *domain;               /* points into addr after '@', NULL for <> or "postmaster" */
	bool utf8;                  /* contains non-ASCII (needs SMTPUTF8) */
	size_t nparams;
	struct smtp_param params[SMTP_PARAMS_MAX];
};

enum addr_error {
	ADDR_OK = 0,
	ADDR_SYNTAX,            /* 501 5.1.7 / 5.1.3: malformed path */
	ADDR_TOO_LONG,          /* 501 5.1.7 or 5.1.3: exceeds a length bound */
	ADDR_NULL_NOT_ALLOWED,  /* <> where it is not allowed */
	ADDR_PARAM_SYNTAX,      /* 501 5.5.4: malformed parameter */
	ADDR_TOO_MANY_PARAMS,
};

/*
 * Parse the argument of MAIL FROM: / RCPT TO: — the text after the colon,
 * e.g. "<a@b.example> SIZE=100 BODY=8BITMIME".  Leading spaces are allowed
 * (many clients send "MAIL FROM: <a@b>").  allow_null permits "<>".
 * RCPT TO:<postmaster> (no domain) is accepted with domain NULL.
 * A message for the error reply is put in why (bounded).
 */
enum addr_error smtp_parse_path(const char *arg, bool allow_null, struct smtp_path *out,
				char *why, size_t whylen);
const char *smtp_path_param(const struct smtp_path *p, const char *key);   /* NULL if absent */

/* Domain syntax check (LDH labels or a UTF-8 label, or an address literal). */
bool smtp_domain_valid(const char *domain);

/* Lower-case the domain part in place (the local part is case-sensitive). */
void smtp_addr_normalize(char *addr);

/* xtext decoding (RFC 3461 4): false if malformed or if it decodes to a
 * control character.  out bounded by outlen. */
bool xtext_decode(const char *in, char *out, size_t outlen);

#endif
