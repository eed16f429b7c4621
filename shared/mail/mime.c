/*
 * mime.c — MIME structure and text of a message (mime.h).
 */
#include "mime.h"
#include "header.h"
#include "../util/alloc.h"
#include "../util/buf.h"

#include <ctype.h>
#include <errno.h>
#include <iconv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>

#define DEF_DEPTH 20
#define DEF_PARTS 500
#define DEF_HEADER (64 * 1024)
#define FIELD_MAX 2048          /* a Content-* value is looked at up to this much */

/* ---- small text helpers -------------------------------------------------- */

/* As much of p[0..n) as out's limit lets in (buf_append takes all or
 * nothing); false, and out's overflow set, when it was cut. */
static bool put(struct buf *out, const void *p, size_t n)
{
	if (out->limit && out->len + n > out->limit) {
		size_t room = out->limit > out->len ? out->limit - out->len : 0;
		if (room)
			buf_append(out, p, room);
		out->overflow = true;
		return false;
	}
	return buf_append(out, p, n);
}

static void lower_copy(char *dst, size_t dstlen, const char *src, size_t n)
{
	if (dstlen == 0)
		return;
	if (n >= dstlen)
		n = dstlen - 1;
	for (size_t i = 0; i < n; i++)
		dst[i] = (char)tolower((unsigned char)src[i]);
	dst[n] = '\0';
}

/* A folded field value as one line (line ends dropped, the blank that
 * folds kept), cut at outlen - 1. */
static void unfold(const char *v, size_t n, char *out, size_t outlen)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 1 < outlen; i++) {
		if (v[i] == '\r' || v[i] == '\n')
			continue;
		out[o++] = v[i];
	}
	out[o] = '\0';
}

static bool is_tspecial(char c)
{
	return strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

/* Past blanks and (nested) comments. */
static const char *skip_cfws(const char *p)
{
	for (;;) {
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p != '(')
			return p;
		int depth = 0;
		for (; *p; p++) {
			if (*p == '\\' && p[1]) {
				p++;
				continue;
			}
			if (*p == '(')
				depth++;
			else if (*p == ')' && --depth == 0) {
				p++;
				break;
			}
		}
	}
}

/* A token (RFC 2045 5.1) at p: its length (0: none). */
static size_t token_len(const char *p)
{
	size_t n = 0;
	while (p[n] && (unsigned char)p[n] > ' ' && (unsigned char)p[n] < 127 && !is_tspecial(p[n]))
		n++;
	return n;
}

/* The parameter name of a Content-Type or Content-Disposition value
 * (after its first ';'), unquoted, into out.  RFC 2231 forms are taken as
 * well, and win: "name*=charset'lang'%XX..." and the pieces "name*0=",
 * "name*0*=", "name*1=" ... joined in the order they come. */
static bool param(const char *v, const char *name, char *out, size_t outlen)
{
	size_t nlen = strlen(name);
	bool plain = false, ext = false;
	char joined[FIELD_MAX];
	size_t jl = 0;
	out[0] = '\0';
	const char *p = strchr(v, ';');
	while (p && *p == ';') {
		p = skip_cfws(p + 1);
		size_t kl = token_len(p);      /* '*' and digits are token characters */
		const char *key = p;
		p = skip_cfws(p + kl);
		if (*p != '=') {
			p = strchr(p, ';');
			continue;
		}
		p = skip_cfws(p + 1);
		char val[FIELD_MAX];
		size_t vl = 0;
		if (*p == '"') {
			for (p++; *p && *p != '"'; p++) {
				if (*p == '\\' && p[1])
					p++;
				if (vl + 1 < sizeof(val))
					val[vl++] = *p;
			}
			if (*p == '"')
				p++;
		} else {
			while (*p && *p != ';' && *p != ' ' && *p != '\t') {
				if (vl + 1 < sizeof(val))
					val[vl++] = *p;
				p++;
			}
		}
		val[vl] = '\0';
		while (*p && *p != ';')
			p++;
		if (kl < nlen || strncasecmp(key, name, nlen) != 0)
			continue;
		if (kl == nlen) {
			if (!plain)
				snprintf(out, outlen, "%s", val);
			plain = true;
			continue;
		}
		if (key[nlen] != '*')
			continue;
		/* name*  name*0  name*0*  name*1 ... */
		const char *rest = key + nlen + 1;
		size_t rl = kl - nlen - 1;
		bool enc = rl == 0 || rest[rl - 1] == '*';
		bool first = rl == 0 || rest[0] == '0';
		const char *sv = val;
		if (enc && first) {
			const char *q = strchr(val, '\'');
			if (q && strchr(q + 1, '\''))
				sv = strchr(q + 1, '\'') + 1;
		}
		for (; *sv && jl + 1 < sizeof(joined); sv++) {
			if (enc && sv[0] == '%' && isxdigit((unsigned char)sv[1]) && isxdigit((unsigned char)sv[2])) {
				char hex[3] = { sv[1], sv[2], 0 };
				char ch = (char)strtol(hex, NULL, 16);
				/* "%00" must not end the name early ("x%00.exe"
				 * would be "x", its extension hidden) */
				joined[jl++] = ch ? ch : '?';
				sv += 2;
			} else {
				joined[jl++] = *sv;
			}
		}
		ext = true;
	}
	if (ext) {
		joined[jl] = '\0';
		snprintf(out, outlen, "%s", joined);
	}
	return plain || ext;
}

