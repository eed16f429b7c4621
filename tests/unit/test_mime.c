/*
 * test_mime.c — the MIME parser and text helpers (shared/mail/mime.c):
 * structure (nesting, digests, message/rfc822, bare LF, boundaries that
 * are prefixes of others), every bound and malformation flag, RFC 2231
 * file names, base64 and quoted-printable (clean and broken), charsets
 * to UTF-8, RFC 2047 header words, HTML to text with its links, URLs and
 * their hosts, output limits; and a mutation loop over the samples that
 * must never crash or read out of bounds (the ASan build runs it).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mail/mime.h"
#include "util/alloc.h"
#include "util/buf.h"

static const char *type_of(const struct mime_part *p, char *out, size_t n)
{
	snprintf(out, n, "%s/%s", p->type, p->subtype);
	return out;
}

static char *decoded(const char *msg, const struct mime_part *p, bool *clean)
{
	struct buf b = BUF_INIT;
	bool ok = mime_decode(msg, p, &b);
	if (clean)
		*clean = ok;
	buf_putc(&b, '\0');
	return buf_steal(&b, NULL);
}

static const char SIMPLE[] =
	"From: a@example.org\r\nSubject: hi\r\n\r\nHello there.\r\n";

static void test_simple(void **state)
{
	(void)state;
	struct mime_msg *m = mime_parse(SIMPLE, strlen(SIMPLE), NULL);
	assert_int_equal(m->nparts, 1);
	assert_int_equal(m->flags, 0);
	char t[100];
	assert_string_equal(type_of(&m->parts[0], t, sizeof(t)), "text/plain");
	assert_int_equal(m->parts[0].cte, MIME_7BIT);
	assert_int_equal(m->parts[0].body_len, strlen("Hello there.\r\n"));
	assert_memory_equal(SIMPLE + m->parts[0].body_off, "Hello there.\r\n", 14);
	bool html;
	assert_true(mime_is_text(&m->parts[0], &html));
	assert_false(html);
	mime_free(m);
}

static const char ALT[] =
	"From: a@example.org\r\n"
	"MIME-Version: 1.0\r\n"
	"Content-Type: multipart/alternative;\r\n boundary=\"=_b1\"\r\n"
	"\r\n"
	"preamble\r\n"
	"--=_b1\r\n"
	"Content-Type: text/plain; charset=ISO-8859-1\r\n"
	"Content-Transfer-Encoding: quoted-printable\r\n"
	"\r\n"
	"caf=E9 au lait, a long line that is =\r\nsoft-broken\r\n"
	"--=_b1\r\n"
	"Content-Type: text/html; charset=\"utf-8\"\r\n"
	"Content-Transfer-Encoding: base64\r\n"
	"\r\n"
	"PGI+Qm9sZDwvYj4gPGEgaHJlZj0iaHR0cDovL0V4YW1wbGUuQ09NL3g/eT0xIj5saW5rPC9h\r\n"
	"Pg==\r\n"
	"--=_b1--\r\n"
	"epilogue\r\n";

static void test_alternative(void **state)
{
	(void)state;
	struct mime_msg *m = mime_parse(ALT, strlen(ALT), NULL);
	assert_int_equal(m->nparts, 3);
	assert_int_equal(m->flags, 0);
	char t[100];
	assert_string_equal(type_of(&m->parts[0], t, sizeof(t)), "multipart/alternative");
	assert_true(m->parts[0].multipart);
	assert_string_equal(m->parts[0].boundary, "=_b1");
	assert_string_equal(type_of(&m->parts[1], t, sizeof(t)), "text/plain");
	assert_string_equal(m->parts[1].charset, "iso-8859-1");
	assert_int_equal(m->parts[1].cte, MIME_QP);
	assert_int_equal(m->parts[1].parent, 0);
	assert_int_equal(m->parts[1].depth, 1);
	assert_string_equal(type_of(&m->parts[2], t, sizeof(t)), "text/html");
	assert_string_equal(m->parts[2].charset, "utf-8");
	/* the line end before a delimiter is the delimiter's */
	assert_memory_equal(ALT + m->parts[1].body_off + m->parts[1].body_len - 11, "soft-broken", 11);

	bool clean;
	char *qp = decoded(ALT, &m->parts[1], &clean);
	assert_true(clean);
	assert_string_equal(qp, "caf\xe9 au lait, a long line that is soft-broken");
	struct buf u = BUF_INIT;
	assert_true(mime_to_utf8(m->parts[1].charset, qp, strlen(qp), &u));
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "caf\xc3\xa9 au lait, a long line that is soft-broken");
	buf_free(&u);
	free(qp);

	char *html = decoded(ALT, &m->parts[2], &clean);
	assert_true(clean);
	assert_string_equal(html, "<b>Bold</b> <a href=\"http://Example.COM/x?y=1\">link</a>");
	free(html);
	mime_free(m);
}

