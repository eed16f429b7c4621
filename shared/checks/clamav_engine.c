/*
 * clamav_engine.c — the process's libclamav engine (clamav_engine.h).
 * The swap is a pointer under a mutex; the loader thread reports back to
 * the loop through an event made active from that thread (the stage runs
 * libevent with pthreads enabled).
 */
#include "clamav_engine.h"
#include "../util/alloc.h"
#include "../util/log.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <clamav.h>
#include <event2/event.h>

struct av_engine {
	struct event_base *base;
	char *dir;                      /* the current engine's (loop thread) */
	pthread_mutex_t mu;
	char *want_dir;                 /* what the next build loads (under mu) */
	struct cl_engine *cur;          /* referenced by the holder */
	unsigned sigs, generation;
	struct av_limits lim;           /* strings owned */
	struct cl_stat stat;            /* want_dir as it was when the last build began */
	bool stat_ok;
	/* the background loader */
	bool loading, reload_again, stopping;
	pthread_t loader;
	bool loader_joinable;
	struct cl_engine *built;        /* a new engine, ready to swap */
	unsigned built_sigs;
	char built_why[512];
	long long built_ms;
	struct event *loaded_ev;        /* made active by the loader */
	struct event *watch;            /* looks at the directory */
};

static bool has_databases(const char *dir, char *why, size_t whylen);
static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static cl_error_t init_rc;

/* libclamav's own messages go to our log, not to standard error. */
static void lib_message(enum cl_msg severity, const char *fullmsg, const char *msg, void *context)
{
	(void)fullmsg; (void)context;
	char m[400];
	snprintf(m, sizeof(m), "%s", msg ? msg : "");
	size_t n = strlen(m);
	while (n && (m[n - 1] == '\n' || m[n - 1] == '\r'))
		m[--n] = '\0';
	if (severity == CL_MSG_ERROR)
		log_warn(NULL, NULL, "clamav.message", "severity=error text=%s", m);
	else if (severity == CL_MSG_WARN)
		log_warn(NULL, NULL, "clamav.message", "severity=warning text=%s", m);
	else
		log_debug(NULL, NULL, "clamav.message", "severity=info text=%s", m);
}

static void lib_init(void)
{
	cl_set_clcb_msg(lib_message);
	init_rc = cl_init(CL_INIT_DEFAULT);
}

/* The directory holds at least one database libclamav reads; false and why. */
bool av_engine_dir_usable(const char *dir, char *why, size_t whylen)
{
	return has_databases(dir, why, whylen);
}

static bool has_databases(const char *dir, char *why, size_t whylen)
{
	static const char *const ext[] = { ".cvd", ".cld", ".cud", ".ndb", ".ndu", ".hdb", ".hdu", ".hsb", ".hsu",
					   ".mdb", ".mdu", ".msb", ".msu", ".ldb", ".ldu", ".cdb", ".db", ".cbc",
					   ".idb", ".ftm", ".pdb", ".gdb", ".wdb", ".yar", ".yara", ".crb", ".cat",
					   ".ioc", ".pwdb", NULL };
	DIR *d = opendir(dir);
	if (!d) {
		snprintf(why, whylen, "%s: cannot read the directory: %s", dir, strerror(errno));
		return false;
	}
	bool found = false;
	struct dirent *de;
	while (!found && (de = readdir(d))) {
		const char *dot = strrchr(de->d_name, '.');
		for (size_t i = 0; dot && ext[i] && !found; i++)
			found = strcmp(dot, ext[i]) == 0;
	}
	closedir(d);
	if (!found)
		snprintf(why, whylen, "%s: no signature databases (expected .cvd, .cld, .cud, .ndb, .hdb, .hsb ... files)", dir);
	return found;
}

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void limits_copy(struct av_limits *dst, const struct av_limits *src)
{
	free((char *)dst->tmp_dir);
	*dst = *src;
	dst->tmp_dir = xstrdup(src->tmp_dir ? src->tmp_dir : "");
}

