/*
 * address.c — bounded parser for SMTP paths and ESMTP parameters
 * (RFC 5321 4.1.2, RFC 6531 UTF-8, RFC 3461 xtext).
 *
 * The input is walked once with a cursor; every copy is into a fixed
 * buffer whose length is checked first, and anything not in the grammar
 * is rejected with a short reason for the reply.
 */
#include "address.h"
#include "../util/log.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define LOCAL_MAX  64           /* RFC 5321 4.5.3.1.1 */
#define DOMAIN_MAX 255          /* RFC 5321 4.5.3.1.2 */
#define LABEL_MAX  63

/* ---- character classes -------------------------------------------------- */

static bool is_alpha(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
	return is_alpha(c) || is_digit(c);
}

static bool is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/* RFC 5322 atext (ASCII part). */
static bool is_atext(unsigned char c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* RFC 5321 qtextSMTP: %d32-33 / %d35-91 / %d93-126. */
static bool is_qtext(unsigned char c)
{
	return c == 32 || c == 33 || (c >= 35 && c <= 91) || (c >= 93 && c <= 126);
}

/*
 * Length (2..4) of a well-formed UTF-8 sequence for a non-ASCII code point
 * at p, or 0: rejects stray continuation bytes, overlong forms, surrogates
 * and code points above U+10FFFF.  p is NUL-terminated, and NUL is never a
 * continuation byte, so this never reads past the terminator.
 */
static size_t utf8_len(const unsigned char *p)
{
	unsigned char c = p[0];
	size_t n;
	unsigned char lo = 0x80, hi = 0xbf;   /* allowed range of the second byte */

	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;              /* overlong */
		else if (c == 0xed)
			hi = 0x9f;              /* surrogates */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;              /* overlong */
		else if (c == 0xf4)
			hi = 0x8f;              /* above U+10FFFF */
	} else {
		return 0;
	}
	if (p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	}
	return n;
}

/* ---- domains ------------------------------------------------------------ */

static bool address_literal_valid(const char *s, size_t len)
{
	char tmp[INET6_ADDRSTRLEN + 8];
	unsigned char bin[sizeof(struct in6_addr)];
	const char *inner;
	size_t ilen;

	if (len < 3 || s[0] != '[' || s[len - 1] != ']')
		return false;
	inner = s + 1;
	ilen = len - 2;
	if (ilen > 5 && strncasecmp(inner, "IPv6:", 5) == 0) {
		inner += 5;
		ilen -= 5;
		if (ilen == 0 || ilen >= INET6_ADDRSTRLEN)
			return false;
		memcpy(tmp, inner, ilen);
		tmp[ilen] = '\0';
		return inet_pton(AF_INET6, tmp, bin) == 1;
	}
	/* General-address-literal tags other than IPv6 are not standardized. */
	if (ilen >= INET_ADDRSTRLEN)
		return false;
	memcpy(tmp, inner, ilen);
	tmp[ilen] = '\0';
	return inet_pton(AF_INET, tmp, bin) == 1;
}

/* One label of len bytes: LDH with no hyphen at either end, or UTF-8. */
static bool label_valid(const unsigned char *s, size_t len)
{
	if (len == 0 || len > LABEL_MAX)
		return false;
	if (s[0] == '-' || s[len - 1] == '-')
		return false;
	for (size_t i = 0; i < len;) {
		if (s[i] < 0x80) {
			if (!is_alnum(s[i]) && s[i] != '-')
				return false;
			i++;
		} else {
			size_t n = utf8_len(s + i);
			if (n == 0 || i + n > len)
				return false;
			i += n;
		}
	}
	return true;
}

static bool domain_valid_len(const char *domain, size_t len)
{
	const unsigned char *s = (const unsigned char *)domain;
	size_t start = 0;

	if (len == 0 || len > DOMAIN_MAX)
		return false;
	if (s[0] == '[')
		return address_literal_valid(domain, len);
	for (size_t i = 0; i <= len; i++) {
		if (i == len || s[i] == '.') {
			if (!label_valid(s + start, i - start))
				return false;
			start = i + 1;
		}
	}
	return true;
}

