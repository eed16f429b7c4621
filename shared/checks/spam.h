/*
 * spam.h — the anti-spam check's parameters and decision, for the tools
 * that must decide as the stage does (rampartctl spam score).
 */
#ifndef RAMPART_SPAM_H
#define RAMPART_SPAM_H

#include <stdbool.h>

#include "../util/config.h"

struct spam_params {
	char *rules_file;
	bool bayes;
	double bayes_points;
	double tag_score, quarantine_score, reject_score;
	char *subject_tag;
	bool autolearn;
	double autolearn_spam, autolearn_ham;
	int failure_action;             /* 0 continue, 1 tempfail */
	long long max_text;
	struct strlist dnsbl_sites;     /* the original client's address in DNS lists */
	struct strlist uribl_sites;     /* the domains of the links in DNS lists */
	long long dns_timeout;
	long long max_uri_domains;
};

extern const struct param_set spam_params_set;         /* [check.spam] */

enum spam_action { SPAM_NONE, SPAM_TAG, SPAM_QUARANTINE, SPAM_REJECT, SPAM_TEMPFAIL };

struct spam_outcome {
	double score;                   /* rules + Bayes */
	double bayes_points;            /* what the classifier added */
	bool bayes_used;                /* it was asked, answered, and is trained */
	enum spam_action action;
};

/* The decision for a message whose rules scored rules_score and that the
 * classifier (trained on nspam and nham messages; bayes_ok false when the
 * store could not answer) gives spam probability p. */
enum spam_action spam_decide(const struct spam_params *P, double rules_score, bool bayes_ok, double p,
			     long long nspam, long long nham, struct spam_outcome *o);
const char *spam_action_name(enum spam_action a);
/* The classifier's pseudo-rule for p, as SpamAssassin names them (BAYES_99 ...). */
const char *spam_bayes_rule(double p);

#endif
