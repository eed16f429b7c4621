/*
 * test_address.c — unit tests for mail/address: SMTP path and parameter
 * parsing, domain validation, normalization, xtext.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "mail/address.h"

/* Parse with allow_null and check the error code; the reason is set on
 * failure and empty on success. */
static enum addr_error parse(const char *arg, struct smtp_path *p)
{
	char why[128];
	enum addr_error e;

	memset(why, 'x', sizeof why);
	e = smtp_parse_path(arg, true, p, why, sizeof why);
	assert_non_null(memchr(why, '\0', sizeof why));
	if (e == ADDR_OK)
		assert_string_equal(why, "");
	else
		assert_true(why[0] != '\0');
	return e;
}

static void expect_ok(const char *arg, const char *addr, const char *domain)
{
	struct smtp_path p;
	char why[128] = "";

	if (smtp_parse_path(arg, true, &p, why, sizeof why) != ADDR_OK)
		fail_msg("rejected \"%s\": %s", arg, why);
	assert_string_equal(p.addr, addr);
	if (domain) {
		assert_non_null(p.domain);
		assert_string_equal(p.domain, domain);
		assert_true(p.domain > p.addr && p.domain[-1] == '@');
	} else {
		assert_null(p.domain);
	}
}

static void expect_err(const char *arg, enum addr_error want)
{
	struct smtp_path p;
	char why[128] = "";
	enum addr_error got = smtp_parse_path(arg, true, &p, why, sizeof why);

	if (got != want)
		fail_msg("\"%s\": got %d (%s), want %d", arg, got, why, want);
	assert_true(why[0] != '\0');
	/* A failed parse leaves an empty result. */
	assert_string_equal(p.addr, "");
	assert_null(p.domain);
	assert_int_equal(p.nparams, 0);
}

/* ---- valid paths -------------------------------------------------------- */

static void test_simple(void **state)
{
	struct smtp_path p;
	(void)state;

	expect_ok("<user@example.org>", "user@example.org", "example.org");
	expect_ok("<a@b>", "a@b", "b");
	expect_ok("<first.last@sub.example.co.uk>", "first.last@sub.example.co.uk",
		  "sub.example.co.uk");
	expect_ok("<x-y_z+tag@mx-1.example>", "x-y_z+tag@mx-1.example", "mx-1.example");
	expect_ok("<!#$%&'*+-/=?^_`{|}~@example.org>", "!#$%&'*+-/=?^_`{|}~@example.org",
		  "example.org");
	expect_ok("<User@Example.ORG>", "User@Example.ORG", "Example.ORG");
	expect_ok("<1@2.3>", "1@2.3", "2.3");
	expect_ok("<u@xn--bcher-kva.example>", "u@xn--bcher-kva.example", "xn--bcher-kva.example");
	expect_ok("<u@a1-b2.c3>", "u@a1-b2.c3", "a1-b2.c3");

	/* Leading spaces (MAIL FROM: <a@b>). */
	expect_ok("   <user@example.org>", "user@example.org", "example.org");
	/* Trailing spaces are harmless. */
	expect_ok("<user@example.org>   ", "user@example.org", "example.org");

	assert_int_equal(parse("<user@example.org>", &p), ADDR_OK);
	assert_false(p.utf8);
	assert_int_equal(p.nparams, 0);
}

static void test_null_path(void **state)
{
	struct smtp_path p;
	char why[128];
	(void)state;

	assert_int_equal(smtp_parse_path("<>", true, &p, why, sizeof why), ADDR_OK);
	assert_string_equal(p.addr, "");
	assert_null(p.domain);
	assert_int_equal(smtp_parse_path(" <> SIZE=10", true, &p, why, sizeof why), ADDR_OK);
	assert_string_equal(smtp_path_param(&p, "SIZE"), "10");

	assert_int_equal(smtp_parse_path("<>", false, &p, why, sizeof why),
			 ADDR_NULL_NOT_ALLOWED);
	assert_true(why[0] != '\0');
	assert_string_equal(p.addr, "");
}

