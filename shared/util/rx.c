/*
 * rx.c — rules-file regular expressions on PCRE2 (rx.h).
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "rx.h"
#include "alloc.h"
#include "buf.h"
#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <pcre2.h>

#define RULE_LINE_MAX 4096
#define MATCH_LIMIT 100000

struct rx {
	pcre2_code *re;
};

struct rx_scratch {
	pcre2_match_data *md;
	pcre2_match_context *mctx;
};

struct rx *rx_parse(const char **pp, char *why, size_t whylen)
{
	const char *p = *pp;
	if (*p != '/') {
		snprintf(why, whylen, "expected /PATTERN/FLAGS");
		return NULL;
	}
	p++;
	struct buf pat = BUF_INIT;
	for (; *p && *p != '/'; p++) {
		if (*p == '\\' && p[1] == '/') {
			buf_putc(&pat, '/');
			p++;
			continue;
		}
		if (*p == '\\' && p[1])
			buf_putc(&pat, *p++);
		buf_putc(&pat, *p);
	}
	if (*p != '/') {
		buf_free(&pat);
		snprintf(why, whylen, "the pattern has no closing '/'");
		return NULL;
	}
	p++;
	uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF;
	for (; *p && !isspace((unsigned char)*p); p++) {
		if (*p == 'i')
			opts |= PCRE2_CASELESS;
		else if (*p == 'x')
			opts |= PCRE2_EXTENDED;
		else if (*p == 's')
			opts |= PCRE2_DOTALL;
		else if (*p == 'm')
			opts |= PCRE2_MULTILINE;
		else {
			buf_free(&pat);
			snprintf(why, whylen, "unknown flag '%c' (expected i, x, s or m)", *p);
			return NULL;
		}
	}
	int err;
	PCRE2_SIZE off;
	pcre2_code *re = pcre2_compile((PCRE2_SPTR)buf_cstr(&pat), pat.len, opts, &err, &off, NULL);
	buf_free(&pat);
	if (!re) {
		PCRE2_UCHAR msg[256];
		pcre2_get_error_message(err, msg, sizeof(msg));
		snprintf(why, whylen, "bad pattern at offset %zu: %s", (size_t)off, (char *)msg);
		return NULL;
	}
	pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);     /* fine without the JIT */
	struct rx *r = xcalloc(1, sizeof(*r));
	r->re = re;
	*pp = p;
	return r;
}

void rx_free(struct rx *r)
{
	if (!r)
		return;
	pcre2_code_free(r->re);
	free(r);
}

struct rx_scratch *rx_scratch_new(void)
{
	struct rx_scratch *s = xcalloc(1, sizeof(*s));
	s->md = pcre2_match_data_create(4, NULL);
	s->mctx = pcre2_match_context_create(NULL);
	if (!s->md || !s->mctx)
		log_fatal(NULL, NULL, "pcre2_alloc_failed", "what=%s", "match data");
	pcre2_set_match_limit(s->mctx, MATCH_LIMIT);
	return s;
}

void rx_scratch_free(struct rx_scratch *s)
{
	if (!s)
		return;
	pcre2_match_data_free(s->md);
	pcre2_match_context_free(s->mctx);
	free(s);
}

int rx_match(const struct rx *r, const char *s, size_t n, struct rx_scratch *m)
{
	int rc = pcre2_match(r->re, (PCRE2_SPTR)s, n, 0, 0, m->md, m->mctx);
	return rc >= 0 ? 1 : rc == PCRE2_ERROR_NOMATCH ? 0 : -1;
}

bool rx_read_rules(const char *path, size_t max_rules,
		   bool (*fn)(void *arg, unsigned lineno, char *line, char *why, size_t whylen), void *arg,
		   char *why, size_t whylen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return false;
	}
	char line[RULE_LINE_MAX + 2];
	unsigned lineno = 0;
	size_t n = 0;
	bool ok = true;
	while (ok && fgets(line, sizeof(line), f)) {
		lineno++;
		size_t l = strlen(line);
		if (l && line[l - 1] != '\n' && !feof(f)) {
			snprintf(why, whylen, "%s:%u: line longer than %d bytes", path, lineno, RULE_LINE_MAX);
			ok = false;
			break;
		}
		while (l && (line[l - 1] == '\n' || line[l - 1] == '\r'))
			line[--l] = '\0';
		char *p = line;
		while (isspace((unsigned char)*p))
			p++;
		if (!*p || *p == '#')
			continue;
		if (n == max_rules) {
			snprintf(why, whylen, "%s:%u: more than %zu rules", path, lineno, max_rules);
			ok = false;
			break;
		}
		char rwhy[400] = "";
		if (!fn(arg, lineno, p, rwhy, sizeof(rwhy))) {
			snprintf(why, whylen, "%s:%u: %s", path, lineno, rwhy);
			ok = false;
			break;
		}
		n++;
	}
	if (ok && ferror(f)) {
		snprintf(why, whylen, "%s: read error", path);
		ok = false;
	}
	fclose(f);
	return ok;
}
