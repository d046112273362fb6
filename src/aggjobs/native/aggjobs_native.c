/*
 * aggjobs_native: the two per-element loops of aggjobs' rollups, in C.
 *
 * The portable SQL path (src/aggjobs/sql/rollup.py) computes an hour's exact p95 and its
 * log-bucket sketch with one SQL row per run, and a day's p95 by unnesting 24 sketches into
 * (key, count) rows. These functions do the same work in one call per group and return the
 * same values bit for bit (tests/integration/test_native.py):
 *
 *   digest(vals, q)        percentile_cont(q) of vals and their sketch (keys, counts)
 *   sketch_merge(k, c)     aggregate: sketches merged, counts summed per key
 *   sketch_quantile(k,c,q) aggjobs.sketch_quantile
 *
 * The arithmetic is PostgreSQL's own: percentile_cont_final_common and float8_lerp for the
 * exact quantile, aggjobs.sketch_key / sketch_value / sketch_quantile (migration 0001) for
 * the sketch; the Makefile turns off fused multiply-add so that every step rounds alike.
 */
#include "postgres.h"

#include <math.h>

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/float.h"
#include "utils/lsyscache.h"

PG_MODULE_MAGIC;

#define KEY_LOW (-32768)	/* values <= 1e-9 */
#define KEY_HIGH 32767		/* +Infinity and NaN */
#define GAMMA 1.015

static double ln_gamma;		/* ln(1.015), as SQL's ln() computes it */

void		_PG_init(void);

void
_PG_init(void)
{
	ln_gamma = log(GAMMA);
}

/*
 * aggjobs.sketch_key (SQL: NaN = NaN is true, so NaN shares +Infinity's bucket; finite values
 * past 1.015^32766 share the top finite bucket, migration 0009).
 */
static inline int32
sketch_key(double x)
{
	double		k;

	if (x <= 1e-9)
		return KEY_LOW;
	if (isnan(x) || isinf(x))
		return KEY_HIGH;
	k = ceil(log(x) / ln_gamma);
	return (int32) (k > KEY_HIGH - 1 ? KEY_HIGH - 1 : k);
}

/* aggjobs.sketch_value */
static inline double
sketch_value(int32 k)
{
	if (k == KEY_LOW)
		return 0.0;
	if (k == KEY_HIGH)
		return get_float8_infinity();
	return 2 * pow(GAMMA, (double) k) / 2.015;
}

/* PostgreSQL's float8 ordering: NaN equals NaN and sorts above everything, -0 equals 0. */
static int
float8_order(const void *a, const void *b)
{
	return float8_cmp_internal(*(const float8 *) a, *(const float8 *) b);
}

static void
check_quantile(double q)
{
	if (isnan(q) || q < 0 || q > 1)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("percentile value %g is not between 0 and 1", q)));
}

static ArrayType *
int4_array(int32 *items, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum(items[i]);
	return construct_array(d, n, INT4OID, sizeof(int32), true, TYPALIGN_INT);
}

static ArrayType *
int8_array(int64 *items, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * n);

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(items[i]);
	return construct_array(d, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
}

static Datum
composite(FunctionCallInfo fcinfo, Datum *values, bool *nulls)
{
	TupleDesc	desc;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "aggjobs_native: a composite result type is required");
	desc = BlessTupleDesc(desc);
	return HeapTupleGetDatum(heap_form_tuple(desc, values, nulls));
}

/* The float8[] argument as a C array; NULL elements are refused (the caller filters them). */
static float8 *
float8_elements(ArrayType *arr, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	float8	   *out;

	if (ARR_ELEMTYPE(arr) != FLOAT8OID)
		elog(ERROR, "aggjobs_native.digest: float8[] expected");
	deconstruct_array(arr, FLOAT8OID, sizeof(float8), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, n);
	out = palloc(sizeof(float8) * (*n > 0 ? *n : 1));
	for (int i = 0; i < *n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("aggjobs_native.digest: NULL element at position %d", i + 1)));
		out[i] = DatumGetFloat8(elems[i]);
	}
	return out;
}