static void test_postmaster(void **state)
{
	(void)state;
	expect_ok("<postmaster>", "postmaster", NULL);
	expect_ok("<Postmaster>", "Postmaster", NULL);
	expect_ok("<POSTMASTER>", "POSTMASTER", NULL);
	expect_ok("<postmaster@example.org>", "postmaster@example.org", "example.org");
	expect_err("<postmaste>", ADDR_SYNTAX);
	expect_err("<postmasters>", ADDR_SYNTAX);
	expect_err("<\"postmaster\">", ADDR_SYNTAX);
	expect_err("<user>", ADDR_SYNTAX);
}

static void test_quoted(void **state)
{
	(void)state;
	/* Quoted local parts are kept quoted, escapes and all. */
	expect_ok("<\"john doe\"@example.org>", "\"john doe\"@example.org", "example.org");
	expect_ok("<\"a@b\"@example.org>", "\"a@b\"@example.org", "example.org");
	expect_ok("<\"a\\\"b\"@example.org>", "\"a\\\"b\"@example.org", "example.org");
	expect_ok("<\"a\\\\b\"@example.org>", "\"a\\\\b\"@example.org", "example.org");
	expect_ok("<\"a>b\"@example.org>", "\"a>b\"@example.org", "example.org");
	expect_ok("<\"..\"@example.org>", "\"..\"@example.org", "example.org");
	expect_ok("<\"\"@example.org>", "\"\"@example.org", "example.org");
	expect_ok("<\"(comment) <x>\"@example.org>", "\"(comment) <x>\"@example.org",
		  "example.org");

	expect_err("<\"unterminated@example.org>", ADDR_SYNTAX);
	expect_err("<\"a\"b@example.org>", ADDR_SYNTAX);        /* text after the quote */
	expect_err("<a\"b\"@example.org>", ADDR_SYNTAX);        /* quote inside an atom */
	expect_err("<\"a\\", ADDR_SYNTAX);                       /* escape at the end */
	expect_err("<\"a\"", ADDR_SYNTAX);
}

static void test_unbalanced_quotes_reason(void **state)
{
	struct smtp_path p;
	char why[128];
	(void)state;

	assert_int_equal(smtp_parse_path("<\"abc@example.org>", true, &p, why, sizeof why),
			 ADDR_SYNTAX);
	assert_string_equal(why, "malformed address: unbalanced quotes");

	assert_int_equal(smtp_parse_path("user@example.org", true, &p, why, sizeof why),
			 ADDR_SYNTAX);
	assert_non_null(strstr(why, "expected <address>"));

	/* A small why buffer is truncated, never overrun. */
	char tiny[8];
	memset(tiny, 'x', sizeof tiny);
	assert_int_equal(smtp_parse_path("user", true, &p, tiny, sizeof tiny), ADDR_SYNTAX);
	assert_int_equal(strlen(tiny), sizeof tiny - 1);
	assert_int_equal(smtp_parse_path("user", true, &p, NULL, 0), ADDR_SYNTAX);
}

static void test_dots(void **state)
{
	(void)state;
	expect_ok("<a.b.c@example.org>", "a.b.c@example.org", "example.org");
	expect_err("<.a@example.org>", ADDR_SYNTAX);
	expect_err("<a.@example.org>", ADDR_SYNTAX);
	expect_err("<a..b@example.org>", ADDR_SYNTAX);
	expect_err("<.@example.org>", ADDR_SYNTAX);
	expect_err("<a@.example.org>", ADDR_SYNTAX);
	expect_err("<a@example.org.>", ADDR_SYNTAX);
	expect_err("<a@example..org>", ADDR_SYNTAX);
	expect_err("<a@.>", ADDR_SYNTAX);
}

