/*
 * test_tls_policy.c — unit tests for mail/tls_policy: parsing of
 * tls_policy_domains entries, the errors for bad ones, lookup precedence
 * (exact, closest ".parent", default; smarthost apart), case, match names
 * and the choice of CA file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mail/tls_policy.h"
#include "util/alloc.h"
#include "util/config.h"

/* A strlist over string literals (not freed). */
#define LIST(...) ((struct strlist){ sizeof((char *[]){ __VA_ARGS__ }) / sizeof(char *), (char *[]){ __VA_ARGS__ } })

static struct tls_policy_table *build(enum tls_level def, enum tls_level smart, const char *ca,
				      const struct strlist *entries, char *why, size_t whylen)
{
	struct tls_policy_config c = { .mx_default = def, .smarthost = smart, .ca_file = ca, .entries = entries };
	return tls_policy_new(&c, why, whylen);
}

static struct tls_policy look(const struct tls_policy_table *t, const char *domain)
{
	struct tls_policy p;
	struct tls_policy_query q = { .domain = domain };
	tls_policy_lookup(t, &q, &p);
	return p;
}

/* The error for one bad entry: NULL table, the parameter, the entry and
 * what was expected named. */
static void assert_bad(const char *entry, const char *what)
{
	char why[512] = "";
	struct strlist l = { 1, (char *[]){ (char *)entry } };
	struct tls_policy_table *t = build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "", &l, why, sizeof(why));
	if (t)
		fail_msg("accepted '%s'", entry);
	if (!strstr(why, "tls_policy_domains: '") || !strstr(why, what) || !strstr(why, "expected"))
		fail_msg("'%s': error '%s' lacks '%s'", entry, why, what);
	char quoted[600];
	snprintf(quoted, sizeof(quoted), "'%.300s'", entry);
	if (strlen(entry) < 300 && !strstr(why, quoted))
		fail_msg("'%s': error '%s' does not quote the entry", entry, why);
}

static void test_levels(void **state)
{
	(void)state;
	enum tls_level l;
	assert_true(tls_level_parse("none", &l) && l == TLS_LEVEL_NONE);
	assert_true(tls_level_parse("May", &l) && l == TLS_LEVEL_MAY);
	assert_true(tls_level_parse("ENCRYPT", &l) && l == TLS_LEVEL_ENCRYPT);
	assert_true(tls_level_parse("verify", &l) && l == TLS_LEVEL_VERIFY);
	assert_false(tls_level_parse("secure", &l));
	assert_false(tls_level_parse("", &l));
	assert_string_equal(tls_level_name(TLS_LEVEL_VERIFY), "verify");
	assert_string_equal(tls_level_name(TLS_LEVEL_NONE), "none");
}

static void test_parse_good(void **state)
{
	(void)state;
	char why[512] = "";
	struct strlist l = LIST("example.com:verify", ".example.com:encrypt", "legacy.example:none",
				"Opportunistic.Example.:MAY",
				"names.example:verify:match=mx1.names.example:match=.backup.example",
				"own.example:verify:ca=/etc/rampart/own-ca.pem:match=mx.own.example");
	struct tls_policy_table *t = build(TLS_LEVEL_MAY, TLS_LEVEL_ENCRYPT, "", &l, why, sizeof(why));
	assert_non_null(t);
	struct tls_policy p = look(t, "legacy.example");
	assert_int_equal(p.level, TLS_LEVEL_NONE);
	assert_string_equal(p.source, "domain");
	assert_string_equal(p.entry, "legacy.example");
	p = look(t, "opportunistic.example");
	assert_int_equal(p.level, TLS_LEVEL_MAY);
	assert_string_equal(p.entry, "opportunistic.example");   /* lower case, no final dot */
	p = look(t, "own.example");
	assert_int_equal(p.level, TLS_LEVEL_VERIFY);
	assert_string_equal(p.ca_file, "/etc/rampart/own-ca.pem");
	assert_non_null(p.match);
	assert_int_equal(p.match->n, 1);
	assert_string_equal(p.match->v[0], "mx.own.example");
	tls_policy_free(t);

	/* no entries at all, and a NULL list */
	struct strlist none = { 0, NULL };
	t = build(TLS_LEVEL_ENCRYPT, TLS_LEVEL_MAY, NULL, &none, why, sizeof(why));
	assert_non_null(t);
	p = look(t, "anything.example");
	assert_int_equal(p.level, TLS_LEVEL_ENCRYPT);
	assert_string_equal(p.source, "default");
	assert_string_equal(p.entry, "");
	assert_string_equal(p.ca_file, "");
	assert_null(p.match);
	tls_policy_free(t);
	t = build(TLS_LEVEL_NONE, TLS_LEVEL_MAY, NULL, NULL, why, sizeof(why));
	assert_non_null(t);
	assert_int_equal(look(t, "x.example").level, TLS_LEVEL_NONE);
	tls_policy_free(t);
	tls_policy_free(NULL);
}