/* A message with a forwarded message (message/rfc822) holding a
 * multipart, a digest whose parts default to message/rfc822, and bare LF
 * line ends all through. */
static const char NESTED[] =
	"Content-Type: multipart/mixed; boundary=outer\n"
	"\n"
	"--outer\n"
	"Content-Type: text/plain\n"
	"\n"
	"see attached\n"
	"--outer\n"
	"Content-Type: message/rfc822\n"
	"Content-Disposition: attachment; filename*=utf-8''na%C3%AFve%20fwd.eml\n"
	"\n"
	"Subject: inner\n"
	"Content-Type: multipart/mixed; boundary=in\n"
	"\n"
	"--in\n"
	"\n"
	"inner text\n"
	"--in\n"
	"Content-Type: application/octet-stream; name=\"a.bin\"\n"
	"Content-Transfer-Encoding: base64\n"
	"\n"
	"AAEC\n"
	"--in--\n"
	"--outer\n"
	"Content-Type: multipart/digest; boundary=d\n"
	"\n"
	"--d\n"
	"\n"
	"Subject: digested\n"
	"\n"
	"body\n"
	"--d--\n"
	"--outer--\n";

static void test_nested(void **state)
{
	(void)state;
	struct mime_msg *m = mime_parse(NESTED, strlen(NESTED), NULL);
	assert_int_equal(m->flags, 0);
	char t[100];
	const char *want[] = { "multipart/mixed", "text/plain", "message/rfc822", "multipart/mixed", "text/plain",
			       "application/octet-stream", "multipart/digest", "message/rfc822", "text/plain" };
	unsigned parents[] = { 0, 0, 0, 2, 3, 3, 0, 6, 7 };
	unsigned depths[] = { 0, 1, 1, 2, 3, 3, 1, 2, 3 };
	assert_int_equal(m->nparts, 9);
	for (size_t i = 0; i < 9; i++) {
		assert_string_equal(type_of(&m->parts[i], t, sizeof(t)), want[i]);
		assert_int_equal(m->parts[i].parent, parents[i]);
		assert_int_equal(m->parts[i].depth, depths[i]);
	}
	assert_true(m->parts[2].message);
	assert_true(m->parts[2].attachment);
	assert_string_equal(m->parts[2].filename, "na\xc3\xafve fwd.eml");
	assert_string_equal(m->parts[5].filename, "a.bin");
	assert_memory_equal(NESTED + m->parts[4].body_off, "inner text", 10);
	assert_int_equal(m->parts[4].body_len, 10);
	char *bin = decoded(NESTED, &m->parts[5], NULL);
	assert_memory_equal(bin, "\x00\x01\x02", 3);
	free(bin);
	assert_memory_equal(NESTED + m->parts[8].body_off, "body", 4);
	mime_free(m);
	/* an encoded NUL does not cut the name short */
	static const char nul[] = "Content-Type: application/octet-stream;\n"
				  " name*=utf-8''invoice%00.pdf%00.exe\n\nx\n";
	m = mime_parse(nul, sizeof(nul) - 1, NULL);
	assert_string_equal(m->parts[0].filename, "invoice?.pdf?.exe");
	mime_free(m);
}

