/*
 * clamav.c — antivirus (Maraboli DM28): every message scanned by
 * libclamav at the end of DATA, whole (RFC 5322, with mail, archive and
 * document parsing), before anything else spends time on it.
 *
 * The engine is the process's (clamav_engine.h: loaded once, shared by
 * the scanning threads, replaced in the background when the database
 * directory changes or on SIGHUP).  Scans run on `threads` worker threads
 * (shared/util/workers) straight from the message in memory; the event
 * loop never waits for one.  A message whose body was found clean by the
 * same engine recently is not scanned again (a client's retry): a bounded
 * cache of SHA-256 hashes of the whole message.
 *
 * What an infected message gets is the site's policy (action):
 *   reject      554 5.7.1 naming the signature (in proxy mode the
 *               original client gets it at SMTP time: no bounce)
 *   quarantine  the message is kept in the spool's quarantine/
 *               (rampartctl quarantine list|show|release|delete)
 *   tag         X-Virus-Status: Infected (NAME) and passed on
 *   discard     accepted and dropped (logged)
 * A message over a scan limit (size, files, recursion, time: libclamav's
 * Heuristics.Limits.Exceeded) gets limits_action: tempfail, tag or
 * accept.  A scanner failure (engine error, out of memory, a scan past
 * max_scan_time) gets failure_action: tempfail (451 4.7.1, never a silent
 * pass) or tag.  Clean mail gets X-Virus-Scanned and X-Virus-Status:
 * Clean (scanned_headers).  The X-Virus-Scanned and X-Virus-Status
 * fields a message arrives with are removed whatever the result.  Every
 * result is one log line (av.result: the signature, the action, the
 * time) and counted by result and signature.
 */
#include "check.h"
#include "clamav_engine.h"
#include "shared.h"
#include "../util/alloc.h"
#include "../util/buf.h"
#include "../util/log.h"
#include "../util/metrics.h"
#include "../util/workers.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>

#include <clamav.h>
#include <openssl/evp.h>

#define MAX_WAITING 1024

enum av_action { ACT_REJECT, ACT_QUARANTINE, ACT_TAG, ACT_DISCARD };
enum av_fallback { FB_TEMPFAIL, FB_TAG, FB_ACCEPT };

struct clamav_params {
	char *database_dir;
	int action;
	int limits_action;
	int failure_action;
	long long max_scan_size, max_file_size, max_files, max_recursion, max_scan_time;
	char *tmp_dir;
	long long threads;
	long long clean_cache_size;
	long long clean_cache_ttl;
	long long database_check_interval;
	bool scanned_headers;
};