static void test_parse_bad(void **state)
{
	(void)state;
	assert_bad("example.com", "no ':LEVEL'");
	assert_bad("example.com:", "bad level");
	assert_bad("example.com:secure", "unknown level 'secure'");
	assert_bad(":verify", "destination: empty name");
	assert_bad(".:verify", "destination");
	assert_bad("exa mple.com:may", "bad character");
	assert_bad("exa*mple.com:may", "bad character");
	assert_bad("*.example.com:may", "bad character");
	assert_bad("a..example.com:may", "empty label");
	assert_bad("..example.com:may", "empty label");
	assert_bad("b\xc3\xa4r.example:may", "non-ASCII");
	assert_bad("example.com:verify:", "empty field");
	assert_bad("example.com:verify::match=a.example", "empty field");
	assert_bad("example.com:verify:match=", "match=: empty name");
	assert_bad("example.com:verify:match=bad name", "bad character");
	assert_bad("example.com:verify:match=*.example.com", "bad character");
	assert_bad("example.com:verify:match=a.example.", "ends with '.'");
	assert_bad("example.com:verify:ca=", "ca= needs an absolute path");
	assert_bad("example.com:verify:ca=relative/ca.pem", "absolute path");
	assert_bad("example.com:verify:ca=/a.pem:ca=/b.pem", "ca= given twice");
	assert_bad("example.com:verify:mx.example.com", "unknown attribute 'mx.example.com'");
	assert_bad("example.com:encrypt:match=mx.example.com", "only to the verify level, not encrypt");
	assert_bad("example.com:may:ca=/etc/ca.pem", "only to the verify level, not may");

	/* a label of 64 bytes, a name of more than 253 */
	char e[600];
	snprintf(e, sizeof(e), "%s.example:may", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
	assert_bad(e, "label longer than 63");
	char name[300];
	for (size_t i = 0; i < 260; i += 2)
		memcpy(name + i, "a.", 2);
	name[259] = 'a';
	name[260] = '\0';
	snprintf(e, sizeof(e), "%s:may", name);
	assert_bad(e, "longer than 253");
	/* more match names than allowed */
	char m[800];
	snprintf(m, sizeof(m), "example.com:verify");
	for (int i = 0; i <= TLS_POLICY_MAX_MATCH; i++)
		snprintf(m + strlen(m), sizeof(m) - strlen(m), ":match=mx%d.example.com", i);
	assert_bad(m, "more than 8 match= names");
	/* an entry longer than the bound */
	char *big = xmalloc(TLS_POLICY_MAX_ENTRY + 100);
	memset(big, 'a', TLS_POLICY_MAX_ENTRY + 50);
	memcpy(big + TLS_POLICY_MAX_ENTRY + 50, ":may", 5);
	char why[512];
	struct strlist l = { 1, &big };
	assert_null(build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "", &l, why, sizeof(why)));
	assert_non_null(strstr(why, "entry longer than 1024 bytes"));
	free(big);

	/* the first bad entry among good ones is the one named */
	struct strlist l2 = LIST("good.example:verify", "bad.example:maybe", "other.example:none");
	assert_null(build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "", &l2, why, sizeof(why)));
	assert_non_null(strstr(why, "'bad.example:maybe'"));
	assert_null(strstr(why, "good.example"));
}