/* ---- the structure --------------------------------------------------------- */

struct parser {
	const char *msg;
	struct mime_msg *m;
	size_t cap;
	unsigned max_depth, max_parts;
	size_t max_header;
};

static struct mime_part *add_part(struct parser *P, unsigned *idx)
{
	struct mime_msg *m = P->m;
	if (m->nparts >= P->max_parts) {
		m->flags |= MIME_TOO_MANY_PARTS;
		return NULL;
	}
	if (m->nparts == P->cap) {
		P->cap = P->cap ? P->cap * 2 : 8;
		m->parts = xrealloc(m->parts, P->cap * sizeof(*m->parts));
	}
	*idx = (unsigned)m->nparts;
	struct mime_part *p = &m->parts[m->nparts++];
	memset(p, 0, sizeof(*p));
	return p;
}

/* Is the line l[0..n) (its line end not included) a delimiter of
 * boundary b?  *close for the closing one. */
static bool is_delimiter(const char *l, size_t n, const char *b, size_t blen, bool *close)
{
	if (n < blen + 2 || l[0] != '-' || l[1] != '-' || memcmp(l + 2, b, blen) != 0)
		return false;
	size_t i = blen + 2;
	*close = false;
	if (i + 2 <= n && l[i] == '-' && l[i + 1] == '-') {
		*close = true;
		i += 2;
	}
	/* transport padding only (a longer boundary is another one) */
	for (; i < n; i++)
		if (l[i] != ' ' && l[i] != '\t' && l[i] != '\r')
			return false;
	return true;
}

static void parse_entity(struct parser *P, size_t s, size_t e, unsigned depth, unsigned parent, bool digest);

static void parse_multipart(struct parser *P, unsigned idx, size_t bs, size_t be, unsigned depth, bool digest)
{
	char b[72];
	snprintf(b, sizeof(b), "%s", P->m->parts[idx].boundary);
	size_t blen = strlen(b);
	const char *msg = P->msg;
	size_t pos = bs, part_start = (size_t)-1;
	bool closed = false;
	unsigned found = 0;
	while (pos < be) {
		const char *nl = memchr(msg + pos, '\n', be - pos);
		size_t lend = nl ? (size_t)(nl - msg) : be;
		size_t next = nl ? lend + 1 : be;
		bool close;
		if (msg[pos] == '-' && is_delimiter(msg + pos, lend - pos, b, blen, &close)) {
			if (part_start != (size_t)-1) {
				/* the line end before the delimiter belongs to it */
				size_t end = pos;
				if (end > part_start && msg[end - 1] == '\n')
					end--;
				if (end > part_start && msg[end - 1] == '\r')
					end--;
				parse_entity(P, part_start, end, depth + 1, idx, digest);
			}
			found++;
			if (close) {
				closed = true;
				break;
			}
			part_start = next;
			if (P->m->flags & MIME_TOO_MANY_PARTS)
				return;
		}
		pos = next;
	}
	if (!closed) {
		if (part_start != (size_t)-1 && part_start <= be)
			parse_entity(P, part_start, be, depth + 1, idx, digest);
		P->m->flags |= found ? MIME_UNCLOSED : MIME_NO_PARTS;
	}
}

