/*
 * mime.h — a message's MIME structure (RFC 2045-2049) and its text, for
 * the content filters (the anti-spam stage's tokens, rules and URLs).
 *
 * mime_parse() finds every part of a message held in memory: its
 * Content-Type (type, subtype, charset, boundary), transfer encoding,
 * disposition and file name, and where its header and body are.  Nothing
 * is copied: parts are offsets into the message.  Every input has a
 * bound (nesting depth, number of parts, size of a part's header), and
 * nothing in a message stops the parse: what is malformed (a multipart
 * without a boundary or its closing delimiter, nesting past the bound,
 * too many parts, a header without its end) is noted in the message's
 * flags, for the filters to score, and the rest is parsed as well as it
 * can be.  No recursion deeper than max_depth, no quadratic scans.
 *
 * Then, per part: its body with the transfer encoding undone
 * (mime_decode: base64, quoted-printable), text in its charset as UTF-8
 * (mime_to_utf8, iconv), HTML as its text and its links (mime_html_text),
 * the URLs in plain text (mime_text_urls) and the host of a URL
 * (mime_url_host); header values with RFC 2047 encoded-words as UTF-8
 * (mime_header_utf8).  Output goes to bounded buffers (struct buf): a
 * limit set on the buffer caps what a part can produce.
 *
 * Shared code with a narrow interface: the antivirus and DKIM code may
 * use it, and it is a fuzz target.
 */
#ifndef RAMPART_MIME_H
#define RAMPART_MIME_H

#include <stdbool.h>
#include <stddef.h>

struct buf;

struct mime_limits {
	unsigned max_depth;     /* nesting of multiparts and message/rfc822 (0: 20) */
	unsigned max_parts;     /* parts in all, the message itself included (0: 500) */
	size_t max_header;      /* bytes of one part's header section (0: 64 KiB) */
};

/* What was wrong with a message (mime_msg.flags). */
enum {
	MIME_DEPTH = 1 << 0,            /* nested past max_depth: the deepest container is a leaf */
	MIME_TOO_MANY_PARTS = 1 << 1,   /* parts past max_parts are not listed */
	MIME_NO_BOUNDARY = 1 << 2,      /* a multipart without a boundary: a leaf */
	MIME_UNCLOSED = 1 << 3,         /* a multipart without its closing delimiter */
	MIME_BAD_HEADER = 1 << 4,       /* a part's header over max_header, or not ended */
	MIME_NO_PARTS = 1 << 5,         /* a multipart whose boundary never appears */
	MIME_BAD_CTE = 1 << 6,          /* a Content-Transfer-Encoding we do not know */
};

enum mime_cte { MIME_7BIT, MIME_8BIT, MIME_BINARY, MIME_QP, MIME_BASE64, MIME_CTE_OTHER };

struct mime_part {
	unsigned parent;        /* index of the enclosing part (the root: 0, itself) */
	unsigned depth;         /* the root: 0 */
	char type[32];          /* lower case; "text" "plain" when absent */
	char subtype[64];
	char charset[48];       /* lower case; "" when not given */
	char boundary[72];      /* multiparts: as given (RFC 2046: 1-70 characters) */
	char filename[256];     /* Content-Disposition filename, else Content-Type name; "" */
	enum mime_cte cte;
	bool attachment;        /* Content-Disposition: attachment */
	bool multipart;         /* type "multipart" and parsed as one */
	bool message;           /* message/rfc822 parsed as a message */
	size_t hdr_off, hdr_len;        /* its header section, in the message */
	size_t body_off, body_len;      /* its body (a container's: all of it) */
};

struct mime_msg {
	struct mime_part *parts;        /* document order; parts[0] is the message */
	size_t nparts;
	unsigned flags;
};

/* The structure of msg[0..len) (never NULL, at least the root part);
 * lim NULL: the defaults. */
struct mime_msg *mime_parse(const char *msg, size_t len, const struct mime_limits *lim);
void mime_free(struct mime_msg *m);

/* Is the part text a filter reads: text/plain or text/html (or text/...
 * of any kind), not a container, not an attachment with a file name?
 * html is set for text/html. */
bool mime_is_text(const struct mime_part *p, bool *html);

/* The part's body with its transfer encoding undone, appended to out
 * (within out's limit).  False when the encoding was malformed (bad
 * characters in base64, a broken =XX in quoted-printable): what could be
 * decoded is still appended. */
bool mime_decode(const char *msg, const struct mime_part *p, struct buf *out);

/* in[0..len), text in charset ("" is us-ascii), appended to out as UTF-8;
 * invalid sequences become U+FFFD.  False when iconv does not know the
 * charset: the bytes are then taken as UTF-8 (invalid ones replaced). */
bool mime_to_utf8(const char *charset, const char *in, size_t len, struct buf *out);

/* A header field value with its RFC 2047 encoded-words decoded, as
 * UTF-8, appended to out (unfolded: line ends become spaces). */
void mime_header_utf8(const char *value, size_t len, struct buf *out);

/* A URL found in a text, to a callback: u[0..n), as written. */
typedef void (*mime_url_fn)(void *arg, const char *u, size_t n);

/* HTML (UTF-8) as its text appended to out: tags removed, script and
 * style dropped, comments skipped, entities decoded, block elements as
 * line ends; the values of href and src attributes to url (may be NULL). */
void mime_html_text(const char *html, size_t len, struct buf *out, mime_url_fn url, void *arg);

/* The URLs of a plain text: http://, https:// and www. up to a blank or
 * a quote, trailing punctuation left out. */
void mime_text_urls(const char *text, size_t len, mime_url_fn url, void *arg);

/* The host of a URL ("http://user@Example.COM.:80/x" -> "example.com",
 * "www.example.org/x" -> "www.example.org"), lower case; false when it
 * has none, or out is too small. */
bool mime_url_host(const char *u, size_t n, char *out, size_t outlen);

#endif
