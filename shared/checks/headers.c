/*
 * headers.c — header regex rules (Maraboli DM23), on PCRE2.
 *
 * When the header section is complete (PHASE_HEADERS) every header field, unfolded ("Name: value",
 * the line breaks of folding removed), is matched against the rules of
 * rules_file, in order; the first rule that matches a field decides for
 * it, and the first field whose rule says more than "continue" decides for
 * the message.  A rules file holds one rule per line ('#' comments, blank
 * lines ignored):
 *
 *     /PATTERN/FLAGS  ACTION  [TEXT]
 *
 * PATTERN is a PCRE2 regular expression ('/' inside it written "\/");
 * FLAGS are any of i (caseless), x (extended), s (dot-all), m (multi-line)
 * (shared/util/rx).  ACTION is one of
 *     reject      550 5.7.1 TEXT (default "Message content rejected")
 *     tempfail    451 4.7.1 TEXT
 *     discard     accept and drop the message (logged)
 *     quarantine  accept into quarantine
 *     tag         let it through with an X-Rampart-Header-Rule header
 *                 naming the rule (file:line) and TEXT
 *     accept      no further rule is applied to this message
 * A bad rule stops start-up with file:line, the PCRE2 error and where in
 * the pattern.  Matching is bounded (a match limit per field, so a
 * pathological pattern cannot stall the stage: over the limit the rule
 * does not match and a warning is logged) and uses the JIT when PCRE2 has
 * it.
 */
#include "check.h"
#include "../mail/header.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/log.h"
#include "../util/rx.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RULES_MAX       10000
#define FIELD_MAX       (64 * 1024)

struct headers_params {
	char *rules_file;
};

static const struct param_def headers_param_defs[] = {
	{ "rules_file", PT_STR, "", 0, 0, NULL, offsetof(struct headers_params, rules_file),
	  "file of header rules, one per line: /PATTERN/FLAGS ACTION [TEXT] "
	  "(ACTION: reject, tempfail, discard, quarantine, tag, accept)" },
	PARAM_END
};

static const struct param_set headers_params_set = {
	"check.headers", "regular-expression rules on header fields (PCRE2)", headers_param_defs,
	sizeof(struct headers_params)
};

enum action { A_REJECT, A_TEMPFAIL, A_DISCARD, A_QUARANTINE, A_TAG, A_ACCEPT };
static const char *const action_names[] = { "reject", "tempfail", "discard", "quarantine", "tag", "accept", NULL };

struct rule {
	struct rx *re;
	enum action action;
	char *text;
	unsigned line;
};

struct headers {
	const struct headers_params *p;
	struct rule *rules;
	size_t n, cap;
	struct rx_scratch *scratch;
};

static void headers_free(void *inst)
{
	struct headers *h = inst;
	if (!h)
		return;
	for (size_t i = 0; i < h->n; i++) {
		rx_free(h->rules[i].re);
		free(h->rules[i].text);
	}
	free(h->rules);
	rx_scratch_free(h->scratch);
	free(h);
}

/* Parse one non-empty rule line into r; false with why. */
static bool parse_rule(char *line, struct rule *r, char *why, size_t whylen)
{
	if (*line != '/') {
		snprintf(why, whylen, "expected /PATTERN/FLAGS ACTION [TEXT]");
		return false;
	}
	const char *cp = line;
	r->re = rx_parse(&cp, why, whylen);
	if (!r->re)
		return false;
	char *p = line + (cp - line);
	while (isspace((unsigned char)*p))
		p++;
	char *act = p;
	while (*p && !isspace((unsigned char)*p))
		p++;
	if (*p)
		*p++ = '\0';
	while (isspace((unsigned char)*p))
		p++;
	int a = -1;
	for (int i = 0; action_names[i]; i++)
		if (strcasecmp(act, action_names[i]) == 0)
			a = i;
	if (a < 0) {
		rx_free(r->re);
		r->re = NULL;
		snprintf(why, whylen, "unknown action '%s' (expected reject, tempfail, discard, quarantine, tag or accept)",
			 act);
		return false;
	}
	r->action = (enum action)a;
	size_t tl = strlen(p);
	while (tl && isspace((unsigned char)p[tl - 1]))
		p[--tl] = '\0';
	r->text = xstrdup(p);
	return true;
}