PG_FUNCTION_INFO_V1(aggjobs_digest);

/*
 * digest(vals float8[], q float8) -> (quantile, keys, counts); all NULL for NULL or empty
 * vals, as the SQL path gives for a group without values.
 */
Datum
aggjobs_digest(PG_FUNCTION_ARGS)
{
	Datum		values[3];
	bool		nulls[3] = {true, true, true};
	float8	   *v;
	int			n;
	double		q;

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	q = PG_GETARG_FLOAT8(1);
	check_quantile(q);
	if (PG_ARGISNULL(0))
		return composite(fcinfo, values, nulls);
	v = float8_elements(PG_GETARG_ARRAYTYPE_P(0), &n);
	if (n == 0)
		return composite(fcinfo, values, nulls);

	qsort(v, n, sizeof(float8), float8_order);

	{
		/* percentile_cont_final_common, with float8_lerp */
		int64		first_row = floor(q * (n - 1));
		int64		second_row = ceil(q * (n - 1));

		if (first_row == second_row)
			values[0] = Float8GetDatum(v[first_row]);
		else
		{
			double		proportion = (q * (n - 1)) - first_row;

			values[0] = Float8GetDatum(v[first_row] + (proportion * (v[second_row] - v[first_row])));
		}
	}
	{
		/* keys ascend with the sorted values: count runs of equal keys */
		int32	   *keys = palloc(sizeof(int32) * n);
		int64	   *counts = palloc(sizeof(int64) * n);
		int			m = 0;

		for (int i = 0; i < n; i++)
		{
			int32		k = sketch_key(v[i]);

			if (m > 0 && keys[m - 1] == k)
				counts[m - 1]++;
			else
			{
				keys[m] = k;
				counts[m++] = 1;
			}
		}
		values[1] = PointerGetDatum(int4_array(keys, m));
		values[2] = PointerGetDatum(int8_array(counts, m));
	}
	nulls[0] = nulls[1] = nulls[2] = false;
	return composite(fcinfo, values, nulls);
}

/* A sketch as C arrays; keys strictly ascending. */
typedef struct Sketch
{
	int			n;
	int			cap;
	int32	   *keys;
	int64	   *counts;
} Sketch;

static void
sketch_reserve(Sketch *s, int cap)
{
	if (cap <= s->cap)
		return;
	cap = Max(cap, s->cap * 2);
	if (s->cap == 0)
	{
		s->keys = palloc(sizeof(int32) * cap);
		s->counts = palloc(sizeof(int64) * cap);
	}
	else
	{
		s->keys = repalloc(s->keys, sizeof(int32) * cap);
		s->counts = repalloc(s->counts, sizeof(int64) * cap);
	}
	s->cap = cap;
}

/* The (keys, counts) argument pair as C arrays, checked: same length, no NULLs. */
static int
sketch_arguments(ArrayType *ka, ArrayType *ca, int32 **keys, int64 **counts)
{
	int			nk = ArrayGetNItems(ARR_NDIM(ka), ARR_DIMS(ka));
	int			nc = ArrayGetNItems(ARR_NDIM(ca), ARR_DIMS(ca));

	if (nk != nc)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("aggjobs_native: a sketch has %d keys and %d counts", nk, nc)));
	if (ARR_HASNULL(ka) || ARR_HASNULL(ca))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("aggjobs_native: a sketch holds a NULL key or count")));
	if (nk > 0 && (ARR_ELEMTYPE(ka) != INT4OID || ARR_ELEMTYPE(ca) != INT8OID))
		elog(ERROR, "aggjobs_native: integer[] keys and bigint[] counts expected");
	*keys = (int32 *) ARR_DATA_PTR(ka);
	*counts = (int64 *) ARR_DATA_PTR(ca);
	return nk;
}

PG_FUNCTION_INFO_V1(aggjobs_sketch_merge_step);

/*
 * sketch_merge's transition: merge one sketch into the state. A sketch whose keys do not
 * ascend is added key by key (rare: the rollups store them ascending).
 */
