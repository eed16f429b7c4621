/*
 * dkim_sign.h — DKIM signing of outgoing mail (RFC 6376, ed25519 RFC 8463)
 * on OpenDKIM's libopendkim, driven by a key table.
 *
 * Key table: one key per line, '#' starts a comment, blank lines ignored:
 *
 *     # DOMAIN       SELECTOR  ALGORITHM       KEYFILE
 *     example.org    rsa2024   rsa-sha256      /etc/rampart/dkim/rsa2024.key
 *     example.org    ed2024    ed25519-sha256  ed2024.key
 *
 * ALGORITHM is rsa-sha256 (RSA key of at least 1024 bits) or
 * ed25519-sha256.  Several lines for one domain mean one signature each
 * (dual signing, e.g. RSA and ed25519).  A relative KEYFILE is taken
 * relative to the key table's directory.  Key files are PEM (PKCS#8 or
 * PKCS#1) or DER, unencrypted; `rampartctl dkim keygen` writes them.
 *
 * Every key is read, parsed and checked once, when the signer is made,
 * and the parsed key is used for every signature.  A signer owns one
 * DKIM_LIB; it may be used by one thread at a time (several signers, one
 * per thread, may sign at once).
 */
#ifndef RAMPART_DKIM_SIGN_H
#define RAMPART_DKIM_SIGN_H

#include <stdbool.h>
#include <stddef.h>

struct buf;
struct dkim_signer;

/* Load a key table.  NULL and why (file:line and what was expected, or
 * the key file and what is wrong with it) on error. */
struct dkim_signer *dkim_signer_new(const char *keytable_path, char *why, size_t whylen);
void dkim_signer_free(struct dkim_signer *s);     /* NULL is fine */

/* Number of keys in the table. */
size_t dkim_signer_key_count(const struct dkim_signer *s);

/* Signatures made so far with a key parsed at start-up rather than
 * parsed again by libopendkim (see dkim_sign.c); equal to the number of
 * signatures when the reuse works. */
unsigned long dkim_signer_key_reuses(const struct dkim_signer *s);

/* True when the key table has a key for domain (case-insensitive, exact:
 * a subdomain needs its own lines). */
bool dkim_signer_has_domain(const struct dkim_signer *s, const char *domain);

/*
 * Sign msg, a complete message (header, empty line, body; CRLF line ends,
 * as the queue holds it).  The domain of the first address of the first
 * From header field decides: when the key table has it, one
 * "DKIM-Signature: ...\r\n" field (folded, CRLF) per key of that domain is
 * appended to headers_out, for the caller to put in front of the message,
 * and the number of signatures is returned.  When the From domain is not
 * ours, or there is no usable From, 0 is returned, nothing is added and why
 * says which.  -1 on error (why set, headers_out unchanged): the caller
 * should defer the message rather than send it unsigned.  s is not NULL.
 *
 * Signatures are relaxed/relaxed over From, To, Cc, Subject, Date,
 * Message-ID, Reply-To, MIME-Version, Content-Type,
 * Content-Transfer-Encoding, In-Reply-To and References (those present),
 * with From oversigned so that no From can be added later.
 */
int dkim_sign_message(struct dkim_signer *s, const char *msg, size_t len,
		      struct buf *headers_out, char *why, size_t whylen);

/*
 * The From domain of msg as dkim_sign_message() finds it: the domain of
 * the first address of the first From field, lower-cased, without a
 * trailing dot, into out (bounded).  False with why when there is no From
 * field or no address with a domain in it.
 */
bool dkim_from_domain(const char *msg, size_t len, char *out, size_t outlen,
		      char *why, size_t whylen);

/* DNS name syntax used for domains and selectors: dot-separated labels of
 * letters, digits and inner hyphens, each 1..63 octets, at most 253. */
bool dkim_dns_name_valid(const char *name);

#endif