#define P(f) offsetof(struct clamav_params, f)
static const struct param_def clamav_param_defs[] = {
	{ "database_dir", PT_STR, "/var/lib/clamav", 1, 0, NULL, P(database_dir),
	  "signature databases (.cvd .cld .cud .ndb .hdb .hsb ...); re-read when they change" },
	{ "action", PT_ENUM, "reject", 0, 0, "reject|quarantine|tag|discard", P(action),
	  "what an infected message gets: reject (554 5.7.1 with the signature), quarantine, tag (X-Virus-Status) or discard" },
	{ "limits_action", PT_ENUM, "tempfail", 0, 0, "tempfail|tag|accept", P(limits_action),
	  "a message over a scan limit (size, files, recursion, time): tempfail (451), tag, or accept" },
	{ "failure_action", PT_ENUM, "tempfail", 0, 0, "tempfail|tag", P(failure_action),
	  "when the scanner fails (engine error, out of memory, timeout): tempfail (451 4.7.1) or tag and pass" },
	{ "max_scan_size", PT_SIZE, "100m", 1024, 1LL << 40, NULL, P(max_scan_size), "bytes scanned per message" },
	{ "max_file_size", PT_SIZE, "25m", 1024, 1LL << 40, NULL, P(max_file_size), "bytes of one file inside a message" },
	{ "max_files", PT_INT, "10000", 1, 1000000, NULL, P(max_files), "files inside a message (archives, attachments)" },
	{ "max_recursion", PT_INT, "30", 1, 100, NULL, P(max_recursion), "archive nesting (the mail and its MIME parts count as levels too)" },
	{ "max_scan_time", PT_TIME, "120s", 1, 3600000, NULL, P(max_scan_time), "one message's scan (then failure_action)" },
	{ "tmp_dir", PT_STR, "", 0, 0, NULL, P(tmp_dir), "libclamav's temporary files (tmpfs recommended; empty: its default)" },
	{ "threads", PT_INT, "2", 1, 256, NULL, P(threads), "scanning threads" },
	{ "clean_cache_size", PT_INT, "10000", 0, 10000000, NULL, P(clean_cache_size),
	  "message bodies remembered as clean (by SHA-256), so a retry is not scanned again; 0: none" },
	{ "clean_cache_ttl", PT_TIME, "1h", 1000, 604800000, NULL, P(clean_cache_ttl), "how long a clean result is remembered" },
	{ "database_check_interval", PT_TIME, "60s", 0, 86400000, NULL, P(database_check_interval),
	  "how often the database directory is looked at for changes (0: only on SIGHUP)" },
	{ "scanned_headers", PT_BOOL, "yes", 0, 0, NULL, P(scanned_headers),
	  "add X-Virus-Scanned and X-Virus-Status: Clean to clean mail" },
	PARAM_END
};

static const struct param_set clamav_params_set = {
	"check.clamav", "antivirus: libclamav scan of every message, with a policy for what is found", clamav_param_defs,
	sizeof(struct clamav_params)
};

struct cache_entry {
	unsigned char hash[32];
	unsigned generation;
	long long expires_ms;
};

struct clamav_check {
	const struct clamav_params *p;
	struct av_engine *engine;       /* the process's (in env->shared), or ours when checking a configuration */
	bool own_engine;
	struct workers *pool;
	const char *hostname;
	struct cache_entry *cache;      /* looked up by the scanning threads, filled by the loop */
	size_t cache_size;
	pthread_mutex_t cache_mu;
	struct metric *m_scans, *m_found, *m_seconds;
};

enum scan_result { SCAN_CLEAN, SCAN_INFECTED, SCAN_LIMITS, SCAN_ERROR };
static const char *const result_names[] = { "clean", "infected", "limits", "error" };

struct scan_job {
	struct workers_job link;        /* first: the pool's */
	struct clamav_check *c;
	struct check_ctx *ctx;
	struct check_call *call;
	const char *data;
	size_t len;
	unsigned char hash[32];
	bool hashed;
	enum scan_result result;
	char signature[200];
	char error[120];
	unsigned generation;
	long long ms;
	bool cached;
};

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the clean cache ------------------------------------------------------- */

static struct cache_entry *cache_slot(struct clamav_check *c, const unsigned char *h)
{
	size_t i;
	memcpy(&i, h, sizeof(i));
	return &c->cache[i % c->cache_size];
}

static bool cache_hit(struct clamav_check *c, const unsigned char *h, unsigned generation)
{
	if (!c->cache)
		return false;
	pthread_mutex_lock(&c->cache_mu);
	const struct cache_entry *e = cache_slot(c, h);
	bool hit = e->generation == generation && e->expires_ms > mono_ms() && memcmp(e->hash, h, 32) == 0;
	pthread_mutex_unlock(&c->cache_mu);
	return hit;
}

static void cache_put(struct clamav_check *c, const unsigned char *h, unsigned generation)
{
	if (!c->cache)
		return;
	pthread_mutex_lock(&c->cache_mu);
	struct cache_entry *e = cache_slot(c, h);
	memcpy(e->hash, h, 32);
	e->generation = generation;
	e->expires_ms = mono_ms() + c->p->clean_cache_ttl;
	pthread_mutex_unlock(&c->cache_mu);
}

/* ---- scanning (worker threads) ------------------------------------------- */

