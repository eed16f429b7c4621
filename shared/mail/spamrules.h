/*
 * spamrules.h — scored content rules of the anti-spam stage (Maraboli
 * DM23): regular expressions on header fields, on the text of the body
 * and on the links, each adding its score when it matches.
 *
 * A rules file holds one rule per line ('#' comments, blank lines):
 *
 *     KIND  NAME  /PATTERN/FLAGS  SCORE  [DESCRIPTION]
 *
 *   KIND   header:FIELD  the field's value (folding removed, RFC 2047
 *                        words decoded to UTF-8), every field of that
 *                        name; header:* every field, as "Name: value"
 *          body          the text of the text parts (decoded, UTF-8,
 *                        HTML as its text; msgtext.h)
 *          uri           each link, as written
 *   NAME   letters, digits and '_', up to 40; once per file
 *   PATTERN, FLAGS       as shared/util/rx (i, x, s, m)
 *   SCORE  a number from -100 to 100 (negative: a sign of ham)
 * A rule counts once per message however often it matches.  A bad rule
 * stops the load with file:line and what was expected.  Matching is
 * bounded (rx's match limit); a match cut by it counts as no match.
 */
#ifndef RAMPART_SPAMRULES_H
#define RAMPART_SPAMRULES_H

#include <stdbool.h>
#include <stddef.h>

struct msgtext;
struct rx_scratch;
struct spamrules;

#define SPAMRULES_MAX 10000
#define SPAMRULE_NAME_MAX 40

/* NULL and why ("file:line: ..."). */
struct spamrules *spamrules_load(const char *path, char *why, size_t whylen);
void spamrules_free(struct spamrules *r);
size_t spamrules_count(const struct spamrules *r);

struct spamrule_hit {
	const char *name;               /* the rules' own strings: valid while they are */
	const char *desc;
	double score;
};

/* The rules that match msg (its text worked out in t), at most max of
 * them listed in hits (*nhits), in file order; the sum of the scores of
 * all that match.  *cut counts the matches a limit stopped. */
double spamrules_eval(const struct spamrules *r, const char *msg, const struct msgtext *t, struct rx_scratch *s,
		      struct spamrule_hit *hits, size_t max, size_t *nhits, unsigned *cut);

#endif
