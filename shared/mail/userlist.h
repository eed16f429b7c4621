/*
 * userlist.h — the site's mail users: one address per line, with an
 * optional mailbox quota ("alice@example.test 100m"); '#' comments.
 *
 * The store reads the list the administrator keeps and publishes the bare
 * addresses (userlist_publish) for the MX and submission stages, which
 * load it to refuse unknown recipients at RCPT time (no backscatter).
 * userlist_refresh() re-reads the file when it changed on disk.
 */
#ifndef RAMPART_USERLIST_H
#define RAMPART_USERLIST_H

#include <stdbool.h>
#include <stddef.h>

struct userlist;

/* NULL and why (file:line and what was expected) on error. */
struct userlist *userlist_load(const char *path, char *why, size_t whylen);
void userlist_free(struct userlist *u);
/* Re-read if the file changed (checked at most once per second); a failed
 * re-read keeps the old list and returns false with why. */
bool userlist_refresh(struct userlist **u, char *why, size_t whylen);
size_t userlist_count(const struct userlist *u);
/* Case-insensitive lookup; quota set to bytes (0: none) when found. */
bool userlist_find(const struct userlist *u, const char *addr, long long *quota);
/* Write the addresses, one per line, atomically (tmp + fsync + rename). */
bool userlist_publish(const struct userlist *u, const char *path, char *why, size_t whylen);

#endif
