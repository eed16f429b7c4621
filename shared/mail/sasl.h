/*
 * sasl.h — the server side of the SASL mechanisms SMTP AUTH offers
 * (RFC 4954): PLAIN (RFC 4616) and LOGIN, decoded with bounds.  Pure
 * functions: the engine keeps the exchange's state, the stage checks the
 * credentials.
 */
#ifndef RAMPART_SASL_H
#define RAMPART_SASL_H

#include <stdbool.h>
#include <stddef.h>

#define SASL_FIELD_MAX 256      /* an identity or a password, bytes */

/* Decode one base64 response (no line end) into out[0..cap): false when
 * it is not base64, or decodes to cap bytes or more.  out is
 * NUL-terminated; *len is the decoded length (which may contain NULs). */
bool sasl_decode(const char *b64, unsigned char *out, size_t cap, size_t *len);

struct sasl_creds {
	char authzid[SASL_FIELD_MAX];   /* "" when not given */
	char user[SASL_FIELD_MAX];
	char pass[SASL_FIELD_MAX];
};

/* PLAIN's message "authzid NUL authcid NUL passwd": false with a reason
 * when malformed (fields missing, empty user or password, a field too
 * long, a NUL or line break where none may be). */
bool sasl_plain(const unsigned char *msg, size_t len, struct sasl_creds *c, const char **why);

/* One field of LOGIN (the user name: identity, then the password): the
 * same rules. */
bool sasl_login_field(const unsigned char *msg, size_t len, char *out, bool identity, const char **why);

/* Wipe credentials (the password must not outlive its check). */
void sasl_creds_wipe(struct sasl_creds *c);

#endif