bool smtp_domain_valid(const char *domain)
{
	size_t len;

	if (!domain)
		return false;
	len = strnlen(domain, DOMAIN_MAX + 1);
	return domain_valid_len(domain, len);
}

/* ---- paths -------------------------------------------------------------- */

#define BAD(err, ...) do { set_why(why, whylen, __VA_ARGS__); return (err); } while (0)

/* Source route "@a,@b:" (RFC 5321 A-d-l), skipped.  p is at the first '@'. */
static enum addr_error skip_source_route(const unsigned char **pp, char *why, size_t whylen)
{
	const unsigned char *p = *pp;

	for (;;) {
		const unsigned char *d;
		if (*p != '@')
			BAD(ADDR_SYNTAX, "malformed address: bad source route");
		d = ++p;
		while (*p && *p != ',' && *p != ':' && *p != '>' && *p != ' ')
			p++;
		if ((size_t)(p - d) > DOMAIN_MAX)
			BAD(ADDR_TOO_LONG, "address too long: source route domain exceeds %d octets",
			    DOMAIN_MAX);
		if (!domain_valid_len((const char *)d, (size_t)(p - d)))
			BAD(ADDR_SYNTAX, "malformed address: bad domain in source route");
		if (*p == ':') {
			*pp = p + 1;
			return ADDR_OK;
		}
		if (*p != ',')
			BAD(ADDR_SYNTAX, "malformed address: bad source route");
		p++;
	}
}

/* Local part at *pp (Dot-string or Quoted-string); *pp left after it. */
static enum addr_error scan_local(const unsigned char **pp, bool *quoted, char *why, size_t whylen)
{
	const unsigned char *start = *pp, *p = *pp;

	*quoted = false;
	if (*p == '"') {
		*quoted = true;
		p++;
		for (;;) {
			if ((size_t)(p - start) > LOCAL_MAX)
				BAD(ADDR_TOO_LONG, "address too long: local part exceeds %d octets",
				    LOCAL_MAX);
			if (*p == '\0')
				BAD(ADDR_SYNTAX, "malformed address: unbalanced quotes");
			if (*p == '"') {
				p++;
				break;
			}
			if (*p == '\\') {
				if (p[1] < 32 || p[1] > 126)
					BAD(ADDR_SYNTAX, "malformed address: bad escape in quoted local part");
				p += 2;
			} else if (*p >= 0x80) {
				size_t n = utf8_len(p);
				if (n == 0)
					BAD(ADDR_SYNTAX, "malformed address: invalid UTF-8");
				p += n;
			} else if (is_qtext(*p)) {
				p++;
			} else {
				BAD(ADDR_SYNTAX, "malformed address: bad character in quoted local part");
			}
		}
	} else {
		for (;;) {
			const unsigned char *atom = p;
			for (;;) {
				if (*p >= 0x80) {
					size_t n = utf8_len(p);
					if (n == 0)
						BAD(ADDR_SYNTAX, "malformed address: invalid UTF-8");
					p += n;
				} else if (is_atext(*p)) {
					p++;
				} else {
					break;
				}
				if ((size_t)(p - start) > LOCAL_MAX)
					BAD(ADDR_TOO_LONG, "address too long: local part exceeds %d octets",
					    LOCAL_MAX);
			}
			if (p == atom) {
				if (*p == '.' || (atom > start && atom[-1] == '.'))
					BAD(ADDR_SYNTAX, "malformed address: misplaced dot in local part");
				if (*p == '@' || *p == '>')
					BAD(ADDR_SYNTAX, "malformed address: empty local part");
				BAD(ADDR_SYNTAX, "malformed address: bad character in local part");
			}
			if (*p != '.')
				break;
			p++;
		}
	}
	if ((size_t)(p - start) > LOCAL_MAX)
		BAD(ADDR_TOO_LONG, "address too long: local part exceeds %d octets", LOCAL_MAX);
	*pp = p;
	return ADDR_OK;
}

