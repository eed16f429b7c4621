/*
 * passdb.h — the accounts that may authenticate to the submission stage:
 * each with its password as a crypt(3) hash (libxcrypt: yescrypt "$y$",
 * or SHA-512-crypt "$6$"), whether it is an application, and the sender
 * addresses it owns.
 *
 * The file, one account per line ('#' comments, blank lines ignored):
 *
 *     NAME:HASH[:OPTION ...]
 *
 * NAME is the login (usually the user's address; no ':' or blanks).  A
 * HASH starting with '!' is a locked account (no login).  OPTIONS are
 * blank-separated:
 *     app               an application (accounting and limits name it so)
 *     senders=LIST      comma-separated sender addresses the account owns:
 *                       local@domain, @domain (any address of the domain),
 *                       @.domain (any address of any subdomain), or *
 *                       (any sender: a relay for many applications)
 * Without senders=, an account whose NAME is an address owns that address.
 * A +subaddress belongs to its address's owner.
 *
 * A bad line stops loading with file:line and what was expected.
 * passdb_refresh() re-reads the file when it changed.
 */
#ifndef RAMPART_PASSDB_H
#define RAMPART_PASSDB_H

#include <stdbool.h>
#include <stddef.h>

struct passdb;

struct passdb_account {
	char *name;
	char *hash;
	bool app;
	bool locked;
	char **senders;
	size_t nsenders;
};

struct passdb *passdb_load(const char *path, char *why, size_t whylen);
void passdb_free(struct passdb *db);
/* Re-read when the file changed (at most once a second); a failed
 * re-read keeps the old accounts and returns false with why, once for
 * each version of the file that fails. */
bool passdb_refresh(struct passdb **db, char *why, size_t whylen);
size_t passdb_count(const struct passdb *db);
/* Case-insensitive; NULL if there is no such account. */
const struct passdb_account *passdb_find(const struct passdb *db, const char *name);
/* A hash to check an unknown account's password against, so that it
 * costs what a real account's does (the same method and cost, whatever
 * the site chose): a real account's hash, which an unknown name never
 * passes anyway.  NULL when the file has no account with a crypt hash. */
const char *passdb_decoy(const struct passdb *db);

/* Does password match hash?  crypt_r(3) with its own state: safe on any
 * thread, and slow by design (call it off the event loop).  A NULL hash
 * (no such account) is checked against a dummy hash anyway, so that an
 * unknown account takes as long as a wrong password. */
bool passdb_verify(const char *hash, const char *password);

/* Does the account own sender address addr (see above)?  The null sender
 * is owned by everyone. */
bool passdb_owns(const struct passdb_account *a, const char *addr);

/* A new hash of password: method "yescrypt" (default) or "sha512".
 * NULL and why on failure.  The result is malloc'ed. */
char *passdb_hash(const char *password, const char *method, char *why, size_t whylen);

/* Rewrite the file with account name set to hash and options (hash NULL:
 * keep the old hash; options NULL: keep the old options), or removed;
 * atomically (tmp, fsync, rename), keeping every other line as it was.
 * create: add the account if it is not there (else it must be).  False
 * with why on failure. */
bool passdb_update(const char *path, const char *name, const char *hash, const char *options, bool remove,
		   bool create, char *why, size_t whylen);

#endif