static void test_literals(void **state)
{
	(void)state;
	expect_ok("<user@[192.0.2.1]>", "user@[192.0.2.1]", "[192.0.2.1]");
	expect_ok("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]");
	expect_ok("<user@[ipv6:::1]>", "user@[ipv6:::1]", "[ipv6:::1]");
	expect_ok("<user@[IPv6:::ffff:192.0.2.1]>", "user@[IPv6:::ffff:192.0.2.1]",
		  "[IPv6:::ffff:192.0.2.1]");

	expect_err("<user@[192.0.2.256]>", ADDR_SYNTAX);
	expect_err("<user@[192.0.2]>", ADDR_SYNTAX);
	expect_err("<user@[192.0.2.1>", ADDR_SYNTAX);
	expect_err("<user@192.0.2.1]>", ADDR_SYNTAX);
	expect_err("<user@[2001:db8::1]>", ADDR_SYNTAX);        /* needs the IPv6: tag */
	expect_err("<user@[IPv6:192.0.2.1]>", ADDR_SYNTAX);
	expect_err("<user@[IPv6:2001:db8:::1]>", ADDR_SYNTAX);
	expect_err("<user@[IPv6:]>", ADDR_SYNTAX);
	expect_err("<user@[]>", ADDR_SYNTAX);
	expect_err("<user@[x-tag:whatever]>", ADDR_SYNTAX);
	expect_err("<user@[192.0.2.1]x>", ADDR_SYNTAX);
	expect_err("<user@[192.0.2.1].example>", ADDR_SYNTAX);
	expect_err("<user@[ 192.0.2.1]>", ADDR_SYNTAX);
}

static void test_utf8(void **state)
{
	struct smtp_path p;
	(void)state;

	/* RFC 6531: UTF-8 in local parts and domain labels. */
	assert_int_equal(parse("<j\xc3\xb6rg@b\xc3\xbc" "cher.example>", &p), ADDR_OK);
	assert_string_equal(p.addr, "j\xc3\xb6rg@b\xc3\xbc" "cher.example");
	assert_string_equal(p.domain, "b\xc3\xbc" "cher.example");
	assert_true(p.utf8);

	assert_int_equal(parse("<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\x85\xac\xe5\x8f\xb8>",
			       &p), ADDR_OK);
	assert_true(p.utf8);
	assert_int_equal(parse("<\"\xc3\xa9t\xc3\xa9\"@example.org>", &p), ADDR_OK);
	assert_true(p.utf8);
	assert_int_equal(parse("<u@example.org>", &p), ADDR_OK);
	assert_false(p.utf8);
	/* 4-byte sequence (U+1F600). */
	assert_int_equal(parse("<\xf0\x9f\x98\x80@example.org>", &p), ADDR_OK);
	assert_true(p.utf8);

	/* Invalid sequences are rejected everywhere. */
	expect_err("<\xff@example.org>", ADDR_SYNTAX);
	expect_err("<a\x80@example.org>", ADDR_SYNTAX);          /* stray continuation */
	expect_err("<\xc3@example.org>", ADDR_SYNTAX);           /* truncated */
	expect_err("<\xc0\xaf@example.org>", ADDR_SYNTAX);       /* overlong '/' */
	expect_err("<\xe0\x80\xaf@example.org>", ADDR_SYNTAX);   /* overlong, 3 bytes */
	expect_err("<\xed\xa0\x80@example.org>", ADDR_SYNTAX);   /* surrogate */
	expect_err("<\xf4\x90\x80\x80@example.org>", ADDR_SYNTAX); /* above U+10FFFF */
	expect_err("<\xf5\x80\x80\x80@example.org>", ADDR_SYNTAX);
	expect_err("<a@b\xc3.example>", ADDR_SYNTAX);
	expect_err("<a@\xe4\xbe@example>", ADDR_SYNTAX);
	expect_err("<\"\xc3\"@example.org>", ADDR_SYNTAX);
}

static void test_source_route(void **state)
{
	struct smtp_path p;
	(void)state;

	expect_ok("<@relay.example:user@example.org>", "user@example.org", "example.org");
	expect_ok("<@a.example,@b.example:user@example.org>", "user@example.org", "example.org");
	assert_int_equal(parse("<@a,@b,@c:user@d> SIZE=1", &p), ADDR_OK);
	assert_string_equal(p.addr, "user@d");
	assert_string_equal(p.domain, "d");
	assert_string_equal(smtp_path_param(&p, "SIZE"), "1");

	expect_err("<@a.example user@example.org>", ADDR_SYNTAX);
	expect_err("<@a.example,user@example.org>", ADDR_SYNTAX);
	expect_err("<@:user@example.org>", ADDR_SYNTAX);
	expect_err("<@a.example,:user@example.org>", ADDR_SYNTAX);
	expect_err("<@a.example:>", ADDR_SYNTAX);
	expect_err("<@a..example:user@example.org>", ADDR_SYNTAX);
	expect_err("<@a.example;@b:user@example.org>", ADDR_SYNTAX);
	expect_err("<@a.example>", ADDR_SYNTAX);
	expect_err("<@>", ADDR_SYNTAX);
}