static void content_type(struct mime_part *p, const char *v, bool digest)
{
	const char *t = skip_cfws(v);
	size_t tl = token_len(t);
	const char *slash = t + tl;
	const char *st = slash;
	size_t sl = 0;
	if (*slash == '/') {
		st = skip_cfws(slash + 1);
		sl = token_len(st);
	}
	if (tl == 0 || sl == 0) {
		/* absent or malformed: the default (RFC 2045 5.2) */
		snprintf(p->type, sizeof(p->type), "%s", digest ? "message" : "text");
		snprintf(p->subtype, sizeof(p->subtype), "%s", digest ? "rfc822" : "plain");
		return;
	}
	lower_copy(p->type, sizeof(p->type), t, tl);
	lower_copy(p->subtype, sizeof(p->subtype), st, sl);
	char val[FIELD_MAX];
	if (param(v, "charset", val, sizeof(val)))
		lower_copy(p->charset, sizeof(p->charset), val, strlen(val));
	if (param(v, "boundary", val, sizeof(val)) && val[0])
		snprintf(p->boundary, sizeof(p->boundary), "%s", val);
	if (!p->filename[0] && param(v, "name", val, sizeof(val)))
		snprintf(p->filename, sizeof(p->filename), "%s", val);
}

static void parse_entity(struct parser *P, size_t s, size_t e, unsigned depth, unsigned parent, bool digest)
{
	unsigned idx;
	struct mime_part *p = add_part(P, &idx);
	if (!p)
		return;
	const char *msg = P->msg;
	p->parent = parent;
	p->depth = depth;
	size_t room = e - s < P->max_header ? e - s : P->max_header;
	size_t hb = hdr_body_start(msg + s, room);
	if (hb == room && room < e - s)
		P->m->flags |= MIME_BAD_HEADER;        /* no end of header within the bound */
	p->hdr_off = s;
	p->hdr_len = hb;
	p->body_off = s + hb;
	p->body_len = e - (s + hb);
	/* the fields this parser reads */
	char ct[FIELD_MAX] = "", cte[64] = "", cd[FIELD_MAX] = "";
	bool have_ct = false;
	size_t pos = 0;
	struct hdr_field f;
	while (hdr_next(msg + s, hb, &pos, &f)) {
		if (!have_ct && hdr_is(&f, "Content-Type")) {
			unfold(f.value, f.value_len, ct, sizeof(ct));
			have_ct = true;
		} else if (!cte[0] && hdr_is(&f, "Content-Transfer-Encoding")) {
			unfold(f.value, f.value_len, cte, sizeof(cte));
		} else if (!cd[0] && hdr_is(&f, "Content-Disposition")) {
			unfold(f.value, f.value_len, cd, sizeof(cd));
		}
	}
	if (cd[0]) {
		const char *d = skip_cfws(cd);
		p->attachment = strncasecmp(d, "attachment", 10) == 0;
		char val[FIELD_MAX];
		if (param(cd, "filename", val, sizeof(val)))
			snprintf(p->filename, sizeof(p->filename), "%s", val);
	}
	content_type(p, ct, digest);
	const char *c = skip_cfws(cte);
	size_t cl = token_len(c);
	if (cl == 0 || (cl == 4 && strncasecmp(c, "7bit", 4) == 0))
		p->cte = MIME_7BIT;
	else if (cl == 4 && strncasecmp(c, "8bit", 4) == 0)
		p->cte = MIME_8BIT;
	else if (cl == 6 && strncasecmp(c, "binary", 6) == 0)
		p->cte = MIME_BINARY;
	else if (cl == 16 && strncasecmp(c, "quoted-printable", 16) == 0)
		p->cte = MIME_QP;
	else if (cl == 6 && strncasecmp(c, "base64", 6) == 0)
		p->cte = MIME_BASE64;
	else {
		p->cte = MIME_CTE_OTHER;
		P->m->flags |= MIME_BAD_CTE;
	}
	bool is_multi = strcmp(p->type, "multipart") == 0;
	bool is_msg = strcmp(p->type, "message") == 0 &&
		      (strcmp(p->subtype, "rfc822") == 0 || strcmp(p->subtype, "global") == 0) &&
		      p->cte != MIME_BASE64 && p->cte != MIME_QP;
	if (!is_multi && !is_msg)
		return;
	if (depth >= P->max_depth) {
		P->m->flags |= MIME_DEPTH;
		return;
	}
	size_t bs = p->body_off, be = p->body_off + p->body_len;
	if (is_msg) {
		p->message = true;
		parse_entity(P, bs, be, depth + 1, idx, false);
		return;
	}
	if (!p->boundary[0]) {
		P->m->flags |= MIME_NO_BOUNDARY;
		return;
	}
	p->multipart = true;
	bool dig = strcmp(p->subtype, "digest") == 0;
	parse_multipart(P, idx, bs, be, depth, dig);     /* p may move: by index from here */
}

