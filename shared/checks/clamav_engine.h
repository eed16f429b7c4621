/*
 * clamav_engine.h — one libclamav engine per process, shared by the
 * scanning threads, and replaced in the background.
 *
 * The engine is built (cl_engine_new, limits, cl_load of every database in
 * the directory, cl_engine_compile) once at start-up, on the caller's
 * thread: a directory that does not load stops the start with why.  After
 * that a reload — the directory changed (looked at every check_interval)
 * or av_engine_reload() (SIGHUP, perhaps with another directory) — builds
 * a new engine on a thread of its own and swaps it in when it is ready;
 * scans in flight keep the engine they started with (libclamav reference
 * counts), and a reload that fails keeps the old engine (and its
 * directory) and logs why (av.reload_failed).  The directory is looked at
 * before each build: a change made while one runs starts another.
 */
#ifndef RAMPART_CLAMAV_ENGINE_H
#define RAMPART_CLAMAV_ENGINE_H

#include <stdbool.h>
#include <stddef.h>

struct cl_engine;
struct event_base;

struct av_limits {
	long long max_scan_size;        /* bytes scanned per message */
	long long max_file_size;        /* bytes of one file inside it */
	long long max_files;            /* files inside it */
	long long max_recursion;        /* archive nesting */
	long long max_scan_time_ms;
	const char *tmp_dir;            /* "" : libclamav's default */
};

struct av_engine;

/* NULL and why when the databases do not load. */
struct av_engine *av_engine_new(struct event_base *base, const char *db_dir, const struct av_limits *lim,
				long long check_interval_ms, char *why, size_t whylen);
void av_engine_free(struct av_engine *e);
/* New limits take effect with the next engine built. */
void av_engine_set_limits(struct av_engine *e, const struct av_limits *lim);
/* Build a new engine in the background (SIGHUP), from db_dir from now on
 * when it is not NULL. */
void av_engine_reload(struct av_engine *e, const char *db_dir);
/* The current engine, referenced, and its generation (NULL: not wanted):
 * give it back with av_engine_release (any thread). */
struct cl_engine *av_engine_acquire(struct av_engine *e, unsigned *generation);
void av_engine_release(struct cl_engine *engine);
/* Signatures in the current engine, and engines built so far. */
unsigned av_engine_signatures(struct av_engine *e);
unsigned av_engine_generation(struct av_engine *e);
/* dir has a database libclamav would read (cheap: no loading); false
 * and why. */
bool av_engine_dir_usable(const char *dir, char *why, size_t whylen);
/* The current engine's directory (loop thread). */
const char *av_engine_dir(const struct av_engine *e);

#endif