/* ESMTP parameters after the closing '>'. */
static enum addr_error parse_params(const unsigned char *p, struct smtp_path *out, char *why,
				    size_t whylen)
{
	if (*p != '\0' && *p != ' ')
		BAD(ADDR_SYNTAX, "malformed address: unexpected text after '>'");
	for (;;) {
		struct smtp_param *prm;
		const unsigned char *k, *v;
		size_t klen, vlen = 0;

		while (*p == ' ')
			p++;
		if (*p == '\0')
			return ADDR_OK;

		k = p;
		if (!is_alnum(*p))
			BAD(ADDR_PARAM_SYNTAX, "malformed parameter: bad keyword");
		while (is_alnum(*p) || *p == '-')
			p++;
		klen = (size_t)(p - k);
		if (klen >= sizeof prm->key)
			BAD(ADDR_PARAM_SYNTAX, "malformed parameter: keyword longer than %zu",
			    sizeof prm->key - 1);
		v = NULL;
		if (*p == '=') {
			v = ++p;
			while ((*p >= 33 && *p <= 126 && *p != '=') || *p >= 0x80)
				p++;
			vlen = (size_t)(p - v);
			if (vlen == 0)
				BAD(ADDR_PARAM_SYNTAX, "malformed parameter: %.*s= without a value",
				    (int)klen, (const char *)k);
			if (vlen >= sizeof prm->value)
				BAD(ADDR_PARAM_SYNTAX, "malformed parameter: %.*s value longer than %zu",
				    (int)klen, (const char *)k, sizeof prm->value - 1);
		}
		if (*p != ' ' && *p != '\0')
			BAD(ADDR_PARAM_SYNTAX, "malformed parameter: bad character in %.*s",
			    (int)klen, (const char *)k);

		for (size_t i = 0; i < out->nparams; i++) {
			if (strlen(out->params[i].key) == klen &&
			    strncasecmp(out->params[i].key, (const char *)k, klen) == 0)
				BAD(ADDR_PARAM_SYNTAX, "malformed parameter: %.*s given twice",
				    (int)klen, (const char *)k);
		}
		if (out->nparams >= SMTP_PARAMS_MAX)
			BAD(ADDR_TOO_MANY_PARAMS, "too many parameters (at most %d)", SMTP_PARAMS_MAX);

		prm = &out->params[out->nparams++];
		for (size_t i = 0; i < klen; i++)
			prm->key[i] = (char)((k[i] >= 'a' && k[i] <= 'z') ? k[i] - 'a' + 'A' : k[i]);
		prm->key[klen] = '\0';
		if (v)
			memcpy(prm->value, v, vlen);
		prm->value[vlen] = '\0';
	}
}