struct mime_msg *mime_parse(const char *msg, size_t len, const struct mime_limits *lim)
{
	struct parser P = { .msg = msg };
	P.m = xcalloc(1, sizeof(*P.m));
	P.max_depth = lim && lim->max_depth ? lim->max_depth : DEF_DEPTH;
	P.max_parts = lim && lim->max_parts ? lim->max_parts : DEF_PARTS;
	P.max_header = lim && lim->max_header ? lim->max_header : DEF_HEADER;
	parse_entity(&P, 0, len, 0, 0, false);
	return P.m;
}

void mime_free(struct mime_msg *m)
{
	if (!m)
		return;
	free(m->parts);
	free(m);
}

bool mime_is_text(const struct mime_part *p, bool *html)
{
	bool text = strcmp(p->type, "text") == 0 && !(p->attachment && p->filename[0]);
	if (html)
		*html = text && strcmp(p->subtype, "html") == 0;
	return text;
}

/* ---- transfer encodings ----------------------------------------------------- */

static bool b64_char(unsigned char c)
{
	return isalnum(c) || c == '+' || c == '/';
}

/* Base64 by OpenSSL, fed only the alphabet: the line ends and stray
 * characters spam is full of would stop its decoder.  A last group cut
 * short is padded, as mail readers do. */
static bool decode_base64(const char *in, size_t n, struct buf *out)
{
	EVP_ENCODE_CTX *ctx = EVP_ENCODE_CTX_new();
	if (!ctx)
		return false;
	EVP_DecodeInit(ctx);
	bool clean = true, padded = false;
	unsigned char chunk[4096 + 4], dec[4096 + 256];
	size_t cl = 0, nchars = 0;
	for (size_t i = 0; i < n && !out->overflow; i++) {
		unsigned char c = (unsigned char)in[i];
		if (b64_char(c)) {
			if (padded) {
				clean = false;  /* data after the padding: another body glued on */
				continue;
			}
			chunk[cl++] = c;
			nchars++;
			if (cl == 4096) {
				int outl = 0;
				if (EVP_DecodeUpdate(ctx, dec, &outl, chunk, (int)cl) < 0)
					clean = false;
				if (outl > 0)
					put(out, dec, (size_t)outl);
				cl = 0;
			}
		} else if (c == '=') {
			padded = true;
		} else if (c != '\r' && c != '\n' && c != ' ' && c != '\t') {
			clean = false;
		}
	}
	/* 4096 is a multiple of 4: a short last group is in this chunk */
	switch (nchars % 4) {
	case 1:
		clean = false;  /* 6 bits make no byte */
		cl--;
		break;
	case 2:
		chunk[cl++] = '=';
		chunk[cl++] = '=';
		break;
	case 3:
		chunk[cl++] = '=';
		break;
	}
	int outl = 0;
	if (cl && !out->overflow) {
		if (EVP_DecodeUpdate(ctx, dec, &outl, chunk, (int)cl) < 0)
			clean = false;
		if (outl > 0)
			put(out, dec, (size_t)outl);
	}
	outl = 0;
	if (EVP_DecodeFinal(ctx, dec, &outl) < 0)
		clean = false;
	else if (outl > 0)
		put(out, dec, (size_t)outl);
	EVP_ENCODE_CTX_free(ctx);
	return clean;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (unsigned char)tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static bool decode_qp(const char *in, size_t n, struct buf *out, bool header)
{
	bool clean = true;
	char tmp[4096];
	size_t t = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '=') {
			int h = -1;
			if (i + 2 < n) {
				int a = hexval((unsigned char)in[i + 1]), b = hexval((unsigned char)in[i + 2]);
				if (a >= 0 && b >= 0)
					h = a * 16 + b;
			}
			if (h >= 0) {
				tmp[t++] = (char)h;
				i += 2;
			} else {
				/* a soft line break: '=' then blanks then the line end */
				size_t j = i + 1;
				while (j < n && (in[j] == ' ' || in[j] == '\t'))
					j++;
				if (j < n && in[j] == '\r')
					j++;
				if (j < n && in[j] == '\n') {
					i = j;
				} else if (j >= n) {
					i = n;
				} else {
					clean = false;
					tmp[t++] = '=';
				}
			}
		} else if (header && c == '_') {
			tmp[t++] = ' ';
		} else {
			tmp[t++] = (char)c;
		}
		if (t >= sizeof(tmp) - 4) {
			if (!put(out, tmp, t))
				return clean;
			t = 0;
		}
	}
	put(out, tmp, t);
	return clean;
}

bool mime_decode(const char *msg, const struct mime_part *p, struct buf *out)
{
	const char *b = msg + p->body_off;
	switch (p->cte) {
	case MIME_BASE64:
		return decode_base64(b, p->body_len, out);
	case MIME_QP:
		return decode_qp(b, p->body_len, out, false);
	default:
		put(out, b, p->body_len);
		return true;
	}
}

