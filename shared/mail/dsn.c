/*
 * dsn.c — delivery status notifications (see dsn.h).
 *
 * A report is an RFC 6522 multipart/report; report-type=delivery-status:
 *   1. text/plain              what happened, one paragraph per recipient
 *   2. message/delivery-status the RFC 3464 per-message block, then one
 *                              block per recipient
 *   3. text/rfc822-headers     the original header section (RET=HDRS, the
 *                              default, every delay warning, and originals
 *                              over the size cap), or message/rfc822 with
 *                              the whole original (RET=FULL).
 *
 * Every string taken from the envelope or a remote server is sanitised
 * before it lands in a header-like line: no CR, LF or other controls,
 * white space runs collapsed, bounded in length, folded before 78 columns
 * where it has spaces and never longer than 998 octets.  The original is
 * copied byte for byte (8-bit included) except that its line ends become
 * CRLF, NULs become spaces and lines over 998 octets are split — in the
 * header section as folded continuation lines.
 *
 * SMTPUTF8: for now the report has the same structure, the delivery-status
 * part stays US-ASCII (a non-ASCII address is written as an RFC 6533
 * utf-8-addr-xtext) and the human part may be UTF-8.  Using the RFC 6533
 * global types (message/global-delivery-status, message/global-headers,
 * message/global) for SMTPUTF8 messages is a later improvement.
 */
#include "dsn.h"
#include "address.h"
#include "envelope.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/id.h"
#include "../util/log.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LINE_OCTETS    998     /* RFC 5322 2.1.1: longest line, CRLF excluded */
#define FOLD_COLS      78      /* fold header-like lines here when words allow */
#define TEXT_COLS      76      /* wrap of the human-readable part */
#define HOST_MAX       255
#define DSN_ADDR_MAX       600     /* bytes of one address quoted */
#define REPLY_MAX      1000    /* bytes of one reply quoted */
#define ENVID_MAX      200     /* RFC 3461: 100 characters, xtext may double that */
#define ORCPT_MAX      600     /* RFC 3461: 500 characters */
#define ADDRTYPE_MAX   32
#define POSTMASTER_MAX 300
#define LINE_MAX_OCTETS 998    /* RFC 5322 2.1.1, without the CRLF */
#define BOUNDARY_TRIES 16

/* ---- small text helpers ------------------------------------------------ */

/* Length of the valid UTF-8 sequence at p (at most n bytes), its code point
 * in *cp; 0 if invalid (overlong, surrogate, beyond U+10FFFF, cut). */
static size_t utf8_seq(const unsigned char *p, size_t n, uint32_t *cp)
{
	unsigned c = p[0];
	size_t len;
	uint32_t v, min;

	if (c < 0x80) {
		*cp = c;
		return 1;
	} else if (c >= 0xC2 && c <= 0xDF) {
		len = 2, v = c & 0x1F, min = 0x80;
	} else if (c >= 0xE0 && c <= 0xEF) {
		len = 3, v = c & 0x0F, min = 0x800;
	} else if (c >= 0xF0 && c <= 0xF4) {
		len = 4, v = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		v = (v << 6) | (p[i] & 0x3F);
	}
	if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
		return 0;
	*cp = v;
	return len;
}

bool dsn_is_8bit(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] & 0x80)
			return true;
	return false;
}

/* Append s sanitised for one line of text: CR, LF, TAB and runs of white
 * space become a single space, leading and trailing space is dropped,
 * other controls become '?', bytes above 127 are kept only when utf8 and
 * part of valid UTF-8 ('?' otherwise).  At most max bytes of s are read;
 * a cut is marked with "...". */