static enum addr_error parse_path(const unsigned char *p, bool allow_null, struct smtp_path *out,
				  char *why, size_t whylen)
{
	const unsigned char *open, *mbox, *local_end, *dom = NULL, *close;
	bool quoted;
	enum addr_error err;
	size_t mlen;

	for (const unsigned char *q = p; *q; q++) {
		if (is_ctl(*q))
			BAD(ADDR_SYNTAX, "malformed address: control character");
	}
	while (*p == ' ')
		p++;
	if (*p != '<')
		BAD(ADDR_SYNTAX, "malformed address: expected <address>");
	open = ++p;

	if (*p == '>') {
		if (!allow_null)
			BAD(ADDR_NULL_NOT_ALLOWED, "null address <> not allowed here");
		return parse_params(p + 1, out, why, whylen);
	}
	if (*p == ' ')
		BAD(ADDR_SYNTAX, "malformed address: space inside <>");
	if (*p == '@') {
		if ((err = skip_source_route(&p, why, whylen)) != ADDR_OK)
			return err;
	}

	mbox = p;
	if ((err = scan_local(&p, &quoted, why, whylen)) != ADDR_OK)
		return err;
	local_end = p;

	if (*p == '@') {
		dom = ++p;
		if (*p == '[') {
			while (*p && *p != ']' && *p != '>' && *p != ' ')
				p++;
			if (*p == ']')
				p++;
		} else {
			while (*p && *p != '>' && *p != ' ')
				p++;
		}
		if ((size_t)(p - dom) > DOMAIN_MAX)
			BAD(ADDR_TOO_LONG, "address too long: domain exceeds %d octets", DOMAIN_MAX);
		if (p == dom)
			BAD(ADDR_SYNTAX, "malformed address: empty domain");
		if (!domain_valid_len((const char *)dom, (size_t)(p - dom)))
			BAD(ADDR_SYNTAX, "malformed address: invalid domain");
	} else if (*p == '>') {
		if (quoted || (size_t)(local_end - mbox) != 10 ||
		    strncasecmp((const char *)mbox, "postmaster", 10) != 0)
			BAD(ADDR_SYNTAX, "malformed address: missing @domain");
	} else if (*p == '\0') {
		BAD(ADDR_SYNTAX, "malformed address: missing '>'");
	} else {
		BAD(ADDR_SYNTAX, "malformed address: bad character in local part");
	}

	if (*p == '\0')
		BAD(ADDR_SYNTAX, "malformed address: missing '>'");
	if (*p != '>')
		BAD(ADDR_SYNTAX, "malformed address: unexpected character in address");
	close = p;
	if ((size_t)(close - open) > ADDR_MAX)
		BAD(ADDR_TOO_LONG, "address too long: path exceeds %d octets", ADDR_MAX);

	mlen = (size_t)(close - mbox);
	if (mlen >= sizeof out->addr)   /* implied by the path bound; kept as a guard */
		BAD(ADDR_TOO_LONG, "address too long: path exceeds %d octets", ADDR_MAX);
	memcpy(out->addr, mbox, mlen);
	out->addr[mlen] = '\0';
	out->domain = dom ? out->addr + (dom - mbox) : NULL;
	for (size_t i = 0; i < mlen; i++) {
		if ((unsigned char)out->addr[i] >= 0x80) {
			out->utf8 = true;
			break;
		}
	}
	return parse_params(close + 1, out, why, whylen);
}

#undef BAD

enum addr_error smtp_parse_path(const char *arg, bool allow_null, struct smtp_path *out,
				char *why, size_t whylen)
{
	enum addr_error err;

	memset(out, 0, sizeof *out);
	if (why && whylen > 0)
		why[0] = '\0';
	if (!arg) {
		set_why(why, whylen, "malformed address: expected <address>");
		return ADDR_SYNTAX;
	}
	err = parse_path((const unsigned char *)arg, allow_null, out, why, whylen);
	if (err != ADDR_OK)
		memset(out, 0, sizeof *out);
	return err;
}

const char *smtp_path_param(const struct smtp_path *p, const char *key)
{
	if (!p || !key)
		return NULL;
	for (size_t i = 0; i < p->nparams && i < SMTP_PARAMS_MAX; i++) {
		if (strcasecmp(p->params[i].key, key) == 0)
			return p->params[i].value;
	}
	return NULL;
}

void smtp_addr_normalize(char *addr)
{
	char *at;

	if (!addr)
		return;
	/* A quoted local part may contain '@'; a domain never does. */
	at = strrchr(addr, '@');
	if (!at)
		return;
	for (char *p = at + 1; *p; p++) {
		if (*p >= 'A' && *p <= 'Z')
			*p = (char)(*p - 'A' + 'a');
	}
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

bool xtext_decode(const char *in, char *out, size_t outlen)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t n = 0;

	if (!in || !out || outlen == 0)
		return false;
	out[0] = '\0';
	while (*p) {
		unsigned char c;
		if (*p == '+') {
			int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
			if (hi < 0 || lo < 0)
				return false;
			c = (unsigned char)(hi * 16 + lo);
			/* a NUL would truncate the C string; other control
			 * characters (CR, LF) have no place in any value
			 * carried this way (XFORWARD, XCLIENT, ENVID, ORCPT) */
			if (c < 0x20 || c == 0x7f)
				return false;
			p += 3;
		} else if (*p >= 33 && *p <= 126 && *p != '=') {
			c = *p++;
		} else {
			return false;
		}
		if (n + 1 >= outlen) {
			out[0] = '\0';
			return false;
		}
		out[n++] = (char)c;
	}
	out[n] = '\0';
	return true;
}