static void test_malformed(void **state)
{
	static const char *const bad[] = {
		"", " ", "<", ">", "user@example.org", "<user@example.org", "user@example.org>",
		"<<user@example.org>>", "< user@example.org>", "<user@example.org >",
		"<user @example.org>", "<user@ example.org>", "<user@exa mple.org>",
		"<@example.org>", "<user@>", "<user@@example.org>", "<us@er@example.org>",
		"<user(comment)@example.org>", "<user,x@example.org>", "<user[x]@example.org>",
		"<user;x@example.org>", "<user:x@example.org>", "<user\\x@example.org>",
		"<user@example.org>x", "<user@example.org>>", "<user@example.org><x@y>",
		"<a@b>=", "<user@-example.org>", "<user@example-.org>", "<user@exa_mple.org>",
		"<user@example.org:25>", "<user@example.org/x>", "<user@\"example\".org>",
		"<user@example!.org>", "<>>", "<<>>", "\"user\"@example.org",
	};
	(void)state;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		expect_err(bad[i], ADDR_SYNTAX);

	struct smtp_path p;
	char why[64];
	assert_int_equal(smtp_parse_path(NULL, true, &p, why, sizeof why), ADDR_SYNTAX);
}

static void test_control_chars(void **state)
{
	static const char *const bad[] = {
		"<us\ter@example.org>", "<user@exam\rple.org>", "<user@example.org>\r\nRCPT TO:<x@y>",
		"<\"a\x01\"@example.org>", "<\"a\\\x01\"@example.org>", "<user@example.org\x7f>",
		"<user\x1b@example.org>", "\t<user@example.org>", "<user@example.org> SIZE=1\n",
		"<user@example.org> SIZE=\x02", "<user@[192.0.2.1\x0b]>", "<@a\x0c:u@b>",
		"<>\r",
	};
	(void)state;

	/* NULs cannot appear in a C string; every other control character is
	 * rejected, including CR/LF smuggled into an argument. */
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		expect_err(bad[i], ADDR_SYNTAX);

	/* An embedded NUL simply ends the argument: what follows is never seen. */
	const char with_nul[] = "<user@example.org>\0 SIZE=garbage=";
	expect_ok(with_nul, "user@example.org", "example.org");
	const char nul_inside[] = "<user\0@example.org>";
	expect_err(nul_inside, ADDR_SYNTAX);
}

/* ---- length bounds ------------------------------------------------------ */

static void make_repeat(char *out, char c, size_t n)
{
	memset(out, c, n);
	out[n] = '\0';
}

/* A domain of exactly n octets: labels of 62 octets and a shorter last one. */
static void make_domain(char *out, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out[i] = (i % 63 == 62 && i + 1 < n) ? '.' : 'd';
	out[n] = '\0';
}

static void test_local_part_bounds(void **state)
{
	char local[80], arg[400], addr[400];
	struct smtp_path p;
	(void)state;

	make_repeat(local, 'l', 64);
	snprintf(arg, sizeof arg, "<%s@example.org>", local);
	snprintf(addr, sizeof addr, "%s@example.org", local);
	expect_ok(arg, addr, "example.org");

	make_repeat(local, 'l', 65);
	snprintf(arg, sizeof arg, "<%s@example.org>", local);
	expect_err(arg, ADDR_TOO_LONG);

	/* Dotted and quoted forms count every octet, quotes included. */
	memset(local, 'a', 64);
	local[10] = '.';
	local[64] = '\0';
	snprintf(arg, sizeof arg, "<%s@example.org>", local);
	assert_int_equal(parse(arg, &p), ADDR_OK);

	local[0] = '"';
	memset(local + 1, 'q', 62);
	local[63] = '"';
	local[64] = '\0';
	snprintf(arg, sizeof arg, "<%s@example.org>", local);
	assert_int_equal(parse(arg, &p), ADDR_OK);
	assert_int_equal(strlen(p.addr), 64 + 12);

	memset(local + 1, 'q', 63);
	local[64] = '"';
	local[65] = '\0';
	snprintf(arg, sizeof arg, "<%s@example.org>", local);
	expect_err(arg, ADDR_TOO_LONG);

	/* A very long local part is TOO_LONG, not a buffer overrun. */
	char huge[2100];
	huge[0] = '<';
	memset(huge + 1, 'z', 2000);
	strcpy(huge + 2001, "@example.org>");
	expect_err(huge, ADDR_TOO_LONG);
	huge[1] = '"';
	expect_err(huge, ADDR_TOO_LONG);
}

