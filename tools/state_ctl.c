/*
 * state_ctl.c — the state store opened offline by rampartctl (see
 * state_ctl.h).
 */
#include "state_ctl.h"
#include "mail/state.h"

#include <event2/event.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Files root creates for the daemons go to the owner of their directory. */
static void give_to_dir_owner(const char *file)
{
	if (geteuid() != 0)
		return;
	char dir[4200];
	snprintf(dir, sizeof(dir), "%s", file);
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir)
		*slash = '\0';
	else
		snprintf(dir, sizeof(dir), "%s", slash ? "/" : ".");
	struct stat d, f;
	if (stat(dir, &d) != 0 || d.st_uid == 0)
		return;
	char lock[4300];
	snprintf(lock, sizeof(lock), "%s-lock", file);
	const char *files[] = { file, lock };
	for (size_t i = 0; i < 2; i++)
		if (stat(files[i], &f) == 0 && f.st_uid == 0 && chown(files[i], d.st_uid, d.st_gid) != 0)
			fprintf(stderr, "rampartctl: chown %s: %s\n", files[i], strerror(errno));
}

bool state_ctl_open(struct state_ctl *c, const struct state_config *scfg, const char *path, bool create)
{
	memset(c, 0, sizeof(*c));
	char file[4200] = "";
	bool created = false;
	if (scfg->backend == STATE_BACKEND_LMDB) {
		if (scfg->lmdb_path && *scfg->lmdb_path)
			snprintf(file, sizeof(file), "%s", scfg->lmdb_path);
		else
			snprintf(file, sizeof(file), "%s/state.lmdb", scfg->state_dir ? scfg->state_dir : ".");
		struct stat sb;
		if (stat(file, &sb) != 0) {
			if (!create)
				return true;        /* nothing stored yet */
			created = true;
		}
	}
	c->base = event_base_new();
	if (!c->base) {
		fprintf(stderr, "rampartctl: no event loop\n");
		return false;
	}
	char why[512] = "";
	c->st = state_open(scfg, c->base, why, sizeof(why));
	if (!c->st) {
		fprintf(stderr, "rampartctl: %s: [state] %s\n", path, why);
		state_ctl_close(c);
		return false;
	}
	if (created)
		give_to_dir_owner(file);
	return true;
}

void state_ctl_wait(struct state_ctl *c, const bool *done)
{
	while (!*done)
		event_base_loop(c->base, EVLOOP_ONCE);
}

void state_ctl_close(struct state_ctl *c)
{
	if (c->st)
		state_close(c->st);
	if (c->base)
		event_base_free(c->base);
	c->st = NULL;
	c->base = NULL;
}
