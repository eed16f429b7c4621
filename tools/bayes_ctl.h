/*
 * bayes_ctl.h — rampartctl's commands on the Bayesian classifier:
 *
 *   bayes train spam|ham [--untrain] [--db FILE] PATH...
 *       learn (or unlearn) messages: a PATH is a message file, an mbox
 *       file ("From " lines), a Maildir (cur/ and new/) or a directory of
 *       message files
 *   bayes stats [--db FILE]
 *       messages trained and tokens known
 *   spam score [--db FILE] [--config FILE] [--top N] [FILE...]
 *       what the classifier says of one message on standard input: its
 *       score, verdict and strongest clues; with FILEs, one line per file
 *       ("SCORE VERDICT FILE")
 *
 * The counts live in the state store of the configuration ([state], as
 * the stages use it), or in the LMDB file --db names.
 */
#ifndef RAMPART_BAYES_CTL_H
#define RAMPART_BAYES_CTL_H

int bayes_ctl_main(const char *path, const char *instance, int argc, char **argv);
int spam_ctl_main(const char *path, const char *instance, int argc, char **argv);

#endif