static void test_domain_bounds(void **state)
{
	char dom[300], arg[400];
	(void)state;

	make_domain(dom, 255);
	assert_int_equal(strlen(dom), 255);
	assert_true(smtp_domain_valid(dom));
	make_domain(dom, 256);
	assert_int_equal(strlen(dom), 256);
	assert_false(smtp_domain_valid(dom));

	/* Labels: 63 octets at most. */
	make_repeat(dom, 'x', 63);
	strcat(dom, ".example");
	assert_true(smtp_domain_valid(dom));
	make_repeat(dom, 'x', 64);
	strcat(dom, ".example");
	assert_false(smtp_domain_valid(dom));
	snprintf(arg, sizeof arg, "<u@%s>", dom);
	expect_err(arg, ADDR_SYNTAX);

	/* Within a path, a domain over 255 octets is TOO_LONG. */
	make_domain(dom, 256);
	snprintf(arg, sizeof arg, "<u@%s>", dom);
	expect_err(arg, ADDR_TOO_LONG);
}

static void test_path_bounds(void **state)
{
	char local[80], dom[300], arg[600], addr[600];
	struct smtp_path p;
	(void)state;

	/* 64 + 1 + 191 = 256 octets between the brackets: accepted. */
	make_repeat(local, 'l', 64);
	make_domain(dom, 191);
	snprintf(arg, sizeof arg, "<%s@%s> SIZE=1", local, dom);
	snprintf(addr, sizeof addr, "%s@%s", local, dom);
	assert_int_equal(strlen(addr), ADDR_MAX);
	assert_int_equal(parse(arg, &p), ADDR_OK);
	assert_string_equal(p.addr, addr);
	assert_string_equal(p.domain, dom);
	assert_string_equal(smtp_path_param(&p, "size"), "1");

	/* 257: rejected. */
	make_domain(dom, 192);
	snprintf(arg, sizeof arg, "<%s@%s>", local, dom);
	expect_err(arg, ADDR_TOO_LONG);

	/* A source route counts towards the path. */
	make_domain(dom, 200);
	snprintf(arg, sizeof arg, "<@%s:%s@example.org>", dom, local);
	expect_err(arg, ADDR_TOO_LONG);
	make_domain(dom, 100);
	snprintf(arg, sizeof arg, "<@%s:%s@example.org>", dom, local);
	snprintf(addr, sizeof addr, "%s@example.org", local);
	expect_ok(arg, addr, "example.org");
}

/* ---- parameters --------------------------------------------------------- */

static void test_params(void **state)
{
	struct smtp_path p;
	(void)state;

	assert_int_equal(parse("<a@b.example> SIZE=12345 BODY=8BITMIME", &p), ADDR_OK);
	assert_int_equal(p.nparams, 2);
	assert_string_equal(p.params[0].key, "SIZE");
	assert_string_equal(p.params[0].value, "12345");
	assert_string_equal(p.params[1].key, "BODY");
	assert_string_equal(p.params[1].value, "8BITMIME");
	assert_string_equal(smtp_path_param(&p, "size"), "12345");
	assert_string_equal(smtp_path_param(&p, "Body"), "8BITMIME");
	assert_null(smtp_path_param(&p, "RET"));
	assert_null(smtp_path_param(&p, "SIZ"));

	/* Keywords are upper-cased; no-value parameters give "". */
	assert_int_equal(parse("<a@b.example> smtputf8 ret=HDRS  envid=QQ314159", &p), ADDR_OK);
	assert_int_equal(p.nparams, 3);
	assert_string_equal(p.params[0].key, "SMTPUTF8");
	assert_string_equal(p.params[0].value, "");
	assert_string_equal(smtp_path_param(&p, "SMTPUTF8"), "");
	assert_string_equal(p.params[1].key, "RET");
	assert_string_equal(p.params[2].key, "ENVID");
	assert_string_equal(p.params[2].value, "QQ314159");

	/* Keywords with digits and hyphens; values with punctuation and UTF-8. */
	assert_int_equal(parse("<a@b> X-VENDOR-1=a+b/c:d;e NOTIFY=SUCCESS,FAILURE "
			       "ORCPT=rfc822;j\xc3\xb6rg@example.org", &p), ADDR_OK);
	assert_int_equal(p.nparams, 3);
	assert_string_equal(p.params[0].key, "X-VENDOR-1");
	assert_string_equal(p.params[0].value, "a+b/c:d;e");
	assert_string_equal(smtp_path_param(&p, "ORCPT"), "rfc822;j\xc3\xb6rg@example.org");

	assert_int_equal(parse("<a@b>", &p), ADDR_OK);
	assert_null(smtp_path_param(&p, "SIZE"));
	assert_null(smtp_path_param(NULL, "SIZE"));
}