static void put_clean(struct buf *b, const char *s, size_t max, bool utf8)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	size_t n = strnlen((const char *)p, max + 1);
	bool cut = n > max, space = false;
	size_t start = b->len;

	if (cut)
		n = max;
	for (size_t i = 0; i < n;) {
		unsigned char c = p[i];
		if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
			space = true;
			i++;
			continue;
		}
		if (space && b->len > start)
			buf_putc(b, ' ');
		space = false;
		if (c < 0x20 || c == 0x7F) {
			buf_putc(b, '?');
			i++;
		} else if (c < 0x80) {
			buf_putc(b, (char)c);
			i++;
		} else {
			uint32_t cp;
			size_t k = utf8 ? utf8_seq(p + i, n - i, &cp) : 0;
			if (k) {
				buf_append(b, p + i, k);
				i += k;
			} else {
				buf_putc(b, '?');
				i++;
			}
		}
	}
	if (cut)
		buf_puts(b, b->len > start ? " ..." : "...");
}

/* A host name for Reporting-MTA, Remote-MTA and Message-ID: letters,
 * digits and . - _ [ ] : kept, anything else becomes '-'. */
static void put_host(struct buf *b, const char *s)
{
	size_t n = strnlen(s, HOST_MAX);
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
			  c == '.' || c == '-' || c == '_' || c == '[' || c == ']' || c == ':';
		buf_putc(b, ok ? c : '-');
	}
}

/* Where to cut p before byte k (k > 0, p[k] readable) without splitting
 * a UTF-8 sequence: k, or the start of the sequence p[k] continues. */
static size_t utf8_cut(const char *p, size_t k)
{
	size_t j = k;

	while (j > 0 && k - j < 3 && ((unsigned char)p[j] & 0xC0) == 0x80)
		j--;
	if (j == 0 || ((unsigned char)p[j] & 0xC0) == 0x80)
		return k;
	return j;
}

/* "name: value" for a header-like line.  v is clean (single spaces, no
 * controls, no leading or trailing space).  Folded before a space so lines
 * keep within FOLD_COLS where the words allow; a word too long for one
 * line is split onto a continuation line, so no line exceeds LINE_OCTETS. */
static void put_field(struct buf *b, const char *name, const char *v, size_t vn)
{
	size_t col = strlen(name) + 2;

	buf_puts(b, name);
	buf_puts(b, ": ");
	for (size_t i = 0; i < vn;) {
		size_t j = i + (v[i] == ' ');
		while (j < vn && v[j] != ' ')
			j++;
		size_t chunk = j - i;
		if (v[i] == ' ' && col + chunk > FOLD_COLS) {
			buf_puts(b, "\r\n");        /* the space starts the continuation */
			col = 0;
		}
		while (col + chunk > LINE_OCTETS) {
			size_t take = utf8_cut(v + i, LINE_OCTETS - col);
			buf_append(b, v + i, take);
			buf_puts(b, "\r\n ");
			col = 1;
			i += take;
			chunk -= take;
		}
		buf_append(b, v + i, chunk);
		col += chunk;
		i = j;
	}
	buf_puts(b, "\r\n");
}

/* Clean text v wrapped at TEXT_COLS as lines of the human-readable part;
 * the caller has written col columns of the first line already, further
 * lines are indented by indent spaces. */
static void put_wrapped(struct buf *b, size_t col, size_t indent, const char *v, size_t vn)
{
	for (size_t i = 0; i < vn;) {
		size_t j = i + (v[i] == ' ');
		while (j < vn && v[j] != ' ')
			j++;
		size_t chunk = j - i;
		if (v[i] == ' ' && col + chunk > TEXT_COLS && col > indent) {
			buf_printf(b, "\r\n%*s", (int)indent, "");
			col = indent;
			i++;                        /* the space is the line break */
			chunk--;
		}
		while (col + chunk > LINE_OCTETS) {
			size_t take = utf8_cut(v + i, LINE_OCTETS - col);
			buf_append(b, v + i, take);
			buf_printf(b, "\r\n%*s", (int)indent, "");
			col = indent;
			i += take;
			chunk -= take;
		}
		buf_append(b, v + i, chunk);
		col += chunk;
		i = j;
	}
	buf_puts(b, "\r\n");
}

