/*
 * spamrules.c — scored content rules (spamrules.h).
 */
#include "spamrules.h"
#include "header.h"
#include "mime.h"
#include "msgtext.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/rx.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FIELDS_MAX 1000         /* header fields looked at: all SMTP takes by default (max_headers) */
#define FIELD_MAX (16 * 1024)   /* bytes of a decoded field value */

enum kind { K_HEADER, K_BODY, K_URI };

struct rule {
	enum kind kind;
	char *field;                    /* K_HEADER: the field name, "*" for all */
	char name[SPAMRULE_NAME_MAX + 1];
	char *desc;
	double score;
	struct rx *re;
};

struct spamrules {
	struct rule *r;
	size_t n, cap;
};

static bool parse(void *arg, unsigned lineno, char *line, char *why, size_t whylen)
{
	(void)lineno;
	struct spamrules *R = arg;
	struct rule r;
	memset(&r, 0, sizeof(r));
	char *p = line;
	char *kind = p;
	while (*p && !isspace((unsigned char)*p))
		p++;
	if (*p)
		*p++ = '\0';
	if (strncasecmp(kind, "header:", 7) == 0 && kind[7]) {
		r.kind = K_HEADER;
		r.field = xstrdup(kind + 7);
	} else if (strcasecmp(kind, "body") == 0) {
		r.kind = K_BODY;
	} else if (strcasecmp(kind, "uri") == 0) {
		r.kind = K_URI;
	} else {
		snprintf(why, whylen, "unknown kind '%s' (expected header:FIELD, header:*, body or uri)", kind);
		return false;
	}
	while (isspace((unsigned char)*p))
		p++;
	char *name = p;
	while (*p && !isspace((unsigned char)*p))
		p++;
	if (*p)
		*p++ = '\0';
	size_t nl = strlen(name);
	bool name_ok = nl > 0 && nl <= SPAMRULE_NAME_MAX;
	for (size_t i = 0; i < nl && name_ok; i++)
		name_ok = isalnum((unsigned char)name[i]) || name[i] == '_';
	if (!name_ok) {
		snprintf(why, whylen, "expected a rule name (letters, digits and '_', up to %d) after the kind",
			 SPAMRULE_NAME_MAX);
		free(r.field);
		return false;
	}
	for (size_t i = 0; i < R->n; i++)
		if (strcmp(R->r[i].name, name) == 0) {
			snprintf(why, whylen, "rule %s is already defined", name);
			free(r.field);
			return false;
		}
	snprintf(r.name, sizeof(r.name), "%s", name);
	while (isspace((unsigned char)*p))
		p++;
	const char *cp = p;
	char rwhy[300];
	r.re = rx_parse(&cp, rwhy, sizeof(rwhy));
	if (!r.re) {
		snprintf(why, whylen, "%s: %s", name, rwhy);
		free(r.field);
		return false;
	}
	p = line + (cp - line);
	while (isspace((unsigned char)*p))
		p++;
	char *end;
	r.score = strtod(p, &end);
	if (end == p || (*end && !isspace((unsigned char)*end)) || !isfinite(r.score) || r.score < -100 ||
	    r.score > 100) {
		snprintf(why, whylen, "%s: expected a score from -100 to 100 after the pattern", name);
		rx_free(r.re);
		free(r.field);
		return false;
	}
	p = end;
	while (isspace((unsigned char)*p))
		p++;
	size_t dl = strlen(p);
	while (dl && isspace((unsigned char)p[dl - 1]))
		p[--dl] = '\0';
	r.desc = xstrdup(p);
	if (R->n == R->cap) {
		R->cap = R->cap ? 2 * R->cap : 32;
		R->r = xrealloc(R->r, R->cap * sizeof(*R->r));
	}
	R->r[R->n++] = r;
	return true;
}

struct spamrules *spamrules_load(const char *path, char *why, size_t whylen)
{
	struct spamrules *R = xcalloc(1, sizeof(*R));
	if (!rx_read_rules(path, SPAMRULES_MAX, parse, R, why, whylen)) {
		spamrules_free(R);
		return NULL;
	}
	return R;
}

void spamrules_free(struct spamrules *R)
{
	if (!R)
		return;
	for (size_t i = 0; i < R->n; i++) {
		rx_free(R->r[i].re);
		free(R->r[i].field);
		free(R->r[i].desc);
	}
	free(R->r);
	free(R);
}

size_t spamrules_count(const struct spamrules *R)
{
	return R ? R->n : 0;
}

struct eval {
	const struct spamrules *R;
	struct rx_scratch *s;
	bool *hit;
	unsigned cut;
};

static void try_rule(struct eval *E, size_t i, const char *s, size_t n)
{
	if (E->hit[i])
		return;
	int rc = rx_match(E->R->r[i].re, s, n, E->s);
	if (rc > 0)
		E->hit[i] = true;
	else if (rc < 0)
		E->cut++;
}

double spamrules_eval(const struct spamrules *R, const char *msg, const struct msgtext *t, struct rx_scratch *s,
		      struct spamrule_hit *hits, size_t max, size_t *nhits, unsigned *cut)
{
	*nhits = 0;
	if (cut)
		*cut = 0;
	if (!R || R->n == 0)
		return 0;
	struct eval E = { R, s, xcalloc(R->n, sizeof(bool)), 0 };
	bool any_header = false;
	for (size_t i = 0; i < R->n; i++)
		any_header |= R->r[i].kind == K_HEADER;
	if (any_header) {
		const struct mime_part *root = &t->mime->parts[0];
		struct buf v = BUF_INIT, line = BUF_INIT;
		buf_set_limit(&v, FIELD_MAX);
		size_t pos = 0;
		unsigned nf = 0;
		struct hdr_field f;
		while (nf++ < FIELDS_MAX && hdr_next(msg + root->hdr_off, root->hdr_len, &pos, &f)) {
			buf_reset(&v);
			const char *val = f.value;
			size_t vl = f.value_len;
			while (vl && (*val == ' ' || *val == '\t')) {
				val++;
				vl--;
			}
			mime_header_utf8(val, vl, &v);
			bool line_made = false;
			for (size_t i = 0; i < R->n; i++) {
				const struct rule *r = &R->r[i];
				if (r->kind != K_HEADER)
					continue;
				if (strcmp(r->field, "*") == 0) {
					if (!line_made) {
						buf_reset(&line);
						buf_append(&line, f.name, f.name_len);
						buf_puts(&line, ": ");
						buf_append(&line, v.data ? v.data : "", v.len);
						line_made = true;
					}
					try_rule(&E, i, line.data, line.len);
				} else if (hdr_is(&f, r->field)) {
					try_rule(&E, i, v.data ? v.data : "", v.len);
				}
			}
		}
		buf_free(&v);
		buf_free(&line);
	}
	for (size_t i = 0; i < R->n; i++) {
		const struct rule *r = &R->r[i];
		if (r->kind == K_BODY)
			try_rule(&E, i, t->text.data ? t->text.data : "", t->text.len);
		else if (r->kind == K_URI)
			for (const char *u = msgtext_url(t, NULL); u && !E.hit[i]; u = msgtext_url(t, u))
				try_rule(&E, i, u, strlen(u));
	}
	double total = 0;
	for (size_t i = 0; i < R->n; i++) {
		if (!E.hit[i])
			continue;
		total += R->r[i].score;
		if (*nhits < max) {
			hits[*nhits].name = R->r[i].name;
			hits[*nhits].desc = R->r[i].desc;
			hits[*nhits].score = R->r[i].score;
			(*nhits)++;
		}
	}
	if (cut)
		*cut = E.cut;
	free(E.hit);
	return total;
}