static void test_params_bad(void **state)
{
	static const char *const bad[] = {
		"<a@b> =1", "<a@b> -SIZE=1", "<a@b> SIZE=", "<a@b> SIZE==1", "<a@b> SIZE=1=2",
		"<a@b> SI_ZE=1", "<a@b> SIZE.1=1", "<a@b> SIZE=1 SIZE=2", "<a@b> size=1 SIZE=1",
		"<a@b> @", "<a@b> SIZE:1", "<> <>", "<a@b> SIZE=1,\x80=", "<a@b> =",
	};
	(void)state;

	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		expect_err(bad[i], ADDR_PARAM_SYNTAX);
	/* Quotes are printable: accepted as value bytes. */
	struct smtp_path p;
	assert_int_equal(parse("<a@b> X=\"1\"", &p), ADDR_OK);
	assert_string_equal(smtp_path_param(&p, "X"), "\"1\"");
	/* But text glued to '>' is not a parameter. */
	expect_err("<a@b>SIZE=1", ADDR_SYNTAX);
}

static void test_params_bounds(void **state)
{
	char key[64], val[600], arg[1400];
	struct smtp_path p;
	(void)state;

	/* Keyword: 31 ok, 32 rejected. */
	make_repeat(key, 'K', 31);
	snprintf(arg, sizeof arg, "<a@b> %s=v", key);
	assert_int_equal(parse(arg, &p), ADDR_OK);
	assert_string_equal(p.params[0].key, key);
	make_repeat(key, 'K', 32);
	snprintf(arg, sizeof arg, "<a@b> %s=v", key);
	expect_err(arg, ADDR_PARAM_SYNTAX);

	/* Value: 511 ok, 512 rejected. */
	make_repeat(val, 'v', 511);
	snprintf(arg, sizeof arg, "<a@b> K=%s", val);
	assert_int_equal(parse(arg, &p), ADDR_OK);
	assert_int_equal(strlen(p.params[0].value), 511);
	make_repeat(val, 'v', 512);
	snprintf(arg, sizeof arg, "<a@b> K=%s", val);
	expect_err(arg, ADDR_PARAM_SYNTAX);

	/* Count: SMTP_PARAMS_MAX ok, one more rejected. */
	size_t n = (size_t)snprintf(arg, sizeof arg, "<a@b>");
	for (int i = 0; i < SMTP_PARAMS_MAX; i++)
		n += (size_t)snprintf(arg + n, sizeof arg - n, " P%d=%d", i, i);
	assert_int_equal(parse(arg, &p), ADDR_OK);
	assert_int_equal(p.nparams, SMTP_PARAMS_MAX);
	assert_string_equal(smtp_path_param(&p, "P15"), "15");
	snprintf(arg + n, sizeof arg - n, " EXTRA");
	expect_err(arg, ADDR_TOO_MANY_PARAMS);
}

/* ---- domains, normalize, xtext ------------------------------------------ */