static void test_malformed_structure(void **state)
{
	(void)state;
	/* no closing delimiter: the last part runs to the end */
	const char *unclosed = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\none\r\n--b\r\n\r\ntwo\r\n";
	struct mime_msg *m = mime_parse(unclosed, strlen(unclosed), NULL);
	assert_int_equal(m->nparts, 3);
	assert_true(m->flags & MIME_UNCLOSED);
	assert_memory_equal(unclosed + m->parts[2].body_off, "two\r\n", 5);
	mime_free(m);
	/* a boundary that never appears */
	const char *none = "Content-Type: multipart/mixed; boundary=b\r\n\r\njust text\r\n";
	m = mime_parse(none, strlen(none), NULL);
	assert_int_equal(m->nparts, 1);
	assert_true(m->flags & MIME_NO_PARTS);
	mime_free(m);
	/* no boundary parameter: one leaf */
	const char *nob = "Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n";
	m = mime_parse(nob, strlen(nob), NULL);
	assert_int_equal(m->nparts, 1);
	assert_true(m->flags & MIME_NO_BOUNDARY);
	assert_false(m->parts[0].multipart);
	mime_free(m);
	/* "--bb" and "--b-x" are not delimiters of "b"; "--b  " (padding) is */
	const char *prefix = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b  \r\n\r\nx\r\n--bb\r\ny\r\n--b-x\r\n--b--\r\n";
	m = mime_parse(prefix, strlen(prefix), NULL);
	assert_int_equal(m->nparts, 2);
	assert_int_equal(m->flags, 0);
	assert_memory_equal(prefix + m->parts[1].body_off, "x\r\n--bb\r\ny\r\n--b-x", m->parts[1].body_len);
	mime_free(m);
	/* a malformed Content-Type and an unknown encoding */
	const char *bad = "Content-Type: /html; charset=x\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbody\r\n";
	m = mime_parse(bad, strlen(bad), NULL);
	char t[100];
	assert_string_equal(type_of(&m->parts[0], t, sizeof(t)), "text/plain");
	assert_int_equal(m->parts[0].cte, MIME_CTE_OTHER);
	assert_true(m->flags & MIME_BAD_CTE);
	mime_free(m);
	/* empty input, and a header that never ends */
	m = mime_parse("", 0, NULL);
	assert_int_equal(m->nparts, 1);
	assert_int_equal(m->parts[0].body_len, 0);
	mime_free(m);
	struct buf big = BUF_INIT;
	for (int i = 0; i < 3000; i++)
		buf_printf(&big, "X-Filler-%d: %s\r\n", i, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	struct mime_limits lim = { .max_header = 16 * 1024 };
	m = mime_parse(big.data, big.len, &lim);
	assert_true(m->flags & MIME_BAD_HEADER);
	assert_int_equal(m->parts[0].hdr_len, 16 * 1024);
	mime_free(m);
	buf_free(&big);
}

static void test_bounds(void **state)
{
	(void)state;
	/* nesting: 40 levels, bound 10 */
	struct buf b = BUF_INIT;
	for (int i = 0; i < 40; i++)
		buf_printf(&b, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i);
	buf_puts(&b, "\r\ndeep\r\n");
	struct mime_limits lim = { .max_depth = 10 };
	struct mime_msg *m = mime_parse(b.data, b.len, &lim);
	assert_true(m->flags & MIME_DEPTH);
	unsigned deepest = 0;
	for (size_t i = 0; i < m->nparts; i++)
		if (m->parts[i].depth > deepest)
			deepest = m->parts[i].depth;
	assert_int_equal(deepest, 10);
	mime_free(m);
	buf_free(&b);
	/* parts: 1000 of them, bound 50 */
	buf_puts(&b, "Content-Type: multipart/mixed; boundary=p\r\n\r\n");
	for (int i = 0; i < 1000; i++)
		buf_printf(&b, "--p\r\n\r\npart %d\r\n", i);
	buf_puts(&b, "--p--\r\n");
	lim = (struct mime_limits){ .max_parts = 50 };
	m = mime_parse(b.data, b.len, &lim);
	assert_true(m->flags & MIME_TOO_MANY_PARTS);
	assert_int_equal(m->nparts, 50);
	mime_free(m);
	buf_free(&b);
}

static void test_decodings(void **state)
{
	(void)state;
	struct mime_part p;
	memset(&p, 0, sizeof(p));
	bool clean;
	/* base64 with junk, missing padding, line ends everywhere */
	const char *b64 = "SGVs\r\nbG8s!!IHdv\r\ncmxk";
	p.cte = MIME_BASE64;
	p.body_len = strlen(b64);
	char *s = decoded(b64, &p, &clean);
	assert_false(clean);
	assert_string_equal(s, "Hello, world");
	free(s);
	const char *b64b = "SGk";       /* "Hi", unpadded */
	p.body_len = strlen(b64b);
	s = decoded(b64b, &p, &clean);
	assert_true(clean);
	assert_string_equal(s, "Hi");
	free(s);
	const char *b64c = "SGk=QUJD";  /* data after the padding */
	p.body_len = strlen(b64c);
	s = decoded(b64c, &p, &clean);
	assert_false(clean);
	assert_string_equal(s, "Hi");
	free(s);
	/* quoted-printable: soft breaks (with trailing blanks), a broken =XY */
	const char *qp = "a=3Db =  \r\nc=ZZd=\n=41";
	p.cte = MIME_QP;
	p.body_len = strlen(qp);
	s = decoded(qp, &p, &clean);
	assert_false(clean);
	assert_string_equal(s, "a=b c=ZZdA");
	free(s);
	/* the output limit holds */
	struct buf lim = BUF_INIT;
	buf_set_limit(&lim, 100);
	struct buf big = BUF_INIT;
	for (int i = 0; i < 500; i++)
		buf_puts(&big, "QUJD");
	p.cte = MIME_BASE64;
	p.body_len = big.len;
	mime_decode(big.data, &p, &lim);
	assert_true(lim.overflow);
	assert_int_equal(lim.len, 100);         /* what fits, not nothing */
	for (size_t i = 0; i < 100; i++)
		assert_int_equal(lim.data[i], "ABC"[i % 3]);
	buf_free(&lim);
	buf_free(&big);
}

static void test_charsets(void **state)
{
	(void)state;
	struct buf u = BUF_INIT;
	assert_true(mime_to_utf8("windows-1252", "\x80 5", 3, &u));
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "\xe2\x82\xac 5");
	buf_reset(&u);
	assert_true(mime_to_utf8("iso-8859-1", "\x80", 1, &u));     /* read as windows-1252, as readers do */
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "\xe2\x82\xac");
	buf_reset(&u);
	assert_true(mime_to_utf8("koi8-r", "\xf0\xd2\xc9\xd7\xc5\xd4", 6, &u));
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82");  /* Привет */
	buf_reset(&u);
	/* invalid UTF-8: each bad byte is U+FFFD; an overlong '/' too */
	assert_true(mime_to_utf8("utf-8", "a\xff" "b\xc0\xaf", 5, &u));
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd");
	buf_reset(&u);
	/* a charset nobody knows: the bytes as UTF-8 */
	assert_false(mime_to_utf8("x-no-such-charset", "ok\xe9", 3, &u));
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "ok\xef\xbf\xbd");
	buf_reset(&u);
	/* bytes that do not convert go one by one */
	assert_true(mime_to_utf8("shift_jis", "a\x82\xa0\x82z", 5, &u));
	buf_putc(&u, '\0');
	assert_non_null(strstr(u.data, "\xe3\x81\x82"));        /* あ */
	assert_non_null(strstr(u.data, "\xef\xbf\xbd"));
	buf_free(&u);
}

