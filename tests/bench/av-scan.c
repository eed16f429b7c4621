/*
 * av-scan.c — the reference of tests/bench/av: libclamav's own cost of
 * scanning each corpus message, in process, with nothing around it.
 * Compiled by the harness (cc -O2 ... -lclamav) into its temporary
 * directory; not part of the build.
 *
 * It builds one engine the way shared/checks/clamav_engine.c does
 * (cl_init, cl_engine_new, the same limits, cl_load(dir, CL_DB_STDOPT),
 * cl_engine_compile), then, on one thread, scans every message of a corpus
 * from memory the way shared/checks/clamav.c does: cl_fmap_open_memory and
 * cl_scanmap_callback with general = CL_SCAN_GENERAL_HEURISTICS,
 * parse = ~0, heuristic = CL_SCAN_HEURISTIC_EXCEEDS_MAX, named "message".
 * The whole corpus is read into memory before anything is timed.
 *
 *   av-scan -d DBDIR -b BLOB -i INDEX [-B WARM_BLOB -I WARM_INDEX]
 *           [-S max_scan_size] [-F max_file_size] [-N max_files]
 *           [-R max_recursion] [-T max_scan_time_ms] [-t tmp_dir] [-j THREADS]
 *
 * INDEX has one line per message, "OFFSET LENGTH", into BLOB (the raw
 * message: CRLF line ends, not dot-stuffed).  The warm-up corpus, when
 * given, is scanned first and not counted.  With -j THREADS (the
 * reference is -j 1, the default) that many threads share the engine and
 * take the messages from one counter, as rampart-av's scanning threads do:
 * what libclamav costs when scans run side by side on this machine.  ClamAV's own clean cache
 * (engine-wide, keyed by each file's MD5) stays on, as in rampart-av;
 * every message and every attachment of the corpus is distinct, so it
 * never hits, but its hashing is paid here as it is there.
 *
 * It prints one JSON object on stdout: how many messages, how many came
 * out clean / infected / with an error (and the first signature or error),
 * the CPU time of the measured scans (getrusage RUSAGE_SELF: utime+stime,
 * and the sum of each scan's CLOCK_THREAD_CPUTIME_ID), the wall time, the
 * median and 90th percentile of the per-message CPU, the engine's load
 * time and signature count, and libclamav's version.
 * Exit status 0 when it ran, 2 on bad usage or setup.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <clamav.h>

#include "bench-clock.h"

struct corpus {
	char *blob;
	size_t blob_len;
	size_t n;
	size_t *off, *len;
};

static void die(const char *fmt, const char *a, const char *b)
{
	fprintf(stderr, "av-scan: ");
	fprintf(stderr, fmt, a, b);
	fprintf(stderr, "\n");
	exit(2);
}

static void load(struct corpus *c, const char *blob, const char *index)
{
	FILE *f = fopen(blob, "rb");
	if (!f)
		die("%s: %s", blob, strerror(errno));
	fseek(f, 0, SEEK_END);
	long sz = ftell(f);
	fseek(f, 0, SEEK_SET);
	c->blob = malloc(sz > 0 ? (size_t)sz : 1);
	c->blob_len = (size_t)(sz > 0 ? sz : 0);
	if (!c->blob || fread(c->blob, 1, c->blob_len, f) != c->blob_len)
		die("%s: %s", blob, "short read");
	fclose(f);
	f = fopen(index, "r");
	if (!f)
		die("%s: %s", index, strerror(errno));
	size_t cap = 1024;
	c->off = malloc(cap * sizeof(size_t));
	c->len = malloc(cap * sizeof(size_t));
	unsigned long long o, l;
	while (fscanf(f, "%llu %llu", &o, &l) == 2) {
		if (o + l > c->blob_len)
			die("%s: %s", index, "an entry goes past the end of the blob");
		if (c->n == cap) {
			cap *= 2;
			c->off = realloc(c->off, cap * sizeof(size_t));
			c->len = realloc(c->len, cap * sizeof(size_t));
		}
		c->off[c->n] = (size_t)o;
		c->len[c->n] = (size_t)l;
		c->n++;
	}
	fclose(f);
	if (c->n == 0)
		die("%s: %s", index, "no messages");
}

struct tally {
	size_t clean, infected, errors;
	char first_virus[200], first_error[200];
};

/* One scan, exactly as shared/checks/clamav.c run_scan() does it. */
static void scan_one(const struct cl_engine *engine, const char *data, size_t len, struct tally *t)
{
	cl_fmap_t *map = cl_fmap_open_memory(data, len);
	if (!map) {
		t->errors++;
		if (!t->first_error[0])
			snprintf(t->first_error, sizeof(t->first_error), "cl_fmap_open_memory failed");
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
	if (rc == CL_CLEAN) {
		t->clean++;
	} else if (rc == CL_VIRUS) {
		t->infected++;
		if (!t->first_virus[0])
			snprintf(t->first_virus, sizeof(t->first_virus), "%s", virname ? virname : "?");
	} else {
		t->errors++;
		if (!t->first_error[0])
			snprintf(t->first_error, sizeof(t->first_error), "%s", cl_strerror(rc));
	}
}

/* -j: threads taking messages from one counter */
struct par {
	const struct cl_engine *e;
	const struct corpus *c;
	atomic_size_t next;
	double *per;
	pthread_mutex_t mu;
	struct tally t;
};

static void *par_main(void *arg)
{
	struct par *p = arg;
	struct tally t = { 0 };
	for (;;) {
		size_t i = atomic_fetch_add(&p->next, 1);
		if (i >= p->c->n)
			break;
		double a = thread_cpu();
		scan_one(p->e, p->c->blob + p->c->off[i], p->c->len[i], &t);
		p->per[i] = thread_cpu() - a;
	}
	pthread_mutex_lock(&p->mu);
	p->t.clean += t.clean;
	p->t.infected += t.infected;
	p->t.errors += t.errors;
	if (!p->t.first_virus[0])
		memcpy(p->t.first_virus, t.first_virus, sizeof(t.first_virus));
	if (!p->t.first_error[0])
		memcpy(p->t.first_error, t.first_error, sizeof(t.first_error));
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 32)
			putchar(' ');
		else
			putchar(*s);
	}
	putchar('"');
}