/* A whole new engine from dir with lim; NULL and why. */
static struct cl_engine *build(const char *dir, const struct av_limits *lim, unsigned *sigs, char *why, size_t whylen)
{
	struct cl_engine *e = cl_engine_new();
	if (!e) {
		snprintf(why, whylen, "cl_engine_new failed (out of memory)");
		return NULL;
	}
	cl_error_t rc = CL_SUCCESS;
	if (lim->max_scan_size > 0)
		rc = cl_engine_set_num(e, CL_ENGINE_MAX_SCANSIZE, lim->max_scan_size);
	if (rc == CL_SUCCESS && lim->max_file_size > 0)
		rc = cl_engine_set_num(e, CL_ENGINE_MAX_FILESIZE, lim->max_file_size);
	if (rc == CL_SUCCESS && lim->max_files > 0)
		rc = cl_engine_set_num(e, CL_ENGINE_MAX_FILES, lim->max_files);
	if (rc == CL_SUCCESS && lim->max_recursion > 0)
		rc = cl_engine_set_num(e, CL_ENGINE_MAX_RECURSION, lim->max_recursion);
	if (rc == CL_SUCCESS && lim->max_scan_time_ms > 0)
		rc = cl_engine_set_num(e, CL_ENGINE_MAX_SCANTIME, lim->max_scan_time_ms);
	if (rc == CL_SUCCESS && lim->tmp_dir && *lim->tmp_dir)
		rc = cl_engine_set_str(e, CL_ENGINE_TMPDIR, lim->tmp_dir);
	if (rc != CL_SUCCESS) {
		snprintf(why, whylen, "engine settings: %s", cl_strerror(rc));
		cl_engine_free(e);
		return NULL;
	}
	*sigs = 0;
	if (!has_databases(dir, why, whylen)) {
		cl_engine_free(e);
		return NULL;
	}
	rc = cl_load(dir, e, sigs, CL_DB_STDOPT);
	if (rc != CL_SUCCESS) {
		snprintf(why, whylen, "%s: %s", dir, cl_strerror(rc));
		cl_engine_free(e);
		return NULL;
	}
	if (*sigs == 0) {
		snprintf(why, whylen, "%s: no signatures (expected .cvd, .cld, .cud, .ndb, .hdb, .hsb ... files)", dir);
		cl_engine_free(e);
		return NULL;
	}
	rc = cl_engine_compile(e);
	if (rc != CL_SUCCESS) {
		snprintf(why, whylen, "%s: compile: %s", dir, cl_strerror(rc));
		cl_engine_free(e);
		return NULL;
	}
	return e;
}

static void *loader_main(void *arg)
{
	struct av_engine *e = arg;
	pthread_mutex_lock(&e->mu);
	struct av_limits lim = e->lim;
	char *tmp = xstrdup(e->lim.tmp_dir ? e->lim.tmp_dir : "");
	char *dir = xstrdup(e->want_dir);
	pthread_mutex_unlock(&e->mu);
	lim.tmp_dir = tmp;
	long long t0 = mono_ms();
	char why[512] = "";
	unsigned sigs = 0;
	struct cl_engine *n = build(dir, &lim, &sigs, why, sizeof(why));
	free(tmp);
	free(dir);
	pthread_mutex_lock(&e->mu);
	e->built = n;
	e->built_sigs = sigs;
	e->built_ms = mono_ms() - t0;
	snprintf(e->built_why, sizeof(e->built_why), "%s", why);
	pthread_mutex_unlock(&e->mu);
	event_active(e->loaded_ev, EV_READ, 0);
	return NULL;
}

static void start_loader(struct av_engine *e)
{
	if (e->stopping)
		return;
	if (e->loading) {
		e->reload_again = true;
		return;
	}
	e->loading = true;
	/* The directory as the build will find it, taken before: a change
	 * made while it runs is seen by the next look. */
	if (e->stat_ok)
		cl_statfree(&e->stat);
	e->stat_ok = cl_statinidir(e->want_dir, &e->stat) == CL_SUCCESS;
	if (pthread_create(&e->loader, NULL, loader_main, e) != 0) {
		e->loading = false;
		log_error(NULL, NULL, "av.reload_failed", "dir=%s reason=%s", e->dir, "cannot start a thread");
		return;
	}
	e->loader_joinable = true;
}

/* On the loop: the loader is done. */
static void loaded(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct av_engine *e = arg;
	pthread_join(e->loader, NULL);
	e->loader_joinable = false;
	e->loading = false;
	pthread_mutex_lock(&e->mu);
	struct cl_engine *n = e->built, *old = NULL;
	e->built = NULL;
	char *dir = xstrdup(e->want_dir);
	if (n) {
		old = e->cur;
		e->cur = n;
		e->sigs = e->built_sigs;
		e->generation++;
	}
	unsigned sigs = e->sigs, gen = e->generation;
	pthread_mutex_unlock(&e->mu);
	/* (a broken directory is not tried again until it changes: the
	 * snapshot start_loader took stays) */
	if (n) {
		if (old)
			cl_engine_free(old);        /* freed when its last scan ends */
		free(e->dir);
		e->dir = dir;
		log_info(NULL, NULL, "av.reloaded", "dir=%s signatures=%u engine=%u ms=%lld", e->dir, sigs, gen, e->built_ms);
	} else {
		log_error(NULL, NULL, "av.reload_failed", "dir=%s reason=%s kept_engine=%u kept_dir=%s", dir, e->built_why,
			  gen, e->dir);
		free(dir);
	}
	if (e->reload_again) {
		e->reload_again = false;
		start_loader(e);
	}
}