/* ---- charsets ------------------------------------------------------------------ */

static void put_utf8(struct buf *out, uint32_t cp)
{
	char u[4];
	if (cp < 0x80) {
		buf_putc(out, (char)cp);
	} else if (cp < 0x800) {
		u[0] = (char)(0xC0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3F));
		buf_append(out, u, 2);
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F));
		buf_append(out, u, 3);
	} else {
		u[0] = (char)(0xF0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[3] = (char)(0x80 | (cp & 0x3F));
		buf_append(out, u, 4);
	}
}

#define REPLACEMENT 0xFFFD

/* The length of the valid UTF-8 sequence at s (0: invalid). */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	if (s[0] < 0x80)
		return 1;
	size_t len;
	uint32_t min, cp;
	if ((s[0] & 0xE0) == 0xC0) {
		len = 2;
		min = 0x80;
		cp = s[0] & 0x1F;
	} else if ((s[0] & 0xF0) == 0xE0) {
		len = 3;
		min = 0x800;
		cp = s[0] & 0x0F;
	} else if ((s[0] & 0xF8) == 0xF0) {
		len = 4;
		min = 0x10000;
		cp = s[0] & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

/* in as UTF-8, each invalid byte as U+FFFD. */
static void utf8_clean(const char *in, size_t n, struct buf *out)
{
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, run = 0;
	while (i < n) {
		size_t l = utf8_seq(s + i, n - i);
		if (l) {
			i += l;
			continue;
		}
		if (i > run && !put(out, in + run, i - run))
			return;
		put_utf8(out, REPLACEMENT);
		i++;
		run = i;
		if (out->overflow)
			return;
	}
	if (n > run)
		put(out, in + run, n - run);
}

/* Names mail uses that iconv knows otherwise, or that mean a superset
 * in practice (what browsers and mail readers decode them as). */
static const char *charset_alias(const char *cs)
{
	static const char *const map[][2] = {
		{ "iso-8859-1", "WINDOWS-1252" }, { "latin1", "WINDOWS-1252" }, { "us-ascii", "WINDOWS-1252" },
		{ "gb2312", "GB18030" }, { "gbk", "GB18030" }, { "x-gbk", "GB18030" },
		{ "ks_c_5601-1987", "CP949" }, { "euc-kr", "CP949" },
		{ "x-sjis", "SHIFT_JIS" }, { "shift-jis", "SHIFT_JIS" },
		{ "tis-620", "CP874" }, { "iso-8859-11", "CP874" }, { "windows-874", "CP874" },
	};
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
		if (strcasecmp(cs, map[i][0]) == 0)
			return map[i][1];
	return cs;
}

bool mime_to_utf8(const char *charset, const char *in, size_t len, struct buf *out)
{
	if (!charset || !*charset || strcasecmp(charset, "utf-8") == 0 || strcasecmp(charset, "utf8") == 0) {
		utf8_clean(in, len, out);
		return true;
	}
	/* plain ASCII needs no converter, whatever the label */
	size_t k = 0;
	while (k < len && (unsigned char)in[k] < 0x80)
		k++;
	if (k == len) {
		put(out, in, len);
		return true;
	}
	iconv_t cd = iconv_open("UTF-8", charset_alias(charset));
	if (cd == (iconv_t)-1) {
		utf8_clean(in, len, out);
		return false;
	}
	char tmp[4096];
	char *ip = (char *)in;
	size_t ileft = len;
	while (ileft > 0 && !out->overflow) {
		char *op = tmp;
		size_t oleft = sizeof(tmp);
		size_t r = iconv(cd, &ip, &ileft, &op, &oleft);
		int err = r == (size_t)-1 ? errno : 0;
		put(out, tmp, sizeof(tmp) - oleft);
		if (err == EILSEQ || err == EINVAL) {
			put_utf8(out, REPLACEMENT);     /* one byte that does not convert */
			ip++;
			ileft--;
			iconv(cd, NULL, NULL, NULL, NULL);
		} else if (err && err != E2BIG) {
			break;
		}
	}
	iconv_close(cd);
	return true;
}

/* ---- header values (RFC 2047) ------------------------------------------------ */

/* An encoded-word at p ("=?cs?X?text?="): decoded into out, its length in
 * *used; false when p is not one. */
static bool encoded_word(const char *p, size_t n, struct buf *out, size_t *used)
{
	if (n < 8 || p[0] != '=' || p[1] != '?')
		return false;
	const char *end = p + n;
	const char *cs = p + 2;
	const char *q1 = memchr(cs, '?', (size_t)(end - cs));
	if (!q1 || q1 == cs || q1 + 3 > end || q1[2] != '?')
		return false;
	char enc = (char)toupper((unsigned char)q1[1]);
	if (enc != 'B' && enc != 'Q')
		return false;
	const char *text = q1 + 3;
	const char *stop = NULL;
	for (const char *s = text; s + 1 < end; s++) {
		if (s[0] == '?' && s[1] == '=') {
			stop = s;
			break;
		}
		if (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n')
			return false;
	}
	if (!stop)
		return false;
	char charset[64];
	size_t cl = (size_t)(q1 - cs);
	const char *star = memchr(cs, '*', cl);    /* RFC 2231 language */
	if (star)
		cl = (size_t)(star - cs);
	if (cl >= sizeof(charset))
		return false;
	memcpy(charset, cs, cl);
	charset[cl] = '\0';
	struct buf raw = BUF_INIT;
	buf_set_limit(&raw, 64 * 1024);
	if (enc == 'B')
		decode_base64(text, (size_t)(stop - text), &raw);
	else
		decode_qp(text, (size_t)(stop - text), &raw, true);
	mime_to_utf8(charset, raw.data ? raw.data : "", raw.len, out);
	buf_free(&raw);
	*used = (size_t)(stop + 2 - p);
	return true;
}

/* value[from..to) without its line ends, as UTF-8. */
static void plain_run(const char *value, size_t from, size_t to, struct buf *out)
{
	size_t k = from;
	while (k < to) {
		size_t e = k;
		while (e < to && value[e] != '\r' && value[e] != '\n')
			e++;
		utf8_clean(value + k, e - k, out);
		while (e < to && (value[e] == '\r' || value[e] == '\n'))
			e++;
		k = e;
	}
}

void mime_header_utf8(const char *value, size_t len, struct buf *out)
{
	size_t i = 0, run = 0;
	bool after_word = false;        /* only blanks since the last encoded-word */
	while (i < len && !out->overflow) {
		if (value[i] == '=' && i + 1 < len && value[i + 1] == '?') {
			struct buf w = BUF_INIT;
			size_t used;
			if (encoded_word(value + i, len - i, &w, &used)) {
				/* the blanks between two encoded-words are not text
				 * (RFC 2047 6.2) */
				if (!after_word)
					plain_run(value, run, i, out);
				put(out, w.data ? w.data : "", w.len);
				buf_free(&w);
				i += used;
				run = i;
				after_word = true;
				continue;
			}
			buf_free(&w);
		}
		if (value[i] != ' ' && value[i] != '\t' && value[i] != '\r' && value[i] != '\n')
			after_word = false;
		i++;
	}
	if (len > run)
		plain_run(value, run, len, out);
}

/* ---- HTML ---------------------------------------------------------------------- */

static bool ieq_prefix(const char *p, size_t n, const char *lit)
{
	size_t l = strlen(lit);
	return n >= l && strncasecmp(p, lit, l) == 0;
}

/* An entity at p (after '&'): its code point and length (through ';'
 * when there is one); false when it is not one we know. */
static bool entity(const char *p, size_t n, uint32_t *cp, size_t *used)
{
	static const struct { const char *name; uint32_t cp; } named[] = {
		{ "amp", '&' }, { "lt", '<' }, { "gt", '>' }, { "quot", '"' }, { "apos", '\'' },
		{ "nbsp", ' ' }, { "copy", 0xA9 }, { "reg", 0xAE }, { "euro", 0x20AC }, { "trade", 0x2122 },
		{ "shy", 0 }, { "zwnj", 0 }, { "zwj", 0 },
	};
	if (n >= 2 && p[0] == '#') {
		size_t i = 1;
		uint32_t v = 0;
		bool hex = i < n && (p[i] == 'x' || p[i] == 'X');
		if (hex)
			i++;
		size_t start = i;
		for (; i < n && i < start + 8; i++) {
			int h = hex ? hexval((unsigned char)p[i]) : (isdigit((unsigned char)p[i]) ? p[i] - '0' : -1);
			if (h < 0)
				break;
			v = v * (hex ? 16 : 10) + (uint32_t)h;
		}
		if (i == start)
			return false;
		if (i < n && p[i] == ';')
			i++;
		if (v == 0 || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
			v = REPLACEMENT;
		*cp = v;
		*used = i;
		return true;
	}
	for (size_t k = 0; k < sizeof(named) / sizeof(named[0]); k++) {
		size_t l = strlen(named[k].name);
		if (n >= l && strncmp(p, named[k].name, l) == 0) {
			*cp = named[k].cp;
			*used = l + (n > l && p[l] == ';');
			return true;
		}
	}
	return false;
}

static void put_entity_text(struct buf *out, uint32_t cp)
{
	if (cp)
		put_utf8(out, cp);
}

/* Decodes the entities of an attribute value into a NUL-terminated out. */
static size_t attr_decode(const char *v, size_t n, char *out, size_t outlen)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 5 < outlen; i++) {
		uint32_t cp;
		size_t used;
		if (v[i] == '&' && entity(v + i + 1, n - i - 1, &cp, &used) && cp && cp < 0x80) {
			out[o++] = (char)cp;
			i += used;
		} else if (v[i] != '\r' && v[i] != '\n' && v[i] != '\t') {
			out[o++] = v[i];
		}
	}
	out[o] = '\0';
	return o;
}

static bool block_tag(const char *t, size_t n)
{
	static const char *const tags[] = { "br", "p", "div", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6",
					     "table", "ul", "ol", "blockquote", "title", "hr", "center", "pre" };
	for (size_t i = 0; i < sizeof(tags) / sizeof(tags[0]); i++)
		if (strlen(tags[i]) == n && strncasecmp(t, tags[i], n) == 0)
			return true;
	return false;
}

void mime_html_text(const char *html, size_t len, struct buf *out, mime_url_fn url, void *arg)
{
	size_t i = 0, run = 0;
	while (i < len && !out->overflow) {
		char c = html[i];
		if (c == '&') {
			uint32_t cp;
			size_t used;
			if (entity(html + i + 1, len - i - 1, &cp, &used)) {
				put(out, html + run, i - run);
				put_entity_text(out, cp);
				i += 1 + used;
				run = i;
				continue;
			}
			i++;
			continue;
		}
		if (c != '<') {
			i++;
			continue;
		}
		put(out, html + run, i - run);
		const char *p = html + i + 1;
		size_t n = len - i - 1;
		if (ieq_prefix(p, n, "!--")) {
			const char *e = NULL;
			for (size_t k = 3; k + 2 < n; k++)
				if (p[k] == '-' && p[k + 1] == '-' && p[k + 2] == '>') {
					e = p + k + 3;
					break;
				}
			i = e ? (size_t)(e - html) : len;
			run = i;
			continue;
		}
		/* the tag's name */
		size_t k = 0;
		bool closing = false;
		if (k < n && p[k] == '/') {
			closing = true;
			k++;
		}
		size_t name = k;
		while (k < n && (isalnum((unsigned char)p[k])))
			k++;
		size_t name_len = k - name;
		if (name_len == 0 && !(k < n && (p[k] == '!' || p[k] == '?'))) {
			/* "<" that starts no tag: text */
			buf_putc(out, '<');
			i++;
			run = i;
			continue;
		}
		/* attributes, up to the '>' outside quotes */
		char quote = 0;
		size_t end = n;
		for (size_t a = k; a < n; a++) {
			if (quote) {
				if (p[a] == quote)
					quote = 0;
			} else if (p[a] == '"' || p[a] == '\'') {
				quote = p[a];
			} else if (p[a] == '>') {
				end = a;
				break;
			}
		}
		if (url && !closing && name_len) {
			/* href= and src= values */
			for (size_t a = k; a < end; a++) {
				bool href = ieq_prefix(p + a, end - a, "href") && (a == 0 || !isalnum((unsigned char)p[a - 1]));
				bool src = ieq_prefix(p + a, end - a, "src") && (a == 0 || !isalnum((unsigned char)p[a - 1]));
				if (!href && !src)
					continue;
				size_t b = a + (href ? 4 : 3);
				while (b < end && (p[b] == ' ' || p[b] == '\t' || p[b] == '\r' || p[b] == '\n'))
					b++;
				if (b >= end || p[b] != '=')
					continue;
				b++;
				while (b < end && (p[b] == ' ' || p[b] == '\t' || p[b] == '\r' || p[b] == '\n'))
					b++;
				size_t vs = b, ve;
				if (b < end && (p[b] == '"' || p[b] == '\'')) {
					char qc = p[b];
					vs = b + 1;
					ve = vs;
					while (ve < end && p[ve] != qc)
						ve++;
				} else {
					ve = vs;
					while (ve < end && p[ve] != ' ' && p[ve] != '\t' && p[ve] != '>')
						ve++;
				}
				char v[2048];
				size_t vl = attr_decode(p + vs, ve - vs, v, sizeof(v));
				if (vl)
					url(arg, v, vl);
				a = ve;
			}
		}
		size_t after = end < n ? end + 1 : n;
		i = (size_t)(p + after - html);
		run = i;
		if (!closing && name_len &&
		    ((name_len == 6 && strncasecmp(p + name, "script", 6) == 0) ||
		     (name_len == 5 && strncasecmp(p + name, "style", 5) == 0))) {
			/* its content is not text */
			const char *tag = name_len == 6 ? "</script" : "</style";
			size_t tl = strlen(tag);
			size_t s = i;
			while (s + tl <= len && strncasecmp(html + s, tag, tl) != 0)
				s++;
			if (s + tl > len) {
				i = run = len;
				break;
			}
			const char *gt = memchr(html + s, '>', len - s);
			i = gt ? (size_t)(gt - html) + 1 : len;
			run = i;
			continue;
		}
		if (name_len && block_tag(p + name, name_len))
			buf_putc(out, '\n');
		else if (name_len)
			buf_putc(out, ' ');     /* td, span, a ...: words either side stay apart */
	}
	if (!out->overflow && len > run)
		put(out, html + run, len - run);
}

/* ---- URLs ------------------------------------------------------------------------ */

static bool url_char(unsigned char c)
{
	return c > ' ' && c != '<' && c != '>' && c != '"' && c != '\'' && c != '`' && c != 0x7F;
}

void mime_text_urls(const char *text, size_t len, mime_url_fn url, void *arg)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)(text[i] | 0x20);
		if (c != 'h' && c != 'w')
			continue;
		size_t skip;
		if (ieq_prefix(text + i, len - i, "http://"))
			skip = 7;
		else if (ieq_prefix(text + i, len - i, "https://"))
			skip = 8;
		else if (ieq_prefix(text + i, len - i, "www.") &&
			 (i == 0 || (!isalnum((unsigned char)text[i - 1]) && text[i - 1] != '.' && text[i - 1] != '/')))
			skip = 4;
		else
			continue;
		size_t e = i + skip;
		while (e < len && url_char((unsigned char)text[e]))
			e++;
		while (e > i + skip && strchr(".,;:!?)]}", text[e - 1]))
			e--;
		if (e > i + skip)
			url(arg, text + i, e - i);
		i = e > i ? e - 1 : i;
	}
}