static void run_scan(void *owner, void *state, struct workers_job *job)
{
	(void)state;
	struct clamav_check *c = owner;
	struct scan_job *j = (struct scan_job *)job;
	long long t0 = mono_ms();
	struct cl_engine *engine = av_engine_acquire(c->engine, &j->generation);
	if (c->cache) {
		/* the whole message: how a body decodes depends on its
		 * Content-Type and Content-Transfer-Encoding fields (hashed
		 * here, not on the loop: a message may be 100 MB) */
		unsigned int n = 32;
		j->hashed = EVP_Digest(j->data, j->len, j->hash, &n, EVP_sha256(), NULL) == 1;
		if (j->hashed && cache_hit(c, j->hash, j->generation)) {
			j->cached = true;
			j->result = SCAN_CLEAN;
			av_engine_release(engine);
			return;
		}
	}
	cl_fmap_t *map = cl_fmap_open_memory(j->data, j->len);
	if (!map) {
		j->result = SCAN_ERROR;
		snprintf(j->error, sizeof(j->error), "cannot map the message (out of memory)");
		av_engine_release(engine);
		return;
	}
	struct cl_scan_options opt;
	memset(&opt, 0, sizeof(opt));
	opt.general = CL_SCAN_GENERAL_HEURISTICS;
	opt.parse = ~0u;
	opt.heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX;
	const char *virname = NULL;
	unsigned long scanned = 0;
	cl_error_t rc = cl_scanmap_callback(map, "message", &virname, &scanned, engine, &opt, NULL);
	cl_fmap_close(map);
	if (rc == CL_VIRUS && virname && strstr(virname, "Heuristics.Limits.Exceeded.MaxScanTime")) {
		j->result = SCAN_ERROR;         /* a timeout is a failure, not a verdict */
		snprintf(j->error, sizeof(j->error), "scan time limit reached");
	} else if (rc == CL_VIRUS && virname) {
		bool limits = strncmp(virname, "Heuristics.Limits.Exceeded", 26) == 0;
		j->result = limits ? SCAN_LIMITS : SCAN_INFECTED;
		snprintf(j->signature, sizeof(j->signature), "%s", virname);
	} else if (rc == CL_CLEAN) {
		j->result = SCAN_CLEAN;
	} else {
		j->result = SCAN_ERROR;
		snprintf(j->error, sizeof(j->error), "%s", rc == CL_ETIMEOUT ? "scan time limit reached" : cl_strerror(rc));
	}
	/* only now: the signature name lives in the engine's memory */
	av_engine_release(engine);
	j->ms = mono_ms() - t0;
}

static void count_scan(void *owner, struct workers_job *job)
{
	struct clamav_check *c = owner;
	struct scan_job *j = (struct scan_job *)job;
	if (j->result == SCAN_CLEAN && j->hashed && !j->cached)
		cache_put(c, j->hash, j->generation);
	if (!c->m_scans)
		return;
	char l[300];
	snprintf(l, sizeof(l), "result=\"%s\"", j->cached ? "cached" : result_names[j->result]);
	metric_inc(c->m_scans, l);
	if (!j->cached)
		metric_add(c->m_seconds, NULL, (double)j->ms / 1000.0);
	if (j->result == SCAN_INFECTED) {
		struct buf b = BUF_INIT;
		metrics_escape_label(&b, j->signature);
		snprintf(l, sizeof(l), "signature=\"%s\"", buf_cstr(&b));
		buf_free(&b);
		metric_inc(c->m_found, l);
	}
}

/* Our verdict headers (answer has removed the message's own). */
static void add_tag(struct clamav_check *c, struct check_ctx *ctx, const char *status)
{
	char v[300];
	snprintf(v, sizeof(v), "ClamAV using Rampart on %s", c->hostname);
	check_ctx_add_header(ctx, "X-Virus-Scanned", v);
	check_ctx_add_header(ctx, "X-Virus-Status", status);
}

static const char *const action_names[] = { "reject", "quarantine", "tag", "discard" };
static const char *const fallback_names[] = { "tempfail", "tag", "accept" };