static void test_duplicates(void **state)
{
	(void)state;
	char why[512];
	struct strlist l = LIST("a.example:may", "Example.COM:verify", "b.example:none", "example.com.:encrypt");
	assert_null(build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "", &l, why, sizeof(why)));
	assert_non_null(strstr(why, "tls_policy_domains: "));
	assert_non_null(strstr(why, "Example.COM:verify"));
	assert_non_null(strstr(why, "example.com.:encrypt"));
	assert_non_null(strstr(why, "both for 'example.com'"));
	/* an exact and a dot entry for the same name are different destinations */
	struct strlist ok = LIST("example.com:verify", ".example.com:encrypt");
	struct tls_policy_table *t = build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "", &ok, why, sizeof(why));
	assert_non_null(t);
	tls_policy_free(t);
	/* too many entries */
	struct strlist many = { TLS_POLICY_MAX_ENTRIES + 1, NULL };
	many.v = xcalloc(many.n, sizeof(char *));
	for (size_t i = 0; i < many.n; i++)
		many.v[i] = "x.example:may";
	assert_null(build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "", &many, why, sizeof(why)));
	assert_non_null(strstr(why, "tls_policy_domains: 10001 entries, at most 10000"));
	free(many.v);
}

static void test_precedence(void **state)
{
	(void)state;
	char why[512];
	struct strlist l = LIST("example.com:verify", ".example.com:encrypt", ".deep.example.com:none",
				"mail.deep.example.com:may", ".org:encrypt");
	struct tls_policy_table *t = build(TLS_LEVEL_MAY, TLS_LEVEL_NONE, "", &l, why, sizeof(why));
	assert_non_null(t);
	struct { const char *domain; enum tls_level level; const char *source, *entry; } cases[] = {
		{ "example.com", TLS_LEVEL_VERIFY, "domain", "example.com" },            /* exact, not .example.com */
		{ "sub.example.com", TLS_LEVEL_ENCRYPT, "domain", ".example.com" },
		{ "a.b.c.example.com", TLS_LEVEL_ENCRYPT, "domain", ".example.com" },    /* any depth */
		{ "deep.example.com", TLS_LEVEL_ENCRYPT, "domain", ".example.com" },     /* .deep is for below deep */
		{ "x.deep.example.com", TLS_LEVEL_NONE, "domain", ".deep.example.com" }, /* closest parent wins */
		{ "mail.deep.example.com", TLS_LEVEL_MAY, "domain", "mail.deep.example.com" }, /* exact beats parents */
		{ "y.mail.deep.example.com", TLS_LEVEL_NONE, "domain", ".deep.example.com" },
		{ "example.org", TLS_LEVEL_ENCRYPT, "domain", ".org" },
		{ "notexample.com", TLS_LEVEL_MAY, "default", "" },                      /* label boundary */
		{ "example.com.au", TLS_LEVEL_MAY, "default", "" },
		{ "com", TLS_LEVEL_MAY, "default", "" },
		{ "", TLS_LEVEL_MAY, "default", "" },
		{ "example.net", TLS_LEVEL_MAY, "default", "" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tls_policy p = look(t, cases[i].domain);
		if (p.level != cases[i].level || strcmp(p.source, cases[i].source) || strcmp(p.entry, cases[i].entry))
			fail_msg("%s: got %s/%s/%s, want %s/%s/%s", cases[i].domain, tls_level_name(p.level), p.source,
				 p.entry, tls_level_name(cases[i].level), cases[i].source, cases[i].entry);
	}
	/* NULL domain: the default */
	struct tls_policy p;
	struct tls_policy_query q = { .domain = NULL };
	tls_policy_lookup(t, &q, &p);
	assert_int_equal(p.level, TLS_LEVEL_MAY);
	/* a domain too long to be one: the default, no crash */
	char longd[400];
	memset(longd, 'a', sizeof(longd) - 1);
	longd[sizeof(longd) - 1] = '\0';
	memcpy(longd + sizeof(longd) - 13, ".example.com", 12);
	assert_string_equal(look(t, longd).source, "default");

	/* the smarthost has its own level, whatever the entries say */
	q = (struct tls_policy_query){ .domain = "example.com", .smarthost = true };
	tls_policy_lookup(t, &q, &p);
	assert_int_equal(p.level, TLS_LEVEL_NONE);
	assert_string_equal(p.source, "smarthost");
	assert_string_equal(p.entry, "");
	q.domain = "";
	tls_policy_lookup(t, &q, &p);
	assert_string_equal(p.source, "smarthost");
	tls_policy_free(t);
}

static void test_case_insensitive(void **state)
{
	(void)state;
	char why[512];
	struct strlist l = LIST("Example.COM:Verify", ".Sub.Example.Net:ENCRYPT");
	struct tls_policy_table *t = build(TLS_LEVEL_NONE, TLS_LEVEL_MAY, "", &l, why, sizeof(why));
	assert_non_null(t);
	assert_int_equal(look(t, "example.com").level, TLS_LEVEL_VERIFY);
	assert_int_equal(look(t, "EXAMPLE.com").level, TLS_LEVEL_VERIFY);
	assert_int_equal(look(t, "eXaMpLe.CoM.").level, TLS_LEVEL_VERIFY);     /* final dot */
	assert_int_equal(look(t, "MX.SUB.example.NET").level, TLS_LEVEL_ENCRYPT);
	assert_string_equal(look(t, "mx.sub.example.net").entry, ".sub.example.net");
	assert_int_equal(look(t, "sub.example.net").level, TLS_LEVEL_NONE);
	tls_policy_free(t);
}

static void test_match_names(void **state)
{
	(void)state;
	char why[512];
	struct strlist l = LIST("example.com:verify:match=MX1.Example.com:match=mx2.example.com",
				".example.com:verify:match=.example.com",
				"plain.example:verify");
	struct tls_policy_table *t = build(TLS_LEVEL_VERIFY, TLS_LEVEL_VERIFY, "", &l, why, sizeof(why));
	assert_non_null(t);
	struct tls_policy p = look(t, "example.com");
	assert_non_null(p.match);
	assert_int_equal(p.match->n, 2);
	assert_string_equal(p.match->v[0], "mx1.example.com");       /* lower case, in order */
	assert_string_equal(p.match->v[1], "mx2.example.com");
	p = look(t, "a.example.com");
	assert_non_null(p.match);
	assert_int_equal(p.match->n, 1);
	assert_string_equal(p.match->v[0], ".example.com");
	/* no match=: the host connected to (NULL), also for the default and the smarthost */
	assert_null(look(t, "plain.example").match);
	assert_null(look(t, "other.example").match);
	assert_int_equal(look(t, "other.example").level, TLS_LEVEL_VERIFY);
	struct tls_policy_query q = { .smarthost = true };
	tls_policy_lookup(t, &q, &p);
	assert_null(p.match);
	tls_policy_free(t);

	/* exactly the maximum is fine */
	char e[800];
	snprintf(e, sizeof(e), "example.com:verify");
	for (int i = 0; i < TLS_POLICY_MAX_MATCH; i++)
		snprintf(e + strlen(e), sizeof(e) - strlen(e), ":match=mx%d.example.com", i);
	struct strlist l2 = { 1, (char *[]){ e } };
	t = build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "", &l2, why, sizeof(why));
	assert_non_null(t);
	assert_int_equal(look(t, "example.com").match->n, TLS_POLICY_MAX_MATCH);
	tls_policy_free(t);
}

