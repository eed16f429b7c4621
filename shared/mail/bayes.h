/*
 * bayes.h — the Bayesian spam classifier's two halves that need no
 * store: the tokens of a message, and the score of a message from the
 * counts of its tokens (Robinson's f(w) and Fisher's chi-square
 * combining, as SpamBayes and bogofilter do).  Where the counts live (the
 * state store, LMDB or Redis) is the caller's business.
 *
 * Tokens, each given once per message:
 *   h:NAME               a header field is present (the first 1000 fields)
 *   subject:WORD         words of the Subject (RFC 2047 decoded)
 *   from:addr:A  from:domain:D  from:name:WORD    (From and Reply-To)
 *   message-id:@DOMAIN   or message-id:none / message-id:invalid
 *   x-mailer:VALUE       X-Mailer or User-Agent, cut at 40 bytes
 *   ct:TYPE/SUB  charset:CS  cte:ENC  filename:ext:EXT   per MIME part
 *   mime:FLAG            a MIME malformation (mime.h flags)
 *   url:HOST  url:DOMAIN ...  the hosts of the links, and their parent
 *                        domains down to two labels
 *   WORD                 the words of the text parts (HTML as its text),
 *                        lower case, 3 to 12 bytes (24 for non-ASCII);
 *   skip:C N             a longer word: its first byte and length / 10
 *   email:DOMAIN         an e-mail address in the text
 * A message gives at most max_tokens tokens and its text parts at most
 * max_text decoded bytes: a huge message costs no more than a big one.
 * Tokens hold no control characters (they become '?'): they are keys of
 * the state store.
 */
#ifndef RAMPART_BAYES_H
#define RAMPART_BAYES_H

#include <stdbool.h>
#include <stddef.h>

#define BAYES_TOKEN_MAX 64              /* bytes of a token (longer ones are cut) */

struct bayes_tok_opts {
	size_t max_tokens;              /* 0: 3000 */
	size_t max_text;                /* decoded text bytes looked at (0: 256 KiB) */
};

typedef void (*bayes_token_fn)(void *arg, const char *tok, size_t len);

/* Every token of msg[0..len), once each, to fn. */
void bayes_tokens(const char *msg, size_t len, const struct bayes_tok_opts *o, bayes_token_fn fn, void *arg);
/* The same from the message's text worked out already (msgtext.h, built
 * with o's max_text): the anti-spam check reads it for its rules too. */
struct msgtext;
void bayes_tokens_of(const char *msg, const struct msgtext *t, const struct bayes_tok_opts *o, bayes_token_fn fn,
		     void *arg);

/* ---- scoring ---- */

struct bayes_params {
	double unknown_strength;        /* s: weight of the prior (0.45) */
	double unknown_prob;            /* x: the prior (0.5) */
	double min_strength;            /* clues with |f - 0.5| below this are left out (0.1) */
	unsigned max_clues;             /* the strongest this many count (150) */
};
void bayes_params_default(struct bayes_params *p);

/* A token of the message with its training counts. */
struct bayes_token {
	const char *tok;
	long long spam, ham;            /* messages of each kind it was in */
	double prob;                    /* f(w), filled by bayes_score */
};

struct bayes_result {
	double score;                   /* 0 (ham) .. 1 (spam); 0.5 when nothing is known */
	double spam_evidence, ham_evidence;     /* S and H of the chi-square combining */
	size_t nclues;                  /* tokens that counted */
	size_t clues[20];               /* indexes into the token array: the strongest,
					 * strongest first (up to 20) */
	size_t nshown;
};

/* Scores toks[0..n) (prob of each filled in), trained on nspam spam and
 * nham ham messages.  Nothing trained (nspam or nham 0): 0.5. */
void bayes_score(struct bayes_token *toks, size_t n, long long nspam, long long nham, const struct bayes_params *p,
		 struct bayes_result *r);

/* Q(x2 | v): the probability that a chi-square variable with v (even)
 * degrees of freedom exceeds x2. */
double bayes_chi2q(double x2, unsigned v);

#endif