static void test_header_words(void **state)
{
	(void)state;
	struct buf u = BUF_INIT;
	const char *v = "=?UTF-8?B?w6l0w6k=?= \r\n =?ISO-8859-1?Q?caf=E9_noir?= and =?utf-8*fr?q?plus?= end";
	mime_header_utf8(v, strlen(v), &u);
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "\xc3\xa9t\xc3\xa9" "caf\xc3\xa9 noir and plus end");
	buf_reset(&u);
	/* not encoded-words: left as they are */
	const char *w = "=?broken =?utf-8?x?abc?= =?utf-8?q?a b?=";
	mime_header_utf8(w, strlen(w), &u);
	buf_putc(&u, '\0');
	assert_string_equal(u.data, w);
	buf_reset(&u);
	/* raw 8-bit: invalid bytes replaced */
	mime_header_utf8("Gr\xfc\xdf", 4, &u);
	buf_putc(&u, '\0');
	assert_string_equal(u.data, "Gr\xef\xbf\xbd\xef\xbf\xbd");
	buf_free(&u);
}

struct urls {
	char list[1024];
};

static void add_url(void *arg, const char *u, size_t n)
{
	struct urls *x = arg;
	size_t l = strlen(x->list);
	snprintf(x->list + l, sizeof(x->list) - l, "%s%.*s", l ? " | " : "", (int)n, u);
}