static bool has_ca(const struct tls_policy_table *t, const char *file)
{
	for (size_t i = 0; i < tls_policy_ca_count(t); i++)
		if (strcmp(tls_policy_ca_file(t, i), file) == 0)
			return true;
	return false;
}

static void test_ca_selection(void **state)
{
	(void)state;
	char why[512];
	struct strlist l = LIST("own.example:verify:ca=/etc/own.pem", ".own.example:verify:ca=/etc/own.pem",
				"other.example:verify:ca=/etc/other.pem", "global.example:verify", "enc.example:encrypt");
	struct tls_policy_table *t = build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "/etc/global.pem", &l, why, sizeof(why));
	assert_non_null(t);
	assert_string_equal(look(t, "own.example").ca_file, "/etc/own.pem");
	assert_string_equal(look(t, "x.own.example").ca_file, "/etc/own.pem");
	assert_string_equal(look(t, "other.example").ca_file, "/etc/other.pem");
	assert_string_equal(look(t, "global.example").ca_file, "/etc/global.pem");
	assert_string_equal(look(t, "default.example").ca_file, "/etc/global.pem");
	/* each file once; the global one because an entry without ca= verifies */
	assert_int_equal(tls_policy_ca_count(t), 3);
	assert_true(has_ca(t, "/etc/own.pem"));
	assert_true(has_ca(t, "/etc/other.pem"));
	assert_true(has_ca(t, "/etc/global.pem"));
	assert_null(tls_policy_ca_file(t, 3));
	assert_true(tls_policy_any_required(t));
	tls_policy_free(t);

	/* the system store ("") when tls_ca_file is empty; nothing to load
	 * when nothing verifies */
	struct strlist l2 = LIST("a.example:verify");
	t = build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, NULL, &l2, why, sizeof(why));
	assert_string_equal(look(t, "a.example").ca_file, "");
	assert_int_equal(tls_policy_ca_count(t), 1);
	assert_string_equal(tls_policy_ca_file(t, 0), "");
	tls_policy_free(t);
	struct strlist l3 = LIST("a.example:may", "b.example:none");
	t = build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "/etc/global.pem", &l3, why, sizeof(why));
	assert_int_equal(tls_policy_ca_count(t), 0);
	assert_false(tls_policy_any_required(t));
	tls_policy_free(t);
	/* only entries with their own CA: the global file is not needed */
	struct strlist l4 = LIST("a.example:verify:ca=/etc/a.pem");
	t = build(TLS_LEVEL_ENCRYPT, TLS_LEVEL_MAY, "/etc/global.pem", &l4, why, sizeof(why));
	assert_int_equal(tls_policy_ca_count(t), 1);
	assert_string_equal(tls_policy_ca_file(t, 0), "/etc/a.pem");
	assert_true(tls_policy_any_required(t));
	tls_policy_free(t);
	/* a verifying default or smarthost needs the global file */
	t = build(TLS_LEVEL_VERIFY, TLS_LEVEL_MAY, "/etc/global.pem", NULL, why, sizeof(why));
	assert_int_equal(tls_policy_ca_count(t), 1);
	tls_policy_free(t);
	t = build(TLS_LEVEL_MAY, TLS_LEVEL_VERIFY, "", NULL, why, sizeof(why));
	assert_int_equal(tls_policy_ca_count(t), 1);
	assert_string_equal(tls_policy_ca_file(t, 0), "");
	struct tls_policy p;
	struct tls_policy_query q = { .smarthost = true };
	tls_policy_lookup(t, &q, &p);
	assert_int_equal(p.level, TLS_LEVEL_VERIFY);
	assert_string_equal(p.ca_file, "");
	tls_policy_free(t);
}

/* The table is independent of the strings it was built from. */
static void test_owns_its_strings(void **state)
{
	(void)state;
	char why[512];
	char *e = xstrdup("Example.com:verify:match=mx.example.com:ca=/etc/x.pem");
	struct strlist l = { 1, &e };
	struct tls_policy_table *t = build(TLS_LEVEL_MAY, TLS_LEVEL_MAY, "/etc/g.pem", &l, why, sizeof(why));
	memset(e, 'z', strlen(e));
	free(e);
	struct tls_policy p = look(t, "example.com");
	assert_int_equal(p.level, TLS_LEVEL_VERIFY);
	assert_string_equal(p.entry, "example.com");
	assert_string_equal(p.match->v[0], "mx.example.com");
	assert_string_equal(p.ca_file, "/etc/x.pem");
	tls_policy_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_levels),
		cmocka_unit_test(test_parse_good),
		cmocka_unit_test(test_parse_bad),
		cmocka_unit_test(test_duplicates),
		cmocka_unit_test(test_precedence),
		cmocka_unit_test(test_case_insensitive),
		cmocka_unit_test(test_match_names),
		cmocka_unit_test(test_ca_selection),
		cmocka_unit_test(test_owns_its_strings),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
