/*
 * tls_policy.h — outbound TLS policy of the outgoing stage: which TLS a
 * connection towards a destination needs, and how its certificate is
 * checked.  A pure lookup module: no I/O, no TLS contexts, no global
 * state; the caller turns the answer into smtp_client options.
 *
 * Levels (RFC 3207 STARTTLS; TLS 1.2 is the floor whatever the level):
 *   none     never STARTTLS
 *   may      opportunistic: STARTTLS when offered, certificate not checked
 *   encrypt  TLS required, certificate not checked
 *   verify   TLS required, the chain must verify against a CA file (or the
 *            system store) and the certificate must match a name: by
 *            default the MX host name connected to (the smarthost's name
 *            for smarthosts), or the entry's match names
 * A required TLS that fails is a 4xx for the delivery (deferred, retried).
 *
 * Configuration (the outgoing stage's parameters):
 *   tls_policy          level towards MX hosts when no entry matches
 *   tls_policy_domains  per-destination entries (comma- or space-separated)
 *   tls_ca_file         CA file of every verify policy without ca=
 *                       (empty: the system store)
 *   smarthost_tls       level towards the smarthosts (next_hops)
 *
 * An entry of tls_policy_domains:
 *
 *   DESTINATION:LEVEL[:match=NAME]...[:ca=/ABSOLUTE/PATH.pem]
 *
 *   DESTINATION  "example.com" matches that domain only; ".example.com"
 *                matches every domain below it (not example.com itself),
 *                like Postfix's tls_policy_maps.  ASCII (IDNs as xn--
 *                A-labels), case-insensitive, a final dot ignored.
 *   LEVEL        none | may | encrypt | verify
 *   match=NAME   verify only, repeatable (at most TLS_POLICY_MAX_MATCH):
 *                the certificate must match one of these DNS names
 *                instead of the MX host name; a leading dot
 *                (".example.com") accepts any name below it.  Wildcards
 *                in the certificate are honoured (whole left label only).
 *   ca=PATH      verify only: this CA file instead of tls_ca_file (an
 *                absolute path without ':' ',' or spaces)
 *
 *   e.g.  example.com:verify  .example.com:encrypt  legacy.example:none
 *         example.net:verify:match=mx1.example.net:match=mx2.example.net
 *         partner.example:verify:ca=/etc/rampart/partner-ca.pem
 *
 * Lookup precedence: the exact domain, then the closest ".parent" entry,
 * then tls_policy.  Smarthost deliveries use smarthost_tls only.
 *
 * Sources: the lookup asks an ordered chain of sources (today: smarthost,
 * configured entries, default) and the first that answers fills the
 * struct tls_policy; callers never learn which source answered except
 * through tls_policy.source, for logs.  A later source (MTA-STS, DANE
 * answers cached by the resolver side) is another link of that chain and
 * does not change callers.
 */
#ifndef RAMPART_TLS_POLICY_H
#define RAMPART_TLS_POLICY_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/config.h"

enum tls_level {
	TLS_LEVEL_NONE = 0,
	TLS_LEVEL_MAY,
	TLS_LEVEL_ENCRYPT,
	TLS_LEVEL_VERIFY,
};

#define TLS_POLICY_MAX_MATCH    8       /* match= names per entry */
#define TLS_POLICY_MAX_ENTRIES  10000   /* entries of tls_policy_domains */
#define TLS_POLICY_MAX_ENTRY    1024    /* bytes of one entry */

struct tls_policy_config {
	enum tls_level mx_default;      /* tls_policy */
	enum tls_level smarthost;       /* smarthost_tls */
	const char *ca_file;            /* tls_ca_file; NULL or "": the system store */
	const struct strlist *entries;  /* tls_policy_domains; NULL: none */
};

struct tls_policy_query {
	const char *domain;             /* recipient domain (MX delivery) */
	bool smarthost;                 /* delivery to the configured smarthosts */
};

/* The answer.  Pointers stay valid as long as the table. */
struct tls_policy {
	enum tls_level level;
	const struct strlist *match;    /* verify: names the certificate must match
					 * (any one); NULL: the host connected to */
	const char *ca_file;            /* verify: CA file; "" the system store */
	const char *source;             /* "default", "domain" or "smarthost" */
	const char *entry;              /* "domain": the entry's DESTINATION as
					 * configured (lower case); else "" */
};

struct tls_policy_table;

/* Build the table; NULL with why ("tls_policy_domains: 'ENTRY': what is
 * wrong; expected ...") on a bad or duplicate entry. */
struct tls_policy_table *tls_policy_new(const struct tls_policy_config *cfg, char *why, size_t whylen);
void tls_policy_free(struct tls_policy_table *t);         /* NULL is fine */

/* Always answers (the default at worst).  q->domain NULL or "" is looked
 * up as no domain (the default). */
void tls_policy_lookup(const struct tls_policy_table *t, const struct tls_policy_query *q,
		       struct tls_policy *out);

/* The distinct CA files a verify answer of this table can name ("" for
 * the system store), so the caller can load each once at start-up:
 * index 0 .. tls_policy_ca_count() - 1. */
size_t tls_policy_ca_count(const struct tls_policy_table *t);
const char *tls_policy_ca_file(const struct tls_policy_table *t, size_t i);

/* Does any answer of the table require TLS (encrypt or verify)? */
bool tls_policy_any_required(const struct tls_policy_table *t);

const char *tls_level_name(enum tls_level l);              /* "none", "may", ... */
bool tls_level_parse(const char *word, enum tls_level *out); /* case-insensitive */

#endif