static void test_html(void **state)
{
	(void)state;
	const char *h = "<html><head><title>T</title><style>p{color:red}</style>"
			"<script type=\"text/javascript\">var a = '<b>not text</b>';</script></head>"
			"<body><!-- a <comment> --><p>Hello&nbsp;&amp;&#233;&#x20AC;&bogus;<br>"
			"<a HREF='http://one.example/a?b=1&amp;c=2' title=\"x > y\">one</a>"
			"<img src=http://two.example/i.png alt=x>2 &lt; 3</p><td>a</td><td>b</td></body></html>";
	struct buf out = BUF_INIT;
	struct urls u = { "" };
	mime_html_text(h, strlen(h), &out, add_url, &u);
	buf_putc(&out, '\0');
	assert_null(strstr(out.data, "color"));
	assert_null(strstr(out.data, "not text"));
	assert_null(strstr(out.data, "comment"));
	assert_non_null(strstr(out.data, "Hello &\xc3\xa9\xe2\x82\xac&bogus;"));
	assert_non_null(strstr(out.data, "one"));
	assert_non_null(strstr(out.data, "2 < 3"));
	assert_non_null(strstr(out.data, "a  b") ? out.data : strstr(out.data, "a b"));
	assert_string_equal(u.list, "http://one.example/a?b=1&c=2 | http://two.example/i.png");
	buf_free(&out);
	/* unterminated things end at the end of the text */
	const char *cut[] = { "<a href=\"http://x", "<!-- no end", "<script>no end", "a < b", "&#x", "<" };
	for (size_t i = 0; i < sizeof(cut) / sizeof(cut[0]); i++) {
		struct buf o = BUF_INIT;
		struct urls v = { "" };
		mime_html_text(cut[i], strlen(cut[i]), &o, add_url, &v);
		buf_free(&o);
	}
}