static void usage(void)
{
	fprintf(stderr, "usage: av-scan -d DBDIR -b BLOB -i INDEX [-B WARM_BLOB -I WARM_INDEX] [-S max_scan_size] "
		"[-F max_file_size] [-N max_files] [-R max_recursion] [-T max_scan_time_ms] [-t tmp_dir] [-j THREADS]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *dbdir = NULL, *blob = NULL, *index = NULL, *wblob = NULL, *windex = NULL, *tmpdir = NULL;
	long long max_scan_size = 100LL << 20, max_file_size = 25LL << 20, max_files = 10000, max_recursion = 30,
		  max_scan_time = 120000;
	int o, threads = 1;
	while ((o = getopt(argc, argv, "d:b:i:B:I:S:F:N:R:T:t:j:")) != -1) {
		switch (o) {
		case 'd': dbdir = optarg; break;
		case 'b': blob = optarg; break;
		case 'i': index = optarg; break;
		case 'B': wblob = optarg; break;
		case 'I': windex = optarg; break;
		case 'S': max_scan_size = atoll(optarg); break;
		case 'F': max_file_size = atoll(optarg); break;
		case 'N': max_files = atoll(optarg); break;
		case 'R': max_recursion = atoll(optarg); break;
		case 'T': max_scan_time = atoll(optarg); break;
		case 't': tmpdir = optarg; break;
		case 'j': threads = atoi(optarg); break;
		default: usage();
		}
	}
	if (!dbdir || !blob || !index || (!wblob != !windex) || threads < 1 || threads > 256)
		usage();

	struct corpus c = { 0 }, w = { 0 };
	load(&c, blob, index);
	if (wblob)
		load(&w, wblob, windex);

	/* the engine, as clamav_engine.c build() makes it */
	double t0 = now();
	cl_error_t rc = cl_init(CL_INIT_DEFAULT);
	if (rc != CL_SUCCESS)
		die("cl_init: %s%s", cl_strerror(rc), "");
	struct cl_engine *e = cl_engine_new();
	if (!e)
		die("cl_engine_new failed%s%s", "", "");
	if ((rc = cl_engine_set_num(e, CL_ENGINE_MAX_SCANSIZE, max_scan_size)) != CL_SUCCESS ||
	    (rc = cl_engine_set_num(e, CL_ENGINE_MAX_FILESIZE, max_file_size)) != CL_SUCCESS ||
	    (rc = cl_engine_set_num(e, CL_ENGINE_MAX_FILES, max_files)) != CL_SUCCESS ||
	    (rc = cl_engine_set_num(e, CL_ENGINE_MAX_RECURSION, max_recursion)) != CL_SUCCESS ||
	    (rc = cl_engine_set_num(e, CL_ENGINE_MAX_SCANTIME, max_scan_time)) != CL_SUCCESS ||
	    (tmpdir && *tmpdir && (rc = cl_engine_set_str(e, CL_ENGINE_TMPDIR, tmpdir)) != CL_SUCCESS))
		die("engine settings: %s%s", cl_strerror(rc), "");
	unsigned sigs = 0;
	if ((rc = cl_load(dbdir, e, &sigs, CL_DB_STDOPT)) != CL_SUCCESS)
		die("cl_load: %s: %s", dbdir, cl_strerror(rc));
	if ((rc = cl_engine_compile(e)) != CL_SUCCESS)
		die("cl_engine_compile: %s%s", cl_strerror(rc), "");
	double load_s = now() - t0;

	struct tally wt = { 0 }, t = { 0 };
	for (size_t i = 0; i < w.n; i++)
		scan_one(e, w.blob + w.off[i], w.len[i], &wt);

	double *per = malloc(c.n * sizeof(double));
	double sum_thread = 0;
	size_t bytes = 0;
	double w0 = now(), p0 = cpu_seconds();
	if (threads == 1) {
		for (size_t i = 0; i < c.n; i++) {
			double a = thread_cpu();
			scan_one(e, c.blob + c.off[i], c.len[i], &t);
			per[i] = thread_cpu() - a;
		}
	} else {
		struct par p = { .e = e, .c = &c, .per = per };
		pthread_mutex_init(&p.mu, NULL);
		pthread_t *th = calloc((size_t)threads, sizeof(*th));
		for (int i = 0; i < threads; i++)
			if (pthread_create(&th[i], NULL, par_main, &p) != 0)
				die("cannot start a thread%s%s", "", "");
		for (int i = 0; i < threads; i++)
			pthread_join(th[i], NULL);
		free(th);
		t = p.t;
	}
	double p1 = cpu_seconds(), w1 = now();
	for (size_t i = 0; i < c.n; i++) {
		sum_thread += per[i];
		bytes += c.len[i];
	}
	qsort(per, c.n, sizeof(double), cmp_double);

	printf("{\"n\": %zu, \"threads\": %d, \"bytes\": %zu, \"clean\": %zu, \"infected\": %zu, \"errors\": %zu, "
	       "\"warm_n\": %zu, \"warm_clean\": %zu, "
	       "\"cpu_s\": %.6f, \"thread_cpu_s\": %.6f, \"wall_s\": %.6f, "
	       "\"median_ms\": %.4f, \"p90_ms\": %.4f, \"load_s\": %.4f, \"signatures\": %u, \"version\": ",
	       c.n, threads, bytes, t.clean, t.infected, t.errors, w.n, wt.clean, p1 - p0, sum_thread, w1 - w0,
	       per[c.n / 2] * 1000.0, per[(c.n * 9) / 10] * 1000.0, load_s, sigs);
	json_str(cl_retver());
	printf(", \"first_virus\": ");
	json_str(t.first_virus[0] ? t.first_virus : wt.first_virus);
	printf(", \"first_error\": ");
	json_str(t.first_error[0] ? t.first_error : wt.first_error);
	printf("}\n");
	cl_engine_free(e);
	free(per);
	return 0;
}
