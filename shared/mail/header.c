/*
 * header.c — walking the header section of a message (header.h).
 */
#include <string.h>
#include <strings.h>

#include "header.h"

/* End of the line starting at i: just past its '\n', or n. */
static size_t line_next(const char *msg, size_t n, size_t i)
{
	const char *nl = memchr(msg + i, '\n', n - i);
	return nl ? (size_t)(nl - msg) + 1 : n;
}

static bool blank_line(const char *msg, size_t i, size_t next)
{
	size_t l = next - i;
	return l == 0 || (l == 1 && msg[i] == '\n') || (l == 2 && msg[i] == '\r' && msg[i + 1] == '\n');
}

size_t hdr_body_start(const char *msg, size_t len)
{
	for (size_t i = 0; i < len; ) {
		size_t next = line_next(msg, len, i);
		if (blank_line(msg, i, next) && next > i)
			return next;
		i = next;
	}
	return len;
}

bool hdr_next(const char *msg, size_t hlen, size_t *pos, struct hdr_field *f)
{
	size_t i = *pos;
	while (i < hlen) {
		size_t next = line_next(msg, hlen, i);
		if (blank_line(msg, i, next))
			break;
		/* the field's own lines: this one and the continuations after it */
		size_t end = next;
		while (end < hlen && (msg[end] == ' ' || msg[end] == '\t'))
			end = line_next(msg, hlen, end);
		const char *colon = msg[i] == ' ' || msg[i] == '\t' ? NULL : memchr(msg + i, ':', next - i);
		if (!colon) {
			i = end;
			continue;
		}
		size_t ne = (size_t)(colon - msg);
		while (ne > i && (msg[ne - 1] == ' ' || msg[ne - 1] == '\t'))
			ne--;
		size_t ve = end;
		if (ve > i && msg[ve - 1] == '\n')
			ve--;
		if (ve > i && msg[ve - 1] == '\r')
			ve--;
		f->name = msg + i;
		f->name_len = ne - i;
		f->value = colon + 1;
		f->value_len = ve - (size_t)(colon + 1 - msg);
		f->off = i;
		f->len = end - i;
		*pos = end;
		return true;
	}
	*pos = i;
	return false;
}

bool hdr_is(const struct hdr_field *f, const char *name)
{
	size_t n = strlen(name);
	return f->name_len == n && strncasecmp(f->name, name, n) == 0;
}

/* ---- address lists ------------------------------------------------------- */

/* Past the quoted string or comment opening at v[i]; len when unterminated. */
static size_t skip_delimited(const char *v, size_t len, size_t i)
{
	char open = v[i], close = open == '(' ? ')' : '"';
	int depth = 1;
	for (i++; i < len; i++) {
		if (v[i] == '\\') {
			i++;
			continue;
		}
		if (open == '(' && v[i] == '(')
			depth++;
		else if (v[i] == close && --depth == 0)
			return i + 1;
	}
	return len + 1;
}

/* One mailbox's text v[0..n): the angle-addr if there is one, else the
 * addr-spec with comments and blanks removed (quoted local parts kept). */
static bool one_mailbox(const char *v, size_t n, char *out, bool *bad)
{
	size_t o = 0;
	const char *lt = NULL;
	for (size_t i = 0; i < n; ) {
		if (v[i] == '"' || v[i] == '(') {
			size_t e = skip_delimited(v, n, i);
			if (e > n) {
				*bad = true;
				return false;
			}
			i = e;
		} else if (v[i] == '<') {
			lt = v + i;
			break;
		} else {
			i++;
		}
	}
	size_t from = 0, to = n;
	if (lt) {
		from = (size_t)(lt - v) + 1;
		const char *gt = memchr(lt, '>', n - from + 1);
		if (!gt) {
			*bad = true;
			return false;
		}
		to = (size_t)(gt - v);
		/* after the angle-addr only blanks and comments: text there
		 * ("<a@x> <b@y>", "<a@x>b@y") is a second address a mail
		 * reader may show instead of the one checked */
		for (size_t i = to + 1; i < n; ) {
			if (v[i] == '(') {
				size_t e = skip_delimited(v, n, i);
				if (e > n) {
					*bad = true;
					return false;
				}
				i = e;
			} else if (v[i] == ' ' || v[i] == '\t' || v[i] == '\r' || v[i] == '\n') {
				i++;
			} else {
				*bad = true;
				return false;
			}
		}
	}
	for (size_t i = from; i < to; ) {
		unsigned char c = (unsigned char)v[i];
		if (c == '(') {
			size_t e = skip_delimited(v, to, i);
			if (e > to) {
				*bad = true;
				return false;
			}
			i = e;
			continue;
		}
		if (c == '"') {
			size_t e = skip_delimited(v, to, i);
			if (e > to) {
				*bad = true;
				return false;
			}
			for (; i < e && o < HDR_ADDR_MAX; i++)
				out[o++] = v[i];
			i = e;
			continue;
		}
		if (c != ' ' && c != '\t' && c != '\r' && c != '\n' && o < HDR_ADDR_MAX)
			out[o++] = (char)c;
		i++;
	}
	out[o] = '\0';
	return o > 0;
}

bool hdr_addresses(const char *value, size_t len, bool (*fn)(void *arg, const char *addr), void *arg)
{
	char addr[HDR_ADDR_MAX + 1];
	size_t start = 0;
	bool in_angle = false;
	/* a NUL would cut an address short of what a reader sees
	 * ("<\0ceo@bank.example>" checked as "") */
	if (memchr(value, '\0', len))
		return false;
	for (size_t i = 0; i <= len; ) {
		char c = i < len ? value[i] : ',';
		if (i < len && (c == '"' || c == '(')) {
			size_t e = skip_delimited(value, len, i);
			if (e > len)
				return false;
			i = e;
			continue;
		}
		if (c == '<')
			in_angle = true;
		else if (c == '>')
			in_angle = false;
		if (!in_angle && c == ':') {
			start = i + 1;          /* a group's display name ends here */
		} else if (!in_angle && (c == ',' || c == ';')) {
			bool bad = false;
			if (one_mailbox(value + start, i - start, addr, &bad) && !fn(arg, addr))
				return true;
			if (bad)
				return false;
			start = i + 1;
		}
		i++;
	}
	return !in_angle;
}