static void test_urls(void **state)
{
	(void)state;
	const char *t = "Visit http://Example.COM/path, or www.shop.example!\n"
			"Also <https://user:pw@Secure.Example.NET:8443/x?y#z>. Not mywww.example or http:// alone.";
	struct urls u = { "" };
	mime_text_urls(t, strlen(t), add_url, &u);
	assert_string_equal(u.list, "http://Example.COM/path | www.shop.example | "
				    "https://user:pw@Secure.Example.NET:8443/x?y#z");
	char host[256];
	assert_true(mime_url_host("http://Example.COM/path", 23, host, sizeof(host)));
	assert_string_equal(host, "example.com");
	const char *s = "https://user:pw@Secure.Example.NET.:8443/x?y#z";
	assert_true(mime_url_host(s, strlen(s), host, sizeof(host)));
	assert_string_equal(host, "secure.example.net");
	assert_true(mime_url_host("www.shop.example", 16, host, sizeof(host)));
	assert_string_equal(host, "www.shop.example");
	assert_true(mime_url_host("http://%77%77%77.evil.example/", 30, host, sizeof(host)));
	assert_string_equal(host, "www.evil.example");
	assert_true(mime_url_host("http://[2001:DB8::1]:80/", 24, host, sizeof(host)));
	assert_string_equal(host, "2001:db8::1");
	assert_false(mime_url_host("mailto:a@example.org", 20, host, sizeof(host)));
	assert_false(mime_url_host("http:///x", 9, host, sizeof(host)));
	assert_false(mime_url_host("http://a.example", 16, host, 4));  /* too small */
}

/* Random damage to the samples: every part decoded, every text part
 * converted, every HTML part read; nothing may crash or leak. */
static void test_mutations(void **state)
{
	(void)state;
	const char *samples[] = { SIMPLE, ALT, NESTED };
	uint32_t seed = 12345;
	for (int round = 0; round < 3000; round++) {
		const char *s = samples[round % 3];
		size_t n = strlen(s);
		char *m = xmalloc(n + 64);
		memcpy(m, s, n);
		int edits = 1 + (int)(seed % 8);
		for (int e = 0; e < edits; e++) {
			seed = seed * 1103515245u + 12345u;
			size_t at = (seed >> 8) % n;
			switch ((seed >> 4) % 4) {
			case 0: m[at] = (char)(seed >> 16); break;
			case 1: m[at] = "-\r\n=<>&?;\"'"[(seed >> 16) % 11]; break;
			case 2: n = at + 1; break;          /* cut short */
			default: memmove(m + at + 1, m + at, n - at); n++; if (n > strlen(s) + 60) n--; break;
			}
		}
		struct mime_limits lim = { .max_depth = 4, .max_parts = 20, .max_header = 512 };
		struct mime_msg *mm = mime_parse(m, n, round % 2 ? &lim : NULL);
		assert_true(mm->nparts >= 1);
		for (size_t i = 0; i < mm->nparts; i++) {
			const struct mime_part *p = &mm->parts[i];
			assert_true(p->body_off + p->body_len <= n);
			assert_true(p->hdr_off + p->hdr_len <= n);
			struct buf d = BUF_INIT, u = BUF_INIT, t = BUF_INIT;
			buf_set_limit(&d, 4096);
			mime_decode(m, p, &d);
			bool html;
			if (mime_is_text(p, &html)) {
				mime_to_utf8(p->charset, d.data ? d.data : "", d.len, &u);
				struct urls x = { "" };
				if (html)
					mime_html_text(u.data ? u.data : "", u.len, &t, add_url, &x);
				else
					mime_text_urls(u.data ? u.data : "", u.len, add_url, &x);
			}
			mime_header_utf8(m + p->hdr_off, p->hdr_len, &t);
			buf_free(&d);
			buf_free(&u);
			buf_free(&t);
		}
		mime_free(mm);
		free(m);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_simple),
		cmocka_unit_test(test_alternative),
		cmocka_unit_test(test_nested),
		cmocka_unit_test(test_malformed_structure),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_decodings),
		cmocka_unit_test(test_charsets),
		cmocka_unit_test(test_header_words),
		cmocka_unit_test(test_html),
		cmocka_unit_test(test_urls),
		cmocka_unit_test(test_mutations),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