bool mime_url_host(const char *u, size_t n, char *out, size_t outlen)
{
	size_t i = 0;
	/* the scheme, when there is one */
	size_t k = 0;
	while (k < n && k < 16 && (isalnum((unsigned char)u[k]) || u[k] == '+' || u[k] == '-' || u[k] == '.'))
		k++;
	if (k > 0 && k + 2 < n && u[k] == ':' && u[k + 1] == '/' && u[k + 2] == '/')
		i = k + 3;
	else if (n >= 2 && u[0] == '/' && u[1] == '/')
		i = 2;
	else if (k > 0 && k < n && u[k] == ':' && (strncasecmp(u, "mailto", 6) == 0 || strncasecmp(u, "javascript", 10) == 0))
		return false;
	/* the authority, up to the path, query or fragment */
	size_t e = i;
	while (e < n && u[e] != '/' && u[e] != '?' && u[e] != '#' && u[e] != '\\')
		e++;
	/* userinfo@ */
	for (size_t a = e; a > i; a--)
		if (u[a - 1] == '@') {
			i = a;
			break;
		}
	size_t o = 0;
	if (i < e && u[i] == '[') {
		/* an IPv6 literal */
		const char *rb = memchr(u + i, ']', e - i);
		if (!rb)
			return false;
		for (const char *s = u + i + 1; s < rb; s++) {
			if (o + 1 >= outlen)
				return false;
			out[o++] = (char)tolower((unsigned char)*s);
		}
		out[o] = '\0';
		return o > 0;
	}
	for (size_t s = i; s < e; s++) {
		unsigned char c = (unsigned char)u[s];
		if (c == ':')
			break;          /* the port */
		if (c == '%' && s + 2 < e && hexval((unsigned char)u[s + 1]) >= 0 && hexval((unsigned char)u[s + 2]) >= 0) {
			c = (unsigned char)(hexval((unsigned char)u[s + 1]) * 16 + hexval((unsigned char)u[s + 2]));
			s += 2;
		}
		if (c <= ' ' || c == 0x7F || c == '@' || c == '%')
			return false;
		if (o + 1 >= outlen)
			return false;
		out[o++] = (char)tolower(c);
	}
	while (o > 0 && out[o - 1] == '.')
		o--;
	out[o] = '\0';
	return o > 0;
}
