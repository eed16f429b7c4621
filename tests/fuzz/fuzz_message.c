/*
 * fuzz_message.c — libFuzzer target: a message as the content filters
 * read it.  The header walker (fields, addresses, RFC 2047 words), the
 * MIME parser with small and default bounds, every part decoded, its
 * charset converted and its HTML turned to text, the URLs and their
 * hosts, the filters' text (msgtext) and the Bayesian tokens.  What it
 * checks besides the sanitizers: parts lie inside the message, children
 * after their parents, and every output stays within its bound.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mail/bayes.h"
#include "mail/header.h"
#include "mail/mime.h"
#include "mail/msgtext.h"
#include "util/buf.h"

static bool each_addr(void *arg, const char *addr)
{
	size_t *n = arg;
	if (strlen(addr) > HDR_ADDR_MAX)
		abort();
	return ++*n < 100;
}

static void each_url(void *arg, const char *u, size_t n)
{
	(void)arg;
	char host[256];
	if (mime_url_host(u, n, host, sizeof(host)) && strlen(host) >= sizeof(host))
		abort();
}

static void each_token(void *arg, const char *tok, size_t len)
{
	size_t *n = arg;
	if (len == 0 || len > BAYES_TOKEN_MAX || memchr(tok, '\0', len))
		abort();
	++*n;
}

static void headers(const char *msg, size_t len)
{
	size_t hlen = hdr_body_start(msg, len), pos = 0;
	if (hlen > len)
		abort();
	struct hdr_field f;
	struct buf out = BUF_INIT;
	buf_set_limit(&out, 4096);
	while (hdr_next(msg, hlen, &pos, &f)) {
		if (f.off + f.len > hlen || f.value < msg || f.value + f.value_len > msg + hlen)
			abort();
		if (hdr_is(&f, "from") || hdr_is(&f, "to") || hdr_is(&f, "cc") || hdr_is(&f, "reply-to")) {
			size_t n = 0;
			(void)hdr_addresses(f.value, f.value_len, each_addr, &n);
		}
		buf_reset(&out);
		mime_header_utf8(f.value, f.value_len, &out);
		if (out.len > 4096)
			abort();
	}
	buf_free(&out);
}

static void parts(const char *msg, size_t len, const struct mime_limits *lim)
{
	struct mime_msg *m = mime_parse(msg, len, lim);
	if (!m || m->nparts == 0)
		abort();
	struct buf dec = BUF_INIT, text = BUF_INIT, html = BUF_INIT;
	buf_set_limit(&dec, 64 * 1024);
	buf_set_limit(&text, 64 * 1024);
	buf_set_limit(&html, 64 * 1024);
	for (size_t i = 0; i < m->nparts; i++) {
		const struct mime_part *p = &m->parts[i];
		if (p->hdr_off + p->hdr_len > len || p->body_off + p->body_len > len)
			abort();
		if (i > 0 && p->parent >= i)
			abort();
		if (lim && p->depth > lim->max_depth)
			abort();
		if (p->multipart || p->message)
			continue;
		buf_reset(&dec);
		(void)mime_decode(msg, p, &dec);
		bool is_html = false;
		if (!mime_is_text(p, &is_html))
			continue;
		buf_reset(&text);
		(void)mime_to_utf8(p->charset, dec.data ? dec.data : "", dec.len, &text);
		if (is_html) {
			buf_reset(&html);
			mime_html_text(text.data ? text.data : "", text.len, &html, each_url, NULL);
		} else {
			mime_text_urls(text.data ? text.data : "", text.len, each_url, NULL);
		}
		if (dec.len > 64 * 1024 || text.len > 64 * 1024 || html.len > 64 * 1024)
			abort();
	}
	buf_free(&dec);
	buf_free(&text);
	buf_free(&html);
	mime_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fuzz_quiet_logs();
	/* the parsers take a length, never a NUL: give them an exact copy so
	 * a read past the end is caught */
	char *msg = malloc(size ? size : 1);
	if (!msg)
		return 0;
	memcpy(msg, data, size);

	headers(msg, size);
	parts(msg, size, NULL);
	struct mime_limits small = { 3, 8, 256 };
	parts(msg, size, &small);

	struct msgtext t;
	msgtext_build(&t, msg, size, 8192, 20);
	/* 8 KiB decoded; in UTF-8 a legacy charset's byte may take up to 4
	 * (msgtext.h) */
	if (t.text.len > 4 * 8192 + 64 || t.nurls > 20)
		abort();
	size_t nurls = 0;
	for (const char *u = msgtext_url(&t, NULL); u; u = msgtext_url(&t, u))
		nurls++;
	if (nurls != t.nurls)
		abort();
	struct bayes_tok_opts o = { 500, 8192 };
	size_t ntok = 0;
	bayes_tokens_of(msg, &t, &o, each_token, &ntok);
	if (ntok > 500)
		abort();
	msgtext_free(&t);
	free(msg);
	return 0;
}
