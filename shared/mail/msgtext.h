/*
 * msgtext.h — what the content filters read of a message, worked out
 * once: its MIME structure, the text of its text parts (decoded, in
 * UTF-8, HTML as its text, within a bound) and the links found in them.
 * The Bayesian tokens and the body and URI rules all read this.
 */
#ifndef RAMPART_MSGTEXT_H
#define RAMPART_MSGTEXT_H

#include <stdbool.h>
#include <stddef.h>

#include "../util/buf.h"

struct mime_msg;

struct msgtext {
	struct mime_msg *mime;          /* the structure (mime.h) */
	struct buf text;                /* the text parts one after the other, a line end between */
	struct buf urls;                /* each link as written, NUL-terminated, one after the other */
	size_t nurls;
	bool bad_encoding;              /* a part whose transfer encoding was malformed */
	bool unknown_charset;           /* a charset iconv does not know */
	bool html;                      /* a text/html part */
};

/* At most max_text bytes of decoded text (0: 256 KiB) and max_urls links
 * (0: 1000). */
void msgtext_build(struct msgtext *t, const char *msg, size_t len, size_t max_text, size_t max_urls);
void msgtext_free(struct msgtext *t);

/* The links: for (const char *u = msgtext_url(t, NULL); u; u = msgtext_url(t, u)). */
const char *msgtext_url(const struct msgtext *t, const char *prev);

#endif