/* An RFC 5322 date-time in local time, independent of the locale. */
static void put_date(struct buf *b, time_t t)
{
	static const char days[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char mons[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
					  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;

	if (!localtime_r(&t, &tm) && !gmtime_r(&t, &tm)) {
		t = 0;
		gmtime_r(&t, &tm);
	}
	long off = tm.tm_gmtoff / 60;
	char sign = off < 0 ? '-' : '+';
	if (off < 0)
		off = -off;
	buf_printf(b, "%s, %d %s %d %02d:%02d:%02d %c%02ld%02ld", days[tm.tm_wday % 7], tm.tm_mday,
		   mons[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec, sign,
		   off / 60, off % 60);
}

/* Decode the RFC 3461 xtext s[0..n) into b if it is well formed and its
 * decoded form is printable US-ASCII (a header-like field can carry it as
 * is); false, b unchanged, otherwise. */
static bool put_xtext_decoded(struct buf *b, const char *s, size_t n)
{
	char in[ENVID_MAX * 3 + 1], out[ENVID_MAX * 3 + 1];
	if (n >= sizeof(in))
		return false;
	memcpy(in, s, n);
	in[n] = '\0';
	if (!xtext_decode(in, out, sizeof(out)))
		return false;
	for (const char *p = out; *p; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
			return false;
	buf_puts(b, out);
	return true;
}

/* An RFC 3461 xtext value for a DSN field: decoded when that gives
 * printable US-ASCII, else kept in its encoded form (sanitised). */
static void put_xtext(struct buf *b, const char *s, size_t max)
{
	size_t n = strnlen(s, max + 1);
	if (n <= max && put_xtext_decoded(b, s, n))
		return;
	put_clean(b, s, max, false);
}

/* RFC 6533 utf-8-addr-xtext of a non-ASCII address: printable ASCII other
 * than + = \ as is, every other code point as \x{HEX}; bytes that are not
 * UTF-8 as U+FFFD.  At most room bytes are written: an address whose
 * encoded form is longer (up to 8 bytes per code point, and a field cannot
 * be folded inside it) is cut, and the cut marked with "...", so its line
 * stays within RFC 5322's 998 octets. */
static void put_utf8_xtext(struct buf *b, const char *s, size_t max, size_t room)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t n = strnlen(s, max), start = b->len;

	for (size_t i = 0; i < n;) {
		uint32_t cp;
		size_t k = utf8_seq(p + i, n - i, &cp);
		if (!k) {
			cp = 0xFFFD;
			k = 1;
		}
		char tok[16];
		if (cp >= 0x21 && cp <= 0x7E && cp != '+' && cp != '=' && cp != '\\')
			snprintf(tok, sizeof(tok), "%c", (char)cp);
		else
			snprintf(tok, sizeof(tok), "\\x{%02X}", (unsigned)cp);
		if (b->len - start + strlen(tok) + 3 > room) {
			buf_puts(b, "...");
			return;
		}
		buf_puts(b, tok);
		i += k;
	}
}

/* ---- what a recipient's last reply says -------------------------------- */

struct diag {
	bool smtp;              /* a reply from an SMTP/LMTP server */
	int code;               /* its 3-digit code, 0 if none */
	char status[16];        /* x.y.z for the Status: field */
	const char *text;       /* the reply after its code */
};

/* Length of an RFC 3463 enhanced status code (class 2, 4 or 5) at p that
 * is followed by white space or the end; 0 if there is none. */
static size_t enh_len(const char *p)
{
	size_t i = 2;

	if ((p[0] != '2' && p[0] != '4' && p[0] != '5') || p[1] != '.')
		return 0;
	for (int part = 0; part < 2; part++) {
		size_t k = 0;
		while (k < 3 && p[i] >= '0' && p[i] <= '9')
			i++, k++;
		if (k == 0 || (part == 0 && p[i++] != '.'))
			return 0;
	}
	return p[i] == '\0' || p[i] == ' ' || p[i] == '\t' ? i : 0;
}

/*
 * The queue keeps a reply as "550 5.1.1 text" (code in the text) with the
 * code in last_code too, and its own reasons as "4.4.7 message expired in
 * queue" or free text.  A text that starts with a reply code, or a bare
 * code without an enhanced code of its own, is an SMTP reply; an enhanced
 * code or text without a reply code is a local reason (last_code may then
 * be stale from an earlier attempt and is ignored).
 */
static void diag_parse(const struct env_rcpt *r, enum dsn_kind kind, struct diag *d)
{
	const char *p = r->last_reply ? r->last_reply : "";

	memset(d, 0, sizeof(*d));
	while (*p == ' ' || *p == '\t')
		p++;
	if (p[0] >= '2' && p[0] <= '5' && p[1] >= '0' && p[1] <= '9' && p[2] >= '0' &&
	    p[2] <= '9' && (p[3] == ' ' || p[3] == '-' || p[3] == '\0')) {
		d->smtp = true;
		d->code = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
		p += p[3] ? 4 : 3;
		while (*p == ' ' || *p == '\t')
			p++;
	} else if (!enh_len(p) && r->last_code >= 200 && r->last_code <= 599) {
		d->smtp = true;
		d->code = r->last_code;
	}
	d->text = p;
	size_t e = enh_len(p);
	if (e && p[0] != '2')
		memcpy(d->status, p, e);        /* at most 9 bytes */
	else if (d->code >= 500)
		strcpy(d->status, "5.0.0");
	else if (d->code >= 400)
		strcpy(d->status, "4.0.0");
	else
		strcpy(d->status, kind == DSN_FAILED ? "5.0.0" : "4.0.0");
}

/* ---- the three parts --------------------------------------------------- */

struct ctx {
	const struct dsn_input *in;
	const struct envelope *env;
	bool utf8;              /* SMTPUTF8: UTF-8 allowed in headers and text */
	const char *host;       /* sanitised reporting MTA */
	const size_t *list;     /* recipients in the report */
	size_t nlist, more;     /* listed, and wanted but beyond DSN_MAX_RCPTS */
	size_t hdr_len;         /* original header section */
	size_t hdr_cut;         /* what of it is returned */
	bool full;              /* whole original returned */
	bool capped;            /* RET=FULL asked but the original is too large */
	size_t return_max;
	struct buf tmp;
};

static void text_par(struct ctx *c, struct buf *b, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* A paragraph of the human-readable part (printf-built, then wrapped). */
static void text_par(struct ctx *c, struct buf *b, const char *fmt, ...)
{
	va_list ap;

	buf_reset(&c->tmp);
	va_start(ap, fmt);
	buf_vprintf(&c->tmp, fmt, ap);
	va_end(ap);
	put_wrapped(b, 0, 0, c->tmp.data, c->tmp.len);
	buf_puts(b, "\r\n");
}

static void build_text(struct ctx *c, struct buf *b)
{
	const struct dsn_input *in = c->in;
	struct buf date = BUF_INIT;

	text_par(c, b, "This is the mail delivery system at %s.", c->host);
	if (in->kind == DSN_FAILED) {
		text_par(c, b, "Your message could not be delivered to the recipient%s below. "
			 "The mail system has given up on %s; it will not try again.",
			 c->nlist + c->more > 1 ? "s" : "", c->nlist + c->more > 1 ? "them" : "it");
	} else {
		if (in->retry_until) {
			put_date(&date, in->retry_until);
			text_par(c, b, "Your message has not been delivered yet to the recipient%s "
				 "below. The mail system is still trying and will keep trying until "
				 "%s. This is only a warning: you need not send the message again.",
				 c->nlist + c->more > 1 ? "s" : "", date.data);
		} else {
			text_par(c, b, "Your message has not been delivered yet to the recipient%s "
				 "below. The mail system is still trying. This is only a warning: "
				 "you need not send the message again.",
				 c->nlist + c->more > 1 ? "s" : "");
		}
	}

	for (size_t k = 0; k < c->nlist; k++) {
		const struct env_rcpt *r = &c->env->rcpts[c->list[k]];
		struct diag d;
		diag_parse(r, in->kind, &d);
		buf_puts(b, "<");
		put_clean(b, r->addr, DSN_ADDR_MAX, c->utf8);
		buf_puts(b, ">\r\n    ");
		buf_reset(&c->tmp);
		if (d.smtp) {
			if (in->remote_mta && *in->remote_mta) {
				buf_puts(&c->tmp, "The mail server ");
				put_host(&c->tmp, in->remote_mta);
				buf_puts(&c->tmp, " said: ");
			} else {
				buf_puts(&c->tmp, "The next mail server said: ");
			}
			buf_printf(&c->tmp, "%d ", d.code);
			put_clean(&c->tmp, d.text, REPLY_MAX, c->utf8);
		} else if (*d.text) {
			buf_puts(&c->tmp, "Reason: ");
			put_clean(&c->tmp, d.text, REPLY_MAX, c->utf8);
		} else {
			buf_puts(&c->tmp, in->kind == DSN_FAILED ? "Delivery failed; no reason was recorded."
							 : "Delivery was deferred; no reason was recorded.");
		}
		put_wrapped(b, 4, 4, c->tmp.data, c->tmp.len);
		buf_puts(b, "\r\n");
	}
	if (c->more)
		text_par(c, b, "... and %zu more recipient%s, not listed in this report.", c->more,
			 c->more > 1 ? "s" : "");

	buf_reset(&date);
	if (c->env->arrival) {
		buf_puts(&date, " on ");
		put_date(&date, c->env->arrival);
	}
	text_par(c, b, "The message was received%s (%zu bytes); %s attached.", buf_cstr(&date),
		 in->len, c->full ? "it is" : "its header section is");
	if (c->capped)
		text_par(c, b, "The whole message was asked for, but it is larger than the %zu "
			 "bytes this system returns, so only its header section is attached.",
			 c->return_max);
	if (c->hdr_cut < c->hdr_len)
		text_par(c, b, "The header section (%zu bytes) was cut to %zu bytes.", c->hdr_len,
			 c->hdr_cut);
	text_par(c, b, "If you need help, contact the postmaster of your mail system and "
		 "include this report.");
	buf_truncate(b, b->len - 2);    /* no blank line before the delimiter */
	buf_free(&date);
}

/* The addressed recipient for Final-Recipient, Original-Recipient. */
static void put_recipient_field(struct buf *b, const char *name, const char *addr)
{
	buf_printf(b, "%s: ", name);
	if (dsn_is_8bit(addr, strnlen(addr, DSN_ADDR_MAX))) {
		buf_puts(b, "utf-8; ");
		put_utf8_xtext(b, addr, DSN_ADDR_MAX, LINE_MAX_OCTETS - strlen(name) - strlen(": utf-8; "));
	} else {
		buf_puts(b, "rfc822; ");
		put_clean(b, addr, DSN_ADDR_MAX, false);
	}
	buf_puts(b, "\r\n");
}

/* Original-Recipient from "addr-type;xtext"; nothing if it is malformed. */
static void put_orcpt(struct buf *b, const char *orcpt)
{
	const char *semi = strchr(orcpt, ';');
	if (!semi)
		return;
	const char *t = orcpt, *te = semi;
	while (t < te && (*t == ' ' || *t == '\t'))
		t++;
	while (te > t && (te[-1] == ' ' || te[-1] == '\t'))
		te--;
	if (te == t || te - t > ADDRTYPE_MAX)
		return;
	for (const char *q = t; q < te; q++)
		if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') ||
		      *q == '-'))
			return;
	const char *v = semi + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	if (!*v)
		return;
	buf_printf(b, "Original-Recipient: %.*s;", (int)(te - t), t);
	put_xtext(b, v, ORCPT_MAX);
	buf_puts(b, "\r\n");
}

static void build_status(struct ctx *c, struct buf *b)
{
	const struct dsn_input *in = c->in;

	buf_printf(b, "Reporting-MTA: dns; %s\r\n", c->host);
	if (c->env->envid && *c->env->envid) {
		buf_puts(b, "Original-Envelope-Id: ");
		put_xtext(b, c->env->envid, ENVID_MAX);
		buf_puts(b, "\r\n");
	}
	if (c->env->arrival) {
		buf_puts(b, "Arrival-Date: ");
		put_date(b, c->env->arrival);
		buf_puts(b, "\r\n");
	}

	for (size_t k = 0; k < c->nlist; k++) {
		const struct env_rcpt *r = &c->env->rcpts[c->list[k]];
		struct diag d;
		diag_parse(r, in->kind, &d);
		buf_puts(b, "\r\n");
		if (r->orcpt && *r->orcpt)
			put_orcpt(b, r->orcpt);
		put_recipient_field(b, "Final-Recipient", r->addr);
		buf_printf(b, "Action: %s\r\n", in->kind == DSN_FAILED ? "failed" : "delayed");
		buf_printf(b, "Status: %s\r\n", d.status);
		if (d.smtp && in->remote_mta && *in->remote_mta) {
			buf_puts(b, "Remote-MTA: dns; ");
			put_host(b, in->remote_mta);
			buf_puts(b, "\r\n");
		}
		buf_reset(&c->tmp);
		if (d.smtp) {
			buf_printf(&c->tmp, "smtp; %d", d.code);
			if (*d.text)
				buf_putc(&c->tmp, ' ');
		} else if (*d.text) {
			buf_puts(&c->tmp, "X-Rampart; ");
		}
		if (c->tmp.len) {
			put_clean(&c->tmp, d.text, REPLY_MAX, false);
			put_field(b, "Diagnostic-Code", c->tmp.data, c->tmp.len);
		}
		if (in->kind == DSN_DELAYED && in->retry_until) {
			buf_puts(b, "Will-Retry-Until: ");
			put_date(b, in->retry_until);
			buf_puts(b, "\r\n");
		}
	}
}

/* End of the line at p[i]: returns where its content ends, *next where the
 * following line starts.  CRLF, bare LF and bare CR all end a line. */
static size_t line_end(const char *p, size_t n, size_t i, size_t *next)
{
	size_t j = i;

	while (j < n && p[j] != '\r' && p[j] != '\n')
		j++;
	if (j + 1 < n && p[j] == '\r' && p[j + 1] == '\n')
		*next = j + 2;
	else
		*next = j < n ? j + 1 : n;
	return j;
}

/* Length of the header section of p[0..n): up to the first empty line (the
 * whole message if there is none). */
static size_t header_len(const char *p, size_t n)
{
	for (size_t i = 0, next; i < n; i = next)
		if (line_end(p, n, i, &next) == i)
			return i;
	return n;
}

/* The header section cut to at most max bytes at a field boundary. */
static size_t header_cut(const char *p, size_t hlen, size_t max)
{
	size_t cut = 0;

	if (hlen <= max)
		return hlen;
	for (size_t i = 0, next; i <= max && i < hlen; i = next) {
		if (p[i] != ' ' && p[i] != '\t')
			cut = i;
		line_end(p, hlen, i, &next);
	}
	return cut;
}

/* p[0..n) with NULs as spaces. */
static void put_bytes(struct buf *b, const char *p, size_t n)
{
	while (n) {
		const char *z = memchr(p, '\0', n);
		size_t k = z ? (size_t)(z - p) : n;
		buf_append(b, p, k);
		if (!z)
			break;
		buf_putc(b, ' ');
		p += k + 1;
		n -= k + 1;
	}
}

/* Copy p[0..n) as CRLF lines; a line over LINE_OCTETS is split, within the
 * first hdr bytes (the header section) as a folded continuation. */
static void put_original(struct buf *b, const char *p, size_t n, size_t hdr)
{
	for (size_t i = 0, next; i < n; i = next) {
		size_t e = line_end(p, n, i, &next), col = 0;
		bool header = i < hdr;
		for (size_t k = i; k < e;) {
			size_t take = e - k;
			if (col + take > LINE_OCTETS) {
				take = utf8_cut(p + k, LINE_OCTETS - col);
				put_bytes(b, p + k, take);
				buf_puts(b, header ? "\r\n " : "\r\n");
				col = header ? 1 : 0;
			} else {
				put_bytes(b, p + k, take);
				col += take;
			}
			k += take;
		}
		buf_puts(b, "\r\n");
	}
}

static void build_original(struct ctx *c, struct buf *b)
{
	if (c->full)
		put_original(b, c->in->message, c->in->len, c->hdr_len);
	else
		put_original(b, c->in->message, c->hdr_cut, c->hdr_cut);
}

/* ---- the report -------------------------------------------------------- */

bool dsn_wanted(const struct env_rcpt *r, enum dsn_kind kind)
{
	if (!r)
		return false;
	if (r->notify == 0)
		return true;            /* RFC 3461 default: FAILURE and DELAY */
	if (r->notify & DSN_NOTIFY_NEVER)
		return false;
	return (r->notify & (kind == DSN_FAILED ? DSN_NOTIFY_FAILURE : DSN_NOTIFY_DELAY)) != 0;
}

static bool has(const struct buf *b, const char *s)
{
	return b->len && memmem(b->data, b->len, s, strlen(s)) != NULL;
}

static void put_part(struct buf *m, const char *boundary, const char *headers,
		     const struct buf *body)
{
	buf_printf(m, "\r\n--%s\r\n%s", boundary, headers);
	if (dsn_is_8bit(body->data, body->len))
		buf_puts(m, "Content-Transfer-Encoding: 8bit\r\n");
	buf_puts(m, "\r\n");
	buf_append(m, body->data, body->len);
}

bool dsn_build(const struct dsn_input *in, struct buf *out, char *why, size_t whylen)
{
	struct ctx c;
	struct buf host = BUF_INIT, p1 = BUF_INIT, p2 = BUF_INIT, p3 = BUF_INIT, m = BUF_INIT;
	size_t *list = NULL;
	bool ok = false;

	if (why && whylen)
		why[0] = '\0';
	if (!in || !in->env || !out || (!in->message && in->len)) {
		set_why(why, whylen, "incomplete report input");
		return false;
	}
	const struct envelope *env = in->env;
	bool override = in->to && *in->to;
	const char *to = override ? in->to : env->sender;
	if (!override && (!env->sender || !*env->sender)) {
		set_why(why, whylen, "null sender: never bounce a bounce");
		return false;
	}
	if (in->reporting_mta)
		put_host(&host, in->reporting_mta);
	if (!host.len) {
		set_why(why, whylen, "no reporting MTA host name");
		return false;
	}

	memset(&c, 0, sizeof(c));
	c.in = in;
	c.env = env;
	c.utf8 = env->smtputf8;
	c.host = host.data;
	if (in->nrcpts)
		list = xmalloc(in->nrcpts * sizeof(*list));
	for (size_t k = 0; k < in->nrcpts; k++) {
		size_t i = in->rcpts[k];
		if (i >= env->nrcpt) {
			set_why(why, whylen, "recipient index %zu out of range (%zu recipients)", i,
				env->nrcpt);
			goto done;
		}
		if (override || dsn_wanted(&env->rcpts[i], in->kind)) {
			if (c.nlist < DSN_MAX_RCPTS)
				list[c.nlist++] = i;
			else
				c.more++;
		}
	}
	if (!c.nlist) {
		set_why(why, whylen, in->nrcpts ? "no listed recipient wants a %s report (NOTIFY)"
						: "no recipients listed for the %s report",
			in->kind == DSN_FAILED ? "failure" : "delay");
		goto done;
	}
	c.list = list;

	const char *msg = in->message ? in->message : "";
	c.return_max = in->return_max ? in->return_max : DSN_RETURN_MAX;
	c.hdr_len = header_len(msg, in->len);
	c.hdr_cut = header_cut(msg, c.hdr_len, DSN_HEADERS_MAX);
	bool want_full = in->kind == DSN_FAILED && env->ret && strcasecmp(env->ret, "FULL") == 0;
	c.full = want_full && in->len <= c.return_max;
	c.capped = want_full && !c.full;

	build_text(&c, &p1);
	build_status(&c, &p2);
	build_original(&c, &p3);

	char boundary[64], id[ID_LEN + 1];
	int tries = 0;
	do {
		if (++tries > BOUNDARY_TRIES) {
			set_why(why, whylen, "no MIME boundary absent from the content");
			goto done;
		}
		id_new(id);
		snprintf(boundary, sizeof(boundary), "=_rampart_%s", id);
	} while (has(&p1, boundary) || has(&p2, boundary) || has(&p3, boundary));

	bool eight = dsn_is_8bit(p1.data, p1.len) || dsn_is_8bit(p3.data, p3.len);
	buf_puts(&m, "From: Mail Delivery System <");
	if (in->postmaster && *in->postmaster)
		put_clean(&m, in->postmaster, POSTMASTER_MAX, c.utf8);
	else
		buf_printf(&m, "MAILER-DAEMON@%s", c.host);
	buf_puts(&m, ">\r\nTo: <");
	put_clean(&m, to, DSN_ADDR_MAX, c.utf8);
	buf_puts(&m, ">\r\n");
	buf_printf(&m, "Subject: %s\r\n", in->kind == DSN_FAILED ? "Undelivered Mail Returned to Sender"
								  : "Delayed Mail (still being retried)");
	buf_puts(&m, "Date: ");
	put_date(&m, in->now);
	id_new(id);
	buf_printf(&m, "\r\nMessage-ID: <%s@%s>\r\n", id, c.host);
	buf_puts(&m, "Auto-Submitted: auto-replied\r\n"
		     "MIME-Version: 1.0\r\n"
		     "Content-Type: multipart/report; report-type=delivery-status;\r\n");
	buf_printf(&m, "\tboundary=\"%s\"\r\n", boundary);
	if (eight)
		buf_puts(&m, "Content-Transfer-Encoding: 8bit\r\n");
	buf_puts(&m, "\r\nThis is a MIME-encapsulated message.\r\n");

	put_part(&m, boundary, dsn_is_8bit(p1.data, p1.len)
			       ? "Content-Description: Notification\r\n"
				 "Content-Type: text/plain; charset=utf-8\r\n"
			       : "Content-Description: Notification\r\n"
				 "Content-Type: text/plain; charset=us-ascii\r\n", &p1);
	put_part(&m, boundary, "Content-Description: Delivery report\r\n"
			       "Content-Type: message/delivery-status\r\n", &p2);
	put_part(&m, boundary, c.full ? "Content-Description: Undelivered message\r\n"
					"Content-Type: message/rfc822\r\n"
				      : "Content-Description: Message headers\r\n"
					"Content-Type: text/rfc822-headers\r\n", &p3);
	buf_printf(&m, "\r\n--%s--\r\n", boundary);

	if (!buf_append(out, m.data, m.len)) {
		set_why(why, whylen, "report of %zu bytes exceeds the output limit", m.len);
		goto done;
	}
	ok = true;
done:
	free(list);
	buf_free(&c.tmp);
	buf_free(&host);
	buf_free(&p1);
	buf_free(&p2);
	buf_free(&p3);
	buf_free(&m);
	return ok;
}