Datum
aggjobs_sketch_merge_step(PG_FUNCTION_ARGS)
{
	MemoryContext agg_context;
	MemoryContext old;
	Sketch	   *state;
	int32	   *keys;
	int64	   *counts;
	int			n;
	Sketch		merged = {0};
	int			i = 0,
				j = 0;

	if (!AggCheckCallContext(fcinfo, &agg_context))
		elog(ERROR, "aggjobs_native.sketch_merge_step called outside an aggregate");
	old = MemoryContextSwitchTo(agg_context);
	state = PG_ARGISNULL(0) ? palloc0(sizeof(Sketch)) : (Sketch *) PG_GETARG_POINTER(0);
	if (PG_ARGISNULL(1) || PG_ARGISNULL(2))
	{
		MemoryContextSwitchTo(old);
		PG_RETURN_POINTER(state);
	}
	n = sketch_arguments(PG_GETARG_ARRAYTYPE_P(1), PG_GETARG_ARRAYTYPE_P(2), &keys, &counts);
	for (int k = 1; k < n; k++)
		if (keys[k] <= keys[k - 1])
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("aggjobs_native.sketch_merge: keys must ascend")));

	sketch_reserve(&merged, state->n + n);
	while (i < state->n || j < n)
	{
		if (j >= n || (i < state->n && state->keys[i] < keys[j]))
		{
			merged.keys[merged.n] = state->keys[i];
			merged.counts[merged.n++] = state->counts[i++];
		}
		else if (i >= state->n || keys[j] < state->keys[i])
		{
			merged.keys[merged.n] = keys[j];
			merged.counts[merged.n++] = counts[j++];
		}
		else
		{
			merged.keys[merged.n] = keys[j];
			merged.counts[merged.n++] = state->counts[i++] + counts[j++];
		}
	}
	if (state->cap > 0)
	{
		pfree(state->keys);
		pfree(state->counts);
	}
	*state = merged;
	MemoryContextSwitchTo(old);
	PG_RETURN_POINTER(state);
}

PG_FUNCTION_INFO_V1(aggjobs_sketch_merge_final);

/* sketch_merge's result: (keys, counts), or NULL when no key was seen (as the SQL path). */
Datum
aggjobs_sketch_merge_final(PG_FUNCTION_ARGS)
{
	Sketch	   *state;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	state = (Sketch *) PG_GETARG_POINTER(0);
	if (state->n == 0)
		PG_RETURN_NULL();
	values[0] = PointerGetDatum(int4_array(state->keys, state->n));
	values[1] = PointerGetDatum(int8_array(state->counts, state->n));
	return composite(fcinfo, values, nulls);
}

PG_FUNCTION_INFO_V1(aggjobs_sketch_quantile);

/* aggjobs.sketch_quantile(keys, counts, q), step for step. */
Datum
aggjobs_sketch_quantile(PG_FUNCTION_ARGS)
{
	int32	   *keys;
	int64	   *counts;
	int			n;
	int64		total = 0,
				seen = 0,
				lo_rank;
	double		pos,
				frac,
				lo_value = 0;
	bool		have_lo = false;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2))
		PG_RETURN_NULL();
	n = sketch_arguments(PG_GETARG_ARRAYTYPE_P(0), PG_GETARG_ARRAYTYPE_P(1), &keys, &counts);
	if (n == 0)
		PG_RETURN_NULL();
	for (int i = 0; i < n; i++)
		total += counts[i];
	pos = PG_GETARG_FLOAT8(2) * (double) (total - 1);
	lo_rank = (int64) floor(pos);
	frac = pos - (double) lo_rank;
	for (int i = 0; i < n; i++)
	{
		seen += counts[i];
		if (!have_lo && seen > lo_rank)
		{
			lo_value = sketch_value(keys[i]);
			have_lo = true;
			if (frac == 0)
				PG_RETURN_FLOAT8(lo_value);
		}
		if (have_lo && seen > lo_rank + 1)
			PG_RETURN_FLOAT8(lo_value + frac * (sketch_value(keys[i]) - lo_value));
	}
	if (!have_lo)
		PG_RETURN_NULL();
	PG_RETURN_FLOAT8(lo_value);
}