static void watch_dir(evutil_socket_t fd, short what, void *arg)
{
	(void)fd; (void)what;
	struct av_engine *e = arg;
	if (e->loading || !e->stat_ok)
		return;
	if (cl_statchkdir(&e->stat) == 1) {
		log_info(NULL, NULL, "av.databases_changed", "dir=%s", e->dir);
		start_loader(e);
	}
}

struct av_engine *av_engine_new(struct event_base *base, const char *db_dir, const struct av_limits *lim,
				long long check_interval_ms, char *why, size_t whylen)
{
	pthread_once(&init_once, lib_init);
	if (init_rc != CL_SUCCESS) {
		snprintf(why, whylen, "cl_init: %s", cl_strerror(init_rc));
		return NULL;
	}
	struct av_engine *e = xcalloc(1, sizeof(*e));
	e->base = base;
	e->dir = xstrdup(db_dir);
	e->want_dir = xstrdup(db_dir);
	pthread_mutex_init(&e->mu, NULL);
	limits_copy(&e->lim, lim);
	long long t0 = mono_ms();
	e->stat_ok = cl_statinidir(db_dir, &e->stat) == CL_SUCCESS;     /* before: see start_loader */
	e->cur = build(db_dir, lim, &e->sigs, why, whylen);
	if (!e->cur) {
		av_engine_free(e);
		return NULL;
	}
	e->generation = 1;
	if (base) {
		log_info(NULL, NULL, "av.loaded", "dir=%s signatures=%u ms=%lld", db_dir, e->sigs, mono_ms() - t0);
		e->loaded_ev = event_new(base, -1, 0, loaded, e);
		if (check_interval_ms > 0) {
			e->watch = event_new(base, -1, EV_PERSIST, watch_dir, e);
			struct timeval tv = { check_interval_ms / 1000, (check_interval_ms % 1000) * 1000 };
			event_add(e->watch, &tv);
		}
	}
	return e;
}

void av_engine_free(struct av_engine *e)
{
	if (!e)
		return;
	e->stopping = true;
	if (e->loader_joinable) {
		pthread_join(e->loader, NULL);
		if (e->built)
			cl_engine_free(e->built);
	}
	if (e->watch)
		event_free(e->watch);
	if (e->loaded_ev)
		event_free(e->loaded_ev);
	if (e->cur)
		cl_engine_free(e->cur);
	if (e->stat_ok)
		cl_statfree(&e->stat);
	free((char *)e->lim.tmp_dir);
	pthread_mutex_destroy(&e->mu);
	free(e->dir);
	free(e->want_dir);
	free(e);
}

void av_engine_set_limits(struct av_engine *e, const struct av_limits *lim)
{
	pthread_mutex_lock(&e->mu);
	limits_copy(&e->lim, lim);
	pthread_mutex_unlock(&e->mu);
}

void av_engine_reload(struct av_engine *e, const char *db_dir)
{
	if (db_dir) {
		pthread_mutex_lock(&e->mu);
		free(e->want_dir);
		e->want_dir = xstrdup(db_dir);
		pthread_mutex_unlock(&e->mu);
	}
	start_loader(e);
}

struct cl_engine *av_engine_acquire(struct av_engine *e, unsigned *generation)
{
	pthread_mutex_lock(&e->mu);
	struct cl_engine *c = e->cur;
	cl_engine_addref(c);
	if (generation)
		*generation = e->generation;
	pthread_mutex_unlock(&e->mu);
	return c;
}

void av_engine_release(struct cl_engine *engine)
{
	cl_engine_free(engine);
}

unsigned av_engine_signatures(struct av_engine *e)
{
	pthread_mutex_lock(&e->mu);
	unsigned n = e->sigs;
	pthread_mutex_unlock(&e->mu);
	return n;
}

unsigned av_engine_generation(struct av_engine *e)
{
	pthread_mutex_lock(&e->mu);
	unsigned n = e->generation;
	pthread_mutex_unlock(&e->mu);
	return n;
}

const char *av_engine_dir(const struct av_engine *e)
{
	return e->dir;
}
