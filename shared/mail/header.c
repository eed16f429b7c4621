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