/* The answer for a finished scan. */
static void answer(struct scan_job *j)
{
	struct clamav_check *c = j->c;
	struct check_ctx *ctx = j->ctx;
	struct check_call *call = j->call;
	struct verdict v = { .kind = V_CONTINUE };
	const char *action = "accept";
	char status[300];
	/* The verdict headers the message arrived with go, whatever the
	 * action and whether we add ours (a forged "X-Virus-Status: Clean"
	 * must not reach the filters downstream). */
	check_ctx_remove_all(ctx, "X-Virus-Scanned");
	check_ctx_remove_all(ctx, "X-Virus-Status");
	switch (j->result) {
	case SCAN_CLEAN:
		if (c->p->scanned_headers)
			add_tag(c, ctx, "Clean");
		action = "accept";
		break;
	case SCAN_INFECTED:
		action = action_names[c->p->action];
		snprintf(status, sizeof(status), "Infected (%s)", j->signature);
		switch (c->p->action) {
		case ACT_REJECT:
			v.kind = V_REJECT;
			v.code = 554;
			snprintf(v.enh, sizeof(v.enh), "5.7.1");
			snprintf(v.reason, sizeof(v.reason), "Message rejected: virus found (%s)", j->signature);
			break;
		case ACT_QUARANTINE:
			v.kind = V_QUARANTINE;
			snprintf(v.reason, sizeof(v.reason), "virus found (%s)", j->signature);
			break;
		case ACT_TAG:
			add_tag(c, ctx, status);
			break;
		case ACT_DISCARD:
			v.kind = V_DISCARD;
			snprintf(v.reason, sizeof(v.reason), "virus found (%s)", j->signature);
			break;
		}
		break;
	case SCAN_LIMITS:
	case SCAN_ERROR: {
		int fb = j->result == SCAN_LIMITS ? c->p->limits_action : c->p->failure_action;
		action = fallback_names[fb];
		if (fb == FB_TEMPFAIL) {
			v.kind = V_TEMPFAIL;
			v.code = 451;
			snprintf(v.enh, sizeof(v.enh), "4.7.1");
			snprintf(v.reason, sizeof(v.reason), "%s; try again later",
				 j->result == SCAN_LIMITS ? "Message could not be scanned completely (over a scan limit)"
							  : "Virus scanner temporarily unavailable");
		} else if (fb == FB_TAG) {
			snprintf(status, sizeof(status), "%s", j->result == SCAN_LIMITS ? "Unscanned (over a scan limit)"
											 : "Unscanned (scanner failure)");
			add_tag(c, ctx, status);
		}
		break;
	}
	}
	log_info(ctx->sid, ctx->qid, "av.result", "result=%s signature=%s action=%s error=%s ms=%lld cached=%s engine=%u "
		 "size=%zu", result_names[j->result], j->signature, action, j->error, j->ms, j->cached ? "yes" : "no",
		 j->generation, j->len);
	check_done(call, &v);
}

static void scan_done(struct workers_job *job)
{
	struct scan_job *j = (struct scan_job *)job;
	answer(j);
	free(j);
}

static void scan_discard(struct workers_job *job)
{
	free(job);
}

static const struct workers_def scanners = {
	.name = "clamav",
	.max_waiting = MAX_WAITING,
	.run = run_scan,
	.collect = count_scan,
	.done = scan_done,
	.discard = scan_discard,
};

static void clamav_message(void *inst, struct check_ctx *ctx, struct check_call *call)
{
	struct clamav_check *c = inst;
	if (!ctx->data) {
		check_continue(call);
		return;
	}
	struct scan_job *j = xcalloc(1, sizeof(*j));
	j->c = c;
	j->ctx = ctx;
	j->call = call;
	j->data = ctx->data;
	j->len = ctx->len;
	if (!workers_submit(c->pool, &j->link)) {
		j->result = SCAN_ERROR;
		snprintf(j->error, sizeof(j->error), "too many scans waiting");
		workers_return(c->pool, &j->link);
	}
}