static void test_domain_valid(void **state)
{
	static const char *const good[] = {
		"example.org", "a", "localhost", "a-b.c", "1.2.3.4", "xn--bcher-kva.example",
		"B\xc3\xbc\x63her.example", "[192.0.2.1]", "[IPv6:2001:db8::1]", "a--b.example",
		"123.example",
	};
	static const char *const bad[] = {
		"", ".", "example.", ".example", "a..b", "-a.example", "a-.example", "a_b.example",
		"a b.example", "exa$mple.org", "[192.0.2.1", "192.0.2.1]", "[]", "[1.2.3]",
		"[IPv6:1.2.3.4]", "[foo]", "\xff.example", "a@b", "b\xc3\xbc-.example",
	};
	(void)state;

	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		if (!smtp_domain_valid(good[i]))
			fail_msg("rejected domain \"%s\"", good[i]);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (smtp_domain_valid(bad[i]))
			fail_msg("accepted domain \"%s\"", bad[i]);
	}
	assert_false(smtp_domain_valid(NULL));
}

static void test_normalize(void **state)
{
	char a[64];
	(void)state;

	strcpy(a, "John.Doe@Example.ORG");
	smtp_addr_normalize(a);
	assert_string_equal(a, "John.Doe@example.org");

	strcpy(a, "\"A@B\"@MX.Example");
	smtp_addr_normalize(a);
	assert_string_equal(a, "\"A@B\"@mx.example");

	strcpy(a, "User@[IPv6:2001:DB8::1]");
	smtp_addr_normalize(a);
	assert_string_equal(a, "User@[ipv6:2001:db8::1]");

	/* Non-ASCII bytes are left alone. */
	strcpy(a, "U@B\xc3\x9c" "CHER.example");
	smtp_addr_normalize(a);
	assert_string_equal(a, "U@b\xc3\x9c" "cher.example");

	strcpy(a, "PostMaster");
	smtp_addr_normalize(a);
	assert_string_equal(a, "PostMaster");
	strcpy(a, "");
	smtp_addr_normalize(a);
	assert_string_equal(a, "");
	smtp_addr_normalize(NULL);
}

static void test_xtext(void **state)
{
	char out[64];
	(void)state;

	assert_true(xtext_decode("rfc822;user@example.org", out, sizeof out));
	assert_string_equal(out, "rfc822;user@example.org");
	assert_true(xtext_decode("a+2Bb+3Dc", out, sizeof out));
	assert_string_equal(out, "a+b=c");
	assert_true(xtext_decode("+20+7E", out, sizeof out));
	assert_string_equal(out, " ~");
	assert_true(xtext_decode("+c3+a9", out, sizeof out));
	assert_string_equal(out, "\xc3\xa9");
	assert_true(xtext_decode("", out, sizeof out));
	assert_string_equal(out, "");

	assert_false(xtext_decode("a+", out, sizeof out));
	assert_false(xtext_decode("a+2", out, sizeof out));
	assert_false(xtext_decode("a+2G", out, sizeof out));
	assert_false(xtext_decode("a+G2", out, sizeof out));
	assert_false(xtext_decode("a=b", out, sizeof out));
	assert_false(xtext_decode("a b", out, sizeof out));
	assert_false(xtext_decode("a\x01", out, sizeof out));
	assert_false(xtext_decode("\xc3\xa9", out, sizeof out));   /* raw 8-bit */
	assert_false(xtext_decode("+00", out, sizeof out));        /* NUL */

	/* Output bound: "abcd" needs 5 bytes. */
	assert_true(xtext_decode("abcd", out, 5));
	assert_string_equal(out, "abcd");
	assert_false(xtext_decode("abcd", out, 4));
	assert_false(xtext_decode("a+41", out, 2));
	assert_true(xtext_decode("a+41", out, 3));
	assert_string_equal(out, "aA");
	assert_false(xtext_decode("a", out, 0));
	assert_false(xtext_decode(NULL, out, sizeof out));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_simple),
		cmocka_unit_test(test_null_path),
		cmocka_unit_test(test_postmaster),
		cmocka_unit_test(test_quoted),
		cmocka_unit_test(test_unbalanced_quotes_reason),
		cmocka_unit_test(test_dots),
		cmocka_unit_test(test_literals),
		cmocka_unit_test(test_utf8),
		cmocka_unit_test(test_source_route),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_control_chars),
		cmocka_unit_test(test_local_part_bounds),
		cmocka_unit_test(test_domain_bounds),
		cmocka_unit_test(test_path_bounds),
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_params_bad),
		cmocka_unit_test(test_params_bounds),
		cmocka_unit_test(test_domain_valid),
		cmocka_unit_test(test_normalize),
		cmocka_unit_test(test_xtext),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
