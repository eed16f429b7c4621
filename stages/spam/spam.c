/*
 * rampart-spam — stage D: content-based spam defences after the
 * antivirus stage, so no time goes to classifying mail that is thrown
 * away.  The score is the check "spam" (shared/checks/spam.c: scored
 * rules and the Bayesian classifier), so a milter can use it too; what a
 * score leads to (a tag, the quarantine, a refusal) is its policy.
 * Routing: local_domains go to local_next_hops (the store), the rest to
 * next_hops (the outgoing stage), one transaction each.
 * It may reach: its listen sockets, its spool (quarantine/), the state
 * store (the Bayesian counts), the rules file, its next hops.
 */
#include "mail/stage.h"

#include <stddef.h>

struct spam_config {
	struct server_config srv;
};

const struct stage_def spam_stage = {
	.name = "spam",
	.doc = "stage D: anti-spam (scored rules, Bayesian classifier) after the antivirus stage; local mail to the store, the rest out",
	.params = NULL,
	.config_size = sizeof(struct spam_config),
	.lmtp = false,
	.default_checks = "limits spam",
};
