/*
 * msgtext.c — a message's text and links, once (msgtext.h).
 */
#include "msgtext.h"
#include "mime.h"

#include <string.h>

#define DEF_MAX_TEXT (256 * 1024)
#define DEF_MAX_URLS 1000

struct url_ctx {
	struct msgtext *t;
	size_t max;
};

static void add_url(void *arg, const char *u, size_t n)
{
	struct url_ctx *c = arg;
	if (c->t->nurls >= c->max || n == 0 || memchr(u, '\0', n))
		return;
	buf_append(&c->t->urls, u, n);
	buf_putc(&c->t->urls, '\0');
	c->t->nurls++;
}

void msgtext_build(struct msgtext *t, const char *msg, size_t len, size_t max_text, size_t max_urls)
{
	memset(t, 0, sizeof(*t));
	if (!max_text)
		max_text = DEF_MAX_TEXT;
	struct url_ctx uc = { t, max_urls ? max_urls : DEF_MAX_URLS };
	t->mime = mime_parse(msg, len, NULL);
	buf_set_limit(&t->text, 4 * max_text + 64);      /* legacy charsets grow in UTF-8 */
	struct buf raw = BUF_INIT, utf = BUF_INIT;
	size_t left = max_text;
	for (size_t i = 0; i < t->mime->nparts && left > 0; i++) {
		const struct mime_part *p = &t->mime->parts[i];
		bool html;
		if (p->multipart || p->message || !mime_is_text(p, &html))
			continue;
		buf_reset(&raw);
		buf_set_limit(&raw, left);
		if (!mime_decode(msg, p, &raw))
			t->bad_encoding = true;
		left -= raw.len < left ? raw.len : left;
		buf_reset(&utf);
		buf_set_limit(&utf, 4 * raw.len + 64);
		if (!mime_to_utf8(p->charset, raw.data ? raw.data : "", raw.len, &utf))
			t->unknown_charset = true;
		if (t->text.len)
			buf_putc(&t->text, '\n');
		if (html) {
			t->html = true;
			mime_html_text(utf.data ? utf.data : "", utf.len, &t->text, add_url, &uc);
		} else {
			size_t from = t->text.len;
			buf_append(&t->text, utf.data ? utf.data : "", utf.len);
			if (t->text.len > from)
				mime_text_urls(t->text.data + from, t->text.len - from, add_url, &uc);
		}
	}
	buf_free(&raw);
	buf_free(&utf);
}

void msgtext_free(struct msgtext *t)
{
	mime_free(t->mime);
	buf_free(&t->text);
	buf_free(&t->urls);
	memset(t, 0, sizeof(*t));
}

const char *msgtext_url(const struct msgtext *t, const char *prev)
{
	if (!t->urls.len)
		return NULL;
	const char *u = prev ? prev + strlen(prev) + 1 : t->urls.data;
	return u < t->urls.data + t->urls.len ? u : NULL;
}