static bool add_rule(void *arg, unsigned lineno, char *line, char *why, size_t whylen)
{
	struct headers *h = arg;
	if (h->n == h->cap) {
		h->cap = h->cap ? h->cap * 2 : 16;
		h->rules = xrealloc(h->rules, h->cap * sizeof(*h->rules));
	}
	struct rule *r = &h->rules[h->n];
	memset(r, 0, sizeof(*r));
	if (!parse_rule(line, r, why, whylen))
		return false;
	r->line = lineno;
	h->n++;
	return true;
}

static void *headers_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	(void)env;
	struct headers *h = xcalloc(1, sizeof(*h));
	h->p = params;
	if (h->p->rules_file && *h->p->rules_file &&
	    !rx_read_rules(h->p->rules_file, RULES_MAX, add_rule, h, why, whylen)) {
		headers_free(h);
		return NULL;
	}
	h->scratch = rx_scratch_new();
	return h;
}

/* The first rule matching field (len bytes), or NULL. */
static const struct rule *match(struct headers *h, const struct check_ctx *ctx, const char *field, size_t len)
{
	for (size_t i = 0; i < h->n; i++) {
		int rc = rx_match(h->rules[i].re, field, len, h->scratch);
		if (rc > 0)
			return &h->rules[i];
		if (rc < 0)
			log_warn(ctx->sid, ctx->qid, "headers.match_error", "file=%s line=%u error=%d",
				 h->p->rules_file, h->rules[i].line, rc);
	}
	return NULL;
}

static void headers_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct headers *h = inst;
	if (!h->n || !ctx->data) {
		check_continue(call);
		return;
	}
	struct buf field = BUF_INIT;
	const struct rule *hit = NULL;
	char shown[120] = "";
	struct hdr_field f;
	for (size_t pos = 0; !hit && hdr_next(ctx->data, ctx->header_bytes, &pos, &f); ) {
		/* the field unfolded: its line ends removed, bounded */
		buf_reset(&field);
		const char *q = f.name, *end = f.value + f.value_len;
		while (q < end && field.len < FIELD_MAX) {
			const char *nl = memchr(q, '\n', (size_t)(end - q));
			size_t l = (size_t)((nl ? nl : end) - q);
			while (l && q[l - 1] == '\r')
				l--;
			if (l > FIELD_MAX - field.len)
				l = FIELD_MAX - field.len;
			buf_append(&field, q, l);
			q = nl ? nl + 1 : end;
		}
		const struct rule *r = match(h, ctx, field.data, field.len);
		if (r && r->action == A_ACCEPT)
			break;
		if (r) {
			hit = r;
			snprintf(shown, sizeof(shown), "%.*s", (int)(field.len > 100 ? 100 : field.len), field.data);
			for (char *s = shown; *s; s++)
				if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
					*s = '?';
		}
	}
	buf_free(&field);
	if (!hit) {
		check_continue(call);
		return;
	}
	const char *text = hit->text[0] ? hit->text : NULL;
	struct verdict v = { 0 };
	switch (hit->action) {
	case A_REJECT:
		check_reject(call, 550, "5.7.1", "%s", text ? text : "Message content rejected");
		return;
	case A_TEMPFAIL:
		check_reject(call, 451, "4.7.1", "%s", text ? text : "Message content deferred, try again later");
		return;
	case A_DISCARD:
	case A_QUARANTINE:
		v.kind = hit->action == A_DISCARD ? V_DISCARD : V_QUARANTINE;
		snprintf(v.reason, sizeof(v.reason), "rule %s:%u matched \"%s\"%s%s", h->p->rules_file, hit->line,
			 shown, text ? ": " : "", text ? text : "");
		check_done(call, &v);
		return;
	case A_TAG: {
		char value[600];
		snprintf(value, sizeof(value), "%s:%u%s%s", h->p->rules_file, hit->line, text ? "; " : "", text ? text : "");
		check_ctx_add_header(ctx, "X-Rampart-Header-Rule", value);
		log_info(ctx->sid, ctx->qid, "headers.tag", "file=%s line=%u field=%s", h->p->rules_file, hit->line, shown);
		check_continue(call);
		return;
	}
	case A_ACCEPT:
		break;
	}
	check_continue(call);
}

const struct check_def check_headers = {
	.name = "headers",
	.doc = "regular-expression rules on header fields (PCRE2)",
	.params = &headers_params_set,
	.init = headers_init,
	.free = headers_free,
	.hooks = { [PHASE_HEADERS] = headers_message },
};