static void clamav_free(void *inst)
{
	struct clamav_check *c = inst;
	if (!c)
		return;
	workers_free(c->pool);
	if (c->own_engine)
		av_engine_free(c->engine);
	free(c->cache);
	pthread_mutex_destroy(&c->cache_mu);
	free(c);
}

static void clamav_stop(void *inst)
{
	struct clamav_check *c = inst;
	workers_free(c->pool);  /* a scan in progress ends first: it reads the session's message */
	c->pool = NULL;
}

static void release_engine(void *obj)
{
	av_engine_free(obj);
}

static void *clamav_init(const void *params, const struct check_env *env, char *why, size_t whylen)
{
	const struct clamav_params *p = params;
	struct clamav_check *c = xcalloc(1, sizeof(*c));
	c->p = p;
	c->hostname = env->hostname && *env->hostname ? env->hostname : "localhost";
	struct av_limits lim = {
		.max_scan_size = p->max_scan_size, .max_file_size = p->max_file_size, .max_files = p->max_files,
		.max_recursion = p->max_recursion, .max_scan_time_ms = p->max_scan_time, .tmp_dir = p->tmp_dir,
	};
	if (*p->tmp_dir && access(p->tmp_dir, W_OK | X_OK) != 0) {
		/* libclamav would carry on without its temporary files */
		snprintf(why, whylen, "tmp_dir: %s: %s (expected a directory rampart can write)", p->tmp_dir, strerror(errno));
		free(c);
		return NULL;
	}
	pthread_mutex_init(&c->cache_mu, NULL);
	/* One engine per process, whatever its directory: a reload (SIGHUP)
	 * builds the next one in the background, from database_dir as it
	 * is now, and the engine in use stays until it is ready. */
	static const char key[] = "clamav";
	char w[600] = "";
	c->engine = env->shared ? check_shared_get(env->shared, key) : NULL;
	if (c->engine) {
		if (!av_engine_dir_usable(p->database_dir, w, sizeof(w))) {
			snprintf(why, whylen, "database_dir: %s", w);
			clamav_free(c);
			return NULL;
		}
		av_engine_set_limits(c->engine, &lim);
		av_engine_reload(c->engine, p->database_dir);
	} else {
		c->engine = av_engine_new(env->shared ? env->base : NULL, p->database_dir, &lim,
					  p->database_check_interval, w, sizeof(w));
		if (!c->engine) {
			snprintf(why, whylen, "database_dir: %s", w);
			clamav_free(c);
			return NULL;
		}
		if (env->shared)
			check_shared_put(env->shared, key, c->engine, release_engine);
		else
			c->own_engine = true;
	}
	if (env->base && env->shared) {
		c->pool = workers_new(env->base, (size_t)p->threads, &scanners, c, w, sizeof(w));
		if (!c->pool) {
			snprintf(why, whylen, "threads: %s", w);
			clamav_free(c);
			return NULL;
		}
	}
	if (p->clean_cache_size > 0) {
		c->cache_size = (size_t)p->clean_cache_size;
		c->cache = xcalloc(c->cache_size, sizeof(*c->cache));
	}
	if (env->metrics) {
		c->m_scans = metrics_counter(env->metrics, "rampart_av_scans_total",
					     "Messages scanned, by result (clean, infected, limits, error, cached).");
		c->m_found = metrics_counter(env->metrics, "rampart_av_infected_total", "Infected messages, by signature.");
		c->m_seconds = metrics_counter(env->metrics, "rampart_av_scan_seconds_total", "Time spent scanning.");
	}
	return c;
}

const struct check_def check_clamav = {
	.name = "clamav",
	.doc = "antivirus: libclamav scans every message; reject, quarantine, tag or discard what it finds",
	.params = &clamav_params_set,
	.init = clamav_init,
	.free = clamav_free,
	.stop = clamav_stop,
	.hooks = { [PHASE_MESSAGE] = clamav_message },
};
