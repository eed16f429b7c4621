/*
 * sasl.c — PLAIN and LOGIN responses, decoded with bounds (sasl.h).
 * Base64 is OpenSSL's.
 */
#include "sasl.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

bool sasl_decode(const char *b64, unsigned char *out, size_t cap, size_t *len)
{
	size_t n = strlen(b64);
	*len = 0;
	if (cap == 0)
		return false;
	out[0] = '\0';
	if (n == 0)
		return true;
	if (n % 4 != 0 || n / 4 * 3 >= cap)
		return false;
	/* EVP_DecodeBlock accepts blanks and counts padding as data: only
	 * the base64 alphabet, with '=' at the end alone, is let through. */
	size_t pad = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)b64[i];
		if (c == '=') {
			if (i < n - 2)
				return false;
			pad++;
		} else if (pad || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
				   c == '+' || c == '/')) {
			return false;
		}
	}
	int r = EVP_DecodeBlock(out, (const unsigned char *)b64, (int)n);
	if (r < 0 || (size_t)r < pad)
		return false;
	*len = (size_t)r - pad;
	out[*len] = '\0';
	return true;
}

/* One field under the bound: no NUL, CR or LF; an identity (user,
 * authzid) no control character at all (it names things in logs and in
 * the state store). */
static bool field(const unsigned char *p, size_t n, char *out, bool identity, const char *what, const char **why)
{
	if (n >= SASL_FIELD_MAX) {
		*why = what;
		return false;
	}
	for (size_t i = 0; i < n; i++)
		if (p[i] == '\0' || p[i] == '\r' || p[i] == '\n' || (identity && (p[i] < 0x20 || p[i] == 0x7f))) {
			*why = what;
			return false;
		}
	memcpy(out, p, n);
	out[n] = '\0';
	return true;
}

bool sasl_plain(const unsigned char *msg, size_t len, struct sasl_creds *c, const char **why)
{
	memset(c, 0, sizeof(*c));
	const unsigned char *n1 = memchr(msg, '\0', len);
	const unsigned char *n2 = n1 ? memchr(n1 + 1, '\0', len - (size_t)(n1 + 1 - msg)) : NULL;
	if (!n1 || !n2) {
		*why = "PLAIN needs authzid, user and password separated by NUL";
		return false;
	}
	size_t ulen = (size_t)(n2 - n1 - 1), plen = len - (size_t)(n2 + 1 - msg);
	if (!field(msg, (size_t)(n1 - msg), c->authzid, true, "bad authorization identity", why) ||
	    !field(n1 + 1, ulen, c->user, true, "bad user name", why) ||
	    !field(n2 + 1, plen, c->pass, false, "bad password", why)) {
		sasl_creds_wipe(c);
		return false;
	}
	if (!*c->user || !*c->pass) {
		*why = !*c->user ? "empty user name" : "empty password";
		sasl_creds_wipe(c);
		return false;
	}
	return true;
}

bool sasl_login_field(const unsigned char *msg, size_t len, char *out, bool identity, const char **why)
{
	if (!field(msg, len, out, identity, identity ? "bad user name" : "bad password", why))
		return false;
	if (!*out) {
		*why = "empty user name or password";
		return false;
	}
	return true;
}

void sasl_creds_wipe(struct sasl_creds *c)
{
	OPENSSL_cleanse(c, sizeof(*c));
}
