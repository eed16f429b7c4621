/*
 * state_ctl.c — the state store opened offline by rampartctl (see
 * state_ctl.h).
 */
#include "state_ctl.h"
#include "checks/chain.h"
#include "mail/stage.h"
#include "mail/state.h"
#include "util/alloc.h"
#include "util/config.h"
#include "util/log.h"

#include <event2/event.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
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

static void store_close(struct state_ctl *c)
{
	if (c->st)
		state_close(c->st);
	if (c->base)
		event_base_free(c->base);
	c->st = NULL;
	c->base = NULL;
}

static bool store_open(struct state_ctl *c, const struct state_config *scfg, const char *path, bool create)
{
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
		store_close(c);
		return false;
	}
	if (created)
		give_to_dir_owner(file);
	return true;
}

bool state_ctl_open(struct state_ctl *c, const char *path, const char *instance, const char *check,
		    const struct param_set *set, void *params, bool (*valid)(void *arg, const char *path), void *arg,
		    bool create)
{
	memset(c, 0, sizeof(*c));
	c->check = check;
	log_init("rampartctl", instance);
	log_set_level(LL_ERROR);
	struct config_error err;
	struct config *cfg = config_parse_file(path, &err);
	if (!cfg) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		return false;
	}
	struct global_config g;
	if (!config_bind(cfg, "global", &global_param_set, &g, &err)) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		config_free(cfg);
		return false;
	}
	bool ok = false;
	/* The instance's own settings replace everyone's, as in the chain. */
	chain_check_section(cfg, check, instance, c->section, sizeof(c->section));
	if (!config_bind(cfg, "state", &state_param_set, &c->scfg, &err)) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		goto out;
	}
	c->scfg_bound = true;
	if (set && !config_bind(cfg, c->section, set, params, &err)) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		goto out;
	}
	c->set = set;
	c->params = params;
	if (valid && !valid(arg, path))
		goto out;
	c->scfg.state_dir = g.state_dir;
	ok = store_open(c, &c->scfg, path, create);
out:
	/* state_dir is only read by state_open() */
	config_release(&global_param_set, &g);
	c->scfg.state_dir = NULL;
	config_free(cfg);
	if (!ok)
		state_ctl_close(c);
	return ok;
}

bool state_ctl_open_lmdb(struct state_ctl *c, const char *file, const char *check, bool create)
{
	memset(c, 0, sizeof(*c));
	c->check = check;
	log_init("rampartctl", NULL);
	log_set_level(LL_ERROR);
	struct config_error err;
	struct config *cfg = config_parse_string(file, "", &err);
	bool ok = cfg && config_bind(cfg, "state", &state_param_set, &c->scfg, &err);
	config_free(cfg);
	if (!ok) {
		fprintf(stderr, "rampartctl: %s\n", err.msg);
		return false;
	}
	c->scfg_bound = true;
	struct stat sb;
	if (!create && stat(file, &sb) != 0) {
		fprintf(stderr, "rampartctl: %s: %s\n", file, strerror(errno));
		state_ctl_close(c);
		return false;
	}
	free(c->scfg.lmdb_path);
	c->scfg.lmdb_path = xstrdup(file);
	c->scfg.backend = STATE_BACKEND_LMDB;
	if (!store_open(c, &c->scfg, file, true)) {
		state_ctl_close(c);
		return false;
	}
	return true;
}

void state_ctl_close(struct state_ctl *c)
{
	store_close(c);
	if (c->scfg_bound)
		config_release(&state_param_set, &c->scfg);
	c->scfg_bound = false;
	if (c->set)
		config_release(c->set, c->params);
	c->set = NULL;
}

/* ---- operations ------------------------------------------------------------ */

void state_ctl_done(void *arg, const struct state_result *r)
{
	struct state_ctl_op *op = arg;
	op->done = true;
	op->status = r->status;
	snprintf(op->reason, sizeof(op->reason), "%s", r->reason ? r->reason : "");
	if (r->op == STATE_OP_GET && r->status == STATE_OK) {
		op->vlen = r->vlen <= STATE_VALUE_MAX ? r->vlen : STATE_VALUE_MAX;
		memcpy(op->value, r->value, op->vlen);
		op->value[op->vlen] = '\0';
	}
	op->tokens = r->tokens;
	snprintf(op->cursor, sizeof(op->cursor), "%s", r->op == STATE_OP_SCAN && r->cursor ? r->cursor : "");
	if (op->entry && r->status == STATE_OK)
		for (size_t i = 0; i < r->nentries; i++)
			op->entry(op->arg, &r->entries[i]);
}

bool state_ctl_wait(struct state_ctl *c, struct state_ctl_op *op, const char *what)
{
	while (!op->done)
		event_base_loop(c->base, EVLOOP_ONCE);
	if (op->status == STATE_ERROR) {
		fprintf(stderr, "rampartctl: %s: %s: state store (%s): %s\n", c->check, what, state_backend_name(c->st),
			op->reason);
		return false;
	}
	return true;
}

bool state_ctl_scan(struct state_ctl *c, const char *prefix, void (*entry)(void *arg, const struct state_entry *e),
		    bool (*page)(void *arg), void *arg)
{
	char cursor[STATE_KEY_MAX + 64] = "";
	do {
		struct state_ctl_op op = { .entry = entry, .arg = arg };
		state_scan(c->st, prefix, cursor, STATE_SCAN_MAX, state_ctl_done, &op);
		if (!state_ctl_wait(c, &op, "scan"))
			return false;
		snprintf(cursor, sizeof(cursor), "%s", op.cursor);
		if (page && !page(arg))
			break;
	} while (*cursor);
	return true;
}

void state_ctl_duration(long long secs, char *out, size_t outlen)
{
	static const struct { long long secs; char unit; } u[] = { { 86400, 'd' }, { 3600, 'h' }, { 60, 'm' }, { 1, 's' } };
	if (secs <= 0) {
		snprintf(out, outlen, "0s");
		return;
	}
	size_t i = 0;
	while (secs < u[i].secs)
		i++;
	long long hi = secs / u[i].secs, lo = i + 1 < 4 ? secs % u[i].secs / u[i + 1].secs : 0;
	if (lo)
		snprintf(out, outlen, "%lld%c %lld%c", hi, u[i].unit, lo, u[i + 1].unit);
	else
		snprintf(out, outlen, "%lld%c", hi, u[i].unit);
}
